/**
 * `npm run bench:batch`: batch jobs through the whole mesh (gateway -> scheduler -> balancer ->
 * workers -> aggregator, each its own process, the scheduler's and aggregator's stores in a
 * temporary folder), submitted through the public JobService and followed with Watch until the
 * result arrives:
 *
 * 1. word count (mapper wordcount, reducer top_k or sum) over the whole spam-assassin dataset with
 *    1 and with 2 workers, against a single-process word count over the same text (loadDataset +
 *    the mapper's own words(), timed the same way: from start to result ready). Each mesh start
 *    runs a cold job first (the scheduler and every worker build the dataset on first use, as a
 *    fresh single process does on its first count), then warm ones (dataset in memory everywhere),
 *    each right after a warm single-process count, and the same warm jobs at the comparison shard
 *    sizes (default: the JobSpec default, 100);
 * 2. spam-nb classification of the whole dataset (reducer accuracy): records/s and the accuracy.
 *
 * Each measurement is repeated (`--runs`, one fresh mesh per run and worker count, worker counts
 * in ABBA order) and the median reported. The machine is shared: a sample during which other
 * processes kept the cores busy is measured again. The mesh's total_words, distinct words,
 * records and top words must equal the single process's: a mismatch is printed loudly and the
 * command exits 1.
 * Rewrites its own section of docs/BENCHMARKS.md (a hand-written part after the
 * `<!-- bench:batch:analysis -->` line inside it is kept). `--profile` runs the services under
 * `node --cpu-prof` and summarises their hot functions during the cold and warm word-count jobs.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { createMeshClient, openChannel } from '../common/client';
import { DATASET_NAMES } from '../common/datasets';
import { JobResult, JobServiceDefinition, JobSpec } from '../generated/maas/v1/jobs';
import { SingleProcessCount, singleProcessWordCount } from './batch-single';
import { markdownTable, textTable, writeBenchSection } from './benchmarks-doc';
import { TimeWindow, formatProfileSummary, summariseCpuProfile } from './cpu-profile';
import { machineBusyCpuMs } from './cpu-time';
import { LocalMesh, startLocalMesh } from './local-mesh';
import { abortOnInterrupt, codeVersion, cpuSampler, exitWhenDone, intOption, markdownReportHead, markdownVerdicts, monotonicUs, runFrame, say, textReportHead } from './bench-cli';

const USAGE = `usage: npm run bench:batch -- [options]     (or: node dist/bench/batch.js [options])

  --runs N              fresh mesh starts per worker count; each runs a cold word count,
                        then the warm ones and a classification     (env BENCH_BATCH_RUNS, default 3)
  --warm-jobs N         warm word counts per mesh start and shard size, each after
                        a warm single-process count                        (default 3)
  --workers LIST        worker counts, comma-separated                     (default 1,2)
  --shard-size N        records per task                                   (default 500)
  --compare-shard-sizes LIST  also run the warm word counts at these shard sizes,
                        interleaved with the main ones ('' for none)       (default 100)
  --reducer R           top_k or sum                                       (default top_k)
  --top-k K             k of top_k                                         (default 20)
  --tasks-in-flight N   map tasks in flight: the scheduler's --max-batch-tasks and
                        --max-tasks-per-job   (default: the larger of the worker count and the CPUs)
  --max-others-cores C  measure a sample again (up to 3 times) when other processes kept more
                        than C cores busy during it                         (default 0.25)
  --no-classify         skip the spam-nb classification jobs
  --quick               one run, docs/BENCHMARKS.md left alone
  --no-docs             do not rewrite docs/BENCHMARKS.md
  --profile             run the services under node --cpu-prof and summarise their hot functions
                        during the word-count jobs (profiles in .cache/bench-profiles/)
`;

/** The issue's target: with 2 workers the mesh reaches this share of the single process's throughput. */
const TARGET_SHARE_AT_2 = 0.6;
const DATASET: (typeof DATASET_NAMES)[number] = 'spam-assassin';
const CLASSIFY_MODEL = 'spam-nb';
/**
 * Records per task. Not the JobSpec default (100): a word-count task sends the counts of every
 * distinct word of its shard, so small shards multiply what is encoded, sent, decoded, stored and
 * folded (spam-assassin: 280k entries at 100, 160k at 500, for a 67k-word vocabulary). 500 gives 13
 * tasks, still 6-7 per worker with 2 workers (see the analysis in docs/BENCHMARKS.md).
 */
const DEFAULT_SHARD_SIZE = 500;
/** The line inside the section after which hand-written text is kept across runs. */
const ANALYSIS_MARKER = '<!-- bench:batch:analysis -->';

interface BenchOptions {
  runs: number;
  warmJobs: number;
  workerCounts: number[];
  shardSize: number;
  /** Shard sizes whose warm word counts are also measured, for comparison. */
  compareShardSizes: number[];
  reducer: 'top_k' | 'sum';
  topK: number;
  /** Map tasks in flight; undefined: max(workers, CPUs). */
  tasksInFlight: number | undefined;
  /** A sample during which other processes kept more cores busy than this is measured again. */
  maxOthersCores: number;
  classify: boolean;
  writeDocs: boolean;
  profile: boolean;
  argv: string[];
}

const repoDir = resolve(__dirname, '../..');
const distDir = resolve(__dirname, '..');

function parseOptions(argv: string[], env: NodeJS.ProcessEnv): BenchOptions | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      runs: { type: 'string', default: env.BENCH_BATCH_RUNS },
      'warm-jobs': { type: 'string' },
      workers: { type: 'string' },
      'shard-size': { type: 'string' },
      'compare-shard-sizes': { type: 'string' },
      reducer: { type: 'string' },
      'top-k': { type: 'string' },
      'tasks-in-flight': { type: 'string' },
      'max-others-cores': { type: 'string' },
      'no-classify': { type: 'boolean', default: false },
      quick: { type: 'boolean', default: false },
      'no-docs': { type: 'boolean', default: false },
      profile: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return undefined;
  }
  const workerCounts = (values.workers ?? '1,2').split(',').map((w) => intOption('workers', w.trim(), 1, 1, 16));
  const reducer = values.reducer ?? 'top_k';
  if (reducer !== 'top_k' && reducer !== 'sum') throw new Error(`--reducer must be top_k or sum, given "${reducer}"`);
  return {
    runs: values.quick ? 1 : intOption('runs', values.runs, 3, 1, 100),
    warmJobs: intOption('warm-jobs', values['warm-jobs'], 3, 1, 100),
    workerCounts: [...new Set(workerCounts)],
    shardSize: intOption('shard-size', values['shard-size'], DEFAULT_SHARD_SIZE, 1, 100_000),
    compareShardSizes: [
      ...new Set(
        (values['compare-shard-sizes'] ?? '100')
          .split(',')
          .filter((x) => x.trim() !== '')
          .map((x) => intOption('compare-shard-sizes', x.trim(), 0, 1, 100_000)),
      ),
    ].filter((x) => x !== intOption('shard-size', values['shard-size'], DEFAULT_SHARD_SIZE, 1, 100_000)),
    reducer,
    topK: intOption('top-k', values['top-k'], 20, 1, 1000),
    maxOthersCores: (() => {
      const raw = values['max-others-cores'] ?? '0.25';
      const x = Number(raw);
      if (!Number.isFinite(x) || x < 0) throw new Error(`--max-others-cores must be a number >= 0, given "${raw}"`);
      return x;
    })(),
    tasksInFlight: values['tasks-in-flight'] === undefined ? undefined : intOption('tasks-in-flight', values['tasks-in-flight'], 1, 1, 1000),
    classify: !values['no-classify'],
    writeDocs: !values['no-docs'] && !values.quick && !values.profile,
    profile: values.profile!,
    argv,
  };
}

// ---------------------------------------------------------------------------------------------
// Samples

type Temperature = 'cold' | 'warm';
/** CPU accounts: the bench process ('client'), each mesh process by name, and the whole machine. */
type CpuMs = Record<string, number>;

/** One word-count or classification job through the mesh. */
interface JobSample {
  kind: 'wordcount' | 'classify';
  shardSize: number;
  workers: number;
  temperature: Temperature;
  round: number;
  elapsedMs: number;
  /** Submit's round trip (the scheduler counts the input, stores the job), ms. */
  submitMs: number;
  /** From "start" to the first task_done event, ms. */
  firstTaskDoneMs: number;
  /** From "start" to the last task_done event, ms. */
  lastTaskDoneMs: number;
  tasks: number;
  /** Tasks done by each worker id. */
  tasksByWorker: Record<string, number>;
  result: JobResult | undefined;
  cpuMs: CpuMs;
  window: TimeWindow;
}

/** One single-process word count. */
interface SingleSample extends SingleProcessCount {
  temperature: Temperature;
  round: number;
}

/** Cores that processes other than the bench's kept busy during a sample, on average. */
function othersCores(s: JobRun | SingleProcessCount): number {
  if ('window' in s) {
    const ours = Object.entries(s.cpuMs).reduce((t, [name, ms]) => (name === 'machine' ? t : t + ms), 0);
    return (s.cpuMs.machine - ours) / s.elapsedMs;
  }
  return (s.machineMs - s.cpuMs) / s.elapsedMs;
}

function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2), process.env);
  if (!options) return 0;

  const abort = new AbortController();
  const releaseSignals = abortOnInterrupt(abort, 'the mesh');

  const profileDir = options.profile ? resolve(repoDir, '.cache/bench-profiles', `batch-${new Date().toISOString().replace(/[:.]/g, '-')}`) : undefined;
  const code = codeVersion(repoDir);
  const loadBefore = loadavg();
  const singles: SingleSample[] = [];
  const jobs: JobSample[] = [];
  const profiles: string[] = [];
  const k = options.reducer === 'sum' ? Infinity : options.topK;
  let warmedUp = false;

  let remeasured = 0;
  /**
   * Runs `measure` again (up to MAX_ATTEMPTS) while other processes kept more than
   * options.maxOthersCores busy during it: on a shared machine a burst of someone else's work
   * would otherwise land on one sample and not on the one it is compared with.
   */
  const measured = async <T extends JobRun | SingleProcessCount>(label: string, measure: () => Promise<T>): Promise<T> => {
    for (let attempt = 1; ; attempt++) {
      const sample = await measure();
      const others = othersCores(sample);
      if (!(others > options.maxOthersCores) || attempt === MAX_ATTEMPTS) {
        if (others > options.maxOthersCores) say(`  ${label}: other processes kept ${others.toFixed(2)} cores busy on every attempt; keeping the last`);
        return sample;
      }
      remeasured++;
      say(`  ${label}: other processes kept ${others.toFixed(2)} cores busy (${(sample.elapsedMs / 1000).toFixed(3)} s): measuring again`);
      await waitForQuiet(abort.signal);
    }
  };
  const s3 = (ms: number) => `${(ms / 1000).toFixed(3)} s`;

  for (let round = 1; round <= options.runs; round++) {
    const order = round % 2 === 1 ? options.workerCounts : [...options.workerCounts].reverse();
    for (const workers of order) {
      abort.signal.throwIfAborted();
      const tag = `run ${round}, ${plural(workers, 'worker')}`;
      const dir = profileDir && resolve(profileDir, `w${workers}-r${round}`);
      if (dir) mkdirSync(dir, { recursive: true });
      const windows: { cold: TimeWindow[]; warm: TimeWindow[] } = { cold: [], warm: [] };
      const shard = options.shardSize;

      // Cold: a fresh process against a fresh mesh's first job (re-measuring one means a new mesh).
      await waitForQuiet(abort.signal);
      const singleColdSample = await measured(`${tag}: single process cold`, () => singleCold(k));
      singles.push({ ...singleColdSample, temperature: 'cold', round });
      say(`${tag}: single process cold ${s3(singleColdSample.elapsedMs)}`);
      let mesh: LocalMesh | undefined;
      try {
        const cold = await measured(`${tag}: word count cold`, async () => {
          if (mesh) await mesh.stop();
          mesh = undefined;
          await waitForQuiet(abort.signal);
          mesh = await startMesh(options, workers, abort, dir);
          return runJob(mesh, wordCountSpec(options, shard), abort.signal);
        });
        jobs.push({ ...cold, kind: 'wordcount', shardSize: shard, workers, temperature: 'cold', round });
        windows.cold.push(cold.window);
        say(`${tag}: word count cold ${s3(cold.elapsedMs)}`);
        const live = mesh!;
        if (!warmedUp) {
          singleProcessWordCount(DATASET, k); // builds the dataset in this process (and warms its JIT, as the cold job did the mesh's)
          warmedUp = true;
        }

        // Warm: the single process and the mesh in turn, so that both meet the same noise.
        for (let j = 0; j < options.warmJobs; j++) {
          const warm = await measured(`${tag}: single process warm`, async () => singleProcessWordCount(DATASET, k));
          singles.push({ ...warm, temperature: 'warm', round });
          say(`${tag}: single process warm ${s3(warm.elapsedMs)}`);
          for (const size of [shard, ...options.compareShardSizes]) {
            const warmJob = await measured(`${tag}: word count warm, shard size ${size}`, () => runJob(live, wordCountSpec(options, size), abort.signal));
            jobs.push({ ...warmJob, kind: 'wordcount', shardSize: size, workers, temperature: 'warm', round });
            if (size === shard) windows.warm.push(warmJob.window);
            say(`${tag}: word count warm, shard size ${size}: ${s3(warmJob.elapsedMs)}`);
          }
        }
        if (options.classify) {
          const classify = await measured(`${tag}: ${CLASSIFY_MODEL}`, () => runJob(live, classifySpec(options), abort.signal));
          jobs.push({ ...classify, kind: 'classify', shardSize: shard, workers, temperature: 'warm', round });
          say(`${tag}: ${CLASSIFY_MODEL} classification ${s3(classify.elapsedMs)}`);
        }
      } finally {
        await (mesh as LocalMesh | undefined)?.stop();
      }
      if (dir && mesh) profiles.push(profileBlock(dir, mesh, windows, workers, round));
    }
  }
  const loadAfter = loadavg();
  releaseSignals();

  const report = buildReport(options, singles, jobs, code, loadBefore, loadAfter, remeasured);
  process.stdout.write(`\n${report.text}\n`);
  if (profileDir) {
    const text = ['CPU profiles of the services during the word-count jobs (self time):', '', ...profiles].join('\n');
    writeFileSync(resolve(profileDir, 'summary.txt'), `${text}\n`);
    process.stdout.write(`\n${text}\n(profiles and this summary in ${profileDir})\n`);
  }
  if (options.writeDocs) {
    const path = resolve(repoDir, 'docs/BENCHMARKS.md');
    writeBenchSection(path, 'batch', `${report.markdown}\n\n${keptAnalysis(path)}`);
    say('wrote the bench:batch section of docs/BENCHMARKS.md');
  }
  if (report.mismatches.length > 0) {
    process.stderr.write(`\n!!! MISMATCH between the mesh and the single process:\n${report.mismatches.map((m) => `!!!   ${m}`).join('\n')}\n`);
    return 1;
  }
  return 0;
}

/** Attempts per sample when other processes disturb it (see --max-others-cores). */
const MAX_ATTEMPTS = 3;
/** Longest wait for the machine to quiet down before a mesh start. */
const QUIET_WAIT_MS = 30_000;
/** Cores other processes may keep busy for the machine to count as quiet. */
const QUIET_CORES = 0.5;

/**
 * The machine is shared: before each mesh start, waits (up to QUIET_WAIT_MS) until the cores are
 * busy less than QUIET_CORES over a second (nothing of ours runs then), so that a burst of other
 * work does not land on one worker count only.
 */
async function waitForQuiet(signal: AbortSignal): Promise<void> {
  const until = Date.now() + QUIET_WAIT_MS;
  let said = false;
  for (;;) {
    const before = machineBusyCpuMs();
    await sleep(1000, undefined, { signal });
    const after = machineBusyCpuMs();
    if (before === undefined || after === undefined) return;
    const busy = (after - before) / 1000;
    if (busy < QUIET_CORES) return;
    if (Date.now() >= until) {
      say(`the machine is still busy (${busy.toFixed(2)} cores) after ${QUIET_WAIT_MS / 1000} s: measuring anyway`);
      return;
    }
    if (!said) say(`waiting for the machine to quiet down (${busy.toFixed(2)} cores busy by other processes)…`);
    said = true;
  }
}

/** A cold single-process count: a fresh `node dist/bench/batch-single.js`. */
function singleCold(k: number): Promise<SingleProcessCount> {
  return new Promise((ok, fail) => {
    const child = spawn(process.execPath, [resolve(__dirname, 'batch-single.js'), DATASET, Number.isFinite(k) ? String(k) : 'all'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => (out += d));
    child.once('error', fail);
    child.once('exit', (code) => {
      if (code !== 0) return fail(new Error(`batch-single.js exited with code ${code}`));
      ok(JSON.parse(out) as SingleProcessCount);
    });
  });
}

/** Map tasks in flight for `workers` workers: as many as there are CPUs (each task keeps one busy), and at least one per worker. */
function tasksInFlight(o: BenchOptions, workers: number): number {
  return o.tasksInFlight ?? Math.max(workers, availableParallelism());
}

function startMesh(o: BenchOptions, workers: number, abort: AbortController, profileDir: string | undefined): Promise<LocalMesh> {
  const inFlight = String(tasksInFlight(o, workers));
  say(`starting the mesh: balancer, aggregator, ${workers} worker(s), scheduler (--max-batch-tasks ${inFlight} --max-tasks-per-job ${inFlight}), gateway…`);
  return startLocalMesh({
    distDir,
    repoDir,
    model: CLASSIFY_MODEL,
    workers,
    aggregator: true,
    extraArgs: { scheduler: ['--max-batch-tasks', inFlight, '--max-tasks-per-job', inFlight] },
    startTimeoutMs: 300_000,
    nodeFlags: profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, '--cpu-prof-name={name}.cpuprofile'] : undefined,
    signal: abort.signal,
    log: (line) => say(line),
    onUnexpectedExit: (message) => abort.abort(new Error(message)),
  });
}

function wordCountSpec(o: BenchOptions, shardSize: number): JobSpec {
  return JobSpec.fromPartial({
    map: { $case: 'mapper', mapper: 'wordcount' },
    input: { $case: 'dataset', dataset: DATASET },
    shardSize,
    reducer: o.reducer,
    topK: o.reducer === 'top_k' ? o.topK : 0,
  });
}

function classifySpec(o: BenchOptions): JobSpec {
  return JobSpec.fromPartial({
    map: { $case: 'model', model: CLASSIFY_MODEL },
    input: { $case: 'dataset', dataset: DATASET },
    shardSize: o.shardSize,
    reducer: 'accuracy',
  });
}

type JobRun = Omit<JobSample, 'kind' | 'shardSize' | 'workers' | 'temperature' | 'round'>;

/** Submits `spec` through the gateway and follows Watch until the job ends; timed from before Submit to the final event. */
async function runJob(mesh: LocalMesh, spec: JobSpec, signal: AbortSignal): Promise<JobRun> {
  const channel = openChannel(mesh.addresses.gateway, 64 * 1024 * 1024);
  const client = createMeshClient(JobServiceDefinition, channel);
  const cpuNow: () => CpuMs = cpuSampler({ client: 'self', ...Object.fromEntries(mesh.processes.map((p) => [p.name, p.pid])) });
  try {
    const cpuBefore = cpuNow();
    const startUs = monotonicUs();
    const start = performance.now();
    const startWall = Date.now();
    const { job } = await client.submit({ spec }, { signal });
    const submitMs = performance.now() - start;
    if (!job) throw new Error('Submit returned no job');
    let firstDone = NaN;
    let lastDone = NaN;
    let tasks = 0;
    const tasksByWorker: Record<string, number> = {};
    let result: JobResult | undefined;
    for await (const { event } of client.watch({ jobId: job.id, afterSequence: 0 }, { signal })) {
      const e = event?.event;
      if (!e) continue;
      if (e.$case === 'taskDone') {
        const at = event!.timeMs - startWall;
        if (Number.isNaN(firstDone)) firstDone = at;
        lastDone = at;
        tasks++;
        tasksByWorker[e.taskDone.workerId] = (tasksByWorker[e.taskDone.workerId] ?? 0) + 1;
      } else if (e.$case === 'completed') {
        result = e.completed;
        break;
      } else if (e.$case === 'failed') {
        throw new Error(`job ${job.id} failed: ${e.failed.error}`);
      } else if (e.$case === 'cancelled') {
        throw new Error(`job ${job.id} was cancelled: ${e.cancelled.reason}`);
      }
    }
    const elapsedMs = performance.now() - start;
    const endUs = monotonicUs();
    const cpuAfter = cpuNow();
    if (!result) throw new Error(`job ${job.id}: the watch ended without a result`);
    const cpuMs = Object.fromEntries(Object.keys(cpuAfter).map((p) => [p, cpuAfter[p] - cpuBefore[p]]));
    return { elapsedMs, submitMs, firstTaskDoneMs: firstDone, lastTaskDoneMs: lastDone, tasks, tasksByWorker, result, cpuMs, window: { startUs, endUs } };
  } finally {
    channel.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Report

const sec = (ms: number) => (Number.isFinite(ms) ? (ms / 1000).toFixed(3) : 'n/a');
const fixed = (x: number, digits: number) => (Number.isFinite(x) ? x.toFixed(digits) : 'n/a');

interface Row {
  label: string;
  workers: number | undefined;
  shardSize: number | undefined;
  temperature: Temperature;
  elapsed: number[];
}

/** The mesh's word-count results against the single process's; one line per difference. */
function checkResults(reference: SingleProcessCount, jobs: JobSample[]): string[] {
  const problems: string[] = [];
  for (const j of jobs.filter((x) => x.kind === 'wordcount')) {
    const where = `${j.workers} worker(s), shard size ${j.shardSize}, ${j.temperature}, run ${j.round}`;
    const r = j.result?.result;
    if (r?.$case !== 'wordCounts') {
      problems.push(`${where}: the result is ${r?.$case ?? 'empty'}, not word counts`);
      continue;
    }
    const w = r.wordCounts;
    if (w.totalWords !== reference.totalWords) problems.push(`${where}: total_words ${w.totalWords}, single process ${reference.totalWords}`);
    if (w.distinctWords !== reference.distinctWords) problems.push(`${where}: distinct_words ${w.distinctWords}, single process ${reference.distinctWords}`);
    if (w.records !== reference.records) problems.push(`${where}: records ${w.records}, single process ${reference.records}`);
    const mesh = w.words.map((x) => `${x.word}=${x.count}`).join(' ');
    const single = reference.top.map((x) => `${x.word}=${x.count}`).join(' ');
    if (mesh !== single) problems.push(`${where}: the top words differ (mesh ${mesh.slice(0, 120)}…, single process ${single.slice(0, 120)}…)`);
  }
  return problems;
}

const plural = (n: number, what: string) => `${n} ${what}${n === 1 ? '' : 's'}`;

function buildReport(
  o: BenchOptions,
  singles: SingleSample[],
  jobs: JobSample[],
  code: string,
  loadBefore: number[],
  loadAfter: number[],
  remeasured: number,
): { text: string; markdown: string; mismatches: string[] } {
  const reference = singles[0];
  const records = reference.records;
  const bytes = reference.bytes;
  const mismatches = [
    ...singles
      .filter((s) => s.totalWords !== reference.totalWords || s.distinctWords !== reference.distinctWords)
      .map((s) => `single process run ${s.round} ${s.temperature}: total_words ${s.totalWords}, distinct ${s.distinctWords}`),
    ...checkResults(reference, jobs),
  ];
  const wordCounts = (workers: number, shardSize: number, temperature: Temperature) =>
    jobs.filter((j) => j.kind === 'wordcount' && j.workers === workers && j.shardSize === shardSize && j.temperature === temperature).map((j) => j.elapsedMs);

  // Word count: single process and mesh, warm then cold; the comparison shard sizes warm only.
  const rows: Row[] = [];
  for (const temperature of ['warm', 'cold'] as const) {
    const single = singles.filter((s) => s.temperature === temperature).map((s) => s.elapsedMs);
    rows.push({ label: 'single process', workers: undefined, shardSize: undefined, temperature, elapsed: single });
    for (const shardSize of temperature === 'warm' ? [o.shardSize, ...o.compareShardSizes] : [o.shardSize]) {
      for (const workers of o.workerCounts) {
        rows.push({ label: `mesh, ${plural(workers, 'worker')}`, workers, shardSize, temperature, elapsed: wordCounts(workers, shardSize, temperature) });
      }
    }
  }
  const singleMedian = (t: Temperature) => median(rows.find((r) => r.workers === undefined && r.temperature === t)!.elapsed);
  const headers = ['word count', 'dataset', 'shard size', 'runs', 'median s', 'min-max s', 'MB/s', 'records/s', 'mesh/single'];
  const right = [false, false, true, true, true, true, true, true, true];
  const tableRows = rows.map((r) => {
    const m = median(r.elapsed);
    const share = r.workers === undefined ? '' : `${fixed((100 * singleMedian(r.temperature)) / m, 1)}%`;
    return [
      r.label,
      r.temperature === 'warm' ? 'warm (in memory)' : 'cold (first use)',
      r.shardSize ?? '',
      r.elapsed.length,
      sec(m),
      `${sec(Math.min(...r.elapsed))}-${sec(Math.max(...r.elapsed))}`,
      fixed(bytes / 1e6 / (m / 1000), 2),
      fixed(records / (m / 1000), 0),
      share,
    ];
  });

  const ratioLines: string[] = [];
  for (const r of rows.filter((x) => x.workers !== undefined)) {
    const single = singleMedian(r.temperature);
    const m = median(r.elapsed);
    const share = single / m;
    const verdict = r.workers === 2 ? `; target >= ${100 * TARGET_SHARE_AT_2}%: ${share >= TARGET_SHARE_AT_2 ? 'MET' : 'MISSED'}` : '';
    const what = r.temperature === 'warm' ? 'warm (dataset in memory)' : 'cold (first use: dataset built)';
    ratioLines.push(
      `${what}, ${plural(r.workers!, 'worker')}, shard size ${r.shardSize}: mesh/single-process throughput ${fixed(100 * share, 1)}% (single ${sec(single)} s / mesh ${sec(m)} s)${verdict}`,
    );
  }

  // Classification.
  const classifyHeaders = ['classification', 'shard size', 'runs', 'median s', 'min-max s', 'records/s', 'MB/s', 'accuracy', 'precision', 'recall', 'f1'];
  const classifyRight = [false, true, true, true, true, true, true, true, true, true, true];
  const classifyRows = o.workerCounts
    .map((workers) => {
      const runs = jobs.filter((j) => j.kind === 'classify' && j.workers === workers);
      if (runs.length === 0) return undefined;
      const m = median(runs.map((j) => j.elapsedMs));
      const acc = runs[0].result?.result?.$case === 'accuracy' ? runs[0].result.result.accuracy : undefined;
      const same = runs.every((j) => j.result?.result?.$case === 'accuracy' && j.result.result.accuracy.accuracy === acc?.accuracy);
      if (!same) mismatches.push(`${CLASSIFY_MODEL} with ${plural(workers, 'worker')}: the runs report different accuracies`);
      if (acc && acc.total !== records) mismatches.push(`${CLASSIFY_MODEL} with ${plural(workers, 'worker')}: accuracy over ${acc.total} records, the dataset has ${records}`);
      return [
        `mesh, ${plural(workers, 'worker')}, ${CLASSIFY_MODEL}`,
        o.shardSize,
        runs.length,
        sec(m),
        `${sec(Math.min(...runs.map((j) => j.elapsedMs)))}-${sec(Math.max(...runs.map((j) => j.elapsedMs)))}`,
        fixed(records / (m / 1000), 0),
        fixed(bytes / 1e6 / (m / 1000), 2),
        acc ? acc.accuracy.toFixed(4) : 'n/a',
        acc ? acc.precision.toFixed(4) : 'n/a',
        acc ? acc.recall.toFixed(4) : 'n/a',
        acc ? acc.f1.toFixed(4) : 'n/a',
      ];
    })
    .filter((r) => r !== undefined);

  // Where the time goes: phases and CPU per process (medians over the runs).
  const processNames = ['client', 'gateway', 'scheduler', 'balancer', 'aggregator', 'worker', ...Array.from({ length: Math.max(...o.workerCounts) - 1 }, (_, i) => `worker-${i + 2}`)];
  const cpuHeaders = ['job', 'wall s', 'submit s', '1st task done s', 'last task done s', ...processNames.map((p) => `${p} CPU s`), 'mesh CPU s', 'others CPU s', 'machine cores busy'];
  const cpuRight = cpuHeaders.map((_, i) => i > 0);
  const groups: { label: string; runs: JobSample[] }[] = [];
  for (const kind of ['wordcount', 'classify'] as const) {
    for (const temperature of ['warm', 'cold'] as const) {
      for (const shardSize of [o.shardSize, ...o.compareShardSizes]) {
        for (const workers of o.workerCounts) {
          const runs = jobs.filter((j) => j.kind === kind && j.temperature === temperature && j.workers === workers && j.shardSize === shardSize);
          if (runs.length > 0) groups.push({ label: `${kind === 'wordcount' ? 'word count' : CLASSIFY_MODEL} ${temperature}, ${workers}w, shard ${shardSize}`, runs });
        }
      }
    }
  }
  const cpuRows = groups.map(({ label, runs }) => {
    const med = (f: (j: JobSample) => number) => median(runs.map(f));
    const meshCpu = (j: JobSample) => processNames.filter((p) => p !== 'client').reduce((t, p) => t + (j.cpuMs[p] ?? 0), 0);
    return [
      label,
      sec(med((j) => j.elapsedMs)),
      sec(med((j) => j.submitMs)),
      sec(med((j) => j.firstTaskDoneMs)),
      sec(med((j) => j.lastTaskDoneMs)),
      ...processNames.map((p) => (runs[0].cpuMs[p] === undefined ? '' : sec(med((j) => j.cpuMs[p])))),
      sec(med(meshCpu)),
      sec(med((j) => j.cpuMs.machine - meshCpu(j) - j.cpuMs.client)),
      fixed(med((j) => j.cpuMs.machine / j.elapsedMs), 2),
    ];
  });
  const singleCpu = median(singles.filter((s) => s.temperature === 'warm').map((s) => s.cpuMs));
  const spread = jobs
    .filter((j) => j.kind === 'wordcount' && j.workers > 1 && j.shardSize === o.shardSize)
    .map((j) => Object.values(j.tasksByWorker).sort((a, b) => b - a).join('/'));

  const inFlight = o.workerCounts.map((w) => `${plural(w, 'worker')}: --max-batch-tasks ${tasksInFlight(o, w)} --max-tasks-per-job ${tasksInFlight(o, w)}`).join('; ');
  const tasksAt = (size: number) => `${size} (${Math.ceil(records / size)} tasks)`;
  const run = runFrame('bench:batch', 'batch', o.argv, code, loadBefore, loadAfter);
  const settings =
    `dataset ${DATASET}: ${records} records, ${fixed(bytes / 1e6, 2)} MB of UTF-8 text, ${reference.totalWords} words, ${reference.distinctWords} distinct; ` +
    `mapper wordcount, reducer ${o.reducer}${o.reducer === 'top_k' ? ` (k ${o.topK})` : ''}; shard size ${tasksAt(o.shardSize)}` +
    `${o.compareShardSizes.length ? `, and for comparison the warm jobs again at ${o.compareShardSizes.map(tasksAt).join(', ')}, interleaved` : ''}; ` +
    `map tasks in flight (the scheduler's flags): ${inFlight}; ${plural(o.runs, 'run')} (a fresh mesh per run and worker count, worker counts in ABBA order), ` +
    `each a cold single-process count (a fresh process) and a cold word count (the fresh mesh's first job), then ${plural(o.warmJobs, 'time')} in turn a warm single-process count (in the bench process) and a warm word count per shard size${o.classify ? `, then one ${CLASSIFY_MODEL} classification` : ''}; ` +
    `the machine is shared: the bench waits (up to ${QUIET_WAIT_MS / 1000} s) until other processes keep less than ${QUIET_CORES} core busy before each mesh start, and measures a sample again (up to ${MAX_ATTEMPTS} attempts) when other processes kept more than ${o.maxOthersCores} cores busy during it (${remeasured} re-measured in this run)`;
  const checked =
    mismatches.length === 0
      ? `every mesh word count equals the single process's: total_words ${reference.totalWords}, distinct ${reference.distinctWords}, records ${records}, and the same ${o.reducer === 'sum' ? 'counts' : `top ${o.topK}`}`
      : `MISMATCH: ${mismatches.join('; ')}`;

  const text = [
    ...textReportHead(`Batch word count over ${DATASET}: mesh (gateway -> scheduler -> balancer -> workers -> aggregator) vs one process (loadDataset + words())`, run, settings),
    '',
    textTable(headers, tableRows, right),
    '',
    ...ratioLines,
    `check: ${checked}`,
    ...(classifyRows.length ? ['', textTable(classifyHeaders, classifyRows, classifyRight)] : []),
    '',
    `Where the time goes (medians; phases from the scheduler's events, measured from the start; CPU from /proc; single process warm: ${sec(singleCpu)} CPU s):`,
    textTable(cpuHeaders, cpuRows, cpuRight),
    ...(spread.length ? [`tasks per worker (word count, shard size ${o.shardSize}, 2+ workers): ${spread.join(', ')}`] : []),
  ].join('\n');

  const markdown = [
    ...markdownReportHead('Batch: word count and classification of spam-assassin, mesh vs one process', run, 'is one run that leaves this file alone', 'The machine is shared, so runs vary: medians of the runs, with min-max.'),
    `- What: a job submitted through \`maas.v1.JobService/Submit\` at the gateway and followed with \`Watch\` until its \`completed\` event, through gateway -> scheduler -> balancer -> workers -> aggregator (each its own process; the scheduler's and aggregator's SQLite stores in a temporary folder), timed from before Submit to the result; against the same word count in one process (\`loadDataset\` + the mapper's \`words()\` + the same top-k order), timed from before \`loadDataset\` to the result.`,
    `- **warm** = the dataset is already in memory (a running mesh's later jobs; the single process's later counts); **cold** = first use: the scheduler (to count the records) and each worker (to read its shards) build the dataset from the npm package, as the single process does on its first count (a fresh process, timed after its modules are loaded).`,
    `- Settings: ${settings}.`,
    `- Check: ${checked}.`,
    '',
    markdownTable(headers, tableRows, right),
    '',
    ...markdownVerdicts(ratioLines),
    '',
    ...(classifyRows.length
      ? [
          `Classification: model \`${CLASSIFY_MODEL}\` on every record (Predict in the worker), reducer \`accuracy\`, warm. The accuracy is over the whole corpus, which includes the messages the model was trained on.`,
          '',
          markdownTable(classifyHeaders, classifyRows, classifyRight),
          '',
        ]
      : []),
    `Where the time goes (medians over the runs). Phases are the scheduler's event times measured from the start (submit = Submit's round trip). CPU seconds per process during the job, from /proc (10 ms resolution); \`client\` is the bench process (Submit, Watch); \`others\` is every other process on the machine (other people's work: it competes for the same 2 cores); \`machine cores busy\` is the whole machine's CPU time over wall time (2 = both cores busy). The single process's warm count used ${sec(singleCpu)} CPU s.`,
    '',
    markdownTable(cpuHeaders, cpuRows, cpuRight),
    ...(spread.length ? ['', `Tasks per worker in each word count with 2 workers at shard size ${o.shardSize}: ${spread.join(', ')}.`] : []),
  ].join('\n');
  return { text, markdown, mismatches };
}

/** The hand-written part of the section (from ANALYSIS_MARKER on), kept across runs. */
function keptAnalysis(path: string): string {
  if (!existsSync(path)) return `${ANALYSIS_MARKER}\n`;
  const current = readFileSync(path, 'utf8');
  const from = current.indexOf('<!-- bench:batch:start -->');
  const to = current.indexOf('<!-- bench:batch:end -->', from);
  if (from < 0 || to < 0) return `${ANALYSIS_MARKER}\n`;
  const section = current.slice(from, to);
  const at = section.indexOf(ANALYSIS_MARKER);
  return at < 0 ? `${ANALYSIS_MARKER}\n` : section.slice(at).trimEnd();
}

/** Summaries of each service's CPU profile within the cold and the warm word-count jobs of one mesh start. */
function profileBlock(dir: string, mesh: LocalMesh, windows: { cold: TimeWindow[]; warm: TimeWindow[] }, workers: number, round: number): string {
  const blocks: string[] = [];
  for (const temperature of ['warm', 'cold'] as const) {
    for (const { name } of mesh.processes) {
      const file = resolve(dir, `${name}.cpuprofile`);
      if (!existsSync(file)) {
        blocks.push(`${name}: no profile written (${file})`);
        continue;
      }
      const title = `${workers} worker(s), run ${round}, ${temperature} word count, ${name}`;
      blocks.push(formatProfileSummary(title, summariseCpuProfile(file, windows[temperature], repoDir), 12).join('\n'));
    }
  }
  return blocks.join('\n\n') + '\n';
}

exitWhenDone('bench:batch', main(), { stack: true });
