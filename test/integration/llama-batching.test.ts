/**
 * Continuous batching on one llama.cpp context, in process, many rounds: N concurrent greedy calls
 * on fewer sequences (so calls join while others decode, the case that mixes sequences at
 * different points in one batch) give exactly the text each gives alone. Before sampling was
 * serialized (serializeSampling in services/worker/models/llama.ts) most rounds of this size
 * swapped tokens between two sequences (15 of 20 on this machine), so 10 rounds catch it.
 */
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LlamaCppModel, openGgufModel } from '../../services/worker/models/llama';
import { TEST_LLAMA, writeTestLlama } from '../llama-fixtures';

describe('llama.cpp continuous batching, in process', function () {
  this.timeout(120000);
  let repo: string;
  let model: LlamaCppModel;

  before(async () => {
    repo = mkdtempSync(join(tmpdir(), 'maas-llama-batching-'));
    const file = await writeTestLlama(repo);
    // 8 sequences: more samples per batch than the test mesh's 4, so a race between them shows sooner.
    model = await openGgufModel(file, { name: 'tiny-llama', version: '1', settings: { ...TEST_LLAMA, sequences: 8 } });
  });

  after(async () => {
    await model?.release();
    if (repo) rmSync(repo, { recursive: true, force: true });
  });

  async function text(prompt: string): Promise<string> {
    let out = '';
    for await (const chunk of model.generate({ prompt, maxTokens: 32, temperature: 0, topP: 1, stop: [] }, new AbortController().signal)) out += chunk.text;
    return out;
  }

  it('10 rounds of 12 concurrent greedy calls on 8 sequences each give the text of the call alone', async () => {
    const prompts = ['free money', 'Dear friend', 'the list is', 'unsubscribe now', 'your account', 'we are pleased', 'hello', 'the offer', 'Click here', 'one', 'two', 'three'];
    const alone: string[] = [];
    for (const prompt of prompts) alone.push(await text(prompt));
    expect(new Set(alone).size, 'the prompts give different texts').to.equal(prompts.length);
    const wrong: string[] = [];
    for (let round = 0; round < 10; round++) {
      const together = await Promise.all(prompts.map(text));
      together.forEach((t, i) => {
        if (t !== alone[i]) wrong.push(`round ${round}, prompt ${JSON.stringify(prompts[i])}: ${JSON.stringify(t.slice(0, 40))} instead of ${JSON.stringify(alone[i].slice(0, 40))}`);
      });
    }
    expect(wrong).to.deep.equal([]);
  });
});
