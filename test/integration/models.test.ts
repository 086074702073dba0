/** The built-in models served through the mesh (warm from the shared model cache). */
import { expect } from 'chai';
import { FinishReason, GenerateRequest } from '../../generated/maas/v1/inference';
import { Status, TestMesh, collect, grpcError, startMesh } from '../support';

const ngram = (o: Partial<GenerateRequest>): GenerateRequest => ({ model: 'ngram', prompt: 'the meeting', maxTokens: 16, stop: [], priority: 0, affinityKey: "", messages: [], ...o });
const text = async (mesh: TestMesh, r: GenerateRequest) => (await collect(mesh.inference.generate(r))).map((c) => c.text).join('');

describe('built-in models through the mesh', function () {
  this.timeout(120000);
  let mesh: TestMesh;
  before(async () => {
    mesh = await startMesh({ workers: [{ builtin: true }] });
  });
  after(() => mesh.stop());

  it('lists spam-nb with its held-out accuracy in the metadata', async () => {
    const { model } = await mesh.models.getModel({ name: 'spam-nb' });
    expect(Number(model!.metadata.accuracy)).to.be.greaterThan(0.9);
    expect(model!.labels).to.have.members(['spam', 'ham']);
  });

  it('ngram gives the same text for the same seed and a different one for another seed', async () => {
    const a = await text(mesh, ngram({ seed: 11 }));
    const b = await text(mesh, ngram({ seed: 11 }));
    const c = await text(mesh, ngram({ seed: 12 }));
    expect(a).to.equal(b);
    expect(a).to.not.equal(c);
  });

  it('ngram streams one token per chunk, at most max_tokens, with usage on the last chunk', async () => {
    const chunks = await collect(mesh.inference.generate(ngram({ seed: 5, maxTokens: 7 })));
    const tokens = chunks.filter((c) => c.text !== '');
    expect(tokens.length).to.be.at.most(7);
    const last = chunks.at(-1)!;
    expect(last.finishReason).to.not.equal(FinishReason.FINISH_REASON_UNSPECIFIED);
    expect(last.usage!.completionTokens).to.equal(tokens.length);
    expect(chunks.map((c) => c.index)).to.deep.equal(chunks.map((_, i) => i));
  });

  it('ngram stops before a stop sequence, which never appears in the output', async () => {
    // Greedy decoding from this prompt produces " the" early; stopping on it must cut the text.
    const free = await text(mesh, ngram({ temperature: 0, maxTokens: 40 }));
    const stop = free.includes(' the') ? ' the' : free.trim().split(' ')[1];
    const chunks = await collect(mesh.inference.generate(ngram({ temperature: 0, maxTokens: 40, stop: [stop] })));
    const out = chunks.map((c) => c.text).join('');
    expect(out).to.not.include(stop);
    expect(free.startsWith(out)).to.equal(true);
    expect(chunks.at(-1)!.finishReason).to.equal(FinishReason.FINISH_REASON_STOP);
  });

  it('spam-nb labels an obvious spam and an ordinary message', async () => {
    const spam = await mesh.inference.predict({ model: 'spam-nb', input: 'WIN A FREE PRIZE NOW!!! Click here to claim your cash reward', priority: 0 });
    const ham = await mesh.inference.predict({ model: 'spam-nb', input: 'Hi Bob, the patch for the kernel build is attached; can you review it before the meeting tomorrow?', priority: 0 });
    expect(spam.label).to.equal('spam');
    expect(ham.label).to.equal('ham');
    expect(spam.probabilities.spam + spam.probabilities.ham).to.be.closeTo(1, 1e-9);
  });

  it('refuses Generate on a classifier with INVALID_ARGUMENT saying what it supports', async () => {
    const err = await grpcError(collect(mesh.inference.generate(ngram({ model: 'spam-nb' }))));
    expect(err.code).to.equal(Status.INVALID_ARGUMENT);
    expect(err.details).to.equal('model "spam-nb" does not support Generate; it supports: Predict, ModelInfer');
  });
});
