import { expect } from 'chai';
import { Membership } from '../../services/balancer/membership';

describe('membership of model versions', () => {
  const join = (members: Membership<string>, id: string, models: [string, string][]) =>
    members.join({ id, address: `${id}:1`, capacity: 1, models: models.map(([name, version]) => ({ name, version, description: `${name}@${version} by ${id}` })) }, 0);

  it('routes a versioned call only to workers that advertise that version', () => {
    const members = new Membership<string>();
    join(members, 'w1', [['mlp', '1'], ['mlp', '2']]);
    join(members, 'w2', [['mlp', '1']]);
    expect(members.candidatesFor('mlp', new Set(), '2').map((m) => m.id)).to.deep.equal(['w1']);
    expect(members.candidatesFor('mlp', new Set(), '1').map((m) => m.id)).to.deep.equal(['w1', 'w2']);
    expect(members.candidatesFor('mlp').map((m) => m.id)).to.deep.equal(['w1', 'w2']);
    expect(members.candidatesFor('mlp', new Set(), '3')).to.deep.equal([]);
  });

  it('lists each version once, sorted by name then version number, with its ready workers', () => {
    const members = new Membership<string>();
    join(members, 'w1', [['mlp', '10'], ['mlp', '2'], ['a', '1']]);
    join(members, 'w2', [['mlp', '2']]);
    expect(members.models().map((m) => [m.name, m.version, m.readyWorkers])).to.deep.equal([
      ['a', '1', 1],
      ['mlp', '2', 2],
      ['mlp', '10', 1],
    ]);
  });

  it('replaces a member\'s models on an update and names those it no longer serves', () => {
    const members = new Membership<string>();
    join(members, 'w1', [['a', '1'], ['b', '1']]);
    const gone = members.updateModels('w1', [{ name: 'b', version: '2', description: 'b@2' }, { name: 'c', version: '1', description: 'c@1' }], 5);
    expect(gone).to.deep.equal(['a']);
    expect(members.candidatesFor('a')).to.deep.equal([]);
    expect(members.candidatesFor('b', new Set(), '1')).to.deep.equal([]);
    expect(members.get('w1')!.models.get('b')).to.equal('b@2');
    expect(members.updateModels('nobody', [], 5)).to.equal(undefined);
  });
});
