/**
 * The example GGUF model of the model repository (`maas models make-examples`): `tiny-llama`, a
 * Llama-architecture model whose vocabulary is the most frequent words of the Spam Assassin
 * corpus the built-in models train on, with seeded weights. `bench` size is the benchmark's.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomically } from '../../../common/atomic-file.js';
import { loadCorpus, splitCorpus, type MailRecord } from '../../../common/corpus/spam-assassin.js';
import { LLAMA_SHAPES, llamaGguf, type LlamaSize } from '../../../common/gguf/llama.js';
import { tokenize } from './tokenizer.js';

/** Seed of the example model's weights. */
export const TINY_LLAMA_SEED = 20260101;
/** Longest word the vocabulary takes. */
const MAX_WORD = 16;

/** Words of the records, most frequent first (ties in code-unit order): ASCII letters, digits and `'`. */
export function corpusWords(records: readonly MailRecord[]): string[] {
  const counts = new Map<string, number>();
  for (const record of records) {
    for (const token of tokenize(record.body)) {
      if (token.length <= MAX_WORD && /^[A-Za-z0-9']+$/.test(token)) counts.set(token, (counts.get(token) ?? 0) + 1);
    }
  }
  return [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)).map(([w]) => w);
}

/** The GGUF file of tiny-llama (or its `bench` size); `records` default to the corpus's training set. */
export function tinyLlamaFile(size: LlamaSize = 'tiny', records: readonly MailRecord[] = splitCorpus(loadCorpus()).train): Buffer {
  return llamaGguf({ name: size === 'tiny' ? 'tiny-llama' : `tiny-llama-${size}`, words: corpusWords(records), shape: LLAMA_SHAPES[size], seed: TINY_LLAMA_SEED });
}

/** The config.json written beside the file. */
export const TINY_LLAMA_CONFIG = {
  description: 'tiny-llama: a 2-layer Llama-architecture GGUF model with a Spam Assassin word vocabulary and seeded weights (writes no good text; exercises llama.cpp end to end)',
  parameters: { sequences: 4, context_length: 1024 },
};

/**
 * Writes `<out>/<name>/1/model.gguf` and `<out>/<name>/config.json`; returns the paths written.
 * The file is written to a temporary name and renamed, so a worker never reads half of it.
 */
export async function writeTinyLlama(out: string, name = 'tiny-llama', size: LlamaSize = 'tiny', records?: readonly MailRecord[]): Promise<string[]> {
  const dir = join(out, name);
  await mkdir(join(dir, '1'), { recursive: true });
  const file = join(dir, '1', 'model.gguf');
  const config = join(dir, 'config.json');
  await writeFileAtomically(file, tinyLlamaFile(size, records));
  await writeFileAtomically(config, `${JSON.stringify(TINY_LLAMA_CONFIG, null, 2)}\n`);
  return [file, config];
}
