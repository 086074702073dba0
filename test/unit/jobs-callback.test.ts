import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Webhook } from 'standardwebhooks';
import { NO_EXCEPTIONS, parseCallbackAllowlist } from '../../common/callback-target.js';
import { ConfigError, parseConfig } from '../../common/config.js';
import { schedulerSchema } from '../../services/scheduler/config.js';
import { retryDelayMs } from '../../services/scheduler/jobs/backoff.js';
import { deliverCallback, parseWebhookSecret, signWebhook, type ResolvedAddress } from '../../services/scheduler/jobs/callback.js';

interface Received {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** What the receiver does with a request: answer with a status, redirect, hold it unanswered, or stream a body without end. */
type Reply = number | 'hang' | 'endless' | { redirect: string };

/** A Standard Webhooks secret for the tests. */
const SECRET = `whsec_${randomBytes(32).toString('base64')}`;
/** The allowlist that lets the tests reach their loopback receiver. */
const LOOPBACK = parseCallbackAllowlist('127.0.0.1/32');
const HOOK_HOST = 'hooks.example.test';

describe('jobs: deliverCallback', () => {
  let server: Server;
  let port: number;
  let url: string;
  let received: Received[];
  /** Replies to the next requests, in order; after them, 204. */
  let replies: Reply[];
  let held: ServerResponse[];
  /** Resolves when a streamed ('endless') response is closed by the client. */
  let endlessClosed: Promise<void>;
  let onEndlessClosed: () => void;
  /** Delays asked of the injected sleep; it resolves at once. */
  let slept: number[];
  const sleep = async (ms: number): Promise<void> => void slept.push(ms);
  /** A resolver that answers every name with these addresses, counting calls; never the network. */
  const resolveTo = (...addresses: string[]) => {
    const calls: string[] = [];
    const resolve = async (host: string): Promise<ResolvedAddress[]> => {
      calls.push(host);
      return addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
    };
    return { resolve, calls };
  };

  before(async () => {
    server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        received.push({ method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks) });
        const reply = replies.shift() ?? 204;
        if (reply === 'hang') held.push(res);
        else if (reply === 'endless') {
          res.writeHead(200, { 'Content-Type': 'text/plain' });
          const chunk = Buffer.alloc(64 * 1024, 'x');
          const timer = setInterval(() => res.write(chunk), 1);
          res.on('close', () => {
            clearInterval(timer);
            onEndlessClosed();
          });
        } else if (typeof reply === 'object') res.writeHead(302, { Location: reply.redirect }).end();
        else if (reply >= 300 && reply < 400) res.writeHead(reply, { Location: '/elsewhere' }).end();
        else res.writeHead(reply).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
    url = `http://127.0.0.1:${port}/hooks/jobs`;
  });

  beforeEach(() => {
    received = [];
    replies = [];
    held = [];
    slept = [];
    endlessClosed = new Promise<void>((resolve) => (onEndlessClosed = resolve));
  });

  afterEach(() => {
    for (const res of held) res.destroy();
  });

  after(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  describe('where it may go', () => {
    it('refuses 127.0.0.1 by default without sending anything or retrying', async () => {
      const outcome = await deliverCallback(url, { n: 1 }, { sleep });
      expect(outcome).to.include({ delivered: false, refused: true, attempts: 0 });
      expect(outcome.lastError).to.equal('refused: callback_url must not name a loopback address (127.0.0.1) unless the callback allowlist permits it');
      expect(received).to.have.length(0);
      expect(slept).to.deep.equal([]);
    });

    it('refuses 127.0.0.1 spelled as an integer, and as IPv4-mapped IPv6', async () => {
      for (const spelled of [`http://2130706433:${port}/`, `http://[::ffff:127.0.0.1]:${port}/`, `http://0x7f.1:${port}/`]) {
        const outcome = await deliverCallback(spelled, {}, { sleep });
        expect(outcome, spelled).to.include({ delivered: false, refused: true, attempts: 0 });
      }
      expect(received).to.have.length(0);
    });

    it('refuses "localhost", which the system resolver resolves to loopback, at connect time and without retrying', async () => {
      const outcome = await deliverCallback(`http://localhost:${port}/hooks/jobs`, {}, { attempts: 5, sleep });
      expect(outcome).to.include({ delivered: false, refused: true, attempts: 1 });
      expect(outcome.lastError).to.match(/^refused: localhost resolves to (127\.0\.0\.1|::1), a loopback address, which the callback allowlist does not permit$/);
      expect(received).to.have.length(0);
      expect(slept).to.deep.equal([]);
    });

    it('refuses a name that resolves to 127.0.0.1, and one with any forbidden address among public ones', async () => {
      for (const addresses of [['127.0.0.1'], ['93.184.216.34', '169.254.169.254'], ['::ffff:10.0.0.1']]) {
        const { resolve, calls } = resolveTo(...addresses);
        const outcome = await deliverCallback(`http://${HOOK_HOST}:${port}/hooks/jobs`, {}, { resolve, sleep });
        expect(outcome, addresses.join()).to.include({ delivered: false, refused: true, attempts: 1 });
        expect(outcome.lastError).to.match(new RegExp(`^refused: ${HOOK_HOST} resolves to `));
        expect(calls).to.deep.equal([HOOK_HOST]);
      }
      expect(received).to.have.length(0);
    });

    it('delivers to the vetted address when the allowlist permits it, by name or by range', async () => {
      const { resolve, calls } = resolveTo('127.0.0.1');
      for (const allow of [parseCallbackAllowlist(HOOK_HOST), LOOPBACK]) {
        const outcome = await deliverCallback(`http://${HOOK_HOST}:${port}/hooks/jobs`, {}, { resolve, allow, sleep });
        expect(outcome).to.include({ delivered: true, refused: false, attempts: 1 });
      }
      expect(calls).to.deep.equal([HOOK_HOST, HOOK_HOST]);
      expect(received.map((r) => r.headers.host)).to.deep.equal([`${HOOK_HOST}:${port}`, `${HOOK_HOST}:${port}`]);
    });

    it('resolves once per attempt and vets each answer: a name rebound to the metadata address between attempts is refused', async () => {
      replies = [503];
      const answers = [['127.0.0.1'], ['169.254.169.254']];
      const calls: string[] = [];
      const resolve = async (host: string): Promise<ResolvedAddress[]> => {
        calls.push(host);
        return answers.shift()!.map((address) => ({ address, family: 4 }));
      };
      const outcome = await deliverCallback(`http://${HOOK_HOST}:${port}/hooks/jobs`, {}, { resolve, allow: LOOPBACK, attempts: 5, sleep });
      expect(outcome).to.include({ delivered: false, refused: true, attempts: 2 });
      expect(outcome.lastError).to.match(/^refused: hooks\.example\.test resolves to 169\.254\.169\.254, a link-local address/);
      expect(calls).to.have.length(2);
      expect(received).to.have.length(1);
    });

    it('does not follow a redirect to a forbidden address: the delivery fails at once, saying so', async () => {
      // The hook's name is allowed; 127.0.0.1 itself is not, so following the redirect would reach a forbidden address.
      const { resolve } = resolveTo('127.0.0.1');
      replies = [{ redirect: `http://127.0.0.1:${port}/internal` }];
      const outcome = await deliverCallback(`http://${HOOK_HOST}:${port}/hooks/jobs`, {}, { resolve, allow: parseCallbackAllowlist(HOOK_HOST), attempts: 5, sleep });
      expect(outcome).to.include({ delivered: false, refused: false, attempts: 1, lastError: 'HTTP 302 Found: redirects are not followed' });
      expect(received.map((r) => r.url)).to.deep.equal(['/hooks/jobs']);
      expect(slept).to.deep.equal([]);
    });

    it('does not follow a redirect even to an allowed address', async () => {
      replies = [307];
      const outcome = await deliverCallback(url, {}, { allow: LOOPBACK, sleep });
      expect(outcome).to.include({ delivered: false, attempts: 1, lastError: 'HTTP 307 Temporary Redirect: redirects are not followed' });
      expect(received.map((r) => r.url)).to.deep.equal(['/hooks/jobs']);
    });

    it('refuses a URL that is not http or https, or carries credentials, without sending anything', async () => {
      const ftp = await deliverCallback(`ftp://127.0.0.1:${port}/x`, {}, { allow: LOOPBACK, sleep });
      expect(ftp).to.include({ delivered: false, refused: false, attempts: 0, lastError: 'callback_url must use http or https, not "ftp"' });
      const creds = await deliverCallback(`http://user:pw@127.0.0.1:${port}/x`, {}, { allow: LOOPBACK, sleep });
      expect(creds).to.include({ delivered: false, attempts: 0, lastError: 'callback_url must not carry a user name or password' });
      expect(received).to.have.length(0);
    });
  });

  describe('signed per Standard Webhooks', () => {
    it('POSTs the payload as JSON with webhook-id, webhook-timestamp and the event header; no signature without a secret', async () => {
      const payload = { event: 'job.finished', job: { id: 'job-1', state: 'JOB_STATE_SUCCEEDED', note: 'héllo ✓' } };
      const outcome = await deliverCallback(url, payload, { allow: LOOPBACK, sleep, now: () => 1_700_000_000_500, deliveryId: 'job-1-finished' });
      expect(outcome).to.include({ delivered: true, attempts: 1, deliveryId: 'job-1-finished' });
      const [req] = received;
      expect(req!.method).to.equal('POST');
      expect(req!.url).to.equal('/hooks/jobs');
      expect(req!.headers['content-type']).to.equal('application/json');
      expect(req!.headers['x-maas-event']).to.equal('job.finished');
      expect(req!.headers['webhook-id']).to.equal('job-1-finished');
      expect(req!.headers['webhook-timestamp']).to.equal('1700000000');
      expect(req!.headers['webhook-signature']).to.equal(undefined);
      expect(JSON.parse(req!.body.toString('utf8'))).to.deep.equal(payload);
    });

    it('signs so that the standardwebhooks library verifies the delivery, and only with the right secret', async () => {
      const payload = { job: { id: 'job-2', text: 'naïve — ünïcode \u{1F600}' } };
      const outcome = await deliverCallback(url, payload, { secret: parseWebhookSecret(SECRET), allow: LOOPBACK, sleep });
      expect(outcome.delivered).to.equal(true);
      const { headers, body } = received[0]!;
      expect(headers['webhook-signature']).to.match(/^v1,[A-Za-z0-9+/]{43}=$/);
      expect(headers['webhook-id']).to.match(/^msg_[0-9a-f-]{36}$/).and.equal(outcome.deliveryId);
      const hook = new Webhook(SECRET);
      expect(hook.verify(body.toString('utf8'), headers as Record<string, string>)).to.deep.equal(payload);
      const other = new Webhook(`whsec_${randomBytes(32).toString('base64')}`);
      expect(() => other.verify(body.toString('utf8'), headers as Record<string, string>)).to.throw('No matching signature found');
    });

    it('a tampered body, a changed id and a replayed old delivery are rejected by standardwebhooks', async () => {
      const hook = new Webhook(SECRET);
      const key = parseWebhookSecret(SECRET);
      await deliverCallback(url, { amount: 100 }, { secret: key, allow: LOOPBACK, sleep });
      const fresh = received[0]!;
      const headers = fresh.headers as Record<string, string>;
      expect(() => hook.verify(fresh.body.toString().replace('100', '900'), headers)).to.throw('No matching signature found');
      expect(() => hook.verify(fresh.body.toString(), { ...headers, 'webhook-id': 'msg_other' })).to.throw('No matching signature found');
      // A captured delivery sent again later carries its old timestamp; moving the timestamp breaks the signature.
      const tenMinutesAgo = Date.now() - 10 * 60 * 1000;
      await deliverCallback(url, { amount: 100 }, { secret: key, allow: LOOPBACK, sleep, now: () => tenMinutesAgo });
      const old = received[1]!;
      expect(() => hook.verify(old.body.toString(), old.headers as Record<string, string>)).to.throw('Message timestamp too old');
      expect(() => hook.verify(old.body.toString(), { ...(old.headers as Record<string, string>), 'webhook-timestamp': String(Math.floor(Date.now() / 1000)) })).to.throw('No matching signature found');
    });

    it('keeps the id and signs each attempt with its own timestamp', async () => {
      replies = [500, 503];
      let clock = 1_700_000_000_000;
      const outcome = await deliverCallback(url, { n: 1 }, { secret: parseWebhookSecret(SECRET), allow: LOOPBACK, sleep, now: () => (clock += 7000) });
      expect(outcome).to.include({ delivered: true, attempts: 3 });
      expect(new Set(received.map((r) => r.headers['webhook-id']))).to.deep.equal(new Set([outcome.deliveryId]));
      expect(received.map((r) => r.headers['webhook-timestamp'])).to.deep.equal(['1700000007', '1700000014', '1700000021']);
      const key = parseWebhookSecret(SECRET);
      for (const r of received) {
        expect(r.headers['webhook-signature']).to.equal(signWebhook(key, outcome.deliveryId, Number(r.headers['webhook-timestamp']), r.body));
      }
    });

    it('signWebhook matches the library and the specification example', () => {
      const key = parseWebhookSecret(SECRET);
      const hook = new Webhook(SECRET);
      for (const body of ['', '{"a":1}', 'ünïcode ✓']) {
        expect(signWebhook(key, 'msg_1', 1_614_265_330, body)).to.equal(hook.sign('msg_1', new Date(1_614_265_330_000), body));
      }
      // The example of the Standard Webhooks reference libraries.
      const example = parseWebhookSecret('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw');
      expect(signWebhook(example, 'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330, '{"test": 2432232314}')).to.equal('v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=');
    });

    it('parseWebhookSecret takes whsec_ and 24 to 64 base64 bytes, and never repeats a bad secret', () => {
      expect(parseWebhookSecret(SECRET)).to.have.length(32);
      const bad = ['s3cret-hunter2', `whsec_${randomBytes(16).toString('base64')}`, `whsec_${randomBytes(65).toString('base64')}`, 'whsec_hunter2!!', 'whsec_'];
      for (const secret of bad) {
        let message = '';
        try {
          parseWebhookSecret(secret);
        } catch (err) {
          message = (err as Error).message;
        }
        expect(message, secret).to.match(/^expected "whsec_" followed by the base64 of 24 to 64 random bytes/);
        expect(message).to.not.include(secret.slice(6, 14) || 'hunter2');
        expect(message).to.not.include('hunter2');
      }
    });

    it('a bad --callback-secret stops the scheduler config, naming the setting and not the secret', () => {
      expect(() => parseConfig(schedulerSchema, ['--callback-secret', 'hunter2-is-my-secret'], {})).to.throw(ConfigError, /^invalid --callback-secret \(callbackSecret\): expected "whsec_"/);
      try {
        parseConfig(schedulerSchema, [], { MAAS_SCHEDULER_CALLBACK_SECRET: 'hunter2-is-my-secret' });
        expect.fail('parsed');
      } catch (err) {
        expect((err as Error).message).to.match(/^invalid MAAS_SCHEDULER_CALLBACK_SECRET/).and.not.include('hunter2');
      }
      expect(parseConfig(schedulerSchema, ['--callback-secret', SECRET], {}).callbackSecret).to.equal(SECRET);
      expect(() => parseConfig(schedulerSchema, ['--callback-allow', '127.0.0.1/40'], {})).to.throw(ConfigError, /^invalid --callback-allow \(callbackAllow\): expected a prefix length/);
    });
  });

  describe('bounded and retried', () => {
    it('retries failure statuses with backoff, then delivers, with the same id on every attempt', async () => {
      replies = [500, 503, 429, 404];
      const random = () => 0.5;
      const outcome = await deliverCallback(url, { n: 1 }, { allow: LOOPBACK, attempts: 5, baseDelayMs: 100, sleep, random });
      expect(outcome).to.include({ delivered: true, attempts: 5 });
      expect(received).to.have.length(5);
      expect([...new Set(received.map((r) => r.headers['webhook-id']))]).to.deep.equal([outcome.deliveryId]);
      expect(new Set(received.map((r) => r.body.toString())).size).to.equal(1);
      expect(slept).to.deep.equal([1, 2, 3, 4].map((attempt) => retryDelayMs(attempt, { baseMs: 100, maxMs: 60_000, random })));
    });

    it('gives up after the given attempts with delivered=false and the last error; 5 by default', async () => {
      replies = [500, 500, 500, 500];
      const three = await deliverCallback(url, { n: 2 }, { allow: LOOPBACK, attempts: 3, sleep });
      expect(three).to.include({ delivered: false, refused: false, attempts: 3, lastError: 'HTTP 500 Internal Server Error' });
      expect(slept).to.have.length(2);
      received = [];
      replies = Array<Reply>(10).fill(502);
      const five = await deliverCallback(url, {}, { allow: LOOPBACK, sleep });
      expect(five).to.include({ delivered: false, attempts: 5 });
      expect(received).to.have.length(5);
    });

    it('retries after a resolver failure', async () => {
      let calls = 0;
      const resolve = async (): Promise<ResolvedAddress[]> => {
        if (++calls === 1) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${HOOK_HOST}`), { code: 'ENOTFOUND' });
        return [{ address: '127.0.0.1', family: 4 }];
      };
      const outcome = await deliverCallback(`http://${HOOK_HOST}:${port}/hooks/jobs`, { n: 3 }, { resolve, allow: LOOPBACK, sleep });
      expect(outcome).to.include({ delivered: true, attempts: 2 });
      expect(received).to.have.length(1);
    });

    it('reports a refused connection as the last error', async () => {
      const closed = createServer();
      await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
      const closedPort = (closed.address() as AddressInfo).port;
      await new Promise<void>((resolve) => closed.close(() => resolve()));
      const outcome = await deliverCallback(`http://127.0.0.1:${closedPort}/`, {}, { allow: LOOPBACK, attempts: 2, sleep });
      expect(outcome).to.include({ delivered: false, refused: false, attempts: 2 });
      expect(outcome.lastError).to.match(/ECONNREFUSED/);
    });

    it('abandons an attempt that exceeds timeoutMs and retries', async () => {
      replies = ['hang'];
      const outcome = await deliverCallback(url, { n: 4 }, { allow: LOOPBACK, timeoutMs: 100, sleep });
      expect(outcome).to.include({ delivered: true, attempts: 2 });
      expect(received).to.have.length(2);
      expect(received[0]!.headers['webhook-id']).to.equal(received[1]!.headers['webhook-id']);
    });

    it('does not read a response body: an endless one is cut off once the status is known', async () => {
      replies = ['endless'];
      const outcome = await deliverCallback(url, {}, { allow: LOOPBACK, timeoutMs: 5000, sleep });
      expect(outcome).to.include({ delivered: true, attempts: 1 });
      await endlessClosed;
    });

    it('stops retrying when its signal aborts', async () => {
      replies = [500, 500, 500];
      const controller = new AbortController();
      const abortingSleep = async (ms: number) => {
        slept.push(ms);
        controller.abort();
      };
      const outcome = await deliverCallback(url, {}, { allow: LOOPBACK, attempts: 5, sleep: abortingSleep, signal: controller.signal });
      expect(outcome).to.include({ delivered: false, attempts: 1, lastError: 'delivery aborted' });
      expect(received).to.have.length(1);
    });
  });

  it('NO_EXCEPTIONS is the default allowlist', async () => {
    const outcome = await deliverCallback(url, {}, { allow: NO_EXCEPTIONS, sleep });
    expect(outcome.refused).to.equal(true);
  });
});
