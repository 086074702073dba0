import { expect } from 'chai';
import { NaiveBayes, normalizeLogScores, type LabelledText } from '../../../services/worker/models/naive-bayes.js';

const SPAM = ['win free money now', 'free prize, claim now', 'claim your free money prize', 'win a prize now'];
const HAM = ['meeting agenda for tomorrow', 'lunch with the team tomorrow', 'the team meeting notes', 'agenda for the lunch meeting'];
const TINY: LabelledText[] = [...SPAM.map((body) => ({ label: 'spam', body })), ...HAM.map((body) => ({ label: 'ham', body }))];

describe('NaiveBayes', () => {
  const model = NaiveBayes.train(TINY);

  it('predicts the obvious class of texts made of one class\'s words', () => {
    expect(model.predict('FREE money prize!').label).to.equal('spam');
    expect(model.predict('team meeting tomorrow').label).to.equal('ham');
  });

  it('returns probabilities for every class that sum to 1', () => {
    for (const text of ['free money', 'team lunch', '', 'free team']) {
      const { probabilities } = model.predict(text);
      expect(Object.keys(probabilities).sort()).to.deep.equal(['ham', 'spam']);
      expect(probabilities.spam + probabilities.ham, text).to.be.closeTo(1, 1e-12);
      expect(probabilities.spam).to.be.within(0, 1);
    }
  });

  it('answers with the class priors for a text whose tokens were all seen fewer than twice', () => {
    // "your" and "notes" each occur once in the tiny corpus, so they are pruned from the vocabulary.
    expect(model.predict('your notes').probabilities.spam).to.be.closeTo(SPAM.length / TINY.length, 1e-12);
    expect(model.predict('').probabilities.spam).to.be.closeTo(SPAM.length / TINY.length, 1e-12);
  });

  it('keeps only tokens seen at least twice in the vocabulary', () => {
    const counts = new Map<string, number>();
    for (const { body } of TINY) for (const token of body.replace(',', ' ,').split(' ')) counts.set(token, (counts.get(token) ?? 0) + 1);
    expect(model.vocabSize).to.equal([...counts.values()].filter((count) => count >= 2).length);
  });

  it('makes identical predictions after a toJSON/fromJSON round trip through JSON text', () => {
    const restored = NaiveBayes.fromJSON(JSON.parse(JSON.stringify(model.toJSON())));
    for (const text of ['free money', 'team lunch', 'claim the agenda', '']) {
      expect(restored.predict(text), text).to.deep.equal(model.predict(text));
    }
  });

  it('computes accuracy, precision, recall and F1 with spam as the positive class', () => {
    // 4 true positives, 4 true negatives, and one ham that reads like spam: a false positive.
    const evaluation = model.evaluate([...TINY, { label: 'ham', body: 'free money prize' }]);
    expect(evaluation.accuracy).to.be.closeTo(8 / 9, 1e-12);
    expect(evaluation.precision).to.be.closeTo(4 / 5, 1e-12);
    expect(evaluation.recall).to.equal(1);
    expect(evaluation.f1).to.be.closeTo((2 * 0.8) / 1.8, 1e-12);
    expect(evaluation.testSize).to.equal(9);
    expect(evaluation.trainSize).to.equal(8);
  });

  it('normalizes log scores without underflow (log-sum-exp)', () => {
    const [a, b] = normalizeLogScores([-10000, -10000 - Math.log(3)]);
    expect(a).to.be.closeTo(0.75, 1e-12);
    expect(b).to.be.closeTo(0.25, 1e-12);
  });

  it('refuses to train on no records', () => {
    expect(() => NaiveBayes.train([])).to.throw(/at least one record/);
  });
});
