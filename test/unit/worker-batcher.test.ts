import { context, trace, type SpanContext, TraceFlags } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { expect } from 'chai';
import { MeshError } from '../../common/errors.js';
import { mulberry32 } from '../../common/random.js';
import { type Batch, type BatchPolicy, type BatchRequest, DynamicBatcher, type TensorMap } from '../../services/worker/batcher.js';

/**
 * A stand-in model whose every output row depends only on its own input row, so a batched run
 * must give each caller exactly what a run of its rows alone gives: `y = 2x + sum(row)` (FP32
 * [rows, k]) and `label` = `row:<sum>` (strings [rows]).
 */
function rowModel(batch: Pick<Batch, 'inputs' | 'rows'>): TensorMap {
  const x = batch.inputs.x;
  const k = x.dims[1];
  const data = x.data as Float32Array;
  const y = new Float32Array(data.length);
  const label: string[] = [];
  for (let r = 0; r < batch.rows; r++) {
    let sum = 0;
    for (let j = 0; j < k; j++) sum += data[r * k + j];
    for (let j = 0; j < k; j++) y[r * k + j] = 2 * data[r * k + j] + sum;
    label.push(`row:${sum}`);
  }
  return { y: { type: 'float32', dims: [batch.rows, k], data: y }, label: { type: 'string', dims: [batch.rows], data: label } };
}

function xInput(rows: number, k: number, seed: number): TensorMap {
  const random = mulberry32(seed);
  return { x: { type: 'float32', dims: [rows, k], data: Float32Array.from({ length: rows * k }, () => Math.round(random() * 1000) / 8) } };
}

/** A run that records its batches and, while `hold` is set, waits for `release()` before answering. */
function recordingRun() {
  const batches: { model: string; version: string; rows: number; requests: number; signal: AbortSignal }[] = [];
  let gate: Promise<void> | undefined;
  let open: () => void = () => {};
  const started: (() => void)[] = [];
  return {
    batches,
    run: async (batch: Batch): Promise<TensorMap> => {
      batches.push({ model: batch.model, version: batch.version, rows: batch.rows, requests: batch.requests, signal: batch.signal });
      for (const notify of started.splice(0)) notify();
      if (gate) await gate;
      return rowModel(batch);
    },
    hold() {
      gate = new Promise((resolve) => (open = resolve));
    },
    release() {
      gate = undefined;
      open();
    },
    /** Resolves when the next batch starts running. */
    nextStart(): Promise<void> {
      return new Promise((resolve) => started.push(resolve));
    },
  };
}

const LONG = 60_000;
const policy = (p: Partial<BatchPolicy> = {}): BatchPolicy => ({ maxBatchSize: 8, maxQueueDelayMs: LONG, ...p });
const request = (inputs: TensorMap, p: BatchPolicy, extra: Partial<BatchRequest> = {}): BatchRequest => ({ model: 'm', version: '1', inputs, policy: p, ...extra });

async function rejection(p: Promise<unknown>): Promise<MeshError> {
  try {
    await p;
  } catch (err) {
    return err as MeshError;
  }
  throw new Error('expected a rejection');
}

describe('worker DynamicBatcher', () => {
  it('under concurrency each caller gets exactly its own rows, equal to a run of them alone', async () => {
    const rec = recordingRun();
    const batcher = new DynamicBatcher({ run: rec.run, maxQueuedRequests: 100 });
    const p = policy({ maxBatchSize: 16, maxQueueDelayMs: 5 });
    const random = mulberry32(7);
    const inputs = Array.from({ length: 40 }, (_, i) => xInput(1 + Math.floor(random() * 4), 3, i + 1));
    const results = await Promise.all(inputs.map((input) => batcher.submit(request(input, p))));
    results.forEach((result, i) => {
      const alone = rowModel({ inputs: inputs[i], rows: inputs[i].x.dims[0] });
      expect(result.y.dims, `caller ${i}`).to.deep.equal(alone.y.dims);
      expect([...(result.y.data as Float32Array)], `caller ${i}`).to.deep.equal([...(alone.y.data as Float32Array)]);
      expect(result.label.data, `caller ${i}`).to.deep.equal(alone.label.data);
    });
    // Really batched: fewer runs than callers, none over max_batch_size, every row run once.
    expect(rec.batches.length).to.be.lessThan(inputs.length);
    expect(Math.max(...rec.batches.map((b) => b.rows))).to.be.at.most(16);
    expect(rec.batches.reduce((sum, b) => sum + b.rows, 0)).to.equal(inputs.reduce((sum, input) => sum + input.x.dims[0], 0));
    expect(batcher.stats).to.include({ queued: 0, running: 0, batches: rec.batches.length });
  });

  it('runs a batch as soon as it holds max_batch_size rows, without waiting for the delay', async () => {
    const rec = recordingRun();
    const batcher = new DynamicBatcher({ run: rec.run, maxQueuedRequests: 10 });
    const p = policy({ maxBatchSize: 4, maxQueueDelayMs: LONG });
    await Promise.all([1, 2, 3, 4].map((seed) => batcher.submit(request(xInput(1, 2, seed), p))));
    expect(rec.batches.map((b) => [b.requests, b.rows])).to.deep.equal([[4, 4]]);
  });

  it('runs a batch at the largest preferred batch size that fits', async () => {
    const rec = recordingRun();
    const batcher = new DynamicBatcher({ run: rec.run, maxQueuedRequests: 10 });
    const p = policy({ maxBatchSize: 16, maxQueueDelayMs: LONG, preferredBatchSizes: [2, 3, 32] });
    await Promise.all([1, 2, 3].map((seed) => batcher.submit(request(xInput(1, 2, seed), p))));
    expect(rec.batches.map((b) => b.rows)).to.deep.equal([3]);
  });

  it('runs a partial batch once its oldest request has waited max_queue_delay', async () => {
    const rec = recordingRun();
    const batcher = new DynamicBatcher({ run: rec.run, maxQueuedRequests: 10 });
    const p = policy({ maxBatchSize: 64, maxQueueDelayMs: 30 });
    const start = performance.now();
    const first = batcher.submit(request(xInput(2, 2, 1), p));
    const second = batcher.submit(request(xInput(1, 2, 2), p));
    await Promise.all([first, second]);
    expect(performance.now() - start).to.be.at.least(25);
    expect(rec.batches.map((b) => [b.requests, b.rows])).to.deep.equal([[2, 3]]);
  });

  it('never stacks inputs whose type or non-batch dims differ, nor different models or versions', async () => {
    const rec = recordingRun();
    const batcher = new DynamicBatcher({ run: rec.run, maxQueuedRequests: 10 });
    const p = policy({ maxBatchSize: 2, maxQueueDelayMs: 20 });
    const k3 = xInput(1, 3, 1);
    const k4 = xInput(1, 4, 2);
    const f64: TensorMap = { x: { type: 'float64', dims: [1, 3], data: Float64Array.from(k3.x.data as Float32Array) } };
    const results = await Promise.all([
      batcher.submit(request(k3, p)),
      batcher.submit(request(k4, p)),
      batcher.submit(request(f64, p)),
      batcher.submit(request(k3, p, { version: '2' })),
      batcher.submit(request(k3, p, { model: 'other' })),
    ]);
    // Five runs of one request each: nothing could be stacked with anything else.
    expect(rec.batches.map((b) => b.requests)).to.deep.equal([1, 1, 1, 1, 1]);
    expect(rec.batches.map((b) => `${b.model}@${b.version}`).sort()).to.deep.equal(['m@1', 'm@1', 'm@1', 'm@2', 'other@1']);
    expect(results[1].y.dims).to.deep.equal([1, 4]);
  });

  it('keeps each batch within max_batch_size and refuses a request with more rows than that', async () => {
    const rec = recordingRun();
    const batcher = new DynamicBatcher({ run: rec.run, maxQueuedRequests: 20 });
    const p = policy({ maxBatchSize: 8, maxQueueDelayMs: 5 });
    await Promise.all(Array.from({ length: 10 }, (_, i) => batcher.submit(request(xInput(3, 2, i), p))));
    expect(rec.batches.every((b) => b.rows <= 8)).to.equal(true);
    expect(rec.batches.reduce((sum, b) => sum + b.rows, 0)).to.equal(30);
    const err = await rejection(batcher.submit(request(xInput(9, 2, 1), p)));
    expect(err).to.be.instanceOf(MeshError);
    expect(err.kind).to.equal('invalid_argument');
    expect(err.message).to.equal('inputs of model "m" have 9 rows, more than its max_batch_size 8');
  });

  it('a caller that aborts while queued leaves the batch; the others run without its rows', async () => {
    const rec = recordingRun();
    const batcher = new DynamicBatcher({ run: rec.run, maxQueuedRequests: 10 });
    const p = policy({ maxBatchSize: 8, maxQueueDelayMs: 0 });
    rec.hold();
    const started = rec.nextStart();
    const blocker = batcher.submit(request(xInput(1, 2, 1), p));
    await started; // the only run slot is now busy, so the next requests queue
    const leaver = new AbortController();
    const a = batcher.submit(request(xInput(2, 2, 2), p));
    const b = batcher.submit(request(xInput(3, 2, 3), p, { signal: leaver.signal }));
    const c = batcher.submit(request(xInput(1, 2, 4), p));
    expect(batcher.stats.queued).to.equal(3);
    leaver.abort();
    const err = await rejection(b);
    expect(err.kind).to.equal('cancelled');
    expect(batcher.stats.queued).to.equal(2);
    rec.release();
    const [ra, rc] = await Promise.all([a, c, blocker]);
    expect(rec.batches.map((x) => [x.requests, x.rows])).to.deep.equal([
      [1, 1],
      [2, 3],
    ]);
    expect([...(ra.y.data as Float32Array)]).to.deep.equal([...(rowModel({ inputs: xInput(2, 2, 2), rows: 2 }).y.data as Float32Array)]);
    expect([...(rc.y.data as Float32Array)]).to.deep.equal([...(rowModel({ inputs: xInput(1, 2, 4), rows: 1 }).y.data as Float32Array)]);
  });

  it('a caller that aborts during the run is answered at once; the others still get their rows', async () => {
    const rec = recordingRun();
    const batcher = new DynamicBatcher({ run: rec.run, maxQueuedRequests: 10 });
    const p = policy({ maxBatchSize: 3, maxQueueDelayMs: LONG });
    rec.hold();
    const leaver = new AbortController();
    const started = rec.nextStart();
    const a = batcher.submit(request(xInput(1, 2, 1), p));
    const b = batcher.submit(request(xInput(1, 2, 2), p, { signal: leaver.signal }));
    const c = batcher.submit(request(xInput(1, 2, 3), p));
    await started;
    leaver.abort();
    // b is refused while the run is still held.
    expect((await rejection(b)).kind).to.equal('cancelled');
    expect(rec.batches[0].signal.aborted).to.equal(false);
    rec.release();
    const [ra, rc] = await Promise.all([a, c]);
    expect(ra.label.data).to.deep.equal(rowModel({ inputs: xInput(1, 2, 1), rows: 1 }).label.data);
    expect(rc.label.data).to.deep.equal(rowModel({ inputs: xInput(1, 2, 3), rows: 1 }).label.data);
  });

  it("tells the run when every caller of its batch has gone (the batch's signal aborts)", async () => {
    const rec = recordingRun();
    const batcher = new DynamicBatcher({ run: rec.run, maxQueuedRequests: 10 });
    const p = policy({ maxBatchSize: 2, maxQueueDelayMs: LONG });
    rec.hold();
    const one = new AbortController();
    const two = new AbortController();
    const started = rec.nextStart();
    const a = batcher.submit(request(xInput(1, 2, 1), p, { signal: one.signal }));
    const b = batcher.submit(request(xInput(1, 2, 2), p, { signal: two.signal }));
    await started;
    one.abort();
    expect(rec.batches[0].signal.aborted).to.equal(false);
    two.abort();
    expect(rec.batches[0].signal.aborted).to.equal(true);
    expect((await rejection(a)).kind).to.equal('cancelled');
    expect((await rejection(b)).kind).to.equal('cancelled');
    rec.release();
  });

  it('refuses a caller whose deadline passes while it is queued, and only that caller', async () => {
    const rec = recordingRun();
    const batcher = new DynamicBatcher({ run: rec.run, maxQueuedRequests: 10 });
    const p = policy({ maxBatchSize: 8, maxQueueDelayMs: 0 });
    rec.hold();
    const started = rec.nextStart();
    const blocker = batcher.submit(request(xInput(1, 2, 1), p));
    await started;
    const late = batcher.submit(request(xInput(1, 2, 2), p, { deadline: Date.now() + 20 }));
    const patient = batcher.submit(request(xInput(1, 2, 3), p, { deadline: Date.now() + LONG }));
    const err = await rejection(late);
    expect(err.kind).to.equal('deadline_exceeded');
    expect(err.message).to.equal('the deadline of the request to model "m" version "1" passed while it waited to be batched');
    rec.release();
    await Promise.all([blocker, patient]);
    expect(rec.batches.map((b) => b.rows)).to.deep.equal([1, 1]);
    // A deadline already past is refused without queueing.
    expect((await rejection(batcher.submit(request(xInput(1, 2, 4), p, { deadline: Date.now() - 1 })))).kind).to.equal('deadline_exceeded');
  });

  it('refuses a request when max_queued requests already wait', async () => {
    const rec = recordingRun();
    const batcher = new DynamicBatcher({ run: rec.run, maxQueuedRequests: 2 });
    const p = policy({ maxBatchSize: 8, maxQueueDelayMs: 0 });
    rec.hold();
    const started = rec.nextStart();
    const running = batcher.submit(request(xInput(1, 2, 1), p));
    await started;
    const queued = [batcher.submit(request(xInput(1, 2, 2), p)), batcher.submit(request(xInput(1, 2, 3), p))];
    const err = await rejection(batcher.submit(request(xInput(1, 2, 4), p)));
    expect(err.kind).to.equal('resource_exhausted');
    expect(err.message).to.equal('the batch queue is full (2 requests waiting)');
    rec.release();
    await Promise.all([running, ...queued]);
  });

  it('fails every caller of a batch whose run fails, and runs the next batch normally', async () => {
    let calls = 0;
    const batcher = new DynamicBatcher({
      maxQueuedRequests: 10,
      run: async (batch) => {
        if (calls++ === 0) throw new Error('session exploded');
        return rowModel(batch);
      },
    });
    const p = policy({ maxBatchSize: 2, maxQueueDelayMs: LONG });
    const failed = await Promise.allSettled([batcher.submit(request(xInput(1, 2, 1), p)), batcher.submit(request(xInput(1, 2, 2), p))]);
    expect(failed.map((r) => (r.status === 'rejected' ? (r.reason as Error).message : 'ok'))).to.deep.equal(['session exploded', 'session exploded']);
    const ok = await Promise.all([batcher.submit(request(xInput(1, 2, 3), p)), batcher.submit(request(xInput(1, 2, 4), p))]);
    expect(ok.map((r) => r.y.dims)).to.deep.equal([
      [1, 2],
      [1, 2],
    ]);
  });

  it('fails the batch when an output does not have one row per input row', async () => {
    const batcher = new DynamicBatcher({
      maxQueuedRequests: 10,
      run: async () => ({ y: { type: 'float32', dims: [1, 2], data: new Float32Array(2) } }),
    });
    const p = policy({ maxBatchSize: 2, maxQueueDelayMs: LONG });
    const results = await Promise.allSettled([batcher.submit(request(xInput(1, 2, 1), p)), batcher.submit(request(xInput(1, 2, 2), p))]);
    expect(results.map((r) => (r.status === 'rejected' ? (r.reason as Error).message : 'ok'))).to.deep.equal([
      'output "y" of model "m" has 1 rows for a batch of 2',
      'output "y" of model "m" has 1 rows for a batch of 2',
    ]);
  });

  it('refuses inputs that cannot be batched, naming the input', async () => {
    const batcher = new DynamicBatcher({ run: async (batch) => rowModel(batch), maxQueuedRequests: 10 });
    const p = policy();
    const cases: [TensorMap, string][] = [
      [{}, 'a request to model "m" has no inputs'],
      [{ x: { type: 'float32', dims: [2, 2], data: new Float32Array(3) } }, 'input "x" of shape [2, 2] needs 4 elements, given 3'],
      [
        { x: { type: 'float32', dims: [2, 2], data: new Float32Array(4) }, z: { type: 'float32', dims: [1], data: new Float32Array(1) } },
        'input "z" has 1 rows where the other inputs have 2; every input needs the same batch dimension',
      ],
      [{ x: { type: 'float32', dims: [], data: new Float32Array(1) } }, 'input "x" must have a batch dimension to be batched, given a scalar'],
    ];
    for (const [inputs, message] of cases) {
      const err = await rejection(batcher.submit(request(inputs, p)));
      expect(err.kind, message).to.equal('invalid_argument');
      expect(err.message).to.equal(message);
    }
  });

  it('refuses queued requests of an unloaded model version and leaves the others', async () => {
    const rec = recordingRun();
    const batcher = new DynamicBatcher({ run: rec.run, maxQueuedRequests: 10 });
    const p = policy({ maxBatchSize: 8, maxQueueDelayMs: LONG });
    const gone = batcher.submit(request(xInput(1, 2, 1), p));
    const stays = batcher.submit(request(xInput(1, 2, 2), policy({ maxBatchSize: 1 }), { version: '2' }));
    batcher.rejectQueued('m', '1', new MeshError('not_found', 'model "m" version "1" was unloaded'));
    expect((await rejection(gone)).kind).to.equal('not_found');
    await stays;
    expect(batcher.stats.queued).to.equal(0);
  });

  describe('tracing', () => {
    const exporter = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    const contextManager = new AsyncLocalStorageContextManager();
    before(() => context.setGlobalContextManager(contextManager.enable()));
    after(async () => {
      context.disable();
      await provider.shutdown();
    });
    beforeEach(() => exporter.reset());

    const callerSpan = (i: number): SpanContext => ({
      traceId: i.toString(16).padStart(32, 'a'),
      spanId: i.toString(16).padStart(16, 'b'),
      traceFlags: TraceFlags.SAMPLED,
    });

    it('records one batch.run span per run, linked to the span of every request in it', async () => {
      let activeInRun: string | undefined;
      const batcher = new DynamicBatcher({
        tracer: provider.getTracer('test'),
        maxQueuedRequests: 10,
        run: async (batch) => {
          activeInRun = trace.getActiveSpan()?.spanContext().spanId;
          return rowModel(batch);
        },
      });
      const p = policy({ maxBatchSize: 6, maxQueueDelayMs: LONG });
      await Promise.all([1, 2, 3].map((i) => batcher.submit(request(xInput(i, 2, i), p, { spanContext: callerSpan(i) }))));
      const spans = exporter.getFinishedSpans();
      expect(spans.map((s) => s.name)).to.deep.equal(['batch.run']);
      const [span] = spans;
      expect(span.links.map((l) => l.context.spanId)).to.deep.equal([callerSpan(1).spanId, callerSpan(2).spanId, callerSpan(3).spanId]);
      expect(span.links.map((l) => l.context.traceId)).to.deep.equal([callerSpan(1).traceId, callerSpan(2).traceId, callerSpan(3).traceId]);
      expect(span.attributes).to.deep.equal({ 'maas.model': 'm', 'maas.model_version': '1', 'maas.batch.size': 3, 'maas.batch.rows': 6 });
      // Work done by the run (ONNX Runtime spans, logs) belongs to the batch span.
      expect(activeInRun).to.equal(span.spanContext().spanId);
    });

    it('marks the span of a failed run with an error and links only valid span contexts', async () => {
      const batcher = new DynamicBatcher({
        tracer: provider.getTracer('test'),
        maxQueuedRequests: 10,
        run: async () => {
          throw new Error('boom');
        },
      });
      const p = policy({ maxBatchSize: 2 });
      await Promise.allSettled([
        batcher.submit(request(xInput(1, 2, 1), p, { spanContext: callerSpan(1) })),
        batcher.submit(request(xInput(1, 2, 2), p, { spanContext: trace.wrapSpanContext({ traceId: '0'.repeat(32), spanId: '0'.repeat(16), traceFlags: 0 }).spanContext() })),
      ]);
      const [span] = exporter.getFinishedSpans();
      expect(span.status).to.deep.include({ code: 2, message: 'boom' });
      expect(span.links.map((l) => l.context.spanId)).to.deep.equal([callerSpan(1).spanId]);
    });
  });
});
