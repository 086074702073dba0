/**
 * Upstream engines, mesh to mesh: mesh A's worker fronts a model (`remote-echo`) served by a real
 * OpenAI-compatible server, mesh B's HTTP edge, with two replicas: B's in-process gateway and a
 * second gateway of B run as its own process, which the last test kills with SIGKILL mid-stream.
 */
import { expect } from 'chai';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { ClientError } from 'nice-grpc';
import { GenerateRequest, GenerateResponse } from '../../generated/maas/v1/inference';
import { TaskEnd } from '../../services/worker/server';
import { parseUpstreams } from '../../services/worker/models/upstream';
import { ProcessGroup, ServiceProcess, freePort } from '../processes';
import { Status, TestMesh, collect, grpcError, nextEvent, startMesh, until } from '../support';

const words = (n: number) => Array.from({ length: n }, (_, i) => `w${i}`).join(' ');

function request(prompt: string, maxTokens: number): GenerateRequest {
  return { model: 'remote-echo', prompt, maxTokens, stop: [], priority: 0, affinityKey: '', messages: [] };
}

describe('upstream engines: a worker fronting another mesh\'s OpenAI API', function () {
  this.timeout(90_000);
  let engine: TestMesh;
  let front: TestMesh;
  const group = new ProcessGroup();
  let replica1: ServiceProcess;
  const repository = mkdtempSync(join(tmpdir(), 'maas-upstream-repo-'));

  before(async () => {
    engine = await startMesh({ workers: [{ echoDelayMs: 40 }] });
    const [grpcPort, httpPort] = [await freePort(), await freePort()];
    replica1 = group.add({
      name: 'engine gateway 2',
      entry: 'gateway/main.js',
      args: ['--port', String(grpcPort), '--http-port', String(httpPort), '--scheduler', engine.scheduler.address, '--balancer', engine.balancer.address, '--catalog-ttl-ms', '0'],
      address: `127.0.0.1:${grpcPort}`,
    });
    await replica1.start();
    const upstreams = parseUpstreams(`remote-echo=http://127.0.0.1:${httpPort}/v1#echo,remote-echo=http://127.0.0.1:${engine.gateway.httpPort}/v1#echo`);
    // The same engine named in the model repository instead of a flag: no version folder.
    mkdirSync(join(repository, 'repo-echo'));
    writeFileSync(join(repository, 'repo-echo', 'config.json'), JSON.stringify({ platform: 'openai_upstream', description: 'echo of mesh B', upstream: { urls: [`http://127.0.0.1:${engine.gateway.httpPort}/v1`], model: 'echo' } }));
    front = await startMesh({ worker: { upstreams, upstreamConnectTimeoutMs: 5000, modelRepository: repository } });
  });
  after(async () => {
    await front?.stop();
    await group.dispose();
    await engine?.stop();
    rmSync(repository, { recursive: true, force: true });
  });

  it('lists the upstream model with its platform, for Generate and chat', async () => {
    const { models } = await front.models.listModels({});
    const remote = models.find((m) => m.name === 'remote-echo');
    expect(remote, 'remote-echo is listed').to.not.equal(undefined);
    expect(remote!.platform).to.equal('openai_upstream');
    expect(remote!.metadata).to.include({ engine_model: 'echo', replicas: '2' });
  });

  it('serves an upstream model declared in the model repository (config.json, platform openai_upstream)', async () => {
    const { models } = await front.models.listModels({});
    expect(models.find((m) => m.name === 'repo-echo')).to.include({ platform: 'openai_upstream', description: 'echo of mesh B' });
    const chunks = await collect(front.inference.generate({ ...request('from the repository', 10), model: 'repo-echo' }));
    expect(chunks.map((c) => c.text).join('')).to.equal('from the repository');
  });

  it('forwards a streamed Generate and passes the engine\'s usage on', async () => {
    const chunks = await collect(front.inference.generate(request('a b c d', 10)));
    expect(chunks.map((c) => c.text).join('')).to.equal('a b c d');
    expect(chunks.length).to.be.greaterThan(2);
    expect(chunks.at(-1)!.usage).to.deep.equal({ promptTokens: 4, completionTokens: 4 });
  });

  it('forwards chat messages (through mesh A\'s own HTTP API, with the openai SDK), streamed and whole', async () => {
    const openai = new OpenAI({ baseURL: `http://127.0.0.1:${front.gateway.httpPort}/v1`, apiKey: 'unused', maxRetries: 0 });
    const whole = await openai.chat.completions.create({ model: 'remote-echo', messages: [{ role: 'user', content: 'hi there' }], max_tokens: 20 });
    // The engine's echo has no chat template: mesh B rendered the messages it was forwarded.
    expect(whole.choices[0].message.content).to.equal('user: hi there assistant:');
    // The engine's count of the prompt it rendered (mesh A's worker, given no prompt, would say 0).
    expect(whole.usage).to.deep.equal({ prompt_tokens: 4, completion_tokens: 4, total_tokens: 8 });
    const streamed = await collect(await openai.chat.completions.create({ model: 'remote-echo', messages: [{ role: 'user', content: 'hi there' }], max_tokens: 2, stream: true }));
    expect(streamed.map((c) => c.choices[0]?.delta.content ?? '').join('')).to.equal('user: hi');
    expect(streamed.at(-1)!.choices[0].finish_reason).to.equal('length');
  });

  it('a cancelled call aborts the HTTP request: the engine mesh\'s worker stops generating', async () => {
    const ended = nextEvent<TaskEnd>(engine.workers[0].activity, 'task-end');
    const controller = new AbortController();
    let received = 0;
    try {
      for await (const _ of front.inference.generate(request(words(100), 100), { signal: controller.signal })) if (++received === 2) controller.abort();
    } catch {
      // the client's own abort
    }
    const end = await ended;
    expect(end.outcome).to.equal('cancelled');
    expect(end.chunks).to.be.lessThan(20);
  });

  it('a deadline ends the call with DEADLINE_EXCEEDED and stops the engine\'s generation', async () => {
    const ended = nextEvent<TaskEnd>(engine.workers[0].activity, 'task-end');
    const err = await grpcError(collect(front.inference.generate(request(words(100), 100), { deadline: Date.now() + 400 })));
    expect(err.code).to.equal(Status.DEADLINE_EXCEEDED);
    expect((await ended).outcome).to.equal('cancelled');
  });

  it('a replica killed mid-stream: the call it was streaming ends UNAVAILABLE with no repeated output; calls before their first token move to the other replica', async () => {
    const prompt = words(60);
    const streams = [0, 1].map(() => {
      const got: string[] = [];
      const done = (async () => {
        for await (const chunk of front.inference.generate(request(prompt, 60)) as AsyncIterable<GenerateResponse>) got.push(chunk.text);
      })().then(
        () => undefined,
        (err: unknown) => err,
      );
      return { got, done };
    });
    await until(() => streams.every((s) => s.got.length >= 2), 10_000, 'both streams under way');
    // The worker reports its open engine calls to the balancer (a report every 200 ms here).
    let inFlight = 0;
    for (const until = Date.now() + 5000; inFlight !== 2 && Date.now() < until; await new Promise((r) => setTimeout(r, 50))) {
      inFlight = (await front.meshInfo.listWorkers({})).workers[0].reportedInFlight;
    }
    expect(inFlight, 'in flight, as the worker reports to its balancer').to.equal(2);
    await replica1.kill9();
    const outcomes = await Promise.all(streams.map((s) => s.done));
    const failed = outcomes.findIndex((o) => o !== undefined);
    expect(outcomes.filter((o) => o !== undefined), 'exactly one stream fails').to.have.lengthOf(1);
    const err = outcomes[failed];
    expect(err).to.be.instanceOf(ClientError);
    expect((err as ClientError).code).to.equal(Status.UNAVAILABLE);
    // Never duplicated: what the failed call received is a strict prefix of the answer, each word once.
    const partial = streams[failed].got.join('');
    expect(prompt.startsWith(partial) && partial.length < prompt.length, `"${partial.slice(0, 60)}..." is a strict prefix`).to.equal(true);
    expect(streams[1 - failed].got.join('')).to.equal(prompt);
    // New calls: those that try the dead replica first move to the live one before any token.
    for (let i = 0; i < 4; i++) {
      const chunks = await collect(front.inference.generate(request('x y z', 5)));
      expect(chunks.map((c) => c.text).join('')).to.equal('x y z');
    }
  });
});
