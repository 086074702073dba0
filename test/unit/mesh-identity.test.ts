/**
 * Mesh identities, the method policy, the loopback rule, and the certificates `maas certs` makes:
 * the pure parts of mutual TLS, tested directly.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { MeshCertificates, createMeshCertificates } from '../../common/certs';
import { METHOD_POLICY, authorizeCall, identityFromSubjectAltName, meshIdentity, parseIdentityUri } from '../../common/mesh-identity';
import { checkListenSecurity, isLoopbackHost, loadMeshTls } from '../../common/tls';
import { HealthDefinition } from '../../generated/grpc/health/v1/health';
import { AggregatorServiceDefinition } from '../../generated/maas/internal/v1/aggregator';
import { BalancerServiceDefinition } from '../../generated/maas/internal/v1/balancer';
import { SchedulerServiceDefinition } from '../../generated/maas/internal/v1/scheduler';
import { WorkerServiceDefinition } from '../../generated/maas/internal/v1/worker';

describe('mesh identities', () => {
  it('round-trips every service and a worker through its URI', () => {
    for (const s of ['gateway', 'scheduler', 'balancer', 'aggregator', 'operator'] as const) {
      expect(parseIdentityUri(meshIdentity(s).uri)).to.deep.equal(meshIdentity(s));
    }
    expect(parseIdentityUri('spiffe://maas.mesh/worker/w-1.a')).to.deep.equal({ service: 'worker', workerId: 'w-1.a', uri: 'spiffe://maas.mesh/worker/w-1.a' });
  });

  it('names nobody for another trust domain, an unknown service, a bare worker or a malformed id', () => {
    for (const uri of ['spiffe://evil.mesh/gateway', 'spiffe://maas.mesh/root', 'spiffe://maas.mesh/worker', 'spiffe://maas.mesh/worker/a/b', 'spiffe://maas.mesh/worker/../x', 'spiffe://maas.mesh/gateway/x']) {
      expect(parseIdentityUri(uri), uri).to.equal(undefined);
    }
    expect(() => meshIdentity('worker', 'a/b')).to.throw(/worker id must match/);
  });

  it('reads the identity from a certificate\'s SANs, and none when two mesh URIs make it ambiguous', () => {
    expect(identityFromSubjectAltName('URI:spiffe://maas.mesh/worker/w1, DNS:localhost, IP Address:127.0.0.1')?.uri).to.equal('spiffe://maas.mesh/worker/w1');
    expect(identityFromSubjectAltName('URI:spiffe://maas.mesh/worker/w1, URI:spiffe://maas.mesh/gateway')).to.equal(undefined);
    expect(identityFromSubjectAltName('DNS:localhost')).to.equal(undefined);
    expect(identityFromSubjectAltName(undefined)).to.equal(undefined);
  });
});

describe('the method policy', () => {
  const served = [SchedulerServiceDefinition, BalancerServiceDefinition, AggregatorServiceDefinition, WorkerServiceDefinition, HealthDefinition].flatMap((d) =>
    Object.values(d.methods).map((m) => `/${d.fullName}/${m.name}`),
  );

  it('names every method of every internal service, and nothing else beyond reflection', () => {
    for (const path of served) expect(METHOD_POLICY, path).to.have.property(path);
    const extra = Object.keys(METHOD_POLICY).filter((p) => !served.includes(p) && !p.includes('ServerReflection'));
    expect(extra).to.deep.equal([]);
  });

  it('lets only the gateway call the scheduler, only workers Join and Commit, only the balancer Execute', () => {
    const gateway = meshIdentity('gateway');
    const worker = meshIdentity('worker', 'w1');
    expect(authorizeCall('/maas.internal.v1.SchedulerService/SubmitJob', gateway).allowed).to.equal(true);
    expect(authorizeCall('/maas.internal.v1.SchedulerService/SubmitJob', worker)).to.deep.equal({
      allowed: false,
      status: 'permission_denied',
      message: '/maas.internal.v1.SchedulerService/SubmitJob may not be called by spiffe://maas.mesh/worker/w1; allowed: gateway',
    });
    expect(authorizeCall('/maas.internal.v1.BalancerService/Join', worker).allowed).to.equal(true);
    expect(authorizeCall('/maas.internal.v1.AggregatorService/Commit', gateway).allowed).to.equal(false);
    expect(authorizeCall('/maas.internal.v1.WorkerService/Execute', meshIdentity('balancer')).allowed).to.equal(true);
    expect(authorizeCall('/maas.internal.v1.WorkerService/Execute', meshIdentity('scheduler')).allowed).to.equal(false);
    expect(authorizeCall('/grpc.health.v1.Health/Check', meshIdentity('operator')).allowed).to.equal(true);
  });

  it('lets only the gateway take permits, and both dispatchers (gateway, scheduler) Dispatch and call a worker\'s ExecuteCalls', () => {
    const permits = '/maas.internal.v1.SchedulerService/Permits';
    expect(authorizeCall(permits, meshIdentity('gateway')).allowed).to.equal(true);
    for (const other of [meshIdentity('scheduler'), meshIdentity('balancer'), meshIdentity('worker', 'w1'), meshIdentity('operator')]) expect(authorizeCall(permits, other).allowed, other.uri).to.equal(false);
    for (const dispatcher of ['gateway', 'scheduler'] as const) {
      expect(authorizeCall('/maas.internal.v1.BalancerService/Dispatch', meshIdentity(dispatcher)).allowed, dispatcher).to.equal(true);
      expect(authorizeCall('/maas.internal.v1.WorkerService/ExecuteCalls', meshIdentity(dispatcher)).allowed, dispatcher).to.equal(true);
    }
    expect(authorizeCall('/maas.internal.v1.WorkerService/Execute', meshIdentity('gateway')).allowed).to.equal(false);
    expect(authorizeCall('/maas.internal.v1.BalancerService/Dispatch', meshIdentity('worker', 'w1')).allowed).to.equal(false);
  });

  it('refuses a method not in the table to everyone, and a certificate with no identity as unauthenticated', () => {
    const d = authorizeCall('/maas.internal.v1.SchedulerService/DropAll', meshIdentity('gateway'));
    expect(d.allowed).to.equal(false);
    if (!d.allowed) expect(d.message).to.include('nobody');
    const none = authorizeCall('/grpc.health.v1.Health/Check', undefined);
    expect(none.allowed === false && none.status).to.equal('unauthenticated');
  });
});

describe('plaintext only on loopback', () => {
  it('knows loopback addresses', () => {
    for (const h of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]']) expect(isLoopbackHost(h), h).to.equal(true);
    for (const h of ['0.0.0.0', '::', '10.0.0.1', '192.168.1.1', 'gateway', '128.0.0.1']) expect(isLoopbackHost(h), h).to.equal(false);
  });

  it('refuses 0.0.0.0 without TLS, saying why, unless --insecure or TLS', () => {
    expect(() => checkListenSecurity('0.0.0.0', false, false)).to.throw(/refusing to listen on 0\.0\.0\.0 without TLS.*--insecure/);
    expect(() => checkListenSecurity('0.0.0.0', false, true)).not.to.throw();
    expect(() => checkListenSecurity('0.0.0.0', true, false)).not.to.throw();
    expect(() => checkListenSecurity('127.0.0.1', false, false)).not.to.throw();
  });
});

describe('createMeshCertificates', function () {
  this.timeout(20_000);
  let dir: string;
  let certs: MeshCertificates;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'maas-certs-test-'));
    certs = await createMeshCertificates(join(dir, 'certs'), { workers: ['w1'], hosts: ['scheduler.prod.svc', '10.1.2.3'], validityDays: 30 });
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const cert = (name: string) => new X509Certificate(readFileSync(certs.certs[name].cert));
  const tlsOf = (name: string, service: Parameters<typeof loadMeshTls>[1]) =>
    loadMeshTls({ tls: true, tlsCert: certs.certs[name].cert, tlsKey: certs.certs[name].key, tlsCa: certs.ca, insecure: false, healthPort: 0 }, service);

  it('puts the identity, the service name, loopback and the extra SANs in each certificate, signed by the CA', () => {
    const ca = new X509Certificate(readFileSync(certs.ca));
    expect(ca.ca).to.equal(true);
    const scheduler = cert('scheduler');
    expect(scheduler.subjectAltName).to.include('URI:spiffe://maas.mesh/scheduler').and.include('DNS:scheduler').and.include('DNS:localhost');
    expect(scheduler.subjectAltName).to.include('IP Address:127.0.0.1').and.include('DNS:scheduler.prod.svc').and.include('IP Address:10.1.2.3');
    expect(scheduler.checkIssued(ca) && scheduler.verify(ca.publicKey)).to.equal(true);
    expect(cert('workers/w1').subjectAltName).to.include('URI:spiffe://maas.mesh/worker/w1');
    expect(cert('operator').subjectAltName).to.equal('URI:spiffe://maas.mesh/operator');
  });

  it('makes certificates valid for the days asked', () => {
    const days = (Date.parse(cert('gateway').validTo) - Date.now()) / 86_400_000;
    expect(days).to.be.within(29.9, 30.1);
  });

  it('writes private keys readable by the owner only', () => {
    for (const files of Object.values(certs.certs)) expect(statSync(files.key).mode & 0o777, files.key).to.equal(0o600);
    expect(statSync(join(certs.dir, 'ca-key.pem')).mode & 0o777).to.equal(0o600);
  });

  it('keeps what exists, and signs a new worker with the same CA', async () => {
    const before = readFileSync(certs.certs.gateway.cert, 'utf8');
    const again = await createMeshCertificates(certs.dir, { workers: ['w1', 'w9'] });
    expect(again.created).to.deep.equal(['workers/w9']);
    expect(readFileSync(certs.certs.gateway.cert, 'utf8')).to.equal(before);
    expect(loadMeshTls({ tls: true, tlsCert: again.certs['workers/w9'].cert, tlsKey: again.certs['workers/w9'].key, tlsCa: certs.ca, insecure: false, healthPort: 0 }, 'worker')?.identity.workerId).to.equal('w9');
  });

  it('refuses at load a certificate of another service, a key of another certificate, another CA', async () => {
    expect(tlsOf('scheduler', 'scheduler')?.identity.uri).to.equal('spiffe://maas.mesh/scheduler');
    expect(() => tlsOf('gateway', 'scheduler')).to.throw(/names spiffe:\/\/maas\.mesh\/gateway, not a scheduler identity/);
    expect(() => loadMeshTls({ tls: true, tlsCert: certs.certs.scheduler.cert, tlsKey: certs.certs.gateway.key, tlsCa: certs.ca, insecure: false, healthPort: 0 }, 'scheduler')).to.throw(
      /--tls-key .* is not the key of --tls-cert/,
    );
    const other = await createMeshCertificates(join(dir, 'other'), { workers: [] });
    expect(() => loadMeshTls({ tls: true, tlsCert: other.certs.scheduler.cert, tlsKey: other.certs.scheduler.key, tlsCa: certs.ca, insecure: false, healthPort: 0 }, 'scheduler')).to.throw(
      /is not signed by the CA of --tls-ca/,
    );
    writeFileSync(join(dir, 'garbage.pem'), 'not a certificate');
    expect(() => loadMeshTls({ tls: true, tlsCert: join(dir, 'garbage.pem'), tlsKey: certs.certs.scheduler.key, tlsCa: certs.ca, insecure: false, healthPort: 0 }, 'scheduler')).to.throw(/is not a PEM certificate/);
    expect(() => loadMeshTls({ tls: true, tlsCert: join(dir, 'missing.pem'), tlsKey: 'x', tlsCa: 'y', insecure: false, healthPort: 0 }, 'scheduler')).to.throw(/--tls-cert .*missing\.pem cannot be read \(ENOENT\)/);
  });

  it('refuses a malformed SAN or worker id before writing anything', async () => {
    await createMeshCertificates(join(dir, 'bad'), { hosts: ['bad host!'] }).then(
      () => expect.fail('accepted a bad SAN'),
      (err: Error) => expect(err.message).to.match(/a SAN must be a DNS name or an IP address, given "bad host!"/),
    );
    await createMeshCertificates(join(dir, 'bad'), { workers: ['../x'] }).then(
      () => expect.fail('accepted a bad worker id'),
      (err: Error) => expect(err.message).to.match(/worker id must match/),
    );
  });
});
