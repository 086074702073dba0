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

function positiveInteger(name: string, value: number): number {
  if (!(Number.isInteger(value) && value >= 1)) throw new RangeError(`${name} must be an integer >= 1, given ${value}`);
  return value;
}

function positiveNumber(name: string, value: number): number {
  if (!(Number.isFinite(value) && value > 0)) throw new RangeError(`${name} must be a positive number, given ${value}`);
  return value;
}

/**
 * The ejection state of one worker: its counts, its ejections, its probation. The balancer keeps
 * one in each worker's object ({@link OutlierDetector.newRecord}); the detector holds the settings
 * and the rule that never more than a share of the workers is out at once.
 *
 * Results that arrive while the worker is ejected (requests that were in flight when it was
 * ejected) are ignored, and an ejection starts its counts afresh.
 */
export class OutlierRecord {
  private ejections = 0;
  private ejectedUntil: number | undefined;
  private consecutiveFailures = 0;
  private probationRun = 0;
  private lastReason: EjectionReason | undefined;
  private readonly requests: SlidingWindowCounter;
  private readonly failures: SlidingWindowCounter;

  constructor(private readonly settings: OutlierDetector) {
    this.requests = new SlidingWindowCounter(settings.failureRateWindowMs);
    this.failures = new SlidingWindowCounter(settings.failureRateWindowMs);
  }

  /** Records a request that succeeded at `now`. */
  recordSuccess(now: number): void {
    if (this.isEjected(now)) return;
    this.requests.add(now);
    this.consecutiveFailures = 0;
    if (this.ejections > 0 && ++this.probationRun >= this.settings.probationSuccesses) {
      this.ejections = 0;
      this.probationRun = 0;
    }
  }

  /**
   * Records a request that failed at `now`; returns why the worker was ejected when this failure
   * ejected it, undefined otherwise. `roomToEject` is asked only when the failure would eject: false
   * (the ejected share is at its limit) keeps the worker in.
   */
  recordFailure(now: number, roomToEject: () => boolean): EjectionReason | undefined {
    if (this.isEjected(now)) return undefined;
    this.requests.add(now);
    this.failures.add(now);
    this.consecutiveFailures++;
    this.probationRun = 0;
    const reason = this.verdict(now);
    if (reason === undefined || !roomToEject()) return undefined;
    this.eject(reason, now);
    return reason;
  }

  /** Whether the worker is out of rotation at `now`. */
  isEjected(now: number): boolean {
    return this.ejectedUntil !== undefined && now < this.ejectedUntil;
  }

  /** How the worker stands at `now`. */
  state(now: number): OutlierState {
    const ejected = this.isEjected(now);
    return {
      ejected,
      ejectedUntil: this.ejectedUntil,
      ejections: this.ejections,
      probation: !ejected && this.ejections > 0,
      consecutiveFailures: this.consecutiveFailures,
      windowRequests: this.requests.total(now),
      windowFailures: this.failures.total(now),
      lastReason: this.lastReason,
    };
  }

  private verdict(now: number): EjectionReason | undefined {
    // Back from an ejection, the worker has used up its trust: one failure sends it out again.
    if (this.ejections > 0) return 'probation_failure';
    if (this.consecutiveFailures >= this.settings.consecutiveFailures) return 'consecutive_failures';
    const requests = this.requests.total(now);
    if (requests >= this.settings.failureRateMinRequests && this.failures.total(now) >= this.settings.failureRate * requests) return 'failure_rate';
    return undefined;
  }

  private eject(reason: EjectionReason, now: number): void {
    this.ejections++;
    this.ejectedUntil = now + Math.min(this.settings.baseEjectionMs * this.ejections, this.settings.maxEjectionMs);
    this.lastReason = reason;
    this.consecutiveFailures = 0;
    this.probationRun = 0;
    this.requests.clear();
    this.failures.clear();
  }
}

/**
 * The settings of outlier ejection and the share rule, and a record per worker id for callers
 * that key workers by id (the balancer keeps each worker's {@link OutlierRecord} in that worker's
 * own object instead). The workers it counts for the ejected share are those {@link add}ed (or
 * recorded) and not {@link remove}d.
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
  private readonly workers = new Map<string, OutlierRecord>();

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

  /** A fresh record for one worker, under these settings. */
  newRecord(): OutlierRecord {
    return new OutlierRecord(this);
  }

  /** Whether one more worker may be ejected when `ejected` of `workers` are out: the share, rounded down. */
  roomToEject(ejected: number, workers: number): boolean {
    return ejected < Math.floor(this.maxEjectedShare * workers);
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
    this.record(id).recordSuccess(now);
  }

  /**
   * Records a request to `id` that failed at `now`; returns why the worker was ejected when this
   * failure ejected it, undefined otherwise (including when the ejected share is at its limit).
   */
  recordFailure(id: string, now: number): EjectionReason | undefined {
    return this.record(id).recordFailure(now, () => this.roomToEject(this.ejected(now).length, this.workers.size));
  }

  /** Whether `id` is out of rotation at `now`; false for a worker the detector does not know. */
  isEjected(id: string, now: number): boolean {
    return this.workers.get(id)?.isEjected(now) ?? false;
  }

  /** Workers ejected at `now`. */
  ejected(now: number): string[] {
    return [...this.workers].filter(([, w]) => w.isEjected(now)).map(([id]) => id);
  }

  /** How `id` stands at `now`; undefined for a worker the detector does not know. */
  state(id: string, now: number): OutlierState | undefined {
    return this.workers.get(id)?.state(now);
  }

  private record(id: string): OutlierRecord {
    let w = this.workers.get(id);
    if (!w) {
      w = this.newRecord();
      this.workers.set(id, w);
    }
    return w;
  }
}
