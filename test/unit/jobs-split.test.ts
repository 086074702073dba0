import { expect } from 'chai';
import { splitIntoTasks } from '../../services/scheduler/jobs/split.js';

describe('jobs: splitIntoTasks', () => {
  it('makes no tasks for no records', () => {
    expect(splitIntoTasks(0, 100)).to.deep.equal([]);
  });

  it('cuts records into shards of shardSize, the last one shorter', () => {
    expect(splitIntoTasks(10, 4)).to.deep.equal([
      { index: 0, first: 0, count: 4 },
      { index: 1, first: 4, count: 4 },
      { index: 2, first: 8, count: 2 },
    ]);
  });

  it('makes equal shards when shardSize divides the records', () => {
    expect(splitIntoTasks(9, 3).map((t) => t.count)).to.deep.equal([3, 3, 3]);
  });

  it('makes one task when shardSize exceeds the records', () => {
    expect(splitIntoTasks(7, 100)).to.deep.equal([{ index: 0, first: 0, count: 7 }]);
  });

  it('covers every record exactly once, in order, with consecutive indices', () => {
    for (const [total, size] of [[1, 1], [100, 1], [101, 10], [6046, 100], [5, 5], [17, 3]] as const) {
      const tasks = splitIntoTasks(total, size);
      expect(tasks.length, `${total}/${size}`).to.equal(Math.ceil(total / size));
      let next = 0;
      tasks.forEach((t, i) => {
        expect(t.index).to.equal(i);
        expect(t.first).to.equal(next);
        expect(t.count).to.be.within(1, size);
        next += t.count;
      });
      expect(next).to.equal(total);
    }
  });

  it('rejects a shardSize below 1 or not an integer, and a negative or fractional record count', () => {
    expect(() => splitIntoTasks(10, 0)).to.throw(RangeError, 'shard_size must be an integer >= 1, given 0');
    expect(() => splitIntoTasks(10, -3)).to.throw(RangeError, 'shard_size');
    expect(() => splitIntoTasks(10, 1.5)).to.throw(RangeError, 'shard_size');
    expect(() => splitIntoTasks(10, Number.NaN)).to.throw(RangeError, 'shard_size');
    expect(() => splitIntoTasks(-1, 10)).to.throw(RangeError, 'records_total must be an integer >= 0, given -1');
    expect(() => splitIntoTasks(2.5, 10)).to.throw(RangeError, 'records_total');
  });
});
