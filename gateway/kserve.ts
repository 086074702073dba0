/**
 * The KServe v2 / Open Inference Protocol at the gateway: `inference.GRPCInferenceService`,
 * served on the same port as maas.v1. Its calls take the mesh's normal path: the caller's API key
 * names the tenant (`context.tenant`, set by the gateway's authentication middleware; ServerLive
 * and ServerReady take no key), ModelInfer is validated against the model's metadata here and
 * admitted by the scheduler like Predict (priorities, tenant limits, deadlines, cancellation), and
 * the repository calls go to the balancer, which fans them out to the workers.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { MeshError, invalidField, quoteInput } from '../common/errors';
import { createMeshClient } from '../common/client';
import { BalancerServiceDefinition } from '../generated/maas/internal/v1/balancer';
import { ScheduleResponse } from '../generated/maas/internal/v1/scheduler';
import { CallStreamCallOptions } from '../common/call-stream';
import { Task } from '../generated/maas/internal/v1/task';
import {
  GRPCInferenceServiceImplementation,
  ModelInferRequest,
  ModelInferResponse,
  ModelMetadataRequest,
  ModelMetadataResponse,
  ModelReadyRequest,
  ModelReadyResponse,
  RepositoryIndexRequest,
  RepositoryIndexResponse,
  RepositoryModelLoadRequest,
  RepositoryModelLoadResponse,
  RepositoryModelUnloadRequest,
  RepositoryModelUnloadResponse,
  ServerLiveResponse,
  ServerMetadataResponse,
  ServerReadyResponse,
} from '../generated/inference/grpc_service';
import { Model, ModelTask } from '../generated/maas/v1/models';
import { ModelCatalog, newestServed } from './catalog';
import { InferLimits, MAX_VERSION_CHARS, resolveModelVersion, validateInferEnvelope, validateInferTensors } from './infer-request';
import { validateModelName } from './validation';
import { GatewayCallContext } from './authentication';

/** The name ServerMetadata reports. */
export const SERVER_NAME = 'maas-mesh';
/** The protocol extensions the mesh serves. */
export const SERVER_EXTENSIONS = ['model_repository'];

/** The package's version, as ServerMetadata reports it. */
export function packageVersion(): string {
  return (JSON.parse(readFileSync(resolve(__dirname, '../../package.json'), 'utf8')) as { version: string }).version;
}

/** Longest repository model name: a folder name of the repository. */
export const MAX_REPOSITORY_MODEL_CHARS = 128;

/**
 * Checks a repository model name: one folder of the repository, so no path separator, no `..`,
 * no NUL, at most {@link MAX_REPOSITORY_MODEL_CHARS} characters of the model-name alphabet.
 */
export function validateRepositoryModelName(field: string, name: string): string {
  if (/[/\\\0]/.test(name)) throw invalidField(field, 'must be a folder name of the model repository, without path separators', name);
  if (name === '.' || name === '..' || name.includes('..')) throw invalidField(field, "must be a folder name of the model repository, not contain '..'", name);
  return validateModelName(field, name);
}

/** The repository a call names: the mesh has one, named "" (any other name is NOT_FOUND). */
function requireRepository(name: string): void {
  if (name !== '') throw new MeshError('not_found', `repository ${quoteInput(name)} not found; the mesh has one model repository: leave repository_name empty`);
}

/** What the KServe service needs from the gateway. */
export interface KserveDeps {
  catalog: ModelCatalog<Model>;
  /** Runs a task through the scheduler (its ScheduleCalls stream). */
  schedule(task: Task, options: CallStreamCallOptions): AsyncIterable<ScheduleResponse>;
  balancer: ReturnType<typeof createMeshClient<typeof BalancerServiceDefinition>>;
  /** A task for the scheduler, with its request id and deadline. */
  newTask(context: GatewayCallContext, request: Task['request']): { task: Task; deadline: number };
  limits: InferLimits;
  /** Tenants that may load and unload models (--repository-tenants). */
  repositoryTenants: readonly string[];
  defaultDeadlineMs: number;
}

/** The implementation of inference.GRPCInferenceService. */
export function kserveService(deps: KserveDeps): GRPCInferenceServiceImplementation<GatewayCallContext> {
  const version = packageVersion();
  const { catalog } = deps;

  function checkVersionField(v: string): void {
    if (v.length > MAX_VERSION_CHARS) throw invalidField('version', `must be at most ${MAX_VERSION_CHARS} characters`, v);
  }

  /**
   * The model version a call names, or NOT_FOUND naming the model or the version; UNAVAILABLE for
   * a model offered before that has no ready worker now, or when no worker is ready at all.
   */
  async function requireVersion(name: string, v: string): Promise<{ model: Model; versions: Model[] }> {
    const versions = await catalog.versions(name);
    if (versions.length === 0 && catalog.offeredBefore(name).length > 0) {
      throw new MeshError('unavailable', `no ready worker serves model ${quoteInput(name)} now (it was served before: its workers may be starting or restarting); try again`);
    }
    if (versions.length === 0 && (await catalog.list()).length === 0) {
      throw new MeshError('unavailable', `no worker is ready yet, so model ${quoteInput(name)} cannot be looked up; try again once the workers have started`);
    }
    return { model: resolveModelVersion(name, v, versions, newestServed(versions)), versions };
  }

  function requireRepositoryTenant(context: GatewayCallContext): void {
    if (!deps.repositoryTenants.includes(context.tenant)) {
      throw new MeshError('permission_denied', `tenant ${quoteInput(context.tenant)} may not load or unload models; allowed: ${deps.repositoryTenants.join(', ') || 'nobody'} (--repository-tenants)`);
    }
  }

  const balancerCall = (context: GatewayCallContext) => ({ signal: context.signal, deadline: context.deadline ?? Date.now() + deps.defaultDeadlineMs });

  return {
    // Live and Ready answer without a key (KEYLESS_METHODS): they are what probes and load balancers ask.
    async serverLive(): Promise<ServerLiveResponse> {
      return { live: true };
    },
    async serverReady(): Promise<ServerReadyResponse> {
      try {
        return { ready: (await catalog.list()).some((m) => m.readyWorkers > 0) };
      } catch {
        return { ready: false };
      }
    },
    async serverMetadata(_request, context): Promise<ServerMetadataResponse> {
      return { name: SERVER_NAME, version, extensions: SERVER_EXTENSIONS };
    },
    async modelReady(request: ModelReadyRequest, context): Promise<ModelReadyResponse> {
      validateModelName('name', request.name);
      checkVersionField(request.version);
      const versions = await catalog.versions(request.name);
      const model = request.version === '' ? newestServed(versions) : versions.find((m) => m.version === request.version);
      return { ready: model !== undefined && model.readyWorkers > 0 };
    },
    async modelMetadata(request: ModelMetadataRequest, context): Promise<ModelMetadataResponse> {
      validateModelName('name', request.name);
      checkVersionField(request.version);
      const { model, versions } = await requireVersion(request.name, request.version);
      return {
        name: model.name,
        versions: versions.map((m) => m.version),
        platform: model.platform,
        inputs: model.inputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: [...t.shape] })),
        outputs: model.outputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: [...t.shape] })),
      };
    },
    async modelInfer(request: ModelInferRequest, context): Promise<ModelInferResponse> {
      const envelope = validateInferEnvelope(request, deps.limits);
      const { model } = await requireVersion(envelope.modelName, envelope.modelVersion);
      if (!model.tasks.includes(ModelTask.MODEL_TASK_INFER)) {
        throw new MeshError('invalid_argument', `model ${quoteInput(model.name)} does not take tensors (ModelInfer); it supports: ${describeTasks(model)}`);
      }
      const valid = validateInferTensors(envelope, model);
      const { task, deadline } = deps.newTask(context, { $case: 'infer', infer: valid });
      let answer: ModelInferResponse | undefined;
      // Read the stream to its end (see predict): leaving early would cancel the call.
      for await (const response of deps.schedule(task, { signal: context.signal, deadline })) {
        if (response.output?.output?.$case === 'inferResponse') answer ??= response.output.output.inferResponse;
      }
      if (!answer) throw new MeshError('unavailable', `model ${quoteInput(model.name)} version ${quoteInput(model.version)} returned no outputs`);
      return { ...answer, modelName: model.name, modelVersion: answer.modelVersion || model.version, id: valid.id };
    },
    async repositoryIndex(request: RepositoryIndexRequest, context): Promise<RepositoryIndexResponse> {
      requireRepository(request.repositoryName);
      const { response } = await deps.balancer.repositoryIndex({ request }, balancerCall(context));
      return response ?? { models: [] };
    },
    async repositoryModelLoad(request: RepositoryModelLoadRequest, context): Promise<RepositoryModelLoadResponse> {
      requireRepositoryTenant(context);
      requireRepository(request.repositoryName);
      const modelName = validateRepositoryModelName('model_name', request.modelName);
      await deps.balancer.loadModel({ modelName }, balancerCall(context));
      return {};
    },
    async repositoryModelUnload(request: RepositoryModelUnloadRequest, context): Promise<RepositoryModelUnloadResponse> {
      requireRepositoryTenant(context);
      requireRepository(request.repositoryName);
      const modelName = validateRepositoryModelName('model_name', request.modelName);
      await deps.balancer.unloadModel({ modelName }, balancerCall(context));
      return {};
    },
  };
}

/** The calls a model supports, for messages. */
export function describeTasks(model: Pick<Model, 'tasks'>): string {
  const names: Record<number, string> = {
    [ModelTask.MODEL_TASK_GENERATE]: 'Generate',
    [ModelTask.MODEL_TASK_CLASSIFY]: 'Predict',
    [ModelTask.MODEL_TASK_INFER]: 'ModelInfer',
    [ModelTask.MODEL_TASK_CHAT]: 'Generate with messages',
  };
  return model.tasks.map((t) => names[t] ?? String(t)).join(', ') || 'nothing';
}
