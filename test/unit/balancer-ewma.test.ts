import { expect } from 'chai';
import { DEFAULT_EWMA_DECAY_MS, PeakEwma } from '../../services/balancer/ewma.js';

/** A clock the test moves by hand. */
function fakeClock(start = 0) {
  const clock = { now: start, read: () => clock.now };
  return clock;
}

describe('balancer PeakEwma', () => {
  it('has no estimate before the first sample, and takes the first sample as it is', () => {
    const clock = fakeClock(1_000);
    const ewma = new PeakEwma({ now: clock.read });
    expect(ewma.value).to.equal(undefined);
    expect(ewma.samples).to.equal(0);
    ewma.observe(42);
    expect(ewma.value).to.equal(42);
    expect(ewma.samples).to.equal(1);
  });

  it('jumps to a slower sample at once (the peak), however little time has passed', () => {
    const clock = fakeClock();
    const ewma = new PeakEwma({ now: clock.read });
    ewma.observe(10);
    clock.now += 1;
    ewma.observe(500);
    expect(ewma.value).to.equal(500);
  });

  it('moves toward a faster sample by 1 - exp(-Δt / τ): about 63% of the way after τ', () => {
    const clock = fakeClock();
    const ewma = new PeakEwma({ now: clock.read, decayMs: 10_000 });
    ewma.observe(100);
    clock.now += 10_000;
    ewma.observe(0);
    expect(ewma.value).to.be.closeTo(100 * Math.exp(-1), 1e-9);
    clock.now += 5_000;
    ewma.observe(20);
    const before = 100 * Math.exp(-1);
    expect(ewma.value).to.be.closeTo(before * Math.exp(-0.5) + 20 * (1 - Math.exp(-0.5)), 1e-9);
  });

  it('barely moves for a faster sample right after the previous one, and more the longer the gap', () => {
    const moved = (gapMs: number) => {
      const clock = fakeClock();
      const ewma = new PeakEwma({ now: clock.read, decayMs: 10_000 });
      ewma.observe(100);
      clock.now += gapMs;
      ewma.observe(10);
      return 100 - ewma.value!;
    };
    expect(moved(0)).to.equal(0);
    expect(moved(10)).to.be.below(0.1);
    expect(moved(1_000)).to.be.below(moved(5_000));
    expect(moved(5_000)).to.be.below(moved(60_000));
    expect(moved(60_000)).to.be.closeTo(90, 0.3);
  });

  it('decays toward a steady run of faster samples as 10 + 90 × exp(-t / τ)', () => {
    const clock = fakeClock();
    const ewma = new PeakEwma({ now: clock.read });
    expect(ewma.decayMs).to.equal(DEFAULT_EWMA_DECAY_MS);
    ewma.observe(100);
    // 30 samples a tenth of τ apart: after 10 of them a time τ has passed.
    for (let step = 1; step <= 30; step++) {
      clock.now += DEFAULT_EWMA_DECAY_MS / 10;
      ewma.observe(10);
      if (step === 10) expect(ewma.value).to.be.closeTo(10 + 90 * Math.exp(-1), 1e-9);
    }
    expect(ewma.value).to.be.closeTo(10 + 90 * Math.exp(-3), 1e-9);
  });

  it('treats a clock that went back as no time passed', () => {
    const clock = fakeClock(5_000);
    const ewma = new PeakEwma({ now: clock.read });
    ewma.observe(100);
    clock.now = 1_000;
    ewma.observe(10);
    expect(ewma.value).to.equal(100);
  });

  it('keeps its estimate while no sample arrives', () => {
    const clock = fakeClock();
    const ewma = new PeakEwma({ now: clock.read });
    ewma.observe(80);
    clock.now += 3_600_000;
    expect(ewma.value).to.equal(80);
  });

  it('tells the age of its estimate: none before a sample, the time since the last sample after, 0 if the clock went back', () => {
    const clock = fakeClock(1_000);
    const ewma = new PeakEwma({ now: clock.read });
    expect(ewma.ageMs).to.equal(undefined);
    ewma.observe(80);
    clock.now += 250;
    expect(ewma.ageMs).to.equal(250);
    ewma.observe(20);
    expect(ewma.ageMs).to.equal(0);
    clock.now -= 100;
    expect(ewma.ageMs).to.equal(0);
    ewma.reset();
    expect(ewma.ageMs).to.equal(undefined);
  });

  it('forgets every sample on reset', () => {
    const clock = fakeClock();
    const ewma = new PeakEwma({ now: clock.read });
    ewma.observe(80);
    ewma.reset();
    expect(ewma.value).to.equal(undefined);
    expect(ewma.samples).to.equal(0);
    ewma.observe(5);
    expect(ewma.value).to.equal(5);
  });

  it('rejects a sample that is negative or not finite, and a decay time that is not positive', () => {
    const ewma = new PeakEwma({ now: () => 0 });
    expect(() => ewma.observe(-1)).to.throw(RangeError, 'latencyMs must be a finite number >= 0, given -1');
    expect(() => ewma.observe(Number.NaN)).to.throw(RangeError, 'given NaN');
    expect(() => ewma.observe(Number.POSITIVE_INFINITY)).to.throw(RangeError, 'given Infinity');
    expect(ewma.value).to.equal(undefined);
    expect(() => new PeakEwma({ now: () => 0, decayMs: 0 })).to.throw(RangeError, 'decayMs must be a positive number, given 0');
  });
});
