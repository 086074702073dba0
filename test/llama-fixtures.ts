/**
 * The tiny GGUF model of the llama.cpp tests, written at test setup (no download): tiny-llama's
 * vocabulary from part of the corpus's training set, with settings small enough for this machine.
 */
import { loadCorpus, splitCorpus } from '../common/corpus/spam-assassin';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeTinyLlama } from '../services/worker/models/gguf-examples';

/** Settings of the test model: 4 sequences of 256 tokens, one thread. */
export const TEST_LLAMA = { sequences: 4, contextLength: 256, threads: 1 };

/** Writes `<repo>/<name>/1/model.gguf` and its config.json; returns the GGUF file's path. */
export async function writeTestLlama(repo: string, name = 'tiny-llama'): Promise<string> {
  const records = splitCorpus(loadCorpus()).train.slice(0, 1500);
  const [file] = await writeTinyLlama(repo, name, 'tiny', records);
  const config = { description: 'test GGUF model', parameters: { sequences: TEST_LLAMA.sequences, context_length: TEST_LLAMA.contextLength, threads: TEST_LLAMA.threads } };
  await writeFile(join(repo, name, 'config.json'), JSON.stringify(config));
  return file;
}
