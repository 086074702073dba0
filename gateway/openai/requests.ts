/**
 * The OpenAI API's request bodies (`POST /v1/completions`, `POST /v1/chat/completions`), checked
 * field by field and turned into the mesh's GenerateRequest fields. Every refusal is an
 * {@link InvalidParam}: INVALID_ARGUMENT naming the parameter (the OpenAI error object's `param`),
 * the limit and a short form of what was given.
 *
 * Plain TypeScript: no HTTP, no gRPC. The HTTP edge (./http-edge) adapts it to the wire.
 */
import { MeshError, contentGiven, formatGiven } from '../../common/errors';
import { MAX_AFFINITY_KEY_CHARS, MAX_MESSAGES as MAX_CHAT_MESSAGES, MAX_STOP_CHARS, MAX_STOP_SEQUENCES, MAX_TOKENS_LIMIT, MESSAGE_ROLES as CHAT_ROLES, validateModelName } from '../validation';

/** INVALID_ARGUMENT about one request parameter, which the OpenAI error object names in `param`. */
export class InvalidParam extends MeshError {
  constructor(
    readonly param: string,
    limit: string,
    given: unknown,
  ) {
    super('invalid_argument', `${param} ${limit}, given ${formatGiven(given)}`);
  }
}

// The roles a chat message may have (MESSAGE_ROLES); `developer` (OpenAI's newer name for
// `system`) is read as `system`.
/** max_tokens when the request leaves it out. */
export const DEFAULT_OPENAI_MAX_TOKENS = 16;

/** A chat turn as the mesh carries it. */
export interface ChatTurn {
  role: string;
  content: string;
}

/** A checked request of either endpoint: what the edge schedules and how it answers. */
export interface OpenAiRequest {
  /** `completions` or `chat`: decides the shape of the answer. */
  endpoint: 'completions' | 'chat';
  model: string;
  /** The prompt of /v1/completions; '' for chat (the edge renders or forwards the messages). */
  prompt: string;
  /** The conversation of /v1/chat/completions; empty for completions. */
  messages: ChatTurn[];
  maxTokens: number;
  temperature: number | undefined;
  topP: number | undefined;
  seed: number | undefined;
  stop: string[];
  stream: boolean;
  /** stream_options.include_usage: a last chunk with no choices and the usage. */
  includeUsage: boolean;
  /** `user`: the mesh's affinity key (requests of one user go to one worker under consistent_hash). */
  affinityKey: string;
}

/**
 * Parameters the API defines that the mesh accepts only at their neutral value (what a client sends
 * when it means "nothing special"): anything else would be silently ignored, so it is refused.
 */
const NEUTRAL: Record<string, (v: unknown) => boolean> = {
  n: (v) => v === null || v === 1,
  best_of: (v) => v === null || v === 1,
  echo: (v) => v === null || v === false,
  logprobs: (v) => v === null || v === false,
  top_logprobs: (v) => v === null || v === 0,
  presence_penalty: (v) => v === null || v === 0,
  frequency_penalty: (v) => v === null || v === 0,
  logit_bias: (v) => v === null || (typeof v === 'object' && !Array.isArray(v) && Object.keys(v as object).length === 0),
  suffix: (v) => v === null || v === '',
  tools: (v) => v === null || (Array.isArray(v) && v.length === 0),
  tool_choice: (v) => v === null || v === 'none',
  parallel_tool_calls: () => true,
  response_format: (v) => v === null || (typeof v === 'object' && (v as { type?: unknown }).type === 'text'),
  store: (v) => v === null || v === false,
  metadata: () => true,
  service_tier: () => true,
};

const COMMON = ['model', 'max_tokens', 'temperature', 'top_p', 'seed', 'stop', 'stream', 'stream_options', 'user'];
const FIELDS = {
  completions: new Set([...COMMON, 'prompt', ...Object.keys(NEUTRAL)]),
  chat: new Set([...COMMON, 'messages', 'max_completion_tokens', ...Object.keys(NEUTRAL)]),
};

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A description of what was given, shown unquoted (a caller's string is quoted). */
function described(text: string): { toString(): string } {
  return { toString: () => text };
}

function typeName(v: unknown): { toString(): string } {
  return described(v === null ? 'null' : Array.isArray(v) ? 'an array' : `a ${typeof v}`);
}

/** The value if absent or null means "unset". */
function present(body: Record<string, unknown>, key: string): unknown {
  const v = body[key];
  return v === null ? undefined : v;
}

function optionalNumber(body: Record<string, unknown>, key: string, min: number, max: number, minExclusive = false): number | undefined {
  const v = present(body, key);
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new InvalidParam(key, 'must be a number', typeName(v));
  if (v > max || v < min || (minExclusive && v === min)) throw new InvalidParam(key, `must be ${minExclusive ? `greater than ${min}` : `at least ${min}`} and at most ${max}`, v);
  return v;
}

function optionalInteger(body: Record<string, unknown>, key: string, min: number, max: number): number | undefined {
  const v = present(body, key);
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new InvalidParam(key, 'must be an integer', typeof v === 'number' ? v : typeName(v));
  if (v < min || v > max) throw new InvalidParam(key, `must be from ${min} to ${max}`, v);
  return v;
}

function optionalBoolean(body: Record<string, unknown>, key: string): boolean {
  const v = present(body, key);
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw new InvalidParam(key, 'must be a boolean', typeName(v));
  return v;
}

function stopSequences(body: Record<string, unknown>): string[] {
  const v = present(body, 'stop');
  if (v === undefined) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list)) throw new InvalidParam('stop', 'must be a string or an array of strings', typeName(v));
  if (list.length > MAX_STOP_SEQUENCES) throw new InvalidParam('stop', `must have at most ${MAX_STOP_SEQUENCES} sequences`, list.length);
  return list.map((s, i) => {
    if (typeof s !== 'string') throw new InvalidParam(`stop[${i}]`, 'must be a string', typeName(s));
    if (s.length === 0 || s.length > MAX_STOP_CHARS) throw new InvalidParam(`stop[${i}]`, `must be 1 to ${MAX_STOP_CHARS} characters`, s);
    return s;
  });
}

function promptOf(body: Record<string, unknown>, maxPromptChars: number): string {
  const v = present(body, 'prompt');
  if (v === undefined) throw new InvalidParam('prompt', 'is required', described('nothing'));
  let prompt: unknown = v;
  if (Array.isArray(v)) {
    // The API takes a batch of prompts; the mesh answers one prompt per request.
    if (v.length !== 1) throw new InvalidParam('prompt', 'must be a string or an array of exactly one string (send one request per prompt)', described(`an array of ${v.length}`));
    prompt = v[0];
  }
  if (typeof prompt !== 'string') throw new InvalidParam('prompt', 'must be a string (token arrays are not accepted)', typeName(prompt));
  if (prompt === '') throw new InvalidParam('prompt', 'must not be empty', prompt);
  if (prompt.length > maxPromptChars) throw new InvalidParam('prompt', `must be at most ${maxPromptChars} characters`, contentGiven(prompt));
  return prompt;
}

function messageContent(v: unknown, where: string): string {
  if (typeof v === 'string') return v;
  if (v === null || v === undefined) return '';
  // The content-parts form: only text parts, joined.
  if (!Array.isArray(v)) throw new InvalidParam(where, 'must be a string or an array of text parts', typeName(v));
  return v
    .map((part, j) => {
      if (!isObject(part) || part.type !== 'text' || typeof part.text !== 'string') {
        throw new InvalidParam(`${where}[${j}]`, 'must be a text part ({"type": "text", "text": "..."}); other part types are not served', isObject(part) ? described(`type ${JSON.stringify(String(part.type)).slice(0, 40)}`) : typeName(part));
      }
      return part.text;
    })
    .join('');
}

function chatMessages(body: Record<string, unknown>, maxPromptChars: number): ChatTurn[] {
  const v = present(body, 'messages');
  if (v === undefined) throw new InvalidParam('messages', 'is required', described('nothing'));
  if (!Array.isArray(v)) throw new InvalidParam('messages', 'must be an array of messages', typeName(v));
  if (v.length === 0) throw new InvalidParam('messages', 'must have at least one message', described('an empty array'));
  if (v.length > MAX_CHAT_MESSAGES) throw new InvalidParam('messages', `must have at most ${MAX_CHAT_MESSAGES} messages`, v.length);
  let total = 0;
  return v.map((m, i) => {
    if (!isObject(m)) throw new InvalidParam(`messages[${i}]`, 'must be an object with role and content', typeName(m));
    const rawRole = m.role;
    const role = rawRole === 'developer' ? 'system' : rawRole;
    if (typeof role !== 'string' || !(CHAT_ROLES as readonly string[]).includes(role)) {
      throw new InvalidParam(`messages[${i}].role`, `must be one of ${CHAT_ROLES.join(', ')} (or developer)`, typeof rawRole === 'string' ? rawRole : typeName(rawRole));
    }
    const content = messageContent(m.content, `messages[${i}].content`);
    if (role === 'user' && content === '') throw new InvalidParam(`messages[${i}].content`, 'is required for a user message', content);
    total += content.length;
    if (total > maxPromptChars) throw new InvalidParam('messages', `must have at most ${maxPromptChars} characters of content in all`, described(`${total} by messages[${i}]`));
    return { role, content };
  });
}

/**
 * Checks the JSON body of `endpoint` field by field and returns the request with defaults filled
 * in (max_tokens 16, as the API's). Unknown parameters are refused, as the API does, and so are
 * the API's parameters the mesh does not implement unless they have their neutral value.
 */
export function parseOpenAiRequest(endpoint: 'completions' | 'chat', body: unknown, limits: { maxPromptChars: number }): OpenAiRequest {
  if (!isObject(body)) throw new InvalidParam('body', 'must be a JSON object', typeName(body));
  for (const key of Object.keys(body)) {
    if (!FIELDS[endpoint].has(key)) throw new InvalidParam(key.length > 40 ? `${key.slice(0, 32)}...` : key, `is not a parameter of ${endpoint === 'chat' ? '/v1/chat/completions' : '/v1/completions'} here`, described('a value'));
    const neutral = NEUTRAL[key];
    if (neutral && !neutral(body[key])) throw new InvalidParam(key, 'is not supported by this server except at its default value', typeof body[key] === 'string' || typeof body[key] === 'number' ? body[key] : typeName(body[key]));
  }
  const rawModel = body.model;
  if (typeof rawModel !== 'string') throw new InvalidParam('model', 'is required and must be a string', typeName(rawModel));
  let model: string;
  try {
    model = validateModelName('model', rawModel);
  } catch (err) {
    throw Object.assign(err as MeshError, { param: 'model' });
  }
  const prompt = endpoint === 'completions' ? promptOf(body, limits.maxPromptChars) : '';
  const messages = endpoint === 'chat' ? chatMessages(body, limits.maxPromptChars) : [];
  const maxTokensKey = endpoint === 'chat' && present(body, 'max_completion_tokens') !== undefined ? 'max_completion_tokens' : 'max_tokens';
  const maxTokens = optionalInteger(body, maxTokensKey, 1, MAX_TOKENS_LIMIT) ?? DEFAULT_OPENAI_MAX_TOKENS;
  const temperature = optionalNumber(body, 'temperature', 0, 2);
  const topP = optionalNumber(body, 'top_p', 0, 1, true);
  const seed = optionalInteger(body, 'seed', 0, Number.MAX_SAFE_INTEGER);
  const stop = stopSequences(body);
  const stream = optionalBoolean(body, 'stream');
  const options = present(body, 'stream_options');
  let includeUsage = false;
  if (options !== undefined) {
    if (!stream) throw new InvalidParam('stream_options', 'is allowed only when stream is true', typeName(options));
    if (!isObject(options)) throw new InvalidParam('stream_options', 'must be an object', typeName(options));
    for (const key of Object.keys(options)) if (key !== 'include_usage' && key !== 'include_obfuscation') throw new InvalidParam(`stream_options.${key}`, 'is not a stream option here', described('a value'));
    includeUsage = optionalBoolean(options, 'include_usage');
  }
  const user = present(body, 'user');
  if (user !== undefined && typeof user !== 'string') throw new InvalidParam('user', 'must be a string', typeName(user));
  if (typeof user === 'string' && user.length > MAX_AFFINITY_KEY_CHARS) throw new InvalidParam('user', `must be at most ${MAX_AFFINITY_KEY_CHARS} characters`, user);
  return { endpoint, model, prompt, messages, maxTokens, temperature, topP, seed, stop, stream, includeUsage, affinityKey: user ?? '' };
}

/**
 * The prompt a model without a chat template (ngram, echo) continues for a chat request: one line
 * per message, `<role>: <content>`, then `assistant:` for the turn it writes. For example
 * `system: Be brief.\nuser: Hello\nassistant:`.
 */
export function renderChatPrompt(messages: readonly ChatTurn[]): string {
  return [...messages.map((m) => `${m.role}: ${m.content}`), 'assistant:'].join('\n');
}
