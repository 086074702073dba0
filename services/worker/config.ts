/** Settings of the worker service. */
import { address, decimal, integer, text } from '../../common/config';
import { metricsPortSetting } from '../../common/metrics';
import { DEFAULT_DRAIN_TIMEOUT_MS } from '../../common/drain';
import { tlsSchema } from '../../common/tls';
import { UpstreamSpec, parseUpstreams } from './models/upstream';

const workerTls = tlsSchema('MAAS_WORKER', 'workers/{worker-id}');

/** The worker's config schema: flag, environment variable and default of every setting. */
export const workerSchema = {
  host: text({ flag: '--host', env: 'MAAS_WORKER_HOST', default: '127.0.0.1', doc: 'Interface to bind.' }),
  port: integer({ flag: '--port', env: 'MAAS_WORKER_PORT', default: 0, min: 0, max: 65535, doc: 'Port to bind; 0 picks a free one (the worker tells the balancer its address).' }),
  advertiseAddress: text({ flag: '--advertise-address', env: 'MAAS_WORKER_ADVERTISE_ADDRESS', default: '', allowEmpty: true, doc: 'host:port the balancer dials; empty means the bound address.' }),
  balancer: address({ flag: '--balancer', env: 'MAAS_BALANCER_ADDRESS', default: '127.0.0.1:50053', doc: 'Address of the balancer to join.' }),
  aggregator: address({ flag: '--aggregator', env: 'MAAS_AGGREGATOR_ADDRESS', default: '127.0.0.1:50054', doc: 'Address of the aggregator, which receives the output of map tasks.' }),
  workerId: text({ flag: '--worker-id', env: 'MAAS_WORKER_ID', default: '', allowEmpty: true, doc: 'Unique worker id; empty means worker-<host>-<pid>.' }),
  concurrency: integer({ flag: '--concurrency', env: 'MAAS_WORKER_CONCURRENCY', default: 64, min: 1, max: 10000, doc: 'Tasks run at once; more wait in the worker\'s queue (see --max-queued).' }),
  maxQueued: integer({ flag: '--max-queued', env: 'MAAS_WORKER_MAX_QUEUED', default: 256, min: 0, max: 100000, doc: 'Tasks that may wait, first come first served, while every --concurrency slot is busy; one more is refused with RESOURCE_EXHAUSTED (the balancer then tries another worker). 0 refuses at once.' }),
  cacheDir: text({ flag: '--cache-dir', env: 'MAAS_WORKER_CACHE_DIR', default: '.cache/models', doc: 'Where trained built-in models are cached (relative to the working directory).' }),
  inputRoot: text({ flag: '--input-root', env: 'MAAS_INPUT_ROOT', default: '.maas/input', doc: "Directory a job's `file` is read from (see the scheduler's --input-root, which must be the same); it may not contain or lie inside --cache-dir." }),
  maxInputBytes: integer({ flag: '--max-input-bytes', env: 'MAAS_MAX_INPUT_BYTES', default: 1 << 30, min: 1, max: Number.MAX_SAFE_INTEGER, doc: 'Largest input file of a job, in bytes (as the scheduler\'s).' }),
  maxLineBytes: integer({ flag: '--max-line-bytes', env: 'MAAS_MAX_LINE_BYTES', default: 1 << 20, min: 1, max: 1 << 30, doc: 'Longest line (one record) of an input file, in bytes (as the scheduler\'s).' }),
  echoDelayMs: integer({ flag: '--echo-delay-ms', env: 'MAAS_WORKER_ECHO_DELAY_MS', default: 0, min: 0, max: 60000, doc: 'Delay per token of the echo model, in milliseconds.' }),
  echoFailRate: decimal({ flag: '--echo-fail-rate', env: 'MAAS_WORKER_ECHO_FAIL_RATE', default: 0, min: 0, max: 1, doc: 'Share of echo calls that fail on purpose (for balancing benchmarks and tests).' }),
  modelRepository: text({ flag: '--model-repository', env: 'MAAS_MODEL_REPOSITORY', default: '.maas/models', doc: 'The model repository: `<model>/<version>/model.onnx` (or one `*.gguf`) plus an optional `<model>/config.json` (see "Model repository" in the README). Created if missing; every model in it is loaded at start.' }),
  onnxIntraOpThreads: integer({ flag: '--onnx-intra-op-threads', env: 'MAAS_ONNX_INTRA_OP_THREADS', default: 1, min: 1, max: 256, doc: "ONNX Runtime threads per model run (intra-op); a model's config.json parameters.intra_op_threads overrides it." }),
  upstreams: {
    flag: '--upstream',
    env: 'MAAS_WORKER_UPSTREAMS',
    default: [] as UpstreamSpec[],
    repeatable: true,
    doc: 'A model served by an external OpenAI-compatible engine: `name=url[#engine-model]`, url the engine\'s OpenAI base URL (e.g. http://127.0.0.1:8000/v1); repeat the flag (or separate with commas) for more models, and give one name several urls for replicas. The engine model defaults to the name.',
    parse: (raw: string): UpstreamSpec[] => parseUpstreams(raw),
    show: (v: UpstreamSpec[]) => (v.length === 0 ? '(none)' : v.map((u) => `${u.name} (${u.urls.length})`).join(',')),
  },
  upstreamApiKey: {
    flag: '--upstream-api-key',
    env: 'MAAS_WORKER_UPSTREAM_API_KEY',
    default: '',
    doc: 'Sent as `Authorization: Bearer` to every upstream engine; prefer the environment to the flag, which `ps` shows. Empty: none.',
    parse: (raw: string): string => raw.trim(),
    show: (v: string) => (v === '' ? '(empty)' : '(set)'),
  },
  upstreamConnectTimeoutMs: integer({ flag: '--upstream-connect-timeout-ms', env: 'MAAS_WORKER_UPSTREAM_CONNECT_TIMEOUT_MS', default: 10000, min: 1, max: 600000, doc: 'How long an upstream engine may take to answer a call\'s headers before the call moves to another replica (the call\'s own deadline still bounds it all).' }),
  drainTimeoutMs: integer({ flag: '--drain-timeout-ms', env: 'MAAS_WORKER_DRAIN_TIMEOUT_MS', default: DEFAULT_DRAIN_TIMEOUT_MS, min: 0, max: 3600000, doc: 'On SIGTERM: report NOT_SERVING and draining to the balancer, take no new task, and let running tasks finish for up to this long before they are cut. The default is the default call deadline.' }),
  maxMessageBytes: integer({ flag: '--max-message-bytes', env: 'MAAS_WORKER_MAX_MESSAGE_BYTES', default: 16 * 1024 * 1024, min: 1024, max: 1 << 30, doc: 'Largest gRPC message accepted or sent.' }),
  maxConcurrentStreams: integer({ flag: '--max-concurrent-streams', env: 'MAAS_WORKER_MAX_CONCURRENT_STREAMS', default: 1024, min: 1, max: 1000000, doc: 'Most calls one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); keep it above --concurrency plus --max-queued.' }),
  metricsPort: metricsPortSetting('MAAS_WORKER', 0, ' (the default: several workers share a host)'),
  ...workerTls,
  tlsCert: {
    ...workerTls.tlsCert,
    doc: 'This worker\'s certificate (PEM); {worker-id} is replaced by --worker-id. It names the worker\'s id (spiffe://maas.mesh/worker/<id>): with --worker-id empty the id is taken from it; a --worker-id that differs is refused.',
  },
};
