/**
 * Slow start: a worker that has just joined, or come back from ejection, gets a share of traffic
 * that ramps up linearly instead of the whole backlog at once (its caches are cold, its JIT is not
 * warm, its models may still be paging in). The ramp is a weight in (0, 1] that the policies read
 * from `Candidate.weight`. Plain TypeScript: the caller passes the time.
 */

/** Settings of the ramp. */
export interface SlowStartOptions {
  /** How long the ramp lasts, ms (default 10,000); 0 turns slow start off (weight 1 at once). */
  readonly windowMs?: number;
  /** Weight at the start of the ramp, in (0, 1] (default 0.1). */
  readonly minWeight?: number;
}

/** Default ramp length, ms. */
export const DEFAULT_SLOW_START_WINDOW_MS = 10_000;
/** Default weight at the start of the ramp. */
export const DEFAULT_SLOW_START_MIN_WEIGHT = 0.1;

function validated(options: SlowStartOptions): Required<SlowStartOptions> {
  const windowMs = options.windowMs ?? DEFAULT_SLOW_START_WINDOW_MS;
  const minWeight = options.minWeight ?? DEFAULT_SLOW_START_MIN_WEIGHT;
  if (!(Number.isFinite(windowMs) && windowMs >= 0)) throw new RangeError(`windowMs must be a finite number >= 0, given ${windowMs}`);
  if (!(minWeight > 0 && minWeight <= 1)) throw new RangeError(`minWeight must be in (0, 1], given ${minWeight}`);
  return { windowMs, minWeight };
}

/**
 * The ramp itself: `minWeight` at `elapsedMs` 0 (or less), rising linearly to 1 at `windowMs`, 1
 * after that.
 *
 * @throws RangeError for a window that is negative or a minimum weight outside (0, 1]
 */
export function slowStartWeight(elapsedMs: number, options: SlowStartOptions = {}): number {
  const { windowMs, minWeight } = validated(options);
  if (windowMs === 0 || elapsedMs >= windowMs) return 1;
  if (!(elapsedMs > 0)) return minWeight;
  return minWeight + (1 - minWeight) * (elapsedMs / windowMs);
}

/**
 * The ramp of one worker: when it began, and its weight now. The balancer keeps one in each
 * worker's object; {@link SlowStart} keeps them by worker id.
 */
export class SlowStartRamp {
  private startedAt: number | undefined;

  /** @param options validated settings (see {@link SlowStart}) */
  constructor(private readonly options: Required<SlowStartOptions>) {}

  /** Starts (or restarts) the ramp at `now`: the worker joined or came back. */
  begin(now: number): void {
    this.startedAt = now;
  }

  /** Weight at `now`; 1 when not ramping (never begun, or past its window, which ends the ramp). */
  weight(now: number): number {
    if (this.startedAt === undefined) return 1;
    const elapsed = now - this.startedAt;
    if (elapsed >= this.options.windowMs) {
      this.startedAt = undefined;
      return 1;
    }
    return slowStartWeight(elapsed, this.options);
  }

  /** True from {@link begin} until a {@link weight} call finds the window over. */
  get active(): boolean {
    return this.startedAt !== undefined;
  }
}

/** The ramp of every worker that is in one, by worker id. */
export class SlowStart {
  private readonly options: Required<SlowStartOptions>;
  private readonly ramps = new Map<string, SlowStartRamp>();

  /** @throws RangeError for a window that is negative or a minimum weight outside (0, 1] */
  constructor(options: SlowStartOptions = {}) {
    this.options = validated(options);
  }

  /** A ramp for one worker under these settings, not yet begun. */
  newRamp(): SlowStartRamp {
    return new SlowStartRamp(this.options);
  }

  /** Starts (or restarts) the ramp of a worker that joined or came back at `now`. */
  begin(id: string, now: number): void {
    const ramp = this.ramps.get(id) ?? this.newRamp();
    ramp.begin(now);
    this.ramps.set(id, ramp);
  }

  /** Weight of `id` at `now`; 1 for a worker that is not ramping (never begun, or past its window). */
  weight(id: string, now: number): number {
    const ramp = this.ramps.get(id);
    if (!ramp) return 1;
    const weight = ramp.weight(now);
    // A finished ramp is dropped so the map holds only workers still ramping.
    if (!ramp.active) this.ramps.delete(id);
    return weight;
  }

  /** Whether `id` is still ramping at `now`. */
  ramping(id: string, now: number): boolean {
    return this.weight(id, now) < 1;
  }

  /** Number of workers ramping (or not yet asked about since their ramp ended). */
  get size(): number {
    return this.ramps.size;
  }

  /** Forgets a worker that left. */
  forget(id: string): void {
    this.ramps.delete(id);
  }
}
