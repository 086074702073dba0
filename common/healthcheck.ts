/**
 * A service's check of its own health, for container healthchecks (Docker HEALTHCHECK, compose):
 * `node <entry> [its flags] --healthcheck` reads the same flags and environment as the service,
 * asks grpc.health.v1 Check on the service's health-only port when it has one, else on its own
 * port (over mutual TLS with its own certificate when TLS is on), and exits 0 for SERVING, 1
 * otherwise with one line saying why. Nothing to download into the image (no grpc_health_probe).
 */
import { createClient } from 'nice-grpc';
import { HealthCheckResponse_ServingStatus, HealthDefinition } from '../generated/grpc/health/v1/health';
import { openChannel, openMeshChannel } from './client';
import { MeshService, PeerExpectation } from './mesh-identity';
import { TlsConfig, loadMeshTls } from './tls';

/** The flag that turns a service's entry point into its own health check. */
export const HEALTHCHECK_FLAG = '--healthcheck';

/** How long one check may take. */
const CHECK_TIMEOUT_MS = 4_000;

/** What a health check needs of a parsed config: the address and the TLS settings. */
export interface HealthcheckConfig extends TlsConfig {
  host: string;
  port: number;
  workerId?: string;
}

/** Resolves when the service configured by `config` answers SERVING; rejects with the reason otherwise. */
export async function checkOwnHealth(service: Exclude<MeshService, 'operator'>, config: HealthcheckConfig): Promise<void> {
  const host = config.host === '0.0.0.0' || config.host === '::' || config.host === '' ? '127.0.0.1' : config.host;
  const dial = (port: number) => (host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`);
  let channel;
  let address: string;
  if (config.healthPort > 0) {
    address = dial(config.healthPort);
    channel = openChannel(address, 64 * 1024);
  } else {
    if (config.port === 0) throw new Error('--port is 0 (a free port picked at start): no port to check');
    address = dial(config.port);
    const workerId = config.workerId ?? '';
    const files = { ...config, tlsCert: config.tlsCert.replaceAll('{worker-id}', workerId), tlsKey: config.tlsKey.replaceAll('{worker-id}', workerId) };
    const tls = loadMeshTls(files, service);
    const expected: PeerExpectation = service === 'worker' ? { worker: tls?.identity.workerId ?? workerId } : service;
    channel = openMeshChannel(address, 64 * 1024, tls, expected);
  }
  try {
    const health = createClient(HealthDefinition, channel);
    const { status } = await health.check({ service: '' }, { signal: AbortSignal.timeout(CHECK_TIMEOUT_MS) });
    if (status !== HealthCheckResponse_ServingStatus.SERVING) throw new Error(`${address} reports ${HealthCheckResponse_ServingStatus[status] ?? status}`);
  } catch (err) {
    if (err instanceof Error && err.message.startsWith(address)) throw err;
    throw new Error(`${address}: ${err instanceof Error ? err.message : String(err)}`);
  } finally {
    channel.close();
  }
}
