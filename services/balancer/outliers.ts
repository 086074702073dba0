/**
 * Outlier ejection, in the manner of Envoy's outlier detection: a worker that fails too often is
 * taken out of rotation for a while, longer each time it is ejected again, and comes back on
 * probation. Never more than a set share of the workers is out at once, so a fault that hits
 * every worker (a bad model push, an overloaded dependency) cannot empty the pool. Plain
 * TypeScript: the caller passes the time of every call.
 */
import { SlidingWindowCounter } from './sliding-window';

/** Settings of an {@link OutlierDetector}. */
export interface OutlierOptions {
  /** Failures in a row that eject a worker (default 5). */
  readonly consecutiveFailures?: number;
  /** Share of failed requests in the window that ejects a worker, in (0, 1] (default 0.5). */
  readonly failureRate?: number;
  /** Requests the window must hold before the failure rate counts (default 20). */
  readonly failureRateMinRequests?: number;
  /** Window of the failure rate, ms (default 10,000). */
  readonly failureRateWindowMs?: number;
  /** Ejection time of a first ejection, ms (default 5,000); the k-th ejection in a row lasts k times this. */
  readonly baseEjectionMs?: number;
  /** Longest ejection, ms (default 300,000). */
  readonly maxEjectionMs?: number;
  /** Largest share of the known workers that may be ejected at once, in [0, 1] (default 0.5); rounded down. */
  readonly maxEjectedShare?: number;
  /** Successes in a row that end probation and clear the ejection count (default 10). */
  readonly probationSuccesses?: number;
}

/** Why a worker was ejected. */
export type EjectionReason = 'consecutive_failures' | 'failure_rate' | 'probation_failure';

/** One worker as the detector sees it, for diagnostics (e.g. a ListWorkers call). */
export interface OutlierState {
  /** Out of rotation now. */
  readonly ejected: boolean;
  /** When the current (or last) ejection ends, ms; undefined if never ejected since the count was last cleared. */
  readonly ejectedUntil: number | undefined;
  /** Ejections since the count was last cleared; the next ejection lasts `base × (ejections + 1)`. */
  readonly ejections: number;
  /** Back from an ejection and not yet trusted: one failure ejects it again. */
  readonly probation: boolean;
  /** Failures in a row since the last success. */
  readonly consecutiveFailures: number;
  /** Requests in the failure-rate window. */
  readonly windowRequests: number;
  /** Failed requests in the failure-rate window. */
  readonly windowFailures: number;
  /** Why it was last ejected. */
  readonly lastReason: EjectionReason | undefined;
}

interface WorkerRecord {
  ejections: number;
  ejectedUntil: number | undefined;
  consecutiveFailures: number;
  probationRun: number;
  lastReason: EjectionReason | undefined;
  readonly requests: SlidingWindowCounter;
  readonly failures: SlidingWindowCounter;
}

function positiveInteger(name: string, value: number): number {
  if (!(Number.isInteger(value) && value >= 1)) throw new RangeError(`${name} must be an integer >= 1, given ${value}`);
  return value;
}

function positiveNumber(name: string, value: number): number {
  if (!(Number.isFinite(value) && value > 0)) throw new RangeError(`${name} must be a positive number, given ${value}`);
  return value;
}

/**
 * Tracks successes and failures per worker and decides who is ejected. The workers it counts for
 * the ejected share are those {@link add}ed (or recorded) and not {@link remove}d.
 *
 * Results that arrive while a worker is ejected (requests that were in flight when it was
 * ejected) are ignored, and an ejection starts the worker's counts afresh.
 */
export class OutlierDetector {
  readonly consecutiveFailures: number;
  readonly failureRate: number;
  readonly failureRateMinRequests: number;
  readonly failureRateWindowMs: number;
  readonly baseEjectionMs: number;
  readonly maxEjectionMs: number;
  readonly maxEjectedShare: number;
  readonly probationSuccesses: number;
  private readonly workers = new Map<string, WorkerRecord>();

  /** @throws RangeError naming the first setting that is out of range */
  constructor(options: OutlierOptions = {}) {
    this.consecutiveFailures = positiveInteger('consecutiveFailures', options.consecutiveFailures ?? 5);
    this.failureRate = options.failureRate ?? 0.5;
    if (!(this.failureRate > 0 && this.failureRate <= 1)) throw new RangeError(`failureRate must be in (0, 1], given ${this.failureRate}`);
    this.failureRateMinRequests = positiveInteger('failureRateMinRequests', options.failureRateMinRequests ?? 20);
    this.failureRateWindowMs = positiveNumber('failureRateWindowMs', options.failureRateWindowMs ?? 10_000);
    this.baseEjectionMs = positiveNumber('baseEjectionMs', options.baseEjectionMs ?? 5_000);
    this.maxEjectionMs = positiveNumber('maxEjectionMs', options.maxEjectionMs ?? 300_000);
    if (this.maxEjectionMs < this.baseEjectionMs) {
      throw new RangeError(`maxEjectionMs must be >= baseEjectionMs (${this.baseEjectionMs}), given ${this.maxEjectionMs}`);
    }
    this.maxEjectedShare = options.maxEjectedShare ?? 0.5;
    if (!(this.maxEjectedShare >= 0 && this.maxEjectedShare <= 1)) throw new RangeError(`maxEjectedShare must be in [0, 1], given ${this.maxEjectedShare}`);
    this.probationSuccesses = positiveInteger('probationSuccesses', options.probationSuccesses ?? 10);
  }

  /** Starts tracking a worker (a join); a no-op for one already tracked. */
  add(id: string): void {
    this.record(id);
  }

  /** Stops tracking a worker (it left); its ejection history goes with it. */
  remove(id: string): void {
    this.workers.delete(id);
  }

  /** Number of workers tracked. */
  get size(): number {
    return this.workers.size;
  }

  /** Records a request to `id` that succeeded at `now`. */
  recordSuccess(id: string, now: number): void {
    const w = this.record(id);
    if (this.ejectedAt(w, now)) return;
    w.requests.add(now);
    w.consecutiveFailures = 0;
    if (w.ejections > 0 && ++w.probationRun >= this.probationSuccesses) {
      w.ejections = 0;
      w.probationRun = 0;
    }
  }

  /**
   * Records a request to `id` that failed at `now`; returns why the worker was ejected when this
   * failure ejected it, undefined otherwise (including when the ejected share is at its limit).
   */
  recordFailure(id: string, now: number): EjectionReason | undefined {
    const w = this.record(id);
    if (this.ejectedAt(w, now)) return undefined;
    w.requests.add(now);
    w.failures.add(now);
    w.consecutiveFailures++;
    w.probationRun = 0;
    const reason = this.verdict(w, now);
    if (reason === undefined || !this.roomToEject(now)) return undefined;
    this.eject(w, reason, now);
    return reason;
  }

  /** Whether `id` is out of rotation at `now`; false for a worker the detector does not know. */
  isEjected(id: string, now: number): boolean {
    const w = this.workers.get(id);
    return w !== undefined && this.ejectedAt(w, now);
  }

  /** Workers ejected at `now`. */
  ejected(now: number): string[] {
    return [...this.workers].filter(([, w]) => this.ejectedAt(w, now)).map(([id]) => id);
  }

  /** How `id` stands at `now`; undefined for a worker the detector does not know. */
  state(id: string, now: number): OutlierState | undefined {
    const w = this.workers.get(id);
    if (!w) return undefined;
    const ejected = this.ejectedAt(w, now);
    return {
      ejected,
      ejectedUntil: w.ejectedUntil,
      ejections: w.ejections,
      probation: !ejected && w.ejections > 0,
      consecutiveFailures: w.consecutiveFailures,
      windowRequests: w.requests.total(now),
      windowFailures: w.failures.total(now),
      lastReason: w.lastReason,
    };
  }

  private record(id: string): WorkerRecord {
    let w = this.workers.get(id);
    if (!w) {
      w = {
        ejections: 0,
        ejectedUntil: undefined,
        consecutiveFailures: 0,
        probationRun: 0,
        lastReason: undefined,
        requests: new SlidingWindowCounter(this.failureRateWindowMs),
        failures: new SlidingWindowCounter(this.failureRateWindowMs),
      };
      this.workers.set(id, w);
    }
    return w;
  }

  private ejectedAt(w: WorkerRecord, now: number): boolean {
    return w.ejectedUntil !== undefined && now < w.ejectedUntil;
  }

  private verdict(w: WorkerRecord, now: number): EjectionReason | undefined {
    // Back from an ejection, the worker has used up its trust: one failure sends it out again.
    if (w.ejections > 0) return 'probation_failure';
    if (w.consecutiveFailures >= this.consecutiveFailures) return 'consecutive_failures';
    const requests = w.requests.total(now);
    if (requests >= this.failureRateMinRequests && w.failures.total(now) >= this.failureRate * requests) return 'failure_rate';
    return undefined;
  }

  private roomToEject(now: number): boolean {
    const limit = Math.floor(this.maxEjectedShare * this.workers.size);
    return this.ejected(now).length < limit;
  }

  private eject(w: WorkerRecord, reason: EjectionReason, now: number): void {
    w.ejections++;
    w.ejectedUntil = now + Math.min(this.baseEjectionMs * w.ejections, this.maxEjectionMs);
    w.lastReason = reason;
    w.consecutiveFailures = 0;
    w.probationRun = 0;
    w.requests.clear();
    w.failures.clear();
  }
}
