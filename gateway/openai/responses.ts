/**
 * The OpenAI API's answers: completion and chat completion objects, their streamed chunks, the
 * model list, and the error object `{error: {message, type, param, code}}` with the HTTP status
 * that goes with each kind of mesh error.
 *
 * Plain TypeScript: no HTTP, no gRPC (a gRPC status arrives here as its number).
 */
import { ErrorKind } from '../../common/errors';

/** Why a choice ended, in the API's words. */
export type OpenAiFinishReason = 'stop' | 'length';

/** Token counts, in the API's words. */
export interface OpenAiUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** The usage object of `prompt` and `completion` tokens. */
export function usageOf(promptTokens: number, completionTokens: number): OpenAiUsage {
  return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
}

/** What every answer of one call shares. */
export interface CallIdentity {
  /** `cmpl-...` or `chatcmpl-...`. */
  id: string;
  /** Unix seconds when the call was accepted. */
  created: number;
  model: string;
}

/** The whole answer of a non-streamed /v1/completions call. */
export function completionBody(call: CallIdentity, text: string, finish: OpenAiFinishReason, usage: OpenAiUsage) {
  return { id: call.id, object: 'text_completion', created: call.created, model: call.model, choices: [{ index: 0, text, logprobs: null, finish_reason: finish }], usage };
}

/** One streamed chunk of /v1/completions; `usage` is null on every chunk but the usage chunk when include_usage is on. */
export function completionChunk(call: CallIdentity, text: string, finish: OpenAiFinishReason | null, includeUsage: boolean) {
  return { id: call.id, object: 'text_completion', created: call.created, model: call.model, choices: [{ index: 0, text, logprobs: null, finish_reason: finish }], ...(includeUsage ? { usage: null } : {}) };
}

/** The whole answer of a non-streamed /v1/chat/completions call. */
export function chatBody(call: CallIdentity, content: string, finish: OpenAiFinishReason, usage: OpenAiUsage) {
  return {
    id: call.id,
    object: 'chat.completion',
    created: call.created,
    model: call.model,
    choices: [{ index: 0, message: { role: 'assistant', content, refusal: null }, logprobs: null, finish_reason: finish }],
    usage,
  };
}

/** One streamed chunk of /v1/chat/completions: the first carries the role, the last an empty delta and the finish reason. */
export function chatChunk(call: CallIdentity, delta: { role?: 'assistant'; content?: string }, finish: OpenAiFinishReason | null, includeUsage: boolean) {
  return { id: call.id, object: 'chat.completion.chunk', created: call.created, model: call.model, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }], ...(includeUsage ? { usage: null } : {}) };
}

/** The extra last chunk of a stream with include_usage: no choices, the usage. */
export function usageChunk(call: CallIdentity, object: 'text_completion' | 'chat.completion.chunk', usage: OpenAiUsage) {
  return { id: call.id, object, created: call.created, model: call.model, choices: [], usage };
}

/** One model of GET /v1/models. */
export function modelObject(name: string) {
  return { id: name, object: 'model', created: 0, owned_by: 'maas' };
}

/** The body of an error answer. */
export interface OpenAiErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** An error as the edge answers it: HTTP status, body, and extra headers (Retry-After). */
export interface OpenAiError {
  status: number;
  body: OpenAiErrorBody;
  headers: Record<string, string>;
}

/** Seconds a client is told to wait (Retry-After) when the mesh refuses for load or quota. */
export const RETRY_AFTER_SECONDS = 1;

/** HTTP status, error type and code of each kind of mesh error. */
const BY_KIND: Record<ErrorKind | 'internal', { status: number; type: string; code: string | null }> = {
  invalid_argument: { status: 400, type: 'invalid_request_error', code: null },
  failed_precondition: { status: 400, type: 'invalid_request_error', code: 'failed_precondition' },
  already_exists: { status: 409, type: 'invalid_request_error', code: 'already_exists' },
  unauthenticated: { status: 401, type: 'authentication_error', code: 'invalid_api_key' },
  permission_denied: { status: 403, type: 'permission_error', code: 'permission_denied' },
  not_found: { status: 404, type: 'invalid_request_error', code: 'model_not_found' },
  resource_exhausted: { status: 429, type: 'rate_limit_error', code: 'rate_limit_exceeded' },
  unavailable: { status: 503, type: 'server_error', code: 'unavailable' },
  deadline_exceeded: { status: 504, type: 'server_error', code: 'timeout' },
  cancelled: { status: 499, type: 'server_error', code: 'cancelled' },
  internal: { status: 500, type: 'server_error', code: 'internal_error' },
};

/** gRPC status numbers (grpc/status.proto) and the error kind each one means at this edge. */
const KIND_OF_GRPC_STATUS: Record<number, ErrorKind | 'internal'> = {
  1: 'cancelled',
  3: 'invalid_argument',
  4: 'deadline_exceeded',
  5: 'not_found',
  6: 'already_exists',
  7: 'permission_denied',
  8: 'resource_exhausted',
  9: 'failed_precondition',
  14: 'unavailable',
  16: 'unauthenticated',
};

/** The error kind of a gRPC status number; any other status is `internal`. */
export function kindOfGrpcStatus(code: number): ErrorKind | 'internal' {
  return KIND_OF_GRPC_STATUS[code] ?? 'internal';
}

/** The error answer of `kind` with `message` (already safe to show) naming `param` when known. */
export function openAiError(kind: ErrorKind | 'internal', message: string, param: string | null = null): OpenAiError {
  const { status, type, code } = BY_KIND[kind];
  const headers: Record<string, string> = kind === 'resource_exhausted' ? { 'retry-after': String(RETRY_AFTER_SECONDS) } : {};
  return { status, body: { error: { message, type, param: kind === 'not_found' && param === null ? 'model' : param, code } }, headers };
}

/** An error answer with its own status (413, 404 route, 405) that no mesh kind has. */
export function httpError(status: number, message: string, code: string, param: string | null = null): OpenAiError {
  return { status, body: { error: { message, type: 'invalid_request_error', param, code } }, headers: {} };
}
