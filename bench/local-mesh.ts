/**
 * The mesh as real processes for a benchmark: balancer, optionally an aggregator (for batch jobs),
 * one or more workers (the first on a known port, so it can also be called directly), scheduler
 * and gateway, each `node dist/...main.js` on a free 127.0.0.1 port. The scheduler (and the
 * aggregator) keep their SQLite stores in a fresh temporary folder, removed at stop. Waits for gRPC
 * health SERVING on each and for the gateway to list the wanted model; stops them all, edge first,
 * and reports a child that dies on its own. For fault benchmarks, one process can be signalled
 * (SIGSTOP, SIGCONT), killed, and started again with the same flags on the same port.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Metadata } from 'nice-grpc';
import { readFileSync } from 'node:fs';
import { MeshCertificates } from '../common/certs';
import { createMeshClient, openChannel, openMeshChannel, openTlsChannel } from '../common/client';
import { forEachLine } from '../common/lines';
import { PeerExpectation } from '../common/mesh-identity';
import { MeshTls } from '../common/tls';
import { operatorTls, waitForServing } from '../gateway/cli/up';
import { BalancerServiceDefinition } from '../generated/maas/internal/v1/balancer';
import { ModelServiceDefinition } from '../generated/maas/v1/models';
import { withServiceProcessEnv } from '../common/process-env';

/** Names of the processes every local mesh has, in start order. */
export const MESH_PROCESS_NAMES = ['balancer', 'worker', 'scheduler', 'gateway'] as const;
export type MeshProcessName = (typeof MESH_PROCESS_NAMES)[number];

/** One process of a started mesh. */
export interface MeshProcess {
  /** `balancer`, `aggregator`, `worker` (the first worker), `worker-2`, ..., `scheduler`, `gateway`. */
  name: string;
  /** host:port it listens on. */
  address: string;
  pid: number;
}

/** Options of {@link startLocalMesh}. */
export interface LocalMeshOptions {
  /** Root of the compiled tree (the folder holding services/ and gateway/). */
  distDir: string;
  /** Root of the repository (for the model cache). */
  repoDir: string;
  /** Port of the gateway's OpenAI-compatible HTTP API: 0 picks a free one; default -1, off (so meshes never collide on 8080). */
  httpPort?: number;
  /** Model the gateway must list before the mesh counts as ready. */
  model: string;
  /** How long the start may take (the worker trains its models on a first start). */
  startTimeoutMs: number;
  /** Extra node flags for every child, e.g. --cpu-prof; `{name}` is replaced by the process name. */
  nodeFlags?: string[];
  /** Aborts the start. */
  signal: AbortSignal;
  /** Receives the children's log lines. */
  log: (line: string) => void;
  /** Called once when a child exits while the mesh is not being stopped. */
  onUnexpectedExit: (message: string) => void;
  /** Workers to start (default 1); the first is named `worker`, the others `worker-2`, ... */
  workers?: number;
  /** Start an aggregator too, and point the scheduler and workers at it (needed by batch jobs). */
  aggregator?: boolean;
  /** Extra command-line arguments per process name (e.g. the scheduler's --max-batch-tasks). */
  extraArgs?: Partial<Record<string, string[]>>;
  /** Working directory of the children (default repoDir): relative paths a job names land there. */
  cwd?: string;
  /** Extra environment variables per process name (e.g. an OTLP endpoint for the worker alone). */
  env?: Partial<Record<string, Record<string, string>>>;
  /** Log level of the children (default warn). */
  logLevel?: string;
  /**
   * Mutual TLS with these certificates (createMeshCertificates, with a certificate for each worker
   * id: bench-worker, bench-worker-2, ...), as `maas up --tls` runs it; plaintext when unset.
   */
  certs?: MeshCertificates;
  /** An API key the gateway accepts, when it is started with keys (for the readiness check). */
  apiKey?: string;
}

/** A started mesh. */
export interface LocalMesh {
  /** host:port of each process. */
  readonly addresses: Record<MeshProcessName, string>;
  /** Process id of each process. */
  readonly pids: Record<MeshProcessName, number>;
  /** Every process, in start order (with the aggregator and the extra workers, when started). */
  readonly processes: readonly MeshProcess[];
  /** Folder of the scheduler's and the aggregator's stores (removed by stop). */
  readonly dataDir: string;
  /** Stops every process, gateway first; SIGKILL after `graceMs`. Safe to call twice. */
  stop(graceMs?: number): Promise<void>;
  /** Sends SIGSTOP or SIGCONT to the process `name` (a stopped process is continued before stop). */
  signal(name: string, signal: 'SIGSTOP' | 'SIGCONT'): void;
  /** Kills the process `name` with `signal` (default SIGKILL), not as a failure; resolves once it has exited. */
  kill(name: string, signal?: 'SIGKILL' | 'SIGTERM'): Promise<void>;
  /**
   * Starts the killed process `name` again, with the same flags on the same port, and resolves
   * with its new process id once it is SERVING ({@link pids} and {@link processes} follow it).
   */
  restart(name: string, timeoutMs?: number): Promise<number>;
}

/**
 * Free TCP ports on 127.0.0.1, all distinct, below Linux's ephemeral range (32768-60999): a port
 * the kernel picks for a listener comes from that range, and an outgoing connection (the fuzz makes
 * thousands) could take it between its release here and the service's bind.
 */
export async function freePorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  for (let attempt = 0; ports.size < count && attempt < 1000; attempt++) {
    const port = 20000 + Math.floor(Math.random() * (32767 - 20000 + 1));
    if (!ports.has(port) && (await bindable(port))) ports.add(port);
  }
  if (ports.size < count) throw new Error(`found only ${ports.size} of ${count} free ports in 20000-32767`);
  return [...ports];
}

/** True when `port` can be bound on 127.0.0.1 now. */
function bindable(port: number): Promise<boolean> {
  return new Promise((ok) => {
    const s = createServer();
    s.once('error', () => ok(false));
    s.listen(port, '127.0.0.1', () => s.close(() => ok(true)));
  });
}

/** Starts the mesh and resolves once every process is SERVING and the gateway lists the model. */
export async function startLocalMesh(o: LocalMeshOptions): Promise<LocalMesh> {
  const workers = o.workers ?? 1;
  if (!Number.isInteger(workers) || workers < 1) throw new RangeError(`workers must be an integer >= 1, given ${workers}`);
  const [balancerPort, workerPort, schedulerPort, gatewayPort, aggregatorPort, ...moreWorkerPorts] = await freePorts(4 + 1 + (workers - 1));
  const at = (port: number) => `127.0.0.1:${port}`;
  const addresses: Record<MeshProcessName, string> = {
    balancer: at(balancerPort),
    worker: at(workerPort),
    scheduler: at(schedulerPort),
    gateway: at(gatewayPort),
  };
  const aggregatorAddress = at(aggregatorPort);
  // A fresh folder for the stores: never the repository's .maas/ (which `maas up` may hold).
  const dataDir = mkdtempSync(join(tmpdir(), 'maas-bench-'));
  const host = ['--host', '127.0.0.1'];
  const toAggregator = o.aggregator ? ['--aggregator', aggregatorAddress] : [];
  // Job file roots in the same fresh folder, the same for the scheduler and every worker.
  const inputRoot = ['--input-root', join(dataDir, 'input')];
  const outputRoot = ['--output-root', join(dataDir, 'output')];
  const workerSpec = (name: string, port: number, id: string) => ({
    name,
    identity: { worker: id } as PeerExpectation,
    address: at(port),
    entry: 'services/worker/main.js',
    args: [...host, '--port', String(port), '--balancer', addresses.balancer, ...toAggregator, '--worker-id', id, ...inputRoot],
  });
  // In start order; stopped in the reverse order (edge first).
  const specs: { name: string; identity: PeerExpectation; address: string; entry: string; args: string[] }[] = [
    { name: 'balancer', identity: 'balancer', address: addresses.balancer, entry: 'services/balancer/main.js', args: [...host, '--port', String(balancerPort)] },
    ...(o.aggregator
      ? [
          {
            name: 'aggregator',
            identity: 'aggregator' as PeerExpectation,
            address: aggregatorAddress,
            entry: 'services/aggregator/main.js',
            args: [...host, '--port', String(aggregatorPort), '--data-dir', join(dataDir, 'aggregator'), ...outputRoot],
          },
        ]
      : []),
    workerSpec('worker', workerPort, 'bench-worker'),
    ...moreWorkerPorts.map((port, i) => workerSpec(`worker-${i + 2}`, port, `bench-worker-${i + 2}`)),
    {
      name: 'scheduler',
      identity: 'scheduler',
      address: addresses.scheduler,
      entry: 'services/scheduler/main.js',
      args: [...host, '--port', String(schedulerPort), '--balancer', addresses.balancer, ...toAggregator, '--data-dir', join(dataDir, 'scheduler'), ...inputRoot, ...outputRoot],
    },
    {
      name: 'gateway',
      identity: 'gateway',
      address: addresses.gateway,
      entry: 'gateway/main.js',
      args: [...host, '--port', String(gatewayPort), '--http-port', String(o.httpPort ?? -1), '--scheduler', addresses.scheduler, '--balancer', addresses.balancer],
    },
  ];
  for (const spec of specs) {
    if (o.certs) {
      const files = o.certs.certs[typeof spec.identity === 'string' ? spec.identity : `workers/${spec.identity.worker}`];
      if (!files) throw new Error(`no certificate for ${spec.name} in ${o.certs.dir}`);
      spec.args.push('--tls', '--tls-cert', files.cert, '--tls-key', files.key, '--tls-ca', o.certs.ca);
    }
    // Metrics on a free port each: the defaults (9401..) may be taken, and workers share a host.
    spec.args.push('--metrics-port=0', ...(o.extraArgs?.[spec.name] ?? []));
  }
  // With TLS, readiness is checked as the operator (a client-only mesh identity), as `maas up --tls` does.
  const operator = o.certs ? operatorTls(o.certs.dir) : undefined;

  const children = new Map<string, ChildProcess>();
  const recent = new Map<string, string[]>();
  /** Children killed on purpose (kill), whose exit is no failure. */
  const killed = new Set<ChildProcess>();
  let stopping = false;
  let stopped: Promise<void> | undefined;

  const stop = (graceMs = 10_000): Promise<void> => {
    stopping = true;
    stopped ??= (async () => {
      for (const { name } of [...specs].reverse()) {
        const child = children.get(name);
        if (!child || child.exitCode !== null || child.signalCode !== null) continue;
        const exited = new Promise((r) => child.once('exit', r));
        // A stopped process would not see SIGTERM until continued.
        child.kill('SIGCONT');
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dataDir, { recursive: true, force: true });
    })();
    return stopped;
  };

  const env = {
    ...withServiceProcessEnv(process.env),
    MAAS_LOG_LEVEL: o.logLevel ?? 'warn',
    MAAS_WORKER_CACHE_DIR: resolve(o.repoDir, '.cache/models'),
    // The services stop by themselves if this process disappears without stopping them.
    MAAS_PARENT_PID: String(process.pid),
  };
  const launch = ({ name, entry, args }: (typeof specs)[number]) => {
    const flags = (o.nodeFlags ?? []).map((f) => f.replaceAll('{name}', name));
    const child = spawn(process.execPath, [...flags, resolve(o.distDir, entry), ...args], {
      cwd: o.cwd ?? o.repoDir,
      env: { ...env, ...o.env?.[name] },
      // Own process group: a terminal's Ctrl-C reaches only the bench, which stops them in order.
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.set(name, child);
    recent.set(name, []);
    for (const stream of [child.stdout, child.stderr]) {
      forEachLine(stream, (line) => {
        const kept = recent.get(name)!;
        kept.push(line);
        if (kept.length > 20) kept.shift();
        o.log(`[${name}] ${line}`);
      });
    }
    child.once('exit', (code, sig) => {
      if (stopping || killed.has(child)) return;
      const tail = recent.get(name)!.slice(-5).join('\n  ');
      o.onUnexpectedExit(`${name} exited unexpectedly (${sig ?? `code ${code}`})${tail ? `:\n  ${tail}` : ''}`);
    });
    return child;
  };
  try {
    for (const spec of specs) launch(spec);
    const deadline = Date.now() + o.startTimeoutMs;
    await Promise.all(specs.map((spec) => waitForServing(spec.address, deadline, o.signal, operator && { client: operator, expected: spec.identity })));
    await waitForModel(addresses.gateway, o.model, deadline, o.signal, o.certs && readFileSync(o.certs.ca), o.apiKey);
    // Every worker must have joined the balancer, not only the first one to be listed.
    if (workers > 1) await waitForWorkers(addresses.balancer, o.model, workers, deadline, o.signal, operator);
  } catch (err) {
    await stop(2000);
    throw err;
  }
  const pids = Object.fromEntries(MESH_PROCESS_NAMES.map((n) => [n, children.get(n)!.pid!])) as Record<MeshProcessName, number>;
  const processes = specs.map(({ name, address }) => ({ name, address, pid: children.get(name)!.pid! }));
  const childOf = (name: string): ChildProcess => {
    const child = children.get(name);
    if (!child) throw new Error(`no process named ${name} in this mesh (${specs.map((s) => s.name).join(', ')})`);
    return child;
  };
  const running = (child: ChildProcess) => child.exitCode === null && child.signalCode === null;
  return {
    addresses,
    pids,
    processes,
    dataDir,
    stop,
    signal(name, sig) {
      const child = childOf(name);
      if (running(child)) child.kill(sig);
    },
    async kill(name, sig = 'SIGKILL') {
      const child = childOf(name);
      if (!running(child)) return;
      killed.add(child);
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGCONT');
      child.kill(sig);
      await exited;
    },
    async restart(name, timeoutMs = 60_000) {
      if (stopping) throw new Error(`cannot restart ${name}: the mesh is stopping`);
      if (running(childOf(name))) throw new Error(`cannot restart ${name}: it is still running (kill it first)`);
      const spec = specs.find((s) => s.name === name)!;
      const child = launch(spec);
      const pid = child.pid!;
      if (name in pids) pids[name as MeshProcessName] = pid;
      processes.find((p) => p.name === name)!.pid = pid;
      await waitForServing(spec.address, Date.now() + timeoutMs, o.signal, operator && { client: operator, expected: spec.identity });
      return pid;
    },
  };
}

/** Polls the gateway's ModelService.ListModels until `model` is listed. */
async function waitForModel(gateway: string, model: string, deadline: number, signal: AbortSignal, ca?: Buffer, apiKey?: string): Promise<void> {
  const channel = ca ? openTlsChannel(gateway, ca) : openChannel(gateway);
  const metadata = Metadata(apiKey ? { authorization: `Bearer ${apiKey}` } : {});
  const models = createMeshClient(ModelServiceDefinition, channel);
  let last = 'no answer yet';
  try {
    while (Date.now() < deadline) {
      signal.throwIfAborted();
      try {
        const listed = (await models.listModels({}, { metadata, signal, deadline: Math.min(deadline, Date.now() + 5000) })).models;
        if (listed.some((m) => m.name === model)) return;
        last = `listed: ${listed.map((m) => m.name).join(', ') || 'nothing'}`;
      } catch (err) {
        signal.throwIfAborted();
        last = (err as Error).message;
      }
      await sleep(200, undefined, { signal });
    }
    throw new Error(`the gateway at ${gateway} did not list model "${model}" in time (${last})`);
  } finally {
    channel.close();
  }
}

/** Polls the balancer's ListModels until `count` ready workers serve `model`. */
export async function waitForWorkers(balancer: string, model: string, count: number, deadline: number, signal: AbortSignal, operator?: MeshTls): Promise<void> {
  const channel = operator ? openMeshChannel(balancer, undefined, operator, 'balancer') : openChannel(balancer);
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
      await sleep(200, undefined, { signal });
    }
    throw new Error(`the balancer at ${balancer} did not have ${count} ready workers for "${model}" in time (${last})`);
  } finally {
    channel.close();
  }
}
