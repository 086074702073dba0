/**
 * `maas models make-examples`: writes the example models into a model repository folder. The
 * models are made by the worker's own code (spam-onnx is spam-nb exported), so this runs the
 * worker's make-examples entry as a child process, as `maas up` runs the services: the CLI
 * imports no service code.
 */
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';

/** Default repository folder: the workers' default `--model-repository`. */
export const DEFAULT_MODEL_REPOSITORY = '.maas/models';

/** Runs the generator into `out`; resolves with its exit code (its output goes to ours, or all of it to our stderr). */
export function makeExamplesCommand(out: string, llamaSize = 'tiny', output: 'inherit' | 'stderr' = 'inherit'): Promise<number> {
  const entry = resolve(__dirname, '../../services/worker/make-examples.js');
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [entry, '--out', resolve(out), '--llama-size', llamaSize], { stdio: output === 'inherit' ? 'inherit' : ['ignore', process.stderr, process.stderr] });
    child.once('error', fail);
    child.once('exit', (code, signal) => done(code ?? (signal ? 1 : 0)));
  });
}
