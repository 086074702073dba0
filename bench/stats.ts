/**
 * Closed-loop load and latency statistics for the benchmarks: N callers each issue calls back to
 * back for a fixed time; every completed call's latency is kept, so percentiles are exact.
 */
import { setMaxListeners } from 'node:events';
import { performance } from 'node:perf_hooks';

/** What one closed-loop run measured. */
export interface LoadSample {
  /** Latency of every call that succeeded, in milliseconds, in completion order. */
  latenciesMs: number[];
  /** Calls that failed. */
  errors: number;
  /** How many calls failed with each message, to say why. */
  errorMessages: Map<string, number>;
  /** From the start until the last caller finished its last call, in milliseconds. */
  elapsedMs: number;
}

/**
 * Runs `concurrency` callers, each calling `call` back to back until `durationMs` has passed
 * (a call in flight at that moment is allowed to finish and is counted). `signal` aborts the run.
 */
export async function runClosedLoop(
  call: (signal: AbortSignal) => Promise<void>,
  concurrency: number,
  durationMs: number,
  signal: AbortSignal,
): Promise<LoadSample> {
  const sample: LoadSample = { latenciesMs: [], errors: 0, errorMessages: new Map(), elapsedMs: 0 };
  const started = performance.now();
  const end = started + durationMs;
  const caller = async () => {
    while (!signal.aborted && performance.now() < end) {
      const t0 = performance.now();
      try {
        await call(signal);
        sample.latenciesMs.push(performance.now() - t0);
      } catch (err) {
        if (signal.aborted) return;
        sample.errors++;
        const message = err instanceof Error ? err.message : String(err);
        sample.errorMessages.set(message, (sample.errorMessages.get(message) ?? 0) + 1);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, caller));
  sample.elapsedMs = performance.now() - started;
  signal.throwIfAborted();
  return sample;
}

/** Merges samples of the same mode and concurrency taken in separate slices. */
export function mergeSamples(samples: LoadSample[]): LoadSample {
  return {
    latenciesMs: samples.flatMap((s) => s.latenciesMs),
    errors: samples.reduce((n, s) => n + s.errors, 0),
    errorMessages: samples.reduce((all, s) => {
      for (const [message, n] of s.errorMessages) all.set(message, (all.get(message) ?? 0) + n);
      return all;
    }, new Map<string, number>()),
    elapsedMs: samples.reduce((t, s) => t + s.elapsedMs, 0),
  };
}

/** Throughput and latency of one sample. */
export interface LatencySummary {
  requests: number;
  errors: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  meanMs: number;
}

/** Summarises a sample: requests per second over its elapsed time, nearest-rank percentiles. */
export function summarise(sample: LoadSample): LatencySummary {
  const sorted = Float64Array.from(sample.latenciesMs).sort();
  const n = sorted.length;
  const mean = n === 0 ? NaN : sorted.reduce((a, b) => a + b, 0) / n;
  return {
    requests: n,
    errors: sample.errors,
    rps: sample.elapsedMs > 0 ? (n * 1000) / sample.elapsedMs : 0,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    meanMs: mean,
  };
}

/** Nearest-rank percentile of an ascending array; NaN when empty. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

/**
 * One slice of closed-loop load: {@link runClosedLoop} under a signal that aborts with `signal`
 * (an interrupt), or a minute after the slice should have ended (a hang); each caller's call listens to it.
 */
export function runSlice(call: (signal: AbortSignal) => Promise<void>, concurrency: number, durationMs: number, signal: AbortSignal): Promise<LoadSample> {
  const sliceSignal = AbortSignal.any([signal, AbortSignal.timeout(durationMs + 60_000)]);
  setMaxListeners(concurrency + 10, sliceSignal);
  return runClosedLoop(call, concurrency, durationMs, sliceSignal);
}
