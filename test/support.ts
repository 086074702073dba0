/**
 * Test support: start the mesh in this process on 127.0.0.1:0 (real gRPC servers, each with its
 * own port), typed clients of its public API, and small waiting helpers. Nothing here is mocked.
 */
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Channel, ClientError, Status } from 'nice-grpc';
import { readFileSync } from 'node:fs';
import { MeshCertificates } from '../common/certs';
import { createMeshClient, openChannel, openTlsChannel } from '../common/client';
import { parseConfig } from '../common/config';
import { silentLogger } from '../common/log';
import { InferenceServiceDefinition } from '../generated/maas/v1/inference';
import { ModelServiceDefinition } from '../generated/maas/v1/models';
import { JobServiceDefinition } from '../generated/maas/v1/jobs';
import { MeshServiceDefinition } from '../generated/maas/v1/mesh';
import { aggregatorSchema } from '../services/aggregator/config';
import { RunningAggregator, startAggregator } from '../services/aggregator/server';
import { gatewaySchema } from '../gateway/config';
import { RunningGateway, startGateway } from '../gateway/server';
import { balancerSchema } from '../services/balancer/config';
import { PolicyName } from '../services/balancer/policy';
import { RunningBalancer, startBalancer } from '../services/balancer/server';
import { schedulerSchema } from '../services/scheduler/config';
import { RunningScheduler, startScheduler } from '../services/scheduler/server';
import { workerSchema } from '../services/worker/config';
import { createBuiltinRuntime } from '../services/worker/models/builtin';
import { createEchoModel } from '../services/worker/models/echo';
import { ModelRuntime } from '../services/worker/models/runtime';
import { RunningWorker, startWorker } from '../services/worker/server';

/** Where trained built-in models are cached between test runs (as `maas up` does). */
export const MODEL_CACHE_DIR = resolve(__dirname, '../../.cache/models');

/** A worker to start: the echo model alone (fast) with a delay, or the built-in models. */
export interface WorkerSpec {
  echoDelayMs?: number;
  builtin?: boolean;
  runtime?: ModelRuntime;
  concurrency?: number;
  /** Tasks that may wait for a slot (the worker's --max-queued). */
  maxQueued?: number;
  port?: number;
}

/** What startMesh takes; everything has a small default. */
export interface MeshOptions {
  workers?: WorkerSpec[];
  policy?: PolicyName;
  maxInFlight?: number;
  maxQueued?: number;
  /** Balancer settings beyond the policy. */
  balancer?: Partial<ReturnType<typeof balancerDefaults>>;
  /** Scheduler settings of the batch path. */
  scheduler?: Partial<ReturnType<typeof schedulerDefaults>>;
  gateway?: Partial<ReturnType<typeof gatewayDefaults>>;
  /** Aggregator settings (e.g. maxOutputBytes). */
  aggregator?: Partial<ReturnType<typeof aggregatorDefaults>>;
  /** Worker settings beyond the WorkerSpec (e.g. maxLineBytes), for every worker. */
  worker?: Partial<ReturnType<typeof workerDefaults>>;
  /**
   * Mutual TLS with these certificates (from createMeshCertificates, with worker ids w1, w2, ...
   * for as many workers as the mesh will have); plaintext without.
   */
  tls?: MeshCertificates;
}

/**
 * A channel to `address` over TLS trusting the mesh CA of `certs`, presenting the certificate
 * named `name` (gateway, scheduler, balancer, aggregator, operator, workers/<id>), or none when
 * `name` is undefined: for tests (and the fuzz harness) that call a service as a given identity.
 */
export function openChannelAs(address: string, certs: MeshCertificates, name: string | undefined, maxMessageBytes?: number): Channel {
  const client = name === undefined ? undefined : certs.certs[name];
  if (name !== undefined && !client) throw new Error(`no certificate named ${name} in ${certs.dir}`);
  return openTlsChannel(address, readFileSync(certs.ca), client && { cert: readFileSync(client.cert), key: readFileSync(client.key) }, maxMessageBytes);
}

/** The TLS settings of one service, from a folder of mesh certificates. */
export function tlsSettings(certs: MeshCertificates | undefined, name: string) {
  if (!certs) return {};
  const files = certs.certs[name];
  if (!files) throw new Error(`no certificate named ${name} in ${certs.dir}`);
  return { tls: true, tlsCert: files.cert, tlsKey: files.key, tlsCa: certs.ca };
}

// Metrics on a free port: the defaults (9401..) may be taken on a shared machine.
const gatewayDefaults = () => ({ ...parseConfig(gatewaySchema, [], {}), metricsPort: 0 });
const schedulerDefaults = () => ({ ...parseConfig(schedulerSchema, [], {}), metricsPort: 0 });
const balancerDefaults = () => ({ ...parseConfig(balancerSchema, [], {}), metricsPort: 0 });
const aggregatorDefaults = () => ({ ...parseConfig(aggregatorSchema, [], {}), metricsPort: 0 });
const workerDefaults = () => parseConfig(workerSchema, [], {});

/** A mesh running in this process. */
export class TestMesh {
  readonly workers: RunningWorker[] = [];
  private readonly channel;
  readonly inference;
  readonly models;
  readonly jobs;
  readonly meshInfo;

  constructor(
    readonly balancer: RunningBalancer,
    readonly aggregator: RunningAggregator,
    readonly scheduler: RunningScheduler,
    readonly gateway: RunningGateway,
    /** Temporary directory of the durable stores and the file roots, removed by stop(). */
    readonly dataDir: string,
    /** The certificates of a TLS mesh. */
    readonly certs?: MeshCertificates,
  ) {
    this.channel = certs ? openTlsChannel(gateway.address, readFileSync(certs.ca)) : openChannel(gateway.address);
    this.inference = createMeshClient(InferenceServiceDefinition, this.channel);
    this.models = createMeshClient(ModelServiceDefinition, this.channel);
    this.jobs = createMeshClient(JobServiceDefinition, this.channel);
    this.meshInfo = createMeshClient(MeshServiceDefinition, this.channel);
  }

  /** Settings every worker started by addWorker gets (MeshOptions.worker). */
  workerSettings: MeshOptions['worker'] = {};

  /** The input root of the scheduler and the workers: a job's `file` is relative to it. */
  get inputRoot(): string {
    return join(this.dataDir, 'input');
  }

  /** The aggregator's output root: a tenant's `output_file` lands in `<outputRoot>/<tenant>/`. */
  get outputRoot(): string {
    return join(this.dataDir, 'output');
  }

  /** Starts a worker, waits until the balancer has accepted it, and returns it. */
  async addWorker(spec: WorkerSpec = {}): Promise<RunningWorker> {
    const config = {
      ...parseConfig(workerSchema, [], {}),
      port: spec.port ?? 0,
      balancer: this.balancer.address,
      aggregator: this.aggregator.address,
      concurrency: spec.concurrency ?? 64,
      maxQueued: spec.maxQueued ?? 256,
      echoDelayMs: spec.echoDelayMs ?? 0,
      cacheDir: MODEL_CACHE_DIR,
      workerId: `w${this.workers.length + 1}`,
      inputRoot: this.inputRoot,
      // An empty repository of the test's own, not the default .maas/models of the checkout, which
      // `maas models make-examples` fills: the tests must not depend on what a developer made there.
      modelRepository: join(this.dataDir, 'models'),
      ...this.workerSettings,
      ...tlsSettings(this.certs, `workers/w${this.workers.length + 1}`),
    };
    const runtime = spec.runtime ?? (spec.builtin ? createBuiltinRuntime({ cacheDir: MODEL_CACHE_DIR, echoDelayMs: config.echoDelayMs }) : echoRuntime(config.echoDelayMs));
    const worker = await startWorker(config, silentLogger, runtime);
    this.workers.push(worker);
    await worker.joined;
    return worker;
  }

  /** Stops everything this mesh started. */
  async stop(): Promise<void> {
    this.channel.close();
    await this.gateway.shutdown();
    await this.scheduler.shutdown();
    await Promise.all(this.workers.map((w) => w.shutdown().catch(() => undefined)));
    await this.balancer.shutdown();
    await this.aggregator.shutdown();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** A runtime with only the echo model: starts at once. */
export function echoRuntime(delayMs: number): ModelRuntime {
  return { name: 'echo-only', load: async () => [createEchoModel({ delayMs })] };
}

/** Starts balancer, workers, scheduler and gateway on ephemeral ports. */
export async function startMesh(options: MeshOptions = {}): Promise<TestMesh> {
  const tls = (name: string) => tlsSettings(options.tls, name);
  const balancer = await startBalancer(
    { ...balancerDefaults(), port: 0, policy: options.policy ?? 'p2c', reportIntervalMs: 200, ...tls('balancer'), ...options.balancer },
    silentLogger,
  );
  const dataDir = mkdtempSync(join(tmpdir(), 'maas-mesh-test-'));
  const aggregator = await startAggregator(
    { ...aggregatorDefaults(), port: 0, dataDir: join(dataDir, 'aggregator'), outputRoot: join(dataDir, 'output'), protectedDirs: `${join(dataDir, 'scheduler')},${MODEL_CACHE_DIR}`, ...options.aggregator, ...tls('aggregator') },
    silentLogger,
  );
  const scheduler = await startScheduler(
    {
      ...schedulerDefaults(),
      port: 0,
      balancer: balancer.address,
      aggregator: aggregator.address,
      dataDir: join(dataDir, 'scheduler'),
      inputRoot: join(dataDir, 'input'),
      outputRoot: join(dataDir, 'output'),
      maxInFlight: options.maxInFlight ?? 256,
      maxQueued: options.maxQueued ?? 1024,
      retryBaseMs: 20,
      retryMaxMs: 200,
      ...tls('scheduler'),
      ...options.scheduler,
    },
    silentLogger,
  );
  const gateway = await startGateway(
    { ...gatewayDefaults(), port: 0, httpPort: 0, scheduler: scheduler.address, balancer: balancer.address, catalogTtlMs: 0, ...tls('gateway'), ...options.gateway },
    silentLogger,
  );
  const mesh = new TestMesh(balancer, aggregator, scheduler, gateway, dataDir, options.tls);
  mesh.workerSettings = options.worker ?? {};
  for (const spec of options.workers ?? [{}]) await mesh.addWorker(spec);
  return mesh;
}

/** Resolves with the first event `name` from `emitter` whose payload satisfies `match`. */
export async function nextEvent<T>(emitter: NodeJS.EventEmitter, name: string, match: (value: T) => boolean = () => true): Promise<T> {
  for (;;) {
    const [value] = (await once(emitter, name)) as [T];
    if (match(value)) return value;
  }
}

/**
 * Resolves once `condition` holds, checking after every turn of the event loop; rejects after
 * `timeoutMs`. For state that has no event of its own (such as a queue's length).
 */
export async function until(condition: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Resolves once the async `condition` holds, checking it again 20 ms after each answer; rejects
 * after `timeoutMs`. For state another process holds (a metric of a service).
 */
export async function untilAsync(condition: () => Promise<boolean>, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The ClientError a promise rejects with; fails the test if it resolves or throws anything else. */
export async function grpcError(promise: Promise<unknown>): Promise<ClientError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof ClientError) return err;
    throw err;
  }
  throw new Error('expected the call to fail with a gRPC status, but it succeeded');
}

/** Collects a stream into an array. */
export async function collect<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of stream) out.push(x);
  return out;
}

export { freePort } from './processes';

export { Status };

/** An echo model (named echo) that fails every Predict while `state.failing` is set: a worker to eject. */
export function flakyEchoRuntime(state: { failing: boolean }): ModelRuntime {
  const echo = createEchoModel();
  return {
    name: 'flaky',
    load: async () => [
      {
        info: echo.info,
        predict: async (input, signal) => {
          if (state.failing) throw new Error('injected failure');
          return echo.predict!(input, signal);
        },
      },
    ],
  };
}
