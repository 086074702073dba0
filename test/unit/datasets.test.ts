import { expect } from 'chai';
import { loadCorpus } from '../../common/corpus/spam-assassin.js';
import { DATASET_NAMES, UnknownDatasetError, datasetSize, isDatasetName, loadDataset } from '../../common/datasets.js';

describe('built-in datasets (common/datasets)', function () {
  // The first load reads and cleans the real corpus (about half a second, more on a slow machine).
  this.timeout(20000);

  it('names spam-assassin as the only built-in dataset', () => {
    expect(DATASET_NAMES).to.deep.equal(['spam-assassin']);
    expect(isDatasetName('spam-assassin')).to.equal(true);
    expect(isDatasetName('Spam-Assassin')).to.equal(false);
  });

  it('spam-assassin has 6046 records: 1896 labelled spam and the rest ham', () => {
    const records = loadDataset('spam-assassin');
    expect(datasetSize('spam-assassin')).to.equal(6046);
    expect(records).to.have.length(6046);
    expect(records.filter((r) => r.label === 'spam')).to.have.length(1896);
    expect(records.filter((r) => r.label === 'ham')).to.have.length(6046 - 1896);
  });

  it('record i is the i-th message of the corpus, with the text spam-nb reads (subject and cleaned body)', () => {
    const records = loadDataset('spam-assassin');
    const corpus = loadCorpus();
    corpus.forEach((mail, i) => {
      if (records[i].text !== mail.body || records[i].label !== mail.label) expect.fail(`record ${i} differs from message ${mail.id}`);
    });
    expect(records.every((r) => r.text.trim() !== '')).to.equal(true);
  });

  it('is built once per process and frozen, so every caller sees the same records in the same order', () => {
    const first = loadDataset('spam-assassin');
    expect(loadDataset('spam-assassin')).to.equal(first);
    expect(Object.isFrozen(first)).to.equal(true);
    expect(Object.isFrozen(first[0])).to.equal(true);
  });

  it('rejects an unknown name with UnknownDatasetError naming it and the known ones', () => {
    for (const call of [() => loadDataset('imdb'), () => datasetSize('imdb')]) {
      let thrown: unknown;
      try {
        call();
      } catch (error) {
        thrown = error;
      }
      expect(thrown).to.be.instanceOf(UnknownDatasetError);
      expect((thrown as UnknownDatasetError).dataset).to.equal('imdb');
      expect((thrown as Error).message).to.equal('unknown dataset "imdb"; the built-in datasets are: spam-assassin');
    }
  });
});
