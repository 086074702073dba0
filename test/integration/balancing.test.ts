/** Routing through the balancer: retries before the first chunk, none after, and the policies. */
import { expect } from 'chai';
import { createMeshClient, openChannel } from '../../common/client';
import { BalancerServiceDefinition } from '../../generated/maas/internal/v1/balancer';
import { WorkerState } from '../../generated/maas/v1/mesh';
import { GenerateRequest } from '../../generated/maas/v1/inference';
import { PolicyName } from '../../services/balancer/policy';
import { RunningWorker, TaskEnd } from '../../services/worker/server';
import { createEchoModel } from '../../services/worker/models/echo';
import { ModelRuntime } from '../../services/worker/models/runtime';
import { mulberry32 } from '../../common/random';
import { Status, TestMesh, collect, flakyEchoRuntime, grpcError, nextEvent, startMesh, until } from '../support';

const generate = (o: Partial<GenerateRequest>): GenerateRequest => ({ model: 'echo', prompt: 'a b c', maxTokens: 0, stop: [], priority: 0, affinityKey: "", messages: [], ...o });

/** Counts the tasks each worker starts. */
function countStarts(workers: RunningWorker[]): Map<string, number> {
  const counts = new Map(workers.map((w) => [w.id, 0]));
  for (const w of workers) w.activity.on('task-start', () => counts.set(w.id, counts.get(w.id)! + 1));
  return counts;
}

describe('balancing', function () {
  this.timeout(20000);

  describe('worker failures', () => {
    let mesh: TestMesh;
    beforeEach(async () => {
      mesh = await startMesh({ workers: [{ echoDelayMs: 150 }, { echoDelayMs: 150 }] });
    });
    afterEach(() => mesh.stop());

    it('retries on another worker when the first dies before its first chunk', async () => {
      const [a, b] = mesh.workers;
      const starts = countStarts([a, b]);
      // Whichever worker gets the task dies before producing anything.
      const crashFirst = Promise.race([a, b].map((w) => nextEvent(w.activity, 'task-start').then(() => w)));
      const call = collect(mesh.inference.generate(generate({ prompt: 'one two three' })));
      const crashed = await crashFirst;
      crashed.crash();
      const chunks = await call;
      expect(chunks.map((c) => c.text).join('')).to.equal('one two three');
      const survivor = crashed === a ? b : a;
      expect(starts.get(survivor.id)).to.equal(1);
    });

    it('never retries after the first chunk: the client gets UNAVAILABLE and no duplicate output', async () => {
      const [a, b] = mesh.workers;
      const starts = countStarts([a, b]);
      let serving: RunningWorker | undefined;
      for (const w of [a, b]) w.activity.once('task-start', () => (serving ??= w));
      const received: string[] = [];
      const err = await grpcError(
        (async () => {
          for await (const chunk of mesh.inference.generate(generate({ prompt: 'one two three four five' }))) {
            received.push(chunk.text);
            if (received.length === 1) serving!.crash();
          }
        })(),
      );
      expect(err.code).to.equal(Status.UNAVAILABLE);
      expect(err.details).to.match(/failed after its output began/);
      expect(received).to.deep.equal(['one']);
      const other = serving === a ? b : a;
      expect(starts.get(other.id)).to.equal(0);
    });

    it('answers UNAVAILABLE with a clear message when no worker serves the model', async () => {
      const channel = openChannel(mesh.balancer.address);
      try {
        const balancer = createMeshClient(BalancerServiceDefinition, channel);
        const task = { requestId: 't', tenant: 'test', request: { $case: 'generate' as const, generate: generate({ model: 'ngram-xl' }) } };
        const err = await grpcError(collect(balancer.route({ task })));
        expect(err.code).to.equal(Status.UNAVAILABLE);
        expect(err.details).to.equal('no ready worker serves model "ngram-xl"');
      } finally {
        channel.close();
      }
    });

    it('a draining worker finishes its running task, leaves the balancer, and gets no new work', async () => {
      const [a, b] = mesh.workers;
      let serving: RunningWorker | undefined;
      for (const w of [a, b]) w.activity.once('task-start', () => (serving ??= w));
      const call = collect(mesh.inference.generate(generate({ prompt: 'one two three four' })));
      await until(() => serving !== undefined, 5000, 'task start');
      const drained = serving!.shutdown();
      const chunks = await call;
      expect(chunks.map((c) => c.text).join('')).to.equal('one two three four');
      await drained;
      expect(mesh.balancer.membership.get(serving!.id)).to.equal(undefined);
      const other = serving === a ? b : a;
      const next = nextEvent(other.activity, 'task-start');
      await mesh.inference.predict({ model: 'echo', input: 'after', priority: 0 });
      await next;
    });

    it('removes a worker whose process dies, and routes around it', async () => {
      const [a, b] = mesh.workers;
      a.crash();
      await until(() => mesh.balancer.membership.get(a.id) === undefined, 5000, 'dead worker removed');
      const starts = countStarts([b]);
      for (let i = 0; i < 4; i++) await mesh.inference.predict({ model: 'echo', input: `x${i}`, priority: 0 });
      expect(starts.get(b.id)).to.equal(4);
    });
  });

  describe('outlier ejection and retry budget', () => {
    it('ejects a worker that keeps failing, then readmits it once it recovers', async () => {
      const state = { failing: true };
      const mesh = await startMesh({ policy: 'round_robin', workers: [{ runtime: flakyEchoRuntime(state) }, {}], balancer: { ejectAfterFailures: 3, ejectionBaseMs: 1000 } });
      try {
        const [flaky] = mesh.workers;
        const starts = countStarts(mesh.workers);
        // Every call succeeds: the flaky worker's failures are retried on the other one.
        for (let i = 0; i < 12; i++) await mesh.inference.predict({ model: 'echo', input: `x${i}`, priority: 0 });
        expect(starts.get(flaky.id)).to.equal(3);
        const { workers } = await mesh.meshInfo.listWorkers({});
        const view = workers.find((w) => w.workerId === flaky.id)!;
        expect(WorkerState[view.state]).to.equal('WORKER_STATE_EJECTED');
        expect(view.ejections).to.equal(1);
        expect(WorkerState[workers.find((w) => w.workerId !== flaky.id)!.state]).to.be.oneOf(['WORKER_STATE_READY', 'WORKER_STATE_SLOW_START']);
        state.failing = false;
        // After its ejection time the worker is back (slow start): calls reach it again.
        await (async () => {
          const deadline = Date.now() + 5000;
          while (starts.get(flaky.id) === 3) {
            if (Date.now() > deadline) throw new Error('the ejected worker was never readmitted');
            await mesh.inference.predict({ model: 'echo', input: 'probe', priority: 0 });
          }
        })();
        expect(starts.get(flaky.id)).to.be.greaterThan(3);
      } finally {
        await mesh.stop();
      }
    });

    it('the retry budget caps retries when every worker fails', async () => {
      const state = { failing: true };
      const mesh = await startMesh({ policy: 'round_robin', workers: [{ runtime: flakyEchoRuntime(state) }, { runtime: flakyEchoRuntime(state) }], balancer: { ejectAfterFailures: 1000, ejectMinRequests: 1_000_000, retryBudget: 0.2, retryMinPerSecond: 0 } });
      try {
        const starts = countStarts(mesh.workers);
        const calls = 100;
        let failed = 0;
        for (let i = 0; i < calls; i++) await mesh.inference.predict({ model: 'echo', input: 'x', priority: 0 }).catch(() => failed++);
        const attempts = [...starts.values()].reduce((a, b) => a + b, 0);
        expect(failed).to.equal(calls);
        // 100 first attempts, each of which would retry on the other worker: the budget (20%, no
        // per-second floor) grants at most 20 retries, and does grant some.
        expect(attempts - calls).to.be.at.most(0.2 * calls);
        expect(attempts - calls).to.be.greaterThan(10);
      } finally {
        await mesh.stop();
      }
    });
  });

  describe('failure-rate ejection', () => {
    it('ejects a worker that fails one call in five, though its failures never come five in a row', async () => {
      const random = mulberry32(7);
      const flaky: ModelRuntime = { name: 'flaky', load: async () => [createEchoModel({ failRate: 0.2, random })] };
      const mesh = await startMesh({ policy: 'round_robin', workers: [{ runtime: flaky }, {}, {}], balancer: { ejectionBaseMs: 60_000 } });
      try {
        const [bad] = mesh.workers;
        const starts = countStarts(mesh.workers);
        const ends: TaskEnd[] = [];
        bad.activity.on('task-end', (e: TaskEnd) => ends.push(e));
        for (let i = 0; i < 150; i++) await mesh.inference.predict({ model: 'echo', input: `x${i}`, priority: 0 });
        // Every call succeeded (the failures were retried elsewhere), and the failure rate ejected the worker.
        const view = (await mesh.meshInfo.listWorkers({})).workers.find((w) => w.workerId === bad.id)!;
        expect(WorkerState[view.state]).to.equal('WORKER_STATE_EJECTED');
        expect(view.ejections).to.equal(1);
        expect(ends.some((e) => e.outcome === 'error')).to.equal(true);
        // Ejected after its first few dozen calls, it took far less than its round-robin third.
        expect(starts.get(bad.id)).to.be.lessThan(40);
      } finally {
        await mesh.stop();
      }
    });
  });

  describe('worker queue', () => {
    it('calls beyond a worker\'s concurrency wait in its queue, its load report shows them, and a full queue answers RESOURCE_EXHAUSTED', async () => {
      const mesh = await startMesh({ workers: [{ echoDelayMs: 1000, concurrency: 1, maxQueued: 2 }], balancer: { reportIntervalMs: 50 } });
      try {
        const [worker] = mesh.workers;
        const calls = [0, 1, 2].map((i) => mesh.inference.predict({ model: 'echo', input: `q${i}`, priority: 0 }));
        const view = async () => (await mesh.meshInfo.listWorkers({})).workers[0];
        const deadline = Date.now() + 5000;
        while ((await view()).reportedQueueDepth !== 2) {
          if (Date.now() > deadline) throw new Error('the load report never showed 2 queued tasks');
        }
        expect(worker.inFlight()).to.equal(1);
        const refused = await grpcError(mesh.inference.predict({ model: 'echo', input: 'one too many', priority: 0 }));
        expect(refused.code).to.equal(Status.RESOURCE_EXHAUSTED);
        expect(refused.details).to.match(/every ready worker serving model "echo" is at capacity; last: RESOURCE_EXHAUSTED: worker w1 is at capacity \(1 tasks running, 2 waiting\)/);
        const answers = await Promise.all(calls);
        expect(answers.map((a) => a.text)).to.deep.equal(['q0', 'q1', 'q2']);
        // Refusing for a full queue is load shedding, not a fault: the worker is not ejected.
        const after = await view();
        expect(after.ejections).to.equal(0);
        expect(after.reportedLatencyMs).to.be.greaterThan(900);
      } finally {
        await mesh.stop();
      }
    });
  });

  describe('graceful drain', () => {
    it('a rolling restart of every worker under steady load loses no request', async () => {
      const mesh = await startMesh({ policy: 'p2c', workers: [{ echoDelayMs: 5 }, { echoDelayMs: 5 }, { echoDelayMs: 5 }] });
      try {
        let stop = false;
        let ok = 0;
        const failures: string[] = [];
        const caller = async (i: number) => {
          while (!stop) {
            try {
              if (i % 2 === 0) await mesh.inference.predict({ model: 'echo', input: 'steady', priority: 0 });
              else await collect(mesh.inference.generate(generate({ prompt: 'one two three' })));
              ok++;
            } catch (err) {
              failures.push(String(err));
            }
          }
        };
        const load = Promise.all(Array.from({ length: 8 }, (_, i) => caller(i)));
        for (const old of [...mesh.workers]) {
          await until(() => ok > 0, 5000, 'calls flowing');
          await mesh.addWorker({ echoDelayMs: 5 });
          const before = ok;
          await old.shutdown();
          await until(() => ok > before + 20, 5000, 'calls flowing after the drain');
        }
        stop = true;
        await load;
        expect(failures).to.deep.equal([]);
        expect(ok).to.be.greaterThan(60);
        expect(mesh.balancer.membership.size).to.equal(3);
      } finally {
        await mesh.stop();
      }
    });
  });

  describe('hedging', () => {
    it('a Predict the first worker is slow to answer is answered by a hedge, and the loser is cancelled', async () => {
      const mesh = await startMesh({ policy: 'round_robin', workers: [{ echoDelayMs: 2000 }, {}], balancer: { hedgeDelayMs: 50 } });
      try {
        const [slow] = mesh.workers;
        const slowEnds: TaskEnd[] = [];
        slow.activity.on('task-end', (e: TaskEnd) => slowEnds.push(e));
        const started = Date.now();
        // Round robin alternates (over the calls of each dispatcher: the first call is the
        // scheduler's, the others the gateway's), so four calls put some first on the slow worker.
        for (let i = 0; i < 4; i++) {
          const r = await mesh.inference.predict({ model: 'echo', input: `h${i}`, priority: 0 });
          expect(r.text).to.equal(`h${i}`);
        }
        expect(Date.now() - started).to.be.lessThan(1500);
        await until(() => slowEnds.length >= 1, 5000, 'a slow call to end');
        expect(slowEnds.map((e) => e.outcome)).to.deep.equal(slowEnds.map(() => 'cancelled'));
        // The cancelled loser still left a latency sample (the time it had taken when cut off), so
        // a worker that is always hedged away is known to be slow.
        const view = (await mesh.meshInfo.listWorkers({})).workers.find((w) => w.workerId === slow.id)!;
        expect(view.ewmaLatencyMs).to.be.at.least(40);
      } finally {
        await mesh.stop();
      }
    });
  });

  describe('policies', () => {
    it('round_robin spreads sequential calls evenly over the workers', async () => {
      const mesh = await startMesh({ policy: 'round_robin', workers: [{}, {}, {}] });
      try {
        // The first call goes through the scheduler (the gateway holds no permit yet), whose pick
        // for its next call takes a turn of the round; every later call is the gateway's, in turn.
        await mesh.inference.predict({ model: 'echo', input: 'x', priority: 0 });
        const starts = countStarts(mesh.workers);
        for (let i = 0; i < 30; i++) await mesh.inference.predict({ model: 'echo', input: 'x', priority: 0 });
        expect([...starts.values()]).to.deep.equal([10, 10, 10]);
      } finally {
        await mesh.stop();
      }
    });

    it('a per-model policy overrides the default for that model', async () => {
      // Under the default consistent_hash one key pins every call to one worker; echo's own
      // round_robin spreads them.
      const mesh = await startMesh({ policy: 'consistent_hash', workers: [{}, {}, {}], balancer: { modelPolicies: 'echo=round_robin' } });
      try {
        const starts = countStarts(mesh.workers);
        for (let i = 0; i < 30; i++) await mesh.inference.predict({ model: 'echo', input: 'x', priority: 0, affinityKey: 'one-key' });
        expect([...starts.values()]).to.deep.equal([10, 10, 10]);
      } finally {
        await mesh.stop();
      }
    });

    /** Share of 60 calls (3 at a time) that a slow worker (600 ms a call) among two fast ones receives. */
    async function slowWorkerShare(policy: PolicyName): Promise<number> {
      const mesh = await startMesh({ policy, workers: [{ echoDelayMs: 200 }, {}, {}] });
      try {
        const starts = countStarts(mesh.workers);
        let next = 0;
        const caller = async () => {
          while (next++ < 60) await collect(mesh.inference.generate(generate({ prompt: 'a b c' })));
        };
        await Promise.all(Array.from({ length: 3 }, caller));
        return starts.get(mesh.workers[0].id)! / 60;
      } finally {
        await mesh.stop();
      }
    }

    it('p2c sends far fewer calls than round_robin to a worker with many outstanding requests', async () => {
      const roundRobin = await slowWorkerShare('round_robin');
      const p2c = await slowWorkerShare('p2c');
      expect(roundRobin).to.be.closeTo(1 / 3, 0.02);
      expect(p2c).to.be.lessThan(roundRobin / 2);
    });

    it('p2c_ewma steers away from the slow worker', async () => {
      const share = await slowWorkerShare('p2c_ewma');
      expect(share).to.be.lessThan(1 / 6);
    });

    it('consistent_hash sends every call with one affinity key to one worker, and spreads keys', async () => {
      const mesh = await startMesh({ policy: 'consistent_hash', workers: [{}, {}, {}] });
      try {
        const owners = new Map<string, Set<string>>();
        let served = '';
        for (const w of mesh.workers) w.activity.on('task-start', () => (served = w.id));
        for (let k = 0; k < 12; k++) {
          for (let i = 0; i < 3; i++) {
            // Calls are sequential, so the last task start is this call's.
            await mesh.inference.predict({ model: 'echo', input: 'x', priority: 0, affinityKey: `session-${k}` });
            const set = owners.get(`session-${k}`) ?? new Set<string>();
            set.add(served);
            owners.set(`session-${k}`, set);
          }
        }
        for (const [key, set] of owners) expect(set.size, `workers that served ${key}`).to.equal(1);
        const used = new Set([...owners.values()].flatMap((s) => [...s]));
        expect(used.size).to.be.greaterThan(1);
      } finally {
        await mesh.stop();
      }
    });

    it('least_outstanding also steers away from the slow worker', async () => {
      const share = await slowWorkerShare('least_outstanding');
      expect(share).to.be.lessThan(1 / 6);
    });
  });
});
