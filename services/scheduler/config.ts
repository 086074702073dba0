/** Settings of the scheduler service. */
import { address, integer, text } from '../../common/config';

/** The scheduler's config schema: flag, environment variable and default of every setting. */
export const schedulerSchema = {
  host: text({ flag: '--host', env: 'MAAS_SCHEDULER_HOST', default: '127.0.0.1', doc: 'Interface to bind.' }),
  port: integer({ flag: '--port', env: 'MAAS_SCHEDULER_PORT', default: 50052, min: 0, max: 65535, doc: 'Port to bind; 0 picks a free one.' }),
  balancer: address({ flag: '--balancer', env: 'MAAS_BALANCER_ADDRESS', default: '127.0.0.1:50053', doc: 'Address of the balancer.' }),
  maxInFlight: integer({ flag: '--max-in-flight', env: 'MAAS_SCHEDULER_MAX_IN_FLIGHT', default: 256, min: 1, max: 100000, doc: 'Requests running at once; more wait in the queue.' }),
  maxQueued: integer({ flag: '--max-queued', env: 'MAAS_SCHEDULER_MAX_QUEUED', default: 1024, min: 0, max: 1000000, doc: 'Requests waiting at once; one more is refused with RESOURCE_EXHAUSTED.' }),
  maxMessageBytes: integer({ flag: '--max-message-bytes', env: 'MAAS_SCHEDULER_MAX_MESSAGE_BYTES', default: 64 * 1024 * 1024, min: 1024, max: 1 << 30, doc: 'Largest gRPC message accepted or sent (a job with inline records, a shard of them).' }),
  maxConcurrentStreams: integer({ flag: '--max-concurrent-streams', env: 'MAAS_SCHEDULER_MAX_CONCURRENT_STREAMS', default: 4096, min: 1, max: 1000000, doc: 'Most calls one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); the gateway\'s connection carries every caller\'s calls and Watch streams, so keep it above --max-in-flight plus --max-queued.' }),
  aggregator: address({ flag: '--aggregator', env: 'MAAS_AGGREGATOR_ADDRESS', default: '127.0.0.1:50054', doc: 'Address of the aggregator, which reduces batch jobs.' }),
  dataDir: text({ flag: '--data-dir', env: 'MAAS_SCHEDULER_DATA_DIR', default: '.maas/scheduler', doc: 'Directory of the durable job store (SQLite, WAL), relative to the working directory.' }),
  maxBatchTasks: integer({ flag: '--max-batch-tasks', env: 'MAAS_SCHEDULER_MAX_BATCH_TASKS', default: 4, min: 1, max: 10000, doc: 'Map tasks in flight at once across all jobs; the rest of the workers\' capacity stays with online calls.' }),
  maxTasksPerJob: integer({ flag: '--max-tasks-per-job', env: 'MAAS_SCHEDULER_MAX_TASKS_PER_JOB', default: 4, min: 1, max: 10000, doc: 'Map tasks in flight at once for one job; jobs of equal priority take turns.' }),
  maxActiveJobs: integer({ flag: '--max-active-jobs', env: 'MAAS_SCHEDULER_MAX_ACTIVE_JOBS', default: 100, min: 1, max: 100000, doc: 'Unfinished jobs at once; one more is refused with RESOURCE_EXHAUSTED.' }),
  retryBaseMs: integer({ flag: '--retry-base-ms', env: 'MAAS_SCHEDULER_RETRY_BASE_MS', default: 200, min: 1, max: 600000, doc: 'First retry delay of a failed map task; doubles per attempt, with full jitter.' }),
  retryMaxMs: integer({ flag: '--retry-max-ms', env: 'MAAS_SCHEDULER_RETRY_MAX_MS', default: 10000, min: 1, max: 3600000, doc: 'Longest retry delay of a map task (and of finalizing a job while the aggregator is away).' }),
  callbackSecret: text({ flag: '--callback-secret', env: 'MAAS_SCHEDULER_CALLBACK_SECRET', default: '', allowEmpty: true, doc: 'HMAC-SHA256 secret for the X-Maas-Signature header of job callbacks; empty sends them unsigned.' }),
  callbackAttempts: integer({ flag: '--callback-attempts', env: 'MAAS_SCHEDULER_CALLBACK_ATTEMPTS', default: 5, min: 1, max: 100, doc: 'Attempts to deliver a job callback, with backoff.' }),
};
