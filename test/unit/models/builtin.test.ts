import { expect } from 'chai';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createBuiltinRuntime } from '../../../services/worker/models/builtin.js';
import { loadCorpus, splitCorpus } from '../../../common/corpus/spam-assassin.js';
import type { GeneratedChunk, GenerateParams, Model } from '../../../services/worker/models/runtime.js';

async function collect(stream: AsyncIterable<GeneratedChunk>): Promise<GeneratedChunk[]> {
  const chunks: GeneratedChunk[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

describe('builtin runtime (real Spam Assassin corpus)', () => {
  let cacheDir = '';
  let models = new Map<string, Model>();
  const coldLog: string[] = [];

  before(async function () {
    this.timeout(120000);
    cacheDir = mkdtempSync(join(tmpdir(), 'maas-models-'));
    const loaded = await createBuiltinRuntime({ cacheDir, echoDelayMs: 0, log: (line) => coldLog.push(line) }).load();
    models = new Map(loaded.map((model) => [model.info.name, model]));
  });

  after(() => {
    if (cacheDir) rmSync(cacheDir, { recursive: true, force: true });
  });

  const model = (name: string): Model => {
    const found = models.get(name);
    if (!found) throw new Error(`model ${name} not loaded`);
    return found;
  };

  it('loads spam-nb (classify, and infer through its tensor adapter), ngram (generate only) and echo (both)', () => {
    expect([...models.keys()]).to.deep.equal(['spam-nb', 'ngram', 'echo']);
    expect(model('spam-nb').info.tasks).to.deep.equal(['classify', 'infer']);
    expect(model('spam-nb').info.inputs).to.deep.equal([{ name: 'text', datatype: 'BYTES', shape: [-1] }]);
    expect(model('spam-nb').info.outputs).to.deep.equal([
      { name: 'label', datatype: 'BYTES', shape: [-1] },
      { name: 'probabilities', datatype: 'FP64', shape: [-1, 2] },
    ]);
    expect(model('spam-nb').generate).to.equal(undefined);
    expect(model('ngram').info.tasks).to.deep.equal(['generate']);
    expect(model('ngram').predict).to.equal(undefined);
    expect(model('echo').info.tasks).to.deep.equal(['generate', 'classify']);
  });

  it('spam-nb reaches held-out accuracy above 0.9 and reports its metrics, split and dataset', () => {
    const metadata = model('spam-nb').info.metadata;
    expect(Number(metadata.accuracy)).to.be.above(0.9);
    for (const field of ['precision', 'recall', 'f1']) expect(Number(metadata[field]), field).to.be.within(0.5, 1);
    expect(Number(metadata.train_size) + Number(metadata.test_size)).to.equal(6046);
    expect(Number(metadata.test_size)).to.be.within(0.17 * 6046, 0.23 * 6046);
    expect(metadata.split).to.include('fnv1a32');
    expect(metadata.dataset).to.include('Spam Assassin');
    expect(model('spam-nb').info.labels).to.deep.equal(['ham', 'spam']);
  });

  it('spam-nb, as served, classifies the held-out messages as accurately as its metadata says', async () => {
    const { test } = splitCorpus(loadCorpus());
    const signal = new AbortController().signal;
    let correct = 0;
    for (const record of test) if ((await model('spam-nb').predict!(record.body, signal)).label === record.label) correct++;
    expect(correct / test.length).to.be.above(0.9);
    expect(correct / test.length).to.be.closeTo(Number(model('spam-nb').info.metadata.accuracy), 0.01);
  });

  it('ngram reports its order, vocabulary size and training tokens', () => {
    const metadata = model('ngram').info.metadata;
    expect(metadata.order).to.equal('3');
    expect(Number(metadata.vocab_size)).to.be.above(10000);
    expect(Number(metadata.training_tokens)).to.be.above(1_000_000);
  });

  it('ngram streams the same text for the same seed, without its stop sequence, and says why it ended', async () => {
    const params: GenerateParams = { prompt: 'Click here to', maxTokens: 40, temperature: 0.8, seed: 11, stop: ['unsubscribe'] };
    const first = await collect(model('ngram').generate!(params, new AbortController().signal));
    const second = await collect(model('ngram').generate!(params, new AbortController().signal));
    expect(first).to.deep.equal(second);
    expect(first.map((chunk) => chunk.text).join('')).not.to.include('unsubscribe');
    expect(first.at(-1)?.finishReason).to.be.oneOf(['stop', 'length', 'end']);
  });

  it('trains on a cold start and writes one JSON cache file per trained model, leaving no temporary files', () => {
    expect(coldLog.filter((line) => line.includes(': trained in'))).to.have.length(2);
    const files = readdirSync(cacheDir).sort();
    expect(files).to.have.length(2);
    expect(files[0]).to.match(/^ngram-v\d+-[0-9a-f]{8}\.json$/);
    expect(files[1]).to.match(/^spam-nb-v\d+-[0-9a-f]{8}\.json$/);
    expect(statSync(join(cacheDir, files[0])).size).to.be.below(40 * 1024 * 1024);
  });

  it('a second runtime on the same cache directory reads the caches instead of training, with the same metadata', async function () {
    this.timeout(30000);
    const warmLog: string[] = [];
    const warm = await createBuiltinRuntime({ cacheDir, echoDelayMs: 0, log: (line) => warmLog.push(line) }).load();
    expect(warmLog.filter((line) => line.includes(': loaded cache'))).to.have.length(2);
    expect(warmLog.some((line) => line.includes('trained'))).to.equal(false);
    expect(warm.map((m) => m.info)).to.deep.equal([...models.values()].map((m) => m.info));
  });
});
