import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadDataset } from '../../common/datasets.js';
import { MeshError } from '../../common/errors.js';
import type { CommitRequest, CommitResponse } from '../../generated/maas/internal/v1/aggregator.js';
import type { MapTask } from '../../generated/maas/internal/v1/task.js';
import type { MeshCallOptions } from '../../common/client.js';
import type { JobSpec } from '../../generated/maas/v1/jobs.js';
import { Priority } from '../../generated/maas/v1/inference.js';
import {
  MAPPERS,
  countWords,
  mapRecords,
  mappingOf,
  modelCallOf,
  reduceSpecOf,
  runMapTask,
  shardRecords,
  type MapContext,
  words,
  type Mapping,
  type ShardRecord,
} from '../../services/worker/map.js';
import { createEchoModel } from '../../services/worker/models/echo.js';
import { NaiveBayes } from '../../services/worker/models/naive-bayes.js';
import type { Model } from '../../services/worker/models/runtime.js';

/** A job spec with every field at its proto default, then `fields`. */
function jobSpec(fields: Partial<JobSpec>): JobSpec {
  return {
    reducer: '',
    topK: 0,
    maxAttempts: 0,
    timeoutMs: 0,
    priority: Priority.PRIORITY_UNSPECIFIED,
    callbackUrl: '',
    outputFile: '',
    overwriteOutput: false,
    ...fields,
  };
}

/** A map task over `spec` with the given shard. */
function mapTask(spec: JobSpec, shard: Partial<MapTask> = {}): MapTask {
  return { jobId: 'job-1', taskIndex: 0, attempt: 1, spec, firstRecord: 0, recordCount: 0, records: [], tasksTotal: 1, ...shard };
}

/** Records with indices from `first`. */
function shard(texts: string[], first = 0, labels: string[] = []): ShardRecord[] {
  return texts.map((text, i) => ({ index: first + i, text, label: labels[i] ?? '' }));
}

/** A tiny spam filter: Naive Bayes trained here on a handful of messages, served as a classifier. */
function tinySpamModel(): Model {
  const classifier = NaiveBayes.train(
    [
      { label: 'spam', body: 'win money now free prize claim your cash' },
      { label: 'spam', body: 'free cash prize winner click now' },
      { label: 'spam', body: 'cheap pills free offer money back' },
      { label: 'ham', body: 'meeting notes from the project review on monday' },
      { label: 'ham', body: 'please review the patch before the release' },
      { label: 'ham', body: 'lunch on monday with the team' },
    ],
    { alpha: 1, minCount: 1, positiveLabel: 'spam' },
  );
  return {
    info: { name: 'tiny-nb', version: '1', description: 'test', tasks: ['classify'], labels: classifier.labels, metadata: {} },
    async predict(input, signal) {
      signal.throwIfAborted();
      return { ...classifier.predict(input), text: '' };
    },
  };
}

/** The echo model with its classify half removed: a model that only generates. */
function generatorOnly(): Model {
  const echo = createEchoModel();
  return { info: { ...echo.info, name: 'echo-generate', tasks: ['generate'], labels: [] }, generate: echo.generate };
}

/** Resolves with what `promise` rejects with; fails the test if it resolves. */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected a rejection, but the promise resolved');
}

/** What `call` throws; fails the test if it returns. */
function thrown(call: () => unknown): unknown {
  try {
    call();
  } catch (error) {
    return error;
  }
  throw new Error('expected an exception, but the call returned');
}

/** Asserts that `error` is a MeshError of `kind` whose message matches `message`. */
function expectMeshError(error: unknown, kind: MeshError['kind'], message: RegExp | string): void {
  expect(error).to.be.instanceOf(MeshError);
  expect((error as MeshError).kind).to.equal(kind);
  if (typeof message === 'string') expect((error as MeshError).message).to.equal(message);
  else expect((error as MeshError).message).to.match(message);
}

const never = new AbortController().signal;

describe('worker map tasks (services/worker/map)', () => {
  describe('words and countWords', () => {
    it('splits lower-cased text into letters and digits, keeping inner apostrophes followed by letters', () => {
      expect(words("Don't STOP—the Café's 2 o'clock rock'n'roll! e-mail 'quoted' it'3 x_y")).to.deep.equal([
        "don't",
        'stop',
        'the',
        "café's",
        '2',
        "o'clock",
        "rock'n'roll",
        'e',
        'mail',
        'quoted',
        'it',
        '3',
        'x',
        'y',
      ]);
      expect(words('  ... !!! ')).to.deep.equal([]);
      expect(words('Straße ΣΊΣΥΦΟΣ 東京 ١٢٣')).to.deep.equal(['straße', 'σίσυφος', '東京', '١٢٣']);
    });

    it('counts each lower-cased word, so case variants are one word', () => {
      expect([...countWords('The cat saw THE other cat; the end.')]).to.deep.equal([
        ['the', 3],
        ['cat', 2],
        ['saw', 1],
        ['other', 1],
        ['end', 1],
      ]);
    });

    it('counts words such as "constructor" that are also names of object properties', () => {
      expect(countWords('constructor toString constructor').get('constructor')).to.equal(2);
    });
  });

  describe('mapRecords', () => {
    it('wordcount counts the words of every record and how many there were, with no per-record outputs', async () => {
      const output = await mapRecords(shard(['Hello world', '', 'hello, HELLO again']), { kind: 'wordcount' }, never);
      expect(output).to.deep.equal({ records: 3, wordCounts: { hello: 3, world: 1, again: 1 }, totalWords: 5, outputs: [] });
    });

    it('wordcount over shards of the spam-assassin dataset adds up to the single-process count of the whole', async function () {
      this.timeout(20000);
      const records = loadDataset('spam-assassin').slice(0, 600);
      const reference = new Map<string, number>();
      let referenceTotal = 0;
      for (const record of records) {
        for (const word of words(record.text)) reference.set(word, (reference.get(word) ?? 0) + 1);
        referenceTotal += words(record.text).length;
      }
      const merged = new Map<string, number>();
      let total = 0;
      for (let first = 0; first < records.length; first += 250) {
        const part = records.slice(first, first + 250).map((r, i) => ({ index: first + i, ...r }));
        const output = await mapRecords(part, { kind: 'wordcount' }, never);
        total += output.totalWords;
        for (const [word, count] of Object.entries(output.wordCounts)) merged.set(word, (merged.get(word) ?? 0) + count);
      }
      expect(total).to.equal(referenceTotal);
      expect(new Map([...merged].sort())).to.deep.equal(new Map([...reference].sort()));
    });

    it('a classifier gives each record its predicted label, its own label and the predicted label probability', async () => {
      const model = tinySpamModel();
      const records = shard(['claim your free cash prize now', 'notes from the monday review'], 40, ['spam', 'spam']);
      const output = await mapRecords(records, { kind: 'classify', model }, never);
      expect(output.records).to.equal(2);
      expect(output.totalWords).to.equal(0);
      expect(output.wordCounts).to.deep.equal({});
      expect(output.outputs.map(({ index, output, label }) => ({ index, output, label }))).to.deep.equal([
        { index: 40, output: 'spam', label: 'spam' },
        { index: 41, output: 'ham', label: 'spam' },
      ]);
      for (const [i, out] of output.outputs.entries()) {
        const prediction = await model.predict!(records[i].text, never);
        expect(out.score).to.equal(prediction.probabilities[out.output]);
        expect(out.score).to.be.above(0.5);
      }
    });

    it('echo as a classifier labels every record "echo" with probability 1', async () => {
      const output = await mapRecords(shard(['a b', 'c'], 0, ['x', '']), { kind: 'classify', model: createEchoModel() }, never);
      expect(output.outputs).to.deep.equal([
        { index: 0, output: 'echo', label: 'x', score: 1 },
        { index: 1, output: 'echo', label: '', score: 1 },
      ]);
    });

    it('a generator gives each record its generated text and the number of tokens, within max tokens', async () => {
      const mapping: Mapping = { kind: 'generate', model: createEchoModel(), params: { maxTokens: 3, temperature: 1, stop: [] } };
      const output = await mapRecords(shard(['one two three four five', 'solo', ''], 7, ['l', '', '']), mapping, never);
      expect(output.outputs).to.deep.equal([
        { index: 7, output: 'one two three', label: 'l', score: 3 },
        { index: 8, output: 'solo', label: '', score: 1 },
        { index: 9, output: '', label: '', score: 0 },
      ]);
      expect(output.records).to.equal(3);
    });

    it('stops at the record where the signal aborts, with its reason, and maps no record after it', async () => {
      const controller = new AbortController();
      const reason = new MeshError('cancelled', 'job cancelled');
      const seen: string[] = [];
      const model: Model = {
        info: { name: 'counting', version: '1', description: 'test', tasks: ['classify'], labels: ['x'], metadata: {} },
        async predict(input) {
          seen.push(input);
          if (seen.length === 2) controller.abort(reason);
          return { label: 'x', probabilities: { x: 1 }, text: '' };
        },
      };
      const error = await rejection(mapRecords(shard(['a', 'b', 'c', 'd']), { kind: 'classify', model }, controller.signal));
      expect(error).to.equal(reason);
      expect(seen).to.deep.equal(['a', 'b']);
    });

    it('maps nothing when the signal has already aborted', async () => {
      const controller = new AbortController();
      controller.abort(new Error('gone'));
      const error = await rejection(mapRecords(shard(['a']), { kind: 'wordcount' }, controller.signal));
      expect((error as Error).message).to.equal('gone');
    });

    it('yields to the event loop between records once a slice has run, so other work gets a turn', async () => {
      let mapped = 0;
      const model: Model = {
        info: { name: 'counting', version: '1', description: 'test', tasks: ['classify'], labels: ['x'], metadata: {} },
        async predict() {
          mapped++;
          return { label: 'x', probabilities: { x: 1 }, text: '' };
        },
      };
      // A clock that moves 1 ms per reading: with 3 ms slices, a yield comes every few records.
      let time = 0;
      const mappedWhenOtherWorkRan: number[] = [];
      const other = () => {
        mappedWhenOtherWorkRan.push(mapped);
        if (mapped < 20) setImmediate(other);
      };
      setImmediate(other);
      await mapRecords(shard(Array.from({ length: 20 }, (_, i) => `r${i}`)), { kind: 'classify', model }, never, {
        sliceMs: 3,
        now: () => time++,
      });
      expect(mappedWhenOtherWorkRan.length).to.be.above(3);
      expect(mappedWhenOtherWorkRan[0]).to.be.within(1, 19);
    });
  });

  describe('mappingOf and modelCallOf', () => {
    it('runs the built-in wordcount mapper', () => {
      expect(MAPPERS).to.deep.equal(['wordcount']);
      expect(mappingOf(jobSpec({ map: { $case: 'mapper', mapper: 'wordcount' } }), undefined)).to.deep.equal({ kind: 'wordcount' });
    });

    it('rejects an unknown mapper with INVALID_ARGUMENT', () => {
      const error = thrown(() => mappingOf(jobSpec({ map: { $case: 'mapper', mapper: 'grep' } }), undefined));
      expectMeshError(error, 'invalid_argument', 'spec.mapper must be one of wordcount, given "grep"');
    });

    it('rejects a spec with neither mapper nor model with INVALID_ARGUMENT', () => {
      expectMeshError(thrown(() => mappingOf(jobSpec({}), undefined)), 'invalid_argument', 'spec.map must be set: a mapper or a model');
    });

    it('calls Predict on a model that classifies, even when it also generates (echo)', () => {
      const echo = createEchoModel();
      expect(modelCallOf(echo)).to.equal('classify');
      expect(mappingOf(jobSpec({ map: { $case: 'model', model: 'echo' } }), echo)).to.deep.equal({ kind: 'classify', model: echo });
    });

    it('calls Generate on a generate-only model, with the job options or their defaults', () => {
      const model = generatorOnly();
      const map = { $case: 'model' as const, model: model.info.name };
      expect(mappingOf(jobSpec({ map }), model)).to.deep.equal({
        kind: 'generate',
        model,
        params: { maxTokens: 64, temperature: 1, seed: undefined, stop: [] },
      });
      const withOptions = jobSpec({ map, generate: { maxTokens: 5, temperature: 0, seed: 9, stop: ['.'] } });
      expect(mappingOf(withOptions, model)).to.deep.equal({ kind: 'generate', model, params: { maxTokens: 5, temperature: 0, seed: 9, stop: ['.'] } });
    });

    it('rejects a model that neither classifies nor generates with FAILED_PRECONDITION', () => {
      const model: Model = { info: { name: 'inert', version: '1', description: '', tasks: [], labels: [], metadata: {} } };
      const error = thrown(() => mappingOf(jobSpec({ map: { $case: 'model', model: 'inert' } }), model));
      expectMeshError(error, 'failed_precondition', /^model "inert" can run in a batch job only if it classifies or generates/);
    });

    it('rejects a model that is not hosted with NOT_FOUND', () => {
      const error = thrown(() => mappingOf(jobSpec({ map: { $case: 'model', model: 'spam-nb' } }), undefined));
      expectMeshError(error, 'not_found', 'model "spam-nb" is not hosted on this worker');
    });
  });

  describe('reduceSpecOf', () => {
    it('wordcount: the default reducer top_k, k 20, the mean of words per record, no positive label', () => {
      const task = mapTask(jobSpec({ map: { $case: 'mapper', mapper: 'wordcount' } }), { tasksTotal: 7 });
      expect(reduceSpecOf(task)).to.deep.equal({
        reducer: 'top_k',
        topK: 20,
        tasksTotal: 7,
        outputFile: '',
        positiveLabel: '',
        meanOf: 'words per record',
      });
    });

    it('passes the job reducer, k and output file through', () => {
      const spec = jobSpec({ map: { $case: 'mapper', mapper: 'wordcount' }, reducer: 'sum', topK: 5, outputFile: '/tmp/out.jsonl' });
      expect(reduceSpecOf(mapTask(spec))).to.include({ reducer: 'sum', topK: 5, outputFile: '/tmp/out.jsonl' });
    });

    it('a classifier: collect by default, "spam" as the positive label when the model has it, the predicted label probability as the mean', () => {
      const model = tinySpamModel();
      expect(model.info.labels).to.deep.equal(['ham', 'spam']);
      const spec = reduceSpecOf(mapTask(jobSpec({ map: { $case: 'model', model: 'tiny-nb' } }), { tasksTotal: 3 }), model);
      expect(spec).to.deep.equal({
        reducer: 'collect',
        topK: 20,
        tasksTotal: 3,
        outputFile: '',
        positiveLabel: 'spam',
        meanOf: 'probability of the predicted label',
      });
    });

    it('a classifier without a "spam" label: its first label is the positive one', () => {
      const spec = reduceSpecOf(mapTask(jobSpec({ map: { $case: 'model', model: 'echo' }, reducer: 'accuracy' })), createEchoModel());
      expect(spec).to.include({ reducer: 'accuracy', positiveLabel: 'echo', meanOf: 'probability of the predicted label' });
    });

    it('a generator: the mean is of tokens generated per record, and there is no positive label', () => {
      const model = generatorOnly();
      const spec = reduceSpecOf(mapTask(jobSpec({ map: { $case: 'model', model: model.info.name }, reducer: 'mean' })), model);
      expect(spec).to.include({ reducer: 'mean', positiveLabel: '', meanOf: 'tokens generated per record' });
    });
  });

  describe('shardRecords', () => {
    let dir = '';
    /** The input root is the test's directory; paths in specs are relative to it. */
    const files = () => ({ root: dir, maxBytes: 1 << 20, maxLineBytes: 1 << 16 });
    before(() => {
      dir = mkdtempSync(join(tmpdir(), 'maas-map-'));
    });
    after(() => {
      if (dir) rmSync(dir, { recursive: true, force: true });
    });
    const wordcount = { $case: 'mapper' as const, mapper: 'wordcount' };

    it('numbers inline records from the shard first record', async () => {
      const spec = jobSpec({ map: wordcount, input: { $case: 'inline', inline: { records: [] } } });
      const task = mapTask(spec, { firstRecord: 200, recordCount: 2, records: [{ text: 'a', label: 'x' }, { text: 'b', label: '' }] });
      expect(await shardRecords(task, files(), never)).to.deep.equal([
        { index: 200, text: 'a', label: 'x' },
        { index: 201, text: 'b', label: '' },
      ]);
    });

    it('rejects inline records that do not match record_count with INVALID_ARGUMENT', async () => {
      const spec = jobSpec({ map: wordcount, input: { $case: 'inline', inline: { records: [] } } });
      const error = await rejection(shardRecords(mapTask(spec, { recordCount: 3, records: [{ text: 'a', label: '' }] }), files(), never));
      expectMeshError(error, 'invalid_argument', 'map task carries 1 inline records, but its record_count is 3');
    });

    it('reads its slice of a dataset, with labels and indices in the dataset', async function () {
      this.timeout(20000);
      const spec = jobSpec({ map: wordcount, input: { $case: 'dataset', dataset: 'spam-assassin' } });
      const records = await shardRecords(mapTask(spec, { firstRecord: 6000, recordCount: 46 }), files(), never);
      const dataset = loadDataset('spam-assassin');
      expect(records).to.have.length(46);
      expect(records[0]).to.deep.equal({ index: 6000, text: dataset[6000].text, label: dataset[6000].label });
      expect(records[45].index).to.equal(6045);
    });

    it('rejects an unknown dataset with NOT_FOUND and a slice past its end with INVALID_ARGUMENT', async function () {
      this.timeout(20000);
      const unknown = jobSpec({ map: wordcount, input: { $case: 'dataset', dataset: 'imdb' } });
      expectMeshError(await rejection(shardRecords(mapTask(unknown, { recordCount: 1 }), files(), never)), 'not_found', /^unknown dataset "imdb"/);
      const spec = jobSpec({ map: wordcount, input: { $case: 'dataset', dataset: 'spam-assassin' } });
      const error = await rejection(shardRecords(mapTask(spec, { firstRecord: 6000, recordCount: 100 }), files(), never));
      expectMeshError(error, 'invalid_argument', /^dataset spam-assassin has too few records for this task \(records 6000 to 6099\)/);
    });

    it('reads its lines of a file', async () => {
      const file = 'in.jsonl';
      writeFileSync(join(dir, file), ['{"text":"a"}', '{"text":"b","label":"spam"}', '', '{"text":"c"}'].join('\n'));
      const spec = jobSpec({ map: wordcount, input: { $case: 'file', file } });
      expect(await shardRecords(mapTask(spec, { firstRecord: 1, recordCount: 2 }), files(), never)).to.deep.equal([
        { index: 1, text: 'b', label: 'spam' },
        { index: 2, text: 'c', label: '' },
      ]);
    });

    it('turns a malformed line into INVALID_ARGUMENT naming the file and line, and a missing file into NOT_FOUND', async () => {
      const file = 'input.jsonl';
      writeFileSync(join(dir, file), '{"text":"a"}\n\n{"text":5}\n');
      const spec = jobSpec({ map: wordcount, input: { $case: 'file', file } });
      const error = await rejection(shardRecords(mapTask(spec, { recordCount: 2 }), files(), never));
      expectMeshError(error, 'invalid_argument', 'spec.file "input.jsonl" line 3: "text" must be a string, given a number');
      const missing = jobSpec({ map: wordcount, input: { $case: 'file', file: 'gone.txt' } });
      expectMeshError(await rejection(shardRecords(mapTask(missing, { recordCount: 1 }), files(), never)), 'not_found', /does not exist$/);
    });

    it('rejects a file that ends before the shard with INVALID_ARGUMENT', async () => {
      const file = 'short.txt';
      writeFileSync(join(dir, file), 'one\ntwo\n');
      const spec = jobSpec({ map: wordcount, input: { $case: 'file', file } });
      const error = await rejection(shardRecords(mapTask(spec, { firstRecord: 1, recordCount: 5 }), files(), never));
      expectMeshError(error, 'invalid_argument', /^spec\.file "short\.txt" has too few records for this task \(records 1 to 5\)/);
    });

    it('rejects a spec without input with INVALID_ARGUMENT', async () => {
      const error = await rejection(shardRecords(mapTask(jobSpec({ map: wordcount })), files(), never));
      expectMeshError(error, 'invalid_argument', 'spec.input must be set: inline records, a file or a dataset');
    });
  });
  describe('runMapTask (wiring only: a recording stand-in answers for the aggregator)', () => {
    /** An aggregator client that records each commit and its options, and answers `response`. */
    function recordingAggregator(response: CommitResponse) {
      const calls: Array<{ request: CommitRequest; options: MeshCallOptions & { signal?: AbortSignal } }> = [];
      const client = {
        async commit(request: CommitRequest, options: MeshCallOptions & { signal?: AbortSignal }) {
          calls.push({ request, options });
          return response;
        },
      } as unknown as MapContext['aggregator'];
      return { client, calls };
    }

    it('commits the mapped shard keyed by job, task and attempt, with its reduce spec, and returns the answer', async () => {
      const partial = { result: { $case: 'mean' as const, mean: { mean: 1, count: 2, of: 'x' } } };
      const { client, calls } = recordingAggregator({ duplicate: true, tasksCommitted: 4, partial });
      const signal = new AbortController().signal;
      const spec = jobSpec({ map: { $case: 'model', model: 'echo' }, input: { $case: 'inline', inline: { records: [] } }, reducer: 'accuracy' });
      const task = mapTask(spec, {
        jobId: 'job-7',
        taskIndex: 3,
        attempt: 2,
        tasksTotal: 5,
        firstRecord: 10,
        recordCount: 2,
        records: [{ text: 'hi there', label: 'echo' }, { text: 'bye', label: 'other' }],
      });
      const result = await runMapTask(task, { models: new Map([['echo', createEchoModel()]]), aggregator: client, signal, deadline: 12345, files: { root: '.', maxBytes: 1, maxLineBytes: 1 } });
      expect(result).to.deep.equal({ records: 2, duplicate: true, tasksCommitted: 4, partial });
      expect(calls).to.have.length(1);
      const { request, options } = calls[0];
      expect(options).to.deep.equal({ signal, deadline: 12345 });
      expect(request).to.deep.equal({
        jobId: 'job-7',
        taskIndex: 3,
        attempt: 2,
        reduce: { reducer: 'accuracy', topK: 20, tasksTotal: 5, outputFile: '', positiveLabel: 'echo', meanOf: 'probability of the predicted label' },
        output: {
          records: 2,
          wordCounts: {},
          totalWords: 0,
          outputs: [
            { index: 10, output: 'echo', label: 'echo', score: 1 },
            { index: 11, output: 'echo', label: 'other', score: 1 },
          ],
        },
      });
    });

    it('commits nothing when the shard cannot be read or the model is not hosted', async () => {
      const { client, calls } = recordingAggregator({ duplicate: false, tasksCommitted: 0, partial: undefined });
      const context: MapContext = { models: new Map(), aggregator: client, signal: never, deadline: undefined, files: { root: '.', maxBytes: 1, maxLineBytes: 1 } };
      const badInput = mapTask(jobSpec({ map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'dataset', dataset: 'imdb' } }), { recordCount: 1 });
      expectMeshError(await rejection(runMapTask(badInput, context)), 'not_found', /^unknown dataset "imdb"/);
      const noModel = mapTask(jobSpec({ map: { $case: 'model', model: 'ngram' }, input: { $case: 'dataset', dataset: 'spam-assassin' } }));
      expectMeshError(await rejection(runMapTask(noModel, context)), 'not_found', 'model "ngram" is not hosted on this worker');
      expect(calls).to.deep.equal([]);
    });
  });
});
