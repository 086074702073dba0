/**
 * Hostile values at the edge and behind it, each answered with a precise status that names the
 * field: 64-bit integers the generated code cannot hold, a page token nobody issued, and a
 * megabyte id, which must neither travel nor echo back, nor stall the connection other callers'
 * calls share.
 */
import { connect } from 'node:http2';
import { expect } from 'chai';
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { MAX_MESSAGE_CHARS } from '../../common/errors';
import { GetJobRequest, SubmitJobRequest } from '../../generated/maas/internal/v1/scheduler';
import { MapTask } from '../../generated/maas/internal/v1/task';
import { ExecuteRequest } from '../../generated/maas/internal/v1/worker';
import { JobSpec } from '../../generated/maas/v1/jobs';
import { GetRequest, ListRequest } from '../../generated/maas/v1/jobs';
import { PredictRequest } from '../../generated/maas/v1/inference';
import { RawClient } from '../raw-grpc';
import { Status, TestMesh, startMesh } from '../support';

const TOO_BIG = 2n ** 60n;
const U64_MAX = 2n ** 64n - 1n;
const bytes = (w: BinaryWriter) => w.finish();

describe('hostile input gets a precise answer', function () {
  this.timeout(60000);
  let mesh: TestMesh;
  let gateway: RawClient;
  let scheduler: RawClient;

  before(async () => {
    mesh = await startMesh({ workers: [{}] });
    gateway = new RawClient(`127.0.0.1:${mesh.gateway.port}`);
    scheduler = new RawClient(mesh.scheduler.address);
  });
  after(async () => {
    gateway?.close();
    scheduler?.close();
    await mesh?.stop();
  });

  describe('64-bit integers above 2^53 get INVALID_ARGUMENT naming the field', () => {
    it('Generate seed', async () => {
      // model, prompt, seed (field 5)
      const request = bytes(new BinaryWriter().uint32((1 << 3) | 2).string('echo').uint32((2 << 3) | 2).string('hi').uint32(5 << 3).uint64(TOO_BIG));
      const r = await gateway.serverStream('/maas.v1.InferenceService/Generate', request, { deadlineMs: 5000 });
      expect(r.code).to.equal(Status.INVALID_ARGUMENT);
      expect(r.details).to.match(/^seed must be from -9007199254740991 to 9007199254740991 \(2\^53 - 1\), given 1152921504606846976$/);
    });

    it('Watch after_sequence', async () => {
      const request = bytes(new BinaryWriter().uint32((1 << 3) | 2).string('job-1').uint32(2 << 3).uint64(U64_MAX));
      const r = await gateway.serverStream('/maas.v1.JobService/Watch', request, { deadlineMs: 5000 });
      expect(r.code).to.equal(Status.INVALID_ARGUMENT);
      expect(r.details).to.contain('after_sequence must be from').and.contain('given 18446744073709551615');
    });

    it('Submit spec.timeout_ms, nested in the spec', async () => {
      const spec = new BinaryWriter().uint32((1 << 3) | 2).string('wordcount').uint32((5 << 3) | 2).string('spam-assassin').uint32(10 << 3).uint64(TOO_BIG).finish();
      const request = bytes(new BinaryWriter().uint32((1 << 3) | 2).bytes(spec));
      const r = await gateway.unary('/maas.v1.JobService/Submit', request, { deadlineMs: 5000 });
      expect(r.code).to.equal(Status.INVALID_ARGUMENT);
      expect(r.details).to.match(/^spec\.timeout_ms must be from/);
    });

    it('an internal service too: the scheduler\'s Schedule, task.generate.seed', async () => {
      const generate = new BinaryWriter().uint32((1 << 3) | 2).string('echo').uint32((2 << 3) | 2).string('hi').uint32(5 << 3).uint64(TOO_BIG).finish();
      const task = new BinaryWriter().uint32((1 << 3) | 2).string('r1').uint32((10 << 3) | 2).bytes(generate).finish();
      const r = await scheduler.serverStream('/maas.internal.v1.SchedulerService/Schedule', bytes(new BinaryWriter().uint32((1 << 3) | 2).bytes(task)), { deadlineMs: 5000 });
      expect(r.code).to.equal(Status.INVALID_ARGUMENT);
      expect(r.details).to.match(/^task\.generate\.seed must be from/);
    });

    it('a value just at 2^53 - 1 is taken as given (NOT_FOUND for the unknown job, not INVALID_ARGUMENT)', async () => {
      const request = bytes(new BinaryWriter().uint32((1 << 3) | 2).string('job-1').uint32(2 << 3).uint64(BigInt(Number.MAX_SAFE_INTEGER)));
      const r = await gateway.serverStream('/maas.v1.JobService/Watch', request, { deadlineMs: 5000 });
      expect(r.code).to.equal(Status.NOT_FOUND);
    });
  });

  it('a malformed page_token gets INVALID_ARGUMENT naming it, at the gateway and at the scheduler', async () => {
    const atGateway = await gateway.unary('/maas.v1.JobService/List', ListRequest.encode({ pageSize: 0, pageToken: 'not-a-token' }).finish(), { deadlineMs: 5000 });
    expect(atGateway.code).to.equal(Status.INVALID_ARGUMENT);
    expect(atGateway.details).to.match(/^page_token must be/);
    const tooLong = await gateway.unary('/maas.v1.JobService/List', ListRequest.encode({ pageSize: 0, pageToken: 'x'.repeat(10_000) }).finish(), { deadlineMs: 5000 });
    expect(tooLong.code).to.equal(Status.INVALID_ARGUMENT);
    expect(tooLong.details).to.equal('page_token must be at most 512 characters, given a string of 10000 characters');
  });

  it('a 1 MB job_id is refused at the gateway before it travels, and its message echoes no more than a prefix', async () => {
    const r = await gateway.unary('/maas.v1.JobService/Get', GetRequest.encode({ jobId: 'j'.repeat(1 << 20) }).finish(), { deadlineMs: 5000 });
    expect(r.code).to.equal(Status.INVALID_ARGUMENT);
    expect(r.details).to.equal('job_id must be at most 128 characters, given a string of 1048576 characters');
  });

  it('behind the edge, a NOT_FOUND for a 1 MB job id quotes only its first characters', async () => {
    const r = await scheduler.unary('/maas.internal.v1.SchedulerService/GetJob', GetJobRequest.encode({ tenant: 'anonymous', jobId: 'j'.repeat(1 << 20) }).finish(), { deadlineMs: 5000 });
    expect(r.code).to.equal(Status.NOT_FOUND);
    expect(r.details).to.match(/^job "j{32}"\.\.\. \(1048576 characters\) not found$/);
    expect(r.details.length).to.be.at.most(MAX_MESSAGE_CHARS);
  });

  it('a worker refusing an unknown 50,000-character mapper quotes only its first characters (found by the fuzzer)', async () => {
    const worker = new RawClient(mesh.workers[0].address);
    try {
      const mapper = 'é'.repeat(50_000);
      const map = MapTask.fromPartial({ jobId: 'job-x', taskIndex: 0, attempt: 1, tasksTotal: 1, recordCount: 1, records: [{ text: 'a', label: '' }], spec: JobSpec.fromPartial({ map: { $case: 'mapper', mapper } }) });
      const request = ExecuteRequest.encode({ task: { requestId: 'r', tenant: 't', request: { $case: 'map', map } } }).finish();
      const r = await worker.serverStream('/maas.internal.v1.WorkerService/Execute', request, { deadlineMs: 5000 });
      expect(r.code).to.equal(Status.INVALID_ARGUMENT);
      expect(r.details).to.equal(`spec.mapper must be one of wordcount, given "${'é'.repeat(32)}"... (50000 characters)`);
    } finally {
      worker.close();
    }
  });

  it('the scheduler refuses a spec with shard_size 0 from a caller that skipped the gateway (was INTERNAL; found by the fuzzer)', async () => {
    const spec = JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'inline', inline: { records: [{ text: 'a b', label: '' }] } }, shardSize: 0 });
    const r = await scheduler.unary('/maas.internal.v1.SchedulerService/SubmitJob', SubmitJobRequest.encode({ tenant: 'anonymous', spec }).finish(), { deadlineMs: 5000 });
    expect(r.code).to.equal(Status.INVALID_ARGUMENT);
    expect(r.details).to.equal('spec.shard_size must be at least 1, given 0');
  });

  /** Runs `hostile` while 40 Predicts from another client share the gateway's connection to the scheduler; every Predict must succeed. */
  async function predictsSurvive(hostile: () => Promise<unknown>): Promise<void> {
    const other = new RawClient(`127.0.0.1:${mesh.gateway.port}`);
    try {
      const predict = () => other.unary('/maas.v1.InferenceService/Predict', PredictRequest.encode({ model: 'echo', input: 'hello', priority: 0, affinityKey: '' }).finish(), { deadlineMs: 10_000 });
      expect((await predict()).code).to.equal(Status.OK);
      const predicts = Array.from({ length: 40 }, (_, i) => new Promise((r) => setTimeout(r, i * 25)).then(predict));
      await hostile();
      const outcomes = await Promise.all(predicts);
      expect(outcomes.map((o) => `${Status[o.code]} ${o.details}`).filter((o) => !o.startsWith('OK'))).to.deep.equal([]);
      expect((await predict()).code).to.equal(Status.OK);
    } finally {
      other.close();
    }
  }

  it("one caller's 1 MB job_id (Get, Cancel, Watch) does not stall other callers' Predicts", async () => {
    await predictsSurvive(async () => {
      const id = GetRequest.encode({ jobId: 'j'.repeat(1 << 20) }).finish();
      const outcomes = await Promise.all([
        gateway.unary('/maas.v1.JobService/Get', id, { deadlineMs: 5000 }),
        gateway.unary('/maas.v1.JobService/Cancel', id, { deadlineMs: 5000 }),
        gateway.serverStream('/maas.v1.JobService/Watch', id, { deadlineMs: 5000 }),
      ]);
      expect(outcomes.map((o) => o.code)).to.deep.equal([Status.INVALID_ARGUMENT, Status.INVALID_ARGUMENT, Status.INVALID_ARGUMENT]);
    });
  });

  it("a message at the gateway's size limit gets INVALID_ARGUMENT, one byte over RESOURCE_EXHAUSTED, and neither stalls other callers", async () => {
    const limit = 4 * 1024 * 1024;
    // A GetRequest is 1 tag byte, a 4-byte length and the id.
    const atLimit = GetRequest.encode({ jobId: 'j'.repeat(limit - 5) }).finish();
    expect(atLimit.length).to.equal(limit);
    const over = GetRequest.encode({ jobId: 'j'.repeat(limit - 4) }).finish();
    await predictsSurvive(async () => {
      const [a, b] = await Promise.all([gateway.unary('/maas.v1.JobService/Get', atLimit, { deadlineMs: 5000 }), gateway.unary('/maas.v1.JobService/Get', over, { deadlineMs: 5000 })]);
      expect(a.code).to.equal(Status.INVALID_ARGUMENT);
      expect(b.code).to.equal(Status.RESOURCE_EXHAUSTED);
    });
  });

  it('every server bounds the calls one connection may hold open (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)', async () => {
    const maxStreams = (address: string) =>
      new Promise<number | undefined>((resolve, reject) => {
        const session = connect(`http://${address}`);
        session.once('error', reject);
        session.once('remoteSettings', (settings) => {
          session.close();
          resolve(settings.maxConcurrentStreams);
        });
      });
    expect(await maxStreams(`127.0.0.1:${mesh.gateway.port}`)).to.equal(100);
    expect(await maxStreams(mesh.scheduler.address)).to.equal(4096);
    expect(await maxStreams(mesh.balancer.address)).to.equal(4096);
    expect(await maxStreams(mesh.aggregator.address)).to.equal(1024);
    expect(await maxStreams(mesh.workers[0].address)).to.equal(1024);
  });
});
