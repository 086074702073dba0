/** Settings of the aggregator service. */
import { integer, text } from '../../common/config';
import { metricsPortSetting } from '../../common/metrics';
import { drainTimeoutSetting } from '../../common/drain';
import { tlsSchema } from '../../common/tls';

/** The aggregator's config schema: flag, environment variable and default of every setting. */
export const aggregatorSchema = {
  host: text({ flag: '--host', env: 'MAAS_AGGREGATOR_HOST', default: '127.0.0.1', doc: 'Interface to bind.' }),
  port: integer({ flag: '--port', env: 'MAAS_AGGREGATOR_PORT', default: 50054, min: 0, max: 65535, doc: 'Port to bind; 0 picks a free one.' }),
  dataDir: text({ flag: '--data-dir', env: 'MAAS_AGGREGATOR_DATA_DIR', default: '.maas/aggregator', doc: 'Directory of the durable store of committed task outputs (SQLite, WAL), relative to the working directory; one aggregator per directory.' }),
  outputRoot: text({ flag: '--output-root', env: 'MAAS_OUTPUT_ROOT', default: '.maas/output', doc: "Directory the collect reducer's output files go to, one folder per tenant (<root>/<tenant>/<output_file>), relative to the working directory. It may not contain or lie inside --data-dir or a --protected-dirs entry." }),
  protectedDirs: text({ flag: '--protected-dirs', env: 'MAAS_PROTECTED_DIRS', default: '.maas/scheduler,.cache/models', allowEmpty: true, doc: 'Comma-separated directories no output file may be written into (stores, model caches), besides --data-dir; the output root may not contain or lie inside one.' }),
  maxOutputBytes: integer({ flag: '--max-output-bytes', env: 'MAAS_AGGREGATOR_MAX_OUTPUT_BYTES', default: 256 * 1024 * 1024, min: 1, max: Number.MAX_SAFE_INTEGER, doc: "Largest collected output of one job, in bytes (its JSON Lines, in the result or the output file); a job over it fails, naming the limit, and nothing of it is written." }),
  maxMessageBytes: integer({ flag: '--max-message-bytes', env: 'MAAS_AGGREGATOR_MAX_MESSAGE_BYTES', default: 64 * 1024 * 1024, min: 1024, max: 1 << 30, doc: "Largest gRPC message accepted or sent: a commit carries a whole shard's output." }),
  maxConcurrentStreams: integer({ flag: '--max-concurrent-streams', env: 'MAAS_AGGREGATOR_MAX_CONCURRENT_STREAMS', default: 1024, min: 1, max: 1000000, doc: 'Most calls one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).' }),
  drainTimeoutMs: drainTimeoutSetting('MAAS_AGGREGATOR'),
  cachedJobs: integer({ flag: '--cached-jobs', env: 'MAAS_AGGREGATOR_CACHED_JOBS', default: 64, min: 1, max: 100000, doc: 'Jobs whose running result is kept in memory; others are rebuilt from the store when next used.' }),
  metricsPort: metricsPortSetting('MAAS_AGGREGATOR', 9404),
  ...tlsSchema('MAAS_AGGREGATOR', 'aggregator'),
};
