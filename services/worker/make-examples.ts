/**
 * Process entry of `maas models make-examples --out DIR`: writes the example models (spam-onnx,
 * mlp) into the model repository DIR (default .maas/models), each as
 * `<model>/1/model.onnx` and `<model>/config.json`. Same output on every run.
 */
import { relative } from 'node:path';
import { parseArgs } from 'node:util';
import { writeModels } from '../../common/onnx/examples';
import { exampleModels } from './models/onnx-examples';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { out: { type: 'string', default: '.maas/models' } } });
  const started = performance.now();
  const models = exampleModels();
  const written = await writeModels(values.out!, models);
  for (const path of written) process.stdout.write(`wrote ${relative(process.cwd(), path)}\n`);
  process.stdout.write(`${models.map((m) => m.name).join(', ')} in ${Math.round(performance.now() - started)} ms\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`make-examples: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
