/* An exponentially weighted moving average: the worker's service times, the scheduler's wait estimate. */

/** Exponentially weighted moving average over samples: each new sample weighs `alpha`. */
export class MovingAverage {
  private current: number | undefined;

  /** @throws RangeError for an alpha outside (0, 1] */
  constructor(readonly alpha: number) {
    if (!(alpha > 0 && alpha <= 1)) throw new RangeError(`alpha must be in (0, 1], given ${alpha}`);
  }

  /** Adds a sample; the first one becomes the average. */
  add(sample: number): void {
    this.current = this.current === undefined ? sample : this.current + this.alpha * (sample - this.current);
  }

  /** The average; undefined before the first sample. */
  get value(): number | undefined {
    return this.current;
  }
}
