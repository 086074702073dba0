/**
 * The gateway: the public edge. It authenticates (once per call, in the middleware of
 * ./authentication, which hands the tenant to the handlers in the call context), validates every
 * field, checks the model exists, sets a default deadline, and hands the call to the scheduler; the
 * telemetry middleware opens the root span of the call's trace here.
 */
import { randomUUID } from 'node:crypto';
import { ClientError, Status, createClient } from 'nice-grpc';
import { trace } from '@opentelemetry/api';
import { Dispatcher, countDispatches, openMeshDispatcher } from '../common/dispatcher';
import { PermitClient } from './permits';
import { createMeshClient, openMeshChannel } from '../common/client';
import { ConfigOf } from '../common/config';
import { MeshError, quoteInput } from '../common/errors';
import { Logger, callerContent } from '../common/log';
import { callMetrics } from '../common/call-metrics';
import { ServiceMetrics, serveMetrics } from '../common/metrics';
import { startGrpcServer } from '../common/server';
import { StartedService } from '../common/service-main';
import { loadMeshTls } from '../common/tls';
import { BalancerServiceDefinition } from '../generated/maas/internal/v1/balancer';
import { ScheduleRequest, ScheduleResponse, SchedulerServiceDefinition } from '../generated/maas/internal/v1/scheduler';
import { CallStreamCallOptions, EncodedMessage, openCallStreamClient } from '../common/call-stream';
import { lengthDelimitedField } from '../common/wire-fields';
import { Task } from '../generated/maas/internal/v1/task';
import { GenerateRequest, GenerateResponse, InferenceServiceDefinition, PredictRequest, PredictResponse } from '../generated/maas/v1/inference';
import { GetModelRequest, GetModelResponse, ListModelsResponse, Model, ModelServiceDefinition, ModelTask } from '../generated/maas/v1/models';
import { MAPPER_NAMES } from '../common/batch';
import { DATASET_NAMES } from '../common/datasets';
import {
  CancelRequest,
  CancelResponse,
  GetRequest,
  GetResponse,
  JobServiceDefinition,
  JobSpec,
  ListRequest,
  ListResponse,
  SubmitRequest,
  SubmitResponse,
  WatchRequest,
  WatchResponse,
} from '../generated/maas/v1/jobs';
import { ListWorkersResponse, MeshServiceDefinition } from '../generated/maas/v1/mesh';
import { createAuthenticator } from './auth';
import { GatewayCallContext, authenticationMiddleware } from './authentication';
import { loadKeyFile, watchKeyFile } from './key-file';
import { JobSpecContext, validateJobSpec } from './job-spec';
import { parseCallbackAllowlist } from '../common/callback-target';
import { ModelCatalog, newestServed } from './catalog';
import { gatewaySchema } from './config';
import { validateGenerateRequest, validateJobId, validateModelName, validatePageToken, validatePredictRequest } from './validation';
import { GRPCInferenceServiceDefinition } from '../generated/inference/grpc_service';
import { describeTasks, kserveService } from './kserve';
import { startOpenAiEdge } from './openai/http-edge';

/** A running gateway. */
export interface RunningGateway extends StartedService {
  readonly port: number;
  /** Port of the OpenAI-compatible HTTP API; undefined when it is off (--http-port -1). */
  readonly httpPort: number | undefined;
  /** host:port of the /metrics endpoint; undefined with --metrics-port -1. */
  readonly metricsAddress: string | undefined;
  /**
   * Reads the API key file again and, if it parses, replaces the keys in use; otherwise keeps them
   * and logs why (by line number). Returns whether the new keys took effect. Also runs on its own
   * when the file changes, and on SIGHUP.
   */
  reloadApiKeys(): boolean;
  /** The dispatcher of the calls on permits (undefined with --permits false), for tests and diagnostics. */
  readonly dispatcher: Dispatcher | undefined;
  /** The scheduler's permits held (undefined with --permits false), for tests and diagnostics. */
  readonly permits: PermitClient | undefined;
}

/** Starts the gateway. */
export async function startGateway(config: ConfigOf<typeof gatewaySchema>, log: Logger): Promise<RunningGateway> {
  const keyFile = config.apiKeysFile;
  const auth = createAuthenticator({
    required: config.apiKeys.length > 0 || keyFile !== '',
    entries: [...config.apiKeys, ...(keyFile ? loadKeyFile(keyFile) : [])],
  });
  if (keyFile || config.apiKeys.length > 0) log.info('API keys loaded', auth.counts());
  function reloadApiKeys(): boolean {
    if (!keyFile) return false;
    try {
      auth.replaceKeys([...config.apiKeys, ...loadKeyFile(keyFile)]);
    } catch (err) {
      // The message names the file and a line number, never a line's content.
      log.warn('API key file not reloaded; the keys in use stay', { error: (err as Error).message, ...auth.counts() });
      return false;
    }
    log.info('API keys reloaded', auth.counts());
    return true;
  }
  const keyWatch = keyFile ? watchKeyFile(keyFile, reloadApiKeys) : undefined;
  const limits = { maxPromptChars: config.maxPromptChars, maxInputChars: config.maxInputChars };
  const tls = loadMeshTls(config, 'gateway');
  const schedulerChannel = openMeshChannel(config.scheduler, config.maxMessageBytes, tls, 'scheduler');
  const balancerChannel = openMeshChannel(config.balancer, config.maxMessageBytes, tls, 'balancer');
  const scheduler = createMeshClient(SchedulerServiceDefinition, schedulerChannel);
  // Online calls go many to a stream (ScheduleCalls): a new HTTP/2 stream per call costs more than the call.
  const scheduleCalls = openCallStreamClient<ScheduleRequest, ScheduleResponse>(SchedulerServiceDefinition, schedulerChannel, 'scheduleCalls', 'schedule');
  const metrics = new ServiceMetrics('gateway');
  const onlinePath = metrics.counter(
    'maas_gateway_online_calls_total',
    "Online calls by path: permit (on an admission permit the scheduler granted ahead, dispatched by the gateway straight to the worker), scheduler (through the scheduler's queue).",
    ['path'],
  );
  // Online calls on the scheduler's permits: the gateway dispatches them itself (the balancer
  // decides over the gateway's own Dispatch stream), with no round trip to the scheduler per call.
  const dispatch = config.permits
    ? openMeshDispatcher({ balancer: config.balancer, maxMessageBytes: config.maxMessageBytes, tls, log, onFirstAttempt: countDispatches(metrics, 'maas_gateway_dispatched_total') })
    : undefined;
  // The Permits stream lasts as long as the gateway: no tracing middleware.
  const schedulerStreams = createClient(SchedulerServiceDefinition, schedulerChannel);
  const permitClient = dispatch && new PermitClient({ open: (requests, options) => schedulerStreams.permits(requests, options), log });
  metrics.gauge('maas_gateway_permits_held', "Admission permits the gateway holds now, granted ahead by the scheduler (each one slot on which the gateway runs a tenant's calls one at a time).", [], (g) => g.set(permitClient?.held ?? 0));

  /**
   * Runs an online task: each output as an encoded ScheduleResponse. On a permit of the task's
   * tenant, the gateway dispatches it; otherwise the scheduler admits and dispatches it.
   */
  async function* runOnline(task: Task, options: CallStreamCallOptions): AsyncGenerator<Uint8Array> {
    const done = permitClient?.take(task.tenant);
    if (!done || !dispatch) {
      onlinePath.inc({ path: 'scheduler' });
      trace.getActiveSpan()?.setAttribute('maas.admission', 'scheduler');
      return yield* scheduleCalls.callEncoded({ task }, options);
    }
    onlinePath.inc({ path: 'permit' });
    trace.getActiveSpan()?.setAttribute('maas.admission', 'permit');
    try {
      // The worker's output as it encoded it: an ExecuteResponse is a ScheduleResponse on the wire.
      for await (const message of dispatch.dispatcher.run(task, options.signal ?? new AbortController().signal, options.deadline)) yield message.bytes;
    } finally {
      done();
    }
  }
  async function* schedule(task: Task, options: CallStreamCallOptions): AsyncGenerator<ScheduleResponse> {
    for await (const bytes of runOnline(task, options)) yield ScheduleResponse.decode(bytes);
  }
  const balancer = createMeshClient(BalancerServiceDefinition, balancerChannel);
  const catalog = new ModelCatalog<Model>(async () => {
    try {
      return (await balancer.listModels({}, { deadline: Date.now() + 5000 })).models;
    } catch (err) {
      // The balancer is down or restarting: the mesh cannot say which models exist right now.
      if (err instanceof ClientError) throw new MeshError('unavailable', `cannot list the models: the balancer did not answer (${Status[err.code]}: ${err.details.slice(0, 120)})`);
      throw err;
    }
  }, config.catalogTtlMs);

  /**
   * The model if a ready worker serves it. Otherwise UNAVAILABLE when the mesh cannot answer now: a
   * model offered before whose workers are away (starting, restarting), or no worker ready at all;
   * NOT_FOUND, naming the models that exist, only for a model no worker has offered.
   */
  async function readyModel(name: string): Promise<Model> {
    const model = await catalog.find(name);
    if (model) return model;
    // Offered before but not listed now: its workers may be restarting, or the balancer may be one
    // that restarted and has not relearned them yet; the scheduler dispatches on the last routing
    // state meanwhile, and answers UNAVAILABLE itself when no worker serves the model.
    const before = newestServed(catalog.offeredBefore(name));
    if (before) return before;
    const known = (await catalog.list()).map((m) => m.name);
    if (known.length === 0) throw new MeshError('unavailable', `no worker is ready yet, so model ${quoteInput(name)} cannot be looked up; try again once the workers have started`);
    throw new MeshError('not_found', `model ${quoteInput(name)} not found; available: ${[...new Set(known)].join(', ')}`);
  }

  /** The model (see {@link readyModel}); INVALID_ARGUMENT if it cannot do `task`. */
  async function requireModel(name: string, task: ModelTask): Promise<Model> {
    const model = await readyModel(name);
    if (!model.tasks.includes(task)) {
      if (task === ModelTask.MODEL_TASK_CHAT) throw new MeshError('invalid_argument', `messages need a model with a chat template; model ${quoteInput(name)} supports: ${describeTasks(model)} (send a prompt instead)`);
      const call = task === ModelTask.MODEL_TASK_GENERATE ? 'Generate' : 'Predict';
      throw new MeshError('invalid_argument', `model ${quoteInput(name)} does not support ${call}; it supports: ${describeTasks(model)}`);
    }
    return model;
  }

  function newTask(context: GatewayCallContext, request: Task['request']): { task: Task; deadline: number } {
    const requestId = randomUUID();
    context.header.set('x-request-id', requestId);
    return { task: { requestId, tenant: context.tenant, request }, deadline: context.deadline ?? Date.now() + config.defaultDeadlineMs };
  }

  async function* generate(request: GenerateRequest, context: GatewayCallContext): AsyncGenerator<GenerateResponse | EncodedMessage> {
    const valid = validateGenerateRequest(request, limits);
    await requireModel(valid.model, valid.messages.length > 0 ? ModelTask.MODEL_TASK_CHAT : ModelTask.MODEL_TASK_GENERATE);
    const { task, deadline } = newTask(context, { $case: 'generate', generate: valid });
    log.debug('generate', { request_id: task.requestId, tenant: task.tenant, model: valid.model, prompt: callerContent(log, valid.prompt), messages: valid.messages.length, max_tokens: valid.maxTokens });
    // Each chunk goes to the client as the worker encoded it: ScheduleResponse.output (1) is a
    // TaskOutput whose chunk (10) is the GenerateResponse itself.
    for await (const bytes of runOnline(task, { signal: context.signal, deadline })) {
      const output = lengthDelimitedField(bytes, 1);
      const chunk = output && lengthDelimitedField(output, 10);
      if (chunk) yield new EncodedMessage(chunk);
    }
  }

  async function predict(request: PredictRequest, context: GatewayCallContext): Promise<PredictResponse> {
    const valid = validatePredictRequest(request, limits);
    await requireModel(valid.model, ModelTask.MODEL_TASK_CLASSIFY);
    const { task, deadline } = newTask(context, { $case: 'predict', predict: valid });
    log.debug('predict', { request_id: task.requestId, tenant: task.tenant, model: valid.model, input: callerContent(log, valid.input) });
    let prediction: PredictResponse | undefined;
    // Read the stream to its end: leaving the loop early would cancel the call, and a burst of
    // cancels (RST_STREAM) makes the HTTP/2 peer close the whole connection.
    for await (const response of schedule(task, { signal: context.signal, deadline })) {
      if (response.output?.output?.$case === 'prediction') prediction ??= response.output.output.prediction;
    }
    if (!prediction) throw new MeshError('unavailable', `model ${quoteInput(valid.model)} returned no prediction`);
    log.debug('predict answered', { request_id: task.requestId, label: callerContent(log, prediction.label) });
    return prediction;
  }

  async function listModels(): Promise<ListModelsResponse> {
    return { models: await catalog.list() };
  }

  async function getModel(request: GetModelRequest, context: GatewayCallContext): Promise<GetModelResponse> {
    const name = validateModelName('name', request.name);
    // A model offered before is described as last listed, with no ready worker now.
    const before = newestServed(catalog.offeredBefore(name));
    const model = (await catalog.find(name)) ?? (before && { ...before, readyWorkers: 0 }) ?? (await readyModel(name));
    return { model };
  }

  const jobSpecContext: JobSpecContext = {
    mappers: MAPPER_NAMES,
    datasets: DATASET_NAMES,
    maxInlineRecords: config.maxInlineRecords,
    callbackAllow: parseCallbackAllowlist(config.callbackAllow),
    maxRecordChars: config.maxInputChars,
    async modelTasks(name) {
      // A job may wait for the workers of a model offered before (its tasks wait for a worker).
      const model = (await catalog.find(name)) ?? newestServed(catalog.offeredBefore(name)) ?? (await readyModel(name).catch((err: unknown) => {
        if (err instanceof MeshError && err.kind === 'not_found') return undefined;
        throw err;
      }));
      return model?.tasks.flatMap((t) => (t === ModelTask.MODEL_TASK_GENERATE ? ['generate' as const] : t === ModelTask.MODEL_TASK_CLASSIFY ? ['classify' as const] : []));
    },
  };

  /** Calls to the scheduler's job methods: the caller's deadline if set, else the default. */
  const jobCall = (context: GatewayCallContext) => ({ signal: context.signal, deadline: context.deadline ?? Date.now() + config.defaultDeadlineMs });
  const requireJobId = (id: string) => validateJobId('job_id', id);

  const jobService = {
    async submit(request: SubmitRequest, context: GatewayCallContext): Promise<SubmitResponse> {
      const spec = await validateJobSpec(request.spec ?? JobSpec.fromPartial({}), jobSpecContext);
      const { job } = await scheduler.submitJob({ tenant: context.tenant, spec }, jobCall(context));
      log.debug('job submitted', { job: job?.id, tenant: context.tenant });
      return { job };
    },
    async *watch(request: WatchRequest, context: GatewayCallContext): AsyncGenerator<WatchResponse> {
      const jobId = requireJobId(request.jobId);
      // A watch lasts as long as the job: only the caller's own deadline applies.
      for await (const r of scheduler.watchJob({ tenant: context.tenant, jobId, afterSequence: request.afterSequence }, { signal: context.signal, deadline: context.deadline })) {
        yield { event: r.event };
      }
    },
    async get(request: GetRequest, context: GatewayCallContext): Promise<GetResponse> {
      return { job: (await scheduler.getJob({ tenant: context.tenant, jobId: requireJobId(request.jobId) }, jobCall(context))).job };
    },
    async list(request: ListRequest, context: GatewayCallContext): Promise<ListResponse> {
      if (request.pageSize > 1000) throw new MeshError('invalid_argument', `page_size must be <= 1000, given ${request.pageSize}`);
      const pageToken = validatePageToken('page_token', request.pageToken);
      return scheduler.listJobs({ tenant: context.tenant, pageSize: request.pageSize, pageToken }, jobCall(context));
    },
    async cancel(request: CancelRequest, context: GatewayCallContext): Promise<CancelResponse> {
      return { job: (await scheduler.cancelJob({ tenant: context.tenant, jobId: requireJobId(request.jobId) }, jobCall(context))).job };
    },
  };

  // The OpenAI-compatible HTTP edge's requests (its calls into the mesh are counted by the scheduler's gRPC metrics).
  const httpAnswered = metrics.counter('maas_http_requests_total', 'Requests answered by the OpenAI-compatible HTTP API, by route and HTTP status.', ['route', 'code']);
  const httpSeconds = metrics.histogram('maas_http_request_duration_seconds', 'Time from an HTTP API request to the end of its answer (the whole stream for SSE), in seconds, by route.', ['route']);
  const server = await startGrpcServer({
    callMetrics: callMetrics(metrics, { knownModel: (name) => catalog.offeredBefore(name).length > 0 }).middleware,
    host: config.host,
    port: config.port,
    maxMessageBytes: config.maxMessageBytes,
    maxConcurrentStreams: config.maxConcurrentStreams,
    log,
    serving: true,
    // Public clients get TLS with the gateway's certificate and authenticate with API keys.
    tls,
    publicEdge: true,
    insecure: config.insecure,
    healthPort: config.healthPort,
    // The caller's key is resolved to its tenant here, once, for every method of every service below.
    serviceMiddleware: authenticationMiddleware(auth),
    // Job watches last until the job ends; their clients reconnect and lose no event.
    longLivedMethods: ['/maas.v1.JobService/Watch'],
    maxConnectionAgeMs: config.maxConnectionAgeMs,
    maxConnectionAgeGraceMs: config.maxConnectionAgeGraceMs,
    services: [
      { definition: InferenceServiceDefinition, implementation: { generate, predict } },
      { definition: ModelServiceDefinition, implementation: { listModels, getModel } },
      {
        definition: GRPCInferenceServiceDefinition,
        implementation: kserveService({
          catalog,
          schedule,
          balancer,
          newTask,
          limits: { maxTensorElements: config.maxTensorElements },
          repositoryTenants: config.repositoryTenants,
          defaultDeadlineMs: config.defaultDeadlineMs,
        }),
      },
      { definition: JobServiceDefinition, implementation: jobService },
      {
        definition: MeshServiceDefinition,
        implementation: {
          async listWorkers(_request: unknown, context: GatewayCallContext): Promise<ListWorkersResponse> {
                    return balancer.listWorkers({}, { signal: context.signal, deadline: Date.now() + 5000 });
          },
        },
      },
    ],
  });
  const http =
    config.httpPort < 0
      ? undefined
      : await startOpenAiEdge({
          host: config.host,
          port: config.httpPort,
          tls: tls && { cert: tls.cert, key: tls.key },
          insecure: config.insecure,
          maxBodyBytes: config.httpMaxBodyBytes,
          maxPromptChars: config.maxPromptChars,
          defaultDeadlineMs: config.defaultDeadlineMs,
          tenantOf: (authorization) => auth.tenantOf(authorization),
          listModels: () => catalog.list(),
          findModel: readyModel,
          validate: (request) => validateGenerateRequest(request, limits),
          schedule,
          log,
          onAnswered: (route, status, seconds) => {
            httpAnswered.inc({ route, code: String(status) });
            httpSeconds.observe({ route }, seconds);
          },
        }).catch(async (err: unknown) => {
          await server.shutdown(0);
          throw new Error(`the OpenAI-compatible HTTP API could not listen on ${config.host}:${config.httpPort} (--http-port): ${(err as Error).message}`);
        });
  if (http) log.info('OpenAI-compatible HTTP API listening', { host: config.host, port: http.port });
  const metricsServer = await serveMetrics(metrics, { host: config.host, port: config.metricsPort, log }).catch(async (err: unknown) => {
    await Promise.all([server.shutdown(0), http?.close(0)]);
    throw err;
  });
  return {
    port: server.port,
    address: server.address,
    httpPort: http?.port,
    metricsAddress: metricsServer?.address,
    reloadApiKeys,
    dispatcher: dispatch?.dispatcher,
    permits: permitClient,
    async shutdown() {
      keyWatch?.close();
      await Promise.all([server.shutdown(config.drainTimeoutMs), http?.close(config.drainTimeoutMs), metricsServer?.close()]);
      permitClient?.close();
      dispatch?.close();
      scheduleCalls.close();
      schedulerChannel.close();
      balancerChannel.close();
    },
  };
}
