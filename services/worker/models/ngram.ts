/**
 * Word-level trigram language model with interpolated absolute-discounting backoff to bigrams and
 * unigrams, message boundary tokens, count pruning, and a seeded sampler that streams tokens with
 * temperature, max tokens and stop sequences.
 */
import { randomInt } from 'node:crypto';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import type { FinishReason, GeneratedChunk, GenerateParams } from './runtime.js';
import { spaceBetween, tokenize } from './tokenizer.js';
import { mulberry32, type Random } from '../../../common/random';

/** Unknown-word token: words below the vocabulary threshold map here; it is never generated. */
export const UNK = '<unk>';
/** Start-of-message token: two of them open every message's context; never generated. */
export const BOS = '<s>';
/** End-of-message token: generating it ends the output with finish reason `end`. */
export const EOS = '</s>';

const UNK_ID = 0;
const BOS_ID = 1;
const EOS_ID = 2;

/** Training parameters (part of the cache key). */
export interface NGramParams {
  /** A word joins the vocabulary when seen at least this many times; rarer words become `<unk>`. */
  minWordCount: number;
  /** Bigrams seen fewer times are dropped (their mass goes to the unigram backoff). */
  minBigramCount: number;
  /** Trigrams seen fewer times are dropped (their mass goes to the bigram backoff). */
  minTrigramCount: number;
  /** Absolute discount subtracted from every kept count, in (0, 1). */
  discount: number;
}

/** Parameters of the built-in `ngram` model, chosen to keep its cache file small and fast to load. */
export const DEFAULT_NGRAM_PARAMS: NGramParams = { minWordCount: 2, minBigramCount: 2, minTrigramCount: 2, discount: 0.75 };

/** Successors of contexts in compressed-row form: context i owns entries offsets[i] to offsets[i + 1]. */
export interface SuccessorTableJSON {
  /** Context word ids: one per context for bigrams, two per context (u, v) for trigrams. */
  contexts: number[];
  /** Count of each context before pruning, so pruned successors' mass goes to the backoff. */
  totals: number[];
  /** Start of each context's entries in next/counts, plus the end. */
  offsets: number[];
  /** Successor word ids. */
  next: number[];
  /** Count of each (context, successor). */
  counts: number[];
}

/** The serialized form of a trained model, for caching as JSON. */
export interface NGramJSON {
  /** Training parameters. */
  params: NGramParams;
  /** Word of each id; ids 0, 1, 2 are `<unk>`, `<s>`, `</s>`. */
  vocab: string[];
  /** Count of each id as a predicted token. */
  unigramCounts: number[];
  /** Pruned bigram table. */
  bigrams: SuccessorTableJSON;
  /** Pruned trigram table. */
  trigrams: SuccessorTableJSON;
  /** Number of predicted tokens in training (words plus one `</s>` per message). */
  trainingTokens: number;
}

/** Kept successors of one context. */
interface Successors {
  /** Weight of the lower-order distribution: 1 minus the discounted mass of the kept successors. */
  backoffWeight: number;
  next: Int32Array;
  /** (count - discount) / total of each successor. */
  discounted: Float64Array;
}

export { mulberry32, type Random };

/** A word-level trigram model; create with {@link NGramModel.train} or {@link NGramModel.fromJSON}. */
export class NGramModel {
  private readonly ids: Map<string, number>;
  private readonly unigram: Float64Array;
  private readonly bigrams: Map<number, Successors>;
  private readonly trigrams: Map<number, Successors>;

  private constructor(private readonly state: NGramJSON) {
    this.ids = new Map(state.vocab.map((word, id) => [word, id]));
    this.unigram = unigramDistribution(state.unigramCounts);
    this.bigrams = successorMap(state.bigrams, 1, state.vocab.length, state.params.discount);
    this.trigrams = successorMap(state.trigrams, 2, state.vocab.length, state.params.discount);
  }

  /** Trains on texts, each one message: `<s> <s> words... </s>`. Case is kept. */
  static train(texts: Iterable<string>, params: NGramParams = DEFAULT_NGRAM_PARAMS): NGramModel {
    const messages = [...texts].map((text) => tokenize(text));
    const vocab = buildVocab(messages, params.minWordCount);
    const ids = new Map(vocab.map((word, id) => [word, id]));
    const sequences = messages.map((words) => [BOS_ID, BOS_ID, ...words.map((word) => ids.get(word) ?? UNK_ID), EOS_ID]);
    const ngrams = sortedNGrams(sequences, vocab.length);
    return new NGramModel({
      params,
      vocab,
      unigramCounts: ngrams.unigram,
      bigrams: successorTable(ngrams.bigramKeys, 1, vocab.length, params.minBigramCount),
      trigrams: successorTable(ngrams.trigramKeys, 2, vocab.length, params.minTrigramCount),
      trainingTokens: ngrams.trigramKeys.length,
    });
  }

  /** Rebuilds a model from {@link NGramModel.toJSON} output. */
  static fromJSON(json: NGramJSON): NGramModel {
    return new NGramModel(json);
  }

  /** Order of the model (3: trigram). */
  get order(): number {
    return 3;
  }

  /** Number of ids, including `<unk>`, `<s>`, `</s>`. */
  get vocabSize(): number {
    return this.state.vocab.length;
  }

  /** Number of predicted tokens in training. */
  get trainingTokens(): number {
    return this.state.trainingTokens;
  }

  /** Number of kept bigrams and trigrams. */
  get ngramCounts(): { bigrams: number; trigrams: number } {
    return { bigrams: this.state.bigrams.next.length, trigrams: this.state.trigrams.next.length };
  }

  /**
   * Streams a continuation of `params.prompt`, one chunk per token except where text is held back
   * because it could begin a stop sequence. The last chunk carries the finish reason. Yields to
   * the event loop between tokens and throws the signal's reason as soon as `signal` aborts.
   */
  async *sample(params: GenerateParams, signal: AbortSignal): AsyncGenerator<GeneratedChunk> {
    const random = mulberry32(params.seed ?? randomInt(0, 2 ** 32));
    const stops = new StopSequenceFilter(params.stop);
    const promptWords = tokenize(params.prompt);
    const context = [BOS_ID, BOS_ID, ...promptWords.map((word) => this.ids.get(word) ?? UNK_ID)].slice(-2);
    // A prompt that ends in whitespace already separates it from the first word.
    let previous = /\s$/.test(params.prompt) ? undefined : promptWords.at(-1);
    let finishReason: FinishReason = 'length';
    for (let generated = 0; generated < params.maxTokens; generated++) {
      signal.throwIfAborted();
      const id = this.nextToken(context[0], context[1], params.temperature, random);
      if (id === EOS_ID) {
        finishReason = 'end';
        break;
      }
      const word = this.state.vocab[id];
      const { text, stopped } = stops.push((spaceBetween(previous, word) ? ' ' : '') + word);
      if (stopped) {
        yield { text, finishReason: 'stop' };
        return;
      }
      if (text !== '') yield { text };
      context[0] = context[1];
      context[1] = id;
      previous = word;
      await yieldToEventLoop();
    }
    signal.throwIfAborted();
    yield { text: stops.flush(), finishReason };
  }

  /** Picks the next id after context (u, v): argmax at temperature 0, else a sample from p^(1/T). */
  nextToken(u: number, v: number, temperature: number, random: Random): number {
    const probabilities = this.distribution(u, v);
    // Neither is a word: <unk> stands for many rare words, <s> only opens a context.
    probabilities[UNK_ID] = 0;
    probabilities[BOS_ID] = 0;
    return temperature <= 0 ? argmax(probabilities) : sampleTempered(probabilities, temperature, random);
  }

  /** P(w | u, v) for every id w: trigram, else bigram, else unigram, with discounted mass passed down. */
  distribution(u: number, v: number): Float64Array {
    const bigram = this.bigrams.get(v);
    const trigram = this.trigrams.get(u * this.state.vocab.length + v);
    const bigramWeight = trigram ? trigram.backoffWeight : 1;
    const unigramWeight = bigramWeight * (bigram ? bigram.backoffWeight : 1);
    const probabilities = new Float64Array(this.unigram.length);
    for (let w = 0; w < probabilities.length; w++) probabilities[w] = unigramWeight * this.unigram[w];
    if (bigram) addDiscounted(probabilities, bigram, bigramWeight);
    if (trigram) addDiscounted(probabilities, trigram, 1);
    return probabilities;
  }

  /** A plain JSON-able copy of the model. */
  toJSON(): NGramJSON {
    return this.state;
  }
}

/**
 * Holds back streamed text that could still be the start of a stop sequence, and cuts the text
 * before the first stop sequence once one appears. Text returned by push() never contains a stop
 * sequence, and never ends with a proper prefix of one.
 */
export class StopSequenceFilter {
  private readonly stops: string[];
  private pending = '';

  /** Empty strings are ignored (they would match everywhere). */
  constructor(stops: readonly string[]) {
    this.stops = stops.filter((stop) => stop.length > 0);
  }

  /** Adds text; returns what may be emitted now, and whether a stop sequence ended the output. */
  push(piece: string): { text: string; stopped: boolean } {
    this.pending += piece;
    const stopAt = this.firstStopIndex();
    if (stopAt >= 0) {
      const text = this.pending.slice(0, stopAt);
      this.pending = '';
      return { text, stopped: true };
    }
    const held = this.longestStopPrefixSuffix();
    const text = this.pending.slice(0, this.pending.length - held);
    this.pending = this.pending.slice(this.pending.length - held);
    return { text, stopped: false };
  }

  /** Returns the held-back text: the output ended without completing a stop sequence. */
  flush(): string {
    const text = this.pending;
    this.pending = '';
    return text;
  }

  /** Earliest start of a stop sequence in the pending text, or -1. */
  private firstStopIndex(): number {
    let first = -1;
    for (const stop of this.stops) {
      const at = this.pending.indexOf(stop);
      if (at >= 0 && (first < 0 || at < first)) first = at;
    }
    return first;
  }

  /** Length of the longest suffix of the pending text that is a proper prefix of a stop sequence. */
  private longestStopPrefixSuffix(): number {
    for (let length = Math.min(this.pending.length, this.maxStopLength() - 1); length > 0; length--) {
      const suffix = this.pending.slice(-length);
      if (this.stops.some((stop) => stop.startsWith(suffix))) return length;
    }
    return 0;
  }

  private maxStopLength(): number {
    return this.stops.reduce((max, stop) => Math.max(max, stop.length), 0);
  }
}

/** `<unk>`, `<s>`, `</s>`, then words seen at least minCount times, most frequent first. */
function buildVocab(messages: readonly string[][], minCount: number): string[] {
  const counts = new Map<string, number>();
  for (const words of messages) for (const word of words) counts.set(word, (counts.get(word) ?? 0) + 1);
  const frequent = [...counts].filter(([word, count]) => count >= minCount && word !== UNK && word !== BOS && word !== EOS);
  frequent.sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  return [UNK, BOS, EOS, ...frequent.map(([word]) => word)];
}

/**
 * Every predicted position of the sequences as n-gram keys, ids written in base V
 * (bigram v·V + w, trigram u·V² + v·V + w: exact below 2^53 for V < 200,000), sorted so that
 * equal n-grams, and n-grams sharing a context, are adjacent.
 */
interface SortedNGrams {
  bigramKeys: Float64Array;
  trigramKeys: Float64Array;
  unigram: number[];
}

// Sorting typed arrays of keys is much faster and smaller than counting in Maps of number keys.
function sortedNGrams(sequences: readonly number[][], vocabSize: number): SortedNGrams {
  const positions = sequences.reduce((sum, ids) => sum + ids.length - 2, 0);
  const ngrams: SortedNGrams = {
    bigramKeys: new Float64Array(positions),
    trigramKeys: new Float64Array(positions),
    unigram: new Array<number>(vocabSize).fill(0),
  };
  let n = 0;
  for (const ids of sequences) {
    for (let i = 2; i < ids.length; i++, n++) {
      const bigram = ids[i - 1] * vocabSize + ids[i];
      ngrams.bigramKeys[n] = bigram;
      ngrams.trigramKeys[n] = ids[i - 2] * vocabSize * vocabSize + bigram;
      ngrams.unigram[ids[i]]++;
    }
  }
  ngrams.bigramKeys.sort();
  ngrams.trigramKeys.sort();
  return ngrams;
}

/**
 * Groups sorted keys by context (key / V) and keeps the n-grams seen at least minCount times;
 * a context's total counts every n-gram, kept or not.
 */
function successorTable(sortedKeys: Float64Array, contextLength: 1 | 2, vocabSize: number, minCount: number): SuccessorTableJSON {
  const table: SuccessorTableJSON = { contexts: [], totals: [], offsets: [], next: [], counts: [] };
  let i = 0;
  while (i < sortedKeys.length) {
    const context = Math.floor(sortedKeys[i] / vocabSize);
    const start = table.next.length;
    let total = 0;
    while (i < sortedKeys.length && Math.floor(sortedKeys[i] / vocabSize) === context) {
      const key = sortedKeys[i];
      let count = 0;
      while (i < sortedKeys.length && sortedKeys[i] === key) {
        count++;
        i++;
      }
      total += count;
      if (count >= minCount) {
        table.next.push(key % vocabSize);
        table.counts.push(count);
      }
    }
    if (table.next.length === start) continue;
    if (contextLength === 2) table.contexts.push(Math.floor(context / vocabSize), context % vocabSize);
    else table.contexts.push(context);
    table.totals.push(total);
    table.offsets.push(start);
  }
  table.offsets.push(table.next.length);
  return table;
}

/** Rebuilds the lookup map (context key → successors) of a serialized table. */
function successorMap(table: SuccessorTableJSON, contextLength: 1 | 2, vocabSize: number, discount: number): Map<number, Successors> {
  const next = Int32Array.from(table.next);
  const map = new Map<number, Successors>();
  for (let i = 0; i < table.totals.length; i++) {
    const key = contextLength === 2 ? table.contexts[2 * i] * vocabSize + table.contexts[2 * i + 1] : table.contexts[i];
    const [start, end] = [table.offsets[i], table.offsets[i + 1]];
    const total = table.totals[i];
    const discounted = new Float64Array(end - start);
    for (let j = start; j < end; j++) discounted[j - start] = (table.counts[j] - discount) / total;
    const keptMass = discounted.reduce((sum, p) => sum + p, 0);
    map.set(key, { backoffWeight: 1 - keptMass, next: next.subarray(start, end), discounted });
  }
  return map;
}

/** Maximum-likelihood unigram probabilities. */
function unigramDistribution(counts: readonly number[]): Float64Array {
  const total = counts.reduce((sum, count) => sum + count, 0);
  return Float64Array.from(counts, (count) => count / total);
}

/** In place: adds weight · (count − discount) / total for each kept successor. */
function addDiscounted(probabilities: Float64Array, successors: Successors, weight: number): void {
  for (let j = 0; j < successors.next.length; j++) probabilities[successors.next[j]] += weight * successors.discounted[j];
}

/** Index of the largest value; the lowest index wins ties, so greedy decoding is deterministic. */
function argmax(values: Float64Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** Samples an index with weight exp(log p / T), i.e. p^(1/T), normalized. */
function sampleTempered(probabilities: Float64Array, temperature: number, random: Random): number {
  const weights = temperature === 1 ? probabilities : temperedWeights(probabilities, temperature);
  let sum = 0;
  for (let i = 0; i < weights.length; i++) sum += weights[i];
  let remaining = random() * sum;
  let last = 0;
  for (let i = 0; i < weights.length; i++) {
    if (weights[i] === 0) continue;
    last = i;
    remaining -= weights[i];
    if (remaining < 0) return i;
  }
  // Rounding can leave a sliver of `remaining`: the last possible index takes it.
  return last;
}

/** exp((log p − log p_max) / T): p^(1/T) up to a constant, relative to the maximum so it cannot overflow. */
function temperedWeights(probabilities: Float64Array, temperature: number): Float64Array {
  const maxLog = Math.log(probabilities[argmax(probabilities)]);
  const weights = new Float64Array(probabilities.length);
  for (let i = 0; i < probabilities.length; i++) {
    if (probabilities[i] > 0) weights[i] = Math.exp((Math.log(probabilities[i]) - maxLog) / temperature);
  }
  return weights;
}
