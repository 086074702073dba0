/**
 * The built-in runtime: `spam-nb`, `ngram` and `echo`, trained on the Spam Assassin corpus that
 * ships as an npm package (nothing is downloaded). Training runs once; its results are cached as
 * JSON files in a directory, under names that change with the training parameters.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import {
  CLEANING_VERSION,
  DATASET_NAME,
  SPLIT_RULE,
  datasetVersion,
  fnv1a32,
  loadCorpus,
  normalizeText,
  splitCorpus,
  type CorpusSplit,
} from '../../../common/corpus/spam-assassin.js';
import { writeFileAtomically } from '../../../common/atomic-file.js';
import { createEchoModel } from './echo.js';
import { DEFAULT_NB_PARAMS, NaiveBayes, type Evaluation, type NaiveBayesJSON } from './naive-bayes.js';
import { DEFAULT_NGRAM_PARAMS, NGramModel, type NGramJSON } from './ngram.js';
import type { Model, ModelRuntime } from './runtime.js';
import { TOKENIZER_FINGERPRINT } from './tokenizer.js';

/** Options of {@link createBuiltinRuntime}. */
export interface BuiltinRuntimeOptions {
  /** Directory of the training caches; created if missing. */
  cacheDir: string;
  /** Delay per token (and per prediction) of the echo model, in milliseconds. */
  echoDelayMs: number;
  /** Share of echo calls that fail, for balancing benchmarks (default 0). */
  echoFailRate?: number;
  /** Receives one line per training or cache load, with its duration. */
  log?: (message: string) => void;
}

/** Version of the spam-nb model code; part of its cache key. */
const SPAM_NB_VERSION = '1';
/** Version of the ngram model code; part of its cache key. */
const NGRAM_VERSION = '1';

/** What the spam-nb cache file holds. */
interface SpamNbCache {
  key: string;
  model: NaiveBayesJSON;
  evaluation: Evaluation;
}

/** What the ngram cache file holds. */
interface NGramCache {
  key: string;
  model: NGramJSON;
}

/** Creates the built-in runtime; its load() trains on first use and reads the caches afterwards. */
export function createBuiltinRuntime(options: BuiltinRuntimeOptions): ModelRuntime {
  const log = options.log ?? (() => {});
  return {
    name: 'builtin',
    async load(): Promise<Model[]> {
      const started = performance.now();
      await mkdir(options.cacheDir, { recursive: true });
      const corpus = lazyCorpus();
      const spamNb = await loadOrTrain(spamNbCacheSpec(corpus), options.cacheDir, log);
      const ngram = await loadOrTrain(ngramCacheSpec(corpus), options.cacheDir, log);
      const models = [spamNbModel(spamNb), ngramModel(ngram), createEchoModel({ delayMs: options.echoDelayMs, failRate: options.echoFailRate })];
      log(`builtin: ${models.map((model) => model.info.name).join(', ')} ready in ${elapsedMs(started)} ms`);
      return models;
    },
  };
}

/** How to name, build and check one cached training result. */
interface CacheSpec<T extends { key: string }> {
  /** Model name, for file names and logs. */
  name: string;
  /** Changes with anything that changes the training result. */
  key: string;
  /** Trains from scratch. */
  train(): T;
  /** One line on the result, for the log. */
  describe(value: T): string;
}

/** Reads the cache file of `spec` if it is present and valid, otherwise trains and writes it. */
async function loadOrTrain<T extends { key: string }>(spec: CacheSpec<T>, cacheDir: string, log: (message: string) => void): Promise<T> {
  const file = join(cacheDir, `${spec.name}-${spec.key}.json`);
  const started = performance.now();
  const cached = await readCache<T>(file, spec.key, log);
  if (cached) {
    log(`${spec.name}: loaded cache ${file} in ${elapsedMs(started)} ms; ${spec.describe(cached)}`);
    return cached;
  }
  const trained = spec.train();
  const trainedAt = performance.now();
  await writeFileAtomically(file, JSON.stringify(trained));
  log(`${spec.name}: trained in ${elapsedMs(started)} ms and wrote ${file} in ${elapsedMs(trainedAt)} ms; ${spec.describe(trained)}`);
  return trained;
}

/** The parsed cache, or undefined when it is missing, unreadable or from other parameters. */
async function readCache<T extends { key: string }>(file: string, key: string, log: (message: string) => void): Promise<T | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return undefined;
  }
  try {
    const value = JSON.parse(text) as T;
    if (value.key === key) return value;
    log(`${file}: cache key ${String(value.key)} does not match ${key}; retraining`);
  } catch (error) {
    log(`${file}: unreadable cache (${(error as Error).message}); retraining`);
  }
  return undefined;
}

/** Reads and splits the corpus on first use only: a warm start never needs it. */
function lazyCorpus(): () => CorpusSplit {
  let split: CorpusSplit | undefined;
  return () => (split ??= splitCorpus(loadCorpus()));
}

/** Short hash of everything that shapes a training result. */
function cacheKey(parts: Record<string, unknown>): string {
  return fnv1a32(JSON.stringify(parts)).toString(16).padStart(8, '0');
}

/** Everything a trained model depends on besides its own parameters. */
function dataFingerprint(): Record<string, unknown> {
  return { dataset: datasetVersion(), cleaning: CLEANING_VERSION, split: SPLIT_RULE, tokenizer: TOKENIZER_FINGERPRINT };
}

function spamNbCacheSpec(corpus: () => CorpusSplit): CacheSpec<SpamNbCache> {
  const key = `v${SPAM_NB_VERSION}-${cacheKey({ ...dataFingerprint(), params: DEFAULT_NB_PARAMS })}`;
  return {
    name: 'spam-nb',
    key,
    train() {
      const { train, test } = corpus();
      const model = trainSpamNb(train);
      return { key, model: model.toJSON(), evaluation: model.evaluate(test) };
    },
    describe: ({ evaluation: e }) =>
      `held-out accuracy ${e.accuracy.toFixed(4)}, precision ${e.precision.toFixed(4)}, recall ${e.recall.toFixed(4)}`,
  };
}

function ngramCacheSpec(corpus: () => CorpusSplit): CacheSpec<NGramCache> {
  const key = `v${NGRAM_VERSION}-${cacheKey({ ...dataFingerprint(), params: DEFAULT_NGRAM_PARAMS })}`;
  return {
    name: 'ngram',
    key,
    train: () => ({ key, model: NGramModel.train(corpus().train.map((record) => record.body), DEFAULT_NGRAM_PARAMS).toJSON() }),
    describe: ({ model }) => `vocabulary ${model.vocab.length}, training tokens ${model.trainingTokens}`,
  };
}

/** Trains spam-nb's classifier on the training split (also used to export it to ONNX). */
export function trainSpamNb(train: CorpusSplit['train']): NaiveBayes {
  return NaiveBayes.train(train, DEFAULT_NB_PARAMS);
}

/** The spam-nb model: classifies a message (subject and body, or any text) as spam or ham. */
function spamNbModel(cache: SpamNbCache): Model {
  const classifier = NaiveBayes.fromJSON(cache.model);
  const e = cache.evaluation;
  return {
    info: {
      name: 'spam-nb',
      version: SPAM_NB_VERSION,
      description: 'Multinomial Naive Bayes spam classifier trained on the Spam Assassin public mail corpus.',
      tasks: ['classify', 'infer'],
      labels: classifier.labels,
      metadata: {
        dataset: DATASET_NAME,
        dataset_version: datasetVersion(),
        split: SPLIT_RULE,
        accuracy: e.accuracy.toFixed(4),
        precision: e.precision.toFixed(4),
        recall: e.recall.toFixed(4),
        f1: e.f1.toFixed(4),
        positive_label: DEFAULT_NB_PARAMS.positiveLabel,
        train_size: String(e.trainSize),
        test_size: String(e.testSize),
        vocab_size: String(classifier.vocabSize),
        alpha: String(DEFAULT_NB_PARAMS.alpha),
        cache_key: cache.key,
      },
      // Through the tensor protocol: one text per element in, a label and a probability row out.
      platform: 'maas_builtin',
      inputs: [{ name: 'text', datatype: 'BYTES', shape: [-1] }],
      outputs: [
        { name: 'label', datatype: 'BYTES', shape: [-1] },
        { name: 'probabilities', datatype: 'FP64', shape: [-1, classifier.labels.length] },
      ],
      maxBatchSize: 0,
    },
    async predict(input, signal) {
      signal.throwIfAborted();
      // The same cleaning as training, so HTML input is read as its text.
      const { label, probabilities } = classifier.predict(normalizeText(input));
      return { label, probabilities, text: '' };
    },
    async infer(call, signal) {
      signal.throwIfAborted();
      const texts = call.inputs[0].data as Buffer[];
      const labels = classifier.labels;
      const predictions = texts.map((t) => classifier.predict(normalizeText(t.toString('utf8'))));
      const all = [
        { name: 'label', datatype: 'BYTES' as const, shape: [texts.length], data: predictions.map((p) => Buffer.from(p.label, 'utf8')) },
        { name: 'probabilities', datatype: 'FP64' as const, shape: [texts.length, labels.length], data: Float64Array.from(predictions.flatMap((p) => labels.map((l) => p.probabilities[l]))) },
      ];
      return call.outputs.length === 0 ? all : call.outputs.map((name) => all.find((t) => t.name === name)!);
    },
  };
}

/** The ngram model: streams a continuation of the prompt. */
function ngramModel(cache: NGramCache): Model {
  const languageModel = NGramModel.fromJSON(cache.model);
  const { bigrams, trigrams } = languageModel.ngramCounts;
  return {
    info: {
      name: 'ngram',
      version: NGRAM_VERSION,
      description: 'Word-level trigram language model (backoff to bigrams and unigrams) trained on the Spam Assassin corpus.',
      tasks: ['generate'],
      labels: [],
      metadata: {
        dataset: DATASET_NAME,
        dataset_version: datasetVersion(),
        split: `${SPLIT_RULE}; trained on the train set`,
        order: String(languageModel.order),
        vocab_size: String(languageModel.vocabSize),
        training_tokens: String(languageModel.trainingTokens),
        bigrams: String(bigrams),
        trigrams: String(trigrams),
        smoothing: `interpolated absolute discounting, discount ${DEFAULT_NGRAM_PARAMS.discount}`,
        pruning: `words seen < ${DEFAULT_NGRAM_PARAMS.minWordCount} times become <unk>; bigrams < ${DEFAULT_NGRAM_PARAMS.minBigramCount}, trigrams < ${DEFAULT_NGRAM_PARAMS.minTrigramCount} dropped`,
        cache_key: cache.key,
      },
    },
    generate: (params, signal) => languageModel.sample(params, signal),
  };
}

function elapsedMs(since: number): number {
  return Math.round(performance.now() - since);
}
