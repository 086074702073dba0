import { expect } from 'chai';
import { candidateOf, loadOf, Membership } from '../../services/balancer/membership.js';

/** The wire description of a model, opaque to Membership; a string is enough here. */
type Description = string;

function worker(id: string, models: string[], capacity = 4) {
  return { id, address: `${id}.local:7000`, models: models.map((name) => ({ name, description: `${name} by ${id}` })), capacity };
}

const ids = (members: { id: string }[]) => members.map((m) => m.id);

describe('Membership', () => {
  let members: Membership<Description>;

  beforeEach(() => {
    members = new Membership<Description>();
  });

  describe('join', () => {
    it('adds a ready member with its address, models, capacity and join time', () => {
      const m = members.join(worker('w1', ['echo', 'ngram'], 8), 100);
      expect({
        id: m.id,
        address: m.address,
        models: [...m.models],
        capacity: m.capacity,
        outstanding: m.outstanding,
        reportedInFlight: m.reportedInFlight,
        draining: m.draining,
        lastSeen: m.lastSeen,
      }).to.deep.equal({
        id: 'w1',
        address: 'w1.local:7000',
        models: [
          ['echo', 'echo by w1'],
          ['ngram', 'ngram by w1'],
        ],
        capacity: 8,
        outstanding: 0,
        reportedInFlight: 0,
        draining: false,
        lastSeen: 100,
      });
    });

    it('makes the member retrievable by id and counted in size', () => {
      const m = members.join(worker('w1', ['echo']), 0);
      expect([members.get('w1') === m, members.size]).to.deep.equal([true, 1]);
    });

    it('replaces a member that rejoins under the same id, keeping its outstanding count', () => {
      const first = members.join(worker('w1', ['echo']), 0);
      first.outstanding = 3;
      const second = members.join(worker('w1', ['ngram']), 10);
      expect([members.size, members.get('w1') === second, second.outstanding, [...second.models.keys()]]).to.deep.equal([1, true, 3, ['ngram']]);
    });

    it('clears draining when a draining worker rejoins', () => {
      members.join(worker('w1', ['echo']), 0);
      members.report('w1', { inFlight: 0, draining: true }, 1);
      expect(members.join(worker('w1', ['echo']), 2).draining).to.equal(false);
    });
  });

  describe('report', () => {
    it('records in-flight count, draining and time of a member and returns true', () => {
      members.join(worker('w1', ['echo']), 0);
      const ok = members.report('w1', { inFlight: 5, draining: true }, 42);
      const m = members.get('w1')!;
      expect([ok, m.reportedInFlight, m.draining, m.lastSeen]).to.deep.equal([true, 5, true, 42]);
    });

    it('returns false for an id that is not a member and adds nothing', () => {
      expect([members.report('ghost', { inFlight: 1, draining: false }, 1), members.size]).to.deep.equal([false, 0]);
    });

    it('records queue depth and the worker\'s own latency, 0 when the report leaves them out', () => {
      members.join(worker('w1', ['echo']), 0);
      members.report('w1', { inFlight: 4, draining: false, queueDepth: 3, latencyMs: 12.5 }, 1);
      const m = members.get('w1')!;
      expect([m.reportedQueueDepth, m.reportedLatencyMs]).to.deep.equal([3, 12.5]);
      members.report('w1', { inFlight: 4, draining: false }, 2);
      expect([m.reportedQueueDepth, m.reportedLatencyMs]).to.deep.equal([0, 0]);
    });

    it('counts as foreign load what the worker runs or queues beyond this balancer\'s outstanding calls', () => {
      const m = members.join(worker('w1', ['echo']), 0);
      m.outstanding = 2;
      // 5 running + 3 queued, 2 of them ours: 6 came from elsewhere.
      members.report('w1', { inFlight: 5, draining: false, queueDepth: 3 }, 1);
      expect(m.foreignLoad).to.equal(6);
      expect(loadOf(m)).to.equal(8);
      // Our calls still in flight count at their current number; the foreign part stays until the next report.
      m.outstanding = 4;
      expect(loadOf(m)).to.equal(10);
      // A report that lags behind our own count never makes the load smaller than ours.
      members.report('w1', { inFlight: 1, draining: false }, 2);
      expect([m.foreignLoad, loadOf(m)]).to.deep.equal([0, 4]);
    });
  });

  describe('picks made ahead (reserved)', () => {
    it('count as a quarter of a call each in what the policies see, not in the outstanding calls', () => {
      const m = members.join(worker('w1', ['echo']), 0);
      m.outstanding = 1;
      m.reserved = 4;
      expect(m.candidate(1).outstanding).to.equal(2);
      expect(loadOf(m)).to.equal(1);
      m.reserved = 0;
      expect(m.candidate(1).outstanding).to.equal(1);
    });
  });

  describe('candidateOf', () => {
    it('shows a policy the load, capacity and weight, and the balancer\'s own latency estimate when it has one', () => {
      const m = members.join(worker('w1', ['echo'], 8), 0);
      m.outstanding = 1;
      members.report('w1', { inFlight: 3, draining: false, queueDepth: 2, latencyMs: 40 }, 1);
      expect(candidateOf(m, 12, 0.5)).to.deep.equal({ id: 'w1', outstanding: 5, capacity: 8, ewmaMs: 12, weight: 0.5 });
    });

    it('before the balancer\'s first sample, takes the latency the worker reports; with neither, none', () => {
      const m = members.join(worker('w1', ['echo']), 0);
      expect(candidateOf(m, undefined, 1).ewmaMs).to.equal(undefined);
      members.report('w1', { inFlight: 0, draining: false, latencyMs: 40 }, 1);
      expect(candidateOf(m, undefined, 1).ewmaMs).to.equal(40);
    });

    it('gives the age of the balancer\'s own estimate, and Infinity for a reported latency, which no call of its own confirmed', () => {
      const m = members.join(worker('w1', ['echo']), 0);
      expect(candidateOf(m, 12, 1, 300).ewmaAgeMs).to.equal(300);
      expect(candidateOf(m, 12, 1)).to.not.have.property('ewmaAgeMs');
      expect(candidateOf(m, undefined, 1, 300)).to.not.have.property('ewmaAgeMs');
      members.report('w1', { inFlight: 0, draining: false, latencyMs: 40 }, 1);
      expect(candidateOf(m, undefined, 1)).to.include({ ewmaMs: 40, ewmaAgeMs: Infinity });
      expect(candidateOf(m, 12, 1, 0)).to.include({ ewmaMs: 12, ewmaAgeMs: 0 });
    });
  });

  describe('leave', () => {
    it('removes a member by id and returns it', () => {
      const m = members.join(worker('w1', ['echo']), 0);
      expect([members.leave('w1') === m, members.get('w1'), members.size]).to.deep.equal([true, undefined, 0]);
    });

    it('returns undefined for an id that is not a member', () => {
      expect(members.leave('ghost')).to.equal(undefined);
    });

    it('removes the member when given the current member object', () => {
      const m = members.join(worker('w1', ['echo']), 0);
      expect([members.leave('w1', m) === m, members.size]).to.deep.equal([true, 0]);
    });

    it('with a stale member object does not remove the worker that rejoined under the same id', () => {
      const stale = members.join(worker('w1', ['echo']), 0);
      const current = members.join(worker('w1', ['echo']), 1);
      expect([members.leave('w1', stale), members.get('w1') === current]).to.deep.equal([undefined, true]);
    });
  });

  describe('expire', () => {
    it('removes and returns only the members silent for longer than the silence', () => {
      members.join(worker('quiet', ['echo']), 0);
      members.join(worker('chatty', ['echo']), 0);
      members.report('chatty', { inFlight: 0, draining: false }, 2500);
      const gone = members.expire(3001, 3000);
      expect([ids(gone), members.get('quiet'), members.get('chatty')?.id]).to.deep.equal([['quiet'], undefined, 'chatty']);
    });

    it('keeps a member silent for exactly the silence', () => {
      members.join(worker('w1', ['echo']), 0);
      expect([ids(members.expire(3000, 3000)), members.size]).to.deep.equal([[], 1]);
    });

    it('counts a rejoin as being heard from', () => {
      members.join(worker('w1', ['echo']), 0);
      members.join(worker('w1', ['echo']), 2000);
      expect(ids(members.expire(4000, 3000))).to.deep.equal([]);
    });

    it('declares an expired member gone (its calls stop waiting), and no member that left by its stream or stays', () => {
      const quiet = members.join(worker('quiet', ['echo']), 0);
      const leaving = members.join(worker('leaving', ['echo']), 0);
      const chatty = members.join(worker('chatty', ['echo']), 0);
      members.report('chatty', { inFlight: 0, draining: false }, 2500);
      members.leave('leaving', leaving);
      members.expire(3001, 3000);
      expect([quiet.gone.aborted, leaving.gone.aborted, chatty.gone.aborted]).to.deep.equal([true, false, false]);
      expect(String(quiet.gone.reason)).to.match(/worker quiet was removed: no load report for 3001 ms \(limit 3000 ms\)/);
    });
  });

  describe('candidatesFor', () => {
    beforeEach(() => {
      members.join(worker('w1', ['echo', 'ngram']), 0);
      members.join(worker('w2', ['ngram']), 0);
      members.join(worker('w3', ['echo']), 0);
      members.join(worker('w4', ['echo', 'ngram']), 0);
    });

    it('returns only the workers that serve the model, in join order', () => {
      expect([ids(members.candidatesFor('echo')), ids(members.candidatesFor('ngram'))]).to.deep.equal([
        ['w1', 'w3', 'w4'],
        ['w1', 'w2', 'w4'],
      ]);
    });

    it('returns no workers for a model no one serves', () => {
      expect(members.candidatesFor('spam-nb')).to.deep.equal([]);
    });

    it('leaves out draining workers', () => {
      members.report('w3', { inFlight: 0, draining: true }, 1);
      expect(ids(members.candidatesFor('echo'))).to.deep.equal(['w1', 'w4']);
    });

    it('includes a worker again once it reports it is no longer draining', () => {
      members.report('w3', { inFlight: 0, draining: true }, 1);
      members.report('w3', { inFlight: 0, draining: false }, 2);
      expect(ids(members.candidatesFor('echo'))).to.deep.equal(['w1', 'w3', 'w4']);
    });

    it('leaves out excluded ids', () => {
      expect(ids(members.candidatesFor('echo', new Set(['w1', 'w4'])))).to.deep.equal(['w3']);
    });

    it('leaves out workers that have left', () => {
      members.leave('w1');
      expect(ids(members.candidatesFor('echo'))).to.deep.equal(['w3', 'w4']);
    });
  });

  describe('models', () => {
    it('merges models across workers, counting the ready workers of each', () => {
      members.join(worker('w1', ['echo', 'ngram']), 0);
      members.join(worker('w2', ['ngram']), 0);
      expect(members.models().map((m) => [m.name, m.readyWorkers])).to.deep.equal([
        ['echo', 1],
        ['ngram', 2],
      ]);
    });

    it('sorts models by name whatever the join order', () => {
      members.join(worker('w1', ['zeta', 'alpha']), 0);
      members.join(worker('w2', ['mid']), 0);
      expect(members.models().map((m) => m.name)).to.deep.equal(['alpha', 'mid', 'zeta']);
    });

    it('does not count draining workers, and leaves out a model only draining workers serve', () => {
      members.join(worker('w1', ['echo', 'ngram']), 0);
      members.join(worker('w2', ['echo']), 0);
      members.report('w1', { inFlight: 0, draining: true }, 1);
      expect(members.models().map((m) => [m.name, m.readyWorkers])).to.deep.equal([['echo', 1]]);
    });

    it('describes each model as the first ready worker that serves it does', () => {
      members.join(worker('w1', ['echo']), 0);
      members.join(worker('w2', ['echo']), 0);
      expect(members.models()[0].description).to.equal('echo by w1');
    });

    it('is empty with no members', () => {
      expect(members.models()).to.deep.equal([]);
    });
  });
});
