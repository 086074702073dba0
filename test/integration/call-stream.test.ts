/**
 * Call streams (common/call-stream.ts) between a real client and a real server: many calls on one
 * stream, each with its own outputs, status, cancel and deadline, run through the server's
 * middleware like a plain call; the drain; hostile frames.
 */
import { expect } from 'chai';
import { createChannel, createClient, Channel, Status } from 'nice-grpc';
import { CallStreamClient, CallReplies, openCallStreamClient } from '../../common/call-stream.js';
import { MeshError } from '../../common/errors.js';
import { silentLogger } from '../../common/log.js';
import { MeshCallContext } from '../../common/middleware.js';
import { RunningGrpcServer, startGrpcServer } from '../../common/server.js';
import { ExecuteRequest, ExecuteResponse, WorkerServiceDefinition } from '../../generated/maas/internal/v1/worker.js';
import { collect, grpcError, until } from '../support.js';

/** A worker-shaped service whose Execute the tests steer by the Predict input. */
function testService(seen: { signals: AbortSignal[]; deadlines: (number | undefined)[]; traceparents: (string | undefined)[] }) {
  return {
    async *execute(request: ExecuteRequest, context: MeshCallContext): AsyncGenerator<ExecuteResponse> {
      const input = request.task?.request?.$case === 'predict' ? request.task.request.predict.input : '';
      seen.signals.push(context.signal);
      seen.deadlines.push(context.deadline);
      seen.traceparents.push(context.metadata.get('traceparent'));
      if (input === 'fail') throw new MeshError('failed_precondition', 'the model said no');
      if (input.startsWith('wait')) {
        // Runs until cancelled (or its deadline passes).
        yield { output: { workerId: 'w', output: { $case: 'prediction', prediction: { model: 'echo', label: 'started', probabilities: {}, text: '' } } } };
        await new Promise<void>((_, reject) => context.signal.addEventListener('abort', () => reject(context.signal.reason ?? new Error('aborted')), { once: true }));
      }
      const count = input.startsWith('many') || input.startsWith('flood') ? 50 : 1;
      for (let i = 0; i < count; i++) yield { output: { workerId: 'w', output: { $case: 'prediction', prediction: { model: 'echo', label: `${input}#${i}`, probabilities: {}, text: '' } } } };
      // A flood stays open once sent, until cancelled.
      if (input.startsWith('flood')) await new Promise<void>((_, reject) => context.signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true }));
    },
    async repositoryIndex() {
      return {};
    },
    async loadModel() {
      return {};
    },
    async unloadModel() {
      return {};
    },
  };
}

const predict = (input: string): ExecuteRequest => ({ task: { requestId: 'r', tenant: 't', request: { $case: 'predict', predict: { model: 'echo', input, priority: 0, affinityKey: '' } } } });
const labels = (responses: ExecuteResponse[]) => responses.map((r) => (r.output?.output?.$case === 'prediction' ? r.output.output.prediction.label : '?'));

describe('call streams: many calls on one stream', function () {
  this.timeout(20_000);
  let server: RunningGrpcServer;
  let channel: Channel;
  let client: CallStreamClient<ExecuteRequest, ExecuteResponse>;
  const seen = { signals: [] as AbortSignal[], deadlines: [] as (number | undefined)[], traceparents: [] as (string | undefined)[] };

  beforeEach(async () => {
    seen.signals.length = 0;
    seen.deadlines.length = 0;
    seen.traceparents.length = 0;
    server = await startGrpcServer({
      host: '127.0.0.1',
      port: 0,
      maxMessageBytes: 1 << 20,
      maxConcurrentStreams: 64,
      services: [{ definition: WorkerServiceDefinition, implementation: testService(seen) }],
      callStreams: [{ service: 0, calls: 'executeCalls', carries: 'execute' }],
      log: silentLogger,
      serving: true,
    });
    channel = createChannel(server.address);
    client = openCallStreamClient(WorkerServiceDefinition, channel, 'executeCalls', 'execute');
  });

  afterEach(async () => {
    client.close();
    channel.close();
    await server.shutdown(0);
  });

  it('carries 200 concurrent calls on one stream, each with its own outputs in order', async () => {
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => collect(client.call(predict(i % 2 ? `many-${i}` : `one-${i}`)))));
    results.forEach((r, i) => {
      const input = i % 2 ? `many-${i}` : `one-${i}`;
      expect(labels(r)).to.deep.equal(Array.from({ length: i % 2 ? 50 : 1 }, (_, k) => `${input}#${k}`));
    });
    expect(client.openStreams, 'streams opened').to.equal(1);
  });

  it('ends a call with the handler\'s status and message, as a plain call would', async () => {
    const err = await grpcError(collect(client.call(predict('fail'))));
    expect(err.code).to.equal(Status.FAILED_PRECONDITION);
    expect(err.details).to.equal('the model said no');
    // The stream is still good for the next call.
    expect(labels(await collect(client.call(predict('ok'))))).to.deep.equal(['ok#0']);
  });

  it('a cancel reaches the handler\'s signal within 100 ms, and the other calls go on', async () => {
    const controller = new AbortController();
    const calls = client.call(predict('wait-1'), { signal: controller.signal });
    const first = await calls.next();
    expect(first.done).to.equal(false);
    const other = collect(client.call(predict('many-other')));
    const signal = seen.signals[0];
    const cancelledAt = Date.now();
    controller.abort();
    await until(() => signal.aborted, 1000, 'the handler to see the cancel');
    expect(Date.now() - cancelledAt).to.be.below(100);
    expect(labels(await other)).to.have.lengthOf(50);
  });

  it('passes the deadline on, and ends a call whose deadline passes with DEADLINE_EXCEEDED', async () => {
    const deadline = Date.now() + 300;
    const err = await grpcError(collect(client.call(predict('wait-2'), { deadline })));
    expect(err.code).to.equal(Status.DEADLINE_EXCEEDED);
    expect(seen.deadlines[0], 'the handler\'s deadline').to.be.a('number');
    expect(Math.abs((seen.deadlines[0] as number) - deadline)).to.be.below(100);
    await until(() => seen.signals[0].aborted, 1000, 'the handler to stop');
  });

  it('a drain lets the calls in flight finish, refuses new ones, and ends the stream', async () => {
    const controller = new AbortController();
    const running = client.call(predict('wait-3'), { signal: controller.signal });
    await running.next();
    const draining = server.shutdown(10_000);
    await until(() => client.openStreams === 1 && seen.signals.length === 1, 1000);
    // A call started now is refused by the draining server; the client tries a new stream, which the closing server refuses too.
    const refused = await grpcError(collect(client.call(predict('late'))));
    expect(refused.code).to.equal(Status.UNAVAILABLE);
    expect(seen.signals, 'the late call never reached the handler').to.have.lengthOf(1);
    controller.abort();
    const started = Date.now();
    await draining;
    expect(Date.now() - started, 'the drain ended with the last call, not at its grace').to.be.below(5000);
    // The client half-closed the drained stream once its last call went; the server's end then closes it for good.
    await until(() => client.openStreams === 0, 1000, 'the client to forget the drained stream');
  });

  it('ends with INVALID_ARGUMENT a stream that sends call id 0 or an id already open, and a call whose request does not decode', async () => {
    const raw = createClient(WorkerServiceDefinition, channel);
    const send = async (frames: Parameters<typeof raw.executeCalls>[0]) => {
      const replies: CallReplies[] = [];
      try {
        for await (const r of raw.executeCalls(frames)) replies.push(r);
        return { replies };
      } catch (err) {
        return { replies, err: err as { code: Status; details: string } };
      }
    };
    const start = (callId: number, request: Uint8Array) => ({ callId, frame: { $case: 'start' as const, start: { request: Buffer.from(request), timeoutMs: 0, traceparent: '', tracestate: '' } } });
    const good = ExecuteRequest.encode(predict('wait-x')).finish();
    const zero = await send((async function* () {
      yield { frames: [start(0, good)] };
    })());
    expect(zero.err?.code).to.equal(Status.INVALID_ARGUMENT);
    expect(zero.err?.details).to.match(/call_id must be from 1/);
    const twice = await send((async function* () {
      yield { frames: [start(7, good), start(7, good)] };
    })());
    expect(twice.err?.code).to.equal(Status.INVALID_ARGUMENT);
    expect(twice.err?.details).to.match(/call_id 7 is already open/);
    const huge = await send((async function* () {
      yield { frames: [start(2 ** 60, good)] };
    })());
    expect(huge.err?.code, 'a call id past 2^53').to.equal(Status.INVALID_ARGUMENT);
    expect(huge.err?.details).to.match(/call_id must be from 1 to 2\^53 - 1/);
    // The server is still up and serving calls.
    expect(labels(await collect(client.call(predict('after'))))).to.deep.equal(['after#0']);
    const garbage = await send((async function* () {
      yield { frames: [start(3, Buffer.from([0xff, 0xff, 0xff]))] };
    })());
    const end = garbage.replies.flatMap((r) => r.replies).find((r) => r.callId === 3 && r.reply?.$case === 'end');
    expect(end?.reply?.$case === 'end' && end.reply.end.code).to.equal(Status.INVALID_ARGUMENT);
    expect(end?.reply?.$case === 'end' && end.reply.end.details).to.match(/request of call 3 is not a valid message/);
  });

  it('runs a call with the largest timeout_ms (2^32 - 1 ms, past what setTimeout holds) instead of ending it at once, and drops trace context not in W3C\'s shape', async () => {
    const raw = createClient(WorkerServiceDefinition, channel);
    const frames = (async function* () {
      const request = Buffer.from(ExecuteRequest.encode(predict('far')).finish());
      yield { frames: [{ callId: 9, frame: { $case: 'start' as const, start: { request, timeoutMs: 0xffffffff, traceparent: 'x\r\nInjected: yes', tracestate: '\u0000' } } }] };
      await new Promise((r) => setTimeout(r, 300));
    })();
    const replies: CallReplies[] = [];
    for await (const r of raw.executeCalls(frames)) replies.push(r);
    const got = replies.flatMap((r) => r.replies).filter((r) => r.callId === 9);
    expect(got.map((r) => r.reply?.$case)).to.deep.equal(['message', 'end']);
    const end = got[1].reply;
    expect(end?.$case === 'end' && end.end.code).to.equal(Status.OK);
    expect(Math.round(((seen.deadlines[0] as number) - Date.now()) / 3_600_000), 'hours the handler has').to.equal(1193);
    expect(seen.traceparents[0], 'the handler saw no traceparent').to.equal(undefined);
  });

  it('refuses a call past the limit of calls per stream with RESOURCE_EXHAUSTED', async () => {
    const controllers = Array.from({ length: 64 }, () => new AbortController());
    const open = controllers.map((c, i) => client.call(predict(`wait-${i}`), { signal: c.signal }));
    await Promise.all(open.map((c) => c.next()));
    const err = await grpcError(collect(client.call(predict('one-too-many'))));
    expect(err.code).to.equal(Status.RESOURCE_EXHAUSTED);
    expect(err.details).to.match(/64 calls are open on this stream/);
    for (const c of controllers) c.abort();
    await Promise.all(open.map((c) => c.next().catch(() => undefined)));
  });

  it('ends with RESOURCE_EXHAUSTED a call whose reader stops reading, and cancels its handler', async () => {
    const small = openCallStreamClient<ExecuteRequest, ExecuteResponse>(WorkerServiceDefinition, channel, 'executeCalls', 'execute', 256);
    try {
      const call = small.call(predict('flood-unread'));
      await call.next();
      await until(() => seen.signals.length === 1, 1000);
      // Not read: its 49 other outputs pile up past 256 bytes.
      await new Promise((r) => setImmediate(r));
      const err = await grpcError(collect(call));
      expect(err.code).to.equal(Status.RESOURCE_EXHAUSTED);
      expect(err.details).to.match(/were not read \(limit 256\)/);
      await until(() => seen.signals[0].aborted, 1000, 'the handler to be cancelled');
    } finally {
      small.close();
    }
  });
});
