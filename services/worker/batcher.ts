/**
 * Dynamic batching, as Triton's dynamic batcher does it: requests for the same model and version
 * that arrive close together are stacked along the first (batch) dimension, run once, and each
 * caller gets exactly its own rows back. Plain TypeScript: no gRPC, no process globals; the
 * worker supplies `run(batch)` (an ONNX Runtime session, say) and adapts errors to the wire.
 *
 * - Requests stack only when their stacking key matches: the same input names, and for each input
 *   the same data type and the same dimensions after the first. Others wait in their own queue.
 * - A queue is flushed when its rows reach the largest preferred batch size (or `maxBatchSize`
 *   when none is set), or when its oldest request has waited `maxQueueDelayMs`; a batch never
 *   holds more than `maxBatchSize` rows. At most `maxConcurrentRuns` batches of one model
 *   version run at once (Triton's instance count); while they run, new requests keep stacking.
 * - A caller whose signal aborts while queued leaves the queue; the batch forms without it. One
 *   that aborts during the run is answered at once and its rows are discarded; the others' are not.
 * - A caller whose deadline passes while queued is refused with `deadline_exceeded`.
 * - At most `maxQueuedRequests` requests wait across all queues; beyond that a submit is refused
 *   with `resource_exhausted`.
 * - Each run is one span, `batch.run`, linked to the span of every request in it.
 */
import { Link, ROOT_CONTEXT, SpanContext, SpanStatusCode, Tracer, context, isSpanContextValid, trace } from '@opentelemetry/api';
import { MeshError, quoteInput } from '../../common/errors.js';

/** The elements of a tensor, row-major: a typed array for numbers (bool as Uint8Array, FP16 as Uint16Array), strings for BYTES. */
export type TensorData =
  | Float32Array
  | Float64Array
  | Int8Array
  | Int16Array
  | Int32Array
  | BigInt64Array
  | Uint8Array
  | Uint16Array
  | Uint32Array
  | BigUint64Array
  | readonly string[]
  | readonly Uint8Array[];

/** A tensor as the batcher sees it: the same three fields as an ONNX Runtime `Tensor`. */
export interface BatchTensor {
  /** Element type, e.g. `float32` or `string`; only compared, never interpreted. */
  readonly type: string;
  /** Concrete dimensions; the first is the batch dimension (rows). */
  readonly dims: readonly number[];
  /** `dims` multiplied out elements, row-major. */
  readonly data: TensorData;
}

/** Named tensors: the inputs of a request or the outputs of a run. */
export type TensorMap = Readonly<Record<string, BatchTensor>>;

/** How one model version is batched (from its config.json's `max_batch_size` and `dynamic_batching`). */
export interface BatchPolicy {
  /** Most rows in one run; a request with more rows is refused. At least 1. */
  readonly maxBatchSize: number;
  /** Longest time the oldest queued request waits for others before its batch runs anyway. */
  readonly maxQueueDelayMs: number;
  /** Batch sizes the model runs best at; a queue holding the largest of them (<= maxBatchSize) runs at once. */
  readonly preferredBatchSizes?: readonly number[];
  /** Batches of this model version that may run at the same time (default 1). */
  readonly maxConcurrentRuns?: number;
}

/** One caller's request. */
export interface BatchRequest {
  /** Model name. */
  readonly model: string;
  /** Model version. */
  readonly version: string;
  /** The inputs; every one has the same number of rows (its first dimension). */
  readonly inputs: TensorMap;
  /** Batching settings of this model version; the latest submit's settings apply to its queues. */
  readonly policy: BatchPolicy;
  /** Aborting it takes the request out of its batch (see the module comment). */
  readonly signal?: AbortSignal;
  /** Absolute time (the batcher's clock, epoch ms by default) by which the request must have run. */
  readonly deadline?: number;
  /** The caller's span, linked from the batch run's span. */
  readonly spanContext?: SpanContext;
}

/** What `run` receives: the stacked inputs of the requests in one batch. */
export interface Batch {
  readonly model: string;
  readonly version: string;
  /** Stacked inputs: each has `rows` rows. */
  readonly inputs: TensorMap;
  /** Total rows. */
  readonly rows: number;
  /** Number of requests stacked. */
  readonly requests: number;
  /** Aborts when every caller in the batch has gone; a run may stop early then. */
  readonly signal: AbortSignal;
}

/** Runs a batch; every output must have `batch.rows` rows. */
export type RunBatch = (batch: Batch) => Promise<TensorMap>;

/** Settings of a {@link DynamicBatcher}. */
export interface BatcherOptions {
  /** Runs a stacked batch (called inside the batch span's context). */
  readonly run: RunBatch;
  /** Most requests waiting, across all models (those running are not counted). */
  readonly maxQueuedRequests: number;
  /** Tracer for the `batch.run` spans (default: the global `maas-mesh` tracer). */
  readonly tracer?: Tracer;
  /** Clock for deadlines and queue delay, in ms (default `Date.now`). */
  readonly now?: () => number;
  /** Told of each batch that ran to completion: its requests and rows (for metrics). */
  readonly onBatch?: (requests: number, rows: number) => void;
}

/** Counters, for load reports and tests. */
export interface BatcherStats {
  /** Requests waiting in queues now. */
  queued: number;
  /** Batches running now. */
  running: number;
  /** Batches run so far. */
  batches: number;
  /** Rows run so far. */
  rows: number;
}

interface Pending {
  readonly request: BatchRequest;
  readonly rows: number;
  readonly enqueuedAt: number;
  readonly resolve: (outputs: TensorMap) => void;
  readonly reject: (err: unknown) => void;
  /** Set once the caller has its answer (or its refusal); later results are discarded. */
  settled: boolean;
  /** Detaches the abort listener and deadline timer. */
  cleanup: () => void;
  /** Called when the caller aborts during the run. */
  onRunAbort?: () => void;
}

interface Queue {
  readonly key: string;
  readonly items: Pending[];
  rows: number;
  timer?: ReturnType<typeof setTimeout>;
}

interface ModelState {
  policy: BatchPolicy;
  running: number;
  readonly queues: Map<string, Queue>;
}

/** Dynamic batcher for any number of model versions; see the module comment. */
export class DynamicBatcher {
  private readonly models = new Map<string, ModelState>();
  private readonly run: RunBatch;
  private readonly tracer: Tracer;
  private readonly now: () => number;
  private queuedCount = 0;
  private runningCount = 0;
  private batchCount = 0;
  private rowCount = 0;

  /** @throws RangeError for a negative or fractional queue bound */
  constructor(private readonly options: BatcherOptions) {
    if (!(Number.isInteger(options.maxQueuedRequests) && options.maxQueuedRequests >= 0)) {
      throw new RangeError(`maxQueuedRequests must be an integer >= 0, given ${options.maxQueuedRequests}`);
    }
    this.run = options.run;
    this.tracer = options.tracer ?? trace.getTracer('maas-mesh');
    this.now = options.now ?? Date.now;
  }

  /** Current counters. */
  get stats(): BatcherStats {
    return { queued: this.queuedCount, running: this.runningCount, batches: this.batchCount, rows: this.rowCount };
  }

  /**
   * Queues a request and resolves with its own rows of every output. Rejects with a MeshError:
   * `invalid_argument` for inputs that cannot be batched (no inputs, inputs with different row
   * counts, more rows than `maxBatchSize`, data that does not fill the dims), `resource_exhausted`
   * when the queue is full, `deadline_exceeded` when the deadline passes while queued, `cancelled`
   * when the signal aborts; with the run's own error when the run fails.
   */
  submit(request: BatchRequest): Promise<TensorMap> {
    try {
      validatePolicy(request.policy);
      const rows = rowsOf(request);
      if (rows > request.policy.maxBatchSize) {
        throw new MeshError(
          'invalid_argument',
          `inputs of model ${quoteInput(request.model)} have ${rows} rows, more than its max_batch_size ${request.policy.maxBatchSize}`,
        );
      }
      if (request.signal?.aborted) throw cancelled(request);
      if (request.deadline !== undefined && request.deadline <= this.now()) throw expired(request);
      if (this.queuedCount >= this.options.maxQueuedRequests) {
        throw new MeshError('resource_exhausted', `the batch queue is full (${this.options.maxQueuedRequests} requests waiting)`);
      }
      return this.enqueue(request, rows);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Refuses every queued request of a model version with `error` (on unload); running batches finish. */
  rejectQueued(model: string, version: string, error: unknown): void {
    const state = this.models.get(modelKey(model, version));
    if (!state) return;
    for (const queue of state.queues.values()) {
      for (const pending of [...queue.items]) {
        this.removeQueued(state, queue, pending);
        settle(pending, () => pending.reject(error));
      }
    }
    this.forgetIfIdle(model, version);
  }

  private enqueue(request: BatchRequest, rows: number): Promise<TensorMap> {
    const mKey = modelKey(request.model, request.version);
    let state = this.models.get(mKey);
    if (!state) {
      state = { policy: request.policy, running: 0, queues: new Map() };
      this.models.set(mKey, state);
    }
    state.policy = request.policy;
    const sKey = stackingKey(request.inputs);
    let queue = state.queues.get(sKey);
    if (!queue) {
      queue = { key: sKey, items: [], rows: 0 };
      state.queues.set(sKey, queue);
    }
    const modelState = state;
    const ownQueue = queue;
    return new Promise<TensorMap>((resolve, reject) => {
      const pending: Pending = { request, rows, enqueuedAt: this.now(), resolve, reject, settled: false, cleanup: () => {} };
      const onAbort = () => {
        if (pending.onRunAbort) return pending.onRunAbort();
        this.removeQueued(modelState, ownQueue, pending);
        settle(pending, () => reject(cancelled(request)));
        this.forgetIfIdle(request.model, request.version);
      };
      let deadlineTimer: ReturnType<typeof setTimeout> | undefined;
      if (request.deadline !== undefined) {
        deadlineTimer = setTimeout(() => {
          // Only a queued request is refused here; one already running gets its result.
          if (pending.onRunAbort) return;
          this.removeQueued(modelState, ownQueue, pending);
          settle(pending, () => reject(expired(request)));
          this.forgetIfIdle(request.model, request.version);
        }, Math.max(0, request.deadline - this.now()));
      }
      request.signal?.addEventListener('abort', onAbort, { once: true });
      pending.cleanup = () => {
        request.signal?.removeEventListener('abort', onAbort);
        if (deadlineTimer) clearTimeout(deadlineTimer);
      };
      ownQueue.items.push(pending);
      ownQueue.rows += rows;
      this.queuedCount++;
      this.schedule(modelState, ownQueue);
    });
  }

  /** Takes `pending` out of its queue (it was not yet in a batch). */
  private removeQueued(state: ModelState, queue: Queue, pending: Pending): void {
    const at = queue.items.indexOf(pending);
    if (at < 0) return;
    queue.items.splice(at, 1);
    queue.rows -= pending.rows;
    this.queuedCount--;
    if (queue.items.length === 0) {
      if (queue.timer) clearTimeout(queue.timer);
      queue.timer = undefined;
      state.queues.delete(queue.key);
    }
  }

  private forgetIfIdle(model: string, version: string): void {
    const key = modelKey(model, version);
    const state = this.models.get(key);
    if (state && state.running === 0 && state.queues.size === 0) this.models.delete(key);
  }

  /** Starts every batch of the model version that is ready and has a free run slot; arms the delay timer of the rest. */
  private schedule(state: ModelState, touched?: Queue): void {
    const limit = state.policy.maxConcurrentRuns ?? 1;
    for (;;) {
      if (state.running >= limit) break;
      const ready = [...state.queues.values()].filter((queue) => this.isReady(state.policy, queue));
      if (ready.length === 0) break;
      // The queue whose oldest request has waited longest goes first.
      ready.sort((a, b) => a.items[0].enqueuedAt - b.items[0].enqueuedAt);
      this.startBatch(state, ready[0]);
    }
    const queues = touched ? [touched] : [...state.queues.values()];
    for (const queue of queues) this.armTimer(state, queue);
  }

  private isReady(policy: BatchPolicy, queue: Queue): boolean {
    if (queue.items.length === 0) return false;
    if (queue.rows >= targetRows(policy)) return true;
    return this.now() - queue.items[0].enqueuedAt >= policy.maxQueueDelayMs;
  }

  /** Wakes the queue when its oldest request's delay runs out. */
  private armTimer(state: ModelState, queue: Queue): void {
    if (queue.timer || queue.items.length === 0 || !state.queues.has(queue.key)) return;
    const wait = queue.items[0].enqueuedAt + state.policy.maxQueueDelayMs - this.now();
    if (wait <= 0 && state.running >= (state.policy.maxConcurrentRuns ?? 1)) return; // a finishing run reschedules
    queue.timer = setTimeout(() => {
      queue.timer = undefined;
      this.schedule(state, queue);
    }, Math.max(0, wait));
  }

  private startBatch(state: ModelState, queue: Queue): void {
    const policy = state.policy;
    const members: Pending[] = [];
    let rows = 0;
    while (queue.items.length > 0 && rows + queue.items[0].rows <= policy.maxBatchSize) {
      const pending = queue.items.shift()!;
      rows += pending.rows;
      members.push(pending);
    }
    queue.rows -= rows;
    this.queuedCount -= members.length;
    if (queue.timer) clearTimeout(queue.timer);
    queue.timer = undefined;
    if (queue.items.length === 0) state.queues.delete(queue.key);
    state.running++;
    this.runningCount++;
    void this.runBatch(state, members, rows);
  }

  private async runBatch(state: ModelState, members: Pending[], rows: number): Promise<void> {
    const { model, version } = members[0].request;
    const everyoneGone = new AbortController();
    let present = members.length;
    for (const pending of members) {
      pending.onRunAbort = () => {
        settle(pending, () => pending.reject(cancelled(pending.request)));
        if (--present === 0) everyoneGone.abort(new MeshError('cancelled', 'every caller of the batch has gone'));
      };
    }
    const links: Link[] = members.flatMap((p) => (p.request.spanContext && isSpanContextValid(p.request.spanContext) ? [{ context: p.request.spanContext }] : []));
    const span = this.tracer.startSpan(
      'batch.run',
      { links, attributes: { 'maas.model': model, 'maas.model_version': version, 'maas.batch.size': members.length, 'maas.batch.rows': rows } },
      ROOT_CONTEXT,
    );
    try {
      const batch: Batch = {
        model,
        version,
        inputs: stackInputs(members.map((p) => p.request.inputs), rows),
        rows,
        requests: members.length,
        signal: everyoneGone.signal,
      };
      const outputs = await context.with(trace.setSpan(ROOT_CONTEXT, span), () => this.run(batch));
      const split = splitOutputs(outputs, members.map((p) => p.rows), model);
      members.forEach((pending, i) => settle(pending, () => pending.resolve(split[i])));
      this.batchCount++;
      this.rowCount += rows;
      this.options.onBatch?.(members.length, rows);
    } catch (err) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
      for (const pending of members) settle(pending, () => pending.reject(err));
    } finally {
      span.end();
      state.running--;
      this.runningCount--;
      this.forgetIfIdle(model, version);
      this.schedule(state);
    }
  }
}

/** Answers a caller once, detaching its listeners. */
function settle(pending: Pending, answer: () => void): void {
  if (pending.settled) return;
  pending.settled = true;
  pending.cleanup();
  answer();
}

function modelKey(model: string, version: string): string {
  return JSON.stringify([model, version]);
}

/** Requests stack only when this matches: input names, and each input's type and non-batch dims. */
export function stackingKey(inputs: TensorMap): string {
  return JSON.stringify(
    Object.keys(inputs)
      .sort()
      .map((name) => [name, inputs[name].type, inputs[name].dims.slice(1)]),
  );
}

/** Rows a batch is run at without waiting: the largest preferred size that fits, else maxBatchSize. */
function targetRows(policy: BatchPolicy): number {
  const preferred = (policy.preferredBatchSizes ?? []).filter((size) => size <= policy.maxBatchSize);
  return preferred.length > 0 ? Math.max(...preferred) : policy.maxBatchSize;
}

function validatePolicy(policy: BatchPolicy): void {
  if (!(Number.isInteger(policy.maxBatchSize) && policy.maxBatchSize >= 1)) {
    throw new RangeError(`maxBatchSize must be an integer >= 1, given ${policy.maxBatchSize}`);
  }
  if (!(Number.isFinite(policy.maxQueueDelayMs) && policy.maxQueueDelayMs >= 0)) {
    throw new RangeError(`maxQueueDelayMs must be a number >= 0, given ${policy.maxQueueDelayMs}`);
  }
  const runs = policy.maxConcurrentRuns ?? 1;
  if (!(Number.isInteger(runs) && runs >= 1)) throw new RangeError(`maxConcurrentRuns must be an integer >= 1, given ${runs}`);
}

/** Elements in one row of a tensor with these dims. */
function rowElements(dims: readonly number[]): number {
  return dims.slice(1).reduce((product, d) => product * d, 1);
}

/** The request's rows; checks that every input has them and that its data fills its dims. */
function rowsOf(request: BatchRequest): number {
  const names = Object.keys(request.inputs);
  if (names.length === 0) throw new MeshError('invalid_argument', `a request to model ${quoteInput(request.model)} has no inputs`);
  let rows: number | undefined;
  for (const name of names) {
    const { dims, data } = request.inputs[name];
    if (dims.length === 0) {
      throw new MeshError('invalid_argument', `input ${quoteInput(name)} must have a batch dimension to be batched, given a scalar`);
    }
    if (!dims.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new MeshError('invalid_argument', `input ${quoteInput(name)} dims must be integers >= 0, given [${dims.join(', ')}]`);
    }
    const expected = dims.reduce((product, d) => product * d, 1);
    if (data.length !== expected) {
      throw new MeshError('invalid_argument', `input ${quoteInput(name)} of shape [${dims.join(', ')}] needs ${expected} elements, given ${data.length}`);
    }
    if (rows === undefined) rows = dims[0];
    else if (dims[0] !== rows) {
      throw new MeshError('invalid_argument', `input ${quoteInput(name)} has ${dims[0]} rows where the other inputs have ${rows}; every input needs the same batch dimension`);
    }
  }
  return rows!;
}

/** Stacks the same-named inputs of several requests along the first dimension. */
export function stackInputs(parts: readonly TensorMap[], rows: number): TensorMap {
  if (parts.length === 1) return parts[0];
  const stacked: Record<string, BatchTensor> = {};
  for (const name of Object.keys(parts[0])) {
    const tensors = parts.map((part) => part[name]);
    stacked[name] = { type: tensors[0].type, dims: [rows, ...tensors[0].dims.slice(1)], data: concat(tensors.map((t) => t.data)) };
  }
  return stacked;
}

/** Splits each output into consecutive row ranges of `rowCounts`, one map per caller (copies, not views). */
export function splitOutputs(outputs: TensorMap, rowCounts: readonly number[], model = 'the model'): TensorMap[] {
  const total = rowCounts.reduce((sum, n) => sum + n, 0);
  const result: Record<string, BatchTensor>[] = rowCounts.map(() => ({}));
  for (const [name, tensor] of Object.entries(outputs)) {
    if (tensor.dims[0] !== total) {
      throw new Error(`output ${quoteInput(name)} of model ${quoteInput(model)} has ${tensor.dims[0] ?? 'no'} rows for a batch of ${total}`);
    }
    const perRow = rowElements(tensor.dims);
    let row = 0;
    rowCounts.forEach((count, i) => {
      result[i][name] = {
        type: tensor.type,
        dims: [count, ...tensor.dims.slice(1)],
        data: tensor.data.slice(row * perRow, (row + count) * perRow) as TensorData,
      };
      row += count;
    });
  }
  return result;
}

function concat(parts: readonly TensorData[]): TensorData {
  const first = parts[0];
  if (Array.isArray(first)) return (parts as readonly (readonly unknown[])[]).flat() as TensorData;
  const length = parts.reduce((sum, part) => sum + part.length, 0);
  const Ctor = first.constructor as new (length: number) => Exclude<TensorData, readonly unknown[]>;
  const out = new Ctor(length);
  let offset = 0;
  for (const part of parts) {
    (out as { set(a: ArrayLike<unknown>, offset: number): void }).set(part as ArrayLike<unknown>, offset);
    offset += part.length;
  }
  return out;
}

function cancelled(request: BatchRequest): MeshError {
  return new MeshError('cancelled', `the request to model ${quoteInput(request.model)} version ${quoteInput(request.version)} was cancelled while batched`);
}

function expired(request: BatchRequest): MeshError {
  return new MeshError(
    'deadline_exceeded',
    `the deadline of the request to model ${quoteInput(request.model)} version ${quoteInput(request.version)} passed while it waited to be batched`,
  );
}
