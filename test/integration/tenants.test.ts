/**
 * Tenants through the real gateway and scheduler, each caller with its own API key: no tenant can
 * see, watch, cancel or list another's job (NOT_FOUND, exactly as for a job that does not exist),
 * each tenant's limits refuse it with RESOURCE_EXHAUSTED naming the setting while other tenants go
 * on, and the gateway's key file takes effect without a restart.
 */
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { Metadata } from 'nice-grpc';
import { createMeshClient, openChannel } from '../../common/client';
import { createLogger } from '../../common/log';
import { hashApiKey, parseApiKeys } from '../../gateway/auth';
import { gatewaySchema } from '../../gateway/config';
import { startGateway } from '../../gateway/server';
import { parseConfig } from '../../common/config';
import { ModelServiceDefinition } from '../../generated/maas/v1/models';
import { SchedulerServiceDefinition } from '../../generated/maas/internal/v1/scheduler';
import { JobSpec, JobState } from '../../generated/maas/v1/jobs';
import { parseTenantOverrides } from '../../services/scheduler/tenant-limits';
import { TENANT_NAME_PATTERN } from '../../common/tenant';
import { Status, TestMesh, collect, grpcError, startMesh, until } from '../support';

const KEYS = { acme: 'key-of-acme', globex: 'key-of-globex' };
const as = (key: string) => ({ metadata: Metadata({ authorization: `Bearer ${key}` }) });
const inline = (n: number) => ({ $case: 'inline' as const, inline: { records: Array.from({ length: n }, (_, i) => ({ text: `r${i}`, label: '' })) } });
/** A job that runs for seconds on a worker with a delay per token, so it is still running while others poke at it. */
const longJob = () => JobSpec.fromPartial({ map: { $case: 'model', model: 'echo' }, input: inline(100), shardSize: 10 });
const quickJob = () => JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(3) });
const overrides = (spec: string) => parseTenantOverrides(spec, (n) => TENANT_NAME_PATTERN.test(n));

/** A Watch stream that is kept open until `close()`; `opened` resolves with its first event. */
function openWatch(mesh: TestMesh, key: string, jobId: string) {
  const abort = new AbortController();
  const stream = mesh.jobs.watch({ jobId, afterSequence: 0 }, { ...as(key), signal: abort.signal })[Symbol.asyncIterator]();
  return { opened: stream.next(), close: () => abort.abort() };
}

describe('tenants', function () {
  this.timeout(60_000);

  describe('isolation: one tenant cannot reach another tenant\'s job', () => {
    let mesh: TestMesh;
    let jobId: string;
    before(async () => {
      mesh = await startMesh({ workers: [{ echoDelayMs: 100 }], gateway: { apiKeys: parseApiKeys(`acme=${KEYS.acme},globex=${KEYS.globex}`) } });
      jobId = (await mesh.jobs.submit({ spec: longJob() }, as(KEYS.acme))).job!.id;
    });
    after(async () => {
      await mesh.jobs.cancel({ jobId }, as(KEYS.acme)).catch(() => undefined);
      await mesh.stop();
    });

    /** The refusal for a job id that exists for nobody, with the id put where the message names it. */
    async function unknownJobDetails(call: (id: string) => Promise<unknown>): Promise<string> {
      const err = await grpcError(call('job-does-not-exist'));
      expect(err.code).to.equal(Status.NOT_FOUND);
      return err.details.replace('job-does-not-exist', '<id>');
    }

    it('Get of another tenant\'s job is NOT_FOUND, with the message of a job that does not exist', async () => {
      const get = (id: string) => mesh.jobs.get({ jobId: id }, as(KEYS.globex));
      const err = await grpcError(get(jobId));
      expect(err.code).to.equal(Status.NOT_FOUND);
      expect(err.details.replace(jobId, '<id>')).to.equal(await unknownJobDetails(get));
      expect((await mesh.jobs.get({ jobId }, as(KEYS.acme))).job!.id).to.equal(jobId);
    });

    it('Watch of another tenant\'s job is NOT_FOUND before any event, with the same message', async () => {
      const watch = (id: string) => collect(mesh.jobs.watch({ jobId: id, afterSequence: 0 }, as(KEYS.globex)));
      const err = await grpcError(watch(jobId));
      expect(err.code).to.equal(Status.NOT_FOUND);
      expect(err.details.replace(jobId, '<id>')).to.equal(await unknownJobDetails(watch));
    });

    it('Cancel of another tenant\'s job is NOT_FOUND and leaves the job running', async () => {
      const cancel = (id: string) => mesh.jobs.cancel({ jobId: id }, as(KEYS.globex));
      const err = await grpcError(cancel(jobId));
      expect(err.code).to.equal(Status.NOT_FOUND);
      expect(err.details.replace(jobId, '<id>')).to.equal(await unknownJobDetails(cancel));
      const state = (await mesh.jobs.get({ jobId }, as(KEYS.acme))).job!.state;
      expect([JobState.JOB_STATE_QUEUED, JobState.JOB_STATE_RUNNING]).to.include(state);
    });

    it('List shows each tenant only its own jobs, also when given a page token from another tenant', async () => {
      const mine = (await mesh.jobs.submit({ spec: quickJob() }, as(KEYS.globex))).job!.id;
      const globexJobs = await mesh.jobs.list({ pageSize: 100, pageToken: '' }, as(KEYS.globex));
      expect(globexJobs.jobs.map((j) => j.id)).to.deep.equal([mine]);
      const acmeJobs = await mesh.jobs.list({ pageSize: 100, pageToken: '' }, as(KEYS.acme));
      expect(acmeJobs.jobs.map((j) => j.id)).to.deep.equal([jobId]);
      // acme's page token (after its newest job) used by globex must not open acme's list.
      const second = (await mesh.jobs.submit({ spec: quickJob() }, as(KEYS.acme))).job!.id;
      const page1 = await mesh.jobs.list({ pageSize: 1, pageToken: '' }, as(KEYS.acme));
      expect(page1.jobs.map((j) => j.id)).to.deep.equal([second]);
      const borrowed = await mesh.jobs.list({ pageSize: 100, pageToken: page1.nextPageToken }, as(KEYS.globex));
      expect(borrowed.jobs.map((j) => j.id)).not.to.include(jobId);
    });

    it('the scheduler refuses a tenant name that is not a safe path segment', async () => {
      const channel = openChannel(mesh.scheduler.address);
      const scheduler = createMeshClient(SchedulerServiceDefinition, channel);
      const err = await grpcError(scheduler.getJob({ tenant: '../acme', jobId })).finally(() => channel.close());
      expect(err.code).to.equal(Status.INVALID_ARGUMENT);
      expect(err.details).to.match(/^tenant a tenant name must be 1 to 64 of a-z/);
    });
  });

  describe('limits: a tenant over one is refused, naming it; the others go on', () => {
    let mesh: TestMesh;
    afterEach(() => mesh?.stop());

    const keys = parseApiKeys(`acme=${KEYS.acme},globex=${KEYS.globex}`);
    const predict = (key: string, input = 'hello world') => mesh.inference.predict({ model: 'echo', input }, as(key));

    it('requests in flight (--tenant-max-in-flight)', async () => {
      // Every call through the scheduler's queue: a permit the gateway holds would take one of the
      // two slots, and a call over the limit then waits for it (test/integration/permits.test.ts).
      mesh = await startMesh({ workers: [{ echoDelayMs: 200 }], gateway: { apiKeys: keys, permits: false }, scheduler: { tenantMaxInFlight: 2 } });
      const running = [predict(KEYS.acme), predict(KEYS.acme)];
      await until(() => mesh.scheduler.queue.tenantUsage('acme').open === 2, 5000, 'two acme requests open');
      const err = await grpcError(predict(KEYS.acme));
      expect([Status[err.code], err.details]).to.deep.equal(['RESOURCE_EXHAUSTED', 'tenant "acme" has 2 requests in flight, its limit (--tenant-max-in-flight)']);
      await predict(KEYS.globex);
      await Promise.all(running);
      await predict(KEYS.acme);
    });

    it('requests queued (--tenant-max-queued)', async () => {
      mesh = await startMesh({ workers: [{ echoDelayMs: 200 }], gateway: { apiKeys: keys }, maxInFlight: 1, scheduler: { tenantMaxQueued: 1 } });
      const running = [predict(KEYS.acme), predict(KEYS.acme)];
      await until(() => mesh.scheduler.queue.tenantUsage('acme').queued === 1, 5000, 'one acme request queued');
      const err = await grpcError(predict(KEYS.acme));
      expect([Status[err.code], err.details]).to.deep.equal(['RESOURCE_EXHAUSTED', 'tenant "acme" has 1 request queued, its limit (--tenant-max-queued)']);
      await Promise.all([...running, predict(KEYS.globex)]);
    });

    it('request rate, with a per-tenant override (--tenant-limits)', async () => {
      mesh = await startMesh({ gateway: { apiKeys: keys }, scheduler: { tenantLimits: overrides('acme:rate=0.5,burst=2') } });
      await predict(KEYS.acme);
      await predict(KEYS.acme);
      const err = await grpcError(predict(KEYS.acme));
      expect(Status[err.code]).to.equal('RESOURCE_EXHAUSTED');
      expect(err.details).to.match(/^tenant "acme" is over its request rate, its limit 0.5\/s with bursts of 2 \(rate of "acme" in --tenant-limits, burst of "acme" in --tenant-limits\); retry in \d+ ms$/);
      for (let i = 0; i < 5; i++) await predict(KEYS.globex);
    });

    it('unfinished jobs (--tenant-max-active-jobs)', async () => {
      mesh = await startMesh({ workers: [{ echoDelayMs: 100 }], gateway: { apiKeys: keys }, scheduler: { tenantMaxActiveJobs: 1 } });
      const first = (await mesh.jobs.submit({ spec: longJob() }, as(KEYS.acme))).job!.id;
      const err = await grpcError(mesh.jobs.submit({ spec: quickJob() }, as(KEYS.acme)));
      expect([Status[err.code], err.details]).to.deep.equal(['RESOURCE_EXHAUSTED', 'tenant "acme" has 1 unfinished job, its limit (--tenant-max-active-jobs)']);
      await mesh.jobs.submit({ spec: quickJob() }, as(KEYS.globex));
      await mesh.jobs.cancel({ jobId: first }, as(KEYS.acme));
      await mesh.jobs.submit({ spec: quickJob() }, as(KEYS.acme));
    });

    it('unfinished jobs of all tenants together (--max-active-jobs), counted before the input is read', async () => {
      mesh = await startMesh({ workers: [{ echoDelayMs: 100 }], gateway: { apiKeys: keys }, scheduler: { maxActiveJobs: 2 } });
      // Submitted together, so each check happens while the others are still being admitted.
      const results = await Promise.allSettled([KEYS.acme, KEYS.globex, KEYS.acme, KEYS.globex].map((k) => mesh.jobs.submit({ spec: longJob() }, as(k))));
      expect(results.filter((r) => r.status === 'fulfilled')).to.have.length(2);
      const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => (r.reason as Error).message);
      expect(refused).to.have.length(2);
      for (const message of refused) expect(message).to.match(/RESOURCE_EXHAUSTED.*too many unfinished jobs: 2, the limit of the scheduler \(--max-active-jobs\)/);
    });

    it('Watch streams (--tenant-max-watches)', async () => {
      mesh = await startMesh({ workers: [{ echoDelayMs: 100 }], gateway: { apiKeys: keys }, scheduler: { tenantMaxWatches: 2 } });
      const acmeJob = (await mesh.jobs.submit({ spec: longJob() }, as(KEYS.acme))).job!.id;
      const globexJob = (await mesh.jobs.submit({ spec: longJob() }, as(KEYS.globex))).job!.id;
      const watches = [openWatch(mesh, KEYS.acme, acmeJob), openWatch(mesh, KEYS.acme, acmeJob)];
      try {
        await Promise.all(watches.map((w) => w.opened));
        const err = await grpcError(collect(mesh.jobs.watch({ jobId: acmeJob, afterSequence: 0 }, as(KEYS.acme))));
        expect([Status[err.code], err.details]).to.deep.equal(['RESOURCE_EXHAUSTED', 'tenant "acme" has 2 Watch streams open, its limit (--tenant-max-watches)']);
        const other = openWatch(mesh, KEYS.globex, globexJob);
        await other.opened;
        other.close();
        watches.pop()!.close();
        await until(() => mesh.scheduler.watches.count('acme') === 1, 5000, 'the closed watch to be counted out');
        const again = openWatch(mesh, KEYS.acme, acmeJob);
        await again.opened;
        again.close();
      } finally {
        for (const w of watches) w.close();
        await mesh.jobs.cancel({ jobId: acmeJob }, as(KEYS.acme));
        await mesh.jobs.cancel({ jobId: globexJob }, as(KEYS.globex));
      }
    });
  });

  describe('the key file', () => {
    let dir: string;
    let file: string;
    let mesh: TestMesh;
    const logged: string[] = [];
    const listModels = (key: string) => mesh.models.listModels({}, as(key));

    beforeEach(async () => {
      dir = mkdtempSync(join(tmpdir(), 'maas-keys-'));
      file = join(dir, 'keys.txt');
      writeFileSync(file, `# test keys\nacme ${hashApiKey(KEYS.acme)}\n`);
      mesh = await startMesh({ gateway: { apiKeysFile: file } });
    });
    afterEach(async () => {
      await mesh.stop();
      rmSync(dir, { recursive: true, force: true });
    });

    it('accepts a key added to the file and refuses a key removed from it, without a restart', async () => {
      await listModels(KEYS.acme);
      expect((await grpcError(listModels(KEYS.globex))).code).to.equal(Status.UNAUTHENTICATED);
      appendFileSync(file, `globex ${hashApiKey(KEYS.globex)}\n`);
      await eventually(() => listModels(KEYS.globex));
      writeFileSync(file, `globex ${hashApiKey(KEYS.globex)}\n`);
      await eventually(async () => expect((await grpcError(listModels(KEYS.acme))).code).to.equal(Status.UNAUTHENTICATED));
      await listModels(KEYS.globex);
    });

    it('keeps the keys in use when the edited file is bad, and logs why without any line of it', async () => {
      const gateway = await startGateway(
        { ...parseConfig(gatewaySchema, [], {}), port: 0, httpPort: 0, metricsPort: 0, scheduler: mesh.scheduler.address, balancer: mesh.balancer.address, apiKeysFile: file },
        createLogger('gateway', 'info', (line) => logged.push(line)),
      );
      try {
        writeFileSync(file, `acme ${hashApiKey(KEYS.acme)}\nglobex sk-live-PLAINTEXT-SECRET\n`);
        expect(gateway.reloadApiKeys()).to.equal(false);
        const warning = logged.find((l) => l.includes('API key file not reloaded'));
        expect(warning).to.include('line 2: the second field must be sha256:');
        expect(logged.join('\n')).not.to.include('PLAINTEXT-SECRET');
        expect(logged.join('\n')).not.to.include(hashApiKey(KEYS.acme).slice(7));
        const channel = openChannel(gateway.address);
        await createMeshClient(ModelServiceDefinition, channel).listModels({}, as(KEYS.acme)).finally(() => channel.close());
      } finally {
        await gateway.shutdown();
      }
    });

    it('refuses to start with a bad key file, naming the line', async () => {
      writeFileSync(file, `acme ${hashApiKey(KEYS.acme)}\n\nACME ${hashApiKey('x')}\n`);
      const started = startGateway({ ...parseConfig(gatewaySchema, [], {}), port: 0, httpPort: 0, metricsPort: 0, apiKeysFile: file }, createLogger('gateway', 'silent'));
      const err = await started.then(
        (g) => g.shutdown().then(() => expect.fail('started')),
        (e: Error) => e,
      );
      expect((err as Error).message).to.equal(`API key file ${file}, line 3: the tenant name must be 1 to 64 of a-z, 0-9, "-" and "_", starting with a letter or digit`);
    });
  });
});

/** Retries `check` until it passes (the file watch takes a moment); rethrows its last failure after 5 s. */
async function eventually(check: () => Promise<unknown>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await check();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}
