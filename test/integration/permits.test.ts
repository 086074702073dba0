/**
 * Admission granted ahead (SchedulerService.Permits): the gateway runs a tenant's online calls on
 * the scheduler's permits, dispatching them itself to the worker the balancer picks, with no round
 * trip to the scheduler per call; the scheduler's limits hold all the same.
 */
import { expect } from 'chai';
import { Metadata } from 'nice-grpc';
import { parseApiKeys } from '../../gateway/auth';
import { parseTenantOverrides } from '../../services/scheduler/tenant-limits';
import { TENANT_NAME_PATTERN } from '../../common/tenant';
import { scrape } from '../prometheus';
import { Status, TestMesh, collect, grpcError, startMesh, until } from '../support';

const KEYS = { acme: 'key-of-acme', globex: 'key-of-globex' };
const keys = parseApiKeys(`acme=${KEYS.acme},globex=${KEYS.globex}`);
const as = (key: string) => ({ metadata: Metadata({ authorization: `Bearer ${key}` }) });

async function metric(address: string | undefined, name: string, labels: Record<string, string> = {}): Promise<number> {
  return (await scrape(address)).value(name, labels);
}

/** The most calls the workers ran at once while `run` ran. */
async function peakConcurrency(mesh: TestMesh, run: () => Promise<unknown>): Promise<number> {
  let running = 0;
  let peak = 0;
  const start = () => (peak = Math.max(peak, ++running));
  const end = () => running--;
  for (const w of mesh.workers) {
    w.activity.on('task-start', start);
    w.activity.on('task-end', end);
  }
  try {
    await run();
  } finally {
    for (const w of mesh.workers) {
      w.activity.off('task-start', start);
      w.activity.off('task-end', end);
    }
  }
  return peak;
}

describe('admission permits: calls dispatched by the gateway on the scheduler\'s grant', function () {
  this.timeout(30_000);
  let mesh: TestMesh;
  afterEach(() => mesh?.stop());

  it('after a tenant\'s first call, its calls run on permits: the scheduler carries none of them, the balancer still picks each one', async () => {
    mesh = await startMesh({ workers: [{}, {}] });
    await until(() => mesh.gateway.dispatcher!.balancerConnected && mesh.gateway.permits!.streamUp, 5000, 'the gateway\'s streams');
    const first = await mesh.inference.predict({ model: 'echo', input: 'first' });
    expect(first.text).to.equal('first');
    // That call found no permit: the gateway asked for one, and holds it once granted.
    await until(() => mesh.gateway.permits!.heldFor('anonymous') > 0, 5000, 'a permit');
    const scheduled = () => metric(mesh.scheduler.metricsAddress, 'maas_grpc_server_handled_total', { method: 'maas.internal.v1.SchedulerService/Schedule' });
    const picks = () => metric(mesh.balancer.metricsAddress, 'maas_balancer_picks_total');
    const [scheduledBefore, picksBefore] = [await scheduled(), await picks()];
    const onPermitsBefore = mesh.gateway.permits!.callsOnPermits;
    for (let i = 0; i < 10; i++) expect((await mesh.inference.predict({ model: 'echo', input: `p${i}` })).text).to.equal(`p${i}`);
    const chunks = await collect(mesh.inference.generate({ model: 'echo', prompt: 'a b c', maxTokens: 3 }));
    expect(chunks.map((c) => c.text).join('')).to.match(/a\s*b\s*c/);
    expect(mesh.gateway.permits!.callsOnPermits - onPermitsBefore).to.equal(11);
    expect(await scheduled(), 'calls through the scheduler').to.equal(scheduledBefore);
    expect((await picks()) - picksBefore, 'calls the balancer picked a worker for').to.equal(11);
    expect(await metric(mesh.gateway.metricsAddress, 'maas_gateway_online_calls_total', { path: 'permit' })).to.equal(11);
    expect(await metric(mesh.gateway.metricsAddress, 'maas_gateway_online_calls_total', { path: 'scheduler' })).to.equal(1);
    // The permit's slot is the scheduler's: it shows in flight there.
    expect(mesh.scheduler.queue.inFlight).to.equal(mesh.scheduler.permits.held);
    expect(mesh.scheduler.permits.held).to.be.at.least(1);
  });

  it('with --permits false, every call goes through the scheduler', async () => {
    mesh = await startMesh({ gateway: { permits: false } });
    for (let i = 0; i < 5; i++) await mesh.inference.predict({ model: 'echo', input: `p${i}` });
    expect(mesh.gateway.permits).to.equal(undefined);
    expect(mesh.scheduler.permits.held).to.equal(0);
    expect(await metric(mesh.gateway.metricsAddress, 'maas_gateway_online_calls_total', { path: 'scheduler' })).to.equal(5);
  });

  it('idle permits go back to the scheduler, and a gateway that stops releases what it held', async () => {
    mesh = await startMesh();
    for (let i = 0; i < 3; i++) await mesh.inference.predict({ model: 'echo', input: `p${i}` });
    await until(() => mesh.scheduler.permits.held > 0, 5000, 'a permit');
    // A permit that runs no call for a second goes back.
    await until(() => mesh.scheduler.permits.held === 0 && mesh.scheduler.queue.inFlight === 0, 5000, 'the idle permits to go back');
    for (let i = 0; i < 3; i++) await mesh.inference.predict({ model: 'echo', input: `q${i}` });
    await until(() => mesh.scheduler.permits.held > 0, 5000, 'a permit again');
    await mesh.gateway.shutdown();
    await until(() => mesh.scheduler.permits.held === 0 && mesh.scheduler.queue.inFlight === 0, 5000, 'the stream\'s permits to be released');
  });

  it('a tenant\'s in-flight limit counts its permits: never more of its calls at once than the limit, the calls beyond refused or waiting for a permit\'s slot', async () => {
    mesh = await startMesh({ workers: [{ echoDelayMs: 50 }], gateway: { apiKeys: keys }, scheduler: { tenantMaxInFlight: 4 } });
    const outcomes: string[] = [];
    const burst = () =>
      Promise.all(
        Array.from({ length: 12 }, (_, i) =>
          mesh.inference.predict({ model: 'echo', input: `c${i}` }, as(KEYS.acme)).then(
            () => outcomes.push('OK'),
            (err: { code: number; details: string }) => outcomes.push(`${Status[err.code]}: ${err.details}`),
          ),
        ),
      );
    const peak = await peakConcurrency(mesh, async () => {
      for (let round = 0; round < 4; round++) await burst();
    });
    expect(peak, 'acme calls on the worker at once').to.be.at.most(4);
    expect(mesh.gateway.permits!.callsOnPermits, 'calls on permits').to.be.greaterThan(0);
    for (const o of outcomes) expect(o).to.be.oneOf(['OK', 'RESOURCE_EXHAUSTED: tenant "acme" has 4 requests in flight, its limit (--tenant-max-in-flight)']);
    // Another tenant is not held up by acme's permits.
    expect((await mesh.inference.predict({ model: 'echo', input: 'g' }, as(KEYS.globex))).text).to.equal('g');
  });

  it('the scheduler\'s slots bound the calls on permits too: under a burst beyond them, calls wait in its queue and the permits go back', async () => {
    mesh = await startMesh({ workers: [{ echoDelayMs: 30 }], maxInFlight: 4 });
    // Permits first: a few calls one after another.
    for (let i = 0; i < 3; i++) await mesh.inference.predict({ model: 'echo', input: `w${i}` });
    await until(() => mesh.scheduler.permits.held > 0, 5000, 'a permit');
    const revokedBefore = await metric(mesh.scheduler.metricsAddress, 'maas_scheduler_permits_total', { event: 'revoked' });
    const peak = await peakConcurrency(mesh, () => Promise.all(Array.from({ length: 24 }, (_, i) => collect(mesh.inference.generate({ model: 'echo', prompt: `b${i} two three`, maxTokens: 3 })))));
    expect(peak, 'calls on the worker at once').to.be.at.most(4);
    expect(await metric(mesh.scheduler.metricsAddress, 'maas_scheduler_permits_total', { event: 'revoked' })).to.be.greaterThan(revokedBefore);
  });

  it('a tenant\'s rate counts the calls on permits: its budget is charged ahead, and calls beyond the rate are refused', async () => {
    // 20/s with bursts of 10: a permit's budget is 1 call (a twentieth of a second), and half the
    // burst stays for the calls that go through the queue.
    mesh = await startMesh({ gateway: { apiKeys: keys }, scheduler: { tenantLimits: parseTenantOverrides('acme:rate=20,burst=10', (n) => TENANT_NAME_PATTERN.test(n)) } });
    const started = Date.now();
    let ok = 0;
    let refused = 0;
    for (let i = 0; i < 40; i++) {
      try {
        await mesh.inference.predict({ model: 'echo', input: `r${i}` }, as(KEYS.acme));
        ok++;
      } catch (err) {
        const e = err as { code: number; details: string };
        expect(Status[e.code]).to.equal('RESOURCE_EXHAUSTED');
        expect(e.details).to.match(/^tenant "acme" is over its request rate/);
        refused++;
      }
    }
    const seconds = (Date.now() - started) / 1000;
    expect(refused, 'calls refused').to.be.greaterThan(0);
    // The bucket: 10 at once, then 20 a second.
    expect(ok, `calls served in ${seconds} s`).to.be.at.most(10 + Math.ceil(20 * seconds) + 1);
    expect(mesh.gateway.permits!.callsOnPermits, 'calls on permits').to.be.greaterThan(0);
  });

  it('with the balancer gone, calls on permits go on, on the last routing state', async () => {
    mesh = await startMesh({ workers: [{}, {}] });
    await until(() => mesh.gateway.dispatcher!.balancerConnected, 5000, 'the gateway\'s dispatch stream');
    for (let i = 0; i < 3; i++) await mesh.inference.predict({ model: 'echo', input: `p${i}` });
    await until(() => mesh.gateway.permits!.heldFor('anonymous') > 0, 5000, 'a permit');
    await mesh.balancer.shutdown();
    await until(() => !mesh.gateway.dispatcher!.balancerConnected, 5000, 'the gateway to notice');
    const before = mesh.gateway.permits!.callsOnPermits;
    const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => mesh.inference.predict({ model: 'echo', input: `down${i}` })));
    expect(results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason))).to.deep.equal([]);
    expect(mesh.gateway.permits!.callsOnPermits - before).to.be.greaterThan(0);
  });

  it('a call on a permit that the client cancels stops on the worker within 100 ms, and its permit serves the next call', async () => {
    mesh = await startMesh({ workers: [{ echoDelayMs: 100 }] });
    for (let i = 0; i < 2; i++) await mesh.inference.predict({ model: 'echo', input: 'warm' });
    await until(() => mesh.gateway.permits!.heldFor('anonymous') > 0, 5000, 'a permit');
    const onPermits = mesh.gateway.permits!.callsOnPermits;
    const ended = new Promise<{ outcome: string }>((resolve) => mesh.workers[0].activity.once('task-end', resolve));
    const abort = new AbortController();
    const stream = mesh.inference.generate({ model: 'echo', prompt: 'one two three four five six seven eight', maxTokens: 8 }, { signal: abort.signal });
    const it = stream[Symbol.asyncIterator]();
    await it.next();
    expect(mesh.gateway.permits!.callsOnPermits, 'the call runs on a permit').to.equal(onPermits + 1);
    const abortedAt = performance.now();
    abort.abort();
    const err = await it.next().then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.name, 'the client sees its own abort').to.equal('AbortError');
    expect((await ended).outcome).to.equal('cancelled');
    // The contract of every path: a cancel reaches the model loop within 100 ms.
    expect(performance.now() - abortedAt).to.be.lessThan(100);
    const before = mesh.gateway.permits!.callsOnPermits;
    expect((await mesh.inference.predict({ model: 'echo', input: 'after' })).text).to.equal('after');
    expect(mesh.gateway.permits!.callsOnPermits).to.equal(before + 1);
  });

  it('a call on a permit whose deadline passes mid-stream ends DEADLINE_EXCEEDED and stops on the worker, and its permit serves the next call', async () => {
    mesh = await startMesh({ workers: [{ echoDelayMs: 50 }] });
    for (let i = 0; i < 2; i++) await mesh.inference.predict({ model: 'echo', input: 'warm' });
    await until(() => mesh.gateway.permits!.heldFor('anonymous') > 0, 5000, 'a permit');
    const onPermits = mesh.gateway.permits!.callsOnPermits;
    const ended = new Promise<{ outcome: string; chunks: number }>((resolve) => mesh.workers[0].activity.once('task-end', resolve));
    const prompt = Array.from({ length: 100 }, (_, i) => `w${i}`).join(' ');
    const err = await grpcError(collect(mesh.inference.generate({ model: 'echo', prompt, maxTokens: 100 }, { deadline: Date.now() + 300 })));
    expect(err.code).to.equal(Status.DEADLINE_EXCEEDED);
    expect(mesh.gateway.permits!.callsOnPermits, 'the call ran on a permit').to.equal(onPermits + 1);
    const end = await ended;
    expect(end.outcome).to.equal('cancelled');
    expect(end.chunks).to.be.lessThan(20);
    const before = mesh.gateway.permits!.callsOnPermits;
    expect((await mesh.inference.predict({ model: 'echo', input: 'after' })).text).to.equal('after');
    expect(mesh.gateway.permits!.callsOnPermits).to.equal(before + 1);
  });
});
