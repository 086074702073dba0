/**
 * Process entry shared by every service: parses the config (a bad value stops the start with the
 * setting's name), installs tracing, starts the service, and shuts it down on SIGTERM or SIGINT.
 */
import { ConfigError, ConfigOf, Schema, describeConfig, parseConfig } from './config';
import { HEALTHCHECK_FLAG, HealthcheckConfig, checkOwnHealth } from './healthcheck';
import { MeshService } from './mesh-identity';
import { Logger, createLogger, logSchema } from './log';
import { initTracing } from './tracing';

/** A started service, as its main needs it. */
export interface StartedService {
  /** host:port the service listens on. */
  readonly address: string;
  /** Stops the service gracefully. */
  shutdown(): Promise<void>;
}

/** Runs one service as this process. */
export function runService<S extends Schema>(
  name: string,
  schema: S,
  start: (config: ConfigOf<S>, log: Logger) => Promise<StartedService>,
): void {
  const argv = process.argv.slice(2);
  // Every service takes the logging settings besides its own.
  const full = { ...schema, ...logSchema };
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`maas ${name}: settings (flag, environment variable, default)\n\n${describeConfig(full)}\n`);
    return;
  }
  // `--healthcheck`: with the same flags and environment, ask the running service's health (the
  // image's HEALTHCHECK does this), print one line and exit 0 (SERVING) or 1.
  const healthcheck = argv.includes(HEALTHCHECK_FLAG);
  let parsed: Record<string, unknown>;
  try {
    parsed = parseConfig(full, argv.filter((a) => a !== HEALTHCHECK_FLAG), process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`maas ${name}: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const { logLevel, logFormat, logContent, ...own } = parsed as Record<string, unknown> & ConfigOf<typeof logSchema>;
  const config = own as ConfigOf<S>;
  if (healthcheck) {
    checkOwnHealth(name as Exclude<MeshService, 'operator'>, config as unknown as HealthcheckConfig).then(
      () => {
        process.stdout.write(`maas ${name}: SERVING\n`);
        process.exit(0);
      },
      (err: unknown) => {
        process.stderr.write(`maas ${name}: not healthy: ${err instanceof Error ? err.message : String(err)}\n`);
        process.exit(1);
      },
    );
    return;
  }
  const log = createLogger(name, { level: logLevel, format: logFormat, content: logContent });
  const tracing = initTracing(`maas-${name}`);
  start(config, log).then(
    (service) => {
      log.info(`listening on ${service.address}`);
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) return;
        stopping = true;
        log.info(`${signal}: shutting down`);
        service
          .shutdown()
          .then(() => tracing.shutdown())
          .then(
            () => process.exit(0),
            (err) => {
              log.error('shutdown failed', { err });
              process.exit(1);
            },
          );
      };
      exposeGcSignal();
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
      watchParent(process.env.MAAS_PARENT_PID, () => stop('parent process exited'));
    },
    (err) => {
      log.error('failed to start', { err });
      process.exit(1);
    },
  );
}

/**
 * When started by `maas up` (which sets MAAS_PARENT_PID), stop if that process disappears, so a
 * killed `maas up` leaves no orphans behind.
 */
function watchParent(parentPid: string | undefined, onGone: () => void): void {
  const pid = Number(parentPid);
  if (!parentPid || !Number.isInteger(pid) || pid <= 1) return;
  const timer = setInterval(() => {
    try {
      process.kill(pid, 0);
    } catch {
      clearInterval(timer);
      onGone();
    }
  }, 1000);
  timer.unref();
}

/**
 * Test-only: when node runs with --expose-gc (the fuzz harness starts services so), SIGUSR2 runs
 * V8's last-resort collection (what it does on a low-memory notification: full collections until
 * nothing more is freed, then the freed pages returned to the system), so a memory reading counts
 * what is retained rather than what is merely not yet collected or not yet given back. A plain
 * gc() leaves freed heap pages resident: in a test, 150 MB freed stayed in RSS after gc() and left
 * after the last-resort collection. Without the flag, nothing is installed.
 */
function exposeGcSignal(): void {
  const gc = (globalThis as { gc?: (options?: { type: string; execution: string; flavor: string }) => void }).gc;
  if (typeof gc === 'function') process.on('SIGUSR2', () => gc({ type: 'major', execution: 'sync', flavor: 'last-resort' }));
}
