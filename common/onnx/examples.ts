/**
 * The example models of the model repository, made here (nothing is downloaded):
 *
 * - `spam-onnx`: the built-in `spam-nb` multinomial Naive Bayes classifier as a real ONNX graph.
 *   Input `tokens` (STRING [batch, tokens], rows padded with empty strings) -> TfIdfVectorizer in
 *   TF mode over spam-nb's vocabulary (each token's count; tokens outside the vocabulary count
 *   nothing, as spam-nb ignores them) -> Cast to double -> MatMul with the per-class smoothed log
 *   likelihoods -> Add the log priors -> Softmax -> Cast -> `probabilities` (FLOAT [batch, 2],
 *   columns in label order). Scores are computed in double precision like spam-nb's.
 * - `mlp`: a multi-layer perceptron with seeded weights, `x` (FLOAT [batch, 64]) -> (Gemm, Relu)
 *   x hidden layers -> Gemm -> Softmax -> `probabilities` (FLOAT [batch, 10]), with a dynamic
 *   batch dimension and dynamic batching on in its config.json: a model for the benchmark.
 *
 * Each model comes with its Triton-style config.json (see the README's model repository section).
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomically } from '../atomic-file.js';
import { mulberry32 } from '../random.js';
import { OnnxType, encodeModel, type NodeSpec } from './graph.js';

/** The fitted parameters of a multinomial Naive Bayes classifier, as spam-nb exports them. */
export interface NaiveBayesParameters {
  /** Class names in score order. */
  readonly labels: readonly string[];
  /** Vocabulary; token i is feature i. */
  readonly vocab: readonly string[];
  /** log P(class), per class. */
  readonly logPriors: readonly number[];
  /** logLikelihoods[c][i] = log P(token i | class c), smoothed. */
  readonly logLikelihoods: readonly ArrayLike<number>[];
}

/** The repository config.json of a model (Triton's field names, as the worker reads them). */
export interface ModelConfigJson {
  description: string;
  max_batch_size: number;
  input: { name: string; data_type: string; dims: number[] }[];
  output: { name: string; data_type: string; dims: number[] }[];
  dynamic_batching?: { max_queue_delay_microseconds: number; preferred_batch_size?: number[] };
  labels?: string[];
  version_policy?: { latest: { num_versions: number } };
  parameters?: Record<string, string | number>;
}

/** A model file and its config. */
export interface ExampleModel {
  readonly name: string;
  readonly version: number;
  readonly onnx: Uint8Array;
  readonly config: ModelConfigJson;
}

/** Largest batch the example models declare. */
export const EXAMPLE_MAX_BATCH_SIZE = 64;

/** The spam-nb export; `source` names what the parameters came from (for the model's metadata). */
export function spamOnnxModel(nb: NaiveBayesParameters, source: Readonly<Record<string, string>> = {}): ExampleModel {
  const classes = nb.labels.length;
  const vocabSize = nb.vocab.length;
  if (vocabSize === 0 || classes < 2) throw new Error(`spam-onnx needs a vocabulary and at least 2 classes, given ${vocabSize} tokens and ${classes} classes`);
  if (nb.vocab.includes('')) throw new Error('spam-onnx pads rows with empty strings, so the vocabulary cannot hold one');
  // MatMul weights [vocab, classes]: row i holds token i's log likelihood under each class.
  const weights = new Float64Array(vocabSize * classes);
  for (let c = 0; c < classes; c++) {
    const column = nb.logLikelihoods[c];
    if (column.length !== vocabSize) throw new Error(`class ${c} has ${column.length} log likelihoods for ${vocabSize} tokens`);
    for (let i = 0; i < vocabSize; i++) weights[i * classes + c] = column[i];
  }
  const nodes: NodeSpec[] = [
    {
      op: 'TfIdfVectorizer',
      name: 'bag_of_words',
      inputs: ['tokens'],
      outputs: ['counts'],
      attributes: {
        mode: 'TF',
        min_gram_length: 1,
        max_gram_length: 1,
        max_skip_count: 0,
        ngram_counts: [0],
        ngram_indexes: Array.from({ length: vocabSize }, (_, i) => i),
        pool_strings: nb.vocab,
      },
    },
    { op: 'Cast', name: 'counts_to_double', inputs: ['counts'], outputs: ['counts_f64'], attributes: { to: OnnxType.DOUBLE } },
    { op: 'MatMul', name: 'log_likelihood', inputs: ['counts_f64', 'log_likelihoods'], outputs: ['token_scores'] },
    { op: 'Add', name: 'add_log_priors', inputs: ['token_scores', 'log_priors'], outputs: ['scores'] },
    { op: 'Softmax', name: 'posteriors', inputs: ['scores'], outputs: ['posteriors_f64'], attributes: { axis: -1 } },
    { op: 'Cast', name: 'posteriors_to_float', inputs: ['posteriors_f64'], outputs: ['probabilities'], attributes: { to: OnnxType.FLOAT } },
  ];
  const onnx = encodeModel({
    graphName: 'spam_onnx',
    docString: 'spam-nb (multinomial Naive Bayes over lower-cased word tokens) exported to ONNX: bag of words, MatMul, Add, Softmax.',
    inputs: [{ name: 'tokens', type: OnnxType.STRING, dims: ['batch', 'tokens'] }],
    outputs: [{ name: 'probabilities', type: OnnxType.FLOAT, dims: ['batch', classes] }],
    initializers: [
      { name: 'log_likelihoods', type: OnnxType.DOUBLE, dims: [vocabSize, classes], values: weights },
      { name: 'log_priors', type: OnnxType.DOUBLE, dims: [classes], values: Float64Array.from(nb.logPriors) },
    ],
    nodes,
    metadata: { ...source, labels: nb.labels.join(','), vocab_size: String(vocabSize) },
  });
  return {
    name: 'spam-onnx',
    version: 1,
    onnx,
    config: {
      description: 'spam-nb exported to ONNX (bag of words over its vocabulary, MatMul, Add, Softmax); send lower-cased word tokens, or text through Predict',
      max_batch_size: EXAMPLE_MAX_BATCH_SIZE,
      input: [{ name: 'tokens', data_type: 'TYPE_STRING', dims: [-1] }],
      output: [{ name: 'probabilities', data_type: 'TYPE_FP32', dims: [classes] }],
      labels: [...nb.labels],
      parameters: { text_input: 'tokens', text_tokenizer: 'words_lowercase' },
    },
  };
}

/** Shape and seed of the example perceptron. */
export interface MlpOptions {
  /** Input features (default 64). */
  readonly inputs?: number;
  /** Width of each hidden layer (default [2048, 2048]: about 3 ms a row alone, 0.25 ms a row in a batch of 64, on one core). */
  readonly hidden?: readonly number[];
  /** Output classes (default 10). */
  readonly classes?: number;
  /** Seed of the weights (default 9). */
  readonly seed?: number;
}

/** The example perceptron: deterministic weights from `seed`, dynamic batch dimension. */
export function mlpModel(options: MlpOptions = {}): ExampleModel {
  const inputs = options.inputs ?? 64;
  const hidden = options.hidden ?? [2048, 2048];
  const classes = options.classes ?? 10;
  const seed = options.seed ?? 9;
  const random = mulberry32(seed);
  const widths = [inputs, ...hidden, classes];
  const initializers = [];
  const nodes: NodeSpec[] = [];
  let previous = 'x';
  for (let layer = 0; layer + 1 < widths.length; layer++) {
    const [fanIn, fanOut] = [widths[layer], widths[layer + 1]];
    // Glorot-uniform weights keep activations of a similar size through the layers.
    const bound = Math.sqrt(6 / (fanIn + fanOut));
    const weights = Float32Array.from({ length: fanIn * fanOut }, () => (2 * random() - 1) * bound);
    const bias = Float32Array.from({ length: fanOut }, () => (2 * random() - 1) * 0.1);
    initializers.push(
      { name: `w${layer}`, type: OnnxType.FLOAT, dims: [fanIn, fanOut], values: weights },
      { name: `b${layer}`, type: OnnxType.FLOAT, dims: [fanOut], values: bias },
    );
    const last = layer + 2 === widths.length;
    nodes.push({ op: 'Gemm', name: `dense${layer}`, inputs: [previous, `w${layer}`, `b${layer}`], outputs: [last ? 'logits' : `z${layer}`] });
    if (!last) {
      nodes.push({ op: 'Relu', name: `relu${layer}`, inputs: [`z${layer}`], outputs: [`h${layer}`] });
      previous = `h${layer}`;
    }
  }
  nodes.push({ op: 'Softmax', name: 'softmax', inputs: ['logits'], outputs: ['probabilities'], attributes: { axis: -1 } });
  const onnx = encodeModel({
    graphName: 'mlp',
    docString: `Multi-layer perceptron ${widths.join('-')} with ReLU and softmax; seeded (${seed}) random weights, for benchmarks.`,
    inputs: [{ name: 'x', type: OnnxType.FLOAT, dims: ['batch', inputs] }],
    outputs: [{ name: 'probabilities', type: OnnxType.FLOAT, dims: ['batch', classes] }],
    initializers,
    nodes,
    metadata: { layers: widths.join('-'), seed: String(seed) },
  });
  return {
    name: 'mlp',
    version: 1,
    onnx,
    config: {
      description: `Multi-layer perceptron ${widths.join('-')} (ReLU, softmax) with seeded random weights, for benchmarks`,
      max_batch_size: EXAMPLE_MAX_BATCH_SIZE,
      input: [{ name: 'x', data_type: 'TYPE_FP32', dims: [inputs] }],
      output: [{ name: 'probabilities', data_type: 'TYPE_FP32', dims: [classes] }],
      // No added wait: a request runs at once when the model is idle, and requests that arrive
      // while a batch runs are stacked into the next one.
      dynamic_batching: { max_queue_delay_microseconds: 0 },
    },
  };
}

/** Writes `<out>/<name>/<version>/model.onnx` and `<out>/<name>/config.json` of each model; returns the paths written. */
export async function writeModels(out: string, models: readonly ExampleModel[]): Promise<string[]> {
  const written: string[] = [];
  for (const model of models) {
    const dir = join(out, model.name);
    await mkdir(join(dir, String(model.version)), { recursive: true });
    const onnxPath = join(dir, String(model.version), 'model.onnx');
    const configPath = join(dir, 'config.json');
    await writeFileAtomically(onnxPath, model.onnx);
    await writeFileAtomically(configPath, `${JSON.stringify(model.config, null, 2)}\n`);
    written.push(onnxPath, configPath);
  }
  return written;
}
