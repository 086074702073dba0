/**
 * Clients between services: one channel per address, the client half of the middleware stack
 * (telemetry injects W3C trace context into metadata; deadlines pass on the time that remains).
 */
import {
  Channel,
  ChannelOptions,
  ClientError,
  ClientMiddleware,
  CompatServiceDefinition,
  Metadata,
  Status,
  createChannel,
  createClientFactory,
} from 'nice-grpc';
import { openTelemetryClientMiddleware } from 'nice-grpc-opentelemetry';
import { isAbortError } from 'abort-controller-x';
import { TIMEOUT_HEADER } from './deadline';
import { tracingEnabled } from './tracing';

/** Options every call between services may take, beyond nice-grpc's own. */
export interface MeshCallOptions {
  /** Absolute deadline (epoch ms). The callee gets the time that remains; the call aborts when it passes. */
  deadline?: number;
}

/** Client middleware that sends the remaining time and enforces the deadline locally. */
export const deadlineClientMiddleware: ClientMiddleware<MeshCallOptions> = async function* deadlineClient(call, options) {
  const { deadline, ...rest } = options;
  if (deadline === undefined || !Number.isFinite(deadline)) return yield* call.next(call.request, rest);
  const remaining = Math.floor(deadline - Date.now());
  if (remaining <= 0) throw new ClientError(call.method.path, Status.DEADLINE_EXCEEDED, 'deadline exceeded');
  const metadata = Metadata(rest.metadata).set(TIMEOUT_HEADER, String(remaining));
  const controller = new AbortController();
  const onAbort = () => controller.abort(rest.signal?.reason);
  if (rest.signal?.aborted) onAbort();
  else rest.signal?.addEventListener('abort', onAbort, { once: true });
  let expired = false;
  const timer = setTimeout(() => {
    expired = true;
    controller.abort();
  }, remaining);
  try {
    return yield* call.next(call.request, { ...rest, metadata, signal: controller.signal });
  } catch (err) {
    if (expired && isAbortError(err)) throw new ClientError(call.method.path, Status.DEADLINE_EXCEEDED, 'deadline exceeded');
    throw err;
  } finally {
    clearTimeout(timer);
    rest.signal?.removeEventListener('abort', onAbort);
  }
};

/** Channel options shared by every client of the mesh. */
export function channelOptions(maxMessageBytes: number): ChannelOptions {
  return {
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
  };
}

/** Opens a plaintext channel to `address` (host:port). */
export function openChannel(address: string, maxMessageBytes = 16 * 1024 * 1024): Channel {
  return createChannel(address, undefined, channelOptions(maxMessageBytes));
}

const plainFactory = createClientFactory().use(deadlineClientMiddleware);
const tracingFactory = createClientFactory().use(openTelemetryClientMiddleware()).use(deadlineClientMiddleware);

/** A typed client of `definition` over `channel`, with deadline propagation, and tracing when it is on. */
export function createMeshClient<D extends CompatServiceDefinition>(definition: D, channel: Channel) {
  return (tracingEnabled() ? tracingFactory : plainFactory).create(definition, channel);
}
