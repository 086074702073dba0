import { expect } from 'chai';
import Database from 'better-sqlite3';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { splitIntoTasks } from '../../services/scheduler/jobs/split.js';
import { InvalidPageTokenError, JobStore, JobStoreError, type NewJob } from '../../services/scheduler/jobs/store.js';

/** A clock that says what it is told. */
function manualClock(start = 5_000) {
  const clock = { time: start, now: () => clock.time };
  return clock;
}

function newJob(id: string, overrides: Partial<NewJob> = {}): NewJob {
  return { id, tenant: 'acme', spec: { mapper: 'wordcount', reducer: 'top_k' }, priority: 2, recordsTotal: 10, createdAt: 1_000, ...overrides };
}

/** Stores a job of `records` records in shards of `shard`, with inline records "r0", "r1", ... */
function createJob(store: JobStore, id: string, overrides: Partial<NewJob> = {}, records = 10, shard = 4) {
  const tasks = splitIntoTasks(records, shard);
  const inline = tasks.map((t) => Array.from({ length: t.count }, (_, k) => ({ text: `r${t.first + k}` })));
  return store.createJob(newJob(id, { recordsTotal: records, ...overrides }), tasks, inline, { accepted: { tasksTotal: tasks.length } });
}

function expectStoreError(fn: () => unknown, code: string): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).to.be.instanceOf(JobStoreError);
  expect((caught as JobStoreError).code).to.equal(code);
}

describe('jobs: JobStore', () => {
  let root: string;
  let dir: string;
  let store: JobStore;
  let clock: ReturnType<typeof manualClock>;
  let n = 0;

  before(() => {
    root = mkdtempSync(join(tmpdir(), 'maas-jobs-store-'));
  });

  beforeEach(() => {
    dir = join(root, `case-${n++}`, 'data');
    clock = manualClock();
    store = new JobStore(dir, { now: clock.now });
  });

  afterEach(() => store.close());

  after(() => rmSync(root, { recursive: true, force: true }));

  it('creates the data directory and <dataDir>/scheduler.sqlite in WAL mode', () => {
    expect(store.path).to.equal(join(dir, 'scheduler.sqlite'));
    expect(existsSync(store.path)).to.equal(true);
    store.close();
    const db = new Database(join(dir, 'scheduler.sqlite'), { readonly: true });
    try {
      expect(db.pragma('journal_mode', { simple: true })).to.equal('wal');
    } finally {
      db.close();
    }
  });

  it('createJob stores the job queued, its tasks pending, its inline records and event 1', () => {
    const job = createJob(store, 'job-1', { deadlineAt: 9_000, callbackUrl: 'http://example.test/cb' });
    expect(job).to.deep.equal({
      id: 'job-1',
      tenant: 'acme',
      state: 'queued',
      spec: { mapper: 'wordcount', reducer: 'top_k' },
      priority: 2,
      tasksTotal: 3,
      tasksDone: 0,
      recordsTotal: 10,
      recordsDone: 0,
      createdAt: 1_000,
      deadlineAt: 9_000,
      callbackUrl: 'http://example.test/cb',
      callbackState: 'none',
    });
    expect(store.getJob('job-1')).to.deep.equal(job);
    expect(store.tasks('job-1')).to.deep.equal([
      { jobId: 'job-1', index: 0, first: 0, count: 4, state: 'pending', attempts: 0, waits: 0 },
      { jobId: 'job-1', index: 1, first: 4, count: 4, state: 'pending', attempts: 0, waits: 0 },
      { jobId: 'job-1', index: 2, first: 8, count: 2, state: 'pending', attempts: 0, waits: 0 },
    ]);
    expect(store.inlineRecords('job-1', 2)).to.deep.equal([{ text: 'r8' }, { text: 'r9' }]);
    expect(store.eventsAfter('job-1', 0)).to.deep.equal([{ seq: 1, timeMs: 1_000, event: { accepted: { tasksTotal: 3 } } }]);
  });

  it('getJob is undefined and inlineRecords empty for what does not exist', () => {
    createJob(store, 'job-1');
    store.createJob(newJob('job-file', { recordsTotal: 3 }), splitIntoTasks(3, 2), undefined, {});
    expect(store.getJob('nope')).to.equal(undefined);
    expect(store.inlineRecords('nope', 0)).to.deep.equal([]);
    expect(store.inlineRecords('job-1', 7)).to.deep.equal([]);
    expect(store.inlineRecords('job-file', 0)).to.deep.equal([]);
  });

  it('createJob refuses a taken id and inconsistent tasks, storing nothing', () => {
    createJob(store, 'job-1');
    expectStoreError(() => createJob(store, 'job-1', { tenant: 'other' }), 'exists');
    expect(store.getJob('job-1')!.tenant).to.equal('acme');
    expect(() => store.createJob(newJob('job-2', { recordsTotal: 11 }), splitIntoTasks(10, 4), undefined, {})).to.throw(RangeError, 'records_total');
    expect(() => store.createJob(newJob('job-2'), splitIntoTasks(10, 4), [[]], {})).to.throw(RangeError, 'inline');
    const shuffled = splitIntoTasks(10, 4).reverse();
    expect(() => store.createJob(newJob('job-2'), shuffled, undefined, {})).to.throw(RangeError, 'index');
    expect(store.getJob('job-2')).to.equal(undefined);
  });

  it('createJob is atomic: a failure while writing leaves no job, task or event behind', () => {
    const tasks = splitIntoTasks(10, 4);
    // A BigInt cannot be serialized: the inline write of the first task throws after the job row was inserted.
    const inline = tasks.map(() => [{ text: 'x', n: 1n }]);
    expect(() => store.createJob(newJob('job-1'), tasks, inline, {})).to.throw(TypeError);
    expect(store.getJob('job-1')).to.equal(undefined);
    expect(store.tasks('job-1')).to.deep.equal([]);
    expect(store.eventsAfter('job-1', 0)).to.deep.equal([]);
    expect(store.unfinishedJobs()).to.deep.equal([]);
  });

  it('listJobs pages a tenant\'s jobs newest first, ties broken by id, without results', () => {
    const created = [
      ['a', 100],
      ['b', 300],
      ['c', 200],
      ['d', 300],
      ['e', 300],
      ['f', 50],
    ] as const;
    for (const [id, at] of created) createJob(store, id, { createdAt: at });
    createJob(store, 'other-tenant', { tenant: 'globex', createdAt: 1000 });
    store.finishJob('e', 'succeeded', { result: { big: 'result' } }, { completed: {} });

    const seen: string[][] = [];
    let token = '';
    do {
      const page = store.listJobs('acme', 2, token);
      seen.push(page.jobs.map((j) => j.id));
      for (const j of page.jobs) expect(j.result).to.equal(undefined);
      token = page.nextPageToken;
    } while (token !== '');
    expect(seen).to.deep.equal([['e', 'd'], ['b', 'c'], ['a', 'f']]);
    expect(store.listJobs('acme', 100, '').jobs.map((j) => j.id)).to.deep.equal(['e', 'd', 'b', 'c', 'a', 'f']);
    expect(store.listJobs('acme', 6).nextPageToken).to.equal('');
    expect(store.listJobs('nobody', 10)).to.deep.equal({ jobs: [], nextPageToken: '' });
  });

  it('listJobs rejects a page size below 1 and a token it did not issue', () => {
    createJob(store, 'a');
    expect(() => store.listJobs('acme', 0)).to.throw(RangeError, 'page_size');
    expect(() => store.listJobs('acme', 10, 'garbage')).to.throw(InvalidPageTokenError, 'page_token');
    expect(() => store.listJobs('acme', 10, Buffer.from('{"x":1}').toString('base64url'))).to.throw(InvalidPageTokenError);
  });

  it('startTask counts attempts, records the worker, and starts the job once', () => {
    createJob(store, 'job-1');
    clock.time = 7_000;
    expect(store.startTask('job-1', 0, 'worker-a')).to.deep.equal({ attempt: 1, firstStart: true, waits: 0 });
    expect(store.getJob('job-1')).to.include({ state: 'running', startedAt: 7_000 });
    clock.time = 8_000;
    expect(store.startTask('job-1', 1)).to.deep.equal({ attempt: 1, firstStart: false, waits: 0 });
    expect(store.getJob('job-1')!.startedAt).to.equal(7_000);
    expect(store.tasks('job-1')[0]).to.include({ state: 'running', attempts: 1, worker: 'worker-a' });
    expect(store.pendingTasks('job-1').map((t) => t.index)).to.deep.equal([2]);
  });

  it('failTaskAttempt puts the task back to pending with its error; the next start is attempt 2', () => {
    createJob(store, 'job-1');
    store.startTask('job-1', 0);
    expect(store.failTaskAttempt('job-1', 0, 'worker died')).to.equal(true);
    expect(store.tasks('job-1')[0]).to.include({ state: 'pending', attempts: 1, error: 'worker died' });
    expect(store.pendingTasks('job-1').map((t) => t.index)).to.deep.equal([0, 1, 2]);
    expect(store.startTask('job-1', 0).attempt).to.equal(2);
  });

  it('failTask fails the task for good: it cannot start again or be failed twice', () => {
    createJob(store, 'job-1');
    store.startTask('job-1', 1);
    expect(store.failTask('job-1', 1, 'bad record')).to.equal(true);
    expect(store.tasks('job-1')[1]).to.include({ state: 'failed', error: 'bad record' });
    expect(store.failTask('job-1', 1, 'again')).to.equal(false);
    expect(store.failTaskAttempt('job-1', 1, 'again')).to.equal(false);
    expectStoreError(() => store.startTask('job-1', 1), 'task_state');
    expect(store.tasks('job-1')[1]).to.include({ state: 'failed', error: 'bad record', attempts: 1 });
  });

  it('finishTask counts a task once even when called twice', () => {
    createJob(store, 'job-1');
    store.startTask('job-1', 0);
    const after = store.finishTask('job-1', 0, 4);
    expect(after).to.include({ tasksDone: 1, recordsDone: 4, tasksTotal: 3, recordsTotal: 10 });
    expect(store.finishTask('job-1', 0, 4)).to.equal(undefined);
    expect(store.getJob('job-1')).to.include({ tasksDone: 1, recordsDone: 4 });
    expect(store.tasks('job-1')[0]!.state).to.equal('done');
    // A late failure of another attempt of a done task changes nothing.
    expect(store.failTaskAttempt('job-1', 0, 'late')).to.equal(false);
    expect(store.failTask('job-1', 0, 'late')).to.equal(false);
    expect(store.tasks('job-1')[0]!.state).to.equal('done');
    expectStoreError(() => store.startTask('job-1', 0), 'task_state');
  });

  it('finishJob ends a job once, appending its final event in the same step', () => {
    createJob(store, 'job-1');
    store.appendEvent('job-1', { started: {} }, 2_000);
    clock.time = 9_999;
    expect(store.finishJob('job-1', 'succeeded', { result: { wordCounts: { words: [] } } }, { completed: {} })).to.equal(true);
    expect(store.getJob('job-1')).to.deep.include({ state: 'succeeded', finishedAt: 9_999, result: { wordCounts: { words: [] } } });
    expect(store.eventsAfter('job-1', 2)).to.deep.equal([{ seq: 3, timeMs: 9_999, event: { completed: {} } }]);

    expect(store.finishJob('job-1', 'cancelled', { error: 'too late' }, { cancelled: {} }, 20_000)).to.equal(false);
    expect(store.getJob('job-1')).to.deep.include({ state: 'succeeded', finishedAt: 9_999 });
    expect(store.getJob('job-1')!.error).to.equal(undefined);
    expect(store.eventsAfter('job-1', 0).map((e) => e.seq)).to.deep.equal([1, 2, 3]);
  });

  it('an ended job is frozen: no more events, starts or task progress', () => {
    createJob(store, 'job-1');
    store.startTask('job-1', 0);
    expect(store.finishJob('job-1', 'cancelled', { error: 'cancelled by its owner' }, { cancelled: { reason: 'x' } }, 3_000)).to.equal(true);
    expect(store.getJob('job-1')).to.include({ state: 'cancelled', error: 'cancelled by its owner', finishedAt: 3_000 });
    expectStoreError(() => store.appendEvent('job-1', { progress: {} }, 4_000), 'ended');
    expectStoreError(() => store.startTask('job-1', 1), 'ended');
    expect(store.finishTask('job-1', 0, 4)).to.equal(undefined);
    expect(store.failTaskAttempt('job-1', 0, 'aborted')).to.equal(false);
    expect(store.getJob('job-1')).to.include({ tasksDone: 0, recordsDone: 0 });
    expect(store.eventsAfter('job-1', 0).map((e) => e.seq)).to.deep.equal([1, 2]);
  });

  it('numbers each job\'s events 1, 2, 3... with no gaps, and pages them with eventsAfter', () => {
    createJob(store, 'job-1');
    createJob(store, 'job-2');
    const seqs = [];
    for (let i = 0; i < 5; i++) {
      seqs.push(store.appendEvent('job-1', { progress: { i } }, 2_000 + i));
      if (i % 2 === 0) store.appendEvent('job-2', { progress: { i } }, 2_000 + i);
    }
    expect(seqs).to.deep.equal([2, 3, 4, 5, 6]);
    expect(store.eventsAfter('job-2', 0).map((e) => e.seq)).to.deep.equal([1, 2, 3, 4]);
    expect(store.eventsAfter('job-1', 2, 2)).to.deep.equal([
      { seq: 3, timeMs: 2_001, event: { progress: { i: 1 } } },
      { seq: 4, timeMs: 2_002, event: { progress: { i: 2 } } },
    ]);
    expect(store.eventsAfter('job-1', 6)).to.deep.equal([]);
    expect(store.eventsAfter('nope', 0)).to.deep.equal([]);
  });

  it('refuses unknown jobs and tasks with not_found', () => {
    createJob(store, 'job-1');
    expectStoreError(() => store.appendEvent('nope', {}, 1), 'not_found');
    expectStoreError(() => store.startTask('nope', 0), 'not_found');
    expectStoreError(() => store.startTask('job-1', 3), 'not_found');
    expectStoreError(() => store.finishTask('job-1', 3, 1), 'not_found');
    expectStoreError(() => store.failTaskAttempt('nope', 0, 'x'), 'not_found');
    expectStoreError(() => store.finishJob('nope', 'failed', {}, {}), 'not_found');
    expect(store.setCallbackState('nope', 'delivered')).to.equal(false);
  });

  it('resetRunningTasks puts running tasks back to pending and keeps their attempt counts', () => {
    createJob(store, 'job-1');
    store.startTask('job-1', 0);
    store.startTask('job-1', 1);
    store.finishTask('job-1', 1, 4);
    store.startTask('job-1', 2);
    expect(store.resetRunningTasks('job-1')).to.equal(2);
    expect(store.tasks('job-1').map((t) => [t.state, t.attempts])).to.deep.equal([
      ['pending', 1],
      ['done', 1],
      ['pending', 1],
    ]);
    expect(store.startTask('job-1', 0).attempt).to.equal(2);
    expect(store.resetRunningTasks('job-1')).to.equal(1);
    expect(store.resetRunningTasks('job-1')).to.equal(0);
  });

  it('unfinishedJobs lists queued and running jobs, oldest first; countUnfinishedJobs counts them', () => {
    createJob(store, 'queued', { createdAt: 300 });
    createJob(store, 'running', { createdAt: 100, tenant: 'globex' });
    createJob(store, 'done', { createdAt: 200 });
    store.startTask('running', 0);
    store.finishJob('done', 'failed', { error: 'boom' }, { failed: { error: 'boom' } });
    expect(store.unfinishedJobs().map((j) => [j.id, j.state])).to.deep.equal([
      ['running', 'running'],
      ['queued', 'queued'],
    ]);
    expect(store.countUnfinishedJobs()).to.equal(2);
    expect(store.countUnfinishedJobs('acme')).to.equal(1);
    expect(store.countUnfinishedJobs('nobody')).to.equal(0);
  });

  it('makes the callback of an ended job with a URL pending until its state is set', () => {
    createJob(store, 'with-url', { callbackUrl: 'https://example.test/hook' });
    createJob(store, 'without-url');
    expect(store.pendingCallbacks()).to.deep.equal([]);
    store.finishJob('with-url', 'succeeded', { result: {} }, { completed: {} });
    store.finishJob('without-url', 'succeeded', { result: {} }, { completed: {} });
    expect(store.getJob('without-url')!.callbackState).to.equal('none');
    expect(store.pendingCallbacks().map((j) => [j.id, j.callbackState])).to.deep.equal([['with-url', 'pending']]);
    expect(store.setCallbackState('with-url', 'delivered')).to.equal(true);
    expect(store.getJob('with-url')!.callbackState).to.equal('delivered');
    expect(store.pendingCallbacks()).to.deep.equal([]);
  });

  it('records why a callback failed, and clears it when the state changes again', () => {
    createJob(store, 'refused', { callbackUrl: 'http://localhost:1/hook' });
    store.finishJob('refused', 'succeeded', { result: {} }, { completed: {} });
    expect(store.getJob('refused')!.callbackError).to.equal(undefined);
    store.setCallbackState('refused', 'failed', 'refused: localhost resolves to 127.0.0.1, a loopback address');
    expect(store.getJob('refused')).to.include({ callbackState: 'failed', callbackError: 'refused: localhost resolves to 127.0.0.1, a loopback address' });
    expect(store.listJobs('acme', 10).jobs.find((j) => j.id === 'refused')!.callbackError).to.match(/^refused: /);
    store.setCallbackState('refused', 'pending');
    expect(store.getJob('refused')!.callbackError).to.equal(undefined);
  });

  it('taskWaited puts a running task back to pending and counts the start as a wait, which the next start reports', () => {
    createJob(store, 'job-1');
    expect(store.taskWaited('job-1', 0, 'no ready worker'), 'a pending task cannot have waited').to.equal(false);
    store.startTask('job-1', 0);
    expect(store.taskWaited('job-1', 0, 'no ready worker serves "mapper:wordcount"')).to.equal(true);
    expect(store.tasks('job-1')[0]).to.include({ state: 'pending', attempts: 1, waits: 1, error: 'no ready worker serves "mapper:wordcount"' });
    expect(store.startTask('job-1', 0)).to.deep.equal({ attempt: 2, firstStart: false, waits: 1 });
  });

  it('adds the callback_error column to a store made before it existed', () => {
    store.close();
    const old = join(root, 'old');
    const first = new JobStore(old);
    createJob(first, 'job-1', { callbackUrl: 'https://example.test/hook' });
    first.close();
    const db = new Database(join(old, 'scheduler.sqlite'));
    db.exec('ALTER TABLE jobs DROP COLUMN callback_error');
    // Stores of that time had no schema version either, nor tasks.waits (migration 2).
    db.exec('ALTER TABLE tasks DROP COLUMN waits');
    db.pragma('user_version = 0');
    db.close();
    store = new JobStore(old);
    expect(store.schema).to.deep.equal({ from: 0, to: 2 });
    expect(store.getJob('job-1')).to.include({ id: 'job-1', callbackState: 'none' });
    expect(store.setCallbackState('job-1', 'failed', 'HTTP 500 Internal Server Error')).to.equal(true);
    expect(store.getJob('job-1')!.callbackError).to.equal('HTTP 500 Internal Server Error');
  });

  it('keeps everything after close and reopen', () => {
    createJob(store, 'job-1', { callbackUrl: 'http://example.test/cb' });
    createJob(store, 'job-2');
    store.startTask('job-1', 0, 'w1');
    store.finishTask('job-1', 0, 4);
    store.startTask('job-1', 1, 'w2');
    store.appendEvent('job-1', { progress: { tasksDone: 1 } }, 3_000);
    store.finishJob('job-2', 'failed', { error: 'boom' }, { failed: { error: 'boom' } }, 4_000);
    const before = {
      jobs: [store.getJob('job-1'), store.getJob('job-2')],
      tasks: [store.tasks('job-1'), store.tasks('job-2')],
      events: [store.eventsAfter('job-1', 0), store.eventsAfter('job-2', 0)],
      inline: [0, 1, 2].map((i) => store.inlineRecords('job-1', i)),
      unfinished: store.unfinishedJobs(),
    };
    store.close();

    store = new JobStore(dir, { now: clock.now });
    expect({
      jobs: [store.getJob('job-1'), store.getJob('job-2')],
      tasks: [store.tasks('job-1'), store.tasks('job-2')],
      events: [store.eventsAfter('job-1', 0), store.eventsAfter('job-2', 0)],
      inline: [0, 1, 2].map((i) => store.inlineRecords('job-1', i)),
      unfinished: store.unfinishedJobs(),
    }).to.deep.equal(before);
    expect(before.inline[1]).to.deep.equal([{ text: 'r4' }, { text: 'r5' }, { text: 'r6' }, { text: 'r7' }]);
    // Appending continues the sequence where it stopped (accepted, progress, then this).
    expect(store.appendEvent('job-1', { progress: {} }, 5_000)).to.equal(3);
  });

  it('keeps every committed write when the process is killed with SIGKILL', () => {
    const storeModule = join(__dirname, '../../services/scheduler/jobs/store.js');
    const script = `
      const { JobStore } = require(${JSON.stringify(storeModule)});
      const store = new JobStore(${JSON.stringify(dir)});
      const tasks = [{ index: 0, first: 0, count: 2 }, { index: 1, first: 2, count: 1 }];
      store.createJob({ id: 'crash', tenant: 't', spec: {}, priority: 0, recordsTotal: 3, createdAt: 1 }, tasks, [[{ text: 'a' }, { text: 'b' }], [{ text: 'c' }]], { accepted: {} });
      store.startTask('crash', 0, 'w');
      store.finishTask('crash', 0, 2);
      store.appendEvent('crash', { taskDone: { taskIndex: 0 } }, 2);
      process.kill(process.pid, 'SIGKILL');
    `;
    store.close();
    const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
    expect(child.signal, child.stderr).to.equal('SIGKILL');

    store = new JobStore(dir);
    expect(store.getJob('crash')).to.include({ state: 'running', tasksDone: 1, recordsDone: 2, recordsTotal: 3 });
    expect(store.tasks('crash').map((t) => t.state)).to.deep.equal(['done', 'pending']);
    expect(store.inlineRecords('crash', 1)).to.deep.equal([{ text: 'c' }]);
    expect(store.eventsAfter('crash', 0).map((e) => e.event)).to.deep.equal([{ accepted: {} }, { taskDone: { taskIndex: 0 } }]);
  });
});
