/**
 * A count of events over a sliding window of time, kept in a fixed ring of buckets so memory does
 * not grow with the rate. Plain TypeScript: the caller passes the time of every call.
 */

/**
 * Counts events in the last `windowMs`, at a granularity of `windowMs / buckets`: an event stops
 * counting between `windowMs - windowMs / buckets` and `windowMs` after it was added.
 */
export class SlidingWindowCounter {
  /** Width of one bucket, ms. */
  private readonly bucketMs: number;
  private readonly counts: number[];
  /** The bucket number (time / bucketMs, floored) each slot holds, or -Infinity when unused. */
  private readonly stamps: number[];

  /**
   * @param windowMs length of the window, > 0
   * @param buckets slots the window is cut into (>= 1); more is finer and costs more per `total`
   * @throws RangeError for a window that is not a positive finite number or a bucket count that is not a positive integer
   */
  constructor(
    readonly windowMs: number,
    readonly buckets = 10,
  ) {
    if (!(Number.isFinite(windowMs) && windowMs > 0)) throw new RangeError(`windowMs must be a positive number, given ${windowMs}`);
    if (!(Number.isInteger(buckets) && buckets >= 1)) throw new RangeError(`buckets must be an integer >= 1, given ${buckets}`);
    this.bucketMs = windowMs / buckets;
    this.counts = Array<number>(buckets).fill(0);
    this.stamps = Array<number>(buckets).fill(-Infinity);
  }

  /** Adds `n` events at time `now` (ms). */
  add(now: number, n = 1): void {
    const bucket = Math.floor(now / this.bucketMs);
    const slot = ((bucket % this.buckets) + this.buckets) % this.buckets;
    if (this.stamps[slot] !== bucket) {
      this.stamps[slot] = bucket;
      this.counts[slot] = 0;
    }
    this.counts[slot]! += n;
  }

  /** Events added in the window that ends at `now`. */
  total(now: number): number {
    const bucket = Math.floor(now / this.bucketMs);
    let sum = 0;
    for (let slot = 0; slot < this.buckets; slot++) {
      const stamp = this.stamps[slot]!;
      if (stamp > bucket - this.buckets && stamp <= bucket) sum += this.counts[slot]!;
    }
    return sum;
  }

  /** Forgets every event. */
  clear(): void {
    this.counts.fill(0);
    this.stamps.fill(-Infinity);
  }
}
