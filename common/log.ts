/**
 * Logging of every service, on pino: one JSON object per line on stderr (time, level, service,
 * msg, the caller's fields and, while a traced call is served, its trace_id and span_id), or one
 * readable line per event for a terminal (`--log-format text`). Lines are written synchronously, so
 * the last line before a crash is not lost in a buffer.
 *
 * Privacy: what callers send (prompts, inputs, records) and what models answer is content; it is
 * logged only when `--log-content` is on ({@link callerContent}). Keys and secrets are never logged.
 */
import { context, isSpanContextValid, trace } from '@opentelemetry/api';
import pino from 'pino';
import { boolean, choice } from './config';

/** Fields of one log line: names in snake_case; an Error value is written as {type, message, stack}. */
export type LogFields = Record<string, unknown>;

/** Logs events of one service. */
export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
  /** True when `--log-content` is on: caller content may be logged (see {@link callerContent}). */
  readonly logsContent: boolean;
}

/** The levels, most verbose first; a logger writes its level and those after it. */
export const LOG_LEVELS = ['debug', 'info', 'warn', 'error', 'silent'] as const;
/** Minimum level written. */
export type LogLevel = (typeof LOG_LEVELS)[number];
/** How lines are written: JSON objects (for collectors) or text (for a terminal). */
export type LogFormat = 'json' | 'text';

/** Settings of a logger. */
export interface LogOptions {
  level?: LogLevel;
  format?: LogFormat;
  /** Allow caller content in log lines (`--log-content`); off by default. */
  content?: boolean;
  /** Where each line goes (with its newline); stderr, synchronously, by default. */
  write?: (line: string) => void;
}

/**
 * The logging settings every service takes (merged into its schema by `runService`). The
 * variables are shared by all services, so one `MAAS_LOG_LEVEL=debug` reaches the whole mesh.
 */
export const logSchema = {
  logLevel: choice<LogLevel>({ flag: '--log-level', env: 'MAAS_LOG_LEVEL', default: 'info', choices: LOG_LEVELS, doc: 'Least severe level written: debug (one line per call at each hop), info, warn, error, or silent.' }),
  logFormat: choice<LogFormat>({ flag: '--log-format', env: 'MAAS_LOG_FORMAT', default: 'json', choices: ['json', 'text'], doc: 'json: one JSON object per line on stderr (time, level, service, msg, trace_id and span_id while serving a traced call, fields); text: one readable line per event, for a terminal (`maas up` uses it).' }),
  logContent: boolean({ flag: '--log-content', env: 'MAAS_LOG_CONTENT', default: false, doc: 'Write caller content (prompts, inputs, records, outputs) into debug lines. Off: no log line, metric label or span attribute carries it. Keys and secrets are never logged.' }),
};

/**
 * `value` when the logger may carry caller content, otherwise only its size: use it for every
 * field that holds what a caller sent or a model produced.
 */
export function callerContent(log: Logger, value: string): string {
  return log.logsContent ? value : `[${value.length} chars, not logged: --log-content is off]`;
}

/** trace_id and span_id of the span active in the current context, when there is one. */
function traceFields(): LogFields {
  const span = trace.getSpan(context.active());
  if (!span) return {};
  const sc = span.spanContext();
  return isSpanContextValid(sc) ? { trace_id: sc.traceId, span_id: sc.spanId } : {};
}

/** Errors anywhere in the fields become {type, message, stack}: one field, one line. */
function withErrors(fields: LogFields): LogFields {
  let out: LogFields | undefined;
  for (const [k, v] of Object.entries(fields)) {
    if (v instanceof Error) {
      out ??= { ...fields };
      out[k] = pino.stdSerializers.err(v);
    }
  }
  return out ?? fields;
}

/** A logger for `service`: JSON lines on stderr at `info` and above unless `options` say otherwise. */
export function createLogger(service: string, levelOrOptions: LogLevel | LogOptions = {}, write?: (line: string) => void): Logger {
  const options: LogOptions = typeof levelOrOptions === 'string' ? { level: levelOrOptions, write } : levelOrOptions;
  const format = options.format ?? 'json';
  const out = options.write ?? stderrWriter();
  const stream = { write: format === 'text' ? (line: string) => out(textLine(line)) : out };
  const base = pino(
    {
      level: options.level ?? 'info',
      base: { service },
      messageKey: 'msg',
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      mixin: traceFields,
      // withErrors serializes every Error field; pino's own `err` serializer would do it twice.
      serializers: { err: (v: unknown) => v },
    },
    stream,
  );
  const emit = (lvl: 'debug' | 'info' | 'warn' | 'error') => (message: string, fields?: LogFields) => {
    if (fields) base[lvl](withErrors(fields), message);
    else base[lvl](message);
  };
  return { debug: emit('debug'), info: emit('info'), warn: emit('warn'), error: emit('error'), logsContent: options.content ?? false };
}

/** Writes to stderr synchronously (pino's SonicBoom in sync mode retries a full pipe). */
function stderrWriter(): (line: string) => void {
  const destination = pino.destination({ fd: 2, sync: true });
  return (line) => destination.write(line);
}

const TEXT_SKIP = new Set(['time', 'level', 'service', 'msg']);

/**
 * One JSON log line as one readable line: `time LEVEL service: msg key=value ...`. A value with
 * spaces, quotes or newlines is quoted and escaped as JSON, so a stack stays on its line.
 */
export function textLine(json: string): string {
  const o = JSON.parse(json) as Record<string, unknown>;
  const parts = [`${String(o.time)} ${String(o.level).toUpperCase()} ${String(o.service)}: ${String(o.msg ?? '')}`];
  for (const [k, v] of Object.entries(o)) {
    if (TEXT_SKIP.has(k)) continue;
    parts.push(`${k}=${textValue(v)}`);
  }
  return `${parts.join(' ')}\n`;
}

function textValue(v: unknown): string {
  if (v !== null && typeof v === 'object' && 'stack' in v && typeof (v as { stack: unknown }).stack === 'string') return JSON.stringify((v as { stack: string }).stack);
  if (typeof v === 'string') return /^[^\s"=\\]+$/.test(v) ? v : JSON.stringify(v);
  return JSON.stringify(v) ?? String(v);
}

/** A logger that drops everything, for tests. */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {}, logsContent: false };
