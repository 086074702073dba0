/**
 * Validation of a KServe v2 ModelInferRequest at the edge, in three steps: the fields that need no
 * model (names, ids, parameters, sizes), the version (an empty one resolves to the newest served),
 * then the tensors against the model's metadata (common/tensors.ts, the checks the worker's codec
 * shares). Each refusal names the field, the limit and what was given. No gRPC here.
 */
import { MeshError, invalidField, quoteInput } from '../common/errors';
import { AFFINITY_KEY_PARAMETER, INFER_PRIORITIES, InferParameterLike, PRIORITY_PARAMETER } from '../common/infer-parameters';
import { InferRequestLike, TensorModelLike, checkInferRequest, elementCount } from '../common/tensors';
import { MAX_AFFINITY_KEY_CHARS, validateModelName } from './validation';

/** Longest model version. */
export const MAX_VERSION_CHARS = 64;
/** Longest request id (echoed in the response). */
export const MAX_REQUEST_ID_CHARS = 256;
/** Most request parameters, and the longest key and string value of one. */
export const MAX_PARAMETERS = 32;
export const MAX_PARAMETER_KEY_CHARS = 128;
export const MAX_PARAMETER_VALUE_CHARS = 1024;
/** Most dimensions of a tensor's shape. */
export const MAX_SHAPE_DIMS = 32;

/** Limits from the gateway's config. */
export interface InferLimits {
  /** Most elements one input tensor may have (--max-tensor-elements). */
  maxTensorElements: number;
}

/** The fields of inference.ModelInferRequest validation reads (the generated type fits). */
export interface InferRequestFields extends InferRequestLike {
  modelVersion: string;
  id: string;
  parameters: { [key: string]: InferParameterLike };
}

/** A version of a model, as the catalog lists it (maas.v1.Model fits). */
export interface ModelVersionLike extends TensorModelLike {
  version: string;
}

/**
 * Step 1: checks what needs no model: model_name, model_version, id, parameters (priority and
 * affinity_key as the mesh reads them) and the size of every input. Returns the request with
 * `priority` normalised.
 */
export function validateInferEnvelope<T extends InferRequestFields>(request: T, limits: InferLimits): T {
  validateModelName('model_name', request.modelName);
  if (request.modelVersion.length > MAX_VERSION_CHARS) throw invalidField('model_version', `must be at most ${MAX_VERSION_CHARS} characters`, request.modelVersion);
  if (request.id.length > MAX_REQUEST_ID_CHARS) throw invalidField('id', `must be at most ${MAX_REQUEST_ID_CHARS} characters`, request.id);
  const parameters = validateParameters(request.parameters);
  request.inputs.forEach((input, i) => {
    const label = `inputs[${i}] ${quoteInput(input.name)}`;
    if (input.shape.length > MAX_SHAPE_DIMS) throw new MeshError('invalid_argument', `${label}: shape must have at most ${MAX_SHAPE_DIMS} dimensions, given ${input.shape.length}`);
    const count = elementCount(input.shape);
    if (count > limits.maxTensorElements) {
      throw new MeshError('invalid_argument', `${label}: a tensor may have at most ${limits.maxTensorElements} elements (--max-tensor-elements), given shape [${input.shape.join(', ')}] with ${count}`);
    }
  });
  return { ...request, parameters };
}

function validateParameters(parameters: { [key: string]: InferParameterLike }): { [key: string]: InferParameterLike } {
  const keys = Object.keys(parameters);
  if (keys.length > MAX_PARAMETERS) throw invalidField('parameters', `must have at most ${MAX_PARAMETERS} entries`, keys.length);
  for (const key of keys) {
    if (key.length > MAX_PARAMETER_KEY_CHARS) throw invalidField('parameters', `keys must be at most ${MAX_PARAMETER_KEY_CHARS} characters`, key);
    const choice = parameters[key].parameterChoice;
    if (choice?.$case === 'stringParam' && String(choice.stringParam).length > MAX_PARAMETER_VALUE_CHARS) {
      throw invalidField(`parameters[${quoteInput(key)}]`, `must be at most ${MAX_PARAMETER_VALUE_CHARS} characters`, String(choice.stringParam));
    }
  }
  const out = { ...parameters };
  const priority = parameters[PRIORITY_PARAMETER]?.parameterChoice;
  if (priority !== undefined) {
    const value = priority.$case === 'stringParam' ? String(priority.stringParam).toLowerCase() : undefined;
    if (value === undefined || !(INFER_PRIORITIES as readonly string[]).includes(value)) {
      const field = `parameters["${PRIORITY_PARAMETER}"]`;
      const limit = `must be a string_param, one of ${INFER_PRIORITIES.join(', ')}`;
      if (priority.$case === 'stringParam') throw invalidField(field, limit, String(priority.stringParam));
      throw new MeshError('invalid_argument', `${field} ${limit}, given ${protoCase(priority.$case)}`);
    }
    out[PRIORITY_PARAMETER] = { parameterChoice: { $case: 'stringParam', stringParam: value } };
  }
  const affinity = parameters[AFFINITY_KEY_PARAMETER]?.parameterChoice;
  if (affinity !== undefined) {
    if (affinity.$case !== 'stringParam') throw new MeshError('invalid_argument', `parameters["${AFFINITY_KEY_PARAMETER}"] must be a string_param, given ${protoCase(affinity.$case)}`);
    const key = String(affinity.stringParam);
    if (key.length > MAX_AFFINITY_KEY_CHARS) throw invalidField(`parameters["${AFFINITY_KEY_PARAMETER}"]`, `must be at most ${MAX_AFFINITY_KEY_CHARS} characters`, key);
  }
  return out;
}

/** `int64Param` as the proto names it: `an int64_param`. */
function protoCase(c: string): string {
  const name = c.replace(/[A-Z]/g, (m) => `_${m.toLowerCase()}`);
  return `${/^[aeiou]/.test(name) ? 'an' : 'a'} ${name}`;
}

/**
 * Step 2: the version the call asks for, from the model's versions (newest first). An empty
 * version is the newest served (`newest`). NOT_FOUND names the model, or the version and the
 * versions that exist.
 */
export function resolveModelVersion<M extends ModelVersionLike>(name: string, version: string, versions: readonly M[], newest: M | undefined): M {
  if (versions.length === 0 || newest === undefined) throw new MeshError('not_found', `model ${quoteInput(name)} not found`);
  if (version === '') return newest;
  const found = versions.find((m) => m.version === version);
  if (!found) {
    throw new MeshError('not_found', `model ${quoteInput(name)} has no version ${quoteInput(version)}; versions served: ${versions.map((m) => m.version).join(', ')}`);
  }
  return found;
}

/**
 * Step 3: the tensors against the model's metadata; returns the request with model_version set,
 * as the worker expects it.
 */
export function validateInferTensors<T extends InferRequestFields>(request: T, model: ModelVersionLike): T {
  checkInferRequest(request, model);
  return { ...request, modelVersion: model.version };
}
