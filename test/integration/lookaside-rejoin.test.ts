/**
 * Found by `npm run bench:faults` (the balancer killed under load): a balancer restarted on its
 * address knows no workers until they rejoin (a worker's Join backoff grows to 2 s while the
 * balancer is away). The scheduler's dispatcher dispatches on the last routing state meanwhile, but
 * the gateway's model catalog takes the new balancer's empty list as the truth and refuses the
 * model's calls with UNAVAILABLE before they reach the scheduler.
 */
import { expect } from 'chai';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseConfig } from '../../common/config.js';
import { silentLogger } from '../../common/log.js';
import { balancerSchema } from '../../services/balancer/config.js';
import { RunningBalancer, startBalancer } from '../../services/balancer/server.js';
import { TestMesh, startMesh, until } from '../support.js';

describe('a balancer restarted before the workers rejoin it', function () {
  this.timeout(60_000);
  let mesh: TestMesh;
  let restarted: RunningBalancer | undefined;

  afterEach(async () => {
    await mesh?.stop().catch(() => undefined);
    await restarted?.shutdown();
    restarted = undefined;
  });

  it('online calls go on through the gateway on the last routing state until they do', async () => {
    mesh = await startMesh({ workers: [{}, {}] });
    await until(() => mesh.scheduler.dispatcher.balancerConnected, 5000, 'the dispatch stream');
    await mesh.inference.predict({ model: 'echo', input: 'before' });
    const port = Number(mesh.balancer.address.split(':').at(-1));
    await mesh.balancer.shutdown();
    await until(() => !mesh.scheduler.dispatcher.balancerConnected, 5000, 'the scheduler to notice');
    // Time itself is the condition here: the workers' Join backoff (100 ms, doubling) grows while
    // the balancer is away, which leaves the restarted one without workers for about a second.
    await sleep(1500);
    restarted = await startBalancer({ ...parseConfig(balancerSchema, [], {}), metricsPort: 0, port, policy: 'p2c', reportIntervalMs: 200 }, silentLogger);
    const workersAtStart = restarted.membership.all().length;
    // One after another: the first one's catalog refresh (behind it) asks the new balancer.
    const results: PromiseSettledResult<unknown>[] = [];
    for (let i = 0; i < 10; i++) results.push(...(await Promise.allSettled([mesh.inference.predict({ model: 'echo', input: `rejoin ${i}` })])));
    // The window this test is about: the calls were made before both workers had rejoined.
    expect(workersAtStart, 'workers the restarted balancer knew when the calls were made').to.be.lessThan(2);
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(failed.map((r) => String(r.reason)), 'calls failed while the workers rejoined').to.deep.equal([]);
  });
});
