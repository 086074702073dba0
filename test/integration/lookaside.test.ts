/**
 * Routing off the data path: the scheduler calls workers itself on the balancer's decisions
 * (Dispatch), keeps dispatching on the last routing state while the balancer is gone, and hands
 * routing back to a balancer that restarts on the same address.
 */
import { expect } from 'chai';
import { Status } from 'nice-grpc';
import { parseConfig } from '../../common/config.js';
import { silentLogger } from '../../common/log.js';
import { balancerSchema } from '../../services/balancer/config.js';
import { RunningBalancer, startBalancer } from '../../services/balancer/server.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'nice-grpc';
import { createMeshClient, openChannel } from '../../common/client.js';
import { BalancerServiceDefinition } from '../../generated/maas/internal/v1/balancer.js';
import { schedulerSchema } from '../../services/scheduler/config.js';
import { startScheduler } from '../../services/scheduler/server.js';
import { SchedulerServiceDefinition } from '../../generated/maas/internal/v1/scheduler.js';
import { GenerateRequest } from '../../generated/maas/v1/inference.js';
import { scrape } from '../prometheus.js';
import { MODEL_CACHE_DIR, TestMesh, collect, echoRuntime, flakyEchoRuntime, freePort, grpcError, startMesh, until } from '../support.js';
import { workerSchema } from '../../services/worker/config.js';
import { RunningWorker, startWorker } from '../../services/worker/server.js';

/**
 * These tests are of the scheduler's dispatcher: the gateway sends every call through the
 * scheduler (no permits). The gateway's own dispatcher, for calls on permits, is the same code;
 * test/integration/permits.test.ts runs it through the mesh.
 */
const SCHEDULER_DISPATCHES = { permits: false };

/** The sum of the series named `name` with those labels on a /metrics endpoint (0 when absent). */
async function metric(address: string | undefined, name: string, labels: Record<string, string>): Promise<number> {
  return (await scrape(address)).value(name, labels);
}

describe('routing off the data path (Dispatch)', function () {
  this.timeout(60_000);
  let mesh: TestMesh;
  let restarted: RunningBalancer | undefined;

  afterEach(async () => {
    await mesh?.stop().catch(() => undefined);
    await restarted?.shutdown();
    restarted = undefined;
  });

  it('the balancer decides each online call but carries none: its Route serves no online call, its picks count every one', async () => {
    mesh = await startMesh({ gateway: SCHEDULER_DISPATCHES, workers: [{}, {}], policy: 'round_robin' });
    await until(() => mesh.scheduler.dispatcher.balancerConnected, 5000, 'the dispatch stream');
    const served = [0, 0];
    mesh.workers.forEach((w, i) => w.activity.on('task-end', () => served[i]++));
    const routeBefore = await metric(mesh.balancer.metricsAddress, 'maas_grpc_server_handled_total', { method: 'maas.internal.v1.BalancerService/Route' });
    const picksBefore = await metric(mesh.balancer.metricsAddress, 'maas_balancer_picks_total', {});
    for (let i = 0; i < 20; i++) {
      const answer = await mesh.inference.predict({ model: 'echo', input: `call ${i}` });
      expect(answer.text).to.equal(`call ${i}`);
    }
    const chunks = await collect(mesh.inference.generate({ model: 'echo', prompt: 'a b c', maxTokens: 3 }));
    expect(chunks.map((c) => c.text).join('')).to.match(/a\s*b\s*c/);
    expect(await metric(mesh.balancer.metricsAddress, 'maas_grpc_server_handled_total', { method: 'maas.internal.v1.BalancerService/Route' })).to.equal(routeBefore);
    expect((await metric(mesh.balancer.metricsAddress, 'maas_balancer_picks_total', {})) - picksBefore).to.equal(21);
    // Round robin over two workers: the policy still decides every call, those that ran on a pick
    // made ahead of them (NextPick) included.
    expect(Math.abs(served[0] - served[1]), `calls per worker: ${served.join(', ')}`).to.be.at.most(1);
  });

  it('a call that follows another to the same model starts on the pick the balancer made ahead of it, without waiting for an order', async () => {
    mesh = await startMesh({ gateway: SCHEDULER_DISPATCHES, workers: [{}, {}], policy: 'round_robin' });
    await until(() => mesh.scheduler.dispatcher.balancerConnected, 5000, 'the dispatch stream');
    const before = mesh.scheduler.dispatcher.callsOnPicks;
    const byHow = async () => ({
      pick: await metric(mesh.scheduler.metricsAddress, 'maas_scheduler_dispatched_total', { how: 'pick' }),
      order: await metric(mesh.scheduler.metricsAddress, 'maas_scheduler_dispatched_total', { how: 'order' }),
    });
    const countedBefore = await byHow();
    const workersSeen: number[] = [];
    mesh.workers.forEach((w, i) => w.activity.on('task-end', () => workersSeen.push(i)));
    for (let i = 0; i < 10; i++) expect((await mesh.inference.predict({ model: 'echo', input: `p${i}` })).text).to.equal(`p${i}`);
    // The first call routes by the balancer's order; each later one took the pick it left.
    expect(mesh.scheduler.dispatcher.callsOnPicks - before).to.be.at.least(9);
    const counted = await byHow();
    expect(counted.pick - countedBefore.pick + counted.order - countedBefore.order, 'every call counted once').to.equal(10);
    expect(counted.pick - countedBefore.pick).to.equal(mesh.scheduler.dispatcher.callsOnPicks - before);
    // ...and round robin still alternates.
    for (let i = 1; i < workersSeen.length; i++) expect(workersSeen[i], `workers in order: ${workersSeen.join(', ')}`).to.not.equal(workersSeen[i - 1]);
    // A call with an affinity key takes no pick: the policy needs its key.
    const taken = mesh.scheduler.dispatcher.callsOnPicks;
    await mesh.inference.predict({ model: 'echo', input: 'keyed', affinityKey: 'k1' });
    expect(mesh.scheduler.dispatcher.callsOnPicks).to.equal(taken);
  });

  it('a plain Schedule call (as grpcurl makes it) gets the worker\'s output, relayed as the worker encoded it', async () => {
    mesh = await startMesh({ gateway: SCHEDULER_DISPATCHES, workers: [{}] });
    await until(() => mesh.scheduler.dispatcher.balancerConnected, 5000, 'the dispatch stream');
    const channel = openChannel(mesh.scheduler.address);
    try {
      const scheduler = createMeshClient(SchedulerServiceDefinition, channel);
      const task = { requestId: 'plain', tenant: 'acme', request: { $case: 'generate' as const, generate: GenerateRequest.fromPartial({ model: 'echo', prompt: 'one two three', maxTokens: 3 }) } };
      const outputs = await collect(scheduler.schedule({ task }, { deadline: Date.now() + 10_000 }));
      expect(outputs.map((o) => (o.output?.output?.$case === 'chunk' ? o.output.output.chunk.text : '?')).join('')).to.match(/one\s*two\s*three/);
      expect(outputs[0].output?.workerId).to.equal(mesh.workers[0].id);
    } finally {
      channel.close();
    }
  });

  it('a worker that fails before its first output is retried on another on the balancer\'s order', async () => {
    const state = { failing: true };
    mesh = await startMesh({ gateway: SCHEDULER_DISPATCHES, workers: [{ runtime: flakyEchoRuntime(state) }, {}] });
    await until(() => mesh.scheduler.dispatcher.balancerConnected, 5000, 'the dispatch stream');
    const retriesBefore = await metric(mesh.balancer.metricsAddress, 'maas_balancer_retries_total', {});
    for (let i = 0; i < 10; i++) expect((await mesh.inference.predict({ model: 'echo', input: `r${i}` })).text).to.equal(`r${i}`);
    expect(await metric(mesh.balancer.metricsAddress, 'maas_balancer_retries_total', {}), 'retries the balancer ordered').to.be.greaterThan(retriesBefore);
  });

  it('keeps serving while the balancer is gone, and a balancer restarted on its address takes over', async () => {
    mesh = await startMesh({ gateway: SCHEDULER_DISPATCHES, workers: [{}, {}] });
    await until(() => mesh.scheduler.dispatcher.balancerConnected, 5000, 'the dispatch stream');
    // The gateway knows the model (its catalog serves the last list while the balancer is away).
    await mesh.inference.predict({ model: 'echo', input: 'before' });
    const address = mesh.balancer.address;
    const port = Number(address.split(':').at(-1));
    await mesh.balancer.shutdown();
    await until(() => !mesh.scheduler.dispatcher.balancerConnected, 5000, 'the scheduler to notice');
    // With the balancer gone, online calls go on, on the last routing state.
    const down = await Promise.allSettled(Array.from({ length: 50 }, (_, i) => mesh.inference.predict({ model: 'echo', input: `down ${i}` })));
    const failed = down.filter((r) => r.status === 'rejected');
    expect(failed, `failed while the balancer was down: ${failed.map((r) => String((r as PromiseRejectedResult).reason)).slice(0, 3).join('; ')}`).to.have.lengthOf(0);

    restarted = await startBalancer({ ...parseConfig(balancerSchema, [], {}), metricsPort: 0, port, policy: 'p2c', reportIntervalMs: 200 }, silentLogger);
    await until(() => restarted!.membership.all().length === 2, 15_000, 'the workers to rejoin the new balancer');
    await until(() => mesh.scheduler.dispatcher.balancerConnected && mesh.scheduler.dispatcher.routableWorkers === 2, 10_000, 'the scheduler to reconnect and get the new routing state');
    const picksBefore = await metric(restarted.metricsAddress, 'maas_balancer_picks_total', {});
    for (let i = 0; i < 10; i++) expect((await mesh.inference.predict({ model: 'echo', input: `up ${i}` })).text).to.equal(`up ${i}`);
    expect((await metric(restarted.metricsAddress, 'maas_balancer_picks_total', {})) - picksBefore, 'calls the new balancer routed').to.equal(10);
  });

  it('a balancer that keeps its stream open but does not answer costs a call one decision timeout, not its deadline', async () => {
    mesh = await startMesh({ gateway: SCHEDULER_DISPATCHES, workers: [{}] });
    const worker = mesh.workers[0];
    // A balancer that gives its routing state (the real worker) and then never answers a route.
    const silent = createServer();
    const unused = async () => {
      throw new Error('not used by this test');
    };
    silent.add(BalancerServiceDefinition, {
      route: unused,
      join: unused,
      listModels: unused,
      listWorkers: unused,
      repositoryIndex: unused,
      loadModel: unused,
      unloadModel: unused,
      async *dispatch(requests: AsyncIterable<unknown>) {
        yield { messages: [{ message: { $case: 'state' as const, state: { workers: [{ workerId: worker.id, address: worker.address, models: [{ name: 'echo', version: '' }] }] } } }] };
        for await (const _ of requests) {
          // read and ignore
        }
      },
    } as never);
    const port = await silent.listen('127.0.0.1:0');
    const dataDir = mkdtempSync(join(tmpdir(), 'maas-silent-balancer-'));
    const scheduler = await startScheduler(
      { ...parseConfig(schedulerSchema, [], {}), port: 0, metricsPort: -1, balancer: `127.0.0.1:${port}`, aggregator: mesh.aggregator.address, dataDir: join(dataDir, 'store'), inputRoot: join(dataDir, 'in'), outputRoot: join(dataDir, 'out') },
      silentLogger,
    );
    const channel = openChannel(scheduler.address);
    try {
      await until(() => scheduler.dispatcher.balancerConnected, 5000, 'the dispatch stream');
      const task = { requestId: 'silent', tenant: 'acme', request: { $case: 'predict' as const, predict: { model: 'echo', input: 'still here', priority: 0, affinityKey: '' } } };
      const started = Date.now();
      const outputs = await collect(createMeshClient(SchedulerServiceDefinition, channel).schedule({ task }, { deadline: Date.now() + 10_000 }));
      const took = Date.now() - started;
      expect(outputs[0].output?.output?.$case === 'prediction' && outputs[0].output.output.prediction.text).to.equal('still here');
      expect(took, 'ms the call took').to.be.within(900, 3000);
    } finally {
      channel.close();
      await scheduler.shutdown();
      silent.forceShutdown();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('without a balancer and without a worker for the model, a call fails with UNAVAILABLE naming the model', async () => {
    mesh = await startMesh({ gateway: SCHEDULER_DISPATCHES, workers: [{}] });
    await until(() => mesh.scheduler.dispatcher.balancerConnected, 5000, 'the dispatch stream');
    await mesh.inference.predict({ model: 'echo', input: 'before' });
    await mesh.balancer.shutdown();
    await until(() => !mesh.scheduler.dispatcher.balancerConnected, 5000, 'the scheduler to notice');
    await mesh.workers[0].shutdown();
    const err = await grpcError(mesh.inference.predict({ model: 'echo', input: 'nobody' }));
    expect(err.code).to.equal(Status.UNAVAILABLE);
    expect(err.details).to.match(/echo/);
  });

  it('a scheduler that has not reached the balancer yet holds a call for its first routing state, and brings the connection forward', async () => {
    // The mesh's processes start in any order (`maas up` starts them together): a scheduler can be
    // SERVING while its Dispatch stream waits out a reconnect backoff that has grown to 2 s.
    const balancerPort = await freePort();
    const dataDir = mkdtempSync(join(tmpdir(), 'maas-late-balancer-'));
    const scheduler = await startScheduler(
      { ...parseConfig(schedulerSchema, [], {}), port: 0, metricsPort: -1, balancer: `127.0.0.1:${balancerPort}`, aggregator: `127.0.0.1:${await freePort()}`, dataDir: join(dataDir, 'store'), inputRoot: join(dataDir, 'in'), outputRoot: join(dataDir, 'out') },
      silentLogger,
    );
    const channel = openChannel(scheduler.address);
    const client = createMeshClient(SchedulerServiceDefinition, channel);
    const call = (input: string) => collect(client.schedule({ task: { requestId: input, tenant: 'acme', request: { $case: 'predict' as const, predict: { model: 'echo', input, priority: 0, affinityKey: '' } } } }, { deadline: Date.now() + 10_000 }));
    let balancer: RunningBalancer | undefined;
    let worker: RunningWorker | undefined;
    try {
      // Nothing to route on and nobody to ask: the call waits its bounded moment, then fails precisely.
      await until(() => scheduler.dispatcher.connectAttempts >= 2, 5000, 'a failed attempt');
      const started = Date.now();
      const err = await grpcError(call('nobody yet'));
      expect(err.code).to.equal(Status.UNAVAILABLE);
      expect(err.details).to.match(/balancer is unreachable/);
      expect(Date.now() - started, 'ms the call waited for a routing state').to.be.within(900, 5000);
      // Let the backoff grow to its 2 s cap, then start the balancer and a worker.
      const attempts = scheduler.dispatcher.connectAttempts;
      await until(() => scheduler.dispatcher.connectAttempts >= attempts + 4, 10_000, 'the backoff to grow');
      balancer = await startBalancer({ ...parseConfig(balancerSchema, [], {}), port: balancerPort, metricsPort: -1, policy: 'p2c', reportIntervalMs: 200 }, silentLogger);
      worker = await startWorker({ ...parseConfig(workerSchema, [], {}), port: 0, metricsPort: -1, balancer: balancer.address, workerId: 'w1', echoDelayMs: 0, cacheDir: MODEL_CACHE_DIR, modelRepository: join(dataDir, 'models'), inputRoot: join(dataDir, 'in') }, silentLogger, echoRuntime(0));
      await worker.joined;
      expect(scheduler.dispatcher.balancerConnected, 'the scheduler is still waiting out its backoff').to.equal(false);
      const outputs = await call('first call');
      expect(outputs[0].output?.output?.$case === 'prediction' && outputs[0].output.output.prediction.text).to.equal('first call');
      expect(scheduler.dispatcher.balancerConnected).to.equal(true);
    } finally {
      channel.close();
      await scheduler.shutdown();
      await worker?.shutdown().catch(() => undefined);
      await balancer?.shutdown();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
