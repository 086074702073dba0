import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { expect } from 'chai';
import * as ort from 'onnxruntime-node';
import { loadCorpus, splitCorpus, type CorpusSplit } from '../../common/corpus/spam-assassin.js';
import { mlpModel, spamOnnxModel, writeModels, type ExampleModel } from '../../common/onnx/examples.js';
import { mulberry32 } from '../../common/random.js';
import { trainSpamNb } from '../../services/worker/models/builtin.js';
import type { NaiveBayes } from '../../services/worker/models/naive-bayes.js';
import { exampleModels } from '../../services/worker/models/onnx-examples.js';
import { tokenize } from '../../services/worker/models/tokenizer.js';

/** The spam-onnx input for texts: tokenized as spam-nb does, rows padded with empty strings (an empty text is one empty token). */
function tokensTensor(texts: readonly string[]): ort.Tensor {
  const rows = texts.map((text) => tokenize(text, { lowercase: true }));
  const width = Math.max(1, ...rows.map((row) => row.length));
  const data = rows.flatMap((row) => [...row, ...new Array<string>(width - row.length).fill('')]);
  return new ort.Tensor('string', data, [texts.length, width]);
}

describe('example ONNX models', function () {
  this.timeout(120_000);
  let split: CorpusSplit;
  let nb: NaiveBayes;
  let models: ExampleModel[];
  let spam: ort.InferenceSession;
  let mlp: ort.InferenceSession;

  before(async () => {
    split = splitCorpus(loadCorpus());
    nb = trainSpamNb(split.train);
    models = exampleModels(split);
    spam = await ort.InferenceSession.create(models[0].onnx, { intraOpNumThreads: 1 });
    mlp = await ort.InferenceSession.create(models[1].onnx, { intraOpNumThreads: 1 });
  });
  after(async () => {
    await spam?.release();
    await mlp?.release();
  });

  describe('spam-onnx', () => {
    it("predicts spam-nb's label on every held-out record, with its probabilities", async () => {
      const labels = nb.labels;
      let agree = 0;
      let worst = 0;
      for (const record of split.test) {
        const { probabilities } = await spam.run({ tokens: tokensTensor([record.body]) });
        const p = probabilities.data as Float32Array;
        const expected = nb.predict(record.body);
        // argmax, first index on a tie, as spam-nb does
        if (labels[p[1] > p[0] ? 1 : 0] === expected.label) agree++;
        labels.forEach((label, c) => (worst = Math.max(worst, Math.abs(p[c] - expected.probabilities[label]))));
      }
      expect(split.test.length).to.be.greaterThan(1000);
      expect(agree, `held-out records where spam-onnx and spam-nb agree, of ${split.test.length}`).to.equal(split.test.length);
      // Scores are computed in double precision; only the final cast to FP32 rounds.
      expect(worst).to.be.lessThan(1e-6);
    });

    it('counts a repeated word each time and ignores words outside the vocabulary, as spam-nb does', async () => {
      const texts = ['free', 'free free free', 'zzqqxx-not-a-word', '', 'free zzqqxx-not-a-word money'];
      const { probabilities } = await spam.run({ tokens: tokensTensor(texts) });
      const p = probabilities.data as Float32Array;
      const spamColumn = nb.labels.indexOf('spam');
      texts.forEach((text, row) => expect(p[row * 2 + spamColumn], JSON.stringify(text)).to.be.closeTo(nb.predict(text).probabilities.spam, 1e-6));
      // Repetition matters (multinomial), and unknown words give the priors.
      expect(p[1 * 2 + spamColumn]).to.not.be.closeTo(p[0 * 2 + spamColumn], 1e-3);
      expect(p[2 * 2 + spamColumn]).to.equal(p[3 * 2 + spamColumn]);
    });

    it('gives each row of a padded batch what it gives that text alone', async () => {
      const texts = split.test.slice(0, 16).map((record) => record.body);
      const batch = (await spam.run({ tokens: tokensTensor(texts) })).probabilities.data as Float32Array;
      for (const [row, text] of texts.entries()) {
        const alone = (await spam.run({ tokens: tokensTensor([text]) })).probabilities.data as Float32Array;
        expect([...batch.slice(row * 2, row * 2 + 2)], `row ${row}`).to.deep.equal([...alone]);
      }
    });

    it('declares tokens STRING [batch, tokens] -> probabilities FLOAT [batch, 2], and a config.json saying how text becomes tokens', () => {
      expect(spam.inputMetadata).to.deep.equal([{ name: 'tokens', isTensor: true, type: 'string', shape: ['batch', 'tokens'] }]);
      expect(spam.outputMetadata).to.deep.equal([{ name: 'probabilities', isTensor: true, type: 'float32', shape: ['batch', 2] }]);
      expect(models[0].config).to.deep.include({
        max_batch_size: 64,
        input: [{ name: 'tokens', data_type: 'TYPE_STRING', dims: [-1] }],
        output: [{ name: 'probabilities', data_type: 'TYPE_FP32', dims: [2] }],
        labels: ['ham', 'spam'],
        parameters: { text_input: 'tokens', text_tokenizer: 'words_lowercase' },
      });
      expect(models[0].config.labels).to.deep.equal(nb.labels);
    });
  });

  describe('mlp', () => {
    const random = mulberry32(3);
    const x = Float32Array.from({ length: 64 * 64 }, () => 4 * random() - 2);

    it('runs a batch of 1 and a batch of 64, and each row of the batch equals that row run alone', async () => {
      const batch = (await mlp.run({ x: new ort.Tensor('float32', x, [64, 64]) })).probabilities;
      expect(batch.dims).to.deep.equal([64, 10]);
      const rows = batch.data as Float32Array;
      for (let r = 0; r < 64; r++) {
        const alone = (await mlp.run({ x: new ort.Tensor('float32', x.slice(r * 64, (r + 1) * 64), [1, 64]) })).probabilities;
        expect(alone.dims).to.deep.equal([1, 10]);
        expect([...rows.slice(r * 10, (r + 1) * 10)], `row ${r}`).to.deep.equal([...(alone.data as Float32Array)]);
        expect((alone.data as Float32Array).reduce((sum, v) => sum + v, 0)).to.be.closeTo(1, 1e-5);
      }
      // Different inputs give different outputs: the weights are not degenerate.
      expect([...rows.slice(0, 10)]).to.not.deep.equal([...rows.slice(10, 20)]);
    });

    it('declares a dynamic batch dimension, and its config turns dynamic batching on with max_batch_size 64', () => {
      expect(mlp.inputMetadata).to.deep.equal([{ name: 'x', isTensor: true, type: 'float32', shape: ['batch', 64] }]);
      expect(mlp.outputMetadata).to.deep.equal([{ name: 'probabilities', isTensor: true, type: 'float32', shape: ['batch', 10] }]);
      expect(models[1].config).to.deep.include({
        max_batch_size: 64,
        input: [{ name: 'x', data_type: 'TYPE_FP32', dims: [64] }],
        output: [{ name: 'probabilities', data_type: 'TYPE_FP32', dims: [10] }],
        dynamic_batching: { max_queue_delay_microseconds: 0 },
      });
    });

    it('other seeds give other weights', () => {
      const small = { hidden: [8], seed: 1 };
      expect(Buffer.from(mlpModel(small).onnx).equals(Buffer.from(mlpModel({ ...small, seed: 2 }).onnx))).to.equal(false);
    });
  });

  describe('the generator', () => {
    it('makes the same bytes every time', () => {
      const again = exampleModels(split);
      expect(again.map((m) => m.name)).to.deep.equal(['spam-onnx', 'mlp']);
      again.forEach((model, i) => {
        expect(Buffer.from(model.onnx).equals(Buffer.from(models[i].onnx)), model.name).to.equal(true);
        expect(model.config).to.deep.equal(models[i].config);
      });
    });

    it('writes the repository layout <model>/<version>/model.onnx and <model>/config.json', async () => {
      const out = await mkdtemp(join(tmpdir(), 'maas-examples-'));
      try {
        await writeModels(out, models);
        const files = (await readdir(out, { recursive: true })).map((f) => relative(out, join(out, f))).sort();
        expect(files).to.deep.equal(['mlp', 'mlp/1', 'mlp/1/model.onnx', 'mlp/config.json', 'spam-onnx', 'spam-onnx/1', 'spam-onnx/1/model.onnx', 'spam-onnx/config.json']);
        expect((await readFile(join(out, 'mlp/1/model.onnx'))).equals(Buffer.from(models[1].onnx))).to.equal(true);
        expect(JSON.parse(await readFile(join(out, 'spam-onnx/config.json'), 'utf8'))).to.deep.equal(models[0].config);
      } finally {
        await rm(out, { recursive: true, force: true });
      }
    });

    it('`maas models make-examples --out DIR` writes the same files', async () => {
      const out = await mkdtemp(join(tmpdir(), 'maas-examples-cli-'));
      try {
        const cli = join(__dirname, '../../gateway/cli/maas.js');
        const child = spawn(process.execPath, [cli, 'models', 'make-examples', '--out', out], { stdio: ['ignore', 'pipe', 'pipe'] });
        let output = '';
        child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
        child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
        const [code] = (await once(child, 'exit')) as [number | null];
        expect(code, output).to.equal(0);
        for (const model of models) {
          expect((await readFile(join(out, model.name, '1', 'model.onnx'))).equals(Buffer.from(model.onnx)), model.name).to.equal(true);
          expect(JSON.parse(await readFile(join(out, model.name, 'config.json'), 'utf8'))).to.deep.equal(model.config);
        }
      } finally {
        await rm(out, { recursive: true, force: true });
      }
    });

    it('refuses a vocabulary holding the empty string (it pads rows)', () => {
      const params = { labels: ['a', 'b'], vocab: ['x', ''], logPriors: [-1, -1], logLikelihoods: [[-1, -1], [-1, -1]] };
      expect(() => spamOnnxModel(params)).to.throw('spam-onnx pads rows with empty strings, so the vocabulary cannot hold one');
    });
  });
});
