/**
 * What every benchmark's command line shares: progress lines, option parsing, interrupts, the code
 * measured, CPU accounting, and the frame of the printed and markdown reports (title, machine,
 * load, code, settings, failed calls, CPU per request).
 */
import { execFileSync } from 'node:child_process';
import { availableParallelism, cpus, release } from 'node:os';
import { machineBusyCpuMs, processCpuMs } from './cpu-time';

/** A progress line, on stderr (stdout carries the report). */
export function say(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** An integer option in [min, max]; `fallback` when it is missing or empty. Throws naming the option. */
export function intOption(name: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer from ${min} to ${max}, given "${raw}"`);
  return n;
}

/** A number option in [min, max]; `fallback` when it is missing or empty. Throws naming the option. */
export function numberOption(name: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < min || n > max) throw new Error(`--${name} must be a number from ${min} to ${max}, given "${raw}"`);
  return n;
}

/** A duration option given in seconds, >= min; in milliseconds. `fallback` (seconds) when it is missing or empty. */
export function secondsOption(name: string, raw: string | undefined, fallback: number, min: number): number {
  if (raw === undefined || raw === '') return fallback * 1000;
  const s = Number(raw);
  if (!Number.isFinite(s) || s < min) throw new Error(`--${name} must be a number >= ${min}, given "${raw}"`);
  return s * 1000;
}

/** A comma-separated list of integers in [min, max]; `fallback` (a list) when it is missing or empty. */
export function intListOption(name: string, raw: string | undefined, fallback: string, min: number, max: number): number[] {
  const list = (raw || fallback).split(',').map((c) => Number(c.trim()));
  if (list.some((c) => !Number.isInteger(c) || c < min || c > max)) throw new Error(`--${name} must be integers from ${min} to ${max}, given "${raw}"`);
  return list;
}

/** SIGINT/SIGTERM received so far. */
let interrupts = 0;

/**
 * From now until the returned function is called, SIGINT or SIGTERM aborts `abort` (saying that
 * `stopping` stops); a second one exits at once (the services stop themselves when this process is gone).
 */
export function abortOnInterrupt(abort: AbortController, stopping: string): () => void {
  const onSignal = () => {
    if (++interrupts > 1) process.exit(130);
    say(`\ninterrupted: stopping ${stopping}…`);
    abort.abort(new Error('interrupted'));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
}

/** Exits with what `main` returns; on an error prints it after `name` and exits 130 after an interrupt, else 1. */
export function exitWhenDone(name: string, main: Promise<number>, options: { stack?: boolean } = {}): void {
  main.then(
    (exitCode) => process.exit(exitCode),
    (err) => {
      process.stderr.write(`${name}: ${err instanceof Error ? (options.stack ? (err.stack ?? err.message) : err.message) : String(err)}\n`);
      process.exit(interrupts > 0 ? 130 : 1);
    },
  );
}

/** Monotonic time in microseconds: the clock of V8's CPU profiles. */
export function monotonicUs(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

/**
 * A reader of CPU time so far, in milliseconds, of each process in `pids` ('self' is this one) and
 * of the whole machine (`machine`); NaN where /proc cannot tell.
 */
export function cpuSampler<K extends string>(pids: Record<K, number | 'self'>): () => Record<K | 'machine', number> {
  return () =>
    ({
      ...Object.fromEntries(Object.entries<number | 'self'>(pids).map(([name, pid]) => [name, processCpuMs(pid) ?? NaN])),
      machine: machineBusyCpuMs() ?? NaN,
    }) as Record<K | 'machine', number>;
}

/** The most frequent error messages with their counts. */
export function describeErrors(messages: Map<string, number>): string {
  return [...messages.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 3)
    .map(([message, n]) => `${n} x "${message}"`)
    .join('; ');
}

/** What a run's report says about where and how it ran. */
export interface RunFrame {
  /** The command as run, e.g. `npm run bench:onnx -- --quick`. */
  command: string;
  /** The compiled script, e.g. `dist/bench/onnx.js`. */
  script: string;
  /** The code measured ({@link codeVersion}). */
  code: string;
  /** CPUs, model, Node and kernel. */
  machine: string;
  /** The 1-minute load average before and after the run. */
  load: string;
}

/** The frame of a run of `npm run <npmScript>` (`dist/bench/<file>.js`) with `argv`. */
export function runFrame(npmScript: string, file: string, argv: string[], code: string, loadBefore: number[], loadAfter: number[]): RunFrame {
  return {
    command: `npm run ${npmScript}${argv.length ? ` -- ${argv.join(' ')}` : ''}`,
    script: `dist/bench/${file}.js`,
    code,
    machine: `${availableParallelism()} CPUs (nproc), ${cpus()[0]?.model ?? 'unknown CPU'}, Node ${process.version}, Linux ${release()}`,
    load: `load average (1 min) before ${loadBefore[0].toFixed(2)}, after ${loadAfter[0].toFixed(2)}`,
  };
}

/** The first lines of a printed report: the title, machine and load, code, settings. */
export function textReportHead(title: string, run: RunFrame, settings: string): string[] {
  return [title, `machine: ${run.machine}; ${run.load}`, `code: ${run.code}`, `settings: ${settings}`];
}

/**
 * The first lines of a markdown section: heading, command (`quick` says what `--quick` is), date,
 * code, machine and load followed by `machineNote`.
 */
export function markdownReportHead(heading: string, run: RunFrame, quick: string, machineNote: string): string[] {
  return [
    `## ${heading}`,
    '',
    `- Command: \`${run.command}\` (build, then \`node ${run.script}\`; \`--help\` lists the options, \`--quick\` ${quick})`,
    `- Date: ${new Date().toISOString()}`,
    `- Code: ${run.code}`,
    `- Machine: ${run.machine}; ${run.load}. ${machineNote}`,
  ];
}

/** Result lines in markdown: a list item each (an indented line stays a continuation), MET and MISSED in bold. */
export function markdownVerdicts(lines: string[]): string[] {
  return lines.map((l) => (l.startsWith('  ') ? `  ${l.trim()}` : `- ${l.replace(': MET', ': **met**').replace(': MISSED', ': **missed**')}`));
}

/** The failed-calls block of a report (nothing when no call failed), printed and in markdown. */
export function failedCallLines(errorLines: string[], heading = 'failed calls (not counted in the latencies)'): { text: string[]; markdown: string[] } {
  if (errorLines.length === 0) return { text: [], markdown: [] };
  return {
    text: ['', `${heading}:`, ...errorLines.map((l) => `  ${l}`)],
    markdown: ['', `${heading[0].toUpperCase()}${heading.slice(1)}:`, '', ...errorLines.map((l) => `- ${l}`)],
  };
}

/** One row of the CPU-per-request table: what was measured, its requests, wall time and CPU per account. */
export interface CpuRow<K extends string> {
  label: string;
  concurrency: number;
  requests: number;
  wallMs: number;
  cpuMs: Record<K | 'machine', number>;
}

/**
 * The CPU-per-request table (Linux /proc, 10 ms resolution): µs per request of each of `owners`
 * and of them all, and cores busy (CPU time over wall time) of them all and of the whole machine.
 */
export function cpuPerRequestTable<K extends string>(owners: readonly K[], cells: CpuRow<K>[]): { headers: string[]; right: boolean[]; rows: (string | number)[][] } {
  const headers = ['mode', 'concurrency', ...owners.map((p) => `${p} µs/req`), 'total µs/req', 'cores busy: ours', 'machine'];
  const rows = cells.map(({ label, concurrency, requests, wallMs, cpuMs }) => {
    const total = owners.reduce((t, p) => t + cpuMs[p], 0);
    const perReq = (cpu: number) => (requests > 0 && Number.isFinite(cpu) ? ((cpu * 1000) / requests).toFixed(0) : 'n/a');
    const cores = (cpu: number) => (Number.isFinite(cpu) ? (cpu / wallMs).toFixed(2) : 'n/a');
    return [label, concurrency, ...owners.map((p) => perReq(cpuMs[p])), perReq(total), cores(total), cores(cpuMs.machine)];
  });
  return { headers, right: headers.map((_, i) => i > 0), rows };
}

/**
 * The code measured: the commit of `repoDir`, and which tracked files differ from it (others may
 * be editing). The results under docs/ are not code, and the benchmarks rewrite them.
 */
export function codeVersion(repoDir: string): string {
  const git = (...args: string[]) => execFileSync('git', args, { cwd: repoDir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trimEnd();
  try {
    const commit = git('rev-parse', '--short', 'HEAD');
    const changed = git('status', '--porcelain', '--untracked-files=no')
      .split('\n')
      .filter(Boolean)
      .map((line) => line.slice(3))
      .filter((path) => path !== 'docs/BENCHMARKS.md' && path !== 'docs/lb-p99.svg' && path !== 'docs/bench-onnx.svg' && path !== 'docs/bench-llm.svg');
    return changed.length === 0 ? `commit ${commit}` : `commit ${commit} plus uncommitted changes in ${changed.join(', ')}`;
  } catch {
    return 'unknown (not a git checkout)';
  }
}
