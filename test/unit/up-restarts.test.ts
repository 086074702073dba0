/** `maas up`'s restart backoff: doubling delays up to a cap, a reset after a healthy period, and a bound on a crash loop. */
import { expect } from 'chai';
import { RestartBackoff } from '../../gateway/cli/restarts';

describe('maas up restart backoff', () => {
  const settings = { baseMs: 100, maxMs: 500, healthyMs: 10_000, maxRestarts: 4 };

  it('doubles the delay with each restart in a row, capped at maxMs', () => {
    const b = new RestartBackoff(settings);
    const delays = [1, 2, 3, 4].map((i) => b.onExit(i * 1000, undefined));
    expect(delays).to.deep.equal([
      { restart: true, delayMs: 100, inARow: 1 },
      { restart: true, delayMs: 200, inARow: 2 },
      { restart: true, delayMs: 400, inARow: 3 },
      { restart: true, delayMs: 500, inARow: 4 },
    ]);
  });

  it('gives up on the exit after maxRestarts restarts in a row, and keeps giving up', () => {
    const b = new RestartBackoff(settings);
    for (let i = 0; i < 4; i++) expect(b.onExit(i, undefined).restart).to.equal(true);
    expect(b.onExit(10, undefined)).to.deep.equal({ restart: false, exits: 5 });
    expect(b.onExit(11, undefined).restart).to.equal(false);
  });

  it('a service that served for the healthy period starts over from the first delay', () => {
    const b = new RestartBackoff(settings);
    for (let i = 0; i < 4; i++) b.onExit(i, undefined);
    // Served from t=100 to t=10_100: healthy, so this exit is the first of a new row.
    expect(b.onExit(10_100, 100)).to.deep.equal({ restart: true, delayMs: 100, inARow: 1 });
  });

  it('serving for less than the healthy period does not reset the count', () => {
    const b = new RestartBackoff(settings);
    for (let i = 0; i < 4; i++) b.onExit(i, undefined);
    expect(b.onExit(10_099, 100)).to.deep.equal({ restart: false, exits: 5 });
  });
});
