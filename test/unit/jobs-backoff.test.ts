import { expect } from 'chai';
import { retryDelayMs } from '../../services/scheduler/jobs/backoff.js';

/** Just below 1: the top of what Math.random returns. */
const TOP = 1 - Number.EPSILON;

describe('jobs: retryDelayMs', () => {
  it('waits between 0 and baseMs after the first attempt', () => {
    expect(retryDelayMs(1, { baseMs: 100, maxMs: 10_000, random: () => 0 })).to.equal(0);
    expect(retryDelayMs(1, { baseMs: 100, maxMs: 10_000, random: () => TOP })).to.equal(100);
  });

  it('doubles the ceiling with each attempt', () => {
    const ceilings = [1, 2, 3, 4, 5].map((attempt) => retryDelayMs(attempt, { baseMs: 100, maxMs: 1_000_000, random: () => TOP }));
    expect(ceilings).to.deep.equal([100, 200, 400, 800, 1600]);
  });

  it('never exceeds maxMs, even for huge attempt numbers', () => {
    for (const attempt of [5, 6, 10, 60, 2000, Number.MAX_SAFE_INTEGER]) {
      const top = retryDelayMs(attempt, { baseMs: 100, maxMs: 1000, random: () => TOP });
      expect(top, `attempt ${attempt}`).to.equal(1000);
    }
    expect(retryDelayMs(3000, { baseMs: 0, maxMs: 1000, random: () => TOP })).to.equal(0);
  });

  it('spreads delays over the whole range with the random source (full jitter)', () => {
    const at = (r: number) => retryDelayMs(3, { baseMs: 100, maxMs: 10_000, random: () => r });
    expect(at(0)).to.equal(0);
    expect(at(0.25)).to.equal(100);
    expect(at(0.5)).to.equal(200);
    expect(at(TOP)).to.equal(400);
  });

  it('with the default random source stays within [0, ceiling] and varies', () => {
    const delays = Array.from({ length: 500 }, () => retryDelayMs(4, { baseMs: 50, maxMs: 10_000 }));
    for (const d of delays) {
      expect(Number.isInteger(d)).to.equal(true);
      expect(d).to.be.within(0, 400);
    }
    expect(new Set(delays).size).to.be.greaterThan(50);
  });

  it('keeps a stray random source inside the bounds', () => {
    expect(retryDelayMs(2, { baseMs: 100, maxMs: 1000, random: () => 1.7 })).to.equal(200);
    expect(retryDelayMs(2, { baseMs: 100, maxMs: 1000, random: () => -1 })).to.equal(0);
  });

  it('rejects an attempt below 1 or not an integer, and negative delays', () => {
    expect(() => retryDelayMs(0, { baseMs: 1, maxMs: 1 })).to.throw(RangeError, 'attempt must be an integer >= 1, given 0');
    expect(() => retryDelayMs(1.5, { baseMs: 1, maxMs: 1 })).to.throw(RangeError, 'attempt');
    expect(() => retryDelayMs(1, { baseMs: -1, maxMs: 1 })).to.throw(RangeError, 'baseMs');
    expect(() => retryDelayMs(1, { baseMs: 1, maxMs: Number.POSITIVE_INFINITY })).to.throw(RangeError, 'maxMs');
  });
});
