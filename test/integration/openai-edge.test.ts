/**
 * The gateway's OpenAI-compatible HTTP API, called with the official `openai` SDK (and raw HTTP
 * where the SDK cannot say what is tested): completions and chat, whole and streamed, usage, every
 * error status, bounded bodies, and a client disconnect cancelling the worker's generation. Real
 * mesh, in this process, on ephemeral ports; the built-in `ngram` and `echo` models.
 */
import { expect } from 'chai';
import { once } from 'node:events';
import { request as httpRequest } from 'node:http';
import OpenAI, { APIError } from 'openai';
import { TaskEnd } from '../../services/worker/server';
import { TestMesh, collect, freePort, nextEvent, startMesh } from '../support';
import { parseConfig } from '../../common/config';
import { silentLogger } from '../../common/log';
import { gatewaySchema } from '../../gateway/config';
import { RunningGateway, startGateway } from '../../gateway/server';
import { renderChatPrompt } from '../../gateway/openai/requests';

function client(port: number, apiKey = 'unused'): OpenAI {
  // No retries: each test sees the first answer.
  return new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey, maxRetries: 0, timeout: 20_000 });
}

/** The APIError a promise rejects with; fails the test if it resolves. */
async function apiError(promise: Promise<unknown>): Promise<APIError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof APIError) return err;
    throw err;
  }
  throw new Error('expected an API error, but the call succeeded');
}

/** A raw HTTP exchange: status, headers and body text. */
async function raw(port: number, method: string, path: string, headers: Record<string, string | number>, body?: string): Promise<{ status: number; headers: Record<string, unknown>; text: string }> {
  const req = httpRequest({ host: '127.0.0.1', port, method, path, headers });
  if (body !== undefined) req.write(body);
  req.end();
  const [res] = (await once(req, 'response')) as [import('node:http').IncomingMessage];
  let text = '';
  for await (const part of res) text += part;
  return { status: res.statusCode ?? 0, headers: res.headers, text };
}

const words = (n: number) => Array.from({ length: n }, (_, i) => `w${i}`).join(' ');

describe('OpenAI-compatible HTTP API (openai SDK)', function () {
  this.timeout(60_000);
  let mesh: TestMesh;
  let openai: OpenAI;
  let port: number;

  before(async () => {
    mesh = await startMesh({ workers: [{ builtin: true }], gateway: { httpMaxBodyBytes: 4096, maxPromptChars: 2000 } });
    port = mesh.gateway.httpPort!;
    openai = client(port);
  });
  after(() => mesh.stop());

  it('GET /v1/models lists the models that generate text, and only those', async () => {
    const ids: string[] = [];
    for await (const m of openai.models.list()) ids.push(m.id);
    expect(ids).to.include.members(['ngram', 'echo']);
    expect(ids).to.not.include('spam-nb');
    const one = await openai.models.retrieve('ngram');
    expect(one).to.include({ id: 'ngram', object: 'model' });
  });

  it('completions: the same text as gRPC Generate with the same seed, with usage', async () => {
    const params = { model: 'ngram', prompt: 'the meeting is', max_tokens: 12, seed: 7, temperature: 0.8 };
    const answer = await openai.completions.create(params);
    const grpc = await collect(mesh.inference.generate({ model: 'ngram', prompt: params.prompt, maxTokens: 12, seed: 7, temperature: 0.8, stop: [], priority: 0, messages: [] }));
    expect(answer.object).to.equal('text_completion');
    expect(answer.choices[0].text).to.equal(grpc.map((c) => c.text).join(''));
    expect(answer.choices[0].text.length).to.be.greaterThan(0);
    expect(answer.choices[0].finish_reason).to.equal('length');
    expect(answer.usage).to.deep.equal({ prompt_tokens: 3, completion_tokens: 12, total_tokens: 15 });
  });

  it('completions streamed: chunks add up to the whole answer, the last says why it ended', async () => {
    const params = { model: 'ngram', prompt: 'the meeting is', max_tokens: 10, seed: 11 };
    const whole = await openai.completions.create(params);
    const chunks = await collect(await openai.completions.create({ ...params, stream: true }));
    expect(chunks.length).to.be.greaterThan(1);
    expect(chunks.map((c) => c.choices[0].text).join('')).to.equal(whole.choices[0].text);
    expect(chunks.at(-1)!.choices[0].finish_reason).to.equal('length');
    expect(chunks.slice(0, -1).every((c) => c.choices[0].finish_reason === null)).to.equal(true);
  });

  it('chat on a model without a chat template continues the documented rendering of the messages', async () => {
    const messages = [
      { role: 'system' as const, content: 'be brief' },
      { role: 'user' as const, content: 'hello there mesh' },
    ];
    const answer = await openai.chat.completions.create({ model: 'echo', messages, max_tokens: 100 });
    // echo returns its prompt word by word: the prompt is the rendering.
    expect(answer.object).to.equal('chat.completion');
    expect(answer.choices[0].message).to.include({ role: 'assistant', content: 'system: be brief user: hello there mesh assistant:' });
    expect(renderChatPrompt(messages)).to.equal('system: be brief\nuser: hello there mesh\nassistant:');
    expect(answer.choices[0].finish_reason).to.equal('stop');
    expect(answer.usage).to.deep.equal({ prompt_tokens: 8, completion_tokens: 8, total_tokens: 16 });
  });

  it('chat streamed with include_usage: role first, content deltas, finish, then a usage chunk with no choices', async () => {
    const stream = await openai.chat.completions.create({
      model: 'echo',
      messages: [{ role: 'user', content: 'one two three four five' }],
      max_tokens: 3,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = await collect(stream);
    expect(chunks[0].choices[0].delta.role).to.equal('assistant');
    const last = chunks.at(-1)!;
    expect(last.choices).to.deep.equal([]);
    expect(last.usage).to.deep.equal({ prompt_tokens: 7, completion_tokens: 3, total_tokens: 10 });
    const body = chunks.slice(0, -1);
    expect(body.every((c) => c.usage === null)).to.equal(true);
    expect(body.map((c) => c.choices[0].delta.content ?? '').join('')).to.equal('user: one two');
    expect(body.at(-1)!.choices[0].finish_reason).to.equal('length');
  });

  it('raw SSE: data events, ending in data: [DONE]', async () => {
    const res = await raw(port, 'POST', '/v1/completions', { 'content-type': 'application/json' }, JSON.stringify({ model: 'echo', prompt: 'a b c', stream: true }));
    expect(res.status).to.equal(200);
    expect(res.headers['content-type']).to.match(/^text\/event-stream/);
    const events = res.text.split('\n\n').filter(Boolean);
    expect(events.at(-1)).to.equal('data: [DONE]');
    expect(events.slice(0, -1).every((e) => e.startsWith('data: {'))).to.equal(true);
  });

  describe('errors: the OpenAI error object with the matching status', () => {
    it('400 names the parameter: max_tokens over the limit', async () => {
      const err = await apiError(openai.completions.create({ model: 'ngram', prompt: 'hi', max_tokens: 5000 }));
      expect(err.status).to.equal(400);
      expect(err.type).to.equal('invalid_request_error');
      expect(err.param).to.equal('max_tokens');
      expect(err.message).to.include('max_tokens must be from 1 to 2048, given 5000');
    });

    it('400 names the parameter: a message with an unknown role, top_p out of range, an unknown parameter', async () => {
      const role = await apiError(openai.chat.completions.create({ model: 'echo', messages: [{ role: 'wizard', content: 'x' } as never] }));
      expect([role.status, role.param]).to.deep.equal([400, 'messages[0].role']);
      const topP = await apiError(openai.completions.create({ model: 'ngram', prompt: 'hi', top_p: 1.5 }));
      expect([topP.status, topP.param]).to.deep.equal([400, 'top_p']);
      const unknown = await apiError(openai.completions.create({ model: 'ngram', prompt: 'hi', frobnicate: 1 } as never));
      expect([unknown.status, unknown.param]).to.deep.equal([400, 'frobnicate']);
      const n = await apiError(openai.completions.create({ model: 'ngram', prompt: 'hi', n: 3 }));
      expect([n.status, n.param]).to.deep.equal([400, 'n']);
    });

    it('400 for a body that is not JSON, naming the body', async () => {
      const res = await raw(port, 'POST', '/v1/completions', { 'content-type': 'application/json' }, '{"model": ');
      expect(res.status).to.equal(400);
      expect(JSON.parse(res.text).error).to.include({ type: 'invalid_request_error', param: 'body' });
    });

    it('404 for an unknown model, naming it', async () => {
      const err = await apiError(openai.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] }));
      expect(err.status).to.equal(404);
      expect(err.code).to.equal('model_not_found');
      expect(err.param).to.equal('model');
      expect(err.message).to.include('"no-such-model" not found');
    });

    it('413 for a body over --http-max-body-bytes, refused before it is read', async () => {
      const err = await apiError(openai.completions.create({ model: 'echo', prompt: 'x'.repeat(5000) }));
      expect(err.status).to.equal(413);
      // Announced as 100 MB and never sent: the answer comes anyway, so nothing waited for it.
      const res = await raw(port, 'POST', '/v1/completions', { 'content-type': 'application/json', 'content-length': 100_000_000 }, '{');
      expect(res.status).to.equal(413);
      expect(JSON.parse(res.text).error.code).to.equal('request_too_large');
    });

    it('405 for a wrong method and 404 for an unknown path', async () => {
      expect((await raw(port, 'GET', '/v1/completions', {})).status).to.equal(405);
      expect((await raw(port, 'GET', '/v2/nothing', {})).status).to.equal(404);
      const malformed = await raw(port, 'GET', '/v1/models/%E0%A4%A', {});
      expect([malformed.status, JSON.parse(malformed.text).error.param]).to.deep.equal([400, 'model']);
    });
  });

  it('a client that disconnects mid-stream cancels the generation on the worker', async () => {
    const slow = await startMesh({ workers: [{ echoDelayMs: 40 }] });
    try {
      const worker = slow.workers[0];
      const ended = nextEvent<TaskEnd>(worker.activity, 'task-end');
      const stream = await client(slow.gateway.httpPort!).completions.create({ model: 'echo', prompt: words(200), max_tokens: 200, stream: true });
      let received = 0;
      for await (const _chunk of stream) if (++received === 3) break; // leaving the loop aborts the HTTP request
      const end = await ended;
      expect(end.outcome).to.equal('cancelled');
      expect(end.chunks).to.be.lessThan(20);
      expect(worker.inFlight()).to.equal(0);
    } finally {
      await slow.stop();
    }
  });

  it('504 when the deadline passes, 429 with Retry-After when the queue is full', async () => {
    const slow = await startMesh({ workers: [{ echoDelayMs: 50 }], maxInFlight: 1, maxQueued: 0, gateway: { defaultDeadlineMs: 400 } });
    try {
      const api = client(slow.gateway.httpPort!);
      const started = nextEvent(slow.workers[0].activity, 'task-start');
      const long = apiError(api.completions.create({ model: 'echo', prompt: words(50), max_tokens: 50 }));
      await started;
      const full = await apiError(api.completions.create({ model: 'echo', prompt: 'x', max_tokens: 1 }));
      expect(full.status).to.equal(429);
      expect(full.type).to.equal('rate_limit_error');
      expect(full.headers?.get('retry-after')).to.equal('1');
      const timedOut = await long;
      expect(timedOut.status).to.equal(504);
      expect(timedOut.code).to.equal('timeout');
    } finally {
      await slow.stop();
    }
  });

  it('503 when the scheduler cannot be reached', async () => {
    const gateway = await startGateway(
      { ...parseConfig(gatewaySchema, [], {}), port: 0, httpPort: 0, metricsPort: 0, scheduler: `127.0.0.1:${await freePort()}`, balancer: mesh.balancer.address, catalogTtlMs: 0, defaultDeadlineMs: 5000 },
      silentLogger,
    );
    try {
      const err = await apiError(client(gateway.httpPort!).completions.create({ model: 'echo', prompt: 'hi' }));
      expect(err.status).to.equal(503);
      expect(err.code).to.equal('unavailable');
    } finally {
      await gateway.shutdown();
    }
  });

  describe('authentication: the gateway\'s API keys', () => {
    let keyed: RunningGateway;
    before(async () => {
      keyed = await startGateway(
        { ...parseConfig(gatewaySchema, [], { MAAS_GATEWAY_API_KEYS: 'acme=sk-acme-123' }), port: 0, httpPort: 0, metricsPort: 0, scheduler: mesh.scheduler.address, balancer: mesh.balancer.address, catalogTtlMs: 0 },
        silentLogger,
      );
    });
    after(() => keyed.shutdown());

    it('401 without a key and with a wrong one; the right key is served', async () => {
      const missing = await raw(keyed.httpPort!, 'GET', '/v1/models', {});
      expect(missing.status).to.equal(401);
      expect(JSON.parse(missing.text).error.type).to.equal('authentication_error');
      const wrong = await apiError(client(keyed.httpPort!, 'sk-wrong').models.list());
      expect(wrong.status).to.equal(401);
      expect(wrong.code).to.equal('invalid_api_key');
      const answer = await client(keyed.httpPort!, 'sk-acme-123').completions.create({ model: 'echo', prompt: 'a b', max_tokens: 2 });
      expect(answer.choices[0].text).to.equal('a b');
    });
  });
});
