/**
 * Server bootstrap shared by every service: one gRPC server with the mesh's middleware stack,
 * `grpc.health.v1` (Check and Watch) and server reflection (v1 and v1alpha) serving the
 * descriptors the proto compiler produced, so grpcurl works with no proto files at hand.
 */
import http2 = require('node:http2');
import * as grpc from '@grpc/grpc-js';
import { CompatServiceDefinition, ServerMiddleware, createServer } from 'nice-grpc';
import { composeServerMiddleware } from 'nice-grpc-common';
import { EncodedMessage, callStreamHandler } from './call-stream';
import { openTelemetryServerMiddleware } from 'nice-grpc-opentelemetry';
import { HealthDefinition, HealthServiceImpl, HealthState } from 'nice-grpc-server-health';
import { ServerReflection, ServerReflectionService } from 'nice-grpc-server-reflection';
import { deadlineInterceptor } from './deadline';
import { MeshTls, authorizationInterceptor, checkListenSecurity, isLoopbackHost, serverCredentials } from './tls';
import { loadDescriptorSet } from './descriptors';
import { Logger } from './log';
import { MeshContextExt, deadlineAndErrorMiddleware } from './middleware';
import { tracingEnabled } from './tracing';
import { TsProtoDefinition, guardRequestDecoding } from './wire-integers';

/** A service to serve: its generated definition and our implementation. */
export interface ServiceRegistration {
  definition: CompatServiceDefinition & { fullName: string };
  // The implementation's type is checked where it is written, against the generated interface.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  implementation: any;
}

/** What startGrpcServer needs. */
export interface GrpcServerOptions {
  /** Interface to bind, e.g. 127.0.0.1 or 0.0.0.0. */
  host: string;
  /** Port to bind; 0 picks a free one. */
  port: number;
  /** Largest message accepted or sent, in bytes. */
  maxMessageBytes: number;
  /**
   * Most calls one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS):
   * what one caller can hold. A client past it waits for a stream to end.
   */
  maxConcurrentStreams: number;
  services: ServiceRegistration[];
  log: Logger;
  /** Health status reported from the start; a worker starts NOT_SERVING until its models load. */
  serving: boolean;
  /**
   * TLS: with it, an internal server requires a client certificate from the mesh CA and authorizes
   * every method by the caller's identity; without it the server is plaintext, which is allowed
   * only on a loopback host unless `insecure`.
   */
  tls?: MeshTls;
  /** Allow plaintext on a non-loopback host. */
  insecure?: boolean;
  /** The public edge (the gateway): TLS without client certificates, no per-method identity check. */
  publicEdge?: boolean;
  /**
   * A second port, plaintext, serving only grpc.health.v1, for probes that cannot present a
   * client certificate (Kubernetes gRPC probes). 0 or undefined: none.
   */
  healthPort?: number;
  /**
   * Middleware for the services of `services` only (not health, not reflection), run after the
   * mesh's stack so its errors are mapped like a handler's: the gateway's authentication.
   */
  serviceMiddleware?: ServerMiddleware<object, MeshContextExt>;
  /** Counts every call (common/call-metrics.ts); it runs outside the error mapping, to see the status sent. */
  callMetrics?: ServerMiddleware;
  /**
   * Methods whose calls may stay open for good (watches, membership streams): a graceful shutdown
   * does not wait for them, it cuts them once the other calls have finished. Health Watch and
   * reflection are always such.
   */
  longLivedMethods?: readonly string[];
  /**
   * After this long, a client connection is told to go away (HTTP/2 GOAWAY) and the client
   * reconnects, through its resolver and load balancer, for its next calls: without it a client
   * stays on one replica for good. 0 or undefined: never.
   */
  maxConnectionAgeMs?: number;
  /** How long calls in flight on a connection past its age may still run before it is closed. */
  maxConnectionAgeGraceMs?: number;
  /**
   * Call streams to serve (common/call-stream.ts): for each, the bidi method `calls` of the
   * service at `definitionIndex` in `services` carries calls of its server-streaming method
   * `carries`, each run through the same middleware and handler as a plain call of it. The stream
   * itself is long-lived; its calls count for the drain.
   */
  callStreams?: readonly CallStreamRegistration[];
}

/** One call stream method of a service (see GrpcServerOptions.callStreams). */
export interface CallStreamRegistration {
  /** Index of the service in `services`. */
  service: number;
  /** Key of the bidi method in the definition's methods, e.g. 'scheduleCalls'. */
  calls: string;
  /** Key of the server-streaming method it carries, e.g. 'schedule'. */
  carries: string;
}

/** How long a drain waits, once the last counted call has returned, for its status to be sent. */
const STATUS_FLUSH_MS = 200;

/** Methods every server has that never end by themselves. */
const ALWAYS_LONG_LIVED = [
  '/grpc.health.v1.Health/Watch',
  '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo',
  '/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo',
];

/** A running server. */
export interface RunningGrpcServer {
  /** The bound port. */
  readonly port: number;
  /** The bound health-only port, when one was asked for. */
  readonly healthPort: number | undefined;
  /** host:port that clients can dial. */
  readonly address: string;
  /** Sets the health of the server and of each of its services. */
  setServing(serving: boolean): void;
  /**
   * Stops taking calls (GOAWAY, NOT_SERVING), waits up to graceMs for the calls in flight other
   * than the long-lived ones, then cuts what remains.
   */
  shutdown(graceMs?: number): Promise<void>;
  /** Cuts every connection at once, with no status sent: what callers see when a process dies. */
  kill(): void;
}

/**
 * Health service name that reports SERVING for as long as the process answers, whatever its
 * readiness: for liveness probes, so a worker that is loading models or draining (NOT_SERVING
 * on "") is not restarted.
 */
export const LIVENESS_SERVICE = 'liveness';

const REFLECTION_V1ALPHA = Object.fromEntries(
  Object.entries(ServerReflectionService).map(([name, method]) => [
    name,
    { ...method, path: method.path.replace('grpc.reflection.v1.', 'grpc.reflection.v1alpha.') },
  ]),
) as typeof ServerReflectionService;

let nagleDisabled = false;

/**
 * Turns Nagle's algorithm off on the sockets every HTTP/2 server of this process accepts, as gRPC's
 * other implementations do. grpc-js (1.14) sets TCP_NODELAY only on its client sockets: on the
 * server's, a small write that follows another on one connection (a stream's trailers after its
 * last message, the next token while the previous one is unacknowledged) waits for the peer's
 * ACK, which the peer may delay; a relay of streamed tokens pays that at every hop. grpc-js builds
 * its HTTP/2 servers through `http2.createServer`/`createSecureServer` when it binds, with options
 * of its own and no way to add ours, so `noDelay` (a `net.Server` option) is added there. Once per process.
 */
function disableNagleOnServerSockets(): void {
  if (nagleDisabled) return;
  nagleDisabled = true;
  const plain = http2.createServer;
  const secure = http2.createSecureServer;
  http2.createServer = ((o?: http2.ServerOptions, listener?: Parameters<typeof plain>[1]) => plain({ ...o, noDelay: true } as http2.ServerOptions, listener)) as typeof plain;
  http2.createSecureServer = ((o?: http2.SecureServerOptions, listener?: Parameters<typeof secure>[1]) => secure({ ...o, noDelay: true } as http2.SecureServerOptions, listener)) as typeof secure;
}

/** Starts a gRPC server with health, reflection and the mesh's middleware. */
export async function startGrpcServer(options: GrpcServerOptions): Promise<RunningGrpcServer> {
  disableNagleOnServerSockets();
  checkListenSecurity(options.host, options.tls !== undefined, options.insecure ?? false);
  if (!options.tls && !isLoopbackHost(options.host)) {
    options.log.warn('serving plaintext beyond loopback (--insecure): no authentication, no encryption', { host: options.host });
  }
  const publicEdge = options.publicEdge ?? false;
  const serverId = nextServerId++;
  const base = createServer({
    // Names this server to serveRawHandlers (grpc-js keeps unknown options and ignores them).
    [SERVER_ID_OPTION]: serverId,
    // Authorization first: a refused call reaches nothing else.
    interceptors: [authorizationInterceptor(options.tls !== undefined && !publicEdge), deadlineInterceptor],
    'grpc.max_receive_message_length': options.maxMessageBytes,
    'grpc.max_send_message_length': options.maxMessageBytes,
    'grpc.max_concurrent_streams': options.maxConcurrentStreams,
    ...(options.maxConnectionAgeMs ? { 'grpc.max_connection_age_ms': options.maxConnectionAgeMs, 'grpc.max_connection_age_grace_ms': options.maxConnectionAgeGraceMs ?? 0 } : {}),
  });
  const callStreamPaths = (options.callStreams ?? []).map((c) => methodPath(options.services[c.service].definition, c.calls));
  const inFlight = callsInFlight(new Set([...ALWAYS_LONG_LIVED, ...(options.longLivedMethods ?? []), ...callStreamPaths]));
  // Telemetry first, so its span covers everything below; only when tracing is on.
  const stack: ServerMiddleware[] = [
    inFlight.middleware,
    ...(tracingEnabled() ? [openTelemetryServerMiddleware() as ServerMiddleware] : []),
    ...(options.callMetrics ? [options.callMetrics] : []),
    deadlineAndErrorMiddleware(options.log) as ServerMiddleware,
  ];
  const server = stack.reduce((s, m) => s.use(m), base as ReturnType<typeof createServer>);
  // A 64-bit integer beyond 2^53 reaches the middleware as a marker (INVALID_ARGUMENT), not as
  // an exception inside grpc-js's deserializer (INTERNAL).
  const services = options.serviceMiddleware ? server.with(options.serviceMiddleware as ServerMiddleware) : server;
  const draining = new AbortController();
  const callStack = stack.reduce((a, b) => composeServerMiddleware(a, b));
  const rawHandlers = new Map<string, grpc.handleBidiStreamingCall<unknown, unknown>>();
  options.services.forEach((s, index) => {
    const guarded = acceptEncodedResponses(guardRequestDecoding(s.definition as unknown as TsProtoDefinition));
    let implementation = s.implementation;
    for (const c of options.callStreams ?? []) {
      if (c.service !== index) continue;
      const carried = (guarded.methods as Record<string, TsProtoDefinition['methods'][string] & { responseType: { encode(m: unknown): { finish(): Uint8Array } } }>)[c.carries];
      const handler = s.implementation[c.carries] as (request: unknown, context: unknown) => AsyncIterable<unknown>;
      rawHandlers.set(
        methodPath(s.definition, c.calls),
        callStreamHandler({
          path: methodPath(s.definition, c.carries),
          decode: (bytes) => carried.requestType.decode(bytes),
          encode: (message) => carried.responseType.encode(message).finish(),
          handler: (request, context) => handler.call(s.implementation, request, context),
          middleware: callStack,
          draining: draining.signal,
          maxCallsPerStream: options.maxConcurrentStreams,
          log: options.log,
        }) as grpc.handleBidiStreamingCall<unknown, unknown>,
      );
      // A placeholder for nice-grpc, which needs every method: grpc-js gets the handler above (see serveRawHandlers).
      implementation = { ...implementation, [c.calls]: rawHandlerPlaceholder };
    }
    services.add(guarded as unknown as typeof s.definition, implementation);
  });

  const health = HealthState();
  const names = options.services.map((s) => s.definition.fullName);
  const setServing = (serving: boolean) => {
    const status = serving ? 'healthy' : 'unhealthy';
    health.setStatus(status);
    for (const name of names) health.setStatus(status, name);
  };
  setServing(options.serving);
  health.setStatus('healthy', LIVENESS_SERVICE);
  server.add(HealthDefinition, HealthServiceImpl(health));

  const reflection = ServerReflection(loadDescriptorSet(), [...names, 'grpc.health.v1.Health']);
  server.add(ServerReflectionService, reflection);
  server.add(REFLECTION_V1ALPHA, reflection);

  const port = await serveRawHandlers(serverId, rawHandlers, () => server.listen(`${options.host}:${options.port}`, serverCredentials(options.tls, !publicEdge)));
  let healthServer: ReturnType<typeof createServer> | undefined;
  let healthPort: number | undefined;
  if (options.healthPort !== undefined && options.healthPort > 0) {
    healthServer = createServer();
    healthServer.add(HealthDefinition, HealthServiceImpl(health));
    healthPort = await healthServer.listen(`${options.host}:${options.healthPort}`).catch((err: unknown) => {
      server.forceShutdown();
      throw err;
    });
  }
  const dialHost = options.host === '0.0.0.0' || options.host === '::' ? '127.0.0.1' : options.host;
  return {
    port,
    healthPort,
    address: `${dialHost}:${port}`,
    setServing,
    async shutdown(graceMs = 5000) {
      setServing(false);
      // Call streams refuse new calls (their callers open streams elsewhere) and end once theirs have.
      draining.abort();
      let timer: NodeJS.Timeout | undefined;
      // No new calls from here (GOAWAY on every connection); the calls in flight finish, up to
      // graceMs. Long-lived streams never end by themselves: they are cut once the others are done.
      const closed = server.shutdown().catch(() => {});
      const graceOver = new Promise<void>((r) => {
        timer = setTimeout(r, graceMs);
      });
      // A handler that has returned still has its status to send: a moment for it to go out
      // (the connections close by themselves, unless a long-lived stream holds one open).
      const drained = inFlight.drained().then(() => Promise.race([closed, new Promise<void>((r) => setTimeout(r, STATUS_FLUSH_MS).unref())]));
      await Promise.race([closed, drained, graceOver]);
      clearTimeout(timer);
      server.forceShutdown();
      healthServer?.forceShutdown();
    },
    kill: () => {
      server.forceShutdown();
      healthServer?.forceShutdown();
    },
  };
}

/** The option that names a server to serveRawHandlers. */
const SERVER_ID_OPTION = 'maas.server_id';
let nextServerId = 1;
/** Handlers that go to grpc-js as they are, by server and method path, while that server starts. */
const rawHandlersOf = new Map<number, ReadonlyMap<string, grpc.handleBidiStreamingCall<unknown, unknown>>>();

// eslint-disable-next-line require-yield
async function* rawHandlerPlaceholder(): AsyncGenerator<never> {
  throw new Error('a call stream method is served by its grpc-js handler, not through nice-grpc');
}

/**
 * Runs `listen` (nice-grpc's, which builds the grpc-js server and adds each service to it) so
 * that the methods of `handlers` get those grpc-js handlers instead of nice-grpc's wrappers: a
 * call stream handles its own messages, and nice-grpc's async iteration per message costs more
 * than the message. nice-grpc has no way to add a raw handler, so grpc-js's addService is wrapped
 * (once per process) to look the server up by its id option.
 */
async function serveRawHandlers<T>(serverId: number, handlers: ReadonlyMap<string, grpc.handleBidiStreamingCall<unknown, unknown>>, listen: () => Promise<T>): Promise<T> {
  if (handlers.size === 0) return listen();
  installAddServiceHook();
  rawHandlersOf.set(serverId, handlers);
  try {
    return await listen();
  } finally {
    rawHandlersOf.delete(serverId);
  }
}

let hookInstalled = false;
function installAddServiceHook() {
  if (hookInstalled) return;
  hookInstalled = true;
  const addService = grpc.Server.prototype.addService;
  grpc.Server.prototype.addService = function (this: grpc.Server & { options?: Record<string, unknown> }, service: grpc.ServiceDefinition, implementation: grpc.UntypedServiceImplementation) {
    const id = (this as unknown as { options: Record<string, unknown> }).options?.[SERVER_ID_OPTION];
    const handlers = typeof id === 'number' ? rawHandlersOf.get(id) : undefined;
    if (handlers) {
      implementation = { ...implementation };
      for (const [name, method] of Object.entries(service)) {
        const raw = handlers.get(method.path);
        if (raw) implementation[name] = raw as grpc.UntypedHandleCall;
      }
    }
    return addService.call(this, service, implementation);
  };
}

/**
 * The same definition, whose response encoders pass an {@link EncodedMessage} through as it is: a
 * relay's handler may yield the bytes it received instead of decoding and encoding them again.
 */
function acceptEncodedResponses<D extends TsProtoDefinition>(definition: D): D {
  const methods: Record<string, unknown> = {};
  for (const [key, method] of Object.entries(definition.methods) as unknown as [string, { responseType: { encode(m: unknown, w?: unknown): { finish(): Uint8Array }; fromPartial?(m: unknown): unknown } }][]) {
    const encode = method.responseType.encode.bind(method.responseType);
    const fromPartial = method.responseType.fromPartial?.bind(method.responseType);
    methods[key] = {
      ...method,
      responseType: {
        ...method.responseType,
        encode: (message: unknown, writer?: unknown) => (message instanceof EncodedMessage ? { finish: () => message.bytes } : encode(message, writer)),
        // nice-grpc completes every response with fromPartial before encoding it.
        ...(fromPartial ? { fromPartial: (message: unknown) => (message instanceof EncodedMessage ? message : fromPartial(message)) } : {}),
      },
    };
  }
  return { ...definition, methods };
}

/** The path of a method of a generated definition, as gRPC names it: /package.Service/Method. */
function methodPath(definition: CompatServiceDefinition & { fullName: string }, key: string): string {
  const method = (definition as unknown as TsProtoDefinition).methods[key];
  if (!method) throw new Error(`${definition.fullName} has no method ${key}`);
  return `/${definition.fullName}/${method.name}`;
}

/** Counts the calls in flight other than the long-lived ones, to know when a drain is done. */
function callsInFlight(longLived: ReadonlySet<string>): { middleware: ServerMiddleware; drained(): Promise<void> } {
  let count = 0;
  const waiters: (() => void)[] = [];
  return {
    middleware: async function* countCalls(call, context) {
      if (longLived.has(call.method.path)) return yield* call.next(call.request, context);
      count++;
      try {
        return yield* call.next(call.request, context);
      } finally {
        if (--count === 0) for (const resolve of waiters.splice(0)) resolve();
      }
    },
    drained: () => (count === 0 ? Promise.resolve() : new Promise((resolve) => waiters.push(resolve))),
  };
}
