/**
 * End to end: `maas up --tls` creates the certificates in an empty folder, starts the whole mesh
 * as separate processes with mutual TLS, and waits for health over TLS. Then: Predict over TLS
 * with an API key, from a generated client and from the `maas` CLI with --cacert; the gateway's
 * certificate passes the checks any TLS client (grpcurl -cacert) makes; every internal port
 * refuses plaintext. SIGINT stops everything.
 */
import { ChildProcess, execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { connect } from 'node:tls';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { Channel, Metadata } from 'nice-grpc';
import { createMeshClient, openChannel, openTlsChannel } from '../../common/client';
import { HealthDefinition } from '../../generated/grpc/health/v1/health';
import { InferenceServiceDefinition } from '../../generated/maas/v1/inference';
import { MaasUp, REPO_ROOT, childPids, freePortRun, meshProcessesOn, spawnMaasUp } from '../processes';
import { Status, grpcError } from '../support';

const maasCli = resolve(REPO_ROOT, 'dist/gateway/cli/maas.js');
const WORKERS = 1;
const PORTS_NEEDED = 4 + WORKERS;
const API_KEY = 'tls-e2e-key-0123456789';

describe('maas up --tls: the whole mesh over mutual TLS', function () {
  let dir: string;
  let certsDir: string;
  let up: ChildProcess | undefined;
  let upExit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  let run: MaasUp | undefined;
  let gatewayPort = 0;
  let ports: number[] = [];
  const channels: Channel[] = [];
  const killOnExit = () => up?.kill('SIGKILL');
  const env: NodeJS.ProcessEnv = {};

  before(async function () {
    this.timeout(180_000);
    process.on('exit', killOnExit);
    dir = mkdtempSync(join(tmpdir(), 'maas-up-tls-'));
    certsDir = join(dir, 'certs');
    gatewayPort = await freePortRun(PORTS_NEEDED);
    ports = Array.from({ length: PORTS_NEEDED }, (_, i) => gatewayPort + i);
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('MAAS_') && !k.startsWith('OTEL_')) env[k] = v;
    env.OTEL_TRACES_EXPORTER = 'none';
    env.MAAS_WORKER_CACHE_DIR = resolve(REPO_ROOT, '.cache/models');
    env.MAAS_GATEWAY_API_KEYS = `acme=${API_KEY}`;
    env.MAAS_SCHEDULER_DATA_DIR = join(dir, 'scheduler');
    env.MAAS_AGGREGATOR_DATA_DIR = join(dir, 'aggregator');

    run = spawnMaasUp(['--tls', '--certs-dir', certsDir, '--gateway-port', String(gatewayPort), '--workers', String(WORKERS)], env);
    up = run.child;
    upExit = run.exit;
    await run.ready(120_000);
  });

  after(async function () {
    this.timeout(120_000);
    for (const c of channels) c.close();
    const pids = up?.pid ? childPids(up.pid) : [];
    try {
      if (up && up.exitCode === null && up.signalCode === null) {
        up.kill('SIGINT');
        const result = await upExit;
        expect(result.code, `exit of maas up after SIGINT\n${run?.output}`).to.equal(0);
      }
      const strays = meshProcessesOn(ports);
      for (const s of strays) process.kill(s.pid, 'SIGKILL');
      expect(strays, `service processes (of ${pids.join(', ')}) left after maas up exited`).to.deep.equal([]);
    } finally {
      process.off('exit', killOnExit);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('created the CA and the certificates, keys readable by the owner only, and says the mesh is on TLS', () => {
    expect(run!.output).to.include('over mutual TLS');
    for (const name of ['ca', 'gateway', 'scheduler', 'balancer', 'aggregator', 'operator', 'workers/worker-1']) {
      expect(statSync(join(certsDir, `${name}-key.pem`)).mode & 0o777, `${name}-key.pem`).to.equal(0o600);
    }
  });

  it('answers Predict over TLS with an API key', async function () {
    this.timeout(30_000);
    const channel = openTlsChannel(`127.0.0.1:${gatewayPort}`, readFileSync(join(certsDir, 'ca.pem')));
    channels.push(channel);
    const r = await createMeshClient(InferenceServiceDefinition, channel).predict(
      { model: 'spam-nb', input: 'WIN A FREE PRIZE NOW, click here to claim your cash' },
      { metadata: Metadata({ authorization: `Bearer ${API_KEY}` }), deadline: Date.now() + 20_000 },
    );
    expect(r.label).to.equal('spam');
  });

  it('answers the maas CLI given --cacert', async function () {
    this.timeout(30_000);
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [maasCli, 'predict', '--gateway', `127.0.0.1:${gatewayPort}`, '--cacert', join(certsDir, 'ca.pem'), '--api-key', API_KEY, '--model', 'spam-nb', 'WIN A FREE PRIZE NOW'],
      { cwd: REPO_ROOT, env },
    );
    expect(stdout).to.match(/^label: spam$/m);
  });

  it('presents a certificate that a plain TLS client verifies for localhost and 127.0.0.1, with h2 (what grpcurl -cacert checks)', async () => {
    for (const servername of ['localhost', undefined]) {
      const socket = connect({ host: '127.0.0.1', port: gatewayPort, ca: readFileSync(join(certsDir, 'ca.pem')), servername, ALPNProtocols: ['h2'] });
      try {
        await new Promise<void>((ok, fail) => socket.once('secureConnect', ok).once('error', fail));
        expect(socket.authorized, String(socket.authorizationError)).to.equal(true);
        expect(socket.alpnProtocol).to.equal('h2');
        expect(socket.getPeerCertificate().subjectaltname).to.include('URI:spiffe://maas.mesh/gateway');
      } finally {
        socket.destroy();
      }
    }
  });

  it('refuses plaintext on the gateway and on every internal port', async () => {
    for (const port of ports) {
      const channel = openChannel(`127.0.0.1:${port}`);
      channels.push(channel);
      const err = await grpcError(createMeshClient(HealthDefinition, channel).check({ service: '' }, { deadline: Date.now() + 5000 }));
      expect(err.code, `port ${port}: ${Status[err.code]} ${err.details}`).to.equal(Status.UNAVAILABLE);
    }
  });
});
