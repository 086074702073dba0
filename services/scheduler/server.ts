/**
 * The scheduler service, online path: admits each task into a bounded priority queue or refuses it
 * at once, drops a task whose deadline passes while it waits, then hands it to the balancer and
 * relays its output stream.
 */
import { parseCallbackAllowlist } from '../../common/callback-target';
import { parseWebhookSecret } from './jobs/callback';
import { connectivityState } from '@grpc/grpc-js';
import { EncodedMessage } from '../../common/call-stream';
import { Dispatcher, countDispatches, openMeshDispatcher } from '../../common/dispatcher';
import { createMeshClient, openMeshChannel } from '../../common/client';
import { ConfigOf } from '../../common/config';
import { MeshError } from '../../common/errors';
import { Logger } from '../../common/log';
import { MeshCallContext } from '../../common/middleware';
import { callMetrics } from '../../common/call-metrics';
import { ServiceMetrics, serveMetrics } from '../../common/metrics';
import { startGrpcServer } from '../../common/server';
import { StartedService } from '../../common/service-main';
import { loadMeshTls } from '../../common/tls';
import { endSpan, meshTracer } from '../../common/tracing';
import { BalancerServiceDefinition } from '../../generated/maas/internal/v1/balancer';
import {
  CancelJobRequest,
  CancelJobResponse,
  GetJobRequest,
  GetJobResponse,
  ListJobsRequest,
  ListJobsResponse,
  PermitsRequest,
  PermitsResponse,
  ScheduleRequest,
  ScheduleResponse,
  SchedulerServiceDefinition,
  SubmitJobRequest,
  SubmitJobResponse,
  WatchJobRequest,
  WatchJobResponse,
} from '../../generated/maas/internal/v1/scheduler';
import { AggregatorServiceDefinition } from '../../generated/maas/internal/v1/aggregator';
import { resolve } from 'node:path';
import { prepareRoot } from '../../common/file-roots';
import { JobRunner } from './job-runner';
import { JobStore } from './jobs/store';
import { Task } from '../../generated/maas/internal/v1/task';
import { JobEvent } from '../../generated/maas/v1/jobs';
import { Priority as ProtoPriority } from '../../generated/maas/v1/inference';
import { inferPriorityOf } from '../../common/infer-parameters';
import { schedulerSchema } from './config';
import { AdmissionQueue, DeadlineInQueueError, DeadlineUnmeetableError, Permit, Priority, QueueFullError, TenantLimitError } from './queue';
import { PermitDesk, PermitEvent } from './permits';
import { RateLimiter, TenantCounter, TenantLimits, TenantLimitValues } from './tenant-limits';
import { tenantNameProblem } from '../../common/tenant';

/** A running scheduler. */
export interface RunningScheduler extends StartedService {
  readonly port: number;
  /** The admission queue, for tests and diagnostics. */
  readonly queue: AdmissionQueue;
  /** The batch job runner, for tests and diagnostics. */
  readonly jobs: JobRunner;
  /** Open WatchJob streams per tenant, for tests and diagnostics. */
  readonly watches: TenantCounter;
  /** host:port of the /metrics endpoint; undefined with --metrics-port -1. */
  readonly metricsAddress: string | undefined;
  /** The online dispatcher (routing by the balancer's Dispatch stream), for tests and diagnostics. */
  readonly dispatcher: Dispatcher;
  /** Admission granted ahead to the gateways (Permits streams), for tests and diagnostics. */
  readonly permits: PermitDesk;
}

/** Why a request or job was refused, as `maas_scheduler_refused_total` labels it. */
export type RefusalReason = 'queue_full' | 'deadline_unmeetable' | 'tenant_in_flight' | 'tenant_queued' | 'tenant_rate' | 'deadline_in_queue' | 'tenant_watches' | 'active_jobs';

/** The scheduler's own metric families (the gRPC ones are common/call-metrics.ts's). */
function schedulerMetrics(metrics: ServiceMetrics, queue: AdmissionQueue, store: JobStore) {
  metrics.gauge('maas_scheduler_queued', 'Online requests waiting in the admission queue now.', [], (g) => g.set(queue.stats().queued));
  metrics.gauge('maas_scheduler_in_flight', 'Admission slots taken now: online requests running, and the slots the gateways hold as permits (see maas_scheduler_permits_total).', [], (g) => g.set(queue.stats().inFlight));
  metrics.gauge('maas_scheduler_jobs', 'Batch jobs in the store, by state (queued, running, succeeded, failed, cancelled).', ['state'], (g) => {
    for (const [state, n] of Object.entries(store.countJobsByState())) g.set({ state }, n);
  });
  const refused = metrics.counter('maas_scheduler_refused_total', 'Requests and jobs refused at admission, by reason and tenant.', ['reason', 'tenant']);
  const queueWait = metrics.histogram('maas_scheduler_queue_wait_seconds', 'Time an online request waited in the admission queue for a permit, in seconds (0 when one was free), by priority.', ['priority']);
  const accepted = metrics.counter('maas_scheduler_jobs_accepted_total', 'Batch jobs accepted (stored and split into tasks).');
  const ended = metrics.counter('maas_scheduler_jobs_ended_total', 'Batch jobs that ended, by final state (succeeded, failed, cancelled).', ['state']);
  const duration = metrics.histogram('maas_scheduler_job_duration_seconds', 'Time from a batch job\'s acceptance to its end, in seconds, by final state.', ['state'], [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600]);
  const retried = metrics.counter('maas_scheduler_tasks_retried_total', 'Map task attempts that failed and were scheduled again.');
  const failed = metrics.counter('maas_scheduler_tasks_failed_total', 'Map tasks that failed their last attempt (their job fails).');
  const dispatched = countDispatches(metrics, 'maas_scheduler_dispatched_total');
  const permits = metrics.counter(
    'maas_scheduler_permits_total',
    'Admission permits granted ahead to gateways (SchedulerService.Permits), by event: granted, returned (given back; the tokens of its unused budget refunded), revoked (asked back: calls were about to wait, or its tenant was at a limit), calls (online calls the gateways ran on permits, as they reported them).',
    ['event'],
  );
  const records = metrics.counter('maas_scheduler_records_processed_total', 'Input records of batch jobs mapped and committed (rate() gives records per second).');
  return {
    refused: (reason: RefusalReason, tenant: string) => refused.inc({ reason, tenant }),
    waited: (priority: Priority, ms: number) => queueWait.observe({ priority }, ms / 1000),
    accepted: () => accepted.inc(),
    dispatched,
    permits: (event: PermitEvent, n: number) => permits.inc({ event }, n),
    onEvent(event: JobEvent['event'], end?: { durationMs: number }) {
      const state = event?.$case === 'completed' ? 'succeeded' : event?.$case;
      if (end && (state === 'succeeded' || state === 'failed' || state === 'cancelled')) duration.observe({ state }, end.durationMs / 1000);
      switch (event?.$case) {
        case 'taskRetried':
          return retried.inc();
        case 'taskFailed':
          return failed.inc();
        case 'taskDone':
          return records.inc(event.taskDone.records);
        case 'completed':
          return ended.inc({ state: 'succeeded' });
        case 'failed':
          return ended.inc({ state: 'failed' });
        case 'cancelled':
          return ended.inc({ state: 'cancelled' });
      }
    },
  };
}
type SchedulerMetrics = ReturnType<typeof schedulerMetrics>;

/** The flag of each per-tenant limit and the key of its override in --tenant-limits. */
const LIMIT_SETTINGS: Record<keyof TenantLimitValues, [flag: string, key: string]> = {
  maxInFlight: ['--tenant-max-in-flight', 'in_flight'],
  maxQueued: ['--tenant-max-queued', 'queued'],
  maxActiveJobs: ['--tenant-max-active-jobs', 'jobs'],
  maxWatches: ['--tenant-max-watches', 'watches'],
  rate: ['--tenant-rate', 'rate'],
  burst: ['--tenant-burst', 'burst'],
};

/** Names the setting behind a tenant's limit: its override when it has one, else the flag. */
export function limitSetting(limits: TenantLimits, tenant: string, limit: keyof TenantLimitValues): string {
  const [flag, key] = LIMIT_SETTINGS[limit];
  return limits.isOverridden(tenant, limit) ? `${key} of "${tenant}" in --tenant-limits` : flag;
}

/** The tenant a trusted caller (the gateway) passed, or INVALID_ARGUMENT. */
function requireTenant(tenant: string): string {
  const problem = tenantNameProblem(tenant);
  if (problem) throw new MeshError('invalid_argument', `tenant ${problem}`);
  return tenant;
}

/** Starts the scheduler. */
export async function startScheduler(config: ConfigOf<typeof schedulerSchema>, log: Logger): Promise<RunningScheduler> {
  const limits = new TenantLimits(
    {
      maxInFlight: config.tenantMaxInFlight,
      maxQueued: config.tenantMaxQueued,
      maxActiveJobs: config.tenantMaxActiveJobs,
      maxWatches: config.tenantMaxWatches,
      rate: config.tenantRate,
      burst: config.tenantBurst,
    },
    config.tenantLimits,
  );
  const queue = new AdmissionQueue({
    maxInFlight: config.maxInFlight,
    maxQueued: config.maxQueued,
    tenantLimits: (t) => limits.of(t),
    deadlineAdmission: config.deadlineAdmission,
    // A call waits: the gateways' permits go back, and their slots to the calls that wait.
    onWait: () => permitDesk.reclaim(),
  });
  const rates = new RateLimiter((t) => limits.of(t), () => Date.now());
  const watches = new TenantCounter();
  const metrics = new ServiceMetrics('scheduler');
  const permitDesk = new PermitDesk({
    queue,
    maxInFlight: config.maxInFlight,
    limitsOf: (tenant) => limits.of(tenant),
    takeRateTokens: (tenant, n) => rates.takeUpTo(tenant, n, limits.of(tenant).burst / 2),
    refundRateTokens: (tenant, n) => rates.refund(tenant, n),
    onEvent: (event, n) => counted?.permits(event, n),
  });
  // Set once the store is open; refusals before that cannot happen (nothing serves yet).
  let counted: SchedulerMetrics | undefined;
  /** RESOURCE_EXHAUSTED when `tenant` is over its request rate. */
  const takeRateToken = (tenant: string): void => {
    const waitMs = rates.take(tenant);
    if (waitMs === 0) return;
    counted?.refused('tenant_rate', tenant);
    const { rate, burst } = limits.of(tenant);
    throw new MeshError(
      'resource_exhausted',
      `tenant "${tenant}" is over its request rate, its limit ${rate}/s with bursts of ${burst} (${limitSetting(limits, tenant, 'rate')}, ${limitSetting(limits, tenant, 'burst')}); retry in ${waitMs} ms`,
    );
  };
  const tls = loadMeshTls(config, 'scheduler');
  const channel = openMeshChannel(config.balancer, config.maxMessageBytes, tls, 'balancer');
  const balancer = createMeshClient(BalancerServiceDefinition, channel);
  const aggregatorChannel = openMeshChannel(config.aggregator, config.maxMessageBytes, tls, 'aggregator');
  const aggregator = createMeshClient(AggregatorServiceDefinition, aggregatorChannel);
  const inputRoot = await prepareRoot(config.inputRoot, [config.dataDir], '--input-root');
  const store = new JobStore(resolve(config.dataDir));
  counted = schedulerMetrics(metrics, queue, store);
  const schedulerCounts = counted;
  if (store.schema.from !== store.schema.to) log.info('store schema migrated', { file: store.path, from_version: store.schema.from, to_version: store.schema.to });
  const jobs = new JobRunner(
    store,
    balancer,
    aggregator,
    {
      maxTasksInFlight: config.maxBatchTasks,
      maxTasksPerJob: config.maxTasksPerJob,
      maxActiveJobs: config.maxActiveJobs,
      tenantMaxActiveJobs: (tenant) => ({ limit: limits.of(tenant).maxActiveJobs, setting: limitSetting(limits, tenant, 'maxActiveJobs') }),
      retryBaseMs: config.retryBaseMs,
      retryMaxMs: config.retryMaxMs,
      callbackKey: config.callbackSecret === '' ? undefined : parseWebhookSecret(config.callbackSecret),
      callbackAttempts: config.callbackAttempts,
      files: { root: inputRoot, maxBytes: config.maxInputBytes, maxLineBytes: config.maxLineBytes },
      outputs: { root: resolve(config.outputRoot), protectedDirs: [config.dataDir] },
      callbackTimeoutMs: config.callbackTimeoutMs,
      callbackAllow: parseCallbackAllowlist(config.callbackAllow),
      balancerReachable: () => channel.getConnectivityState(false) === connectivityState.READY,
      onEvent: (event, ended) => schedulerCounts.onEvent(event, ended),
    },
    log,
  );

  // Online calls: the balancer decides over its Dispatch stream, the scheduler calls the worker.
  const dispatch = openMeshDispatcher({ balancer: config.balancer, maxMessageBytes: config.maxMessageBytes, tls, log, onFirstAttempt: (how) => schedulerCounts.dispatched(how) });
  const dispatcher = dispatch.dispatcher;

  async function* schedule(request: ScheduleRequest, context: MeshCallContext): AsyncGenerator<ScheduleResponse | EncodedMessage> {
    const task = request.task;
    if (!task?.request) throw new MeshError('invalid_argument', 'task.request must be set');
    requireTenant(task.tenant);
    takeRateToken(task.tenant);
    while (waitsForPermit(task.tenant)) await permitDesk.waitForRelease(task.tenant, context.signal);
    const permit = await admit(queue, task, context, limits, schedulerCounts);
    log.debug('admitted', { request_id: task.requestId, tenant: task.tenant, task: task.request.$case, waited_ms: permit.waitedMs });
    try {
      // The worker's output, as it encoded it: an ExecuteResponse is a ScheduleResponse on the wire.
      yield* dispatcher.run(task, context.signal, context.deadline);
    } finally {
      permit.release();
      permitDesk.slotsFreed();
    }
  }

  /**
   * True when a call would be refused for want of a slot that a gateway holds as a permit (its
   * tenant at its limit, or every slot taken and the queue full), and fewer calls already wait for
   * such slots than there are permits to come back: the permits are revoked, and the call waits
   * for one (up to its deadline) rather than be refused while a permit may be running nothing.
   */
  function waitsForPermit(tenant: string): boolean {
    if (queue.tenantUsage(tenant).open >= limits.of(tenant).maxInFlight && permitDesk.heldBy(tenant) > permitDesk.waitingFor(tenant)) {
      permitDesk.reclaim(tenant);
      return true;
    }
    if (queue.inFlight >= config.maxInFlight && queue.queued >= config.maxQueued && permitDesk.held > permitDesk.waitingFor()) {
      permitDesk.reclaim();
      return true;
    }
    return false;
  }

  function permits(requests: AsyncIterable<PermitsRequest>, context: MeshCallContext): AsyncGenerator<PermitsResponse> {
    return permitDesk.serve(requests, context.signal);
  }

  const server = await startGrpcServer({
    host: config.host,
    port: config.port,
    maxMessageBytes: config.maxMessageBytes,
    maxConcurrentStreams: config.maxConcurrentStreams,
    log,
    serving: true,
    tls,
    insecure: config.insecure,
    healthPort: config.healthPort,
    // Job watches last until the job ends; the gateway's relay reconnects and loses no event.
    // A gateway's Permits stream lasts as long as the gateway; it reconnects by itself.
    longLivedMethods: ['/maas.internal.v1.SchedulerService/WatchJob', '/maas.internal.v1.SchedulerService/Permits'],
    services: [{ definition: SchedulerServiceDefinition, implementation: { schedule, permits, ...jobMethods(jobs, limits, watches, takeRateToken, schedulerCounts) } }],
    // The gateway's online calls arrive many to a stream (ScheduleCalls), each run as a Schedule.
    callStreams: [{ service: 0, calls: 'scheduleCalls', carries: 'schedule' }],
    // Its one caller, the gateway, refuses a model or mapper its catalog does not hold (NOT_FOUND)
    // before it schedules anything: a model name that reaches the scheduler names a real model.
    callMetrics: callMetrics(metrics, { knownModel: () => true }).middleware,
  });
  const metricsServer = await serveMetrics(metrics, { host: config.host, port: config.metricsPort, log }).catch((err: unknown) => {
    server.kill();
    throw err;
  });
  log.info('admission limits', {
    max_in_flight: config.maxInFlight,
    max_queued: config.maxQueued,
    tenant_max_in_flight: config.tenantMaxInFlight,
    tenant_max_queued: config.tenantMaxQueued,
    tenant_rate: config.tenantRate,
    tenant_burst: config.tenantBurst,
    tenants_with_overrides: config.tenantLimits.size,
  });
  jobs.resume();
  return {
    port: server.port,
    address: server.address,
    queue,
    jobs,
    watches,
    dispatcher,
    permits: permitDesk,
    metricsAddress: metricsServer?.address,
    async shutdown() {
      jobs.close();
      permitDesk.close();
      await server.shutdown(config.drainTimeoutMs);
      dispatch.close();
      await metricsServer?.close();
      channel.close();
      aggregatorChannel.close();
      store.close();
    },
  };
}

/** Waits for a slot, inside a queue-wait span; maps the queue's refusals to mesh errors. */
async function admit(queue: AdmissionQueue, task: Task, context: MeshCallContext, limits: TenantLimits, counts: SchedulerMetrics): Promise<Permit> {
  const priority = priorityOf(task);
  const span = meshTracer().startSpan('scheduler.queue_wait', { attributes: { 'maas.priority': priority, 'maas.request_id': task.requestId, ...taskAttributes(task) } });
  try {
    const permit = await queue.admitOrReject({ priority, tenant: task.tenant, deadline: context.deadline, signal: context.signal });
    span.setAttribute('maas.waited_ms', permit.waitedMs);
    counts.waited(priority, permit.waitedMs);
    endSpan(span);
    return permit;
  } catch (err) {
    endSpan(span, err);
    if (err instanceof QueueFullError) {
      counts.refused('queue_full', task.tenant);
      throw new MeshError('resource_exhausted', err.message);
    }
    if (err instanceof DeadlineUnmeetableError) {
      counts.refused('deadline_unmeetable', task.tenant);
      throw new MeshError('resource_exhausted', `${err.message} (--deadline-admission)`);
    }
    if (err instanceof TenantLimitError) {
      counts.refused(err.limit === 'in_flight' ? 'tenant_in_flight' : 'tenant_queued', task.tenant);
      throw new MeshError('resource_exhausted', `${err.message} (${limitSetting(limits, err.tenant, err.limit === 'in_flight' ? 'maxInFlight' : 'maxQueued')})`);
    }
    if (err instanceof DeadlineInQueueError) {
      counts.refused('deadline_in_queue', task.tenant);
      throw new MeshError('deadline_exceeded', err.message);
    }
    // The call's own deadline timer may fire just before the queue's: same outcome, same status.
    if (err instanceof MeshError && err.kind === 'deadline_exceeded') {
      throw new MeshError('deadline_exceeded', 'deadline passed while waiting in the scheduler queue');
    }
    throw err;
  }
}

/** A task's priority: the maas.v1 field, or an infer task's `priority` parameter; normal for map tasks. */
export function priorityOf(task: Task): Priority {
  switch (task.request?.$case) {
    case 'generate':
      return fromProtoPriority(task.request.generate.priority);
    case 'predict':
      return fromProtoPriority(task.request.predict.priority);
    case 'infer':
      return inferPriorityOf(task.request.infer.parameters);
    default:
      return 'normal';
  }
}

function fromProtoPriority(p: ProtoPriority): Priority {
  if (p === ProtoPriority.PRIORITY_HIGH) return 'high';
  if (p === ProtoPriority.PRIORITY_LOW) return 'low';
  return 'normal';
}

/** Trace attributes naming what a task runs: its kind, model and (for an infer task) version. */
function taskAttributes(task: Task): Record<string, string> {
  switch (task.request?.$case) {
    case 'generate':
      return { 'maas.task': 'generate', 'maas.model': task.request.generate.model };
    case 'predict':
      return { 'maas.task': 'predict', 'maas.model': task.request.predict.model };
    case 'infer':
      return { 'maas.task': 'infer', 'maas.model': task.request.infer.modelName, 'maas.model_version': task.request.infer.modelVersion };
    case 'map':
      return { 'maas.task': 'map' };
    default:
      return {};
  }
}


/** The job methods of SchedulerService: thin adapters over the runner. */
function jobMethods(jobs: JobRunner, limits: TenantLimits, watches: TenantCounter, takeRateToken: (tenant: string) => void, counts: SchedulerMetrics) {
  return {
    async submitJob(request: SubmitJobRequest, context: MeshCallContext): Promise<SubmitJobResponse> {
      requireTenant(request.tenant);
      if (!request.spec) throw new MeshError('invalid_argument', 'spec must be set');
      takeRateToken(request.tenant);
      try {
        const job = await jobs.submit(request.tenant, request.spec, context.signal);
        counts.accepted();
        return { job };
      } catch (err) {
        // The runner's only RESOURCE_EXHAUSTED is a limit on unfinished jobs (all tenants' or this one's).
        if (err instanceof MeshError && err.kind === 'resource_exhausted') counts.refused('active_jobs', request.tenant);
        throw err;
      }
    },
    async getJob(request: GetJobRequest): Promise<GetJobResponse> {
      return { job: jobs.get(requireTenant(request.tenant), request.jobId) };
    },
    async listJobs(request: ListJobsRequest): Promise<ListJobsResponse> {
      return jobs.list(requireTenant(request.tenant), request.pageSize, request.pageToken);
    },
    async cancelJob(request: CancelJobRequest): Promise<CancelJobResponse> {
      return { job: await jobs.cancel(requireTenant(request.tenant), request.jobId) };
    },
    async *watchJob(request: WatchJobRequest, context: MeshCallContext): AsyncGenerator<WatchJobResponse> {
      const tenant = requireTenant(request.tenant);
      // Another tenant's job is NOT_FOUND before any limit is looked at: a refusal must not tell it exists.
      jobs.get(tenant, request.jobId);
      const max = limits.of(tenant).maxWatches;
      if (!watches.tryAcquire(tenant, max)) {
        counts.refused('tenant_watches', tenant);
        throw new MeshError('resource_exhausted', `tenant "${tenant}" has ${watches.count(tenant)} Watch stream${watches.count(tenant) === 1 ? '' : 's'} open, its limit (${limitSetting(limits, tenant, 'maxWatches')})`);
      }
      try {
        for await (const event of jobs.watch(tenant, request.jobId, request.afterSequence, context.signal)) yield { event };
      } finally {
        watches.release(tenant);
      }
    },
  };
}
