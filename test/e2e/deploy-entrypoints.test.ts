/**
 * The image's entry points run as compose runs them, without Docker: each service of
 * deploy/compose.yaml started with its own command line and the environment the image (the
 * Dockerfile's ENV) and compose give it, on a read-only view of the application directory (a
 * read-only bind mount in a user and mount namespace of its own, `unshare -rm`, where the kernel
 * allows it), with only its data directories writable. Start order follows compose's depends_on,
 * each service waiting until those before it pass the image's HEALTHCHECK command; then a call
 * goes through the gateway over TLS, traces reach the OTLP endpoint, and SIGTERM stops each cleanly.
 *
 * What differs from the containers, and only because one machine stands in for many: the paths
 * the image mounts (/etc/maas/tls, /data, /app/.cache/models) are folders of a temporary
 * directory, the compose service names are loopback ports (each service gets its own port, where
 * containers would each have their own address), and Jaeger is a small OTLP/HTTP receiver here.
 */
import { serviceAllocator } from '../../common/process-env';
import { expect } from 'chai';
import { ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { Server, createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createMeshClient, openTlsChannel } from '../../common/client';
import { forEachLine } from '../../common/lines';
import { InferenceServiceDefinition } from '../../generated/maas/v1/inference';
import { createBuiltinRuntime } from '../../services/worker/models/builtin';
import { DEPLOY_DIR, loadCompose } from '../deploy-files';
import { DIST, REPO_ROOT, freePort } from '../processes';
import { collect, until } from '../support';

const MESH_SERVICES = ['balancer', 'aggregator', 'scheduler', 'gateway', 'worker-1', 'worker-2'];
/** Ports the compose file gives each service (in its own container). */
const COMPOSE_PORTS: Record<string, number> = { gateway: 50051, scheduler: 50052, balancer: 50053, aggregator: 50054 };

/** The ENV of the Dockerfile's last stage (the runtime image). */
function imageEnv(): Record<string, string> {
  const dockerfile = readFileSync(join(DEPLOY_DIR, 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  const stages = dockerfile.split(/^FROM /m);
  const env: Record<string, string> = {};
  for (const line of stages[stages.length - 1].split('\n')) {
    const m = /^ENV\s+(.*)$/.exec(line);
    if (m) for (const pair of m[1].trim().split(/\s+/)) env[pair.slice(0, pair.indexOf('='))] = pair.slice(pair.indexOf('=') + 1);
  }
  return env;
}

/** True when this kernel lets an unprivileged user mount a read-only view in namespaces of its own. */
function canUnshare(): boolean {
  return spawnSync('unshare', ['-rm', 'sh', '-c', 'mount --bind / /mnt 2>/dev/null || mount --bind "$0" "$0"', REPO_ROOT], { stdio: 'ignore' }).status === 0;
}

/** Files under `dir` (but .git) modified after `since` (ms). */
function modifiedSince(dir: string, since: number, out: string[] = []): string[] {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.name === '.git') continue;
    const path = join(dir, entry.name);
    if (entry.isSymbolicLink()) continue;
    if (statSync(path).mtimeMs > since) out.push(path);
    if (entry.isDirectory()) modifiedSince(path, since, out);
  }
  return out;
}

interface Running {
  name: string;
  child: ChildProcess;
  output: string[];
  exited: Promise<number | null>;
}

describe('deploy: the image entry points, run as compose runs them', function () {
  this.timeout(180_000);
  const readOnly = canUnshare();
  let tmp: string;
  let otlp: Server;
  let spans = 0;
  const running: Running[] = [];
  let started = 0;
  const env: Record<string, Record<string, string>> = {};
  const args: Record<string, string[]> = {};
  const ports: Record<string, number> = {};

  /** Runs the image's HEALTHCHECK command for a process; resolves with its exit status and output. */
  const healthcheck = (pid: number) => {
    const r = spawnSync(process.execPath, [join(DIST, 'common/container-healthcheck.js')], { cwd: REPO_ROOT, env: { PATH: process.env.PATH, MAAS_HEALTHCHECK_PID: String(pid) }, encoding: 'utf8', timeout: 15_000 });
    return { status: r.status, output: `${r.stdout}${r.stderr}`.trim() };
  };

  before(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'maas-deploy-'));
    for (const d of ['tls', 'data/scheduler', 'data/aggregator', 'data/jobs/input', 'data/jobs/output', 'cache']) mkdirSync(join(tmp, d), { recursive: true });
    // The image trains its built-in models at build time into /app/.cache/models (Dockerfile).
    const repoCache = join(REPO_ROOT, '.cache/models');
    if (existsSync(repoCache) && readdirSync(repoCache).length > 0) cpSync(repoCache, join(tmp, 'cache'), { recursive: true });
    else await createBuiltinRuntime({ cacheDir: join(tmp, 'cache'), echoDelayMs: 0 }).load();

    otlp = createServer((req, res) => {
      if (req.url === '/v1/traces') spans++;
      req.resume();
      req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end('{}'));
    });
    otlp.listen(0, '127.0.0.1');
    await once(otlp, 'listening');
    const otlpPort = (otlp.address() as { port: number }).port;

    for (const name of MESH_SERVICES) ports[name] = await freePort();
    const compose = loadCompose();
    const hostPort = new Map<string, string>([...MESH_SERVICES.map((n) => [`${n}:${COMPOSE_PORTS[n] ?? 50054}`, `127.0.0.1:${ports[n]}`] as [string, string]), ['jaeger:4318', `127.0.0.1:${otlpPort}`]]);
    const rewrite = (value: string) => {
      // The image links jemalloc to /usr/local/lib; here it is Debian's path, when installed.
      if (value === '/usr/local/lib/libjemalloc.so.2') return serviceAllocator({}) ?? '';
      let v = value.replace(/\/etc\/maas\/tls/g, join(tmp, 'tls')).replace(/^\/data\//, `${join(tmp, 'data')}/`).replace(/^\/app\/\.cache\/models$/, join(tmp, 'cache'));
      for (const [from, to] of hostPort) v = v.replace(new RegExp(`(^|//)${from.replace('.', '\\.')}($|/)`), `$1${to}$2`);
      return v;
    };

    // The one-shot `certs` service, as compose runs it before the mesh.
    const certs = compose.services.certs.command as string[];
    expect(certs.slice(0, 2)).to.deep.equal(['node', 'dist/gateway/cli/maas.js']);
    execFileSync(process.execPath, [join(REPO_ROOT, certs[1]), ...certs.slice(2).map(rewrite)], { cwd: tmp, stdio: 'pipe' });

    const base = imageEnv();
    for (const name of MESH_SERVICES) {
      const service = compose.services[name];
      const command = service.command as string[];
      expect(command[0], `${name} runs node`).to.equal('node');
      const merged: Record<string, string> = { ...base, ...service.environment };
      const e: Record<string, string> = {};
      for (const [k, v] of Object.entries(merged)) e[k] = rewrite(String(v));
      // Where a container has an address of its own, a service here has a port of its own.
      const prefix = name.startsWith('worker') ? 'MAAS_WORKER' : `MAAS_${name.toUpperCase()}`;
      e[`${prefix}_PORT`] = String(ports[name]);
      e[`${prefix}_METRICS_PORT`] = String(await freePort());
      if (name === 'gateway') e.MAAS_GATEWAY_HTTP_PORT = String(await freePort());
      env[name] = e;
      args[name] = command.slice(1).map((a, i, all) => (all[i - 1] === '--port' ? String(ports[name]) : rewrite(a)));
    }
    started = Date.now() - 1000;
  });

  after(async () => {
    for (const r of running) if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill('SIGKILL');
    await Promise.all(running.map((r) => r.exited));
    otlp?.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it(`starts every service in compose's order, each passing the image's HEALTHCHECK${readOnly ? ' on a read-only app directory' : ''}`, async () => {
    const compose = loadCompose();
    const order: string[] = [];
    const visit = (name: string) => {
      if (order.includes(name) || !MESH_SERVICES.includes(name)) return;
      for (const dep of Object.keys(compose.services[name].depends_on ?? {})) {
        if (MESH_SERVICES.includes(dep)) expect(compose.services[name].depends_on[dep].condition, `${name} after ${dep}`).to.equal('service_healthy');
        visit(dep);
      }
      order.push(name);
    };
    for (const name of MESH_SERVICES) visit(name);
    expect(order.indexOf('gateway')).to.be.above(order.indexOf('scheduler'));

    for (const name of order) {
      const [entry, ...rest] = args[name];
      // The image preloads jemalloc with its background thread. Preloaded into `unshare` too, that
      // thread makes it multithreaded, and the kernel refuses a user namespace to a
      // multithreaded process (EINVAL): the service gets it, `unshare` and `sh` do not.
      const { LD_PRELOAD: preload = '', ...serviceEnv } = env[name];
      const command = readOnly
        ? ['unshare', ['-rm', 'sh', '-c', 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && cd "$0" && exec env LD_PRELOAD="$SERVICE_LD_PRELOAD" "$@"', REPO_ROOT, process.execPath, entry, ...rest]]
        : [process.execPath, [entry, ...rest]];
      const childEnv = readOnly ? { ...serviceEnv, SERVICE_LD_PRELOAD: preload } : env[name];
      const child = spawn(command[0] as string, command[1] as string[], { cwd: REPO_ROOT, env: { PATH: process.env.PATH, ...childEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
      const r: Running = { name, child, output: [], exited: once(child, 'exit').then(([code]) => code as number | null) };
      forEachLine(child.stdout, (l) => r.output.push(l));
      forEachLine(child.stderr, (l) => r.output.push(l));
      running.push(r);
      let last = { status: null as number | null, output: '' };
      await until(
        () => {
          if (child.exitCode !== null) throw new Error(`${name} exited (${child.exitCode}):\n${r.output.join('\n')}`);
          last = healthcheck(child.pid!);
          return last.status === 0;
        },
        60_000,
        `${name} healthy`,
      ).catch((err: Error) => {
        throw new Error(`${err.message}; last healthcheck: ${last.output}\n--- ${name} ---\n${r.output.join('\n')}`);
      });
      expect(last.output).to.match(/SERVING/);
    }
  });

  it('answers through the gateway over TLS, and exports traces to the OTLP endpoint', async () => {
    const channel = openTlsChannel(`127.0.0.1:${ports.gateway}`, readFileSync(join(tmp, 'tls/ca.pem')));
    try {
      const inference = createMeshClient(InferenceServiceDefinition, channel);
      // Both workers serve the models; the balancer may pick either.
      const chunks = await collect(inference.generate({ model: 'echo', prompt: 'read only root', maxTokens: 0, stop: [], priority: 0, affinityKey: '', messages: [] }, { deadline: Date.now() + 20_000 }));
      expect(chunks.map((c) => c.text).join('').trim()).to.equal('read only root');
      const prediction = await inference.predict({ model: 'spam-nb', input: 'win money now', priority: 0 }, { deadline: Date.now() + 20_000 });
      expect(prediction.label).to.be.a('string').and.not.equal('');
    } finally {
      channel.close();
    }
    await until(() => spans > 0, 20_000, 'a trace export');
  });

  it('stops every service cleanly on SIGTERM, after which the HEALTHCHECK fails', async () => {
    for (const r of [...running].reverse()) {
      r.child.kill('SIGTERM');
      const code = await r.exited;
      expect(code, `${r.name} exit code\n${r.output.join('\n')}`).to.equal(0);
    }
    const gateway = running.find((r) => r.name === 'gateway')!;
    // The pid is gone: the check says so and fails.
    expect(healthcheck(gateway.child.pid!).status).to.equal(1);
  });

  it('wrote nothing into the application directory', () => {
    expect(modifiedSince(REPO_ROOT, started)).to.deep.equal([]);
  });
});
