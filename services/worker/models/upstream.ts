/**
 * Upstream models: models served by external OpenAI-compatible engines (vLLM, llama.cpp's server,
 * TGI, Ollama, or another mesh's HTTP edge) that this worker fronts. A call is forwarded to the
 * engine's `/completions` (a prompt) or `/chat/completions` (messages), always streamed, and the
 * engine's server-sent events are read back into chunks.
 *
 * Replicas: one model may have several engine URLs. A call goes to the replica with the fewest
 * calls open (round robin among equals); if that replica fails before its first token (refused
 * connection, 429 or 5xx, a stream that ends before any token) the call moves to another one it
 * has not tried. After the first token it never moves (that would duplicate output): it ends with
 * UNAVAILABLE. Cancelling the call (client cancel, deadline) aborts the HTTP request, which the
 * engine sees as a disconnect.
 *
 * No gRPC here; fetch is Node's own.
 */
import { context, propagation } from '@opentelemetry/api';
import { ErrorKind, MeshError } from '../../../common/errors';
import type { FinishReason, GeneratedChunk, GenerateParams, Model, ModelInfo, ModelRuntime } from './runtime';

/** One upstream model: the name the mesh serves, its engine replicas, and the name the engines know it by. */
export interface UpstreamSpec {
  name: string;
  /** Base URLs of the engine's OpenAI API, as the openai SDK's baseURL (e.g. `http://10.0.0.5:8000/v1`). */
  urls: string[];
  /** The `model` sent to the engine. */
  engineModel: string;
}

const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
/** Longest piece of an engine's error message passed on. */
const MAX_ENGINE_MESSAGE_CHARS = 200;
/** Largest single server-sent event accepted from an engine, in characters. */
const MAX_EVENT_CHARS = 1 << 20;

/**
 * Parses `name=url[#engine-model]` entries, comma-separated (the `--upstream` flag, repeatable, and
 * `MAAS_WORKER_UPSTREAMS`). The same name more than once adds replicas. The engine model defaults to the
 * name. Throws an Error naming the entry by position, never echoing a URL (it may carry a secret).
 */
export function parseUpstreams(raw: string): UpstreamSpec[] {
  const byName = new Map<string, UpstreamSpec>();
  raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .forEach((entry, i) => {
      const where = `entry ${i + 1}`;
      const eq = entry.indexOf('=');
      if (eq <= 0) throw new Error(`${where}: expected name=url[#engine-model]`);
      const name = entry.slice(0, eq);
      if (!MODEL_NAME.test(name)) throw new Error(`${where}: the model name must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit`);
      const url = parseEngineUrl(entry.slice(eq + 1), `${where} (${name})`);
      const engineModel = decodeURIComponent(url.hash.slice(1)) || name;
      url.hash = '';
      const base = url.toString().replace(/\/+$/, '');
      const spec = byName.get(name);
      if (!spec) byName.set(name, { name, urls: [base], engineModel });
      else if (spec.engineModel !== engineModel) throw new Error(`${where} (${name}): every replica of a model must name the same engine model`);
      else if (!spec.urls.includes(base)) spec.urls.push(base);
    });
  return [...byName.values()];
}

/** An engine's base URL: http or https, no credentials. Throws an Error starting with `where`, never echoing the URL. */
function parseEngineUrl(raw: string, where: string): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new Error(`${where}: the engine URL does not parse; expected e.g. http://127.0.0.1:8000/v1`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`${where}: the engine URL must be http or https, given ${url.protocol}`);
  if (url.username || url.password) throw new Error(`${where}: put no credentials in the engine URL; use --upstream-api-key`);
  return url;
}

/** Most replicas one upstream model may list. */
export const MAX_REPLICAS = 64;

/**
 * The upstream spec of a model repository's config.json when its platform is `openai_upstream`
 * (`{"platform": "openai_upstream", "upstream": {"urls": [...], "model": "..."}, "description": "..."}`,
 * no version folder needed); undefined for any other platform. Throws an Error naming the field.
 */
export function upstreamFromConfig(config: unknown, name: string): (UpstreamSpec & { description?: string }) | undefined {
  if (typeof config !== 'object' || config === null || Array.isArray(config)) return undefined;
  const raw = config as Record<string, unknown>;
  if (raw.platform !== 'openai_upstream') return undefined;
  const unknown = Object.keys(raw).find((k) => !['name', 'platform', 'description', 'upstream'].includes(k));
  if (unknown) throw new Error(`unknown field ${JSON.stringify(unknown.slice(0, 40))} for platform openai_upstream; the fields are name, platform, description, upstream`);
  if (raw.description !== undefined && typeof raw.description !== 'string') throw new Error('description must be a string');
  const upstream = raw.upstream;
  if (typeof upstream !== 'object' || upstream === null || Array.isArray(upstream)) throw new Error('upstream must be an object {"urls": [...], "model": "..."} for platform openai_upstream');
  const { urls, model, ...rest } = upstream as Record<string, unknown>;
  const extra = Object.keys(rest)[0];
  if (extra !== undefined) throw new Error(`upstream has unknown key ${JSON.stringify(extra.slice(0, 40))}; the keys are urls, model`);
  if (!Array.isArray(urls) || urls.length === 0 || urls.length > MAX_REPLICAS) throw new Error(`upstream.urls must be an array of 1 to ${MAX_REPLICAS} engine URLs`);
  if (model !== undefined && (typeof model !== 'string' || model === '' || model.length > 256)) throw new Error('upstream.model must be a string of 1 to 256 characters');
  const bases = urls.map((u, i) => {
    if (typeof u !== 'string') throw new Error(`upstream.urls[${i}] must be a string`);
    const url = parseEngineUrl(u, `upstream.urls[${i}]`);
    url.hash = '';
    return url.toString().replace(/\/+$/, '');
  });
  return { name, urls: [...new Set(bases)], engineModel: (model as string | undefined) ?? name, description: raw.description as string | undefined };
}

/** Options of the upstream runtime. */
export interface UpstreamOptions {
  /** Sent as `Authorization: Bearer` to every engine; empty: none. */
  apiKey: string;
  /** Most time to wait for an engine's answer headers, in ms, before trying another replica. */
  connectTimeoutMs: number;
}

/** A runtime serving each spec as one model. */
export function createUpstreamRuntime(specs: readonly UpstreamSpec[], options: UpstreamOptions): ModelRuntime {
  return { name: 'openai_upstream', load: async () => specs.map((s) => createUpstreamModel(s, options)) };
}

/** One engine replica and the calls it has open. */
class Replica {
  open = 0;
  constructor(readonly url: string) {}
}

/** A failure of one replica before the first token: another replica may be tried. */
class ReplicaFailure extends Error {
  constructor(
    message: string,
    /** What the call ends with if no replica is left. */
    readonly kind: ErrorKind,
  ) {
    super(message);
  }
}

/** The model of one spec. */
export function createUpstreamModel(spec: UpstreamSpec, options: UpstreamOptions): Model {
  const replicas = spec.urls.map((u) => new Replica(u));
  let turn = 0;
  const info: ModelInfo = {
    name: spec.name,
    version: '1',
    description: (spec as { description?: string }).description || `Served by an OpenAI-compatible engine (${replicas.length} replica${replicas.length === 1 ? '' : 's'}) as "${spec.engineModel}".`,
    tasks: ['generate', 'chat'],
    labels: [],
    metadata: { engine_model: spec.engineModel, replicas: String(replicas.length) },
    platform: 'openai_upstream',
  };

  /** The untried replica with the fewest open calls; round robin among equals. */
  function pick(tried: Set<Replica>): Replica | undefined {
    let best: Replica | undefined;
    for (let k = 0; k < replicas.length; k++) {
      const r = replicas[(turn + k) % replicas.length];
      if (!tried.has(r) && (!best || r.open < best.open)) best = r;
    }
    turn = (turn + 1) % replicas.length;
    return best;
  }

  async function* generate(params: GenerateParams, signal: AbortSignal): AsyncGenerator<GeneratedChunk> {
    const tried = new Set<Replica>();
    const failures: string[] = [];
    let lastKind: ErrorKind = 'unavailable';
    for (let replica = pick(tried); replica; replica = pick(tried)) {
      tried.add(replica);
      replica.open++;
      let streamed = false;
      try {
        for await (const chunk of callEngine(replica.url, spec, params, options, signal)) {
          streamed = true;
          yield chunk;
        }
        return;
      } catch (err) {
        if (signal.aborted) throw signal.reason ?? err;
        if (!(err instanceof ReplicaFailure)) throw err;
        if (streamed) throw new MeshError('unavailable', `model "${spec.name}": the engine failed after the output began (${err.message}); not retried, so nothing is repeated`);
        failures.push(`replica ${replicas.indexOf(replica) + 1}: ${err.message}`);
        lastKind = err.kind;
      } finally {
        replica.open--;
      }
    }
    throw new MeshError(lastKind, `model "${spec.name}": every engine replica failed before the first token (${failures.join('; ')})`);
  }

  return {
    info,
    generate,
    load: () => ({ busy: replicas.reduce((n, r) => n + r.open, 0), waiting: 0, capacity: 0 }),
  };
}

/** The request body the engine gets. */
function engineBody(spec: UpstreamSpec, params: GenerateParams): Record<string, unknown> {
  const body: Record<string, unknown> = {
    model: spec.engineModel,
    max_tokens: params.maxTokens,
    temperature: params.temperature,
    stream: true,
    stream_options: { include_usage: true },
  };
  if (params.messages && params.messages.length > 0) body.messages = params.messages.map((m) => ({ role: m.role, content: m.content }));
  else body.prompt = params.prompt;
  if (params.topP !== undefined) body.top_p = params.topP;
  if (params.seed !== undefined) body.seed = params.seed;
  if (params.stop.length > 0) body.stop = params.stop;
  return body;
}

/** A short, safe form of an engine's error: its `error.message` (or the raw text), cut. */
function engineMessage(text: string): string {
  let message = text;
  try {
    const parsed = JSON.parse(text) as { error?: { message?: unknown } | string; message?: unknown };
    const m = typeof parsed.error === 'string' ? parsed.error : (parsed.error?.message ?? parsed.message);
    if (typeof m === 'string') message = m;
  } catch {
    // not JSON: the text itself
  }
  message = message.replace(/\s+/g, ' ').trim();
  return message.length > MAX_ENGINE_MESSAGE_CHARS ? `${message.slice(0, MAX_ENGINE_MESSAGE_CHARS)}...` : message;
}

/** What a refusal status of the engine means for the caller; undefined for a replica failure (retry). */
function refusalKind(status: number): ErrorKind | undefined {
  if (status === 400 || status === 413 || status === 422) return 'invalid_argument';
  if (status === 404) return 'not_found';
  if (status === 401 || status === 403) return 'failed_precondition';
  return undefined;
}

/** The error kind an OpenAI error object's code means, for an error event mid-stream. */
function kindOfEngineError(error: { code?: unknown; type?: unknown }): ErrorKind {
  if (error.code === 'timeout') return 'deadline_exceeded';
  if (error.code === 'rate_limit_exceeded' || error.type === 'rate_limit_error') return 'resource_exhausted';
  if (error.type === 'invalid_request_error') return 'invalid_argument';
  return 'unavailable';
}

const FINISH: Record<string, FinishReason> = { length: 'length', stop: 'stop' };

/** Streams one call from one replica; throws ReplicaFailure when another replica may be tried. */
async function* callEngine(base: string, spec: UpstreamSpec, params: GenerateParams, options: UpstreamOptions, signal: AbortSignal): AsyncGenerator<GeneratedChunk> {
  const chat = params.messages !== undefined && params.messages.length > 0;
  const headers: Record<string, string> = { 'content-type': 'application/json', accept: 'text/event-stream' };
  if (options.apiKey) headers.authorization = `Bearer ${options.apiKey}`;
  // The engine's spans (another mesh's, for one) join this call's trace.
  propagation.inject(context.active(), headers);
  const connect = AbortSignal.timeout(options.connectTimeoutMs);
  let response: Response;
  try {
    response = await fetch(`${base}/${chat ? 'chat/completions' : 'completions'}`, { method: 'POST', headers, body: JSON.stringify(engineBody(spec, params)), signal: AbortSignal.any([signal, connect]) });
  } catch (err) {
    if (signal.aborted) throw signal.reason ?? err;
    const cause = (err as { cause?: { code?: string } }).cause?.code ?? (connect.aborted ? `no answer within ${options.connectTimeoutMs} ms` : (err as Error).message);
    throw new ReplicaFailure(`the engine could not be reached (${cause})`, 'unavailable');
  }
  if (!response.ok) {
    const text = await response.text().catch(() => '');
    const detail = `the engine answered HTTP ${response.status}: ${engineMessage(text)}`;
    const refusal = refusalKind(response.status);
    if (refusal) throw new MeshError(refusal, `model "${spec.name}": ${detail}`);
    throw new ReplicaFailure(detail, response.status === 429 ? 'resource_exhausted' : 'unavailable');
  }
  if (!response.body) throw new ReplicaFailure('the engine answered with no body', 'unavailable');
  let finish: FinishReason | undefined;
  let usage: GeneratedChunk['usage'];
  let streamed = false;
  try {
    for await (const data of serverSentData(response.body)) {
      if (data === '[DONE]') {
        yield { text: '', finishReason: finish ?? 'end', usage };
        return;
      }
      let event: EngineEvent;
      try {
        event = JSON.parse(data) as EngineEvent;
      } catch {
        throw new ReplicaFailure('the engine sent an event that is not JSON', 'unavailable');
      }
      if (event.error) {
        const error = typeof event.error === 'object' ? event.error : { message: String(event.error) };
        throw new ReplicaFailure(`the engine reported: ${engineMessage(JSON.stringify({ error }))}`, kindOfEngineError(error));
      }
      if (event.usage && typeof event.usage.prompt_tokens === 'number' && typeof event.usage.completion_tokens === 'number') {
        usage = { promptTokens: event.usage.prompt_tokens, completionTokens: event.usage.completion_tokens };
      }
      const choice = event.choices?.[0];
      if (!choice) continue;
      const text = chat ? (choice.delta?.content ?? '') : (choice.text ?? '');
      if (choice.finish_reason) finish = FINISH[choice.finish_reason] ?? 'end';
      if (typeof text === 'string' && text !== '') {
        streamed = true;
        yield { text };
      }
    }
  } catch (err) {
    if (signal.aborted) throw signal.reason ?? err;
    if (err instanceof ReplicaFailure || err instanceof MeshError) throw err;
    throw new ReplicaFailure(`the engine's stream broke (${(err as Error).message})`, 'unavailable');
  }
  // The stream ended without [DONE]: a cut connection, unless the engine simply omits it.
  if (finish !== undefined) {
    yield { text: '', finishReason: finish, usage };
    return;
  }
  throw new ReplicaFailure(streamed ? 'the engine closed the stream before it finished' : 'the engine closed the stream before the first token', 'unavailable');
}

/** The parts of a streamed completion or chat completion chunk read here. */
interface EngineEvent {
  choices?: Array<{ text?: string; delta?: { content?: string | null }; finish_reason?: string | null }>;
  usage?: { prompt_tokens?: number; completion_tokens?: number } | null;
  error?: { message?: string; code?: unknown; type?: unknown } | string;
}

/** The `data` of each server-sent event of `body` (multi-line data joined with newlines). */
async function* serverSentData(body: AsyncIterable<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const bytes of body) {
    buffer += decoder.decode(bytes, { stream: true });
    for (let end = eventEnd(buffer); end; end = eventEnd(buffer)) {
      const event = buffer.slice(0, end.at);
      buffer = buffer.slice(end.at + end.length);
      const data = event
        .split(/\r?\n|\r/)
        .filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(line.startsWith('data: ') ? 6 : 5));
      if (data.length > 0) yield data.join('\n');
    }
    if (buffer.length > MAX_EVENT_CHARS) throw new ReplicaFailure(`the engine sent an event over ${MAX_EVENT_CHARS} characters`, 'unavailable');
  }
}

/** Where the first event of `buffer` ends (a blank line), if it has one. */
function eventEnd(buffer: string): { at: number; length: number } | undefined {
  const m = /\r?\n\r?\n|\r\r/.exec(buffer);
  return m ? { at: m.index, length: m[0].length } : undefined;
}
