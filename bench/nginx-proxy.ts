/**
 * nginx with `grpc_pass` in front of a worker: the proxy a user would put there instead of the
 * mesh, as a row of `npm run bench`. The bench starts the system's nginx itself, with a config and
 * every path nginx writes (pid, temp files) in a fresh temporary folder, logs on stderr, and stops
 * it at the end; without an `nginx` binary the row is skipped.
 */
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import { accessSync, chmodSync, constants, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePorts } from './local-mesh';

/**
 * nginx worker processes: 1. Each hop of the mesh is one single-threaded Node process, so one
 * nginx worker is the like-for-like relay; on this 2-core machine a second worker would only take
 * cores from the bench client and the worker it measures.
 */
export const NGINX_WORKER_PROCESSES = 1;

/** A running nginx. */
export interface NginxProxy {
  /** host:port of its HTTP/2 (h2c) listener. */
  readonly address: string;
  /** nginx's version, e.g. "1.22.1". */
  readonly version: string;
  /** The master's pid. */
  readonly pid: number;
  /** Pids of its worker processes (the ones that relay; the master only supervises). */
  workerPids(): number[];
  /** Stops nginx (SIGQUIT, then SIGKILL to its process group after `graceMs`) and removes its folder. */
  stop(graceMs?: number): Promise<void>;
}

/** Options of {@link startNginxProxy}. */
export interface NginxProxyOptions {
  /** The nginx binary ({@link findNginx}). */
  binary: string;
  /** host:port of the gRPC server to pass calls to (plaintext). */
  upstream: string;
  startTimeoutMs: number;
  signal: AbortSignal;
  /** nginx's own log lines. */
  log(line: string): void;
  /** Called if nginx exits before stop(). */
  onUnexpectedExit(message: string): void;
}

/** The nginx binary on PATH (or in /usr/sbin, where Debian puts it), or undefined. */
export function findNginx(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const dirs = [...(env.PATH ?? '').split(delimiter).filter(Boolean), '/usr/sbin', '/usr/local/sbin', '/usr/local/nginx/sbin'];
  for (const dir of dirs) {
    const candidate = join(dir, 'nginx');
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** nginx's version from `nginx -v` (which prints to stderr), e.g. "1.22.1". */
export function nginxVersion(binary: string): string {
  const out = spawnSync(binary, ['-v'], { encoding: 'utf8', timeout: 10_000 });
  const m = /nginx\/(\d+\.\d+\.\d+)/.exec(`${out.stderr}${out.stdout}`);
  if (!m) throw new Error(`${binary} -v did not print a version: ${`${out.stderr}${out.stdout}`.trim().slice(0, 120)}`);
  return m[1];
}

/** True when `version` is at least `major.minor.patch`. */
function atLeast(version: string, wanted: [number, number, number]): boolean {
  const v = version.split('.').map(Number);
  for (let i = 0; i < 3; i++) if (v[i] !== wanted[i]) return v[i] > wanted[i];
  return true;
}

/** The config: one h2c listener on 127.0.0.1:`port`, every call passed to `upstream` over kept-alive connections. */
export function nginxConfig(dir: string, port: number, upstream: string, version: string): string {
  // 1.25.1 replaced `listen ... http2` with the `http2` directive (the old form still works, with a warning).
  const modernHttp2 = atLeast(version, [1, 25, 1]);
  return `# written by bench/nginx-proxy.ts for one bench run
daemon off;
master_process on;
worker_processes ${NGINX_WORKER_PROCESSES};
pid ${dir}/nginx.pid;
error_log stderr warn;

events {
  worker_connections 4096;
}

http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;

  upstream worker {
    server ${upstream};
    # nginx opens one upstream connection per call in flight; keep them, as a tuned proxy would.
    keepalive 256;
    keepalive_requests 1000000;
  }

  server {
    listen 127.0.0.1:${port}${modernHttp2 ? '' : ' http2'};
${modernHttp2 ? '    http2 on;\n' : ''}    # Without these nginx closes a client connection after 1000 calls (GOAWAY) and limits bodies to 1 MB.
    keepalive_requests 1000000;
    client_max_body_size 0;
    location / {
      grpc_pass grpc://worker;
    }
  }
}
`;
}

/** Starts nginx in front of `upstream` and resolves once its port accepts connections. */
export async function startNginxProxy(o: NginxProxyOptions): Promise<NginxProxy> {
  const version = nginxVersion(o.binary);
  const [port] = await freePorts(1);
  const dir = mkdtempSync(join(tmpdir(), 'maas-bench-nginx-'));
  // Run as root, nginx's workers switch to an unprivileged user, which must reach the temp paths.
  chmodSync(dir, 0o755);
  const conf = join(dir, 'nginx.conf');
  writeFileSync(conf, nginxConfig(dir, port, o.upstream, version));
  // -e: the error log before the config is read (else nginx opens its compiled-in path first).
  const child: ChildProcess = spawn(o.binary, ['-p', `${dir}/`, '-c', conf, '-e', 'stderr'], {
    // Own process group, so that a SIGKILL also reaches the workers.
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const pid = child.pid!;
  let stopping = false;
  // Until it listens, an exit is reported by the start itself.
  let started = false;
  const killGroup = () => {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // already gone
    }
  };
  // If the bench dies without stopping it, nginx must not outlive it.
  process.once('exit', killGroup);
  for (const stream of [child.stdout!, child.stderr!]) {
    let rest = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      const lines = (rest + chunk).split('\n');
      rest = lines.pop()!;
      for (const line of lines) if (line.trim()) o.log(`[nginx] ${line}`);
    });
  }
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.once('exit', (code, sig) => {
    if (started && !stopping) o.onUnexpectedExit(`nginx exited unexpectedly (${sig ?? `code ${code}`})`);
  });

  let stopped: Promise<void> | undefined;
  const stop = (graceMs = 5000): Promise<void> => {
    stopping = true;
    stopped ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        // SIGQUIT: graceful shutdown (finish open requests, then exit).
        child.kill('SIGQUIT');
        const timer = setTimeout(killGroup, graceMs);
        await exited;
        clearTimeout(timer);
      }
      // A worker still draining after the master left would hold the port: end the group.
      killGroup();
      process.removeListener('exit', killGroup);
      rmSync(dir, { recursive: true, force: true });
    })();
    return stopped;
  };

  try {
    const deadline = Date.now() + o.startTimeoutMs;
    while (!(await accepts(port))) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`nginx exited at start (${child.signalCode ?? `code ${child.exitCode}`}); its log is above`);
      if (o.signal.aborted) throw o.signal.reason;
      if (Date.now() > deadline) throw new Error(`nginx did not listen on 127.0.0.1:${port} within ${o.startTimeoutMs} ms`);
      await sleep(20);
    }
  } catch (err) {
    await stop(1000);
    throw err;
  }
  started = true;
  return {
    address: `127.0.0.1:${port}`,
    version,
    pid,
    workerPids: () => childPids(pid),
    stop,
  };
}

/** Whether something accepts TCP connections on 127.0.0.1:`port`. */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Children of `pid`, from Linux /proc (empty elsewhere). */
function childPids(pid: number): number[] {
  try {
    return readdirSync('/proc')
      .filter((name) => /^\d+$/.test(name))
      .filter((name) => {
        try {
          const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
          // The field after the state, which follows the command name in parentheses, is the parent's pid.
          return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid;
        } catch {
          return false;
        }
      })
      .map(Number);
  } catch {
    return [];
  }
}
