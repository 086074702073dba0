/**
 * The model repository, laid out as Triton lays it out: `<root>/<model>/<version>/model.onnx`
 * (a version is a positive integer folder) plus an optional `<root>/<model>/config.json`. This
 * module reads the folder and parses and validates config.json; it imports no gRPC and no
 * runtime (the ONNX runtime turns a {@link ModelConfig} into sessions).
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { DATATYPES, type DataType } from '../../common/tensors';

/** The file a version folder must hold. */
export const MODEL_FILE = 'model.onnx';
/** The optional per-model settings file. */
export const CONFIG_FILE = 'config.json';
/** Model folder names: what a model name may be in the mesh (no ':' so it never clashes with a mapper). */
export const MODEL_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** A model's failure to load, with a message fit for the caller and the logs. */
export class RepositoryError extends Error {
  override name = 'RepositoryError';
  constructor(
    /** `not_found`: no such model folder or version; `invalid`: its files or config do not load. */
    readonly kind: 'not_found' | 'invalid',
    message: string,
  ) {
    super(message);
  }
}

/** One input or output as config.json declares it (dims exclude the batch dimension when max_batch_size > 0). */
export interface TensorConfig {
  name: string;
  datatype?: DataType;
  dims?: number[];
}

/** Which versions of a model to serve. */
export type VersionPolicy = { latest: number } | { all: true } | { specific: number[] };

/** A model's config.json, validated, with its defaults filled in. */
export interface ModelConfig {
  description: string;
  /** 0: the model does not batch; > 0: its tensors' first dimension is the batch, at most this. */
  maxBatchSize: number;
  /** Inputs the config names (possibly none: then the ONNX file says them). */
  inputs: TensorConfig[];
  /** Outputs the config names. */
  outputs: TensorConfig[];
  /** Dynamic batching, when the config turns it on. */
  dynamicBatching?: { maxQueueDelayMs: number; preferredBatchSizes: number[] };
  /** A classifier's labels, in the order of its probability output's last axis. */
  labels: string[];
  versionPolicy: VersionPolicy;
  /** ONNX Runtime intra-op threads for this model; undefined: the worker's --onnx-intra-op-threads. */
  intraOpThreads?: number;
  /** For a classifier: the input that text goes into, and how text becomes it. */
  textInput?: string;
  textTokenizer?: 'words_lowercase';
}

/** Data type names config.json accepts: the protocol's (FP32) and Triton's (TYPE_FP32, TYPE_STRING). */
function parseDataType(value: unknown, field: string): DataType {
  if (typeof value !== 'string') throw invalid(`${field} must be a data type string such as "TYPE_FP32" or "FP32", given ${describe(value)}`);
  const bare = value.startsWith('TYPE_') ? value.slice(5) : value;
  const name = bare === 'STRING' ? 'BYTES' : bare;
  if (name === 'BF16') throw invalid(`${field} BF16 is not supported by ONNX Runtime for Node`);
  if (!(DATATYPES as readonly string[]).includes(name)) throw invalid(`${field} must be one of ${DATATYPES.join(', ')} (or TYPE_<name>), given ${JSON.stringify(value.slice(0, 40))}`);
  return name as DataType;
}

const TOP_LEVEL_FIELDS = new Set(['name', 'platform', 'backend', 'description', 'max_batch_size', 'input', 'output', 'dynamic_batching', 'labels', 'version_policy', 'parameters']);
const PARAMETERS = new Set(['intra_op_threads', 'text_input', 'text_tokenizer']);
/** Most threads a model may ask ONNX Runtime for. */
export const MAX_INTRA_OP_THREADS = 256;
/** Longest queue delay dynamic batching accepts, in microseconds (10 s). */
const MAX_QUEUE_DELAY_US = 10_000_000;

function invalid(message: string): RepositoryError {
  return new RepositoryError('invalid', message);
}

function describe(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 40 ? `${text.slice(0, 37)}...` : text;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function integerIn(value: unknown, field: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw invalid(`${field} must be an integer from ${min} to ${max}, given ${describe(value)}`);
  }
  return value;
}

function tensorConfigs(value: unknown, field: string): TensorConfig[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw invalid(`${field} must be an array, given ${describe(value)}`);
  const seen = new Set<string>();
  return value.map((entry, i) => {
    const at = `${field}[${i}]`;
    if (!isObject(entry)) throw invalid(`${at} must be an object, given ${describe(entry)}`);
    if (typeof entry.name !== 'string' || entry.name === '') throw invalid(`${at}.name must be a non-empty string, given ${describe(entry.name)}`);
    if (seen.has(entry.name)) throw invalid(`${at}.name ${JSON.stringify(entry.name)} is declared twice`);
    seen.add(entry.name);
    const spec: TensorConfig = { name: entry.name };
    if (entry.data_type !== undefined) spec.datatype = parseDataType(entry.data_type, `${at}.data_type`);
    if (entry.dims !== undefined) {
      if (!Array.isArray(entry.dims)) throw invalid(`${at}.dims must be an array of integers, given ${describe(entry.dims)}`);
      spec.dims = entry.dims.map((d, j) => integerIn(d, `${at}.dims[${j}]`, -1, Number.MAX_SAFE_INTEGER));
    }
    return spec;
  });
}

function versionPolicy(value: unknown): VersionPolicy {
  if (value === undefined) return { latest: 1 };
  const field = 'version_policy';
  if (!isObject(value) || Object.keys(value).length !== 1) {
    throw invalid(`${field} must be one of {"latest":{"num_versions":n}}, {"all":{}}, {"specific":{"versions":[...]}}, given ${describe(value)}`);
  }
  if ('latest' in value) {
    const latest = value.latest;
    if (!isObject(latest)) throw invalid(`${field}.latest must be an object, given ${describe(latest)}`);
    return { latest: latest.num_versions === undefined ? 1 : integerIn(latest.num_versions, `${field}.latest.num_versions`, 1, 1000) };
  }
  if ('all' in value) return { all: true };
  if ('specific' in value) {
    const specific = value.specific;
    if (!isObject(specific) || !Array.isArray(specific.versions) || specific.versions.length === 0) {
      throw invalid(`${field}.specific.versions must be a non-empty array of positive integers, given ${describe(specific)}`);
    }
    return { specific: specific.versions.map((v, i) => integerIn(v, `${field}.specific.versions[${i}]`, 1, Number.MAX_SAFE_INTEGER)) };
  }
  throw invalid(`${field} must have "latest", "all" or "specific", given ${describe(Object.keys(value)[0])}`);
}

/**
 * Parses and validates a config.json's text for the model folder `model`. Errors name the field
 * (`config.json of model "m": max_batch_size must be ...`).
 */
export function parseModelConfig(text: string | undefined, model: string): ModelConfig {
  try {
    return parseConfig(text, model);
  } catch (err) {
    if (err instanceof RepositoryError) throw new RepositoryError(err.kind, `${CONFIG_FILE} of model ${JSON.stringify(model)}: ${err.message}`);
    throw err;
  }
}

function parseConfig(text: string | undefined, model: string): ModelConfig {
  let raw: unknown = {};
  if (text !== undefined) {
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw invalid(`is not valid JSON (${(err as Error).message.slice(0, 80)})`);
    }
  }
  if (!isObject(raw)) throw invalid(`must be a JSON object, given ${describe(raw)}`);
  const unknown = Object.keys(raw).filter((k) => !TOP_LEVEL_FIELDS.has(k));
  if (unknown.length > 0) throw invalid(`unknown field ${describe(unknown[0])}; the fields are ${[...TOP_LEVEL_FIELDS].join(', ')}`);
  if (raw.name !== undefined && raw.name !== model) throw invalid(`name must be the folder's name ${JSON.stringify(model)}, given ${describe(raw.name)}`);
  for (const key of ['platform', 'backend'] as const) {
    const ok = key === 'platform' ? ['onnxruntime_onnx'] : ['onnxruntime'];
    if (raw[key] !== undefined && !ok.includes(raw[key] as string)) throw invalid(`${key} must be ${JSON.stringify(ok[0])}, given ${describe(raw[key])}`);
  }
  if (raw.description !== undefined && typeof raw.description !== 'string') throw invalid(`description must be a string, given ${describe(raw.description)}`);
  const maxBatchSize = raw.max_batch_size === undefined ? 0 : integerIn(raw.max_batch_size, 'max_batch_size', 0, 1 << 20);
  const config: ModelConfig = {
    description: (raw.description as string | undefined) ?? '',
    maxBatchSize,
    inputs: tensorConfigs(raw.input, 'input'),
    outputs: tensorConfigs(raw.output, 'output'),
    labels: [],
    versionPolicy: versionPolicy(raw.version_policy),
  };
  if (raw.dynamic_batching !== undefined) {
    const db = raw.dynamic_batching;
    if (!isObject(db)) throw invalid(`dynamic_batching must be an object, given ${describe(db)}`);
    if (maxBatchSize === 0) throw invalid('dynamic_batching needs max_batch_size > 0, given 0');
    const delayUs = db.max_queue_delay_microseconds === undefined ? 0 : integerIn(db.max_queue_delay_microseconds, 'dynamic_batching.max_queue_delay_microseconds', 0, MAX_QUEUE_DELAY_US);
    const preferred = db.preferred_batch_size === undefined ? [] : db.preferred_batch_size;
    if (!Array.isArray(preferred)) throw invalid(`dynamic_batching.preferred_batch_size must be an array, given ${describe(preferred)}`);
    config.dynamicBatching = {
      maxQueueDelayMs: delayUs / 1000,
      preferredBatchSizes: preferred.map((p, i) => integerIn(p, `dynamic_batching.preferred_batch_size[${i}]`, 1, maxBatchSize)),
    };
  }
  if (raw.labels !== undefined) {
    if (!Array.isArray(raw.labels) || raw.labels.some((l) => typeof l !== 'string' || l === '')) {
      throw invalid(`labels must be an array of non-empty strings, given ${describe(raw.labels)}`);
    }
    if (new Set(raw.labels).size !== raw.labels.length) throw invalid('labels must not repeat a label');
    config.labels = raw.labels as string[];
  }
  if (raw.parameters !== undefined) {
    const p = raw.parameters;
    if (!isObject(p)) throw invalid(`parameters must be an object, given ${describe(p)}`);
    const unknownParam = Object.keys(p).find((k) => !PARAMETERS.has(k));
    if (unknownParam) throw invalid(`parameters has unknown key ${describe(unknownParam)}; the keys are ${[...PARAMETERS].join(', ')}`);
    // Triton writes parameters as {"key": {"string_value": "..."}}; both forms are read.
    const value = (v: unknown) => (isObject(v) && 'string_value' in v ? v.string_value : v);
    if (p.intra_op_threads !== undefined) {
      const v = value(p.intra_op_threads);
      config.intraOpThreads = integerIn(typeof v === 'string' ? Number(v) : v, 'parameters.intra_op_threads', 1, MAX_INTRA_OP_THREADS);
    }
    if (p.text_input !== undefined) {
      const v = value(p.text_input);
      if (typeof v !== 'string' || v === '') throw invalid(`parameters.text_input must be an input's name, given ${describe(v)}`);
      config.textInput = v;
    }
    if (p.text_tokenizer !== undefined) {
      const v = value(p.text_tokenizer);
      if (v !== 'words_lowercase') throw invalid(`parameters.text_tokenizer must be "words_lowercase", given ${describe(v)}`);
      config.textTokenizer = v;
    }
  }
  return config;
}

/** The versions to serve among those present, under a policy; sorted ascending. */
export function selectVersions(available: readonly number[], policy: VersionPolicy): number[] {
  const sorted = [...available].sort((a, b) => a - b);
  if ('all' in policy) return sorted;
  if ('latest' in policy) return sorted.slice(-policy.latest);
  return sorted.filter((v) => policy.specific.includes(v));
}

/** A model folder of the repository as found on disk. */
export interface RepositoryEntry {
  name: string;
  /** Version folders holding a model.onnx, ascending. */
  versions: number[];
}

/** The model folders of the repository (a missing repository has none), sorted by name. */
export async function scanRepository(root: string): Promise<RepositoryEntry[]> {
  let names: string[];
  try {
    names = (await readdir(root, { withFileTypes: true })).filter((d) => d.isDirectory() && MODEL_NAME_PATTERN.test(d.name)).map((d) => d.name);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const entries = await Promise.all(names.sort().map(async (name) => ({ name, versions: await modelVersions(join(root, name)) })));
  return entries;
}

/** The version folders of a model folder that hold a model.onnx, ascending. */
export async function modelVersions(dir: string): Promise<number[]> {
  const found: number[] = [];
  for (const d of await readdir(dir, { withFileTypes: true })) {
    if (!d.isDirectory() || !/^[1-9][0-9]{0,14}$/.test(d.name)) continue;
    const file = await stat(join(dir, d.name, MODEL_FILE)).catch(() => undefined);
    if (file?.isFile()) found.push(Number(d.name));
  }
  return found.sort((a, b) => a - b);
}

/** What loading a model needs from the repository: its config and the files of the versions to serve. */
export interface ModelPlan {
  name: string;
  config: ModelConfig;
  /** Version number and model.onnx path of each version to serve, ascending. */
  versions: { version: number; file: string }[];
}

/**
 * Reads a model folder: its config.json (if any) and the versions its policy selects.
 * RepositoryError `not_found` when the folder is missing, `invalid` when the config does not
 * parse or no version is left to serve.
 */
export async function planModel(root: string, name: string): Promise<ModelPlan> {
  if (!MODEL_NAME_PATTERN.test(name)) throw new RepositoryError('not_found', `model ${JSON.stringify(name.slice(0, 40))} is not a folder of the model repository (names match ${MODEL_NAME_PATTERN})`);
  const dir = join(root, name);
  const folder = await stat(dir).catch(() => undefined);
  if (!folder?.isDirectory()) throw new RepositoryError('not_found', `model ${JSON.stringify(name)} is not a folder of the model repository`);
  const text = await readFile(join(dir, CONFIG_FILE), 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  const config = parseModelConfig(text, name);
  const available = await modelVersions(dir);
  if (available.length === 0) throw invalid(`model ${JSON.stringify(name)} has no version folder <n>/${MODEL_FILE}`);
  const versions = selectVersions(available, config.versionPolicy);
  if (versions.length === 0) {
    throw invalid(`model ${JSON.stringify(name)}: version_policy selects none of the versions present (${available.join(', ')})`);
  }
  return { name, config, versions: versions.map((version) => ({ version, file: join(dir, String(version), MODEL_FILE) })) };
}
