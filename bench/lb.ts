/**
 * `npm run bench:lb`: how each routing policy of the balancer holds the tail when one of five
 * workers is slow or failing. Real processes on this machine: three sets of 5 workers serving the
 * `echo` model with the same base delay D (20 ms, see DEFAULT_DELAY_MS), one set per scenario,
 * and for every policy a fresh balancer process per scenario (so its EWMA, ejections, retry
 * budget and slow start start from nothing; the workers stay up and join each new balancer). A
 * policy's three scenarios run back to back, then the next policy's:
 *
 * - `healthy`: every worker at D;
 * - `slow`: the last worker (w5) at 10 x D;
 * - `failing`: w5 at D, but failing 20% of its calls with UNAVAILABLE (`--echo-fail-rate`);
 * - `failing_no_retry`: the same failing worker with the balancer's retries off
 *   (`--retry-budget 0 --retry-min-per-second 0`): what keeps client errors down is ejection alone.
 *
 * Load: a closed loop of C callers, for a fixed count of requests per policy and scenario, each a
 * Predict task on `echo` sent straight to the balancer's `maas.internal.v1.BalancerService/Route`
 * (no gateway and no scheduler, so what is measured is the balancer's routing and forwarding plus
 * the worker), each with an affinity key drawn from a fixed set (the same sequence for every
 * policy; only consistent_hash reads it). The first requests of each run warm the fresh balancer
 * up (JIT) and are not counted; the policy's state carries over from them.
 *
 * Per policy and scenario: p50, p99, p99.9 and max latency of the calls that succeeded, the error
 * rate the client saw, the share of requests sent to w5 (served by it, from TaskOutput.workerId,
 * plus failed on it, from the balancer's retry log lines and the errors), the balancer's retries
 * and ejections. Prints tables, checks the issue's targets, rewrites its section of
 * docs/BENCHMARKS.md and draws docs/lb-p99.svg.
 */
import { setMaxListeners } from 'node:events';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { ClientError, Status } from 'nice-grpc';
import { createMeshClient, openChannel } from '../common/client';
import { mulberry32 } from '../common/random';
import { BalancerServiceDefinition } from '../generated/maas/internal/v1/balancer';
import { Priority } from '../generated/maas/v1/inference';
import { WorkerState } from '../generated/maas/v1/mesh';
import { POLICY_NAMES, PolicyName } from '../services/balancer/policy';
import { markdownTable, textTable, writeBenchSection } from './benchmarks-doc';
import { machineBusyCpuMs, processCpuMs } from './cpu-time';
import { renderBarChart } from './lb-chart';
import { ServiceProcess, freePorts, startService, waitForServing, waitForWorkers } from './lb-procs';
import { percentile } from './stats';
import { abortOnInterrupt, codeVersion, exitWhenDone, failedCallLines, intOption, markdownReportHead, numberOption, runFrame, say, textReportHead } from './bench-cli';

const USAGE = `usage: npm run bench:lb -- [options]     (or: node dist/bench/lb.js [options])

  --requests N         measured requests per policy and scenario          (default 3000)
  --warmup N           requests before those, not counted (JIT warm-up of
                       the fresh balancer; the policy state carries over)  (default 200)
  --concurrency N      closed-loop callers                                 (default 16)
  --delay-ms D         base echo delay of every worker                     (default 20)
  --slow-factor K      the slow worker's delay is K x D                    (default 10)
  --fail-rate F        share of calls the failing worker fails             (default 0.2)
  --workers N          workers per scenario; the last one is the bad one   (default 5)
  --keys N             distinct affinity keys                              (default 200)
  --rounds N           runs per policy and scenario, merged; policy order
                       alternates forwards/backwards between rounds       (default 1)
  --policies LIST      comma-separated                                     (default all: ${POLICY_NAMES.join(',')})
  --scenarios LIST     comma-separated                                     (default healthy,slow,failing,
                       failing_no_retry)
  --balancer-args=STR  extra flags for every balancer (note the =), e.g.
                       --balancer-args="--eject-after-failures 2"
  --json FILE          also write every run's numbers as JSON
  --quick              500 requests, warm-up 50, and docs/ left alone
  --no-docs            do not rewrite docs/BENCHMARKS.md and docs/lb-p99.svg
`;

const MODEL = 'echo';
/**
 * Base delay of the workers, ms. Not smaller: each call costs about 2.5 ms of CPU across the
 * client, the balancer and the worker, so on a 2-core machine at concurrency 16 a 5 ms delay
 * saturates the cores and the latencies measure CPU queueing more than the workers (at 5 ms the
 * all-healthy p99 was 40-70 ms, 10 times the delay, and the 50 ms slow worker hid in that noise).
 * At 20 ms the offered load (16 / 20 ms = 800 calls/s at most; 400-500 in practice) leaves
 * headroom, and a full run still fits in about 4 minutes.
 */
const DEFAULT_DELAY_MS = 20;
const INPUT = 'the quick brown fox jumps over the lazy dog';
const SCENARIOS = ['healthy', 'slow', 'failing', 'failing_no_retry'] as const;
type Scenario = (typeof SCENARIOS)[number];
const SCENARIO_TITLES: Record<Scenario, string> = {
  healthy: 'all healthy',
  slow: 'one slow worker',
  failing: 'one failing worker',
  failing_no_retry: 'one failing worker, balancer retries off (ejection alone)',
};
/** Scenarios whose bad worker fails a share of its calls. */
const FAILING: readonly Scenario[] = ['failing', 'failing_no_retry'];
/** Balancer flags of a scenario on top of --balancer-args. */
const SCENARIO_BALANCER_ARGS: Partial<Record<Scenario, string[]>> = { failing_no_retry: ['--retry-budget', '0', '--retry-min-per-second', '0'] };
/** The issue's targets. */
const TARGET_SLOW_P99_RATIO = 1.5;
const TARGET_ERROR_RATE = 0.01;
/** The line inside the section after which hand-written text is kept across runs. */
const ANALYSIS_MARKER = '<!-- bench:lb:analysis -->';
const SECTION_ID = 'lb';

const repoDir = resolve(__dirname, '../..');
const distDir = resolve(__dirname, '..');

interface Options {
  requests: number;
  warmup: number;
  concurrency: number;
  delayMs: number;
  slowFactor: number;
  failRate: number;
  workers: number;
  keys: number;
  rounds: number;
  policies: PolicyName[];
  scenarios: Scenario[];
  balancerArgs: string[];
  json: string | undefined;
  writeDocs: boolean;
  argv: string[];
}

/** What one run (a fresh balancer, one policy, one scenario) measured; counts cover the measured requests only unless said. */
interface Run {
  scenario: Scenario;
  policy: PolicyName;
  round: number;
  /** Measured requests issued. */
  requests: number;
  /** Latency of each measured request that succeeded, ms. */
  latenciesMs: number[];
  errors: number;
  /** Requests of the warm-up (not measured) that failed: before an ejection, they are where a bad worker's failures land. */
  warmupErrors: number;
  /** Warm-up requests issued. */
  warmup: number;
  errorMessages: Record<string, number>;
  /** Successful measured requests per worker that served them. */
  servedBy: Record<string, number>;
  /** Retries the balancer granted for measured requests, by the worker that failed. */
  retriesAfter: Record<string, number>;
  /** Measured requests that failed for the client, by the worker named as failing. */
  errorsAt: Record<string, number>;
  /** Ejections over the whole run (warm-up included), in order. */
  ejections: { worker: string; reason: string }[];
  /** Wall time of the measured requests, ms. */
  elapsedMs: number;
  /** Cores the whole machine kept busy during the measured requests (2 = both cores of a 2-core machine). */
  machineCores: number;
  /** Balancer CPU per measured request, µs. */
  balancerCpuUsPerRequest: number;
  /** The balancer's view of its workers right after the run (ListWorkers), by worker id. */
  workersAtEnd: Record<string, { ewmaMs: number; outstanding: number; ejections: number; state: string }>;
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      requests: { type: 'string' },
      warmup: { type: 'string' },
      concurrency: { type: 'string' },
      'delay-ms': { type: 'string' },
      'slow-factor': { type: 'string' },
      'fail-rate': { type: 'string' },
      workers: { type: 'string' },
      keys: { type: 'string' },
      rounds: { type: 'string' },
      policies: { type: 'string' },
      scenarios: { type: 'string' },
      'balancer-args': { type: 'string' },
      json: { type: 'string' },
      quick: { type: 'boolean', default: false },
      'no-docs': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return undefined;
  }
  const quick = values.quick!;
  const list = <T extends string>(name: string, raw: string | undefined, all: readonly T[]): T[] => {
    if (raw === undefined || raw === '') return [...all];
    const items = raw.split(',').map((s) => s.trim()) as T[];
    const bad = items.filter((i) => !all.includes(i));
    if (bad.length || items.length === 0) throw new Error(`--${name} must be a comma-separated list of ${all.join(', ')}, given "${raw}"`);
    return items;
  };
  const delayMs = intOption('delay-ms', values['delay-ms'], DEFAULT_DELAY_MS, 0, 10_000);
  const slowFactor = numberOption('slow-factor', values['slow-factor'], 10, 1, 1000);
  if (!Number.isInteger(delayMs * slowFactor)) throw new Error('--delay-ms x --slow-factor must be a whole number of milliseconds');
  return {
    requests: intOption('requests', values.requests, quick ? 500 : 3000, 1, 10_000_000),
    warmup: intOption('warmup', values.warmup, quick ? 50 : 200, 0, 10_000_000),
    concurrency: intOption('concurrency', values.concurrency, 16, 1, 10_000),
    delayMs,
    slowFactor,
    failRate: numberOption('fail-rate', values['fail-rate'], 0.2, 0, 1),
    workers: intOption('workers', values.workers, 5, 2, 64),
    keys: intOption('keys', values.keys, 200, 1, 1_000_000),
    rounds: intOption('rounds', values.rounds, 1, 1, 100),
    policies: list('policies', values.policies, POLICY_NAMES),
    scenarios: list('scenarios', values.scenarios, SCENARIOS),
    balancerArgs: (values['balancer-args'] ?? '').split(/\s+/).filter(Boolean),
    json: values.json,
    writeDocs: !values['no-docs'] && !quick,
    argv,
  };
}

const bump = (counts: Record<string, number>, key: string, by = 1) => {
  counts[key] = (counts[key] ?? 0) + by;
};

/** The worker a balancer error names as the one that failed, if any. */
function failedWorkerOf(message: string): string | undefined {
  return /worker (\S+) failed (?:before|after) its/.exec(message)?.[1] ?? /; last: (\S+) \(/.exec(message)?.[1];
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  if (!options) return 0;
  const o = options;
  const abort = new AbortController();
  const releaseSignals = abortOnInterrupt(abort, 'the processes');

  const started = performance.now();
  const code = codeVersion(repoDir);
  const loadBefore = loadavg();
  const runs: Run[] = [];
  const timing = { startS: 0, restartS: 0, loadS: 0 };
  runs.push(...(await runAll(o, abort.signal, timing)));
  const loadAfter = loadavg();
  releaseSignals();
  const totalS = (performance.now() - started) / 1000;

  say(`time: ${totalS.toFixed(0)} s in all; starting the workers ${timing.startS.toFixed(0)} s, restarting balancers ${timing.restartS.toFixed(0)} s, load (warm-up included) ${timing.loadS.toFixed(0)} s`);
  const report = buildReport(o, runs, code, loadBefore, loadAfter, totalS);
  process.stdout.write(`\n${report.text}\n`);
  if (o.json) {
    writeFileSync(o.json, JSON.stringify({ options: { ...o, argv: undefined }, code, runs }, null, 1));
    say(`wrote ${o.json}`);
  }
  if (o.writeDocs) {
    const docPath = resolve(repoDir, 'docs/BENCHMARKS.md');
    writeBenchSection(docPath, SECTION_ID, `${report.markdown}\n\n${keptAnalysis(docPath)}`);
    writeFileSync(resolve(repoDir, 'docs/lb-p99.svg'), report.svg);
    say('wrote docs/BENCHMARKS.md (section bench:lb) and docs/lb-p99.svg');
  }
  return 0;
}

/** One scenario's processes: its workers, and the balancer of the policy being measured. */
interface ScenarioSet {
  scenario: Scenario;
  balancerAddress: string;
  balancerPort: number;
  workerPorts: number[];
  balancer: ServiceProcess | undefined;
  workers: ServiceProcess[];
  /** Whoever listens to the current balancer's log lines. */
  onBalancerLine: (line: string) => void;
}

/**
 * Starts every scenario's workers, then for each policy a fresh balancer per scenario, and runs
 * the scenarios of one policy back to back (healthy, slow, failing), so that a policy's baseline
 * and its bad-worker runs are measured minutes apart at most on a machine whose load drifts.
 */
async function runAll(o: Options, signal: AbortSignal, timing: { startS: number; restartS: number; loadS: number }): Promise<Run[]> {
  const ports = await freePorts(o.scenarios.length * (1 + o.workers));
  const env = {
    MAAS_LOG_LEVEL: 'warn',
    MAAS_WORKER_CACHE_DIR: resolve(repoDir, '.cache/models'),
    // The services stop by themselves if this process disappears without stopping them.
    MAAS_PARENT_PID: String(process.pid),
  };
  let failure: Error | undefined;
  const failed = new AbortController();
  const runSignal = AbortSignal.any([signal, failed.signal]);
  const onUnexpectedExit = (message: string) => {
    failure ??= new Error(message);
    failed.abort(failure);
  };
  const bad = `w${o.workers}`;
  const sets: ScenarioSet[] = o.scenarios.map((scenario, i) => {
    const [balancerPort, ...workerPorts] = ports.slice(i * (1 + o.workers), (i + 1) * (1 + o.workers));
    return { scenario, balancerPort, workerPorts, balancerAddress: `127.0.0.1:${balancerPort}`, balancer: undefined, workers: [], onBalancerLine: () => undefined };
  });

  const startBalancer = async (set: ScenarioSet, policy: PolicyName) => {
    set.balancer = startService({
      name: `balancer (${set.scenario}, ${policy})`,
      entry: 'services/balancer/main.js',
      port: set.balancerPort,
      args: ['--policy', policy, '--log-format', 'text', ...o.balancerArgs, ...(SCENARIO_BALANCER_ARGS[set.scenario] ?? [])],
      env,
      distDir,
      repoDir,
      onLine: (line) => set.onBalancerLine(line),
      onUnexpectedExit,
    });
    await waitForServing(set.balancerAddress, Date.now() + 30_000, runSignal);
  };
  const order = (round: number) => (round % 2 === 0 ? o.policies : [...o.policies].reverse());

  const runs: Run[] = [];
  try {
    await Promise.all(sets.map((set) => startBalancer(set, order(0)[0])));
    say(`starting ${o.workers} workers for each scenario (${o.scenarios.join(', ')})…`);
    for (const set of sets) {
      for (let i = 1; i <= o.workers; i++) {
        const id = `w${i}`;
        const isBad = id === bad;
        const delay = set.scenario === 'slow' && isBad ? o.delayMs * o.slowFactor : o.delayMs;
        const args = ['--balancer', set.balancerAddress, '--worker-id', id, '--echo-delay-ms', String(delay)];
        if (FAILING.includes(set.scenario) && isBad) args.push('--echo-fail-rate', String(o.failRate));
        set.workers.push(
          startService({ name: `${set.scenario} ${id}`, entry: 'services/worker/main.js', port: set.workerPorts[i - 1], args, env, distDir, repoDir, onLine: () => undefined, onUnexpectedExit }),
        );
      }
    }
    const t0 = performance.now();
    const deadline = Date.now() + 120_000;
    await Promise.all(sets.flatMap((set) => set.workers.map((w) => waitForServing(w.address, deadline, runSignal))));
    timing.startS = (performance.now() - t0) / 1000;
    say(`${sets.length * o.workers} workers serving in ${timing.startS.toFixed(1)} s`);
    for (let round = 0; round < o.rounds; round++) {
      for (const policy of order(round)) {
        // Every scenario's balancer for this policy starts (and its workers join it) at once.
        const t0 = performance.now();
        await Promise.all(
          sets.map(async (set) => {
            if (!set.balancer) await startBalancer(set, policy);
            await waitForWorkers(set.balancerAddress, MODEL, o.workers, Date.now() + 30_000, runSignal);
          }),
        );
        timing.restartS += (performance.now() - t0) / 1000;
        say(`${policy}: ${sets.length} balancer${sets.length > 1 ? 's' : ''} up and joined by ${o.workers} workers each in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
        const pending: { run: Run; counters: { retriesAfter: Record<string, number>; ejections: { worker: string; reason: string }[] } }[] = [];
        for (const set of sets) {
          const { scenario } = set;
          const counters = { retriesAfter: {} as Record<string, number>, ejections: [] as { worker: string; reason: string }[] };
          const measuredPrefix = `lb-${scenario}-${policy}-${round}-m`;
          set.onBalancerLine = (line) => {
            const retry = /trying another worker=(\S+) request_id=(\S+)/.exec(line);
            if (retry && retry[2].startsWith(measuredPrefix)) bump(counters.retriesAfter, retry[1]);
            const ejected = /worker ejected worker=(\S+) reason=(\S+)/.exec(line);
            if (ejected) counters.ejections.push({ worker: ejected[1], reason: ejected[2] });
          };
          say(`${policy}, ${scenario}${o.rounds > 1 ? ` (round ${round + 1}/${o.rounds})` : ''}: ${o.warmup} + ${o.requests} requests at concurrency ${o.concurrency}`);
          const t1 = performance.now();
          const run = await runLoad(o, scenario, policy, round, set.balancerAddress, set.balancer!.pid, measuredPrefix, runSignal);
          timing.loadS += (performance.now() - t1) / 1000;
          run.workersAtEnd = await balancerView(set.balancerAddress, runSignal);
          pending.push({ run, counters });
        }
        // The balancers stop together, once every scenario of the policy has run: a worker whose
        // balancer is gone backs off (up to 5 s) before joining again, which a balancer that
        // stopped early would pay for at the next start. Stopping waits until each balancer's
        // output has ended, so every retry line has been counted. Its graceful shutdown would wait
        // 2 s for the workers' membership streams; nothing is in flight, so it gets 250 ms before SIGKILL.
        await Promise.all(
          sets.map(async (set) => {
            await set.balancer?.stop(250);
            set.balancer = undefined;
            set.onBalancerLine = () => undefined;
          }),
        );
        for (const { run, counters } of pending) {
          run.retriesAfter = counters.retriesAfter;
          run.ejections = counters.ejections;
          runs.push(run);
          say(`  ${run.scenario}: ${describeRun(run, bad)}`);
        }
      }
    }
  } catch (err) {
    throw failure ?? err;
  } finally {
    await Promise.all(sets.flatMap((set) => [set.balancer?.stop(), ...set.workers.map((w) => w.stop())]));
  }
  if (failure) throw failure;
  return runs;
}

/** The balancer's view of its workers (ListWorkers); empty if it cannot tell. */
async function balancerView(address: string, signal: AbortSignal): Promise<Run['workersAtEnd']> {
  const channel = openChannel(address);
  try {
    const client = createMeshClient(BalancerServiceDefinition, channel);
    const { workers } = await client.listWorkers({}, { signal, deadline: Date.now() + 5000 });
    return Object.fromEntries(workers.map((w) => [w.workerId, { ewmaMs: w.ewmaLatencyMs, outstanding: w.outstanding, ejections: w.ejections, state: WorkerState[w.state] ?? String(w.state) }]));
  } catch (err) {
    signal.throwIfAborted();
    say(`  (ListWorkers failed: ${(err as Error).message})`);
    return {};
  } finally {
    channel.close();
  }
}

/** One line about a run, for the progress log. */
function describeRun(run: Run, bad: string): string {
  const s = summarise([run], bad);
  const ewma = Object.keys(run.workersAtEnd)
    .sort()
    .map((id) => run.workersAtEnd[id].ewmaMs.toFixed(0))
    .join('/');
  return `p50 ${ms(s.p50)} ms, p99 ${ms(s.p99)} ms, p99.9 ${ms(s.p999)} ms, errors ${s.errors} (warm-up ${s.warmupErrors}), to ${bad} ${pct(s.sentToBadShare)}, retries ${s.retries}, ejections ${s.ejections}, ${s.rps.toFixed(0)} rps${ewma ? `; EWMA at the end, ms: ${ewma}` : ''}`;
}

/** The closed loop against one balancer: warm-up requests, then the measured ones. */
async function runLoad(o: Options, scenario: Scenario, policy: PolicyName, round: number, balancerAddress: string, balancerPid: number, measuredPrefix: string, signal: AbortSignal): Promise<Run> {
  const channel = openChannel(balancerAddress);
  const client = createMeshClient(BalancerServiceDefinition, channel);
  // Seeded, so every policy gets the same affinity-key sequence.
  const random = mulberry32(12345 + round);
  const total = o.warmup + o.requests;
  const keys = Array.from({ length: total }, () => `session-${Math.floor(random() * o.keys)}`);
  const run: Run = {
    scenario,
    policy,
    round,
    requests: o.requests,
    latenciesMs: [],
    errors: 0,
    warmupErrors: 0,
    warmup: o.warmup,
    errorMessages: {},
    servedBy: {},
    retriesAfter: {},
    errorsAt: {},
    ejections: [],
    elapsedMs: 0,
    machineCores: NaN,
    balancerCpuUsPerRequest: NaN,
    workersAtEnd: {},
  };
  let next = 0;
  let measuredStart = NaN;
  let cpuStart = { machine: NaN, balancer: NaN };
  const cpuNow = () => ({ machine: machineBusyCpuMs() ?? NaN, balancer: processCpuMs(balancerPid) ?? NaN });
  const callSignal = AbortSignal.any([signal]);
  setMaxListeners(o.concurrency + 10, callSignal);
  const caller = async () => {
    while (next < total && !signal.aborted) {
      const index = next++;
      const measured = index >= o.warmup;
      if (index === o.warmup) {
        measuredStart = performance.now();
        cpuStart = cpuNow();
      }
      const task = {
        requestId: measured ? `${measuredPrefix}${index}` : `lb-${scenario}-${policy}-${round}-w${index}`,
        tenant: 'bench',
        request: { $case: 'predict' as const, predict: { model: MODEL, input: INPUT, priority: Priority.PRIORITY_NORMAL, affinityKey: keys[index] } },
      };
      const t0 = performance.now();
      try {
        let worker: string | undefined;
        for await (const response of client.route({ task }, { signal: callSignal, deadline: Date.now() + 30_000 })) {
          const output = response.output;
          if (output?.output?.$case === 'prediction') {
            if (output.output.prediction.text !== INPUT) throw new Error(`answered "${output.output.prediction.text}", expected the input back`);
            worker = output.workerId;
          }
        }
        if (worker === undefined) throw new Error('no prediction in the answer');
        if (measured) {
          run.latenciesMs.push(performance.now() - t0);
          bump(run.servedBy, worker);
        }
      } catch (err) {
        if (signal.aborted) return;
        if (!measured) {
          run.warmupErrors++;
          continue;
        }
        run.errors++;
        const message = err instanceof ClientError ? `${Status[err.code]}: ${err.details}` : err instanceof Error ? err.message : String(err);
        const at = failedWorkerOf(message);
        if (at) bump(run.errorsAt, at);
        // Request ids differ per call; strip them so equal failures count together.
        bump(run.errorMessages, message.replace(/lb-\S+/g, '<id>'));
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: o.concurrency }, caller));
  } finally {
    channel.close();
  }
  signal.throwIfAborted();
  run.elapsedMs = performance.now() - measuredStart;
  const cpuEnd = cpuNow();
  run.machineCores = (cpuEnd.machine - cpuStart.machine) / run.elapsedMs;
  run.balancerCpuUsPerRequest = ((cpuEnd.balancer - cpuStart.balancer) * 1000) / o.requests;
  return run;
}

/** The numbers of one policy in one scenario, over its runs (rounds). */
interface Summary {
  requests: number;
  rps: number;
  p50: number;
  p99: number;
  p999: number;
  max: number;
  errors: number;
  errorRate: number;
  warmupErrors: number;
  /** Error rate over the warm-up and the measured requests together. */
  wholeRunErrorRate: number;
  /** Share of the requests served by the bad worker. */
  servedByBadShare: number;
  /** Share of the requests sent to the bad worker: served by it, or failed on it (retried elsewhere or not). */
  sentToBadShare: number;
  /** Share of the requests whose first attempt failed (the error rate without retries). */
  firstAttemptFailureRate: number;
  retries: number;
  ejections: number;
  ejectionReasons: string;
  machineCores: number;
  balancerCpuUs: number;
}

function summarise(runs: Run[], bad: string): Summary {
  const latencies = Float64Array.from(runs.flatMap((r) => r.latenciesMs)).sort();
  const requests = runs.reduce((n, r) => n + r.requests, 0);
  const sum = (f: (r: Run) => number) => runs.reduce((n, r) => n + f(r), 0);
  const errors = sum((r) => r.errors);
  const served = sum((r) => r.servedBy[bad] ?? 0);
  const failedOnBad = sum((r) => (r.retriesAfter[bad] ?? 0) + (r.errorsAt[bad] ?? 0));
  const retries = sum((r) => Object.values(r.retriesAfter).reduce((a, b) => a + b, 0));
  // A request whose first attempt failed was either retried or failed for the client (a request
  // whose retry failed too is counted once, by its retry).
  const firstFailures = retries + sum((r) => errorsWithoutRetry(r));
  const reasons: Record<string, number> = {};
  for (const r of runs) for (const e of r.ejections) bump(reasons, `${e.worker} ${e.reason}`);
  const elapsed = sum((r) => r.elapsedMs);
  return {
    requests,
    rps: elapsed > 0 ? (latencies.length * 1000) / elapsed : NaN,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    p999: percentile(latencies, 99.9),
    max: latencies.length ? latencies[latencies.length - 1] : NaN,
    errors,
    errorRate: requests > 0 ? errors / requests : NaN,
    warmupErrors: sum((r) => r.warmupErrors),
    wholeRunErrorRate: (errors + sum((r) => r.warmupErrors)) / (requests + sum((r) => r.warmup)),
    servedByBadShare: requests > 0 ? served / requests : NaN,
    sentToBadShare: requests > 0 ? (served + failedOnBad) / requests : NaN,
    firstAttemptFailureRate: requests > 0 ? firstFailures / requests : NaN,
    retries,
    ejections: sum((r) => r.ejections.length),
    ejectionReasons: Object.entries(reasons)
      .map(([k, n]) => `${n}x ${k}`)
      .join(', '),
    machineCores: sum((r) => r.machineCores * r.elapsedMs) / elapsed,
    balancerCpuUs: sum((r) => r.balancerCpuUsPerRequest * r.requests) / requests,
  };
}

/** Client errors of a run whose request was not retried first (budget exhausted, no other worker, or not retryable). */
function errorsWithoutRetry(run: Run): number {
  return Object.entries(run.errorMessages)
    .filter(([message]) => !/failed on \d+ workers/.test(message))
    .reduce((n, [, c]) => n + c, 0);
}

const ms = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : 'n/a');
const pct = (x: number, digits = 1) => (Number.isFinite(x) ? `${(100 * x).toFixed(digits)}%` : 'n/a');

/** The printed and markdown reports, and the chart. */
function buildReport(o: Options, runs: Run[], code: string, loadBefore: number[], loadAfter: number[], totalS: number): { text: string; markdown: string; svg: string } {
  const bad = `w${o.workers}`;
  const slowMs = o.delayMs * o.slowFactor;
  const summaries = new Map<string, Summary>();
  const get = (scenario: Scenario, policy: PolicyName) => {
    const key = `${scenario}/${policy}`;
    let s = summaries.get(key);
    if (!s) {
      const mine = runs.filter((r) => r.scenario === scenario && r.policy === policy);
      if (mine.length === 0) return undefined;
      s = summarise(mine, bad);
      summaries.set(key, s);
    }
    return s;
  };

  const headers = ['policy', 'requests', 'rps', 'p50 ms', 'p99 ms', 'p99.9 ms', 'max ms', 'errors', 'error rate', 'warm-up errors', `served by ${bad}`, `sent to ${bad}`, '1st-attempt failures', 'retries', 'ejections', 'machine cores busy', 'balancer µs/req'];
  const right = headers.map((_, i) => i > 0);
  const healthyP99 = (policy: PolicyName) => get('healthy', policy)?.p99 ?? NaN;
  const tables = o.scenarios.map((scenario) => {
    const withRatio = scenario !== 'healthy' && o.scenarios.includes('healthy');
    const h = withRatio ? [...headers.slice(0, 5), 'p99 / healthy p99', ...headers.slice(5)] : headers;
    const r = h.map((_, i) => i > 0);
    const rows = o.policies.map((policy) => {
      const s = get(scenario, policy)!;
      const cells: (string | number)[] = [
        policy,
        s.requests,
        s.rps.toFixed(0),
        ms(s.p50),
        ms(s.p99),
        ms(s.p999),
        ms(s.max),
        s.errors,
        pct(s.errorRate, 2),
        s.warmupErrors,
        pct(s.servedByBadShare),
        pct(s.sentToBadShare),
        pct(s.firstAttemptFailureRate, 2),
        s.retries,
        s.ejections,
        s.machineCores.toFixed(2),
        s.balancerCpuUs.toFixed(0),
      ];
      if (withRatio) cells.splice(5, 0, `${(s.p99 / healthyP99(policy)).toFixed(2)}x`);
      return cells;
    });
    return { scenario, headers: h, right: r, rows };
  });
  void right;

  // The targets.
  const targetLines: string[] = [];
  if (o.scenarios.includes('slow') && o.scenarios.includes('healthy') && o.policies.includes('p2c_ewma')) {
    const s = get('slow', 'p2c_ewma')!;
    const ratio = s.p99 / healthyP99('p2c_ewma');
    targetLines.push(
      `slow worker, p2c_ewma: p99 ${ms(s.p99)} ms = ${ratio.toFixed(2)}x its all-healthy p99 (${ms(healthyP99('p2c_ewma'))} ms); target <= ${TARGET_SLOW_P99_RATIO}x: ${ratio <= TARGET_SLOW_P99_RATIO ? 'MET' : 'MISSED'}`,
    );
    // Why: the balancer's latency estimates when the run ended, and how many calls the slow worker took.
    const views = runs.filter((r) => r.scenario === 'slow' && r.policy === 'p2c_ewma').map((r) => r.workersAtEnd);
    const healthyEwma = views.flatMap((v) => Object.entries(v).filter(([id]) => id !== bad).map(([, w]) => w.ewmaMs));
    const badEwma = views.map((v) => v[bad]?.ewmaMs).filter((x): x is number => x !== undefined);
    if (healthyEwma.length && badEwma.length) {
      targetLines.push(
        `  p2c_ewma sent ${pct(s.sentToBadShare)} of the calls to ${bad} (1% or more puts the slow worker into p99); its peak-EWMA estimates at the end: ${bad} ${badEwma.map((x) => x.toFixed(0)).join('/')} ms, the others ${Math.min(...healthyEwma).toFixed(0)}-${Math.max(...healthyEwma).toFixed(0)} ms (client p50 ${ms(s.p50)} ms)`,
      );
    }
  }
  if (o.scenarios.includes('slow') && o.policies.includes('round_robin')) {
    const s = get('slow', 'round_robin')!;
    const shows = s.p99 >= slowMs;
    targetLines.push(
      `slow worker, round_robin: p99 ${ms(s.p99)} ms ${shows ? '>=' : '<'} the slow worker's delay (${slowMs} ms), ${o.scenarios.includes('healthy') ? `${(s.p99 / healthyP99('round_robin')).toFixed(2)}x its all-healthy p99; ` : ''}${s.servedByBadShare >= 0.01 ? `it sends ${pct(s.servedByBadShare)} of requests to ${bad}` : ''}: the slow worker ${shows ? 'SHOWS' : 'does NOT show'}`,
    );
  }
  for (const scenario of FAILING.filter((f) => o.scenarios.includes(f))) {
    const over = o.policies.filter((p) => !(get(scenario, p)!.errorRate < TARGET_ERROR_RATE));
    const ejected = o.policies.filter((p) => get(scenario, p)!.ejections > 0);
    const worst = Math.max(...o.policies.map((p) => get(scenario, p)!.errorRate));
    const worstWhole = Math.max(...o.policies.map((p) => get(scenario, p)!.wholeRunErrorRate));
    const retries = o.policies.reduce((n, p) => n + get(scenario, p)!.retries, 0);
    targetLines.push(
      `${SCENARIO_TITLES[scenario]}: client error rate under ${pct(TARGET_ERROR_RATE, 0)} for ${o.policies.length - over.length} of ${o.policies.length} policies (worst ${pct(worst, 2)}; counting the warm-up too, worst ${pct(worstWhole, 2)})${over.length ? `; over it: ${over.join(', ')}` : ''}: ${over.length === 0 ? 'MET' : 'MISSED'}`,
      `  ${bad} was ejected in ${ejected.length} of ${o.policies.length} policy runs${ejected.length ? ` (${ejected.map((p) => `${p}: ${get(scenario, p)!.ejectionReasons}`).join('; ')})` : ''}; ${retries} retries on another worker`,
    );
  }

  const errorLines: string[] = [];
  for (const scenario of o.scenarios) {
    for (const policy of o.policies) {
      const messages: Record<string, number> = {};
      for (const r of runs.filter((x) => x.scenario === scenario && x.policy === policy)) for (const [m, n] of Object.entries(r.errorMessages)) bump(messages, m, n);
      const top = Object.entries(messages)
        .sort((a, b) => b[1] - a[1])
        .slice(0, 2);
      if (top.length) errorLines.push(`${scenario}, ${policy}: ${top.map(([m, n]) => `${n} x "${m}"`).join('; ')}`);
    }
  }

  const run = runFrame('bench:lb', 'lb', o.argv, code, loadBefore, loadAfter);
  const failed = failedCallLines(errorLines, 'failed calls');
  const settings =
    `${o.workers} echo workers, base delay D = ${o.delayMs} ms; slow scenario: ${bad} at ${o.slowFactor} x D = ${slowMs} ms; failing scenarios: ${bad} at D failing ${pct(o.failRate, 0)} of its calls with UNAVAILABLE, the second with \`${SCENARIO_BALANCER_ARGS.failing_no_retry!.join(' ')}\`; ` +
    `closed loop, concurrency ${o.concurrency}, ${o.requests} measured requests per policy and scenario${o.rounds > 1 ? ` (${o.rounds} rounds of ${o.requests}, merged, policy order alternating)` : ''} after ${o.warmup} warm-up requests on the same balancer (not counted); ` +
    `each request carries an affinity key from ${o.keys} keys (the same sequence for every policy); balancer defaults${o.balancerArgs.length ? ` plus \`${o.balancerArgs.join(' ')}\`` : ''}; policies in the order ${o.policies.join(', ')}${o.rounds > 1 ? ' (reversed in every other round)' : ''}, each policy's scenarios back to back on their own balancers and workers; total run time ${totalS.toFixed(0)} s`;

  const legend = [
    `p50/p99/p99.9/max: latency of the calls that succeeded, nearest rank, measured by the client around the whole Route stream.`,
    `error rate: calls that failed for the client; warm-up errors: failed calls among the ${o.warmup} warm-up calls before the measured ones (not in the error rate). served by ${bad}: share of the calls ${bad} answered (TaskOutput.workerId). sent to ${bad}: calls that reached ${bad}, answered or failed there (failed ones from the balancer's retry log and the errors).`,
    `1st-attempt failures: calls whose first worker failed (the error rate there would be without the balancer's retry); retries: retries the balancer granted within its budget; ejections: outlier ejections in the run (warm-up included).`,
    ...(o.balancerArgs.some((a) => a.startsWith('--hedge'))
      ? [`With hedging, a hedged call's cancelled loser is seen only by the balancer, so "sent to" counts only answers and failures.`]
      : []),
    `machine cores busy: CPU time of every process on the machine over wall time (2 = both cores); balancer µs/req: the balancer process's CPU per measured call.`,
  ];

  const text = [
    ...textReportHead(`Routing policies under one bad worker of ${o.workers}: Route (Predict on echo) straight to the balancer`, run, settings),
    ...tables.flatMap((t) => ['', `${SCENARIO_TITLES[t.scenario]}:`, textTable(t.headers, t.rows, t.right)]),
    '',
    ...targetLines,
    ...failed.text,
  ].join('\n');

  const markdown = [
    ...markdownReportHead(
      'Load balancing: p99 under a slow or failing worker, per policy',
      run,
      'is a short run that leaves this file alone',
      'The machine is shared, so runs vary; all policies and scenarios are measured in the same run.',
    ),
    `- What: \`maas.internal.v1.BalancerService/Route\` with a Predict task on \`${MODEL}\`, called straight at the balancer (no gateway or scheduler: this measures the balancer's routing and forwarding, plus the worker), each policy on a fresh balancer process per scenario (fresh EWMA, ejections, retry budget, slow start); each scenario has its own ${o.workers} worker processes, started once, which join each new balancer.`,
    `- Settings: ${settings}.`,
    '',
    ...tables.flatMap((t) => [`**${SCENARIO_TITLES[t.scenario]}**${t.scenario === 'slow' ? ` (${bad} at ${slowMs} ms)` : FAILING.includes(t.scenario) ? ` (${bad} fails ${pct(o.failRate, 0)})` : ''}`, '', markdownTable(t.headers, t.rows, t.right), '']),
    ...legend.map((l) => `- ${l}`),
    '',
    'Targets:',
    '',
    ...targetLines.map((l) => (l.startsWith('  ') ? `  ${l.trim()}` : `- ${l.replace(/: MET$/, ': **met**').replace(/: MISSED$/, ': **missed**').replace(/: the slow worker SHOWS$/, ': the slow worker **shows**').replace(/: the slow worker does NOT show$/, ': the slow worker **does not show**')}`)),
    ...failed.markdown,
    '',
    '![p99 latency per policy, per scenario](lb-p99.svg)',
  ].join('\n');

  const chartScenarios = o.scenarios;
  const ewmaHealthy = healthyP99('p2c_ewma');
  const svg = renderBarChart({
    title: `p99 latency per routing policy: ${o.workers} echo workers, one slow (${o.slowFactor}x) or failing (${pct(o.failRate, 0)})`,
    subtitle: [
      `BalancerService/Route (Predict on echo), closed loop c=${o.concurrency}, ${o.requests * o.rounds} requests per bar, D=${o.delayMs} ms; ${new Date().toISOString().slice(0, 10)}, ${availableParallelism()} CPUs, Node ${process.version}`,
      `bench/lb.ts (npm run bench:lb); p99 of the calls that succeeded, measured by the client; table and settings in docs/BENCHMARKS.md`,
    ],
    yLabel: 'p99 latency, ms',
    unit: ' ms',
    panels: chartScenarios.map((scenario) => ({
      title: scenario === 'failing_no_retry' ? 'one failing worker, retries off' : SCENARIO_TITLES[scenario],
      bars: o.policies.map((policy) => ({ label: policy, value: get(scenario, policy)!.p99 })),
      line: scenario === 'slow' && Number.isFinite(ewmaHealthy) ? { value: TARGET_SLOW_P99_RATIO * ewmaHealthy, label: `p2c_ewma's target: 1.5 x its healthy p99 = ${ms(TARGET_SLOW_P99_RATIO * ewmaHealthy)} ms` } : undefined,
    })),
  });
  return { text, markdown, svg };
}

/** The hand-written part of the section (from ANALYSIS_MARKER on), kept across runs. */
function keptAnalysis(path: string): string {
  if (!existsSync(path)) return ANALYSIS_MARKER;
  const current = readFileSync(path, 'utf8');
  const from = current.indexOf(`<!-- bench:${SECTION_ID}:start -->`);
  const to = current.indexOf(`<!-- bench:${SECTION_ID}:end -->`, from);
  if (from < 0 || to < 0) return ANALYSIS_MARKER;
  const section = current.slice(from, to);
  const at = section.indexOf(ANALYSIS_MARKER);
  return at < 0 ? ANALYSIS_MARKER : section.slice(at).trimEnd();
}

exitWhenDone('bench:lb', main());
