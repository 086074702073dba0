/**
 * The balancer's side of Dispatch: routing off the data path. A dispatcher (the scheduler) names
 * each call it must route on one long-lived stream; the balancer runs the same routing as Route
 * for it (policy, retries, retry budget, hedging, ejection, the "worker gone" rule), but instead of
 * calling the worker it orders each attempt from the dispatcher (AttemptOrder) and learns what the
 * attempt did from the dispatcher's AttemptEvents. The stream also carries the routing state, sent
 * first and again whenever it changes, so that a dispatcher whose balancer is gone keeps going.
 *
 * This file adapts the stream (call table, attempts, batching, state, tracing); the routing
 * decisions are the server's, shared with Route ({@link DispatchRouting.route}).
 */
import { ROOT_CONTEXT, Span, SpanKind, context, propagation, trace } from '@opentelemetry/api';
import { AbortError } from 'abort-controller-x';
import { ClientError, Status } from 'nice-grpc';
import { ErrorKind, MeshError, boundMessage, quoteInput } from '../../common/errors';
import { Logger } from '../../common/log';
import { TurnBatch } from '../../common/turn-batch';
import { toServerError } from '../../common/middleware';
import { endSpan, meshTracer, tracingEnabled } from '../../common/tracing';
import {
  AttemptEvent,
  BalancerMessage,
  DispatchRequest,
  DispatchResponse,
  DispatcherMessage,
  RouteCall,
  RoutingState,
} from '../../generated/maas/internal/v1/balancer';

/** Calls one Dispatch stream may have open at once; a RouteCall beyond gets RESOURCE_EXHAUSTED. */
export const MAX_OPEN_CALLS_PER_STREAM = 65_536;
/** Most messages in one DispatchResponse (a turn that produced more sends several). */
const MAX_MESSAGES_PER_RESPONSE = 4096;
/**
 * Messages waiting to be sent beyond which the stream stops reading the dispatcher's requests
 * until they have gone: a dispatcher that does not read cannot make the balancer hold without bound.
 */
const MAX_OUTBOX = 4 * MAX_OPEN_CALLS_PER_STREAM;
/** Models one stream may hold picks for (a NextPick each); calls to others wait for an AttemptOrder. */
export const MAX_PICK_MODELS = 4096;
/**
 * Picks one model may have on one stream at once (NextPick.slot 0 to this minus 1), and never more
 * than it has calls open there: as many of its calls as arrive together start at once. Measured at
 * 16 concurrent Generates with one pick per model, most calls waited 4 to 8 ms for their
 * AttemptOrder (docs/BENCHMARKS.md).
 */
export const MAX_PICK_DEPTH = 16;
/** Shortest time between two looks at the routing state after a change. */
const STATE_MIN_INTERVAL_MS = 100;

/** The path a failed attempt's ClientError names: as if the balancer had called the worker. */
export const WORKER_EXECUTE_PATH = '/maas.internal.v1.WorkerService/Execute';

/** What a call routes by: what the policy needs, never its input. */
export interface RouteTarget<W extends AttemptWorker = AttemptWorker> {
  /** The routing key: the model, or `mapper:<name>`. */
  model: string;
  /** The version it must run on; undefined for any. */
  version: string | undefined;
  /** Affinity key for consistent_hash; '' for none. */
  affinityKey: string;
  /** The request id, for logs. */
  requestId: string;
  /** True when the call is hedged (a unary Predict with --hedge-delay-ms > 0). */
  hedge: boolean;
  /**
   * The worker of the call's first attempt when the policy chose it ahead of the call (a NextPick
   * the dispatcher took); undefined: the routing picks it now.
   */
  first?: W;
}

/** A worker as an attempt names it. */
export interface AttemptWorker {
  readonly id: string;
  readonly address: string;
}

/**
 * One attempt of a call on `member`, numbered from 1 within the call: yields each output (the
 * first is the latency sample and the point after which there is no retry), returns on success,
 * throws a ClientError when the worker fails, and stops (throwing) once `signal` is aborted.
 */
export type AttemptRunner<W extends AttemptWorker, T> = (member: W, attempt: number, signal: AbortSignal) => AsyncIterable<T>;

/**
 * Thrown by the routing when no ready worker serves the call's model (workers starting or
 * restarting): Route answers it with the NO_READY_WORKER trailer, Dispatch with no_ready_worker.
 */
export class NoReadyWorkerError extends MeshError {
  constructor(message: string) {
    super('unavailable', message);
  }
}

/** What a Dispatch stream needs of the balancer. */
export interface DispatchRouting<W extends AttemptWorker> {
  /**
   * Routes one call, exactly as Route does: runs `run` for each attempt the policy, the retries and
   * the hedging decide; yields each output of the attempt that produced one; ends when the call
   * succeeded; throws its final error (a MeshError; {@link NoReadyWorkerError}); throws an abort
   * error once `signal` (the caller) is aborted.
   */
  route<T>(target: RouteTarget<W>, signal: AbortSignal, run: AttemptRunner<W, T>): AsyncIterable<T>;
  /**
   * The policy's pick for the next call to `model` (any version, no affinity key), made ahead of
   * that call; undefined when no worker is ready or the model's policy picks by each call's key.
   */
  pickAhead(model: string): W | undefined;
  /**
   * Counts a pick made ahead as load on its worker (`delta` 1) until a call takes it or it is
   * replaced (-1), so that the next picks of the model spread as its calls would.
   */
  reserve(member: W, delta: 1 | -1): void;
  /** The member `workerId` when it takes calls for `model` now (any version), else undefined. */
  routable(model: string, workerId: string): W | undefined;
  /** The routing state now. */
  routingState(): RoutingState;
  /** Calls `listener` whenever the routing state may have changed; returns the unsubscribe. */
  onRoutingChange(listener: () => void): () => void;
  /** How often the routing state is looked at even with no change signalled, ms. */
  readonly stateIntervalMs: number;
  /** True when hedging is on (--hedge-delay-ms > 0). */
  readonly hedging: boolean;
  readonly log: Logger;
}

type AttemptEventKind = NonNullable<AttemptEvent['event']>;

/** The events an attempt has received and not yet handled. */
interface AttemptSlot {
  readonly events: AttemptEventKind[];
  wake: (() => void) | undefined;
  /** True once it has reported started. */
  started: boolean;
  /** True once it has reported done or failed: later events are ignored. */
  settled: boolean;
}

/** A call open on the stream. */
interface OpenCall<W extends AttemptWorker> {
  readonly id: number;
  /** Aborted when the dispatcher cancels the call or the stream ends. */
  readonly controller: AbortController;
  /** Its attempts still running, by number. */
  readonly attempts: Map<number, AttemptSlot>;
  /** The first attempt that reported output: events of its other attempts are ignored from then on. */
  startedAttempt: number | undefined;
  readonly span: Span | undefined;
  readonly workers: string[];
  /** The worker of attempt 1 when the call took a NextPick: the dispatcher runs it unordered. */
  readonly picked: W | undefined;
}

/**
 * What a Dispatch attempt yields when it reports its first output: the time to it as the
 * dispatcher measured it (its report may have waited for the next call's route), if it sent one.
 */
export class AttemptStartedOutput {
  constructor(readonly firstOutputMs: number | undefined) {}
}

/**
 * The latency sample of an attempt's first output: the dispatcher's measure when the output is an
 * {@link AttemptStartedOutput} that carries one, bounded by `measuredMs`, the time the balancer saw
 * pass (a report cannot make a worker look slower than that); else `measuredMs`.
 */
export function firstOutputLatencyMs(output: unknown, measuredMs: number): number {
  if (output instanceof AttemptStartedOutput && output.firstOutputMs !== undefined) return Math.min(output.firstOutputMs, measuredMs);
  return measuredMs;
}

/** Serves one Dispatch stream until the dispatcher ends it or goes. */
export async function* serveDispatch<W extends AttemptWorker>(
  requests: AsyncIterable<DispatchRequest>,
  signal: AbortSignal,
  routing: DispatchRouting<W>,
): AsyncGenerator<DispatchResponse> {
  const stream = new DispatchStream(routing);
  const onAbort = () => stream.end();
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    yield* stream.serve(requests);
  } finally {
    signal.removeEventListener('abort', onAbort);
    stream.end();
  }
}

/** The picks of one model on one stream. */
interface ModelPicks<W> {
  /** The NextPick of each slot that no call has taken yet. */
  readonly slots: Map<number, W>;
  /** Slots it keeps (1 to MAX_PICK_DEPTH): one more each time a call of it came with none, up to its calls open on the stream. */
  depth: number;
}

class DispatchStream<W extends AttemptWorker> {
  private readonly calls = new Map<number, OpenCall<W>>();
  /** The picks of each model this stream has sent a NextPick for: a call may name a pick of theirs (a stale one too). */
  private readonly picks = new Map<string, ModelPicks<W>>();
  /** Calls open on the stream, by model. */
  private readonly openByModel = new Map<string, number>();
  /** What one turn of the event loop produced: at its end it joins the backlog, to go out as one DispatchResponse. */
  private readonly outbox = new TurnBatch<BalancerMessage>((messages) => {
    this.backlog = this.backlog.concat(messages);
    this.wake?.();
  });
  /** Messages of past turns not yet sent (the response loop sends them, MAX_MESSAGES_PER_RESPONSE at a time). */
  private backlog: BalancerMessage[] = [];
  /** Wakes the response loop: messages to send, or the end. */
  private wake: (() => void) | undefined;
  /** Wakes the request loop once the messages waiting to be sent have room. */
  private roomWaiters: (() => void)[] = [];
  private ended = false;
  private endError: unknown;
  private lastState: string | undefined;
  private lastStateAt = 0;
  private stateTimer: NodeJS.Timeout | undefined;
  private readonly stateInterval: NodeJS.Timeout;
  private readonly unsubscribe: () => void;

  constructor(private readonly routing: DispatchRouting<W>) {
    this.unsubscribe = routing.onRoutingChange(() => this.stateMayHaveChanged());
    this.stateInterval = setInterval(() => this.sendStateIfChanged(), routing.stateIntervalMs);
    this.stateInterval.unref();
  }

  async *serve(requests: AsyncIterable<DispatchRequest>): AsyncGenerator<DispatchResponse> {
    this.sendStateIfChanged();
    this.read(requests).then(
      () => this.end(),
      (err: unknown) => this.end(err),
    );
    for (;;) {
      // While a turn is still queueing, its messages join the backlog at its end: one response, not two.
      if (this.backlog.length > 0 && (this.outbox.pending === 0 || this.ended)) {
        const messages = this.backlog.splice(0, MAX_MESSAGES_PER_RESPONSE);
        if (this.backlog.length <= MAX_OUTBOX) for (const resolve of this.roomWaiters.splice(0)) resolve();
        yield { messages };
        continue;
      }
      if (this.ended) break;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
    if (this.endError !== undefined) throw this.endError;
  }

  /** Ends the stream: every open call ends as cancelled (no failure recorded), timers stop. Once. */
  end(err?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.endError = err;
    // What this turn queued still goes, before the stream's end; nothing is queued after.
    this.backlog = this.backlog.concat(this.outbox.take());
    this.outbox.close();
    clearInterval(this.stateInterval);
    clearTimeout(this.stateTimer);
    this.unsubscribe();
    // Picks no call will take are no longer load on their workers.
    for (const { slots } of this.picks.values()) for (const member of slots.values()) this.routing.reserve(member, -1);
    this.picks.clear();
    for (const call of this.calls.values()) call.controller.abort();
    this.calls.clear();
    for (const resolve of this.roomWaiters.splice(0)) resolve();
    this.wake?.();
  }

  private async read(requests: AsyncIterable<DispatchRequest>): Promise<void> {
    for await (const request of requests) {
      if (this.ended) return;
      for (const message of request.messages) this.handle(message);
      if (this.backlog.length + this.outbox.pending > MAX_OUTBOX) await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
    }
  }

  private handle(message: DispatcherMessage): void {
    switch (message.message?.$case) {
      case 'route':
        return this.open(message.message.route);
      case 'event':
        return this.event(message.message.event);
      case 'cancelCallId': {
        const call = this.calls.get(message.message.cancelCallId);
        if (!call) return;
        // Its id is free from now: the routing unwinds on its own, sending nothing.
        this.calls.delete(call.id);
        call.controller.abort();
        return;
      }
      default:
        // An empty message (or one of a newer dispatcher): nothing to do.
        return;
    }
  }

  private refuse(callId: number, kind: ErrorKind, details: string): void {
    const code = toServerError(new MeshError(kind, details), false, '', this.routing.log).code;
    this.send({ $case: 'failed', failed: { callId, code, details, noReadyWorker: false } });
  }

  private open(route: RouteCall): void {
    const id = route.callId;
    if (id === 0) return this.refuse(0, 'invalid_argument', 'route.call_id must not be 0');
    const existing = this.calls.get(id);
    if (existing) {
      // Both calls under that id end here: the dispatcher ends its call on this answer, so the
      // balancer must not go on ordering attempts for the first one.
      this.calls.delete(id);
      existing.controller.abort();
      return this.refuse(id, 'invalid_argument', `route.call_id ${id} is already open on this stream; the open call under it is ended too`);
    }
    if (route.model === '') return this.refuse(id, 'invalid_argument', 'route.model must not be empty');
    if (this.calls.size >= MAX_OPEN_CALLS_PER_STREAM) {
      return this.refuse(id, 'resource_exhausted', `route refused: ${this.calls.size} calls are open on this stream (limit ${MAX_OPEN_CALLS_PER_STREAM})`);
    }
    const pickable = route.version === '' && route.affinityKey === '';
    let picked: W | undefined;
    // The attempt numbers the routing gives are shifted by one when a taken pick went stale.
    let shift = 0;
    if (route.pickedWorkerId !== '') {
      if (!pickable) return this.refuse(id, 'invalid_argument', 'route.picked_worker_id is only for a call with no version and no affinity key');
      const model = this.picks.get(route.model);
      if (!model) return this.refuse(id, 'invalid_argument', `route.picked_worker_id: no pick was sent for model ${quoteInput(route.model)} on this stream`);
      if (route.pickedSlot >= MAX_PICK_DEPTH) return this.refuse(id, 'invalid_argument', `route.picked_slot must be below ${MAX_PICK_DEPTH}, given ${route.pickedSlot}`);
      const taken = model.slots.get(route.pickedSlot);
      // A pick replaced meanwhile (its replacement crossed this call) stays offered: only this one is taken.
      if (taken?.id === route.pickedWorkerId) {
        model.slots.delete(route.pickedSlot);
        this.routing.reserve(taken, -1);
      }
      picked = this.routing.routable(route.model, route.pickedWorkerId);
      if (!picked) {
        // It left, was ejected or drains since the pick (the pick that replaced it crossed this
        // call): the attempt already running there stops, and the policy routes the call afresh.
        this.send({ $case: 'cancel', cancel: { callId: id, attempt: 1 } });
        shift = 1;
      }
    } else if (pickable) {
      const model = this.picks.get(route.model);
      // A call of a model with picks found none to take: its calls overlap, so it keeps one more
      // (no more than it has calls open, this one included).
      if (model) model.depth = Math.min(MAX_PICK_DEPTH, (this.openByModel.get(route.model) ?? 0) + 1, model.depth + 1);
    }
    const call: OpenCall<W> = { id, controller: new AbortController(), attempts: new Map(), startedAttempt: undefined, span: this.startSpan(route), workers: [], picked };
    this.calls.set(id, call);
    this.openByModel.set(route.model, (this.openByModel.get(route.model) ?? 0) + 1);
    const target: RouteTarget<W> = {
      model: route.model,
      version: route.version === '' ? undefined : route.version,
      affinityKey: route.affinityKey,
      requestId: route.requestId,
      hedge: this.routing.hedging && route.hedgeable,
      first: picked,
    };
    const run: AttemptRunner<W, AttemptStartedOutput> = (member, attempt, signal) => this.attempt(call, member, attempt + shift, signal);
    // The routing runs in its span's context, so its log lines carry the call's trace.
    if (call.span) void context.with(trace.setSpan(ROOT_CONTEXT, call.span), () => this.run(call, target, run));
    else void this.run(call, target, run);
    // The next calls to the model get their workers now, decided after this one counts as running there.
    if (pickable) this.fillPicks(route.model);
  }

  /** Offers a pick in each of `model`'s slots that has none. */
  private fillPicks(model: string): void {
    const picks = this.picks.get(model);
    const depth = picks?.depth ?? 1;
    for (let slot = 0; slot < depth; slot++) if (!picks?.slots.has(slot)) this.offer(model, slot);
  }

  /** Sends the policy's pick for slot `slot` of `model`, or withdraws the slot's pick when there is none. */
  private offer(model: string, slot: number): void {
    let picks = this.picks.get(model);
    if (!picks && this.picks.size >= MAX_PICK_MODELS) return;
    const old = picks?.slots.get(slot);
    // The pick it replaces no longer counts as load before the policy picks again.
    if (old) this.routing.reserve(old, -1);
    const member = this.routing.pickAhead(model);
    if (!member && !old) return;
    if (!picks) this.picks.set(model, (picks = { slots: new Map(), depth: 1 }));
    if (member) {
      picks.slots.set(slot, member);
      this.routing.reserve(member, 1);
    } else picks.slots.delete(slot);
    this.send({ $case: 'pick', pick: { model, workerId: member?.id ?? '', address: member?.address ?? '', slot } });
  }

  /** The call's routing span, child of the dispatcher's span, when tracing is on and it sent one. */
  private startSpan(route: RouteCall): Span | undefined {
    if (!tracingEnabled() || route.traceparent === '') return undefined;
    const parent = propagation.extract(ROOT_CONTEXT, { traceparent: route.traceparent, tracestate: route.tracestate });
    return meshTracer().startSpan(
      'maas.internal.v1.BalancerService/Route',
      {
        kind: SpanKind.SERVER,
        attributes: {
          'rpc.system': 'grpc',
          'rpc.service': 'maas.internal.v1.BalancerService',
          'rpc.method': 'Route',
          'maas.model': route.model,
          'maas.request_id': route.requestId,
          'maas.dispatch': true,
        },
      },
      parent,
    );
  }

  /** Runs the routing of one call to its end, and tells the dispatcher when it fails. */
  private async run(call: OpenCall<W>, target: RouteTarget<W>, attempt: AttemptRunner<W, AttemptStartedOutput>): Promise<void> {
    try {
      // The attempts' outputs are the dispatcher's to relay: nothing to send for them here.
      for await (const started of this.routing.route(target, call.controller.signal, attempt)) void started;
      if (call.span) endSpan(call.span);
    } catch (err) {
      if (call.span) endSpan(call.span, err);
      if (call.controller.signal.aborted || this.ended) return;
      const status = toServerError(err, false, '/maas.internal.v1.BalancerService/Dispatch', this.routing.log);
      this.send({ $case: 'failed', failed: { callId: call.id, code: status.code, details: status.details, noReadyWorker: err instanceof NoReadyWorkerError } });
    } finally {
      if (this.calls.get(call.id) === call) this.calls.delete(call.id);
      const open = (this.openByModel.get(target.model) ?? 1) - 1;
      if (open > 0) this.openByModel.set(target.model, open);
      else this.openByModel.delete(target.model);
    }
  }

  /**
   * One attempt, run by the dispatcher: orders it, then follows its events. An attempt the routing
   * gives up (a hedge that lost, a worker declared gone) is cancelled at the dispatcher, except when
   * the whole call is cancelled, which the dispatcher did itself.
   */
  private async *attempt(call: OpenCall<W>, member: W, attempt: number, signal: AbortSignal): AsyncGenerator<AttemptStartedOutput> {
    const slot: AttemptSlot = { events: [], wake: undefined, started: false, settled: false };
    call.attempts.set(attempt, slot);
    call.workers.push(member.id);
    call.span?.setAttribute('maas.workers', [...call.workers]);
    // A call that took a pick runs its first attempt there already: no order for it.
    if (!(attempt === 1 && call.picked === member)) this.send({ $case: 'attempt', attempt: { callId: call.id, attempt, workerId: member.id, address: member.address } });
    let settled = false;
    try {
      for (;;) {
        const event = await nextEvent(slot, signal);
        switch (event.$case) {
          case 'started':
            yield new AttemptStartedOutput(event.started.firstOutputUs > 0 ? event.started.firstOutputUs / 1000 : undefined);
            break;
          case 'done':
            settled = true;
            return;
          case 'failed': {
            settled = true;
            const code = event.failed.code > Status.OK && event.failed.code <= Status.UNAUTHENTICATED ? (event.failed.code as Status) : Status.UNKNOWN;
            throw new ClientError(WORKER_EXECUTE_PATH, code, boundMessage(event.failed.details));
          }
        }
      }
    } finally {
      call.attempts.delete(attempt);
      if (!settled && !call.controller.signal.aborted && !this.ended) this.send({ $case: 'cancel', cancel: { callId: call.id, attempt } });
    }
  }

  private event(event: AttemptEvent): void {
    // Events race with the ends of calls and attempts: one for what is over is dropped.
    const call = this.calls.get(event.callId);
    const slot = call?.attempts.get(event.attempt);
    if (!call || !slot || !event.event || slot.settled) return;
    // Once one attempt has output, the others lost: what the dispatcher says of them no longer counts.
    if (call.startedAttempt !== undefined && call.startedAttempt !== event.attempt) return;
    if (event.event.$case === 'started') {
      if (slot.started) return;
      slot.started = true;
      call.startedAttempt = event.attempt;
    } else {
      slot.settled = true;
    }
    slot.events.push(event.event);
    slot.wake?.();
  }

  private send(message: BalancerMessage['message']): void {
    if (this.ended) return;
    this.outbox.push({ message });
  }

  /** A change was signalled: a look at the state, at most every STATE_MIN_INTERVAL_MS. */
  private stateMayHaveChanged(): void {
    if (this.stateTimer || this.ended) return;
    const wait = Math.max(0, this.lastStateAt + STATE_MIN_INTERVAL_MS - Date.now());
    this.stateTimer = setTimeout(() => {
      this.stateTimer = undefined;
      this.sendStateIfChanged();
    }, wait);
    this.stateTimer.unref();
  }

  private sendStateIfChanged(): void {
    if (this.ended) return;
    this.lastStateAt = Date.now();
    // A pick on a worker that no longer takes the model's calls is replaced (or withdrawn).
    for (const [model, { slots }] of this.picks) for (const [slot, member] of [...slots]) if (!this.routing.routable(model, member.id)) this.offer(model, slot);
    const state = this.routing.routingState();
    const key = JSON.stringify(state);
    if (key === this.lastState) return;
    this.lastState = key;
    this.send({ $case: 'state', state });
  }
}

/** The attempt's next event; rejects with an AbortError once `signal` is aborted. */
function nextEvent(slot: AttemptSlot, signal: AbortSignal): Promise<AttemptEventKind> {
  const ready = slot.events.shift();
  if (ready) return Promise.resolve(ready);
  if (signal.aborted) return Promise.reject(new AbortError());
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      slot.wake = undefined;
      reject(new AbortError());
    };
    signal.addEventListener('abort', onAbort, { once: true });
    slot.wake = () => {
      slot.wake = undefined;
      signal.removeEventListener('abort', onAbort);
      resolve(slot.events.shift()!);
    };
  });
}

