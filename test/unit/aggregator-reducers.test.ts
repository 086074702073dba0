/** The aggregator's reducers, on hand-made task outputs: results, limits and order independence. */
import { expect } from 'chai';
import {
  COLLECT_RESULT_LIMIT,
  PARTIAL_WORDS_LIMIT,
  ReduceResult,
  ReduceSpec,
  RecordOutput,
  ShardOutput,
  createReducer,
  isReducerName,
  topWords,
} from '../../services/aggregator/reducers';

function spec(reducer: string, extra: Partial<ReduceSpec> = {}): ReduceSpec {
  return { reducer, topK: 0, tasksTotal: 1, outputFile: '', positiveLabel: '', meanOf: '', ...extra };
}

/** A wordcount shard's output. */
function words(counts: Record<string, number>, records = 1): ShardOutput {
  const totalWords = Object.values(counts).reduce((a, b) => a + b, 0);
  return { records, wordCounts: counts, totalWords, outputs: [] };
}

/** A model shard's output: [index, output, label, score] per record. */
function outputs(...rows: [number, string, string?, number?][]): ShardOutput {
  const list: RecordOutput[] = rows.map(([index, output, label = '', score = 0]) => ({ index, output, label, score }));
  return { records: list.length, wordCounts: {}, totalWords: 0, outputs: list };
}

/** Folds `shards` in the given order into a fresh state; returns the snapshot. */
function reduce(s: ReduceSpec, shards: ShardOutput[], final = true): ReduceResult {
  const reducer = createReducer(s);
  let state = reducer.initial();
  for (const shard of shards) state = reducer.fold(state, shard);
  return reducer.snapshot(state, final);
}

/** A deterministic pseudo-random generator (mulberry32). */
function seeded(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffled<T>(list: readonly T[], random: () => number): T[] {
  const out = [...list];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

describe('aggregator reducers', () => {
  it('knows exactly the five reducers and refuses any other name', () => {
    for (const name of ['sum', 'top_k', 'accuracy', 'collect', 'mean']) expect(isReducerName(name), name).to.equal(true);
    expect(isReducerName('median')).to.equal(false);
    expect(() => createReducer(spec('median'))).to.throw(RangeError, /unknown reducer "median"/);
  });

  describe('sum', () => {
    it('sums every word over tasks, most frequent first then by word, with totals and records', () => {
      const result = reduce(spec('sum'), [words({ the: 3, cat: 1 }, 2), words({ the: 2, dog: 1, cat: 1 }, 3)]);
      expect(result).to.deep.equal({
        kind: 'wordCounts',
        words: [
          { word: 'the', count: 5 },
          { word: 'cat', count: 2 },
          { word: 'dog', count: 1 },
        ],
        totalWords: 8,
        distinctWords: 3,
        records: 5,
      });
    });

    it('returns every word when final, and at most 20 in a partial result', () => {
      const counts = Object.fromEntries(Array.from({ length: 50 }, (_, i) => [`w${String(i).padStart(2, '0')}`, 100 - i]));
      const final = reduce(spec('sum'), [words(counts)], true) as Extract<ReduceResult, { kind: 'wordCounts' }>;
      const partial = reduce(spec('sum'), [words(counts)], false) as Extract<ReduceResult, { kind: 'wordCounts' }>;
      expect(final.words).to.have.length(50);
      expect(partial.words).to.deep.equal(final.words.slice(0, PARTIAL_WORDS_LIMIT));
      expect(partial.distinctWords).to.equal(50);
    });

    it('after every task, a partial result lists the words that ranking the whole vocabulary gives', () => {
      const random = seeded(3);
      const reducer = createReducer(spec('sum'));
      let state = reducer.initial();
      const all: Record<string, number> = {};
      for (let task = 0; task < 40; task++) {
        const counts: Record<string, number> = {};
        // Skewed draws, so leaders change hands as tasks come in.
        for (let i = 0; i < 200; i++) counts[`w${Math.floor(random() ** 3 * 500)}`] = 1 + Math.floor(random() * 5);
        for (const [w, c] of Object.entries(counts)) all[w] = (all[w] ?? 0) + c;
        state = reducer.fold(state, words(counts));
        const partial = reducer.snapshot(state, false) as Extract<ReduceResult, { kind: 'wordCounts' }>;
        expect(partial.words, `after task ${task}`).to.deep.equal(topWords(all, Infinity).slice(0, PARTIAL_WORDS_LIMIT));
        expect(partial.distinctWords).to.equal(Object.keys(all).length);
      }
    });

    it('counts words named like Object.prototype members as plain words', () => {
      const shard: ShardOutput = { records: 1, wordCounts: JSON.parse('{"constructor":2,"__proto__":3,"tostring":1}'), totalWords: 6, outputs: [] };
      const result = reduce(spec('sum'), [shard, shard]) as Extract<ReduceResult, { kind: 'wordCounts' }>;
      expect(result.words).to.deep.equal([
        { word: '__proto__', count: 6 },
        { word: 'constructor', count: 4 },
        { word: 'tostring', count: 2 },
      ]);
    });
  });

  describe('top_k', () => {
    it('keeps the k most frequent words and breaks ties by word, ascending', () => {
      const result = reduce(spec('top_k', { topK: 3 }), [words({ e: 1, d: 2, c: 2 }), words({ b: 2, a: 3 })]);
      expect(result).to.deep.equal({
        kind: 'wordCounts',
        words: [
          { word: 'a', count: 3 },
          { word: 'b', count: 2 },
          { word: 'c', count: 2 },
        ],
        totalWords: 10,
        distinctWords: 5,
        records: 2,
      });
    });

    it('takes k = 20 when the spec gives 0', () => {
      const counts = Object.fromEntries(Array.from({ length: 30 }, (_, i) => [`w${i}`, i + 1]));
      const result = reduce(spec('top_k', { topK: 0 }), [words(counts)]) as Extract<ReduceResult, { kind: 'wordCounts' }>;
      expect(result.words).to.have.length(20);
      expect(result.words[0]).to.deep.equal({ word: 'w29', count: 30 });
    });

    it('selects the same words as sorting the whole vocabulary, for any k', () => {
      const random = seeded(7);
      const counts: Record<string, number> = {};
      for (let i = 0; i < 2000; i++) counts[`w${Math.floor(random() * 100000)}`] = 1 + Math.floor(random() * 30);
      const sorted = topWords(counts, Infinity);
      for (const k of [1, 5, 20, 333, 5000]) expect(topWords(counts, k), `k=${k}`).to.deep.equal(sorted.slice(0, k));
    });
  });

  describe('accuracy', () => {
    // actual spam: 40 predicted spam, 10 ham; actual ham: 5 predicted spam, 45 ham.
    const confusion: [string, string, number][] = [
      ['spam', 'spam', 40],
      ['spam', 'ham', 10],
      ['ham', 'spam', 5],
      ['ham', 'ham', 45],
    ];
    const shards = confusion.map(([actual, predicted, n], c) => outputs(...Array.from({ length: n }, (_, i) => [c * 100 + i, predicted, actual] as [number, string, string])));

    it('computes accuracy, precision, recall and f1 of a known confusion matrix', () => {
      const result = reduce(spec('accuracy'), shards) as Extract<ReduceResult, { kind: 'accuracy' }>;
      const precision = 40 / 45;
      const recall = 40 / 50;
      expect(result.total).to.equal(100);
      expect(result.accuracy).to.be.closeTo(0.85, 1e-12);
      expect(result.precision).to.be.closeTo(precision, 1e-12);
      expect(result.recall).to.be.closeTo(recall, 1e-12);
      expect(result.f1).to.be.closeTo((2 * precision * recall) / (precision + recall), 1e-12);
      expect(result.positiveLabel).to.equal('spam');
      expect(result.confusion).to.deep.equal([
        { actual: 'ham', predicted: 'ham', count: 45 },
        { actual: 'ham', predicted: 'spam', count: 5 },
        { actual: 'spam', predicted: 'ham', count: 10 },
        { actual: 'spam', predicted: 'spam', count: 40 },
      ]);
    });

    it('uses the positive label the spec names', () => {
      const result = reduce(spec('accuracy', { positiveLabel: 'ham' }), shards) as Extract<ReduceResult, { kind: 'accuracy' }>;
      expect(result.positiveLabel).to.equal('ham');
      expect(result.precision).to.be.closeTo(45 / 55, 1e-12);
      expect(result.recall).to.be.closeTo(45 / 50, 1e-12);
    });

    it('skips records without a label', () => {
      const result = reduce(spec('accuracy'), [outputs([0, 'spam', 'spam'], [1, 'spam', ''], [2, 'ham', ''], [3, 'ham', 'spam'])]) as Extract<ReduceResult, { kind: 'accuracy' }>;
      expect(result.total).to.equal(2);
      expect(result.accuracy).to.equal(0.5);
      expect(result.confusion).to.deep.equal([
        { actual: 'spam', predicted: 'ham', count: 1 },
        { actual: 'spam', predicted: 'spam', count: 1 },
      ]);
    });

    it('without "spam" among the labels, takes the first label in sorted order as positive', () => {
      const result = reduce(spec('accuracy'), [outputs([0, 'pos', 'pos'], [1, 'neg', 'pos'], [2, 'neg', 'neg'])]) as Extract<ReduceResult, { kind: 'accuracy' }>;
      expect(result.positiveLabel).to.equal('neg');
      expect(result.precision).to.equal(0.5);
      expect(result.recall).to.equal(1);
    });

    it('gives zeros, not NaN, when no record is labelled', () => {
      const result = reduce(spec('accuracy'), [outputs([0, 'spam'])]);
      expect(result).to.deep.equal({ kind: 'accuracy', accuracy: 0, precision: 0, recall: 0, f1: 0, total: 0, positiveLabel: '', confusion: [] });
    });
  });

  describe('collect', () => {
    it('returns the outputs in index order whatever order the tasks come in', () => {
      const result = reduce(spec('collect'), [outputs([4, 'e'], [5, 'f']), outputs([0, 'a'], [1, 'b']), outputs([3, 'd'], [2, 'c'])]);
      expect(result).to.deep.equal({
        kind: 'collect',
        count: 6,
        outputFile: '',
        outputs: ['a', 'b', 'c', 'd', 'e', 'f'].map((output, index) => ({ index, output })),
      });
    });

    it(`counts every output but returns at most ${COLLECT_RESULT_LIMIT}, the lowest indices`, () => {
      const shard = (from: number, n: number) => outputs(...Array.from({ length: n }, (_, i) => [from + i, `o${from + i}`] as [number, string]));
      const result = reduce(spec('collect'), [shard(16000, 9000), shard(8000, 8000), shard(0, 8000)]) as Extract<ReduceResult, { kind: 'collect' }>;
      expect(result.count).to.equal(25000);
      expect(result.outputs).to.have.length(COLLECT_RESULT_LIMIT);
      expect(result.outputs.map((o) => o.index)).to.deep.equal(Array.from({ length: COLLECT_RESULT_LIMIT }, (_, i) => i));
    });

    it('with an output file, returns the count and the file but no outputs; a partial result has the count alone', () => {
      const s = spec('collect', { outputFile: 'out.jsonl' });
      expect(reduce(s, [outputs([0, 'a'], [1, 'b'])], true)).to.deep.equal({ kind: 'collect', count: 2, outputFile: 'out.jsonl', outputs: [] });
      expect(reduce(spec('collect'), [outputs([0, 'a'], [1, 'b'])], false)).to.deep.equal({ kind: 'collect', count: 2, outputFile: '', outputs: [] });
    });
  });

  describe('mean', () => {
    it('averages the per-record scores and says what they are', () => {
      const result = reduce(spec('mean', { meanOf: 'tokens generated' }), [outputs([0, 'x', '', 10], [1, 'y', '', 20]), outputs([2, 'z', '', 60])]);
      expect(result).to.deep.equal({ kind: 'mean', mean: 30, count: 3, of: 'tokens generated' });
    });

    it('for wordcount outputs without per-record outputs, averages words per record', () => {
      const result = reduce(spec('mean', { meanOf: 'words per record' }), [words({ a: 6, b: 4 }, 4), words({ c: 6 }, 4)]);
      expect(result).to.deep.equal({ kind: 'mean', mean: 2, count: 8, of: 'words per record' });
    });

    it('is 0 over no records', () => {
      expect(reduce(spec('mean'), [])).to.deep.equal({ kind: 'mean', mean: 0, count: 0, of: '' });
    });
  });

  describe('every reducer', () => {
    // Scores whose float sum depends on the order ((0.1 + 0.2) + 0.3 !== (0.3 + 0.2) + 0.1).
    const modelShards = [
      outputs([0, 'spam', 'spam', 0.1], [1, 'ham', 'spam', 0.7]),
      outputs([2, 'ham', 'ham', 0.2], [3, 'spam', '', 0.9]),
      outputs([4, 'spam', 'ham', 0.3]),
      outputs([5, 'ham', 'ham', 1e-7], [6, 'spam', 'spam', 123.456]),
    ];
    const wordShards = [words({ a: 2, b: 1 }, 3), words({ b: 2, c: 5, __x: 1 }, 1), words({ a: 1, d: 1 }, 2), words({ c: 1 }, 1)];
    const cases: [ReduceSpec, ShardOutput[]][] = [
      [spec('sum'), wordShards],
      [spec('top_k', { topK: 2 }), wordShards],
      [spec('accuracy'), modelShards],
      [spec('collect'), modelShards],
      [spec('mean'), modelShards],
      [spec('mean'), wordShards],
    ];

    for (const [s, shards] of cases) {
      it(`${s.reducer} over ${shards === wordShards ? 'word counts' : 'record outputs'}: folding in any order gives the same result, to the bit`, () => {
        const random = seeded(11);
        const expected = { final: reduce(s, shards, true), partial: reduce(s, shards, false) };
        const orders = [[...shards].reverse(), ...Array.from({ length: 10 }, () => shuffled(shards, random))];
        for (const order of orders) {
          expect(reduce(s, order, true)).to.deep.equal(expected.final);
          expect(reduce(s, order, false)).to.deep.equal(expected.partial);
        }
      });
    }

    it('the float sums of these scores do depend on the order (so the test above can fail)', () => {
      expect(0.1 + 0.2 + 0.3).to.not.equal(0.3 + 0.2 + 0.1);
    });

    for (const [s, shards] of cases.slice(0, 5)) {
      it(`${s.reducer}: a state read back from JSON gives the same result and keeps folding`, () => {
        const reducer = createReducer(s);
        let direct = reducer.initial();
        let revived = reducer.initial();
        for (const shard of shards) {
          direct = reducer.fold(direct, shard);
          revived = reducer.fold(JSON.parse(JSON.stringify(revived)), shard);
        }
        expect(reducer.snapshot(revived, true)).to.deep.equal(reducer.snapshot(direct, true));
      });
    }
  });
});
