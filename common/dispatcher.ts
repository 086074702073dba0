/**
 * Online dispatch with the balancer off the data path. The balancer decides (which worker, when to
 * retry or hedge, what to cancel) over one long-lived Dispatch stream; the dispatcher runs what it
 * decides, calling the worker straight over a call stream (WorkerService.ExecuteCalls), relays the
 * worker's output as the worker encoded it, and reports what each attempt did so the balancer's
 * policies keep learning. The task's bytes never pass through the balancer.
 *
 * The balancer also decides ahead: for a model it routes, it sends the workers its policy chose for
 * the next calls (NextPick, one per slot, as many slots as the model's calls overlap, up to 16), and
 * each such call starts there at once, naming the pick to the balancer, instead of waiting a round
 * trip for its order. Retries, hedges and cancels still come as orders. An attempt's start (its
 * latency sample, timed here) waits a few milliseconds to ride with its end or another call's
 * route; its end and a failure go at once.
 *
 * Without a balancer (it died, it restarts, it cannot be reached) calls go on: the dispatcher
 * routes on the last routing state the balancer gave it, to the worker with the fewest of its own
 * calls, and tries one other worker when the first fails before its first output. A balancer that
 * comes back takes over for the next calls.
 */
import { Channel, ClientError, Status, createClient } from 'nice-grpc';
import { clientOnFreshChannel, openMeshChannel } from './client';
import { MeshTls } from './tls';
import { AbortError } from 'abort-controller-x';
import { CallStreamClient, EncodedMessage, openCallStreamClient } from './call-stream';
import { MeshError, quoteInput } from './errors';
import { Logger } from './log';
import { ServiceMetrics } from './metrics';
import { StreamWriter } from './stream-writer';
import { TurnBatch } from './turn-batch';
import { Context, propagation, context as otelContext } from '@opentelemetry/api';
import {
  AttemptEvent,
  AttemptOrder,
  BalancerMessage,
  BalancerServiceDefinition,
  DispatchRequest,
  DispatchResponse,
  DispatcherMessage,
  RoutingState,
} from '../generated/maas/internal/v1/balancer';
import { Task } from '../generated/maas/internal/v1/task';
import { ExecuteRequest, ExecuteResponse, WorkerServiceDefinition } from '../generated/maas/internal/v1/worker';

/** How a call's first worker was chosen: the balancer's pick made ahead, its order for the call, or the last routing state. */
export type DispatchHow = 'pick' | 'order' | 'local';

/** A counter of online calls by how their first worker was chosen (`name`: the service's metric). */
export function countDispatches(metrics: ServiceMetrics, name: string): (how: DispatchHow) => void {
  const counter = metrics.counter(
    name,
    "Online calls by how their first worker was chosen: pick (the balancer's pick made ahead of the call), order (the balancer's answer to the call), local (the balancer's last routing state, with the balancer unreachable).",
    ['how'],
  );
  return (how) => counter.inc({ how });
}

/** The Dispatch method of a balancer client. */
export type OpenDispatch = (requests: AsyncIterable<DispatchRequest>, options: { signal: AbortSignal }) => AsyncIterable<DispatchResponse>;

export interface DispatcherOptions {
  /** Opens a Dispatch stream to the balancer. */
  openDispatch: OpenDispatch;
  /** Opens a channel to a worker (mutual TLS checks it is that worker). */
  openWorkerChannel(workerId: string, address: string): Channel;
  /** Largest response a worker may send, in bytes (what one call may hold unread is a multiple). */
  maxMessageBytes: number;
  log: Logger;
  /** Called when a call starts its first attempt, with how its worker was chosen (for metrics). */
  onFirstAttempt?: (how: DispatchHow) => void;
  /** First wait before reconnecting to a balancer that is gone; doubles up to 2 s. */
  reconnectMs?: number;
  /** Longest an attempt's started report waits for a message that cannot (default REPORT_DEFER_MS). */
  reportDeferMs?: number;
}

/**
 * A dispatcher of the mesh: its Dispatch stream to the balancer at `balancer`, on a channel of its
 * own opened anew when an attempt finds it failing, so that the dispatcher's backoff (which a call
 * with no routing state brings forward) decides when to try again, not grpc-js's. The stream lasts
 * for hours: no tracing middleware (each call's routing has its own span). Workers are called over
 * mutual TLS that checks each is the worker the balancer named.
 */
export function openMeshDispatcher(o: { balancer: string; maxMessageBytes: number; tls: MeshTls | undefined; log: Logger; onFirstAttempt?: (how: DispatchHow) => void }): { dispatcher: Dispatcher; close(): void } {
  const link = clientOnFreshChannel(
    () => openMeshChannel(o.balancer, o.maxMessageBytes, o.tls, 'balancer'),
    (c) => createClient(BalancerServiceDefinition, c),
  );
  const dispatcher = new Dispatcher({
    openDispatch: (requests, options) => link.client().dispatch(requests, options),
    openWorkerChannel: (workerId, address) => openMeshChannel(address, o.maxMessageBytes, o.tls, { worker: workerId }),
    maxMessageBytes: o.maxMessageBytes,
    onFirstAttempt: o.onFirstAttempt,
    log: o.log,
  });
  return {
    dispatcher,
    close() {
      dispatcher.close();
      link.close();
    },
  };
}

/** How long a call waits for the balancer's first decision before it routes itself (the balancer answers in about a millisecond). */
const DECISION_TIMEOUT_MS = 1000;
/** How many workers one call may be tried on without a balancer (Route's own limit). */
const LOCAL_ATTEMPTS = 2;
/**
 * After reconnecting to a balancer that had been lost, how long an empty routing state is taken
 * for a balancer still learning its members (workers rejoin within a few report intervals) rather
 * than a mesh with no workers: calls keep going to the workers of the last state meanwhile.
 */
const REJOIN_GRACE_MS = 10_000;
const MAX_RECONNECT_MS = 2000;
/** A call that finds no routing state at all waits this long at most for the balancer's first one. */
const FIRST_STATE_WAIT_MS = 1000;
/** Least time between two Dispatch connection attempts that calls bring forward. */
const MIN_RECONNECT_GAP_MS = 50;
/**
 * Longest an attempt's started report waits to go with the next message that cannot wait (its
 * end, another call's route, a failure, a cancel): a stream's start and end then cost both ends one
 * frame, not two. Its end goes at once: the policies count the calls a worker runs by it, and a
 * deferred end made fast workers look busy (measured: p2c sent a slow worker 13 to 25% of the
 * calls instead of 3%).
 */
const REPORT_DEFER_MS = 5;
/** Reports waiting beyond which they go at once. */
const MAX_DEFERRED = 1024;

/** Pick slots kept per model: the balancer uses 16 (NextPick.slot); more are not stored. */
const MAX_PICK_SLOTS = 64;

/** A NextPick of the balancer: the worker one of the next calls to its model starts on. */
interface Pick {
  workerId: string;
  address: string;
  slot: number;
}

/** What a call routes by. */
interface Target {
  model: string;
  version: string;
  affinityKey: string;
  hedgeable: boolean;
}

function targetOf(task: Task): Target {
  switch (task.request?.$case) {
    case 'generate':
      return { model: task.request.generate.model, version: '', affinityKey: task.request.generate.affinityKey, hedgeable: false };
    case 'predict':
      return { model: task.request.predict.model, version: '', affinityKey: task.request.predict.affinityKey, hedgeable: true };
    case 'infer': {
      const p = task.request.infer.parameters['affinity_key']?.parameterChoice;
      return { model: task.request.infer.modelName, version: task.request.infer.modelVersion, affinityKey: p?.$case === 'stringParam' ? p.stringParam : '', hedgeable: false };
    }
    default:
      throw new MeshError('invalid_argument', 'an online task must be a generate, predict or infer task');
  }
}

/** One attempt of a call on one worker. */
interface Attempt {
  readonly number: number;
  readonly workerId: string;
  readonly controller: AbortController;
  started: boolean;
  /** performance.now() when it started. */
  readonly startedAt: number;
}

/** One worker's call stream client and the channel under it. */
interface WorkerLink {
  address: string;
  channel: Channel;
  calls: CallStreamClient<ExecuteRequest, ExecuteResponse>;
  running: number;
}

/** The dispatcher of one scheduler, or of one gateway (for the calls it holds a scheduler's permit for). */
export class Dispatcher {
  private readonly calls = new Map<number, DispatchCall>();
  private readonly workers = new Map<string, WorkerLink>();
  /** The balancer's picks for the next calls to each model (NextPick), by model then slot, until a call takes one. */
  private readonly picks = new Map<string, Map<number, Pick>>();
  /** Calls that started on a pick (for tests and diagnostics). */
  private picksTaken = 0;
  private nextId = 1;
  /**
   * Messages to the balancer: this turn's, handed to the stream's writer (which sends what is queued
   * as one request) once the turn's writes to workers and clients have gone out: the balancer
   * decides, it is not on the call's path.
   */
  private readonly outbox = new TurnBatch<DispatcherMessage>((messages) => this.writer.push(messages), { afterWrites: true });
  private readonly writer = new StreamWriter<DispatcherMessage>();
  /** Reports that may wait (see {@link REPORT_DEFER_MS}), oldest first, and the timer that sends them at the latest. */
  private deferred: DispatcherMessage[] = [];
  private deferTimer: NodeJS.Timeout | undefined;
  /** True while a Dispatch stream is open and has sent its first routing state. */
  private connected = false;
  private state: RoutingState | undefined;
  /** The last routing state that had workers, to dispatch on while a restarted balancer relearns them. */
  private lastWithWorkers: RoutingState | undefined;
  private reconnectedAt = 0;
  private everLost = false;
  private readonly closed = new AbortController();
  /** Calls waiting for a first routing state (see {@link awaitRoutingState}). */
  private readonly stateWaiters = new Set<() => void>();
  /** Moves the end of the backoff being waited out (none: the loop is not waiting). */
  private shortenBackoff: ((endsAt: number) => void) | undefined;
  private lastAttemptAt = 0;
  private attemptsMade = 0;

  constructor(private readonly o: DispatcherOptions) {
    void this.maintain();
  }

  /** True while the balancer's Dispatch stream is up (for health and tests). */
  get balancerConnected(): boolean {
    return this.connected;
  }

  /** Workers in the balancer's last routing state (for tests and diagnostics). */
  get routableWorkers(): number {
    return this.state?.workers.length ?? 0;
  }

  /** Calls that started on the balancer's pick made ahead, without waiting for its order (for tests and diagnostics). */
  get callsOnPicks(): number {
    return this.picksTaken;
  }

  /** Dispatch streams opened so far, including the ones that failed to connect (for tests and diagnostics). */
  get connectAttempts(): number {
    return this.attemptsMade;
  }

  /** Calls in flight (for tests and diagnostics). */
  get inFlight(): number {
    return this.calls.size;
  }

  /**
   * Runs an online task: its outputs, each an encoded ExecuteResponse (the same bytes as a
   * ScheduleResponse), as they arrive. Throws the call's status.
   */
  async *run(task: Task, signal: AbortSignal, deadline: number | undefined): AsyncGenerator<EncodedMessage> {
    const call = new DispatchCall(this, this.nextId++, task, targetOf(task), deadline);
    this.calls.set(call.id, call);
    const onAbort = () => call.cancel();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      call.begin();
      yield* call.outputs();
    } finally {
      signal.removeEventListener('abort', onAbort);
      call.cancel();
      this.calls.delete(call.id);
    }
  }

  close() {
    this.closed.abort();
    for (const link of this.workers.values()) {
      link.calls.close();
      link.channel.close();
    }
    this.workers.clear();
  }

  // --- for DispatchCall ---

  /** A call stopped waiting for the balancer's decision; logged once per burst. */
  noteDecisionTimeout() {
    const now = Date.now();
    if (now - this.lastTimeoutLog < 10_000) return;
    this.lastTimeoutLog = now;
    this.o.log.warn('the balancer did not answer a route within its time; calls route on the last routing state', { timeout_ms: DECISION_TIMEOUT_MS });
  }

  private lastTimeoutLog = 0;

  /**
   * True when there is no routing state to dispatch on at all: the balancer has not been reached
   * since this service started (it starts later, or its address answers slowly), so neither it
   * nor a last state can route a call.
   */
  hasNoRoutingState(): boolean {
    return !this.connected && !this.lastWithWorkers;
  }

  /**
   * Calls `then` once the balancer's first routing state arrives, or after `ms` at most; ends a
   * reconnect backoff being waited out, so that a call does not wait for it. Returns the means to
   * stop waiting (the call ended).
   */
  awaitRoutingState(ms: number, then: () => void): () => void {
    const stop = () => {
      clearTimeout(timer);
      this.stateWaiters.delete(done);
    };
    const done = () => {
      stop();
      then();
    };
    const timer = setTimeout(done, ms);
    this.stateWaiters.add(done);
    this.reconnectSoon();
    return stop;
  }

  /** Ends the backoff MIN_RECONNECT_GAP_MS after the last attempt (or now): a burst of calls is one attempt. */
  private reconnectSoon() {
    this.shortenBackoff?.(this.lastAttemptAt + MIN_RECONNECT_GAP_MS);
  }

  /** True when the balancer should route a call for `target` (else: the last routing state). */
  useBalancer(target: Target): boolean {
    if (!this.connected) return false;
    // A balancer that came back knows no workers until they rejoin: the last state serves meanwhile.
    const empty = (this.state?.workers.length ?? 0) === 0;
    if (empty && this.everLost && this.lastWithWorkers && Date.now() - this.reconnectedAt < REJOIN_GRACE_MS) {
      return !this.candidates(this.lastWithWorkers, target, new Set()).length;
    }
    return true;
  }

  /** Takes one of the balancer's picks for the next calls to `target`'s model, if it sent any (calls with a version or an affinity key get none). */
  takePick(target: Target): Pick | undefined {
    if (target.version !== '' || target.affinityKey !== '') return undefined;
    const slots = this.picks.get(target.model);
    if (!slots) return undefined;
    const [slot, pick] = slots.entries().next().value as [number, Pick];
    slots.delete(slot);
    if (slots.size === 0) this.picks.delete(target.model);
    this.picksTaken++;
    this.o.onFirstAttempt?.('pick');
    return pick;
  }

  /**
   * A call's first attempt starts on the balancer's order, or on the last routing state. A call
   * routed on the last state while the balancer is away brings the next connection attempt forward
   * (to MIN_RECONNECT_GAP_MS after the last): under load a restarted balancer takes the calls back
   * at once, not after a backoff that grew while it was away.
   */
  noteFirstAttempt(how: 'order' | 'local') {
    this.o.onFirstAttempt?.(how);
    if (how === 'local') this.reconnectSoon();
  }

  send(message: DispatcherMessage) {
    if (!this.connected) return;
    // What waited goes first: the balancer reads every call's messages in the order they were made.
    this.flushDeferred();
    this.outbox.push(message);
  }

  /** Sends a report that may wait up to REPORT_DEFER_MS for a message that cannot. */
  sendDeferred(message: DispatcherMessage) {
    if (!this.connected) return;
    this.deferred.push(message);
    if (this.deferred.length >= MAX_DEFERRED) return this.flushDeferred();
    if (!this.deferTimer) {
      this.deferTimer = setTimeout(() => this.flushDeferred(), this.o.reportDeferMs ?? REPORT_DEFER_MS);
      this.deferTimer.unref();
    }
  }

  private flushDeferred() {
    if (this.deferTimer) {
      clearTimeout(this.deferTimer);
      this.deferTimer = undefined;
    }
    if (this.deferred.length === 0) return;
    const messages = this.deferred;
    this.deferred = [];
    for (const m of messages) this.outbox.push(m);
  }

  /** A worker for a call without the balancer: fewest calls of ours among the last state's, minus `tried`. */
  localPick(target: Target, tried: ReadonlySet<string>): { workerId: string; address: string } | undefined {
    const state = this.state && this.state.workers.length > 0 ? this.state : this.lastWithWorkers;
    if (!state) return undefined;
    const candidates = this.candidates(state, target, tried);
    let best: { workerId: string; address: string } | undefined;
    let bestLoad = Infinity;
    for (const w of candidates) {
      const load = (this.workers.get(w.workerId)?.running ?? 0) + Math.random() * 0.5;
      if (load < bestLoad) {
        bestLoad = load;
        best = { workerId: w.workerId, address: w.address };
      }
    }
    return best;
  }

  private candidates(state: RoutingState, target: Target, tried: ReadonlySet<string>) {
    return state.workers.filter((w) => !tried.has(w.workerId) && w.models.some((m) => m.name === target.model && (target.version === '' || m.version === target.version)));
  }

  /** Runs one attempt on a worker; `onOutput` gets each message, the promise settles with the attempt. */
  async runAttempt(workerId: string, address: string, task: Task, signal: AbortSignal, deadline: number | undefined, onOutput: (bytes: Uint8Array) => void): Promise<void> {
    let link = this.workers.get(workerId);
    if (link && link.address !== address) {
      if (link.running === 0) this.dropLink(workerId, link);
      link = undefined;
    }
    if (!link) {
      const channel = this.o.openWorkerChannel(workerId, address);
      link = { address, channel, calls: openCallStreamClient(WorkerServiceDefinition, channel, 'executeCalls', 'execute', 4 * this.o.maxMessageBytes), running: 0 };
      this.workers.set(workerId, link);
    }
    link.running++;
    try {
      for await (const bytes of link.calls.callEncoded({ task }, { signal, deadline })) onOutput(bytes);
    } finally {
      link.running--;
    }
  }

  call(id: number): DispatchCall | undefined {
    return this.calls.get(id);
  }

  // --- the balancer link ---

  private dropLink(workerId: string, link: WorkerLink) {
    if (this.workers.get(workerId) === link) this.workers.delete(workerId);
    link.calls.close();
    link.channel.close();
  }

  private async maintain() {
    let wait = this.o.reconnectMs ?? 100;
    while (!this.closed.signal.aborted) {
      this.lastAttemptAt = Date.now();
      this.attemptsMade++;
      const stream = new AbortController();
      const onClose = () => stream.abort();
      this.closed.signal.addEventListener('abort', onClose, { once: true });
      try {
        for await (const batch of this.o.openDispatch(this.writer.requests(stream.signal, (messages) => ({ messages })), { signal: stream.signal })) {
          for (const message of batch.messages) this.onMessage(message);
          wait = this.o.reconnectMs ?? 100;
        }
      } catch (err) {
        if (this.connected) this.o.log.warn('balancer dispatch stream lost; dispatching on the last routing state', { error: err instanceof ClientError ? `${Status[err.code]}: ${err.details}` : String(err) });
      } finally {
        this.closed.signal.removeEventListener('abort', onClose);
        stream.abort();
        const was = this.connected;
        this.connected = false;
        // What was queued for the lost stream is dropped (its calls learn of the loss below).
        this.outbox.take();
        this.deferred = [];
        clearTimeout(this.deferTimer);
        this.deferTimer = undefined;
        this.writer.clear();
        // Picks were the lost balancer's, for calls it would have heard of.
        this.picks.clear();
        if (was) this.everLost = true;
        for (const call of this.calls.values()) call.balancerLost();
      }
      await this.backoff(wait);
      wait = Math.min(wait * 2, MAX_RECONNECT_MS);
    }
  }

  /** Waits `ms` before the next attempt; ended early by close() or by a call with no routing state to use. */
  private backoff(ms: number): Promise<void> {
    if (this.closed.signal.aborted) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const end = () => {
        clearTimeout(timer);
        this.closed.signal.removeEventListener('abort', end);
        this.shortenBackoff = undefined;
        resolve();
      };
      let endsAt = Date.now() + ms;
      let timer = setTimeout(end, ms);
      this.closed.signal.addEventListener('abort', end, { once: true });
      this.shortenBackoff = (at) => {
        if (at >= endsAt) return;
        endsAt = at;
        clearTimeout(timer);
        timer = setTimeout(end, Math.max(0, at - Date.now()));
      };
      // Calls already waiting for a first state end it at once (or after the minimum gap).
      if (this.stateWaiters.size > 0) this.reconnectSoon();
    });
  }

  private onMessage(message: BalancerMessage) {
    const m = message.message;
    switch (m?.$case) {
      case 'state': {
        if (!this.connected) {
          this.connected = true;
          this.reconnectedAt = Date.now();
        }
        this.state = m.state;
        if (m.state.workers.length > 0) this.lastWithWorkers = m.state;
        // Channels to workers that left go, once they carry nothing.
        const present = new Set(m.state.workers.map((w) => w.workerId));
        for (const [id, link] of this.workers) if (!present.has(id) && link.running === 0 && !this.lastWithWorkers?.workers.some((w) => w.workerId === id)) this.dropLink(id, link);
        for (const wake of [...this.stateWaiters]) wake();
        return;
      }
      case 'pick': {
        const { model, workerId, address, slot } = m.pick;
        let slots = this.picks.get(model);
        if (workerId === '') {
          slots?.delete(slot);
          if (slots?.size === 0) this.picks.delete(model);
        } else if (slot < MAX_PICK_SLOTS) {
          if (!slots) this.picks.set(model, (slots = new Map()));
          slots.set(slot, { workerId, address, slot });
        }
        return;
      }
      case 'attempt':
        return this.calls.get(m.attempt.callId)?.onOrder(m.attempt);
      case 'cancel':
        return this.calls.get(m.cancel.callId)?.onCancel(m.cancel.attempt);
      case 'failed':
        return this.calls.get(m.failed.callId)?.onFailed(new ClientError('/maas.internal.v1.BalancerService/Dispatch', m.failed.code, m.failed.details));
    }
  }

  /** W3C trace context of the active span, for the balancer's routing span. */
  static traceContext(): { traceparent: string; tracestate: string } {
    const carrier: Record<string, string> = {};
    propagation.inject(otelContext.active(), carrier);
    return { traceparent: carrier.traceparent ?? '', tracestate: carrier.tracestate ?? '' };
  }
}

/** One call being dispatched. */
class DispatchCall {
  private readonly attempts = new Map<number, Attempt>();
  private readonly tried = new Set<string>();
  private winner: Attempt | undefined;
  private readonly queue: Uint8Array[] = [];
  private waiter: (() => void) | undefined;
  private done = false;
  private error: unknown;
  /** True while the balancer routes this call (false: it routes itself, on the last state). */
  private routedByBalancer = false;
  private localAttempts = 0;
  private lastFailure: string | undefined;
  private readonly trace = Dispatcher.traceContext();
  /** The dispatching service's span of the call: the parent of each attempt's span, whichever event starts it. */
  private readonly spanContext: Context = otelContext.active();

  constructor(private readonly d: Dispatcher, readonly id: number, private readonly task: Task, private readonly target: Target, private readonly deadline: number | undefined) {}

  begin() {
    // No routing state yet, from the balancer or from before: this service has just started and
    // not reached it. Wait a moment for it rather than refuse a call the mesh can serve.
    if (this.d.hasNoRoutingState()) {
      this.stopWaiting = this.d.awaitRoutingState(FIRST_STATE_WAIT_MS, () => {
        this.stopWaiting = undefined;
        if (!this.done) this.decide();
      });
      return;
    }
    this.decide();
  }

  private stopWaiting: (() => void) | undefined;

  /** Routes the call: by the balancer when it is reachable, else on the last routing state. */
  private decide() {
    if (this.d.useBalancer(this.target)) {
      this.routedByBalancer = true;
      const pick = this.d.takePick(this.target);
      this.d.send({ message: { $case: 'route', route: { callId: this.id, ...this.target, requestId: this.task.requestId, ...this.trace, pickedWorkerId: pick?.workerId ?? '', pickedSlot: pick?.slot ?? 0 } } });
      // The balancer chose this call's worker ahead of it: attempt 1 starts now, and what follows
      // (a retry, a hedge, a cancel) comes as orders.
      if (pick) return this.start(1, pick.workerId, pick.address);
      // A balancer that holds its stream open but does not answer (stopped, overloaded) must not
      // hold the call: past DECISION_TIMEOUT_MS it routes itself, as with no balancer.
      this.decisionTimer = setTimeout(() => {
        if (this.done || this.attempts.size > 0 || this.winner || !this.routedByBalancer) return;
        this.d.send({ message: { $case: 'cancelCallId', cancelCallId: this.id } });
        this.routedByBalancer = false;
        this.d.noteDecisionTimeout();
        this.routeLocally();
      }, DECISION_TIMEOUT_MS);
    } else this.routeLocally();
  }

  private decisionTimer: NodeJS.Timeout | undefined;

  async *outputs(): AsyncGenerator<EncodedMessage> {
    for (;;) {
      const bytes = this.queue.shift();
      if (bytes !== undefined) {
        yield new EncodedMessage(bytes);
        continue;
      }
      if (this.done) {
        if (this.error !== undefined) throw this.error;
        return;
      }
      await new Promise<void>((r) => (this.waiter = r));
    }
  }

  /** The caller went away (or the call ended): stop every attempt, tell the balancer. */
  cancel() {
    if (this.done) return;
    for (const a of this.attempts.values()) a.controller.abort();
    if (this.routedByBalancer) this.d.send({ message: { $case: 'cancelCallId', cancelCallId: this.id } });
    this.finish(new AbortError());
  }

  onOrder(order: AttemptOrder) {
    clearTimeout(this.decisionTimer);
    if (!this.routedByBalancer) {
      // Ordered after the call stopped waiting for the balancer: it routes itself now.
      return;
    }
    if (this.done || this.winner) {
      // Too late: the call has its answer. The balancer hears of it as a cancelled attempt.
      this.report(order.attempt, { $case: 'failed', failed: { code: Status.CANCELLED, details: 'the call already has its output' } });
      return;
    }
    if (this.attempts.size === 0 && this.tried.size === 0) this.d.noteFirstAttempt('order');
    this.start(order.attempt, order.workerId, order.address);
  }

  onCancel(attempt: number) {
    this.attempts.get(attempt)?.controller.abort();
  }

  onFailed(err: ClientError) {
    for (const a of this.attempts.values()) if (a !== this.winner) a.controller.abort();
    this.finish(err);
  }

  /** The balancer's stream broke: what it would have decided next, this call decides. */
  balancerLost() {
    if (!this.routedByBalancer || this.done) return;
    this.routedByBalancer = false;
    // Attempts running carry on; with none, route now.
    if (this.attempts.size === 0 && !this.winner) this.routeLocally();
  }

  private routeLocally() {
    if (this.done) return;
    const pick = this.localAttempts < LOCAL_ATTEMPTS ? this.d.localPick(this.target, this.tried) : undefined;
    if (!pick) {
      const label = this.target.version === '' ? `model ${quoteInput(this.target.model)}` : `model ${quoteInput(this.target.model)} version ${quoteInput(this.target.version)}`;
      this.finish(
        this.lastFailure
          ? new MeshError('unavailable', `${this.lastFailure}, and the balancer is unreachable: no other worker of its last routing state serves ${label}`)
          : new MeshError('unavailable', `no ready worker serves ${label} (the balancer is unreachable; its last routing state was used)`),
      );
      return;
    }
    if (this.tried.size === 0) this.d.noteFirstAttempt('local');
    this.localAttempts++;
    this.start(-this.localAttempts, pick.workerId, pick.address);
  }

  private start(number: number, workerId: string, address: string) {
    const attempt: Attempt = { number, workerId, controller: new AbortController(), started: false, startedAt: performance.now() };
    this.attempts.set(number, attempt);
    this.tried.add(workerId);
    void otelContext
      .with(this.spanContext, () => this.d.runAttempt(workerId, address, this.task, attempt.controller.signal, this.deadline, (bytes) => this.onOutput(attempt, bytes)))
      .then(
        () => this.onAttemptEnd(attempt, undefined),
        (err: unknown) => this.onAttemptEnd(attempt, err),
      );
  }

  private onOutput(attempt: Attempt, bytes: Uint8Array) {
    if (this.done) return;
    if (!attempt.started) {
      if (this.winner && this.winner !== attempt) {
        // A hedge that lost: its answer is not needed.
        attempt.controller.abort();
        return;
      }
      attempt.started = true;
      this.winner = attempt;
      this.report(attempt.number, { $case: 'started', started: { firstOutputUs: sinceUs(attempt.startedAt) } });
      for (const other of this.attempts.values()) if (other !== attempt) other.controller.abort();
    }
    this.queue.push(bytes);
    this.wake();
  }

  private onAttemptEnd(attempt: Attempt, err: unknown) {
    this.attempts.delete(attempt.number);
    // Cancelled here (the caller left, a hedge lost, the balancer said so): nothing to report.
    if (attempt.controller.signal.aborted && !(attempt === this.winner && err === undefined)) return;
    if (err === undefined) {
      if (attempt === this.winner || !this.winner) {
        if (!this.winner) {
          // An OK end with no output: still the call's answer (a model that streamed nothing).
          this.winner = attempt;
          this.report(attempt.number, { $case: 'started', started: { firstOutputUs: sinceUs(attempt.startedAt) } });
        }
        this.report(attempt.number, { $case: 'done', done: {} });
        this.finish(undefined);
      }
      return;
    }
    const code = err instanceof ClientError ? err.code : Status.UNKNOWN;
    const details = err instanceof ClientError ? err.details : String(err);
    this.report(attempt.number, { $case: 'failed', failed: { code, details } });
    if (this.routedByBalancer) return; // its verdict follows: a retry order, or the call's failure
    // Routing alone: the same rule as the balancer's, retry only before the first output.
    if (attempt.started) {
      this.finish(new MeshError('unavailable', `worker ${attempt.workerId} failed after its output began: ${details}`));
      return;
    }
    if (code === Status.INVALID_ARGUMENT || code === Status.NOT_FOUND || code === Status.FAILED_PRECONDITION || code === Status.DEADLINE_EXCEEDED || code === Status.PERMISSION_DENIED) {
      this.finish(err);
      return;
    }
    this.lastFailure = `worker ${attempt.workerId} failed before its first output (${Status[code]}: ${details})`;
    if (this.attempts.size === 0) this.routeLocally();
  }

  private report(attempt: number, event: AttemptEvent['event']) {
    if (!this.routedByBalancer || attempt <= 0) return;
    const message: DispatcherMessage = { message: { $case: 'event', event: { callId: this.id, attempt, event } } };
    // A start only teaches the policy its latency sample (measured here), and may wait for the next
    // message; an end or a failure goes now (a hedged call's start, which decides whether to hedge, too).
    if (event?.$case === 'started' && !this.target.hedgeable) this.d.sendDeferred(message);
    else this.d.send(message);
  }

  private finish(error: unknown) {
    if (this.done) return;
    clearTimeout(this.decisionTimer);
    this.stopWaiting?.();
    this.done = true;
    this.error = error;
    this.wake();
  }

  private wake() {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }
}

/** Whole microseconds since `start` (performance.now()), at least 1 (0 means not measured) and within a uint32. */
function sinceUs(start: number): number {
  return Math.min(0xffff_ffff, Math.max(1, Math.round((performance.now() - start) * 1000)));
}
