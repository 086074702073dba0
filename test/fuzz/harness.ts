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
 * - every process's resident memory returns to within 20% of where it started;
 * - hostile files, output files and callback URLs (see ./hostile) are refused at submit, nothing
 *   outside the roots is read (a canary word never appears in a reply, a store or an output) or
 *   written, and no callback reaches the HTTP listener on 127.0.0.1 that their URLs name;
 * - the real workers are still in the balancer's routing table afterwards.
 *
 * The mesh runs in one of two modes: plaintext (one transport), or mutual TLS as `maas up --tls`
 * runs it (certificates made in the run's temporary folder, API keys at the gateway), with one
 * transport per kind of caller ({@link FuzzTransport}): public methods with an API key and
 * without one; internal methods as the identity METHOD_POLICY allows, as a wrong identity and
 * with no client certificate. Transports that must be turned away check that every call is.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import { ChannelCredentials, Metadata, credentials, status } from '@grpc/grpc-js';
import { DescMessage } from '@bufbuild/protobuf';
import { LocalMesh, startLocalMesh } from '../../bench/local-mesh';
import { MAPPER_NAMES } from '../../common/batch';
import { MeshCertificates, createMeshCertificates } from '../../common/certs';
import { METHOD_POLICY, MeshService } from '../../common/mesh-identity';
import { toolCredentials } from '../../common/tls';
import { DATASET_NAMES } from '../../common/datasets';
import { meshRegistry } from '../../common/descriptors';
import { MAX_MESSAGE_CHARS } from '../../common/errors';
import { Random, mulberry32 } from '../../common/random';
import { HealthCheckRequest, HealthCheckResponse, HealthCheckResponse_ServingStatus } from '../../generated/grpc/health/v1/health';
import { AggregatorServiceDefinition } from '../../generated/maas/internal/v1/aggregator';
import { BalancerServiceDefinition, ListWorkersRequest, ListWorkersResponse } from '../../generated/maas/internal/v1/balancer';
import { CancelJobRequest, SchedulerServiceDefinition, SubmitJobRequest } from '../../generated/maas/internal/v1/scheduler';
import { WorkerServiceDefinition } from '../../generated/maas/internal/v1/worker';
import { GRPCInferenceServiceDefinition } from '../../generated/inference/grpc_service';
import { InferenceServiceDefinition } from '../../generated/maas/v1/inference';
import { JobServiceDefinition, JobSpec, SubmitRequest } from '../../generated/maas/v1/jobs';
import { MeshServiceDefinition } from '../../generated/maas/v1/mesh';
import { ModelServiceDefinition } from '../../generated/maas/v1/models';
import { CallOutcome, RAW_CHANNEL_OPTIONS, RawCallOptions, RawClient } from '../raw-grpc';
import { FuzzInput, MessageFuzzer, STRATEGIES, Strategy } from './generators';
import { CANARY_WORD, HostileValues, harmlessCallbackUrl, harmlessPath, hostileValues, refusedAtSubmit } from './hostile';
import { StallMonitor } from './stall-monitor';

/** grpc-js's own status message for request bytes that do not parse as the message. */
export const GRPC_PARSE_ERROR = 'Error deserializing request';
/** A call that ends later than its deadline plus this counts as a hang. */
export const HANG_GRACE_MS = 1000;
/** Memory may end at most this much above where it started. */
export const MEMORY_TOLERANCE = 0.2;
/** The address a fuzzed worker may advertise: a loopback port where nothing listens. */
export const SAFE_WORKER_ADDRESS = '127.0.0.1:1';
/** Worker ids of the mesh's real workers (bench/local-mesh). */
export const REAL_WORKER_IDS = ['bench-worker', 'bench-worker-2'];
/** The worker identity the fuzzer joins and commits as over mutual TLS: not a real worker's. */
export const FUZZ_WORKER_ID = 'fuzz-worker';
/** The tenant of the gateway's API key in TLS mode. */
export const FUZZ_TENANT = 'fuzz';

/** A process of the mesh the harness can call. */
export interface FuzzProcess {
  name: string;
  address: string;
  pid: number;
}

/** How the mesh runs: plaintext on loopback, or mutual TLS between every service. */
export type FuzzMode = 'plaintext' | 'tls';

/**
 * How the harness reaches a process: which methods it is for, and per method the credentials (the
 * certificate presented, if any), channel options and metadata. `refusedWith` marks a caller the
 * mesh must turn away: every call must get that status (the inputs never reach a handler).
 */
export interface FuzzTransport {
  /** Shown in the report, e.g. "plaintext" or "mTLS, wrong identity". */
  name: string;
  appliesTo(target: FuzzTarget): boolean;
  connect(target: FuzzTarget): { label: string; credentials: ChannelCredentials; options: object };
  metadata?(): Metadata;
  refusedWith?: status;
}

/** Plaintext, as the mesh runs on loopback by default. */
export const PLAINTEXT: FuzzTransport = {
  name: 'plaintext',
  appliesTo: () => true,
  connect: () => ({ label: 'plaintext', credentials: credentials.createInsecure(), options: RAW_CHANNEL_OPTIONS }),
};

const isPublic = (target: FuzzTarget) => isPublicService(target.name);

/** The gateway's public services: maas.v1 and the KServe v2 protocol (package inference). */
export const isPublicService = (name: string) => name.startsWith('maas.v1.') || name.startsWith('inference.');

/**
 * Public methods that answer without an API key, as health does: the KServe v2 liveness and
 * readiness probes (load balancers and orchestrators call them without credentials).
 */
export const KEYLESS_PUBLIC_METHODS: readonly string[] = ['inference.GRPCInferenceService/ServerLive', 'inference.GRPCInferenceService/ServerReady'];

/** Certificate names (as createMeshCertificates names them) of the callers the harness can be. */
const CALLERS: { cert: string; service: MeshService }[] = [
  { cert: `workers/${FUZZ_WORKER_ID}`, service: 'worker' },
  { cert: 'operator', service: 'operator' },
  { cert: 'gateway', service: 'gateway' },
  { cert: 'scheduler', service: 'scheduler' },
  { cert: 'balancer', service: 'balancer' },
  { cert: 'aggregator', service: 'aggregator' },
];

/** The certificate METHOD_POLICY allows for an internal method (the worker: the fuzzer's own worker id). */
export function allowedCaller(target: FuzzTarget): string {
  const allowed = METHOD_POLICY[target.path];
  if (!Array.isArray(allowed) || allowed.length === 0) throw new Error(`METHOD_POLICY names no caller of ${target.path}`);
  return CALLERS.find((c) => c.service === allowed[0])!.cert;
}

/** A mesh certificate METHOD_POLICY does not allow for an internal method (a worker's where it can be). */
export function wrongCaller(target: FuzzTarget): string {
  const allowed = METHOD_POLICY[target.path];
  const wrong = CALLERS.find((c) => Array.isArray(allowed) && !allowed.includes(c.service));
  if (!wrong) throw new Error(`every identity may call ${target.path}`);
  return wrong.cert;
}

/** The transports of a TLS mesh with these certificates and the gateway's API key. */
export function tlsTransports(certs: MeshCertificates, apiKey: string): FuzzTransport[] {
  const ca = readFileSync(certs.ca);
  const made = new Map<string, ChannelCredentials>();
  // One set of credentials per certificate: grpc-js shares a connection between equal ones.
  const as = (name: string | undefined, label?: string) => {
    const key = name ?? '';
    let c = made.get(key);
    if (!c) {
      const files = name === undefined ? undefined : certs.certs[name];
      if (name !== undefined && !files) throw new Error(`no certificate named ${name} in ${certs.dir}`);
      c = toolCredentials(ca, files && { cert: readFileSync(files.cert), key: readFileSync(files.key) });
      made.set(key, c);
    }
    // SNI cannot be an IP address; every certificate of the mesh names localhost.
    return { label: label ?? name ?? 'no client certificate', credentials: c, options: { ...RAW_CHANNEL_OPTIONS, 'grpc.ssl_target_name_override': 'localhost' } };
  };
  const bearer = () => {
    const m = new Metadata();
    m.set('authorization', `Bearer ${apiKey}`);
    return m;
  };
  return [
    { name: 'TLS, API key', appliesTo: isPublic, connect: () => as(undefined, `API key of tenant ${FUZZ_TENANT}`), metadata: bearer },
    { name: 'mTLS, allowed identity', appliesTo: (t) => !isPublic(t), connect: (t) => as(allowedCaller(t)) },
    { name: 'TLS, no API key', appliesTo: (t) => isPublic(t) && !KEYLESS_PUBLIC_METHODS.includes(t.name), connect: () => as(undefined, 'no API key'), refusedWith: status.UNAUTHENTICATED },
    { name: 'mTLS, wrong identity', appliesTo: (t) => !isPublic(t), connect: (t) => as(wrongCaller(t)), refusedWith: status.PERMISSION_DENIED },
    { name: 'TLS, no client certificate', appliesTo: (t) => !isPublic(t), connect: () => as(undefined), refusedWith: status.UNAVAILABLE },
  ];
}

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
  { definition: GRPCInferenceServiceDefinition, processes: ['gateway'] },
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

/** Every maas.* and inference.* service in the descriptors: the harness must cover each one. */
export function describedServices(): string[] {
  const names: string[] = [];
  for (const type of meshRegistry()) if (type.kind === 'service' && (type.typeName.startsWith('maas.') || type.typeName.startsWith('inference.'))) names.push(type.typeName);
  return names.sort();
}

/** Options of a run. */
export interface FuzzOptions {
  seed: number;
  /** Plaintext (default) or mutual TLS. */
  mode?: FuzzMode;
  /** Inputs per method, for each transport whose inputs reach the handlers. */
  inputsPerMethod: number;
  /** Inputs per method for each transport the mesh must turn away (default: inputsPerMethod). */
  refusedInputsPerMethod?: number;
  /** Calls in flight at once. */
  concurrency?: number;
  /** Deadline of each call. */
  deadlineMs?: number;
  /** How long memory may take to settle after the run. */
  settleMs?: number;
  /** Inputs per method of the warm-up pass before memory is first read (default 200). */
  warmUpInputs?: number;
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
  /** The certificate presented ("plaintext", "gateway", "no client certificate", ...). */
  identity: string;
  inputs: number;
  /** Service processes that exited while this method was fuzzed. */
  crashes: number;
  hangs: number;
  /**
   * Calls that ended over HANG_GRACE_MS late, but whose lateness the fuzzing client's own stalled
   * event loop explains (late minus the client's stalls during the call is within the grace):
   * reported, not counted as hangs.
   */
  clientLate: number;
  /** Longest time a call ran past its deadline, in ms (0 if none did). */
  maxOverrunMs: number;
  wrongCodes: number;
  /** Error messages that were too long or echoed a long input string. */
  echoes: number;
  /** Inputs carrying a hostile file, output file or callback URL that must be refused at submit. */
  hostile: number;
  /** Of those, accepted (OK): a failure. */
  hostileAccepted: number;
  /** Status name -> count, of the inputs carrying a hostile value. */
  hostileStatuses: Record<string, number>;
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
  mode: FuzzMode;
  inputsPerMethod: number;
  refusedInputsPerMethod: number;
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
  /** Reads or writes outside the roots: the canary word found, files made or changed (should be none). */
  escapes: string[];
  /** Requests the callback listener on 127.0.0.1 received (should be 0). */
  callbacksReceived: number;
  /** Jobs whose callback the scheduler's store records as delivered (should be 0). */
  callbacksDelivered: number;
  /** Real workers missing from the balancer's routing table afterwards (should be none). */
  missingWorkers: string[];
}

/** True when the report shows no failure of any kind. */
export function passed(report: FuzzReport): boolean {
  return (
    report.exits.length === 0 &&
    report.unhealthy.length === 0 &&
    report.uncovered.length === 0 &&
    report.escapes.length === 0 &&
    report.callbacksReceived === 0 &&
    report.callbacksDelivered === 0 &&
    report.missingWorkers.length === 0 &&
    report.methods.every((m) => m.crashes === 0 && m.hangs === 0 && m.wrongCodes === 0 && m.echoes === 0 && m.hostileAccepted === 0) &&
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
 * Resident memory after a last-resort garbage collection: the services run with --expose-gc and collect
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

/** What a fuzzed value may be, by field (camelCase, as decoded), so that the fuzz stays harmless. */
interface Safety {
  hostile: HostileValues;
  /** Plaintext: a fuzzed Join must not take a real worker's id (nothing authenticates it). */
  protectWorkerIds: boolean;
}

/**
 * Whether the server, decoding these bytes as it does, would see only harmless values in the
 * fields that reach files, the network or the routing table: a worker address only 127.0.0.1:1;
 * a file or output file only one of the hostile list (which aims only into the run's folders or
 * at devices) or a plain name; a callback URL only with a non-public literal address or
 * localhost; in plaintext, no real worker's id. Bytes it cannot decode are harmless.
 */
export function safeToSend(target: FuzzTarget, bytes: Uint8Array, safety: Safety): boolean {
  let decoded: unknown;
  try {
    decoded = target.decode(bytes);
  } catch {
    return true;
  }
  const check = (key: string, v: string): boolean => {
    switch (key) {
      case 'address':
        return v === '' || v === SAFE_WORKER_ADDRESS;
      case 'callbackUrl':
        return harmlessCallbackUrl(v);
      case 'file':
        return harmlessPath(v, safety.hostile.file);
      case 'outputFile':
        return harmlessPath(v, safety.hostile.outputFile);
      case 'workerId':
        return !safety.protectWorkerIds || !REAL_WORKER_IDS.includes(v);
      default:
        return true;
    }
  };
  const visit = (value: unknown, depth: number): boolean => {
    if (depth > 40 || value === null || typeof value !== 'object') return true;
    for (const [key, v] of Object.entries(value)) {
      if (typeof v === 'string' && !check(key, v)) return false;
      if (typeof v === 'object' && !visit(v, depth + 1)) return false;
    }
    return true;
  };
  return visit(decoded, 0);
}

/** The hostile values a decoded submit carries that must be refused there, as "field=value" (short). */
function hostileAtSubmit(target: FuzzTarget, bytes: Uint8Array, hostile: HostileValues): string[] {
  if (!/\/(Submit|SubmitJob)$/.test(target.path)) return [];
  let decoded: { spec?: { input?: { $case: string; file?: string }; outputFile?: string; callbackUrl?: string } };
  try {
    decoded = target.decode(bytes) as typeof decoded;
  } catch {
    return [];
  }
  const spec = decoded.spec;
  if (!spec) return [];
  // The symlink out is made only in the folders of the tenants the harness prepared.
  const tenant = (decoded as { tenant?: string }).tenant;
  const prepared = tenant === undefined || PREPARED_TENANTS.includes(tenant);
  const found: string[] = [];
  if (spec.input?.$case === 'file' && refusedAtSubmit('file', spec.input.file ?? '', hostile)) found.push(`file=${JSON.stringify(spec.input.file!.slice(0, 80))}`);
  if (spec.outputFile && (prepared || !spec.outputFile.startsWith('link-out/')) && refusedAtSubmit('outputFile', spec.outputFile, hostile)) found.push(`output_file=${JSON.stringify(spec.outputFile.slice(0, 80))}`);
  if (spec.callbackUrl && refusedAtSubmit('callbackUrl', spec.callbackUrl, hostile)) found.push(`callback_url=${JSON.stringify(spec.callbackUrl.slice(0, 80))}`);
  return found;
}

/** Tenants whose output folders hold the symlink out (the gateway's, in each mode). */
const PREPARED_TENANTS = ['anonymous', FUZZ_TENANT];

/** Codes a valid job with one hostile value may get: refused for its path or address (or a limit, or the deadline under load). */
const HOSTILE_REFUSALS: readonly number[] = [status.PERMISSION_DENIED, status.INVALID_ARGUMENT, status.NOT_FOUND, status.RESOURCE_EXHAUSTED, status.DEADLINE_EXCEEDED];

/**
 * A job that is valid but for one hostile value (a file, an output file or a callback URL of the
 * lists), as Submit or SubmitJob take it: random inputs seldom get past every other check, these
 * reach the path and address checks. Undefined for other methods.
 */
function hostileJob(target: FuzzTarget, random: Random, hostile: HostileValues, tenants: readonly string[]): FuzzInput | undefined {
  const submit = target.path === '/maas.v1.JobService/Submit';
  if (!submit && target.path !== '/maas.internal.v1.SchedulerService/SubmitJob') return undefined;
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(random() * xs.length)];
  const records = { $case: 'inline' as const, inline: { records: [{ text: 'free prize now', label: '' }] } };
  const wordcount = { $case: 'mapper' as const, mapper: 'wordcount' };
  let spec: JobSpec;
  switch (pick(['file', 'outputFile', 'callbackUrl'] as const)) {
    case 'file':
      spec = JobSpec.fromPartial({ map: wordcount, input: { $case: 'file', file: pick(hostile.file) } });
      break;
    case 'outputFile':
      spec = JobSpec.fromPartial({ map: { $case: 'model', model: 'spam-nb' }, input: records, reducer: 'collect', outputFile: pick(hostile.outputFile), overwriteOutput: random() < 0.5 });
      break;
    default:
      spec = JobSpec.fromPartial({ map: wordcount, input: records, callbackUrl: pick(hostile.callbackUrl) });
  }
  const bytes = submit ? SubmitRequest.encode({ spec }).finish() : SubmitJobRequest.encode({ tenant: pick(tenants), spec }).finish();
  return { strategy: 'hostile-job', bytes, wellFormed: true, longStrings: [] };
}

/** Generators for the same fields, by proto name: the hostile lists, and worker ids. */
function restrictedFields(hostile: HostileValues, mode: FuzzMode): Record<string, (random: Random) => string> {
  const pick = (values: string[]) => (random: Random) => values[Math.floor(random() * values.length)];
  return {
    address: pick(['', SAFE_WORKER_ADDRESS]),
    callback_url: pick(hostile.callbackUrl),
    file: pick(hostile.file),
    output_file: pick(hostile.outputFile),
    // Over mutual TLS a Join may name a real worker's id: the balancer must refuse it, since the
    // certificate names another. In plaintext nothing can, so the fuzz does not try.
    worker_id: pick(mode === 'tls' ? ['', FUZZ_WORKER_ID, `${FUZZ_WORKER_ID}-2`, ...REAL_WORKER_IDS] : ['', 'fuzz-worker', 'fuzz-worker-2']),
  };
}

const statusName = (code: number) => status[code] ?? `CODE_${code}`;

/** Every file under `dir` (not following symlinks) -> "size mtime", for comparing before and after. */
function snapshot(dir: string, skip: (path: string) => boolean = () => false): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const path = join(d, name);
      if (skip(path)) continue;
      const st = lstatSync(path);
      out.set(path, st.isDirectory() ? 'dir' : `${st.size} ${st.mtimeMs}`);
      if (st.isDirectory()) walk(path);
    }
  };
  walk(dir);
  return out;
}

/** Files under `dir` whose bytes hold `word`. */
function filesHolding(dir: string, word: string, except: string[]): string[] {
  const needle = Buffer.from(word);
  const found: string[] = [];
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const path = join(d, name);
      const st = lstatSync(path);
      if (st.isDirectory()) walk(path);
      else if (st.isFile() && !except.includes(path) && readFileSync(path).includes(needle)) found.push(path);
    }
  };
  walk(dir);
  return found;
}

/** A listener on 127.0.0.1 that counts every request (no callback may ever reach it). */
async function startListener(): Promise<{ port: number; received: () => number; close: () => Promise<void> }> {
  let received = 0;
  const server = createServer((req, res) => {
    received++;
    res.statusCode = 204;
    res.end();
  });
  server.on('connection', () => received++);
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  return {
    port: (server.address() as { port: number }).port,
    received: () => received,
    close: () => new Promise((ok) => server.close(() => ok())),
  };
}

/** Runs the fuzz: starts the mesh, fuzzes every method, checks health and memory, stops the mesh. */
export async function runFuzz(o: FuzzOptions): Promise<FuzzReport> {
  const log = o.log ?? (() => undefined);
  const mode = o.mode ?? 'plaintext';
  const concurrency = o.concurrency ?? 16;
  const deadlineMs = o.deadlineMs ?? 3000;
  const refusedInputs = o.refusedInputsPerMethod ?? o.inputsPerMethod;
  const started = Date.now();
  const dist = resolve(__dirname, '../..');
  const cwd = mkdtempSync(join(tmpdir(), 'maas-fuzz-'));
  const exits: string[] = [];
  const abort = new AbortController();
  const listener = await startListener();
  log(`${mode}: seed ${o.seed}; ${o.inputsPerMethod} inputs per method (${refusedInputs} for callers that must be refused); deadline ${deadlineMs} ms; ${concurrency} calls at once`);
  let mesh: LocalMesh | undefined;
  try {
    let transports: FuzzTransport[] = [PLAINTEXT];
    let certs: MeshCertificates | undefined;
    const apiKey = randomBytes(24).toString('base64url');
    if (mode === 'tls') {
      certs = await createMeshCertificates(join(cwd, 'certs'), { workers: [...REAL_WORKER_IDS, FUZZ_WORKER_ID] });
      transports = tlsTransports(certs, apiKey);
    }
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
      certs,
      apiKey: certs ? apiKey : undefined,
      extraArgs: certs ? { gateway: ['--api-keys', `${FUZZ_TENANT}=${apiKey}`] } : undefined,
    });
    const processes: FuzzProcess[] = mesh.processes.map((p) => ({ ...p }));
    const byName = new Map(processes.map((p) => [p.name, p]));
    let targets = fuzzTargets();
    const covered = new Set(targets.map((t) => t.name.split('/')[0]));
    const uncovered = describedServices().filter((s) => !covered.has(s));
    if (o.only && o.only.length > 0) targets = targets.filter((t) => o.only!.some((x) => t.name.includes(x)));

    // Files: an input file in the root, a canary outside it, symlinks out of both roots.
    const inputRoot = join(mesh.dataDir, 'input');
    const outputRoot = join(mesh.dataDir, 'output');
    const outside = join(cwd, 'outside');
    const canary = join(outside, 'secret.jsonl');
    mkdirSync(inputRoot, { recursive: true });
    mkdirSync(outside, { recursive: true });
    writeFileSync(join(inputRoot, 'records.jsonl'), '{"text":"free prize now"}\n{"text":"see you at lunch"}\n');
    writeFileSync(canary, `{"text":"${CANARY_WORD} ${CANARY_WORD}"}\n`);
    symlinkSync(canary, join(inputRoot, 'link-out.jsonl'));
    symlinkSync(outside, join(inputRoot, 'link-dir'));
    for (const tenant of PREPARED_TENANTS) {
      mkdirSync(join(outputRoot, tenant), { recursive: true });
      symlinkSync(outside, join(outputRoot, tenant, 'link-out'));
    }
    const hostile = hostileValues({ inputRoot, outputRoot, dataDir: mesh.dataDir, outside, canary, listenerPort: listener.port });
    const mustNotExist = [...hostile.mustNotExist, join(outputRoot, 'escaped.jsonl')];
    // Nothing but the stores and the output root may change in the data folder; nothing at all in the working folder.
    const changing = (path: string) => ['scheduler', 'aggregator', 'output'].some((d) => path === join(mesh!.dataDir, d));
    const filesBefore = new Map([...snapshot(cwd), ...snapshot(mesh.dataDir, changing)]);
    const safety: Safety = { hostile, protectWorkerIds: mode === 'plaintext' };

    const clients = new Map<string, RawClient>();
    const clientFor = (transport: FuzzTransport, target: FuzzTarget, p: FuzzProcess) => {
      const ch = transport.connect(target);
      const key = `${transport.name}|${ch.label}|${p.name}`;
      let c = clients.get(key);
      if (!c) {
        c = new RawClient(p.address, ch.credentials, ch.options);
        clients.set(key, c);
      }
      return c;
    };
    // The harness's own calls: to the gateway as a client with the key; inside as the identity allowed.
    const own = (processName: string, path: string) => {
      const target = targets.find((t) => t.path === path) ?? fuzzTargets().find((t) => t.path === path)!;
      const transport = transports.find((t) => t.refusedWith === undefined && t.appliesTo(target))!;
      return { client: clientFor(transport, target, byName.get(processName)!), metadata: transport.metadata?.() };
    };

    // A real job, so Get, Watch and Cancel meet a job that exists now and then.
    const submit = own('gateway', '/maas.v1.JobService/Submit');
    const submitted = await submit.client.unary(
      '/maas.v1.JobService/Submit',
      SubmitRequest.encode({ spec: JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'inline', inline: { records: [{ text: 'a b c', label: '' }] } } }) }).finish(),
      { deadlineMs: 10_000, metadata: submit.metadata },
    );
    if (submitted.code !== status.OK) throw new Error(`the harness's own job was refused: ${statusName(submitted.code)} ${submitted.details}`);
    const knownJobIds = await firstJobIds(mesh.dataDir);
    const dictionary = ['echo', 'spam-nb', 'ngram', ...MAPPER_NAMES, ...DATASET_NAMES, 'sum', 'top_k', 'accuracy', 'collect', 'mean', 'anonymous', FUZZ_TENANT, 'spam', 'ham', ...knownJobIds];

    const random = mulberry32(o.seed);
    const fuzzer = new MessageFuzzer(random, { dictionary, restricted: restrictedFields(hostile, mode) });
    const canaryBytes = Buffer.from(CANARY_WORD);
    const run = (target: FuzzTarget, transport: FuzzTransport, count: number) =>
      fuzzMethod({
        target,
        transport,
        count,
        concurrency,
        deadlineMs,
        fuzzer,
        random,
        safety,
        clientFor: (i) => clientFor(transport, target, byName.get(target.processes[i % target.processes.length])!),
        tenants: PREPARED_TENANTS,
        leaks: (reply) => Buffer.from(reply.buffer, reply.byteOffset, reply.byteLength).includes(canaryBytes),
      });

    // Warm-up, not counted: a job over a built-in dataset (which the scheduler and the workers
    // then keep loaded), and a short fuzz pass of every method under every transport, so caches,
    // connections and lazily built state exist before memory is first read. Memory after the run
    // is compared with this.
    const datasetJob = SubmitRequest.encode({ spec: JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'dataset', dataset: DATASET_NAMES[0] } }) }).finish();
    await submit.client.unary('/maas.v1.JobService/Submit', datasetJob, { deadlineMs: 30_000, metadata: submit.metadata });
    const warmUp = o.warmUpInputs ?? 200;
    for (const transport of transports) {
      for (const target of targets) if (transport.appliesTo(target)) await run(target, transport, transport.refusedWith === undefined ? warmUp : Math.min(warmUp, 50));
    }
    await cancelUnfinishedJobs(mesh.dataDir, own('scheduler', '/maas.internal.v1.SchedulerService/CancelJob').client);
    await sleep(3000);
    const before = new Map<string, number>();
    for (const p of processes) before.set(p.name, await retainedKb(p.pid));

    const methods: MethodReport[] = [];
    for (const transport of transports) {
      for (const target of targets) {
        if (!transport.appliesTo(target)) continue;
        const exitsBefore = exits.length;
        const report = await run(target, transport, transport.refusedWith === undefined ? o.inputsPerMethod : refusedInputs);
        report.crashes = exits.length - exitsBefore;
        methods.push(report);
        log(
          `${target.name} [${transport.name}, ${report.identity}]: ${report.inputs} inputs in ${(report.durationMs / 1000).toFixed(1)} s, ${report.hangs} hangs (max overrun ${Math.round(report.maxOverrunMs)} ms; ${report.clientLate} late with the fuzzing client stalled), ${report.wrongCodes} wrong codes, ${report.echoes} echoes, ${report.hostileAccepted}/${report.hostile} hostile accepted; ${formatStatuses(report.statuses)}`,
        );
        for (const f of report.failures) log(`  ${f}`);
      }
    }

    const unhealthy: string[] = [];
    const healthClient = (p: FuzzProcess) => {
      if (!certs) return new RawClient(p.address);
      const files = certs.certs.operator;
      return new RawClient(p.address, toolCredentials(readFileSync(certs.ca), { cert: readFileSync(files.cert), key: readFileSync(files.key) }), { ...RAW_CHANNEL_OPTIONS, 'grpc.ssl_target_name_override': 'localhost' });
    };
    for (const p of processes) if (!(await serving(healthClient(p)))) unhealthy.push(p.name);
    const missingWorkers = await missingFromRouting(healthClient(byName.get('balancer')!));

    // Jobs the fuzz submitted would keep the mesh busy: cancel them, then let memory settle.
    await cancelUnfinishedJobs(mesh.dataDir, own('scheduler', '/maas.internal.v1.SchedulerService/CancelJob').client);
    for (const c of clients.values()) c.close();
    const settleUntil = Date.now() + (o.settleMs ?? 60_000);
    let memory: MemoryReport[] = [];
    for (;;) {
      memory = [];
      for (const p of processes) memory.push({ process: p.name, beforeKb: before.get(p.name)!, afterKb: await retainedKb(p.pid) });
      if (memory.every((m) => m.afterKb <= m.beforeKb * (1 + MEMORY_TOLERANCE)) || Date.now() > settleUntil) break;
      await sleep(5000);
    }

    // Nothing outside the roots was read (the canary word is nowhere but its file) or written.
    const escapes: string[] = [];
    for (const path of filesHolding(mesh.dataDir, CANARY_WORD, [])) escapes.push(`the canary word is in ${relative(mesh.dataDir, path)}`);
    for (const path of filesHolding(cwd, CANARY_WORD, [canary])) escapes.push(`the canary word is in ${relative(cwd, path)}`);
    for (const m of methods) if (m.failures.some((f) => f.startsWith('leak'))) escapes.push(`${m.method} [${m.transport}] replied with the canary word`);
    const filesAfter = new Map([...snapshot(cwd), ...snapshot(mesh.dataDir, changing)]);
    for (const [path, stat] of filesAfter) if (filesBefore.get(path) !== stat) escapes.push(`${path} ${filesBefore.has(path) ? 'changed' : 'was created'}`);
    for (const path of filesBefore.keys()) if (!filesAfter.has(path)) escapes.push(`${path} was removed`);
    for (const path of mustNotExist) if (existsSync(path)) escapes.push(`${path} was written`);
    const callbacksDelivered = deliveredCallbacks(mesh.dataDir);

    return {
      seed: o.seed,
      mode,
      inputsPerMethod: o.inputsPerMethod,
      refusedInputsPerMethod: refusedInputs,
      deadlineMs,
      durationMs: Date.now() - started,
      methods,
      memory,
      exits,
      unhealthy,
      uncovered,
      escapes,
      callbacksReceived: listener.received(),
      callbacksDelivered,
      missingWorkers,
    };
  } finally {
    abort.abort();
    await mesh?.stop(5000);
    await listener.close();
    rmSync(cwd, { recursive: true, force: true });
  }
}

interface FuzzMethodOptions {
  target: FuzzTarget;
  transport: FuzzTransport;
  count: number;
  concurrency: number;
  deadlineMs: number;
  fuzzer: MessageFuzzer;
  random: Random;
  safety: Safety;
  clientFor: (i: number) => RawClient;
  /** True when a response holds what must never leave the roots. */
  leaks: (message: Buffer | Uint8Array) => boolean;
  /** Tenants a hostile SubmitJob names. */
  tenants: readonly string[];
}

let monitor: StallMonitor | undefined;
/** This process's stall monitor, started on first use (its timer does not hold the process). */
function stalls(): StallMonitor {
  monitor ??= new StallMonitor();
  return monitor;
}

async function fuzzMethod(o: FuzzMethodOptions): Promise<MethodReport> {
  stalls();
  const { target, transport, count, fuzzer, random, deadlineMs } = o;
  const startedAt = Date.now();
  const report: MethodReport = {
    method: target.name,
    transport: transport.name,
    identity: transport.connect(target).label,
    inputs: 0,
    crashes: 0,
    hangs: 0,
    clientLate: 0,
    maxOverrunMs: 0,
    wrongCodes: 0,
    echoes: 0,
    hostile: 0,
    hostileAccepted: 0,
    hostileStatuses: {},
    statuses: {},
    strategies: {},
    failures: [],
    durationMs: 0,
  };
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
      // Now and then (for the submits) a job valid but for one hostile value.
      const crafted = transport.refusedWith === undefined && random() < 0.15 ? hostileJob(target, random, o.safety.hostile, o.tenants) : undefined;
      for (;;) {
        if (crafted) {
          input = crafted;
          messages = [crafted.bytes];
          break;
        }
        input = fuzzer.next(target.request);
        const inputs = [input];
        if (target.kind === 'client_streaming' || target.kind === 'bidi_streaming') {
          for (let k = Math.floor(random() * 3); k > 0; k--) inputs.push(fuzzer.next(target.request));
        }
        messages = inputs.map((x) => x.bytes);
        // A stream is well-formed only if every message of it is.
        input = { ...input, wellFormed: inputs.every((x) => x.wellFormed), longStrings: inputs.flatMap((x) => x.longStrings) };
        if (messages.every((m) => safeToSend(target, m, o.safety))) break;
      }
      const hostile = transport.refusedWith === undefined ? hostileAtSubmit(target, input.bytes, o.safety.hostile) : [];
      const roll = random();
      const abandon = target.kind === 'server_streaming' || target.kind === 'bidi_streaming' ? (roll < 0.1 ? 'before' : roll < 0.2 ? 'after-first' : undefined) : undefined;
      let leaked = false;
      const outcome = await call(o.clientFor(i), target, input, messages, {
        deadlineMs,
        abandon,
        metadata: transport.metadata?.(),
        inspect: (m: Buffer) => {
          leaked ||= o.leaks(m);
        },
      });
      const endedAt = performance.now();
      if (outcome.reply && o.leaks(outcome.reply)) leaked = true;
      report.inputs++;
      report.strategies[input.strategy] = (report.strategies[input.strategy] ?? 0) + 1;
      const name = outcome.abandoned && outcome.code === status.CANCELLED ? 'CANCELLED (abandoned)' : statusName(outcome.code);
      report.statuses[name] = (report.statuses[name] ?? 0) + 1;
      const describe = () => `input #${i} (${input.strategy}, ${input.bytes.length} bytes): ${statusName(outcome.code)} "${outcome.details.slice(0, 200)}"`;
      const overrun = outcome.elapsedMs - deadlineMs;
      if (overrun > report.maxOverrunMs) report.maxOverrunMs = overrun;
      if (overrun > HANG_GRACE_MS) {
        const stalled = stalls().stalledWithin(endedAt - outcome.elapsedMs, endedAt);
        if (overrun - stalled <= HANG_GRACE_MS) {
          report.clientLate++;
          note('late, the fuzzing client stalled', `${describe()} after ${Math.round(outcome.elapsedMs)} ms, ${Math.round(stalled)} ms of them with the client's event loop stalled`);
        } else {
          report.hangs++;
          note('hang', `${describe()} after ${Math.round(outcome.elapsedMs)} ms (the client stalled ${Math.round(stalled)} ms of them)`);
        }
      }
      if (transport.refusedWith === undefined ? isWrongCode(outcome, input) : !isRefusal(outcome, input, transport.refusedWith)) {
        report.wrongCodes++;
        note('wrong code', describe());
      }
      if (outcome.details.length > MAX_MESSAGE_CHARS || input.longStrings.some((s) => outcome.details.includes(s.slice(0, 64)))) {
        report.echoes++;
        note('echo', `${describe()} (${outcome.details.length} characters)`);
      }
      if (hostile.length > 0) {
        report.hostile++;
        report.hostileStatuses[name] = (report.hostileStatuses[name] ?? 0) + 1;
        if (outcome.code === status.OK) {
          report.hostileAccepted++;
          note('hostile accepted', `${describe()} with ${hostile.join(', ')}`);
        } else if (input.strategy === 'hostile-job' && !HOSTILE_REFUSALS.includes(outcome.code) && !outcome.abandoned) {
          report.wrongCodes++;
          note('hostile refused with a wrong code', `${describe()} with ${hostile.join(', ')}`);
        }
      }
      if (leaked) note('leak', `${describe()}: a response holds the canary word`);
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, worker));
  report.durationMs = Date.now() - startedAt;
  return report;
}

/** UNKNOWN is always wrong; INTERNAL only passes as grpc-js's parse error for bytes that are not well-formed. */
export function isWrongCode(outcome: CallOutcome, input: FuzzInput): boolean {
  if (outcome.code === status.UNKNOWN) return true;
  if (outcome.code !== status.INTERNAL) return false;
  return input.wellFormed || outcome.details !== GRPC_PARSE_ERROR;
}

/**
 * True when a caller that must be turned away was: the expected status, or a stream the client
 * abandoned itself, or a deadline (the hang check judges its time). The gateway reads a request
 * before its handler checks the key, so there bytes that do not parse may get grpc-js's parse error.
 */
export function isRefusal(outcome: CallOutcome, input: FuzzInput, expected: status): boolean {
  if (outcome.code === expected) return true;
  if (outcome.abandoned && outcome.code === status.CANCELLED) return true;
  if (outcome.code === status.DEADLINE_EXCEEDED) return true;
  if (expected !== status.UNAUTHENTICATED) return false;
  // Refused before the handler: bytes that do not parse, a 64-bit integer past 2^53 (the
  // decoder), a message over the gateway's size limit (grpc-js, at the edge).
  if (outcome.code === status.INTERNAL) return !input.wellFormed && outcome.details === GRPC_PARSE_ERROR;
  if (outcome.code === status.RESOURCE_EXHAUSTED) return outcome.details.startsWith('Received message larger than max');
  return outcome.code === status.INVALID_ARGUMENT && DECODE_REFUSAL.test(outcome.details);
}

/** The message of a 64-bit integer the decoder refuses (common/middleware.ts, common/wire-integers.ts). */
const DECODE_REFUSAL = /must be from -9007199254740991 to 9007199254740991 \(2\^53 - 1\), given /;

function call(client: RawClient, target: FuzzTarget, input: FuzzInput, messages: Uint8Array[], options: RawCallOptions): Promise<CallOutcome> {
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

/** Jobs whose callback the scheduler's store records as delivered. */
function deliveredCallbacks(dataDir: string): number {
  const db = new Database(join(dataDir, 'scheduler', 'scheduler.sqlite'), { readonly: true, fileMustExist: true });
  try {
    return (db.prepare("SELECT COUNT(*) AS n FROM jobs WHERE callback_state = 'delivered'").get() as { n: number }).n;
  } finally {
    db.close();
  }
}

/** Cancels every queued or running job through the scheduler (the fuzz submits some under random tenants). */
async function cancelUnfinishedJobs(dataDir: string, client: RawClient): Promise<void> {
  const db = new Database(join(dataDir, 'scheduler', 'scheduler.sqlite'), { readonly: true, fileMustExist: true });
  let jobs: { id: string; tenant: string }[];
  try {
    jobs = db.prepare("SELECT id, tenant FROM jobs WHERE state IN ('queued', 'running')").all() as { id: string; tenant: string }[];
  } finally {
    db.close();
  }
  await Promise.all(jobs.map((j) => client.unary('/maas.internal.v1.SchedulerService/CancelJob', CancelJobRequest.encode({ tenant: j.tenant, jobId: j.id }).finish(), { deadlineMs: 10_000 })));
}

/** True when the process answers grpc.health.v1 Check with SERVING (closes the client). */
async function serving(client: RawClient): Promise<boolean> {
  try {
    const outcome = await client.unary('/grpc.health.v1.Health/Check', HealthCheckRequest.encode({ service: '' }).finish(), { deadlineMs: 5000 });
    return outcome.code === status.OK && outcome.reply !== undefined && HealthCheckResponse.decode(outcome.reply).status === HealthCheckResponse_ServingStatus.SERVING;
  } finally {
    client.close();
  }
}

/** The real workers the balancer's ListWorkers does not list (closes the client). */
async function missingFromRouting(client: RawClient): Promise<string[]> {
  try {
    const outcome = await client.unary('/maas.internal.v1.BalancerService/ListWorkers', ListWorkersRequest.encode({}).finish(), { deadlineMs: 5000 });
    if (outcome.code !== status.OK || !outcome.reply) return [`ListWorkers failed: ${statusName(outcome.code)} ${outcome.details.slice(0, 100)}`];
    const listed = ListWorkersResponse.decode(outcome.reply).workers.map((w) => w.workerId);
    return REAL_WORKER_IDS.filter((id) => !listed.includes(id));
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

/** The report as Markdown: a table of methods (per transport), one of memory, the run's checks, and any failure. */
export function formatReport(r: FuzzReport): string {
  const mb = (kb: number) => (kb / 1024).toFixed(1);
  const total = r.methods.reduce((n, m) => n + m.inputs, 0);
  const perTransport = new Map<string, number>();
  for (const m of r.methods) perTransport.set(m.transport, (perTransport.get(m.transport) ?? 0) + m.inputs);
  const lines = [
    `${r.mode === 'tls' ? 'Mutual TLS' : 'Plaintext'}; seed ${r.seed}; ${r.inputsPerMethod} inputs per method${r.refusedInputsPerMethod !== r.inputsPerMethod ? ` (${r.refusedInputsPerMethod} per method for the callers that must be refused)` : ''}; ${total} in all (${[...perTransport].map(([t, n]) => `${t}: ${n}`).join('; ')}); each call's deadline ${r.deadlineMs} ms; ${(r.durationMs / 1000).toFixed(0)} s in all. Memory is VmRSS after V8's last-resort collection (services run with --expose-gc; SIGUSR2 collects and returns freed pages). Strategies: ${STRATEGIES.join(', ')}.`,
    '',
    '| method | transport | caller | inputs | seconds | crashes | hangs | late, client stalled | max overrun (ms) | wrong codes | echoes | hostile accepted | statuses |',
    '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|',
    ...r.methods.map(
      (m) =>
        `| ${m.method} | ${m.transport} | ${m.identity} | ${m.inputs} | ${(m.durationMs / 1000).toFixed(0)} | ${m.crashes} | ${m.hangs} | ${m.clientLate} | ${Math.max(0, Math.round(m.maxOverrunMs))} | ${m.wrongCodes} | ${m.echoes} | ${m.hostile > 0 ? `${m.hostileAccepted} of ${m.hostile} (${formatStatuses(m.hostileStatuses)})` : '-'} | ${formatStatuses(m.statuses)} |`,
    ),
    '',
    '| process | memory before (MB) | after (MB) | change |',
    '|---|---:|---:|---:|',
    ...r.memory.map((m) => `| ${m.process} | ${mb(m.beforeKb)} | ${mb(m.afterKb)} | ${(((m.afterKb - m.beforeKb) / m.beforeKb) * 100).toFixed(0)}% |`),
    '',
    `Process exits: ${r.exits.length === 0 ? 'none' : r.exits.join('; ')}. Health afterwards: ${r.unhealthy.length === 0 ? 'every process SERVING' : `not SERVING: ${r.unhealthy.join(', ')}`}. ` +
      `Reads or writes outside the roots: ${r.escapes.length === 0 ? 'none' : r.escapes.join('; ')}. ` +
      `Callback listener: ${r.callbacksReceived} requests; callbacks recorded delivered: ${r.callbacksDelivered}. ` +
      `Real workers in the routing table afterwards: ${r.missingWorkers.length === 0 ? 'both' : `missing ${r.missingWorkers.join(', ')}`}.` +
      (r.uncovered.length > 0 ? ` Services not fuzzed: ${r.uncovered.join(', ')}.` : ''),
  ];
  const failures = r.methods.flatMap((m) => m.failures.map((f) => `- ${m.method} [${m.transport}]: ${f}`));
  if (failures.length > 0) lines.push('', 'Failures (first of each kind per method):', '', ...failures);
  return lines.join('\n');
}
