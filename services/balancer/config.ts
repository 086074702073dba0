/** Settings of the balancer service. */
import { choice, integer, text } from '../../common/config';
import { POLICY_NAMES, PolicyName } from './policy';

/** The balancer's config schema: flag, environment variable and default of every setting. */
export const balancerSchema = {
  host: text({ flag: '--host', env: 'MAAS_BALANCER_HOST', default: '127.0.0.1', doc: 'Interface to bind.' }),
  port: integer({ flag: '--port', env: 'MAAS_BALANCER_PORT', default: 50053, min: 0, max: 65535, doc: 'Port to bind; 0 picks a free one.' }),
  policy: choice<PolicyName>({ flag: '--policy', env: 'MAAS_BALANCER_POLICY', default: 'p2c', choices: POLICY_NAMES, doc: 'Routing policy: round_robin, random, least_outstanding, p2c (power of two choices on outstanding requests), p2c_ewma (p2c on peak-EWMA latency x outstanding), weighted (by reported capacity) or consistent_hash (affinity on the request\'s affinity_key, with bounded load).' }),
  reportIntervalMs: integer({ flag: '--report-interval-ms', env: 'MAAS_BALANCER_REPORT_INTERVAL_MS', default: 1000, min: 50, max: 60000, doc: 'How often workers send load reports; a worker silent for 3 intervals is removed.' }),
  maxMessageBytes: integer({ flag: '--max-message-bytes', env: 'MAAS_BALANCER_MAX_MESSAGE_BYTES', default: 16 * 1024 * 1024, min: 1024, max: 1 << 30, doc: 'Largest gRPC message accepted or sent.' }),
};
