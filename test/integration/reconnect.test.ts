/**
 * grpc-js waits out a reconnect backoff of its own (1 s, growing by 1.6x to 2 minutes) and fails
 * every call on the channel meanwhile: a worker whose balancer had been away for 40 s rejoined the
 * restarted one 21 s late, whatever its own retry interval. Every channel the mesh opens caps that
 * backoff (common/client.ts), so a service that comes back is reached within a couple of seconds.
 */
import { expect } from 'chai';
import { setTimeout as sleep } from 'node:timers/promises';
import { RECONNECT_BACKOFF_MS, createMeshClient, openChannel } from '../../common/client.js';
import { parseConfig } from '../../common/config.js';
import { silentLogger } from '../../common/log.js';
import { BalancerServiceDefinition } from '../../generated/maas/internal/v1/balancer.js';
import { balancerSchema } from '../../services/balancer/config.js';
import { RunningBalancer, startBalancer } from '../../services/balancer/server.js';
import { freePort } from '../support.js';

describe('a mesh channel whose server was away', function () {
  this.timeout(60_000);
  let server: RunningBalancer | undefined;

  afterEach(async () => {
    await server?.shutdown();
    server = undefined;
  });

  it('reaches it again within its capped backoff of its return, after 10 s of failed attempts', async () => {
    const port = await freePort();
    const channel = openChannel(`127.0.0.1:${port}`);
    const balancer = createMeshClient(BalancerServiceDefinition, channel);
    const call = () => balancer.listWorkers({}, { deadline: Date.now() + 500 }).then(
      () => true,
      () => false,
    );
    try {
      // Ten seconds of calls to nobody, one every 50 ms: grpc-js's default backoff would have grown
      // to 6.5 s by now (1, 1.6, 2.6, 4.1, 6.5 s), and its next attempt would come up to that late.
      const until = Date.now() + 10_000;
      while (Date.now() < until) {
        expect(await call(), 'a call while nobody listens').to.equal(false);
        // Time is the condition: the backoff grows with the failures it sees.
        await sleep(50);
      }
      server = await startBalancer({ ...parseConfig(balancerSchema, [], {}), port, metricsPort: -1 }, silentLogger);
      const back = Date.now();
      while (!(await call())) await sleep(20);
      const took = Date.now() - back;
      // The cap with grpc-js's jitter (20%), and room for a connection attempt on a loaded machine.
      expect(took, 'ms until a call succeeded after the server returned').to.be.below(RECONNECT_BACKOFF_MS.max * 1.2 + 1000);
    } finally {
      channel.close();
    }
  });
});
