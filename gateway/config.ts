/** Settings of the gateway. */
import { callbackAllowSetting } from '../common/callback-target';
import { address, boolean, integer, text } from '../common/config';
import { metricsPortSetting } from '../common/metrics';
import { drainTimeoutSetting } from '../common/drain';
import { tlsSchema } from '../common/tls';
import { KeyEntry, parseApiKeys } from './auth';

const gatewayTls = tlsSchema('MAAS_GATEWAY', 'gateway');

/** The gateway's config schema: flag, environment variable and default of every setting. */
export const gatewaySchema = {
  host: text({ flag: '--host', env: 'MAAS_GATEWAY_HOST', default: '127.0.0.1', doc: 'Interface to bind; 0.0.0.0 to accept calls from other machines.' }),
  port: integer({ flag: '--port', env: 'MAAS_GATEWAY_PORT', default: 50051, min: 0, max: 65535, doc: 'Port of the public API; 0 picks a free one.' }),
  httpPort: integer({ flag: '--http-port', env: 'MAAS_GATEWAY_HTTP_PORT', default: 8080, min: -1, max: 65535, doc: 'Port of the OpenAI-compatible HTTP API (/v1/models, /v1/completions, /v1/chat/completions) on --host; 0 picks a free one, -1 turns it off.' }),
  httpMaxBodyBytes: integer({ flag: '--http-max-body-bytes', env: 'MAAS_GATEWAY_HTTP_MAX_BODY_BYTES', default: 1024 * 1024, min: 1024, max: 1 << 30, doc: 'Largest HTTP request body, in bytes; a larger one gets 413 before it is read.' }),
  scheduler: address({ flag: '--scheduler', env: 'MAAS_SCHEDULER_ADDRESS', default: '127.0.0.1:50052', doc: 'Address of the scheduler.' }),
  balancer: address({ flag: '--balancer', env: 'MAAS_BALANCER_ADDRESS', default: '127.0.0.1:50053', doc: 'Address of the balancer (the model catalog, and the routing of the online calls the gateway dispatches).' }),
  permits: boolean({ flag: '--permits', env: 'MAAS_GATEWAY_PERMITS', default: true, doc: "Run online calls on admission permits the scheduler grants ahead (while it has room), dispatched by the gateway straight to the worker the balancer picks: no round trip to the scheduler per call. Calls of a tenant holding no permit, and every call with false, go through the scheduler." }),
  maxMessageBytes: integer({ flag: '--max-message-bytes', env: 'MAAS_GATEWAY_MAX_MESSAGE_BYTES', default: 4 * 1024 * 1024, min: 1024, max: 1 << 30, doc: 'Largest request message accepted, in bytes; larger ones get RESOURCE_EXHAUSTED.' }),
  maxConcurrentStreams: integer({ flag: '--max-concurrent-streams', env: 'MAAS_GATEWAY_MAX_CONCURRENT_STREAMS', default: 100, min: 1, max: 1000000, doc: 'Most calls one client connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); more wait for one to end.' }),
  maxPromptChars: integer({ flag: '--max-prompt-chars', env: 'MAAS_GATEWAY_MAX_PROMPT_CHARS', default: 8192, min: 1, max: 1 << 24, doc: 'Longest Generate prompt, in characters.' }),
  maxInputChars: integer({ flag: '--max-input-chars', env: 'MAAS_GATEWAY_MAX_INPUT_CHARS', default: 8192, min: 1, max: 1 << 24, doc: 'Longest Predict input, in characters.' }),
  drainTimeoutMs: drainTimeoutSetting('MAAS_GATEWAY'),
  maxConnectionAgeMs: integer({ flag: '--max-connection-age-ms', env: 'MAAS_GATEWAY_MAX_CONNECTION_AGE_MS', default: 300000, min: 0, max: 86400000, doc: 'After this long a client connection is told to go away (HTTP/2 GOAWAY) and the client reconnects for its next calls, so clients spread over the replicas behind a Service or load balancer; calls in flight go on (see --max-connection-age-grace-ms). 0: never.' }),
  maxConnectionAgeGraceMs: integer({ flag: '--max-connection-age-grace-ms', env: 'MAAS_GATEWAY_MAX_CONNECTION_AGE_GRACE_MS', default: 60000, min: 0, max: 86400000, doc: 'How long calls in flight on a connection past --max-connection-age-ms may still run before the connection is closed; the default is the default call deadline.' }),
  defaultDeadlineMs: integer({ flag: '--default-deadline-ms', env: 'MAAS_GATEWAY_DEFAULT_DEADLINE_MS', default: 60000, min: 1, max: 86400000, doc: 'Deadline of a call whose client set none.' }),
  maxInlineRecords: integer({ flag: '--max-inline-records', env: 'MAAS_GATEWAY_MAX_INLINE_RECORDS', default: 10000, min: 1, max: 10000000, doc: 'Most records a job may carry inline (larger inputs go in a file).' }),
  catalogTtlMs: integer({ flag: '--catalog-ttl-ms', env: 'MAAS_GATEWAY_CATALOG_TTL_MS', default: 1000, min: 0, max: 600000, doc: 'How long the model list from the balancer is cached; a call for a model the expired list holds is not held: the list is refreshed behind it (an unknown name refreshes first).' }),
  callbackAllow: callbackAllowSetting(),
  maxTensorElements: integer({ flag: '--max-tensor-elements', env: 'MAAS_GATEWAY_MAX_TENSOR_ELEMENTS', default: 1 << 20, min: 1, max: 1 << 30, doc: 'Most elements one input tensor of a KServe v2 ModelInfer call may have (the product of its shape); larger ones get INVALID_ARGUMENT.' }),
  repositoryTenants: {
    flag: '--repository-tenants',
    env: 'MAAS_GATEWAY_REPOSITORY_TENANTS',
    default: ['anonymous'] as string[],
    doc: 'Comma-separated tenants that may load and unload models of the model repository (KServe v2 RepositoryModelLoad/Unload); others get PERMISSION_DENIED. The default lets every caller of a gateway without API keys (tenant "anonymous") do it.',
    parse: (raw: string): string[] => {
      const tenants = raw.split(',').map((t) => t.trim()).filter((t) => t !== '');
      for (const t of tenants) if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(t)) throw new Error(`a tenant name must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}, given ${JSON.stringify(t.slice(0, 40))}`);
      return tenants;
    },
    show: (v: string[]) => (v.length === 0 ? '(nobody)' : v.join(',')),
  },
  apiKeys: {
    flag: '--api-keys',
    env: 'MAAS_GATEWAY_API_KEYS',
    default: [] as KeyEntry[],
    doc: 'Comma-separated tenant=key pairs, hashed at start (the gateway then deletes the variable from its environment); prefer the environment or --api-keys-file to the flag, which `ps` shows. Keys here and in the file together; with neither, no authentication and every caller is tenant "anonymous".',
    // Only the hashes are kept: the parsed config never holds a plaintext key.
    parse: (raw: string): KeyEntry[] => parseApiKeys(raw),
    show: (v: KeyEntry[]) => (v.length === 0 ? '(empty)' : '(set)'),
  },
  apiKeysFile: text({ flag: '--api-keys-file', env: 'MAAS_GATEWAY_API_KEYS_FILE', default: '', allowEmpty: true, doc: 'File of API key hashes, one `<tenant> sha256:<hex>` per line (`maas keys add` writes them); reloaded when it changes and on SIGHUP. Empty: none.' }),
  metricsPort: metricsPortSetting('MAAS_GATEWAY', 9401),
  ...gatewayTls,
  tls: {
    ...gatewayTls.tls,
    doc: 'TLS: serve the public API with --tls-cert (clients trust --tls-ca, e.g. `grpcurl -cacert`, and authenticate with API keys, not certificates), and call the scheduler and the balancer over mutual TLS with the same certificate.',
  },
};
