/**
 * Schema versions of the scheduler's and the aggregator's stores: files written by this release and
 * the one before (committed fixtures, made by test/store-fixtures.ts) open under this code, and
 * under a next release that adds a migration, with their content intact; a failing migration changes nothing;
 * a file newer than the code is refused with a message that names the file and both versions.
 */
import { expect } from 'chai';
import Database from 'better-sqlite3';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StoreMigration, StoreTooNewError } from '../../common/store-migrations';
import { AGGREGATOR_STORE_MIGRATIONS, AggregatorStore, STORE_FILE } from '../../services/aggregator/store';
import { JOB_STORE_MIGRATIONS, JobStore, STORE_FILE_NAME } from '../../services/scheduler/jobs/store';
import { FIXTURE_SUM, STORE_FIXTURES } from '../store-fixtures';

/** A migration of the next release: a new column with a default, as a real one might add. */
const addColumn = (table: string): StoreMigration => ({ description: `${table}.note`, up: (db) => db.exec(`ALTER TABLE ${table} ADD COLUMN note TEXT NOT NULL DEFAULT 'none'`) });

describe('store schema versions and migrations', () => {
  let root: string;
  let seq = 0;
  before(() => (root = mkdtempSync(join(tmpdir(), 'maas-store-migrations-'))));
  after(() => rmSync(root, { recursive: true, force: true }));

  /** A data directory holding a copy of the fixture `name` as `file`. */
  function copyOf(name: string, file: string): string {
    const dir = join(root, `case-${seq++}`);
    mkdirSync(dir);
    copyFileSync(join(STORE_FIXTURES, name), join(dir, file));
    return dir;
  }

  const versionOf = (path: string) => {
    const db = new Database(path, { readonly: true });
    try {
      return { version: db.pragma('user_version', { simple: true }) as number, columns: (db.pragma('table_info(jobs)') as { name: string }[]).map((c) => c.name) };
    } finally {
      db.close();
    }
  };

  function expectSchedulerContent(store: JobStore): void {
    const done = store.getJob('job-done')!;
    expect(done).to.include({ state: 'succeeded', tenant: 'acme', tasksDone: 3, recordsDone: 5, callbackState: 'failed', callbackError: 'connection refused' });
    expect(done.result).to.deep.equal({ totalRecords: 5 });
    expect(store.eventsAfter('job-done', 0).map((e) => Object.keys(e.event as object)[0])).to.deep.equal(['accepted', 'completed']);
    expect(store.unfinishedJobs().map((j) => j.id)).to.deep.equal(['job-running']);
    expect(store.tasks('job-running')[0]).to.include({ state: 'pending', attempts: 1, waits: 0, error: 'worker-2 went away' });
    expect(store.inlineRecords('job-running', 2)).to.deep.equal([{ text: 'record 4' }]);
  }

  it('the scheduler opens its store as the release before waits wrote it (schema version 1): migration 2 adds tasks.waits, every job, task, event and record is kept', () => {
    expect(JOB_STORE_MIGRATIONS).to.have.lengthOf(2);
    const dir = copyOf('scheduler-v1.sqlite', STORE_FILE_NAME);
    const store = new JobStore(dir);
    try {
      expect(store.schema).to.deep.equal({ from: 1, to: 2 });
      expectSchedulerContent(store);
      // The migrated column works: the running job's task can wait and start again.
      expect(store.startTask('job-running', 1)).to.deep.equal({ attempt: 1, firstStart: false, waits: 0 });
      expect(store.taskWaited('job-running', 1, 'no ready worker')).to.equal(true);
      expect(store.startTask('job-running', 1)).to.deep.equal({ attempt: 2, firstStart: false, waits: 1 });
    } finally {
      store.close();
    }
    expect(versionOf(join(dir, STORE_FILE_NAME)).version).to.equal(2);
  });

  it('the scheduler opens its store of this release (schema version 2) as it is', () => {
    const store = new JobStore(copyOf('scheduler-v2.sqlite', STORE_FILE_NAME));
    try {
      expect(store.schema).to.deep.equal({ from: 2, to: 2 });
      expectSchedulerContent(store);
    } finally {
      store.close();
    }
  });

  it('a next release with one more migration opens the scheduler store of this release, migrates it to version 3 and keeps its content', () => {
    const dir = copyOf('scheduler-v2.sqlite', STORE_FILE_NAME);
    const next = [...JOB_STORE_MIGRATIONS, addColumn('jobs')];
    const store = new JobStore(dir, { migrations: next });
    try {
      expect(store.schema).to.deep.equal({ from: 2, to: 3 });
      expectSchedulerContent(store);
    } finally {
      store.close();
    }
    expect(versionOf(join(dir, STORE_FILE_NAME))).to.deep.include({ version: 3 });
    expect(versionOf(join(dir, STORE_FILE_NAME)).columns).to.include('note');
    // Opened again, nothing is left to migrate.
    const again = new JobStore(dir, { migrations: next });
    expect(again.schema).to.deep.equal({ from: 3, to: 3 });
    again.close();
  });

  it('a migrated store is refused by the older release, naming the file and both versions, and left as it is', () => {
    const dir = copyOf('scheduler-v2.sqlite', STORE_FILE_NAME);
    new JobStore(dir, { migrations: [...JOB_STORE_MIGRATIONS, addColumn('jobs')] }).close();
    let caught: unknown;
    try {
      new JobStore(dir).close();
    } catch (err) {
      caught = err;
    }
    expect(caught).to.be.instanceOf(StoreTooNewError);
    const message = (caught as Error).message;
    expect(message).to.include(join(dir, STORE_FILE_NAME)).and.include('schema version 3').and.include('versions up to 2').and.include('newer release');
    expect(versionOf(join(dir, STORE_FILE_NAME)).version).to.equal(3);
  });

  it('a migration that fails part way changes nothing: the version and the tables stay as they were', () => {
    const dir = copyOf('scheduler-v1.sqlite', STORE_FILE_NAME);
    const failing: StoreMigration = {
      description: 'fails after its first change',
      up(db) {
        db.exec("ALTER TABLE jobs ADD COLUMN note TEXT NOT NULL DEFAULT 'none'");
        throw new Error('migration 3 failed');
      },
    };
    // From version 1: migration 2 runs, then 3 fails; neither is kept.
    expect(() => new JobStore(dir, { migrations: [...JOB_STORE_MIGRATIONS, failing] })).to.throw('migration 3 failed');
    const after = versionOf(join(dir, STORE_FILE_NAME));
    expect(after.version).to.equal(1);
    expect(after.columns).to.not.include('note');
    const db = new Database(join(dir, STORE_FILE_NAME), { readonly: true });
    const taskColumns = (db.pragma('table_info(tasks)') as { name: string }[]).map((c) => c.name);
    db.close();
    expect(taskColumns, 'migration 2 rolled back with 3').to.not.include('waits');
    const store = new JobStore(dir);
    expectSchedulerContent(store);
    store.close();
  });

  it('a new scheduler store starts at the newest version', () => {
    const dir = join(root, `case-${seq++}`);
    const store = new JobStore(dir);
    expect(store.schema).to.deep.equal({ from: 0, to: JOB_STORE_MIGRATIONS.length });
    store.close();
    expect(versionOf(join(dir, STORE_FILE_NAME)).version).to.equal(JOB_STORE_MIGRATIONS.length);
  });

  it('the aggregator opens its store of this release, and after one more migration, with its committed tasks and duplicates intact', () => {
    expect(AGGREGATOR_STORE_MIGRATIONS).to.have.lengthOf(1);
    for (const migrations of [AGGREGATOR_STORE_MIGRATIONS, [...AGGREGATOR_STORE_MIGRATIONS, addColumn('jobs')]]) {
      const store = new AggregatorStore(copyOf('aggregator-v1.sqlite', STORE_FILE), { migrations });
      try {
        expect(store.schema).to.deep.equal({ from: 1, to: migrations.length });
        expect(store.committedTasks('job-sum')).to.deep.equal([
          { taskIndex: 0, attempt: 1, records: 2 },
          { taskIndex: 2, attempt: 3, records: 1 },
        ]);
        expect(store.commit('job-sum', 2, 4, FIXTURE_SUM, { records: 9, wordCounts: { z: 9 }, totalWords: 9, outputs: [] }).duplicate, 'task 2 again').to.equal(true);
        expect(store.commit('job-sum', 1, 1, FIXTURE_SUM, { records: 1, wordCounts: { c: 1 }, totalWords: 1, outputs: [] })).to.include({ duplicate: false, tasksCommitted: 3 });
      } finally {
        store.close();
      }
    }
  });

  it('the aggregator refuses a store newer than its code, naming the file and both versions', () => {
    const dir = copyOf('aggregator-v1.sqlite', STORE_FILE);
    const db = new Database(join(dir, STORE_FILE));
    db.pragma('user_version = 7');
    db.close();
    expect(() => new AggregatorStore(dir)).to.throw(StoreTooNewError, new RegExp(`aggregator's store ${join(dir, STORE_FILE).replace(/[.]/g, '\\.')} has schema version 7, but this release knows versions up to 1`));
  });
});
