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
import { ScheduleRequest, ScheduleResponse, SchedulerServiceDefinition } from '../../generated/maas/internal/v1/scheduler';
import { Task } from '../../generated/maas/internal/v1/task';
import { Priority as ProtoPriority } from '../../generated/maas/v1/inference';
import { schedulerSchema } from './config';
import { AdmissionQueue, DeadlineInQueueError, Permit, Priority, QueueFullError } from './queue';

/** A running scheduler. */
export interface RunningScheduler extends StartedService {
  readonly port: number;
  /** The admission queue, for tests and diagnostics. */
  readonly queue: AdmissionQueue;
}

/** Starts the scheduler. */
export async function startScheduler(config: ConfigOf<typeof schedulerSchema>, log: Logger): Promise<RunningScheduler> {
  const queue = new AdmissionQueue({ maxInFlight: config.maxInFlight, maxQueued: config.maxQueued });
  const channel = openChannel(config.balancer, config.maxMessageBytes);
  const balancer = createMeshClient(BalancerServiceDefinition, channel);

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
    log,
    serving: true,
    services: [{ definition: SchedulerServiceDefinition, implementation: { schedule, ...jobsPending() } }],
  });
  log.info('admission limits', { max_in_flight: config.maxInFlight, max_queued: config.maxQueued });
  return {
    port: server.port,
    address: server.address,
    queue,
    async shutdown() {
      await server.shutdown(5000);
      channel.close();
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

/** The job methods, until the job runner lands (same change series). */
function jobsPending() {
  const pending = async () => {
    throw new MeshError('unavailable', 'batch jobs are not available yet');
  };
  return {
    submitJob: pending,
    getJob: pending,
    listJobs: pending,
    cancelJob: pending,
    // eslint-disable-next-line require-yield
    async *watchJob() {
      await pending();
    },
  };
}
