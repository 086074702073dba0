/**
 * Admission by deadline: how long a request that has to wait for a slot can expect to wait, and
 * whether it can still finish within its deadline. A request whose expected wait plus its expected
 * service time exceeds the time its deadline leaves is refused at once: it would only take a place
 * in the queue, and then a slot, to end in DEADLINE_EXCEEDED, while the client could have gone
 * elsewhere or backed off.
 *
 * Plain TypeScript: no gRPC, no clock (times come in as arguments).
 */
import { MovingAverage } from '../../common/moving-average';

/** Weight of a new sample in the service-time EWMA: about the last 10 completions count. */
export const DEFAULT_SERVICE_TIME_WEIGHT = 0.2;

/** Exponentially weighted moving average of the time requests hold a slot (admission to release). */
export class ServiceTimeEstimate {
  private readonly average: MovingAverage;

  /** @throws RangeError when `weight` is not in (0, 1] */
  constructor(readonly weight = DEFAULT_SERVICE_TIME_WEIGHT) {
    if (!(weight > 0 && weight <= 1)) throw new RangeError(`service time weight must be in (0, 1], given ${weight}`);
    this.average = new MovingAverage(weight);
  }

  /** Adds the service time of one completed request, ms; ignores a negative or non-finite one. */
  observe(ms: number): void {
    if (Number.isFinite(ms) && ms >= 0) this.average.add(ms);
  }

  /** The current estimate, ms; undefined before the first completion. */
  get valueMs(): number | undefined {
    return this.average.value;
  }
}

/**
 * Expected wait of a request that finds every slot busy and `ahead` requests waiting before it:
 * the requests ahead and it take the slots in waves of `slots`, each wave lasting about
 * `serviceMs` (which already reflects how loaded the workers are at this concurrency), and it
 * starts with wave `ceil((ahead + 1) / slots)`. Counting whole waves errs on the side of a longer
 * wait (the running requests are counted as just started): a burst that arrives at once, the case
 * that matters, is served in exactly such waves, and a request admitted by this count meets its
 * deadline.
 */
export function expectedWaitMs(ahead: number, slots: number, serviceMs: number): number {
  return Math.ceil((ahead + 1) / Math.max(1, slots)) * serviceMs;
}

/** What the deadline check needs to know of a request that would wait. */
export interface DeadlineCheck {
  /** Requests waiting that will be served before it (its priority and higher). */
  ahead: number;
  /** Slots (requests running at once). */
  slots: number;
  /** The service-time estimate, ms; undefined before the first completion (then it is admitted). */
  serviceMs: number | undefined;
  /** Time its deadline leaves, ms; undefined for no deadline. */
  remainingMs: number | undefined;
}

/** The outcome of {@link judgeDeadline}: wait, or refuse with the figures that decided it. */
export type DeadlineVerdict =
  | { admit: true }
  | { admit: false; expectedWaitMs: number; serviceMs: number; remainingMs: number; message: string };

/**
 * Whether a request that would wait can meet its deadline: refused when the expected wait plus
 * one expected service time exceeds the time its deadline leaves. Admitted when there is no
 * deadline or no estimate yet.
 */
export function judgeDeadline(check: DeadlineCheck): DeadlineVerdict {
  const { ahead, slots, serviceMs, remainingMs } = check;
  if (remainingMs === undefined || !Number.isFinite(remainingMs) || serviceMs === undefined) return { admit: true };
  const wait = expectedWaitMs(ahead, slots, serviceMs);
  if (wait + serviceMs <= remainingMs) return { admit: true };
  const message =
    `expected wait ${Math.round(wait)} ms in the queue (${ahead} waiting ahead, ${slots} running, about ${Math.round(serviceMs)} ms each) ` +
    `plus ${Math.round(serviceMs)} ms of service exceeds the remaining deadline of ${Math.round(remainingMs)} ms`;
  return { admit: false, expectedWaitMs: wait, serviceMs, remainingMs, message };
}
