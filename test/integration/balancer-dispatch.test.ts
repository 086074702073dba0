/**
 * The balancer's Dispatch stream, driven by a raw dispatcher (this test): routing state sent first
 * and on change, attempt orders under the policy, retries, ejection, hedging and the "worker gone"
 * rule exactly as Route applies them, cancels, and hostile input. A real balancer on 127.0.0.1:0;
 * its members are real workers, or, where a test needs model versions or a worker that stops
 * reporting on cue, real Join streams this test holds (the test plays the dispatcher, so no worker
 * is ever called).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect } from 'chai';
import { Channel, Status } from 'nice-grpc';
import { createMeshClient, openChannel } from '../../common/client';
import { ConfigOf, parseConfig } from '../../common/config';
import { silentLogger } from '../../common/log';
import {
  AttemptEvent,
  BalancerMessage,
  BalancerServiceDefinition,
  CallRouteFailed,
  DispatchRequest,
  DispatchResponse,
  DispatcherMessage,
  JoinRequest,
  RouteCall,
} from '../../generated/maas/internal/v1/balancer';
import { WorkerState } from '../../generated/maas/v1/mesh';
import { Model } from '../../generated/maas/v1/models';
import { balancerSchema } from '../../services/balancer/config';
import { RunningBalancer, startBalancer } from '../../services/balancer/server';
import { workerSchema } from '../../services/worker/config';
import { RunningWorker, startWorker } from '../../services/worker/server';
import { echoRuntime, until } from '../support';
import { scrape } from '../prometheus';

type Message = NonNullable<BalancerMessage['message']>;
type Kind = Message['$case'];
type Of<K extends Kind> = Extract<Message, { $case: K }>;

/** A dispatcher's end of one Dispatch stream: send messages, await what the balancer answers. */
class RawDispatcher {
  private readonly controller = new AbortController();
  private readonly outbox: DispatcherMessage[] = [];
  private wake: (() => void) | undefined;
  private ended = false;
  /** Every message received, in order; `take` removes what it returns. */
  readonly received: Message[] = [];
  private changed: (() => void) | undefined;
  /** Settles when the balancer ends the stream: undefined for OK, else the error. */
  readonly closed: Promise<unknown>;

  constructor(channel: Channel) {
    const client = createMeshClient(BalancerServiceDefinition, channel);
    const self = this;
    async function* requests(): AsyncGenerator<DispatchRequest> {
      for (;;) {
        if (self.outbox.length > 0) {
          yield { messages: self.outbox.splice(0) };
          continue;
        }
        if (self.ended) return;
        await new Promise<void>((resolve) => (self.wake = resolve));
      }
    }
    this.closed = (async () => {
      try {
        for await (const response of client.dispatch(requests(), { signal: this.controller.signal }) as AsyncIterable<DispatchResponse>) {
          for (const m of response.messages) if (m.message) this.received.push(m.message);
          this.changed?.();
        }
        return undefined;
      } catch (err) {
        return err;
      } finally {
        this.changed?.();
      }
    })();
  }

  send(...messages: DispatcherMessage['message'][]): void {
    this.outbox.push(...messages.map((message) => ({ message })));
    this.wake?.();
  }

  route(call: Partial<RouteCall> & { callId: number; model: string }): void {
    this.send({ $case: 'route', route: { version: '', affinityKey: '', hedgeable: false, requestId: `r${call.callId}`, traceparent: '', tracestate: '', pickedWorkerId: '', ...call } as RouteCall });
  }

  event(callId: number, attempt: number, event: AttemptEvent['event']): void {
    this.send({ $case: 'event', event: { callId, attempt, event } });
  }

  /** Removes and returns the first message received of `kind` satisfying `match`, waiting up to `timeoutMs`. */
  async take<K extends Kind>(kind: K, match: (m: Of<K>) => boolean = () => true, timeoutMs = 5000): Promise<Of<K>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.received.findIndex((m) => m.$case === kind && match(m as Of<K>));
      if (i >= 0) return this.received.splice(i, 1)[0] as Of<K>;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${kind} message within ${timeoutMs} ms; received: ${JSON.stringify(this.received)}`);
      await Promise.race([new Promise<void>((resolve) => (this.changed = resolve)), sleep(left)]);
    }
  }

  order(callId: number, attempt?: number, timeoutMs?: number) {
    return this.take('attempt', (m) => m.attempt.callId === callId && (attempt === undefined || m.attempt.attempt === attempt), timeoutMs).then((m) => m.attempt);
  }

  failed(callId: number): Promise<CallRouteFailed> {
    return this.take('failed', (m) => m.failed.callId === callId).then((m) => m.failed);
  }

  /** Messages received so far about `callId`. */
  about(callId: number): Message[] {
    return this.received.filter((m) => (m.$case === 'attempt' ? m.attempt.callId : m.$case === 'cancel' ? m.cancel.callId : m.$case === 'failed' ? m.failed.callId : -1) === callId);
  }

  /**
   * Waits until the balancer has handled everything sent so far: a call to a model nobody serves
   * fails at once, after the messages before it (one stream, handled in order).
   */
  async barrier(id: number): Promise<void> {
    this.route({ callId: id, model: 'no-such-model' });
    await this.failed(id);
  }

  /** Ends the request stream (half-close), as a dispatcher that shuts down does. */
  end(): void {
    this.ended = true;
    this.wake?.();
  }

  abort(): void {
    this.controller.abort();
  }
}

/** A member the test holds: a real Join stream, whose load reports stop on cue. */
class RawMember {
  private readonly controller = new AbortController();
  private reporting = true;

  constructor(channel: Channel, readonly id: string, models: { name: string; version: string }[], intervalMs: number) {
    const client = createMeshClient(BalancerServiceDefinition, channel);
    const self = this;
    async function* requests(): AsyncGenerator<JoinRequest> {
      yield { message: { $case: 'hello', hello: { workerId: id, address: '127.0.0.1:9', models: models.map((m) => Model.fromPartial(m)), capacity: 8, mappers: [] } } };
      while (!self.controller.signal.aborted) {
        await sleep(intervalMs, undefined, { signal: self.controller.signal }).catch(() => undefined);
        if (self.reporting && !self.controller.signal.aborted) {
          yield { message: { $case: 'report', report: { inFlight: 0, capacity: 8, completed: 0, draining: false, queueDepth: 0, latencyMs: 0 } } };
        }
      }
    }
    void (async () => {
      try {
        for await (const response of client.join(requests(), { signal: this.controller.signal })) void response;
      } catch {
        // Removed by the balancer, or closed by the test.
      }
    })();
  }

  /** Goes silent: alive and connected, but no more load reports (as a stopped process). */
  stopReporting(): void {
    this.reporting = false;
  }

  close(): void {
    this.controller.abort();
  }
}

describe('balancer Dispatch (routing off the data path)', function () {
  this.timeout(30_000);
  let balancer: RunningBalancer;
  let channel: Channel;
  let tmp: string;
  const workers: RunningWorker[] = [];
  const members: RawMember[] = [];
  const dispatchers: RawDispatcher[] = [];

  async function start(settings: Partial<ConfigOf<typeof balancerSchema>> = {}) {
    balancer = await startBalancer({ ...parseConfig(balancerSchema, [], {}), port: 0, metricsPort: -1, reportIntervalMs: 100, policy: 'round_robin', ...settings }, silentLogger);
    channel = openChannel(balancer.address);
  }

  async function addWorker(id: string, echoDelayMs = 0, metrics = false): Promise<RunningWorker> {
    const config = {
      ...parseConfig(workerSchema, [], {}),
      port: 0,
      metricsPort: metrics ? 0 : -1,
      balancer: balancer.address,
      workerId: id,
      inputRoot: join(tmp, 'input'),
      modelRepository: join(tmp, 'models'),
    };
    const worker = await startWorker(config, silentLogger, echoRuntime(echoDelayMs));
    workers.push(worker);
    await worker.joined;
    return worker;
  }

  async function addMember(id: string, models: { name: string; version: string }[]): Promise<RawMember> {
    const member = new RawMember(channel, id, models, 100);
    members.push(member);
    await until(() => balancer.membership.get(id) !== undefined, 5000, `member ${id}`);
    return member;
  }

  function dispatcher(): RawDispatcher {
    const d = new RawDispatcher(channel);
    dispatchers.push(d);
    return d;
  }

  async function listWorkers() {
    return (await createMeshClient(BalancerServiceDefinition, channel).listWorkers({})).workers;
  }

  /** Outstanding calls of every member, as ListWorkers shows them. */
  async function outstanding(): Promise<number> {
    return (await listWorkers()).reduce((n, w) => n + w.outstanding, 0);
  }

  async function untilOutstanding(n: number): Promise<void> {
    const deadline = Date.now() + 5000;
    while ((await outstanding()) !== n) {
      if (Date.now() > deadline) throw new Error(`outstanding calls stayed at ${await outstanding()}, expected ${n}`);
      await sleep(10);
    }
  }

  beforeEach(() => {
    tmp = mkdtempSync(join(tmpdir(), 'maas-dispatch-'));
  });

  afterEach(async () => {
    for (const d of dispatchers.splice(0)) d.abort();
    for (const m of members.splice(0)) m.close();
    await Promise.all(workers.splice(0).map((w) => w.shutdown().catch(() => undefined)));
    channel?.close();
    await balancer?.shutdown();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('sends the routing state first, orders attempts on workers that serve the model, and sends a new state when a worker leaves', async () => {
    await start();
    const w1 = await addWorker('w1');
    const w2 = await addWorker('w2');
    const d = dispatcher();
    const first = await d.take('state');
    expect(d.received, 'nothing before the state').to.deep.equal([]);
    expect(first.state.workers).to.deep.equal([
      { workerId: 'w1', address: w1.address, models: [{ name: 'echo', version: '1' }, { name: 'mapper:wordcount', version: '' }] },
      { workerId: 'w2', address: w2.address, models: [{ name: 'echo', version: '1' }, { name: 'mapper:wordcount', version: '' }] },
    ]);

    d.route({ callId: 1, model: 'echo' });
    const order = await d.order(1);
    expect(order.attempt).to.equal(1);
    expect([w1.address, w2.address]).to.include(order.address);
    expect(order.address).to.equal(order.workerId === 'w1' ? w1.address : w2.address);
    d.event(1, 1, { $case: 'started', started: { firstOutputUs: 0 } });
    d.event(1, 1, { $case: 'done', done: {} });
    await d.barrier(100);
    expect(d.about(1), 'nothing more for a call that succeeded').to.deep.equal([]);

    d.route({ callId: 2, model: 'ngram-xl' });
    const failed = await d.failed(2);
    expect(failed).to.deep.equal({ callId: 2, code: Status.UNAVAILABLE, details: 'no ready worker serves model "ngram-xl"', noReadyWorker: true });

    await w2.shutdown();
    const later = await d.take('state');
    expect(later.state.workers.map((w) => w.workerId)).to.deep.equal(['w1']);
  });

  it('Route, on the same routing, still calls the worker itself: relays a stream, and answers a slow Predict by a hedge', async () => {
    await start({ hedgeDelayMs: 100, policy: 'round_robin' });
    await addWorker('slow', 600);
    await addWorker('fast', 0);
    const route = createMeshClient(BalancerServiceDefinition, channel);
    const generate = { model: 'echo', prompt: 'a b c', maxTokens: 0, stop: [], priority: 0, affinityKey: '', messages: [] };
    const predict = (input: string) => ({ task: { requestId: input, tenant: 't', request: { $case: 'predict' as const, predict: { model: 'echo', input, priority: 0, affinityKey: '' } } } });
    // Round robin: one of the two calls is first sent to the slow worker, and its hedge answers.
    for (const input of ['one', 'two']) {
      const startedAt = Date.now();
      const answers: string[] = [];
      for await (const r of route.route(predict(input))) answers.push(r.output?.output?.$case === 'prediction' ? r.output.output.prediction.text : '?');
      expect(answers).to.deep.equal([input]);
      expect(Date.now() - startedAt, 'answered before the slow worker would').to.be.below(500);
    }
    const chunks: string[] = [];
    const task = { requestId: 'g', tenant: 't', request: { $case: 'generate' as const, generate } };
    // The slow worker is the one round robin picks next, or not: either way the whole stream comes back.
    for await (const r of route.route({ task })) if (r.output?.output?.$case === 'chunk') chunks.push(r.output.output.chunk.text);
    expect(chunks.join('')).to.equal('a b c');
    await untilOutstanding(0);
  });

  it('Route relays 20 calls at once to the worker unread, each run once, and each answer back to its caller', async () => {
    await start();
    const worker = await addWorker('w1', 0, true);
    const route = createMeshClient(BalancerServiceDefinition, channel);
    const predict = (input: string) => ({ task: { requestId: input, tenant: 't', request: { $case: 'predict' as const, predict: { model: 'echo', input, priority: 0, affinityKey: '' } } } });
    const inputs = Array.from({ length: 20 }, (_, i) => `call ${i}`);
    const answers = await Promise.all(
      inputs.map(async (input) => {
        const out: string[] = [];
        for await (const r of route.route(predict(input))) out.push(r.output?.output?.$case === 'prediction' ? r.output.output.prediction.text : '?');
        return out.join();
      }),
    );
    expect(answers).to.deep.equal(inputs);
    const metrics = await scrape(worker.metricsAddress);
    expect(metrics.value('maas_grpc_server_handled_total', { method: 'maas.internal.v1.WorkerService/Execute' }), 'calls the worker ran').to.equal(20);
    await untilOutstanding(0);
  });

  it('orders the version asked for, and only from members serving it', async () => {
    await start();
    await addMember('a', [{ name: 'm', version: '1' }]);
    await addMember('b', [{ name: 'm', version: '2' }, { name: 'n', version: '1' }]);
    const d = dispatcher();
    const state = await d.take('state');
    expect(state.state.workers.find((w) => w.workerId === 'b')?.models).to.deep.equal([{ name: 'm', version: '2' }, { name: 'n', version: '1' }]);
    for (let id = 1; id <= 4; id++) {
      d.route({ callId: id, model: 'm', version: '2' });
      expect((await d.order(id)).workerId).to.equal('b');
      d.route({ callId: 10 + id, model: 'm', version: '1' });
      expect((await d.order(10 + id)).workerId).to.equal('a');
    }
    d.route({ callId: 20, model: 'm', version: '3' });
    expect(await d.failed(20)).to.deep.equal({ callId: 20, code: Status.UNAVAILABLE, details: 'no ready worker serves model "m" version "3"', noReadyWorker: true });
  });

  it('a failure before the first output gets a second order on another worker; after it, CallRouteFailed and no second order', async () => {
    await start();
    await addMember('a', [{ name: 'm', version: '1' }]);
    await addMember('b', [{ name: 'm', version: '1' }]);
    const d = dispatcher();

    d.route({ callId: 1, model: 'm' });
    const first = await d.order(1, 1);
    d.event(1, 1, { $case: 'failed', failed: { code: Status.UNAVAILABLE, details: 'connection refused' } });
    const second = await d.order(1, 2);
    expect(second.workerId).to.not.equal(first.workerId);
    expect(['a', 'b']).to.include(second.workerId);
    d.event(1, 2, { $case: 'started', started: { firstOutputUs: 0 } });
    d.event(1, 2, { $case: 'done', done: {} });
    await d.barrier(100);
    expect(d.about(1)).to.deep.equal([]);

    d.route({ callId: 2, model: 'm' });
    const only = await d.order(2, 1);
    d.event(2, 1, { $case: 'started', started: { firstOutputUs: 0 } });
    d.event(2, 1, { $case: 'failed', failed: { code: Status.UNAVAILABLE, details: 'connection reset' } });
    const failed = await d.failed(2);
    expect(failed.code).to.equal(Status.UNAVAILABLE);
    expect(failed.details).to.equal(`worker ${only.workerId} failed after its output began: connection reset`);
    expect(failed.noReadyWorker).to.equal(false);
    await d.barrier(101);
    expect(d.about(2), 'no second order after output').to.deep.equal([]);

    // A status that is not the worker's fault is not retried: the call ends with it.
    d.route({ callId: 3, model: 'm' });
    await d.order(3, 1);
    d.event(3, 1, { $case: 'failed', failed: { code: Status.INVALID_ARGUMENT, details: 'predict.input must not be empty' } });
    expect(await d.failed(3)).to.deep.equal({ callId: 3, code: Status.INVALID_ARGUMENT, details: 'predict.input must not be empty', noReadyWorker: false });
    await untilOutstanding(0);
  });

  it('failures reported through Dispatch eject a worker as Route failures do, and the routing state drops it', async () => {
    await start({ ejectAfterFailures: 3, ejectionBaseMs: 60_000 });
    await addMember('bad', [{ name: 'm', version: '1' }]);
    await addMember('good', [{ name: 'm', version: '1' }]);
    const d = dispatcher();
    expect((await d.take('state')).state.workers.map((w) => w.workerId)).to.deep.equal(['bad', 'good']);
    let failures = 0;
    for (let id = 1; failures < 3 && id < 30; id++) {
      d.route({ callId: id, model: 'm' });
      for (let attempt = 1; ; attempt++) {
        const order = await d.order(id, attempt);
        if (order.workerId === 'bad') {
          failures++;
          d.event(id, attempt, { $case: 'failed', failed: { code: Status.UNAVAILABLE, details: 'injected' } });
          continue;
        }
        d.event(id, attempt, { $case: 'started', started: { firstOutputUs: 0 } });
        d.event(id, attempt, { $case: 'done', done: {} });
        break;
      }
    }
    expect(failures).to.equal(3);
    const bad = (await listWorkers()).find((w) => w.workerId === 'bad')!;
    expect(WorkerState[bad.state]).to.equal('WORKER_STATE_EJECTED');
    expect(bad.ejections).to.equal(1);
    const state = await d.take('state');
    expect(state.state.workers.map((w) => w.workerId)).to.deep.equal(['good']);
    // No new call goes to it.
    for (let id = 50; id < 54; id++) {
      d.route({ callId: id, model: 'm' });
      expect((await d.order(id)).workerId).to.equal('good');
    }
  });

  it('hedges a hedgeable call after --hedge-delay-ms on another worker, and cancels the attempt that lost', async () => {
    const hedgeDelayMs = 150;
    await start({ hedgeDelayMs });
    await addMember('a', [{ name: 'm', version: '1' }]);
    await addMember('b', [{ name: 'm', version: '1' }]);
    const d = dispatcher();

    d.route({ callId: 1, model: 'm', hedgeable: true });
    const first = await d.order(1, 1);
    const orderedAt = Date.now();
    const hedge = await d.order(1, 2);
    expect(Date.now() - orderedAt).to.be.at.least(hedgeDelayMs - 20);
    expect(hedge.workerId).to.not.equal(first.workerId);
    expect(await outstanding()).to.equal(2);
    d.event(1, 2, { $case: 'started', started: { firstOutputUs: 0 } });
    d.event(1, 2, { $case: 'done', done: {} });
    const cancel = await d.take('cancel', (m) => m.cancel.callId === 1);
    expect(cancel.cancel).to.deep.equal({ callId: 1, attempt: 1 });
    await d.barrier(100);
    expect(d.about(1), 'nothing after the winner is done').to.deep.equal([]);
    await untilOutstanding(0);

    // A call not marked hedgeable (a stream) is never hedged.
    d.route({ callId: 2, model: 'm' });
    await d.order(2, 1);
    await sleep(2 * hedgeDelayMs);
    await d.barrier(101);
    expect(d.about(2)).to.deep.equal([]);
    d.send({ $case: 'cancelCallId', cancelCallId: 2 });
    await untilOutstanding(0);
  });

  it('a worker declared gone has its attempt without output cancelled and ordered again elsewhere', async () => {
    await start({ reportIntervalMs: 100 });
    const byId = new Map([
      ['a', await addMember('a', [{ name: 'm', version: '1' }])],
      ['b', await addMember('b', [{ name: 'm', version: '1' }])],
    ]);
    const d = dispatcher();
    d.route({ callId: 1, model: 'm' });
    const first = await d.order(1, 1);
    byId.get(first.workerId)!.stopReporting();
    const stoppedAt = Date.now();
    const cancel = await d.take('cancel', (m) => m.cancel.callId === 1, 5000);
    expect(cancel.cancel).to.deep.equal({ callId: 1, attempt: 1 });
    const again = await d.order(1, 2);
    expect(again.workerId).to.not.equal(first.workerId);
    // Declared gone after 3 silent report intervals, checked once per interval.
    expect(Date.now() - stoppedAt).to.be.below(4 * 100 + 1000);
    expect(balancer.membership.get(first.workerId)).to.equal(undefined);
    d.event(1, 2, { $case: 'started', started: { firstOutputUs: 0 } });
    d.event(1, 2, { $case: 'done', done: {} });
    await untilOutstanding(0);
  });

  it('picks the next call\'s worker ahead (NextPick): a call that takes it gets no order for attempt 1, a stale one is cancelled and routed again, one never offered is refused', async () => {
    await start({ reportIntervalMs: 100 });
    const byId = new Map([
      ['a', await addMember('a', [{ name: 'm', version: '1' }])],
      ['b', await addMember('b', [{ name: 'm', version: '1' }])],
    ]);
    const d = dispatcher();
    d.route({ callId: 1, model: 'm' });
    const first = await d.order(1, 1);
    const pick = (await d.take('pick', (m) => m.pick.model === 'm')).pick;
    expect(pick.workerId, 'round robin: the next call goes to the other worker').to.not.equal(first.workerId);
    expect(pick.address).to.equal('127.0.0.1:9');
    d.event(1, 1, { $case: 'started', started: { firstOutputUs: 0 } });
    d.event(1, 1, { $case: 'done', done: {} });

    // The call that takes the pick runs attempt 1 there already: the balancer orders nothing for
    // it, counts it as running there, learns from its events, and picks for the call after it.
    d.route({ callId: 2, model: 'm', pickedWorkerId: pick.workerId });
    const next = (await d.take('pick', (m) => m.pick.model === 'm')).pick;
    expect(next.workerId, 'round robin goes on from the pick').to.equal(first.workerId);
    expect((await listWorkers()).find((w) => w.workerId === pick.workerId)?.outstanding).to.equal(1);
    d.event(2, 1, { $case: 'started', started: { firstOutputUs: 0 } });
    d.event(2, 1, { $case: 'done', done: {} });
    await d.barrier(100);
    expect(d.about(2), 'no order for a call on its pick').to.deep.equal([]);
    await untilOutstanding(0);

    // Only calls with no version and no affinity key take picks, and only picks of this stream.
    d.route({ callId: 3, model: 'm', version: '1', pickedWorkerId: next.workerId });
    expect(await d.failed(3)).to.deep.include({ code: Status.INVALID_ARGUMENT, details: 'route.picked_worker_id is only for a call with no version and no affinity key' });
    d.route({ callId: 4, model: 'other', pickedWorkerId: 'a' });
    expect(await d.failed(4)).to.deep.include({ code: Status.INVALID_ARGUMENT, details: 'route.picked_worker_id: no pick was sent for model "other" on this stream' });

    // The picked worker leaves: a new pick replaces it. A call that took the old one (the two
    // crossed) has its attempt 1 cancelled and is routed from attempt 2.
    byId.get(next.workerId)!.close();
    const replaced = (await d.take('pick', (m) => m.pick.model === 'm')).pick;
    expect(replaced.workerId).to.not.equal(next.workerId);
    d.route({ callId: 5, model: 'm', pickedWorkerId: next.workerId });
    expect((await d.take('cancel', (m) => m.cancel.callId === 5)).cancel).to.deep.equal({ callId: 5, attempt: 1 });
    const order = await d.order(5, 2);
    expect(order.workerId).to.equal(replaced.workerId);
    d.event(5, 2, { $case: 'started', started: { firstOutputUs: 0 } });
    d.event(5, 2, { $case: 'done', done: {} });
    await untilOutstanding(0);
  });

  it('keeps one more pick of a model (one per slot, up to 16 and its calls open) each time its calls come with none to take, spreads the picks as load, and refuses a slot out of range', async () => {
    await start({ policy: 'least_outstanding' });
    await addMember('a', [{ name: 'm', version: '1' }]);
    await addMember('b', [{ name: 'm', version: '1' }]);
    const d = dispatcher();
    d.route({ callId: 1, model: 'm' });
    await d.order(1, 1);
    const slot0 = (await d.take('pick', (m) => m.pick.slot === 0)).pick;
    // Call 2 comes before it could take a pick (calls overlap): the model keeps a second one.
    d.route({ callId: 2, model: 'm' });
    await d.order(2, 1);
    const slot1 = (await d.take('pick', (m) => m.pick.slot === 1)).pick;
    // Call 2 came with call 1 open: two slots, no more. Each pick counts as load on its worker
    // (half a call): two calls and two picks, one of each on each worker.
    const workers = await listWorkers();
    for (const id of ['a', 'b']) {
      const load = workers.find((w) => w.workerId === id)!.outstanding + [slot0, slot1].filter((p) => p.workerId === id).length;
      expect(load, `calls and picks on ${id}`).to.equal(2);
    }

    // A call on slot 1's pick gets no order; slot 1 gets a new pick.
    d.route({ callId: 3, model: 'm', pickedWorkerId: slot1.workerId, pickedSlot: 1 });
    expect((await d.take('pick', (m) => m.pick.slot === 1)).pick.workerId).to.not.equal('');
    await d.barrier(99);
    expect(d.received.filter((m) => m.$case === 'pick' && m.pick.slot > 1), 'slots beyond the calls open').to.deep.equal([]);
    d.route({ callId: 4, model: 'm', pickedWorkerId: slot0.workerId, pickedSlot: 16 });
    expect(await d.failed(4)).to.deep.include({ code: Status.INVALID_ARGUMENT, details: 'route.picked_slot must be below 16, given 16' });

    // Many calls with no pick: never more than 16 slots.
    for (let id = 10; id < 30; id++) d.route({ callId: id, model: 'm' });
    for (let id = 10; id < 30; id++) await d.order(id, 1);
    await d.barrier(100);
    const slots = new Set(d.received.filter((m) => m.$case === 'pick').map((m) => (m.$case === 'pick' ? m.pick.slot : -1)));
    expect([...slots].sort((x, y) => x - y)).to.deep.equal([2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);

    // The stream's end: its picks are no longer load on their workers.
    d.abort();
    await d.closed;
    await until(() => ['a', 'b'].every((id) => balancer.membership.get(id)!.reserved === 0), 5000, 'picks released');
  });

  it('sends no pick ahead for a model routed by consistent_hash, whose pick depends on each call\'s key', async () => {
    await start({ policy: 'consistent_hash' });
    await addMember('a', [{ name: 'm', version: '1' }]);
    const d = dispatcher();
    d.route({ callId: 1, model: 'm' });
    await d.order(1, 1);
    d.event(1, 1, { $case: 'done', done: {} });
    await d.barrier(100);
    expect(d.received.filter((m) => m.$case === 'pick')).to.deep.equal([]);
  });

  it('cancel_call_id and the end of the stream release every call: outstanding back to 0, nothing sent for them', async () => {
    await start({ hedgeDelayMs: 50 });
    await addMember('a', [{ name: 'm', version: '1' }]);
    await addMember('b', [{ name: 'm', version: '1' }]);
    const d = dispatcher();
    d.route({ callId: 1, model: 'm' });
    await d.order(1, 1);
    expect(await outstanding()).to.equal(1);
    d.send({ $case: 'cancelCallId', cancelCallId: 1 });
    await untilOutstanding(0);
    await d.barrier(100);
    expect(d.about(1), 'no cancel or failure for a call the dispatcher cancelled').to.deep.equal([]);

    // Calls open when the stream ends (one of them hedged on both workers) all end with it.
    const e = dispatcher();
    e.route({ callId: 1, model: 'm' });
    e.route({ callId: 2, model: 'm', hedgeable: true });
    await e.order(1, 1);
    await e.order(2, 2);
    expect(await outstanding()).to.equal(3);
    e.end();
    expect(await e.closed, 'the stream ends OK').to.equal(undefined);
    await untilOutstanding(0);

    // And when the dispatcher goes away without ending it.
    const f = dispatcher();
    f.route({ callId: 7, model: 'm' });
    await f.order(7, 1);
    f.abort();
    await untilOutstanding(0);
    const s = balancer.state();
    expect(s.members).to.equal(2);
  });

  it('refuses hostile routes with INVALID_ARGUMENT naming the field, ignores events for what it does not know, and goes on', async () => {
    await start();
    await addMember('a', [{ name: 'm', version: '1' }]);
    const d = dispatcher();
    d.route({ callId: 0, model: 'm' });
    const zero = await d.failed(0);
    expect(zero.code).to.equal(Status.INVALID_ARGUMENT);
    expect(zero.details).to.equal('route.call_id must not be 0');

    d.route({ callId: 5, model: '' });
    const empty = await d.failed(5);
    expect(empty.code).to.equal(Status.INVALID_ARGUMENT);
    expect(empty.details).to.equal('route.model must not be empty');

    d.route({ callId: 6, model: 'm' });
    await d.order(6, 1);
    d.route({ callId: 6, model: 'm' });
    const duplicate = await d.failed(6);
    expect(duplicate.code).to.equal(Status.INVALID_ARGUMENT);
    expect(duplicate.details).to.match(/^route\.call_id 6 is already open on this stream/);
    // Both calls under the id are over: the first releases its worker.
    await untilOutstanding(0);

    // Events and cancels for calls and attempts that are not open, and empty messages: ignored.
    d.event(999, 1, { $case: 'done', done: {} });
    d.event(6, 1, { $case: 'failed', failed: { code: Status.UNAVAILABLE, details: 'late' } });
    d.event(6, 7, { $case: 'started', started: { firstOutputUs: 0 } });
    d.send({ $case: 'cancelCallId', cancelCallId: 12345 }, undefined);
    d.event(8, 1, { $case: 'failed', failed: { code: 999, details: 'x'.repeat(100_000) } });
    d.route({ callId: 8, model: 'm' });
    const order = await d.order(8, 1);
    // A status code out of range counts as UNKNOWN (retryable), its message bounded.
    d.event(8, 1, { $case: 'failed', failed: { code: 999, details: 'x'.repeat(100_000) } });
    const failed = await d.failed(8);
    expect(failed.code).to.equal(Status.UNAVAILABLE);
    expect(failed.details).to.match(new RegExp(`^worker ${order.workerId} failed before its first output \\(UNKNOWN: x+`));
    expect(failed.details.length).to.be.below(1024);
    expect(balancer.membership.get('a')).to.not.equal(undefined);

    // A time to first output of 71 minutes counts as no more than the balancer saw pass itself.
    d.route({ callId: 9, model: 'm' });
    await d.order(9, 1);
    d.event(9, 1, { $case: 'started', started: { firstOutputUs: 0xffff_ffff } });
    d.event(9, 1, { $case: 'done', done: {} });
    await untilOutstanding(0);
    expect(balancer.membership.get('a')!.latency.value, 'latency estimate, ms').to.be.below(5000);
  });
});
