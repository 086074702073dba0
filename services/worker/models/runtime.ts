/**
 * The runtime interface between the worker and the models it hosts.
 *
 * A runtime (built-in models, ONNX Runtime, an OpenAI-compatible upstream, ...) loads a set of
 * models; each model declares which calls it supports. Nothing here knows about gRPC: the worker's
 * server adapts these types to the wire.
 */

import type { SpanContext } from '@opentelemetry/api';
import type { Tensor, TensorSpecLike } from '../../../common/tensors';

/**
 * A kind of call a model supports: `generate` streams tokens, `classify` answers Predict, `infer`
 * takes and returns tensors (the KServe v2 protocol's ModelInfer), `chat` continues a
 * conversation (GenerateParams.messages) with the model's chat template.
 */
export type ModelTask = 'generate' | 'classify' | 'infer' | 'chat';

/** What a model tells the mesh about itself (listed by the worker, advertised to the balancer). */
export interface ModelInfo {
  /** Unique model name within the mesh, e.g. `spam-nb`. */
  name: string;
  /** Version of the model's code and training parameters, e.g. `1`. */
  version: string;
  /** One human-readable sentence on what the model does. */
  description: string;
  /** Which calls the model supports: `generate` (streamed tokens) and/or `classify` (Predict). */
  tasks: ModelTask[];
  /** The labels a classifier can return; empty for a model that only generates. */
  labels: string[];
  /** Free-form facts about the model (dataset, held-out metrics, sizes), as strings. */
  metadata: Record<string, string>;
  /** The runtime that runs it: `maas_builtin` (default) or `onnxruntime_onnx`. */
  platform?: string;
  /** Input tensors, for a model that supports `infer` (-1: a dimension of any size). */
  inputs?: TensorSpecLike[];
  /** Output tensors, for a model that supports `infer`. */
  outputs?: TensorSpecLike[];
  /** > 0: the first dimension of every tensor is the batch, at most this large; 0 when it does not batch. */
  maxBatchSize?: number;
  /** Longest prompt plus output, in tokens, for a generative model with a fixed context; 0 or absent when none. */
  contextLength?: number;
}

/** One tensor inference: inputs already checked against the model's specs. */
export interface InferCall {
  /** The inputs, one per model input. */
  inputs: Tensor[];
  /** Names of the outputs to return; empty means all, in the model's order. */
  outputs: string[];
  /** Absolute deadline (epoch ms), if any. */
  deadline?: number;
  /** The span of the call, linked from a batch run's span when the call is batched. */
  spanContext?: SpanContext;
}

/** Parameters of one generate call. */
export interface GenerateParams {
  /** Text the output continues. */
  prompt: string;
  /** Upper bound on the number of generated tokens. */
  maxTokens: number;
  /** Sampling temperature: 0 is greedy (argmax); larger values flatten the distribution. */
  temperature: number;
  /** Seed of the sampler; the same seed and parameters give the same output. Random if absent. */
  seed?: number;
  /** Output stops before the first occurrence of any of these strings; they are never emitted. */
  stop: string[];
  /** A conversation to continue (a model with the `chat` task); `prompt` is then empty. */
  messages?: ChatMessage[];
  /** Nucleus sampling: sample only from the most likely tokens whose probabilities add up to this, in (0, 1]; absent: 1. */
  topP?: number;
}

/** One turn of a conversation. */
export interface ChatMessage {
  /** `system`, `user` or `assistant`. */
  role: string;
  content: string;
}

/**
 * Why a generation ended: `length` (max tokens reached), `stop` (a stop sequence was found),
 * `end` (the model produced its end-of-text token or ran out of input).
 */
export type FinishReason = 'length' | 'stop' | 'end';

/** One piece of a streamed generation. */
export interface GeneratedChunk {
  /** Text to append to everything received so far (may be '' on the last chunk). */
  text: string;
  /** Set on the last chunk only: why the generation ended. */
  finishReason?: FinishReason;
  /** On the last chunk, from a model that counts its own tokens; otherwise the worker counts words and chunks. */
  usage?: { promptTokens: number; completionTokens: number };
}

/** The answer of a classify (Predict) call. */
export interface Prediction {
  /** The most probable label. */
  label: string;
  /** Probability of each label; the values sum to 1. */
  probabilities: Record<string, number>;
  /** Text that goes with the answer (the input for echo; '' when a model has none). */
  text: string;
}

/** A loaded model, ready to serve calls. */
export interface Model {
  /** Static description of the model. */
  readonly info: ModelInfo;
  /** Streams chunks; must stop promptly (<100 ms) after signal aborts, throwing the signal's reason or an AbortError. */
  generate?(params: GenerateParams, signal: AbortSignal): AsyncIterable<GeneratedChunk>;
  /** Classifies one input; rejects with the signal's reason or an AbortError once signal aborts. */
  predict?(input: string, signal: AbortSignal): Promise<Prediction>;
  /** Runs one tensor inference; rejects with the signal's reason or an AbortError once signal aborts. */
  infer?(call: InferCall, signal: AbortSignal): Promise<Tensor[]>;
  /** Dynamic batching counters (batches run, rows run), for a model that batches. */
  batchStats?(): { batches: number; rows: number };
  /**
   * For a model that serves a fixed number of calls at once (a llama.cpp context's sequences):
   * calls being served, calls waiting in line for a place, and how many places there are.
   */
  load?(): { busy: number; waiting: number; capacity: number };
  /** Frees what the model holds (an ONNX Runtime session); called once no call uses it. */
  release?(): Promise<void>;
}

/** A source of models: the worker calls load() once at start and serves what it returns. */
export interface ModelRuntime {
  /** Name of the runtime, for logs and metadata, e.g. `builtin`. */
  readonly name: string;
  /** Loads (training or reading caches as needed) and returns the runtime's models. */
  load(): Promise<Model[]>;
}
