/**
 * The `echo` model: returns its input, optionally slowly. For benchmarks and balancing tests,
 * where a model's cost must be known and controllable.
 */
import { setImmediate as yieldToEventLoop, setTimeout as sleep } from 'node:timers/promises';
import type { GeneratedChunk, GenerateParams, Model, ModelInfo, Prediction } from './runtime.js';
import { MeshError } from '../../../common/errors';

/** Options of {@link createEchoModel}. */
export interface EchoOptions {
  /** Delay before each generated token, and before a prediction, in milliseconds (default 0). */
  delayMs?: number;
  /** Share of calls (0 to 1) that fail with an error, for balancing benchmarks (default 0). */
  failRate?: number;
  /** Random source of failRate (default Math.random). */
  random?: () => number;
}

/** The error a call of an echo model configured to fail throws: UNAVAILABLE, as a sick worker's would be. */
export class InjectedFailure extends MeshError {
  constructor(message: string) {
    super('unavailable', message);
  }
}

/**
 * Creates the echo model. generate() streams the prompt's whitespace-separated words, one per
 * chunk (the first as is, the rest as `" word"`), after `delayMs` each; at most maxTokens words
 * (finish reason `length` when the prompt had more, else `end`). Temperature, seed and stop
 * sequences are ignored, so its output is predictable. predict() returns the input after one delay.
 */
export function createEchoModel(options: EchoOptions = {}): Model {
  const delayMs = options.delayMs ?? 0;
  const info: ModelInfo = {
    name: 'echo',
    version: '1',
    description: 'Returns its input, with an optional delay per token; for benchmarks and tests.',
    tasks: ['generate', 'classify'],
    labels: ['echo'],
    metadata: { delay_ms: String(delayMs) },
  };
  const failRate = options.failRate ?? 0;
  const random = options.random ?? Math.random;
  const maybeFail = () => {
    if (failRate > 0 && random() < failRate) throw new InjectedFailure(`echo: injected failure (fail rate ${failRate})`);
  };
  return {
    info,
    generate: (params, signal) => {
      maybeFail();
      return echoWords(params, delayMs, signal);
    },
    predict: async (input, signal) => {
      maybeFail();
      return echoPrediction(input, delayMs, signal);
    },
  };
}

async function* echoWords(params: GenerateParams, delayMs: number, signal: AbortSignal): AsyncGenerator<GeneratedChunk> {
  const words = params.prompt.split(/\s+/).filter((word) => word !== '');
  const count = Math.min(words.length, Math.max(0, params.maxTokens));
  const finishReason = count < words.length ? 'length' : 'end';
  if (count === 0) {
    signal.throwIfAborted();
    yield { text: '', finishReason };
    return;
  }
  for (let i = 0; i < count; i++) {
    await pause(delayMs, signal);
    const text = i === 0 ? words[i] : ` ${words[i]}`;
    yield i === count - 1 ? { text, finishReason } : { text };
  }
}

async function echoPrediction(input: string, delayMs: number, signal: AbortSignal): Promise<Prediction> {
  await pause(delayMs, signal);
  return { label: 'echo', probabilities: { echo: 1 }, text: input };
}

/** Waits delayMs (or one event-loop turn when 0); rejects with the signal's reason when it aborts. */
async function pause(delayMs: number, signal: AbortSignal): Promise<void> {
  signal.throwIfAborted();
  try {
    if (delayMs > 0) await sleep(delayMs, undefined, { signal });
    else await yieldToEventLoop(undefined, { signal });
  } catch (error) {
    // Timers reject with their own AbortError; callers expect the signal's reason, like everywhere else.
    signal.throwIfAborted();
    throw error;
  }
}
