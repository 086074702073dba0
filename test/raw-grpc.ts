/**
 * Calls with raw bytes: a grpc-js generic client whose serializers are the identity, so a test can
 * send anything (bytes that are not the message at all, values the generated code cannot encode)
 * and see exactly the status, message and timing the server answers with.
 */
import { ChannelCredentials, Client, ClientDuplexStream, ClientReadableStream, Metadata, ServiceError, credentials, status } from '@grpc/grpc-js';

const identity = (b: Buffer) => b;
const toBuffer = (b: Uint8Array) => (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength));

/** How a call ended. */
export interface CallOutcome {
  /** The gRPC status code (OK when the call succeeded). */
  code: status;
  /** The status message. */
  details: string;
  /** Response messages received. */
  messages: number;
  /** From the call's start to its status, in milliseconds. */
  elapsedMs: number;
  /** True when the client cancelled the call on purpose (an abandoned stream). */
  abandoned: boolean;
  /** A unary call's response bytes. */
  reply?: Uint8Array;
}

/** Options of one raw call. */
export interface RawCallOptions {
  /** The call's deadline, in milliseconds from now. */
  deadlineMs: number;
  metadata?: Metadata;
  /**
   * Abandon a response stream: cancel it before any response arrives ('before'), or once the
   * first one arrives ('after-first').
   */
  abandon?: 'before' | 'after-first';
  /** Sees every response message of a stream (a unary call's reply is in the outcome). */
  inspect?: (message: Buffer) => void;
}

/** Channel options of a raw client: large messages allowed both ways, so the server's limits are what is tested. */
export const RAW_CHANNEL_OPTIONS = {
  // Above any message the fuzz harness makes, so every input reaches the server, which answers
  // for its own limit.
  'grpc.max_receive_message_length': 256 * 1024 * 1024,
  'grpc.max_send_message_length': 256 * 1024 * 1024,
};

/** A client of any method of one server, speaking bytes. */
export class RawClient {
  private readonly client: Client;

  constructor(address: string, creds: ChannelCredentials = credentials.createInsecure(), options: object = RAW_CHANNEL_OPTIONS) {
    this.client = new Client(address, creds, options);
  }

  close(): void {
    this.client.close();
  }

  /** A unary call. */
  unary(path: string, request: Uint8Array, o: RawCallOptions): Promise<CallOutcome> {
    const started = performance.now();
    return new Promise((resolve) => {
      this.client.makeUnaryRequest(path, identity, identity, toBuffer(request), o.metadata ?? new Metadata(), { deadline: Date.now() + o.deadlineMs }, (err: ServiceError | null, reply?: Buffer) => {
        resolve({ ...outcome(err, err ? 0 : 1, started, false), reply });
      });
    });
  }

  /** A server-streaming call, read to its end unless abandoned. */
  serverStream(path: string, request: Uint8Array, o: RawCallOptions): Promise<CallOutcome> {
    const call = this.client.makeServerStreamRequest(path, identity, identity, toBuffer(request), o.metadata ?? new Metadata(), { deadline: Date.now() + o.deadlineMs });
    return readResponses(call, o);
  }

  /** A client-streaming call: writes every request, then half-closes. */
  clientStream(path: string, requests: Uint8Array[], o: RawCallOptions): Promise<CallOutcome> {
    const started = performance.now();
    return new Promise((resolve) => {
      const call = this.client.makeClientStreamRequest(path, identity, identity, o.metadata ?? new Metadata(), { deadline: Date.now() + o.deadlineMs }, (err: ServiceError | null) => {
        resolve(outcome(err, err ? 0 : 1, started, false));
      });
      call.on('error', () => undefined);
      for (const r of requests) call.write(toBuffer(r));
      call.end();
    });
  }

  /** A bidirectional call: writes every request, half-closes, and reads the responses. */
  bidiStream(path: string, requests: Uint8Array[], o: RawCallOptions): Promise<CallOutcome> {
    const call = this.client.makeBidiStreamRequest(path, identity, identity, o.metadata ?? new Metadata(), { deadline: Date.now() + o.deadlineMs });
    const done = readResponses(call, o);
    call.on('error', () => undefined);
    for (const r of requests) call.write(toBuffer(r));
    call.end();
    return done;
  }
}

function outcome(err: ServiceError | null, messages: number, started: number, abandoned: boolean): CallOutcome {
  return { code: err ? err.code : status.OK, details: err ? err.details : '', messages, elapsedMs: performance.now() - started, abandoned };
}

function readResponses(call: ClientReadableStream<Buffer> | ClientDuplexStream<Buffer, Buffer>, o: RawCallOptions): Promise<CallOutcome> {
  const started = performance.now();
  let messages = 0;
  let abandoned = false;
  return new Promise((resolve) => {
    call.on('data', (message: Buffer) => {
      messages++;
      o.inspect?.(message);
      if (o.abandon === 'after-first' && messages === 1) {
        abandoned = true;
        call.cancel();
      }
    });
    call.on('error', () => undefined);
    call.on('status', (s) => resolve({ code: s.code, details: s.details, messages, elapsedMs: performance.now() - started, abandoned }));
    if (o.abandon === 'before') {
      // Soon after the request left, before the server can have answered much.
      setTimeout(() => {
        if (messages > 0) return;
        abandoned = true;
        call.cancel();
      }, 2);
    }
  });
}
