import { expect } from 'chai';
import { OutlierDetector, type OutlierOptions } from '../../services/balancer/outliers.js';

/** A detector tracking workers a, b, c and d (so that up to two may be ejected at once by default). */
function detector(options: OutlierOptions = {}): OutlierDetector {
  const d = new OutlierDetector(options);
  for (const id of ['a', 'b', 'c', 'd']) d.add(id);
  return d;
}

function fail(d: OutlierDetector, id: string, now: number, times: number): void {
  for (let i = 0; i < times; i++) d.recordFailure(id, now);
}

function succeed(d: OutlierDetector, id: string, now: number, times: number): void {
  for (let i = 0; i < times; i++) d.recordSuccess(id, now);
}

describe('balancer outlier detection', () => {
  it('ejects a worker on its 5th failure in a row, not before', () => {
    const d = detector();
    fail(d, 'a', 1_000, 4);
    expect(d.isEjected('a', 1_000)).to.equal(false);
    expect(d.recordFailure('a', 1_000)).to.equal('consecutive_failures');
    expect(d.isEjected('a', 1_000)).to.equal(true);
    expect(d.ejected(1_000)).to.deep.equal(['a']);
  });

  it('does not eject when a success breaks the run of failures', () => {
    // The failure rate (80%) would eject; switch it off to see the run of failures alone.
    const d = detector({ failureRateMinRequests: 1_000 });
    for (let round = 0; round < 10; round++) {
      fail(d, 'a', round, 4);
      d.recordSuccess('a', round);
    }
    expect(d.isEjected('a', 10)).to.equal(false);
    expect(d.state('a', 10)!.consecutiveFailures).to.equal(0);
  });

  it('keeps the first ejection for 5 s, then brings the worker back on probation', () => {
    const d = detector();
    fail(d, 'a', 1_000, 5);
    expect(d.isEjected('a', 5_999)).to.equal(true);
    expect(d.state('a', 5_999)).to.include({ ejected: true, ejectedUntil: 6_000, ejections: 1, probation: false });
    expect(d.isEjected('a', 6_000)).to.equal(false);
    expect(d.state('a', 6_000)).to.include({ ejected: false, ejections: 1, probation: true, consecutiveFailures: 0 });
  });

  it('on probation, re-ejects on one failure for base × ejections: 10 s, then 15 s', () => {
    const d = detector();
    fail(d, 'a', 0, 5);
    expect(d.recordFailure('a', 5_000)).to.equal('probation_failure');
    expect(d.state('a', 5_000)).to.include({ ejected: true, ejectedUntil: 15_000, ejections: 2 });
    expect(d.isEjected('a', 14_999)).to.equal(true);
    expect(d.isEjected('a', 15_000)).to.equal(false);
    expect(d.recordFailure('a', 15_000)).to.equal('probation_failure');
    expect(d.state('a', 15_000)).to.include({ ejectedUntil: 30_000, ejections: 3 });
  });

  it('never ejects for longer than maxEjectionMs', () => {
    const d = detector({ baseEjectionMs: 5_000, maxEjectionMs: 12_000 });
    let now = 0;
    fail(d, 'a', now, 5);
    const durations: number[] = [];
    for (let i = 0; i < 4; i++) {
      const until = d.state('a', now)!.ejectedUntil!;
      durations.push(until - now);
      now = until;
      d.recordFailure('a', now);
    }
    expect(durations).to.deep.equal([5_000, 10_000, 12_000, 12_000]);
  });

  it('ends probation and clears the ejection count after a run of successes, so the next ejection is short again', () => {
    const d = detector({ probationSuccesses: 10 });
    fail(d, 'a', 0, 5);
    d.recordFailure('a', 5_000); // second ejection, until 15 s
    succeed(d, 'a', 15_000, 9);
    expect(d.state('a', 15_000)).to.include({ probation: true, ejections: 2 });
    d.recordSuccess('a', 15_000);
    expect(d.state('a', 15_000)).to.include({ probation: false, ejections: 0 });
    // Trusted again: one failure is not enough, and a fresh ejection lasts the base time.
    expect(d.recordFailure('a', 16_000)).to.equal(undefined);
    fail(d, 'a', 16_000, 4);
    expect(d.state('a', 16_000)).to.include({ ejected: true, ejectedUntil: 21_000, ejections: 1 });
  });

  it('a failure on probation that cannot eject (no room) still restarts the run of successes needed to clear it', () => {
    const d = detector({ probationSuccesses: 3, maxEjectedShare: 0.25 });
    fail(d, 'a', 0, 5);
    // a is back on probation at 5 s; b takes the only ejection slot.
    fail(d, 'b', 5_000, 5);
    succeed(d, 'a', 5_000, 2);
    expect(d.recordFailure('a', 5_000)).to.equal(undefined);
    expect(d.state('a', 5_000)).to.include({ ejected: false, probation: true });
    succeed(d, 'a', 5_000, 2);
    expect(d.state('a', 5_000)!.probation).to.equal(true);
    d.recordSuccess('a', 5_000);
    expect(d.state('a', 5_000)).to.include({ probation: false, ejections: 0 });
  });

  it('ejects on a failure rate of 50% over at least 20 requests in the window, with no run of failures', () => {
    const d = detector();
    // Success then failure, 100 ms apart: never two failures in a row.
    let now = 0;
    for (let i = 0; i < 9; i++) {
      d.recordSuccess('a', now);
      expect(d.recordFailure('a', (now += 100))).to.equal(undefined);
      now += 100;
    }
    d.recordSuccess('a', now);
    expect(d.state('a', now)).to.include({ windowRequests: 19, windowFailures: 9, ejected: false });
    expect(d.recordFailure('a', (now += 100))).to.equal('failure_rate');
    expect(d.isEjected('a', now)).to.equal(true);
  });

  it('does not count requests older than the window toward the failure rate', () => {
    const d = detector();
    // 10 failures and 10 successes, one request a second: by the last, the first few have left the 10 s window.
    let now = 0;
    for (let i = 0; i < 10; i++) {
      d.recordSuccess('a', now);
      now += 1_000;
      d.recordFailure('a', now);
      now += 1_000;
    }
    expect(d.state('a', now)!.windowRequests).to.be.below(20);
    expect(d.isEjected('a', now)).to.equal(false);
  });

  it('does not eject below the failure rate, however many requests', () => {
    const d = detector();
    for (let i = 0; i < 200; i++) {
      succeed(d, 'a', i, 2);
      d.recordFailure('a', i);
    }
    expect(d.state('a', 200)).to.include({ ejected: false, ejections: 0 });
  });

  it('never ejects more than half of the workers at once; the next in line is ejected once one returns', () => {
    const d = detector();
    fail(d, 'a', 0, 5);
    fail(d, 'b', 1_000, 5);
    expect(d.recordFailure('c', 2_000)).to.equal(undefined);
    fail(d, 'c', 2_000, 20);
    expect(d.ejected(2_000)).to.deep.equal(['a', 'b']);
    expect(d.isEjected('c', 2_000)).to.equal(false);
    // a returns at 5 s; c's next failure now finds room.
    expect(d.recordFailure('c', 5_000)).to.equal('consecutive_failures');
    expect(d.ejected(5_000)).to.deep.equal(['b', 'c']);
  });

  it('rounds the ejected share down: with one worker, or a 0 share, it never ejects', () => {
    const single = new OutlierDetector();
    fail(single, 'only', 0, 50);
    expect(single.isEjected('only', 0)).to.equal(false);
    const none = detector({ maxEjectedShare: 0 });
    fail(none, 'a', 0, 50);
    expect(none.isEjected('a', 0)).to.equal(false);
    const three = new OutlierDetector({ maxEjectedShare: 0.5 });
    for (const id of ['x', 'y', 'z']) three.add(id);
    fail(three, 'x', 0, 5);
    fail(three, 'y', 0, 5);
    expect(three.ejected(0)).to.deep.equal(['x']);
  });

  it('ignores results that arrive while a worker is ejected, and starts its counts afresh on return', () => {
    const d = detector();
    fail(d, 'a', 0, 5);
    fail(d, 'a', 1_000, 30);
    succeed(d, 'a', 1_000, 30);
    expect(d.state('a', 1_000)).to.include({ ejectedUntil: 5_000, ejections: 1, consecutiveFailures: 0, windowRequests: 0, windowFailures: 0 });
  });

  it('knows nothing of a worker never added or recorded, and forgets one removed', () => {
    const d = detector();
    expect(d.isEjected('stranger', 0)).to.equal(false);
    expect(d.state('stranger', 0)).to.equal(undefined);
    fail(d, 'a', 0, 5);
    d.remove('a');
    expect(d.isEjected('a', 0)).to.equal(false);
    expect(d.state('a', 0)).to.equal(undefined);
  });

  it('honours a configured threshold and base time', () => {
    const d = detector({ consecutiveFailures: 2, baseEjectionMs: 1_000 });
    fail(d, 'a', 0, 2);
    expect(d.state('a', 0)).to.include({ ejected: true, ejectedUntil: 1_000, lastReason: 'consecutive_failures' });
  });

  it('rejects settings out of range, naming the setting', () => {
    expect(() => new OutlierDetector({ consecutiveFailures: 0 })).to.throw(RangeError, 'consecutiveFailures must be an integer >= 1, given 0');
    expect(() => new OutlierDetector({ failureRate: 1.5 })).to.throw(RangeError, 'failureRate must be in (0, 1], given 1.5');
    expect(() => new OutlierDetector({ baseEjectionMs: -5 })).to.throw(RangeError, 'baseEjectionMs must be a positive number, given -5');
    expect(() => new OutlierDetector({ baseEjectionMs: 10_000, maxEjectionMs: 5_000 })).to.throw(RangeError, 'maxEjectionMs must be >= baseEjectionMs (10000), given 5000');
    expect(() => new OutlierDetector({ maxEjectedShare: 2 })).to.throw(RangeError, 'maxEjectedShare must be in [0, 1], given 2');
  });
});
