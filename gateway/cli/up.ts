/**
 * `maas up`: starts every service of the mesh as its own process on this machine, waits until
 * each reports SERVING through gRPC health, prints the endpoints, and stops them all, in order, on
 * Ctrl-C. It spawns processes and asks them for health over gRPC; it imports no service code.
 */
import { DEFAULT_DRAIN_TIMEOUT_MS } from '../../common/drain';
import { ChildProcess, spawn } from 'node:child_process';
import { join, resolve } from 'node:path';
import { createChannel, createClient } from 'nice-grpc';
import { certificateName, createMeshCertificates } from '../../common/certs';
import { openMeshChannel } from '../../common/client';
import { forEachLine } from '../../common/lines';
import { PeerExpectation, meshIdentity } from '../../common/mesh-identity';
import { MeshTls, loadMeshTls } from '../../common/tls';
import { HealthCheckResponse_ServingStatus, HealthDefinition } from '../../generated/grpc/health/v1/health';
import { withServiceProcessEnv } from '../../common/process-env';
import { BalancerServiceDefinition } from '../../generated/maas/internal/v1/balancer';
import { WorkerState } from '../../generated/maas/v1/mesh';
import { DEFAULT_RESTARTS, RestartBackoff } from './restarts';

/** One service process to start. */
interface ProcessSpec {
  name: string;
  /** Which service it is; picks the environment it is given (see {@link childEnv}). */
  service: ServiceKind;
  entry: string;
  args: string[];
  address: string;
  /** Who the process is, as its certificate names it (checked when waiting for health over TLS). */
  identity: PeerExpectation;
}

/** Options of `maas up`. */
export interface UpOptions {
  host: string;
  gatewayPort: number;
  /** The gateway's OpenAI-compatible HTTP port; -1: off. */
  httpPort: number;
  schedulerPort: number;
  balancerPort: number;
  aggregatorPort: number;
  workerBasePort: number;
  /**
   * The gateway's metrics port; the scheduler, balancer and aggregator take the next three, workers
   * a free port each. 0: every service a free port; -1: no metrics; unset: each service's default.
   */
  metricsPort?: number;
  workers: number;
  policy: string;
  /** The gateway's API key file (`--api-keys-file`); given to the gateway only. */
  apiKeysFile?: string;
  /** Where jobs' input files are read from (scheduler and workers); relative to the working directory. */
  inputRoot?: string;
  /** Where the collect reducer writes, a folder per tenant (aggregator; the scheduler checks at submit). */
  outputRoot?: string;
  /** The workers' model repository (default .maas/models); relative to the working directory. */
  modelRepository?: string;
  startTimeoutMs: number;
  /** Mutual TLS with the certificates in this folder (created where missing); plaintext when unset. */
  certsDir?: string;
  /** Pass --insecure to every service (plaintext on a non-loopback --host). */
  insecure?: boolean;
  /** Restarts in a row of a crashing service before `maas up` gives up and stops the mesh (default 5). */
  maxRestarts?: number;
}

/** The services `maas up` starts. */
export type ServiceKind = 'gateway' | 'scheduler' | 'balancer' | 'aggregator' | 'worker';

/** Variables every service may need: the platform's, Node's, tracing and logging. */
const SHARED_ENV = /^(PATH|HOME|MALLOC_ARENA_MAX|MALLOC_CONF|LD_PRELOAD|MAAS_JEMALLOC|USER|LOGNAME|SHELL|LANG|LC_[A-Z_]+|TZ|TMPDIR|TEMP|TMP|NODE_OPTIONS|NODE_EXTRA_CA_CERTS|OTEL_[A-Z0-9_]+|MAAS_LOG_LEVEL|MAAS_LOG_FORMAT|MAAS_LOG_CONTENT|MAAS_INPUT_ROOT|MAAS_OUTPUT_ROOT|MAAS_MAX_INPUT_BYTES|MAAS_MAX_LINE_BYTES|MAAS_CALLBACK_ALLOW|MAAS_MODEL_REPOSITORY|MAAS_ONNX_INTRA_OP_THREADS)$/;

/**
 * The environment of one child: the shared variables above and the service's own settings
 * (`MAAS_<SERVICE>_*`), nothing else. So API keys (`MAAS_GATEWAY_API_KEYS`, the key file's path
 * `MAAS_GATEWAY_API_KEYS_FILE`), the CLI's `MAAS_API_KEY` and whatever else the shell holds reach no
 * service but the one that needs them: a job that reads its worker's environment finds no key.
 */
export function childEnv(service: ServiceKind, env: NodeJS.ProcessEnv, parentPid: number): NodeJS.ProcessEnv {
  const own = `MAAS_${service.toUpperCase()}_`;
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined && (SHARED_ENV.test(k) || k.startsWith(own))) out[k] = v;
  out.MAAS_PARENT_PID = String(parentPid);
  return withServiceProcessEnv(out);
}

const dist = resolve(__dirname, '../..');

/** The processes of the mesh, in start order. */
export function meshProcesses(o: UpOptions): ProcessSpec[] {
  const at = (port: number) => `${o.host}:${port}`;
  const balancer = at(o.balancerPort);
  const aggregator = at(o.aggregatorPort);
  // One absolute value for every service, so that they all agree whatever their working directory.
  const inputRoot = ['--input-root', resolve(o.inputRoot ?? '.maas/input')];
  const outputRoot = ['--output-root', resolve(o.outputRoot ?? '.maas/output')];
  const modelRepository = ['--model-repository', resolve(o.modelRepository ?? '.maas/models')];
  const metricsAt = (offset: number): string[] => {
    if (o.metricsPort === undefined) return [];
    return [`--metrics-port=${o.metricsPort <= 0 ? o.metricsPort : o.metricsPort + offset}`];
  };
  // Several workers on one host: each picks a free metrics port (it logs which).
  const workerMetrics = o.metricsPort === undefined ? [] : [`--metrics-port=${o.metricsPort < 0 ? -1 : 0}`];
  const specs: ProcessSpec[] = [
    { name: 'balancer', service: 'balancer', entry: 'services/balancer/main.js', args: ['--host', o.host, '--port', String(o.balancerPort), '--policy', o.policy, ...metricsAt(2)], address: balancer, identity: 'balancer' },
    { name: 'aggregator', service: 'aggregator', entry: 'services/aggregator/main.js', args: ['--host', o.host, '--port', String(o.aggregatorPort), ...outputRoot, ...metricsAt(3)], address: aggregator, identity: 'aggregator' },
  ];
  for (let i = 0; i < o.workers; i++) {
    const port = o.workerBasePort + i;
    const id = `worker-${i + 1}`;
    specs.push({ name: id, service: 'worker', entry: 'services/worker/main.js', args: ['--host', o.host, '--port', String(port), '--balancer', balancer, '--aggregator', aggregator, '--worker-id', id, ...inputRoot, ...modelRepository, ...workerMetrics], address: at(port), identity: { worker: id } });
  }
  specs.push(
    { name: 'scheduler', service: 'scheduler', entry: 'services/scheduler/main.js', args: ['--host', o.host, '--port', String(o.schedulerPort), '--balancer', balancer, '--aggregator', aggregator, ...inputRoot, ...outputRoot, ...metricsAt(1)], address: at(o.schedulerPort), identity: 'scheduler' },
    { name: 'gateway', service: 'gateway', entry: 'gateway/main.js', args: ['--host', o.host, '--port', String(o.gatewayPort), '--http-port', String(o.httpPort), '--scheduler', at(o.schedulerPort), '--balancer', balancer, ...(o.apiKeysFile ? ['--api-keys-file', resolve(o.apiKeysFile)] : []), ...metricsAt(0)], address: at(o.gatewayPort), identity: 'gateway' },
  );
  for (const spec of specs) {
    if (o.certsDir) {
      const name = typeof spec.identity === 'string' ? spec.identity : certificateName(meshIdentity('worker', spec.identity.worker));
      spec.args.push('--tls', '--tls-cert', join(o.certsDir, `${name}.pem`), '--tls-key', join(o.certsDir, `${name}-key.pem`), '--tls-ca', join(o.certsDir, 'ca.pem'));
    }
    if (o.insecure) spec.args.push('--insecure');
  }
  return specs;
}

/** The operator's certificate in a folder of mesh certificates: what `maas up` checks health with. */
export function operatorTls(certsDir: string): MeshTls {
  const files = { tlsCert: join(certsDir, 'operator.pem'), tlsKey: join(certsDir, 'operator-key.pem'), tlsCa: join(certsDir, 'ca.pem') };
  return loadMeshTls({ tls: true, insecure: false, healthPort: 0, ...files }, 'operator')!;
}

/**
 * Resolves when the server at `address` reports SERVING; rejects at `deadline` or on `signal`.
 * With `tls`, asks over mutual TLS with that certificate and checks the server is `tls.expected`.
 */
export async function waitForServing(address: string, deadline: number, signal: AbortSignal, tls?: { client: MeshTls; expected: PeerExpectation }): Promise<void> {
  const channel = tls ? openMeshChannel(address, 64 * 1024, tls.client, tls.expected) : createChannel(address);
  const health = createClient(HealthDefinition, channel);
  try {
    while (!signal.aborted) {
      const attempt = AbortSignal.any([signal, AbortSignal.timeout(Math.max(1, deadline - Date.now()))]);
      try {
        for await (const r of health.watch({ service: '' }, { signal: attempt })) {
          if (r.status === HealthCheckResponse_ServingStatus.SERVING) return;
        }
      } catch (err) {
        if (Date.now() >= deadline) throw new Error(`${address} did not report SERVING in time`);
        if (signal.aborted) throw err;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error('start aborted');
  } finally {
    channel.close();
  }
}

/**
 * Resolves when the balancer at `address` lists every worker of `workerIds` as joined, serving and
 * not draining (so their models are ready); rejects at `deadline` or on `signal`.
 */
export async function waitForWorkersJoined(address: string, workerIds: readonly string[], deadline: number, signal: AbortSignal, tls?: { client: MeshTls; expected: PeerExpectation }): Promise<void> {
  const channel = tls ? openMeshChannel(address, 64 * 1024 * 1024, tls.client, tls.expected) : createChannel(address);
  const balancer = createClient(BalancerServiceDefinition, channel);
  let missing = [...workerIds];
  try {
    while (!signal.aborted) {
      try {
        const { workers } = await balancer.listWorkers({}, { signal: AbortSignal.any([signal, AbortSignal.timeout(Math.max(1, Math.min(5000, deadline - Date.now())))]) });
        const ready = new Set(workers.filter((w) => w.state !== WorkerState.WORKER_STATE_DRAINING).map((w) => w.workerId));
        missing = workerIds.filter((id) => !ready.has(id));
        if (missing.length === 0) return;
      } catch (err) {
        if (signal.aborted) throw err;
      }
      if (Date.now() >= deadline) throw new Error(`the balancer at ${address} did not list ${missing.join(', ')} as ready in time`);
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error('start aborted');
  } finally {
    channel.close();
  }
}

function prefixLines(name: string, stream: NodeJS.ReadableStream | null, out: NodeJS.WritableStream): void {
  forEachLine(stream, (line) => out.write(`[${name}] ${line}\n`));
}

/** Starts the mesh and runs until SIGINT/SIGTERM; resolves with the exit code. */
export async function up(o: UpOptions, out: NodeJS.WritableStream = process.stdout): Promise<number> {
  let operator: MeshTls | undefined;
  if (o.certsDir) {
    const workers = Array.from({ length: o.workers }, (_, i) => `worker-${i + 1}`);
    const made = await createMeshCertificates(o.certsDir, { workers });
    if (made.created.length > 0) out.write(`maas up: created certificates in ${o.certsDir}: ${made.created.join(', ')}\n`);
    operator = operatorTls(o.certsDir);
  }
  const specs = meshProcesses(o);
  const children = new Map<string, ChildProcess>();
  const abort = new AbortController();
  let stopping = false;
  let failure: string | undefined;
  const restartTimers = new Set<NodeJS.Timeout>();
  const restartSettings = { ...DEFAULT_RESTARTS, ...(o.maxRestarts !== undefined ? { maxRestarts: o.maxRestarts } : {}) };
  const balancerSpec = specs.find((s) => s.service === 'balancer')!;
  const workerIds = specs.filter((s) => s.service === 'worker').map((s) => s.name);
  const tlsFor = (spec: ProcessSpec) => operator && { client: operator, expected: spec.identity };

  const stopAll = async () => {
    if (stopping) return;
    stopping = true;
    for (const timer of restartTimers) clearTimeout(timer);
    restartTimers.clear();
    // Stop from the edge inward: gateway first, balancer last, so no call finds a missing hop.
    for (const spec of [...specs].reverse()) {
      const child = children.get(spec.name);
      if (!child || child.exitCode !== null || child.signalCode !== null) continue;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      // A service drains for up to its --drain-timeout-ms (60 s by default, the default call
      // deadline); the kill comes only after that and a margin.
      const timer = setTimeout(() => child.kill('SIGKILL'), DEFAULT_DRAIN_TIMEOUT_MS + 5_000);
      await exited;
      clearTimeout(timer);
    }
  };

  /** Stops every service, then this process, with code 1 and `why` printed. */
  const giveUp = (why: string) => {
    if (stopping) return;
    failure = why;
    out.write(`maas up: ${why}; stopping the mesh\n`);
    abort.abort();
    void stopAll().then(() => process.exit(1));
  };

  const onSignal = () => {
    out.write('\nstopping the mesh…\n');
    abort.abort();
    void stopAll().then(() => process.exit(failure ? 1 : 0));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  /**
   * Starts one service and supervises it: an unexpected exit starts it again after a backoff
   * (reset once it has served for a while); a crash loop gives up and stops the mesh.
   */
  const supervise = (spec: ProcessSpec, backoff: RestartBackoff, start: number) => {
    const child = spawn(process.execPath, [resolve(dist, spec.entry), ...spec.args], {
      // Readable lines in a terminal unless the shell asks for JSON (MAAS_LOG_FORMAT=json).
      env: { MAAS_LOG_FORMAT: 'text', ...childEnv(spec.service, process.env, process.pid) },
      // Own process group: a terminal's Ctrl-C reaches only `maas up`, which stops the rest in order.
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.set(spec.name, child);
    prefixLines(spec.name, child.stdout, out);
    prefixLines(spec.name, child.stderr, out);
    let servingSince: number | undefined;
    const exited = new AbortController();
    // After a restart, say when the service is back (a worker: once the balancer lists it again;
    // the balancer: once every worker has joined it again).
    void waitForServing(spec.address, Date.now() + o.startTimeoutMs, AbortSignal.any([abort.signal, exited.signal]), tlsFor(spec))
      .then(async () => {
        servingSince = Date.now();
        if (start === 1) return;
        let note = '';
        if (spec.service === 'worker' || spec.service === 'balancer') {
          const ids = spec.service === 'worker' ? [spec.name] : workerIds;
          await waitForWorkersJoined(balancerSpec.address, ids, Date.now() + o.startTimeoutMs, AbortSignal.any([abort.signal, exited.signal]), tlsFor(balancerSpec));
          note = spec.service === 'worker' ? ', joined the balancer' : `, ${ids.length} of ${ids.length} workers joined`;
        }
        out.write(`maas up: ${spec.name} is back (start ${start}, pid ${child.pid}): SERVING${note}\n`);
      })
      .catch(() => undefined);
    child.once('exit', (code, sig) => {
      exited.abort();
      if (stopping) return;
      const how = sig ?? `code ${code}`;
      const decision = backoff.onExit(Date.now(), servingSince);
      if (!decision.restart) {
        giveUp(`${spec.name} exited unexpectedly (${how}), ${decision.exits} time${decision.exits === 1 ? '' : 's'} in a row without serving for ${restartSettings.healthyMs / 1000} s; giving up`);
        return;
      }
      out.write(`maas up: ${spec.name} exited unexpectedly (${how}); restart ${decision.inARow} of ${restartSettings.maxRestarts} in ${decision.delayMs} ms\n`);
      const timer = setTimeout(() => {
        restartTimers.delete(timer);
        if (!stopping) supervise(spec, backoff, start + 1);
      }, decision.delayMs);
      restartTimers.add(timer);
    });
  };

  const deadline = Date.now() + o.startTimeoutMs;
  for (const spec of specs) supervise(spec, new RestartBackoff(restartSettings), 1);
  try {
    // Workers train their models on the first start; the others are ready in moments. The mesh is
    // up once every service serves and every worker has joined the balancer with its models.
    await Promise.all(specs.map((s) => waitForServing(s.address, deadline, abort.signal, tlsFor(s))));
    await waitForWorkersJoined(balancerSpec.address, workerIds, deadline, abort.signal, tlsFor(balancerSpec));
  } catch (err) {
    if (!stopping) {
      out.write(`maas up: ${(err as Error).message}; stopping the mesh\n`);
      await stopAll();
    }
    return 1;
  }
  // Clients dial a wildcard bind on loopback (a name the gateway's certificate carries).
  const dialHost = o.host === '0.0.0.0' || o.host === '::' ? '127.0.0.1' : o.host;
  const gw = `${dialHost}:${o.gatewayPort}`;
  const ca = o.certsDir ? join(o.certsDir, 'ca.pem') : undefined;
  const clientFlags = [gw === '127.0.0.1:50051' ? '' : ` --gateway ${gw}`, ca ? ` --cacert ${ca}` : ''].join('');
  const maas = `npx maas${clientFlags}`;
  const grpcurl = ca ? `grpcurl -cacert ${ca}` : 'grpcurl -plaintext';
  out.write(
    [
      '',
      `MaaS Mesh is up: every service reports SERVING and every worker has joined with its models${ca ? ', over mutual TLS (CA ' + ca + ')' : ''}.`,
      ...specs.map((s) => `  ${s.name.padEnd(10)} ${s.address}${s.name === 'gateway' ? '   (public API: maas.v1.InferenceService, ModelService, JobService, MeshService)' : s.name === 'balancer' ? `   (policy ${o.policy})` : ''}`),
      ...(o.httpPort >= 0 ? [`  ${'openai'.padEnd(10)} ${ca ? 'https' : 'http'}://${dialHost}:${o.httpPort}/v1   (OpenAI-compatible HTTP API: /v1/models, /v1/completions, /v1/chat/completions)`] : []),
      '',
      'Try:',
      ...(o.apiKeysFile ? ['  export MAAS_API_KEY=<a key of the key file>   (maas keys add prints one when it makes it)'] : []),
      `  ${maas} models`,
      `  ${maas} generate --model ngram --seed 7 "the meeting"`,
      ...(o.httpPort >= 0 ? [`  curl -N ${ca ? `--cacert ${ca} https` : 'http'}://${dialHost}:${o.httpPort}/v1/chat/completions${o.apiKeysFile ? ' -H "Authorization: Bearer $MAAS_API_KEY"' : ''} -H 'content-type: application/json' -d '{"model":"ngram","messages":[{"role":"user","content":"the meeting"}],"stream":true}'`] : []),
      `  ${maas} job submit --mapper wordcount --dataset spam-assassin --watch`,
      `  (a job's --input FILE is read from ${resolve(o.inputRoot ?? '.maas/input')}; --output goes to ${resolve(o.outputRoot ?? '.maas/output')}/<tenant>/)`,
      `  ${grpcurl}${o.apiKeysFile ? ' -H "authorization: Bearer $MAAS_API_KEY"' : ''} -d '{"model":"spam-nb","input":"WIN A FREE PRIZE NOW"}' ${gw} maas.v1.InferenceService/Predict`,
      '',
      `A service that exits unexpectedly is started again (backoff from ${restartSettings.baseMs} ms; at most ${restartSettings.maxRestarts} restarts in a row).`,
      'Ctrl-C stops everything.',
      '',
    ].join('\n'),
  );
  return new Promise<number>(() => {});
}
