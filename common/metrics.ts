/**
 * Prometheus metrics of one service: its registry (the families the service counts, plus the
 * process's default metrics: CPU, memory, event loop lag, GC), the `/metrics` HTTP endpoint that
 * serves it in the text format, and the `--metrics-port` setting every schema carries.
 *
 * Names follow Prometheus conventions: `maas_` prefix, `_total` for counters, base units
 * (`_seconds`). Labels are bounded by construction: service, method, status code, a model name
 * the service serves, a worker id, a tenant name, a reason from a fixed list; never anything a
 * caller sends as content (prompts, inputs, outputs, job ids, keys).
 */
import http = require('node:http');
import { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Metric, Registry, collectDefaultMetrics } from 'prom-client';
import { Setting, integer } from './config';
import { Logger } from './log';

export type { Counter, Gauge, Histogram } from 'prom-client';

/** Buckets of call latencies, in seconds: 1 ms to 60 s. */
export const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** Buckets of batch sizes, in requests. */
export const BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/** The model label of a call whose model the service does not know (a name no worker serves). */
export const UNKNOWN_MODEL = '(unknown)';

/**
 * The process's default metrics (`process_*`, `nodejs_*`), made once per process and shared by
 * every service registry in it: tests start several services in one process, and each set of
 * default collectors installs observers that are never removed.
 */
let processRegistry: Registry | undefined;

function processMetrics(): Registry {
  if (!processRegistry) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

/** The metrics of one service: a registry and factories of the families it counts. */
export class ServiceMetrics {
  readonly registry = new Registry();

  /** `service` labels the gRPC families: gateway, scheduler, balancer, worker or aggregator. */
  constructor(readonly service: string) {
    for (const metric of processMetrics().getMetricsAsArray()) this.registry.registerMetric(metric as unknown as Metric);
  }

  counter<L extends string>(name: string, help: string, labelNames: readonly L[] = []): Counter<L> {
    return new Counter({ name, help, labelNames, registers: [this.registry] });
  }

  /** A gauge; with `collect`, it is set from the service's own state at each scrape. */
  gauge<L extends string>(name: string, help: string, labelNames: readonly L[] = [], collect?: (gauge: Gauge<L>) => void): Gauge<L> {
    return new Gauge({
      name,
      help,
      labelNames,
      registers: [this.registry],
      ...(collect && {
        collect(this: Gauge<L>) {
          collect(this);
        },
      }),
    });
  }

  histogram<L extends string>(name: string, help: string, labelNames: readonly L[] = [], buckets: number[] = LATENCY_BUCKETS): Histogram<L> {
    return new Histogram({ name, help, labelNames, buckets, registers: [this.registry] });
  }

  /** The registry in the Prometheus text format. */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}

/** The `--metrics-port` setting of a service whose variables start with `envPrefix` (e.g. MAAS_SCHEDULER). */
export function metricsPortSetting(envPrefix: string, defaultPort: number, extra = ''): Setting<number> {
  return integer({
    flag: '--metrics-port',
    env: `${envPrefix}_METRICS_PORT`,
    default: defaultPort,
    min: -1,
    max: 65535,
    doc: `Port of the Prometheus metrics endpoint (GET /metrics, plaintext HTTP) on --host; 0 picks a free one${extra}, -1 turns it off.`,
  });
}

/** A running `/metrics` endpoint. */
export interface MetricsServer {
  readonly port: number;
  /** host:port it is reachable at. */
  readonly address: string;
  close(): Promise<void>;
}

/**
 * Serves `metrics` at `GET /metrics` on host:port (plaintext HTTP, as Prometheus scrapes); resolves
 * once it listens and logs the address. Port -1: nothing is served (undefined). Anything other than
 * GET or HEAD of /metrics gets 404 or 405.
 */
export async function serveMetrics(metrics: ServiceMetrics, options: { host: string; port: number; log: Logger }): Promise<MetricsServer | undefined> {
  if (options.port < 0) return undefined;
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: metrics are at /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    metrics.text().then(
      (body) => {
        res.writeHead(200, { 'content-type': metrics.registry.contentType });
        res.end(req.method === 'HEAD' ? undefined : body);
      },
      (err: unknown) => {
        options.log.error('metrics collection failed', { error: err instanceof Error ? err.message : String(err) });
        res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics collection failed\n');
      },
    );
  });
  // A scrape is short; keep-alive connections of a departed scraper must not hold the close up.
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(new Error(`--metrics-port ${options.port} on ${options.host}: cannot listen (${err.code ?? err.message})`)));
    server.listen(options.port, options.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const dialHost = options.host === '0.0.0.0' || options.host === '::' ? '127.0.0.1' : options.host;
  const address = `${dialHost.includes(':') ? `[${dialHost}]` : dialHost}:${port}`;
  options.log.info(`metrics on http://${address}/metrics`);
  return {
    port,
    address,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
