/**
 * The fuzz harness: starts the real mesh as child processes (gateway, scheduler, balancer,
 * aggregator, two workers), sends generated inputs as raw bytes to every public and internal
 * method, and checks what the issue asks of each port:
 * - no service process exits;
 * - no call outlives its deadline (overrun measured);
 * - no input gets UNKNOWN or INTERNAL, except grpc-js's own answer to bytes that do not parse as
 *   the message ({@link GRPC_PARSE_ERROR}), and that only for inputs that are not well-formed;
 * - no error message is longer than MAX_MESSAGE_CHARS or echoes a long string the input carried;
 * - every service answers health afterwards;
 * - every process's resident memory returns to within 20% of where it started.
 *
 * How the harness reaches a process is pluggable ({@link FuzzTransport}): plaintext today; a TLS
 * mesh adds transports with and without a valid identity.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import { ChannelCredentials, credentials, status } from '@grpc/grpc-js';
import { DescMessage } from '@bufbuild/protobuf';
import { LocalMesh, startLocalMesh } from '../../bench/local-mesh';
import { MAPPER_NAMES } from '../../common/batch';
import { DATASET_NAMES } from '../../common/datasets';
import { meshRegistry } from '../../common/descriptors';
import { MAX_MESSAGE_CHARS } from '../../common/errors';
import { Random, mulberry32 } from '../../common/random';
import { HealthCheckRequest, HealthCheckResponse, HealthCheckResponse_ServingStatus } from '../../generated/grpc/health/v1/health';
import { AggregatorServiceDefinition } from '../../generated/maas/internal/v1/aggregator';
import { BalancerServiceDefinition } from '../../generated/maas/internal/v1/balancer';
import { CancelJobRequest, SchedulerServiceDefinition } from '../../generated/maas/internal/v1/scheduler';
import { WorkerServiceDefinition } from '../../generated/maas/internal/v1/worker';
import { InferenceServiceDefinition } from '../../generated/maas/v1/inference';
import { JobServiceDefinition, JobSpec, SubmitRequest } from '../../generated/maas/v1/jobs';
import { MeshServiceDefinition } from '../../generated/maas/v1/mesh';
import { ModelServiceDefinition } from '../../generated/maas/v1/models';
import { CallOutcome, RAW_CHANNEL_OPTIONS, RawClient } from '../raw-grpc';
import { FuzzInput, MessageFuzzer, STRATEGIES, Strategy } from './generators';

/** grpc-js's own status message for request bytes that do not parse as the message. */
export const GRPC_PARSE_ERROR = 'Error deserializing request';
/** A call that ends later than its deadline plus this counts as a hang. */
export const HANG_GRACE_MS = 1000;
/** Memory may end at most this much above where it started. */
export const MEMORY_TOLERANCE = 0.2;
/** The address a fuzzed worker may advertise: a loopback port where nothing listens. */
export const SAFE_WORKER_ADDRESS = '127.0.0.1:1';
/** The callback URL a fuzzed job may name: the same port, so nothing is ever delivered. */
export const SAFE_CALLBACK_URL = 'http://127.0.0.1:1/callback';

/** A process of the mesh the harness can call. */
export interface FuzzProcess {
  name: string;
  address: string;
  pid: number;
}

/**
 * How the harness reaches a process: its credentials and channel options. The TLS mesh adds
 * transports "with a valid identity" and "without one" beside plaintext.
 */
export interface FuzzTransport {
  /** Shown in the report, e.g. "plaintext" or "mTLS, gateway identity". */
  name: string;
  channel(process: FuzzProcess): { credentials: ChannelCredentials; options?: object };
}

/** Plaintext, as the mesh runs on loopback today. */
export const PLAINTEXT: FuzzTransport = {
  name: 'plaintext',
  channel: () => ({ credentials: credentials.createInsecure(), options: RAW_CHANNEL_OPTIONS }),
};

type MethodKind = 'unary' | 'server_streaming' | 'client_streaming' | 'bidi_streaming';

/** One method to fuzz. */
export interface FuzzTarget {
  /** e.g. maas.v1.JobService/Get */
  name: string;
  path: string;
  kind: MethodKind;
  /** Names of the processes that serve it (inputs alternate between them). */
  processes: string[];
  request: DescMessage;
  /** The generated decoder of the request, as the server decodes it. */
  decode(bytes: Uint8Array): unknown;
}

const SERVICES = [
  { definition: InferenceServiceDefinition, processes: ['gateway'] },
  { definition: ModelServiceDefinition, processes: ['gateway'] },
  { definition: JobServiceDefinition, processes: ['gateway'] },
  { definition: MeshServiceDefinition, processes: ['gateway'] },
  { definition: SchedulerServiceDefinition, processes: ['scheduler'] },
  { definition: BalancerServiceDefinition, processes: ['balancer'] },
  { definition: WorkerServiceDefinition, processes: ['worker', 'worker-2'] },
  { definition: AggregatorServiceDefinition, processes: ['aggregator'] },
];

/** Every method of every maas.* service, from the generated definitions and the descriptors. */
export function fuzzTargets(): FuzzTarget[] {
  const registry = meshRegistry();
  return SERVICES.flatMap(({ definition, processes }) => {
    const service = registry.getService(definition.fullName);
    if (!service) throw new Error(`no descriptor for ${definition.fullName}`);
    return Object.values(definition.methods).map((m) => {
      const desc = service.methods.find((x) => x.name === m.name)!;
      const requestType = m.requestType as { decode(b: Uint8Array): unknown };
      return {
        name: `${definition.fullName}/${m.name}`,
        path: `/${definition.fullName}/${m.name}`,
        kind: desc.methodKind,
        processes,
        request: desc.input,
        decode: (b: Uint8Array) => requestType.decode(b),
      };
    });
  });
}

/** Every maas.* service in the descriptors: the harness must cover each one. */
export function describedServices(): string[] {
  const names: string[] = [];
  for (const type of meshRegistry()) if (type.kind === 'service' && type.typeName.startsWith('maas.')) names.push(type.typeName);
  return names.sort();
}

/** Options of a run. */
export interface FuzzOptions {
  seed: number;
  /** Inputs per method (per transport). */
  inputsPerMethod: number;
  /** Calls in flight at once. */
  concurrency?: number;
  /** Deadline of each call. */
  deadlineMs?: number;
  /** How long memory may take to settle after the run. */
  settleMs?: number;
  /** Inputs per method of the warm-up pass before memory is first read (default 200). */
  warmUpInputs?: number;
  transports?: FuzzTransport[];
  /** Only methods whose name includes one of these (all when empty). */
  only?: string[];
  /** Progress lines. */
  log?: (line: string) => void;
  /** The services' own log lines (warnings and errors), when given. */
  serviceLog?: (line: string) => void;
}

/** Figures of one method under one transport. */
export interface MethodReport {
  method: string;
  transport: string;
  inputs: number;
  /** Service processes that exited while this method was fuzzed. */
  crashes: number;
  hangs: number;
  /** Longest time a call ran past its deadline, in ms (0 if none did). */
  maxOverrunMs: number;
  wrongCodes: number;
  /** Error messages that were too long or echoed a long input string. */
  echoes: number;
  /** Status name -> count. */
  statuses: Record<string, number>;
  /** Strategy -> inputs. */
  strategies: Partial<Record<Strategy, number>>;
  /** Up to 5 examples of each failure, for reproduction. */
  failures: string[];
  /** Time this method took, in ms. */
  durationMs: number;
}

/** Memory of one process. */
export interface MemoryReport {
  process: string;
  beforeKb: number;
  afterKb: number;
}

/** What a run found. */
export interface FuzzReport {
  seed: number;
  inputsPerMethod: number;
  deadlineMs: number;
  durationMs: number;
  methods: MethodReport[];
  memory: MemoryReport[];
  /** Processes that exited during the run (should be none). */
  exits: string[];
  /** Processes that did not answer health SERVING afterwards. */
  unhealthy: string[];
  /** Services of the descriptors that no target covers. */
  uncovered: string[];
}

/** True when the report shows no failure of any kind. */
export function passed(report: FuzzReport): boolean {
  return (
    report.exits.length === 0 &&
    report.unhealthy.length === 0 &&
    report.uncovered.length === 0 &&
    report.methods.every((m) => m.crashes === 0 && m.hangs === 0 && m.wrongCodes === 0 && m.echoes === 0) &&
    report.memory.every((m) => m.afterKb <= m.beforeKb * (1 + MEMORY_TOLERANCE))
  );
}

/** Resident memory of a process, in kB (VmRSS). */
export async function residentKb(pid: number): Promise<number> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(text);
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

/**
 * Resident memory after a full garbage collection: the services run with --expose-gc and collect
 * on SIGUSR2 (a test-only path), so the reading counts what is retained.
 */
async function retainedKb(pid: number): Promise<number> {
  try {
    process.kill(pid, 'SIGUSR2');
  } catch {
    return NaN;
  }
  await sleep(1000);
  return residentKb(pid).catch(() => NaN);
}

/** Checks on values that must never leave loopback or the mesh's temporary folder, by field (camelCase, as decoded). */
const SAFE_VALUES: Record<string, (value: string, workerIds: readonly string[]) => boolean> = {
  address: (v) => v === '' || v === SAFE_WORKER_ADDRESS,
  callbackUrl: (v) => {
    if (!URL.canParse(v)) return true;
    const url = new URL(v);
    return url.hostname === '127.0.0.1' && url.port === '1';
  },
  // Relative names only: the children's working directory is a fresh temporary folder.
  file: (v) => !v.includes('/') && !v.includes('\\') && v !== '.' && v !== '..',
  outputFile: (v) => !v.includes('/') && !v.includes('\\') && v !== '.' && v !== '..',
  // A fuzzed Join must not take over a real worker's place (that is issue 8 point 3's to stop).
  workerId: (v, ids) => !ids.includes(v),
};

/**
 * Whether the server, decoding these bytes as it does, would see only safe values in the fields
 * that reach files, the network or the routing table. Bytes it cannot decode are safe.
 */
export function safeToSend(target: FuzzTarget, bytes: Uint8Array, workerIds: readonly string[]): boolean {
  let decoded: unknown;
  try {
    decoded = target.decode(bytes);
  } catch {
    return true;
  }
  const visit = (value: unknown, depth: number): boolean => {
    if (depth > 40 || value === null || typeof value !== 'object') return true;
    for (const [key, v] of Object.entries(value)) {
      if (typeof v === 'string' && key in SAFE_VALUES && !SAFE_VALUES[key](v, workerIds)) return false;
      if (typeof v === 'object' && !visit(v, depth + 1)) return false;
    }
    return true;
  };
  return visit(decoded, 0);
}

/** Generators for the same fields, by proto name, so most inputs are safe as generated. */
function restrictedFields(): Record<string, (random: Random) => string> {
  const pick = (values: string[]) => (random: Random) => values[Math.floor(random() * values.length)];
  return {
    address: pick(['', SAFE_WORKER_ADDRESS]),
    callback_url: pick(['', SAFE_CALLBACK_URL, 'not a url']),
    file: pick(['', 'records.jsonl', 'missing file', 'a\u0000b', 'x'.repeat(300)]),
    output_file: pick(['', 'out.jsonl', 'missing-dir\u0000', 'y'.repeat(300)]),
    worker_id: pick(['', 'fuzz-worker', 'fuzz-worker-2']),
  };
}

const statusName = (code: number) => status[code] ?? `CODE_${code}`;

/** Runs the fuzz: starts the mesh, fuzzes every method, checks health and memory, stops the mesh. */
export async function runFuzz(o: FuzzOptions): Promise<FuzzReport> {
  const log = o.log ?? (() => undefined);
  const concurrency = o.concurrency ?? 16;
  const deadlineMs = o.deadlineMs ?? 3000;
  const transports = o.transports ?? [PLAINTEXT];
  const started = Date.now();
  const dist = resolve(__dirname, '../..');
  const cwd = mkdtempSync(join(tmpdir(), 'maas-fuzz-'));
  const exits: string[] = [];
  const abort = new AbortController();
  log(`seed ${o.seed}; ${o.inputsPerMethod} inputs per method; deadline ${deadlineMs} ms; ${concurrency} calls at once`);
  let mesh: LocalMesh | undefined;
  try {
    mesh = await startLocalMesh({
      distDir: dist,
      repoDir: resolve(dist, '..'),
      cwd,
      model: 'spam-nb',
      startTimeoutMs: 180_000,
      signal: abort.signal,
      log: o.serviceLog ?? (() => undefined),
      onUnexpectedExit: (message) => {
        exits.push(message);
        log(message);
      },
      workers: 2,
      aggregator: true,
      logLevel: o.serviceLog ? 'warn' : 'silent',
      nodeFlags: ['--expose-gc'],
    });
    const processes: FuzzProcess[] = mesh.processes.map((p) => ({ ...p }));
    const byName = new Map(processes.map((p) => [p.name, p]));
    const workerIds = ['bench-worker', 'bench-worker-2'];
    let targets = fuzzTargets();
    const covered = new Set(targets.map((t) => t.name.split('/')[0]));
    const uncovered = describedServices().filter((s) => !covered.has(s));
    if (o.only && o.only.length > 0) targets = targets.filter((t) => o.only!.some((x) => t.name.includes(x)));

    // A real job, so Get, Watch and Cancel meet a job that exists now and then.
    const gatewayClient = new RawClient(byName.get('gateway')!.address);
    const submitted = await gatewayClient.unary(
      '/maas.v1.JobService/Submit',
      SubmitRequest.encode({ spec: JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'inline', inline: { records: [{ text: 'a b c', label: '' }] } } }) }).finish(),
      { deadlineMs: 10_000 },
    );
    gatewayClient.close();
    const knownJobIds = submitted.code === status.OK ? await firstJobIds(mesh.dataDir) : [];
    const dictionary = ['echo', 'spam-nb', 'ngram', ...MAPPER_NAMES, ...DATASET_NAMES, 'sum', 'top_k', 'accuracy', 'collect', 'mean', 'anonymous', 'spam', 'ham', ...knownJobIds];

    const random = mulberry32(o.seed);
    const fuzzer = new MessageFuzzer(random, { dictionary, restricted: restrictedFields() });

    // Warm-up, not counted: a job over a built-in dataset (which the scheduler and the workers
    // then keep loaded), and a short fuzz pass of every method, so caches and lazily built state
    // exist before memory is first read. Memory after the run is compared with this.
    const clients = new Map<string, RawClient>();
    const clientFor = (transport: FuzzTransport, p: FuzzProcess) => {
      const key = `${transport.name}|${p.name}`;
      let c = clients.get(key);
      if (!c) {
        const ch = transport.channel(p);
        c = new RawClient(p.address, ch.credentials, ch.options ?? RAW_CHANNEL_OPTIONS);
        clients.set(key, c);
      }
      return c;
    };
    const datasetJob = SubmitRequest.encode({ spec: JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'dataset', dataset: DATASET_NAMES[0] } }) }).finish();
    await clientFor(transports[0], byName.get('gateway')!).unary('/maas.v1.JobService/Submit', datasetJob, { deadlineMs: 30_000 });
    const warmUp = o.warmUpInputs ?? 200;
    for (const target of targets) {
      await fuzzMethod(target, transports[0], warmUp, concurrency, deadlineMs, fuzzer, random, (i) => clientFor(transports[0], byName.get(target.processes[i % target.processes.length])!), workerIds);
    }
    await cancelUnfinishedJobs(mesh.dataDir, byName.get('scheduler')!.address);
    await sleep(3000);
    const before = new Map<string, number>();
    for (const p of processes) before.set(p.name, await retainedKb(p.pid));

    const methods: MethodReport[] = [];
    for (const transport of transports) {
      for (const target of targets) {
        const exitsBefore = exits.length;
        const report = await fuzzMethod(target, transport, o.inputsPerMethod, concurrency, deadlineMs, fuzzer, random, (i) => clientFor(transport, byName.get(target.processes[i % target.processes.length])!), workerIds);
        report.crashes = exits.length - exitsBefore;
        methods.push(report);
        log(
          `${target.name} [${transport.name}]: ${report.inputs} inputs in ${(report.durationMs / 1000).toFixed(1)} s, ${report.hangs} hangs (max overrun ${Math.round(report.maxOverrunMs)} ms), ${report.wrongCodes} wrong codes, ${report.echoes} echoes; ${formatStatuses(report.statuses)}`,
        );
        for (const f of report.failures) log(`  ${f}`);
      }
    }
    for (const c of clients.values()) c.close();

    const unhealthy: string[] = [];
    for (const p of processes) if (!(await serving(p.address))) unhealthy.push(p.name);

    // Jobs the fuzz submitted would keep the mesh busy: cancel them, then let memory settle.
    await cancelUnfinishedJobs(mesh.dataDir, byName.get('scheduler')!.address);
    const settleUntil = Date.now() + (o.settleMs ?? 60_000);
    let memory: MemoryReport[] = [];
    for (;;) {
      memory = [];
      for (const p of processes) memory.push({ process: p.name, beforeKb: before.get(p.name)!, afterKb: await retainedKb(p.pid) });
      if (memory.every((m) => m.afterKb <= m.beforeKb * (1 + MEMORY_TOLERANCE)) || Date.now() > settleUntil) break;
      await sleep(5000);
    }
    return { seed: o.seed, inputsPerMethod: o.inputsPerMethod, deadlineMs, durationMs: Date.now() - started, methods, memory, exits, unhealthy, uncovered };
  } finally {
    abort.abort();
    await mesh?.stop(5000);
    rmSync(cwd, { recursive: true, force: true });
  }
}

async function fuzzMethod(
  target: FuzzTarget,
  transport: FuzzTransport,
  count: number,
  concurrency: number,
  deadlineMs: number,
  fuzzer: MessageFuzzer,
  random: Random,
  clientFor: (i: number) => RawClient,
  workerIds: readonly string[],
): Promise<MethodReport> {
  const startedAt = Date.now();
  const report: MethodReport = { method: target.name, transport: transport.name, inputs: 0, crashes: 0, hangs: 0, maxOverrunMs: 0, wrongCodes: 0, echoes: 0, statuses: {}, strategies: {}, failures: [], durationMs: 0 };
  const examples = new Map<string, number>();
  const note = (kind: string, text: string) => {
    const n = examples.get(kind) ?? 0;
    examples.set(kind, n + 1);
    if (n < 5) report.failures.push(`${kind}: ${text}`);
  };
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      // Inputs are generated in order from the one seeded generator, so a seed replays the run.
      let input: FuzzInput;
      let messages: Uint8Array[];
      for (;;) {
        input = fuzzer.next(target.request);
        const inputs = [input];
        if (target.kind === 'client_streaming' || target.kind === 'bidi_streaming') {
          for (let k = Math.floor(random() * 3); k > 0; k--) inputs.push(fuzzer.next(target.request));
        }
        messages = inputs.map((x) => x.bytes);
        // A stream is well-formed only if every message of it is.
        input = { ...input, wellFormed: inputs.every((x) => x.wellFormed), longStrings: inputs.flatMap((x) => x.longStrings) };
        if (messages.every((m) => safeToSend(target, m, workerIds))) break;
      }
      const roll = random();
      const abandon = target.kind === 'server_streaming' || target.kind === 'bidi_streaming' ? (roll < 0.1 ? 'before' : roll < 0.2 ? 'after-first' : undefined) : undefined;
      const outcome = await call(clientFor(i), target, input, messages, deadlineMs, abandon);
      report.inputs++;
      report.strategies[input.strategy] = (report.strategies[input.strategy] ?? 0) + 1;
      const name = outcome.abandoned && outcome.code === status.CANCELLED ? 'CANCELLED (abandoned)' : statusName(outcome.code);
      report.statuses[name] = (report.statuses[name] ?? 0) + 1;
      const describe = () => `input #${i} (${input.strategy}, ${input.bytes.length} bytes): ${statusName(outcome.code)} "${outcome.details.slice(0, 200)}"`;
      const overrun = outcome.elapsedMs - deadlineMs;
      if (overrun > report.maxOverrunMs) report.maxOverrunMs = overrun;
      if (overrun > HANG_GRACE_MS) {
        report.hangs++;
        note('hang', `${describe()} after ${Math.round(outcome.elapsedMs)} ms`);
      }
      if (isWrongCode(outcome, input)) {
        report.wrongCodes++;
        note('wrong code', describe());
      }
      if (outcome.details.length > MAX_MESSAGE_CHARS || input.longStrings.some((s) => outcome.details.includes(s.slice(0, 64)))) {
        report.echoes++;
        note('echo', `${describe()} (${outcome.details.length} characters)`);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  report.durationMs = Date.now() - startedAt;
  return report;
}

/** UNKNOWN is always wrong; INTERNAL only passes as grpc-js's parse error for bytes that are not well-formed. */
export function isWrongCode(outcome: CallOutcome, input: FuzzInput): boolean {
  if (outcome.code === status.UNKNOWN) return true;
  if (outcome.code !== status.INTERNAL) return false;
  return input.wellFormed || outcome.details !== GRPC_PARSE_ERROR;
}

function call(client: RawClient, target: FuzzTarget, input: FuzzInput, messages: Uint8Array[], deadlineMs: number, abandon: 'before' | 'after-first' | undefined): Promise<CallOutcome> {
  const options = { deadlineMs, abandon };
  switch (target.kind) {
    case 'unary':
      return client.unary(target.path, input.bytes, options);
    case 'server_streaming':
      return client.serverStream(target.path, input.bytes, options);
    case 'client_streaming':
      return client.clientStream(target.path, messages, options);
    default:
      return client.bidiStream(target.path, messages, options);
  }
}

/** Ids of jobs in the scheduler's store (the one the harness submitted, at the start). */
async function firstJobIds(dataDir: string): Promise<string[]> {
  const db = new Database(join(dataDir, 'scheduler', 'scheduler.sqlite'), { readonly: true, fileMustExist: true });
  try {
    return (db.prepare('SELECT id FROM jobs').all() as { id: string }[]).map((r) => r.id);
  } finally {
    db.close();
  }
}

/** Cancels every queued or running job through the scheduler (the fuzz submits some under random tenants). */
async function cancelUnfinishedJobs(dataDir: string, scheduler: string): Promise<void> {
  const db = new Database(join(dataDir, 'scheduler', 'scheduler.sqlite'), { readonly: true, fileMustExist: true });
  let jobs: { id: string; tenant: string }[];
  try {
    jobs = db.prepare("SELECT id, tenant FROM jobs WHERE state IN ('queued', 'running')").all() as { id: string; tenant: string }[];
  } finally {
    db.close();
  }
  const client = new RawClient(scheduler);
  try {
    await Promise.all(jobs.map((j) => client.unary('/maas.internal.v1.SchedulerService/CancelJob', CancelJobRequest.encode({ tenant: j.tenant, jobId: j.id }).finish(), { deadlineMs: 10_000 })));
  } finally {
    client.close();
  }
}

/** True when the process answers grpc.health.v1 Check with SERVING. */
async function serving(address: string): Promise<boolean> {
  const client = new RawClient(address);
  try {
    const outcome = await client.unary('/grpc.health.v1.Health/Check', HealthCheckRequest.encode({ service: '' }).finish(), { deadlineMs: 5000 });
    return outcome.code === status.OK && outcome.reply !== undefined && HealthCheckResponse.decode(outcome.reply).status === HealthCheckResponse_ServingStatus.SERVING;
  } finally {
    client.close();
  }
}

/** "OK 12, INVALID_ARGUMENT 40, ..." by count, largest first. */
export function formatStatuses(statuses: Record<string, number>): string {
  return Object.entries(statuses)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
}

/** The report as Markdown: a table of methods, one of memory, and any failure. */
export function formatReport(r: FuzzReport): string {
  const mb = (kb: number) => (kb / 1024).toFixed(1);
  const total = r.methods.reduce((n, m) => n + m.inputs, 0);
  const lines = [
    `Seed ${r.seed}; ${r.inputsPerMethod} inputs per method (${total} in all); each call's deadline ${r.deadlineMs} ms; ${(r.durationMs / 1000).toFixed(0)} s in all. Memory is VmRSS after a full GC (services run with --expose-gc; SIGUSR2 collects). Strategies: ${STRATEGIES.join(', ')}.`,
    '',
    '| method | transport | inputs | seconds | crashes | hangs | max overrun (ms) | wrong codes | echoes | statuses |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|---|',
    ...r.methods.map(
      (m) =>
        `| ${m.method} | ${m.transport} | ${m.inputs} | ${(m.durationMs / 1000).toFixed(0)} | ${m.crashes} | ${m.hangs} | ${Math.max(0, Math.round(m.maxOverrunMs))} | ${m.wrongCodes} | ${m.echoes} | ${formatStatuses(m.statuses)} |`,
    ),
    '',
    '| process | memory before (MB) | after (MB) | change |',
    '|---|---:|---:|---:|',
    ...r.memory.map((m) => `| ${m.process} | ${mb(m.beforeKb)} | ${mb(m.afterKb)} | ${(((m.afterKb - m.beforeKb) / m.beforeKb) * 100).toFixed(0)}% |`),
    '',
    `Process exits: ${r.exits.length === 0 ? 'none' : r.exits.join('; ')}. Health afterwards: ${r.unhealthy.length === 0 ? 'every process SERVING' : `not SERVING: ${r.unhealthy.join(', ')}`}.${r.uncovered.length > 0 ? ` Services not fuzzed: ${r.uncovered.join(', ')}.` : ''}`,
  ];
  const failures = r.methods.flatMap((m) => m.failures.map((f) => `- ${m.method}: ${f}`));
  if (failures.length > 0) lines.push('', 'Failures (first of each kind per method):', '', ...failures);
  return lines.join('\n');
}
