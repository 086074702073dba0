import { expect } from 'chai';
import { detokenize, spaceBetween, tokenize } from '../../../services/worker/models/tokenizer.js';

describe('tokenizer', () => {
  it('splits words, numbers and punctuation into separate tokens', () => {
    expect(tokenize('Pay 3.14 or 1,000 now, please!')).to.deep.equal(['Pay', '3.14', 'or', '1,000', 'now', ',', 'please', '!']);
  });

  it('keeps contractions, hyphenated words, e-mail addresses and URLs whole', () => {
    expect(tokenize("Don't e-mail bob@example.com, see http://example.com/a?b=1.")).to.deep.equal([
      "Don't",
      'e-mail',
      'bob@example.com',
      ',',
      'see',
      'http://example.com/a?b=1',
      '.',
    ]);
  });

  it('makes a run of one repeated punctuation mark a single token', () => {
    expect(tokenize('Wait... what?!')).to.deep.equal(['Wait', '...', 'what', '?', '!']);
  });

  it('lower-cases tokens only when asked', () => {
    expect(tokenize('FREE Money', { lowercase: true })).to.deep.equal(['free', 'money']);
    expect(tokenize('FREE Money')).to.deep.equal(['FREE', 'Money']);
  });

  it('returns no tokens for empty or blank text', () => {
    expect(tokenize('')).to.deep.equal([]);
    expect(tokenize(' \n\t ')).to.deep.equal([]);
  });

  it('puts no space before closing punctuation and none after opening brackets', () => {
    expect(detokenize(['(', 'a', ')', ',', 'b', '.', 'c', '!', 'd', '?', 'e', ';', 'f', ':', 'g', "'"])).to.equal("(a), b. c! d? e; f: g'");
    expect(spaceBetween(undefined, 'word')).to.equal(false);
  });

  for (const text of [
    'Hello, world! (This costs $5, or 50%.) Is it?',
    "Don't stop: e-mail me at bob@example.com or see http://example.com/a?b=1.",
    'Wait... the price is 1,000 dollars; really!',
  ]) {
    it(`round-trips normally spaced text: ${JSON.stringify(text)}`, () => {
      expect(detokenize(tokenize(text))).to.equal(text);
    });
  }

  it('normalizes whitespace on a round trip', () => {
    expect(detokenize(tokenize('  two\n\nlines ,  here  .'))).to.equal('two lines, here.');
  });
});
