/**
 * A retry budget, as Envoy and Finagle keep one: retries may add at most a set share of extra load
 * on top of the original requests (plus a small allowance so a quiet service can still retry), so
 * a failing worker cannot set off a retry storm that takes the healthy ones down with it. Plain
 * TypeScript: the caller passes the time.
 */
import { SlidingWindowCounter } from './sliding-window';

/** Settings of a {@link RetryBudget}. */
export interface RetryBudgetOptions {
  /** Retries allowed per original request in the window, in [0, 1] (default 0.2: at most 20% extra load). */
  readonly ratio?: number;
  /** Retries allowed per second regardless of traffic, >= 0 (default 10), so a quiet service can still retry. */
  readonly minRetriesPerSecond?: number;
  /** Length of the window the counts cover, ms (default 10,000). */
  readonly windowMs?: number;
}

/** What a {@link RetryBudget} has counted, for diagnostics. */
export interface RetryBudgetState {
  /** Original requests in the window. */
  readonly requests: number;
  /** Retries granted in the window. */
  readonly retries: number;
  /** Retries the window allows in all: `ratio × requests + minRetriesPerSecond × windowMs / 1000`. */
  readonly allowed: number;
}

/**
 * Grants a retry while the retries granted in the last `windowMs`, this one included, stay within
 * `ratio × requests + minRetriesPerSecond × windowMs / 1000`. Counts are kept in ten buckets, so
 * a request or retry stops counting between 0.9 and 1 window after it happened.
 */
export class RetryBudget {
  readonly ratio: number;
  readonly minRetriesPerSecond: number;
  readonly windowMs: number;
  private readonly requests: SlidingWindowCounter;
  private readonly retries: SlidingWindowCounter;

  /** @throws RangeError for a ratio outside [0, 1], a negative minimum or a window that is not positive */
  constructor(options: RetryBudgetOptions = {}) {
    this.ratio = options.ratio ?? 0.2;
    this.minRetriesPerSecond = options.minRetriesPerSecond ?? 10;
    this.windowMs = options.windowMs ?? 10_000;
    if (!(this.ratio >= 0 && this.ratio <= 1)) throw new RangeError(`ratio must be in [0, 1], given ${this.ratio}`);
    if (!(Number.isFinite(this.minRetriesPerSecond) && this.minRetriesPerSecond >= 0)) {
      throw new RangeError(`minRetriesPerSecond must be a finite number >= 0, given ${this.minRetriesPerSecond}`);
    }
    if (!(Number.isFinite(this.windowMs) && this.windowMs > 0)) throw new RangeError(`windowMs must be a positive number, given ${this.windowMs}`);
    this.requests = new SlidingWindowCounter(this.windowMs);
    this.retries = new SlidingWindowCounter(this.windowMs);
  }

  /** Counts one original request (the first attempt; a retry is counted by {@link tryRetry}, not here). */
  recordRequest(now: number): void {
    this.requests.add(now);
  }

  /** Asks for one retry at `now`: true (and the retry is counted) when the budget has room, false otherwise. */
  tryRetry(now: number): boolean {
    if (this.retries.total(now) + 1 > this.allowance(now)) return false;
    this.retries.add(now);
    return true;
  }

  /** The counts as of `now`. */
  state(now: number): RetryBudgetState {
    return { requests: this.requests.total(now), retries: this.retries.total(now), allowed: this.allowance(now) };
  }

  private allowance(now: number): number {
    return this.ratio * this.requests.total(now) + (this.minRetriesPerSecond * this.windowMs) / 1000;
  }
}
