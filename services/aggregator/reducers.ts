/**
 * Reducers of batch jobs: each folds the outputs of a job's tasks into one result. Plain
 * TypeScript with no gRPC: the types below mirror the proto messages, and the server converts.
 *
 * Every fold is order-independent: tasks commit in any order, and folding the same outputs in
 * any order gives the same snapshot, to the bit. States are plain JSON values (no Map, no
 * BigInt, no class), so they can be persisted or sent as they are.
 */
import { quoteInput } from '../../common/errors';

/** The reducers, by name. */
export const REDUCER_NAMES = ['sum', 'top_k', 'accuracy', 'collect', 'mean'] as const;

/** The name of a reducer. */
export type ReducerName = (typeof REDUCER_NAMES)[number];

/** k of top_k when the spec gives 0. */
export const DEFAULT_TOP_K = 20;

/** Most words in a partial (not final) word-count result, to keep progress messages small. */
export const PARTIAL_WORDS_LIMIT = 20;

/** Most outputs a collect result carries; beyond this, name an output file. */
export const COLLECT_RESULT_LIMIT = 10_000;

/** Label treated as positive by accuracy when the spec names none and it is among the labels seen. */
export const DEFAULT_POSITIVE_LABEL = 'spam';

/** How a job is reduced (mirrors maas.internal.v1.ReduceSpec). */
export interface ReduceSpec {
  /** One of REDUCER_NAMES. */
  reducer: string;
  /** k for top_k; 0 means DEFAULT_TOP_K. */
  topK: number;
  /** Number of tasks in the job. */
  tasksTotal: number;
  /** For collect: the JSON Lines file to write at the end; empty keeps outputs in the result. */
  outputFile: string;
  /** For accuracy: the positive label; empty picks one (see AccuracyResult.positiveLabel). */
  positiveLabel: string;
  /** For mean: what the per-record number is, e.g. "words per record". */
  meanOf: string;
}

/** The output of one record of a model job (mirrors maas.internal.v1.RecordOutput). */
export interface RecordOutput {
  /** Position of the record in the job's input. */
  index: number;
  /** The predicted label, or the generated text. */
  output: string;
  /** The record's expected label; empty when it has none. */
  label: string;
  /** A number per record: the predicted label's probability, or the tokens generated. */
  score: number;
}

/** What mapping one shard produced (mirrors maas.internal.v1.MapOutput). */
export interface ShardOutput {
  /** Records mapped. */
  records: number;
  /** Word counts over the shard (wordcount mapper). */
  wordCounts: { readonly [word: string]: number };
  /** Words counted over the shard (wordcount mapper). */
  totalWords: number;
  /** One output per record (model jobs). */
  outputs: readonly RecordOutput[];
}

/** One word and how often it occurs. */
export interface WordCount {
  word: string;
  count: number;
}

/** Records with one expected (actual) and one predicted label. */
export interface ConfusionCell {
  actual: string;
  predicted: string;
  count: number;
}

/** The output of one record, as collected. */
export interface CollectedOutput {
  index: number;
  output: string;
}

/** Result of sum and top_k: words most frequent first, ties by word. */
export interface WordCountResult {
  kind: 'wordCounts';
  words: WordCount[];
  totalWords: number;
  distinctWords: number;
  records: number;
}

/** Result of accuracy. */
export interface AccuracyResult {
  kind: 'accuracy';
  /** Share of labelled records predicted correctly (0 when none is labelled). */
  accuracy: number;
  precision: number;
  recall: number;
  f1: number;
  /** Labelled records compared. */
  total: number;
  /** The spec's positive label; else "spam" if seen; else the first label seen, in sorted order. */
  positiveLabel: string;
  /** Every non-empty cell, by actual then predicted label. */
  confusion: ConfusionCell[];
}

/** Result of collect. */
export interface CollectResult {
  kind: 'collect';
  /** Outputs collected. */
  count: number;
  /** The file the outputs go to (written by the store's caller at the end), or empty. */
  outputFile: string;
  /**
   * The outputs with the lowest indices, in index order, at most COLLECT_RESULT_LIMIT: only in a
   * final result with no output file; partial results carry the count alone.
   */
  outputs: CollectedOutput[];
}

/** Result of mean. */
export interface MeanResult {
  kind: 'mean';
  mean: number;
  /** Records averaged. */
  count: number;
  /** What was averaged. */
  of: string;
}

/** What a reducer produces (mirrors maas.v1.JobResult). */
export type ReduceResult = WordCountResult | AccuracyResult | CollectResult | MeanResult;

/** State of sum and top_k. */
export interface WordCountState {
  /** word -> count. */
  counts: { [word: string]: number };
  /** Words in `counts`. */
  distinctWords: number;
  totalWords: number;
  records: number;
  /**
   * The PARTIAL_WORDS_LIMIT most frequent words, in result order, kept as tasks fold in (counts
   * only grow, so only the words a task touches can join), so a partial result costs the size
   * of the task rather than of the vocabulary.
   */
  leaders: WordCount[];
}

/** State of accuracy: actual label -> predicted label -> records. */
export interface AccuracyState {
  cells: { [actual: string]: { [predicted: string]: number } };
}

/** State of collect. */
export interface CollectState {
  /** Outputs folded in all. */
  count: number;
  /** The COLLECT_RESULT_LIMIT outputs with the lowest (index, output), in that order. */
  lowest: CollectedOutput[];
}

/** State of mean. */
export interface MeanState {
  /**
   * Sum of the numbers in fixed point (units of 1e-12), as a decimal string: integer sums are
   * exact, so the mean does not depend on the order tasks commit in (float sums would).
   */
  sum: string;
  count: number;
}

/** The state of any reducer. */
export type ReducerState = WordCountState | AccuracyState | CollectState | MeanState;

/** A reducer: folds task outputs into a state, and reads a result off the state. */
export interface Reducer<S = ReducerState> {
  readonly name: ReducerName;
  /** The state of a job with no task folded in. */
  initial(): S;
  /** Folds one task's output into `state`, which it may update in place; returns the new state. */
  fold(state: S, output: ShardOutput): S;
  /** The result over what was folded; `final` once every task is in (partials are smaller). */
  snapshot(state: S, final: boolean): ReduceResult;
}

/** Whether `name` is a reducer's name. */
export function isReducerName(name: string): name is ReducerName {
  return (REDUCER_NAMES as readonly string[]).includes(name);
}

/** The reducer a spec names; throws a RangeError for an unknown name (callers validate first). */
export function createReducer(spec: ReduceSpec): Reducer {
  switch (spec.reducer) {
    case 'sum':
      return wordCountReducer('sum', Infinity);
    case 'top_k':
      return wordCountReducer('top_k', spec.topK || DEFAULT_TOP_K);
    case 'accuracy':
      return accuracyReducer(spec.positiveLabel);
    case 'collect':
      return collectReducer(spec.outputFile);
    case 'mean':
      return meanReducer(spec.meanOf);
    default:
      throw new RangeError(`unknown reducer ${quoteInput(spec.reducer)}; known: ${REDUCER_NAMES.join(', ')}`);
  }
}

// States are plain objects keyed by words and labels, which may be any string: "constructor" must
// not read Object.prototype's, and "__proto__" must be an own key (as JSON.parse makes it).

/** `o[key]` if it is o's own property. */
function ownValue<T>(o: { [key: string]: T }, key: string): T | undefined {
  return Object.hasOwn(o, key) ? o[key] : undefined;
}

/** Sets o's own property `key`, even for "__proto__". */
function setOwn<T>(o: { [key: string]: T }, key: string, value: T): void {
  if (key === '__proto__') Object.defineProperty(o, key, { value, writable: true, enumerable: true, configurable: true });
  else o[key] = value;
}

/** Adds `by` to the count under `key`. */
function addTo(counts: { [key: string]: number }, key: string, by: number): void {
  setOwn(counts, key, (ownValue(counts, key) ?? 0) + by);
}

/** Most frequent first; ties by word (code-unit order). */
function byCountThenWord(a: WordCount, b: WordCount): number {
  return b.count - a.count || (a.word < b.word ? -1 : a.word > b.word ? 1 : 0);
}

/** The `limit` most frequent words of `counts`, in result order (Infinity: all of them). */
export function topWords(counts: { readonly [word: string]: number }, limit: number): WordCount[] {
  const entries = Object.keys(counts).map((word) => ({ word, count: counts[word] }));
  if (!Number.isFinite(limit)) return entries.sort(byCountThenWord);
  return selectTop(entries, limit);
}

/** The `limit` first entries in result order, in one pass (no sort of them all). */
function selectTop(entries: Iterable<WordCount>, limit: number): WordCount[] {
  const top: WordCount[] = [];
  if (limit <= 0) return top;
  for (const entry of entries) {
    if (top.length === limit && byCountThenWord(entry, top[limit - 1]) >= 0) continue;
    let lo = 0;
    let hi = top.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (byCountThenWord(top[mid], entry) <= 0) lo = mid + 1;
      else hi = mid;
    }
    top.splice(lo, 0, entry);
    if (top.length > limit) top.pop();
  }
  return top;
}

function wordCountReducer(name: 'sum' | 'top_k', k: number): Reducer<WordCountState> {
  return {
    name,
    initial: () => ({ counts: {}, distinctWords: 0, totalWords: 0, records: 0, leaders: [] }),
    fold(state, output) {
      const touched = Object.keys(output.wordCounts);
      for (const word of touched) {
        if (ownValue(state.counts, word) === undefined) state.distinctWords++;
        addTo(state.counts, word, output.wordCounts[word]);
      }
      // The new leaders are among the old ones and the words this task touched: any other word
      // ranked below every old leader, and still does, since counts never fall.
      const candidates = new Set([...state.leaders.map((l) => l.word), ...touched]);
      state.leaders = selectTop(
        [...candidates].map((word) => ({ word, count: state.counts[word] })),
        PARTIAL_WORDS_LIMIT,
      );
      state.totalWords += output.totalWords;
      state.records += output.records;
      return state;
    },
    snapshot(state, final) {
      return {
        kind: 'wordCounts',
        words: final ? topWords(state.counts, k) : state.leaders.slice(0, Math.min(k, PARTIAL_WORDS_LIMIT)).map((w) => ({ ...w })),
        totalWords: state.totalWords,
        distinctWords: state.distinctWords,
        records: state.records,
      };
    },
  };
}

/** The positive label: the spec's; else "spam" if seen; else the first label seen in sorted order. */
function choosePositiveLabel(given: string, labels: readonly string[]): string {
  if (given) return given;
  if (labels.includes(DEFAULT_POSITIVE_LABEL)) return DEFAULT_POSITIVE_LABEL;
  return labels[0] ?? '';
}

function ratio(n: number, d: number): number {
  return d === 0 ? 0 : n / d;
}

function accuracyReducer(positiveLabel: string): Reducer<AccuracyState> {
  return {
    name: 'accuracy',
    initial: () => ({ cells: {} }),
    fold(state, output) {
      for (const record of output.outputs) {
        if (record.label === '') continue;
        let row = ownValue(state.cells, record.label);
        if (!row) setOwn(state.cells, record.label, (row = {}));
        addTo(row, record.output, 1);
      }
      return state;
    },
    snapshot(state) {
      const confusion: ConfusionCell[] = [];
      const labels = new Set<string>();
      for (const actual of Object.keys(state.cells)) {
        for (const predicted of Object.keys(state.cells[actual])) {
          confusion.push({ actual, predicted, count: state.cells[actual][predicted] });
          labels.add(actual).add(predicted);
        }
      }
      confusion.sort((a, b) => compareStrings(a.actual, b.actual) || compareStrings(a.predicted, b.predicted));
      const positive = choosePositiveLabel(positiveLabel, [...labels].sort(compareStrings));
      let total = 0;
      let correct = 0;
      let truePositive = 0;
      let predictedPositive = 0;
      let actualPositive = 0;
      for (const cell of confusion) {
        total += cell.count;
        if (cell.actual === cell.predicted) correct += cell.count;
        if (cell.predicted === positive) predictedPositive += cell.count;
        if (cell.actual === positive) actualPositive += cell.count;
        if (cell.actual === positive && cell.predicted === positive) truePositive += cell.count;
      }
      const precision = ratio(truePositive, predictedPositive);
      const recall = ratio(truePositive, actualPositive);
      return {
        kind: 'accuracy',
        accuracy: ratio(correct, total),
        precision,
        recall,
        f1: ratio(2 * precision * recall, precision + recall),
        total,
        positiveLabel: positive,
        confusion,
      };
    },
  };
}

function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Order of collected outputs: by index, then by output (so even a repeated index has one order). */
export function compareCollected(a: CollectedOutput, b: CollectedOutput): number {
  return a.index - b.index || compareStrings(a.output, b.output);
}

function collectReducer(outputFile: string): Reducer<CollectState> {
  return {
    name: 'collect',
    initial: () => ({ count: 0, lowest: [] }),
    fold(state, output) {
      state.count += output.outputs.length;
      const cutoff = state.lowest.length === COLLECT_RESULT_LIMIT ? state.lowest[COLLECT_RESULT_LIMIT - 1] : undefined;
      const incoming = output.outputs
        .map((r) => ({ index: r.index, output: r.output }))
        .filter((r) => cutoff === undefined || compareCollected(r, cutoff) < 0)
        .sort(compareCollected);
      if (incoming.length > 0) state.lowest = mergeSorted(state.lowest, incoming, COLLECT_RESULT_LIMIT);
      return state;
    },
    snapshot(state, final) {
      return {
        kind: 'collect',
        count: state.count,
        outputFile,
        outputs: final && !outputFile ? state.lowest.map((o) => ({ ...o })) : [],
      };
    },
  };
}

/** The first `limit` of two sorted lists merged. */
function mergeSorted(a: readonly CollectedOutput[], b: readonly CollectedOutput[], limit: number): CollectedOutput[] {
  const out: CollectedOutput[] = [];
  let i = 0;
  let j = 0;
  while (out.length < limit && (i < a.length || j < b.length)) {
    if (j >= b.length || (i < a.length && compareCollected(a[i], b[j]) <= 0)) out.push(a[i++]);
    else out.push(b[j++]);
  }
  return out;
}

/** Fixed-point units per 1 in MeanState.sum. */
const MEAN_SCALE = 1e12;
const MEAN_SCALE_BIG = 10n ** 12n;

/** `x` in fixed point: exact for integers; rounded to 1e-12 otherwise (the same way in any order). */
function toFixedPoint(x: number): bigint {
  if (Number.isInteger(x)) return BigInt(x) * MEAN_SCALE_BIG;
  // Not an integer, so |x| < 2^52 and x * 1e12 is finite.
  return BigInt(Math.round(x * MEAN_SCALE));
}

function meanReducer(of: string): Reducer<MeanState> {
  return {
    name: 'mean',
    initial: () => ({ sum: '0', count: 0 }),
    fold(state, output) {
      let sum = BigInt(state.sum);
      if (output.outputs.length > 0) {
        for (const record of output.outputs) {
          // The server refuses such scores; here a NaN must not poison the whole sum.
          if (!Number.isFinite(record.score)) continue;
          sum += toFixedPoint(record.score);
          state.count++;
        }
      } else {
        // A wordcount shard has no per-record outputs: its number is words per record.
        sum += toFixedPoint(output.totalWords);
        state.count += output.records;
      }
      state.sum = sum.toString();
      return state;
    },
    snapshot(state) {
      const sum = BigInt(state.sum);
      // Split into whole and fractional units so large sums keep their precision.
      const whole = Number(sum / MEAN_SCALE_BIG);
      const fraction = Number(sum % MEAN_SCALE_BIG) / MEAN_SCALE;
      return { kind: 'mean', mean: state.count === 0 ? 0 : (whole + fraction) / state.count, count: state.count, of };
    },
  };
}
