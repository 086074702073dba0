/**
 * Errors of the mesh, typed by kind and mapped to gRPC status codes in one place
 * (`errorMiddleware` in ./middleware). Domain code throws these (or its own errors, which the
 * server adapters translate); nothing else reaches the wire.
 */

/** The kinds of failure a caller can act on. Each maps to one gRPC status. */
export type ErrorKind =
  | 'invalid_argument'
  | 'not_found'
  | 'already_exists'
  | 'failed_precondition'
  | 'resource_exhausted'
  | 'unavailable'
  | 'deadline_exceeded'
  | 'cancelled'
  | 'unauthenticated'
  | 'permission_denied';

/**
 * Runs `make` with V8's stack capture off. For errors that are a status for a caller rather than a
 * bug to debug: a refusal under overload built three of them per hop (MeshError, then nice-grpc's
 * ServerError or ClientError, which capture the stack twice and format it), and that was a fifth
 * of the CPU the gateway and the scheduler spent per refused call (docs/BENCHMARKS.md, overload).
 */
export function withoutStack<T>(make: () => T): T {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return make();
  } finally {
    Error.stackTraceLimit = limit;
  }
}

/**
 * An error whose message is safe and useful to show to the caller. It carries no stack trace
 * (see {@link withoutStack}): it says what the caller did or what the mesh refused, and the
 * message is all anyone reads of it; errors that are bugs keep theirs.
 */
export class MeshError extends Error {
  override name = 'MeshError';
  readonly kind: ErrorKind;
  constructor(kind: ErrorKind, message: string) {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(message);
    Error.stackTraceLimit = limit;
    this.kind = kind;
  }
}

/** INVALID_ARGUMENT for one field: names the field, the limit and what was given. */
export function invalidField(field: string, limit: string, given: unknown): MeshError {
  return new MeshError('invalid_argument', `${field} ${limit}, given ${formatGiven(given)}`);
}

/** Longest error message a caller is sent; longer ones are cut (see {@link boundMessage}). */
export const MAX_MESSAGE_CHARS = 512;
/** Most characters of one caller-given value an error message quotes. */
export const MAX_QUOTED_CHARS = 40;

/**
 * How an error message shows caller content (a prompt, an input, a record's text): its size only,
 * never its text, however short. Messages reach span statuses and log lines, where content may
 * not go (see common/log.ts).
 */
export function contentGiven(value: string): { toString(): string } {
  return { toString: () => `a string of ${value.length} characters` };
}

/** How an error message shows a value the caller gave: short strings quoted, long ones described. */
export function formatGiven(given: unknown): string {
  if (typeof given === 'string') {
    return given.length > MAX_QUOTED_CHARS ? `a string of ${given.length} characters` : JSON.stringify(given);
  }
  return String(given);
}

/**
 * A caller-given name or id inside a message: quoted in full when short, else its first
 * characters and its length, e.g. `"job-aaaa..." (1048576 characters)`.
 */
export function quoteInput(value: string): string {
  if (value.length <= MAX_QUOTED_CHARS) return JSON.stringify(value);
  return `${JSON.stringify(value.slice(0, MAX_QUOTED_CHARS - 8))}... (${value.length} characters)`;
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/**
 * The message cut to {@link MAX_MESSAGE_CHARS}, saying how long it was, with any lone UTF-16
 * surrogate (half of a cut emoji) replaced by U+FFFD: the safety net for any message. grpc-js
 * puts the message through encodeURI, which throws on a lone surrogate, and that throw, outside
 * any handler, ends the process.
 */
export function boundMessage(message: string): string {
  let bounded = message;
  if (message.length > MAX_MESSAGE_CHARS) {
    const note = `... (message cut from ${message.length} characters)`;
    bounded = message.slice(0, MAX_MESSAGE_CHARS - note.length) + note;
  }
  return bounded.replace(LONE_SURROGATE, '\uFFFD');
}

/**
 * Trailer of an UNAVAILABLE answer that means "no ready worker serves this model now" (workers
 * starting or restarting), as against a worker that failed: a job's task waits on it instead of
 * using an attempt. The balancer sets it; its value is "1".
 */
export const NO_READY_WORKER_TRAILER = 'maas-no-ready-worker';
