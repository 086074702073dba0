import { expect } from 'chai';
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { retryDelayMs } from '../../services/scheduler/jobs/backoff.js';
import { deliverCallback, signPayload, validateCallbackUrl, verifySignature } from '../../services/scheduler/jobs/callback.js';

interface Received {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** What the receiver does with a request: answer with a status, or hold it unanswered. */
type Reply = number | 'hang';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

describe('jobs: deliverCallback', () => {
  let server: Server;
  let url: string;
  let received: Received[];
  /** Replies to the next requests, in order; after them, 204. */
  let replies: Reply[];
  let held: ServerResponse[];
  /** Delays asked of the injected sleep; it resolves at once. */
  let slept: number[];
  const sleep = async (ms: number): Promise<void> => void slept.push(ms);

  before(async () => {
    server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        received.push({ method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks) });
        const reply = replies.shift() ?? 204;
        if (reply === 'hang') held.push(res);
        else if (reply >= 300 && reply < 400) res.writeHead(reply, { Location: '/elsewhere' }).end();
        else res.writeHead(reply).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/jobs`;
  });

  beforeEach(() => {
    received = [];
    replies = [];
    held = [];
    slept = [];
  });

  afterEach(() => {
    for (const res of held) res.destroy();
  });

  after(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('POSTs the payload as JSON with the event and delivery headers', async () => {
    const payload = { event: 'job.finished', job: { id: 'job-1', state: 'JOB_STATE_SUCCEEDED', note: 'héllo ✓' } };
    const outcome = await deliverCallback(url, payload, { sleep });
    expect(outcome).to.include({ delivered: true, attempts: 1 });
    expect(outcome.lastError).to.equal(undefined);
    expect(received).to.have.length(1);
    const [req] = received;
    expect(req!.method).to.equal('POST');
    expect(req!.url).to.equal('/hooks/jobs');
    expect(req!.headers['content-type']).to.equal('application/json');
    expect(req!.headers['x-maas-event']).to.equal('job.finished');
    expect(req!.headers['x-maas-delivery']).to.match(UUID).and.equal(outcome.deliveryId);
    expect(req!.headers['x-maas-signature']).to.equal(undefined);
    expect(JSON.parse(req!.body.toString('utf8'))).to.deep.equal(payload);
    expect(slept).to.deep.equal([]);
  });

  it('signs the exact body bytes: the header verifies with verifySignature and the secret only', async () => {
    const outcome = await deliverCallback(url, { job: { id: 'job-2', text: 'naïve — ünïcode' } }, { secret: 's3cret', sleep });
    expect(outcome.delivered).to.equal(true);
    const { headers, body } = received[0]!;
    const signature = headers['x-maas-signature'] as string;
    expect(signature).to.match(/^sha256=[0-9a-f]{64}$/);
    expect(signature).to.equal(signPayload('s3cret', body));
    expect(verifySignature('s3cret', body, signature)).to.equal(true);
    expect(verifySignature('wrong', body, signature)).to.equal(false);
    expect(verifySignature('s3cret', Buffer.concat([body, Buffer.from(' ')]), signature)).to.equal(false);
  });

  it('retries failure statuses with backoff, then delivers, with the same delivery id on every attempt', async () => {
    replies = [500, 503, 429, 404];
    const random = () => 0.5;
    const outcome = await deliverCallback(url, { n: 1 }, { attempts: 5, baseDelayMs: 100, sleep, random });
    expect(outcome).to.include({ delivered: true, attempts: 5 });
    expect(received).to.have.length(5);
    const ids = new Set(received.map((r) => r.headers['x-maas-delivery']));
    expect([...ids]).to.deep.equal([outcome.deliveryId]);
    expect(new Set(received.map((r) => r.body.toString())).size).to.equal(1);
    expect(slept).to.deep.equal([1, 2, 3, 4].map((attempt) => retryDelayMs(attempt, { baseMs: 100, maxMs: 60_000, random })));
  });

  it('gives up after the given attempts with delivered=false and the last error', async () => {
    replies = [500, 500, 500, 500];
    const outcome = await deliverCallback(url, { n: 2 }, { attempts: 3, sleep });
    expect(outcome).to.include({ delivered: false, attempts: 3, lastError: 'HTTP 500 Internal Server Error' });
    expect(received).to.have.length(3);
    expect(slept).to.have.length(2);
  });

  it('makes 5 attempts by default', async () => {
    replies = Array<Reply>(10).fill(502);
    const outcome = await deliverCallback(url, {}, { sleep });
    expect(outcome).to.include({ delivered: false, attempts: 5 });
    expect(received).to.have.length(5);
  });

  it('retries after a network error', async () => {
    let calls = 0;
    const flaky: typeof fetch = (input, init) => (++calls === 1 ? Promise.reject(new TypeError('fetch failed')) : fetch(input, init));
    const outcome = await deliverCallback(url, { n: 3 }, { fetch: flaky, sleep });
    expect(outcome).to.include({ delivered: true, attempts: 2 });
    expect(received).to.have.length(1);
  });

  it('reports a refused connection as the last error', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const outcome = await deliverCallback(`http://127.0.0.1:${port}/`, {}, { attempts: 2, sleep });
    expect(outcome).to.include({ delivered: false, attempts: 2 });
    expect(outcome.lastError).to.match(/ECONNREFUSED/);
  });

  it('abandons an attempt that exceeds timeoutMs and retries', async () => {
    replies = ['hang'];
    const outcome = await deliverCallback(url, { n: 4 }, { timeoutMs: 100, sleep });
    expect(outcome).to.include({ delivered: true, attempts: 2 });
    expect(received).to.have.length(2);
    expect(received[0]!.headers['x-maas-delivery']).to.equal(received[1]!.headers['x-maas-delivery']);
  });

  it('treats a redirect as a failed attempt and does not follow it', async () => {
    replies = [302];
    const outcome = await deliverCallback(url, {}, { attempts: 1, sleep });
    expect(outcome).to.include({ delivered: false, attempts: 1 });
    expect(outcome.lastError).to.match(/^HTTP 302/);
    expect(received.map((r) => r.url)).to.deep.equal(['/hooks/jobs']);
  });

  it('stops retrying when its signal aborts', async () => {
    replies = [500, 500, 500];
    const controller = new AbortController();
    const abortingSleep = async (ms: number) => {
      slept.push(ms);
      controller.abort();
    };
    const outcome = await deliverCallback(url, {}, { attempts: 5, sleep: abortingSleep, signal: controller.signal });
    expect(outcome).to.include({ delivered: false, attempts: 1, lastError: 'delivery aborted' });
    expect(received).to.have.length(1);
  });

  it('refuses a URL that is not http or https without sending anything', async () => {
    const outcome = await deliverCallback('ftp://127.0.0.1/x', {}, { sleep });
    expect(outcome).to.include({ delivered: false, attempts: 0 });
    expect(outcome.lastError).to.match(/^callback_url must use http or https/);
    expect(received).to.have.length(0);
  });
});

describe('jobs: validateCallbackUrl', () => {
  it('accepts absolute http and https URLs', () => {
    expect(validateCallbackUrl('http://127.0.0.1:8080/hook')).to.equal(undefined);
    expect(validateCallbackUrl('https://example.com/jobs?token=abc')).to.equal(undefined);
  });

  it('names the field, the rule and the value for anything else', () => {
    expect(validateCallbackUrl('ftp://example.com/x')).to.equal('callback_url must use http or https, given "ftp"');
    expect(validateCallbackUrl('file:///etc/passwd')).to.equal('callback_url must use http or https, given "file"');
    expect(validateCallbackUrl('not a url')).to.equal('callback_url must be an absolute http or https URL, given "not a url"');
    expect(validateCallbackUrl('/relative/path')).to.match(/^callback_url must be an absolute/);
    expect(validateCallbackUrl('')).to.match(/^callback_url must be an absolute/);
  });
});

describe('jobs: signPayload and verifySignature', () => {
  it('give "sha256=" and the hex HMAC-SHA256 of the body (a published test value)', () => {
    // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"), a widely published value.
    const expected = 'sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8';
    expect(signPayload('key', 'The quick brown fox jumps over the lazy dog')).to.equal(expected);
    expect(signPayload('key', Buffer.from('The quick brown fox jumps over the lazy dog'))).to.equal(expected);
  });

  it('verifySignature accepts only the right signature of the exact bytes', () => {
    const body = '{"a":1}';
    const good = signPayload('k', body);
    expect(verifySignature('k', body, good)).to.equal(true);
    expect(verifySignature('k', body, good.toUpperCase().replace('SHA256=', 'sha256='))).to.equal(true);
    expect(verifySignature('k', '{"a": 1}', good)).to.equal(false);
    expect(verifySignature('k', body, good.slice(0, -1) + (good.endsWith('0') ? '1' : '0'))).to.equal(false);
    expect(verifySignature('k', body, good.slice(7))).to.equal(false);
    expect(verifySignature('k', body, 'sha256=abc')).to.equal(false);
    expect(verifySignature('k', body, undefined)).to.equal(false);
    expect(verifySignature('k', body, '')).to.equal(false);
  });
});
