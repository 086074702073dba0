/** Batching per turn of the event loop (common/turn-batch.ts), on real setImmediate turns. */
import { expect } from 'chai';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { TurnBatch } from '../../common/turn-batch.js';

describe('TurnBatch', () => {
  it('hands every item of one turn, microtasks included, to one flush, after the turn', async () => {
    const flushed: number[][] = [];
    const batch = new TurnBatch<number>((items) => flushed.push(items));
    batch.push(1);
    batch.push(2);
    await Promise.resolve();
    batch.push(3);
    expect(flushed).to.deep.equal([]);
    expect(batch.pending).to.equal(3);
    await nextTurn();
    expect(flushed).to.deep.equal([[1, 2, 3]]);
    expect(batch.pending).to.equal(0);
  });

  it('items pushed while a flush runs go in the next turn', async () => {
    const flushed: string[][] = [];
    const batch = new TurnBatch<string>((items) => {
      flushed.push(items);
      if (items.includes('a')) batch.push('during');
    });
    batch.push('a');
    await nextTurn();
    expect(flushed).to.deep.equal([['a']]);
    expect(batch.pending).to.equal(1);
    await nextTurn();
    expect(flushed).to.deep.equal([['a'], ['during']]);
  });

  it('schedule() runs a flush with nothing queued, once per turn', async () => {
    const flushed: number[][] = [];
    const batch = new TurnBatch<number>((items) => flushed.push(items));
    batch.schedule();
    batch.schedule();
    await nextTurn();
    expect(flushed).to.deep.equal([[]]);
    batch.schedule();
    batch.push(7);
    await nextTurn();
    expect(flushed).to.deep.equal([[], [7]]);
  });

  it('take() removes what is queued: the turn flushes only what comes after', async () => {
    const flushed: number[][] = [];
    const batch = new TurnBatch<number>((items) => flushed.push(items));
    batch.push(1);
    expect(batch.take()).to.deep.equal([1]);
    batch.push(2);
    await nextTurn();
    expect(flushed).to.deep.equal([[2]]);
  });

  it('nothing flushes after close: not what was queued, not what is pushed later', async () => {
    const flushed: number[][] = [];
    const batch = new TurnBatch<number>((items) => flushed.push(items));
    batch.push(1);
    batch.close();
    batch.push(2);
    batch.schedule();
    expect(batch.closed).to.equal(true);
    expect(batch.pending).to.equal(0);
    await nextTurn();
    await nextTurn();
    expect(flushed).to.deep.equal([]);
  });

  it('afterWrites: the flush goes after the writes the same turn queued after it, and take() and close() still hold until then', async () => {
    const order: string[] = [];
    const plain = new TurnBatch<string>((items) => order.push(`plain ${items.join()}`));
    const late = new TurnBatch<string>((items) => order.push(`late ${items.join()}`), { afterWrites: true });
    late.push('a');
    plain.push('b');
    // A write queued in the same turn after both pushes (as a call stream's frame to a worker is).
    setImmediate(() => order.push('write'));
    await nextTurn();
    expect(order).to.deep.equal(['plain b', 'write']);
    // Still queued: what a stream that drops now takes is not flushed after it.
    expect(late.pending).to.equal(1);
    late.push('c');
    await nextTurn();
    expect(order).to.deep.equal(['plain b', 'write', 'late a,c']);

    late.push('d');
    expect(late.take()).to.deep.equal(['d']);
    late.push('e');
    late.close();
    await nextTurn();
    await nextTurn();
    expect(order).to.deep.equal(['plain b', 'write', 'late a,c']);
  });
});
