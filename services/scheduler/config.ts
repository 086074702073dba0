/** Settings of the scheduler service. */
import { callbackAllowSetting } from '../../common/callback-target';
import { address, boolean, decimal, integer, text } from '../../common/config';
import { TENANT_NAME_PATTERN } from '../../common/tenant';
import { metricsPortSetting } from '../../common/metrics';
import { drainTimeoutSetting } from '../../common/drain';
import { tlsSchema } from '../../common/tls';
import { parseWebhookSecret } from './jobs/callback';
import { TenantOverrides, parseTenantOverrides } from './tenant-limits';

/** The scheduler's config schema: flag, environment variable and default of every setting. */
export const schedulerSchema = {
  host: text({ flag: '--host', env: 'MAAS_SCHEDULER_HOST', default: '127.0.0.1', doc: 'Interface to bind.' }),
  port: integer({ flag: '--port', env: 'MAAS_SCHEDULER_PORT', default: 50052, min: 0, max: 65535, doc: 'Port to bind; 0 picks a free one.' }),
  balancer: address({ flag: '--balancer', env: 'MAAS_BALANCER_ADDRESS', default: '127.0.0.1:50053', doc: 'Address of the balancer.' }),
  maxInFlight: integer({ flag: '--max-in-flight', env: 'MAAS_SCHEDULER_MAX_IN_FLIGHT', default: 256, min: 1, max: 100000, doc: 'Requests running at once; more wait in the queue.' }),
  maxQueued: integer({ flag: '--max-queued', env: 'MAAS_SCHEDULER_MAX_QUEUED', default: 1024, min: 0, max: 1000000, doc: 'Requests waiting at once; one more is refused with RESOURCE_EXHAUSTED.' }),
  deadlineAdmission: boolean({ flag: '--deadline-admission', env: 'MAAS_SCHEDULER_DEADLINE_ADMISSION', default: true, doc: 'Refuse at once with RESOURCE_EXHAUSTED a request that would wait when its expected wait (requests ahead, --max-in-flight slots, an EWMA of recent service times) plus one service time exceeds what its deadline leaves.' }),
  maxMessageBytes: integer({ flag: '--max-message-bytes', env: 'MAAS_SCHEDULER_MAX_MESSAGE_BYTES', default: 64 * 1024 * 1024, min: 1024, max: 1 << 30, doc: 'Largest gRPC message accepted or sent (a job with inline records, a shard of them).' }),
  maxConcurrentStreams: integer({ flag: '--max-concurrent-streams', env: 'MAAS_SCHEDULER_MAX_CONCURRENT_STREAMS', default: 4096, min: 1, max: 1000000, doc: 'Most calls one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); the gateway\'s connection carries every caller\'s calls and Watch streams, so keep it above --max-in-flight plus --max-queued.' }),
  aggregator: address({ flag: '--aggregator', env: 'MAAS_AGGREGATOR_ADDRESS', default: '127.0.0.1:50054', doc: 'Address of the aggregator, which reduces batch jobs.' }),
  dataDir: text({ flag: '--data-dir', env: 'MAAS_SCHEDULER_DATA_DIR', default: '.maas/scheduler', doc: 'Directory of the durable job store (SQLite, WAL), relative to the working directory.' }),
  drainTimeoutMs: drainTimeoutSetting('MAAS_SCHEDULER'),
  maxBatchTasks: integer({ flag: '--max-batch-tasks', env: 'MAAS_SCHEDULER_MAX_BATCH_TASKS', default: 4, min: 1, max: 10000, doc: 'Map tasks in flight at once across all jobs; the rest of the workers\' capacity stays with online calls.' }),
  maxTasksPerJob: integer({ flag: '--max-tasks-per-job', env: 'MAAS_SCHEDULER_MAX_TASKS_PER_JOB', default: 4, min: 1, max: 10000, doc: 'Map tasks in flight at once for one job; jobs of equal priority take turns.' }),
  maxActiveJobs: integer({ flag: '--max-active-jobs', env: 'MAAS_SCHEDULER_MAX_ACTIVE_JOBS', default: 100, min: 1, max: 100000, doc: 'Unfinished jobs at once; one more is refused with RESOURCE_EXHAUSTED.' }),
  retryBaseMs: integer({ flag: '--retry-base-ms', env: 'MAAS_SCHEDULER_RETRY_BASE_MS', default: 200, min: 1, max: 600000, doc: 'First retry delay of a failed map task; doubles per attempt, with full jitter.' }),
  retryMaxMs: integer({ flag: '--retry-max-ms', env: 'MAAS_SCHEDULER_RETRY_MAX_MS', default: 10000, min: 1, max: 3600000, doc: 'Longest retry delay of a map task (and of finalizing a job while the aggregator is away).' }),
  callbackSecret: {
    ...text({ flag: '--callback-secret', env: 'MAAS_SCHEDULER_CALLBACK_SECRET', default: '', allowEmpty: true, doc: 'Standard Webhooks secret (`whsec_` + base64 of 24 to 64 bytes) that signs job callbacks (`webhook-signature`); empty sends them unsigned.' }),
    parse(raw: string): string {
      if (raw !== '') parseWebhookSecret(raw);
      return raw;
    },
    show: (v: string) => (v === '' ? '(empty)' : '(set)'),
  },
  callbackAttempts: integer({ flag: '--callback-attempts', env: 'MAAS_SCHEDULER_CALLBACK_ATTEMPTS', default: 5, min: 1, max: 100, doc: 'Attempts to deliver a job callback, with backoff; a refused address or a redirect ends it at once.' }),
  callbackTimeoutMs: integer({ flag: '--callback-timeout-ms', env: 'MAAS_SCHEDULER_CALLBACK_TIMEOUT_MS', default: 10000, min: 1, max: 600000, doc: 'Time one callback attempt may take, from connecting to the response headers.' }),
  callbackAllow: callbackAllowSetting(),
  inputRoot: text({ flag: '--input-root', env: 'MAAS_INPUT_ROOT', default: '.maas/input', doc: "Directory a job's `file` is read from (relative to it; nothing outside it is read, symlinks out included), relative to the working directory; the workers must have the same. It may not contain or lie inside --data-dir." }),
  outputRoot: text({ flag: '--output-root', env: 'MAAS_OUTPUT_ROOT', default: '.maas/output', doc: "The aggregator's output root, to refuse at submit a job's `output_file` outside the tenant's folder there, or existing without overwrite_output; the aggregator checks again when it writes." }),
  maxInputBytes: integer({ flag: '--max-input-bytes', env: 'MAAS_MAX_INPUT_BYTES', default: 1 << 30, min: 1, max: Number.MAX_SAFE_INTEGER, doc: 'Largest input file of a job, in bytes; a larger one is refused (the workers must have the same).' }),
  maxLineBytes: integer({ flag: '--max-line-bytes', env: 'MAAS_MAX_LINE_BYTES', default: 1 << 20, min: 1, max: 1 << 30, doc: 'Longest line (one record) of an input file, in bytes; a longer one is refused as soon as it is seen, without reading all of it.' }),
  tenantMaxInFlight: integer({ flag: '--tenant-max-in-flight', env: 'MAAS_SCHEDULER_TENANT_MAX_IN_FLIGHT', default: 512, min: 1, max: 1000000, doc: 'Online requests one tenant may have open at once (running or waiting); one more is refused with RESOURCE_EXHAUSTED.' }),
  tenantMaxQueued: integer({ flag: '--tenant-max-queued', env: 'MAAS_SCHEDULER_TENANT_MAX_QUEUED', default: 256, min: 0, max: 1000000, doc: 'Online requests one tenant may have waiting for a slot; one more is refused with RESOURCE_EXHAUSTED. Waiting tenants take turns within a priority.' }),
  tenantRate: decimal({ flag: '--tenant-rate', env: 'MAAS_SCHEDULER_TENANT_RATE', default: 1000, min: 0, max: 1e9, doc: 'Requests per second one tenant may send (online calls and job submits), sustained; 0: no rate limit.' }),
  tenantBurst: integer({ flag: '--tenant-burst', env: 'MAAS_SCHEDULER_TENANT_BURST', default: 2000, min: 1, max: 1e9, doc: 'Requests one tenant may send at once above --tenant-rate (the token bucket\'s size).' }),
  tenantMaxActiveJobs: integer({ flag: '--tenant-max-active-jobs', env: 'MAAS_SCHEDULER_TENANT_MAX_ACTIVE_JOBS', default: 20, min: 1, max: 100000, doc: 'Unfinished (queued or running) jobs of one tenant; one more is refused with RESOURCE_EXHAUSTED. --max-active-jobs bounds all tenants together.' }),
  tenantMaxWatches: integer({ flag: '--tenant-max-watches', env: 'MAAS_SCHEDULER_TENANT_MAX_WATCHES', default: 64, min: 1, max: 100000, doc: 'WatchJob streams one tenant may have open; one more is refused with RESOURCE_EXHAUSTED.' }),
  tenantLimits: {
    flag: '--tenant-limits',
    env: 'MAAS_SCHEDULER_TENANT_LIMITS',
    default: new Map() as TenantOverrides,
    doc: 'Per-tenant exceptions to the --tenant-* limits: `acme:rate=100,burst=200;globex:in_flight=32,jobs=5` (keys in_flight, queued, rate, burst, jobs, watches). Empty: none.',
    parse: (raw: string): TenantOverrides => parseTenantOverrides(raw, (name) => TENANT_NAME_PATTERN.test(name)),
    show: (v: TenantOverrides) => (v.size === 0 ? '(empty)' : [...v.keys()].join(', ')),
  },
  metricsPort: metricsPortSetting('MAAS_SCHEDULER', 9402),
  ...tlsSchema('MAAS_SCHEDULER', 'scheduler'),
};
