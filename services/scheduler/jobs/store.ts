/**
 * The scheduler's durable job store: jobs, their tasks, their inline records and their event logs,
 * in one SQLite file, `<dataDir>/scheduler.sqlite`, through better-sqlite3.
 *
 * Every call is synchronous and every mutation is one transaction, so a job is never half
 * written: `createJob` stores the job, its tasks, its inline records and its first event together,
 * and the scheduler acknowledges a submission only after it returns; `finishJob` ends the job and
 * appends its final event together.
 *
 * Durability: the database runs in WAL mode with `synchronous = NORMAL`. A committed transaction
 * is in the WAL file when the call returns, so it survives a crash of the process (kill -9, an
 * uncaught exception, an OOM kill): the next open replays the WAL. What NORMAL gives up, against
 * FULL, is durability against a power loss or an OS crash, where the last transactions before the
 * failure may be lost (the file is never corrupted). That is the trade the scheduler makes: a
 * process crash is what happens in practice (and what the kill -9 tests check), and fsync on every
 * task transition would cap throughput at the disk's sync rate.
 *
 * Protobuf values (spec, result, events) are opaque JSON here: the server produces them with
 * ts-proto's toJSON and reads them back with fromJSON. Plain TypeScript: no gRPC; times are
 * passed in, or taken from an injected clock (`started_at`, and `finished_at` when not given).
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { TaskRange } from './split.js';
import { MigrationOutcome, StoreMigration, migrateStore } from '../../../common/store-migrations.js';

/** Where a job is in its life. `queued` and `running` are unfinished; the others are final. */
export type StoredJobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

/** The states a job can end in. */
export type EndedJobState = 'succeeded' | 'failed' | 'cancelled';

/** Where a task is: waiting for an attempt, running one, done (output committed), or failed for good. */
export type TaskState = 'pending' | 'running' | 'done' | 'failed';

/**
 * Where a job's callback is: `none` (no callback URL, or the job has not ended), `pending` (the
 * job ended and the callback has not been delivered yet), `delivered`, or `failed` (gave up).
 */
export type CallbackState = 'none' | 'pending' | 'delivered' | 'failed';

/** A job to store, as `createJob` takes it. Its task and record totals come from its tasks. */
export interface NewJob {
  /** Identifier, unique in the store. */
  id: string;
  /** The tenant that submitted it. */
  tenant: string;
  /** The spec as JSON (ts-proto's JobSpec.toJSON), without the inline records: those go in `createJob`'s `inline`. */
  spec: unknown;
  /** Priority of the job's tasks (the proto enum's number). */
  priority: number;
  /** Records in the input: must equal the sum of the tasks' counts. */
  recordsTotal: number;
  /** Submission time, ms since the Unix epoch. */
  createdAt: number;
  /** When the job fails if it has not ended, ms since the Unix epoch; undefined for no deadline. */
  deadlineAt?: number;
  /** URL told when the job ends; undefined or empty for none. */
  callbackUrl?: string;
}

/** A job as stored. Optional fields are undefined until they are set. */
export interface StoredJob {
  id: string;
  tenant: string;
  state: StoredJobState;
  /** The spec as given to `createJob`. */
  spec: unknown;
  priority: number;
  tasksTotal: number;
  /** Tasks done (each counted once). */
  tasksDone: number;
  recordsTotal: number;
  /** Records of the done tasks, as reported to `finishTask`. */
  recordsDone: number;
  /** Submission time, ms since the Unix epoch. */
  createdAt: number;
  /** When the first task started, ms since the Unix epoch. */
  startedAt?: number;
  /** When the job ended, ms since the Unix epoch. */
  finishedAt?: number;
  /** When the job fails if it has not ended, ms since the Unix epoch. */
  deadlineAt?: number;
  /** The result given to `finishJob` (JSON). Always undefined in `listJobs` pages, which leave results out. */
  result?: unknown;
  /** Why the job failed or was cancelled. */
  error?: string;
  callbackUrl?: string;
  callbackState: CallbackState;
  /** Why the callback was not delivered (its address refused, or the last attempt's error); undefined otherwise. */
  callbackError?: string;
}

/** A task as stored. */
export interface StoredTask extends TaskRange {
  jobId: string;
  state: TaskState;
  /** Attempts started so far; the running (or last) attempt's number. 0 before the first start. */
  attempts: number;
  /** Of those, starts that found no worker and waited (see `taskWaited`): not failed attempts. */
  waits: number;
  /** The worker given to the last `startTask`, if any. */
  worker?: string;
  /** Why the last failed attempt failed. */
  error?: string;
}

/** What `startTask` tells about the attempt it started. */
export interface TaskStart {
  /** The attempt's number, from 1 (unique per task, also across restarts). */
  attempt: number;
  /** Earlier starts of the task that found no worker and waited: `attempt - 1 - waits` attempts failed before this one. */
  waits: number;
  /** True when this start moved the job from queued to running (time to emit its "started" event). */
  firstStart: boolean;
}

/** How a job ended, as `finishJob` takes it. */
export interface JobOutcome {
  /** The result (JSON), for a job that succeeded. */
  result?: unknown;
  /** Why the job failed or was cancelled. */
  error?: string;
}

/** One entry of a job's event log. */
export interface StoredEvent {
  /** Position in the job's log: 1, 2, 3... with no gaps. */
  seq: number;
  /** When it happened, ms since the Unix epoch. */
  timeMs: number;
  /** The event as JSON (ts-proto's JobEvent.toJSON, or whatever the server stores). */
  event: unknown;
}

/** One page of `listJobs`. */
export interface JobPage {
  /** Newest first. */
  jobs: StoredJob[];
  /** Token for the next page; empty on the last page. */
  nextPageToken: string;
}

/** Options of a {@link JobStore}. */
export interface JobStoreOptions {
  /** Time source (ms since the Unix epoch) for `startedAt`, and for `finishedAt` when `finishJob` is given no time; defaults to `Date.now`. */
  now?: () => number;
  /** The schema's migrations; defaults to {@link JOB_STORE_MIGRATIONS} (tests add one to play the next release). */
  migrations?: readonly StoreMigration[];
}

/** Why a store call refused: the job or task is unknown, already exists, has ended, or the task cannot make that move. */
export type JobStoreErrorCode = 'not_found' | 'exists' | 'ended' | 'task_state';

/** A store call refused (see {@link JobStoreErrorCode}); nothing was changed. */
export class JobStoreError extends Error {
  override readonly name = 'JobStoreError';
  constructor(
    readonly code: JobStoreErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** A page token this store did not issue (or that was altered). */
export class InvalidPageTokenError extends RangeError {
  override readonly name = 'InvalidPageTokenError';
}

/** Name of the database file inside the data directory. */
export const STORE_FILE_NAME = 'scheduler.sqlite';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS jobs (
  id             TEXT PRIMARY KEY,
  tenant         TEXT NOT NULL,
  state          TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
  spec           TEXT NOT NULL,   -- JSON
  priority       INTEGER NOT NULL,
  tasks_total    INTEGER NOT NULL,
  tasks_done     INTEGER NOT NULL DEFAULT 0,
  records_total  INTEGER NOT NULL,
  records_done   INTEGER NOT NULL DEFAULT 0,
  created_at     INTEGER NOT NULL,
  started_at     INTEGER,
  finished_at    INTEGER,
  deadline_at    INTEGER,
  result         TEXT,            -- JSON
  error          TEXT,
  callback_url   TEXT,
  callback_state TEXT NOT NULL DEFAULT 'none' CHECK (callback_state IN ('none', 'pending', 'delivered', 'failed')),
  callback_error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_by_callback_state ON jobs (callback_state);

CREATE TABLE IF NOT EXISTS tasks (
  job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  task_index INTEGER NOT NULL,
  "first"    INTEGER NOT NULL,
  "count"    INTEGER NOT NULL,
  state      TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done', 'failed')),
  attempts   INTEGER NOT NULL DEFAULT 0,
  worker     TEXT,
  error      TEXT,
  PRIMARY KEY (job_id, task_index)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS job_inline (
  job_id     TEXT NOT NULL,
  task_index INTEGER NOT NULL,
  records    TEXT NOT NULL,       -- JSON array
  PRIMARY KEY (job_id, task_index),
  FOREIGN KEY (job_id, task_index) REFERENCES tasks (job_id, task_index) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS events (
  job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  seq     INTEGER NOT NULL,
  time_ms INTEGER NOT NULL,
  event   TEXT NOT NULL,          -- JSON
  PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
`;

/**
 * The forward migrations of the store, in order: the k-th (from 0) brings a file from schema
 * version k (PRAGMA user_version) to k + 1. Append, never edit: released files depend on them.
 */
export const JOB_STORE_MIGRATIONS: readonly StoreMigration[] = [
  {
    description: 'jobs, tasks, inline records and events (also adopts a file made before schema versions, adding callback_error if it lacks it)',
    up(db) {
      db.exec(SCHEMA);
      const columns = db.pragma('table_info(jobs)') as { name: string }[];
      if (!columns.some((c) => c.name === 'callback_error')) db.exec('ALTER TABLE jobs ADD COLUMN callback_error TEXT');
    },
  },
  {
    description: 'tasks.waits: starts of a task that found no worker, which are not failed attempts',
    up: (db) => db.exec('ALTER TABLE tasks ADD COLUMN waits INTEGER NOT NULL DEFAULT 0'),
  },
];

interface JobRow {
  id: string;
  tenant: string;
  state: StoredJobState;
  spec: string;
  priority: number;
  tasks_total: number;
  tasks_done: number;
  records_total: number;
  records_done: number;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
  deadline_at: number | null;
  result: string | null;
  error: string | null;
  callback_url: string | null;
  callback_state: CallbackState;
  callback_error: string | null;
}

interface TaskRow {
  job_id: string;
  task_index: number;
  first: number;
  count: number;
  state: TaskState;
  attempts: number;
  waits: number;
  worker: string | null;
  error: string | null;
}

interface EventRow {
  seq: number;
  time_ms: number;
  event: string;
}

/** Columns of a list page: everything but the result, which can be large. */
const LIST_COLUMNS =
  'id, tenant, state, spec, priority, tasks_total, tasks_done, records_total, records_done, created_at, ' +
  'started_at, finished_at, deadline_at, NULL AS result, error, callback_url, callback_state, callback_error';

const isEnded = (state: StoredJobState): boolean => state !== 'queued' && state !== 'running';

/** JSON text of a value; `undefined` (which JSON cannot hold) is stored as null. */
const toJson = (value: unknown): string => JSON.stringify(value ?? null);

function jobFromRow(row: JobRow): StoredJob {
  const job: StoredJob = {
    id: row.id,
    tenant: row.tenant,
    state: row.state,
    spec: JSON.parse(row.spec) as unknown,
    priority: row.priority,
    tasksTotal: row.tasks_total,
    tasksDone: row.tasks_done,
    recordsTotal: row.records_total,
    recordsDone: row.records_done,
    createdAt: row.created_at,
    callbackState: row.callback_state,
  };
  if (row.started_at !== null) job.startedAt = row.started_at;
  if (row.finished_at !== null) job.finishedAt = row.finished_at;
  if (row.deadline_at !== null) job.deadlineAt = row.deadline_at;
  if (row.result !== null) job.result = JSON.parse(row.result) as unknown;
  if (row.error !== null) job.error = row.error;
  if (row.callback_url !== null) job.callbackUrl = row.callback_url;
  if (row.callback_error !== null) job.callbackError = row.callback_error;
  return job;
}

function taskFromRow(row: TaskRow): StoredTask {
  const task: StoredTask = {
    jobId: row.job_id,
    index: row.task_index,
    first: row.first,
    count: row.count,
    state: row.state,
    attempts: row.attempts,
    waits: row.waits,
  };
  if (row.worker !== null) task.worker = row.worker;
  if (row.error !== null) task.error = row.error;
  return task;
}

const eventFromRow = (row: EventRow): StoredEvent => ({ seq: row.seq, timeMs: row.time_ms, event: JSON.parse(row.event) as unknown });

function encodePageToken(job: StoredJob): string {
  return Buffer.from(JSON.stringify([job.createdAt, job.id])).toString('base64url');
}

function decodePageToken(token: string): { createdAt: number; id: string } {
  let decoded: unknown;
  try {
    decoded = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
  } catch {
    decoded = undefined;
  }
  if (!Array.isArray(decoded) || decoded.length !== 2 || !Number.isSafeInteger(decoded[0]) || typeof decoded[1] !== 'string') {
    throw new InvalidPageTokenError('page_token must be a next_page_token from a previous List response');
  }
  return { createdAt: decoded[0] as number, id: decoded[1] };
}

type Statements = ReturnType<typeof prepareStatements>;
type Transactions = ReturnType<typeof bindTransactions>;

function prepareStatements(db: Database.Database) {
  return {
    insertJob: db.prepare(
      `INSERT INTO jobs (id, tenant, state, spec, priority, tasks_total, records_total, created_at, deadline_at, callback_url)
       VALUES (@id, @tenant, 'queued', @spec, @priority, @tasksTotal, @recordsTotal, @createdAt, @deadlineAt, @callbackUrl)`,
    ),
    insertTask: db.prepare(`INSERT INTO tasks (job_id, task_index, "first", "count") VALUES (?, ?, ?, ?)`),
    insertInline: db.prepare(`INSERT INTO job_inline (job_id, task_index, records) VALUES (?, ?, ?)`),
    insertEvent: db.prepare(`INSERT INTO events (job_id, seq, time_ms, event) VALUES (?, ?, ?, ?)`),
    lastSeq: db.prepare<[string], { seq: number }>(`SELECT COALESCE(MAX(seq), 0) AS seq FROM events WHERE job_id = ?`),
    getJob: db.prepare<[string], JobRow>(`SELECT * FROM jobs WHERE id = ?`),
    jobState: db.prepare<[string], { state: StoredJobState }>(`SELECT state FROM jobs WHERE id = ?`),
    listFirst: db.prepare<[string, number], JobRow>(
      `SELECT ${LIST_COLUMNS} FROM jobs WHERE tenant = ? ORDER BY created_at DESC, id DESC LIMIT ?`,
    ),
    listAfter: db.prepare<[string, number, number, string, number], JobRow>(
      `SELECT ${LIST_COLUMNS} FROM jobs WHERE tenant = ? AND (created_at < ? OR (created_at = ? AND id < ?))
       ORDER BY created_at DESC, id DESC LIMIT ?`,
    ),
    unfinished: db.prepare<[], JobRow>(`SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at, id`),
    countUnfinished: db.prepare<[], { n: number }>(`SELECT COUNT(*) AS n FROM jobs WHERE state IN ('queued', 'running')`),
    countByState: db.prepare<[], { state: StoredJobState; n: number }>(`SELECT state, COUNT(*) AS n FROM jobs GROUP BY state`),
    countUnfinishedOf: db.prepare<[string], { n: number }>(
      `SELECT COUNT(*) AS n FROM jobs WHERE state IN ('queued', 'running') AND tenant = ?`,
    ),
    getTask: db.prepare<[string, number], TaskRow>(`SELECT * FROM tasks WHERE job_id = ? AND task_index = ?`),
    tasks: db.prepare<[string], TaskRow>(`SELECT * FROM tasks WHERE job_id = ? ORDER BY task_index`),
    pendingTasks: db.prepare<[string], TaskRow>(`SELECT * FROM tasks WHERE job_id = ? AND state = 'pending' ORDER BY task_index`),
    inline: db.prepare<[string, number], { records: string }>(`SELECT records FROM job_inline WHERE job_id = ? AND task_index = ?`),
    startTask: db.prepare(
      `UPDATE tasks SET state = 'running', attempts = attempts + 1, worker = ? WHERE job_id = ? AND task_index = ? RETURNING attempts, waits`,
    ),
    startJob: db.prepare(`UPDATE jobs SET state = 'running', started_at = ? WHERE id = ? AND state = 'queued'`),
    setTaskState: db.prepare(`UPDATE tasks SET state = ?, error = ? WHERE job_id = ? AND task_index = ?`),
    waitTask: db.prepare(`UPDATE tasks SET state = 'pending', waits = waits + 1, error = ? WHERE job_id = ? AND task_index = ?`),
    countTaskDone: db.prepare(`UPDATE jobs SET tasks_done = tasks_done + 1, records_done = records_done + ? WHERE id = ?`),
    resetRunning: db.prepare(`UPDATE tasks SET state = 'pending' WHERE job_id = ? AND state = 'running'`),
    endJob: db.prepare(
      `UPDATE jobs SET state = @state, finished_at = @finishedAt, result = @result, error = @error,
         callback_state = CASE WHEN callback_url IS NOT NULL AND callback_url <> '' THEN 'pending' ELSE 'none' END
       WHERE id = @id AND state IN ('queued', 'running')`,
    ),
    eventsAfter: db.prepare<[string, number, number], EventRow>(
      `SELECT seq, time_ms, event FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?`,
    ),
    setCallbackState: db.prepare(`UPDATE jobs SET callback_state = ?, callback_error = ? WHERE id = ?`),
    pendingCallbacks: db.prepare<[], JobRow>(
      `SELECT * FROM jobs WHERE callback_state = 'pending' AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at, id`,
    ),
  };
}

/** The store's multi-statement mutations, each wrapped in one transaction. */
function bindTransactions(db: Database.Database, s: Statements, now: () => number) {
  return {
    createJob: db.transaction((job: NewJob, tasks: readonly TaskRange[], inline: readonly (readonly unknown[])[] | undefined, firstEvent: unknown, timeMs: number) => {
      if (s.jobState.get(job.id)) throw new JobStoreError('exists', `job ${job.id} already exists`);
      s.insertJob.run({
        id: job.id,
        tenant: job.tenant,
        spec: toJson(job.spec),
        priority: job.priority,
        tasksTotal: tasks.length,
        recordsTotal: job.recordsTotal,
        createdAt: job.createdAt,
        deadlineAt: job.deadlineAt ?? null,
        callbackUrl: job.callbackUrl || null,
      });
      tasks.forEach((task, k) => {
        s.insertTask.run(job.id, task.index, task.first, task.count);
        if (inline) s.insertInline.run(job.id, task.index, JSON.stringify(inline[k]));
      });
      s.insertEvent.run(job.id, 1, timeMs, toJson(firstEvent));
    }),
    startTask: db.transaction((jobId: string, index: number, worker: string | undefined): TaskStart => {
      requireUnended(s, jobId);
      const task = requireTask(s, jobId, index);
      if (task.state === 'done' || task.state === 'failed') {
        throw new JobStoreError('task_state', `task ${index} of job ${jobId} is ${task.state} and cannot start`);
      }
      const { attempts, waits } = s.startTask.get(worker ?? null, jobId, index) as { attempts: number; waits: number };
      const firstStart = s.startJob.run(now(), jobId).changes > 0;
      return { attempt: attempts, firstStart, waits };
    }),
    finishTask: db.transaction((jobId: string, index: number, records: number): StoredJob | undefined => {
      const task = requireTask(s, jobId, index);
      if (task.state === 'done' || isEnded(requireJobState(s, jobId))) return undefined;
      s.setTaskState.run('done', task.error, jobId, index);
      s.countTaskDone.run(records, jobId);
      return jobFromRow(s.getJob.get(jobId)!);
    }),
    failTask: db.transaction((jobId: string, index: number, to: 'pending' | 'failed', error: string): boolean => {
      const task = requireTask(s, jobId, index);
      if (task.state === 'done' || task.state === 'failed' || isEnded(requireJobState(s, jobId))) return false;
      s.setTaskState.run(to, error, jobId, index);
      return true;
    }),
    waitTask: db.transaction((jobId: string, index: number, reason: string): boolean => {
      const task = requireTask(s, jobId, index);
      if (task.state !== 'running' || isEnded(requireJobState(s, jobId))) return false;
      s.waitTask.run(reason, jobId, index);
      return true;
    }),
    finishJob: db.transaction((id: string, state: EndedJobState, outcome: JobOutcome, finalEvent: unknown, finishedAt: number): boolean => {
      requireJobState(s, id);
      const changed = s.endJob.run({
        id,
        state,
        finishedAt,
        result: outcome.result === undefined ? null : toJson(outcome.result),
        error: outcome.error ?? null,
      }).changes;
      if (changed === 0) return false;
      insertNextEvent(s, id, finalEvent, finishedAt);
      return true;
    }),
    appendEvent: db.transaction((jobId: string, event: unknown, timeMs: number): number => {
      const state = requireJobState(s, jobId);
      if (isEnded(state)) throw new JobStoreError('ended', `job ${jobId} has ended (${state}); its final event is its last`);
      return insertNextEvent(s, jobId, event, timeMs);
    }),
  };
}

function insertNextEvent(s: Statements, jobId: string, event: unknown, timeMs: number): number {
  const seq = s.lastSeq.get(jobId)!.seq + 1;
  s.insertEvent.run(jobId, seq, timeMs, toJson(event));
  return seq;
}

function requireJobState(s: Statements, jobId: string): StoredJobState {
  const row = s.jobState.get(jobId);
  if (!row) throw new JobStoreError('not_found', `job ${jobId} not found`);
  return row.state;
}

function requireUnended(s: Statements, jobId: string): void {
  const state = requireJobState(s, jobId);
  if (isEnded(state)) throw new JobStoreError('ended', `job ${jobId} has ended (${state})`);
}

function requireTask(s: Statements, jobId: string, index: number): TaskRow {
  const row = s.getTask.get(jobId, index);
  if (!row) {
    requireJobState(s, jobId);
    throw new JobStoreError('not_found', `job ${jobId} has no task ${index}`);
  }
  return row;
}

/**
 * The durable job store (see the module comment). Open one per process on a data directory;
 * close it at shutdown.
 */
export class JobStore {
  /** Path of the database file. */
  readonly path: string;
  private readonly db: Database.Database;
  private readonly now: () => number;
  private readonly stmt: Statements;
  private readonly tx: Transactions;
  /** The schema version the file had when opened, and the one it has now (see {@link JOB_STORE_MIGRATIONS}). */
  readonly schema: MigrationOutcome;

  /** Opens (creating the directory and the file when missing) `<dataDir>/scheduler.sqlite`. */
  constructor(dataDir: string, options: JobStoreOptions = {}) {
    mkdirSync(dataDir, { recursive: true });
    this.path = join(dataDir, STORE_FILE_NAME);
    this.now = options.now ?? Date.now;
    this.db = new Database(this.path);
    try {
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      this.db.pragma('foreign_keys = ON');
      this.schema = migrateStore(this.db, `the scheduler's store ${this.path}`, options.migrations ?? JOB_STORE_MIGRATIONS);
    } catch (err) {
      this.db.close();
      throw err;
    }

    this.stmt = prepareStatements(this.db);
    this.tx = bindTransactions(this.db, this.stmt, this.now);
  }

  /**
   * Stores a new job, queued, with its tasks (all pending), the inline records of each task
   * (`inline[k]` holds the records of `tasks[k]`; undefined for a job whose input is not inline),
   * and its first event (sequence 1, at `timeMs`, by default `job.createdAt`), in one transaction:
   * once it returns, the job survives a crash. `tasksTotal` is `tasks.length`.
   *
   * @throws JobStoreError `exists` when the id is taken; RangeError when the tasks are not indexed
   *   0, 1, 2..., their counts do not add up to `job.recordsTotal`, or `inline` does not have one
   *   array per task.
   */
  createJob(
    job: NewJob,
    tasks: readonly TaskRange[],
    inline: readonly (readonly unknown[])[] | undefined,
    firstEvent: unknown,
    timeMs: number = job.createdAt,
  ): StoredJob {
    tasks.forEach((task, k) => {
      if (task.index !== k) throw new RangeError(`tasks[${k}] must have index ${k}, given ${task.index}`);
    });
    const counted = tasks.reduce((sum, t) => sum + t.count, 0);
    if (counted !== job.recordsTotal) {
      throw new RangeError(`the tasks must cover records_total (${job.recordsTotal}) records, given ${counted}`);
    }
    if (inline && inline.length !== tasks.length) {
      throw new RangeError(`inline must hold one array of records per task (${tasks.length}), given ${inline.length}`);
    }
    this.tx.createJob(job, tasks, inline, firstEvent, timeMs);
    return this.getJob(job.id)!;
  }

  /** The job, or undefined for an unknown id. */
  getJob(id: string): StoredJob | undefined {
    const row = this.stmt.getJob.get(id);
    return row && jobFromRow(row);
  }

  /**
   * One page of a tenant's jobs, newest first (by creation time, then id, both descending, so the
   * order is stable). Jobs in pages have no `result`. `pageToken` is empty (or omitted) for the
   * first page, else a `nextPageToken` from the previous page; jobs created after the first page
   * was read do not appear in later pages.
   *
   * @throws RangeError when `pageSize` is not an integer >= 1; InvalidPageTokenError for a token
   *   this store did not issue.
   */
  listJobs(tenant: string, pageSize: number, pageToken = ''): JobPage {
    if (!Number.isSafeInteger(pageSize) || pageSize < 1) throw new RangeError(`page_size must be an integer >= 1, given ${pageSize}`);
    let rows: JobRow[];
    if (pageToken === '') {
      rows = this.stmt.listFirst.all(tenant, pageSize + 1);
    } else {
      const after = decodePageToken(pageToken);
      rows = this.stmt.listAfter.all(tenant, after.createdAt, after.createdAt, after.id, pageSize + 1);
    }
    const jobs = rows.slice(0, pageSize).map(jobFromRow);
    return { jobs, nextPageToken: rows.length > pageSize ? encodePageToken(jobs[jobs.length - 1]!) : '' };
  }

  /** Jobs that are queued or running, oldest first: what a restarted scheduler resumes. */
  unfinishedJobs(): StoredJob[] {
    return this.stmt.unfinished.all().map(jobFromRow);
  }

  /** How many jobs are queued or running: of one tenant, or of all when `tenant` is undefined (for admission quotas). */
  countUnfinishedJobs(tenant?: string): number {
    return (tenant === undefined ? this.stmt.countUnfinished.get() : this.stmt.countUnfinishedOf.get(tenant))!.n;
  }

  /** How many stored jobs are in each state (states with none are 0), for metrics. */
  countJobsByState(): Record<StoredJobState, number> {
    const counts: Record<StoredJobState, number> = { queued: 0, running: 0, succeeded: 0, failed: 0, cancelled: 0 };
    if (!this.db.open) return counts;
    for (const row of this.stmt.countByState.all()) counts[row.state] = row.n;
    return counts;
  }

  /**
   * The records stored for one task of a job submitted with inline records, as given to
   * `createJob`; an empty array when the job (or task) has none.
   */
  inlineRecords(jobId: string, taskIndex: number): unknown[] {
    const row = this.stmt.inline.get(jobId, taskIndex);
    return row ? (JSON.parse(row.records) as unknown[]) : [];
  }

  /** Every task of the job, by index (none for an unknown job). */
  tasks(jobId: string): StoredTask[] {
    return this.stmt.tasks.all(jobId).map(taskFromRow);
  }

  /** The job's pending tasks (waiting for an attempt), by index. */
  pendingTasks(jobId: string): StoredTask[] {
    return this.stmt.pendingTasks.all(jobId).map(taskFromRow);
  }

  /**
   * Starts an attempt of a pending (or running) task: the task becomes running, its attempt count
   * goes up by one and `worker` is recorded. The first start of a queued job makes it running,
   * with `startedAt` now (from the store's clock). Returns the attempt's number, from 1, and
   * whether this was the job's first start.
   *
   * @throws JobStoreError `not_found` (unknown job or task), `ended` (the job has ended), or
   *   `task_state` (the task is done or failed).
   */
  startTask(jobId: string, index: number, worker?: string): TaskStart {
    return this.tx.startTask(jobId, index, worker);
  }

  /**
   * Marks a task done and adds it to the job's progress (`tasksDone` + 1, `recordsDone` +
   * `records`), and returns the job as it is then (for a progress event). Idempotent: a task
   * already done, or any task of an ended job, is left as it is and the call returns undefined
   * (nothing to report).
   *
   * @throws JobStoreError `not_found` for an unknown job or task.
   */
  finishTask(jobId: string, index: number, records: number): StoredJob | undefined {
    return this.tx.finishTask(jobId, index, records);
  }

  /**
   * Records a failed attempt that will be retried: the task goes back to pending with `error`.
   * Returns false, changing nothing, when the task is done or failed or the job has ended.
   *
   * @throws JobStoreError `not_found` for an unknown job or task.
   */
  failTaskAttempt(jobId: string, index: number, error: string): boolean {
    return this.tx.failTask(jobId, index, 'pending', error);
  }

  /**
   * Records that the running start of a task found no worker (none ready, or the balancer away):
   * the task goes back to pending with `reason`, and the start counts as a wait, not as a failed
   * attempt. Returns false, changing nothing, when the task is not running or the job has ended.
   *
   * @throws JobStoreError `not_found` for an unknown job or task.
   */
  taskWaited(jobId: string, index: number, reason: string): boolean {
    return this.tx.waitTask(jobId, index, reason);
  }

  /**
   * Records a task's last failed attempt: the task becomes failed with `error` (ending the job is
   * the caller's next step). Returns false, changing nothing, when the task is done or already
   * failed or the job has ended.
   *
   * @throws JobStoreError `not_found` for an unknown job or task.
   */
  failTask(jobId: string, index: number, error: string): boolean {
    return this.tx.failTask(jobId, index, 'failed', error);
  }

  /**
   * Puts the job's running tasks back to pending, for a scheduler that resumes after a restart:
   * their attempts may or may not have completed, so they run again (at-least-once execution; the
   * aggregator commits each task once). Attempt counts are kept, so the next attempt gets a new
   * number. Returns how many tasks were reset.
   */
  resetRunningTasks(jobId: string): number {
    return this.stmt.resetRunning.run(jobId).changes;
  }

  /**
   * Ends an unfinished job in `state`, with `finishedAt` = `timeMs` (by default the store's
   * clock), the given result and error, and appends `finalEvent` to its log at `timeMs`, in one
   * transaction; returns true. Tell an event log's watchers afterwards (`JobEventLog.notify`). When the job has a callback URL its
   * callback becomes pending in the same transaction, so a crash before delivery is retried via
   * `pendingCallbacks`. Ending a job that has already ended changes nothing and returns false.
   * Task rows are left as they are (a cancelled job's tasks may stay running).
   *
   * @throws JobStoreError `not_found` for an unknown job.
   */
  finishJob(id: string, state: EndedJobState, outcome: JobOutcome, finalEvent: unknown, timeMs: number = this.now()): boolean {
    return this.tx.finishJob(id, state, outcome, finalEvent, timeMs);
  }

  /**
   * Appends an event to the job's log and returns its sequence number (the last one + 1: no gaps).
   *
   * @throws JobStoreError `not_found` for an unknown job, `ended` for an ended job (its final
   *   event, written by `finishJob`, stays its last).
   */
  appendEvent(jobId: string, event: unknown, timeMs: number): number {
    return this.tx.appendEvent(jobId, event, timeMs);
  }

  /** The job's events with a sequence above `afterSeq`, in order, at most `limit` of them (all when omitted). */
  eventsAfter(jobId: string, afterSeq: number, limit?: number): StoredEvent[] {
    // LIMIT -1 is SQLite's "no limit".
    return this.stmt.eventsAfter.all(jobId, afterSeq, limit ?? -1).map(eventFromRow);
  }

  /** Records where the job's callback is (pending, delivered, failed, none) and, when it failed, why. Returns false for an unknown job. */
  setCallbackState(id: string, state: CallbackState, error?: string): boolean {
    return this.stmt.setCallbackState.run(state, error ?? null, id).changes > 0;
  }

  /** Ended jobs whose callback is still pending, in the order they ended: what a restarted scheduler delivers. */
  pendingCallbacks(): StoredJob[] {
    return this.stmt.pendingCallbacks.all().map(jobFromRow);
  }

  /** Closes the database. Calling it again does nothing. */
  close(): void {
    if (this.db.open) this.db.close();
  }
}
