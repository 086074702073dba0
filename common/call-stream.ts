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
import * as grpc from '@grpc/grpc-js';
import { CallContext, Channel, ClientError, ClientMiddleware, Metadata, MethodDescriptor, ServerError, ServerMiddleware, Status } from 'nice-grpc';
import { composeClientMiddleware, composeServerMiddleware } from 'nice-grpc-common';
import { AbortError } from 'abort-controller-x';
import { openTelemetryClientMiddleware } from 'nice-grpc-opentelemetry';
import { CallEnd, CallFrame, CallFrames as CallFramesCodec, CallReplies as CallRepliesCodec, CallReply } from '../generated/maas/internal/v1/calls';
import { DEADLINE_HEADER, clearDeadlineTimer, startDeadlineTimer } from './deadline';
import { NO_READY_WORKER_TRAILER } from './errors';
import { Logger } from './log';
import { toServerError } from './middleware';
import { UnsafeIntegerRequest } from './wire-integers';
import { PEER_IDENTITY_HEADER } from './tls';
import { tracingEnabled } from './tracing';
import { TurnBatch } from './turn-batch';

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

/** W3C trace context: `version-traceid-parentid-flags`, and a bounded printable tracestate. */
const TRACEPARENT = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;
const TRACESTATE = /^[\x20-\x7e]{1,512}$/;

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
 * The handler of a `...Calls` method, on grpc-js directly (nice-grpc's stream wrappers cost more
 * per message than the message itself): runs each call started on the stream through `middleware`
 * and `handler`, and sends its responses and its end.
 */
export function callStreamHandler<Req, Res>(o: CallStreamServerOptions<Req, Res>): (call: grpc.ServerDuplexStream<CallFrames, CallReplies>) => void {
  const method = carriedMethod(o.path);
  const run = composeServerMiddleware(o.middleware, async function* passThrough(call, context) {
    return yield* call.next(call.request, context);
  });
  return (call) => {
    const open = new Map<number, AbortController>();
    /** Bytes of the replies queued in this turn's batch. */
    let outBytes = 0;
    let inputDone = false;
    let drainingSent = false;
    let finished = false;
    let blocked = false;
    const spaceWaiters: (() => void)[] = [];
    const identity = call.metadata.get(PEER_IDENTITY_HEADER)[0];
    const peer = call.getPeer();

    const finish = (status?: { code: Status; details: string }) => {
      if (finished) return;
      finished = true;
      out.close();
      o.draining.removeEventListener('abort', onDrain);
      for (const controller of open.values()) controller.abort();
      open.clear();
      for (const resume of spaceWaiters.splice(0)) resume();
      if (status) call.emit('error', { code: status.code, details: status.details, metadata: new grpc.Metadata() });
      else call.end();
    };
    // Everything produced within one turn of the event loop goes out as one message; the turn's
    // flush also ends the stream once it is done (notify() asks for a flush with nothing to send).
    const out = new TurnBatch<CallReply>((replies) => {
      const announce = o.draining.aborted && !drainingSent;
      if (replies.length > 0 || announce) {
        drainingSent ||= o.draining.aborted;
        outBytes = 0;
        if (!call.write({ replies, draining: o.draining.aborted })) blocked = true;
        if (!blocked) for (const resume of spaceWaiters.splice(0)) resume();
      }
      // The caller has stopped sending, or the server drains: the stream ends once its calls have.
      if (open.size === 0 && (inputDone || o.draining.aborted)) finish();
    });
    const notify = () => out.schedule();
    call.on('drain', () => {
      blocked = false;
      for (const resume of spaceWaiters.splice(0)) resume();
    });
    const push = (reply: CallReply, bytes = 0) => {
      outBytes += bytes;
      out.push(reply);
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
      // Trace context that is not W3C's shape is dropped, as a malformed header would be.
      if (TRACEPARENT.test(start.traceparent)) {
        metadata.set('traceparent', start.traceparent);
        if (TRACESTATE.test(start.tracestate)) metadata.set('tracestate', start.tracestate);
      }
      if (start.timeoutMs > 0) metadata.set(DEADLINE_HEADER, String(Date.now() + start.timeoutMs));
      if (typeof identity === 'string') metadata.set(PEER_IDENTITY_HEADER, identity);
      const trailer = Metadata();
      const context: CallContext = { metadata, peer, header: Metadata(), sendHeader: () => {}, trailer, signal: controller.signal };
      const responses = run({ method, requestStream: false, responseStream: true, request, next: (req: unknown, ctx: CallContext) => o.handler(req as Req, ctx) as AsyncGenerator<never> } as never, context as never);
      void (async () => {
        try {
          for await (const message of responses as AsyncIterable<Res | EncodedMessage>) {
            const bytes = asBuffer(message instanceof EncodedMessage ? message.bytes : o.encode(message));
            push({ callId, reply: { $case: 'message', message: bytes } }, bytes.length);
            if ((blocked || outBytes > SERVER_HIGH_WATER_BYTES) && !controller.signal.aborted && !finished) await new Promise<void>((r) => spaceWaiters.push(r));
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

    const onDrain = () => notify();
    o.draining.addEventListener('abort', onDrain, { once: true });
    call.on('data', (batch: CallFrames | UnsafeIntegerRequest) => {
      if (finished) return;
      // grpc-js calls this inside its own socket callback: nothing may escape from here.
      try {
        onBatch(batch);
      } catch (err) {
        o.log.error('call stream frame failed', { method: o.path, err: err instanceof Error ? err : String(err) });
        finish({ code: Status.INTERNAL, details: 'internal error' });
      }
    });
    const onBatch = (batch: CallFrames | UnsafeIntegerRequest) => {
      // A 64-bit integer beyond 2^53 (a call_id) arrives as the decoder's marker (wire-integers.ts).
      if (batch instanceof UnsafeIntegerRequest) return finish({ code: Status.INVALID_ARGUMENT, details: `${o.path}: ${batch.field} must be from 1 to 2^53 - 1` });
      for (const frame of batch.frames) {
        const callId = frame.callId;
        if (frame.frame?.$case === 'start') {
          if (callId <= 0 || !Number.isSafeInteger(callId)) return finish({ code: Status.INVALID_ARGUMENT, details: `${o.path}: call_id must be from 1 to 2^53 - 1, given ${callId}` });
          if (open.has(callId)) return finish({ code: Status.INVALID_ARGUMENT, details: `${o.path}: call_id ${callId} is already open on this stream` });
          startCall(callId, frame.frame.start);
        } else if (frame.frame?.$case === 'cancel') {
          const controller = open.get(callId);
          if (controller) {
            open.delete(callId);
            controller.abort();
          }
        }
      }
    };
    call.on('end', () => {
      inputDone = true;
      notify();
    });
    // The caller went away (or the connection broke): every call of the stream is cancelled.
    call.on('cancelled', () => finish());
    call.on('error', () => finish());
  };
}

/** A call stream client's failure, with what the callee said of it. */
export class CallStreamError extends ClientError {
  /** The call did no work (draining callee, full stream): it may be sent again. */
  readonly refused: boolean;
  /** No ready worker serves the call's model. */
  readonly noReadyWorker: boolean;
  constructor(path: string, code: Status, details: string, refused = false, noReadyWorker = false) {
    // A status, not a bug: no stack (ClientError captures it twice and formats it; see withoutStack).
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(path, code, details);
    Error.stackTraceLimit = limit;
    this.refused = refused;
    this.noReadyWorker = noReadyWorker;
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
  /** The path of the `...Calls` method, e.g. /maas.internal.v1.SchedulerService/ScheduleCalls. */
  callsPath: string;
  /** The channel to the callee. */
  channel: Channel;
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

/** One open `...Calls` stream of a client, on grpc-js directly. */
class ClientStream {
  readonly calls = new Map<number, ClientCall>();
  /** False once the callee drains, the stream fails or ends: no new call goes on it. */
  usable = true;
  /**
   * True once the stream's end was handled (grpc-js's 'error' or 'end', both for one failed stream,
   * or a reply that could not be handled): its calls have failed and hooks.closed was called.
   */
  private ended = false;
  private readonly stream: grpc.ClientDuplexStream<CallFrames, CallReplies>;
  /** Frames of this turn, written as one message at its end; closed once nothing more may be written (half-closed or ended). */
  private readonly outbox = new TurnBatch<CallFrame>((frames) => {
    if (frames.length === 0) return;
    this.stream.write({ frames });
    this.maybeClose();
  });

  constructor(
    private readonly o: ClientOptions,
    private readonly hooks: { unusable(s: ClientStream): void; closed(s: ClientStream): void },
    private readonly maxBuffered: number,
  ) {
    this.stream = o.client.makeBidiStreamRequest(o.callsPath, serializeFrames, deserializeReplies);
    this.stream.on('data', (batch: CallReplies) => {
      // grpc-js calls this inside its own socket callback: nothing may escape from here.
      try {
        this.onReplies(batch);
      } catch (err) {
        this.stream.cancel();
        this.onEnd(new CallStreamError(this.o.path, Status.INTERNAL, `a reply could not be handled: ${err instanceof Error ? err.message : String(err)}`));
      }
    });
    this.stream.on('error', (err: grpc.ServiceError) => this.onEnd(new CallStreamError(this.o.path, err.code ?? Status.UNAVAILABLE, err.details ?? String(err))));
    this.stream.on('end', () => this.onEnd(new CallStreamError(this.o.path, Status.UNAVAILABLE, 'the call stream ended before the call did')));
  }

  /** Queues a frame for this turn's message; dropped once the stream is half-closed or ended. */
  send(frame: CallFrame) {
    this.outbox.push(frame);
  }

  /** Forgets a call (its end arrived, or its caller gave up), closing the stream once it is unusable and empty. */
  remove(call: ClientCall) {
    this.calls.delete(call.id);
    this.maybeClose();
  }

  close() {
    this.usable = false;
    if (!this.outbox.closed) this.stream.cancel();
  }

  private maybeClose() {
    if (!this.usable && this.calls.size === 0 && this.outbox.pending === 0 && !this.outbox.closed) {
      // Half-closed: the callee ends the stream in turn, and its 'end' runs onEnd.
      this.outbox.close();
      this.stream.end();
    }
  }

  private onReplies(batch: CallReplies) {
    if (batch.draining && this.usable) {
      this.usable = false;
      this.hooks.unusable(this);
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
    this.maybeClose();
  }

  private onEnd(failure: CallStreamError) {
    if (this.ended) return;
    this.ended = true;
    this.usable = false;
    this.outbox.close();
    for (const call of this.calls.values()) call.deliver({ end: failure });
    this.calls.clear();
    this.hooks.closed(this);
  }
}

const serializeFrames = (frames: CallFrames): Buffer => asBuffer(CallFramesCodec.encode(frames as CallFramesCodec).finish());
const deserializeReplies = (bytes: Buffer): CallReplies => CallRepliesCodec.decode(bytes);

/** What a client stream needs: the grpc-js client on the channel and the paths. */
interface ClientOptions {
  /** The carried method's path. */
  path: string;
  /** The bidi method's path. */
  callsPath: string;
  client: grpc.Client;
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

  private readonly client: grpc.Client;

  constructor(private readonly o: CallStreamClientOptions<Req, Res>) {
    this.maxBuffered = o.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_BYTES;
    this.traced = tracingEnabled() ? openTelemetryClientMiddleware() : undefined;
    // The channel's credentials apply; these are not used with channelOverride.
    this.client = new grpc.Client('unused', grpc.credentials.createInsecure(), { channelOverride: o.channel as unknown as grpc.Channel });
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
    // composeClientMiddleware(inner, outer): the span's middleware runs first and hands its
    // metadata (with traceparent) to the transport.
    const run = composeClientMiddleware(async function* last(call, callOptions) {
      return yield* transport(call.request as Req, callOptions.metadata) as AsyncGenerator<never>;
    }, this.traced);
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
    const s = new ClientStream(
      { path: this.o.path, callsPath: this.o.callsPath, client: this.client },
      {
        unusable: (gone) => {
          if (this.current === gone) this.current = undefined;
        },
        closed: (gone) => {
          if (this.current === gone) this.current = undefined;
          this.streams.delete(gone);
        },
      },
      this.maxBuffered,
    );
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
      stream.send({ callId: call.id, frame: { $case: 'start', start: { request: asBuffer(encoded), timeoutMs: Math.min(Math.max(0, timeoutMs), 0xffffffff), traceparent, tracestate } } });
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
      const timer = timeoutMs > 0 ? startDeadlineTimer(deadline!, () => giveUp(new CallStreamError(this.o.path, Status.DEADLINE_EXCEEDED, 'deadline exceeded'))) : undefined;
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
        clearDeadlineTimer(timer);
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
  const callsMethod = definition.methods[calls] as GeneratedMethod;
  return new CallStreamClient<Req, Res>({
    path: `/${definition.fullName}/${carried.name}`,
    callsPath: `/${definition.fullName}/${callsMethod.name}`,
    channel,
    encode: (request) => carried.requestType.encode(request as never).finish(),
    decode: (bytes) => carried.responseType.decode(bytes) as Res,
    maxBufferedBytes,
  });
}
