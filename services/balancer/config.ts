/** Settings of the balancer service. */
import { choice, decimal, integer, text } from '../../common/config';
import { metricsPortSetting } from '../../common/metrics';
import { drainTimeoutSetting } from '../../common/drain';
import { tlsSchema } from '../../common/tls';
import { DEFAULT_EWMA_DECAY_MS } from './ewma';
import { POLICY_NAMES, PolicyName } from './policy';

/** The balancer's config schema: flag, environment variable and default of every setting. */
export const balancerSchema = {
  host: text({ flag: '--host', env: 'MAAS_BALANCER_HOST', default: '127.0.0.1', doc: 'Interface to bind.' }),
  port: integer({ flag: '--port', env: 'MAAS_BALANCER_PORT', default: 50053, min: 0, max: 65535, doc: 'Port to bind; 0 picks a free one.' }),
  policy: choice<PolicyName>({ flag: '--policy', env: 'MAAS_BALANCER_POLICY', default: 'p2c', choices: POLICY_NAMES, doc: 'Routing policy: round_robin, random, least_outstanding, p2c (power of two choices on outstanding requests), p2c_ewma (p2c on peak-EWMA latency x outstanding), weighted (by reported capacity) or consistent_hash (affinity on the request\'s affinity_key, with bounded load).' }),
  modelPolicies: {
    ...text({ flag: '--model-policies', env: 'MAAS_BALANCER_MODEL_POLICIES', default: '', allowEmpty: true, doc: 'Per-model policies overriding --policy, as model=policy pairs separated by commas (e.g. ngram=consistent_hash,echo=p2c_ewma).' }),
    parse(raw: string): string {
      parseModelPolicies(raw);
      return raw;
    },
  },
  reportIntervalMs: integer({ flag: '--report-interval-ms', env: 'MAAS_BALANCER_REPORT_INTERVAL_MS', default: 1000, min: 50, max: 60000, doc: 'How often workers send load reports; a worker silent for 3 intervals is removed.' }),
  ewmaDecayMs: integer({ flag: '--ewma-decay-ms', env: 'MAAS_BALANCER_EWMA_DECAY_MS', default: DEFAULT_EWMA_DECAY_MS, min: 1, max: 3600000, doc: 'Decay time of the peak-EWMA latency p2c_ewma uses: a slow reply raises a worker\'s estimate at once, faster ones bring it down over about this time. Shorter forgets a noise peak sooner; longer remembers a slow worker longer.' }),
  ejectAfterFailures: integer({ flag: '--eject-after-failures', env: 'MAAS_BALANCER_EJECT_AFTER_FAILURES', default: 5, min: 1, max: 1000, doc: 'Consecutive failures that eject a worker.' }),
  ejectFailureRate: decimal({ flag: '--eject-failure-rate', env: 'MAAS_BALANCER_EJECT_FAILURE_RATE', default: 0.1, min: 0.01, max: 1, doc: 'Failure rate over a 10 s window that ejects a worker, once it has had --eject-min-requests calls in the window.' }),
  ejectMinRequests: integer({ flag: '--eject-min-requests', env: 'MAAS_BALANCER_EJECT_MIN_REQUESTS', default: 20, min: 1, max: 1000000, doc: 'Calls in the 10 s window before the failure rate can eject a worker.' }),
  ejectionBaseMs: integer({ flag: '--ejection-base-ms', env: 'MAAS_BALANCER_EJECTION_BASE_MS', default: 5000, min: 1, max: 3600000, doc: 'First ejection time; each further ejection of the same worker lasts one more base, up to 300 s. It returns on probation, with slow start.' }),
  maxEjectedShare: decimal({ flag: '--max-ejected-share', env: 'MAAS_BALANCER_MAX_EJECTED_SHARE', default: 0.5, min: 0, max: 1, doc: 'Largest share of the workers ejected at once.' }),
  retryBudget: decimal({ flag: '--retry-budget', env: 'MAAS_BALANCER_RETRY_BUDGET', default: 0.2, min: 0, max: 10, doc: 'Retries on another worker may add at most this share of extra calls, counted over a 10 s window (plus --retry-min-per-second).' }),
  retryMinPerSecond: integer({ flag: '--retry-min-per-second', env: 'MAAS_BALANCER_RETRY_MIN_PER_SECOND', default: 10, min: 0, max: 100000, doc: 'Retries allowed per second on top of --retry-budget, so a quiet service can still retry (100 per 10 s window at the default).' }),
  hedgeDelayMs: integer({ flag: '--hedge-delay-ms', env: 'MAAS_BALANCER_HEDGE_DELAY_MS', default: 0, min: 0, max: 600000, doc: 'Hedging of unary Predict: after this delay without an answer, a second copy goes to another worker and the loser is cancelled. 0 turns hedging off.' }),
  drainTimeoutMs: drainTimeoutSetting('MAAS_BALANCER'),
  maxMessageBytes: integer({ flag: '--max-message-bytes', env: 'MAAS_BALANCER_MAX_MESSAGE_BYTES', default: 16 * 1024 * 1024, min: 1024, max: 1 << 30, doc: 'Largest gRPC message accepted or sent.' }),
  maxConcurrentStreams: integer({ flag: '--max-concurrent-streams', env: 'MAAS_BALANCER_MAX_CONCURRENT_STREAMS', default: 4096, min: 1, max: 1000000, doc: 'Most calls one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); the scheduler\'s connection carries every routed call.' }),
  metricsPort: metricsPortSetting('MAAS_BALANCER', 9403),
  ...tlsSchema('MAAS_BALANCER', 'balancer'),
};

/** Parses `model=policy,model=policy`; throws an Error naming the bad entry. */
export function parseModelPolicies(spec: string): Map<string, PolicyName> {
  const out = new Map<string, PolicyName>();
  for (const entry of spec.split(',').map((e) => e.trim()).filter(Boolean)) {
    const [model, policy, extra] = entry.split('=');
    if (!model || !policy || extra !== undefined) throw new Error(`expected model=policy, given "${entry}"`);
    if (!(POLICY_NAMES as readonly string[]).includes(policy)) throw new Error(`expected a policy of ${POLICY_NAMES.join(', ')} for ${model}, given "${policy}"`);
    out.set(model, policy as PolicyName);
  }
  return out;
}
