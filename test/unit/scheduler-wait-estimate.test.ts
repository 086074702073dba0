import { expect } from 'chai';
import { AdmissionQueue, type Clock, DeadlineUnmeetableError, type Permit } from '../../services/scheduler/queue.js';
import { ServiceTimeEstimate, expectedWaitMs, judgeDeadline } from '../../services/scheduler/wait-estimate.js';

/** A clock moved by hand; the queue's timers are not needed by these tests and never fire. */
class StepClock implements Clock {
  time = 1_000_000;
  now(): number {
    return this.time;
  }
  setTimer(): { cancel(): void } {
    return { cancel: () => undefined };
  }
}

describe('scheduler wait estimate', () => {
  describe('ServiceTimeEstimate', () => {
    it('has no value before the first completion, takes the first as is, then moves by its weight', () => {
      const e = new ServiceTimeEstimate(0.5);
      expect(e.valueMs).to.equal(undefined);
      e.observe(100);
      expect(e.valueMs).to.equal(100);
      e.observe(300);
      expect(e.valueMs).to.equal(200);
    });

    it('ignores negative and non-finite samples', () => {
      const e = new ServiceTimeEstimate();
      e.observe(-5);
      e.observe(NaN);
      e.observe(Infinity);
      expect(e.valueMs).to.equal(undefined);
    });

    it('refuses a weight outside (0, 1], naming it', () => {
      expect(() => new ServiceTimeEstimate(0)).to.throw(RangeError, /service time weight must be in \(0, 1\], given 0/);
      expect(() => new ServiceTimeEstimate(1.5)).to.throw(RangeError, /given 1.5/);
    });
  });

  describe('expectedWaitMs', () => {
    it('is one service time per wave of slots the requests ahead and it fill', () => {
      expect(expectedWaitMs(0, 4, 100)).to.equal(100);
      expect(expectedWaitMs(3, 4, 100)).to.equal(100);
      expect(expectedWaitMs(4, 4, 100)).to.equal(200);
      expect(expectedWaitMs(3, 1, 100)).to.equal(400);
    });
  });

  describe('judgeDeadline', () => {
    it('admits with no deadline or no estimate yet', () => {
      expect(judgeDeadline({ ahead: 1000, slots: 1, serviceMs: undefined, remainingMs: 1 })).to.deep.equal({ admit: true });
      expect(judgeDeadline({ ahead: 1000, slots: 1, serviceMs: 100, remainingMs: undefined })).to.deep.equal({ admit: true });
    });

    it('admits when the expected wait plus one service time fits the remaining deadline, exactly included', () => {
      // 3 ahead, 2 slots, 100 ms each: it is in the second wave, wait 200 ms, done after 300 ms.
      expect(judgeDeadline({ ahead: 3, slots: 2, serviceMs: 100, remainingMs: 300 }).admit).to.equal(true);
    });

    it('refuses when it does not, naming the expected wait and the remaining deadline', () => {
      const v = judgeDeadline({ ahead: 3, slots: 2, serviceMs: 100, remainingMs: 299 });
      expect(v.admit).to.equal(false);
      if (v.admit) return;
      expect([v.expectedWaitMs, v.serviceMs, v.remainingMs]).to.deep.equal([200, 100, 299]);
      expect(v.message).to.equal('expected wait 200 ms in the queue (3 waiting ahead, 2 running, about 100 ms each) plus 100 ms of service exceeds the remaining deadline of 299 ms');
    });
  });

  describe('AdmissionQueue with deadline admission', () => {
    /** A queue of 2 slots whose service-time estimate is 100 ms (two permits held 100 ms each). */
    async function warmQueue(clock: StepClock, deadlineAdmission = true) {
      const queue = new AdmissionQueue({ maxInFlight: 2, maxQueued: 100, clock, deadlineAdmission });
      const warm = await Promise.all([queue.admitOrReject({ priority: 'normal' }), queue.admitOrReject({ priority: 'normal' })]);
      clock.time += 100;
      for (const p of warm) p.release();
      expect(queue.stats().serviceMs).to.equal(100);
      return queue;
    }

    it('learns the service time from how long permits are held', async () => {
      const clock = new StepClock();
      const queue = new AdmissionQueue({ maxInFlight: 1, maxQueued: 0, clock });
      const p = await queue.admitOrReject({ priority: 'normal' });
      clock.time += 40;
      p.release();
      p.release();
      expect(queue.stats().serviceMs).to.equal(40);
    });

    it('admits at once while a slot is free, whatever the deadline', async () => {
      const clock = new StepClock();
      const queue = await warmQueue(clock);
      const p = await queue.admitOrReject({ priority: 'normal', deadline: clock.now() + 1 });
      expect(p.waitedMs).to.equal(0);
    });

    it('refuses at once a request that would wait longer than its deadline allows, and counts it', async () => {
      const clock = new StepClock();
      const queue = await warmQueue(clock);
      const held: Permit[] = await Promise.all([queue.admitOrReject({ priority: 'normal' }), queue.admitOrReject({ priority: 'normal' })]);
      // Two waiting: a third is in the second wave (200 ms) and then runs 100 ms.
      const waiting = [queue.admitOrReject({ priority: 'normal' }), queue.admitOrReject({ priority: 'normal' })];
      const err = await queue.admitOrReject({ priority: 'normal', deadline: clock.now() + 299 }).then(() => undefined, (e: unknown) => e);
      expect(err).to.be.instanceOf(DeadlineUnmeetableError);
      expect((err as DeadlineUnmeetableError).message).to.match(/expected wait 200 ms in the queue \(2 waiting ahead, 2 running, about 100 ms each\) plus 100 ms of service exceeds the remaining deadline of 299 ms/);
      expect(queue.stats()).to.include({ queued: 2, rejected: 1, unmeetable: 1 });
      // One that fits waits.
      const fits = queue.admitOrReject({ priority: 'normal', deadline: clock.now() + 300 });
      expect(queue.queued).to.equal(3);
      for (const p of held) p.release();
      for (const p of await Promise.all(waiting)) p.release();
      (await fits).release();
    });

    it('counts only the waiters served before it: a high-priority request skips the normal ones', async () => {
      const clock = new StepClock();
      const queue = await warmQueue(clock);
      const held = await Promise.all([queue.admitOrReject({ priority: 'normal' }), queue.admitOrReject({ priority: 'normal' })]);
      const waiting = Array.from({ length: 10 }, () => queue.admitOrReject({ priority: 'normal' }));
      // Normal: 10 ahead, sixth wave, 600 ms + 100 ms > 300 ms. High: none ahead, 100 ms + 100 ms.
      const normal = await queue.admitOrReject({ priority: 'normal', deadline: clock.now() + 300 }).then(() => 'admitted', (e: Error) => e.name);
      const high = queue.admitOrReject({ priority: 'high', deadline: clock.now() + 300 });
      expect([normal, queue.queued]).to.deep.equal(['DeadlineUnmeetableError', 11]);
      for (const p of held) p.release();
      (await high).release();
      await Promise.all(waiting.map((w) => w.then((p) => p.release())));
    });

    it('is off unless asked for: the request waits', async () => {
      const clock = new StepClock();
      const queue = await warmQueue(clock, false);
      const held = await Promise.all([queue.admitOrReject({ priority: 'normal' }), queue.admitOrReject({ priority: 'normal' })]);
      const late = queue.admitOrReject({ priority: 'normal', deadline: clock.now() + 1 });
      expect(queue.queued).to.equal(1);
      for (const p of held) p.release();
      (await late).release();
    });
  });
});
