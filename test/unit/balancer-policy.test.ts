import { expect } from 'chai';
import { mulberry32 } from '../../common/random';
import { type Candidate, createPolicy, type PolicyName, POLICY_NAMES } from '../../services/balancer/policy.js';

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
      expect([...POLICY_NAMES].sort()).to.deep.equal(['least_outstanding', 'p2c', 'random', 'round_robin']);
      for (const name of POLICY_NAMES) expect(createPolicy(name).name).to.equal(name);
    });

    it('rejects an unknown name, listing the known ones', () => {
      expect(() => createPolicy('fastest' as PolicyName)).to.throw(
        RangeError,
        'policy must be one of round_robin, random, least_outstanding, p2c, given "fastest"',
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
    }
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
});
