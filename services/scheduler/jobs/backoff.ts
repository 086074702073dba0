/**
 * Retry delays: exponential backoff with full jitter (a uniformly random delay between 0 and an
 * exponentially growing ceiling), so retries of many tasks or callbacks that failed together do
 * not come back together. Plain TypeScript; randomness is injectable for tests.
 */

/** How {@link retryDelayMs} grows. */
export interface BackoffOptions {
  /** Ceiling of the first retry's delay, in milliseconds; doubles with each attempt. >= 0. */
  baseMs: number;
  /** Largest ceiling, in milliseconds: the delay never exceeds it. >= 0. */
  maxMs: number;
  /** Uniform source in [0, 1); defaults to `Math.random`. */
  random?: () => number;
}

/**
 * Delay before retrying after failed attempt `attempt` (from 1): a whole number of milliseconds
 * drawn uniformly from [0, min(maxMs, baseMs * 2^(attempt - 1))]. Attempt 1 waits up to `baseMs`,
 * attempt 2 up to twice that, and so on, capped at `maxMs`.
 *
 * @throws RangeError when `attempt` is not an integer >= 1, or `baseMs` or `maxMs` is negative or not finite.
 */
export function retryDelayMs(attempt: number, options: BackoffOptions): number {
  const { baseMs, maxMs, random = Math.random } = options;
  if (!Number.isSafeInteger(attempt) || attempt < 1) throw new RangeError(`attempt must be an integer >= 1, given ${attempt}`);
  if (!Number.isFinite(baseMs) || baseMs < 0) throw new RangeError(`baseMs must be a finite number >= 0, given ${baseMs}`);
  if (!Number.isFinite(maxMs) || maxMs < 0) throw new RangeError(`maxMs must be a finite number >= 0, given ${maxMs}`);
  // 2^1023 is the largest finite power of two; past it the ceiling is maxMs anyway (or 0 when baseMs is 0).
  const ceiling = Math.floor(Math.min(maxMs, baseMs * 2 ** Math.min(attempt - 1, 1023)));
  // A source that strays outside [0, 1) must not push the delay outside [0, ceiling].
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.min(ceiling, Math.floor(r * (ceiling + 1)));
}
