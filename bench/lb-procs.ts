/**
 * Service processes for the load-balancing benchmark (`bench/lb.ts`): one `node dist/...main.js`
 * child per balancer or worker, its log lines handed to the caller line by line, stopped with
 * SIGTERM (SIGKILL after a grace time). Kept apart from `bench/local-mesh.ts`, which starts a whole
 * mesh at once; this benchmark restarts the balancer alone, once per policy, under the same workers.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createMeshClient, openChannel } from '../common/client';
import { waitForServing } from '../gateway/cli/up';
import { BalancerServiceDefinition } from '../generated/maas/internal/v1/balancer';

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
  const child: ChildProcess = spawn(process.execPath, [resolve(spec.distDir, spec.entry), '--host', '127.0.0.1', '--port', String(spec.port), ...spec.args], {
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
    let buffered = '';
    stream?.setEncoding('utf8');
    stream?.on('data', (data: string) => {
      buffered += data;
      const lines = buffered.split('\n');
      buffered = lines.pop() ?? '';
      for (const line of lines) {
        recent.push(line);
        if (recent.length > 20) recent.shift();
        spec.onLine(line);
      }
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

/** Free TCP ports on 127.0.0.1, all distinct (held open together, then released). */
export async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<ReturnType<typeof createServer>>((ok, fail) => {
          const s = createServer();
          s.once('error', fail);
          s.listen(0, '127.0.0.1', () => ok(s));
        }),
    ),
  );
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

/** Resolves when the process at `address` reports SERVING on grpc.health.v1. */
export { waitForServing };

/** Polls the balancer's ListModels until exactly `count` ready workers serve `model`. */
export async function waitForWorkers(balancer: string, model: string, count: number, deadline: number, signal: AbortSignal): Promise<void> {
  const channel = openChannel(balancer);
  const client = createMeshClient(BalancerServiceDefinition, channel);
  let last = 'no answer yet';
  try {
    while (Date.now() < deadline) {
      signal.throwIfAborted();
      try {
        const listed = (await client.listModels({}, { signal, deadline: Math.min(deadline, Date.now() + 5000) })).models;
        const ready = listed.find((m) => m.name === model)?.readyWorkers ?? 0;
        if (ready >= count) return;
        last = `${ready} ready`;
      } catch (err) {
        signal.throwIfAborted();
        last = (err as Error).message;
      }
      await sleep(50, undefined, { signal });
    }
    throw new Error(`the balancer at ${balancer} did not have ${count} ready workers for "${model}" in time (${last})`);
  } finally {
    channel.close();
  }
}
