/**
 * Job events for live watchers: appends go to the durable store first, then wake the job's
 * watchers; a watcher replays the stored events after the sequence it names, then follows new
 * ones, with no gap and no duplicate, until the job's final event or its signal.
 *
 * The store is the source of truth. A watcher keeps the last sequence it delivered and a small
 * buffer of live events; whenever the buffer does not continue exactly from that sequence (it is
 * empty, it overflowed, or an event was stored by other means such as `JobStore.finishJob`), the
 * watcher reads the next page from the store instead. So memory per watcher is bounded by the
 * buffer and one page, however far behind its reader falls.
 *
 * This relies on the store being synchronous (as better-sqlite3 is): an event is stored before
 * `append` notifies, and nothing can be appended between a watcher's store read and the moment it
 * starts waiting. Plain TypeScript, no gRPC.
 */
import type { StoredEvent } from './store.js';

/** What the log needs of the store: the two event calls of `JobStore`. */
export interface JobEventStore {
  /** Stores the event as the job's next one and returns its sequence number. */
  appendEvent(jobId: string, event: unknown, timeMs: number): number;
  /** The job's events with a sequence above `afterSeq`, in order, at most `limit`. */
  eventsAfter(jobId: string, afterSeq: number, limit?: number): StoredEvent[];
}

/** Tuning of a {@link JobEventLog}. */
export interface JobEventLogOptions {
  /** Live events a watcher holds before it stops buffering and re-reads the store. Default 1024. */
  maxBuffered?: number;
  /** Events read from the store at a time. Default 256. */
  pageSize?: number;
}

/** One watcher's state. */
interface Watcher {
  /** Live events not yet delivered, in sequence order. */
  buffer: StoredEvent[];
  /** Resolves the watcher's pending wait, if it is waiting. */
  wake: (() => void) | undefined;
}

/** A job's event log with live watchers (see the module comment). */
export class JobEventLog {
  private readonly watchers = new Map<string, Set<Watcher>>();
  private readonly maxBuffered: number;
  private readonly pageSize: number;

  /**
   * @param store where events are stored and read back.
   * @param isFinal tells a job's last event (completed, failed, cancelled): a watcher ends after delivering it.
   * @throws RangeError when an option is not an integer >= 1.
   */
  constructor(
    private readonly store: JobEventStore,
    private readonly isFinal: (event: unknown) => boolean,
    options: JobEventLogOptions = {},
  ) {
    const { maxBuffered = 1024, pageSize = 256 } = options;
    if (!Number.isSafeInteger(maxBuffered) || maxBuffered < 1) throw new RangeError(`maxBuffered must be an integer >= 1, given ${maxBuffered}`);
    if (!Number.isSafeInteger(pageSize) || pageSize < 1) throw new RangeError(`pageSize must be an integer >= 1, given ${pageSize}`);
    this.maxBuffered = maxBuffered;
    this.pageSize = pageSize;
  }

  /** Stores the event through the store, then hands it to the job's watchers. Returns its sequence number. */
  append(jobId: string, event: unknown, timeMs: number): number {
    const seq = this.store.appendEvent(jobId, event, timeMs);
    const stored: StoredEvent = { seq, timeMs, event };
    for (const watcher of this.watchers.get(jobId) ?? []) {
      // A full buffer takes nothing more: the watcher finds the gap and reads the store.
      if (watcher.buffer.length < this.maxBuffered) watcher.buffer.push(stored);
      watcher.wake?.();
    }
    return seq;
  }

  /**
   * Tells the job's watchers that events were stored without `append` (by `JobStore.createJob`
   * or `JobStore.finishJob`): they read them from the store.
   */
  notify(jobId: string): void {
    for (const watcher of this.watchers.get(jobId) ?? []) watcher.wake?.();
  }

  /** Watchers following the job now (for tests and metrics). */
  watcherCount(jobId: string): number {
    return this.watchers.get(jobId)?.size ?? 0;
  }

  /**
   * The job's events after `afterSeq`: the stored ones, then live ones as they are appended, each
   * exactly once and in order. Ends after the event `isFinal` accepts (at once when `afterSeq` is
   * that event's sequence: the caller has seen the end), or when `signal` aborts (without an
   * error). Events are read lazily, page by page, as the caller pulls.
   */
  async *watch(jobId: string, afterSeq: number, signal?: AbortSignal): AsyncGenerator<StoredEvent, void, undefined> {
    if (signal?.aborted) return;
    // A watcher that reconnects after the final event has nothing more to wait for.
    if (afterSeq > 0) {
      const [last] = this.store.eventsAfter(jobId, afterSeq - 1, 1);
      if (last && last.seq === afterSeq && this.isFinal(last.event)) return;
    }
    const watcher: Watcher = { buffer: [], wake: undefined };
    const onAbort = (): void => watcher.wake?.();
    signal?.addEventListener('abort', onAbort, { once: true });
    let watchers = this.watchers.get(jobId);
    if (!watchers) this.watchers.set(jobId, (watchers = new Set()));
    watchers.add(watcher);
    try {
      let cursor = afterSeq;
      while (!signal?.aborted) {
        while (watcher.buffer.length > 0 && watcher.buffer[0]!.seq <= cursor) watcher.buffer.shift();
        let batch: StoredEvent[];
        if (watcher.buffer[0]?.seq === cursor + 1) {
          batch = watcher.buffer;
          watcher.buffer = [];
        } else {
          // Nothing buffered, or a gap before what is: the store has every event.
          batch = this.store.eventsAfter(jobId, cursor, this.pageSize);
          if (batch.length === 0) {
            await new Promise<void>((resolve) => {
              watcher.wake = resolve;
            });
            watcher.wake = undefined;
            continue;
          }
        }
        for (const stored of batch) {
          // Events at or below the cursor were delivered already; a gap in a batch means a buffer overflow: re-read.
          if (stored.seq <= cursor) continue;
          if (stored.seq !== cursor + 1 || signal?.aborted) break;
          yield stored;
          cursor = stored.seq;
          if (this.isFinal(stored.event)) return;
        }
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      watchers.delete(watcher);
      if (watchers.size === 0 && this.watchers.get(jobId) === watchers) this.watchers.delete(jobId);
    }
  }
}
