/** Services as processes: config errors stop the start; health follows model loading; SIGTERM drains. */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { resolve } from 'node:path';
import { expect } from 'chai';
import { createClient, createChannel } from 'nice-grpc';
import { parseConfig } from '../../common/config';
import { silentLogger } from '../../common/log';
import { HealthCheckResponse_ServingStatus, HealthDefinition } from '../../generated/grpc/health/v1/health';
import { workerSchema } from '../../services/worker/config';
import { createEchoModel } from '../../services/worker/models/echo';
import { Model } from '../../services/worker/models/runtime';
import { startWorker } from '../../services/worker/server';
import { TestMesh, freePort, startMesh, until } from '../support';

const dist = resolve(__dirname, '../..');

/** Runs a service entry with args; resolves with its exit code and stderr. */
async function runToExit(entry: string, args: string[]): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [resolve(dist, entry), ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const [code] = await once(child, 'exit');
  return { code, stderr };
}

describe('service processes', function () {
  this.timeout(30000);

  const badConfigs: [string, string[], RegExp][] = [
    ['services/scheduler/main.js', ['--max-queued', 'abc'], /invalid --max-queued \(maxQueued\): expected an integer, given "abc"/],
    ['services/balancer/main.js', ['--policy', 'fastest'], /invalid --policy \(policy\): expected one of round_robin, random, least_outstanding, p2c, p2c_ewma, weighted, consistent_hash, given "fastest"/],
    ['gateway/main.js', ['--port', '70000'], /invalid --port \(port\): expected an integer from 0 to 65535, given 70000/],
    ['services/worker/main.js', ['--balancer', 'nowhere'], /invalid --balancer \(balancer\): expected host:port, given "nowhere"/],
  ];
  for (const [entry, args, message] of badConfigs) {
    it(`${entry.split('/').at(-2)} refuses to start on ${args.join(' ')} and names the setting`, async () => {
      const { code, stderr } = await runToExit(entry, args);
      expect(code).to.equal(2);
      expect(stderr).to.match(message);
    });
  }

  it('a worker is NOT_SERVING until its models are loaded, then SERVING; liveness is SERVING throughout', async () => {
    const balancerPort = await freePort();
    const port = await freePort();
    let release!: (models: Model[]) => void;
    const loaded = new Promise<Model[]>((r) => (release = r));
    const config = { ...parseConfig(workerSchema, [], {}), port, balancer: `127.0.0.1:${balancerPort}` };
    const starting = startWorker(config, silentLogger, { name: 'gated', load: () => loaded });
    const channel = createChannel(`127.0.0.1:${port}`);
    const health = createClient(HealthDefinition, channel);
    try {
      let first: HealthCheckResponse_ServingStatus | undefined;
      for (;;) {
        try {
          first = (await health.check({ service: '' })).status;
          break;
        } catch {
          // The server binds its port a moment after startWorker is called: poll until it answers.
          await new Promise((r) => setTimeout(r, 20));
        }
      }
      expect(first).to.equal(HealthCheckResponse_ServingStatus.NOT_SERVING);
      // Alive, though not ready: a liveness probe must not restart a worker that is loading.
      expect((await health.check({ service: 'liveness' })).status).to.equal(HealthCheckResponse_ServingStatus.SERVING);
      release([createEchoModel()]);
      const worker = await starting;
      expect((await health.check({ service: '' })).status).to.equal(HealthCheckResponse_ServingStatus.SERVING);
      expect((await health.check({ service: 'maas.internal.v1.WorkerService' })).status).to.equal(HealthCheckResponse_ServingStatus.SERVING);
      worker.crash();
    } finally {
      channel.close();
    }
  });

  describe('a worker process on SIGTERM', () => {
    let mesh: TestMesh;
    before(async () => {
      mesh = await startMesh({ workers: [] });
    });
    after(() => mesh.stop());

    it('finishes its running call, leaves the balancer, and exits with code 0', async () => {
      const child = spawn(process.execPath, [resolve(dist, 'services/worker/main.js'), '--balancer', mesh.balancer.address, '--worker-id', 'proc-1', '--echo-delay-ms', '100'], {
        stdio: ['ignore', 'ignore', 'ignore'],
        env: { ...process.env, MAAS_WORKER_CACHE_DIR: resolve(dist, '../.cache/models') },
      });
      try {
        await until(() => mesh.balancer.membership.get('proc-1') !== undefined, 60000, 'worker process joined');
        const chunks: string[] = [];
        const call = (async () => {
          for await (const c of mesh.inference.generate({ model: 'echo', prompt: 'one two three four five', maxTokens: 0, stop: [], priority: 0 })) {
            chunks.push(c.text);
            if (chunks.length === 1) child.kill('SIGTERM');
          }
        })();
        const [code] = await Promise.all([once(child, 'exit').then(([c]) => c), call]);
        expect(chunks.join('')).to.equal('one two three four five');
        expect(code).to.equal(0);
        expect(mesh.balancer.membership.get('proc-1')).to.equal(undefined);
      } finally {
        if (child.exitCode === null) child.kill('SIGKILL');
      }
    });
  });
});
