import { expect } from 'chai';
import { MeshError } from '../../common/errors.js';
import { PermitGrant, PermitsRequest, PermitsResponse } from '../../generated/maas/internal/v1/scheduler.js';
import { MAX_BUDGET, MAX_PERMITS_PER_TENANT, PermitDesk, PermitEvent } from '../../services/scheduler/permits.js';
import { AdmissionQueue } from '../../services/scheduler/queue.js';
import { RateLimiter, TenantLimitValues } from '../../services/scheduler/tenant-limits.js';

/** An async iterable the test writes to: the gateway's side of a Permits stream. */
class Requests implements AsyncIterable<PermitsRequest> {
  private readonly items: PermitsRequest[] = [];
  private wake: (() => void) | undefined;
  private ended = false;

  send(request: Partial<PermitsRequest>) {
    this.items.push({ asks: [], usage: [], ends: [], ...request });
    this.wake?.();
  }

  end() {
    this.ended = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator]() {
    for (;;) {
      const item = this.items.shift();
      if (item) {
        yield item;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}

interface Limits {
  maxInFlight?: number;
  tenant?: Partial<TenantLimitValues>;
}

/** A desk over a real queue and rate limiter, time standing still unless moved. */
function setUp(o: Limits = {}) {
  const maxInFlight = o.maxInFlight ?? 16;
  const tenantLimits: TenantLimitValues = { maxInFlight: 512, maxQueued: 256, maxActiveJobs: 20, maxWatches: 64, rate: 0, burst: 2000, ...o.tenant };
  const queue = new AdmissionQueue({ maxInFlight, maxQueued: 100, tenantLimits: () => tenantLimits });
  let now = 1_000_000;
  const rates = new RateLimiter(() => tenantLimits, () => now);
  const events: Partial<Record<PermitEvent, number>> = {};
  const desk = new PermitDesk({
    queue,
    maxInFlight,
    limitsOf: () => tenantLimits,
    // As the scheduler wires it: half the burst stays for the calls that go through the queue.
    takeRateTokens: (tenant, n) => rates.takeUpTo(tenant, n, tenantLimits.burst / 2),
    refundRateTokens: (tenant, n) => rates.refund(tenant, n),
    onEvent: (event, n) => (events[event] = (events[event] ?? 0) + n),
  });
  const abort = new AbortController();
  const requests = new Requests();
  const responses = desk.serve(requests, abort.signal)[Symbol.asyncIterator]();
  const received: PermitsResponse[] = [];
  /** The next response of the stream (the first is the empty one that says it is up). */
  const next = async (): Promise<PermitsResponse> => {
    const r = await responses.next();
    if (r.done) throw new Error('the stream ended');
    received.push(r.value);
    return r.value;
  };
  return { queue, rates, desk, requests, next, events, abort, responses, tenantLimits, advance: (ms: number) => (now += ms) };
}

/** Lets `n` turns of the event loop pass (each flush of the desk runs at the end of one). */
async function turns(n: number) {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
}

const ids = (grants: PermitGrant[]) => grants.map((g) => g.permitId);

describe('scheduler permits (admission granted ahead)', () => {
  it('says the stream is up, then grants what a tenant asks for, each permit a real slot of the queue', async () => {
    const t = setUp();
    expect(await t.next()).to.deep.equal({ grants: [], renewals: [], revoked: [] });
    t.requests.send({ asks: [{ tenant: 'acme', permits: 3 }] });
    const r = await t.next();
    expect(r.grants.map((g) => g.tenant)).to.deep.equal(['acme', 'acme', 'acme']);
    expect(new Set(ids(r.grants)).size).to.equal(3);
    expect(r.grants.every((g) => g.calls === MAX_BUDGET)).to.equal(true);
    expect(t.queue.inFlight).to.equal(3);
    expect(t.queue.tenantUsage('acme').open).to.equal(3);
    expect(t.desk.held).to.equal(3);
    expect(t.events.granted).to.equal(3);
  });

  it('grants only while at most half of --max-in-flight is taken', async () => {
    const t = setUp({ maxInFlight: 8 });
    await t.next();
    const running = await t.queue.admitOrReject({ priority: 'normal', tenant: 'other' });
    t.requests.send({ asks: [{ tenant: 'acme', permits: 10 }] });
    const r = await t.next();
    // 1 running call + 3 permits = 4 of 8 slots.
    expect(r.grants).to.have.length(3);
    expect(t.queue.inFlight).to.equal(4);
    // A slot freed: one more permit follows, still no more than half.
    running.release();
    t.desk.slotsFreed();
    expect((await t.next()).grants).to.have.length(1);
    expect(t.queue.inFlight).to.equal(4);
  });

  it('grants a tenant no more than half of its in-flight limit', async () => {
    const t = setUp({ tenant: { maxInFlight: 5 } });
    await t.next();
    t.requests.send({ asks: [{ tenant: 'acme', permits: 10 }, { tenant: 'globex', permits: 1 }] });
    const r = await t.next();
    expect(r.grants.filter((g) => g.tenant === 'acme')).to.have.length(2);
    expect(r.grants.filter((g) => g.tenant === 'globex')).to.have.length(1);
  });

  it('grants nothing while every slot is taken and calls wait, and grants once slots are free', async () => {
    const t = setUp({ maxInFlight: 2 });
    await t.next();
    const a = await t.queue.admitOrReject({ priority: 'normal', tenant: 'other' });
    const b = await t.queue.admitOrReject({ priority: 'normal', tenant: 'other' });
    const waiting = t.queue.admitOrReject({ priority: 'normal', tenant: 'other' });
    t.requests.send({ asks: [{ tenant: 'acme', permits: 1 }] });
    await turns(3);
    expect(t.queue.queued).to.equal(1);
    expect(t.desk.held).to.equal(0);
    a.release();
    (await waiting).release();
    b.release();
    t.desk.slotsFreed();
    expect((await t.next()).grants).to.have.length(1);
  });

  it('charges a budget of rate tokens ahead, leaving half the burst to calls through the queue, renews what a report says was used, and refunds what a permit never used', async () => {
    // 100/s: a budget is a twentieth of a second, 5 calls; the bucket holds 20, of which 10 stay.
    const t = setUp({ tenant: { rate: 100, burst: 20 } });
    await t.next();
    t.requests.send({ asks: [{ tenant: 'acme', permits: 3 }] });
    const r = await t.next();
    expect(r.grants.map((g) => g.calls)).to.deep.equal([5, 5]);
    // The tenant's own calls through the queue still have their half.
    expect(t.rates.takeUpTo('acme', 100)).to.equal(10);
    // The first permit ran 3 calls: renewed by 3 once 3 tokens above the half have come back.
    t.rates.refund('acme', 10);
    t.advance(30);
    const [first, second] = ids(r.grants);
    t.requests.send({ usage: [{ permitId: first, calls: 3, busyUs: 3000 }] });
    const renewal = await t.next();
    expect(renewal.renewals).to.deep.equal([{ permitId: first, tenant: '', calls: 3 }]);
    expect(t.events.calls).to.equal(3);
    expect(t.queue.serviceTime.valueMs).to.equal(1);
    // The second permit goes back unused: its 5 tokens are the tenant's again, and with them a
    // new permit follows (the ask is still 3).
    t.requests.send({ ends: [{ permitId: second, calls: 0, busyUs: 0 }] });
    expect((await t.next()).grants.map((g) => g.calls)).to.deep.equal([5]);
    expect(t.events.returned).to.equal(1);
  });

  it('revokes a permit whose tenant has no tokens left to renew it', async () => {
    const t = setUp({ tenant: { rate: 100, burst: 10 } });
    await t.next();
    t.requests.send({ asks: [{ tenant: 'acme', permits: 1 }] });
    const [grant] = (await t.next()).grants;
    expect(grant.calls).to.equal(5);
    t.requests.send({ usage: [{ permitId: grant.permitId, calls: 5, busyUs: 5000 }] });
    expect((await t.next()).revoked).to.deep.equal([grant.permitId]);
  });

  it('revokes every permit when a call is about to wait, or one tenant\'s when it is at its limit', async () => {
    const t = setUp();
    await t.next();
    t.requests.send({ asks: [{ tenant: 'acme', permits: 2 }, { tenant: 'globex', permits: 1 }] });
    const r = await t.next();
    const globex = r.grants.filter((g) => g.tenant === 'globex').map((g) => g.permitId);
    t.desk.reclaim('globex');
    expect((await t.next()).revoked).to.deep.equal(globex);
    t.desk.reclaim();
    // Each permit is revoked once.
    expect((await t.next()).revoked.sort()).to.deep.equal(r.grants.filter((g) => g.tenant === 'acme').map((g) => g.permitId).sort());
    expect(t.events.revoked).to.equal(3);
    // Revoked permits still hold their slots until the gateway gives them back.
    expect(t.queue.inFlight).to.equal(3);
    t.requests.send({ asks: [{ tenant: 'acme', permits: 0 }, { tenant: 'globex', permits: 0 }], ends: r.grants.map((g) => ({ permitId: g.permitId, calls: 1, busyUs: 10 })) });
    await turns(3);
    expect(t.queue.inFlight).to.equal(0);
    expect(t.desk.held).to.equal(0);
  });

  it('releases every slot a stream held, and refunds their budgets, when the stream ends', async () => {
    const t = setUp({ tenant: { rate: 1000, burst: 200 } });
    await t.next();
    t.requests.send({ asks: [{ tenant: 'acme', permits: 2 }] });
    expect((await t.next()).grants.map((g) => g.calls)).to.deep.equal([50, 50]);
    expect(t.queue.inFlight).to.equal(2);
    t.abort.abort();
    expect((await t.responses.next()).done).to.equal(true);
    expect(t.queue.inFlight).to.equal(0);
    expect(t.queue.tenantUsage('acme').open).to.equal(0);
    expect(t.desk.held).to.equal(0);
    expect(t.rates.takeUpTo('acme', 1000)).to.equal(200);
  });

  it('ends the stream with INVALID_ARGUMENT for a tenant name that is not one, and releases what it held', async () => {
    const t = setUp();
    await t.next();
    t.requests.send({ asks: [{ tenant: 'acme', permits: 1 }] });
    await t.next();
    t.requests.send({ asks: [{ tenant: '../etc', permits: 1 }] });
    const err = await t.responses.next().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(MeshError);
    expect((err as MeshError).kind).to.equal('invalid_argument');
    expect((err as MeshError).message).to.match(/^asks: tenant a tenant name must be/);
    expect(t.queue.inFlight).to.equal(0);
  });

  it('bounds what a gateway may ask for and report: asks clamp, unknown ids are ignored, calls beyond a budget count as the budget', async () => {
    const t = setUp({ maxInFlight: 100_000 });
    await t.next();
    t.requests.send({ asks: [{ tenant: 'acme', permits: 4_000_000_000 }] });
    const r = await t.next();
    expect(r.grants).to.have.length(MAX_PERMITS_PER_TENANT);
    const [first] = ids(r.grants);
    t.requests.send({ usage: [{ permitId: 999_999, calls: 5, busyUs: 1 }], ends: [{ permitId: 424_242, calls: 1, busyUs: 1 }] });
    t.requests.send({ usage: [{ permitId: first, calls: 4_000_000_000, busyUs: Number.MAX_SAFE_INTEGER }] });
    const renewal = await t.next();
    expect(renewal.renewals).to.deep.equal([{ permitId: first, tenant: '', calls: MAX_BUDGET }]);
    expect(t.events.calls).to.equal(MAX_BUDGET);
    expect(t.queue.serviceTime.valueMs).to.be.lessThanOrEqual(3_600_000);
    expect(t.desk.held).to.equal(MAX_PERMITS_PER_TENANT);
  });

  it('forgets a tenant that asks for none, and grants a closed desk nothing', async () => {
    const t = setUp();
    await t.next();
    t.requests.send({ asks: [{ tenant: 'acme', permits: 1 }] });
    const [grant] = (await t.next()).grants;
    t.requests.send({ asks: [{ tenant: 'acme', permits: 0 }], ends: [{ permitId: grant.permitId, calls: 0, busyUs: 0 }] });
    t.desk.close();
    t.requests.send({ asks: [{ tenant: 'globex', permits: 1 }] });
    t.requests.end();
    expect((await t.responses.next()).done).to.equal(true);
    expect(t.queue.inFlight).to.equal(0);
    expect(t.events.granted).to.equal(1);
  });
});
