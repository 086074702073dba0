import { expect } from 'chai';
import { TENANT_NAME_PATTERN, tenantNameProblem } from '../../common/tenant.js';
import { RateLimiter, TenantCounter, TenantLimits, TenantLimitValues, TokenBucket, parseTenantOverrides } from '../../services/scheduler/tenant-limits.js';

const DEFAULTS: TenantLimitValues = { maxInFlight: 10, maxQueued: 5, maxActiveJobs: 3, maxWatches: 2, rate: 10, burst: 20 };
const isTenant = (name: string) => TENANT_NAME_PATTERN.test(name);

function errorMessageOf(run: () => unknown): string {
  try {
    run();
  } catch (err) {
    return (err as Error).message;
  }
  expect.fail('accepted');
}

describe('tenant names', () => {
  it('accepts lowercase letters, digits, - and _, up to 64 characters', () => {
    for (const name of ['acme', 'a', '0', 'acme-prod_2', 'x'.repeat(64), 'anonymous']) expect(tenantNameProblem(name), name).to.equal(null);
  });

  it('refuses anything that is not one safe path segment', () => {
    for (const name of ['', '.', '..', '../x', 'a/b', 'a\\b', 'Acme', 'a b', '-a', '_a', 'a.b', 'x'.repeat(65), 'a\0', 'é']) {
      expect(tenantNameProblem(name), JSON.stringify(name)).to.match(/^a tenant name must be 1 to 64 of a-z, 0-9/);
    }
  });

  it('echoes at most a short prefix of a long name', () => {
    const problem = tenantNameProblem('A'.repeat(10_000))!;
    expect(problem.length).to.be.lessThan(200);
    expect(problem).to.include('10000 characters');
  });
});

describe('tenant limits', () => {
  describe('parseTenantOverrides', () => {
    it('reads tenant:key=value,...;tenant:... into partial limits', () => {
      const o = parseTenantOverrides(' acme:rate=100,burst=200 ; globex:in_flight=32,queued=0,jobs=5,watches=1;', isTenant);
      expect([...o]).to.deep.equal([
        ['acme', { rate: 100, burst: 200 }],
        ['globex', { maxInFlight: 32, maxQueued: 0, maxActiveJobs: 5, maxWatches: 1 }],
      ]);
    });

    it('reads an empty spec as no overrides', () => {
      expect(parseTenantOverrides('', isTenant).size).to.equal(0);
    });

    const bad: Array<[string, string]> = [
      ['acme', 'entry 1: expected tenant:limit=value,..., with a valid tenant name'],
      ['../x:rate=1', 'entry 1: expected tenant:limit=value,..., with a valid tenant name'],
      ['acme:speed=1', 'entry 1 (acme): expected one of in_flight, queued, jobs, watches, rate, burst =value'],
      ['acme:rate=-1', 'entry 1 (acme): rate must be a number >= 0'],
      ['acme:burst=1.5', 'entry 1 (acme): burst must be an integer >= 0'],
      ['acme:jobs=', 'entry 1 (acme): jobs must be an integer >= 0'],
      ['acme:', 'entry 1 (acme): no limits given'],
      ['acme:rate=1;acme:burst=2', 'entry 2: tenant "acme" is given twice'],
    ];
    for (const [spec, message] of bad) {
      it(`refuses ${JSON.stringify(spec)}, saying which entry and what was expected`, () => {
        expect(errorMessageOf(() => parseTenantOverrides(spec, isTenant))).to.equal(message);
      });
    }
  });

  describe('TenantLimits', () => {
    it('gives each tenant the defaults with its own overrides on top', () => {
      const limits = new TenantLimits(DEFAULTS, parseTenantOverrides('acme:rate=100', isTenant));
      expect(limits.of('acme')).to.deep.equal({ ...DEFAULTS, rate: 100 });
      expect(limits.of('globex')).to.deep.equal(DEFAULTS);
      expect([limits.isOverridden('acme', 'rate'), limits.isOverridden('acme', 'burst'), limits.isOverridden('globex', 'rate')]).to.deep.equal([true, false, false]);
    });
  });

  describe('TokenBucket', () => {
    it('lets a burst through at once, then one request per 1/rate seconds', () => {
      const bucket = new TokenBucket(0, 3);
      expect([0, 0, 0, 0].map(() => bucket.take(0, 10, 3))).to.deep.equal([0, 0, 0, 100]);
      expect(bucket.take(50, 10, 3)).to.equal(50);
      expect(bucket.take(100, 10, 3)).to.equal(0);
      expect(bucket.take(100, 10, 3)).to.equal(100);
    });

    it('never holds more than the burst however long it idles', () => {
      const bucket = new TokenBucket(0, 2);
      bucket.take(0, 10, 2);
      const taken = [0, 0, 0].map(() => bucket.take(3_600_000, 10, 2));
      expect(taken).to.deep.equal([0, 0, 100]);
    });
  });

  describe('RateLimiter', () => {
    it('keeps one bucket per tenant: one tenant at its rate does not slow another', () => {
      let now = 0;
      const limiter = new RateLimiter(() => ({ rate: 1, burst: 2 }), () => now);
      expect([limiter.take('acme'), limiter.take('acme'), limiter.take('acme')]).to.deep.equal([0, 0, 1000]);
      expect(limiter.take('globex')).to.equal(0);
      now = 1000;
      expect(limiter.take('acme')).to.equal(0);
    });

    it('takes up to n tokens at once, leaving what it is asked to keep, and refunds no more than the burst', () => {
      let now = 0;
      const limiter = new RateLimiter(() => ({ rate: 10, burst: 20 }), () => now);
      // 20 in the bucket, 8 kept: 12 taken of the 15 asked for, then none.
      expect(limiter.takeUpTo('acme', 15, 8)).to.equal(12);
      expect(limiter.takeUpTo('acme', 15, 8)).to.equal(0);
      // The 8 kept are there for single takes.
      expect(Array.from({ length: 9 }, () => limiter.take('acme'))).to.deep.equal([0, 0, 0, 0, 0, 0, 0, 0, 100]);
      // 0.5 s refills 5, of which 1 whole token is above the 4 kept here.
      now = 500;
      expect(limiter.takeUpTo('acme', 10, 4)).to.equal(1);
      limiter.refund('acme', 100);
      expect(limiter.takeUpTo('acme', 100)).to.equal(20);
      // No rate limit: everything asked for.
      expect(new RateLimiter(() => ({ rate: 0, burst: 1 }), () => 0).takeUpTo('acme', 64, 1)).to.equal(64);
    });

    it('does not limit a tenant whose rate is 0', () => {
      const limiter = new RateLimiter(() => ({ rate: 0, burst: 1 }), () => 0);
      expect(Array.from({ length: 1000 }, () => limiter.take('acme')).every((w) => w === 0)).to.equal(true);
      expect(limiter.size).to.equal(0);
    });

    it('forgets the buckets of idle tenants once it holds many, so names cannot grow it without end', () => {
      let now = 0;
      const limiter = new RateLimiter(() => ({ rate: 1000, burst: 10 }), () => now);
      for (let i = 0; i < 10_000; i++) limiter.take(`t${i}`);
      now = 1000;
      limiter.take('one-more');
      expect(limiter.size).to.equal(1);
    });

    it('does not scan every bucket for each new tenant when a flood keeps all of them below full', () => {
      let lookups = 0;
      const limiter = new RateLimiter(() => {
        lookups++;
        return { rate: 1, burst: 1 };
      }, () => 0);
      // Each tenant takes its only token at time 0: no bucket is ever full again, none can be forgotten.
      const tenants = 40_000;
      for (let i = 0; i < tenants; i++) limiter.take(`t${i}`);
      expect(limiter.size).to.equal(tenants);
      // One lookup per take, plus one per bucket at each prune (10k, 20k): not one scan per tenant past 10k.
      expect(lookups).to.be.below(3 * tenants);
    });
  });

  describe('TenantCounter', () => {
    it('counts per tenant up to the limit and gives back on release', () => {
      const c = new TenantCounter();
      expect([c.tryAcquire('acme', 2), c.tryAcquire('acme', 2), c.tryAcquire('acme', 2), c.tryAcquire('globex', 2)]).to.deep.equal([true, true, false, true]);
      c.release('acme');
      expect([c.count('acme'), c.tryAcquire('acme', 2), c.count('acme')]).to.deep.equal([1, true, 2]);
    });
  });
});
