/**
 * Plaintext only on loopback, with real processes: a service asked to listen on 0.0.0.0 without
 * TLS refuses to start and says why; --insecure lets it; --tls lets it, with health over mutual
 * TLS on its port and, with --health-port, plaintext health (only health) on a second port.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { expect } from 'chai';
import { MeshCertificates, createMeshCertificates } from '../../common/certs';
import { createMeshClient, openChannel } from '../../common/client';
import { HealthCheckResponse_ServingStatus, HealthDefinition } from '../../generated/grpc/health/v1/health';
import { AggregatorServiceDefinition } from '../../generated/maas/internal/v1/aggregator';
import { operatorTls } from '../../gateway/cli/up';
import { ProcessGroup } from '../processes';
import { Status, freePort, grpcError } from '../support';

const dist = resolve(__dirname, '../..');

describe('plaintext only on loopback (service processes)', function () {
  this.timeout(60_000);
  let dir: string;
  let certs: MeshCertificates;
  const group = new ProcessGroup();

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'maas-listen-test-'));
    certs = await createMeshCertificates(join(dir, 'certs'), { workers: [] });
  });
  afterEach(() => group.killAll());
  after(async () => {
    await group.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  for (const [entry, extra] of [
    ['services/aggregator/main.js', ['--data-dir']],
    ['services/scheduler/main.js', ['--data-dir']],
    ['services/balancer/main.js', []],
    ['gateway/main.js', []],
    ['services/worker/main.js', []],
  ] as const) {
    const name = entry.split('/').at(-2);
    it(`the ${name} refuses 0.0.0.0 without TLS, saying why`, async () => {
      const args = ['--host', '0.0.0.0', '--port', String(await freePort()), ...(extra.length ? [extra[0], join(dir, `${name}-data`)] : [])];
      const child = spawn(process.execPath, [resolve(dist, entry), ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, MAAS_PARENT_PID: String(process.pid) } });
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += d));
      const [code] = await once(child, 'exit');
      expect(code, stderr).to.equal(1);
      expect(stderr).to.include('refusing to listen on 0.0.0.0 without TLS').and.include('--insecure');
    });
  }

  it('the aggregator starts on 0.0.0.0 with --insecure', async () => {
    const port = await freePort();
    const p = group.add({ name: 'aggregator', entry: 'services/aggregator/main.js', args: ['--host', '0.0.0.0', '--port', String(port), '--data-dir', join(dir, 'insecure'), '--insecure'], address: `127.0.0.1:${port}` });
    await p.start();
    expect(p.running).to.equal(true);
  });

  it('the aggregator starts on 0.0.0.0 with --tls; its port refuses plaintext, its --health-port answers only health', async () => {
    const [port, healthPort] = [await freePort(), await freePort()];
    const files = certs.certs.aggregator;
    const p = group.add({
      name: 'aggregator',
      entry: 'services/aggregator/main.js',
      args: ['--host', '0.0.0.0', '--port', String(port), '--data-dir', join(dir, 'tls'), '--tls', '--tls-cert', files.cert, '--tls-key', files.key, '--tls-ca', certs.ca, '--health-port', String(healthPort)],
      address: `127.0.0.1:${port}`,
      tls: { client: operatorTls(certs.dir), expected: 'aggregator' },
    });
    await p.start();

    const plain = openChannel(`127.0.0.1:${port}`);
    const probe = openChannel(`127.0.0.1:${healthPort}`);
    try {
      const err = await grpcError(createMeshClient(HealthDefinition, plain).check({ service: '' }, { deadline: Date.now() + 5000 }));
      expect(err.code).to.equal(Status.UNAVAILABLE);
      const { status } = await createMeshClient(HealthDefinition, probe).check({ service: '' }, { deadline: Date.now() + 5000 });
      expect(status).to.equal(HealthCheckResponse_ServingStatus.SERVING);
      // Only health: the service itself is not served on the probe port.
      const forget = await grpcError(createMeshClient(AggregatorServiceDefinition, probe).forget({ jobId: 'x' }, { deadline: Date.now() + 5000 }));
      expect(forget.code).to.equal(Status.UNIMPLEMENTED);
    } finally {
      plain.close();
      probe.close();
    }
  });
});
