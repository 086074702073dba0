import { expect } from 'chai';
import { performance } from 'node:perf_hooks';
import { mulberry32, NGramModel, StopSequenceFilter, type NGramParams } from '../../../services/worker/models/ngram.js';
import type { GeneratedChunk, GenerateParams } from '../../../services/worker/models/runtime.js';

/** Keep every word and n-gram: the toy corpora are too small to prune. */
const TOY_PARAMS: NGramParams = { minWordCount: 1, minBigramCount: 1, minTrigramCount: 1, discount: 0.75 };

/** A corpus whose greedy path is known: "the cat sat on the mat." five times to "the dog ran." once. */
const GREEDY_CORPUS = [...Array<string>(5).fill('the cat sat on the mat.'), 'the dog ran.'];
const GREEDY_TEXT = 'the cat sat on the mat.';

/** 512 sentences with many branches, four per message: sampling has real choices to make. */
function toySentences(): string[] {
  const subjects = ['the cat', 'a dog', 'my friend', 'the old man', 'our team', 'the bird', 'your sister', 'the teacher'];
  const verbs = ['sees', 'likes', 'finds', 'follows', 'paints', 'calls', 'visits', 'remembers'];
  const objects = ['the river', 'a red ball', 'the garden', 'an old house', 'the moon', 'a small boat', 'the market', 'the song'];
  const adverbs = ['today', 'again', 'slowly', 'at night'];
  const sentences: string[] = [];
  subjects.forEach((s, i) => verbs.forEach((v, j) => objects.forEach((o, k) => sentences.push(`${s} ${v} ${o} ${adverbs[(i + j + k) % 4]}.`))));
  return sentences;
}

function inGroups(sentences: string[], size: number): string[] {
  const messages: string[] = [];
  for (let i = 0; i < sentences.length; i += size) messages.push(sentences.slice(i, i + size).join(' '));
  return messages;
}

function params(overrides: Partial<GenerateParams>): GenerateParams {
  return { prompt: '', maxTokens: 50, temperature: 1, stop: [], ...overrides };
}

async function collect(stream: AsyncIterable<GeneratedChunk>): Promise<GeneratedChunk[]> {
  const chunks: GeneratedChunk[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

function joined(chunks: GeneratedChunk[]): string {
  return chunks.map((chunk) => chunk.text).join('');
}

describe('NGramModel', () => {
  const greedy = NGramModel.train(GREEDY_CORPUS, TOY_PARAMS);
  const messages = NGramModel.train(inGroups(toySentences(), 4), TOY_PARAMS);
  // One long message: the end-of-text token is so rare that generation runs until stopped.
  const endless = NGramModel.train([toySentences().join(' ')], TOY_PARAMS);
  const sample = (model: NGramModel, overrides: Partial<GenerateParams>) =>
    collect(model.sample(params(overrides), new AbortController().signal));

  it('gives a probability distribution (sums to 1) for every context, seen or not', () => {
    for (let u = 0; u < greedy.vocabSize; u++) {
      for (let v = 0; v < greedy.vocabSize; v++) {
        const sum = greedy.distribution(u, v).reduce((total, p) => total + p, 0);
        expect(sum, `context (${u}, ${v})`).to.be.closeTo(1, 1e-9);
      }
    }
  });

  it('reports order 3, its vocabulary with the three boundary tokens, and the predicted-token count', () => {
    expect(greedy.order).to.equal(3);
    // the cat sat on mat . dog ran + <unk> <s> </s>
    expect(greedy.vocabSize).to.equal(11);
    // 7 tokens + </s> five times, 4 + </s> once.
    expect(greedy.trainingTokens).to.equal(5 * 8 + 5);
  });

  it('at temperature 0 follows the argmax path, whatever the seed, and ends with "end"', async () => {
    for (const seed of [1, 2, 3, undefined]) {
      const chunks = await sample(greedy, { temperature: 0, seed });
      expect(joined(chunks), `seed ${seed}`).to.equal(GREEDY_TEXT);
      expect(chunks.at(-1)?.finishReason).to.equal('end');
    }
  });

  it('conditions on the prompt\'s last words, continuing after a space', async () => {
    expect(joined(await sample(greedy, { prompt: 'the dog', temperature: 0 }))).to.equal(' ran.');
    expect(joined(await sample(greedy, { prompt: 'I sat on', temperature: 0 }))).to.equal(' the mat.');
    expect(joined(await sample(greedy, { prompt: 'I sat on ', temperature: 0 }))).to.equal('the mat.');
  });

  it('backs off to shorter contexts for unknown prompt words and still generates', async () => {
    expect(joined(await sample(greedy, { prompt: 'zebra', temperature: 0 }))).to.equal(' the cat sat on the mat.');
  });

  it('at a temperature near 0 samples the greedy path', async () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      expect(joined(await sample(greedy, { temperature: 0.05, seed })), `seed ${seed}`).to.equal(GREEDY_TEXT);
    }
  });

  it('gives identical chunks for the same seed and parameters', async () => {
    const request = { temperature: 0.9, seed: 42, maxTokens: 40, prompt: 'the old man', stop: ['moon'] };
    expect(await sample(messages, request)).to.deep.equal(await sample(messages, request));
  });

  it('gives different outputs for different seeds', async () => {
    const outputs = new Set<string>();
    for (const seed of [1, 2, 3, 4, 5]) outputs.add(joined(await sample(messages, { seed, maxTokens: 30 })));
    expect(outputs.size).to.equal(5);
  });

  it('generates exactly maxTokens tokens, one chunk each, then an empty chunk with "length"', async () => {
    for (const maxTokens of [1, 5, 17]) {
      const chunks = await sample(endless, { seed: 7, maxTokens });
      expect(chunks, `maxTokens ${maxTokens}`).to.have.length(maxTokens + 1);
      expect(chunks.at(-1)).to.deep.equal({ text: '', finishReason: 'length' });
      expect(chunks.slice(0, -1).every((chunk) => chunk.text !== '' && chunk.finishReason === undefined)).to.equal(true);
    }
  });

  it('with maxTokens 0 yields only a final empty chunk', async () => {
    expect(await sample(endless, { maxTokens: 0 })).to.deep.equal([{ text: '', finishReason: 'length' }]);
  });

  it('stops before a one-token stop sequence with "stop"', async () => {
    const chunks = await sample(greedy, { temperature: 0, stop: ['sat'] });
    expect(joined(chunks)).to.equal('the cat ');
    expect(chunks.at(-1)?.finishReason).to.equal('stop');
  });

  it('stops before a stop sequence spanning two tokens, never emitting its first token', async () => {
    const chunks = await sample(greedy, { temperature: 0, stop: ['cat sat'] });
    expect(joined(chunks)).to.equal('the ');
    expect(chunks.some((chunk) => chunk.text.includes('cat'))).to.equal(false);
    expect(chunks.at(-1)?.finishReason).to.equal('stop');
  });

  it('holds back text that may begin a stop sequence and releases it once it cannot', async () => {
    const chunks = await sample(greedy, { temperature: 0, stop: ['cat nap'] });
    expect(chunks.map((chunk) => chunk.text)).to.deep.equal(['the', ' ', 'cat sat', ' on', ' the', ' mat', '.', '']);
    expect(chunks.at(-1)?.finishReason).to.equal('end');
  });

  it('stops at the earliest of several stop sequences', async () => {
    expect(joined(await sample(greedy, { temperature: 0, stop: ['mat', 'on the'] }))).to.equal('the cat sat ');
  });

  it('never emits a stop sequence when sampling, and finishes with "stop" when it would have', async () => {
    const stop = ['the river', 'moon'];
    let stopped = 0;
    for (let seed = 1; seed <= 30; seed++) {
      const chunks = await sample(messages, { seed, maxTokens: 60, stop });
      const text = joined(chunks);
      for (const sequence of stop) expect(text, `seed ${seed}`).not.to.include(sequence);
      if (chunks.at(-1)?.finishReason === 'stop') stopped++;
    }
    expect(stopped).to.be.above(0);
  });

  it('makes identical samples after a toJSON/fromJSON round trip through JSON text', async () => {
    const restored = NGramModel.fromJSON(JSON.parse(JSON.stringify(messages.toJSON())));
    const request = { seed: 9, maxTokens: 40, temperature: 1.3 };
    expect(await sample(restored, request)).to.deep.equal(await sample(messages, request));
  });

  it('stops within 100 ms of an abort, throwing the signal\'s reason, while other timers keep running', async () => {
    const controller = new AbortController();
    const reason = new Error('client cancelled');
    let abortedAt = Number.NaN;
    let chunks = 0;
    // The abort comes from a timer: it can only fire if the loop yields to the event loop between tokens.
    setTimeout(() => {
      abortedAt = performance.now();
      controller.abort(reason);
    }, 20);
    // Greedy decoding on one long message never picks the end token, and 2M tokens take seconds:
    // only the abort can end this stream in time.
    const stream = endless.sample(params({ maxTokens: 2_000_000, temperature: 0 }), controller.signal);
    const error = await (async () => {
      for await (const chunk of stream) {
        chunks++;
        if (chunk.finishReason) return undefined;
      }
    })().then(
      () => new Error('the stream ended before the abort'),
      (e: unknown) => e,
    );
    expect(error).to.equal(reason);
    expect(performance.now() - abortedAt).to.be.below(100);
    expect(chunks).to.be.above(0);
  });

  it('throws at once when the signal is already aborted', async () => {
    const controller = new AbortController();
    controller.abort();
    const error = await collect(endless.sample(params({}), controller.signal)).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect((error as Error).name).to.equal('AbortError');
  });
});

describe('StopSequenceFilter', () => {
  it('ignores empty stop sequences', () => {
    const filter = new StopSequenceFilter(['']);
    expect(filter.push('abc')).to.deep.equal({ text: 'abc', stopped: false });
  });

  it('cuts before a stop sequence that arrives one character at a time', () => {
    const filter = new StopSequenceFilter(['END']);
    const emitted = ['a', 'E', 'N', 'x', 'E', 'N', 'D'].map((piece) => filter.push(piece));
    expect(emitted.map((e) => e.text)).to.deep.equal(['a', '', '', 'ENx', '', '', '']);
    expect(emitted.at(-1)?.stopped).to.equal(true);
  });

  it('flushes held-back text when the output ends without the stop sequence', () => {
    const filter = new StopSequenceFilter(['END']);
    expect(filter.push('xEN').text).to.equal('x');
    expect(filter.flush()).to.equal('EN');
  });
});

describe('mulberry32', () => {
  it('repeats its sequence for the same seed and stays in [0, 1)', () => {
    const [a, b] = [mulberry32(123), mulberry32(123)];
    for (let i = 0; i < 1000; i++) {
      const value = a();
      expect(value).to.equal(b());
      expect(value).to.be.at.least(0).and.below(1);
    }
  });
});
