/**
 * The one middleware stack of every server: telemetry first (one span per call, W3C context
 * extracted from metadata), then deadlines and error mapping. Error mapping happens here and only
 * here: handlers throw MeshError (or let a downstream ClientError through) and this turns it into
 * the gRPC status the caller sees. Unexpected errors become INTERNAL with no internals leaked.
 */
import { CallContext, ClientError, ServerError, ServerMiddleware, Status } from 'nice-grpc';
import { isAbortError } from 'abort-controller-x';
import { DEADLINE_HEADER, DeadlineTimer, clearDeadlineTimer, startDeadlineTimer } from './deadline';
import { ErrorKind, MeshError, boundMessage, withoutStack } from './errors';
import { Logger } from './log';
import { MeshIdentity, parseIdentityUri } from './mesh-identity';
import { PEER_IDENTITY_HEADER } from './tls';
import { UnsafeIntegerRequest } from './wire-integers';

/** What our middleware adds to every handler's call context. */
export interface MeshContextExt {
  /** Absolute deadline of the call (epoch ms, local clock), when the caller set one. */
  deadline: number | undefined;
  /**
   * The caller's identity from its verified client certificate (set by the authorization
   * interceptor with TLS on); undefined on a plaintext server or the gateway's public port.
   */
  caller: MeshIdentity | undefined;
}

/** The call context every handler of the mesh receives. */
export type MeshCallContext = CallContext & MeshContextExt;

const statusOfKind: Record<ErrorKind, Status> = {
  invalid_argument: Status.INVALID_ARGUMENT,
  not_found: Status.NOT_FOUND,
  already_exists: Status.ALREADY_EXISTS,
  failed_precondition: Status.FAILED_PRECONDITION,
  resource_exhausted: Status.RESOURCE_EXHAUSTED,
  unavailable: Status.UNAVAILABLE,
  deadline_exceeded: Status.DEADLINE_EXCEEDED,
  cancelled: Status.CANCELLED,
  unauthenticated: Status.UNAUTHENTICATED,
  permission_denied: Status.PERMISSION_DENIED,
};

/**
 * Enforces the call's deadline (aborting `context.signal` when it passes) and maps every error a
 * handler throws to the status the caller sees.
 */
export function deadlineAndErrorMiddleware(log: Logger): ServerMiddleware<MeshContextExt> {
  return async function* meshMiddleware(call, context) {
    const raw = context.metadata.get(DEADLINE_HEADER);
    const parsed = Number(raw);
    // The interceptor writes this header; anything unparsable means no deadline, not an instant one.
    const deadline = raw !== undefined && raw !== '' && Number.isFinite(parsed) ? parsed : undefined;
    const controller = new AbortController();
    const onAbort = () => controller.abort(context.signal.reason);
    if (context.signal.aborted) onAbort();
    else context.signal.addEventListener('abort', onAbort, { once: true });
    let expired = false;
    let timer: DeadlineTimer | undefined;
    if (deadline !== undefined) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        expired = true;
        controller.abort();
      } else {
        timer = startDeadlineTimer(deadline, () => {
          expired = true;
          controller.abort(new MeshError('deadline_exceeded', 'deadline exceeded'));
        });
      }
    }
    try {
      if (expired) throw new MeshError('deadline_exceeded', 'deadline exceeded before the call started');
      const peerUri = context.metadata.get(PEER_IDENTITY_HEADER);
      const caller = peerUri ? parseIdentityUri(peerUri) : undefined;
      const request = call.requestStream ? refuseUnsafeIntegers(call.request as AsyncIterable<unknown>) : refuseUnsafeInteger(call.request);
      return yield* call.next(request as typeof call.request, { ...context, signal: controller.signal, deadline, caller });
    } catch (err) {
      throw toServerError(err, expired, call.method.path, log);
    } finally {
      clearDeadlineTimer(timer);
      context.signal.removeEventListener('abort', onAbort);
    }
  };
}

/** INVALID_ARGUMENT for a request whose 64-bit integer the generated code could not hold. */
function unsafeIntegerError(request: UnsafeIntegerRequest): MeshError {
  const value = request.value.length > 24 ? `${request.value.slice(0, 24)}...` : request.value;
  return new MeshError('invalid_argument', `${request.field} must be from ${Number.MIN_SAFE_INTEGER} to ${Number.MAX_SAFE_INTEGER} (2^53 - 1), given ${value}`);
}

function refuseUnsafeInteger<T>(request: T): T {
  if (request instanceof UnsafeIntegerRequest) throw unsafeIntegerError(request);
  return request;
}

async function* refuseUnsafeIntegers<T>(requests: AsyncIterable<T>): AsyncIterable<T> {
  for await (const request of requests) yield refuseUnsafeInteger(request);
}

/**
 * Maps any thrown value to the ServerError the caller sees. Its message is bounded
 * ({@link boundMessage}): a message that echoed a megabyte of caller input would travel in the
 * grpc-message trailer, which HTTP/2 peers refuse, breaking a connection other calls share.
 */
export function toServerError(err: unknown, deadlineExpired: boolean, path: string, log: Logger): ServerError {
  if (err instanceof ServerError && boundMessage(err.details) === err.details) return err;
  let status = statusOf(err, deadlineExpired);
  if (!status) {
    log.error('unexpected error', { method: path, err: err instanceof Error ? err : String(err) });
    status = { code: Status.INTERNAL, details: 'internal error' };
  }
  // A status for the caller, not a bug: no stack to capture (nice-grpc's errors capture it twice and format it).
  const { code, details } = status;
  return withoutStack(() => new ServerError(code, details));
}

/** The status a thrown value maps to, or undefined for an unexpected error (a bug). */
function statusOf(err: unknown, deadlineExpired: boolean): { code: Status; details: string } | undefined {
  if (err instanceof ServerError) return { code: err.code, details: boundMessage(err.details) };
  if (err instanceof MeshError) return { code: statusOfKind[err.kind], details: boundMessage(err.message) };
  if (deadlineExpired) return { code: Status.DEADLINE_EXCEEDED, details: 'deadline exceeded' };
  // A downstream service's status passes through unchanged: the caller learns why, not where.
  if (err instanceof ClientError) return { code: err.code, details: boundMessage(err.details) };
  if (isAbortError(err)) return { code: Status.CANCELLED, details: 'call cancelled' };
  return undefined;
}
