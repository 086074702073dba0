/**
 * Clients between services: one channel per address, the client half of the middleware stack
 * (telemetry injects W3C trace context into metadata; deadlines pass on the time that remains).
 */
import {
  Channel,
  ChannelCredentials,
  ChannelOptions,
  ClientError,
  ClientMiddleware,
  CompatServiceDefinition,
  Metadata,
  Status,
  createChannel,
  createClientFactory,
} from 'nice-grpc';
import { connectivityState } from '@grpc/grpc-js';
import { openTelemetryClientMiddleware } from 'nice-grpc-opentelemetry';
import { isAbortError } from 'abort-controller-x';
import { isIP } from 'node:net';
import { TIMEOUT_HEADER, clearDeadlineTimer, startDeadlineTimer } from './deadline';
import { PeerExpectation } from './mesh-identity';
import { MeshTls, isLoopbackHost, meshClientCredentials, toolCredentials } from './tls';
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
  const timer = startDeadlineTimer(deadline, () => {
    expired = true;
    controller.abort();
  });
  try {
    return yield* call.next(call.request, { ...rest, metadata, signal: controller.signal });
  } catch (err) {
    if (expired && isAbortError(err)) throw new ClientError(call.method.path, Status.DEADLINE_EXCEEDED, 'deadline exceeded');
    throw err;
  } finally {
    clearDeadlineTimer(timer);
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
    // grpc-js waits out a backoff of its own between connection attempts, growing by 1.6x to
    // 2 minutes, and fails every call meanwhile: a worker whose balancer was away for 40 s
    // rejoined the restarted one 21 s late, whatever its own retry interval. The services retry
    // on their own schedule (at most every 2 s); the channel must not outwait them.
    'grpc.initial_reconnect_backoff_ms': RECONNECT_BACKOFF_MS.initial,
    'grpc.max_reconnect_backoff_ms': RECONNECT_BACKOFF_MS.max,
  };
}

/** grpc-js's reconnect backoff on every channel the mesh opens (its defaults: 1 s, growing to 120 s). */
export const RECONNECT_BACKOFF_MS = { initial: 100, max: 2000 } as const;

/**
 * A client for a long-lived stream whose owner reconnects on a schedule of its own (the worker's
 * Join, the scheduler's Dispatch): `client()` opens a new channel when the last one is failing
 * (TRANSIENT_FAILURE), since grpc-js fails every call until its own backoff ends, and the two
 * backoffs would add up (a worker rejoined a restarted balancer 3.1 s after it served, against a
 * 2 s retry interval).
 */
export function clientOnFreshChannel<C>(open: () => Channel, makeClient: (channel: Channel) => C): { client(): C; close(): void } {
  let channel = open();
  let client = makeClient(channel);
  return {
    client() {
      if (channel.getConnectivityState(false) === connectivityState.TRANSIENT_FAILURE) {
        channel.close();
        channel = open();
        client = makeClient(channel);
      }
      return client;
    },
    close: () => channel.close(),
  };
}

/**
 * Opens a channel to `address` (host:port): plaintext, or TLS with `credentials` (see tls.ts).
 * `serverName` is sent as TLS SNI instead of the host (which may be an IP address, not allowed
 * there) and is the name a host name check compares.
 */
export function openChannel(address: string, maxMessageBytes = 16 * 1024 * 1024, credentials?: ChannelCredentials, serverName?: string): Channel {
  const options = channelOptions(maxMessageBytes);
  if (serverName) options['grpc.ssl_target_name_override'] = serverName;
  return createChannel(address, credentials, options);
}

/**
 * A channel from one service to another: mutual TLS with this service's certificate when `tls` is
 * set (the server must present the `expected` identity), plaintext otherwise.
 */
export function openMeshChannel(address: string, maxMessageBytes: number | undefined, tls: MeshTls | undefined, expected: PeerExpectation): Channel {
  if (!tls) return openChannel(address, maxMessageBytes);
  return openChannel(address, maxMessageBytes, meshClientCredentials(tls, expected), typeof expected === 'string' ? expected : expected.worker);
}

/**
 * Closes a channel that may have been opened a moment ago. grpc-js (1.14) delivers the address of
 * an IP target on the next turn of the event loop (setImmediate) even when the channel was closed
 * in between; the closed channel then takes a reference on the shared subchannel and registers
 * listeners on it that nothing removes, so the whole channel stays in memory for good. Closing on
 * the next turn, after that delivery, lets the channel go. A service that opens a channel per peer
 * (the balancer, per joined worker) closes it with this.
 */
export function closeChannel(channel: Channel): void {
  setImmediate(() => channel.close());
}

/**
 * A channel of a tool (the CLI, tests) to a TLS server, trusting `ca`, presenting `client` if given,
 * checking the server's host name as usual. On loopback the name checked is "localhost".
 */
export function openTlsChannel(address: string, ca: Buffer, client?: { cert: Buffer; key: Buffer }, maxMessageBytes?: number): Channel {
  const host = address.replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1');
  return openChannel(address, maxMessageBytes, toolCredentials(ca, client), isIP(host) && isLoopbackHost(host) ? 'localhost' : undefined);
}

const plainFactory = createClientFactory().use(deadlineClientMiddleware);
const tracingFactory = createClientFactory().use(openTelemetryClientMiddleware()).use(deadlineClientMiddleware);

/** A typed client of `definition` over `channel`, with deadline propagation, and tracing when it is on. */
export function createMeshClient<D extends CompatServiceDefinition>(definition: D, channel: Channel) {
  return (tracingEnabled() ? tracingFactory : plainFactory).create(definition, channel);
}
