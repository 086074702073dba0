import { expect } from 'chai';
import { countMovedKeys, DEFAULT_VIRTUAL_NODES, hash32, HashRing } from '../../services/balancer/hash-ring.js';

const ids = (n: number): string[] => Array.from({ length: n }, (_, i) => `worker-${i}`);
const keys = Array.from({ length: 10_000 }, (_, i) => `session-${i}`);

function sharesOf(ring: HashRing): Map<string, number> {
  const counts = new Map<string, number>();
  for (const key of keys) {
    const owner = ring.owner(key)!;
    counts.set(owner, (counts.get(owner) ?? 0) + 1);
  }
  return counts;
}

describe('balancer hash ring', () => {
  it('hash32 is a deterministic unsigned 32-bit hash that separates near-identical strings', () => {
    expect(hash32('session-1')).to.equal(hash32('session-1'));
    for (const text of ['', 'a', 'session-1', 'ünïcødé ✓']) {
      const h = hash32(text);
      expect(Number.isInteger(h) && h >= 0 && h < 2 ** 32, text).to.equal(true);
    }
    // Names of consecutive virtual nodes differ in one character; their hashes should differ in about half their bits.
    const bitsApart = (a: string, b: string) => (hash32(a) ^ hash32(b)).toString(2).replace(/0/g, '').length;
    let total = 0;
    for (let v = 0; v < 100; v++) total += bitsApart(`w1#${v}`, `w1#${v + 1}`);
    expect(total / 100).to.be.within(12, 20);
  });

  it('owns nothing and walks nowhere when empty', () => {
    const ring = new HashRing();
    expect(ring.owner('k')).to.equal(undefined);
    expect([...ring.walk('k')]).to.deep.equal([]);
    expect(ring.size).to.equal(0);
  });

  it('gives every key the same owner whatever order the workers were added in', () => {
    const forward = new HashRing(ids(10));
    const backward = new HashRing(ids(10).reverse());
    const added = new HashRing();
    for (const id of ids(10)) added.add(id);
    for (const key of keys.slice(0, 2_000)) {
      expect(backward.owner(key)).to.equal(forward.owner(key));
      expect(added.owner(key)).to.equal(forward.owner(key));
    }
  });

  it(`spreads 10,000 keys over 10 workers within 25% of an even share (${DEFAULT_VIRTUAL_NODES} virtual nodes)`, () => {
    const counts = sharesOf(new HashRing(ids(10)));
    expect(counts.size).to.equal(10);
    for (const count of counts.values()) expect(count).to.be.within(750, 1250);
  });

  it('spreads keys more evenly with more virtual nodes', () => {
    const spread = (virtualNodes: number) => {
      const counts = [...sharesOf(new HashRing(ids(10), { virtualNodes })).values()];
      return Math.max(...counts) - Math.min(...counts);
    };
    expect(spread(160)).to.be.below(spread(10));
    expect(spread(10)).to.be.below(spread(1));
  });

  it('when an 11th worker joins, moves about 1/11 of 10,000 keys, all to the new worker, far fewer than modulo hashing', () => {
    const ten = new HashRing(ids(10));
    const eleven = new HashRing(ids(11));
    const moved = countMovedKeys(keys, (k) => ten.owner(k), (k) => eleven.owner(k));
    for (const key of keys) if (ten.owner(key) !== eleven.owner(key)) expect(eleven.owner(key)).to.equal('worker-10');
    // Ideal: 10,000 / 11 ≈ 909.
    expect(moved).to.be.within(600, 1250);

    const modulo = (n: number) => (key: string) => ids(n)[hash32(key) % n];
    const movedByModulo = countMovedKeys(keys, modulo(10), modulo(11));
    // Modulo hashing keeps a key only when hash % 10 === hash % 11: about 1 in 11, so about 10/11 move.
    expect(movedByModulo).to.be.within(8_700, 9_400);
    expect(moved).to.be.below(movedByModulo / 5);
  });

  it('when a worker leaves, moves exactly the keys it owned, each to the next worker on its walk', () => {
    const ring = new HashRing(ids(10));
    const before = new Map(keys.map((k) => [k, ring.owner(k)!]));
    const successors = new Map(keys.map((k) => [k, [...ring.walk(k)][1]!]));
    expect(ring.remove('worker-4')).to.equal(true);
    expect(ring.remove('worker-4')).to.equal(false);
    let moved = 0;
    for (const key of keys) {
      const was = before.get(key)!;
      const now = ring.owner(key)!;
      if (was === 'worker-4') {
        moved++;
        expect(now).to.equal(successors.get(key));
      } else {
        expect(now).to.equal(was);
      }
    }
    expect(moved).to.equal(countMovedKeys(keys, (k) => before.get(k), (k) => ring.owner(k)));
    expect(moved).to.be.within(750, 1250);
  });

  it('walks every worker exactly once, starting with the owner', () => {
    const ring = new HashRing(ids(7));
    for (const key of keys.slice(0, 200)) {
      const walk = [...ring.walk(key)];
      expect(walk[0]).to.equal(ring.owner(key));
      expect([...walk].sort()).to.deep.equal(ids(7).sort());
    }
  });

  it('reports membership, and ignores adding a worker twice', () => {
    const ring = new HashRing(['a']);
    expect(ring.add('b')).to.equal(true);
    expect(ring.add('b')).to.equal(false);
    expect(ring.has('b')).to.equal(true);
    expect(ring.has('c')).to.equal(false);
    expect(ring.ids()).to.deep.equal(['a', 'b']);
    expect(ring.size).to.equal(2);
  });

  it('rejects a virtual node count that is not a positive integer', () => {
    expect(() => new HashRing([], { virtualNodes: 0 })).to.throw(RangeError, 'virtualNodes must be an integer >= 1, given 0');
    expect(() => new HashRing([], { virtualNodes: 2.5 })).to.throw(RangeError, 'given 2.5');
  });

  it('countMovedKeys counts the keys whose placement differs', () => {
    expect(countMovedKeys(['a', 'b', 'c'], (k) => k, (k) => (k === 'b' ? 'x' : k))).to.equal(1);
    expect(countMovedKeys([], () => 'a', () => 'b')).to.equal(0);
  });
});
