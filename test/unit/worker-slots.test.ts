import { expect } from 'chai';
import { MovingAverage } from '../../common/moving-average.js';
import { SlotQueue } from '../../services/worker/slots.js';

/** Settles `p` into 'resolved' / 'rejected: <message>', or 'pending' if it has not settled after the microtasks run. */
async function stateOf(p: Promise<unknown>): Promise<string> {
  let state = 'pending';
  p.then(
    () => (state = 'resolved'),
    (err: Error) => (state = `rejected: ${err.message}`),
  );
  await new Promise((r) => setImmediate(r));
  return state;
}

describe('worker SlotQueue', () => {
  it('hands out `limit` slots at once, then makes callers wait', async () => {
    const slots = new SlotQueue(2, 5);
    expect(slots.tryAcquire()).to.equal(true);
    expect(slots.tryAcquire()).to.equal(true);
    expect(slots.tryAcquire()).to.equal(false);
    const third = slots.acquire();
    expect(await stateOf(third)).to.equal('pending');
    expect({ running: slots.running, waiting: slots.waiting }).to.deep.equal({ running: 2, waiting: 1 });
  });

  it('gives a released slot to the first waiter, not to a newcomer', async () => {
    const slots = new SlotQueue(1, 5);
    slots.tryAcquire();
    const order: string[] = [];
    const a = slots.acquire().then(() => order.push('a'));
    const b = slots.acquire().then(() => order.push('b'));
    slots.release();
    // The slot went to a: a newcomer finds none free, even before a's continuation has run.
    expect(slots.tryAcquire()).to.equal(false);
    await a;
    slots.release();
    await b;
    expect(order).to.deep.equal(['a', 'b']);
    expect(slots.running).to.equal(1);
    slots.release();
    expect(slots.idle).to.equal(true);
  });

  it('refuses a caller when maxWaiting callers already wait', async () => {
    const slots = new SlotQueue(1, 1);
    slots.tryAcquire();
    void slots.acquire();
    expect(slots.queueFull).to.equal(true);
    expect(await stateOf(slots.acquire())).to.equal('rejected: the queue is full (1 waiting)');
  });

  it('with maxWaiting 0 nobody waits', async () => {
    const slots = new SlotQueue(1, 0);
    slots.tryAcquire();
    expect(slots.queueFull).to.equal(true);
    expect(await stateOf(slots.acquire())).to.match(/^rejected: the queue is full/);
  });

  it('a caller whose signal aborts leaves the line and gets no slot', async () => {
    const slots = new SlotQueue(1, 5);
    slots.tryAcquire();
    const controller = new AbortController();
    const waiting = slots.acquire(controller.signal);
    const next = slots.acquire();
    controller.abort(new Error('caller gave up'));
    expect(await stateOf(waiting)).to.equal('rejected: caller gave up');
    expect(slots.waiting).to.equal(1);
    slots.release();
    expect(await stateOf(next)).to.equal('resolved');
    expect(slots.running).to.equal(1);
  });

  it('refuseWaiting turns every waiter away and leaves the running slots alone', async () => {
    const slots = new SlotQueue(1, 5);
    slots.tryAcquire();
    const a = slots.acquire();
    const b = slots.acquire();
    slots.refuseWaiting(new Error('shutting down'));
    expect(await stateOf(a)).to.equal('rejected: shutting down');
    expect(await stateOf(b)).to.equal('rejected: shutting down');
    expect({ running: slots.running, waiting: slots.waiting }).to.deep.equal({ running: 1, waiting: 0 });
  });

  it('rejects a limit below 1 and a negative queue bound', () => {
    expect(() => new SlotQueue(0, 1)).to.throw(RangeError, 'limit must be an integer >= 1, given 0');
    expect(() => new SlotQueue(1, -1)).to.throw(RangeError, 'maxWaiting must be an integer >= 0, given -1');
  });
});

describe('MovingAverage (common)', () => {
  it('takes the first sample as it is, then moves alpha of the way to each new one', () => {
    const avg = new MovingAverage(0.25);
    expect(avg.value).to.equal(undefined);
    avg.add(100);
    expect(avg.value).to.equal(100);
    avg.add(20);
    expect(avg.value).to.equal(80);
  });

  it('rejects an alpha outside (0, 1]', () => {
    expect(() => new MovingAverage(0)).to.throw(RangeError);
    expect(() => new MovingAverage(1.5)).to.throw(RangeError);
  });
});
