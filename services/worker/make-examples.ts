/**
 * Process entry of `maas models make-examples --out DIR [--llama-size tiny|bench]`: writes the
 * example models (spam-onnx, mlp, tiny-llama) into the model repository DIR (default
 * .maas/models), each as `<model>/1/model.onnx` (or `model.gguf`) and `<model>/config.json`.
 * Same output on every run.
 */
import { relative } from 'node:path';
import { parseArgs } from 'node:util';
import { loadCorpus, splitCorpus } from '../../common/corpus/spam-assassin';
import { LLAMA_SHAPES, type LlamaSize } from '../../common/gguf/llama';
import { writeModels } from '../../common/onnx/examples';
import { writeTinyLlama } from './models/gguf-examples';
import { exampleModels } from './models/onnx-examples';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { out: { type: 'string', default: '.maas/models' }, 'llama-size': { type: 'string', default: 'tiny' } } });
  const size = values['llama-size']!;
  if (!Object.hasOwn(LLAMA_SHAPES, size)) throw new Error(`--llama-size must be one of ${Object.keys(LLAMA_SHAPES).join(', ')}, given ${JSON.stringify(size.slice(0, 40))}`);
  const started = performance.now();
  const split = splitCorpus(loadCorpus());
  const models = exampleModels(split);
  const written = await writeModels(values.out!, models);
  written.push(...(await writeTinyLlama(values.out!, 'tiny-llama', size as LlamaSize, split.train)));
  for (const path of written) process.stdout.write(`wrote ${relative(process.cwd(), path)}\n`);
  process.stdout.write(`${[...models.map((m) => m.name), 'tiny-llama'].join(', ')} in ${Math.round(performance.now() - started)} ms\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`make-examples: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
