/**
 * Job callbacks: when a job ends, the scheduler POSTs a JSON payload to the job's callback URL,
 * retrying with backoff until the receiver answers 2xx or the attempts run out.
 *
 * Each request carries:
 * - `Content-Type: application/json`;
 * - `X-Maas-Event: job.finished`;
 * - `X-Maas-Delivery: <uuid>`, the same for every attempt of one delivery, so a receiver can drop
 *   duplicates (an attempt that timed out on our side may still have reached it);
 * - with a secret, `X-Maas-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>`; receivers
 *   check it with {@link verifySignature} (or its equivalent) over the raw body, before parsing.
 *
 * Plain TypeScript, no gRPC; `fetch` and `sleep` are injectable for tests.
 */
import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { retryDelayMs } from './backoff.js';

/** Value of the `X-Maas-Event` header. */
export const CALLBACK_EVENT = 'job.finished';

/** Options of {@link deliverCallback}. */
export interface CallbackOptions {
  /** HMAC-SHA256 key; when set (and not empty) every request is signed. */
  secret?: string;
  /** Attempts in all, >= 1. Default 5. */
  attempts?: number;
  /** Ceiling of the backoff after the first failed attempt, in ms; doubles after each. Default 1000. */
  baseDelayMs?: number;
  /** Largest backoff between attempts, in ms. Default 60000. */
  maxDelayMs?: number;
  /** Time an attempt may take (until the response headers), in ms. Default 10000. */
  timeoutMs?: number;
  /** Delivery id sent as `X-Maas-Delivery`; default a random UUID. Pass a stored one to keep it across restarts. */
  deliveryId?: string;
  /** Stops the delivery: no new attempt starts, a running one is aborted. */
  signal?: AbortSignal;
  /** The fetch to use; default the global one. */
  fetch?: typeof fetch;
  /** Waits between attempts; default a timer (cut short by `signal`). */
  sleep?: (ms: number) => Promise<void>;
  /** Uniform source in [0, 1) for the backoff's jitter; default `Math.random`. */
  random?: () => number;
}

/** How a delivery went. */
export interface CallbackOutcome {
  /** True when an attempt got a 2xx answer. */
  delivered: boolean;
  /** Attempts made (0 when the URL was refused before any). */
  attempts: number;
  /** Why the last attempt failed (e.g. "HTTP 503 Service Unavailable", "timed out after 10000 ms"); undefined when delivered. */
  lastError?: string;
  /** The `X-Maas-Delivery` id used. */
  deliveryId: string;
}

/**
 * Checks a callback URL: undefined when it is an absolute http or https URL with a host, else a
 * message that names the field, the rule and the value.
 */
export function validateCallbackUrl(url: string): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return `callback_url must be an absolute http or https URL, given ${JSON.stringify(url)}`;
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    return `callback_url must use http or https, given ${JSON.stringify(parsed.protocol.slice(0, -1))}`;
  }
  if (parsed.hostname === '') return `callback_url must name a host, given ${JSON.stringify(url)}`;
  return undefined;
}

/** The `X-Maas-Signature` value for `body`: `sha256=` and the hex HMAC-SHA256 of its bytes (a string is taken as UTF-8). */
export function signPayload(secret: string, body: string | Uint8Array): string {
  return `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;
}

/**
 * True when `header` is the signature of `body` under `secret`. The comparison takes the same
 * time wherever the first difference is; a missing or malformed header is false.
 */
export function verifySignature(secret: string, body: string | Uint8Array, header: string | undefined | null): boolean {
  if (typeof header !== 'string') return false;
  const match = /^sha256=([0-9a-f]{64})$/i.exec(header.trim());
  if (!match) return false;
  const expected = createHmac('sha256', secret).update(body).digest();
  return timingSafeEqual(Buffer.from(match[1]!, 'hex'), expected);
}

/**
 * POSTs `payload` as JSON to `url` until an attempt gets a 2xx answer or `attempts` have failed.
 * Any other status, a network error or an attempt that exceeds `timeoutMs` fails the attempt;
 * the next one comes after a `retryDelayMs` backoff. Never throws: an invalid URL is reported as
 * an outcome with 0 attempts, an aborted `signal` as an undelivered outcome.
 */
export async function deliverCallback(url: string, payload: unknown, options: CallbackOptions = {}): Promise<CallbackOutcome> {
  const { secret, attempts = 5, baseDelayMs = 1000, maxDelayMs = 60_000, timeoutMs = 10_000, signal, random } = options;
  const deliveryId = options.deliveryId ?? randomUUID();
  const doFetch = options.fetch ?? fetch;
  const sleep = options.sleep ?? ((ms: number) => delay(ms, undefined, { signal }).catch(() => undefined));

  const invalid = validateCallbackUrl(url);
  if (invalid) return { delivered: false, attempts: 0, lastError: invalid, deliveryId };
  if (!Number.isSafeInteger(attempts) || attempts < 1) {
    return { delivered: false, attempts: 0, lastError: `attempts must be an integer >= 1, given ${attempts}`, deliveryId };
  }

  // JSON.stringify escapes lone surrogates, so the string's UTF-8 encoding (what fetch sends and what is signed) is exact.
  const body = JSON.stringify(payload ?? null);
  const headers: Record<string, string> = {
    'Content-Type': 'application/json',
    'X-Maas-Event': CALLBACK_EVENT,
    'X-Maas-Delivery': deliveryId,
  };
  if (secret) headers['X-Maas-Signature'] = signPayload(secret, body);

  let lastError = 'not attempted';
  for (let attempt = 1; attempt <= attempts; attempt++) {
    if (signal?.aborted) return { delivered: false, attempts: attempt - 1, lastError: 'delivery aborted', deliveryId };
    const error = await attemptOnce(doFetch, url, body, headers, timeoutMs, signal);
    if (error === undefined) return { delivered: true, attempts: attempt, deliveryId };
    lastError = error;
    if (attempt < attempts) await sleep(retryDelayMs(attempt, { baseMs: baseDelayMs, maxMs: maxDelayMs, random }));
  }
  return { delivered: false, attempts, lastError, deliveryId };
}

/** One POST; undefined when the receiver answered 2xx, else why not. */
async function attemptOnce(
  doFetch: typeof fetch,
  url: string,
  body: string,
  headers: Record<string, string>,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<string | undefined> {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, timeoutMs);
  const onAbort = (): void => controller.abort();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    // Redirects are not followed: a callback URL that moved is a failed delivery, not a silent GET elsewhere.
    const response = await doFetch(url, { method: 'POST', headers, body, redirect: 'manual', signal: controller.signal });
    // The body is not needed; dropping it frees the connection.
    await response.body?.cancel().catch(() => undefined);
    if (response.status >= 200 && response.status < 300) return undefined;
    return `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ''}`;
  } catch (err) {
    if (timedOut) return `timed out after ${timeoutMs} ms`;
    if (signal?.aborted) return 'delivery aborted';
    const cause = err instanceof Error && err.cause instanceof Error ? `: ${err.cause.message}` : '';
    return `${err instanceof Error ? err.message : String(err)}${cause}`;
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
  }
}
