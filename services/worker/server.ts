/**
 * The worker service: hosts models behind the runtime interface, runs tasks and streams their
 * output, reports load to the balancer, and drains gracefully. It is NOT_SERVING until its models
 * are loaded, and it only joins the balancer once they are.
 */
import { prepareRoot } from '../../common/file-roots';
import { EventEmitter } from 'node:events';
import { mkdir, readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { SpanContext, SpanStatusCode } from '@opentelemetry/api';
import { ConfigOf } from '../../common/config';
import { MeshError, quoteInput } from '../../common/errors';
import { Logger } from '../../common/log';
import { MeshCallContext } from '../../common/middleware';
import { callMetrics } from '../../common/call-metrics';
import { BATCH_SIZE_BUCKETS, ServiceMetrics, UNKNOWN_MODEL, serveMetrics } from '../../common/metrics';
import { startGrpcServer } from '../../common/server';
import { meshTracer } from '../../common/tracing';
import {
  ExecuteRequest,
  ExecuteResponse,
  LoadModelRequest,
  LoadModelResponse,
  UnloadModelRequest,
  UnloadModelResponse,
  WorkerServiceDefinition,
  WorkerServiceRepositoryIndexRequest,
  WorkerServiceRepositoryIndexResponse,
} from '../../generated/maas/internal/v1/worker';
import { ModelInferRequest, ModelInferResponse, RepositoryIndexResponse_ModelIndex } from '../../generated/inference/grpc_service';
import { checkInferRequest, decodeInputs, encodeOutputs } from '../../common/tensors';
import { ModelTable } from './model-table';
import { loadOnnxModel } from './models/onnx';
import { LLAMA_DEFAULTS, loadLlamaModels } from './models/llama';
import { createUpstreamModel, createUpstreamRuntime, upstreamFromConfig } from './models/upstream';
import { MODEL_NAME_PATTERN, RepositoryError, planModel, scanRepository } from './repository';
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
import { MovingAverage } from '../../common/moving-average';
import { SlotQueue } from './slots';

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
  /** The models served now, by name and version. */
  readonly models: ModelTable;
  /** Graceful stop: take no new work, finish what runs (up to the drain timeout), leave, exit. */
  shutdown(): Promise<void>;
  /** Abrupt stop, as if the process died: connections are cut, nothing is finished. Tests use it. */
  crash(): void;
  /** host:port of the /metrics endpoint; undefined with --metrics-port -1. */
  readonly metricsAddress: string | undefined;
}

/** How long a load or unload waits for its ModelsUpdate to be sent to the balancer. */
const ADVERTISE_WAIT_MS = 5000;

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
  const models = new ModelTable();
  /** Set once the worker joins (after its models are loaded): load/unload advertise through it. */
  let membership: Membership | undefined;
  const repositoryRoot = resolve(config.modelRepository);
  const upstreamOptions = { apiKey: config.upstreamApiKey, connectTimeoutMs: config.upstreamConnectTimeoutMs };
  await mkdir(repositoryRoot, { recursive: true });
  /** Names of the runtime's own models: the repository cannot load or unload them. */
  const builtinNames = new Set<string>();
  /** What happened to each repository model the worker tried to load: for RepositoryIndex. */
  const repositoryState = new Map<string, { state: 'LOADING' | 'READY' | 'UNAVAILABLE' | 'UNLOADING'; reason: string }>();
  /** Loads and unloads of one model run one at a time, in call order. */
  const modelLocks = new Map<string, Promise<unknown>>();
  const running = new Map<string, AbortController>();
  const slots = new SlotQueue(config.concurrency, config.maxQueued);
  const latency = new MovingAverage(LATENCY_SMOOTHING);
  let completed = 0;
  let draining = false;
  /** A task waiting for a model's own place (a llama.cpp sequence) holds a worker slot but is queued, not in flight. */
  const waitingInModels = () => models.all().reduce((sum, m) => sum + (m.load?.().waiting ?? 0), 0);

  const metrics = new ServiceMetrics('worker');
  metrics.gauge('maas_worker_in_flight', 'Tasks running on this worker now.', [], (g) => g.set(running.size - waitingInModels()));
  metrics.gauge('maas_worker_queued', 'Tasks waiting on this worker now: for a slot (--concurrency) or for a place in a model.', [], (g) => g.set(slots.waiting + waitingInModels()));
  const batchSize = metrics.histogram(
    'maas_worker_batch_size',
    'Requests run together in one model run, by model: dynamic batches of a batching model; 1 for each task of a model that does not batch.',
    ['model'],
    BATCH_SIZE_BUCKETS,
  );
  const execution = metrics.histogram('maas_worker_model_execution_seconds', 'Time a task ran on the worker, from getting a slot to its last output, in seconds, by model.', ['model']);
  /** The model label of a task: a model the worker hosts, a built-in mapper, or (unknown). */
  const modelLabel = (task: Task): string => {
    const name = taskModel(task);
    if (name !== undefined) return models.versions(name).length > 0 ? name : UNKNOWN_MODEL;
    const mapper = task.request?.$case === 'map' && task.request.map.spec?.map?.$case === 'mapper' ? task.request.map.spec.map.mapper : '';
    return (MAPPERS as readonly string[]).includes(mapper) ? `mapper:${mapper}` : UNKNOWN_MODEL;
  };

  async function* execute(request: ExecuteRequest, context: MeshCallContext): AsyncGenerator<ExecuteResponse> {
    const task = request.task;
    if (!task?.request) throw new MeshError('invalid_argument', 'task.request must be set');
    if (draining) throw new MeshError('unavailable', `worker ${id} is draining`);
    const modelName = taskModel(task);
    const version = task.request.$case === 'infer' ? task.request.infer.modelVersion : undefined;
    const lease = modelName === undefined ? undefined : models.acquire(modelName, version);
    if (modelName !== undefined && !lease) throw notHosted(modelName, version);
    try {
      yield* executeTask(task, lease?.model, context);
    } finally {
      lease?.release();
    }
  }

  function notHosted(name: string, version: string | undefined): MeshError {
    const versions = models.versions(name);
    if (version && versions.length > 0) {
      return new MeshError('not_found', `model ${quoteInput(name)} version ${quoteInput(version)} is not hosted on worker ${id}; its versions here: ${versions.join(', ')}`);
    }
    return new MeshError('not_found', `model ${quoteInput(name)} is not hosted on worker ${id}`);
  }

  async function* executeTask(task: Task, model: Model | undefined, context: MeshCallContext): AsyncGenerator<ExecuteResponse> {
    const modelName = model?.info.name;
    // Bad input is refused before it takes a slot.
    if (task.request?.$case === 'infer') checkInfer(model!, task.request.infer);
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
    const started = performance.now();
    try {
      const outputs =
        task.request?.$case === 'map'
          ? runMap(task.request.map, { models, aggregator, signal: controller.signal, deadline: context.deadline, files })
          : runTask(model!, task, controller.signal, context.deadline, span.spanContext());
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
      const label = modelLabel(task);
      execution.observe({ model: label }, (performance.now() - started) / 1000);
      // A batching model counts its batches as they run (loadOnnxModel's onBatch).
      if (!model?.batchStats && outcome === 'ok') batchSize.observe({ model: label }, 1);
      context.signal.removeEventListener('abort', onAbort);
      running.delete(key);
      slots.release();
      completed++;
      activity.emit('task-end', { requestId: task.requestId, outcome, chunks } satisfies TaskEnd);
      log.debug('task ended', { request_id: task.requestId, task: task.request?.$case, model: modelName, outcome, chunks });
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
    services: [{ definition: WorkerServiceDefinition, implementation: { execute, repositoryIndex, loadModel, unloadModel } }],
    // The scheduler's online calls arrive many to a stream (ExecuteCalls), each run as an Execute.
    callStreams: [{ service: 0, calls: 'executeCalls', carries: 'execute' }],
    callMetrics: callMetrics(metrics, { knownModel: (name) => models.versions(name).length > 0 || (name.startsWith('mapper:') && (MAPPERS as readonly string[]).includes(name.slice(7))) }).middleware,
  });
  const metricsServer = await serveMetrics(metrics, { host: config.host, port: config.metricsPort, log }).catch((err: unknown) => {
    server.kill();
    throw err;
  });
  const address = config.advertiseAddress || server.address;

  const builtin = await runtime.load();
  const upstream = await createUpstreamRuntime(config.upstreams, upstreamOptions).load();
  for (const model of upstream) {
    if (builtin.some((m) => m.info.name === model.info.name)) throw new Error(`--upstream ${model.info.name}: that name is a built-in model; choose another`);
  }
  for (const model of [...builtin, ...upstream]) builtinNames.add(model.info.name);
  for (const [name, group] of groupByName([...builtin, ...upstream])) void models.replace(name, group);
  for (const entry of await scanRepository(repositoryRoot)) {
    if (builtinNames.has(entry.name)) {
      log.warn('repository model skipped: the name is a built-in model', { model: entry.name });
      continue;
    }
    await loadRepositoryModel(entry.name).catch((err: Error) => log.warn('repository model not loaded', { model: entry.name, error: err.message }));
  }
  log.info('models loaded', { models: models.all().map((m) => `${m.info.name}@${m.info.version}`).join(',') });
  server.setServing(true);

  const aggregatorChannel = openMeshChannel(config.aggregator, config.maxMessageBytes, tls, 'aggregator');
  const aggregator = createMeshClient(AggregatorServiceDefinition, aggregatorChannel);

  membership = joinBalancer(
    config.balancer,
    () => ({ workerId: id, address, models: models.all().map(modelMessage), capacity: config.concurrency, mappers: [...MAPPERS] }),
    () => {
      const waiting = waitingInModels();
      return { inFlight: running.size - waiting, capacity: config.concurrency, completed, draining, queueDepth: slots.waiting + waiting, latencyMs: latency.value ?? 0 };
    },
    log,
    tls,
  );

  /** Runs `work` after every earlier load or unload of `name` has settled. */
  function serialized<T>(name: string, work: () => Promise<T>): Promise<T> {
    const before = modelLocks.get(name) ?? Promise.resolve();
    const run = before.catch(() => undefined).then(work);
    const tail = run.catch(() => undefined);
    modelLocks.set(name, tail);
    void tail.then(() => {
      if (modelLocks.get(name) === tail) modelLocks.delete(name);
    });
    return run;
  }

  /** Tells the balancer the worker's models now, waiting (up to a bound) until the update is sent. */
  async function advertise(): Promise<void> {
    if (!membership) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([membership.updateModels(), new Promise((r) => (timer = setTimeout(r, ADVERTISE_WAIT_MS)))]);
    clearTimeout(timer);
  }

  /**
   * Loads (or reloads) a repository model: the new sessions are made while the old ones serve,
   * then swapped in at once; the old ones are released once their calls in flight end.
   */
  function loadRepositoryModel(name: string): Promise<void> {
    if (builtinNames.has(name)) return Promise.reject(new MeshError('failed_precondition', `model ${quoteInput(name)} is a built-in model of worker ${id}; it cannot be loaded from the repository`));
    return serialized(name, async () => {
      const previous = repositoryState.get(name);
      repositoryState.set(name, { state: 'LOADING', reason: '' });
      try {
        const upstream = await readUpstreamConfig(repositoryRoot, name);
        const plan = upstream ? undefined : await planModel(repositoryRoot, name);
        const loaded = upstream
          ? [createUpstreamModel(upstream, upstreamOptions)]
          : plan!.format === 'gguf'
            ? await loadLlamaModels(plan!, {
                sequences: plan!.config.sequences ?? LLAMA_DEFAULTS.sequences,
                contextLength: plan!.config.contextLength ?? LLAMA_DEFAULTS.contextLength,
                threads: plan!.config.threads ?? LLAMA_DEFAULTS.threads,
              })
            : await loadOnnxModel(plan!, { intraOpThreads: config.onnxIntraOpThreads, maxBatchQueue: config.concurrency + config.maxQueued, onBatch: (name, requests) => batchSize.observe({ model: name }, requests) });
        const retired = models.replace(name, loaded);
        repositoryState.set(name, { state: 'READY', reason: '' });
        log.info('model loaded', { model: name, versions: loaded.map((m) => m.info.version).join(',') });
        await advertise();
        void retired.catch((err: Error) => log.warn('releasing a replaced model failed', { model: name, error: err.message }));
      } catch (err) {
        // A failed reload leaves the versions that were serving in place.
        if (models.has(name)) repositoryState.set(name, previous ?? { state: 'READY', reason: '' });
        else repositoryState.set(name, { state: 'UNAVAILABLE', reason: err instanceof Error ? err.message : String(err) });
        if (err instanceof RepositoryError) throw new MeshError(err.kind === 'not_found' ? 'not_found' : 'failed_precondition', err.message);
        throw err;
      }
    });
  }

  async function loadModel(request: LoadModelRequest): Promise<LoadModelResponse> {
    checkModelName(request.modelName);
    await loadRepositoryModel(request.modelName);
    return {};
  }

  async function unloadModel(request: UnloadModelRequest): Promise<UnloadModelResponse> {
    const name = request.modelName;
    checkModelName(name);
    if (builtinNames.has(name)) throw new MeshError('failed_precondition', `model ${quoteInput(name)} is a built-in model of worker ${id}; it cannot be unloaded`);
    await serialized(name, async () => {
      if (!models.has(name)) throw new MeshError('not_found', `model ${quoteInput(name)} is not loaded on worker ${id}`);
      repositoryState.set(name, { state: 'UNLOADING', reason: '' });
      // Routing stops first; calls in flight finish before the sessions are freed.
      const drained = models.remove(name);
      await advertise();
      await drained;
      repositoryState.set(name, { state: 'UNAVAILABLE', reason: 'unloaded' });
      log.info('model unloaded', { model: name });
    });
    return {};
  }

  async function repositoryIndex(request: WorkerServiceRepositoryIndexRequest): Promise<WorkerServiceRepositoryIndexResponse> {
    const readyOnly = request.request?.ready ?? false;
    const index: RepositoryIndexResponse_ModelIndex[] = [];
    for (const entry of await scanRepository(repositoryRoot)) {
      if (builtinNames.has(entry.name)) continue;
      const loaded = new Set(models.versions(entry.name));
      const state = repositoryState.get(entry.name);
      const versions = new Set([...entry.versions.map(String), ...loaded]);
      if (versions.size === 0) versions.add('');
      for (const version of [...versions].sort((a, b) => Number(a) - Number(b))) {
        const ready = loaded.has(version);
        const row = ready
          ? { name: entry.name, version, state: 'READY', reason: '' }
          : {
              name: entry.name,
              version,
              state: state && state.state !== 'READY' ? state.state : 'UNAVAILABLE',
              reason: state?.reason || (version === '' ? 'no version folder <n>/model.onnx or <n>/*.gguf' : loaded.size > 0 ? 'not selected by version_policy' : 'not loaded'),
            };
        if (!readyOnly || ready) index.push(row);
      }
    }
    return { response: { models: index } };
  }

  function checkModelName(name: string) {
    if (!MODEL_NAME_PATTERN.test(name)) {
      throw new MeshError('invalid_argument', `model_name must match ${MODEL_NAME_PATTERN}, given ${quoteInput(name)}`);
    }
  }

  return {
    id,
    address,
    activity,
    joined: membership.joined,
    models,
    metricsAddress: metricsServer?.address,
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
      await metricsServer?.close();
      aggregatorChannel.close();
    },
    crash() {
      // Connections go first, so no caller receives a status: as if the process had died.
      server.kill();
      void metricsServer?.close();
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
    case 'infer':
      return task.request.infer.modelName;
    default:
      return undefined;
  }
}

/** Runs a map task and yields its single result (without the worker id). */
async function* runMap(task: MapTask, context: MapContext): AsyncGenerator<TaskOutput['output']> {
  yield { $case: 'mapResult', mapResult: await runMapTask(task, context) };
}

/** Runs one task on its model and yields its outputs (without the worker id). */
async function* runTask(model: Model, task: Task, signal: AbortSignal, deadline: number | undefined, spanContext: SpanContext): AsyncGenerator<TaskOutput['output']> {
  if (task.request?.$case === 'generate') {
    yield* runGenerate(model, task.request.generate, signal);
  } else if (task.request?.$case === 'predict') {
    yield await runPredict(model, task.request.predict, signal);
  } else if (task.request?.$case === 'infer') {
    yield { $case: 'inferResponse', inferResponse: await runInfer(model, task.request.infer, signal, deadline, spanContext) };
  }
}

/** Refuses an infer task the model cannot take: INVALID_ARGUMENT naming the tensor (common/tensors). */
function checkInfer(model: Model, request: ModelInferRequest): void {
  const info = model.info;
  if (!model.infer || !info.inputs || !info.outputs) {
    throw new MeshError('failed_precondition', `model "${info.name}" does not take tensors (ModelInfer); it supports: ${supported(model)}`);
  }
  checkInferRequest(request, { name: info.name, inputs: info.inputs, outputs: info.outputs, maxBatchSize: info.maxBatchSize ?? 0 });
}

/** Runs a checked infer task; answers raw when the request was raw (or an output is FP16). */
async function runInfer(model: Model, request: ModelInferRequest, signal: AbortSignal, deadline: number | undefined, spanContext: SpanContext): Promise<ModelInferResponse> {
  const outputs = await model.infer!({ inputs: decodeInputs(request), outputs: request.outputs.map((o) => o.name), deadline, spanContext }, signal);
  const encoded = encodeOutputs(outputs, request.rawInputContents.length > 0);
  return { modelName: model.info.name, modelVersion: model.info.version, id: request.id, parameters: {}, outputs: encoded.outputs, rawOutputContents: encoded.rawOutputContents };
}

/** Models grouped by name (a runtime may return several versions of one). */
function groupByName(list: readonly Model[]): Map<string, Model[]> {
  const groups = new Map<string, Model[]>();
  for (const m of list) groups.set(m.info.name, [...(groups.get(m.info.name) ?? []), m]);
  return groups;
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
    messages: request.messages.length > 0 ? request.messages.map((m) => ({ role: m.role, content: m.content })) : undefined,
    topP: request.topP,
  };
  if (params.messages && !model.info.tasks.includes('chat')) {
    throw new MeshError('failed_precondition', `model "${model.info.name}" does not take chat messages; it supports: ${supported(model)}`);
  }
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
        usage: last ? (chunk.usage ?? { promptTokens: countWords(request.prompt), completionTokens: generated }) : undefined,
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

const TASK_CALLS: Record<Model['info']['tasks'][number], string> = { generate: 'Generate', classify: 'Predict', infer: 'ModelInfer', chat: 'Generate with messages' };
const TASK_PROTO: Record<Model['info']['tasks'][number], ModelTask> = {
  generate: ModelTask.MODEL_TASK_GENERATE,
  classify: ModelTask.MODEL_TASK_CLASSIFY,
  infer: ModelTask.MODEL_TASK_INFER,
  chat: ModelTask.MODEL_TASK_CHAT,
};

function supported(model: Model): string {
  return model.info.tasks.map((t) => TASK_CALLS[t]).join(', ');
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
    tasks: model.info.tasks.map((t) => TASK_PROTO[t]),
    labels: model.info.labels,
    metadata: model.info.metadata,
    readyWorkers: 1,
    platform: model.info.platform ?? 'maas_builtin',
    inputs: (model.info.inputs ?? []).map((t) => ({ name: t.name, datatype: t.datatype, shape: [...t.shape] })),
    outputs: (model.info.outputs ?? []).map((t) => ({ name: t.name, datatype: t.datatype, shape: [...t.shape] })),
    maxBatchSize: model.info.maxBatchSize ?? 0,
    contextLength: model.info.contextLength ?? 0,
  };
}

/**
 * The upstream spec of repository model `name` when its config.json says platform openai_upstream;
 * undefined otherwise (then the folder is planned as a model file). RepositoryError naming the field.
 */
async function readUpstreamConfig(root: string, name: string): Promise<ReturnType<typeof upstreamFromConfig>> {
  if (!MODEL_NAME_PATTERN.test(name)) return undefined;
  const text = await readFile(join(root, name, 'config.json'), 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined; // planModel reports the bad JSON
  }
  try {
    return upstreamFromConfig(parsed, name);
  } catch (err) {
    throw new RepositoryError('invalid', `config.json of model ${JSON.stringify(name)}: ${(err as Error).message}`);
  }
}
