/**
 * Mutual TLS, attacked: a mesh of real services with TLS on (certificates made by
 * createMeshCertificates in a temporary folder), called as an outsider would: in plaintext, over
 * TLS without a client certificate, with a certificate of another CA, and with a valid mesh
 * certificate of the wrong identity. Then the attacks the issue names: a worker that joins under
 * another worker's id, a non-gateway identity that submits and reads jobs for a tenant, and an
 * identity claimed in metadata. The gateway serves its public clients over TLS with API keys.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { Channel, Metadata } from 'nice-grpc';
import { MeshCertificates, createMeshCertificates } from '../../common/certs';
import { createMeshClient, openChannel, openTlsChannel } from '../../common/client';
import { HealthCheckResponse_ServingStatus, HealthDefinition } from '../../generated/grpc/health/v1/health';
import { AggregatorServiceDefinition } from '../../generated/maas/internal/v1/aggregator';
import { BalancerServiceDefinition, JoinRequest } from '../../generated/maas/internal/v1/balancer';
import { SchedulerServiceDefinition } from '../../generated/maas/internal/v1/scheduler';
import { WorkerServiceDefinition } from '../../generated/maas/internal/v1/worker';
import { JobSpec, JobState } from '../../generated/maas/v1/jobs';
import { parseConfig } from '../../common/config';
import { silentLogger } from '../../common/log';
import { workerSchema } from '../../services/worker/config';
import { startWorker } from '../../services/worker/server';
import { Status, TestMesh, collect, echoRuntime, grpcError, openChannelAs, startMesh, tlsSettings } from '../support';
import { parseApiKeys } from '../../gateway/auth';

const API_KEYS = 'acme=key-acme-0123456789,globex=key-globex-0123456789';
const asAcme = () => ({ metadata: Metadata({ authorization: 'Bearer key-acme-0123456789' }), deadline: Date.now() + 20_000 });

/** How a test client reaches an internal server. */
type Caller = { kind: 'plaintext' } | { kind: 'no-cert' } | { kind: 'other-ca'; name: string } | { kind: 'mesh'; name: string };

describe('mutual TLS between the services', function () {
  this.timeout(60_000);
  let dir: string;
  let certs: MeshCertificates;
  let otherCa: MeshCertificates;
  let mesh: TestMesh;
  const channels: Channel[] = [];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'maas-mtls-test-'));
    certs = await createMeshCertificates(join(dir, 'mesh'), { workers: ['w1', 'w2'] });
    // Same names, same identities, another CA: what an attacker who runs `maas certs` gets.
    otherCa = await createMeshCertificates(join(dir, 'other'), { workers: ['w1', 'w2'] });
    mesh = await startMesh({ tls: certs, workers: [{}, {}], gateway: { apiKeys: parseApiKeys(API_KEYS) } });
  });

  after(async () => {
    for (const c of channels) c.close();
    await mesh?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  function channelTo(address: string, caller: Caller): Channel {
    const channel =
      caller.kind === 'plaintext'
        ? openChannel(address)
        : caller.kind === 'no-cert'
          ? openChannelAs(address, certs, undefined)
          : caller.kind === 'other-ca'
            // The certificate of another CA, presented to a client that trusts the mesh CA.
            ? openTlsChannel(address, readFileSync(certs.ca), { cert: readFileSync(otherCa.certs[caller.name].cert), key: readFileSync(otherCa.certs[caller.name].key) })
            : openChannelAs(address, certs, caller.name);
    channels.push(channel);
    return channel;
  }

  /** One call per internal service, the identity that may make it, and one that may not. */
  const targets = () => [
    {
      service: 'scheduler',
      address: mesh.scheduler.address,
      method: '/maas.internal.v1.SchedulerService/GetJob',
      allowed: 'gateway',
      wrong: 'balancer',
      call: (ch: Channel) => createMeshClient(SchedulerServiceDefinition, ch).getJob({ tenant: 'acme', jobId: 'no-such-job' }, { deadline: Date.now() + 5000 }),
      // The allowed identity reaches the handler, which answers for the (absent) job.
      allowedOutcome: Status.NOT_FOUND,
    },
    {
      service: 'balancer',
      address: mesh.balancer.address,
      method: '/maas.internal.v1.BalancerService/Route',
      allowed: 'scheduler',
      wrong: 'workers/w1',
      call: (ch: Channel) =>
        collect(createMeshClient(BalancerServiceDefinition, ch).route({ task: { requestId: 'r1', tenant: 'acme', request: { $case: 'predict', predict: { model: 'echo', input: 'hi', affinityKey: '', priority: 0 } } } }, { deadline: Date.now() + 5000 })),
      allowedOutcome: 'ok' as const,
    },
    {
      service: 'aggregator',
      address: mesh.aggregator.address,
      method: '/maas.internal.v1.AggregatorService/Commit',
      allowed: 'workers/w2',
      wrong: 'gateway',
      call: (ch: Channel) =>
        createMeshClient(AggregatorServiceDefinition, ch).commit(
          { jobId: 'victim-job', taskIndex: 0, attempt: 1, reduce: { reducer: 'sum', tasksTotal: 1, topK: 0, outputFile: '', positiveLabel: '', meanOf: '' }, output: { records: 1, wordCounts: { forged: 1000 }, totalWords: 1000, outputs: [] } },
          { deadline: Date.now() + 5000 },
        ),
      allowedOutcome: 'ok' as const,
    },
    {
      service: 'worker',
      address: mesh.workers[0].address,
      method: '/maas.internal.v1.WorkerService/Execute',
      allowed: 'balancer',
      wrong: 'workers/w2',
      call: (ch: Channel) =>
        collect(createMeshClient(WorkerServiceDefinition, ch).execute({ task: { requestId: 'r2', tenant: 'acme', request: { $case: 'predict', predict: { model: 'echo', input: 'hi', affinityKey: '', priority: 0 } } } }, { deadline: Date.now() + 5000 })),
      allowedOutcome: 'ok' as const,
    },
  ];

  for (const service of ['scheduler', 'balancer', 'aggregator', 'worker']) {
    describe(`the ${service}`, () => {
      const target = () => targets().find((t) => t.service === service)!;

      it('refuses a plaintext client', async () => {
        const t = target();
        const err = await grpcError(t.call(channelTo(t.address, { kind: 'plaintext' })));
        expect(err.code, `${Status[err.code]}: ${err.details}`).to.equal(Status.UNAVAILABLE);
      });

      it('refuses a TLS client without a client certificate (the handshake fails)', async () => {
        const t = target();
        const err = await grpcError(t.call(channelTo(t.address, { kind: 'no-cert' })));
        expect(err.code, `${Status[err.code]}: ${err.details}`).to.equal(Status.UNAVAILABLE);
      });

      it('refuses a certificate of the same identity from another CA (the handshake fails)', async () => {
        const t = target();
        const err = await grpcError(t.call(channelTo(t.address, { kind: 'other-ca', name: t.allowed })));
        expect(err.code, `${Status[err.code]}: ${err.details}`).to.equal(Status.UNAVAILABLE);
      });

      it('answers PERMISSION_DENIED, naming the method and the identity, to a mesh certificate of the wrong identity', async () => {
        const t = target();
        const err = await grpcError(t.call(channelTo(t.address, { kind: 'mesh', name: t.wrong })));
        expect(err.code, `${Status[err.code]}: ${err.details}`).to.equal(Status.PERMISSION_DENIED);
        const uri = t.wrong.startsWith('workers/') ? `spiffe://maas.mesh/worker/${t.wrong.slice(8)}` : `spiffe://maas.mesh/${t.wrong}`;
        expect(err.details).to.include(t.method).and.to.include(uri);
      });

      it('serves the identity the policy allows', async () => {
        const t = target();
        const call = t.call(channelTo(t.address, { kind: 'mesh', name: t.allowed }));
        if (t.allowedOutcome === 'ok') await call;
        else expect((await grpcError(call)).code).to.equal(t.allowedOutcome);
      });

      it('answers health to any mesh identity (the operator certificate)', async () => {
        const t = target();
        const health = createMeshClient(HealthDefinition, channelTo(t.address, { kind: 'mesh', name: 'operator' }));
        expect((await health.check({ service: '' }, { deadline: Date.now() + 5000 })).status).to.equal(HealthCheckResponse_ServingStatus.SERVING);
      });
    });
  }

  describe('refusals keep the connection usable', () => {
    it('answers PERMISSION_DENIED to 1,100 wrong-identity calls with 1 MB bodies, all on one connection, and the connection still serves', async function () {
      this.timeout(120_000);
      // Each refused call is answered before its 1 MB body is read; unless the server then
      // resets the stream, both ends keep it open, and past the aggregator's 1024 concurrent
      // streams every later call on the connection fails.
      const channel = channelTo(mesh.aggregator.address, { kind: 'mesh', name: 'gateway' });
      const client = createMeshClient(AggregatorServiceDefinition, channel);
      const big = 'x'.repeat(1024 * 1024);
      const codes = new Map<string, number>();
      let next = 0;
      const lane = async () => {
        while (next < 1100) {
          next++;
          const err = await grpcError(
            client.commit(
              { jobId: big, taskIndex: 0, attempt: 1, reduce: undefined, output: undefined },
              { deadline: Date.now() + 10_000 },
            ),
          );
          const key = `${Status[err.code]}: ${err.details.slice(0, 60)}`;
          codes.set(key, (codes.get(key) ?? 0) + 1);
        }
      };
      await Promise.all(Array.from({ length: 32 }, lane));
      const summary = [...codes].map(([k, n]) => `${n} × ${k}`).join('; ');
      expect([...codes.keys()].every((k) => k.startsWith('PERMISSION_DENIED')), summary).to.equal(true);
      const health = createMeshClient(HealthDefinition, channel);
      expect((await health.check({ service: '' }, { deadline: Date.now() + 5000 })).status).to.equal(HealthCheckResponse_ServingStatus.SERVING);
    });
  });

  describe('worker identity at Join', () => {
    /** Opens a Join stream with `hello` and resolves with the first response or rejects with the status. */
    async function join(caller: string, workerId: string, metadata = Metadata()) {
      const client = createMeshClient(BalancerServiceDefinition, channelTo(mesh.balancer.address, { kind: 'mesh', name: caller }));
      const abort = new AbortController();
      async function* messages(): AsyncGenerator<JoinRequest> {
        yield { message: { $case: 'hello', hello: { workerId, address: '127.0.0.1:1', models: [{ name: 'echo', version: '1', description: '', tasks: [], labels: [], metadata: {}, readyWorkers: 1, platform: '', inputs: [], outputs: [], maxBatchSize: 0, contextLength: 0 }], capacity: 1000, mappers: [] } } };
        await new Promise((r) => abort.signal.addEventListener('abort', r));
      }
      try {
        for await (const _ of client.join(messages(), { signal: abort.signal, metadata })) return 'joined';
        return 'ended';
      } finally {
        abort.abort();
      }
    }

    const w1Address = () => mesh.balancer.membership.all().find((m) => m.id === 'w1')?.address;

    it('a worker certificate for w2 cannot Join as w1, and w1 stays in the routing table', async () => {
      const before = w1Address();
      expect(before, 'w1 in the routing table before').to.equal(mesh.workers[0].address);
      const err = await grpcError(join('workers/w2', 'w1'));
      expect(err.code, `${Status[err.code]}: ${err.details}`).to.equal(Status.PERMISSION_DENIED);
      expect(err.details).to.include('hello.worker_id "w1"').and.to.include('spiffe://maas.mesh/worker/w2');
      expect(w1Address(), 'w1 in the routing table after').to.equal(before);
    });

    it('an identity claimed in metadata is ignored: only the certificate counts', async () => {
      const err = await grpcError(join('workers/w2', 'w1', Metadata({ 'maas-peer-identity': 'spiffe://maas.mesh/worker/w1' })));
      expect(err.code, `${Status[err.code]}: ${err.details}`).to.equal(Status.PERMISSION_DENIED);
      expect(err.details).to.include('spiffe://maas.mesh/worker/w2');
      expect(w1Address()).to.equal(mesh.workers[0].address);
    });

    it('a non-worker identity cannot Join at all', async () => {
      const err = await grpcError(join('gateway', 'w1'));
      expect(err.code).to.equal(Status.PERMISSION_DENIED);
      expect(err.details).to.include('/maas.internal.v1.BalancerService/Join').and.to.include('spiffe://maas.mesh/gateway');
    });
  });

  describe('a worker\'s id is its certificate\'s', () => {
    const workerConfig = (workerId: string, cert: string, from = certs) => ({
      ...parseConfig(workerSchema, [], {}),
      port: 0,
      balancer: mesh.balancer.address,
      aggregator: mesh.aggregator.address,
      modelRepository: join(mesh.dataDir, 'models'),
      workerId,
      ...tlsSettings(from, cert),
    });

    it('refuses to start with a --worker-id other than the one its certificate names', async () => {
      const err = await startWorker(workerConfig('w1', 'workers/w2'), silentLogger, echoRuntime(0)).then(
        (w) => {
          void w.shutdown();
          throw new Error('the worker started');
        },
        (e: Error) => e,
      );
      expect(err.message).to.include('--worker-id w1 differs from the identity of --tls-cert, spiffe://maas.mesh/worker/w2');
    });

    it('takes its id from its certificate when --worker-id is empty', async () => {
      const extra = await createMeshCertificates(certs.dir, { workers: ['w7'] });
      const worker = await startWorker(workerConfig('', 'workers/w7', extra), silentLogger, echoRuntime(0));
      try {
        expect(worker.id).to.equal('w7');
        await worker.joined;
        expect(mesh.balancer.membership.all().map((m) => m.id)).to.include('w7');
      } finally {
        await worker.shutdown();
      }
    });
  });

  describe('tenants are trusted only from the gateway', () => {
    for (const caller of ['workers/w1', 'balancer', 'operator']) {
      it(`${caller} cannot SubmitJob or GetJob as tenant acme`, async () => {
        const scheduler = createMeshClient(SchedulerServiceDefinition, channelTo(mesh.scheduler.address, { kind: 'mesh', name: caller }));
        const spec = JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'inline', inline: { records: [{ text: 'a b', label: '' }] } } });
        const submit = await grpcError(scheduler.submitJob({ tenant: 'acme', spec }, { deadline: Date.now() + 5000 }));
        expect(submit.code, `${Status[submit.code]}: ${submit.details}`).to.equal(Status.PERMISSION_DENIED);
        expect(submit.details).to.include('/maas.internal.v1.SchedulerService/SubmitJob');
        const get = await grpcError(scheduler.getJob({ tenant: 'acme', jobId: 'any' }, { deadline: Date.now() + 5000 }));
        expect(get.code).to.equal(Status.PERMISSION_DENIED);
        expect(get.details).to.include('/maas.internal.v1.SchedulerService/GetJob');
      });
    }
  });

  describe('the gateway over TLS', () => {
    it('answers Predict with an API key, through the TLS mesh', async () => {
      const r = await mesh.inference.predict({ model: 'echo', input: 'over tls' }, asAcme());
      expect(r.text).to.equal('over tls');
    });

    it('runs a job end to end with an API key', async () => {
      const spec = JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'inline', inline: { records: ['a b a', 'b c', 'a'].map((text) => ({ text, label: '' })) } }, shardSize: 1 });
      const { job } = await mesh.jobs.submit({ spec }, asAcme());
      await collect(mesh.jobs.watch({ jobId: job!.id, afterSequence: 0 }, asAcme()));
      const done = (await mesh.jobs.get({ jobId: job!.id }, asAcme())).job!;
      expect(done.state, JobState[done.state]).to.equal(JobState.JOB_STATE_SUCCEEDED);
      const result = done.result?.result;
      expect(result?.$case).to.equal('wordCounts');
      if (result?.$case === 'wordCounts') expect(result.wordCounts.totalWords).to.equal(6);
    });

    it('still asks for the API key', async () => {
      const err = await grpcError(mesh.inference.predict({ model: 'echo', input: 'x' }, { deadline: Date.now() + 5000 }));
      expect(err.code).to.equal(Status.UNAUTHENTICATED);
    });

    it('refuses plaintext', async () => {
      const plain = createMeshClient(HealthDefinition, channelTo(mesh.gateway.address, { kind: 'plaintext' }));
      const err = await grpcError(plain.check({ service: '' }, { deadline: Date.now() + 5000 }));
      expect(err.code).to.equal(Status.UNAVAILABLE);
    });

    it('needs no client certificate from its public clients', async () => {
      const health = createMeshClient(HealthDefinition, channelTo(mesh.gateway.address, { kind: 'no-cert' }));
      expect((await health.check({ service: '' }, { deadline: Date.now() + 5000 })).status).to.equal(HealthCheckResponse_ServingStatus.SERVING);
    });
  });
});

