/**
 * How long a stopping service lets calls in flight finish: one setting per service, the same
 * default everywhere. The default is the gateway's default call deadline (60 s), so that a call
 * admitted just before SIGTERM with the default deadline is never cut by the drain; orchestrators
 * give the process longer than this to exit (Kubernetes terminationGracePeriodSeconds, compose
 * stop_grace_period: see deploy/README.md).
 */
import { Setting, integer } from './config';

/** Default drain of every service, in milliseconds: the gateway's default call deadline. */
export const DEFAULT_DRAIN_TIMEOUT_MS = 60_000;

/** The `--drain-timeout-ms` setting of a service whose variables start with `envPrefix` (e.g. MAAS_GATEWAY). */
export function drainTimeoutSetting(envPrefix: string): Setting<number> {
  return integer({
    flag: '--drain-timeout-ms',
    env: `${envPrefix}_DRAIN_TIMEOUT_MS`,
    default: DEFAULT_DRAIN_TIMEOUT_MS,
    min: 0,
    max: 3_600_000,
    doc: 'On SIGTERM: stop taking calls, report NOT_SERVING, and let calls in flight finish for up to this long before they are cut (streams that never end by themselves, such as health and job watches, are not waited for). The default is the default call deadline.',
  });
}
