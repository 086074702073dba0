/**
 * Validation of every public request field at the edge. Each refusal names the field, the limit
 * and the value given. Returns the request with defaults filled in, so the services behind the
 * gateway see complete requests.
 */
import { contentGiven, invalidField } from '../common/errors';

/** The fields of maas.v1.GenerateRequest that validation reads (the generated type fits). */
export interface GenerateFields {
  model: string;
  affinityKey?: string;
  prompt: string;
  maxTokens: number;
  temperature?: number | undefined;
  stop: string[];
  priority: number;
  /** A conversation (models with MODEL_TASK_CHAT); when set, prompt is empty. */
  messages?: Array<{ role: string; content: string }>;
  /** Nucleus sampling, in (0, 1]; unset means 1. */
  topP?: number | undefined;
}

/** Most messages in one GenerateRequest. */
export const MAX_MESSAGES = 256;
/** The roles a chat message may have. */
export const MESSAGE_ROLES = ['system', 'user', 'assistant'];

/** The fields of maas.v1.PredictRequest that validation reads (the generated type fits). */
export interface PredictFields {
  model: string;
  affinityKey?: string;
  input: string;
  priority: number;
}

/** Values of maas.v1.Priority, in the order of the proto enum. */
const PRIORITY_NAMES = ['PRIORITY_UNSPECIFIED', 'PRIORITY_LOW', 'PRIORITY_NORMAL', 'PRIORITY_HIGH'];
const PRIORITY_NORMAL = 2;

/** Limits the gateway enforces; the numeric ones come from config. */
export interface RequestLimits {
  /** Longest prompt accepted, in characters. */
  maxPromptChars: number;
  /** Longest Predict input accepted, in characters. */
  maxInputChars: number;
}

/** Largest max_tokens a caller may ask for. */
export const MAX_TOKENS_LIMIT = 2048;
/** max_tokens used when the caller leaves it at 0. */
export const DEFAULT_MAX_TOKENS = 64;
/** Most stop sequences per request, and the longest one. */
export const MAX_STOP_SEQUENCES = 4;
export const MAX_STOP_CHARS = 64;
/** Longest affinity key. */
export const MAX_AFFINITY_KEY_CHARS = 256;

function validateAffinityKey(key: string | undefined): void {
  if (key !== undefined && key.length > MAX_AFFINITY_KEY_CHARS) throw invalidField('affinity_key', `must be at most ${MAX_AFFINITY_KEY_CHARS} characters`, key);
}

/** Longest job id (the scheduler's ids are about 30 characters). */
export const MAX_JOB_ID_CHARS = 128;
/** Longest page token (the scheduler's tokens are under 100 characters). */
export const MAX_PAGE_TOKEN_CHARS = 512;

/** Checks a job id: required, at most {@link MAX_JOB_ID_CHARS} characters, so a huge id never travels. */
export function validateJobId(field: string, id: string): string {
  if (id === '') throw invalidField(field, 'is required', id);
  if (id.length > MAX_JOB_ID_CHARS) throw invalidField(field, `must be at most ${MAX_JOB_ID_CHARS} characters`, id);
  return id;
}

/** Checks a page token: empty (first page) or at most {@link MAX_PAGE_TOKEN_CHARS} characters. */
export function validatePageToken(field: string, token: string): string {
  if (token.length > MAX_PAGE_TOKEN_CHARS) throw invalidField(field, `must be at most ${MAX_PAGE_TOKEN_CHARS} characters`, token);
  return token;
}

/** Longest model name. */
export const MAX_MODEL_NAME_CHARS = 128;

const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Checks a model name: required, at most 128 characters of letters, digits, '.', '_' and '-'. */
export function validateModelName(field: string, name: string): string {
  if (name === '') throw invalidField(field, 'is required', name);
  if (name.length > MAX_MODEL_NAME_CHARS) throw invalidField(field, `must be at most ${MAX_MODEL_NAME_CHARS} characters`, name);
  if (!MODEL_NAME.test(name)) throw invalidField(field, "must contain only letters, digits, '.', '_' and '-'", name);
  return name;
}

function validatePriority(field: string, priority: number): number {
  if (!Number.isInteger(priority) || priority < 0 || priority >= PRIORITY_NAMES.length) {
    throw invalidField(field, `must be one of ${PRIORITY_NAMES.join(', ')}`, priority);
  }
  return priority === 0 ? PRIORITY_NORMAL : priority;
}

/** Validates a GenerateRequest and fills its defaults. */
export function validateGenerateRequest<T extends GenerateFields>(request: T, limits: RequestLimits): T {
  const model = validateModelName('model', request.model);
  validateAffinityKey(request.affinityKey);
  const messages = request.messages ?? [];
  if (messages.length > 0) {
    if (request.prompt !== '') throw invalidField('prompt', 'must be empty when messages are given', contentGiven(request.prompt));
    if (messages.length > MAX_MESSAGES) throw invalidField('messages', `must have at most ${MAX_MESSAGES} messages`, messages.length);
    let total = 0;
    messages.forEach((m, i) => {
      if (!MESSAGE_ROLES.includes(m.role)) throw invalidField(`messages[${i}].role`, `must be one of ${MESSAGE_ROLES.join(', ')}`, m.role);
      if (m.role === 'user' && m.content === '') throw invalidField(`messages[${i}].content`, 'is required for a user message', m.content);
      total += m.content.length;
      if (total > limits.maxPromptChars) throw invalidField('messages', `must have at most ${limits.maxPromptChars} characters of content in all`, `${total} by messages[${i}]`);
    });
  } else {
    if (request.prompt === '') throw invalidField('prompt', 'is required', request.prompt);
    if (request.prompt.length > limits.maxPromptChars) {
      throw invalidField('prompt', `must be at most ${limits.maxPromptChars} characters`, contentGiven(request.prompt));
    }
  }
  if (request.topP !== undefined && (!Number.isFinite(request.topP) || request.topP <= 0 || request.topP > 1)) {
    throw invalidField('top_p', 'must be greater than 0 and at most 1', request.topP);
  }
  if (request.maxTokens > MAX_TOKENS_LIMIT) throw invalidField('max_tokens', `must be <= ${MAX_TOKENS_LIMIT}`, request.maxTokens);
  const temperature = request.temperature ?? 1;
  if (!Number.isFinite(temperature) || temperature < 0 || temperature > 2) {
    throw invalidField('temperature', 'must be between 0 and 2', request.temperature);
  }
  if (request.stop.length > MAX_STOP_SEQUENCES) throw invalidField('stop', `must have at most ${MAX_STOP_SEQUENCES} sequences`, request.stop.length);
  request.stop.forEach((s, i) => {
    if (s.length === 0 || s.length > MAX_STOP_CHARS) throw invalidField(`stop[${i}]`, `must be 1 to ${MAX_STOP_CHARS} characters`, s);
  });
  return {
    ...request,
    model,
    maxTokens: request.maxTokens === 0 ? DEFAULT_MAX_TOKENS : request.maxTokens,
    temperature,
    priority: validatePriority('priority', request.priority),
  };
}

/** Validates a PredictRequest and fills its defaults. */
export function validatePredictRequest<T extends PredictFields>(request: T, limits: RequestLimits): T {
  const model = validateModelName('model', request.model);
  validateAffinityKey(request.affinityKey);
  if (request.input === '') throw invalidField('input', 'is required', request.input);
  if (request.input.length > limits.maxInputChars) {
    throw invalidField('input', `must be at most ${limits.maxInputChars} characters`, contentGiven(request.input));
  }
  return { ...request, model, priority: validatePriority('priority', request.priority) };
}
