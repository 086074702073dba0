/**
 * Honest status codes, and waiting where waiting is right: a mesh with no worker ready answers
 * UNAVAILABLE (the mesh cannot answer now), not NOT_FOUND; NOT_FOUND is kept for a model no worker
 * has offered; a model whose workers went away is UNAVAILABLE; the balancer down is UNAVAILABLE.
 * A job whose tasks find no worker waits for one (a task_waiting event, no attempt used) and
 * completes once a worker joins, or fails when its deadline passes.
 */
import { expect } from 'chai';
import { Channel } from 'nice-grpc';
import { createMeshClient, openChannel } from '../../common/client';
import { GRPCInferenceServiceDefinition } from '../../generated/inference/grpc_service';
import { JobEvent, JobSpec } from '../../generated/maas/v1/jobs';
import { Status, TestMesh, grpcError, startMesh } from '../support';

/** A word count over two inline records in two tasks, with one attempt per task. */
const wordcount = (over: Partial<JobSpec> = {}) =>
  JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'inline', inline: { records: [{ text: 'a b b' }, { text: 'c c c' }] } }, shardSize: 1, reducer: 'sum', maxAttempts: 1, ...over });

const FINAL = new Set(['completed', 'failed', 'cancelled']);

describe('honest status codes; jobs wait for a worker', function () {
  this.timeout(60_000);
  let mesh: TestMesh;

  before(async () => {
    mesh = await startMesh({ workers: [] });
  });
  after(async () => {
    channel?.close();
    await mesh.stop().catch(() => undefined);
  });

  let channel: Channel | undefined;
  /** A client of the gateway's KServe v2 service. */
  const kserve = () => createMeshClient(GRPCInferenceServiceDefinition, (channel ??= openChannel(mesh.gateway.address)));

  /** Watches a job to its end; `onEvent` may act on each event (e.g. start a worker). */
  async function watchToEnd(jobId: string, onEvent: (e: JobEvent, all: JobEvent[]) => Promise<void> | void = () => undefined): Promise<JobEvent[]> {
    const events: JobEvent[] = [];
    for await (const { event } of mesh.jobs.watch({ jobId }, { deadline: Date.now() + 30_000 })) {
      events.push(event!);
      await onEvent(event!, events);
      if (FINAL.has(event!.event?.$case ?? '')) break;
    }
    return events;
  }
  const cases = (events: JobEvent[]) => events.map((e) => e.event?.$case);

  it('with no worker ready yet, Predict and KServe ModelMetadata are UNAVAILABLE, not NOT_FOUND', async () => {
    const err = await grpcError(mesh.inference.predict({ model: 'echo', input: 'hello' }));
    expect(Status[err.code], err.details).to.equal('UNAVAILABLE');
    expect(err.details).to.include('no worker is ready yet').and.include('"echo"');
    const kserveErr = await grpcError(kserve().modelMetadata({ name: 'echo', version: '' }));
    expect(Status[kserveErr.code], kserveErr.details).to.equal('UNAVAILABLE');
  });

  it('a job submitted before any worker is ready waits (task_waiting, no attempt used) and completes once a worker joins', async () => {
    const { job } = await mesh.jobs.submit({ spec: wordcount() });
    let started = false;
    const events = await watchToEnd(job!.id, async (e) => {
      if (e.event?.$case === 'taskWaiting' && !started) {
        started = true;
        expect(e.event.taskWaiting.reason).to.include('no ready worker serves');
        await mesh.addWorker();
      }
    });
    expect(cases(events), 'events').to.include('taskWaiting').and.include('completed');
    expect(cases(events), 'a wait is not a failed attempt').to.not.include('taskRetried');
    expect(cases(events).filter((c) => c === 'taskWaiting'), 'one task_waiting per wait').to.have.lengthOf(1);
    const last = events.at(-1)!.event!;
    const words = last.$case === 'completed' && last.completed.result?.$case === 'wordCounts' ? last.completed.result.wordCounts.words : [];
    expect(words).to.deep.equal([
      { word: 'c', count: 3 },
      { word: 'b', count: 2 },
      { word: 'a', count: 1 },
    ]);
  });

  it('a model no worker has offered is NOT_FOUND, naming the models that exist', async () => {
    const err = await grpcError(mesh.inference.predict({ model: 'no-such-model', input: 'hello' }));
    expect(Status[err.code], err.details).to.equal('NOT_FOUND');
    expect(err.details).to.include('"no-such-model" not found; available: echo');
  });

  it('a model offered before whose workers went away is UNAVAILABLE, and GetModel shows it with no ready worker', async () => {
    expect((await mesh.inference.predict({ model: 'echo', input: 'hello' })).text).to.equal('hello');
    const worker = mesh.workers.pop()!;
    await worker.shutdown();
    const err = await grpcError(mesh.inference.predict({ model: 'echo', input: 'hello' }));
    expect(Status[err.code], err.details).to.equal('UNAVAILABLE');
    expect(err.details).to.include('no ready worker serves model "echo"');
    const { model } = await mesh.models.getModel({ name: 'echo' });
    expect(model).to.include({ name: 'echo', readyWorkers: 0 });
    const kserveErr = await grpcError(kserve().modelMetadata({ name: 'echo', version: '' }));
    expect(Status[kserveErr.code], kserveErr.details).to.equal('UNAVAILABLE');
    expect(kserveErr.details).to.include('no ready worker serves model "echo" now');
  });

  it('a job that waits for a worker past its deadline fails with the deadline, having used no attempt', async () => {
    const { job } = await mesh.jobs.submit({ spec: wordcount({ timeoutMs: 1500 }) });
    const events = await watchToEnd(job!.id);
    expect(cases(events)).to.include('taskWaiting').and.not.include('taskRetried').and.not.include('taskFailed');
    const last = events.at(-1)!.event!;
    expect(last.$case).to.equal('failed');
    expect((last as { failed: { error: string } }).failed.error).to.include('deadline exceeded');
  });

  it('with the balancer down, Predict and ListModels are UNAVAILABLE', async () => {
    await mesh.balancer.shutdown();
    const predict = await grpcError(mesh.inference.predict({ model: 'echo', input: 'hello' }));
    expect(Status[predict.code], predict.details).to.equal('UNAVAILABLE');
    const list = await grpcError(mesh.models.listModels({}));
    expect(Status[list.code], list.details).to.equal('UNAVAILABLE');
    expect(list.details).to.include('balancer');
  });
});
