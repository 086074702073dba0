/** Settings of the scheduler service. */
import { address, integer, text } from '../../common/config';

/** The scheduler's config schema: flag, environment variable and default of every setting. */
export const schedulerSchema = {
  host: text({ flag: '--host', env: 'MAAS_SCHEDULER_HOST', default: '127.0.0.1', doc: 'Interface to bind.' }),
  port: integer({ flag: '--port', env: 'MAAS_SCHEDULER_PORT', default: 50052, min: 0, max: 65535, doc: 'Port to bind; 0 picks a free one.' }),
  balancer: address({ flag: '--balancer', env: 'MAAS_BALANCER_ADDRESS', default: '127.0.0.1:50053', doc: 'Address of the balancer.' }),
  maxInFlight: integer({ flag: '--max-in-flight', env: 'MAAS_SCHEDULER_MAX_IN_FLIGHT', default: 256, min: 1, max: 100000, doc: 'Requests running at once; more wait in the queue.' }),
  maxQueued: integer({ flag: '--max-queued', env: 'MAAS_SCHEDULER_MAX_QUEUED', default: 1024, min: 0, max: 1000000, doc: 'Requests waiting at once; one more is refused with RESOURCE_EXHAUSTED.' }),
  maxMessageBytes: integer({ flag: '--max-message-bytes', env: 'MAAS_SCHEDULER_MAX_MESSAGE_BYTES', default: 16 * 1024 * 1024, min: 1024, max: 1 << 30, doc: 'Largest gRPC message accepted or sent.' }),
};
