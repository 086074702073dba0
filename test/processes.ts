/**
 * Test support for real service processes: start a service's entry point (`dist/.../main.js`) as a
 * child process with its own flags, wait until it reports SERVING through gRPC health, kill it
 * with SIGKILL, and start it again with the same flags (same port, same data directory).
 *
 * Every process a {@link ProcessGroup} starts is killed by `killAll()`, and also when this process
 * exits (a last resort if a test run dies); each child gets MAAS_PARENT_PID, so a service whose
 * test process disappeared without that hook stops by itself within a second.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, readdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { resolve } from 'node:path';
import { forEachLine } from '../common/lines';
import { PeerExpectation } from '../common/mesh-identity';
import { MeshTls } from '../common/tls';
import { waitForServing } from '../gateway/cli/up';

/** The compiled tree (this file runs from dist/test). */
export const DIST = resolve(__dirname, '..');
/** The repository root. */
export const REPO_ROOT = resolve(DIST, '..');

/** Lines of output kept per process, for failure messages. */
const TAIL_LINES = 200;

/** One service to run as a process. */
export interface ServiceSpec {
  /** A short name for messages, e.g. "scheduler" or "worker w1". */
  name: string;
  /** Entry point, relative to dist/, e.g. "services/scheduler/main.js". */
  entry: string;
  /** Command-line flags. */
  args: string[];
  /** host:port the service serves gRPC on (for the health check). */
  address: string;
  /** Extra environment variables. */
  env?: NodeJS.ProcessEnv;
  /** For a service with TLS on: the client certificate health is asked with, and who must answer. */
  tls?: { client: MeshTls; expected: PeerExpectation };
}

/** The environment of a service: this process's, minus every MAAS_* and OTEL_* setting. */
function cleanEnv(extra: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('MAAS_') && !k.startsWith('OTEL_')) env[k] = v;
  // Metrics on a free port each: the defaults (9401..) may be taken on a shared machine.
  const metrics = Object.fromEntries(['GATEWAY', 'SCHEDULER', 'BALANCER', 'AGGREGATOR', 'WORKER'].map((s) => [`MAAS_${s}_METRICS_PORT`, '0']));
  return { ...env, ...metrics, OTEL_TRACES_EXPORTER: 'none', MAAS_PARENT_PID: String(process.pid), ...extra };
}

/** A service process that can be killed and started again with the same flags. */
export class ServiceProcess {
  private child: ChildProcess | undefined;
  private exit: Promise<void> = Promise.resolve();
  private readonly tail: string[] = [];
  /** Times this service was started. */
  starts = 0;

  constructor(readonly spec: ServiceSpec) {}

  get address(): string {
    return this.spec.address;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** True while the process runs. */
  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** The last lines the process wrote (stdout and stderr), every run, oldest first. */
  output(): string {
    return this.tail.join('\n');
  }

  /** Lines of output that match `pattern`. */
  lines(pattern: RegExp): string[] {
    return this.tail.filter((l) => pattern.test(l));
  }

  /** Spawns the process and resolves once it reports SERVING; rejects (with its output) if it exits or times out first. */
  async start(timeoutMs = 60_000): Promise<void> {
    if (this.running) throw new Error(`${this.spec.name} is already running (pid ${this.pid})`);
    this.starts++;
    this.note(`--- start #${this.starts}: ${this.spec.entry} ${this.spec.args.join(' ')}`);
    const child = spawn(process.execPath, [resolve(DIST, this.spec.entry), ...this.spec.args], {
      cwd: REPO_ROOT,
      env: cleanEnv(this.spec.env ?? {}),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    this.capture(child.stdout);
    this.capture(child.stderr);
    this.exit = new Promise<void>((r) =>
      child.once('exit', (code, signal) => {
        this.note(`--- exited (${signal ?? `code ${code}`})`);
        r();
      }),
    );
    const abort = new AbortController();
    const exited = this.exit.then(() => {
      throw new Error(`${this.spec.name} exited before it reported SERVING`);
    });
    const spawnError = new Promise<never>((_, reject) => child.once('error', (err) => reject(new Error(`${this.spec.name} could not start: ${err.message}`))));
    try {
      await Promise.race([waitForServing(this.spec.address, Date.now() + timeoutMs, abort.signal, this.spec.tls), exited, spawnError]);
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- output of ${this.spec.name} ---\n${this.output()}`);
    } finally {
      abort.abort();
      exited.catch(() => undefined);
      spawnError.catch(() => undefined);
    }
  }

  /** Sends SIGKILL if the process runs, without waiting (for exit hooks). */
  killNow(): void {
    if (this.running) this.child!.kill('SIGKILL');
  }

  /** kill -9; resolves once the process has exited. */
  async kill9(): Promise<void> {
    if (!this.child) return;
    if (this.running) {
      this.note('--- SIGKILL');
      this.child.kill('SIGKILL');
    }
    await this.exit;
  }

  private capture(stream: NodeJS.ReadableStream | null): void {
    forEachLine(stream, (line) => this.note(line));
  }

  private note(line: string): void {
    this.tail.push(line);
    if (this.tail.length > TAIL_LINES) this.tail.shift();
  }
}

/** Service processes started together and killed together. */
export class ProcessGroup {
  readonly all: ServiceProcess[] = [];
  private readonly onExit = () => {
    for (const p of this.all) p.killNow();
  };

  constructor() {
    process.on('exit', this.onExit);
  }

  /** Adds a service (not started yet). */
  add(spec: ServiceSpec): ServiceProcess {
    const p = new ServiceProcess(spec);
    this.all.push(p);
    return p;
  }

  /** Every service's recent output, for a failure message. */
  output(): string {
    return this.all.map((p) => `===== ${p.spec.name} (pid ${p.pid ?? '-'}, ${p.running ? 'running' : 'not running'}) =====\n${p.output()}`).join('\n');
  }

  /** kill -9 on every process still running; resolves when all have exited. */
  async killAll(): Promise<void> {
    await Promise.all(this.all.map((p) => p.kill9()));
  }

  /** Kills everything and forgets the exit hook. */
  async dispose(): Promise<void> {
    try {
      await this.killAll();
    } finally {
      process.off('exit', this.onExit);
    }
  }
}

/**
 * Ports a test hands to a process to bind later: below Linux's ephemeral range (32768-60999), from
 * which every outgoing connection takes its local port. A port the kernel picks for us (listen on
 * 0) is in that range, and under load (a fuzz run's thousands of connections) another connection
 * took one between our release and the process's bind: EADDRINUSE.
 */
const FIXED_PORTS = { low: 20000, high: 32767 } as const;

/** A free TCP port on 127.0.0.1 (bound and released), outside the ephemeral range. */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = FIXED_PORTS.low + Math.floor(Math.random() * (FIXED_PORTS.high - FIXED_PORTS.low + 1));
    if (await isFree(port)) return port;
  }
  throw new Error(`found no free port in ${FIXED_PORTS.low}-${FIXED_PORTS.high}`);
}

/** True when `port` can be bound on 127.0.0.1 right now. */
async function isFree(port: number): Promise<boolean> {
  const server = createServer();
  return new Promise<boolean>((resolvePromise) => {
    server.once('error', () => resolvePromise(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolvePromise(true)));
  });
}

/** A port N such that N..N+count-1 are all free on 127.0.0.1. */
export async function freePortRun(count: number): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = FIXED_PORTS.low + Math.floor(Math.random() * (FIXED_PORTS.high - FIXED_PORTS.low + 1 - count));
    let ok = true;
    for (let i = 0; i < count && ok; i++) ok = await isFree(base + i);
    if (ok) return base;
  }
  throw new Error(`found no run of ${count} free ports in ${FIXED_PORTS.low}-${FIXED_PORTS.high}`);
}

/** Pids of the processes whose parent is `ppid` (from /proc). */
export function childPids(ppid: number): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // Fields after the command name, which is in parentheses and may contain spaces.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === ppid) pids.push(Number(entry));
    } catch {
      // the process ended while we looked
    }
  }
  return pids;
}

/** The command line of `pid`, or undefined when no such process exists. */
export function cmdlineOf(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
  } catch {
    return undefined;
  }
}

/** Processes (pid and command line) that run one of our mesh's entry points on one of `ports`. */
export function meshProcessesOn(ports: number[]): Array<{ pid: number; cmdline: string }> {
  const found: Array<{ pid: number; cmdline: string }> = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = cmdlineOf(Number(entry));
    if (!cmdline || !cmdline.includes(DIST)) continue;
    if (ports.some((p) => cmdline.includes(`--port ${p}`))) found.push({ pid: Number(entry), cmdline });
  }
  return found;
}

/** `maas up` run as a child process by an end-to-end test, its output gathered. */
export interface MaasUp {
  readonly child: ChildProcess;
  /** Everything it printed so far, stdout and stderr together. */
  readonly output: string;
  /** Resolves with its exit code and signal. */
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves once it prints that the mesh is up; rejects, with its output, if it exits first or after `timeoutMs`. */
  ready(timeoutMs: number): Promise<void>;
}

/** Starts `node dist/gateway/cli/maas.js up ...args` in the repository with exactly `env`. */
export function spawnMaasUp(args: string[], env: NodeJS.ProcessEnv): MaasUp {
  // The HTTP API's default port (8080) may be taken on a shared machine: off unless a test asks.
  const http = args.some((a) => a.startsWith('--http-port')) ? [] : ['--http-port=-1'];
  // Likewise the metrics ports (9401..): a free port each unless a test asks.
  if (!args.some((a) => a.startsWith('--metrics-port'))) http.push('--metrics-port=0');
  const child = spawn(process.execPath, [resolve(DIST, 'gateway/cli/maas.js'), 'up', ...args, ...http], { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (output += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (output += d));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('exit', (code, signal) => r({ code, signal })));
  return {
    child,
    get output() {
      return output;
    },
    exit,
    ready(timeoutMs) {
      return new Promise<void>((resolveUp, reject) => {
        const finish = (err?: Error) => {
          clearTimeout(timer);
          child.stdout!.off('data', check);
          child.off('exit', onExit);
          child.off('error', onError);
          if (err) reject(new Error(`${err.message}\n--- output of maas up ---\n${output}`));
          else resolveUp();
        };
        const check = () => {
          if (output.includes('MaaS Mesh is up')) finish();
        };
        const onExit = (code: number | null, signal: string | null) => finish(new Error(`maas up exited (${signal ?? `code ${code}`}) before the mesh was up`));
        const onError = (err: Error) => finish(new Error(`maas up could not start: ${err.message}`));
        const timer = setTimeout(() => finish(new Error(`maas up was not up within ${timeoutMs} ms`)), timeoutMs);
        child.stdout!.on('data', check);
        child.once('exit', onExit);
        child.once('error', onError);
        check();
      });
    },
  };
}
