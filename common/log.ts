/** A small line logger: one line per event on stderr, with time, level and service. */

/** Logs events of one service. */
export interface Logger {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

/** Minimum level written; `MAAS_LOG_LEVEL` chooses it in `runService`. */
export type LogLevel = 'info' | 'warn' | 'error' | 'silent';

const rank: Record<LogLevel, number> = { info: 0, warn: 1, error: 2, silent: 3 };

/** A logger for `service` that writes lines at or above `level` to `write` (stderr by default). */
export function createLogger(service: string, level: LogLevel = 'info', write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  const emit = (lvl: Exclude<LogLevel, 'silent'>) => (message: string, fields?: Record<string, unknown>) => {
    if (rank[lvl] < rank[level]) return;
    const extra = fields
      ? Object.entries(fields)
          .map(([k, v]) => ` ${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
          .join('')
      : '';
    write(`${new Date().toISOString()} ${lvl.toUpperCase()} ${service}: ${message}${extra}\n`);
  };
  return { info: emit('info'), warn: emit('warn'), error: emit('error') };
}

/** A logger that drops everything, for tests. */
export const silentLogger: Logger = { info() {}, warn() {}, error() {} };
