/**
 * What a dispatcher tells the balancer about its calls, read off a scripted Dispatch stream (the
 * balancer's side played by the test) while a real worker runs the calls: which pick each call
 * takes, and when its attempt's start and end are reported.
 */
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../common/config.js';
import { Dispatcher } from '../../common/dispatcher.js';
import { openChannel } from '../../common/client.js';
import { silentLogger } from '../../common/log.js';
import { BalancerMessage, DispatchRequest, DispatchResponse, DispatcherMessage } from '../../generated/maas/internal/v1/balancer.js';
import { Task } from '../../generated/maas/internal/v1/task.js';
import { GenerateRequest } from '../../generated/maas/v1/inference.js';
import { balancerSchema } from '../../services/balancer/config.js';
import { RunningBalancer, startBalancer } from '../../services/balancer/server.js';
import { workerSchema } from '../../services/worker/config.js';
import { RunningWorker, startWorker } from '../../services/worker/server.js';
import { MODEL_CACHE_DIR, echoRuntime, until } from '../support.js';

/** The balancer's side of one Dispatch stream, played by the test. */
class ScriptedBalancer {
  /** Each DispatchRequest received, with when it arrived (performance.now()). */
  readonly requests: { at: number; messages: DispatcherMessage[] }[] = [];
  private readonly queue: DispatchResponse[] = [];
  private wake: (() => void) | undefined;

  /** Sends the messages as one DispatchResponse. */
  send(...messages: BalancerMessage['message'][]): void {
    this.queue.push({ messages: messages.map((message) => ({ message })) });
    this.wake?.();
  }

  readonly open = (requests: AsyncIterable<DispatchRequest>, options: { signal: AbortSignal }): AsyncIterable<DispatchResponse> => {
    void (async () => {
      try {
        for await (const request of requests) this.requests.push({ at: performance.now(), messages: request.messages });
      } catch {
        // the stream was closed
      }
    })();
    const self = this;
    return (async function* () {
      while (!options.signal.aborted) {
        const next = self.queue.shift();
        if (next) {
          yield next;
          continue;
        }
        await new Promise<void>((resolve) => {
          self.wake = resolve;
          options.signal.addEventListener('abort', () => resolve(), { once: true });
        });
      }
    })();
  };

  /** Every message received, in order. */
  messages(): DispatcherMessage['message'][] {
    return this.requests.flatMap((r) => r.messages.map((m) => m.message));
  }
}

describe('the dispatcher\'s reports to the balancer', function () {
  this.timeout(30_000);
  let dir: string;
  let balancer: RunningBalancer;
  let worker: RunningWorker;
  let dispatcher: Dispatcher | undefined;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'maas-dispatcher-reports-'));
    // A real balancer only for the worker to join; the dispatcher's stream is the test's.
    balancer = await startBalancer({ ...parseConfig(balancerSchema, [], {}), port: 0, metricsPort: -1, reportIntervalMs: 200 }, silentLogger);
    worker = await startWorker(
      { ...parseConfig(workerSchema, [], {}), port: 0, metricsPort: -1, balancer: balancer.address, workerId: 'w1', echoDelayMs: 0, cacheDir: MODEL_CACHE_DIR, modelRepository: join(dir, 'models'), inputRoot: join(dir, 'in') },
      silentLogger,
      echoRuntime(20),
    );
    await worker.joined;
  });

  afterEach(() => {
    dispatcher?.close();
    dispatcher = undefined;
  });

  after(async () => {
    await worker.shutdown();
    await balancer.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A dispatcher on `scripted`, which sends the routing state (one worker, w1, serving echo) and then `picks` in one response. */
  function start(scripted: ScriptedBalancer, picks: number[], reportDeferMs?: number): Dispatcher {
    dispatcher = new Dispatcher({ openDispatch: scripted.open, openWorkerChannel: (_id, address) => openChannel(address), maxMessageBytes: 4 << 20, log: silentLogger, reportDeferMs });
    scripted.send(
      { $case: 'state', state: { workers: [{ workerId: 'w1', address: worker.address, models: [{ name: 'echo', version: '1' }] }] } },
      ...picks.map((slot): BalancerMessage['message'] => ({ $case: 'pick', pick: { model: 'echo', workerId: 'w1', address: worker.address, slot } })),
    );
    return dispatcher;
  }

  const generate = (id: string): Task => ({ requestId: id, tenant: 'acme', request: { $case: 'generate', generate: GenerateRequest.fromPartial({ model: 'echo', prompt: 'a b c d', maxTokens: 4 }) } });

  async function run(d: Dispatcher, task: Task): Promise<number> {
    let outputs = 0;
    for await (const _ of d.run(task, new AbortController().signal, Date.now() + 10_000)) outputs++;
    return outputs;
  }

  it('takes the picks of a model slot by slot, naming the slot, keeps none beyond its slots, and waits for an order once they are gone', async () => {
    const scripted = new ScriptedBalancer();
    // Slot 999 is beyond what any balancer sends: not kept, so only two calls find a pick.
    const d = start(scripted, [0, 3, 999]);
    await until(() => d.balancerConnected, 5000, 'the routing state and the picks');
    // Two calls at once: each takes a pick of its own and runs with no order.
    const outputs = await Promise.all([run(d, generate('one')), run(d, generate('two'))]);
    expect(outputs).to.deep.equal([4, 4]);
    const routes = scripted.messages().flatMap((m) => (m?.$case === 'route' ? [m.route] : []));
    expect(routes.map((r) => [r.pickedWorkerId, r.pickedSlot])).to.have.deep.members([
      ['w1', 0],
      ['w1', 3],
    ]);
    expect(d.callsOnPicks).to.equal(2);
    // The picks are spent: the next call names none and waits for its order.
    const third = run(d, generate('three'));
    await until(() => scripted.messages().filter((m) => m?.$case === 'route').length === 3, 5000, 'the third route');
    const route = scripted.messages().filter((m) => m?.$case === 'route').at(-1);
    expect(route?.$case === 'route' && [route.route.pickedWorkerId, route.route.pickedSlot]).to.deep.equal(['', 0]);
    scripted.send({ $case: 'attempt', attempt: { callId: route?.$case === 'route' ? route.route.callId : 0, attempt: 1, workerId: 'w1', address: worker.address } });
    expect(await third).to.equal(4);
  });

  it('an attempt\'s start waits to go with its end, in order, with its time to first output measured where it ran', async () => {
    const scripted = new ScriptedBalancer();
    // The start waits a minute here at most: only another message can send it.
    const d = start(scripted, [0], 60_000);
    await until(() => d.balancerConnected, 5000, 'the routing state and the pick');
    const startedAt = performance.now();
    let outputs = 0;
    for await (const _ of d.run(generate('timed'), new AbortController().signal, Date.now() + 10_000)) {
      // Echo at 20 ms a token: after the first output, the balancer has heard of the call, not of its start.
      if (++outputs === 2) expect(scripted.messages().map((m) => m?.$case), 'heard while the call streams').to.deep.equal(['route']);
    }
    const took = performance.now() - startedAt;
    expect(outputs).to.equal(4);
    await until(() => scripted.messages().length >= 3, 5000, 'the end');
    const heard = scripted.messages();
    expect(heard.map((m) => (m?.$case === 'event' ? m.event.event?.$case : m?.$case))).to.deep.equal(['route', 'started', 'done']);
    // Sent together, as one request.
    expect(scripted.requests.at(-1)?.messages).to.have.length(2);
    const started = heard[1];
    const firstOutputUs = started?.$case === 'event' && started.event.event?.$case === 'started' ? started.event.event.started.firstOutputUs : -1;
    // The first of 4 tokens came after about 20 ms, well before the call's end.
    expect(firstOutputUs / 1000, 'time to first output, ms').to.be.within(15, took - 30);
  });
});
