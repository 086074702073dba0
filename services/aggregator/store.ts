/**
 * The aggregator's durable store: which tasks of which job are committed, and what they output,
 * in SQLite (better-sqlite3) at `<dataDir>/aggregator.sqlite`.
 *
 * What is stored. A job row holds the job's reduce spec and its count of committed tasks; a task
 * row holds the attempt that won, its record count and the task's output (the reducer's input),
 * as JSON. The reducer's state is not written: it is a pure, order-independent fold of the
 * committed outputs, kept in memory (a read-through cache of recent jobs) and rebuilt from the
 * task rows when a job is not in memory, e.g. after a restart. So a commit writes one task row
 * and updates one small job row: its cost follows the task's output, not the job's size (a word
 * count state grows with the job's vocabulary; a collect state with all of its outputs).
 *
 * Exactly once. A commit inserts the task row and bumps the job's count in one transaction; the
 * task's primary key (job_id, task_index) makes a later attempt of a committed task a no-op that
 * is reported as a duplicate: the first complete attempt wins.
 *
 * Durability. WAL journal with synchronous = NORMAL: a transaction is committed once its pages are
 * appended to the WAL file, and the WAL is fsynced at checkpoints, not at every commit. An
 * acknowledged commit is in the operating system's page cache, so it survives the process being
 * killed (kill -9, a crash, an OOM kill); an OS crash or power loss may lose the last commits
 * (never corrupt the database), and Finalize would then report fewer tasks than were acknowledged.
 * synchronous = FULL would close that gap at the cost of an fsync per commit.
 *
 * One process per data directory: the database is opened in exclusive locking mode, so a second
 * aggregator on the same directory fails to start instead of diverging from this one's cache.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { MeshError, quoteInput } from '../../common/errors';
import { MigrationOutcome, StoreMigration, migrateStore } from '../../common/store-migrations';
import { outputBytes } from './output-file';
import { CollectedOutput, ReduceResult, ReduceSpec, Reducer, ReducerState, ShardOutput, compareCollected, createReducer } from './reducers';

/** The database file's name inside the data directory. */
export const STORE_FILE = 'aggregator.sqlite';

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS jobs (
    job_id          TEXT PRIMARY KEY,
    spec            TEXT NOT NULL,    -- ReduceSpec as JSON
    tasks_committed INTEGER NOT NULL  -- rows in tasks for this job
  ) STRICT;
  CREATE TABLE IF NOT EXISTS tasks (
    job_id     TEXT NOT NULL,
    task_index INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,      -- the attempt that was committed (the first to complete)
    records    INTEGER NOT NULL,
    output     TEXT NOT NULL,         -- ShardOutput as JSON
    PRIMARY KEY (job_id, task_index)
  ) STRICT;
`;

/**
 * The forward migrations of the store, in order: the k-th (from 0) brings a file from schema
 * version k (PRAGMA user_version) to k + 1. Append, never edit: released files depend on them.
 */
export const AGGREGATOR_STORE_MIGRATIONS: readonly StoreMigration[] = [{ description: 'jobs and committed tasks', up: (db) => db.exec(SCHEMA) }];

/** Options of the store. */
export interface StoreOptions {
  /** Jobs whose reducer state is kept in memory (least recently used ones are dropped). Default 64. */
  cachedJobs?: number;
  /**
   * Largest collected output of one collect job, in bytes of its JSON Lines: a commit that would
   * take a job past it is refused (FAILED_PRECONDITION naming the limit). Default: no limit.
   */
  maxOutputBytes?: number;
  /** The schema's migrations; defaults to {@link AGGREGATOR_STORE_MIGRATIONS} (tests add one to play the next release). */
  migrations?: readonly StoreMigration[];
}

/** What a commit did. */
export interface CommitOutcome {
  /** True when the task was committed before: nothing changed. */
  duplicate: boolean;
  /** Tasks of the job committed so far. */
  tasksCommitted: number;
  /** The reducer's partial result over the committed tasks. */
  partial: ReduceResult;
}

/** Where a job stands. */
export interface JobProgress {
  /** The spec the job's first commit gave. */
  spec: ReduceSpec;
  /** Tasks committed. */
  tasksCommitted: number;
}

/** A committed task. */
export interface CommittedTask {
  taskIndex: number;
  /** The attempt whose output was committed. */
  attempt: number;
  records: number;
}

/** A job in memory: its reducer and the state folded from its committed tasks. */
interface CachedJob {
  spec: ReduceSpec;
  reducer: Reducer;
  state: ReducerState;
  tasksCommitted: number;
  /** Bytes of the JSON Lines of its collected outputs (collect jobs only; else 0). */
  outputBytes: number;
}

/** Spec fields in the order they are compared, with their proto names for messages. */
const SPEC_FIELDS: readonly [keyof ReduceSpec, string][] = [
  ['reducer', 'reducer'],
  ['tasksTotal', 'tasks_total'],
  ['topK', 'top_k'],
  ['positiveLabel', 'positive_label'],
  ['meanOf', 'mean_of'],
  ['outputFile', 'output_file'],
];

/** The spec's own fields only, in a fixed order (so its JSON is canonical). */
function specOf(spec: ReduceSpec): ReduceSpec {
  return {
    reducer: spec.reducer,
    topK: spec.topK,
    tasksTotal: spec.tasksTotal,
    outputFile: spec.outputFile,
    positiveLabel: spec.positiveLabel,
    meanOf: spec.meanOf,
  };
}

/**
 * FAILED_PRECONDITION when `given` differs from the spec the job was first committed with: a job
 * is reduced one way from its first task to its last.
 */
/** A spec value in a message: a string as a short quoted prefix, a number as it is. */
function quoteValue(value: unknown): string {
  return typeof value === 'string' ? quoteInput(value) : String(value);
}

export function checkSameSpec(jobId: string, stored: ReduceSpec, given: ReduceSpec): void {
  for (const [key, name] of SPEC_FIELDS) {
    if (stored[key] !== given[key]) {
      throw new MeshError(
        'failed_precondition',
        `job ${jobId} is reduced with reduce.${name} ${quoteValue(stored[key])}, this call gives ${quoteValue(given[key])}`,
      );
    }
  }
}

/** The aggregator's store; see the module comment. Synchronous: each method is atomic. */
export class AggregatorStore {
  /** Path of the database file. */
  readonly path: string;
  /** The schema version the file had when opened, and the one it has now (see {@link AGGREGATOR_STORE_MIGRATIONS}). */
  readonly schema: MigrationOutcome;
  private readonly db: Database.Database;
  private readonly cachedJobs: number;
  private readonly maxOutputBytes: number;
  /** Recently used jobs, least recent first (a Map keeps insertion order). */
  private readonly cache = new Map<string, CachedJob>();
  private readonly statements;

  /** Opens (creating if needed) the store in `dataDir`. Throws if another process has it open. */
  constructor(dataDir: string, options: StoreOptions = {}) {
    this.cachedJobs = Math.max(1, options.cachedJobs ?? 64);
    this.maxOutputBytes = options.maxOutputBytes ?? Infinity;
    mkdirSync(dataDir, { recursive: true });
    this.path = join(dataDir, STORE_FILE);
    // No busy wait: the only other holder of the lock would be another aggregator process.
    this.db = new Database(this.path, { timeout: 0 });
    try {
      this.db.pragma('locking_mode = EXCLUSIVE');
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      // BEGIN IMMEDIATE takes the write lock, which exclusive mode then holds until close.
      this.schema = migrateStore(this.db, `the aggregator's store ${this.path}`, options.migrations ?? AGGREGATOR_STORE_MIGRATIONS);
    } catch (err) {
      this.db.close();
      if ((err as { code?: string }).code === 'SQLITE_BUSY') {
        throw new Error(`${this.path} is in use by another process: one aggregator per data directory`);
      }
      throw err;
    }
    this.statements = {
      job: this.db.prepare<[string], { spec: string; tasks_committed: number }>('SELECT spec, tasks_committed FROM jobs WHERE job_id = ?'),
      insertJob: this.db.prepare<[string, string]>('INSERT INTO jobs (job_id, spec, tasks_committed) VALUES (?, ?, 0)'),
      countTask: this.db.prepare<[string]>('UPDATE jobs SET tasks_committed = tasks_committed + 1 WHERE job_id = ?'),
      insertTask: this.db.prepare<[string, number, number, number, string]>(
        'INSERT INTO tasks (job_id, task_index, attempt, records, output) VALUES (?, ?, ?, ?, ?) ON CONFLICT (job_id, task_index) DO NOTHING',
      ),
      taskExists: this.db.prepare<[string, number], { one: number }>('SELECT 1 AS one FROM tasks WHERE job_id = ? AND task_index = ?'),
      outputs: this.db.prepare<[string], { output: string }>('SELECT output FROM tasks WHERE job_id = ? ORDER BY task_index'),
      tasks: this.db.prepare<[string], { task_index: number; attempt: number; records: number }>(
        'SELECT task_index, attempt, records FROM tasks WHERE job_id = ? ORDER BY task_index',
      ),
      deleteTasks: this.db.prepare<[string]>('DELETE FROM tasks WHERE job_id = ?'),
      deleteJob: this.db.prepare<[string]>('DELETE FROM jobs WHERE job_id = ?'),
    };
  }

  /**
   * Commits task `taskIndex` of `jobId` unless it is committed already: in one transaction,
   * stores the task's output and counts it, then folds it into the job's state. A later attempt
   * of a committed task changes nothing and is reported as a duplicate. Throws
   * FAILED_PRECONDITION when `spec` differs from the job's, or when the task's outputs would take
   * a collect job past the output size limit (nothing is stored then). The caller validates the
   * spec and that taskIndex < spec.tasksTotal.
   */
  commit(jobId: string, taskIndex: number, attempt: number, spec: ReduceSpec, output: ShardOutput): CommitOutcome {
    const given = specOf(spec);
    const known = this.load(jobId);
    if (known) checkSameSpec(jobId, known.spec, given);
    const adding = given.reducer === 'collect' ? outputBytes(output.outputs) : 0;
    const total = (known?.outputBytes ?? 0) + adding;
    if (total > this.maxOutputBytes && !this.statements.taskExists.get(jobId, taskIndex)) {
      throw new MeshError(
        'failed_precondition',
        `job ${jobId}: its collected output would be ${total} bytes, over the aggregator's output size limit of ${this.maxOutputBytes} bytes (--max-output-bytes)`,
      );
    }
    const inserted = this.db.transaction(() => {
      if (!known) this.statements.insertJob.run(jobId, JSON.stringify(given));
      if (this.statements.insertTask.run(jobId, taskIndex, attempt, output.records, JSON.stringify(output)).changes === 0) return false;
      this.statements.countTask.run(jobId);
      return true;
    })();
    const job = known ?? this.remember(jobId, this.fresh(given));
    if (inserted) {
      try {
        job.state = job.reducer.fold(job.state, output);
      } catch (err) {
        // The fold may have half-updated the state in place: rebuild it from the database next time.
        this.cache.delete(jobId);
        throw err;
      }
      job.tasksCommitted++;
      job.outputBytes += adding;
    }
    return { duplicate: !inserted, tasksCommitted: job.tasksCommitted, partial: job.reducer.snapshot(job.state, false) };
  }

  /** The job's spec and committed count, or undefined for a job never committed to (or forgotten). */
  progress(jobId: string): JobProgress | undefined {
    const job = this.load(jobId);
    return job && { spec: { ...job.spec }, tasksCommitted: job.tasksCommitted };
  }

  /** The reducer's result over the job's committed tasks, or undefined for an unknown job. */
  result(jobId: string, final: boolean): ReduceResult | undefined {
    const job = this.load(jobId);
    return job && job.reducer.snapshot(job.state, final);
  }

  /** Every collected output of the job, in index order (for collect's output file). */
  collectedOutputs(jobId: string): CollectedOutput[] {
    const all: CollectedOutput[] = [];
    for (const row of this.statements.outputs.iterate(jobId)) {
      for (const r of (JSON.parse(row.output) as ShardOutput).outputs) all.push({ index: r.index, output: r.output });
    }
    return all.sort(compareCollected);
  }

  /** The job's committed tasks, by index: which attempt won each. */
  committedTasks(jobId: string): CommittedTask[] {
    return this.statements.tasks.all(jobId).map((r) => ({ taskIndex: r.task_index, attempt: r.attempt, records: r.records }));
  }

  /** Drops the job and its tasks; true if there was such a job. */
  forget(jobId: string): boolean {
    this.cache.delete(jobId);
    return this.db.transaction(() => {
      this.statements.deleteTasks.run(jobId);
      return this.statements.deleteJob.run(jobId).changes > 0;
    })();
  }

  /** Closes the database; the store is unusable afterwards. */
  close(): void {
    this.cache.clear();
    if (this.db.open) this.db.close();
  }

  /** The job from memory, or rebuilt from its rows; undefined if it has none. */
  private load(jobId: string): CachedJob | undefined {
    const cached = this.cache.get(jobId);
    if (cached) {
      this.cache.delete(jobId);
      this.cache.set(jobId, cached);
      return cached;
    }
    const row = this.statements.job.get(jobId);
    if (!row) return undefined;
    const job = this.fresh(JSON.parse(row.spec) as ReduceSpec);
    // Any order gives the same state; task order keeps rebuilds reproducible to read.
    for (const task of this.statements.outputs.iterate(jobId)) {
      const output = JSON.parse(task.output) as ShardOutput;
      job.state = job.reducer.fold(job.state, output);
      if (job.spec.reducer === 'collect') job.outputBytes += outputBytes(output.outputs);
    }
    job.tasksCommitted = row.tasks_committed;
    return this.remember(jobId, job);
  }

  private fresh(spec: ReduceSpec): CachedJob {
    const reducer = createReducer(spec);
    return { spec, reducer, state: reducer.initial(), tasksCommitted: 0, outputBytes: 0 };
  }

  private remember(jobId: string, job: CachedJob): CachedJob {
    this.cache.set(jobId, job);
    for (const oldest of this.cache.keys()) {
      if (this.cache.size <= this.cachedJobs) break;
      this.cache.delete(oldest);
    }
    return job;
  }
}
