/**
 * Batching per turn of the event loop: items queued within one turn are handed on together, as
 * one message, when the turn ends.
 *
 * The flush runs from setImmediate, not from a microtask: measured, a flush from a microtask sent a
 * call's last message and its end as two writes and cost 40% latency at one call at a time.
 */
export class TurnBatch<T> {
  private items: T[] = [];
  private scheduled = false;
  private ended = false;
  private readonly start: () => void;

  /**
   * `flush` gets the items of one turn, oldest first (none when only {@link schedule} asked for it).
   * `afterWrites`: flush one turn of the event loop later, once the writes that this turn queued
   * (a call's request to its worker, a response to its client) have gone out. For the streams of
   * the control plane (the dispatcher's messages to the balancer): measured at one call at a time,
   * their flush ahead of those writes delayed each call by a write and woke the balancer while the
   * worker and the client waited for a core (timeline and numbers in docs/BENCHMARKS.md).
   */
  constructor(
    private readonly flush: (items: T[]) => void,
    options: { afterWrites?: boolean } = {},
  ) {
    this.start = options.afterWrites ? () => setImmediate(this.run) : this.run;
  }

  /** Items queued and not yet flushed. */
  get pending(): number {
    return this.items.length;
  }

  /** True once {@link close} was called: nothing is queued or flushed any more. */
  get closed(): boolean {
    return this.ended;
  }

  /** Queues an item for this turn's flush. Ignored once closed. */
  push(item: T): void {
    if (this.ended) return;
    this.items.push(item);
    this.schedule();
  }

  /** Makes sure a flush runs at the end of this turn, even with nothing queued (its callback may have more to do than write). */
  schedule(): void {
    if (this.scheduled || this.ended) return;
    this.scheduled = true;
    setImmediate(this.start);
  }

  /** Removes and returns what is queued now, for a caller that sends it itself or drops it; the flush of this turn gets only what comes after. */
  take(): T[] {
    const items = this.items;
    this.items = [];
    return items;
  }

  /** Drops what is queued; no flush runs from now on, and later pushes are ignored. */
  close(): void {
    this.ended = true;
    this.items = [];
  }

  private readonly run = () => {
    this.scheduled = false;
    if (this.ended) return;
    // What is pushed while the flush runs goes in the next turn's batch.
    this.flush(this.take());
  };
}
