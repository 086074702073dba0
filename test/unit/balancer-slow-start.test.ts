import { expect } from 'chai';
import { mulberry32 } from '../../common/random';
import { type Candidate, createPolicy, type PolicyName } from '../../services/balancer/policy.js';
import { SlowStart, slowStartWeight } from '../../services/balancer/slow-start.js';

describe('balancer slow start', () => {
  it('ramps linearly from 0.1 at the start to 1 after 10 s, and stays at 1', () => {
    expect(slowStartWeight(0)).to.equal(0.1);
    expect(slowStartWeight(2_500)).to.be.closeTo(0.325, 1e-12);
    expect(slowStartWeight(5_000)).to.be.closeTo(0.55, 1e-12);
    expect(slowStartWeight(9_999)).to.be.below(1);
    expect(slowStartWeight(10_000)).to.equal(1);
    expect(slowStartWeight(60_000)).to.equal(1);
  });

  it('holds the minimum before the start (a clock that went back)', () => {
    expect(slowStartWeight(-500)).to.equal(0.1);
  });

  it('follows a configured window and minimum; a 0 window turns the ramp off', () => {
    expect(slowStartWeight(1_000, { windowMs: 2_000, minWeight: 0.5 })).to.be.closeTo(0.75, 1e-12);
    expect(slowStartWeight(0, { windowMs: 0 })).to.equal(1);
  });

  it('gives weight 1 to a worker that never began a ramp', () => {
    expect(new SlowStart().weight('unknown', 123)).to.equal(1);
  });

  it('ramps each worker from the time it joined, and ends the ramp after the window', () => {
    const ramp = new SlowStart();
    ramp.begin('a', 1_000);
    ramp.begin('b', 6_000);
    expect(ramp.weight('a', 6_000)).to.be.closeTo(0.55, 1e-12);
    expect(ramp.weight('b', 6_000)).to.equal(0.1);
    expect(ramp.ramping('a', 6_000)).to.equal(true);
    expect(ramp.weight('a', 11_000)).to.equal(1);
    expect(ramp.ramping('a', 11_000)).to.equal(false);
    expect(ramp.weight('b', 11_000)).to.be.closeTo(0.55, 1e-12);
  });

  it('starts the ramp again for a worker that returns (from ejection or a restart)', () => {
    const ramp = new SlowStart();
    ramp.begin('a', 0);
    expect(ramp.weight('a', 20_000)).to.equal(1);
    ramp.begin('a', 30_000);
    expect(ramp.weight('a', 30_000)).to.equal(0.1);
    expect(ramp.weight('a', 35_000)).to.be.closeTo(0.55, 1e-12);
  });

  it('forgets a worker that left', () => {
    const ramp = new SlowStart();
    ramp.begin('a', 0);
    ramp.forget('a');
    expect(ramp.weight('a', 0)).to.equal(1);
  });

  it('rejects a negative window and a minimum weight outside (0, 1]', () => {
    expect(() => new SlowStart({ windowMs: -1 })).to.throw(RangeError, 'windowMs must be a finite number >= 0, given -1');
    expect(() => new SlowStart({ minWeight: 0 })).to.throw(RangeError, 'minWeight must be in (0, 1], given 0');
    expect(() => slowStartWeight(0, { minWeight: 1.5 })).to.throw(RangeError, 'given 1.5');
  });

  describe('with the policies', () => {
    /**
     * Share of 10,000 requests that goes to a new worker ("new") at a point of its ramp, among 4
     * warm ones of the same latency. Requests arrive 8 at a time and all finish before the next 8.
     */
    function newWorkerShare(name: PolicyName, atMs: number): number {
      const ramp = new SlowStart();
      ramp.begin('new', 0);
      const policy = createPolicy(name, mulberry32(60));
      const ids = ['w0', 'w1', 'w2', 'w3', 'new'];
      let toNew = 0;
      for (let round = 0; round < 1_250; round++) {
        const outstanding = new Map(ids.map((id) => [id, 0]));
        for (let i = 0; i < 8; i++) {
          const list: Candidate[] = ids.map((id) => ({ id, outstanding: outstanding.get(id)!, ewmaMs: 10, capacity: 4, weight: ramp.weight(id, atMs) }));
          const chosen = policy.pick('m', list)!;
          outstanding.set(chosen.id, outstanding.get(chosen.id)! + 1);
          if (chosen.id === 'new') toNew++;
        }
      }
      return toNew / 10_000;
    }

    it('p2c_ewma: a new worker share grows along its ramp and reaches an even share at its end', () => {
      const shares = [0, 2_500, 5_000, 10_000].map((at) => newWorkerShare('p2c_ewma', at));
      expect(shares[0]).to.be.below(0.05);
      expect(shares[0]).to.be.below(shares[1]!);
      expect(shares[1]).to.be.below(shares[2]!);
      expect(shares[2]).to.be.below(shares[3]!);
      expect(shares[3]).to.be.closeTo(0.2, 0.02);
    });

    it('weighted: a new worker share is its weight times an even share', () => {
      // Weights 1, 1, 1, 1 and w: the new worker gets w / (4 + w).
      expect(newWorkerShare('weighted', 0)).to.be.closeTo(0.1 / 4.1, 0.002);
      expect(newWorkerShare('weighted', 5_000)).to.be.closeTo(0.55 / 4.55, 0.002);
      expect(newWorkerShare('weighted', 10_000)).to.be.closeTo(0.2, 0.002);
    });

    it('round_robin and random ignore the weight', () => {
      expect(newWorkerShare('round_robin', 0)).to.be.closeTo(0.2, 0.001);
      expect(newWorkerShare('random', 0)).to.be.closeTo(0.2, 0.02);
    });
  });
});
