/**
 * What the balancer holds per worker lasts only as long as the worker is a member: joins and
 * leaves with distinct random ids, addresses and models, ended every way a stream can end, leave
 * every map as it was and the heap where it was.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { expect } from 'chai';
import { Channel } from 'nice-grpc';
import { createMeshClient, openChannel } from '../../common/client';
import { parseConfig } from '../../common/config';
import { createLogger } from '../../common/log';
import { mulberry32 } from '../../common/random';
import { BalancerServiceDefinition, JoinRequest } from '../../generated/maas/internal/v1/balancer';
import { Model } from '../../generated/maas/v1/models';
import { balancerSchema } from '../../services/balancer/config';
import { BalancerState, RunningBalancer, startBalancer } from '../../services/balancer/server';
import { Status, grpcError, startMesh, until } from '../support';

/** A full garbage collection, without starting node with --expose-gc. */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

/** Heap used after a full collection, in bytes. */
async function heapUsedAfterGc(): Promise<number> {
  // Let closed channels and ended calls finish their last callbacks first.
  await new Promise((r) => setTimeout(r, 200));
  collectGarbage();
  collectGarbage();
  return process.memoryUsage().heapUsed;
}

const EMPTY: BalancerState = { members: 0, links: 0, latency: 0, slowStart: 0, outliers: 0, ejected: 0, policyKeys: 0 };

type Ending = 'end' | 'cancel-after-hello' | 'cancel-at-once' | 'reports-then-end';
const ENDINGS: Ending[] = ['end', 'cancel-after-hello', 'cancel-at-once', 'reports-then-end'];

describe('balancer state per worker', function () {
  this.timeout(60000);
  let balancer: RunningBalancer;
  let channel: Channel;
  let client: ReturnType<typeof createMeshClient<typeof BalancerServiceDefinition>>;
  const random = mulberry32(8);
  const word = () => Math.floor(random() * 2 ** 32).toString(36);

  before(async () => {
    balancer = await startBalancer({ ...parseConfig(balancerSchema, [], {}), port: 0, metricsPort: 0, policy: 'round_robin', reportIntervalMs: 100 }, createLogger('balancer', 'silent'));
    channel = openChannel(`127.0.0.1:${balancer.port}`);
    client = createMeshClient(BalancerServiceDefinition, channel);
  });
  after(async () => {
    channel.close();
    await balancer.shutdown();
  });

  /** A hello with a fresh id, a fresh loopback address where nothing listens, and fresh models. */
  function hello(models = Array.from({ length: 1 + Math.floor(random() * 4) }, () => `m-${word()}`)): JoinRequest {
    const address = `127.${1 + Math.floor(random() * 254)}.${Math.floor(random() * 256)}.${1 + Math.floor(random() * 254)}:1`;
    return {
      message: {
        $case: 'hello',
        hello: { workerId: `w-${word()}`, address, models: models.map((name) => Model.fromPartial({ name, description: 'x'.repeat(200) })), capacity: 1, mappers: [`mp-${word()}`] },
      },
    };
  }

  /** Joins once and leaves by `ending`. */
  async function joinAndLeave(ending: Ending, first = hello()): Promise<void> {
    const controller = new AbortController();
    async function* requests(): AsyncGenerator<JoinRequest> {
      yield first;
      if (ending === 'reports-then-end') {
        for (let i = 0; i < 3; i++) yield { message: { $case: 'report', report: { inFlight: i, capacity: 1, completed: i, draining: false, queueDepth: 0, latencyMs: 5 } } };
        return;
      }
      if (ending === 'end') return;
      // Abandoned: the stream is cut from this side, never ended.
      await new Promise((resolve) => controller.signal.addEventListener('abort', resolve));
    }
    if (ending === 'cancel-at-once') setImmediate(() => controller.abort());
    try {
      for await (const _ of client.join(requests(), { signal: controller.signal })) {
        if (ending === 'cancel-after-hello') controller.abort();
      }
    } catch {
      // An abandoned stream ends in an AbortError on this side.
    }
  }

  it('returns every map to empty after many joins and leaves with random ids, addresses and models', async () => {
    for (let i = 0; i < 200; i += 20) await Promise.all(ENDINGS.flatMap((e) => Array.from({ length: 5 }, () => joinAndLeave(e))));
    await until(() => balancer.membership.size === 0 && balancer.state().links === 0, 5000, 'every member gone');
    expect(balancer.state()).to.deep.equal(EMPTY);
  });

  it('drops the routing state of a model once no member serves it', async () => {
    const model = `m-${word()}`;
    const controllers = [new AbortController(), new AbortController()];
    const joined = controllers.map(async (controller) => {
      async function* requests(): AsyncGenerator<JoinRequest> {
        yield hello([model]);
        await new Promise((resolve) => controller.signal.addEventListener('abort', resolve));
      }
      try {
        for await (const _ of client.join(requests(), { signal: controller.signal }));
      } catch {
        // cancelled below
      }
    });
    await until(() => balancer.membership.size === 2, 5000, 'two members');
    // Round robin keeps a cursor per model once it picks among two; both workers refuse (nothing listens).
    const task = { requestId: 'r', tenant: 't', request: { $case: 'generate' as const, generate: { model, prompt: 'a', maxTokens: 0, stop: [], priority: 0, affinityKey: '' } } };
    const err = await grpcError((async () => {
      for await (const _ of createMeshClient(BalancerServiceDefinition, channel).route({ task }));
    })());
    expect(err.code).to.equal(Status.UNAVAILABLE);
    expect(balancer.state().policyKeys).to.equal(1);
    expect(balancer.state().outliers).to.equal(2);
    for (const c of controllers) c.abort();
    await Promise.all(joined);
    await until(() => balancer.state().links === 0, 5000, 'links closed');
    expect(balancer.state()).to.deep.equal(EMPTY);
  });

  it('ends the join stream of a member removed for silence, and holds nothing for it', async function () {
    // Removed after 3 report intervals (300 ms): a stream still open long after is the failure.
    this.timeout(5000);
    const controller = new AbortController();
    async function* requests(): AsyncGenerator<JoinRequest> {
      yield hello();
      // Silent, but the stream stays open.
      await new Promise((resolve) => controller.signal.addEventListener('abort', resolve));
    }
    try {
      const err = await grpcError((async () => {
        for await (const _ of client.join(requests(), { signal: controller.signal }));
      })());
      expect(err.code).to.equal(Status.UNAVAILABLE);
      expect(err.details).to.match(/was removed: no load report for 300 ms/);
    } finally {
      controller.abort();
    }
    await until(() => balancer.state().links === 0, 5000, 'links closed');
    expect(balancer.state()).to.deep.equal(EMPTY);
  });

  it('keeps the heap where it was after 600 joins and leaves: channels to workers that left are released', async () => {
    for (let i = 0; i < 40; i++) await joinAndLeave(ENDINGS[i % ENDINGS.length]);
    const before = await heapUsedAfterGc();
    for (let i = 0; i < 600; i += 20) await Promise.all(ENDINGS.flatMap((e) => Array.from({ length: 5 }, () => joinAndLeave(e))));
    await until(() => balancer.state().links === 0, 5000, 'links closed');
    const grown = (await heapUsedAfterGc()) - before;
    // Each channel kept after its worker left held about 15 kB: 600 of them, about 9 MB.
    expect(grown, `heap grew by ${(grown / 1e6).toFixed(1)} MB`).to.be.below(3e6);
  });
});

describe('balancer state per call', function () {
  this.timeout(120000);

  it('keeps the heap where it was after 6,000 routed calls to a member that stays (nothing per call outlives it)', async () => {
    const mesh = await startMesh({ workers: [{}] });
    const channel = openChannel(mesh.balancer.address);
    try {
      const balancer = createMeshClient(BalancerServiceDefinition, channel);
      let n = 0;
      const calls = async (count: number) => {
        const one = async () => {
          for await (const _ of balancer.route({ task: { requestId: `r${n++}`, tenant: 'acme', request: { $case: 'predict', predict: { model: 'echo', input: 'hi', affinityKey: '', priority: 0 } } } }, { deadline: Date.now() + 10000 }));
        };
        for (let i = 0; i < count; i += 20) await Promise.all(Array.from({ length: 20 }, one));
      };
      await calls(1000);
      const before = await heapUsedAfterGc();
      await calls(6000);
      const grown = (await heapUsedAfterGc()) - before;
      // Whatever a call leaves behind for as long as its worker is a member (listeners on the
      // member's signals, records by request) would show here: 1 kB a call is 6 MB.
      expect(grown, `heap grew by ${(grown / 1e6).toFixed(1)} MB over 6,000 calls`).to.be.below(2.5e6);
    } finally {
      channel.close();
      await mesh.stop();
    }
  });
});
