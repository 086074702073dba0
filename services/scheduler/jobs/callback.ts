/**
 * Job callbacks: when a job ends, the scheduler POSTs a JSON payload to the job's callback URL,
 * retrying with backoff until the receiver answers 2xx or the attempts run out.
 *
 * Where it may go: see common/callback-target. The URL's own host is checked first (an IP address
 * in any spelling); a host name is resolved here, every address it resolves to is vetted, and the
 * connection goes to a vetted address (the resolver is the socket's `lookup`, so nothing resolves
 * the name a second time: DNS rebinding between check and connect cannot slip through). A
 * refused address fails the delivery at once, without retries. Redirects are never followed: a
 * 3xx answer fails the delivery, without retries.
 *
 * Each request carries, per the Standard Webhooks specification:
 * - `webhook-id`: the delivery's id, the same for every attempt (receivers drop duplicates by it);
 * - `webhook-timestamp`: this attempt's time, in Unix seconds;
 * - with a secret, `webhook-signature`: `v1,` and the base64 HMAC-SHA256, keyed with the secret's
 *   decoded bytes, of `${id}.${timestamp}.${body}`;
 * and `Content-Type: application/json`, `X-Maas-Event: job.finished`.
 *
 * Bounded: each attempt has a timeout (connect to response headers), the response body is never
 * read (the connection is closed once the status is known), and attempts are counted.
 *
 * Plain TypeScript, no gRPC; the resolver, the clock and `sleep` are injectable for tests.
 */
import { createHmac, randomUUID } from 'node:crypto';
import { lookup as dnsLookup } from 'node:dns/promises';
import { request as httpRequest, STATUS_CODES, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { LookupFunction } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { CallbackAllowlist, checkCallbackUrl, isAllowedHost, NO_EXCEPTIONS, vetAddress } from '../../../common/callback-target';
import { retryDelayMs } from './backoff';

/** Value of the `X-Maas-Event` header. */
export const CALLBACK_EVENT = 'job.finished';

/** Prefix of a Standard Webhooks secret. */
export const SECRET_PREFIX = 'whsec_';

/** One address a host name resolves to. */
export interface ResolvedAddress {
  address: string;
  family: number;
}

/** Options of {@link deliverCallback}. */
export interface CallbackOptions {
  /** Signing key (the decoded bytes of a `whsec_` secret, see {@link parseWebhookSecret}); unset sends deliveries unsigned. */
  secret?: Uint8Array;
  /** Exceptions to "public addresses only". Default none. */
  allow?: CallbackAllowlist;
  /** Attempts in all, >= 1. Default 5. */
  attempts?: number;
  /** Ceiling of the backoff after the first failed attempt, in ms; doubles after each. Default 1000. */
  baseDelayMs?: number;
  /** Largest backoff between attempts, in ms. Default 60000. */
  maxDelayMs?: number;
  /** Time an attempt may take (connect until the response headers), in ms. Default 10000. */
  timeoutMs?: number;
  /** The `webhook-id`; default a random one. Pass a stable one to keep it across restarts. */
  deliveryId?: string;
  /** Stops the delivery: no new attempt starts, a running one is aborted. */
  signal?: AbortSignal;
  /** Resolves a host name to its addresses; default the system resolver (`dns.lookup`). */
  resolve?: (host: string) => Promise<ResolvedAddress[]>;
  /** The clock for `webhook-timestamp`, in ms since the epoch; default `Date.now`. */
  now?: () => number;
  /** Waits between attempts; default a timer (cut short by `signal`). */
  sleep?: (ms: number) => Promise<void>;
  /** Uniform source in [0, 1) for the backoff's jitter; default `Math.random`. */
  random?: () => number;
}

/** How a delivery went. */
export interface CallbackOutcome {
  /** True when an attempt got a 2xx answer. */
  delivered: boolean;
  /** True when the target was refused (a forbidden address, by URL or by resolution): nothing was sent. */
  refused: boolean;
  /** Attempts made (0 when the URL was refused before any). */
  attempts: number;
  /** Why the last attempt failed (e.g. "HTTP 503 Service Unavailable", "refused: ..."); undefined when delivered. */
  lastError?: string;
  /** The `webhook-id` used. */
  deliveryId: string;
}

/**
 * Decodes a Standard Webhooks secret, `whsec_` and the base64 of 24 to 64 bytes, into its key.
 * Throws an Error that says what is expected and never repeats the secret.
 */
export function parseWebhookSecret(raw: string): Uint8Array {
  const expected = `expected "${SECRET_PREFIX}" followed by the base64 of 24 to 64 random bytes (e.g. ${SECRET_PREFIX}$(openssl rand -base64 32))`;
  if (!raw.startsWith(SECRET_PREFIX)) throw new Error(`${expected}; the value given does not start with "${SECRET_PREFIX}"`);
  const encoded = raw.slice(SECRET_PREFIX.length);
  if (encoded.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(encoded)) throw new Error(`${expected}; the value given is not valid base64`);
  const key = Buffer.from(encoded, 'base64');
  if (key.length < 24 || key.length > 64) throw new Error(`${expected}; the value given decodes to ${key.length} bytes`);
  return new Uint8Array(key);
}

/** The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of `${id}.${timestamp}.${body}` (a string body is taken as UTF-8). */
export function signWebhook(key: Uint8Array, id: string, timestampSeconds: number, body: string | Uint8Array): string {
  return `v1,${createHmac('sha256', key).update(`${id}.${timestampSeconds}.`).update(body).digest('base64')}`;
}

/**
 * POSTs `payload` as JSON to `url` until an attempt gets a 2xx answer or `attempts` have failed.
 * A failure status other than 3xx, a network error or an attempt that exceeds `timeoutMs` fails
 * the attempt; the next one comes after a `retryDelayMs` backoff. A refused target or a redirect
 * ends the delivery at once. Never throws: a bad URL is an outcome with 0 attempts.
 */
export async function deliverCallback(url: string, payload: unknown, options: CallbackOptions = {}): Promise<CallbackOutcome> {
  const { secret, allow = NO_EXCEPTIONS, attempts = 5, baseDelayMs = 1000, maxDelayMs = 60_000, timeoutMs = 10_000, signal, random, now = Date.now } = options;
  const deliveryId = options.deliveryId ?? `msg_${randomUUID()}`;
  const resolve = options.resolve ?? ((host: string) => dnsLookup(host, { all: true, verbatim: true }));
  const sleep = options.sleep ?? ((ms: number) => delay(ms, undefined, { signal }).catch(() => undefined));

  const checked = checkCallbackUrl(url, allow);
  if (!('url' in checked)) {
    const refused = checked.rule.startsWith('must not name');
    return { delivered: false, refused, attempts: 0, lastError: `${refused ? 'refused: ' : ''}callback_url ${checked.rule}`, deliveryId };
  }
  if (!Number.isSafeInteger(attempts) || attempts < 1) {
    return { delivered: false, refused: false, attempts: 0, lastError: `attempts must be an integer >= 1, given ${attempts}`, deliveryId };
  }

  // JSON.stringify escapes lone surrogates, so the UTF-8 bytes sent are exactly those signed.
  const body = Buffer.from(JSON.stringify(payload ?? null), 'utf8');
  let lastError = 'not attempted';
  for (let attempt = 1; attempt <= attempts; attempt++) {
    if (signal?.aborted) return { delivered: false, refused: false, attempts: attempt - 1, lastError: 'delivery aborted', deliveryId };
    const timestamp = Math.floor(now() / 1000);
    const headers: Record<string, string> = {
      'Content-Type': 'application/json',
      'Content-Length': String(body.length),
      'X-Maas-Event': CALLBACK_EVENT,
      'webhook-id': deliveryId,
      'webhook-timestamp': String(timestamp),
    };
    if (secret) headers['webhook-signature'] = signWebhook(secret, deliveryId, timestamp, body);
    const result = await attemptOnce(checked.url, body, headers, { timeoutMs, signal, allow, resolve });
    if (result.ok) return { delivered: true, refused: false, attempts: attempt, deliveryId };
    lastError = result.error;
    if (result.final) return { delivered: false, refused: result.refused ?? false, attempts: attempt, lastError, deliveryId };
    if (attempt < attempts) await sleep(retryDelayMs(attempt, { baseMs: baseDelayMs, maxMs: maxDelayMs, random }));
  }
  return { delivered: false, refused: false, attempts, lastError, deliveryId };
}

type AttemptResult = { ok: true } | { ok: false; error: string; final: boolean; refused?: boolean };

interface AttemptContext {
  timeoutMs: number;
  signal: AbortSignal | undefined;
  allow: CallbackAllowlist;
  resolve: (host: string) => Promise<ResolvedAddress[]>;
}

/** One POST to a URL that passed {@link checkCallbackUrl}. */
function attemptOnce(url: URL, body: Buffer, headers: Record<string, string>, context: AttemptContext): Promise<AttemptResult> {
  const { timeoutMs, signal, allow, resolve } = context;
  return new Promise<AttemptResult>((settle) => {
    let refusal: string | undefined;
    let done = false;
    const finish = (result: AttemptResult): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      req.destroy();
      settle(result);
    };

    // The socket connects to what this returns, and only after every address was vetted. (An IP
    // literal host never comes here: it was vetted by checkCallbackUrl.)
    const lookup: LookupFunction = (hostname, lookupOptions, callback) => {
      resolve(hostname).then(
        (addresses) => {
          if (!isAllowedHost(hostname, allow)) {
            for (const { address } of addresses) {
              const why = vetAddress(address, allow);
              if (why) {
                refusal = `${hostname} resolves to ${why.replace(/ is /, ', ')}, which the callback allowlist does not permit`;
                callback(new Error(refusal), '', 4);
                return;
              }
            }
          }
          const family = lookupOptions.family === 4 || lookupOptions.family === 6 ? lookupOptions.family : 0;
          const usable = addresses.filter((a) => family === 0 || a.family === family);
          if (usable.length === 0) {
            callback(Object.assign(new Error(`no address found for ${hostname}`), { code: 'ENOTFOUND' }), '', 4);
          } else if (lookupOptions.all) {
            (callback as unknown as (err: null, addresses: ResolvedAddress[]) => void)(null, usable);
          } else {
            callback(null, usable[0]!.address, usable[0]!.family);
          }
        },
        (err: unknown) => callback(err as NodeJS.ErrnoException, '', 4),
      );
    };

    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = send(url, { method: 'POST', headers, agent: false, lookup }, (res: IncomingMessage) => {
      const status = res.statusCode ?? 0;
      const text = `HTTP ${status}${STATUS_CODES[status] ? ` ${STATUS_CODES[status]}` : ''}`;
      // The body is never read: closing the connection (in finish) drops it.
      if (status >= 200 && status < 300) finish({ ok: true });
      else if (status >= 300 && status < 400) finish({ ok: false, error: `${text}: redirects are not followed`, final: true });
      else finish({ ok: false, error: text, final: false });
    });
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (refusal) finish({ ok: false, error: `refused: ${refusal}`, final: true, refused: true });
      else finish({ ok: false, error: err.message.slice(0, 300), final: false });
    });
    const timer = setTimeout(() => finish({ ok: false, error: `timed out after ${timeoutMs} ms`, final: false }), timeoutMs);
    const onAbort = (): void => finish({ ok: false, error: 'delivery aborted', final: true });
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    req.end(body);
  });
}
