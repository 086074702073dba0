/**
 * The scheduler service, online path: admits each task into a bounded priority queue or refuses it
 * at once, drops a task whose deadline passes while it waits, then hands it to the balancer and
 * relays its output stream.
 */
import { createMeshClient, openChannel } from '../../common/client';
import { ConfigOf } from '../../common/config';
import { MeshError } from '../../common/errors';
import { Logger } from '../../common/log';
import { MeshCallContext } from '../../common/middleware';
import { startGrpcServer } from '../../common/server';
import { StartedService } from '../../common/service-main';
import { endSpan, meshTracer } from '../../common/tracing';
import { BalancerServiceDefinition } from '../../generated/maas/internal/v1/balancer';
import {
  CancelJobRequest,
  CancelJobResponse,
  GetJobRequest,
  GetJobResponse,
  ListJobsRequest,
  ListJobsResponse,
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
import { JobRunner } from './job-runner';
import { JobStore } from './jobs/store';
import { Task } from '../../generated/maas/internal/v1/task';
import { Priority as ProtoPriority } from '../../generated/maas/v1/inference';
import { schedulerSchema } from './config';
import { AdmissionQueue, DeadlineInQueueError, Permit, Priority, QueueFullError } from './queue';

/** A running scheduler. */
export interface RunningScheduler extends StartedService {
  readonly port: number;
  /** The admission queue, for tests and diagnostics. */
  readonly queue: AdmissionQueue;
  /** The batch job runner, for tests and diagnostics. */
  readonly jobs: JobRunner;
}

/** Starts the scheduler. */
export async function startScheduler(config: ConfigOf<typeof schedulerSchema>, log: Logger): Promise<RunningScheduler> {
  const queue = new AdmissionQueue({ maxInFlight: config.maxInFlight, maxQueued: config.maxQueued });
  const channel = openChannel(config.balancer, config.maxMessageBytes);
  const balancer = createMeshClient(BalancerServiceDefinition, channel);
  const aggregatorChannel = openChannel(config.aggregator, config.maxMessageBytes);
  const aggregator = createMeshClient(AggregatorServiceDefinition, aggregatorChannel);
  const store = new JobStore(resolve(config.dataDir));
  const jobs = new JobRunner(
    store,
    balancer,
    aggregator,
    {
      maxTasksInFlight: config.maxBatchTasks,
      maxTasksPerJob: config.maxTasksPerJob,
      maxActiveJobs: config.maxActiveJobs,
      retryBaseMs: config.retryBaseMs,
      retryMaxMs: config.retryMaxMs,
      callbackSecret: config.callbackSecret,
      callbackAttempts: config.callbackAttempts,
    },
    log,
  );

  async function* schedule(request: ScheduleRequest, context: MeshCallContext): AsyncGenerator<ScheduleResponse> {
    const task = request.task;
    if (!task?.request) throw new MeshError('invalid_argument', 'task.request must be set');
    const permit = await admit(queue, task, context);
    try {
      for await (const response of balancer.route({ task }, { signal: context.signal, deadline: context.deadline })) {
        yield { output: response.output };
      }
    } finally {
      permit.release();
    }
  }

  const server = await startGrpcServer({
    host: config.host,
    port: config.port,
    maxMessageBytes: config.maxMessageBytes,
    maxConcurrentStreams: config.maxConcurrentStreams,
    log,
    serving: true,
    services: [{ definition: SchedulerServiceDefinition, implementation: { schedule, ...jobMethods(jobs) } }],
  });
  log.info('admission limits', { max_in_flight: config.maxInFlight, max_queued: config.maxQueued });
  jobs.resume();
  return {
    port: server.port,
    address: server.address,
    queue,
    jobs,
    async shutdown() {
      jobs.close();
      await server.shutdown(5000);
      channel.close();
      aggregatorChannel.close();
      store.close();
    },
  };
}

/** Waits for a slot, inside a queue-wait span; maps the queue's refusals to mesh errors. */
async function admit(queue: AdmissionQueue, task: Task, context: MeshCallContext): Promise<Permit> {
  const priority = priorityOf(task);
  const span = meshTracer().startSpan('scheduler.queue_wait', { attributes: { 'maas.priority': priority, 'maas.request_id': task.requestId } });
  try {
    const permit = await queue.admitOrReject({ priority, deadline: context.deadline, signal: context.signal });
    span.setAttribute('maas.waited_ms', permit.waitedMs);
    endSpan(span);
    return permit;
  } catch (err) {
    endSpan(span, err);
    if (err instanceof QueueFullError) throw new MeshError('resource_exhausted', err.message);
    if (err instanceof DeadlineInQueueError) throw new MeshError('deadline_exceeded', err.message);
    // The call's own deadline timer may fire just before the queue's: same outcome, same status.
    if (err instanceof MeshError && err.kind === 'deadline_exceeded') {
      throw new MeshError('deadline_exceeded', 'deadline passed while waiting in the scheduler queue');
    }
    throw err;
  }
}

function priorityOf(task: Task): Priority {
  const p = task.request?.$case === 'generate' ? task.request.generate.priority : task.request?.$case === 'predict' ? task.request.predict.priority : undefined;
  if (p === ProtoPriority.PRIORITY_HIGH) return 'high';
  if (p === ProtoPriority.PRIORITY_LOW) return 'low';
  return 'normal';
}


/** The job methods of SchedulerService: thin adapters over the runner. */
function jobMethods(jobs: JobRunner) {
  return {
    async submitJob(request: SubmitJobRequest): Promise<SubmitJobResponse> {
      if (!request.spec) throw new MeshError('invalid_argument', 'spec must be set');
      return { job: await jobs.submit(request.tenant, request.spec) };
    },
    async getJob(request: GetJobRequest): Promise<GetJobResponse> {
      return { job: jobs.get(request.tenant, request.jobId) };
    },
    async listJobs(request: ListJobsRequest): Promise<ListJobsResponse> {
      return jobs.list(request.tenant, request.pageSize, request.pageToken);
    },
    async cancelJob(request: CancelJobRequest): Promise<CancelJobResponse> {
      return { job: await jobs.cancel(request.tenant, request.jobId) };
    },
    async *watchJob(request: WatchJobRequest, context: MeshCallContext): AsyncGenerator<WatchJobResponse> {
      for await (const event of jobs.watch(request.tenant, request.jobId, request.afterSequence, context.signal)) yield { event };
    },
  };
}
