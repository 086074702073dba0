/** The aggregator's durable store: exactly-once commits, persistence across reopen, forget. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { expect } from 'chai';
import { MeshError } from '../../common/errors';
import { ReduceSpec, ShardOutput, createReducer } from '../../services/aggregator/reducers';
import { AggregatorStore, STORE_FILE } from '../../services/aggregator/store';

const sum: ReduceSpec = { reducer: 'sum', topK: 0, tasksTotal: 3, outputFile: '', positiveLabel: '', meanOf: '' };

function words(counts: Record<string, number>, records = 1): ShardOutput {
  return { records, wordCounts: counts, totalWords: Object.values(counts).reduce((a, b) => a + b, 0), outputs: [] };
}

function collected(...rows: [number, string][]): ShardOutput {
  return { records: rows.length, wordCounts: {}, totalWords: 0, outputs: rows.map(([index, output]) => ({ index, output, label: '', score: 0 })) };
}

const shards = [words({ a: 2, b: 1 }, 2), words({ b: 3 }, 1), words({ c: 1, a: 1 }, 4)];

/** What reducing `outputs` directly gives. */
function expected(spec: ReduceSpec, outputs: ShardOutput[], final: boolean) {
  const reducer = createReducer(spec);
  return reducer.snapshot(outputs.reduce((s, o) => reducer.fold(s, o), reducer.initial()), final);
}

describe('aggregator store', () => {
  let root: string;
  let dir: string;
  let store: AggregatorStore;
  let seq = 0;

  before(() => {
    root = mkdtempSync(join(tmpdir(), 'maas-aggregator-store-'));
  });
  beforeEach(() => {
    dir = join(root, `case-${seq++}`);
    store = new AggregatorStore(dir);
  });
  afterEach(() => store.close());
  after(() => rmSync(root, { recursive: true, force: true }));

  it('counts a first commit and folds it into the partial result', () => {
    const outcome = store.commit('job-1', 0, 1, sum, shards[0]);
    expect(outcome).to.deep.equal({ duplicate: false, tasksCommitted: 1, partial: expected(sum, [shards[0]], false) });
    expect(store.progress('job-1')).to.deep.equal({ spec: sum, tasksCommitted: 1 });
  });

  it('takes another attempt of a committed task as a duplicate: nothing counted twice, the first attempt wins', () => {
    store.commit('job-1', 0, 1, sum, shards[0]);
    const again = store.commit('job-1', 0, 2, sum, words({ zzz: 100 }, 50));
    expect(again).to.deep.equal({ duplicate: true, tasksCommitted: 1, partial: expected(sum, [shards[0]], false) });
    expect(store.committedTasks('job-1')).to.deep.equal([{ taskIndex: 0, attempt: 1, records: 2 }]);
  });

  it('keeps state, committed count and duplicate detection when closed and reopened on the same file', () => {
    store.commit('job-1', 2, 1, sum, shards[2]);
    store.commit('job-1', 0, 3, sum, shards[0]);
    store.close();

    store = new AggregatorStore(dir);
    expect(store.progress('job-1')).to.deep.equal({ spec: sum, tasksCommitted: 2 });
    expect(store.result('job-1', false)).to.deep.equal(expected(sum, [shards[0], shards[2]], false));
    expect(store.commit('job-1', 2, 2, sum, words({ zzz: 1 })).duplicate).to.equal(true);
    const last = store.commit('job-1', 1, 1, sum, shards[1]);
    expect(last.duplicate).to.equal(false);
    expect(last.tasksCommitted).to.equal(3);
    expect(store.result('job-1', true)).to.deep.equal(expected(sum, shards, true));
    expect(store.committedTasks('job-1').map((t) => [t.taskIndex, t.attempt])).to.deep.equal([
      [0, 3],
      [1, 1],
      [2, 1],
    ]);
  });

  it('rebuilds a job dropped from memory from its rows, with the same result and duplicates still detected', () => {
    store.close();
    store = new AggregatorStore(dir, { cachedJobs: 1 });
    store.commit('job-a', 0, 1, sum, shards[0]);
    store.commit('job-a', 1, 1, sum, shards[1]);
    store.commit('job-b', 0, 1, sum, shards[2]); // job-a leaves memory
    expect(store.commit('job-a', 1, 2, sum, shards[2])).to.deep.equal({ duplicate: true, tasksCommitted: 2, partial: expected(sum, shards.slice(0, 2), false) });
    expect(store.commit('job-a', 2, 1, sum, shards[2]).tasksCommitted).to.equal(3);
    expect(store.result('job-a', true)).to.deep.equal(expected(sum, shards, true));
    expect(store.result('job-b', true)).to.deep.equal(expected(sum, [shards[2]], true));
  });

  it('forget removes the job and its tasks: unknown afterwards, and its tasks can be committed anew', () => {
    store.commit('job-1', 0, 1, sum, shards[0]);
    store.commit('job-2', 0, 1, sum, shards[1]);
    expect(store.forget('job-1')).to.equal(true);
    expect(store.progress('job-1')).to.equal(undefined);
    expect(store.result('job-1', true)).to.equal(undefined);
    expect(store.committedTasks('job-1')).to.deep.equal([]);
    expect(store.forget('job-1')).to.equal(false);
    expect(store.progress('job-2')?.tasksCommitted).to.equal(1);

    store.close();
    store = new AggregatorStore(dir);
    expect(store.progress('job-1')).to.equal(undefined);
    expect(store.commit('job-1', 0, 2, sum, shards[2])).to.include({ duplicate: false, tasksCommitted: 1 });
  });

  it('refuses a commit whose spec differs from the job first commit, naming the field, and changes nothing', () => {
    store.commit('job-1', 0, 1, sum, shards[0]);
    let error: unknown;
    try {
      store.commit('job-1', 1, 1, { ...sum, reducer: 'top_k', topK: 5 }, shards[1]);
    } catch (err) {
      error = err;
    }
    expect(error).to.be.instanceOf(MeshError);
    expect((error as MeshError).kind).to.equal('failed_precondition');
    expect((error as MeshError).message).to.equal('job job-1 is reduced with reduce.reducer "sum", this call gives "top_k"');
    expect(store.progress('job-1')?.tasksCommitted).to.equal(1);
    expect(store.committedTasks('job-1')).to.have.length(1);
  });

  it('returns every collected output in index order, tasks committed in any order, beyond the result cap', () => {
    const collect: ReduceSpec = { ...sum, reducer: 'collect', tasksTotal: 3 };
    const shard = (from: number, n: number) => collected(...Array.from({ length: n }, (_, i) => [from + i, `o${from + i}`] as [number, string]));
    store.commit('job-c', 2, 1, collect, shard(12000, 3000));
    store.commit('job-c', 0, 1, collect, shard(0, 6000));
    store.commit('job-c', 1, 1, collect, shard(6000, 6000));
    const all = store.collectedOutputs('job-c');
    expect(all).to.have.length(15000);
    expect(all.every((o, i) => o.index === i && o.output === `o${i}`)).to.equal(true);
  });

  it('refuses a second store on the same data directory while the first is open', () => {
    store.commit('job-1', 0, 1, sum, shards[0]);
    expect(() => new AggregatorStore(dir)).to.throw(/in use by another process/);
    expect(store.commit('job-1', 1, 1, sum, shards[1]).tasksCommitted).to.equal(2);
  });

  it('keeps its file in WAL journal mode', () => {
    store.close();
    const db = new Database(join(dir, STORE_FILE), { readonly: true });
    try {
      expect(db.pragma('journal_mode', { simple: true })).to.equal('wal');
    } finally {
      db.close();
    }
  });
});
