import { expect } from 'chai';
import { SlidingWindowCounter } from '../../services/balancer/sliding-window.js';

describe('balancer sliding window counter', () => {
  it('counts events added within the window', () => {
    const counter = new SlidingWindowCounter(10_000);
    counter.add(0);
    counter.add(4_000, 3);
    expect(counter.total(4_000)).to.equal(4);
    expect(counter.total(8_999)).to.equal(4);
  });

  it('drops an event between 0.9 and 1 window after it was added (10 buckets)', () => {
    const counter = new SlidingWindowCounter(10_000, 10);
    counter.add(1_500);
    expect(counter.total(9_999)).to.equal(1);
    expect(counter.total(10_999)).to.equal(1);
    expect(counter.total(11_000)).to.equal(0);
  });

  it('reuses a bucket slot for a later time without carrying the old count over', () => {
    const counter = new SlidingWindowCounter(1_000, 4);
    counter.add(0, 5);
    counter.add(1_000, 2);
    expect(counter.total(1_000)).to.equal(2);
  });

  it('does not count events stamped after the time asked about', () => {
    const counter = new SlidingWindowCounter(10_000);
    counter.add(5_000);
    expect(counter.total(2_000)).to.equal(0);
  });

  it('forgets everything on clear', () => {
    const counter = new SlidingWindowCounter(10_000);
    counter.add(0, 7);
    counter.clear();
    expect(counter.total(0)).to.equal(0);
  });

  it('rejects a window that is not positive and a bucket count that is not a positive integer', () => {
    expect(() => new SlidingWindowCounter(0)).to.throw(RangeError, 'windowMs must be a positive number, given 0');
    expect(() => new SlidingWindowCounter(1_000, 0)).to.throw(RangeError, 'buckets must be an integer >= 1, given 0');
  });
});
