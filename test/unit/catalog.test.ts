import { expect } from 'chai';
import { type CatalogEntry, ModelCatalog, compareVersionsNewestFirst } from '../../gateway/catalog.js';

/** A stand-in for the balancer's model list: counts fetches and serves whatever `models` holds. */
class FakeBalancer {
  models: CatalogEntry[] = [];
  calls = 0;
  /** When set, the next fetches fail with this error. */
  failWith: Error | undefined;
  /** When true, fetches wait until release() is called. */
  hold = false;
  private waiting: (() => void)[] = [];

  readonly fetch = async (): Promise<CatalogEntry[]> => {
    this.calls++;
    if (this.hold) await new Promise<void>((resolve) => this.waiting.push(resolve));
    if (this.failWith) throw this.failWith;
    return this.models.map((m) => ({ ...m }));
  };

  release(): void {
    for (const resolve of this.waiting.splice(0)) resolve();
  }
}

/** A clock that moves only when told to. */
class ManualClock {
  time = 1_000;
  readonly now = () => this.time;
}

const names = (models: CatalogEntry[]) => models.map((m) => m.name);

describe('ModelCatalog', () => {
  let balancer: FakeBalancer;
  let clock: ManualClock;
  let catalog: ModelCatalog<CatalogEntry>;

  beforeEach(() => {
    balancer = new FakeBalancer();
    balancer.models = [{ name: 'echo' }, { name: 'ngram' }];
    clock = new ManualClock();
    catalog = new ModelCatalog(balancer.fetch, 1000, clock.now);
  });

  it('lists the models the fetch returned', async () => {
    expect(names(await catalog.list())).to.deep.equal(['echo', 'ngram']);
  });

  it('fetches once for several lists within the TTL', async () => {
    await catalog.list();
    clock.time += 500;
    await catalog.list();
    clock.time += 499;
    await catalog.list();
    expect(balancer.calls).to.equal(1);
  });

  it('serves a cached list within the TTL even when the balancer has changed', async () => {
    await catalog.list();
    balancer.models.push({ name: 'spam-nb' });
    clock.time += 999;
    expect(names(await catalog.list())).to.deep.equal(['echo', 'ngram']);
  });

  it('refetches once the TTL has passed', async () => {
    await catalog.list();
    balancer.models.push({ name: 'spam-nb' });
    clock.time += 1000;
    expect([names(await catalog.list()), balancer.calls]).to.deep.equal([['echo', 'ngram', 'spam-nb'], 2]);
  });

  it('with a TTL of 0 fetches on every list', async () => {
    catalog = new ModelCatalog(balancer.fetch, 0, clock.now);
    await catalog.list();
    await catalog.list();
    expect(balancer.calls).to.equal(2);
  });

  it('finds a known model in an expired list without waiting for the refresh, which it starts', async () => {
    await catalog.list();
    balancer.models.push({ name: 'spam-nb' });
    clock.time += 1000;
    balancer.hold = true;
    // With a held fetch, a lookup that waited for the refresh would never settle.
    const found = await Promise.race([catalog.find('ngram'), new Promise<string>((resolve) => setImmediate(() => resolve('waited for the refresh')))]);
    expect([typeof found === 'string' ? found : found?.name, balancer.calls]).to.deep.equal(['ngram', 2]);
    balancer.release();
    expect([names(await catalog.list()), balancer.calls]).to.deep.equal([['echo', 'ngram', 'spam-nb'], 2]);
  });

  it('finds a cached model without another fetch', async () => {
    await catalog.list();
    expect([(await catalog.find('ngram'))?.name, balancer.calls]).to.deep.equal(['ngram', 1]);
  });

  it('on a miss refreshes once within the TTL and finds a newly added model', async () => {
    await catalog.list();
    balancer.models.push({ name: 'spam-nb' });
    expect([(await catalog.find('spam-nb'))?.name, balancer.calls]).to.deep.equal(['spam-nb', 2]);
  });

  it('returns undefined for a model that is still missing after the refresh, having fetched once more', async () => {
    await catalog.list();
    expect([await catalog.find('nope'), balancer.calls]).to.deep.equal([undefined, 2]);
  });

  it('restarts the TTL after a refresh forced by a miss', async () => {
    await catalog.list();
    clock.time += 900;
    balancer.models.push({ name: 'spam-nb' });
    await catalog.find('spam-nb');
    clock.time += 900;
    await catalog.list();
    expect(balancer.calls).to.equal(2);
  });

  it('shares one fetch between concurrent lists on a cold cache', async () => {
    balancer.hold = true;
    const lists = Promise.all([catalog.list(), catalog.list(), catalog.list()]);
    balancer.release();
    const results = await lists;
    expect([results.map(names), balancer.calls]).to.deep.equal([[['echo', 'ngram'], ['echo', 'ngram'], ['echo', 'ngram']], 1]);
  });

  it('shares one refresh between concurrent misses', async () => {
    await catalog.list();
    balancer.models.push({ name: 'spam-nb' });
    balancer.hold = true;
    const finds = Promise.all([catalog.find('spam-nb'), catalog.find('spam-nb'), catalog.find('spam-nb')]);
    // Let every find see the miss and join the pending refresh before it completes.
    await new Promise((resolve) => setImmediate(resolve));
    balancer.release();
    const found = await finds;
    expect([found.map((m) => m?.name), balancer.calls]).to.deep.equal([['spam-nb', 'spam-nb', 'spam-nb'], 2]);
  });

  it('rejects with the fetch error when the fetch fails', async () => {
    balancer.failWith = new Error('balancer unavailable');
    let caught: unknown;
    await catalog.list().catch((err: unknown) => (caught = err));
    expect(caught).to.equal(balancer.failWith);
  });

  it('retries on the next call after a failed fetch', async () => {
    balancer.failWith = new Error('balancer unavailable');
    await catalog.list().catch(() => undefined);
    balancer.failWith = undefined;
    expect([names(await catalog.list()), balancer.calls]).to.deep.equal([['echo', 'ngram'], 2]);
  });

  it('keeps serving the cached list within the TTL after a failed forced refresh', async () => {
    await catalog.list();
    balancer.failWith = new Error('balancer unavailable');
    await catalog.find('nope').catch(() => undefined);
    expect([names(await catalog.list()), balancer.calls]).to.deep.equal([['echo', 'ngram'], 2]);
  });

  it('keeps every version of a model: versions() lists them newest first (10 above 9), find() answers the newest', async () => {
    balancer.models = [{ name: 'mlp', version: '9' }, { name: 'mlp', version: '10' }, { name: 'mlp', version: '2' }, { name: 'echo', version: '1' }];
    expect((await catalog.versions('mlp')).map((m) => m.version)).to.deep.equal(['10', '9', '2']);
    expect((await catalog.find('mlp'))?.version).to.equal('10');
    expect((await catalog.list()).length).to.equal(4);
  });

  it('find() passes over a newest version that has no ready worker', async () => {
    balancer.models = [{ name: 'mlp', version: '1', readyWorkers: 2 }, { name: 'mlp', version: '2', readyWorkers: 0 }];
    expect((await catalog.find('mlp'))?.version).to.equal('1');
  });

  it('orders integer versions by value, above any other version string', () => {
    expect(['a', '3', '20', 'b', '100'].sort(compareVersionsNewestFirst)).to.deep.equal(['100', '20', '3', 'b', 'a']);
  });
});
