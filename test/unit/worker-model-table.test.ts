import { expect } from 'chai';
import { ModelTable } from '../../services/worker/model-table';
import { Model } from '../../services/worker/models/runtime';

/** A model that records when it is released. */
function model(name: string, version: string, released: string[]): Model {
  return {
    info: { name, version, description: '', tasks: ['infer'], labels: [], metadata: {} },
    release: async () => {
      released.push(`${name}@${version}`);
    },
  };
}

describe('worker model table', () => {
  it('serves the newest version when none is asked for, and the one asked for otherwise', () => {
    const table = new ModelTable();
    void table.replace('m', [model('m', '2', []), model('m', '10', []), model('m', '1', [])]);
    expect(table.get('m')!.info.version).to.equal('10');
    expect(table.get('m', '2')!.info.version).to.equal('2');
    expect(table.get('m', '3')).to.equal(undefined);
    expect(table.versions('m')).to.deep.equal(['1', '2', '10']);
  });

  it('releases an unloaded model only after its calls in flight have finished', async () => {
    const released: string[] = [];
    const table = new ModelTable();
    void table.replace('m', [model('m', '1', released)]);
    const lease = table.acquire('m')!;
    let done = false;
    const removed = table.remove('m').then(() => (done = true));
    // New calls no longer find it; the one in flight still holds it.
    expect(table.acquire('m')).to.equal(undefined);
    await new Promise((r) => setImmediate(r));
    expect(released).to.deep.equal([]);
    expect(done).to.equal(false);
    lease.release();
    lease.release(); // twice is once
    await removed;
    expect(released).to.deep.equal(['m@1']);
  });

  it('swaps a reload in one step: a call starts on the old model or the new, never on neither', async () => {
    const released: string[] = [];
    const table = new ModelTable();
    void table.replace('m', [model('m', '1', released)]);
    const old = table.acquire('m')!;
    const retired = table.replace('m', [model('m', '1', released)]);
    const fresh = table.acquire('m')!;
    expect(fresh.model).not.to.equal(old.model);
    fresh.release();
    expect(released).to.deep.equal([]);
    old.release();
    await retired;
    expect(released).to.deep.equal(['m@1']);
    expect(table.get('m')).to.equal(fresh.model);
  });
});
