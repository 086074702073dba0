/**
 * The batch side of the scheduler: admits jobs into the durable store before acknowledging them,
 * splits them into tasks, dispatches tasks through the balancer with a bounded number in flight
 * (fair between jobs, strict between priorities), retries failed tasks with backoff up to the
 * job's attempts, finalizes through the aggregator, and tells watchers and callbacks.
 * A restarted scheduler resumes every unfinished job from its store.
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { ClientError, Status } from 'nice-grpc';
import { datasetSize } from '../../common/datasets';
import { MeshError, NO_READY_WORKER_TRAILER, invalidField, quoteInput } from '../../common/errors';
import { Logger } from '../../common/log';
import { FILE_ACCESS_KINDS, FileAccessError, OutputPlace, checkOutputTarget } from '../../common/file-roots';
import { InputFiles, RECORDS_ERROR_KINDS, RecordsError, scanRecords } from '../../common/records';
import { AggregatorServiceDefinition, ReduceSpec } from '../../generated/maas/internal/v1/aggregator';
import { BalancerServiceDefinition } from '../../generated/maas/internal/v1/balancer';
import { MapTask } from '../../generated/maas/internal/v1/task';
import { CallbackState, Job, JobEvent, JobResult, JobSpec, JobState, Record as JobRecord } from '../../generated/maas/v1/jobs';
import { Client } from 'nice-grpc';
import { MeshCallOptions } from '../../common/client';
import { retryDelayMs } from './jobs/backoff';
import { deliverCallback } from './jobs/callback';
import { CallbackAllowlist, checkCallbackUrl } from '../../common/callback-target';
import { JobEventLog } from './jobs/event-log';
import { splitIntoTasks, TaskRange } from './jobs/split';
import { InvalidPageTokenError, JobStore, StoredJob } from './jobs/store';

/** Settings of the batch path. */
export interface JobRunnerOptions {
  /** Map tasks in flight at once across all jobs (the online path keeps the rest of the workers). */
  maxTasksInFlight: number;
  /** Map tasks in flight at once for one job. */
  maxTasksPerJob: number;
  /** Unfinished jobs at once; one more is refused with RESOURCE_EXHAUSTED. */
  maxActiveJobs: number;
  /** Unfinished jobs one tenant may have, and the setting that says so (for the refusal). */
  tenantMaxActiveJobs?: (tenant: string) => { limit: number; setting: string };
  /** Backoff of task retries. */
  retryBaseMs: number;
  retryMaxMs: number;
  /** Signing key of callbacks (a decoded `whsec_` secret); undefined: unsigned. */
  callbackKey?: Uint8Array;
  /** Attempts per callback delivery. */
  callbackAttempts: number;
  /** The input root and the limits of a job's file. */
  files: InputFiles;
  /** The output root (to check a job's output file at submit) and what outputs must not touch. */
  outputs: OutputPlace;
  /** Time one callback attempt may take, in ms. */
  callbackTimeoutMs: number;
  /** Where callbacks may go besides public addresses. */
  callbackAllow: CallbackAllowlist;
  /**
   * True while the connection to the balancer is up. A task that fails UNAVAILABLE while it is
   * down waits for the balancer instead of using an attempt. Default: always up.
   */
  balancerReachable?: () => boolean;
  /** Told of every event appended to a job's log after its acceptance, the final one included (for metrics). */
  onEvent?: (event: JobEvent['event'], ended?: { durationMs: number }) => void;
}

/** First pause of a job that waits for a worker, ms; doubles while it waits, up to WAIT_MAX_MS. */
const WAIT_FIRST_MS = 250;
const WAIT_MAX_MS = 2000;

type BalancerClient = Client<typeof BalancerServiceDefinition, MeshCallOptions>;
type AggregatorClient = Client<typeof AggregatorServiceDefinition, MeshCallOptions>;

/** Statuses of a failed attempt that no retry can change. */
const PERMANENT = new Set([Status.INVALID_ARGUMENT, Status.NOT_FOUND, Status.FAILED_PRECONDITION, Status.PERMISSION_DENIED]);

/** Statuses of Finalize that refuse the output file for good: no retry. */
const OUTPUT_REFUSALS = new Set([Status.PERMISSION_DENIED, Status.ALREADY_EXISTS, Status.INVALID_ARGUMENT]);

/** A job being run in this process. */
interface ActiveJob {
  id: string;
  tenant: string;
  priority: number;
  spec: JobSpec;
  tasks: TaskRange[];
  pending: number[];
  running: Map<number, AbortController>;
  deadlineTimer?: NodeJS.Timeout;
  startedAt: number;
  lastPartialAt: number;
  ended: boolean;
  /**
   * Waiting for a worker (see {@link JobRunner.taskWaits}): true from a task that found none to the
   * next task that reached one; then one task at a time probes, each `waitDelayMs` after the last.
   */
  waiting: boolean;
  waitDelayMs: number;
  /** No task of the job starts before this time (ms since the epoch). */
  waitUntil: number;
  waitTimer?: NodeJS.Timeout;
}

const FINAL_EVENTS = new Set(['completed', 'failed', 'cancelled']);

/** Tries of Finalize answered with a permanent error before the job fails. */
const FINALIZE_ATTEMPTS = 5;

/** Runs batch jobs. */
export class JobRunner {
  private readonly active = new Map<string, ActiveJob>();
  /** Submits between their admission and their activation (they count against the limits). */
  private readonly admitting = new Map<string, number>();
  private admittingTotal = 0;
  private inFlight = 0;
  private rotation = 0;
  private readonly retryTimers = new Set<NodeJS.Timeout>();
  private closed = false;
  readonly events: JobEventLog;
  /** Emits `settled` with `{ job, state, error }` when a callback delivery ends (for tests and diagnostics). */
  readonly callbacks = new EventEmitter();

  constructor(
    private readonly store: JobStore,
    private readonly balancer: BalancerClient,
    private readonly aggregator: AggregatorClient,
    private readonly options: JobRunnerOptions,
    private readonly log: Logger,
  ) {
    this.events = new JobEventLog(store, (event) => FINAL_EVENTS.has(eventCase(event) ?? ''));
  }

  /** Resumes every unfinished job in the store; tasks that were running run again. */
  resume(): void {
    for (const stored of this.store.unfinishedJobs()) {
      this.store.resetRunningTasks(stored.id);
      this.activate(stored);
      this.log.info('resumed job', { job: stored.id, tasks_done: stored.tasksDone, tasks_total: stored.tasksTotal });
    }
    for (const stored of this.store.pendingCallbacks()) this.callBack(stored.id).catch((err) => this.log.error('callback failed', { job: stored.id, err }));
    this.dispatch();
  }

  /**
   * Stores a validated job, then acknowledges it; its tasks start in the background. Its file is
   * read (counted and validated) here, and that read stops when `signal` aborts (the call was
   * cancelled or ran out of time).
   */
  async submit(tenant: string, spec: JobSpec, signal?: AbortSignal): Promise<Job> {
    this.admitJob(tenant);
    try {
      return await this.admitted(tenant, spec, signal);
    } finally {
      this.admitting.set(tenant, this.admitting.get(tenant)! - 1);
      if (this.admitting.get(tenant) === 0) this.admitting.delete(tenant);
      this.admittingTotal--;
    }
  }

  /**
   * Counts a submit against the limits on unfinished jobs (all tenants, and this tenant) or refuses
   * it. Counted before the input is read, so concurrent submits cannot all pass the same check.
   */
  private admitJob(tenant: string): void {
    const total = this.active.size + this.admittingTotal;
    if (total >= this.options.maxActiveJobs) {
      throw new MeshError('resource_exhausted', `too many unfinished jobs: ${total}, the limit of the scheduler (--max-active-jobs)`);
    }
    const own = this.options.tenantMaxActiveJobs?.(tenant);
    if (own) {
      let mine = this.admitting.get(tenant) ?? 0;
      for (const job of this.active.values()) if (job.tenant === tenant) mine++;
      if (mine >= own.limit) throw new MeshError('resource_exhausted', `tenant "${tenant}" has ${mine} unfinished job${mine === 1 ? '' : 's'}, its limit (${own.setting})`);
    }
    this.admitting.set(tenant, (this.admitting.get(tenant) ?? 0) + 1);
    this.admittingTotal++;
  }

  private async admitted(tenant: string, spec: JobSpec, signal: AbortSignal | undefined): Promise<Job> {
    if (spec.callbackUrl !== '') {
      // The gateway checked this too; the scheduler's port is not only the gateway's.
      const checked = checkCallbackUrl(spec.callbackUrl, this.options.callbackAllow);
      if ('rule' in checked) throw invalidField('spec.callback_url', checked.rule, spec.callbackUrl);
    }
    // The gateway validates specs; a caller of this port may not have. Refuse what would break below.
    if (spec.shardSize !== undefined && spec.shardSize < 1) throw invalidField('spec.shard_size', 'must be at least 1', spec.shardSize);
    if (spec.outputFile !== '') await checkOutputFile(this.options.outputs, tenant, spec);
    const recordsTotal = await countInput(spec, this.options.files, signal);
    if (recordsTotal === 0) throw new MeshError('invalid_argument', 'spec.input has no records');
    const tasks = splitIntoTasks(recordsTotal, spec.shardSize ?? 500);
    const inline = spec.input?.$case === 'inline' ? tasks.map((t) => (spec.input as { inline: { records: JobRecord[] } }).inline.records.slice(t.first, t.first + t.count)) : undefined;
    const stored = { ...spec, input: spec.input?.$case === 'inline' ? { $case: 'inline' as const, inline: { records: [] } } : spec.input };
    const id = `job-${Date.now().toString(36)}-${randomUUID().slice(0, 8)}`;
    const now = Date.now();
    const accepted: JobEvent = eventOf({ $case: 'accepted', accepted: { tasksTotal: tasks.length, recordsTotal } });
    const job = this.store.createJob(
      {
        id,
        tenant,
        spec: JobSpec.toJSON(stored),
        priority: spec.priority,
        recordsTotal,
        createdAt: now,
        deadlineAt: spec.timeoutMs > 0 ? now + spec.timeoutMs : undefined,
        callbackUrl: spec.callbackUrl,
      },
      tasks,
      inline?.map((records) => records.map((r) => ({ text: r.text, label: r.label }))),
      JobEvent.toJSON(accepted),
      now,
    );
    this.events.notify(id);
    this.log.info('job accepted', { job: id, tenant, tasks: tasks.length, records: recordsTotal });
    this.activate(job);
    this.dispatch();
    return toJob(job);
  }

  /** The tenant's job, or NOT_FOUND. */
  get(tenant: string, id: string): Job {
    return toJob(this.owned(tenant, id));
  }

  /** The tenant's jobs, newest first. */
  list(tenant: string, pageSize: number, pageToken: string): { jobs: Job[]; nextPageToken: string } {
    let page;
    try {
      page = this.store.listJobs(tenant, pageSize || 50, pageToken);
    } catch (err) {
      // A token this scheduler did not issue is the caller's mistake, not ours.
      if (err instanceof InvalidPageTokenError) throw new MeshError('invalid_argument', err.message);
      throw err;
    }
    return { jobs: page.jobs.map((j) => ({ ...toJob(j), result: undefined })), nextPageToken: page.nextPageToken };
  }

  /** Replays the job's events after `after`, then follows them until it ends. */
  async *watch(tenant: string, id: string, after: number, signal: AbortSignal): AsyncGenerator<JobEvent> {
    this.owned(tenant, id);
    for await (const e of this.events.watch(id, after, signal)) {
      yield { ...JobEvent.fromJSON(e.event), sequence: e.seq, timeMs: e.timeMs };
    }
  }

  /** Cancels the tenant's job; an ended job is returned as it is. */
  async cancel(tenant: string, id: string, reason = 'cancelled by its owner'): Promise<Job> {
    this.owned(tenant, id);
    await this.endJob(id, 'cancelled', { error: reason });
    return this.get(tenant, id);
  }

  /** Stops dispatching and cancels the calls of running tasks (they run again after a restart). */
  close(): void {
    this.closed = true;
    for (const t of this.retryTimers) clearTimeout(t);
    for (const job of this.active.values()) {
      clearTimeout(job.deadlineTimer);
      for (const c of job.running.values()) c.abort();
    }
  }

  private owned(tenant: string, id: string): StoredJob {
    const job = this.store.getJob(id);
    if (!job || job.tenant !== tenant) throw new MeshError('not_found', `job ${quoteInput(id)} not found`);
    return job;
  }

  private activate(stored: StoredJob): void {
    const spec = JobSpec.fromJSON(stored.spec);
    const tasks = this.store.tasks(stored.id);
    const job: ActiveJob = {
      id: stored.id,
      tenant: stored.tenant,
      priority: stored.priority,
      spec,
      tasks: tasks.map((t) => ({ index: t.index, first: t.first, count: t.count })),
      pending: tasks.filter((t) => t.state === 'pending').map((t) => t.index),
      running: new Map(),
      startedAt: stored.startedAt ?? 0,
      lastPartialAt: 0,
      ended: false,
      waiting: false,
      waitDelayMs: 0,
      waitUntil: 0,
    };
    this.active.set(job.id, job);
    if (stored.deadlineAt !== undefined) {
      const timer = setTimeout(
        () => this.endJob(job.id, 'failed', { error: `deadline exceeded: the job ran out of its ${spec.timeoutMs} ms` }).catch((err) => this.log.error('cannot end job', { job: job.id, err })),
        Math.max(0, stored.deadlineAt - Date.now()),
      );
      timer.unref();
      job.deadlineTimer = timer;
    }
    // A job whose tasks were all done when the scheduler stopped only needs finalizing.
    if (job.pending.length === 0 && tasks.every((t) => t.state === 'done')) {
      this.finalize(job).catch((err) => this.log.error('finalize failed', { job: job.id, err }));
    }
  }

  /** Starts as many tasks as the limits allow: strict priority, round robin between jobs. */
  private dispatch(): void {
    while (!this.closed && this.inFlight < this.options.maxTasksInFlight) {
      const job = this.nextJob();
      if (!job) return;
      const index = job.pending.shift()!;
      this.runTask(job, index).catch((err) => this.log.error('task bookkeeping failed', { job: job.id, task: index, err }));
    }
  }

  private nextJob(): ActiveJob | undefined {
    const now = Date.now();
    const ready = [...this.active.values()].filter(
      (j) => !j.ended && j.pending.length > 0 && j.running.size < (j.waiting ? 1 : this.options.maxTasksPerJob) && j.waitUntil <= now,
    );
    if (ready.length === 0) return undefined;
    const top = Math.max(...ready.map((j) => j.priority));
    const candidates = ready.filter((j) => j.priority === top);
    return candidates[this.rotation++ % candidates.length];
  }

  private async runTask(job: ActiveJob, index: number): Promise<void> {
    const range = job.tasks[index];
    const controller = new AbortController();
    job.running.set(index, controller);
    this.inFlight++;
    let attempt = 0;
    let waits = 0;
    try {
      const start = this.store.startTask(job.id, index);
      attempt = start.attempt;
      waits = start.waits;
      if (start.firstStart) {
        job.startedAt = Date.now();
        this.append(job.id, { $case: 'started', started: {} });
      }
    } catch (err) {
      // The job ended between the pick and the start: nothing to run.
      job.running.delete(index);
      this.inFlight--;
      if (!job.ended) this.log.error('cannot start task', { job: job.id, task: index, err });
      return;
    }
    // Set from the balancer's trailer: UNAVAILABLE because no ready worker serves the model.
    let noReadyWorker = false;
    try {
      const task: MapTask = {
        jobId: job.id,
        taskIndex: index,
        attempt,
        spec: job.spec,
        firstRecord: range.first,
        recordCount: range.count,
        records: job.spec.input?.$case === 'inline' ? this.store.inlineRecords(job.id, index).map((r) => JobRecord.fromJSON(r)) : [],
        tasksTotal: job.tasks.length,
      };
      let workerId = '';
      let result: { records: number; partial?: JobResult } | undefined;
      const deadline = this.store.getJob(job.id)?.deadlineAt;
      const stream = this.balancer.route(
        { task: { requestId: `${job.id}/${index}/${attempt}`, tenant: job.tenant, request: { $case: 'map', map: task } } },
        { signal: controller.signal, deadline, onTrailer: (trailer) => (noReadyWorker = trailer.get(NO_READY_WORKER_TRAILER) !== undefined) },
      );
      for await (const response of stream) {
        if (response.output?.output?.$case === 'mapResult') {
          workerId = response.output.workerId;
          result = response.output.output.mapResult;
        }
      }
      if (!result) throw new MeshError('unavailable', 'the worker returned no map result');
      this.taskDone(job, index, attempt, result, workerId);
    } catch (err) {
      if (job.ended || this.closed) return;
      const balancerAway = !(this.options.balancerReachable?.() ?? true);
      if (err instanceof ClientError && err.code === Status.UNAVAILABLE && (noReadyWorker || balancerAway)) {
        this.taskWaits(job, index, noReadyWorker ? err.details : `the balancer is unavailable (${err.details})`);
      } else {
        this.taskFailed(job, index, attempt, attempt - waits, err);
      }
    } finally {
      job.running.delete(index);
      this.inFlight--;
      this.dispatch();
    }
  }

  /**
   * A task found no worker: no ready worker serves its model, or the balancer is away (workers
   * loading at a start, a rolling restart, a restarting balancer). It goes back to the front of
   * the queue without using an attempt, and the job pauses: one task at a time tries again, after
   * 250 ms, then doubling up to 2 s, until one reaches a worker. The job's deadline still holds.
   * The first wait of an episode is a `taskWaiting` event.
   */
  private taskWaits(job: ActiveJob, index: number, reason: string): void {
    this.store.taskWaited(job.id, index, reason);
    job.pending.unshift(index);
    const now = Date.now();
    if (!job.waiting) {
      job.waiting = true;
      job.waitDelayMs = WAIT_FIRST_MS;
      this.append(job.id, { $case: 'taskWaiting', taskWaiting: { taskIndex: index, reason } });
      this.log.warn('job waits for a worker', { job: job.id, task: index, reason });
    } else if (now >= job.waitUntil) {
      // A probe after the last pause found no worker either: pause longer.
      job.waitDelayMs = Math.min(WAIT_MAX_MS, job.waitDelayMs * 2);
    }
    job.waitUntil = Math.max(job.waitUntil, now + job.waitDelayMs);
    clearTimeout(job.waitTimer);
    if (job.waitTimer) this.retryTimers.delete(job.waitTimer);
    const timer = setTimeout(() => {
      this.retryTimers.delete(timer);
      job.waitTimer = undefined;
      // The pause ends when its timer fires. A timer can fire a millisecond before Date.now()
      // reaches waitUntil; nextJob would then skip the job, and with no timer left and nothing
      // else to dispatch, the job would wait for good (seen under maas up: a job submitted while
      // its only worker restarted stayed running with no task started).
      job.waitUntil = Math.min(job.waitUntil, Date.now());
      this.dispatch();
    }, job.waitUntil - now);
    job.waitTimer = timer;
    this.retryTimers.add(timer);
  }

  /** A task reached a worker: the job no longer waits. */
  private stopWaiting(job: ActiveJob): void {
    job.waiting = false;
    job.waitUntil = 0;
  }

  private taskDone(job: ActiveJob, index: number, attempt: number, result: { records: number; partial?: JobResult }, workerId: string): void {
    if (job.ended) return;
    this.stopWaiting(job);
    const stored = this.store.finishTask(job.id, index, result.records);
    // Already done (a duplicate report) or the job has ended meanwhile: nothing to tell.
    if (!stored) return;
    this.append(job.id, { $case: 'taskDone', taskDone: { taskIndex: index, attempt, records: result.records, workerId } });
    const seconds = Math.max(0.001, (Date.now() - (job.startedAt || Date.now())) / 1000);
    this.append(job.id, {
      $case: 'progress',
      progress: { tasksDone: stored.tasksDone, tasksTotal: stored.tasksTotal, recordsDone: stored.recordsDone, recordsTotal: stored.recordsTotal, recordsPerSecond: stored.recordsDone / seconds },
    });
    const allDone = stored.tasksDone === stored.tasksTotal;
    // Partial results at most twice a second: a watcher sees the result grow without a flood.
    if (result.partial && !allDone && Date.now() - job.lastPartialAt >= 500) {
      job.lastPartialAt = Date.now();
      this.append(job.id, { $case: 'partialResult', partialResult: result.partial });
    }
    if (allDone) this.finalize(job).catch((err) => this.log.error('finalize failed', { job: job.id, err }));
  }

  /** Attempt `attempt` of a task failed; it is the task's `failures`-th failed attempt (starts that waited do not count). */
  private taskFailed(job: ActiveJob, index: number, attempt: number, failures: number, err: unknown): void {
    this.stopWaiting(job);
    const details = err instanceof ClientError ? err.details : err instanceof Error ? err.message : String(err);
    const permanent = (err instanceof ClientError && PERMANENT.has(err.code)) || (err instanceof MeshError && err.kind === 'invalid_argument');
    const maxAttempts = job.spec.maxAttempts || 3;
    if (!permanent && failures < maxAttempts) {
      const delay = retryDelayMs(attempt, { baseMs: this.options.retryBaseMs, maxMs: this.options.retryMaxMs });
      this.store.failTaskAttempt(job.id, index, details);
      this.append(job.id, { $case: 'taskRetried', taskRetried: { taskIndex: index, attempt, error: details, retryInMs: delay } });
      this.log.warn('task failed; retrying', { job: job.id, task: index, attempt, error: details, retry_ms: delay });
      const timer = setTimeout(() => {
        this.retryTimers.delete(timer);
        if (job.ended) return;
        job.pending.push(index);
        this.dispatch();
      }, delay);
      this.retryTimers.add(timer);
      return;
    }
    this.store.failTask(job.id, index, details);
    this.append(job.id, { $case: 'taskFailed', taskFailed: { taskIndex: index, attempts: failures, error: details } });
    this.endJob(job.id, 'failed', { error: `task ${index} failed after ${failures} attempt${failures === 1 ? '' : 's'}: ${details}` }).catch((err) =>
      this.log.error('cannot end job', { job: job.id, err }),
    );
  }

  private async finalize(job: ActiveJob, attempt = 1): Promise<void> {
    if (job.ended) return;
    try {
      const reduce: ReduceSpec = {
        reducer: job.spec.reducer,
        topK: job.spec.topK,
        tasksTotal: job.tasks.length,
        outputFile: job.spec.outputFile,
        positiveLabel: '',
        meanOf: '',
      };
      const { result } = await this.aggregator.finalize(
        { jobId: job.id, reduce, tenant: job.tenant, overwriteOutput: job.spec.overwriteOutput },
        { deadline: Date.now() + 60_000 },
      );
      await this.endJob(job.id, 'succeeded', { result });
    } catch (err) {
      const details = err instanceof ClientError ? err.details : String(err);
      // The aggregator may be restarting (UNAVAILABLE): its committed outputs are durable, so try
      // again later. An answer that it lacks tasks is given a few tries, then fails the job.
      // A refused output file (outside the tenant's folder, existing, over the size limit) stays refused.
      const refused = err instanceof ClientError && OUTPUT_REFUSALS.has(err.code);
      if (err instanceof ClientError && PERMANENT.has(err.code) && (refused || attempt >= FINALIZE_ATTEMPTS)) {
        await this.endJob(job.id, 'failed', { error: `the aggregator could not finalize the job: ${details}` });
        return;
      }
      this.log.warn('finalize failed; retrying', { job: job.id, attempt, error: details });
      const timer = setTimeout(() => {
        this.retryTimers.delete(timer);
        this.finalize(job, attempt + 1).catch((e) => this.log.error('finalize failed', { job: job.id, err: e }));
      }, retryDelayMs(attempt, { baseMs: this.options.retryBaseMs, maxMs: this.options.retryMaxMs }));
      this.retryTimers.add(timer);
    }
  }

  private async endJob(id: string, state: 'succeeded' | 'failed' | 'cancelled', outcome: { result?: JobResult; error?: string }): Promise<void> {
    const job = this.active.get(id);
    const finalEvent =
      state === 'succeeded'
        ? eventOf({ $case: 'completed', completed: outcome.result! })
        : state === 'failed'
          ? eventOf({ $case: 'failed', failed: { error: outcome.error ?? '' } })
          : eventOf({ $case: 'cancelled', cancelled: { reason: outcome.error ?? '' } });
    const ended = this.store.finishJob(id, state, { result: outcome.result ? JobResult.toJSON(outcome.result) : undefined, error: outcome.error }, JobEvent.toJSON(finalEvent), Date.now());
    if (!ended) return;
    this.events.notify(id);
    const stored = this.store.getJob(id);
    this.options.onEvent?.(finalEvent.event, stored && stored.finishedAt !== undefined ? { durationMs: stored.finishedAt - stored.createdAt } : undefined);
    if (job) {
      job.ended = true;
      clearTimeout(job.deadlineTimer);
      clearTimeout(job.waitTimer);
      for (const c of job.running.values()) c.abort();
      this.active.delete(id);
    }
    this.log.info('job ended', { job: id, state, error: outcome.error ?? '' });
    if (state !== 'succeeded') this.aggregator.forget({ jobId: id }, { deadline: Date.now() + 10_000 }).catch(() => undefined);
    await this.callBack(id);
    this.dispatch();
  }

  private async callBack(id: string): Promise<void> {
    const job = this.store.getJob(id);
    if (!job || !job.callbackUrl) return;
    this.store.setCallbackState(id, 'pending');
    const payload = { event: 'job.finished', job: Job.toJSON({ ...toJob(job), callback: undefined }) };
    const outcome = await deliverCallback(job.callbackUrl, payload, {
      secret: this.options.callbackKey,
      allow: this.options.callbackAllow,
      attempts: this.options.callbackAttempts,
      timeoutMs: this.options.callbackTimeoutMs,
      // One delivery per job: the id stays the same across attempts and restarts.
      deliveryId: `${id}-finished`,
    });
    if (outcome.delivered) {
      this.store.setCallbackState(id, 'delivered');
      this.callbacks.emit('settled', { job: id, state: 'delivered' });
      return;
    }
    const error = outcome.refused || outcome.attempts <= 1 ? outcome.lastError! : `gave up after ${outcome.attempts} attempts: ${outcome.lastError}`;
    this.store.setCallbackState(id, 'failed', error);
    this.log.warn(outcome.refused ? 'callback refused' : 'callback not delivered', { job: id, callback: callbackOrigin(job.callbackUrl), attempts: outcome.attempts, error });
    this.callbacks.emit('settled', { job: id, state: 'failed', error });
  }

  private append(jobId: string, event: JobEvent['event']): void {
    this.events.append(jobId, JobEvent.toJSON(eventOf(event)), Date.now());
    this.options.onEvent?.(event);
  }
}

function eventOf(event: JobEvent['event']): JobEvent {
  return { sequence: 0, timeMs: 0, event };
}

function eventCase(json: unknown): string | undefined {
  return JobEvent.fromJSON(json).event?.$case;
}

/**
 * Refuses a job whose output file is outside the tenant's folder under the output root,
 * in a store or a model cache, or existing without overwrite_output. The aggregator checks again
 * when it writes: the file system may change in between.
 */
async function checkOutputFile(outputs: OutputPlace, tenant: string, spec: JobSpec): Promise<void> {
  try {
    await checkOutputTarget(outputs, tenant, spec.outputFile, 'spec.output_file', spec.overwriteOutput);
  } catch (err) {
    if (err instanceof FileAccessError) throw new MeshError(FILE_ACCESS_KINDS[err.code], err.message);
    throw err;
  }
}

/**
 * Counts the records of a job's input; the scheduler checks what the gateway cannot. A file is
 * read inside the input root, bounded, and the read stops when `signal` aborts.
 */
async function countInput(spec: JobSpec, files: InputFiles, signal: AbortSignal | undefined): Promise<number> {
  switch (spec.input?.$case) {
    case 'inline':
      return spec.input.inline.records.length;
    case 'dataset':
      try {
        return datasetSize(spec.input.dataset);
      } catch {
        throw new MeshError('not_found', `dataset ${quoteInput(spec.input.dataset)} not found`);
      }
    case 'file':
      try {
        return (await scanRecords(spec.input.file, { ...files, field: 'spec.file' }, { signal })).records;
      } catch (err) {
        if (err instanceof RecordsError) throw new MeshError(RECORDS_ERROR_KINDS[err.code], err.message);
        throw err;
      }
    default:
      throw new MeshError('invalid_argument', 'spec.input must be set');
  }
}

const stateOf: Record<StoredJob['state'], JobState> = {
  queued: JobState.JOB_STATE_QUEUED,
  running: JobState.JOB_STATE_RUNNING,
  succeeded: JobState.JOB_STATE_SUCCEEDED,
  failed: JobState.JOB_STATE_FAILED,
  cancelled: JobState.JOB_STATE_CANCELLED,
};

/** The wire form of a stored job. */
function toJob(j: StoredJob): Job {
  return {
    id: j.id,
    spec: JobSpec.fromJSON(j.spec),
    state: stateOf[j.state],
    tenant: j.tenant,
    tasksTotal: j.tasksTotal,
    tasksDone: j.tasksDone,
    recordsTotal: j.recordsTotal,
    recordsDone: j.recordsDone,
    createdAtMs: j.createdAt,
    startedAtMs: j.startedAt ?? 0,
    finishedAtMs: j.finishedAt ?? 0,
    result: j.result ? JobResult.fromJSON(j.result) : undefined,
    error: j.error ?? '',
    callback: j.callbackUrl ? { state: callbackStateOf[j.callbackState], error: j.callbackError ?? '' } : undefined,
  };
}

const callbackStateOf: Record<StoredJob['callbackState'], CallbackState> = {
  none: CallbackState.CALLBACK_STATE_PENDING,
  pending: CallbackState.CALLBACK_STATE_PENDING,
  delivered: CallbackState.CALLBACK_STATE_DELIVERED,
  failed: CallbackState.CALLBACK_STATE_FAILED,
};

/**
 * Where a callback goes, as logs may show it: scheme, host and port. A callback URL's path, query
 * and user info may carry a token (a webhook's path often is its secret), so they are left out.
 */
export function callbackOrigin(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}`;
  } catch {
    return '(not a URL)';
  }
}
