/**
 * The single-process baseline of `npm run bench:batch`: word count over a built-in dataset with
 * `loadDataset` and the wordcount mapper's own `words()`, reduced like the mesh's top_k/sum
 * reducers (totals, distinct words, words most frequent first, ties by word), timed from "start"
 * to "result ready".
 *
 * A process builds a dataset once (common/datasets.ts caches it), so only its first count pays for
 * the corpus load, as only a mesh's first job does. The bench runs the warm counts in its own
 * process and each cold one in a fresh process: `node dist/bench/batch-single.js DATASET K`
 * prints one JSON {@link SingleProcessCount} line, timed after the modules are loaded (a mesh
 * worker has them loaded before its first task too).
 */
import { performance } from 'node:perf_hooks';
import { loadDataset } from '../common/datasets';
import { words } from '../services/worker/map';
import { machineBusyCpuMs } from './cpu-time';

/** What a single-process word count found, and how long it took. */
export interface SingleProcessCount {
  /** From "start" (before loadDataset) to "result ready", in milliseconds. */
  elapsedMs: number;
  /** Of which: loadDataset, in milliseconds (about 0 once the process has the dataset). */
  loadMs: number;
  /** CPU time of this process over the same span, in milliseconds. */
  cpuMs: number;
  /** CPU time of the whole machine over the same span (NaN off Linux), in milliseconds. */
  machineMs: number;
  records: number;
  /** UTF-8 bytes of the records' text. */
  bytes: number;
  totalWords: number;
  distinctWords: number;
  /** The `k` most frequent words (all of them for k = Infinity), most frequent first, ties by word. */
  top: { word: string; count: number }[];
}

/** Counts the words of `dataset` in this process; `k` is top_k's k (Infinity for sum). */
export function singleProcessWordCount(dataset: string, k: number): SingleProcessCount {
  const machineBefore = machineBusyCpuMs() ?? NaN;
  const cpuBefore = process.cpuUsage();
  const start = performance.now();
  const records = loadDataset(dataset);
  const loaded = performance.now();
  const counts = new Map<string, number>();
  let totalWords = 0;
  for (const record of records) {
    const found = words(record.text);
    totalWords += found.length;
    for (const word of found) counts.set(word, (counts.get(word) ?? 0) + 1);
  }
  const top = [...counts]
    .map(([word, count]) => ({ word, count }))
    .sort((a, b) => b.count - a.count || (a.word < b.word ? -1 : a.word > b.word ? 1 : 0))
    .slice(0, Number.isFinite(k) ? k : undefined);
  const end = performance.now();
  const cpu = process.cpuUsage(cpuBefore);
  const machineMs = (machineBusyCpuMs() ?? NaN) - machineBefore;
  // Not timed: the size of the input, for MB/s.
  let bytes = 0;
  for (const record of records) bytes += Buffer.byteLength(record.text, 'utf8');
  return {
    elapsedMs: end - start,
    loadMs: loaded - start,
    cpuMs: (cpu.user + cpu.system) / 1000,
    machineMs,
    records: records.length,
    bytes,
    totalWords,
    distinctWords: counts.size,
    top,
  };
}

if (require.main === module) {
  const [dataset = 'spam-assassin', k = '20'] = process.argv.slice(2);
  const result = singleProcessWordCount(dataset, k === 'all' ? Infinity : Number(k));
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
