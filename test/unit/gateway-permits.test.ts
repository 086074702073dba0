import { expect } from 'chai';
import { silentLogger } from '../../common/log.js';
import { PermitClient } from '../../gateway/permits.js';
import { PermitsRequest, PermitsResponse } from '../../generated/maas/internal/v1/scheduler.js';
import { until } from '../support.js';

/** The scheduler's side of one Permits stream, played by the test. */
class FakeScheduler {
  readonly requests: PermitsRequest[] = [];
  streams = 0;
  private push: ((r: PermitsResponse) => void) | undefined;
  private fail: ((err: Error) => void) | undefined;

  readonly open = (requests: AsyncIterable<PermitsRequest>, options: { signal: AbortSignal }): AsyncIterable<PermitsResponse> => {
    this.streams++;
    void (async () => {
      try {
        for await (const r of requests) this.requests.push(r);
      } catch {
        // the stream ended
      }
    })();
    const queue: PermitsResponse[] = [{ grants: [], renewals: [], revoked: [] }];
    let wake: (() => void) | undefined;
    let failed: Error | undefined;
    this.push = (r) => {
      queue.push(r);
      wake?.();
    };
    this.fail = (err) => {
      failed = err;
      wake?.();
    };
    const signal = options.signal;
    return {
      async *[Symbol.asyncIterator]() {
        for (;;) {
          const next = queue.shift();
          if (next) {
            yield next;
            continue;
          }
          if (failed) throw failed;
          if (signal.aborted) return;
          await new Promise<void>((resolve) => (wake = resolve));
        }
      },
    };
  };

  send(r: Partial<PermitsResponse>) {
    this.push!({ grants: [], renewals: [], revoked: [], ...r });
  }

  breakStream() {
    this.fail!(new Error('connection reset'));
  }

  /** Everything the gateway sent so far, flattened. */
  get asks() {
    return this.requests.flatMap((r) => r.asks);
  }
  get usage() {
    return this.requests.flatMap((r) => r.usage);
  }
  get ends() {
    return this.requests.flatMap((r) => r.ends);
  }
}

async function turns(n: number) {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
}

describe('the gateway\'s permits (PermitClient)', () => {
  let scheduler: FakeScheduler;
  let client: PermitClient;
  afterEach(() => client?.close());

  function start(o: { idleMs?: number } = {}) {
    scheduler = new FakeScheduler();
    client = new PermitClient({ open: scheduler.open, log: silentLogger, idleMs: o.idleMs ?? 60_000, reconnectMs: 5 });
  }

  it('a call that finds no permit asks for one more; a granted permit runs the next calls, one at a time', async () => {
    start();
    await until(() => client.streamUp, 2000, 'the stream');
    expect(client.take('acme')).to.equal(undefined);
    expect(client.take('acme')).to.equal(undefined);
    await until(() => scheduler.asks.length > 0, 2000, 'an ask');
    // Two calls found none in one turn: one ask, for two.
    expect(scheduler.asks).to.deep.equal([{ tenant: 'acme', permits: 2 }]);
    scheduler.send({ grants: [{ permitId: 7, tenant: 'acme', calls: 4 }] });
    await until(() => client.heldFor('acme') === 1, 2000, 'the grant');
    const first = client.take('acme');
    expect(first, 'a call on the permit').to.be.a('function');
    // The permit runs one call at a time: a second call at once finds none free.
    expect(client.take('acme')).to.equal(undefined);
    first!();
    const second = client.take('acme');
    expect(second).to.be.a('function');
    second!();
    expect(client.callsOnPermits).to.equal(2);
    // Another tenant's permits are its own.
    expect(client.take('globex')).to.equal(undefined);
  });

  it('reports the calls a permit ran once half its budget is spent, and stops at an empty budget until the renewal', async () => {
    start();
    await until(() => client.streamUp, 2000, 'the stream');
    client.take('acme');
    scheduler.send({ grants: [{ permitId: 1, tenant: 'acme', calls: 4 }] });
    await until(() => client.heldFor('acme') === 1, 2000, 'the grant');
    for (let i = 0; i < 2; i++) client.take('acme')!();
    await until(() => scheduler.usage.length === 1, 2000, 'a report');
    expect(scheduler.usage[0].permitId).to.equal(1);
    expect(scheduler.usage[0].calls).to.equal(2);
    for (let i = 0; i < 2; i++) client.take('acme')!();
    // Budget spent, renewal not here yet: no call on it.
    expect(client.take('acme')).to.equal(undefined);
    scheduler.send({ renewals: [{ permitId: 1, tenant: '', calls: 2 }] });
    await until(() => client.take('acme') !== undefined, 2000, 'the renewal');
  });

  it('gives back a revoked permit at once when idle, and after its call when busy', async () => {
    start();
    await until(() => client.streamUp, 2000, 'the stream');
    client.take('acme');
    client.take('acme');
    scheduler.send({ grants: [{ permitId: 1, tenant: 'acme', calls: 10 }, { permitId: 2, tenant: 'acme', calls: 10 }] });
    await until(() => client.heldFor('acme') === 2, 2000, 'the grants');
    const busy = client.take('acme')!;
    scheduler.send({ revoked: [1, 2] });
    await until(() => scheduler.ends.length === 1, 2000, 'the idle one back');
    expect(client.take('acme'), 'no permit left free').to.equal(undefined);
    busy();
    await until(() => scheduler.ends.length === 2, 2000, 'the busy one back after its call');
    expect(scheduler.ends.map((e) => e.permitId).sort()).to.deep.equal([1, 2]);
    expect(scheduler.ends.find((e) => e.calls === 1), 'the call it ran, reported with it').to.not.equal(undefined);
    expect(client.heldFor('acme')).to.equal(0);
  });

  it('gives back a permit that ran no call for idleMs, and asks for one fewer', async () => {
    start({ idleMs: 50 });
    await until(() => client.streamUp, 2000, 'the stream');
    client.take('acme');
    scheduler.send({ grants: [{ permitId: 3, tenant: 'acme', calls: 10 }] });
    await until(() => client.heldFor('acme') === 1, 2000, 'the grant');
    await until(() => scheduler.ends.length === 1, 2000, 'the idle permit back');
    expect(scheduler.ends[0]).to.deep.equal({ permitId: 3, calls: 0, busyUs: 0 });
    expect(scheduler.asks.at(-1)).to.deep.equal({ tenant: 'acme', permits: 0 });
  });

  it('withdraws the asks not yet granted once a permit idles out: nothing is granted for a burst that has passed', async () => {
    start({ idleMs: 50 });
    await until(() => client.streamUp, 2000, 'the stream');
    // A burst: five calls find no permit, so the tenant asks for five.
    for (let i = 0; i < 5; i++) expect(client.take('acme')).to.equal(undefined);
    await until(() => scheduler.asks.length > 0, 2000, 'the asks');
    expect(scheduler.asks.at(-1)).to.deep.equal({ tenant: 'acme', permits: 5 });
    // Two are granted; one runs a call and stays busy, the other idles out.
    scheduler.send({ grants: [{ permitId: 1, tenant: 'acme', calls: 10 }, { permitId: 2, tenant: 'acme', calls: 10 }] });
    await until(() => client.heldFor('acme') === 2, 2000, 'the grants');
    const done = client.take('acme');
    expect(done).to.be.a('function');
    await until(() => scheduler.ends.length === 1, 2000, 'the idle permit back');
    // The ask falls to the one permit kept, not to 5 - 1 = 4 (three more that nothing would run on).
    expect(scheduler.asks.at(-1)).to.deep.equal({ tenant: 'acme', permits: 1 });
    done!();
    await until(() => scheduler.ends.length === 2, 2000, 'the second permit back once idle');
    expect(scheduler.asks.at(-1)).to.deep.equal({ tenant: 'acme', permits: 0 });
  });

  it('when the stream breaks, drops every permit (the scheduler released them), says nothing of them on the next stream, and asks again', async () => {
    start();
    await until(() => client.streamUp, 2000, 'the stream');
    client.take('acme');
    scheduler.send({ grants: [{ permitId: 1, tenant: 'acme', calls: 10 }] });
    await until(() => client.heldFor('acme') === 1, 2000, 'the grant');
    const running = client.take('acme')!;
    scheduler.breakStream();
    await until(() => scheduler.streams === 2 && client.streamUp, 2000, 'a new stream');
    expect(client.heldFor('acme')).to.equal(0);
    const before = scheduler.requests.length;
    running();
    await turns(3);
    expect(scheduler.requests.slice(before).flatMap((r) => [...r.usage, ...r.ends]), 'nothing of the old stream\'s permit').to.deep.equal([]);
    expect(scheduler.asks.at(-1)).to.deep.equal({ tenant: 'acme', permits: 1 });
  });

  it('gives back at once a permit granted for a tenant it no longer asks for', async () => {
    start();
    await until(() => client.streamUp, 2000, 'the stream');
    scheduler.send({ grants: [{ permitId: 9, tenant: 'nobody', calls: 5 }] });
    await until(() => scheduler.ends.length === 1, 2000, 'the permit back');
    expect(scheduler.ends[0]).to.deep.equal({ permitId: 9, calls: 0, busyUs: 0 });
  });
});
