/**
 * The worker service: hosts models behind the runtime interface, runs tasks and streams their
 * output, reports load to the balancer, and drains gracefully. It is NOT_SERVING until its models
 * are loaded, and it only joins the balancer once they are.
 */
import { prepareRoot } from '../../common/file-roots';
import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { SpanStatusCode } from '@opentelemetry/api';
import { ConfigOf } from '../../common/config';
import { MeshError, quoteInput } from '../../common/errors';
import { Logger } from '../../common/log';
import { MeshCallContext } from '../../common/middleware';
import { startGrpcServer } from '../../common/server';
import { meshTracer } from '../../common/tracing';
import { ExecuteRequest, ExecuteResponse, WorkerServiceDefinition } from '../../generated/maas/internal/v1/worker';
import { MapTask, Task, TaskOutput } from '../../generated/maas/internal/v1/task';
import { AggregatorServiceDefinition } from '../../generated/maas/internal/v1/aggregator';
import { createMeshClient, openMeshChannel } from '../../common/client';
import { loadMeshTls } from '../../common/tls';
import { MAPPERS, MapContext, runMapTask } from './map';
import { FinishReason, GenerateRequest, PredictRequest } from '../../generated/maas/v1/inference';
import { Model as ModelMessage, ModelTask } from '../../generated/maas/v1/models';
import { workerSchema } from './config';
import { joinBalancer, Membership } from './join';
import { createBuiltinRuntime } from './models/builtin';
import { FinishReason as ModelFinishReason, Model, ModelRuntime } from './models/runtime';
import { MovingAverage, SlotQueue } from './slots';

/** Weight of each new sample in the latency the worker reports (about the last 10 tasks count). */
const LATENCY_SMOOTHING = 0.1;

/** What a finished task reports to observers (tests, logs). */
export interface TaskEnd {
  requestId: string;
  outcome: 'ok' | 'cancelled' | 'error';
  chunks: number;
}

/** A running worker. `activity` emits 'task-start' (requestId) and 'task-end' (TaskEnd). */
export interface RunningWorker {
  readonly id: string;
  readonly address: string;
  readonly activity: EventEmitter;
  /** Tasks running now. */
  inFlight(): number;
  /** Resolves once the balancer has accepted the worker. */
  readonly joined: Promise<void>;
  /** Graceful stop: take no new work, finish what runs (up to the drain timeout), leave, exit. */
  shutdown(): Promise<void>;
  /** Abrupt stop, as if the process died: connections are cut, nothing is finished. Tests use it. */
  crash(): void;
}

/** Defaults applied when a request leaves a field unset (the gateway normally fills them). */
const DEFAULT_MAX_TOKENS = 64;

const finishReasonToProto: Record<ModelFinishReason, FinishReason> = {
  length: FinishReason.FINISH_REASON_LENGTH,
  stop: FinishReason.FINISH_REASON_STOP,
  end: FinishReason.FINISH_REASON_END,
};

/** Starts a worker; `runtime` defaults to the built-in models. */
export async function startWorker(
  config: ConfigOf<typeof workerSchema>,
  log: Logger,
  runtime: ModelRuntime = createBuiltinRuntime({ cacheDir: resolve(config.cacheDir), echoDelayMs: config.echoDelayMs, echoFailRate: config.echoFailRate, log: (m) => log.info(m) }),
): Promise<RunningWorker> {
  const inputRoot = await prepareRoot(config.inputRoot, [config.cacheDir], '--input-root');
  const files = { root: inputRoot, maxBytes: config.maxInputBytes, maxLineBytes: config.maxLineBytes };
  const tls = loadWorkerTls(config);
  // With TLS the id is the one the certificate names (a --worker-id that differs was refused).
  const id = tls?.identity.workerId ?? (config.workerId || `worker-${hostname()}-${process.pid}-${Math.random().toString(36).slice(2, 6)}`);
  const activity = new EventEmitter();
  const models = new Map<string, Model>();
  const running = new Map<string, AbortController>();
  const slots = new SlotQueue(config.concurrency, config.maxQueued);
  const latency = new MovingAverage(LATENCY_SMOOTHING);
  let completed = 0;
  let draining = false;

  async function* execute(request: ExecuteRequest, context: MeshCallContext): AsyncGenerator<ExecuteResponse> {
    const task = request.task;
    if (!task?.request) throw new MeshError('invalid_argument', 'task.request must be set');
    if (draining) throw new MeshError('unavailable', `worker ${id} is draining`);
    const modelName = taskModel(task);
    const model = modelName === undefined ? undefined : models.get(modelName);
    if (modelName !== undefined && !model) throw new MeshError('not_found', `model ${quoteInput(modelName)} is not hosted on worker ${id}`);
    const arrived = performance.now();
    if (!slots.tryAcquire()) {
      if (slots.queueFull) {
        throw new MeshError('resource_exhausted', `worker ${id} is at capacity (${config.concurrency} tasks running, ${slots.waiting} waiting)`);
      }
      // Waits for a slot; a caller that gives up (cancel, deadline) leaves the queue.
      await slots.acquire(context.signal).catch((err: unknown) => {
        if (err instanceof MeshError) throw err;
        throw new MeshError('cancelled', `the task was cancelled while waiting for a slot on worker ${id}`);
      });
    }

    const key = `${task.requestId}#${Math.random()}`;
    const controller = new AbortController();
    const onAbort = () => controller.abort(context.signal.reason);
    context.signal.addEventListener('abort', onAbort, { once: true });
    running.set(key, controller);
    activity.emit('task-start', task.requestId);
    const span = meshTracer().startSpan('model.execute', {
      attributes: { 'maas.model': modelName, 'maas.request_id': task.requestId, 'maas.worker_id': id },
    });
    let chunks = 0;
    let outcome: TaskEnd['outcome'] = 'ok';
    try {
      const outputs =
        task.request.$case === 'map'
          ? runMap(task.request.map, { models, aggregator, signal: controller.signal, deadline: context.deadline, files })
          : runTask(model!, task, controller.signal);
      for await (const output of outputs) {
        if (chunks === 0) latency.add(performance.now() - arrived);
        chunks++;
        yield { output: { workerId: id, output } };
      }
    } catch (err) {
      outcome = controller.signal.aborted ? 'cancelled' : 'error';
      span.setStatus({ code: SpanStatusCode.ERROR, message: outcome });
      throw err;
    } finally {
      if (controller.signal.aborted && outcome === 'ok') outcome = 'cancelled';
      span.setAttribute('maas.chunks', chunks);
      span.end();
      context.signal.removeEventListener('abort', onAbort);
      running.delete(key);
      slots.release();
      completed++;
      activity.emit('task-end', { requestId: task.requestId, outcome, chunks } satisfies TaskEnd);
      if (draining && slots.idle) activity.emit('idle');
    }
  }

  const server = await startGrpcServer({
    host: config.host,
    port: config.port,
    maxMessageBytes: config.maxMessageBytes,
    maxConcurrentStreams: config.maxConcurrentStreams,
    log,
    serving: false,
    tls,
    insecure: config.insecure,
    healthPort: config.healthPort,
    services: [{ definition: WorkerServiceDefinition, implementation: { execute } }],
  });
  const address = config.advertiseAddress || server.address;

  for (const model of await runtime.load()) models.set(model.info.name, model);
  log.info('models loaded', { models: [...models.keys()].join(',') });
  server.setServing(true);

  const aggregatorChannel = openMeshChannel(config.aggregator, config.maxMessageBytes, tls, 'aggregator');
  const aggregator = createMeshClient(AggregatorServiceDefinition, aggregatorChannel);

  const membership: Membership = joinBalancer(
    config.balancer,
    { workerId: id, address, models: [...models.values()].map(modelMessage), capacity: config.concurrency, mappers: [...MAPPERS] },
    () => ({ inFlight: running.size, capacity: config.concurrency, completed, draining, queueDepth: slots.waiting, latencyMs: latency.value ?? 0 }),
    log,
    tls,
  );

  return {
    id,
    address,
    activity,
    joined: membership.joined,
    inFlight: () => running.size,
    async shutdown() {
      draining = true;
      server.setServing(false);
      membership.reportNow();
      if (!slots.idle) {
        log.info('draining', { in_flight: running.size, queued: slots.waiting });
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          new Promise((r) => activity.once('idle', r)),
          new Promise((r) => (timer = setTimeout(r, config.drainTimeoutMs))),
        ]);
        clearTimeout(timer);
        slots.refuseWaiting(new MeshError('unavailable', `worker ${id} shut down before the task started`));
        for (const c of running.values()) c.abort(new MeshError('unavailable', `worker ${id} shut down`));
      }
      await membership.leave();
      await server.shutdown(1000);
      aggregatorChannel.close();
    },
    crash() {
      // Connections go first, so no caller receives a status: as if the process had died.
      server.kill();
      aggregatorChannel.close();
      membership.abandon();
      slots.refuseWaiting(new MeshError('unavailable', `worker ${id} crashed`));
      for (const c of running.values()) c.abort();
    },
  };
}

/** Placeholder in the default --tls-cert and --tls-key paths, replaced by the worker id. */
const WORKER_ID_PLACEHOLDER = '{worker-id}';

/**
 * The worker's certificate. The default paths name the worker id, so they need --worker-id; a
 * certificate given by path brings its own id, and a --worker-id must agree with it.
 */
function loadWorkerTls(config: ConfigOf<typeof workerSchema>) {
  if (!config.tls) return undefined;
  const placeholder = [config.tlsCert, config.tlsKey].some((p) => p.includes(WORKER_ID_PLACEHOLDER));
  if (placeholder && !config.workerId) {
    throw new Error(`--tls needs --worker-id to find the default --tls-cert ${config.tlsCert}, or --tls-cert and --tls-key given as paths`);
  }
  const fill = (p: string) => p.split(WORKER_ID_PLACEHOLDER).join(config.workerId);
  const tls = loadMeshTls({ ...config, tlsCert: fill(config.tlsCert), tlsKey: fill(config.tlsKey) }, 'worker')!;
  if (config.workerId && tls.identity.workerId !== config.workerId) {
    throw new Error(`--worker-id ${config.workerId} differs from the identity of --tls-cert, ${tls.identity.uri}: a worker may use only the id its certificate names`);
  }
  return tls;
}

/** The model a task names; undefined for a map task with a built-in mapper. */
function taskModel(task: Task): string | undefined {
  switch (task.request?.$case) {
    case 'generate':
      return task.request.generate.model;
    case 'predict':
      return task.request.predict.model;
    case 'map':
      return task.request.map.spec?.map?.$case === 'model' ? task.request.map.spec.map.model : undefined;
    default:
      return undefined;
  }
}

/** Runs a map task and yields its single result (without the worker id). */
async function* runMap(task: MapTask, context: MapContext): AsyncGenerator<TaskOutput['output']> {
  yield { $case: 'mapResult', mapResult: await runMapTask(task, context) };
}

/** Runs one task on its model and yields its outputs (without the worker id). */
async function* runTask(model: Model, task: Task, signal: AbortSignal): AsyncGenerator<TaskOutput['output']> {
  if (task.request?.$case === 'generate') {
    yield* runGenerate(model, task.request.generate, signal);
  } else if (task.request?.$case === 'predict') {
    yield await runPredict(model, task.request.predict, signal);
  }
}

async function* runGenerate(model: Model, request: GenerateRequest, signal: AbortSignal): AsyncGenerator<TaskOutput['output']> {
  if (!model.generate) {
    throw new MeshError('failed_precondition', `model "${model.info.name}" does not support Generate; it supports: ${supported(model)}`);
  }
  const params = {
    prompt: request.prompt,
    maxTokens: request.maxTokens || DEFAULT_MAX_TOKENS,
    temperature: request.temperature ?? 1,
    seed: request.seed,
    stop: request.stop,
  };
  let index = 0;
  let generated = 0;
  for await (const chunk of model.generate(params, signal)) {
    if (chunk.text !== '') generated++;
    const last = chunk.finishReason !== undefined;
    yield {
      $case: 'chunk',
      chunk: {
        text: chunk.text,
        index: index++,
        finishReason: last ? finishReasonToProto[chunk.finishReason!] : FinishReason.FINISH_REASON_UNSPECIFIED,
        usage: last ? { promptTokens: countWords(request.prompt), completionTokens: generated } : undefined,
      },
    };
    if (last) return;
  }
}

async function runPredict(model: Model, request: PredictRequest, signal: AbortSignal): Promise<TaskOutput['output']> {
  if (!model.predict) {
    throw new MeshError('failed_precondition', `model "${model.info.name}" does not support Predict; it supports: ${supported(model)}`);
  }
  const p = await model.predict(request.input, signal);
  return { $case: 'prediction', prediction: { model: model.info.name, label: p.label, probabilities: p.probabilities, text: p.text } };
}

function supported(model: Model): string {
  return model.info.tasks.map((t) => (t === 'generate' ? 'Generate' : 'Predict')).join(', ');
}

function countWords(text: string): number {
  return text.split(/\s+/).filter(Boolean).length;
}

/** The wire form of a model's description. */
function modelMessage(model: Model): ModelMessage {
  return {
    name: model.info.name,
    version: model.info.version,
    description: model.info.description,
    tasks: model.info.tasks.map((t) => (t === 'generate' ? ModelTask.MODEL_TASK_GENERATE : ModelTask.MODEL_TASK_CLASSIFY)),
    labels: model.info.labels,
    metadata: model.info.metadata,
    readyWorkers: 1,
    platform: 'maas_builtin',
    inputs: [],
    outputs: [],
    maxBatchSize: 0,
    contextLength: 0,
  };
}
