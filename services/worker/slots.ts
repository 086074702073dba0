/**
 * The worker's admission: a fixed number of slots for running tasks and a bounded first-come,
 * first-served queue of tasks waiting for one; and the moving average of latency the worker puts
 * in its load reports. Plain TypeScript, no gRPC.
 */

interface Waiter {
  readonly admit: () => void;
  readonly refuse: (reason: unknown) => void;
}

/** `limit` slots, and at most `maxWaiting` callers waiting for one. */
export class SlotQueue {
  private active = 0;
  private readonly queue: Waiter[] = [];

  /** @throws RangeError for a limit below 1 or a negative queue bound */
  constructor(
    readonly limit: number,
    readonly maxWaiting: number,
  ) {
    if (!(Number.isInteger(limit) && limit >= 1)) throw new RangeError(`limit must be an integer >= 1, given ${limit}`);
    if (!(Number.isInteger(maxWaiting) && maxWaiting >= 0)) throw new RangeError(`maxWaiting must be an integer >= 0, given ${maxWaiting}`);
  }

  /** Takes a slot if one is free and nobody waits for it (waiters go first). */
  tryAcquire(): boolean {
    if (this.active >= this.limit || this.queue.length > 0) return false;
    this.active++;
    return true;
  }

  /** True when a caller that cannot get a slot now could not wait for one either. */
  get queueFull(): boolean {
    return this.queue.length >= this.maxWaiting;
  }

  /**
   * Waits in line for a slot; resolves holding it. Rejects with the signal's reason when the
   * signal aborts first (the caller then holds nothing and has left the line), or with the reason
   * given to {@link refuseWaiting}.
   *
   * @throws RangeError (as a rejection) when the queue is full; check {@link queueFull} first
   */
  acquire(signal?: AbortSignal): Promise<void> {
    if (this.tryAcquire()) return Promise.resolve();
    if (this.queueFull) return Promise.reject(new RangeError(`the queue is full (${this.maxWaiting} waiting)`));
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const at = this.queue.indexOf(waiter);
        if (at >= 0) this.queue.splice(at, 1);
        reject(signal!.reason);
      };
      const waiter: Waiter = {
        admit: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
        refuse: (reason) => {
          signal?.removeEventListener('abort', onAbort);
          reject(reason);
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.queue.push(waiter);
    });
  }

  /** Gives a slot back; the first waiter, if any, gets it at once (no newcomer can take it first). */
  release(): void {
    const next = this.queue.shift();
    if (next) next.admit();
    else this.active = Math.max(0, this.active - 1);
  }

  /** Turns every waiter away with `reason` (shutdown); the slots in use are unaffected. */
  refuseWaiting(reason: unknown): void {
    for (const waiter of this.queue.splice(0)) waiter.refuse(reason);
  }

  /** Callers waiting for a slot. */
  get waiting(): number {
    return this.queue.length;
  }

  /** Slots in use. */
  get running(): number {
    return this.active;
  }

  /** True when no slot is in use and nobody waits. */
  get idle(): boolean {
    return this.active === 0 && this.queue.length === 0;
  }
}

