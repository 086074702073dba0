import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { JobEventLog, type JobEventStore } from '../../services/scheduler/jobs/event-log.js';
import { JobStore, type StoredEvent } from '../../services/scheduler/jobs/store.js';

interface TestEvent {
  kind: 'step' | 'done';
  n?: number;
}

const isFinal = (event: unknown): boolean => (event as TestEvent).kind === 'done';

/**
 * The store side in memory. Reads return copies, as a real store does (it parses JSON), so a
 * test can tell an event read from the store from one handed over live.
 */
class MemoryEvents implements JobEventStore {
  readonly logs = new Map<string, StoredEvent[]>();
  reads = 0;

  appendEvent(jobId: string, event: unknown, timeMs: number): number {
    const log = this.logs.get(jobId) ?? [];
    this.logs.set(jobId, log);
    log.push({ seq: log.length + 1, timeMs, event: structuredClone(event) });
    return log.length;
  }

  eventsAfter(jobId: string, afterSeq: number, limit = Infinity): StoredEvent[] {
    this.reads++;
    return (this.logs.get(jobId) ?? [])
      .filter((e) => e.seq > afterSeq)
      .slice(0, limit)
      .map((e) => structuredClone(e));
  }
}

const step = (n: number): TestEvent => ({ kind: 'step', n });
const DONE: TestEvent = { kind: 'done' };

/** The iterator's next event; fails the test when the iteration has ended instead. */
async function nextEvent(it: AsyncIterator<StoredEvent, void>): Promise<StoredEvent> {
  const r = await it.next();
  expect(r.done, 'the watch ended').to.not.equal(true);
  return r.value as StoredEvent;
}

/** Collects a watch to its end. */
async function collect(events: AsyncIterable<StoredEvent>): Promise<StoredEvent[]> {
  const seen: StoredEvent[] = [];
  for await (const e of events) seen.push(e);
  return seen;
}

describe('jobs: JobEventLog', () => {
  let store: MemoryEvents;

  beforeEach(() => {
    store = new MemoryEvents();
  });

  it('replays the stored events after afterSeq, then follows live ones until the final event', async () => {
    const log = new JobEventLog(store, isFinal);
    for (let n = 1; n <= 3; n++) log.append('job', step(n), 100 + n);
    const it = log.watch('job', 1, new AbortController().signal)[Symbol.asyncIterator]();

    expect((await it.next()).value).to.deep.equal({ seq: 2, timeMs: 102, event: step(2) });
    expect((await it.next()).value).to.deep.equal({ seq: 3, timeMs: 103, event: step(3) });
    // The replay is over: the next event is one that does not exist yet.
    const live = it.next();
    log.append('job', step(4), 104);
    expect((await live).value).to.deep.equal({ seq: 4, timeMs: 104, event: step(4) });
    const last = it.next();
    log.append('job', DONE, 105);
    expect((await last).value).to.deep.equal({ seq: 5, timeMs: 105, event: DONE });
    expect((await it.next()).done).to.equal(true);
    expect(log.watcherCount('job')).to.equal(0);
  });

  it('delivers every event once and in order when events are appended while the replay runs', async () => {
    const log = new JobEventLog(store, isFinal, { pageSize: 2 });
    for (let n = 1; n <= 5; n++) log.append('job', step(n), n);
    const seen: number[] = [];
    for await (const e of log.watch('job', 0)) {
      seen.push(e.seq);
      // Two appends per delivered event, mid-page and mid-replay, until the job ends.
      if (e.seq < 12) {
        log.append('job', step(100 + e.seq), 0);
        log.append('job', step(200 + e.seq), 0);
      } else if (e.seq === 12) {
        log.append('job', DONE, 0);
      }
    }
    const stored = store.logs.get('job')!.length;
    expect(seen).to.deep.equal(Array.from({ length: stored }, (_, i) => i + 1));
    expect(isFinal(store.logs.get('job')![stored - 1]!.event)).to.equal(true);
  });

  it('gives a watcher that comes after the end the whole log, then ends', async () => {
    const log = new JobEventLog(store, isFinal);
    log.append('job', step(1), 1);
    log.append('job', step(2), 2);
    log.append('job', DONE, 3);
    const seen = await collect(log.watch('job', 0, new AbortController().signal));
    expect(seen.map((e) => e.event)).to.deep.equal([step(1), step(2), DONE]);
    expect(log.watcherCount('job')).to.equal(0);
  });

  it('ends at once for a watcher that reconnects after the final event it saw', async () => {
    const log = new JobEventLog(store, isFinal);
    log.append('job', step(1), 1);
    log.append('job', DONE, 2);
    expect(await collect(log.watch('job', 2))).to.deep.equal([]);
    expect((await collect(log.watch('job', 1))).map((e) => e.seq)).to.deep.equal([2]);
  });

  it('ends the iteration, without an error, when the signal aborts', async () => {
    const log = new JobEventLog(store, isFinal);
    log.append('job', step(1), 1);
    const controller = new AbortController();
    const seen: number[] = [];
    let replayed!: () => void;
    const replayDone = new Promise<void>((resolve) => (replayed = resolve));
    const watching = (async () => {
      for await (const e of log.watch('job', 0, controller.signal)) {
        seen.push(e.seq);
        if (e.seq === 1) replayed();
        if (e.seq === 2) controller.abort();
      }
    })();
    await replayDone;
    expect(log.watcherCount('job')).to.equal(1);
    log.append('job', step(2), 2);
    log.append('job', step(3), 3);
    await watching;
    expect(seen).to.deep.equal([1, 2]);
    expect(log.watcherCount('job')).to.equal(0);
  });

  it('ends a waiting watcher when the signal aborts', async () => {
    const log = new JobEventLog(store, isFinal);
    const controller = new AbortController();
    const it = log.watch('job', 0, controller.signal)[Symbol.asyncIterator]();
    const next = it.next();
    controller.abort();
    expect(await next).to.deep.equal({ value: undefined, done: true });
    expect(log.watcherCount('job')).to.equal(0);
  });

  it('yields nothing for a signal that has already aborted', async () => {
    const log = new JobEventLog(store, isFinal);
    log.append('job', step(1), 1);
    expect(await collect(log.watch('job', 0, AbortSignal.abort()))).to.deep.equal([]);
  });

  it('stops watching when the caller breaks out of the loop', async () => {
    const log = new JobEventLog(store, isFinal);
    log.append('job', step(1), 1);
    for await (const e of log.watch('job', 0)) {
      expect(e.seq).to.equal(1);
      expect(log.watcherCount('job')).to.equal(1);
      break;
    }
    expect(log.watcherCount('job')).to.equal(0);
  });

  it('holds at most maxBuffered live events for a watcher that falls behind, and re-reads the rest from the store', async () => {
    const log = new JobEventLog(store, isFinal, { maxBuffered: 3, pageSize: 10 });
    const appended: TestEvent[] = [];
    const append = (event: TestEvent) => {
      appended.push(event);
      log.append('job', event, 0);
    };
    append(step(0));
    const it = log.watch('job', 0)[Symbol.asyncIterator]();
    expect((await nextEvent(it)).seq).to.equal(1);
    // The reader stalls while 50 events arrive.
    for (let n = 1; n <= 50; n++) append(step(n));
    append(DONE);
    const rest: StoredEvent[] = [];
    for (let r = await it.next(); !r.done; r = await it.next()) rest.push(r.value);

    expect(rest.map((e) => e.seq)).to.deep.equal(Array.from({ length: 51 }, (_, i) => i + 2));
    // Live events are handed over as appended (same object); store reads are copies. Only the
    // buffered ones can be live.
    const handedLive = rest.filter((e) => appended.includes(e.event as TestEvent));
    expect(handedLive.length).to.be.at.most(3);
    expect(rest.length - handedLive.length).to.be.at.least(48);
  });

  it('keeps the watchers of different jobs apart', async () => {
    const log = new JobEventLog(store, isFinal);
    const a = log.watch('a', 0)[Symbol.asyncIterator]();
    const b = log.watch('b', 0)[Symbol.asyncIterator]();
    const nextA = a.next();
    const nextB = b.next();
    log.append('b', step(1), 1);
    log.append('a', DONE, 2);
    expect((await nextA).value).to.deep.include({ seq: 1, event: DONE });
    expect((await nextB).value).to.deep.include({ seq: 1, event: step(1) });
    expect((await a.next()).done).to.equal(true);
    await b.return(undefined);
  });

  describe('over a JobStore', () => {
    let dir: string;
    let jobs: JobStore;

    beforeEach(() => {
      dir = mkdtempSync(join(tmpdir(), 'maas-jobs-events-'));
      jobs = new JobStore(dir);
    });

    afterEach(() => {
      jobs.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it('notify wakes watchers for the final event that finishJob stored itself', async () => {
      const log = new JobEventLog(jobs, isFinal);
      jobs.createJob({ id: 'job', tenant: 't', spec: {}, priority: 0, recordsTotal: 0, createdAt: 1 }, [], undefined, step(0));
      const it = log.watch('job', 0)[Symbol.asyncIterator]();
      expect((await it.next()).value).to.deep.equal({ seq: 1, timeMs: 1, event: step(0) });
      const next = it.next();
      log.append('job', step(1), 2);
      expect(((await next).value as StoredEvent).seq).to.equal(2);

      const final = it.next();
      jobs.finishJob('job', 'succeeded', { result: {} }, DONE, 3);
      log.notify('job');
      expect((await final).value).to.deep.equal({ seq: 3, timeMs: 3, event: DONE });
      expect((await it.next()).done).to.equal(true);
    });
  });
});
