/**
 * Measures when this process's own event loop stalled. The fuzz judges a call late from the
 * client's clock, and a client whose thread is busy (encoding a 4 MB message, a GC pause, a
 * machine at load 8) reads its deadline late however fast the server answered. A late call whose
 * lateness the client's own stalls explain is counted apart from the hangs, not as one.
 */
import { performance } from 'node:perf_hooks';

/** A timer period; a tick later than this by over STALL_MS marks a stall. */
const TICK_MS = 10;
/** Gaps longer than the tick by this much are recorded as stalls. */
const STALL_MS = 50;
/** Stalls kept (oldest dropped): calls last seconds, so a few thousand is plenty. */
const KEEP = 4096;

export class StallMonitor {
  private readonly stalls: { start: number; end: number }[] = [];
  private last = performance.now();
  private readonly timer: NodeJS.Timeout;

  constructor() {
    this.timer = setInterval(() => {
      const now = performance.now();
      if (now - this.last > TICK_MS + STALL_MS) {
        this.stalls.push({ start: this.last + TICK_MS, end: now });
        if (this.stalls.length > KEEP) this.stalls.shift();
      }
      this.last = now;
    }, TICK_MS);
    this.timer.unref();
  }

  /** Milliseconds of [from, to] (performance.now() times) during which this process's loop was stalled. */
  stalledWithin(from: number, to: number): number {
    let total = 0;
    for (const s of this.stalls) total += Math.max(0, Math.min(to, s.end) - Math.max(from, s.start));
    return total;
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
