import { expect } from 'chai';
import { performance } from 'node:perf_hooks';
import { createEchoModel } from '../../../services/worker/models/echo.js';
import type { GeneratedChunk, GenerateParams } from '../../../services/worker/models/runtime.js';

function params(prompt: string, maxTokens = 100): GenerateParams {
  return { prompt, maxTokens, temperature: 1, stop: [] };
}

async function collect(stream: AsyncIterable<GeneratedChunk>): Promise<GeneratedChunk[]> {
  const chunks: GeneratedChunk[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

describe('echo model', () => {
  it('supports generate and classify', () => {
    const model = createEchoModel();
    expect(model.info.name).to.equal('echo');
    expect(model.info.tasks).to.deep.equal(['generate', 'classify']);
  });

  it('streams the prompt\'s words one per chunk, the first without a leading space, ending with "end"', async () => {
    const chunks = await collect(createEchoModel().generate!(params('  hello big\n world '), new AbortController().signal));
    expect(chunks).to.deep.equal([{ text: 'hello' }, { text: ' big' }, { text: ' world', finishReason: 'end' }]);
  });

  it('stops after maxTokens words with finish reason "length"', async () => {
    const chunks = await collect(createEchoModel().generate!(params('a b c d', 2), new AbortController().signal));
    expect(chunks).to.deep.equal([{ text: 'a' }, { text: ' b', finishReason: 'length' }]);
  });

  it('answers an empty prompt with one empty final chunk', async () => {
    const chunks = await collect(createEchoModel().generate!(params(''), new AbortController().signal));
    expect(chunks).to.deep.equal([{ text: '', finishReason: 'end' }]);
  });

  it('waits the configured delay before each token', async () => {
    const delayMs = 25;
    const started = performance.now();
    const chunks = await collect(createEchoModel({ delayMs }).generate!(params('one two three'), new AbortController().signal));
    // Node may fire a timer up to a millisecond early.
    expect(performance.now() - started).to.be.at.least(3 * delayMs - 3);
    expect(chunks).to.have.length(3);
  });

  it('predicts its input with label "echo" and probability 1, after one delay', async () => {
    const delayMs = 25;
    const started = performance.now();
    const prediction = await createEchoModel({ delayMs }).predict!('some input', new AbortController().signal);
    expect(performance.now() - started).to.be.at.least(delayMs - 1);
    expect(prediction).to.deep.equal({ label: 'echo', probabilities: { echo: 1 }, text: 'some input' });
  });

  it('rejects with the signal\'s reason within 100 ms when aborted during a long delay', async () => {
    const controller = new AbortController();
    const reason = new Error('client went away');
    const stream = createEchoModel({ delayMs: 10000 }).generate!(params('never sent'), controller.signal);
    const next = stream[Symbol.asyncIterator]().next();
    const abortedAt = performance.now();
    controller.abort(reason);
    const error = await next.then(() => undefined, (e: unknown) => e);
    expect(performance.now() - abortedAt).to.be.below(100);
    expect(error).to.equal(reason);
  });

  it('rejects a prediction with the signal\'s reason when aborted during its delay', async () => {
    const controller = new AbortController();
    const pending = createEchoModel({ delayMs: 10000 }).predict!('x', controller.signal);
    controller.abort();
    const error = await pending.then(() => undefined, (e: unknown) => e);
    expect(error).to.equal(controller.signal.reason);
    expect((error as Error).name).to.equal('AbortError');
  });
});
