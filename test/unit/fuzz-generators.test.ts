/** The fuzz generators: reproducible from a seed, well-formed when they say so, and hostile where they should be. */
import { expect } from 'chai';
import { meshRegistry } from '../../common/descriptors.js';
import { mulberry32 } from '../../common/random.js';
import { SubmitRequest } from '../../generated/maas/v1/jobs.js';
import { MessageFuzzer, STRATEGIES } from '../fuzz/generators.js';

const submit = () => meshRegistry().getMessage('maas.v1.SubmitRequest')!;
const fuzzer = (seed: number) => new MessageFuzzer(mulberry32(seed), { dictionary: ['echo', 'wordcount'], restricted: { callback_url: () => 'safe' } });

describe('fuzz generators', () => {
  it('the same seed gives the same inputs', () => {
    const a = fuzzer(7);
    const b = fuzzer(7);
    for (let i = 0; i < 200; i++) expect(Buffer.from(a.next(submit()).bytes)).to.deep.equal(Buffer.from(b.next(submit()).bytes));
  });

  it('every strategy is used, and well-formed inputs of the valid kinds decode with the generated decoder', () => {
    const f = fuzzer(11);
    const seen = new Set<string>();
    for (let i = 0; i < 600; i++) {
      const input = f.next(submit());
      seen.add(input.strategy);
      if (input.strategy === 'valid' || input.strategy === 'unknown-fields' || input.strategy === 'empty') {
        expect(input.wellFormed).to.equal(true);
        expect(() => SubmitRequest.decode(input.bytes)).not.to.throw();
      }
      if (['wrong-wire-type', 'truncated', 'mutated', 'random-bytes'].includes(input.strategy)) expect(input.wellFormed).to.equal(false);
    }
    expect([...seen].sort()).to.deep.equal([...STRATEGIES].sort());
  });

  it('extreme numbers include 64-bit values the generated decoder cannot hold', () => {
    const f = fuzzer(3);
    let unsafe = 0;
    for (let i = 0; i < 400; i++) {
      try {
        SubmitRequest.decode(f.next(submit(), 'extreme-numbers').bytes);
      } catch (err) {
        expect((err as Error).message).to.match(/MAX_SAFE_INTEGER|MIN_SAFE_INTEGER/);
        unsafe++;
      }
    }
    expect(unsafe).to.be.greaterThan(0);
  });

  it('a restricted field only ever gets its own generator\'s values', () => {
    const f = fuzzer(5);
    let checked = 0;
    for (let i = 0; i < 300; i++) {
      let spec;
      try {
        spec = SubmitRequest.decode(f.next(submit(), 'hostile-strings').bytes).spec;
      } catch {
        continue; // a 64-bit value past 2^53 elsewhere in the message
      }
      if (spec) expect(['', 'safe']).to.include(spec.callbackUrl);
      checked++;
    }
    expect(checked).to.be.greaterThan(100);
  });
});
