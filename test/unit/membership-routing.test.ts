/**
 * Each member owns its routing state (latency estimate, slow-start ramp, ejection record): what a
 * pick may choose follows from the members alone. An ejected member is left out until its ejection
 * ends, then comes back ramping; a rejoin under the same id keeps the ejection; never more than
 * the configured share of members is out at once; a member that left records nothing.
 */
import { expect } from 'chai';
import { Membership } from '../../services/balancer/membership';

const worker = (id: string) => ({ id, address: `${id}:1`, capacity: 4, models: [{ name: 'echo', description: 'echo' }] });
const ids = (members: { id: string }[]) => members.map((m) => m.id);

describe('Membership: routing state per member', () => {
  const options = { outliers: { consecutiveFailures: 2, baseEjectionMs: 1000, maxEjectedShare: 0.5 }, slowStart: { windowMs: 10_000, minWeight: 0.1 } };

  function failTwice(members: Membership<string>, id: string, now: number) {
    const m = members.get(id)!;
    return [members.recordFailure(m, now), members.recordFailure(m, now)];
  }

  it('leaves an ejected member out of picks until its ejection ends, then ramps it from the first pick after', () => {
    const members = new Membership<string>(options);
    members.join(worker('a'), 0);
    members.join(worker('b'), 0);
    members.join(worker('c'), 0);
    // Past their join ramps.
    expect(members.routable('echo', new Set(), undefined, 20_000).map((m) => m.candidate(20_000).weight)).to.deep.equal([1, 1, 1]);
    expect(failTwice(members, 'b', 20_000)).to.deep.equal([undefined, 'consecutive_failures']);
    expect(ids(members.routable('echo', new Set(), undefined, 20_500))).to.deep.equal(['a', 'c']);
    expect(members.ejectedCount).to.equal(1);
    const back = members.routable('echo', new Set(), undefined, 21_000);
    expect(ids(back)).to.deep.equal(['a', 'b', 'c']);
    expect(members.ejectedCount).to.equal(0);
    expect(members.get('b')!.candidate(21_000).weight).to.equal(0.1);
    expect(members.get('b')!.candidate(26_000).weight).to.be.closeTo(0.55, 1e-9);
  });

  it('keeps the ejection of a member that rejoins under its id, and ramps the new member when it ends', () => {
    const members = new Membership<string>(options);
    members.join(worker('a'), 0);
    members.join(worker('b'), 0);
    failTwice(members, 'b', 20_000);
    const rejoined = members.join(worker('b'), 20_100);
    expect(ids(members.routable('echo', new Set(), undefined, 20_200))).to.deep.equal(['a']);
    expect([members.ejectedCount, rejoined.outlier.state(20_200).ejections]).to.deep.equal([1, 1]);
    expect(ids(members.routable('echo', new Set(), undefined, 31_000))).to.deep.equal(['a', 'b']);
    expect(rejoined.candidate(31_000).weight).to.equal(0.1);
  });

  it('never ejects more than the configured share of the members', () => {
    const members = new Membership<string>(options);
    members.join(worker('a'), 0);
    members.join(worker('b'), 0);
    expect(failTwice(members, 'a', 100)).to.deep.equal([undefined, 'consecutive_failures']);
    expect(failTwice(members, 'b', 100)).to.deep.equal([undefined, undefined]);
    expect(ids(members.routable('echo', new Set(), undefined, 200))).to.deep.equal(['b']);
  });

  it('records nothing for a member that left or was replaced', () => {
    const members = new Membership<string>(options);
    const old = members.join(worker('a'), 0);
    members.join(worker('b'), 0);
    members.join(worker('c'), 0);
    members.join(worker('a'), 10);
    // The rejoined member keeps the ejection record, but a call that was made to the replaced
    // object does not count on it.
    expect(members.recordFailure(old, 100)).to.equal(undefined);
    expect(members.get('a')!.outlier.state(100).consecutiveFailures).to.equal(0);
    const left = members.leave('c')!;
    expect([members.recordFailure(left, 200), members.recordFailure(left, 200), left.outlier.state(200).consecutiveFailures]).to.deep.equal([undefined, undefined, 0]);
  });

  it('gives each member its own latency estimate, fresh on a rejoin', () => {
    let clock = 0;
    const members = new Membership<string>({ ...options, now: () => clock });
    const a = members.join(worker('a'), 0);
    const b = members.join(worker('b'), 0);
    a.latency.observe(30);
    clock = 10;
    b.latency.observe(5);
    expect([a.candidate(20_000).ewmaMs, b.candidate(20_000).ewmaMs]).to.deep.equal([30, 5]);
    // The age comes from the estimate's own clock: 10 ms since a's sample, none since b's.
    expect([a.candidate(20_000).ewmaAgeMs, b.candidate(20_000).ewmaAgeMs]).to.deep.equal([10, 0]);
    expect(members.join(worker('a'), 20_000).candidate(20_000).ewmaMs).to.equal(undefined);
  });
});
