import { expect } from 'chai';
import { RetryBudget } from '../../services/balancer/retry-budget.js';

describe('balancer retry budget', () => {
  it('with no traffic allows the minimum, 10 a second over the 10 s window, then refuses', () => {
    const budget = new RetryBudget();
    let granted = 0;
    for (let i = 0; i < 150; i++) if (budget.tryRetry(0)) granted++;
    expect(granted).to.equal(100);
    expect(budget.state(0)).to.deep.equal({ requests: 0, retries: 100, allowed: 100 });
  });

  it('under a storm where every request fails, caps retries at about 20% of requests', () => {
    // 1,000 requests a second for a minute; each failed request asks for a retry.
    const budget = new RetryBudget({ minRetriesPerSecond: 0 });
    let requests = 0;
    let retries = 0;
    for (let ms = 0; ms < 60_000; ms++) {
      budget.recordRequest(ms);
      requests++;
      if (budget.tryRetry(ms)) retries++;
    }
    expect(retries / requests).to.be.within(0.18, 0.2);
  });

  it('under a storm where each failed retry asks again (up to 3 times), still caps extra load near 20% plus the minimum', () => {
    const budget = new RetryBudget();
    let requests = 0;
    let retries = 0;
    for (let ms = 0; ms < 60_000; ms++) {
      budget.recordRequest(ms);
      requests++;
      for (let attempt = 0; attempt < 3 && budget.tryRetry(ms); attempt++) retries++;
    }
    // 20% of 1,000 a second plus 10 a second of minimum: 21% at most.
    expect(retries / requests).to.be.within(0.18, 0.21);
  });

  it('never refuses a healthy service that retries 5% of its requests', () => {
    const budget = new RetryBudget();
    let refused = 0;
    for (let ms = 0; ms < 60_000; ms++) {
      budget.recordRequest(ms);
      if (ms % 20 === 0 && !budget.tryRetry(ms)) refused++;
    }
    expect(refused).to.equal(0);
  });

  it('grants retries again once the requests and retries that used the budget have left the window', () => {
    const budget = new RetryBudget({ minRetriesPerSecond: 0, windowMs: 10_000 });
    for (let i = 0; i < 100; i++) budget.recordRequest(0);
    let granted = 0;
    while (budget.tryRetry(0)) granted++;
    expect(granted).to.equal(20);
    // New traffic at 5 s adds budget only for its own share.
    for (let i = 0; i < 10; i++) budget.recordRequest(5_000);
    expect(budget.tryRetry(5_000)).to.equal(true);
    expect(budget.tryRetry(5_000)).to.equal(true);
    expect(budget.tryRetry(5_000)).to.equal(false);
    // At 12 s the burst at 0 has left the window: its retries no longer count, nor do its requests.
    expect(budget.state(12_000)).to.deep.equal({ requests: 10, retries: 2, allowed: 2 });
    for (let i = 0; i < 10; i++) budget.recordRequest(12_000);
    expect(budget.tryRetry(12_000)).to.equal(true);
    expect(budget.tryRetry(12_000)).to.equal(true);
    expect(budget.tryRetry(12_000)).to.equal(false);
  });

  it('follows a configured ratio', () => {
    const budget = new RetryBudget({ ratio: 0.5, minRetriesPerSecond: 0 });
    for (let i = 0; i < 10; i++) budget.recordRequest(0);
    let granted = 0;
    while (budget.tryRetry(0)) granted++;
    expect(granted).to.equal(5);
  });

  it('rejects settings out of range, naming the setting', () => {
    expect(() => new RetryBudget({ ratio: 1.5 })).to.throw(RangeError, 'ratio must be in [0, 1], given 1.5');
    expect(() => new RetryBudget({ minRetriesPerSecond: -1 })).to.throw(RangeError, 'minRetriesPerSecond must be a finite number >= 0, given -1');
    expect(() => new RetryBudget({ windowMs: 0 })).to.throw(RangeError, 'windowMs must be a positive number, given 0');
  });
});
