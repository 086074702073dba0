/**
 * `npm run bench:llm`: streamed generation on a GGUF model (tiny-llama at `bench` size, written by
 * the project's own script) through the mesh, by gRPC Generate and by the OpenAI-compatible HTTP
 * edge's streamed /v1/completions (server-sent events), gateway -> scheduler -> worker (balancer deciding),
 * each its own process, against the same runtime called in this process on the same file (the
 * limit), at concurrency 1, 4 and 16, closed loop: time to first token p50/p99, inter-token latency
 * p50, total tokens per second. The mesh serves the file twice: with 16 sequences (continuous
 * batching) and with 1 (calls one after another), the "without" of the targets; every target uses
 * the same llama.cpp settings (context per sequence, threads).
 *
 * The cells run in rounds (every target at every concurrency, then again), so a burst of load from
 * elsewhere on the machine hits all targets alike rather than one.
 */
import { setMaxListeners } from 'node:events';
import { existsSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { Agent, request as httpRequest } from 'node:http';
import { cpus, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { createMeshClient, openChannel } from '../common/client';
import { InferenceServiceDefinition, Priority } from '../generated/maas/v1/inference';
import { LLAMA_SHAPES, type LlamaShape } from '../common/gguf/llama';
import { GgmlType } from '../common/gguf/writer';
import { writeTinyLlama } from '../services/worker/models/gguf-examples';
import { openGgufModel } from '../services/worker/models/llama';
import { codeVersion, intOption, numberOption, say } from './bench-cli';
import { machineBusyCpuMs, processCpuMs } from './cpu-time';
import { markdownTable, textTable, writeBenchSection } from './benchmarks-doc';
import { renderBarChart } from './lb-chart';
import { freePorts, startLocalMesh } from './local-mesh';

const USAGE = `usage: npm run bench:llm -- [options]     (or: node dist/bench/llm.js [options])

  --duration-s S      measured time per target and concurrency, over all rounds (default 8)
  --rounds N          rounds the cells are split into, interleaved         (default 2)
  --concurrency LIST  closed-loop callers, comma-separated                 (default 1,4,16)
  --max-tokens N      tokens per call                                      (default 64)
  --threads N         llama.cpp threads, in process and in the worker      (default 1)
  --quick             2 s per cell in 1 round, docs/BENCHMARKS.md left alone
  --no-docs           do not rewrite docs/BENCHMARKS.md and docs/bench-llm.svg
`;

const SEQUENCES = 16;
/** Context tokens per sequence beyond max tokens: room for the prompt (a dozen tokens here). */
const PROMPT_ROOM = 64;
/** Targets of the issue. */
const TARGET_SHARE_OF_LIMIT = 0.8;
const TARGET_SPEEDUP_OVER_SERIAL = 2;
const TARGET_ADDED_TTFT_MS = 2;

const IN_PROCESS = 'in-process';
const GRPC = 'mesh gRPC';
const SSE = 'mesh HTTP SSE';
const GRPC_SERIAL = 'mesh gRPC, 1 sequence';
const SSE_SERIAL = 'mesh HTTP SSE, 1 sequence';
const TARGETS = [IN_PROCESS, GRPC, SSE, GRPC_SERIAL, SSE_SERIAL] as const;

/** What one streamed call reports. */
interface CallTiming {
  ttftMs: number;
  gapsMs: number[];
  tokens: number;
}

/** One cell: a target at one concurrency, over every round. */
interface Cell {
  target: string;
  concurrency: number;
  ttftP50: number;
  ttftP99: number;
  itlP50: number;
  tokensPerS: number;
  calls: number;
  errors: number;
  /** CPU time of the target's processes (this one, and the mesh's for a mesh target) per token generated. */
  cpuMsPerToken: number;
  /** Cores kept busy by everything else on the machine while the cell ran. */
  otherCores: number;
}

/** What a cell gathers, round after round. */
interface CellRuns {
  timings: CallTiming[];
  elapsedMs: number;
  errors: number;
  cpuMs: number;
  otherCpuMs: number;
}

/** CPU time used so far by processes `pids` and by the whole machine. */
function cpuNow(pids: readonly (number | 'self')[]): { ours: number; machine: number } {
  return { ours: pids.reduce<number>((sum, pid) => sum + (processCpuMs(pid) ?? NaN), 0), machine: machineBusyCpuMs() ?? NaN };
}

/** A piece of a streamed answer; `arrival: false` marks a trailer that carries only the token count. */
type Piece = { text: string; tokens?: number; arrival?: boolean };
type Stream = (prompt: string, signal: AbortSignal) => AsyncIterable<Piece>;

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
    if (chunk.tokens !== undefined) tokens = chunk.tokens;
    if (chunk.arrival === false) continue;
    const now = performance.now();
    if (Number.isNaN(ttftMs)) ttftMs = now - started;
    else gapsMs.push(now - last);
    last = now;
  }
  return { ttftMs, gapsMs, tokens };
}

/** Runs `concurrency` closed-loop callers for `durationMs` and adds what they saw to `runs`. */
async function measure(label: string, stream: Stream, pids: readonly (number | 'self')[], concurrency: number, durationMs: number, round: number, runs: CellRuns): Promise<void> {
  const cpuBefore = cpuNow(pids);
  const signal = new AbortController().signal;
  setMaxListeners(concurrency + 10, signal);
  const started = performance.now();
  const end = started + durationMs;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, caller) => {
      for (let i = 0; performance.now() < end; i++) {
        try {
          runs.timings.push(await timeCall(stream, `Dear friend number ${caller} round ${round} call ${i}, the offer`, signal));
        } catch (err) {
          runs.errors++;
          if (runs.errors === 1) say(`  ${label} c=${concurrency}: ${(err as Error).message}`);
        }
      }
    }),
  );
  runs.elapsedMs += performance.now() - started;
  const cpuAfter = cpuNow(pids);
  runs.cpuMs += cpuAfter.ours - cpuBefore.ours;
  runs.otherCpuMs += cpuAfter.machine - cpuBefore.machine - (cpuAfter.ours - cpuBefore.ours);
}

function summarize(target: string, concurrency: number, runs: CellRuns): Cell {
  const { timings } = runs;
  const tokens = timings.reduce((sum, t) => sum + t.tokens, 0);
  return {
    target,
    concurrency,
    ttftP50: percentile(timings.map((t) => t.ttftMs), 50),
    ttftP99: percentile(timings.map((t) => t.ttftMs), 99),
    itlP50: percentile(timings.flatMap((t) => t.gapsMs), 50),
    tokensPerS: (tokens * 1000) / runs.elapsedMs,
    calls: timings.length,
    errors: runs.errors,
    cpuMsPerToken: runs.cpuMs / tokens,
    otherCores: runs.otherCpuMs / runs.elapsedMs,
  };
}

/**
 * Streamed /v1/completions on the gateway's HTTP edge, read as server-sent events: a piece per
 * `data:` event with a choice, the token count from the usage trailer (`stream_options.include_usage`).
 */
function viaHttp(port: number, model: string, maxTokens: number, agent: Agent): Stream {
  return (prompt, signal) => ({
    async *[Symbol.asyncIterator]() {
      const body = JSON.stringify({ model, prompt, max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true } });
      const response = await new Promise<import('node:http').IncomingMessage>((resolve, reject) => {
        const req = httpRequest({ host: '127.0.0.1', port, path: '/v1/completions', method: 'POST', agent, signal, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, resolve);
        req.once('error', reject);
        req.end(body);
      });
      if (response.statusCode !== 200) {
        let text = '';
        for await (const part of response) text += String(part);
        throw new Error(`HTTP ${response.statusCode}: ${text.slice(0, 200)}`);
      }
      response.setEncoding('utf8');
      let buffered = '';
      for await (const part of response as AsyncIterable<string>) {
        buffered += part;
        for (let end = buffered.indexOf('\n\n'); end >= 0; end = buffered.indexOf('\n\n')) {
          const event = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          if (!event.startsWith('data: ')) continue;
          const data = event.slice('data: '.length);
          if (data === '[DONE]') return;
          const parsed = JSON.parse(data) as { choices?: { text: string }[]; usage?: { completion_tokens: number } | null; error?: { message: string } };
          if (parsed.error) throw new Error(parsed.error.message);
          if (parsed.choices && parsed.choices.length > 0) yield { text: parsed.choices[0].text };
          else if (parsed.usage) yield { text: '', tokens: parsed.usage.completion_tokens, arrival: false };
        }
      }
    },
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'duration-s': { type: 'string' },
      rounds: { type: 'string' },
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
  const rounds = values.quick ? 1 : intOption('rounds', values.rounds, 2, 1, 100);
  const maxTokens = intOption('max-tokens', values['max-tokens'], 64, 1, 4096);
  const threads = intOption('threads', values.threads, 1, 1, 256);
  const levels = values.concurrency!.split(',').map((c) => intOption('concurrency', c.trim(), 1, 1, 256));
  const contextLength = maxTokens + PROMPT_ROOM;
  const repoDir = resolve(__dirname, '../..');
  const distDir = resolve(__dirname, '..');
  const shape = LLAMA_SHAPES.bench;

  // The model: written once into the cache (a folder per shape, so a new shape is written anew), then reused.
  const modelRepo = join(repoDir, '.cache', 'bench-llm', `${shape.layers}x${shape.embedding}x${shape.feedForward}x${shape.vocabulary}`);
  const file = join(modelRepo, 'llm-batched', '1', 'model.gguf');
  if (!existsSync(file)) {
    say('writing the bench-size GGUF model (once; a minute or two) ...');
    await writeTinyLlama(modelRepo, 'llm-batched', 'bench');
  }
  const settings = (sequences: number) => ({ sequences, contextLength, threads });
  const config = (sequences: number) => JSON.stringify({ description: `bench GGUF model, ${sequences} sequence(s)`, parameters: { sequences, context_length: contextLength, threads } });
  writeFileSync(join(modelRepo, 'llm-batched', 'config.json'), config(SEQUENCES));
  mkdirSync(join(modelRepo, 'llm-serial', '1'), { recursive: true });
  rmSync(join(modelRepo, 'llm-serial', '1', 'model.gguf'), { force: true });
  symlinkSync(file, join(modelRepo, 'llm-serial', '1', 'model.gguf'));
  writeFileSync(join(modelRepo, 'llm-serial', 'config.json'), config(1));

  // The limit: the runtime in this process, no gRPC, with the mesh's settings.
  const local = await openGgufModel(file, { name: 'llm', version: '1', settings: settings(SEQUENCES) });
  const inProcess: Stream = async function* (prompt, signal) {
    for await (const chunk of local.generate({ prompt, maxTokens, temperature: 0, stop: [] }, signal)) {
      yield { text: chunk.text, tokens: chunk.usage?.completionTokens };
    }
  };

  say('starting the mesh ...');
  const abort = new AbortController();
  const [httpPort] = await freePorts(1);
  const mesh = await startLocalMesh({
    distDir,
    repoDir,
    model: 'llm-batched',
    startTimeoutMs: 180_000,
    signal: abort.signal,
    log: () => undefined,
    onUnexpectedExit: (m) => say(`mesh: ${m}`),
    extraArgs: { worker: ['--model-repository', modelRepo, '--concurrency', '64'], gateway: ['--http-port', String(httpPort)] },
  });
  const channel = openChannel(mesh.addresses.gateway);
  const inference = createMeshClient(InferenceServiceDefinition, channel);
  const agent = new Agent({ keepAlive: true, maxSockets: 256 });
  const viaGrpc = (model: string): Stream =>
    async function* (prompt, signal) {
      const request = { model, prompt, maxTokens, temperature: 0, stop: [], priority: Priority.PRIORITY_NORMAL, affinityKey: '', messages: [] };
      for await (const chunk of inference.generate(request, { signal })) yield { text: chunk.text, tokens: chunk.usage?.completionTokens };
    };
  const streams: Record<(typeof TARGETS)[number], Stream> = {
    [IN_PROCESS]: inProcess,
    [GRPC]: viaGrpc('llm-batched'),
    [SSE]: viaHttp(httpPort, 'llm-batched', maxTokens, agent),
    [GRPC_SERIAL]: viaGrpc('llm-serial'),
    [SSE_SERIAL]: viaHttp(httpPort, 'llm-serial', maxTokens, agent),
  };
  const runs = new Map<string, CellRuns>();
  const runsOf = (target: string, c: number) => {
    const key = `${target}\u0000${c}`;
    if (!runs.has(key)) runs.set(key, { timings: [], elapsedMs: 0, errors: 0, cpuMs: 0, otherCpuMs: 0 });
    return runs.get(key)!;
  };
  const meshPids: (number | 'self')[] = ['self', ...mesh.processes.map((p) => p.pid)];
  const loadBefore = loadavg()[0];
  try {
    for (const target of TARGETS) await timeCall(streams[target], 'warm up', abort.signal);
    for (let round = 0; round < rounds; round++) {
      for (const c of levels) {
        // The order of the targets turns each round, so none always runs first.
        for (let k = 0; k < TARGETS.length; k++) {
          const target = TARGETS[(k + round) % TARGETS.length];
          say(`round ${round + 1}/${rounds}: ${target} c=${c} ...`);
          await measure(target, streams[target], target === IN_PROCESS ? ['self'] : meshPids, c, durationMs / rounds, round, runsOf(target, c));
        }
      }
    }
  } finally {
    agent.destroy();
    channel.close();
    await mesh.stop();
    await local.release();
  }
  const loadAfter = loadavg()[0];
  const cells = TARGETS.flatMap((target) => levels.map((c) => summarize(target, c, runsOf(target, c))));

  const headers = ['target', 'c', 'TTFT p50 ms', 'TTFT p99 ms', 'ITL p50 ms', 'tokens/s', 'calls', 'errors', 'CPU ms/token', 'other load, cores'];
  const rows = cells.map((x) => [x.target, x.concurrency, x.ttftP50.toFixed(1), x.ttftP99.toFixed(1), x.itlP50.toFixed(2), x.tokensPerS.toFixed(0), x.calls, x.errors, x.cpuMsPerToken.toFixed(2), x.otherCores.toFixed(2)]);
  const aligned = [false, true, true, true, true, true, true, true, true, true];
  const find = (target: string, c: number) => cells.find((x) => x.target === target && x.concurrency === c);
  const verdicts: string[] = [];
  const top = Math.max(...levels);
  const limit = find(IN_PROCESS, top);
  for (const [batched, serial] of [
    [GRPC, GRPC_SERIAL],
    [SSE, SSE_SERIAL],
  ]) {
    const b = find(batched, top);
    const s = find(serial, top);
    if (!limit || !b || !s) continue;
    const share = b.tokensPerS / limit.tokensPerS;
    const speedup = b.tokensPerS / s.tokensPerS;
    verdicts.push(`c=${top}, ${batched}: tokens/s = ${(share * 100).toFixed(0)}% of the in-process limit (target >= ${TARGET_SHARE_OF_LIMIT * 100}%: ${share >= TARGET_SHARE_OF_LIMIT ? 'met' : 'MISSED'})`);
    verdicts.push(`c=${top}, ${batched}: continuous batching = ${speedup.toFixed(2)}x the same mesh with 1 sequence (target >= ${TARGET_SPEEDUP_OVER_SERIAL}x: ${speedup >= TARGET_SPEEDUP_OVER_SERIAL ? 'met' : 'MISSED'})`);
  }
  const limit1 = find(IN_PROCESS, 1);
  for (const target of [GRPC, SSE]) {
    const mesh1 = find(target, 1);
    if (!limit1 || !mesh1) continue;
    const added = mesh1.ttftP50 - limit1.ttftP50;
    verdicts.push(`c=1, ${target}: added time to first token (p50) = ${added.toFixed(2)} ms (target <= ${TARGET_ADDED_TTFT_MS} ms: ${added <= TARGET_ADDED_TTFT_MS ? 'met' : 'MISSED'})`);
  }
  const batchingInProcess = limit && limit1 ? limit.tokensPerS / limit1.tokensPerS : NaN;
  if (Number.isFinite(batchingInProcess)) verdicts.push(`in process: c=${top} gives ${batchingInProcess.toFixed(2)}x the tokens/s of c=1 (what continuous batching can buy with this model and these threads)`);
  process.stdout.write(`${textTable(headers, rows, aligned)}\n\n${verdicts.join('\n')}\n`);

  if (!values.quick && !values['no-docs']) {
    const cpu = `${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}`;
    const code = codeVersion(repoDir);
    const params = modelParameters(shape);
    const f16 = (shape.type as GgmlType) === GgmlType.F16;
    const modelLine = `${shape.layers} layers, width ${shape.embedding}, feed-forward ${shape.feedForward}, ${shape.vocabulary.toLocaleString('en-US')}-piece vocabulary, ${f16 ? 'F16' : 'F32'}: ${(params / 1e6).toFixed(0)}M parameters, ${((params * (f16 ? 2 : 4)) / 1e6).toFixed(0)} MB of weights`;
    const svg = renderBarChart({
      title: 'bench:llm: tokens per second, mesh vs in-process (higher is better)',
      subtitle: [`${shape.layers} x ${shape.embedding} ${f16 ? 'F16' : 'F32'} model, ${(params / 1e6).toFixed(0)}M parameters; ${maxTokens} tokens per call, greedy; ${SEQUENCES} sequences or 1; context ${contextLength}; threads ${threads}`, `${code}; ${cpu}, load average ${loadBefore.toFixed(1)} before, ${loadAfter.toFixed(1)} after`],
      yLabel: 'tokens/s',
      panels: levels.map((c) => ({
        title: `c=${c}`,
        bars: TARGETS.map((target) => ({ label: target, value: find(target, c)?.tokensPerS ?? NaN })),
        ...(c === top && limit ? { line: { value: limit.tokensPerS * TARGET_SHARE_OF_LIMIT, label: `${TARGET_SHARE_OF_LIMIT * 100}% of in-process` } } : {}),
      })),
    });
    writeFileSync(join(repoDir, 'docs', 'bench-llm.svg'), svg);
    const body = `## LLM: streamed Generate on a GGUF model, mesh vs in-process

Command: \`${['npm run bench:llm', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' ')}\` (${durationMs / 1000} s per cell in ${rounds} interleaved rounds, ${maxTokens} tokens per call, greedy,
llama.cpp threads ${threads}, context ${contextLength} tokens per sequence, ${SEQUENCES} sequences or 1). Model: tiny-llama at \`bench\` size
(${modelLine}), written by \`maas models make-examples --llama-size bench\`'s code.
"in-process" is the worker's llama.cpp runtime (services/worker/models/llama.ts on node-llama-cpp)
called in the benchmark's process with the mesh's settings; the mesh targets go through gateway, scheduler, balancer and worker
(each its own process), by gRPC Generate or by the HTTP edge's streamed \`/v1/completions\` (server-sent events);
"1 sequence" is the same mesh serving the same file with one sequence (calls one after another).
Code: ${code}. Machine: ${cpu}, load average ${loadBefore.toFixed(2)} before the run, ${loadAfter.toFixed(2)} at the end.
"CPU ms/token": CPU time of the target's processes (the benchmark's, plus the mesh's four for a mesh target) per token;
"other load": cores kept busy by everything else on the machine while the cell ran (other engineers' tests; ${cpus().length} cores in all).

${markdownTable(headers, rows, aligned)}

${verdicts.map((v) => `- ${v}`).join('\n')}

![tokens per second per target and concurrency](bench-llm.svg)
`;
    writeBenchSection(join(repoDir, 'docs', 'BENCHMARKS.md'), 'llm', body);
    say('wrote docs/BENCHMARKS.md (section llm) and docs/bench-llm.svg');
  }
}

/** Parameters of a Llama shape (the vocabulary counted at its preset size). */
function modelParameters(shape: LlamaShape): number {
  const kvWidth = (shape.embedding / shape.heads) * shape.kvHeads;
  const perLayer = 2 * shape.embedding * shape.embedding + 2 * shape.embedding * kvWidth + 3 * shape.embedding * shape.feedForward;
  return shape.layers * perLayer + 2 * shape.vocabulary * shape.embedding;
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:llm: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
