/**
 * `npm run bench`: requests per second and p50/p99 latency of Predict on the `echo` model (no
 * delay), through the whole mesh (gateway -> worker on the scheduler's admission permits, gateway -> scheduler -> worker
 * for a call whose tenant holds none free; the balancer deciding where each call goes off the data path; each its own process)
 * and, as the baseline in the same run, straight to the one worker (WorkerService/Execute). When
 * an `nginx` binary is installed, a third row makes the same Execute call through nginx's
 * `grpc_pass` in front of that worker (./nginx-proxy): the proxy a user would put there instead.
 * Closed loop: N callers each issue calls back to back. The paths alternate in slices (direct,
 * nginx, mesh, mesh, nginx, direct, ...) so that a noisy machine hurts them alike.
 *
 * Prints a table and the two ratios the targets are about, and rewrites its own section of
 * docs/BENCHMARKS.md. `--profile` runs the services under `node --cpu-prof` and summarises where
 * they spend their time while the mesh is measured (its numbers are then not the reference ones,
 * so it writes only the profile section).
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Channel } from 'nice-grpc';
import { createMeshClient, openChannel } from '../common/client';
import { WorkerServiceDefinition } from '../generated/maas/internal/v1/worker';
import { GenerateRequest, InferenceServiceDefinition, Priority } from '../generated/maas/v1/inference';
import { markdownTable, textTable, writeBenchSection } from './benchmarks-doc';
import { TimeWindow, formatProfileSummary, summariseCpuProfile } from './cpu-profile';
import { LocalMesh, MESH_PROCESS_NAMES, startLocalMesh } from './local-mesh';
import { NGINX_WORKER_PROCESSES, NginxProxy, findNginx, startNginxProxy } from './nginx-proxy';
import { LatencySummary, LoadSample, mergeSamples, runSlice, summarise } from './stats';
import {
  abortOnInterrupt,
  codeVersion,
  cpuPerRequestTable,
  cpuSampler,
  describeErrors,
  exitWhenDone,
  failedCallLines,
  intListOption,
  markdownReportHead,
  markdownVerdicts,
  monotonicUs,
  runFrame,
  say,
  secondsOption,
  textReportHead,
} from './bench-cli';

const USAGE = `usage: npm run bench -- [options]     (or: node dist/bench/online.js [options])

  --prime-s S         before anything is measured, each Predict path serves S seconds at the
                      highest concurrency, so the services run JIT-compiled code, as a
                      service that has been serving does; 0 leaves it out (env BENCH_PRIME_S, default 3)
  --warmup-s S        warm-up per mode and concurrency, discarded   (env BENCH_WARMUP_S, default 2)
  --duration-s S      measured time per mode and concurrency        (env BENCH_DURATION_S, default 8)
  --rounds N          measured slices per mode, interleaved ABBA     (env BENCH_ROUNDS, default 4)
  --concurrency LIST  closed-loop callers, comma-separated          (env BENCH_CONCURRENCY, default 1,64)
  --generate-concurrency LIST
                      callers of the streamed Generate rows (64 tokens each; 0 leaves them out)
                                                                     (env BENCH_GENERATE_CONCURRENCY, default 16)
  --input TEXT        the Predict input                              (env BENCH_INPUT)
  --quick             priming 1 s, warm-up 0.5 s, 2 s measured, and docs/BENCHMARKS.md left alone
  --no-docs           do not rewrite docs/BENCHMARKS.md
  --no-nginx          leave out the nginx grpc_pass row even when nginx is installed (BENCH_NGINX=0)
  --profile           run the services under node --cpu-prof and summarise their hot functions
                      while the mesh is measured (profiles in .cache/bench-profiles/)
`;

/** The issue's targets (issue 11). */
const TARGET_ADDED_P50_MS_AT_1 = 1.0;
const TARGET_THROUGHPUT_SHARE_AT_64 = 0.5;
const TARGET_GENERATE_SHARE = 0.7;

/** Streamed Generate: echo streams one token per word of the prompt, this many. */
const GENERATE_TOKENS = 64;
const GENERATE_PROMPT = Array.from({ length: GENERATE_TOKENS }, (_, i) => `w${i}`).join(' ');

const MODEL = 'echo';
const DEFAULT_INPUT = 'the quick brown fox jumps over the lazy dog';

type Mode = 'direct' | 'nginx' | 'mesh' | 'direct generate' | 'mesh generate';
/** Processes whose CPU time is counted: the bench itself (the client), the mesh, and nginx's worker when it runs. */
type CpuOwner = 'client' | (typeof MESH_PROCESS_NAMES)[number] | 'nginx';
/** CPU time is also counted for the whole machine, to show how much else ran on the cores. */
type CpuAccount = CpuOwner | 'machine';

interface BenchOptions {
  /** Each Predict path first serves this long at the highest concurrency (discarded). */
  primeMs: number;
  warmupMs: number;
  durationMs: number;
  rounds: number;
  concurrencies: number[];
  /** Concurrencies of the streamed Generate rows; empty: none. */
  generateConcurrencies: number[];
  input: string;
  writeDocs: boolean;
  profile: boolean;
  /** Add the nginx row when an nginx binary is found. */
  nginx: boolean;
  argv: string[];
}

/** One cell of the result: a mode at a concurrency. */
interface Cell {
  mode: Mode;
  concurrency: number;
  slices: LoadSample[];
  /** CPU milliseconds used per process (and by the whole machine) during the measured slices. */
  cpuMs: Record<CpuAccount, number>;
  /** When the measured slices ran, for the profiles. */
  windows: TimeWindow[];
}

const repoDir = resolve(__dirname, '../..');
const distDir = resolve(__dirname, '..');

function parseOptions(argv: string[], env: NodeJS.ProcessEnv): BenchOptions | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      'prime-s': { type: 'string', default: env.BENCH_PRIME_S },
      'warmup-s': { type: 'string', default: env.BENCH_WARMUP_S },
      'duration-s': { type: 'string', default: env.BENCH_DURATION_S },
      rounds: { type: 'string', default: env.BENCH_ROUNDS },
      concurrency: { type: 'string', default: env.BENCH_CONCURRENCY },
      'generate-concurrency': { type: 'string', default: env.BENCH_GENERATE_CONCURRENCY },
      input: { type: 'string', default: env.BENCH_INPUT },
      quick: { type: 'boolean', default: false },
      'no-docs': { type: 'boolean', default: false },
      profile: { type: 'boolean', default: env.BENCH_PROFILE === '1' },
      'no-nginx': { type: 'boolean', default: env.BENCH_NGINX === '0' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return undefined;
  }
  const rounds = Number(values.rounds || 4);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds must be an integer >= 1, given "${values.rounds}"`);
  const concurrencies = intListOption('concurrency', values.concurrency, '1,64', 1, 10_000);
  const input = values.input ?? DEFAULT_INPUT;
  if (input === '') throw new Error('--input must not be empty');
  const generateConcurrencies = values['generate-concurrency'] === '0' ? [] : intListOption('generate-concurrency', values['generate-concurrency'], '16', 1, 10_000);
  return {
    generateConcurrencies,
    primeMs: secondsOption('prime-s', values['prime-s'], values.quick ? 1 : 3, 0),
    warmupMs: secondsOption('warmup-s', values['warmup-s'], values.quick ? 0.5 : 2, 0),
    durationMs: secondsOption('duration-s', values['duration-s'], values.quick ? 2 : 8, 0.1),
    rounds,
    concurrencies,
    input,
    writeDocs: !values['no-docs'] && !values.quick,
    profile: values.profile!,
    nginx: !values['no-nginx'],
    argv,
  };
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2), process.env);
  if (!options) return 0;
  if (process.env.OTEL_EXPORTER_OTLP_ENDPOINT || process.env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || process.env.OTEL_TRACES_EXPORTER) {
    say('note: OTEL_* export variables are set; the services export spans during the bench');
  }

  const abort = new AbortController();
  const releaseSignals = abortOnInterrupt(abort, 'the mesh');

  const profileDir = options.profile ? resolve(repoDir, '.cache/bench-profiles', new Date().toISOString().replace(/[:.]/g, '-')) : undefined;
  if (profileDir) mkdirSync(profileDir, { recursive: true });

  const code = codeVersion(repoDir);
  const loadBefore = loadavg();
  say(`starting the mesh (balancer, worker, scheduler, gateway)${profileDir ? ` under --cpu-prof, profiles in ${profileDir}` : ''}…`);
  const mesh = await startLocalMesh({
    distDir,
    repoDir,
    model: MODEL,
    startTimeoutMs: 300_000,
    // The bench measures what the mesh can carry, not the per-tenant rate limit: one tenant at
    // c=64 sends more than the default 1000 calls/s on a fast day, and its refusals would count
    // as errors. Every other limit stays at its default; the settings line says so.
    extraArgs: { scheduler: ['--tenant-rate', '0'] },
    nodeFlags: profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, '--cpu-prof-name={name}.cpuprofile'] : undefined,
    signal: abort.signal,
    log: (line) => say(line),
    onUnexpectedExit: (message) => abort.abort(new Error(message)),
  });
  let cells: Cell[];
  let nginx: NginxProxy | undefined;
  let nginxNote: string | undefined;
  try {
    say(`mesh ready: gateway ${mesh.addresses.gateway}, worker ${mesh.addresses.worker}`);
    const binary = options.nginx ? findNginx() : undefined;
    if (!options.nginx) nginxNote = 'left out (--no-nginx)';
    else if (!binary) nginxNote = 'skipped: no nginx binary on PATH or in /usr/sbin (Debian: apt-get install nginx-light)';
    else {
      nginx = await startNginxProxy({
        binary,
        upstream: mesh.addresses.worker,
        startTimeoutMs: 30_000,
        signal: abort.signal,
        log: (line) => say(line),
        onUnexpectedExit: (message) => abort.abort(new Error(message)),
      });
      say(`nginx ${nginx.version} ready: ${nginx.address} -> worker ${mesh.addresses.worker} (grpc_pass, ${NGINX_WORKER_PROCESSES} worker process)`);
    }
    if (nginxNote) say(`note: nginx row ${nginxNote}`);
    cells = await measure(options, mesh, nginx, abort.signal);
  } finally {
    await nginx?.stop();
    await mesh.stop();
  }
  const loadAfter = loadavg();
  releaseSignals();

  const report = buildReport(options, cells, code, loadBefore, loadAfter, nginx?.version, nginxNote);
  process.stdout.write(`\n${report.text}\n`);
  if (profileDir) {
    const profile = profileReport(options, cells, code, profileDir);
    process.stdout.write(`\n${profile.text}\n`);
    if (options.writeDocs) {
      writeBenchSection(resolve(repoDir, 'docs/BENCHMARKS.md'), 'online-profile', profile.markdown);
      say('wrote the profile section of docs/BENCHMARKS.md (the results section is only written by runs without --profile)');
    }
  } else if (options.writeDocs) {
    writeBenchSection(resolve(repoDir, 'docs/BENCHMARKS.md'), 'online', report.markdown);
    say('wrote docs/BENCHMARKS.md');
  }
  return 0;
}

/** Runs every mode at every concurrency: warm-ups, then measured slices in ABBA order. */
async function measure(o: BenchOptions, mesh: LocalMesh, nginx: NginxProxy | undefined, signal: AbortSignal): Promise<Cell[]> {
  const channels: Channel[] = [];
  const open = (address: string) => {
    const channel = openChannel(address);
    channels.push(channel);
    return channel;
  };
  const modes: Mode[] = nginx ? ['direct', 'nginx', 'mesh'] : ['direct', 'mesh'];
  const worker = createMeshClient(WorkerServiceDefinition, open(mesh.addresses.worker));
  const viaNginx = nginx && createMeshClient(WorkerServiceDefinition, open(nginx.address));
  const gateway = createMeshClient(InferenceServiceDefinition, open(mesh.addresses.gateway));
  const input = o.input;

  /** WorkerService/Execute of a Predict on `client`: straight to the worker, or through nginx. */
  async function execute(client: typeof worker, callSignal: AbortSignal): Promise<void> {
    const task = {
      requestId: randomUUID(),
      tenant: 'bench',
      request: { $case: 'predict' as const, predict: { model: MODEL, input, priority: Priority.PRIORITY_NORMAL } },
    };
    let answered = false;
    for await (const response of client.execute({ task }, { signal: callSignal })) {
      const output = response.output?.output;
      if (output?.$case === 'prediction') {
        if (output.prediction.text !== input) throw new Error(`worker answered "${output.prediction.text}", expected the input back`);
        answered = true;
      }
    }
    if (!answered) throw new Error('worker answered no prediction');
  }

  /** A streamed Generate of GENERATE_TOKENS tokens: every token must arrive. */
  async function generateDirect(callSignal: AbortSignal): Promise<void> {
    const task = {
      requestId: randomUUID(),
      tenant: 'bench',
      request: { $case: 'generate' as const, generate: GenerateRequest.fromPartial({ model: MODEL, prompt: GENERATE_PROMPT, maxTokens: GENERATE_TOKENS }) },
    };
    let tokens = 0;
    for await (const response of worker.execute({ task }, { signal: callSignal })) if (response.output?.output?.$case === 'chunk') tokens++;
    if (tokens !== GENERATE_TOKENS) throw new Error(`worker streamed ${tokens} chunks, expected ${GENERATE_TOKENS}`);
  }
  async function generateMesh(callSignal: AbortSignal): Promise<void> {
    let tokens = 0;
    for await (const _chunk of gateway.generate({ model: MODEL, prompt: GENERATE_PROMPT, maxTokens: GENERATE_TOKENS }, { signal: callSignal })) tokens++;
    if (tokens !== GENERATE_TOKENS) throw new Error(`gateway streamed ${tokens} chunks, expected ${GENERATE_TOKENS}`);
  }

  const calls: Record<Mode, (signal: AbortSignal) => Promise<void>> = {
    'direct generate': generateDirect,
    'mesh generate': generateMesh,
    direct: (callSignal) => execute(worker, callSignal),
    nginx: (callSignal) => execute(viaNginx!, callSignal),
    async mesh(callSignal) {
      const response = await gateway.predict({ model: MODEL, input, priority: Priority.PRIORITY_NORMAL }, { signal: callSignal });
      if (response.text !== input) throw new Error(`gateway answered "${response.text}", expected the input back`);
    },
  };

  try {
    // One call each way first, so that a broken path fails in moments, not after the warm-up.
    for (const mode of modes) await calls[mode](signal);

    // nginx's worker process, forked by now, does the relaying; its master only supervises.
    const nginxWorker = nginx?.workerPids()[0];
    const pids: Partial<Record<CpuOwner, number | 'self'>> = { client: 'self', ...mesh.pids, ...(nginxWorker ? { nginx: nginxWorker } : {}) };
    const cpuNow = cpuSampler(pids as Record<CpuOwner, number | 'self'>);
    const accounts = [...(Object.keys(pids) as CpuOwner[]), 'machine'] as const;

    const cells: Cell[] = [];
    const phases: { modes: Mode[]; concurrency: number }[] = [
      ...o.concurrencies.map((concurrency) => ({ modes, concurrency })),
      ...o.generateConcurrencies.map((concurrency) => ({ modes: ['direct generate', 'mesh generate'] as Mode[], concurrency })),
    ];
    for (const mode of phases.some((p) => p.modes.includes('mesh generate')) ? (['direct generate', 'mesh generate'] as Mode[]) : []) await calls[mode](signal);
    // Priming: a freshly started Node process runs its first thousand calls in its interpreter and
    // baseline tiers. The c=1 rows alone, 2 s of warm-up at 100 to 500 calls a second, would
    // measure that start-up, not the service; so every Predict path first serves at the highest
    // concurrency, as a service that has been taking traffic has.
    if (o.primeMs > 0) {
      const primeConcurrency = Math.max(...o.concurrencies);
      for (const mode of modes) {
        say(`${mode}: priming, ${o.primeMs / 1000} s at c=${primeConcurrency}`);
        const primed = await runSlice(calls[mode], primeConcurrency, o.primeMs, signal);
        if (primed.latenciesMs.length === 0) throw new Error(`${mode}: every priming call failed: ${[...primed.errorMessages.keys()][0]}`);
      }
    }
    for (const { modes, concurrency } of phases) {
      const cellOf = Object.fromEntries(
        modes.map((mode) => {
          const cell: Cell = { mode, concurrency, slices: [], windows: [], cpuMs: Object.fromEntries(accounts.map((p) => [p, 0])) as Record<CpuAccount, number> };
          cells.push(cell);
          return [mode, cell];
        }),
      ) as Record<Mode, Cell>;
      const sliceMs = o.durationMs / o.rounds;
      const run = (mode: Mode, ms: number) => runSlice(calls[mode], concurrency, ms, signal);
      for (const mode of modes) {
        if (o.warmupMs <= 0) break;
        say(`c=${concurrency} ${mode}: warm-up ${o.warmupMs / 1000} s`);
        const warm = await run(mode, o.warmupMs);
        if (warm.latenciesMs.length === 0) throw new Error(`${mode} at c=${concurrency}: every warm-up call failed: ${[...warm.errorMessages.keys()][0]}`);
      }
      for (let round = 0; round < o.rounds; round++) {
        for (const mode of round % 2 === 0 ? modes : [...modes].reverse()) {
          const cell = cellOf[mode];
          say(`c=${concurrency} ${mode}: slice ${round + 1}/${o.rounds}, ${(sliceMs / 1000).toFixed(1)} s`);
          const cpuBefore = cpuNow();
          const startUs = monotonicUs();
          const sample = await run(mode, sliceMs);
          cell.windows.push({ startUs, endUs: monotonicUs() });
          const cpuAfter = cpuNow();
          for (const p of accounts) cell.cpuMs[p] += cpuAfter[p] - cpuBefore[p];
          cell.slices.push(sample);
          if (sample.errors > 0) say(`  ${sample.errors} calls failed: ${describeErrors(sample.errorMessages)}`);
        }
      }
    }
    return cells;
  } finally {
    for (const channel of channels) channel.close();
  }
}

const ms = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : 'n/a');

/** The printed and the markdown report of a run. */
function buildReport(o: BenchOptions, cells: Cell[], code: string, loadBefore: number[], loadAfter: number[], nginxVersion: string | undefined, nginxNote: string | undefined): { text: string; markdown: string } {
  const summaries = cells.map((c) => ({ cell: c, s: summarise(mergeSamples(c.slices)) }));
  const find = (mode: Mode, concurrency: number): LatencySummary | undefined =>
    summaries.find((x) => x.cell.mode === mode && x.cell.concurrency === concurrency)?.s;

  const headers = ['mode', 'concurrency', 'requests', 'errors', 'rps', 'p50 ms', 'p99 ms', 'tokens/s'];
  const right = [false, true, true, true, true, true, true, true];
  const rows = summaries.map(({ cell, s }) => [cell.mode, cell.concurrency, s.requests, s.errors, s.rps.toFixed(0), ms(s.p50Ms), ms(s.p99Ms), cell.mode.endsWith('generate') ? (s.rps * GENERATE_TOKENS).toFixed(0) : '']);

  // CPU per request, per process: where the mesh's cost lands (Linux /proc; 10 ms resolution).
  const owners: CpuOwner[] = ['client', ...MESH_PROCESS_NAMES, ...(cells.some((c) => 'nginx' in c.cpuMs) ? ['nginx' as const] : [])];
  const cpu = cpuPerRequestTable(
    owners,
    summaries.map(({ cell, s }) => ({ label: cell.mode, concurrency: cell.concurrency, requests: s.requests, wallMs: cell.slices.reduce((t, x) => t + x.elapsedMs, 0), cpuMs: cell.cpuMs })),
  );

  const d1 = find('direct', 1);
  const m1 = find('mesh', 1);
  const d64 = find('direct', 64);
  const m64 = find('mesh', 64);
  const ratioLines: string[] = [];
  if (d1 && m1) {
    const added = m1.p50Ms - d1.p50Ms;
    ratioLines.push(
      `mesh added latency at p50, c=1: ${ms(added)} ms (mesh ${ms(m1.p50Ms)} - direct ${ms(d1.p50Ms)}); target <= ${TARGET_ADDED_P50_MS_AT_1} ms: ${added <= TARGET_ADDED_P50_MS_AT_1 ? 'MET' : 'MISSED'}`,
      `  (for information: added at p99, c=1: ${ms(m1.p99Ms - d1.p99Ms)} ms)`,
    );
  } else {
    ratioLines.push('mesh added latency at p50, c=1: not measured (run with concurrency 1)');
  }
  if (d64 && m64) {
    const share = m64.rps / d64.rps;
    ratioLines.push(
      `mesh/direct throughput at c=64: ${(100 * share).toFixed(1)}% (mesh ${m64.rps.toFixed(0)} rps / direct ${d64.rps.toFixed(0)} rps); target >= ${100 * TARGET_THROUGHPUT_SHARE_AT_64}%: ${share >= TARGET_THROUGHPUT_SHARE_AT_64 ? 'MET' : 'MISSED'}`,
    );
  } else {
    ratioLines.push('mesh/direct throughput at c=64: not measured (run with concurrency 64)');
  }
  for (const c of o.generateConcurrencies) {
    const dg = find('direct generate', c);
    const mg = find('mesh generate', c);
    if (!dg || !mg) continue;
    const share = mg.rps / dg.rps;
    const target = c === 16 ? `target >= ${100 * TARGET_GENERATE_SHARE}%: ${share >= TARGET_GENERATE_SHARE ? 'MET' : 'MISSED'}` : 'the target is at c=16';
    ratioLines.push(`mesh/direct streamed Generate tokens/s at c=${c}: ${(100 * share).toFixed(1)}% (mesh ${(mg.rps * GENERATE_TOKENS).toFixed(0)} / direct ${(dg.rps * GENERATE_TOKENS).toFixed(0)} tokens/s, ${GENERATE_TOKENS} tokens a call); ${target}`);
  }
  // nginx: what a proxy a user would choose instead costs, in the same run (no target of its own).
  const n1 = find('nginx', 1);
  const n64 = find('nginx', 64);
  if (n1 && d1) ratioLines.push(`nginx added latency at p50, c=1: ${ms(n1.p50Ms - d1.p50Ms)} ms (nginx ${ms(n1.p50Ms)} - direct ${ms(d1.p50Ms)}); for comparison, no target`);
  if (n64 && d64) ratioLines.push(`nginx/direct throughput at c=64: ${((100 * n64.rps) / d64.rps).toFixed(1)}% (nginx ${n64.rps.toFixed(0)} rps / direct ${d64.rps.toFixed(0)} rps); for comparison, no target`);
  if (nginxNote) ratioLines.push(`nginx row ${nginxNote}`);

  const failed = failedCallLines(
    summaries.filter(({ s }) => s.errors > 0).map(({ cell }) => `${cell.mode} c=${cell.concurrency}: ${describeErrors(mergeSamples(cell.slices).errorMessages)}`),
  );
  const run = runFrame('bench', 'online', o.argv, code, loadBefore, loadAfter);
  const settings =
    `${o.primeMs > 0 ? `priming ${o.primeMs / 1000} s per Predict path at c=${Math.max(...o.concurrencies)} before any row (discarded); ` : 'no priming; '}` +
    `warm-up ${o.warmupMs / 1000} s per mode and concurrency (discarded); ${o.durationMs / 1000} s measured per mode and concurrency, ` +
    `in ${o.rounds} slice${o.rounds > 1 ? 's' : ''} alternating ${nginxVersion ? 'direct/nginx/mesh (ABCCBA)' : 'direct/mesh (ABBA)'}; closed loop; Predict input "${o.input}" (${o.input.length} chars); ` +
    `echo delay 0; one client process (this one) with one channel per target; the mesh at its default limits except the per-tenant rate limit, off (scheduler --tenant-rate 0: one tenant at c=64 may send more than its default 1000 calls/s)`;

  const text = [
    ...textReportHead(`Predict on ${MODEL}: mesh (gateway -> worker on the scheduler's permits, else via the scheduler; routed by the balancer)${nginxVersion ? ` and nginx ${nginxVersion} grpc_pass` : ''} vs direct worker (WorkerService/Execute)`, run, settings),
    '',
    textTable(headers, rows, right),
    '',
    ...ratioLines,
    ...failed.text,
    '',
    `CPU per request, by process (from /proc; the client is this bench process${nginxVersion ? ", nginx is nginx's worker process" : ''}; cores busy: ours = these processes, machine = every process):`,
    textTable(cpu.headers, cpu.rows, cpu.right),
  ].join('\n');

  const markdown = [
    ...markdownReportHead('Online: Predict on echo, mesh vs direct worker', run, 'is a short run that leaves this file alone', 'The machine is shared, so runs vary; the baseline is measured in the same run.'),
    `- What: requests per second and latency of \`maas.v1.InferenceService/Predict\` on \`${MODEL}\` at the gateway, through the mesh (each service its own process): gateway -> worker for a call on an admission permit the scheduler granted ahead, gateway -> scheduler -> worker for a call whose tenant holds no free permit; the balancer decides each call's worker over the dispatcher's Dispatch stream, off the data path, against the same call made straight to the worker (\`maas.internal.v1.WorkerService/Execute\`).`,
    nginxVersion
      ? `- nginx row: the direct call (\`WorkerService/Execute\`) through nginx ${nginxVersion} (\`grpc_pass\` over kept-alive upstream connections, ${NGINX_WORKER_PROCESSES} worker process, started by the bench; see \`bench/nginx-proxy.ts\`): what a user would put in front of the worker instead of the mesh.`
      : `- nginx row: ${nginxNote}.`,
    `- Settings: ${settings}.`,
    '',
    markdownTable(headers, rows, right),
    '',
    ...markdownVerdicts(ratioLines),
    ...failed.markdown,
    '',
    'CPU per request, by process, during the measured slices (from /proc, 10 ms resolution; `client` is the bench process; `cores busy` is CPU time over wall time, of these processes (`ours`) and of the whole machine, whose other work competes for the same cores):',
    '',
    markdownTable(cpu.headers, cpu.rows, cpu.right),
  ].join('\n');
  return { text, markdown };
}

/** Summaries of each service's CPU profile within the mesh's measured slices. */
function profileReport(o: BenchOptions, cells: Cell[], code: string, dir: string): { text: string; markdown: string } {
  const blocks: string[] = [];
  for (const cell of cells.filter((c) => c.mode.startsWith('mesh'))) {
    for (const name of MESH_PROCESS_NAMES) {
      const file = resolve(dir, `${name}.cpuprofile`);
      if (!existsSync(file)) {
        blocks.push(`${name}: no profile written (${file})`);
        continue;
      }
      const summary = summariseCpuProfile(file, cell.windows, repoDir);
      blocks.push(formatProfileSummary(`${cell.mode} c=${cell.concurrency}, ${name}`, summary, cell.concurrency === Math.max(...o.concurrencies) ? 15 : 8).join('\n'));
    }
  }
  const text = ['CPU profiles of the services while the mesh was measured (self time):', '', ...blocks.flatMap((b) => [b, ''])].join('\n');
  const markdown = [
    '## Online: where the mesh spends its CPU (profile)',
    '',
    `- Command: \`npm run bench -- ${o.argv.join(' ')}\` (services under \`node --cpu-prof\`, which slows them; these numbers are for the shape, not the totals)`,
    `- Date: ${new Date().toISOString()}; Node ${process.version}; ${availableParallelism()} CPUs; code: ${code}`,
    '- Self time per process, only samples taken while the mesh (not the direct baseline) was measured; percentages are of that process\'s busy time.',
    '',
    '```',
    blocks.join('\n\n'),
    '```',
  ].join('\n');
  return { text, markdown };
}

exitWhenDone('bench', main());
