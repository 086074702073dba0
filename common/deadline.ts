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
