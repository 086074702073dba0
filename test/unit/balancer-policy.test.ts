import { expect } from 'chai';
import { mulberry32 } from '../../common/random';
import { PeakEwma } from '../../services/balancer/ewma.js';
import { type Candidate, createPolicy, MUCH_SLOWER_FACTOR, type PickOptions, type Policy, type PolicyName, POLICY_NAMES, STALE_ESTIMATE_DECAY_MS } from '../../services/balancer/policy.js';

/** A seeded generator, so every run draws the same numbers. */
const seededRandom = mulberry32;

function workers(...outstanding: number[]): Candidate[] {
  return outstanding.map((load, i) => ({ id: `w${i}`, outstanding: load }));
}

/** Picks `n` times against a fixed list and counts the picks per worker id. */
function countPicks(pick: () => Candidate | undefined, n: number): Map<string, number> {
  const counts = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const chosen = pick();
    if (chosen === undefined) throw new Error('policy picked nothing from a non-empty list');
    counts.set(chosen.id, (counts.get(chosen.id) ?? 0) + 1);
  }
  return counts;
}

describe('balancer policies', () => {
  describe('createPolicy', () => {
    it('creates every policy in POLICY_NAMES under its own name', () => {
      expect([...POLICY_NAMES].sort()).to.deep.equal(['consistent_hash', 'least_outstanding', 'p2c', 'p2c_ewma', 'random', 'round_robin', 'weighted']);
      for (const name of POLICY_NAMES) expect(createPolicy(name).name).to.equal(name);
    });

    it('rejects an unknown name, listing the known ones', () => {
      expect(() => createPolicy('fastest' as PolicyName)).to.throw(
        RangeError,
        'policy must be one of round_robin, random, least_outstanding, p2c, p2c_ewma, weighted, consistent_hash, given "fastest"',
      );
    });

    for (const name of POLICY_NAMES) {
      it(`${name}: picks nothing from an empty list and the only candidate from a list of one`, () => {
        const policy = createPolicy(name, seededRandom(1));
        expect(policy.pick('m', [])).to.equal(undefined);
        const only = { id: 'solo', outstanding: 99 };
        for (let i = 0; i < 5; i++) expect(policy.pick('m', [only])).to.equal(only);
      });

      it(`${name}: always picks a member of the list and leaves the list as it was`, () => {
        const policy = createPolicy(name, seededRandom(2));
        const list = Object.freeze(workers(3, 1, 4, 1, 5));
        const copy = JSON.stringify(list);
        for (let i = 0; i < 200; i++) expect(list).to.include(policy.pick('m', list));
        expect(JSON.stringify(list)).to.equal(copy);
      });

      it(`${name}: with affinity keys and every optional field set, still picks a member and leaves the list as it was`, () => {
        const policy = createPolicy(name, seededRandom(16));
        const list = Object.freeze(
          [3, 1, 4, 1, 5].map((load, i) => Object.freeze({ id: `w${i}`, outstanding: load, ewmaMs: 10 * (i + 1), capacity: i + 1, weight: 0.2 * (i + 1) })),
        );
        const copy = JSON.stringify(list);
        for (let i = 0; i < 200; i++) expect(list).to.include(policy.pick('m', list, { affinityKey: `session-${i % 7}` }));
        expect(JSON.stringify(list)).to.equal(copy);
      });
    }

    for (const name of POLICY_NAMES.filter((n) => n !== 'consistent_hash')) {
      it(`${name}: ignores the affinity key (same picks with and without one)`, () => {
        const list = [3, 1, 4, 1, 5].map((load, i) => ({ id: `w${i}`, outstanding: load, ewmaMs: 10 + i, capacity: 1 + (i % 3) }));
        const withKey = createPolicy(name, seededRandom(17));
        const withoutKey = createPolicy(name, seededRandom(17));
        const a = Array.from({ length: 100 }, (_, i) => withKey.pick('m', list, { affinityKey: `k${i}` })!.id);
        const b = Array.from({ length: 100 }, () => withoutKey.pick('m', list)!.id);
        expect(a).to.deep.equal(b);
      });
    }

    it('rejects options out of range, naming the option', () => {
      expect(() => createPolicy('p2c_ewma', Math.random, { latencyPriorMs: -1 })).to.throw(RangeError, 'latencyPriorMs must be a finite number >= 0, given -1');
      expect(() => createPolicy('consistent_hash', Math.random, { loadFactor: 0.9 })).to.throw(RangeError, 'loadFactor must be a number >= 1, given 0.9');
      expect(() => createPolicy('consistent_hash', Math.random, { virtualNodes: 0 })).to.throw(RangeError, 'virtualNodes must be an integer >= 1, given 0');
    });
  });

  describe('round_robin', () => {
    it('gives each of N candidates exactly k picks over k*N picks', () => {
      for (const n of [2, 3, 5, 8]) {
        const policy = createPolicy('round_robin', seededRandom(n));
        const list = workers(...Array<number>(n).fill(0));
        const counts = countPicks(() => policy.pick('m', list), 7 * n);
        expect([...counts.values()], `n=${n}`).to.deep.equal(Array<number>(n).fill(7));
      }
    });

    it('keeps a cursor per key, so picks for one model do not skew another', () => {
      const policy = createPolicy('round_robin', seededRandom(3));
      const list = workers(0, 0, 0);
      const counts = new Map<string, number>();
      for (let i = 0; i < 30; i++) {
        // Interleave an unrelated model's picks (two at a time) with the one under test.
        policy.pick('other', list);
        policy.pick('other', list);
        const chosen = policy.pick('m', list)!;
        counts.set(chosen.id, (counts.get(chosen.id) ?? 0) + 1);
      }
      expect([...counts.values()]).to.deep.equal([10, 10, 10]);
    });

    it('stays even after the list grows or shrinks (order stable)', () => {
      const policy = createPolicy('round_robin', seededRandom(4));
      const five = workers(0, 0, 0, 0, 0);
      countPicks(() => policy.pick('m', five.slice(0, 3)), 4);
      expect([...countPicks(() => policy.pick('m', five), 25).values()]).to.deep.equal([5, 5, 5, 5, 5]);
      expect([...countPicks(() => policy.pick('m', five.slice(0, 2)), 10).values()]).to.deep.equal([5, 5]);
      expect([...countPicks(() => policy.pick('m', five.slice(0, 4)), 12).values()]).to.deep.equal([3, 3, 3, 3]);
    });

    it('visits the candidates in list order, one after another', () => {
      const policy = createPolicy('round_robin', seededRandom(5));
      const list = workers(0, 0, 0, 0);
      const first = Number(policy.pick('m', list)!.id.slice(1));
      const next = Array.from({ length: 7 }, () => policy.pick('m', list)!.id);
      expect(next).to.deep.equal(Array.from({ length: 7 }, (_, i) => `w${(first + 1 + i) % 4}`));
    });

    it('starts each new model at a random place, so first picks do not all land on the first worker', () => {
      const policy = createPolicy('round_robin', seededRandom(15));
      const list = workers(0, 0, 0, 0);
      let model = 0;
      const counts = countPicks(() => policy.pick(`model-${model++}`, list), 400);
      expect(counts.size).to.equal(4);
      for (const count of counts.values()) expect(count).to.be.within(50, 150);
    });

    it('ignores outstanding counts', () => {
      const policy = createPolicy('round_robin', seededRandom(6));
      const list = workers(0, 100, 0);
      expect(countPicks(() => policy.pick('m', list), 30).get('w1')).to.equal(10);
    });
  });

  describe('random', () => {
    it('picks every candidate and spreads picks uniformly (chi-square, 4 degrees of freedom)', () => {
      const policy = createPolicy('random', seededRandom(42));
      const list = workers(0, 0, 0, 0, 0);
      const picks = 10_000;
      const counts = countPicks(() => policy.pick('m', list), picks);
      expect(counts.size).to.equal(5);
      const expected = picks / 5;
      let chiSquare = 0;
      for (const observed of counts.values()) chiSquare += (observed - expected) ** 2 / expected;
      // 20 is far out in the tail for 4 degrees of freedom (p < 0.001); a fair pick lands near 4.
      expect(chiSquare).to.be.below(20);
    });

    it('is not round robin: with a seeded generator its sequence is not a fixed rotation', () => {
      const policy = createPolicy('random', seededRandom(7));
      const list = workers(0, 0, 0);
      const ids = Array.from({ length: 30 }, () => policy.pick('m', list)!.id);
      const repeats = ids.filter((id, i) => i > 0 && id === ids[i - 1]).length;
      expect(repeats).to.be.greaterThan(0);
    });

    it('stays in range at the extremes of the generator, even a faulty one that returns 1', () => {
      const list = workers(0, 0, 0);
      expect(createPolicy('random', () => 0).pick('m', list)).to.equal(list[0]);
      expect(createPolicy('random', () => 0.9999999999).pick('m', list)).to.equal(list[2]);
      for (const name of POLICY_NAMES) expect(list, name).to.include(createPolicy(name, () => 1).pick('m', list));
    });
  });

  describe('least_outstanding', () => {
    it('picks the candidate with the fewest outstanding requests, wherever it sits in the list', () => {
      for (const loads of [
        [5, 3, 9, 1],
        [1, 3, 9, 5],
        [9, 9, 9, 0],
      ]) {
        const policy = createPolicy('least_outstanding', seededRandom(8));
        const list = workers(...loads);
        const min = Math.min(...loads);
        for (let i = 0; i < 20; i++) expect(policy.pick('m', list)!.outstanding).to.equal(min);
      }
    });

    it('rotates among tied candidates instead of always taking the first', () => {
      const policy = createPolicy('least_outstanding', seededRandom(9));
      const list = workers(2, 0, 7, 0, 0);
      const counts = countPicks(() => policy.pick('m', list), 30);
      expect(Object.fromEntries(counts)).to.deep.equal({ w1: 10, w3: 10, w4: 10 });
    });

    it('spreads a burst evenly when the balancer counts each pick as outstanding', () => {
      const policy = createPolicy('least_outstanding', seededRandom(10));
      const loads = [0, 0, 0, 0];
      for (let i = 0; i < 40; i++) {
        const chosen = policy.pick('m', workers(...loads))!;
        loads[Number(chosen.id.slice(1))]!++;
      }
      expect(loads).to.deep.equal([10, 10, 10, 10]);
    });
  });

  describe('p2c', () => {
    it('with two candidates, always picks the one with fewer outstanding', () => {
      const policy = createPolicy('p2c', seededRandom(11));
      for (const loads of [
        [1, 2],
        [2, 1],
        [0, 50],
        [50, 0],
      ]) {
        const list = workers(...loads);
        const lighter = loads[0]! < loads[1]! ? list[0] : list[1];
        for (let i = 0; i < 200; i++) expect(policy.pick('m', list)).to.equal(lighter);
      }
    });

    it('never picks the most loaded of three when the other two have fewer outstanding', () => {
      const policy = createPolicy('p2c', seededRandom(12));
      for (const loads of [
        [9, 1, 2],
        [1, 9, 2],
        [1, 2, 9],
        [3, 3, 4],
      ]) {
        const list = workers(...loads);
        const worst = list[loads.indexOf(Math.max(...loads))]!;
        const counts = countPicks(() => policy.pick('m', list), 1000);
        expect(counts.get(worst.id) ?? 0, `loads ${loads.join(',')}`).to.equal(0);
      }
    });

    it('breaks ties at random, so two equally loaded candidates share the picks', () => {
      const policy = createPolicy('p2c', seededRandom(13));
      const list = workers(4, 4);
      const counts = countPicks(() => policy.pick('m', list), 2000);
      expect(counts.get('w0')).to.be.within(800, 1200);
      expect(counts.get('w1')).to.be.within(800, 1200);
    });

    it('sends far fewer picks to a heavily loaded worker than random does', () => {
      // One worker is stuck: its requests never finish. The others finish theirs before the next pick.
      function simulate(name: PolicyName): number {
        const policy = createPolicy(name, seededRandom(14));
        const loads = [0, 0, 0, 0, 0];
        const stuck = 2;
        let toStuck = 0;
        for (let i = 0; i < 5000; i++) {
          const chosen = policy.pick('m', workers(...loads))!;
          const index = Number(chosen.id.slice(1));
          loads[index]!++;
          if (index === stuck) toStuck++;
          for (let w = 0; w < loads.length; w++) if (w !== stuck) loads[w] = 0;
        }
        return toStuck;
      }
      const random = simulate('random');
      const p2c = simulate('p2c');
      expect(random).to.be.above(800);
      expect(p2c).to.be.below(random / 20);
    });
  });
  describe('slow-start weight in least_outstanding and p2c', () => {
    it('least_outstanding: a ramping worker counts as more loaded, by (outstanding + 1) / weight', () => {
      const policy = createPolicy('least_outstanding', seededRandom(20));
      // (0 + 1) / 0.25 = 4 > (2 + 1) / 1 = 3: the warm worker with two in flight still wins.
      const list: Candidate[] = [
        { id: 'ramping', outstanding: 0, weight: 0.25 },
        { id: 'warm', outstanding: 2 },
      ];
      for (let i = 0; i < 20; i++) expect(policy.pick('m', list)!.id).to.equal('warm');
      // (0 + 1) / 0.25 = 4 < (4 + 1) / 1 = 5: past that, the ramping worker gets the request.
      const busier: Candidate[] = [list[0]!, { id: 'warm', outstanding: 4 }];
      for (let i = 0; i < 20; i++) expect(policy.pick('m', busier)!.id).to.equal('ramping');
    });

    it('p2c: a ramping worker loses to a warm one until the warm one has (1 / weight) - 1 more in flight', () => {
      const policy = createPolicy('p2c', seededRandom(21));
      const ramping = { id: 'ramping', outstanding: 0, weight: 0.1 };
      for (let i = 0; i < 100; i++) expect(policy.pick('m', [ramping, { id: 'warm', outstanding: 8 }])!.id).to.equal('warm');
      for (let i = 0; i < 100; i++) expect(policy.pick('m', [ramping, { id: 'warm', outstanding: 10 }])!.id).to.equal('ramping');
    });
  });

  describe('p2c_ewma', () => {
    function ewmaWorkers(...specs: [ewmaMs: number | undefined, outstanding: number][]): Candidate[] {
      return specs.map(([ewmaMs, outstanding], i) => ({ id: `w${i}`, outstanding, ...(ewmaMs === undefined ? {} : { ewmaMs }) }));
    }

    it('with two candidates at equal outstanding, always picks the lower EWMA latency', () => {
      const policy = createPolicy('p2c_ewma', seededRandom(30));
      for (const load of [0, 3]) {
        const list = ewmaWorkers([40, load], [10, load]);
        for (let i = 0; i < 200; i++) expect(policy.pick('m', list)!.id).to.equal('w1');
      }
    });

    it('weighs latency by outstanding + 1: a fast worker with many in flight loses to an idle slower one (within MUCH_SLOWER_FACTOR of it)', () => {
      const policy = createPolicy('p2c_ewma', seededRandom(31));
      expect(MUCH_SLOWER_FACTOR).to.equal(2);
      // 10 ms × (1 + 1) = 20 > 15 ms × 1 = 15: the slower, idle worker wins.
      for (let i = 0; i < 100; i++) expect(policy.pick('m', ewmaWorkers([10, 1], [15, 0]))!.id).to.equal('w1');
      // 10 ms × (0 + 1) = 10 < 15: the fast worker wins.
      for (let i = 0; i < 100; i++) expect(policy.pick('m', ewmaWorkers([10, 0], [15, 0]))!.id).to.equal('w0');
      // 10 × (9 + 1) = 100 > 20 × 1, and 20 ms is exactly the factor, not beyond it: cost decides.
      for (let i = 0; i < 100; i++) expect(policy.pick('m', ewmaWorkers([10, 9], [20, 0]))!.id).to.equal('w1');
    });

    it('never sends a call to a worker 10 times slower while its estimate is current, however many calls the others have in flight', () => {
      const policy = createPolicy('p2c_ewma', seededRandom(40));
      // Cost alone: 200 × 1 = 200 < 20 × (10 + 1) = 220, so the idle slow worker would win each of its pairs (40% of picks).
      const list: Candidate[] = [
        ...[0, 1, 2, 3].map((i) => ({ id: `w${i}`, outstanding: 10, ewmaMs: 20, ewmaAgeMs: 0, capacity: 64 })),
        { id: 'slow', outstanding: 0, ewmaMs: 200, ewmaAgeMs: 0, capacity: 64 },
      ];
      expect(countPicks(() => policy.pick('m', list), 10_000).get('slow') ?? 0).to.equal(0);
      // A candidate without an age counts as current.
      const noAge = list.map(({ ewmaAgeMs: _, ...c }) => c);
      expect(countPicks(() => policy.pick('m', noAge), 10_000).get('slow') ?? 0).to.equal(0);
    });

    it('measures a slow worker against the median too, so a healthy worker whose estimate holds a noise peak does not let it in', () => {
      const policy = createPolicy('p2c_ewma', seededRandom(41));
      // Against w3 alone (120 ms), 200 ms is within the factor, and 200 × 1 < 120 × 11 would win.
      const list = ewmaWorkers([20, 10], [20, 10], [20, 10], [120, 10], [200, 0]);
      const counts = countPicks(() => policy.pick('m', list), 10_000);
      expect(counts.get('w4') ?? 0).to.equal(0);
      // The peaked worker itself is still much slower than the median and its pairs with faster ones go to them.
      expect(counts.get('w3') ?? 0).to.be.below(0.15 * 10_000);
    });

    it('draws another pair when both workers drawn are much slower than the median, so a healthy worker holding a stall peak does not hand calls to the slow one', () => {
      const policy = createPolicy('p2c_ewma', seededRandom(45));
      // w3 caught a 600 ms stall; w4 is slow at 260 ms. The pair (w3, w4) alone would give w4 the call (the faster of the two), a tenth of all picks.
      const list = ewmaWorkers([60, 5], [60, 5], [60, 5], [600, 2], [260, 0]);
      expect(countPicks(() => policy.pick('m', list), 10_000).get('w4') ?? 0).to.be.below(30);
    });

    it('lets cost decide again once the faster worker has no free slot (every one of its capacity in flight)', () => {
      const policy = createPolicy('p2c_ewma', seededRandom(42));
      const list: Candidate[] = [
        { id: 'fast', outstanding: 10, ewmaMs: 20, capacity: 10 },
        { id: 'slow', outstanding: 0, ewmaMs: 200, capacity: 10 },
      ];
      // 200 × 1 < 20 × 11: with the fast worker full, a call would queue there, and the slow one wins.
      for (let i = 0; i < 100; i++) expect(policy.pick('m', list)!.id).to.equal('slow');
      const withSlot = [{ ...list[0]!, capacity: 11 }, list[1]!];
      for (let i = 0; i < 100; i++) expect(policy.pick('m', withSlot)!.id).to.equal('fast');
    });

    it('probes a much slower worker once its estimate is stale: after τ × ln((r - 1) / (f - 1)) without a sample, one call at a time', () => {
      const policy = createPolicy('p2c_ewma', seededRandom(43));
      // r = 10 times slower, f = 2: stale enough after τ × ln(9), when 20 + 180 × exp(-t / τ) reaches 40.
      const staleAfter = STALE_ESTIMATE_DECAY_MS * Math.log(9);
      const pair = (ageMs: number, outstanding = 0): Candidate[] => [
        { id: 'fast', outstanding: 10, ewmaMs: 20, ewmaAgeMs: 0 },
        { id: 'slow', outstanding, ewmaMs: 200, ewmaAgeMs: ageMs },
      ];
      for (const age of [0, STALE_ESTIMATE_DECAY_MS, staleAfter - 1]) expect(policy.pick('m', pair(age))!.id, `age ${age}`).to.equal('fast');
      for (const age of [staleAfter + 1, 10 * STALE_ESTIMATE_DECAY_MS, Infinity]) expect(policy.pick('m', pair(age))!.id, `age ${age}`).to.equal('slow');
      // A probe in flight: no second call, however stale the estimate.
      for (const age of [staleAfter + 1, Infinity]) expect(policy.pick('m', pair(age, 1))!.id).to.equal('fast');
      // Probed even against an idle fast worker, which it would never beat on cost: that is how a recovered worker is found at light load.
      expect(policy.pick('m', [{ ...pair(0)[0]!, outstanding: 0 }, pair(staleAfter + 1)[1]!])!.id).to.equal('slow');
    });

    it('gives a worker with no estimate at all its first call as a probe even when the prior is much slower than its partner', () => {
      const policy = createPolicy('p2c_ewma', seededRandom(44), { latencyPriorMs: 100 });
      expect(policy.pick('m', [{ id: 'fast', outstanding: 3, ewmaMs: 10 }, { id: 'new', outstanding: 0 }])!.id).to.equal('new');
      expect(policy.pick('m', [{ id: 'fast', outstanding: 3, ewmaMs: 10 }, { id: 'new', outstanding: 1 }])!.id).to.equal('fast');
    });

    it('breaks equal costs at random', () => {
      const policy = createPolicy('p2c_ewma', seededRandom(32));
      const counts = countPicks(() => policy.pick('m', ewmaWorkers([20, 1], [10, 3])), 2000);
      expect(counts.get('w0')).to.be.within(800, 1200);
      expect(counts.get('w1')).to.be.within(800, 1200);
    });

    it('gives a worker with no samples the median EWMA of the others: the median worker share, neither flooded nor starved', () => {
      const policy = createPolicy('p2c_ewma', seededRandom(33));
      // Known workers at 10, 20 and 30 ms; the new one is priced at 20. All idle, so the cheaper of each pair wins:
      // 10 ms wins its 3 pairs of 6, 20 ms and the new one win 1 each plus half of their tie, 30 ms never.
      const list = ewmaWorkers([10, 0], [20, 0], [30, 0], [undefined, 0]);
      const picks = 12_000;
      const counts = countPicks(() => policy.pick('m', list), picks);
      expect(counts.get('w0')! / picks).to.be.closeTo(0.5, 0.03);
      expect(counts.get('w1')! / picks).to.be.closeTo(0.25, 0.03);
      expect(counts.get('w3')! / picks).to.be.closeTo(0.25, 0.03);
      expect(counts.get('w2') ?? 0).to.equal(0);
    });

    it('takes the mean of the two middle EWMAs as the median of an even count', () => {
      const policy = createPolicy('p2c_ewma', seededRandom(34));
      // Prior (10 + 30) / 2 = 20 ms: below the 30 ms worker, above the 10 ms one.
      const list = [{ id: 'new', outstanding: 0 }, { id: 'fast', outstanding: 0, ewmaMs: 10 }, { id: 'slow', outstanding: 0, ewmaMs: 30 }];
      const counts = countPicks(() => policy.pick('m', list), 3000);
      // Pairs: (new, fast) -> fast, (new, slow) -> new, (fast, slow) -> fast.
      expect(counts.get('new')! / 3000).to.be.closeTo(1 / 3, 0.04);
      expect(counts.get('fast')! / 3000).to.be.closeTo(2 / 3, 0.04);
      expect(counts.get('slow') ?? 0).to.equal(0);
    });

    it('uses the configured latencyPriorMs instead of the median when one is given', () => {
      const policy = createPolicy('p2c_ewma', seededRandom(35), { latencyPriorMs: 5 });
      const list = ewmaWorkers([10, 0], [20, 0], [30, 0], [undefined, 0]);
      const counts = countPicks(() => policy.pick('m', list), 6000);
      // Priced at 5 ms, the new worker wins all 3 of its 6 pairs.
      expect(counts.get('w3')! / 6000).to.be.closeTo(0.5, 0.03);
    });

    it('with no samples anywhere, compares outstanding alone', () => {
      const policy = createPolicy('p2c_ewma', seededRandom(36));
      for (let i = 0; i < 200; i++) expect(policy.pick('m', ewmaWorkers([undefined, 2], [undefined, 1]))!.id).to.equal('w1');
    });

    it('divides the cost by the slow-start weight', () => {
      const policy = createPolicy('p2c_ewma', seededRandom(37));
      // Same latency, both idle: 10 / 0.1 = 100 > 10.
      const ramping = { id: 'ramping', outstanding: 0, ewmaMs: 10, weight: 0.1 };
      for (let i = 0; i < 100; i++) expect(policy.pick('m', [ramping, { id: 'warm', outstanding: 0, ewmaMs: 10 }])!.id).to.equal('warm');
      // 10 × 1 / 0.5 = 20 < 10 × (2 + 1) = 30: half-way up its ramp it beats a warm worker with two in flight.
      const halfway = { ...ramping, weight: 0.5 };
      for (let i = 0; i < 100; i++) expect(policy.pick('m', [halfway, { id: 'warm', outstanding: 2, ewmaMs: 10 }])!.id).to.equal('ramping');
    });

    /**
     * A closed loop of `concurrency` callers over 5 workers, on a fake clock: each call's latency
     * comes from `latencyMs(worker, now, random)`; each completion feeds the worker's PeakEwma (as
     * the balancer's Member does) and issues the next call. Returns the picks per worker that
     * were made in [from, to) ms of the simulated time.
     */
    function closedLoop(options: { policy: PolicyName; concurrency: number; calls: number; latencyMs: (worker: number, now: number, random: () => number) => number; from?: number; to?: number }): number[] {
      const policy = createPolicy(options.policy, seededRandom(50));
      const random = seededRandom(51);
      let now = 0;
      const ewma = [0, 1, 2, 3, 4].map(() => new PeakEwma({ now: () => now }));
      const outstanding = ewma.map(() => 0);
      const picks = ewma.map(() => 0);
      const inFlight: { done: number; worker: number; latency: number }[] = [];
      let issued = 0;
      const issue = () => {
        const list = ewma.map((e, i) => ({ id: String(i), outstanding: outstanding[i]!, capacity: 64, ewmaMs: e.value, ...(e.ageMs === undefined ? {} : { ewmaAgeMs: e.ageMs }) }));
        const w = Number(policy.pick('m', list)!.id);
        const latency = options.latencyMs(w, now, random);
        outstanding[w]!++;
        inFlight.push({ done: now + latency, worker: w, latency });
        issued++;
        if (now >= (options.from ?? 0) && now < (options.to ?? Infinity)) picks[w]!++;
      };
      for (let i = 0; i < options.concurrency; i++) issue();
      while (issued < options.calls) {
        inFlight.sort((x, y) => x.done - y.done);
        const next = inFlight.shift()!;
        now = next.done;
        outstanding[next.worker]!--;
        ewma[next.worker]!.observe(next.latency);
        issue();
      }
      return picks;
    }
    /** Healthy workers at `baseMs` plus an exponential jitter of mean `jitterMs`; worker 4 at `slowMs` (plus jitter) until `recoverAt`. */
    const latencies =
      (baseMs: number, jitterMs: number, slowMs: number, recoverAt = Infinity) =>
      (worker: number, now: number, random: () => number) =>
        (worker === 4 && now < recoverAt ? slowMs : baseMs) - jitterMs * Math.log(1 - random());
    const share = (picks: number[], worker: number) => picks[worker]! / picks.reduce((a, b) => a + b, 0);

    it('keeps a worker 5-10 times slower out of the p99 when every worker carries several calls (c = 16): under 0.5% of calls, where cost alone sent it 0.8-1.5%', () => {
      // As bench:lb on a loaded day: healthy calls 45-70 ms (their peak-EWMAs 55-60 ms), the slow worker 220 ms.
      for (const [base, slow] of [
        [45, 220],
        [25, 220],
      ] as const) {
        const picks = closedLoop({ policy: 'p2c_ewma', concurrency: 16, calls: 30_000, latencyMs: latencies(base, 5, slow) });
        expect(share(picks, 4), `healthy at ${base} ms`).to.be.below(0.005);
      }
    });

    it('finds a slow worker again once it recovers, even at light load (c = 4), and gives it a full share', () => {
      // Worker 4 at 300 ms for the first 10 s, then 30 ms like the others; probed within τ × ln(9) + 300 ms, 4.7 s.
      const after = closedLoop({ policy: 'p2c_ewma', concurrency: 4, calls: 8_000, latencyMs: latencies(30, 5, 300, 10_000), from: 16_000 });
      expect(after.reduce((a, b) => a + b, 0)).to.be.above(1_000);
      expect(share(after, 4)).to.be.within(0.12, 0.28);
    });

    it('spreads a healthy mesh: with 5 workers alike and noisy latencies, each gets 20% ± 6 points (no herding)', () => {
      for (const concurrency of [4, 16]) {
        const picks = closedLoop({ policy: 'p2c_ewma', concurrency, calls: 20_000, latencyMs: latencies(30, 15, 30) });
        for (let w = 0; w < 5; w++) expect(share(picks, w), `worker ${w} at c = ${concurrency}`).to.be.within(0.14, 0.26);
      }
    });

    it('avoids a worker 10 times slower: in a closed loop it gets far fewer requests than under p2c or round robin', () => {
      /**
       * Closed loop, concurrency 12, 5 workers: w2 answers in 100 ms, the others in 10 ms. Each
       * completion feeds the worker's PeakEwma (fake clock) and issues the next request.
       */
      function slowShare(name: PolicyName): { share: number; meanMs: number } {
        const policy: Policy = createPolicy(name, seededRandom(38));
        let now = 0;
        const latency = [10, 10, 100, 10, 10];
        const ewma = latency.map(() => new PeakEwma({ now: () => now }));
        const outstanding = latency.map(() => 0);
        const inFlight: { done: number; worker: number }[] = [];
        let toSlow = 0;
        let total = 0;
        let latencySum = 0;
        const issue = () => {
          const list = latency.map((_, i) => ({ id: String(i), outstanding: outstanding[i]!, ewmaMs: ewma[i]!.value }));
          const w = Number(policy.pick('m', list)!.id);
          outstanding[w]!++;
          inFlight.push({ done: now + latency[w]!, worker: w });
          total++;
          if (w === 2) toSlow++;
        };
        for (let i = 0; i < 12; i++) issue();
        while (total < 20_000) {
          inFlight.sort((x, y) => x.done - y.done);
          const next = inFlight.shift()!;
          now = next.done;
          outstanding[next.worker]!--;
          ewma[next.worker]!.observe(latency[next.worker]!);
          latencySum += latency[next.worker]!;
          issue();
        }
        return { share: toSlow / total, meanMs: latencySum / (total - inFlight.length) };
      }
      const roundRobin = slowShare('round_robin');
      const p2c = slowShare('p2c');
      const p2cEwma = slowShare('p2c_ewma');
      expect(roundRobin.share).to.be.closeTo(0.2, 0.01);
      expect(p2cEwma.share).to.be.below(0.01);
      expect(p2cEwma.share).to.be.below(p2c.share / 3);
      expect(p2cEwma.meanMs).to.be.below(p2c.meanMs);
    });
  });

  describe('weighted', () => {
    function capacities(...caps: (number | undefined)[]): Candidate[] {
      return caps.map((capacity, i) => ({ id: String.fromCharCode(97 + i), outstanding: 0, ...(capacity === undefined ? {} : { capacity }) }));
    }

    it("follows nginx's smooth sequence for capacities 5, 1, 1: a a b a c a a, then again", () => {
      // A generator that returns 0 starts the new key at the beginning of its cycle.
      const policy = createPolicy('weighted', () => 0);
      const list = capacities(5, 1, 1);
      const ids = Array.from({ length: 14 }, () => policy.pick('m', list)!.id).join(' ');
      expect(ids).to.equal('a a b a c a a a a b a c a a');
    });

    it('gives each worker exactly its capacity share over whole cycles, whatever the starting point', () => {
      for (const seed of [1, 2, 3, 4, 5]) {
        const policy = createPolicy('weighted', seededRandom(seed));
        const list = capacities(1, 2, 3, 4);
        const counts = countPicks(() => policy.pick('m', list), 100);
        expect(Object.fromEntries(counts), `seed ${seed}`).to.deep.equal({ a: 10, b: 20, c: 30, d: 40 });
      }
    });

    it('never gives a worker two picks in a row when every capacity is equal (it is round robin then)', () => {
      const policy = createPolicy('weighted', seededRandom(40));
      const list = capacities(4, 4, 4);
      const ids = Array.from({ length: 30 }, () => policy.pick('m', list)!.id);
      expect(ids.filter((id, i) => i > 0 && id === ids[i - 1])).to.deep.equal([]);
      expect(Object.fromEntries(countPicks(() => policy.pick('m', list), 30))).to.deep.equal({ a: 10, b: 10, c: 10 });
    });

    it('counts a missing, zero or negative capacity as 1', () => {
      const policy = createPolicy('weighted', seededRandom(41));
      const counts = countPicks(() => policy.pick('m', capacities(undefined, 0, -3, 2)), 50);
      expect(Object.fromEntries(counts)).to.deep.equal({ a: 10, b: 10, c: 10, d: 20 });
    });

    it('scales a worker share by its slow-start weight', () => {
      const policy = createPolicy('weighted', seededRandom(42));
      const list: Candidate[] = [
        { id: 'ramping', outstanding: 0, capacity: 4, weight: 0.25 },
        { id: 'warm', outstanding: 0, capacity: 4 },
      ];
      expect(Object.fromEntries(countPicks(() => policy.pick('m', list), 100))).to.deep.equal({ ramping: 20, warm: 80 });
    });

    it('keeps a separate cycle per key, so picks for one model do not skew another', () => {
      const policy = createPolicy('weighted', seededRandom(43));
      const list = capacities(1, 3);
      const counts = new Map<string, number>();
      for (let i = 0; i < 40; i++) {
        policy.pick('other', list);
        const chosen = policy.pick('m', list)!;
        counts.set(chosen.id, (counts.get(chosen.id) ?? 0) + 1);
      }
      expect(Object.fromEntries(counts)).to.deep.equal({ a: 10, b: 30 });
    });

    it('keeps the proportions of the remaining workers after one leaves', () => {
      const policy = createPolicy('weighted', seededRandom(44));
      const list = capacities(1, 3, 2);
      countPicks(() => policy.pick('m', list), 5);
      const rest = [list[0]!, list[1]!];
      const counts = countPicks(() => policy.pick('m', rest), 42);
      // After at most one cycle of settling, the 1 : 3 split holds.
      expect(counts.get('a')).to.be.within(9, 12);
      expect(counts.get('b')).to.be.within(30, 33);
    });

    it('ignores outstanding counts', () => {
      const policy = createPolicy('weighted', seededRandom(45));
      const list: Candidate[] = [
        { id: 'a', outstanding: 100, capacity: 1 },
        { id: 'b', outstanding: 0, capacity: 1 },
      ];
      expect(countPicks(() => policy.pick('m', list), 20).get('a')).to.equal(10);
    });
  });

  describe('consistent_hash', () => {
    const tenWorkers = (): Candidate[] => workers(...Array<number>(10).fill(0));
    const keyed = (affinityKey: string): PickOptions => ({ affinityKey });

    it('sends every request with the same affinity key to the same worker while load is even', () => {
      const policy = createPolicy('consistent_hash', seededRandom(50));
      const list = tenWorkers();
      for (let k = 0; k < 500; k++) {
        const first = policy.pick('m', list, keyed(`session-${k}`))!.id;
        for (let i = 0; i < 5; i++) expect(policy.pick('m', list, keyed(`session-${k}`))!.id).to.equal(first);
      }
    });

    it('gives a key the same worker whatever the order of the candidate list, and across policy instances', () => {
      const a = createPolicy('consistent_hash', seededRandom(51));
      const b = createPolicy('consistent_hash', seededRandom(52));
      const list = tenWorkers();
      const reversed = [...list].reverse();
      for (let k = 0; k < 500; k++) expect(b.pick('m', reversed, keyed(`s${k}`))!.id).to.equal(a.pick('m', list, keyed(`s${k}`))!.id);
    });

    it('spreads 10,000 keys over 10 workers within 25% of an even share', () => {
      const policy = createPolicy('consistent_hash', seededRandom(53));
      const list = tenWorkers();
      let k = 0;
      const counts = countPicks(() => policy.pick('m', list, keyed(`session-${k++}`)), 10_000);
      expect(counts.size).to.equal(10);
      for (const count of counts.values()) expect(count).to.be.within(750, 1250);
    });

    it('keeps a hot key on its worker up to ceil(c × average outstanding), and spills it to the next worker on the ring beyond', () => {
      const policy = createPolicy('consistent_hash', seededRandom(54));
      const ids = ['w0', 'w1', 'w2', 'w3'];
      const owner = policy.pick('m', workers(0, 0, 0, 0), keyed('hot'))!.id;
      // The next worker on the ring is the one that owns the key when the owner is not a candidate.
      const successor = policy.pick('m', workers(0, 0, 0, 0).filter((w) => w.id !== owner), keyed('hot'))!.id;
      expect(successor).to.not.equal(owner);
      const loads = (ownerLoad: number) => ids.map((id) => ({ id, outstanding: id === owner ? ownerLoad : 4 }));
      // Owner at 6, others at 4: total 18, bound ceil(1.25 × 18 / 4) = 6. At the bound it keeps the key.
      expect(policy.pick('m', loads(6), keyed('hot'))!.id).to.equal(owner);
      // Owner at 7: total 19, bound ceil(1.25 × 19 / 4) = 6. Over it, the key spills to the successor.
      expect(policy.pick('m', loads(7), keyed('hot'))!.id).to.equal(successor);
    });

    it('holds a burst of one hot key within the bound (+1) on every worker, where no bound would pin it on one', () => {
      function burst(loadFactor: number): number[] {
        const policy = createPolicy('consistent_hash', seededRandom(55), { loadFactor });
        const loads = [0, 0, 0, 0];
        for (let i = 0; i < 40; i++) loads[Number(policy.pick('m', workers(...loads), keyed('hot'))!.id.slice(1))]!++;
        return loads;
      }
      const bounded = burst(1.25);
      // The last pick saw 39 in flight: bound ceil(1.25 × 39 / 4) = 13, so no worker ends above 14.
      expect(Math.max(...bounded)).to.be.at.most(14);
      expect(bounded.filter((load) => load > 0).length).to.be.at.least(3);
      expect(Math.max(...burst(1000))).to.equal(40);
    });

    it('places a request without an affinity key (or with an empty one) by p2c on outstanding', () => {
      const policy = createPolicy('consistent_hash', seededRandom(56));
      const list = workers(50, 0);
      for (let i = 0; i < 100; i++) {
        expect(policy.pick('m', list)!.id).to.equal('w1');
        expect(policy.pick('m', list, {})!.id).to.equal('w1');
        expect(policy.pick('m', list, keyed(''))!.id).to.equal('w1');
      }
    });

    it('when a worker leaves, moves only the keys it owned (about 1/10 of them)', () => {
      const policy = createPolicy('consistent_hash', seededRandom(57));
      const list = tenWorkers();
      const without = list.filter((w) => w.id !== 'w3');
      let moved = 0;
      for (let k = 0; k < 10_000; k++) {
        const before = policy.pick('m', list, keyed(`session-${k}`))!.id;
        const after = policy.pick('m', without, keyed(`session-${k}`))!.id;
        if (before !== after) {
          moved++;
          expect(before).to.equal('w3');
        } else {
          expect(before).to.not.equal('w3');
        }
      }
      expect(moved).to.be.within(750, 1250);
    });

    it('when an 11th worker joins, moves about 1/11 of the keys, all of them to the new worker', () => {
      const policy = createPolicy('consistent_hash', seededRandom(58));
      const list = tenWorkers();
      const eleven = [...list, { id: 'w10', outstanding: 0 }];
      let moved = 0;
      for (let k = 0; k < 10_000; k++) {
        const before = policy.pick('m', list, keyed(`session-${k}`))!.id;
        const after = policy.pick('m', eleven, keyed(`session-${k}`))!.id;
        if (before !== after) {
          moved++;
          expect(after).to.equal('w10');
        }
      }
      // 10,000 / 11 ≈ 909; modulo hashing would move about 10/11 of them (see the hash ring tests).
      expect(moved).to.be.within(600, 1250);
    });
  });
});
