/**
 * One side of a long-lived bidirectional stream (the requests of a dispatcher's Dispatch and of a
 * gateway's Permits, the scheduler's responses on Permits): what the service queues (a turn's worth
 * at a time, from a TurnBatch) waits here until the stream's writer takes it, everything queued at
 * that moment going as one message.
 */
export class StreamWriter<T> {
  private pending: T[] = [];
  private wake: (() => void) | undefined;

  /** Queues items for the next request and wakes the writer. */
  push(items: T[]): void {
    if (items.length === 0) return;
    this.pending = this.pending.length === 0 ? items : this.pending.concat(items);
    this.wakeWriter();
  }

  /** Drops what is queued (the stream it was for is gone). */
  clear(): void {
    this.pending = [];
  }

  /** One stream's messages, each the items queued since the last packed by `pack`, until `signal` aborts. */
  async *requests<R>(signal: AbortSignal, pack: (items: T[]) => R): AsyncGenerator<R> {
    // One listener for the stream's life (not one per wait: an AbortSignal checks every listener it has on each add).
    const onAbort = () => this.wakeWriter();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      while (!signal.aborted) {
        if (this.pending.length > 0) {
          const items = this.pending;
          this.pending = [];
          yield pack(items);
          continue;
        }
        await new Promise<void>((resolve) => (this.wake = resolve));
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  private wakeWriter(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }
}
