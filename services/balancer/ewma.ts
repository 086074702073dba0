/**
 * Peak-EWMA latency estimate of one worker, as Finagle's and Linkerd's balancers keep it: a slower
 * sample raises the estimate to that sample at once (so a worker that turns slow is avoided from
 * its first slow reply), a faster one pulls it down gradually, by a weight that grows with the
 * time since the previous sample. Plain TypeScript: the clock is injected.
 */

/** Settings of a {@link PeakEwma}. */
export interface PeakEwmaOptions {
  /** Clock, ms. The time between two samples decides how much the second one counts. */
  readonly now: () => number;
  /**
   * Decay time constant τ, ms (default 300): a sample taken Δt after the previous one moves the
   * estimate toward itself by `1 - exp(-Δt / τ)`, so after about τ of faster samples the estimate
   * has come down roughly two thirds of the way.
   */
  readonly decayMs?: number;
}

/**
 * Default decay time constant, ms. Finagle uses 10 s; measured here (docs/BENCHMARKS.md, bench:lb)
 * a 10 s memory keeps the noise peaks of healthy workers so long that a worker 10 times slower
 * looks only about 4 times slower, while 300 ms forgets a peak within a few hundred calls and
 * still remembers a slow worker, whose every sample is slow.
 */
export const DEFAULT_EWMA_DECAY_MS = 300;

/** A peak-sensitive, time-weighted moving average of latency samples (ms). */
export class PeakEwma {
  /** Decay time constant τ in use, ms. */
  readonly decayMs: number;
  private readonly now: () => number;
  private estimate: number | undefined;
  private stamp = 0;
  private count = 0;

  /** @throws RangeError for a decay time that is not a positive finite number */
  constructor(options: PeakEwmaOptions) {
    const decayMs = options.decayMs ?? DEFAULT_EWMA_DECAY_MS;
    if (!(Number.isFinite(decayMs) && decayMs > 0)) throw new RangeError(`decayMs must be a positive number, given ${decayMs}`);
    this.decayMs = decayMs;
    this.now = options.now;
  }

  /**
   * Adds one latency sample (ms). The first sample becomes the estimate; a sample above the
   * estimate replaces it (the peak); a sample below it moves the estimate toward it by
   * `1 - exp(-Δt / τ)`, Δt being the time since the previous sample (0 if the clock went back).
   *
   * @throws RangeError for a latency that is negative or not finite
   */
  observe(latencyMs: number): void {
    if (!(Number.isFinite(latencyMs) && latencyMs >= 0)) throw new RangeError(`latencyMs must be a finite number >= 0, given ${latencyMs}`);
    const now = this.now();
    if (this.estimate === undefined || latencyMs > this.estimate) {
      this.estimate = latencyMs;
    } else {
      const elapsed = Math.max(0, now - this.stamp);
      const keep = Math.exp(-elapsed / this.decayMs);
      this.estimate = this.estimate * keep + latencyMs * (1 - keep);
    }
    this.stamp = now;
    this.count++;
  }

  /**
   * The current estimate, ms; undefined before the first sample (the policy then gives the worker
   * a prior). The estimate changes only when a sample arrives: a worker that gets no traffic keeps
   * the estimate it had, and its {@link ageMs} grows.
   */
  get value(): number | undefined {
    return this.estimate;
  }

  /**
   * Time since the last sample, ms, by this estimate's clock; undefined before the first sample.
   * The policy trusts an old estimate less (see `Candidate.ewmaAgeMs`).
   */
  get ageMs(): number | undefined {
    return this.estimate === undefined ? undefined : Math.max(0, this.now() - this.stamp);
  }

  /** Samples observed since creation or the last {@link reset}. */
  get samples(): number {
    return this.count;
  }

  /** Forgets every sample, e.g. when a worker rejoins after a restart. */
  reset(): void {
    this.estimate = undefined;
    this.count = 0;
  }
}
