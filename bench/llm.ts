/**
 * `npm run bench:llm`: streamed generation on a GGUF model (tiny-llama at `bench` size, written by
 * the project's own script) through the mesh's gRPC Generate (gateway -> scheduler -> balancer ->
 * worker, each its own process) against the same runtime called in this process on the same file
 * (the limit), at concurrency 1, 4 and 16, closed loop: time to first token p50/p99, inter-token
 * latency p50, total tokens per second. The mesh runs the model twice: with 16 sequences
 * (continuous batching) and with 1 (calls one after another), the "without" of the targets.
 *
 * The HTTP SSE path (the OpenAI-compatible edge) is not measured here yet.
 */
import { setMaxListeners } from 'node:events';
import { existsSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { createMeshClient, openChannel } from '../common/client';
import { InferenceServiceDefinition, Priority } from '../generated/maas/v1/inference';
import { writeTinyLlama } from '../services/worker/models/gguf-examples';
import { openGgufModel } from '../services/worker/models/llama';
import { codeVersion, intOption, numberOption, say } from './bench-cli';
import { markdownTable, textTable, writeBenchSection } from './benchmarks-doc';
import { startLocalMesh } from './local-mesh';

const USAGE = `usage: npm run bench:llm -- [options]     (or: node dist/bench/llm.js [options])

  --duration-s S      measured time per target and concurrency   (default 8)
  --concurrency LIST  closed-loop callers, comma-separated       (default 1,4,16)
  --max-tokens N      tokens per call                            (default 64)
  --threads N         llama.cpp threads                           (default 1)
  --quick             2 s per cell, docs/BENCHMARKS.md left alone
  --no-docs           do not rewrite docs/BENCHMARKS.md
`;

const SEQUENCES = 16;
const CONTEXT = 512;
/** Targets of the issue. */
const TARGET_SHARE_OF_LIMIT = 0.8;
const TARGET_SPEEDUP_OVER_SERIAL = 2;
const TARGET_ADDED_TTFT_MS = 2;

/** What one streamed call reports. */
interface CallTiming {
  ttftMs: number;
  gapsMs: number[];
  tokens: number;
}

/** One cell: a target at one concurrency. */
interface Cell {
  target: string;
  concurrency: number;
  ttftP50: number;
  ttftP99: number;
  itlP50: number;
  tokensPerS: number;
  calls: number;
  errors: number;
}

type Stream = (prompt: string, signal: AbortSignal) => AsyncIterable<{ text: string; tokens?: number }>;

function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

async function timeCall(stream: Stream, prompt: string, signal: AbortSignal): Promise<CallTiming> {
  const started = performance.now();
  let last = started;
  let ttftMs = NaN;
  const gapsMs: number[] = [];
  let tokens = 0;
  for await (const chunk of stream(prompt, signal)) {
    const now = performance.now();
    if (Number.isNaN(ttftMs)) ttftMs = now - started;
    else gapsMs.push(now - last);
    last = now;
    if (chunk.tokens !== undefined) tokens = chunk.tokens;
  }
  return { ttftMs, gapsMs, tokens };
}

async function measure(target: string, stream: Stream, concurrency: number, durationMs: number): Promise<Cell> {
  const timings: CallTiming[] = [];
  let errors = 0;
  const signal = new AbortController().signal;
  setMaxListeners(concurrency + 10, signal);
  const started = performance.now();
  const end = started + durationMs;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, caller) => {
      for (let i = 0; performance.now() < end; i++) {
        try {
          timings.push(await timeCall(stream, `Dear friend number ${caller} call ${i}, the offer`, signal));
        } catch (err) {
          errors++;
          if (errors === 1) say(`  ${target} c=${concurrency}: ${(err as Error).message}`);
        }
      }
    }),
  );
  const elapsed = performance.now() - started;
  const tokens = timings.reduce((sum, t) => sum + t.tokens, 0);
  return {
    target,
    concurrency,
    ttftP50: percentile(timings.map((t) => t.ttftMs), 50),
    ttftP99: percentile(timings.map((t) => t.ttftMs), 99),
    itlP50: percentile(timings.flatMap((t) => t.gapsMs), 50),
    tokensPerS: (tokens * 1000) / elapsed,
    calls: timings.length,
    errors,
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'duration-s': { type: 'string' },
      concurrency: { type: 'string', default: '1,4,16' },
      'max-tokens': { type: 'string' },
      threads: { type: 'string' },
      quick: { type: 'boolean', default: false },
      'no-docs': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) return void process.stdout.write(USAGE);
  const durationMs = (values.quick ? 2 : numberOption('duration-s', values['duration-s'], 8, 0.5, 600)) * 1000;
  const maxTokens = intOption('max-tokens', values['max-tokens'], 64, 1, CONTEXT - 64);
  const threads = intOption('threads', values.threads, 1, 1, 256);
  const levels = values.concurrency!.split(',').map((c) => intOption('concurrency', c.trim(), 1, 1, 256));
  const repoDir = resolve(__dirname, '../..');
  const distDir = resolve(__dirname, '..');

  // The model: written once into the cache (about 20 s), then reused.
  const modelRepo = join(repoDir, '.cache', 'bench-llm', 'models');
  const file = join(modelRepo, 'llm-batched', '1', 'model.gguf');
  if (!existsSync(file)) {
    say('writing the bench-size GGUF model ...');
    await writeTinyLlama(modelRepo, 'llm-batched', 'bench');
  }
  const config = (sequences: number) => JSON.stringify({ description: `bench GGUF model, ${sequences} sequence(s)`, parameters: { sequences, context_length: CONTEXT, threads } });
  writeFileSync(join(modelRepo, 'llm-batched', 'config.json'), config(SEQUENCES));
  mkdirSync(join(modelRepo, 'llm-serial', '1'), { recursive: true });
  rmSync(join(modelRepo, 'llm-serial', '1', 'model.gguf'), { force: true });
  symlinkSync(file, join(modelRepo, 'llm-serial', '1', 'model.gguf'));
  writeFileSync(join(modelRepo, 'llm-serial', 'config.json'), config(1));

  const cells: Cell[] = [];
  // The limit: the runtime in this process, no gRPC.
  say('in-process ...');
  const local = await openGgufModel(file, { name: 'llm', version: '1', settings: { sequences: SEQUENCES, contextLength: CONTEXT, threads } });
  const inProcess: Stream = async function* (prompt, signal) {
    for await (const chunk of local.generate({ prompt, maxTokens, temperature: 0, stop: [] }, signal)) {
      yield { text: chunk.text, tokens: chunk.usage?.completionTokens };
    }
  };
  await timeCall(inProcess, 'warm up', new AbortController().signal);
  for (const c of levels) cells.push(await measure('in-process', inProcess, c, durationMs));
  await local.release();

  say('starting the mesh ...');
  const abort = new AbortController();
  const mesh = await startLocalMesh({
    distDir,
    repoDir,
    model: 'llm-batched',
    startTimeoutMs: 120_000,
    signal: abort.signal,
    log: () => undefined,
    onUnexpectedExit: (m) => say(`mesh: ${m}`),
    extraArgs: { worker: ['--model-repository', modelRepo, '--concurrency', '64'] },
  });
  const channel = openChannel(mesh.addresses.gateway);
  const inference = createMeshClient(InferenceServiceDefinition, channel);
  const viaMesh = (model: string): Stream =>
    async function* (prompt, signal) {
      const request = { model, prompt, maxTokens, temperature: 0, stop: [], priority: Priority.PRIORITY_NORMAL, affinityKey: '', messages: [] };
      for await (const chunk of inference.generate(request, { signal })) yield { text: chunk.text, tokens: chunk.usage?.completionTokens };
    };
  try {
    for (const [target, model] of [['mesh gRPC, 16 sequences', 'llm-batched'], ['mesh gRPC, 1 sequence', 'llm-serial']] as const) {
      say(`${target} ...`);
      await timeCall(viaMesh(model), 'warm up', abort.signal);
      for (const c of levels) cells.push(await measure(target, viaMesh(model), c, durationMs));
    }
  } finally {
    channel.close();
    await mesh.stop();
  }

  const headers = ['target', 'c', 'TTFT p50 ms', 'TTFT p99 ms', 'ITL p50 ms', 'tokens/s', 'calls', 'errors'];
  const rows = cells.map((x) => [x.target, x.concurrency, x.ttftP50.toFixed(1), x.ttftP99.toFixed(1), x.itlP50.toFixed(2), x.tokensPerS.toFixed(0), x.calls, x.errors]);
  const aligned = [false, true, true, true, true, true, true, true];
  const find = (target: string, c: number) => cells.find((x) => x.target === target && x.concurrency === c);
  const verdicts: string[] = [];
  const top = Math.max(...levels);
  const limit = find('in-process', top);
  const batched = find('mesh gRPC, 16 sequences', top);
  const serial = find('mesh gRPC, 1 sequence', top);
  if (limit && batched && serial) {
    const share = batched.tokensPerS / limit.tokensPerS;
    const speedup = batched.tokensPerS / serial.tokensPerS;
    verdicts.push(`c=${top}: mesh tokens/s = ${(share * 100).toFixed(0)}% of the in-process limit (target >= ${TARGET_SHARE_OF_LIMIT * 100}%: ${share >= TARGET_SHARE_OF_LIMIT ? 'met' : 'MISSED'})`);
    verdicts.push(`c=${top}: continuous batching = ${speedup.toFixed(2)}x the mesh with 1 sequence (target >= ${TARGET_SPEEDUP_OVER_SERIAL}x: ${speedup >= TARGET_SPEEDUP_OVER_SERIAL ? 'met' : 'MISSED'})`);
  }
  const limit1 = find('in-process', 1);
  const batched1 = find('mesh gRPC, 16 sequences', 1);
  if (limit1 && batched1) {
    const added = batched1.ttftP50 - limit1.ttftP50;
    verdicts.push(`c=1: added time to first token (p50) = ${added.toFixed(2)} ms (target <= ${TARGET_ADDED_TTFT_MS} ms: ${added <= TARGET_ADDED_TTFT_MS ? 'met' : 'MISSED'})`);
  }
  process.stdout.write(`${textTable(headers, rows, aligned)}\n\n${verdicts.join('\n')}\n`);

  if (!values.quick && !values['no-docs']) {
    const machine = `${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, load average ${loadavg()[0].toFixed(2)} at the end`;
    const body = `## LLM: streamed Generate on a GGUF model, mesh vs in-process

Command: \`npm run bench:llm\` (${durationMs / 1000} s per cell, ${maxTokens} tokens per call, greedy,
llama.cpp threads ${threads}, context ${CONTEXT} tokens per sequence). Model: tiny-llama at \`bench\` size
(4 layers, width 256, F16, 8,192-piece vocabulary), written by \`maas models make-examples --llama-size bench\`'s code.
"in-process" is the worker's llama.cpp runtime (services/worker/models/llama.ts on node-llama-cpp)
called in the benchmark's process; the mesh targets go through gateway, scheduler, balancer and worker
(each its own process). Code: ${codeVersion(repoDir)}. Machine: ${machine}. Not measured yet: the HTTP SSE edge.

${markdownTable(headers, rows, aligned)}

${verdicts.map((v) => `- ${v}`).join('\n')}
`;
    writeBenchSection(join(repoDir, 'docs', 'BENCHMARKS.md'), 'llm', body);
    say('wrote docs/BENCHMARKS.md (section llm)');
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:llm: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
