import { expect } from 'chai';
import { AttemptStartedOutput, firstOutputLatencyMs } from '../../services/balancer/dispatch.js';

describe('the latency sample of an attempt\'s first output', () => {
  it('is the dispatcher\'s measure when it sent one, since its report may have waited', () => {
    expect(firstOutputLatencyMs(new AttemptStartedOutput(3.5), 9)).to.equal(3.5);
  });

  it('is never more than the time the balancer saw pass: a report cannot make a worker look slower', () => {
    expect(firstOutputLatencyMs(new AttemptStartedOutput(60_000), 9)).to.equal(9);
  });

  it('is the balancer\'s own measure without one (an older dispatcher, or Route\'s own outputs)', () => {
    expect(firstOutputLatencyMs(new AttemptStartedOutput(undefined), 9)).to.equal(9);
    expect(firstOutputLatencyMs(new Uint8Array(1), 9)).to.equal(9);
  });
});
