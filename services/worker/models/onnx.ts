/**
 * The ONNX Runtime runtime: one `InferenceSession` (onnxruntime-node, CPU) per served version of
 * a repository model. Inputs and outputs come from config.json where it names them, else from the
 * ONNX file; requests reach `infer` already checked against them (common/tensors). A model with
 * `labels` and one text (BYTES) input is also a classifier: it answers Predict and batch jobs.
 * No gRPC here: the worker's server adapts these models to the wire.
 */
import type * as Ort from 'onnxruntime-node';
import { type BatchTensor, DynamicBatcher, type TensorMap } from '../batcher.js';
import { normalizeText } from '../../../common/corpus/spam-assassin.js';
import { MeshError, quoteInput } from '../../../common/errors.js';
import { type DataType, type Tensor, type TensorData, type TensorSpecLike, elementCount } from '../../../common/tensors.js';
import { type ModelConfig, type ModelPlan, RepositoryError, type TensorConfig } from '../repository.js';
import type { InferCall, Model, ModelTask, Prediction } from './runtime.js';
import { tokenize } from './tokenizer.js';

/** The platform string of ONNX models (as Triton names it). */
export const ONNX_PLATFORM = 'onnxruntime_onnx';

/** Options of {@link loadOnnxModel}. */
export interface OnnxOptions {
  /** Intra-op threads when the model's config does not set parameters.intra_op_threads. */
  intraOpThreads: number;
  /** Most requests that may wait in one model version's dynamic batcher (the worker's slots bound it anyway). */
  maxBatchQueue: number;
  /** Told of each dynamic batch run: the model and the requests in it (for metrics). */
  onBatch?: (model: string, requests: number) => void;
}

const ORT_TO_DATATYPE: Record<string, DataType> = {
  bool: 'BOOL',
  uint8: 'UINT8',
  uint16: 'UINT16',
  uint32: 'UINT32',
  uint64: 'UINT64',
  int8: 'INT8',
  int16: 'INT16',
  int32: 'INT32',
  int64: 'INT64',
  float16: 'FP16',
  float32: 'FP32',
  float64: 'FP64',
  string: 'BYTES',
};

const DATATYPE_TO_ORT = Object.fromEntries(Object.entries(ORT_TO_DATATYPE).map(([ort, dt]) => [dt, ort])) as Record<DataType, string>;

let ortModule: Promise<typeof Ort> | undefined;
/** onnxruntime-node, loaded on first use (a worker with no repository model never loads it). */
function onnxRuntime(): Promise<typeof Ort> {
  ortModule ??= import('onnxruntime-node');
  return ortModule;
}

/** A protocol tensor as an ONNX Runtime tensor (BYTES elements become UTF-8 strings). */
export function toOrtTensor(ort: typeof Ort, tensor: Tensor): Ort.Tensor {
  const type = DATATYPE_TO_ORT[tensor.datatype];
  const data = tensor.datatype === 'BYTES' ? (tensor.data as Buffer[]).map((b) => b.toString('utf8')) : tensor.data;
  return new ort.Tensor(type as 'float32', data as Float32Array, [...tensor.shape]);
}

/** An ONNX Runtime result as a protocol tensor. */
export function fromOrtTensor(name: string, value: BatchTensor): Tensor {
  const datatype = ORT_TO_DATATYPE[value.type];
  if (datatype === undefined) throw new MeshError('failed_precondition', `output ${quoteInput(name)} has type ${value.type}, which the protocol cannot carry`);
  let data: TensorData;
  if (datatype === 'BYTES') data = (value.data as readonly string[]).map((s) => Buffer.from(s, 'utf8'));
  else if (datatype === 'FP16' && !(value.data instanceof Uint16Array)) {
    const v = value.data as ArrayBufferView;
    data = new Uint16Array(v.buffer, v.byteOffset, v.byteLength / 2);
  } else data = value.data as TensorData;
  return { name, datatype, shape: value.dims.map(Number), data };
}

/** A spec from the file's metadata, overridden by config.json where it names the tensor. */
function resolveSpecs(kind: 'input' | 'output', file: readonly Ort.InferenceSession.ValueMetadata[], configured: readonly TensorConfig[], maxBatchSize: number, where: string): TensorSpecLike[] {
  const byName = new Map(configured.map((c) => [c.name, c]));
  const fileNames = new Set(file.map((m) => m.name));
  for (const c of configured) {
    if (!fileNames.has(c.name)) throw new RepositoryError('invalid', `${where}: config.json ${kind} ${JSON.stringify(c.name)} is not an ${kind} of the model file, whose ${kind}s are ${[...fileNames].join(', ')}`);
  }
  return file.map((meta) => {
    const c = byName.get(meta.name);
    const label = `${where}: ${kind} ${JSON.stringify(meta.name)}`;
    if (!meta.isTensor) throw new RepositoryError('invalid', `${label} is not a tensor (ONNX sequences and maps are not served)`);
    const fileType = ORT_TO_DATATYPE[meta.type];
    if (fileType === undefined) throw new RepositoryError('invalid', `${label} has element type ${meta.type}, which the mesh does not serve`);
    if (c?.datatype !== undefined && c.datatype !== fileType) {
      throw new RepositoryError('invalid', `${label}: config.json data_type ${c.datatype} differs from the file's ${fileType}`);
    }
    const fileShape = meta.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : -1));
    let shape = fileShape;
    if (c?.dims !== undefined) {
      shape = maxBatchSize > 0 ? [-1, ...c.dims] : [...c.dims];
      if (fileShape.length > 0) {
        if (fileShape.length !== shape.length) {
          throw new RepositoryError('invalid', `${label}: config.json dims give ${shape.length} dimensions${maxBatchSize > 0 ? ' (with the batch)' : ''}, the file has ${fileShape.length} [${fileShape.join(', ')}]`);
        }
        shape.forEach((d, i) => {
          if (d >= 0 && fileShape[i] >= 0 && d !== fileShape[i]) {
            throw new RepositoryError('invalid', `${label}: config.json dims make dimension ${i} ${d}, the file says ${fileShape[i]}`);
          }
        });
      }
    } else if (maxBatchSize > 0) {
      if (shape.length === 0) throw new RepositoryError('invalid', `${label}: max_batch_size ${maxBatchSize} needs a batch dimension, the file gives the ${kind} no shape`);
      if (shape[0] !== -1) throw new RepositoryError('invalid', `${label}: max_batch_size ${maxBatchSize} needs a variable first dimension, the file fixes it to ${shape[0]}`);
    }
    return { name: meta.name, datatype: fileType, shape };
  });
}

/** Loads every version of a planned model; on any failure the sessions already made are released. */
export async function loadOnnxModel(plan: ModelPlan, options: OnnxOptions): Promise<Model[]> {
  const loaded: Model[] = [];
  try {
    for (const { version, file } of plan.versions) loaded.push(await loadVersion(plan, String(version), file, options));
  } catch (err) {
    await Promise.all(loaded.map((m) => m.release?.()));
    throw err;
  }
  return loaded;
}

async function loadVersion(plan: ModelPlan, version: string, file: string, options: OnnxOptions): Promise<Model> {
  const ort = await onnxRuntime();
  const { config, name } = plan;
  const where = `model ${JSON.stringify(name)} version ${version}`;
  let session: Ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(file, {
      executionProviders: ['cpu'],
      intraOpNumThreads: config.intraOpThreads ?? options.intraOpThreads,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
    });
  } catch (err) {
    // ONNX Runtime's message names the problem in the file; the path stays out of it.
    throw new RepositoryError('invalid', `${where}: model.onnx does not load in ONNX Runtime: ${String((err as Error).message).split(file).join('model.onnx').slice(0, 200)}`);
  }
  try {
    const inputs = resolveSpecs('input', session.inputMetadata, config.inputs, config.maxBatchSize, where);
    const outputs = resolveSpecs('output', session.outputMetadata, config.outputs, config.maxBatchSize, where);
    return onnxModel({ ort, session, name, version, config, inputs, outputs, options, where });
  } catch (err) {
    await session.release();
    throw err;
  }
}

interface OnnxModelParts {
  ort: typeof Ort;
  session: Ort.InferenceSession;
  name: string;
  version: string;
  config: ModelConfig;
  inputs: TensorSpecLike[];
  outputs: TensorSpecLike[];
  options: OnnxOptions;
  where: string;
}

function onnxModel(parts: OnnxModelParts): Model {
  const { ort, session, name, version, config, inputs, outputs, options } = parts;
  const textInput = classifierInput(parts);
  const tasks: ModelTask[] = textInput ? ['infer', 'classify'] : ['infer'];
  const runOnSession = async (feeds: TensorMap): Promise<TensorMap> => {
    // Stacked inputs are plain {type, dims, data} objects; ONNX Runtime takes only its Tensors.
    const tensors: Record<string, Ort.Tensor> = {};
    for (const [k, t] of Object.entries(feeds)) tensors[k] = t instanceof ort.Tensor ? t : new ort.Tensor(t.type as 'float32', t.data as Float32Array, [...t.dims]);
    return (await session.run(tensors)) as TensorMap;
  };
  // With dynamic_batching, calls close together run as one batch (services/worker/batcher.ts);
  // the batcher belongs to this session, so a reload's new session batches apart from the old.
  const batching = config.dynamicBatching;
  const batcher = batching && new DynamicBatcher({ run: (batch) => runOnSession(batch.inputs), maxQueuedRequests: options.maxBatchQueue, onBatch: (requests) => options.onBatch?.(name, requests) });
  const policy = batching && { maxBatchSize: config.maxBatchSize, maxQueueDelayMs: batching.maxQueueDelayMs, preferredBatchSizes: batching.preferredBatchSizes };

  async function infer(call: InferCall, signal: AbortSignal): Promise<Tensor[]> {
    signal.throwIfAborted();
    const feeds: Record<string, Ort.Tensor> = {};
    for (const t of call.inputs) feeds[t.name] = toOrtTensor(ort, t);
    const results: TensorMap =
      batcher && policy
        ? await batcher.submit({ model: name, version, inputs: feeds, policy, signal, deadline: call.deadline, spanContext: call.spanContext })
        : await runOnSession(feeds);
    signal.throwIfAborted();
    const wanted = call.outputs.length > 0 ? call.outputs : outputs.map((o) => o.name);
    return wanted.map((o) => {
      const value = results[o];
      if (!value) throw new MeshError('failed_precondition', `model ${quoteInput(name)} gave no output ${quoteInput(o)}`);
      return fromOrtTensor(o, value);
    });
  }

  const model: Model = {
    info: {
      name,
      version,
      description: config.description || `ONNX model ${name}, version ${version}.`,
      tasks,
      labels: config.labels,
      metadata: {
        runtime: `onnxruntime-node ${ort.env.versions.common ?? ''}`.trim(),
        intra_op_threads: String(config.intraOpThreads ?? options.intraOpThreads),
        dynamic_batching: batching ? `max_queue_delay_ms=${batching.maxQueueDelayMs}` + (batching.preferredBatchSizes.length ? ` preferred_batch_size=${batching.preferredBatchSizes.join(',')}` : '') : 'off',
      },
      platform: ONNX_PLATFORM,
      inputs,
      outputs,
      maxBatchSize: config.maxBatchSize,
    },
    infer,
    release: () => session.release(),
    ...(batcher && { batchStats: () => ({ batches: batcher.stats.batches, rows: batcher.stats.rows }) }),
  };
  if (textInput) {
    model.predict = (text, signal) => classify(text, signal, textInput, model, infer, config);
  }
  return model;
}

/**
 * The text input of a classifier: a model with labels and one BYTES input (named by
 * parameters.text_input when set); undefined when the model is not one.
 */
function classifierInput({ config, inputs, outputs, where }: OnnxModelParts): TensorSpecLike | undefined {
  if (config.labels.length === 0) return undefined;
  if (config.textInput !== undefined) {
    const spec = inputs.find((i) => i.name === config.textInput);
    if (!spec) throw new RepositoryError('invalid', `${where}: parameters.text_input ${JSON.stringify(config.textInput)} is not an input; the inputs are ${inputs.map((i) => i.name).join(', ')}`);
    if (spec.datatype !== 'BYTES' || inputs.length !== 1) {
      throw new RepositoryError('invalid', `${where}: parameters.text_input needs the model's only input to be BYTES, given ${inputs.length} inputs, ${JSON.stringify(spec.name)} ${spec.datatype}`);
    }
  }
  if (inputs.length !== 1 || inputs[0].datatype !== 'BYTES' || outputs.length === 0) return undefined;
  const last = outputs[0].shape.at(-1);
  if (last !== undefined && last >= 0 && last !== config.labels.length) {
    throw new RepositoryError('invalid', `${where}: labels has ${config.labels.length} entries, the output ${JSON.stringify(outputs[0].name)} gives ${last} per row`);
  }
  return inputs[0];
}

/** Predict on a classifier: text into the input (tokenized when the config says so), argmax of the first output. */
async function classify(text: string, signal: AbortSignal, input: TensorSpecLike, model: Model, infer: Model['infer'] & {}, config: ModelConfig): Promise<Prediction> {
  // The same cleaning and tokenizer as spam-nb, so an export of it predicts as it does.
  const elements = config.textTokenizer === 'words_lowercase' ? tokenize(normalizeText(text), { lowercase: true }) : [text];
  if (elements.length === 0) elements.push('');
  // [n] for a rank-1 input, [1, n] for rank 2 (batch, tokens), ones before that for higher ranks.
  const rank = Math.max(input.shape.length, 1);
  const shape = [...Array<number>(rank - 1).fill(1), elements.length];
  const [first] = await infer({ inputs: [{ name: input.name, datatype: 'BYTES', shape, data: elements.map((e) => Buffer.from(e, 'utf8')) }], outputs: [model.info.outputs![0].name] }, signal);
  const labels = model.info.labels;
  const row = first.data as ArrayLike<number | bigint>;
  const values = Array.from({ length: labels.length }, (_, i) => Number(row[i]));
  if (elementCount(first.shape) < labels.length || values.some((v) => !Number.isFinite(v))) {
    throw new MeshError('failed_precondition', `model ${quoteInput(model.info.name)} gave ${elementCount(first.shape)} values for ${labels.length} labels`);
  }
  let best = 0;
  values.forEach((v, i) => (v > values[best] ? (best = i) : undefined));
  return { label: labels[best], probabilities: Object.fromEntries(labels.map((l, i) => [l, values[i]])), text: '' };
}
