/**
 * The llama.cpp runtime for GGUF models, on node-llama-cpp's prebuilt CPU binaries (never built or
 * downloaded at run time). Each model version gets one context with N sequences: concurrent calls
 * each take a sequence and node-llama-cpp evaluates the pending tokens of all of them in one batch
 * (continuous batching: a call joins or leaves between two decode steps). A call that finds every
 * sequence busy waits in line for one. A cancelled call leaves at once; its sequence stops after
 * the decode step in progress and is cleared before the next call takes it.
 *
 * Clearing a sequence needs the context's lock, which node-llama-cpp's decode loop holds for as
 * long as any sequence has tokens queued: under steady load it would never come. So while a
 * sequence is being cleared, the running calls hold back their next token for one step, the loop
 * lets go, the clear runs (a few ms), and they go on.
 */
import { randomInt } from 'node:crypto';
import type { Llama, LlamaContext, LlamaContextSequence, LlamaModel, ChatWrapper, ChatHistoryItem, Token } from 'node-llama-cpp';
import { MeshError } from '../../../common/errors';
import type { ModelPlan } from '../repository';
import { RepositoryError } from '../repository';
import { StopSequenceFilter } from './ngram';
import type { ChatMessage, FinishReason, GeneratedChunk, GenerateParams, Model, ModelInfo } from './runtime';

/** Settings of one GGUF model (config.json `parameters`, else the defaults). */
export interface LlamaSettings {
  /** Calls served at once on one context (its sequences). */
  sequences: number;
  /** Tokens of prompt plus output one call may use (each sequence's context size). */
  contextLength: number;
  /** CPU threads for evaluation; 0: node-llama-cpp's default (the machine's math cores). */
  threads: number;
}

/** Defaults of {@link LlamaSettings}. */
export const LLAMA_DEFAULTS: LlamaSettings = { sequences: 4, contextLength: 2048, threads: 0 };

type NodeLlamaCpp = typeof import('node-llama-cpp');

let runtime: Promise<{ lib: NodeLlamaCpp; llama: Llama }> | undefined;

/** node-llama-cpp and its CPU backend, loaded once per process (about a second). */
function llamaRuntime(): Promise<{ lib: NodeLlamaCpp; llama: Llama }> {
  runtime ??= (async () => {
    const lib = await import('node-llama-cpp');
    const llama = await lib.getLlama({ gpu: false, build: 'never', skipDownload: true, progressLogs: false, logLevel: lib.LlamaLogLevel.error });
    return { lib, llama };
  })();
  runtime.catch(() => (runtime = undefined));
  return runtime;
}

/** Loads every version a plan selects as GGUF models; a failure releases what was loaded. */
export async function loadLlamaModels(plan: ModelPlan, settings: LlamaSettings): Promise<Model[]> {
  const loaded: Model[] = [];
  try {
    for (const { version, file } of plan.versions) {
      loaded.push(await openGgufModel(file, { name: plan.name, version: String(version), description: plan.config.description, settings }));
    }
  } catch (err) {
    await Promise.all(loaded.map((m) => m.release?.()));
    throw err;
  }
  return loaded;
}

/** What {@link openGgufModel} needs besides the file. */
export interface GgufModelOptions {
  name: string;
  version: string;
  description?: string;
  settings: LlamaSettings;
}

/** Opens one GGUF file: the model, one context with `settings.sequences` sequences, and its chat template. */
export async function openGgufModel(file: string, options: GgufModelOptions): Promise<LlamaCppModel> {
  const { lib, llama } = await llamaRuntime();
  const where = `model ${JSON.stringify(options.name)} version ${options.version}`;
  let model: LlamaModel;
  try {
    model = await llama.loadModel({ modelPath: file, gpuLayers: 0 });
  } catch (err) {
    // The message names the problem; the path stays out of it.
    throw new RepositoryError('invalid', `${where}: the GGUF file does not load in llama.cpp: ${String((err as Error).message).split(file).join('model.gguf').slice(0, 200)}`);
  }
  try {
    const trained = model.trainContextSize;
    const contextLength = Math.min(options.settings.contextLength, trained > 0 ? trained : options.settings.contextLength);
    const context = await model.createContext({
      contextSize: contextLength,
      sequences: options.settings.sequences,
      ...(options.settings.threads > 0 ? { threads: options.settings.threads } : {}),
    });
    serializeSampling(context);
    const template = model.fileInfo.metadata?.tokenizer?.chat_template;
    const chat = typeof template === 'string' && template !== '' ? lib.resolveChatWrapper(model) ?? undefined : undefined;
    return new LlamaCppModel(options, model, context, contextLength, chat);
  } catch (err) {
    await model.dispose();
    throw new RepositoryError('invalid', `${where}: llama.cpp could not make a context of ${options.settings.contextLength} tokens x ${options.settings.sequences} sequences: ${String((err as Error).message).slice(0, 200)}`);
  }
}

/**
 * Makes a context sample one sequence at a time. node-llama-cpp 3.21.1 samples every sequence of a
 * batch at once on libuv's threads, and each sample first asks llama.cpp for the logits, which
 * puts the batch's outputs back in order in place the first time it is asked after a decode
 * (`output_reorder`). Two threads doing that together swap rows twice: one sequence gets another's
 * token. That happens when the batch mixes sequences at different points (a call joining while
 * others decode), so concurrent texts differed from sequential ones. One sample at a time costs
 * little beside the decode (a sample is a pass over the vocabulary; a decode reads every weight).
 */
function serializeSampling(context: LlamaContext): void {
  const native = (context as unknown as { _ctx?: { sampleToken?: (...args: unknown[]) => Promise<unknown> } })._ctx;
  const sample = native?.sampleToken;
  if (!native || typeof sample !== 'function') {
    throw new Error('node-llama-cpp has no context.sampleToken to serialize (the mesh expects 3.21.1); concurrent sequences would sample from each other\'s logits');
  }
  let last: Promise<unknown> = Promise.resolve();
  const serialized = (...args: unknown[]): Promise<unknown> => {
    const run = last.then(() => sample.apply(native, args));
    last = run.catch(() => undefined);
    return run;
  };
  Object.defineProperty(native, 'sampleToken', { value: serialized, configurable: true });
}

/** A caller waiting for a free sequence. */
interface Waiter {
  admit(sequence: LlamaContextSequence): void;
}

/** A GGUF model served from one context's sequences. */
export class LlamaCppModel implements Model {
  readonly info: ModelInfo;
  private readonly free: LlamaContextSequence[] = [];
  private readonly waiting: Waiter[] = [];
  private busy = 0;
  /** Clears in progress: running calls wait for them before asking for their next token. */
  private readonly clearing = new Set<Promise<void>>();

  constructor(
    options: GgufModelOptions,
    private readonly model: LlamaModel,
    private readonly context: LlamaContext,
    /** Most tokens of prompt plus output per call. */
    readonly contextLength: number,
    private readonly chat: ChatWrapper | undefined,
  ) {
    for (let i = 0; i < context.totalSequences; i++) this.free.push(context.getSequence());
    const meta = model.fileInfo.metadata;
    this.info = {
      name: options.name,
      version: options.version,
      description: options.description || `${meta?.general?.name ?? options.name}: a GGUF model on llama.cpp`,
      tasks: chat ? ['generate', 'chat'] : ['generate'],
      labels: [],
      metadata: {
        architecture: String(meta?.general?.architecture ?? ''),
        file_bytes: String(model.size),
        trained_context_length: String(model.trainContextSize),
        sequences: String(context.totalSequences),
        context_length: String(contextLength),
        chat_template: chat ? 'yes' : 'no',
      },
      platform: 'llama_cpp',
      contextLength,
    };
  }

  /** Sequences evaluating now, callers waiting for one, and how many there are. */
  load(): { busy: number; waiting: number; capacity: number } {
    return { busy: this.busy, waiting: this.waiting.length, capacity: this.context.totalSequences };
  }

  /** The tokens a call evaluates first: BOS (when the model wants it), then the prompt or the rendered conversation. */
  promptTokens(params: Pick<GenerateParams, 'prompt' | 'messages'>): Token[] {
    let tokens: Token[];
    if (params.messages && params.messages.length > 0) {
      if (!this.chat) throw new MeshError('failed_precondition', `model "${this.info.name}" has no chat template; send a prompt`);
      tokens = this.chat.generateContextState({ chatHistory: chatHistory(params.messages) }).contextText.tokenize(this.model.tokenizer);
    } else {
      tokens = this.model.tokenize(params.prompt);
    }
    const bos = this.model.tokens.bos;
    if (bos !== null && this.model.tokens.shouldPrependBosToken && tokens[0] !== bos) tokens.unshift(bos);
    return tokens;
  }

  async *generate(params: GenerateParams, signal: AbortSignal): AsyncGenerator<GeneratedChunk> {
    const prompt = this.promptTokens(params);
    if (prompt.length + params.maxTokens > this.contextLength) {
      throw new MeshError(
        'invalid_argument',
        `the prompt (${prompt.length} tokens) plus max_tokens (${params.maxTokens}) must be at most the context length of model "${this.info.name}", ${this.contextLength} tokens`,
      );
    }
    const sequence = await this.takeSequence(signal);
    const iterator = sequence
      .evaluate(prompt, {
        temperature: params.temperature,
        topP: params.topP,
        seed: params.seed === undefined ? randomInt(0, 2 ** 31) : params.seed % 2 ** 32,
      })
      [Symbol.asyncIterator]();
    const stops = new StopSequenceFilter(params.stop);
    const generated: Token[] = [];
    /** Tokens not yet turned into text (a character split over byte tokens waits for its last byte). */
    let pending: Token[] = [];
    let finishReason: FinishReason = 'length';
    const usage = () => ({ promptTokens: prompt.length, completionTokens: generated.length });
    try {
      while (generated.length < params.maxTokens) {
        if (this.clearing.size > 0) await untilAborted(Promise.all(this.clearing), signal);
        const next = await untilAborted(iterator.next(), signal);
        if (next.done) {
          finishReason = 'end';
          break;
        }
        generated.push(next.value);
        pending.push(next.value);
        const before = [...prompt, ...generated].slice(-pending.length - 8, -pending.length);
        const piece = this.model.detokenize(pending, false, before);
        if (piece.endsWith('\uFFFD') && pending.length < 4) continue;
        pending = [];
        const { text, stopped } = stops.push(piece);
        if (stopped) {
          yield { text, finishReason: 'stop', usage: usage() };
          return;
        }
        if (text !== '') yield { text };
      }
      signal.throwIfAborted();
      yield { text: stops.flush(), finishReason, usage: usage() };
    } finally {
      // The sequence is reused only once its evaluation has stopped and its state is cleared; the
      // caller does not wait for that (a cancelled call returns at once).
      void this.returnSequence(sequence, iterator);
    }
  }

  async release(): Promise<void> {
    await this.context.dispose();
    await this.model.dispose();
  }

  /** A free sequence, or a place in line for one; leaves the line when `signal` aborts. */
  private takeSequence(signal: AbortSignal): Promise<LlamaContextSequence> {
    signal.throwIfAborted();
    const free = this.free.pop();
    if (free) {
      this.busy++;
      return Promise.resolve(free);
    }
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const at = this.waiting.indexOf(waiter);
        if (at >= 0) this.waiting.splice(at, 1);
        reject(signal.reason);
      };
      const waiter: Waiter = {
        admit: (sequence) => {
          signal.removeEventListener('abort', onAbort);
          this.busy++;
          resolve(sequence);
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  private async returnSequence(sequence: LlamaContextSequence, iterator: AsyncIterator<Token>): Promise<void> {
    try {
      // Evaluation stops after the decode step in progress, if any.
      await iterator.return?.();
    } finally {
      this.busy--;
    }
    const clear = sequence.clearHistory().then(
      () => undefined,
      () => undefined,
    );
    this.clearing.add(clear);
    await clear;
    this.clearing.delete(clear);
    const next = this.waiting.shift();
    if (next) next.admit(sequence);
    else this.free.push(sequence);
  }
}

/** The conversation in node-llama-cpp's form, ending with the empty assistant turn to generate. */
function chatHistory(messages: readonly ChatMessage[]): ChatHistoryItem[] {
  const history: ChatHistoryItem[] = messages.map((m) =>
    m.role === 'assistant' ? { type: 'model', response: [m.content] } : m.role === 'system' ? { type: 'system', text: m.content } : { type: 'user', text: m.content },
  );
  history.push({ type: 'model', response: [] });
  return history;
}

/** Resolves as `work` does, or rejects with the signal's reason as soon as it aborts. */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}
