/**
 * `npm run bench:onnx`: the example perceptron (`mlp`, 64-2048-2048-10) served from a model
 * repository, called through the whole mesh with the KServe v2 protocol (gateway
 * `inference.GRPCInferenceService/ModelInfer`, FP32 `raw_input_contents`, one row per request:
 * gateway -> scheduler -> worker, the balancer deciding; each its own process), with the worker's dynamic
 * batcher on (`mlp`) and off (`mlp-unbatched`: the same model.onnx, its config.json without
 * `dynamic_batching`), against ONNX Runtime called in this process with the same rows and the same
 * session settings (the limit).
 *
 * How the in-process runs form their batches, at concurrency c (c callers, each one row at a time):
 * - `in-process, batched (limit)`: one run at a time; when a run ends, every row that is waiting
 *   (up to max_batch_size) goes into the next run, and a row that arrives while nothing runs runs
 *   at once. This is what the worker's dynamic batcher does with the example's settings
 *   (max_queue_delay 0, one run at a time per model version), without the mesh around it.
 * - `in-process, one row per run`: each row is its own `session.run`, called at once, as the worker
 *   does without dynamic batching (runs overlap on ONNX Runtime's threads).
 *
 * Closed loop: c callers each issue calls back to back. All four modes are measured at each
 * concurrency in slices whose order rotates every round, so a noisy machine hurts them alike.
 * Prints a table and the targets, writes its section of docs/BENCHMARKS.md and docs/bench-onnx.svg.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import type * as Ort from 'onnxruntime-node';
import { createMeshClient, openChannel } from '../common/client';
import { type ExampleModel, mlpModel, writeModels } from '../common/onnx/examples';
import { mulberry32 } from '../common/random';
import { GRPCInferenceServiceDefinition } from '../generated/inference/grpc_service';
import { WorkerServiceDefinition } from '../generated/maas/internal/v1/worker';
import {
  abortOnInterrupt,
  codeVersion,
  cpuPerRequestTable,
  cpuSampler,
  describeErrors,
  exitWhenDone,
  failedCallLines,
  intListOption,
  intOption,
  markdownReportHead,
  markdownVerdicts,
  monotonicUs,
  runFrame,
  say,
  secondsOption,
  textReportHead,
} from './bench-cli';
import { markdownTable, textTable, writeBenchSection } from './benchmarks-doc';
import { TimeWindow, formatProfileSummary, summariseCpuProfile } from './cpu-profile';
import { renderBarChart } from './lb-chart';
import { LocalMesh, MESH_PROCESS_NAMES, startLocalMesh } from './local-mesh';
import { BatchSpanReceiver, startBatchSpanReceiver } from './otlp-batches';
import { LatencySummary, LoadSample, mergeSamples, runSlice, summarise } from './stats';

const USAGE = `usage: npm run bench:onnx -- [options]     (or: node dist/bench/onnx.js [options])

  --warmup-s S          warm-up per mode and concurrency, discarded     (env BENCH_WARMUP_S, default 1)
  --duration-s S        measured time per mode and concurrency          (env BENCH_DURATION_S, default 6)
  --rounds N            measured slices per mode, order rotating         (env BENCH_ROUNDS, default 3)
  --concurrency LIST    closed-loop callers, comma-separated            (env BENCH_CONCURRENCY, default 1,8,64)
  --intra-op-threads N  ONNX Runtime intra-op threads, for the worker and the in-process session alike
                                                                         (env BENCH_INTRA_OP_THREADS, default 1, the worker's default)
  --quick               warm-up 0.5 s, 1 s measured in 1 slice, and docs/ left alone
  --no-docs             do not rewrite docs/BENCHMARKS.md and docs/bench-onnx.svg
  --batch-trace         the worker exports its spans to this process, which counts the rows of each
                        batch.run span: rows per run for the mesh too (tracing costs the worker some
                        CPU, so such a run leaves docs/ alone)
  --direct              also call the worker straight (WorkerService/Execute with the same infer
                        task the scheduler would send), with and without batching: the mesh without
                        its three relaying hops (leaves docs/ alone)
  --profile             run the services under node --cpu-prof and summarise their hot functions
                        while the mesh is measured with batching (profiles in .cache/bench-profiles/;
                        leaves docs/ alone)
`;

/** The issue's targets, with batching at c=64. */
const TARGET_BATCHING_GAIN_AT_64 = 2;
const TARGET_SHARE_OF_LIMIT_AT_64 = 0.5;

const BATCHED_MODEL = 'mlp';
const UNBATCHED_MODEL = 'mlp-unbatched';
/** Distinct input rows, cycled through by every mode alike. */
const ROW_POOL = 512;

type Mode = 'mesh-batched' | 'mesh-unbatched' | 'worker-batched' | 'worker-unbatched' | 'inproc-batched' | 'inproc-unbatched';
/** The four modes of every run; `--direct` adds the two `worker-*` ones. */
const MODES: Mode[] = ['mesh-batched', 'mesh-unbatched', 'inproc-batched', 'inproc-unbatched'];
const DIRECT_MODES: Mode[] = ['worker-batched', 'worker-unbatched'];
const MODE_LABELS: Record<Mode, string> = {
  'mesh-batched': 'mesh, dynamic batching',
  'mesh-unbatched': 'mesh, no batching',
  'worker-batched': 'worker direct, batching',
  'worker-unbatched': 'worker direct, no batching',
  'inproc-batched': 'in-process, batched (limit)',
  'inproc-unbatched': 'in-process, one row per run',
};
/** Processes whose CPU time is counted: the bench itself (the client, and the in-process runs) and the mesh. */
const CPU_OWNERS = ['client', ...MESH_PROCESS_NAMES] as const;
const CPU_ACCOUNTS = [...CPU_OWNERS, 'machine'] as const;
type CpuAccount = (typeof CPU_ACCOUNTS)[number];
type CpuOwner = (typeof CPU_OWNERS)[number];

interface BenchOptions {
  warmupMs: number;
  durationMs: number;
  rounds: number;
  concurrencies: number[];
  intraOpThreads: number;
  writeDocs: boolean;
  batchTrace: boolean;
  profile: boolean;
  /** The modes measured: MODES, plus DIRECT_MODES with --direct. */
  modes: Mode[];
  argv: string[];
}

/** One cell of the result: a mode at a concurrency. */
interface Cell {
  mode: Mode;
  concurrency: number;
  slices: LoadSample[];
  cpuMs: Record<CpuAccount, number>;
  /** Runs made and rows run in the measured slices: in-process batched, and mesh batched with --batch-trace. */
  runs: number;
  rows: number;
  /** When the measured slices ran: epoch ms (for batch spans) and monotonic µs (for CPU profiles). */
  windows: { startMs: number; endMs: number; mono: TimeWindow }[];
}

const repoDir = resolve(__dirname, '../..');
const distDir = resolve(__dirname, '..');

function parseOptions(argv: string[], env: NodeJS.ProcessEnv): BenchOptions | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      'warmup-s': { type: 'string', default: env.BENCH_WARMUP_S },
      'duration-s': { type: 'string', default: env.BENCH_DURATION_S },
      rounds: { type: 'string', default: env.BENCH_ROUNDS },
      concurrency: { type: 'string', default: env.BENCH_CONCURRENCY },
      'intra-op-threads': { type: 'string', default: env.BENCH_INTRA_OP_THREADS },
      quick: { type: 'boolean', default: false },
      'no-docs': { type: 'boolean', default: false },
      'batch-trace': { type: 'boolean', default: false },
      direct: { type: 'boolean', default: false },
      profile: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return undefined;
  }
  return {
    warmupMs: secondsOption('warmup-s', values['warmup-s'], values.quick ? 0.5 : 1, 0),
    durationMs: secondsOption('duration-s', values['duration-s'], values.quick ? 1 : 6, 0.1),
    rounds: intOption('rounds', values.rounds, values.quick ? 1 : 3, 1, 100),
    concurrencies: intListOption('concurrency', values.concurrency, '1,8,64', 1, 1000),
    intraOpThreads: intOption('intra-op-threads', values['intra-op-threads'], 1, 1, 256),
    writeDocs: !values['no-docs'] && !values.quick && !values['batch-trace'] && !values.profile && !values.direct,
    modes: values.direct ? [...MODES.slice(0, 2), ...DIRECT_MODES, ...MODES.slice(2)] : MODES,
    batchTrace: values['batch-trace']!,
    profile: values.profile!,
    argv,
  };
}

/** The model repository of the run: `mlp` as the example writes it, and the same file without dynamic batching. */
function benchModels(): { batched: ExampleModel; unbatched: ExampleModel } {
  const batched = mlpModel();
  if (!batched.config.dynamic_batching) throw new Error('the example mlp has no dynamic_batching in its config.json');
  const { dynamic_batching: _off, ...config } = batched.config;
  const unbatched: ExampleModel = { ...batched, name: UNBATCHED_MODEL, config: { ...config, description: `${config.description}; no dynamic batching` } };
  return { batched, unbatched };
}

/** `count` rows of `features` FP32 values each, seeded: the inputs of every mode. */
function inputRows(count: number, features: number): Float32Array[] {
  const random = mulberry32(2026);
  return Array.from({ length: count }, () => Float32Array.from({ length: features }, () => 2 * random() - 1));
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2), process.env);
  if (!options) return 0;
  const abort = new AbortController();
  const releaseSignals = abortOnInterrupt(abort, 'the mesh');

  const code = codeVersion(repoDir);
  const { batched, unbatched } = benchModels();
  const repository = mkdtempSync(join(tmpdir(), 'maas-bench-onnx-'));
  const loadBefore = loadavg();
  const profileDir = options.profile ? resolve(repoDir, '.cache/bench-profiles', `onnx-${new Date().toISOString().replace(/[:.]/g, '-')}`) : undefined;
  if (profileDir) mkdirSync(profileDir, { recursive: true });
  let receiver: BatchSpanReceiver | undefined;
  let cells: Cell[];
  try {
    if (options.batchTrace) receiver = await startBatchSpanReceiver();
    await writeModels(repository, [batched, unbatched]);
    const ort = await import('onnxruntime-node');
    // The worker's session settings (services/worker/models/onnx.ts), from the same bytes.
    const session = await ort.InferenceSession.create(Buffer.from(batched.onnx), {
      executionProviders: ['cpu'],
      intraOpNumThreads: options.intraOpThreads,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
    });
    say('starting the mesh (balancer, worker, scheduler, gateway) with a model repository of mlp and mlp-unbatched…');
    const mesh = await startLocalMesh({
      distDir,
      repoDir,
      model: BATCHED_MODEL,
      startTimeoutMs: 300_000,
      signal: abort.signal,
      log: (line) => say(line),
      onUnexpectedExit: (message) => abort.abort(new Error(message)),
      nodeFlags: profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, '--cpu-prof-name={name}.cpuprofile'] : undefined,
      env: receiver ? { worker: { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: receiver.endpoint, OTEL_SERVICE_NAME: 'bench-worker' } } : undefined,
      extraArgs: { worker: ['--model-repository', repository, '--onnx-intra-op-threads', String(options.intraOpThreads)] },
    });
    try {
      say(`mesh ready: gateway ${mesh.addresses.gateway}`);
      cells = await measure(options, mesh, ort, session, batched, abort.signal);
      if (receiver) {
        // The worker exports every 500 ms: wait for the last slice's spans.
        await sleep(1500, undefined, { signal: abort.signal });
        countMeshBatches(cells, receiver);
      }
    } finally {
      await mesh.stop();
      await session.release();
    }
  } finally {
    rmSync(repository, { recursive: true, force: true });
    await receiver?.close();
  }
  const loadAfter = loadavg();
  releaseSignals();

  const report = buildReport(options, cells, code, loadBefore, loadAfter, batched);
  process.stdout.write(`\n${report.text}\n`);
  if (profileDir) process.stdout.write(`\n${profileReport(options, cells, profileDir)}\n`);
  if (options.writeDocs) {
    writeBenchSection(resolve(repoDir, 'docs/BENCHMARKS.md'), 'onnx', report.markdown);
    writeFileSync(resolve(repoDir, 'docs/bench-onnx.svg'), report.svg);
    say('wrote docs/BENCHMARKS.md and docs/bench-onnx.svg');
  }
  return 0;
}

/**
 * One run at a time of every row waiting (up to `maxRows`): the in-process limit. Counts runs and rows.
 */
class InProcessBatcher {
  private readonly waiting: { row: Float32Array; resolve: (out: Float32Array) => void; reject: (err: unknown) => void }[] = [];
  private running = false;
  runs = 0;
  rows = 0;

  constructor(
    private readonly ort: typeof Ort,
    private readonly session: Ort.InferenceSession,
    private readonly maxRows: number,
    private readonly features: number,
  ) {}

  infer(row: Float32Array): Promise<Float32Array> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ row, resolve, reject });
      if (!this.running) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.running = true;
    while (this.waiting.length > 0) {
      const batch = this.waiting.splice(0, this.maxRows);
      const x = new Float32Array(batch.length * this.features);
      batch.forEach((b, i) => x.set(b.row, i * this.features));
      try {
        const out = await this.session.run({ x: new this.ort.Tensor('float32', x, [batch.length, this.features]) });
        const probabilities = out.probabilities.data as Float32Array;
        const width = probabilities.length / batch.length;
        batch.forEach((b, i) => b.resolve(probabilities.slice(i * width, (i + 1) * width)));
        this.runs++;
        this.rows += batch.length;
      } catch (err) {
        for (const b of batch) b.reject(err);
      }
    }
    this.running = false;
  }
}

/** Runs every mode at every concurrency: warm-ups, then measured slices in rotating order. */
async function measure(o: BenchOptions, mesh: LocalMesh, ort: typeof Ort, session: Ort.InferenceSession, model: ExampleModel, signal: AbortSignal): Promise<Cell[]> {
  const features = model.config.input[0].dims[0];
  const classes = model.config.output[0].dims[0];
  const rows = inputRows(ROW_POOL, features);
  let next = 0;
  const nextRow = () => rows[next++ % rows.length];
  const channel = openChannel(mesh.addresses.gateway);
  const gateway = createMeshClient(GRPCInferenceServiceDefinition, channel);
  const workerChannel = openChannel(mesh.addresses.worker);
  const worker = createMeshClient(WorkerServiceDefinition, workerChannel);
  let requestNumber = 0;
  const batcher = new InProcessBatcher(ort, session, model.config.max_batch_size, features);

  const checkOutput = (out: Float32Array, where: string) => {
    if (out.length !== classes) throw new Error(`${where} answered ${out.length} probabilities, expected ${classes}`);
  };
  const viaMesh = async (modelName: string, row: Float32Array, callSignal: AbortSignal): Promise<Float32Array> => {
    const response = await gateway.modelInfer(
      {
        modelName,
        inputs: [{ name: 'x', datatype: 'FP32', shape: [1, features] }],
        rawInputContents: [Buffer.from(row.buffer, row.byteOffset, row.byteLength)],
      },
      { signal: callSignal },
    );
    const raw = response.rawOutputContents[0];
    if (!raw) throw new Error(`${modelName} answered no raw output`);
    const copy = Buffer.from(raw); // aligned for the Float32Array view
    return new Float32Array(copy.buffer, copy.byteOffset, copy.byteLength / 4);
  };
  // The task the scheduler would send for the same ModelInfer (model_version set, as the gateway sets it).
  const viaWorker = async (modelName: string, row: Float32Array, callSignal: AbortSignal): Promise<Float32Array> => {
    const infer = {
      modelName,
      modelVersion: String(model.version),
      inputs: [{ name: 'x', datatype: 'FP32', shape: [1, features] }],
      rawInputContents: [Buffer.from(row.buffer, row.byteOffset, row.byteLength)],
    };
    let raw: Buffer | undefined;
    for await (const response of worker.execute({ task: { requestId: `bench-${requestNumber++}`, tenant: 'bench', request: { $case: 'infer', infer } } }, { signal: callSignal })) {
      const output = response.output?.output;
      if (output?.$case === 'inferResponse') raw ??= output.inferResponse.rawOutputContents[0];
    }
    if (!raw) throw new Error(`the worker answered ${modelName} with no raw output`);
    const copy = Buffer.from(raw);
    return new Float32Array(copy.buffer, copy.byteOffset, copy.byteLength / 4);
  };
  const oneRow = async (row: Float32Array): Promise<Float32Array> => {
    const out = await session.run({ x: new ort.Tensor('float32', row, [1, features]) });
    return out.probabilities.data as Float32Array;
  };
  const calls: Record<Mode, (callSignal: AbortSignal) => Promise<void>> = {
    'mesh-batched': async (s) => checkOutput(await viaMesh(BATCHED_MODEL, nextRow(), s), BATCHED_MODEL),
    'mesh-unbatched': async (s) => checkOutput(await viaMesh(UNBATCHED_MODEL, nextRow(), s), UNBATCHED_MODEL),
    'worker-batched': async (s) => checkOutput(await viaWorker(BATCHED_MODEL, nextRow(), s), `the worker's ${BATCHED_MODEL}`),
    'worker-unbatched': async (s) => checkOutput(await viaWorker(UNBATCHED_MODEL, nextRow(), s), `the worker's ${UNBATCHED_MODEL}`),
    'inproc-batched': async () => checkOutput(await batcher.infer(nextRow()), 'the in-process batch'),
    'inproc-unbatched': async () => checkOutput(await oneRow(nextRow()), 'the in-process run'),
  };

  const pids: Record<CpuOwner, number | 'self'> = { client: 'self', ...mesh.pids };
  const cpuNow = cpuSampler(pids);

  try {
    // The same rows give the same answers every way (batching must not mix rows up): a broken path fails here, in moments.
    const probe = rows.slice(0, 3);
    const reference = await Promise.all(probe.map(oneRow));
    const answers: [string, Float32Array[]][] = [
      [BATCHED_MODEL, await Promise.all(probe.map((r) => viaMesh(BATCHED_MODEL, r, signal)))],
      [UNBATCHED_MODEL, await Promise.all(probe.map((r) => viaMesh(UNBATCHED_MODEL, r, signal)))],
      ['the in-process batch', await Promise.all(probe.map((r) => batcher.infer(r)))],
    ];
    if (o.modes.includes('worker-batched')) answers.push([`the worker's ${BATCHED_MODEL}`, await Promise.all(probe.map((r) => viaWorker(BATCHED_MODEL, r, signal)))]);
    for (const [where, got] of answers) {
      got.forEach((out, i) => {
        const worst = Math.max(...Array.from(out, (v, j) => Math.abs(v - reference[i][j])));
        if (out.length !== classes || !(worst < 1e-4)) throw new Error(`${where} answered row ${i} with probabilities that differ from a single in-process run by ${worst}`);
      });
    }

    const cells: Cell[] = [];
    for (const concurrency of o.concurrencies) {
      const cellOf = Object.fromEntries(
        o.modes.map((mode) => {
          const cell: Cell = { mode, concurrency, slices: [], runs: 0, rows: 0, windows: [], cpuMs: Object.fromEntries(CPU_ACCOUNTS.map((p) => [p, 0])) as Record<CpuAccount, number> };
          cells.push(cell);
          return [mode, cell];
        }),
      ) as Record<Mode, Cell>;
      const sliceMs = o.durationMs / o.rounds;
      const run = (mode: Mode, ms: number) => runSlice(calls[mode], concurrency, ms, signal);
      for (const mode of o.modes) {
        if (o.warmupMs <= 0) break;
        say(`c=${concurrency} ${MODE_LABELS[mode]}: warm-up ${o.warmupMs / 1000} s`);
        const warm = await run(mode, o.warmupMs);
        if (warm.latenciesMs.length === 0) throw new Error(`${mode} at c=${concurrency}: every warm-up call failed: ${[...warm.errorMessages.keys()][0]}`);
      }
      for (let round = 0; round < o.rounds; round++) {
        // Rotate the order each round, and reverse it every other round: each mode takes every place.
        const rotated = o.modes.map((_, i) => o.modes[(i + round) % o.modes.length]);
        const order = round % 2 === 0 ? rotated : rotated.reverse();
        for (const mode of order) {
          const cell = cellOf[mode];
          say(`c=${concurrency} ${MODE_LABELS[mode]}: slice ${round + 1}/${o.rounds}, ${(sliceMs / 1000).toFixed(1)} s`);
          const cpuBefore = cpuNow();
          const [runsBefore, rowsBefore] = [batcher.runs, batcher.rows];
          const [startMs, startUs] = [Date.now(), monotonicUs()];
          const sample = await run(mode, sliceMs);
          cell.windows.push({ startMs, endMs: Date.now(), mono: { startUs, endUs: monotonicUs() } });
          const cpuAfter = cpuNow();
          for (const p of CPU_ACCOUNTS) cell.cpuMs[p] += cpuAfter[p] - cpuBefore[p];
          cell.runs += batcher.runs - runsBefore;
          cell.rows += batcher.rows - rowsBefore;
          cell.slices.push(sample);
          if (sample.errors > 0) say(`  ${sample.errors} calls failed: ${describeErrors(sample.errorMessages)}`);
        }
      }
    }
    return cells;
  } finally {
    channel.close();
    workerChannel.close();
  }
}

/** Rows per run in the worker with batching (through the mesh, or called straight), from the worker's batch.run spans that started within each cell's slices. */
function countMeshBatches(cells: Cell[], receiver: BatchSpanReceiver): void {
  for (const cell of cells.filter((c) => c.mode === 'mesh-batched' || c.mode === 'worker-batched')) {
    const spans = receiver.batches.filter((b) => b.model === BATCHED_MODEL && cell.windows.some((w) => b.startMs >= w.startMs && b.startMs <= w.endMs));
    cell.runs = spans.length;
    cell.rows = spans.reduce((n, b) => n + b.rows, 0);
  }
}

/** Summaries of each service's CPU profile while the mesh with batching was measured. */
function profileReport(o: BenchOptions, cells: Cell[], dir: string): string {
  const blocks: string[] = [];
  for (const cell of cells.filter((c) => c.mode === 'mesh-batched')) {
    for (const name of MESH_PROCESS_NAMES) {
      const file = resolve(dir, `${name}.cpuprofile`);
      if (!existsSync(file)) {
        blocks.push(`${name}: no profile written (${file})`);
        continue;
      }
      const summary = summariseCpuProfile(file, cell.windows.map((w) => w.mono), repoDir);
      blocks.push(formatProfileSummary(`mesh with batching c=${cell.concurrency}, ${name}`, summary, cell.concurrency === Math.max(...o.concurrencies) ? 15 : 8).join('\n'));
    }
  }
  return ['CPU profiles of the services while the mesh with batching was measured (self time):', '', ...blocks.flatMap((b) => [b, ''])].join('\n');
}

const ms = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : 'n/a');
const pct = (x: number) => (Number.isFinite(x) ? `${(100 * x).toFixed(1)}%` : 'n/a');

/** The printed and the markdown report of a run, and the chart. */
function buildReport(o: BenchOptions, cells: Cell[], code: string, loadBefore: number[], loadAfter: number[], model: ExampleModel): { text: string; markdown: string; svg: string } {
  const summaries = cells.map((c) => ({ cell: c, s: summarise(mergeSamples(c.slices)) }));
  const find = (mode: Mode, concurrency: number): LatencySummary | undefined => summaries.find((x) => x.cell.mode === mode && x.cell.concurrency === concurrency)?.s;

  const headers = ['mode', 'concurrency', 'requests', 'errors', 'requests/s', 'p50 ms', 'p99 ms', 'rows per run'];
  const right = [false, true, true, true, true, true, true, true];
  const rows = summaries.map(({ cell, s }) => [
    MODE_LABELS[cell.mode],
    cell.concurrency,
    s.requests,
    s.errors,
    s.rps.toFixed(0),
    ms(s.p50Ms),
    ms(s.p99Ms),
    cell.mode === 'inproc-batched' || ((cell.mode === 'mesh-batched' || cell.mode === 'worker-batched') && o.batchTrace) ? (cell.runs > 0 ? (cell.rows / cell.runs).toFixed(1) : 'n/a') : cell.mode.endsWith('unbatched') ? '1' : '',
  ]);

  const cpu = cpuPerRequestTable(
    CPU_OWNERS,
    summaries.map(({ cell, s }) => ({ label: MODE_LABELS[cell.mode], concurrency: cell.concurrency, requests: s.requests, wallMs: cell.slices.reduce((t, x) => t + x.elapsedMs, 0), cpuMs: cell.cpuMs })),
  );

  const lines: string[] = [];
  const low = Math.min(...o.concurrencies);
  const high = Math.max(...o.concurrencies);
  const mb1 = find('mesh-batched', 1);
  const mu1 = find('mesh-unbatched', 1);
  const ib1 = find('inproc-batched', 1);
  const iu1 = find('inproc-unbatched', 1);
  if (mb1 && ib1 && mu1 && iu1) {
    lines.push(
      `added p50 at c=1, mesh with batching vs in-process: ${ms(mb1.p50Ms - ib1.p50Ms)} ms (mesh ${ms(mb1.p50Ms)} - in-process ${ms(ib1.p50Ms)})`,
      `added p50 at c=1, mesh without batching vs in-process one row per run: ${ms(mu1.p50Ms - iu1.p50Ms)} ms (mesh ${ms(mu1.p50Ms)} - in-process ${ms(iu1.p50Ms)})`,
    );
  } else lines.push('added p50 at c=1: not measured (run with concurrency 1)');
  const mb64 = find('mesh-batched', 64);
  const mu64 = find('mesh-unbatched', 64);
  const ib64 = find('inproc-batched', 64);
  if (mb64 && mu64 && ib64) {
    const gain = mb64.rps / mu64.rps;
    const share = mb64.rps / ib64.rps;
    lines.push(
      `throughput at c=64, mesh with batching / without: ${gain.toFixed(2)}x (${mb64.rps.toFixed(0)} / ${mu64.rps.toFixed(0)} requests/s); target >= ${TARGET_BATCHING_GAIN_AT_64}x: ${gain >= TARGET_BATCHING_GAIN_AT_64 ? 'MET' : 'MISSED'}`,
      `throughput at c=64, mesh with batching / in-process limit: ${pct(share)} (${mb64.rps.toFixed(0)} / ${ib64.rps.toFixed(0)} requests/s); target >= ${100 * TARGET_SHARE_OF_LIMIT_AT_64}%: ${share >= TARGET_SHARE_OF_LIMIT_AT_64 ? 'MET' : 'MISSED'}`,
    );
  } else lines.push('targets at c=64: not measured (run with concurrency 64)');

  const failed = failedCallLines(
    summaries.filter(({ s }) => s.errors > 0).map(({ cell }) => `${MODE_LABELS[cell.mode]} c=${cell.concurrency}: ${describeErrors(mergeSamples(cell.slices).errorMessages)}`),
  );
  const run = runFrame('bench:onnx', 'onnx', o.argv, code, loadBefore, loadAfter);
  const layers = model.config.description.match(/\d+(-\d+)+/)?.[0] ?? 'mlp';
  const dynamic = model.config.dynamic_batching!;
  const settings =
    `model \`mlp\` (${layers}, FP32) from \`maas models make-examples\`, max_batch_size ${model.config.max_batch_size}, dynamic_batching max_queue_delay_microseconds ${dynamic.max_queue_delay_microseconds}` +
    `${dynamic.preferred_batch_size?.length ? `, preferred_batch_size ${dynamic.preferred_batch_size.join(',')}` : ''}; \`mlp-unbatched\`: the same model.onnx, config.json without dynamic_batching; ` +
    `ONNX Runtime ${o.intraOpThreads} intra-op thread${o.intraOpThreads > 1 ? 's' : ''} in the worker and in-process alike; one row (${model.config.input[0].dims[0]} FP32 values) per request, from a pool of ${ROW_POOL} seeded rows; ` +
    `warm-up ${o.warmupMs / 1000} s per mode and concurrency (discarded); ${o.durationMs / 1000} s measured per mode and concurrency in ${o.rounds} slice${o.rounds > 1 ? 's' : ''}, the four modes' order rotating each round; closed loop; one client process (this one, which also makes the in-process runs) with one channel to the gateway`;

  const text = [
    ...textReportHead('ModelInfer on mlp: mesh (KServe v2 at the gateway -> scheduler -> worker, balancer deciding) with and without dynamic batching, vs ONNX Runtime in this process', run, settings.replace(/`/g, '')),
    '',
    textTable(headers, rows, right),
    '',
    ...lines,
    ...failed.text,
    '',
    'CPU per request, by process (from /proc; the client is this bench process, which also runs the in-process modes):',
    textTable(cpu.headers, cpu.rows, cpu.right),
  ].join('\n');

  const markdown = [
    ...markdownReportHead(
      'ONNX: the perceptron through the mesh (KServe v2 ModelInfer), with and without dynamic batching, vs ONNX Runtime in one process',
      run,
      'is a short run that leaves docs/ alone',
      'The machine is shared, so runs vary; every row is measured in the same run, in interleaved slices.',
    ),
    '- What: requests per second and latency of `inference.GRPCInferenceService/ModelInfer` at the gateway (FP32 `raw_input_contents`, one row per request, raw outputs back), through gateway -> scheduler -> worker (each its own process; the balancer decides off the data path), ' +
      'for `mlp` (dynamic batching on) and `mlp-unbatched` (off); against ONNX Runtime called in the bench process with the same rows and session settings. ' +
      '**In-process, batched (limit)**: one run at a time; when a run ends, every row waiting (up to max_batch_size) goes into the next run, and a row that arrives while nothing runs runs at once, as the worker\'s batcher does with these settings. ' +
      '**In-process, one row per run**: each row its own `session.run`, called at once, as the worker does without batching. `rows per run` is counted for the in-process batched mode (and for the mesh only in a `--batch-trace` run, where the worker exports its `batch.run` spans).',
    `- Settings: ${settings}.`,
    '',
    markdownTable(headers, rows, right),
    '',
    ...markdownVerdicts(lines),
    ...failed.markdown,
    '',
    '![Requests per second by concurrency, the four modes](bench-onnx.svg)',
    '',
    'CPU per request, by process, during the measured slices (from /proc, 10 ms resolution; `client` is the bench process, which also makes the in-process runs; `cores busy` is CPU time over wall time, of these five processes (`ours`) and of the whole machine):',
    '',
    markdownTable(cpu.headers, cpu.rows, cpu.right),
  ].join('\n');

  const svg = renderBarChart({
    title: 'ModelInfer on mlp: requests per second by concurrency',
    subtitle: [
      `${new Date().toISOString().slice(0, 16)}Z, ${code.replace(/ plus uncommitted changes in .*/, ' (with local changes)')}; ${availableParallelism()} CPUs, shared (load ${loadBefore[0].toFixed(1)})`,
      `closed loop, concurrency ${low} to ${high}, one row per request; ${o.durationMs / 1000} s measured per bar; details in BENCHMARKS.md`,
    ],
    yLabel: 'requests per second',
    panels: o.concurrencies.map((c) => ({
      title: `c = ${c}`,
      bars: o.modes.map((mode) => ({ label: MODE_LABELS[mode], value: find(mode, c)?.rps ?? NaN })),
      ...(c === 64 && ib64 ? { line: { value: ib64.rps * TARGET_SHARE_OF_LIMIT_AT_64, label: '50% of the limit' } } : {}),
    })),
  });
  return { text, markdown, svg };
}

exitWhenDone('bench:onnx', main());
