/**
 * Service processes for the load-balancing benchmark (`bench/lb.ts`): one `node dist/...main.js`
 * child per balancer or worker, its log lines handed to the caller line by line, stopped with
 * SIGTERM (SIGKILL after a grace time). Kept apart from `bench/local-mesh.ts`, which starts a whole
 * mesh at once; this benchmark restarts the balancer alone, once per policy, under the same workers.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { forEachLine } from '../common/lines';
import { waitForServing } from '../gateway/cli/up';
import { freePorts, waitForWorkers } from './local-mesh';

/** One running service process. */
export interface ServiceProcess {
  readonly name: string;
  /** host:port it listens on. */
  readonly address: string;
  readonly pid: number;
  /** The last lines it wrote (stdout and stderr), for an error message. */
  readonly recent: readonly string[];
  /** Stops it: SIGTERM, then SIGKILL after `graceMs`. Safe to call twice. */
  stop(graceMs?: number): Promise<void>;
}

/** How to start one service. */
export interface ServiceSpec {
  /** Name in logs and errors, e.g. `balancer` or `w3`. */
  name: string;
  /** Entry point under dist/, e.g. `services/balancer/main.js`. */
  entry: string;
  /** Its port on 127.0.0.1 (passed as --port; the caller picks it). */
  port: number;
  /** Command-line arguments besides --host and --port. */
  args: string[];
  /** Environment besides the bench's own. */
  env: Record<string, string>;
  distDir: string;
  repoDir: string;
  /** Receives every line it writes. */
  onLine: (line: string) => void;
  /** Called when it exits before `stop`. */
  onUnexpectedExit: (message: string) => void;
}

/** Starts a service process (does not wait for it to serve: see {@link waitForServing}). */
export function startService(spec: ServiceSpec): ServiceProcess {
  const address = `127.0.0.1:${spec.port}`;
  const child: ChildProcess = spawn(process.execPath, [resolve(spec.distDir, spec.entry), '--host', '127.0.0.1', '--port', String(spec.port), '--metrics-port=0', ...spec.args], {
    cwd: spec.repoDir,
    env: { ...process.env, ...spec.env },
    // Own process group: a terminal's Ctrl-C reaches only the bench, which stops its children itself.
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const recent: string[] = [];
  let stopping = false;
  let stopped: Promise<void> | undefined;
  for (const stream of [child.stdout, child.stderr]) {
    forEachLine(stream, (line) => {
      recent.push(line);
      if (recent.length > 20) recent.shift();
      spec.onLine(line);
    });
  }
  // 'close' comes after 'exit' and after its stdout and stderr have ended, so every line has been handed over.
  const exited = new Promise<void>((r) => child.once('close', () => r()));
  child.once('exit', (code, signal) => {
    if (stopping) return;
    spec.onUnexpectedExit(`${spec.name} exited unexpectedly (${signal ?? `code ${code}`})${recent.length ? `:\n  ${recent.slice(-5).join('\n  ')}` : ''}`);
  });
  return {
    name: spec.name,
    address,
    pid: child.pid ?? -1,
    recent,
    stop(graceMs = 5000) {
      stopping = true;
      stopped ??= (async () => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
        await exited;
        clearTimeout(timer);
      })();
      return stopped;
    },
  };
}

/** Shared with the other benchmarks' local mesh. */
export { freePorts, waitForServing, waitForWorkers };
