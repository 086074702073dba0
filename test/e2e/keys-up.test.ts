/**
 * End to end: API keys reach the gateway and no other process. `maas up` is started with keys in
 * its environment (the gateway's key variable, the CLI's key variable) and a key file; then the
 * environment (/proc/<pid>/environ) and command line of every service process it started are read:
 * only the gateway's may hold a key or the key file's path. The keys work through the gateway.
 */
import { expect } from 'chai';
import { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Metadata } from 'nice-grpc';
import { createMeshClient, openChannel } from '../../common/client';
import { hashApiKey } from '../../gateway/auth';
import { ModelServiceDefinition } from '../../generated/maas/v1/models';
import { Status, grpcError } from '../support';
import { childPids, freePort, spawnMaasUp } from '../processes';

const repoRoot = resolve(__dirname, '../../..');

const ENV_KEY = 'env-key-Qx7-plaintext-secret';
const FILE_KEY = 'file-key-Zr4-plaintext-secret';
const CLI_KEY = 'cli-key-Mm2-plaintext-secret';


describe('maas up: API keys reach only the gateway', function () {
  this.timeout(180_000);
  let up: ChildProcess | undefined;
  let dir: string;
  let keyFile: string;
  let gatewayPort = 0;
  const killOnExit = () => up?.kill('SIGKILL');

  before(async () => {
    process.on('exit', killOnExit);
    dir = mkdtempSync(join(tmpdir(), 'maas-keys-up-'));
    keyFile = join(dir, 'api-keys.txt');
    writeFileSync(keyFile, `globex ${hashApiKey(FILE_KEY)}\n`, { mode: 0o600 });
    // Ports of their own: gateway N, then N+1.. for the others, picked one by one.
    gatewayPort = await freePort();
    const [scheduler, balancer, aggregator, worker] = [await freePort(), await freePort(), await freePort(), await freePort()];
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('MAAS_') && !k.startsWith('OTEL_')) env[k] = v;
    Object.assign(env, {
      OTEL_TRACES_EXPORTER: 'none',
      MAAS_WORKER_CACHE_DIR: resolve(repoRoot, '.cache/models'),
      MAAS_GATEWAY_API_KEYS: `acme=${ENV_KEY}`,
      MAAS_API_KEY: CLI_KEY,
      SOME_CLOUD_SECRET: 'unrelated-secret-of-the-shell',
    });
    const args = ['--host', '127.0.0.1', '--workers', '1', '--api-keys-file', keyFile];
    args.push('--gateway-port', String(gatewayPort), '--scheduler-port', String(scheduler), '--balancer-port', String(balancer), '--aggregator-port', String(aggregator), '--worker-base-port', String(worker));
    const run = spawnMaasUp(args, env);
    up = run.child;
    await run.ready(150_000);
  });

  after(async () => {
    if (up && up.exitCode === null && up.signalCode === null) {
      const exited = new Promise((r) => up!.once('exit', r));
      up.kill('SIGINT');
      await exited;
    }
    process.off('exit', killOnExit);
    rmSync(dir, { recursive: true, force: true });
  });

  it('gives no service but the gateway a key, a key variable or the key file\'s path; and none the shell\'s other secrets', () => {
    const children = childPids(up!.pid!);
    expect(children, 'service processes of maas up').to.have.length(5);
    const seen: string[] = [];
    for (const pid of children) {
      const environ = readFileSync(`/proc/${pid}/environ`, 'utf8');
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
      const isGateway = cmdline.includes('dist/gateway/main.js');
      seen.push(isGateway ? 'gateway' : (/dist\/services\/(\w+)\/main\.js/.exec(cmdline)?.[1] ?? cmdline));
      const everything = `${environ}\n${cmdline}`;
      for (const secret of [CLI_KEY, 'unrelated-secret-of-the-shell', 'MAAS_API_KEY=']) expect(everything, `pid ${pid} ${cmdline}`).not.to.include(secret);
      if (isGateway) {
        expect(environ).to.include(`MAAS_GATEWAY_API_KEYS=acme=${ENV_KEY}`);
        expect(cmdline).to.include(keyFile);
        continue;
      }
      for (const secret of [ENV_KEY, FILE_KEY, keyFile, 'MAAS_GATEWAY_API_KEYS', hashApiKey(FILE_KEY).slice(7)]) {
        expect(everything, `pid ${pid} ${cmdline}`).not.to.include(secret);
      }
    }
    expect(seen.sort()).to.deep.equal(['aggregator', 'balancer', 'gateway', 'scheduler', 'worker']);
  });

  it('the gateway accepts the key from the environment and the key from the file, and nothing else', async () => {
    const channel = openChannel(`127.0.0.1:${gatewayPort}`);
    try {
      const models = createMeshClient(ModelServiceDefinition, channel);
      const as = (key: string) => ({ metadata: Metadata({ authorization: `Bearer ${key}` }), deadline: Date.now() + 10_000 });
      await models.listModels({}, as(ENV_KEY));
      await models.listModels({}, as(FILE_KEY));
      expect((await grpcError(models.listModels({}, as(CLI_KEY)))).code).to.equal(Status.UNAUTHENTICATED);
      expect((await grpcError(models.listModels({}, { deadline: Date.now() + 10_000 }))).code).to.equal(Status.UNAUTHENTICATED);
    } finally {
      channel.close();
    }
  });
});
