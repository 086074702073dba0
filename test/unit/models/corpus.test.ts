import { expect } from 'chai';
import {
  fnv1a32,
  isTestRecord,
  loadCorpus,
  messageText,
  normalizeText,
  splitCorpus,
  type MailRecord,
} from '../../../common/corpus/spam-assassin.js';

describe('corpus', () => {
  it('hashes with FNV-1a 32-bit (reference vectors)', () => {
    expect(fnv1a32('')).to.equal(0x811c9dc5);
    expect(fnv1a32('a')).to.equal(0xe40c292c);
    expect(fnv1a32('foobar')).to.equal(0xbf9cf968);
  });

  it('puts a record in the test set exactly when fnv1a32(id) % 5 == 0', () => {
    for (const id of ['easy-ham-1/00001', 'spam-2/00042', 'hard-ham-1/00250', 'x', '']) {
      expect(isTestRecord(id), id).to.equal(fnv1a32(id) % 5 === 0);
    }
  });

  it('splits by id alone, keeping order, so the split does not depend on the input order', () => {
    const records: MailRecord[] = Array.from({ length: 200 }, (_, i) => ({ id: `g/${i}`, label: 'ham', body: '' }));
    const forward = splitCorpus(records);
    const backward = splitCorpus([...records].reverse());
    expect(forward.test.map((r) => r.id)).to.deep.equal(backward.test.map((r) => r.id).reverse());
    expect(forward.train.length + forward.test.length).to.equal(200);
  });

  it('drops the headers up to the first blank line but keeps the subject', () => {
    const raw = 'From: a@b.c\nSubject: Cheap\n  pills\nX-Spam: yes\n\nBody line one.\nLine two.';
    expect(messageText(raw)).to.equal('Cheap pills Body line one. Line two.');
  });

  it('removes HTML tags, comments, style and script, decodes entities and collapses whitespace', () => {
    const html = '<html><style>p{color:red}</style><script>x()</script><!-- c --><p>Fish &amp; chips&nbsp;&#8364;5 &lt;now&gt;</p>\n\n</html>';
    expect(normalizeText(html)).to.equal('Fish & chips €5 <now>');
  });

  it('decodes quoted-printable bodies so encoded HTML is removed too', () => {
    const raw = 'Subject: Hi\nContent-Transfer-Encoding: quoted-printable\n\n<font size=3D"2">Fr=\nee</font>';
    expect(messageText(raw)).to.equal('Hi Free');
  });

  it('loads the real corpus labelled by group, with about 20% of each class in the test set', function () {
    this.timeout(10000);
    const records = loadCorpus();
    expect(records).to.have.length(6046);
    expect(new Set(records.map((r) => r.id)).size).to.equal(records.length);
    const { train, test } = splitCorpus(records);
    for (const label of ['spam', 'ham']) {
      const all = records.filter((r) => r.label === label).length;
      const held = test.filter((r) => r.label === label).length;
      expect(held / all, label).to.be.within(0.17, 0.23);
    }
    expect(train.length + test.length).to.equal(records.length);
    expect(records.filter((r) => r.label === 'spam')).to.have.length(1896);
  });
});
