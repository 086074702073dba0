import { expect } from 'chai';
import { getEventListeners } from 'node:events';
import {
  AdmissionQueue,
  type Clock,
  DeadlineInQueueError,
  type Permit,
  type Priority,
  QueueFullError,
  systemClock,
  TenantLimitError,
} from '../../services/scheduler/queue.js';

/** A clock that moves only when told to; advance(ms) fires the timers that fall due, in order. */
class ManualClock implements Clock {
  private time = 1_000_000;
  private seq = 0;
  private readonly timers = new Map<number, { due: number; fn: () => void }>();

  now(): number {
    return this.time;
  }

  setTimer(ms: number, fn: () => void): { cancel(): void } {
    const id = this.seq++;
    this.timers.set(id, { due: this.time + ms, fn });
    return { cancel: () => void this.timers.delete(id) };
  }

  advance(ms: number): void {
    const end = this.time + ms;
    for (;;) {
      let nextId: number | undefined;
      let nextDue = Infinity;
      for (const [id, timer] of this.timers) {
        if (timer.due <= end && timer.due < nextDue) {
          nextId = id;
          nextDue = timer.due;
        }
      }
      if (nextId === undefined) break;
      const timer = this.timers.get(nextId)!;
      this.timers.delete(nextId);
      this.time = Math.max(this.time, timer.due);
      timer.fn();
    }
    this.time = end;
  }

  get pendingTimers(): number {
    return this.timers.size;
  }
}

/** Watches a promise so a test can see whether it has settled, and how, without awaiting it. */
interface Tracked<T> {
  readonly promise: Promise<T>;
  state: 'pending' | 'fulfilled' | 'rejected';
  value?: T;
  error?: unknown;
}

function track<T>(promise: Promise<T>): Tracked<T> {
  const tracked: Tracked<T> = { promise, state: 'pending' };
  promise.then(
    (value) => {
      tracked.state = 'fulfilled';
      tracked.value = value;
    },
    (error: unknown) => {
      tracked.state = 'rejected';
      tracked.error = error;
    },
  );
  return tracked;
}

/** Lets every already-settled promise run its handlers. */
function flush(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

async function expectRejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected the promise to reject, but it resolved');
}

function abortListeners(signal: AbortSignal): number {
  return getEventListeners(signal, 'abort').length;
}

describe('AdmissionQueue', () => {
  let clock: ManualClock;

  beforeEach(() => {
    clock = new ManualClock();
  });

  function fillSlots(queue: AdmissionQueue, n: number): Promise<Permit[]> {
    return Promise.all(Array.from({ length: n }, () => queue.admitOrReject({ priority: 'normal' })));
  }

  describe('admission', () => {
    it('admits up to maxInFlight at once, counting the slot before the promise is awaited and setting no timer', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 3, maxQueued: 2, clock });
      const promises = [0, 1, 2].map(() => queue.admitOrReject({ priority: 'low', deadline: clock.now() + 1000 }));
      expect(queue.inFlight).to.equal(3);
      expect(queue.queued).to.equal(0);
      expect(clock.pendingTimers).to.equal(0);
      const permits = await Promise.all(promises);
      expect(permits.map((p) => p.waitedMs)).to.deep.equal([0, 0, 0]);
    });

    it('queues requests beyond maxInFlight, up to maxQueued, without admitting them', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 2, maxQueued: 3, clock });
      await fillSlots(queue, 2);
      const waiting = [0, 1, 2].map(() => track(queue.admitOrReject({ priority: 'normal' })));
      await flush();
      expect(queue.inFlight).to.equal(2);
      expect(queue.queued).to.equal(3);
      expect(waiting.map((w) => w.state)).to.deep.equal(['pending', 'pending', 'pending']);
    });

    it('rejects at once with QueueFullError naming the limit when maxQueued requests already wait', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 2, clock });
      await fillSlots(queue, 1);
      track(queue.admitOrReject({ priority: 'normal' }));
      track(queue.admitOrReject({ priority: 'normal' }));
      const refused = track(queue.admitOrReject({ priority: 'high' }));
      await flush();
      expect(refused.state).to.equal('rejected');
      expect(refused.error).to.be.instanceOf(QueueFullError);
      expect((refused.error as Error).message).to.equal(
        'queue full: 2 requests waiting (max_queued=2), 1 in flight (max_in_flight=1)',
      );
      expect((refused.error as Error).name).to.equal('QueueFullError');
      expect(queue.queued).to.equal(2);
    });

    it('with maxQueued 0 rejects whenever every slot is busy', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 0, clock });
      await fillSlots(queue, 1);
      const error = await expectRejection(queue.admitOrReject({ priority: 'high' }));
      expect(error).to.be.instanceOf(QueueFullError);
      expect(queue.queued).to.equal(0);
    });

    it('rejects bad limits with the setting name and the value given', () => {
      expect(() => new AdmissionQueue({ maxInFlight: 0, maxQueued: 1 })).to.throw(
        RangeError,
        'max_in_flight must be an integer >= 1, given 0',
      );
      expect(() => new AdmissionQueue({ maxInFlight: 1.5, maxQueued: 1 })).to.throw(RangeError, 'max_in_flight');
      expect(() => new AdmissionQueue({ maxInFlight: 1, maxQueued: -1 })).to.throw(
        RangeError,
        'max_queued must be an integer >= 0, given -1',
      );
    });

    it('rejects an unknown priority without taking a slot', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 1, clock });
      const error = await expectRejection(queue.admitOrReject({ priority: 'urgent' as Priority }));
      expect(error).to.be.instanceOf(RangeError);
      expect((error as Error).message).to.equal('priority must be one of high, normal, low, given "urgent"');
      const inherited = await expectRejection(queue.admitOrReject({ priority: 'constructor' as Priority }));
      expect(inherited).to.be.instanceOf(RangeError);
      expect(queue.inFlight).to.equal(0);
    });

    it('rejects a NaN deadline instead of treating it as no deadline', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 1, clock });
      const error = await expectRejection(queue.admitOrReject({ priority: 'normal', deadline: NaN }));
      expect(error).to.be.instanceOf(RangeError);
      expect(queue.inFlight).to.equal(0);
    });
  });

  describe('release', () => {
    it('hands the released slot straight to the next waiter, which sees how long it waited', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 1, clock });
      const [first] = await fillSlots(queue, 1);
      const waiter = track(queue.admitOrReject({ priority: 'normal' }));
      clock.advance(250);
      first!.release();
      expect(queue.inFlight).to.equal(1);
      expect(queue.queued).to.equal(0);
      await flush();
      expect(waiter.state).to.equal('fulfilled');
      expect(waiter.value!.waitedMs).to.equal(250);
    });

    it('frees the slot when nobody waits, so the next request is admitted at once', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 1, clock });
      const [permit] = await fillSlots(queue, 1);
      permit!.release();
      expect(queue.inFlight).to.equal(0);
      const next = track(queue.admitOrReject({ priority: 'low' }));
      expect(queue.inFlight).to.equal(1);
      await flush();
      expect(next.state).to.equal('fulfilled');
    });

    it('ignores a second release of the same permit', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 2, maxQueued: 2, clock });
      const [a, b] = await fillSlots(queue, 2);
      const w1 = track(queue.admitOrReject({ priority: 'normal' }));
      const w2 = track(queue.admitOrReject({ priority: 'normal' }));
      a!.release();
      a!.release();
      await flush();
      expect(w1.state).to.equal('fulfilled');
      expect(w2.state).to.equal('pending');
      expect(queue.inFlight).to.equal(2);
      expect(queue.queued).to.equal(1);

      b!.release();
      w1.value!.release();
      w1.value!.release();
      await flush();
      expect(w2.state).to.equal('fulfilled');
      expect(queue.inFlight).to.equal(1);
      w2.value!.release();
      w2.value!.release();
      expect(queue.inFlight).to.equal(0);
      expect(queue.stats().admitted).to.equal(4);
    });
  });

  describe('order', () => {
    it('serves high before normal before low, whatever the arrival order', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 10, clock });
      const [holder] = await fillSlots(queue, 1);
      const served: string[] = [];
      const arrivals: Priority[] = ['low', 'normal', 'high', 'low', 'high', 'normal'];
      const done = arrivals.map((priority, i) =>
        queue.admitOrReject({ priority }).then((permit) => {
          served.push(`${priority}${i}`);
          permit.release();
        }),
      );
      holder!.release();
      await Promise.all(done);
      expect(served).to.deep.equal(['high2', 'high4', 'normal1', 'normal5', 'low0', 'low3']);
    });

    it('serves requests of one priority first in, first out', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 100, clock });
      const [holder] = await fillSlots(queue, 1);
      const served: number[] = [];
      const done = Array.from({ length: 50 }, (_, i) =>
        queue.admitOrReject({ priority: 'normal' }).then((permit) => {
          served.push(i);
          permit.release();
        }),
      );
      holder!.release();
      await Promise.all(done);
      expect(served).to.deep.equal(Array.from({ length: 50 }, (_, i) => i));
    });

    it('lets a high-priority arrival overtake low waiters, but not take a slot while one is busy', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 10, clock });
      const [holder] = await fillSlots(queue, 1);
      const low = track(queue.admitOrReject({ priority: 'low' }));
      const high = track(queue.admitOrReject({ priority: 'high' }));
      await flush();
      expect(high.state).to.equal('pending');
      holder!.release();
      await flush();
      expect(high.state).to.equal('fulfilled');
      expect(low.state).to.equal('pending');
    });
  });

  describe('turns between tenants', () => {
    /** Admits in the order the queue grants permits, releasing each at once; returns the tenants in that order. */
    async function grantOrder(queue: AdmissionQueue, waiting: Array<{ tenant: string; promise: Promise<Permit> }>, first: Permit): Promise<string[]> {
      const order: string[] = [];
      waiting.forEach((w) => void w.promise.then((p) => { order.push(w.tenant); p.release(); }));
      first.release();
      await flush();
      await Promise.all(waiting.map((w) => w.promise));
      return order;
    }

    it('serves the waiting tenants of one priority round robin, each in its own arrival order', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 100, clock });
      const [slot] = await fillSlots(queue, 1);
      const arrivals = ['noisy', 'noisy', 'noisy', 'noisy', 'noisy', 'noisy', 'quiet', 'noisy', 'quiet', 'third'];
      const waiting = arrivals.map((tenant, i) => ({ tenant: `${tenant}#${i}`, promise: queue.admitOrReject({ priority: 'normal', tenant }) }));
      const order = await grantOrder(queue, waiting, slot);
      // A plain FIFO would serve all six noisy requests before the quiet tenant's first.
      expect(order).to.deep.equal(['noisy#0', 'quiet#6', 'third#9', 'noisy#1', 'quiet#8', 'noisy#2', 'noisy#3', 'noisy#4', 'noisy#5', 'noisy#7']);
    });

    it('keeps priorities strict: turns apply only within a priority', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 100, clock });
      const [slot] = await fillSlots(queue, 1);
      const waiting = [
        { tenant: 'a-low', promise: queue.admitOrReject({ priority: 'low', tenant: 'a' }) },
        { tenant: 'b-high-1', promise: queue.admitOrReject({ priority: 'high', tenant: 'b' }) },
        { tenant: 'b-high-2', promise: queue.admitOrReject({ priority: 'high', tenant: 'b' }) },
        { tenant: 'a-normal', promise: queue.admitOrReject({ priority: 'normal', tenant: 'a' }) },
      ];
      expect(await grantOrder(queue, waiting, slot)).to.deep.equal(['b-high-1', 'b-high-2', 'a-normal', 'a-low']);
    });

    it('drops a tenant whose last waiter leaves (deadline) from the turns', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 100, clock });
      const [slot] = await fillSlots(queue, 1);
      const gone = track(queue.admitOrReject({ priority: 'normal', tenant: 'gone', deadline: clock.now() + 10 }));
      const waiting = [
        { tenant: 'a1', promise: queue.admitOrReject({ priority: 'normal', tenant: 'a' }) },
        { tenant: 'a2', promise: queue.admitOrReject({ priority: 'normal', tenant: 'a' }) },
      ];
      clock.advance(10);
      await flush();
      expect(gone.state).to.equal('rejected');
      expect(queue.tenantUsage('gone')).to.deep.equal({ open: 0, queued: 0 });
      expect(await grantOrder(queue, waiting, slot)).to.deep.equal(['a1', 'a2']);
    });
  });

  describe('tenant limits', () => {
    const limits = (maxInFlight: number, maxQueued: number) => () => ({ maxInFlight, maxQueued });

    it('refuses a tenant with maxInFlight requests open (running or waiting) with TenantLimitError, while others get in', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 2, maxQueued: 10, clock, tenantLimits: limits(2, 10) });
      await queue.admitOrReject({ priority: 'normal', tenant: 'acme' });
      await queue.admitOrReject({ priority: 'normal', tenant: 'globex' });
      track(queue.admitOrReject({ priority: 'normal', tenant: 'acme' }));
      expect(queue.tenantUsage('acme')).to.deep.equal({ open: 2, queued: 1 });
      const err = await expectRejection(queue.admitOrReject({ priority: 'normal', tenant: 'acme' }));
      expect(err).to.be.instanceOf(TenantLimitError);
      expect([(err as TenantLimitError).limit, (err as TenantLimitError).count, (err as Error).message]).to.deep.equal(['in_flight', 2, 'tenant "acme" has 2 requests in flight, its limit']);
      expect(track(queue.admitOrReject({ priority: 'normal', tenant: 'globex' })).state).to.equal('pending');
      expect(queue.stats().rejected).to.equal(1);
    });

    it('refuses a tenant with maxQueued requests waiting, while the queue has room for others', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 10, clock, tenantLimits: limits(100, 2) });
      await fillSlots(queue, 1);
      track(queue.admitOrReject({ priority: 'normal', tenant: 'acme' }));
      track(queue.admitOrReject({ priority: 'low', tenant: 'acme' }));
      const err = await expectRejection(queue.admitOrReject({ priority: 'high', tenant: 'acme' }));
      expect([(err as TenantLimitError).limit, (err as Error).message]).to.deep.equal(['queued', 'tenant "acme" has 2 requests queued, its limit']);
      expect(track(queue.admitOrReject({ priority: 'normal', tenant: 'globex' })).state).to.equal('pending');
      expect(queue.queued).to.equal(3);
    });

    it('counts a request out of its tenant however it ends: released, expired or aborted', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 10, clock, tenantLimits: limits(3, 3) });
      const running = await queue.admitOrReject({ priority: 'normal', tenant: 'acme' });
      const expiring = track(queue.admitOrReject({ priority: 'normal', tenant: 'acme', deadline: clock.now() + 5 }));
      const abort = new AbortController();
      const aborted = track(queue.admitOrReject({ priority: 'normal', tenant: 'acme', signal: abort.signal }));
      expect(queue.tenantUsage('acme')).to.deep.equal({ open: 3, queued: 2 });
      clock.advance(5);
      abort.abort(new Error('gone'));
      running.release();
      await flush();
      expect([expiring.state, aborted.state]).to.deep.equal(['rejected', 'rejected']);
      expect(queue.tenantUsage('acme')).to.deep.equal({ open: 0, queued: 0 });
    });
  });

  describe('deadlines', () => {
    it('rejects a waiter with DeadlineInQueueError when its deadline passes, and frees its queue place', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 1, clock });
      const [holder] = await fillSlots(queue, 1);
      const waiter = track(queue.admitOrReject({ priority: 'normal', deadline: clock.now() + 512 }));
      clock.advance(511);
      await flush();
      expect(waiter.state).to.equal('pending');

      clock.advance(1);
      await flush();
      expect(waiter.state).to.equal('rejected');
      expect(waiter.error).to.be.instanceOf(DeadlineInQueueError);
      expect((waiter.error as Error).message).to.equal('deadline passed after waiting 512 ms in the queue');
      expect(queue.queued).to.equal(0);
      expect(queue.inFlight).to.equal(1);

      const next = track(queue.admitOrReject({ priority: 'normal' }));
      await flush();
      expect(next.state).to.equal('pending');
      holder!.release();
      await flush();
      expect(next.state).to.equal('fulfilled');
    });

    it('takes an expired waiter out of line, so the slot goes to the one behind it', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 2, clock });
      const [holder] = await fillSlots(queue, 1);
      const early = track(queue.admitOrReject({ priority: 'high', deadline: clock.now() + 10 }));
      const late = track(queue.admitOrReject({ priority: 'low' }));
      clock.advance(10);
      holder!.release();
      await flush();
      expect(early.state).to.equal('rejected');
      expect(late.state).to.equal('fulfilled');
    });

    it('rejects a deadline already past at admission without taking a free slot', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 1, clock });
      const past = await expectRejection(queue.admitOrReject({ priority: 'high', deadline: clock.now() - 30 }));
      expect(past).to.be.instanceOf(DeadlineInQueueError);
      expect((past as Error).message).to.equal('deadline passed 30 ms before the request reached the queue');
      const now = await expectRejection(queue.admitOrReject({ priority: 'high', deadline: clock.now() }));
      expect(now).to.be.instanceOf(DeadlineInQueueError);
      expect(queue.inFlight).to.equal(0);
      expect(queue.queued).to.equal(0);
      expect(clock.pendingTimers).to.equal(0);
    });

    it('cancels the deadline timer when the waiter is admitted, so the deadline no longer matters', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 1, clock });
      const [holder] = await fillSlots(queue, 1);
      const waiter = track(queue.admitOrReject({ priority: 'normal', deadline: clock.now() + 100 }));
      expect(clock.pendingTimers).to.equal(1);
      clock.advance(40);
      holder!.release();
      expect(clock.pendingTimers).to.equal(0);
      clock.advance(1000);
      await flush();
      expect(waiter.state).to.equal('fulfilled');
      expect(waiter.value!.waitedMs).to.equal(40);
      expect(queue.stats().expired).to.equal(0);
    });

    it('sets no timer for an infinite deadline', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 1, clock });
      await fillSlots(queue, 1);
      track(queue.admitOrReject({ priority: 'normal', deadline: Infinity }));
      expect(queue.queued).to.equal(1);
      expect(clock.pendingTimers).to.equal(0);
    });
  });

  describe('abort', () => {
    it('removes an aborted waiter from the queue and rejects with the signal reason', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 2, clock });
      const [holder] = await fillSlots(queue, 1);
      const controller = new AbortController();
      const aborted = track(
        queue.admitOrReject({ priority: 'high', deadline: clock.now() + 1000, signal: controller.signal }),
      );
      const other = track(queue.admitOrReject({ priority: 'low' }));
      const reason = new Error('client cancelled');
      controller.abort(reason);
      expect(queue.queued).to.equal(1);
      expect(clock.pendingTimers).to.equal(0);
      expect(abortListeners(controller.signal)).to.equal(0);
      await flush();
      expect(aborted.state).to.equal('rejected');
      expect(aborted.error).to.equal(reason);

      holder!.release();
      await flush();
      expect(other.state).to.equal('fulfilled');
    });

    it('keeps the rest of the line in order when waiters leave from its middle and its end', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 10, clock });
      const [holder] = await fillSlots(queue, 1);
      const served: number[] = [];
      const controllers = Array.from({ length: 5 }, () => new AbortController());
      const done = controllers.map((controller, i) =>
        queue
          .admitOrReject({ priority: 'normal', signal: controller.signal, deadline: i === 2 ? clock.now() + 5 : undefined })
          .then((permit) => {
            served.push(i);
            permit.release();
          }),
      );
      controllers[1]!.abort();
      controllers[4]!.abort();
      clock.advance(5);
      expect(queue.queued).to.equal(2);
      done.push(
        queue.admitOrReject({ priority: 'normal' }).then((permit) => {
          served.push(5);
          permit.release();
        }),
      );
      holder!.release();
      await Promise.allSettled(done);
      expect(served).to.deep.equal([0, 3, 5]);
      expect(queue.stats()).to.include({ inFlight: 0, queued: 0, cancelled: 2, expired: 1 });
    });

    it('rejects at once with the reason when the signal is already aborted, taking no slot', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 1, clock });
      const reason = new Error('gone');
      const error = await expectRejection(queue.admitOrReject({ priority: 'normal', signal: AbortSignal.abort(reason) }));
      expect(error).to.equal(reason);
      expect(queue.inFlight).to.equal(0);
    });

    it('drops the abort listener once admitted, so a later abort leaves the permit alone', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 1, clock });
      const [holder] = await fillSlots(queue, 1);
      const controller = new AbortController();
      const waiter = track(queue.admitOrReject({ priority: 'normal', signal: controller.signal }));
      expect(abortListeners(controller.signal)).to.equal(1);
      holder!.release();
      expect(abortListeners(controller.signal)).to.equal(0);
      controller.abort();
      await flush();
      expect(waiter.state).to.equal('fulfilled');
      expect(queue.inFlight).to.equal(1);
      expect(queue.stats().cancelled).to.equal(0);
    });

    it('adds no abort listener when admitted at once', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 1, clock });
      const controller = new AbortController();
      await queue.admitOrReject({ priority: 'normal', signal: controller.signal });
      expect(abortListeners(controller.signal)).to.equal(0);
    });

    it('drops the abort listener when the deadline expires first', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 1, clock });
      await fillSlots(queue, 1);
      const controller = new AbortController();
      const waiter = track(
        queue.admitOrReject({ priority: 'normal', deadline: clock.now() + 5, signal: controller.signal }),
      );
      clock.advance(5);
      expect(abortListeners(controller.signal)).to.equal(0);
      controller.abort();
      await flush();
      expect(waiter.error).to.be.instanceOf(DeadlineInQueueError);
      expect(queue.stats()).to.include({ expired: 1, cancelled: 0 });
    });
  });

  describe('stats', () => {
    it('counts admitted, rejected, expired and cancelled requests, and the current gauges', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 2, maxQueued: 2, clock });
      const [a] = await fillSlots(queue, 2); // admitted 2
      const controller = new AbortController();
      const expiring = queue.admitOrReject({ priority: 'normal', deadline: clock.now() + 10 });
      const cancelled = queue.admitOrReject({ priority: 'normal', signal: controller.signal });
      const full = queue.admitOrReject({ priority: 'high' }); // rejected 1
      const late = queue.admitOrReject({ priority: 'high', deadline: clock.now() - 1 }); // expired 1
      expect(queue.stats()).to.include({ inFlight: 2, queued: 2, admitted: 2, rejected: 1, expired: 1, cancelled: 0 });

      clock.advance(10); // expired 2
      controller.abort(); // cancelled 1
      const waiting = queue.admitOrReject({ priority: 'low' });
      a!.release(); // admitted 3, handed to `waiting`
      await Promise.allSettled([expiring, cancelled, full, late, waiting]);
      expect(queue.stats()).to.include({ inFlight: 2, queued: 0, admitted: 3, rejected: 1, expired: 2, cancelled: 1 });
    });
  });

  describe('at scale', () => {
    it('serves 20,000 waiters spread over three priorities in priority, then arrival, order', async () => {
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 20_000, clock });
      const [holder] = await fillSlots(queue, 1);
      const priorities: Priority[] = ['low', 'normal', 'high'];
      const served: Array<[number, number]> = [];
      const done: Array<Promise<void>> = [];
      for (let i = 0; i < 20_000; i++) {
        const level = i % 3;
        done.push(
          queue.admitOrReject({ priority: priorities[level]! }).then((permit) => {
            served.push([level, i]);
            permit.release();
          }),
        );
      }
      holder!.release();
      await Promise.all(done);
      const expected = [...served].sort((x, y) => y[0] - x[0] || x[1] - y[1]);
      expect(served).to.deep.equal(expected);
      expect(queue.stats()).to.include({ inFlight: 0, queued: 0, admitted: 20_001 });
    });
  });
});

describe('systemClock', () => {
  it('reads wall-clock milliseconds, the scale of gRPC deadlines', () => {
    const before = Date.now();
    const now = systemClock.now();
    expect(now).to.be.within(before, Date.now());
  });

  it('does not fire a timer longer than setTimeout can hold at once, and cancel stops it', async () => {
    let fired = false;
    const timer = systemClock.setTimer(2 ** 31 + 1000, () => {
      fired = true;
    });
    // An overflowing setTimeout would fire after 1 ms, before this 5 ms timer does.
    await new Promise((resolve) => setTimeout(resolve, 5));
    timer.cancel();
    expect(fired).to.equal(false);
  });
});
