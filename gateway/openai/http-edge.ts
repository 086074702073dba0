/**
 * The OpenAI-compatible HTTP edge of the gateway: `GET /v1/models`, `POST /v1/completions` and
 * `POST /v1/chat/completions`, answered whole or streamed as server-sent events ending in
 * `data: [DONE]`. Each call is authenticated with the same API keys as gRPC (`Authorization:
 * Bearer`), checked field by field (./requests), and scheduled through the scheduler's Schedule
 * exactly as a gRPC Generate is. Its span continues the W3C `traceparent` the client sent; a
 * client that disconnects cancels the call below it.
 */
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { IncomingMessage, Server, ServerResponse, createServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ROOT_CONTEXT, SpanKind, context, propagation, trace } from '@opentelemetry/api';
import { isAbortError } from 'abort-controller-x';
import { ClientError } from 'nice-grpc';
import { MeshError, boundMessage } from '../../common/errors';
import { Logger, silentLogger } from '../../common/log';
import { checkListenSecurity } from '../../common/tls';
import { endSpan, meshTracer } from '../../common/tracing';
import { ScheduleResponse } from '../../generated/maas/internal/v1/scheduler';
import { Task } from '../../generated/maas/internal/v1/task';
import { FinishReason, GenerateRequest, GenerateResponse, Priority } from '../../generated/maas/v1/inference';
import { Model, ModelTask } from '../../generated/maas/v1/models';
import { InvalidParam, OpenAiRequest, parseOpenAiRequest, renderChatPrompt } from './requests';
import {
  CallIdentity,
  OpenAiError,
  OpenAiFinishReason,
  chatBody,
  chatChunk,
  completionBody,
  completionChunk,
  httpError,
  kindOfGrpcStatus,
  modelObject,
  openAiError,
  usageChunk,
  usageOf,
} from './responses';

/** What the edge needs from the gateway. */
export interface OpenAiEdgeOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** Serve HTTPS with this certificate (the gateway's, when its TLS is on). */
  tls?: { cert: Buffer; key: Buffer };
  /** Serve plaintext beyond loopback. */
  insecure: boolean;
  /** Largest request body, in bytes; a larger one gets 413 before it is read. */
  maxBodyBytes: number;
  /** Longest prompt (or chat content, or rendered chat prompt), in characters. */
  maxPromptChars: number;
  /** Deadline of every call (the API has no deadline of its own). */
  defaultDeadlineMs: number;
  /** The caller's tenant from the Authorization header; throws UNAUTHENTICATED. */
  tenantOf(authorization: string | undefined): string;
  /** Every model of the mesh (one entry per version). */
  listModels(): Promise<Model[]>;
  /** The model called `name`, or NOT_FOUND naming those that exist. */
  findModel(name: string): Promise<Model>;
  /** The gRPC Generate path's validation and defaults. */
  validate(request: GenerateRequest): GenerateRequest;
  /** The scheduler's Schedule. */
  schedule(task: Task, options: { signal: AbortSignal; deadline: number }): AsyncIterable<ScheduleResponse>;
  log: Logger;
  /** Called once per request when its answer ends: the route (a fixed list), the HTTP status and the time taken. */
  onAnswered?(route: string, status: number, seconds: number): void;
}

/** The running edge. */
export interface OpenAiEdge {
  readonly port: number;
  /** Stops accepting, cancels the calls still open after `graceMs`, and closes every connection. */
  close(graceMs: number): Promise<void>;
}

const ROUTES: Record<string, string> = { '/v1/models': 'GET', '/v1/completions': 'POST', '/v1/chat/completions': 'POST' };

/** A request body over the limit: 413, before or while reading. */
class BodyTooLarge extends Error {}

/** Starts the HTTP edge. */
export async function startOpenAiEdge(options: OpenAiEdgeOptions): Promise<OpenAiEdge> {
  checkListenSecurity(options.host, options.tls !== undefined, options.insecure);
  const active = new Set<AbortController>();
  const handler = (req: IncomingMessage, res: ServerResponse) => void handleRequest(options, req, res, active);
  const server: Server = options.tls ? createHttpsServer({ cert: options.tls.cert, key: options.tls.key }, handler) : createServer(handler);
  // A client gets 10 s to send its headers and 30 s for the whole request; the answer may take longer.
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  server.listen(options.port, options.host);
  await Promise.race([once(server, 'listening'), once(server, 'error').then(([err]) => Promise.reject(err))]);
  return {
    port: (server.address() as AddressInfo).port,
    async close(graceMs) {
      const closed = new Promise<void>((r) => server.close(() => r()));
      server.closeIdleConnections();
      const until = Date.now() + graceMs;
      while (active.size > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      for (const c of active) c.abort(new MeshError('unavailable', 'the gateway is shutting down'));
      server.closeAllConnections();
      await closed;
    },
  };
}

async function handleRequest(options: OpenAiEdgeOptions, req: IncomingMessage, res: ServerResponse, active: Set<AbortController>): Promise<void> {
  const requestId = randomUUID();
  res.setHeader('x-request-id', requestId);
  const path = (req.url ?? '/').split('?')[0];
  const route = ROUTES[path] !== undefined || path.startsWith('/v1/models/') ? path.replace(/^\/v1\/models\/.+$/, '/v1/models/{model}') : 'unknown';
  const controller = new AbortController();
  active.add(controller);
  // The connection closed before the answer was complete: the client is gone, cancel the call.
  res.once('close', () => {
    if (!res.writableFinished) controller.abort(new MeshError('cancelled', 'the client disconnected'));
    active.delete(controller);
  });
  const started = performance.now();
  res.once('close', () => options.onAnswered?.(route, res.statusCode, (performance.now() - started) / 1000));
  const parent = propagation.extract(ROOT_CONTEXT, req.headers);
  const span = meshTracer().startSpan(`${req.method} ${route}`, { kind: SpanKind.SERVER, attributes: { 'http.request.method': req.method ?? '', 'url.path': route, 'maas.request_id': requestId } }, parent);
  try {
    await context.with(trace.setSpan(parent, span), () => route === 'unknown' ? Promise.reject(httpError(404, `no such endpoint: ${req.method} ${boundMessage(path).slice(0, 80)}; this server has GET /v1/models, POST /v1/completions, POST /v1/chat/completions`, 'unknown_url')) : serve(options, req, res, path, requestId, controller.signal));
    span.setAttribute('http.response.status_code', res.statusCode);
    endSpan(span);
  } catch (err) {
    const answer = toOpenAiError(err, options.log, path);
    span.setAttribute('http.response.status_code', answer.status);
    endSpan(span, err);
    sendError(res, answer);
  } finally {
    active.delete(controller);
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body));
}

function sendError(res: ServerResponse, answer: OpenAiError): void {
  if (res.headersSent) {
    // Mid-stream: the SDKs read an `error` object in a data event as the call's failure.
    if (!res.writableEnded && !res.destroyed) res.end(`data: ${JSON.stringify(answer.body)}\n\n`);
    return;
  }
  sendJson(res, answer.status, answer.body, answer.headers);
}

/** The OpenAI error answer of anything thrown while serving a call. */
function toOpenAiError(err: unknown, log: Logger, path: string): OpenAiError {
  if (isOpenAiError(err)) return err;
  // The rest of the body stays unread: the connection closes after the answer.
  if (err instanceof BodyTooLarge) return { ...httpError(413, err.message, 'request_too_large'), headers: { connection: 'close' } };
  if (err instanceof InvalidParam) return openAiError('invalid_argument', boundMessage(err.message), err.param);
  if (err instanceof MeshError) return openAiError(err.kind, boundMessage(err.message), err.kind === 'invalid_argument' ? paramOf(err.message) : null);
  if (err instanceof ClientError) {
    const kind = kindOfGrpcStatus(err.code);
    return openAiError(kind, boundMessage(err.details), kind === 'invalid_argument' ? paramOf(err.details) : null);
  }
  if (isAbortError(err)) return openAiError('cancelled', 'call cancelled');
  log.error('unexpected error', { path, err: err instanceof Error ? err : String(err) });
  return openAiError('internal', 'internal error');
}

function isOpenAiError(err: unknown): err is OpenAiError {
  return typeof err === 'object' && err !== null && 'status' in err && 'body' in err && !(err instanceof Error);
}

/**
 * The parameter an INVALID_ARGUMENT message from the mesh names: its messages start with the field
 * (`max_tokens must be <= 2048, given 5000`, `model "x" does not support ...`).
 */
function paramOf(message: string): string | null {
  const m = /^([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+)?) /.exec(message);
  return m ? m[1] : null;
}

async function serve(options: OpenAiEdgeOptions, req: IncomingMessage, res: ServerResponse, path: string, requestId: string, signal: AbortSignal): Promise<void> {
  const method = path.startsWith('/v1/models/') ? 'GET' : ROUTES[path];
  if (req.method !== method) {
    res.setHeader('allow', method);
    throw httpError(405, `${path} takes ${method}, given ${String(req.method).slice(0, 10)}`, 'method_not_allowed');
  }
  // The edge's one point of authentication: every route below runs with this tenant.
  const tenant = options.tenantOf(req.headers.authorization);
  if (method === 'GET') {
    req.resume();
    if (path === '/v1/models') {
      const seen = new Set<string>();
      const data = (await options.listModels()).filter((m) => generates(m) && !seen.has(m.name) && seen.add(m.name)).map((m) => modelObject(m.name));
      sendJson(res, 200, { object: 'list', data });
    } else {
      let name: string;
      try {
        name = decodeURIComponent(path.slice('/v1/models/'.length));
      } catch {
        throw new InvalidParam('model', 'must be a model name (the path does not decode)', { toString: () => 'a malformed %-escape' });
      }
      const model = await options.findModel(name);
      if (!generates(model)) throw new MeshError('not_found', `model "${model.name}" does not generate text; it is not served by this API`);
      sendJson(res, 200, modelObject(model.name));
    }
    return;
  }
  const body = await readJsonBody(req, options.maxBodyBytes);
  const request = parseOpenAiRequest(path === '/v1/chat/completions' ? 'chat' : 'completions', body, { maxPromptChars: options.maxPromptChars });
  const model = await options.findModel(request.model);
  const generate = options.validate(toGenerateRequest(request, model, options.maxPromptChars));
  const task: Task = { requestId, tenant, request: { $case: 'generate', generate } };
  const call: CallIdentity = { id: `${request.endpoint === 'chat' ? 'chatcmpl' : 'cmpl'}-${requestId}`, created: Math.floor(Date.now() / 1000), model: request.model };
  const chunks = generated(options.schedule(task, { signal, deadline: Date.now() + options.defaultDeadlineMs }))[Symbol.asyncIterator]();
  try {
    // The first chunk before any header: a refusal before it (queue full, no worker) is an HTTP status.
    const first = await chunks.next();
    if (request.stream) {
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
      res.flushHeaders();
      await pipeline(Readable.from(sseEvents(request, call, first, chunks)), res).catch((err: unknown) => {
        // The client went away mid-stream: the generator's cleanup has cancelled the call.
        if (!signal.aborted) throw err;
      });
    } else {
      let text = '';
      let last: GenerateResponse | undefined;
      for (let r = first; !r.done; r = await chunks.next()) {
        text += r.value.text;
        last = r.value;
      }
      const finish = finishOf(last);
      const usage = usageOf(last?.usage?.promptTokens ?? 0, last?.usage?.completionTokens ?? 0);
      sendJson(res, 200, request.endpoint === 'chat' ? chatBody(call, text, finish, usage) : completionBody(call, text, finish, usage));
    }
  } finally {
    await chunks.return?.(undefined);
  }
}

/** Whether the API serves `model`: it generates text (prompt or chat). */
function generates(model: Model): boolean {
  return model.tasks.includes(ModelTask.MODEL_TASK_GENERATE) || model.tasks.includes(ModelTask.MODEL_TASK_CHAT);
}

/**
 * The mesh request of an API request. A chat goes as `messages` to a model with a chat template
 * (MODEL_TASK_CHAT); to one without (ngram, echo) as a prompt rendered by {@link renderChatPrompt}.
 */
function toGenerateRequest(request: OpenAiRequest, model: Model, maxPromptChars: number): GenerateRequest {
  const chatNative = request.endpoint === 'chat' && model.tasks.includes(ModelTask.MODEL_TASK_CHAT);
  if (!chatNative && !model.tasks.includes(ModelTask.MODEL_TASK_GENERATE)) {
    throw new InvalidParam('model', request.endpoint === 'chat' ? 'must name a model that generates text or chats' : 'must name a model that generates text (this one only chats: use /v1/chat/completions)', request.model);
  }
  let prompt = request.prompt;
  if (request.endpoint === 'chat' && !chatNative) {
    prompt = renderChatPrompt(request.messages);
    if (prompt.length > maxPromptChars) throw new InvalidParam('messages', `must render to a prompt of at most ${maxPromptChars} characters for model "${model.name}"`, { toString: () => `${prompt.length} characters` });
  }
  return {
    model: request.model,
    prompt,
    messages: chatNative ? request.messages : [],
    maxTokens: request.maxTokens,
    temperature: request.temperature,
    topP: request.topP,
    seed: request.seed,
    stop: request.stop,
    priority: Priority.PRIORITY_UNSPECIFIED,
    affinityKey: request.affinityKey,
  };
}

/** The generated chunks of a Schedule stream. */
async function* generated(stream: AsyncIterable<ScheduleResponse>): AsyncGenerator<GenerateResponse> {
  for await (const response of stream) {
    if (response.output?.output?.$case === 'chunk') yield response.output.output.chunk;
  }
}

function finishOf(last: GenerateResponse | undefined): OpenAiFinishReason {
  return last?.finishReason === FinishReason.FINISH_REASON_LENGTH ? 'length' : 'stop';
}

const sse = (data: unknown) => `data: ${JSON.stringify(data)}\n\n`;

/** The events of a streamed answer; an error after the first is sent as an `error` data event. */
async function* sseEvents(request: OpenAiRequest, call: CallIdentity, first: IteratorResult<GenerateResponse>, rest: AsyncIterator<GenerateResponse>): AsyncGenerator<string> {
  const chat = request.endpoint === 'chat';
  const usage = request.includeUsage;
  if (chat) yield sse(chatChunk(call, { role: 'assistant', content: '' }, null, usage));
  let last: GenerateResponse | undefined;
  try {
    for (let r = first; !r.done; r = await rest.next()) {
      const chunk = r.value;
      last = chunk;
      const finish = chunk.finishReason !== FinishReason.FINISH_REASON_UNSPECIFIED ? finishOf(chunk) : null;
      if (chat) {
        if (chunk.text !== '') yield sse(chatChunk(call, { content: chunk.text }, null, usage));
        if (finish) yield sse(chatChunk(call, {}, finish, usage));
      } else if (chunk.text !== '' || finish) {
        yield sse(completionChunk(call, chunk.text, finish, usage));
      }
    }
  } catch (err) {
    if (isAbortError(err)) throw err;
    const answer = toOpenAiError(err, silentLogger, '');
    yield sse(answer.body);
    return;
  }
  if (usage) yield sse(usageChunk(call, chat ? 'chat.completion.chunk' : 'text_completion', usageOf(last?.usage?.promptTokens ?? 0, last?.usage?.completionTokens ?? 0)));
  yield 'data: [DONE]\n\n';
}

/**
 * The JSON body of `req`, at most `maxBytes`: a larger Content-Length is refused before a byte is
 * read, and a body that grows past the limit is refused as soon as it does (the connection then
 * closes, so the rest is never read).
 */
async function readJsonBody(req: IncomingMessage, maxBytes: number): Promise<unknown> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > maxBytes) {
    req.pause();
    throw new BodyTooLarge(`the request body must be at most ${maxBytes} bytes, given Content-Length ${declared}`);
  }
  const body = await new Promise<Buffer>((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    const cleanup = () => {
      req.off('data', onData).off('end', onEnd).off('error', onError).off('close', onClose);
    };
    const onData = (part: Buffer) => {
      size += part.length;
      if (size > maxBytes) {
        cleanup();
        req.pause();
        reject(new BodyTooLarge(`the request body must be at most ${maxBytes} bytes, given more`));
        return;
      }
      parts.push(part);
    };
    const onEnd = () => {
      cleanup();
      resolve(Buffer.concat(parts));
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    const onClose = () => {
      cleanup();
      reject(new MeshError('cancelled', 'the client disconnected while sending its request'));
    };
    req.on('data', onData).on('end', onEnd).on('error', onError).on('close', onClose);
  });
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    throw new InvalidParam('body', 'must be a JSON object', { toString: () => `${body.length} bytes that are not valid JSON` });
  }
}
