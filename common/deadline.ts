/**
 * Deadline propagation. A call's deadline reaches a server either as gRPC's own `grpc-timeout`
 * header (set by grpcurl and most clients) or, between our services, as `maas-timeout-ms` (the
 * nice-grpc client does not send `grpc-timeout`). A server interceptor turns both into one
 * absolute local deadline in `maas-deadline` metadata; the server middleware enforces it and the
 * client middleware passes on the time that remains.
 */
import * as grpc from '@grpc/grpc-js';

/** Metadata key with the remaining time in milliseconds, sent by our clients. */
export const TIMEOUT_HEADER = 'maas-timeout-ms';
/** Metadata key with the absolute local deadline (epoch ms), set for handlers by the interceptor. */
export const DEADLINE_HEADER = 'maas-deadline';

/**
 * grpc-js server interceptor: reads the call's gRPC deadline and our timeout header and leaves
 * the earlier of the two, as an absolute local time, in the `maas-deadline` metadata entry.
 */
export const deadlineInterceptor: grpc.ServerInterceptor = (_method, call) =>
  new grpc.ServerInterceptingCall(call, {
    start(next) {
      next({
        onReceiveMetadata(metadata, mdNext) {
          const received = Date.now();
          let deadline = Infinity;
          const grpcDeadline = call.getDeadline();
          const asMs = grpcDeadline instanceof Date ? grpcDeadline.getTime() : grpcDeadline;
          if (Number.isFinite(asMs)) deadline = asMs;
          const timeout = Number(metadata.get(TIMEOUT_HEADER)[0]);
          if (Number.isFinite(timeout) && timeout >= 0) deadline = Math.min(deadline, received + timeout);
          metadata.remove(TIMEOUT_HEADER);
          metadata.remove(DEADLINE_HEADER);
          if (Number.isFinite(deadline)) metadata.set(DEADLINE_HEADER, String(deadline));
          mdNext(metadata);
        },
      });
    },
  });

/** The longest delay Node's setTimeout keeps (2^31 - 1 ms, 24.8 days); a longer one fires at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** A timer until an absolute deadline (epoch ms); clear it with clearDeadlineTimer. */
export interface DeadlineTimer {
  timer: NodeJS.Timeout | undefined;
}

/**
 * Calls `onExpired` once `deadline` (epoch ms) has passed. A deadline further away than setTimeout
 * can wait (a caller may send any 32-bit timeout) is waited for in steps, not fired at once.
 */
export function startDeadlineTimer(deadline: number, onExpired: () => void): DeadlineTimer {
  const handle: DeadlineTimer = { timer: undefined };
  const arm = () => {
    const remaining = deadline - Date.now();
    if (remaining <= 0) return onExpired();
    handle.timer = setTimeout(arm, Math.min(remaining, MAX_TIMER_MS));
  };
  handle.timer = setTimeout(arm, Math.max(0, Math.min(deadline - Date.now(), MAX_TIMER_MS)));
  return handle;
}

export function clearDeadlineTimer(handle: DeadlineTimer | undefined): void {
  if (handle) clearTimeout(handle.timer);
}
