/**
 * Call streams (proto/maas/internal/v1/calls.proto): many calls of one server-streaming method on
 * one long-lived bidirectional stream between two services that talk constantly.
 *
 * Opening an HTTP/2 stream per call costs each side of a grpc-js call about as much CPU as a
 * whole small model call; a message on a stream that is already open costs a tenth of that. A call
 * on a call stream keeps what a gRPC call has: one request, a stream of responses, a status, a
 * deadline, a cancel and W3C trace context. On the server each call runs through the same
 * middleware as a plain call of the method (span, metrics, deadline, error mapping, drain count),
 * so a handler cannot tell the two apart.
 *
 * Both sides batch: frames and replies produced within one turn of the event loop travel as one
 * message.
 */
import { CallContext, Channel, ClientError, ClientMiddleware, Metadata, MethodDescriptor, ServerError, ServerMiddleware, Status, createClient } from 'nice-grpc';
import { composeClientMiddleware, composeServerMiddleware } from 'nice-grpc-common';
import { AbortError } from 'abort-controller-x';
import { openTelemetryClientMiddleware } from 'nice-grpc-opentelemetry';
import { CallEnd, CallFrame, CallReply } from '../generated/maas/internal/v1/calls';
import { DEADLINE_HEADER } from './deadline';
import { NO_READY_WORKER_TRAILER } from './errors';
import { Logger } from './log';
import { toServerError } from './middleware';
import { PEER_IDENTITY_HEADER } from './tls';
import { tracingEnabled } from './tracing';

/** One batch of frames from the caller (a `...CallsRequest` of any service). */
export interface CallFrames {
  frames: CallFrame[];
}

/** One batch of replies from the callee (a `...CallsResponse` of any service). */
export interface CallReplies {
  replies: CallReply[];
  draining: boolean;
}

/** A response message that is already encoded: passed on as it is, not read (a relay's output). */
export class EncodedMessage {
  constructor(readonly bytes: Uint8Array) {}
}

/** The method a call stream carries, as middleware sees it: a server-streaming method. */
export function carriedMethod(path: string): MethodDescriptor {
  return { path, requestStream: false, responseStream: true, options: {} };
}

/** Replies queued on a server stream beyond which its calls wait for the stream to take them. */
const SERVER_HIGH_WATER_BYTES = 1 << 20;

/** What a call stream server needs: how to read requests and write responses of the method. */
export interface CallStreamServerOptions<Req, Res> {
  /** The carried method's path, e.g. /maas.internal.v1.SchedulerService/Schedule. */
  path: string;
  /** Decodes the method's request (the definition's guarded decoder: see wire-integers.ts). */
  decode(bytes: Uint8Array): Req;
  /** Encodes one of the method's responses. */
  encode(message: Res): Uint8Array;
  /** The method's handler, as it is registered for plain calls. */
  handler(request: Req, context: CallContext): AsyncIterable<Res | EncodedMessage>;
  /** The middleware every plain call of the server goes through (span, metrics, drain count, deadline and errors). */
  middleware: ServerMiddleware;
  /** Aborted when the server starts to drain: new calls are refused, those in flight finish. */
  draining: AbortSignal;
  /** Most calls open on one stream (the server's limit of concurrent streams). */
  maxCallsPerStream: number;
  log: Logger;
}

/**
 * The handler of a `...Calls` method: runs each call started on the stream through `middleware`
 * and `handler`, sends its responses and its end.
 */
export function callStreamHandler<Req, Res>(o: CallStreamServerOptions<Req, Res>) {
  const method = carriedMethod(o.path);
  const run = composeServerMiddleware(o.middleware, async function* passThrough(call, context) {
    return yield* call.next(call.request, context);
  });
  return async function* calls(requests: AsyncIterable<CallFrames>, stream: CallContext): AsyncGenerator<CallReplies> {
    const open = new Map<number, AbortController>();
    const out: CallReply[] = [];
    let outBytes = 0;
    let inputDone = false;
    let drainingSent = false;
    let fatal: ServerError | undefined;
    let wake: (() => void) | undefined;
    let flushQueued = false;
    const spaceWaiters: (() => void)[] = [];
    const identity = stream.metadata.get(PEER_IDENTITY_HEADER);
    // Everything produced within one turn of the event loop goes out as one message.
    const notify = () => {
      if (flushQueued) return;
      flushQueued = true;
      setImmediate(() => {
        flushQueued = false;
        const w = wake;
        wake = undefined;
        w?.();
      });
    };
    const push = (reply: CallReply, bytes = 0) => {
      out.push(reply);
      outBytes += bytes;
      notify();
    };
    const end = (callId: number, status: CallEnd) => push({ callId, reply: { $case: 'end', end: status } });

    const startCall = (callId: number, start: NonNullable<Extract<CallFrame['frame'], { $case: 'start' }>>['start']) => {
      if (o.draining.aborted) return end(callId, { code: Status.UNAVAILABLE, details: `${o.path}: the server is draining`, refused: true, noReadyWorker: false });
      if (open.size >= o.maxCallsPerStream) {
        return end(callId, { code: Status.RESOURCE_EXHAUSTED, details: `${o.path}: ${open.size} calls are open on this stream, the limit (--max-concurrent-streams)`, refused: true, noReadyWorker: false });
      }
      let request: Req;
      try {
        request = o.decode(start.request);
      } catch {
        return end(callId, { code: Status.INVALID_ARGUMENT, details: `${o.path}: the request of call ${callId} is not a valid message`, refused: false, noReadyWorker: false });
      }
      const controller = new AbortController();
      open.set(callId, controller);
      const metadata = Metadata();
      if (start.traceparent !== '') metadata.set('traceparent', start.traceparent);
      if (start.tracestate !== '') metadata.set('tracestate', start.tracestate);
      if (start.timeoutMs > 0) metadata.set(DEADLINE_HEADER, String(Date.now() + start.timeoutMs));
      if (identity !== undefined) metadata.set(PEER_IDENTITY_HEADER, identity);
      const trailer = Metadata();
      const context: CallContext = { metadata, peer: stream.peer, header: Metadata(), sendHeader: () => {}, trailer, signal: controller.signal };
      const responses = run({ method, requestStream: false, responseStream: true, request, next: (req: unknown, ctx: CallContext) => o.handler(req as Req, ctx) as AsyncGenerator<never> } as never, context as never);
      void (async () => {
        try {
          for await (const message of responses as AsyncIterable<Res | EncodedMessage>) {
            const bytes = asBuffer(message instanceof EncodedMessage ? message.bytes : o.encode(message));
            push({ callId, reply: { $case: 'message', message: bytes } }, bytes.length);
            if (outBytes > SERVER_HIGH_WATER_BYTES && !controller.signal.aborted) await new Promise<void>((r) => spaceWaiters.push(r));
          }
          if (!controller.signal.aborted) end(callId, { code: Status.OK, details: '', refused: false, noReadyWorker: false });
        } catch (err) {
          // A call its caller cancelled needs no end: the caller has forgotten it.
          if (controller.signal.aborted && open.get(callId) !== controller) return;
          const status = err instanceof ServerError ? err : toServerError(err, false, o.path, o.log);
          end(callId, { code: status.code, details: status.details, refused: false, noReadyWorker: trailer.get(NO_READY_WORKER_TRAILER) !== undefined });
        } finally {
          if (open.get(callId) === controller) open.delete(callId);
          notify();
        }
      })();
    };

    const onFrame = (frame: CallFrame) => {
      const callId = frame.callId;
      if (frame.frame?.$case === 'start') {
        if (callId <= 0 || !Number.isSafeInteger(callId)) {
          fatal = new ServerError(Status.INVALID_ARGUMENT, `${o.path}: call_id must be from 1 to 2^53 - 1, given ${callId}`);
        } else if (open.has(callId)) {
          fatal = new ServerError(Status.INVALID_ARGUMENT, `${o.path}: call_id ${callId} is already open on this stream`);
        } else startCall(callId, frame.frame.start);
      } else if (frame.frame?.$case === 'cancel') {
        const controller = open.get(callId);
        if (controller) {
          open.delete(callId);
          controller.abort();
        }
      }
      if (fatal) notify();
    };

    const onDrain = () => notify();
    o.draining.addEventListener('abort', onDrain, { once: true });
    const reader = (async () => {
      try {
        for await (const batch of requests) {
          for (const frame of batch.frames) onFrame(frame);
          if (fatal) return;
        }
      } catch {
        // The stream broke: the finally below cancels its calls.
      } finally {
        inputDone = true;
        notify();
      }
    })();
    try {
      for (;;) {
        if (fatal) throw fatal;
        const announce = o.draining.aborted && !drainingSent;
        if (out.length > 0 || announce) {
          drainingSent ||= o.draining.aborted;
          const replies = out.splice(0);
          outBytes = 0;
          for (const resume of spaceWaiters.splice(0)) resume();
          yield { replies, draining: o.draining.aborted };
          continue;
        }
        // The caller has stopped sending, or the server drains: the stream ends once its calls have.
        if (open.size === 0 && (inputDone || o.draining.aborted)) return;
        await new Promise<void>((r) => {
          wake = r;
          if (out.length > 0 || fatal) notify();
        });
      }
    } finally {
      o.draining.removeEventListener('abort', onDrain);
      for (const controller of open.values()) controller.abort();
      open.clear();
      for (const resume of spaceWaiters.splice(0)) resume();
      void reader;
    }
  };
}

/** A call stream client's failure, with what the callee said of it. */
export class CallStreamError extends ClientError {
  constructor(
    path: string,
    code: Status,
    details: string,
    /** The call did no work (draining callee, full stream): it may be sent again. */
    readonly refused = false,
    /** No ready worker serves the call's model. */
    readonly noReadyWorker = false,
  ) {
    super(path, code, details);
  }
}

/** Options of one call on a call stream. */
export interface CallStreamCallOptions {
  signal?: AbortSignal;
  /** Absolute deadline (epoch ms): the callee gets the time that remains; the call ends with DEADLINE_EXCEEDED when it passes. */
  deadline?: number;
}

/** What a call stream client needs. */
export interface CallStreamClientOptions<Req, Res> {
  /** The carried method's path, e.g. /maas.internal.v1.SchedulerService/Schedule. */
  path: string;
  /** Opens one `...Calls` stream (the generated client's method, with the stream's signal). */
  open(frames: AsyncIterable<CallFrames>, signal: AbortSignal): AsyncIterable<CallReplies>;
  encode(request: Req): Uint8Array;
  decode(bytes: Uint8Array): Res;
  /** Response bytes one call may hold unread before it is ended with RESOURCE_EXHAUSTED (its reader is stuck). */
  maxBufferedBytes?: number;
}

const DEFAULT_MAX_BUFFERED_BYTES = 64 << 20;
/** How many times a refused call (the callee was draining) is sent again on a new stream. */
const REFUSED_RESENDS = 3;

type Item = { bytes: Uint8Array } | { end: CallStreamError | undefined };

/** One call in flight on a client stream. */
class ClientCall {
  readonly items: Item[] = [];
  buffered = 0;
  waiter: (() => void) | undefined;
  constructor(readonly id: number) {}
  deliver(item: Item) {
    this.items.push(item);
    if ('bytes' in item) this.buffered += item.bytes.length;
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }
}

/** One open `...Calls` stream of a client. */
class ClientStream {
  readonly calls = new Map<number, ClientCall>();
  /** False once the callee drains, the stream fails or ends: no new call goes on it. */
  usable = true;
  private readonly outbox: CallFrame[] = [];
  private outWaiter: (() => void) | undefined;
  private flushQueued = false;
  private readonly controller = new AbortController();

  constructor(private readonly o: CallStreamClientOptions<unknown, unknown>, private readonly onGone: (s: ClientStream) => void, private readonly maxBuffered: number) {
    void this.read(o.open(this.frames(), this.controller.signal));
  }

  send(frame: CallFrame) {
    this.outbox.push(frame);
    if (this.flushQueued) return;
    this.flushQueued = true;
    setImmediate(() => {
      this.flushQueued = false;
      const w = this.outWaiter;
      this.outWaiter = undefined;
      w?.();
    });
  }

  /** Forgets a call (its end arrived, or its caller gave up), closing the stream once it is unusable and empty. */
  remove(call: ClientCall) {
    this.calls.delete(call.id);
    if (!this.usable && this.calls.size === 0) this.wakeOut();
  }

  close() {
    this.usable = false;
    this.controller.abort();
  }

  private wakeOut() {
    const w = this.outWaiter;
    this.outWaiter = undefined;
    w?.();
  }

  private async *frames(): AsyncGenerator<CallFrames> {
    for (;;) {
      if (this.outbox.length > 0) {
        yield { frames: this.outbox.splice(0) };
        continue;
      }
      if (!this.usable && this.calls.size === 0) return;
      await new Promise<void>((r) => (this.outWaiter = r));
    }
  }

  private async read(replies: AsyncIterable<CallReplies>) {
    let failure: CallStreamError | undefined;
    try {
      for await (const batch of replies) {
        if (batch.draining && this.usable) {
          this.usable = false;
          this.onGone(this);
        }
        for (const reply of batch.replies) {
          const call = this.calls.get(reply.callId);
          if (!call) continue;
          if (reply.reply?.$case === 'message') {
            call.deliver({ bytes: reply.reply.message });
            if (call.buffered > this.maxBuffered) {
              this.send({ callId: call.id, frame: { $case: 'cancel', cancel: {} } });
              this.remove(call);
              call.deliver({ end: new CallStreamError(this.o.path, Status.RESOURCE_EXHAUSTED, `${call.buffered} bytes of output were not read (limit ${this.maxBuffered})`) });
            }
          } else if (reply.reply?.$case === 'end') {
            const e = reply.reply.end;
            this.remove(call);
            call.deliver({ end: e.code === Status.OK ? undefined : new CallStreamError(this.o.path, e.code, e.details, e.refused, e.noReadyWorker) });
          }
        }
        if (!this.usable && this.calls.size === 0) this.wakeOut();
      }
      failure = new CallStreamError(this.o.path, Status.UNAVAILABLE, 'the call stream ended before the call did');
    } catch (err) {
      failure = err instanceof ClientError ? new CallStreamError(this.o.path, err.code, err.details) : new CallStreamError(this.o.path, Status.UNAVAILABLE, `the call stream failed: ${String(err)}`);
    } finally {
      if (this.usable) {
        this.usable = false;
        this.onGone(this);
      }
      for (const call of this.calls.values()) call.deliver({ end: failure });
      this.calls.clear();
      this.wakeOut();
      this.controller.abort();
    }
  }
}

/**
 * The client of one `...Calls` method on one channel: each call goes on the current stream (one is
 * opened when there is none, or when the callee drains) and reads like a plain call: an async
 * iterable of responses that throws a ClientError (a {@link CallStreamError}) with the call's status.
 */
export class CallStreamClient<Req, Res> {
  private current: ClientStream | undefined;
  private readonly streams = new Set<ClientStream>();
  private nextId = 1;
  private readonly maxBuffered: number;
  private readonly traced: ClientMiddleware | undefined;

  constructor(private readonly o: CallStreamClientOptions<Req, Res>) {
    this.maxBuffered = o.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_BYTES;
    this.traced = tracingEnabled() ? openTelemetryClientMiddleware() : undefined;
  }

  /** Streams open now (for tests and diagnostics). */
  get openStreams(): number {
    return this.streams.size;
  }

  /** Makes one call; its responses decoded. */
  async *call(request: Req, options: CallStreamCallOptions = {}): AsyncGenerator<Res> {
    for await (const bytes of this.callEncoded(request, options)) yield this.o.decode(bytes);
  }

  /** Makes one call; its responses as the callee encoded them (for a relay that does not read them). */
  callEncoded(request: Req, options: CallStreamCallOptions = {}): AsyncGenerator<Uint8Array> {
    const method = carriedMethod(this.o.path);
    const transport = (req: Req, metadata: Metadata | undefined) => this.transport(req, options, metadata);
    if (!this.traced) return transport(request, undefined);
    // The same client span as a plain call, its context sent in the start frame.
    const run = composeClientMiddleware(this.traced, async function* last(call, callOptions) {
      return yield* transport(call.request as Req, callOptions.metadata) as AsyncGenerator<never>;
    });
    return run({ method, requestStream: false, responseStream: true, request, next: undefined as never } as never, { metadata: Metadata() }) as AsyncGenerator<Uint8Array>;
  }

  /** Closes every stream; calls still open end with UNAVAILABLE. */
  close() {
    for (const s of this.streams) s.close();
    this.streams.clear();
    this.current = undefined;
  }

  private stream(): ClientStream {
    if (this.current?.usable) return this.current;
    const s = new ClientStream(this.o as CallStreamClientOptions<unknown, unknown>, (gone) => {
      if (this.current === gone) this.current = undefined;
      if (gone.calls.size === 0) this.streams.delete(gone);
    }, this.maxBuffered);
    this.streams.add(s);
    this.current = s;
    return s;
  }

  private async *transport(request: Req, options: CallStreamCallOptions, metadata: Metadata | undefined): AsyncGenerator<Uint8Array> {
    const { signal, deadline } = options;
    if (signal?.aborted) throw new AbortError();
    let timeoutMs = 0;
    if (deadline !== undefined && Number.isFinite(deadline)) {
      timeoutMs = Math.floor(deadline - Date.now());
      if (timeoutMs <= 0) throw new CallStreamError(this.o.path, Status.DEADLINE_EXCEEDED, 'deadline exceeded');
    }
    const encoded = this.o.encode(request);
    const traceparent = metadata?.get('traceparent') ?? '';
    const tracestate = metadata?.get('tracestate') ?? '';
    for (let resend = 0; ; resend++) {
      const stream = this.stream();
      const call = new ClientCall(this.nextId++);
      stream.calls.set(call.id, call);
      stream.send({ callId: call.id, frame: { $case: 'start', start: { request: asBuffer(encoded), timeoutMs: Math.max(0, timeoutMs), traceparent, tracestate } } });
      let stop: CallStreamError | AbortError | undefined;
      let ended = false;
      const giveUp = (why: CallStreamError | AbortError) => {
        if (ended || stop) return;
        stop = why;
        stream.send({ callId: call.id, frame: { $case: 'cancel', cancel: {} } });
        stream.remove(call);
        call.deliver({ end: undefined });
      };
      const onAbort = () => giveUp(new AbortError());
      signal?.addEventListener('abort', onAbort, { once: true });
      const timer = timeoutMs > 0 ? setTimeout(() => giveUp(new CallStreamError(this.o.path, Status.DEADLINE_EXCEEDED, 'deadline exceeded')), timeoutMs) : undefined;
      let sent = false;
      try {
        for (;;) {
          const item = call.items.shift();
          if (item === undefined) {
            await new Promise<void>((r) => (call.waiter = r));
            continue;
          }
          if ('bytes' in item) {
            call.buffered -= item.bytes.length;
            sent = true;
            yield item.bytes;
            continue;
          }
          ended = true;
          if (stop) throw stop;
          if (item.end === undefined) return;
          if (item.end.refused && !sent && resend < REFUSED_RESENDS) break;
          throw item.end;
        }
      } finally {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        // The consumer stopped early (return/throw into the generator): the call is cancelled.
        if (!ended) giveUp(new AbortError());
      }
    }
  }
}

/** The same bytes as a Buffer (what the generated code holds in a bytes field), not copied. */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A generated definition's method, as far as a call stream needs it. */
interface GeneratedMethod {
  name: string;
  requestType: { encode(message: never): { finish(): Uint8Array } };
  responseType: { decode(bytes: Uint8Array): unknown };
}

/**
 * The client of the call stream method `calls` of `definition` on `channel`, carrying calls of its
 * method `carries` (e.g. SchedulerServiceDefinition, 'scheduleCalls', 'schedule').
 */
export function openCallStreamClient<Req, Res>(
  definition: { fullName: string; methods: Record<string, unknown> },
  channel: Channel,
  calls: string,
  carries: string,
  maxBufferedBytes?: number,
): CallStreamClient<Req, Res> {
  const carried = definition.methods[carries] as GeneratedMethod | undefined;
  if (!carried || !definition.methods[calls]) throw new Error(`${definition.fullName} has no method ${carried ? calls : carries}`);
  // The stream itself goes without the tracing middleware: a span per stream would last for hours.
  const raw = createClient(definition as never, channel) as unknown as Record<string, (frames: AsyncIterable<CallFrames>, options: { signal: AbortSignal }) => AsyncIterable<CallReplies>>;
  return new CallStreamClient<Req, Res>({
    path: `/${definition.fullName}/${carried.name}`,
    open: (frames, signal) => raw[calls](frames, { signal }),
    encode: (request) => carried.requestType.encode(request as never).finish(),
    decode: (bytes) => carried.responseType.decode(bytes) as Res,
    maxBufferedBytes,
  });
}
