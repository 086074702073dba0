/** Error messages never carry more than a short prefix of caller input, whatever path they take. */
import { expect } from 'chai';
import { ClientError, ServerError, Status } from 'nice-grpc';
import { MAX_MESSAGE_CHARS, MeshError, boundMessage, quoteInput } from '../../common/errors.js';
import { silentLogger } from '../../common/log.js';
import { toServerError } from '../../common/middleware.js';
import { MAX_JOB_ID_CHARS, MAX_PAGE_TOKEN_CHARS, validateJobId, validatePageToken } from '../../gateway/validation.js';

const MB = 'x'.repeat(1 << 20);

describe('bounded error messages', () => {
  it('quoteInput quotes a short value whole and a long one as a prefix and its length', () => {
    expect(quoteInput('job-1')).to.equal('"job-1"');
    expect(quoteInput(MB)).to.equal(`"${'x'.repeat(32)}"... (1048576 characters)`);
  });

  it('boundMessage leaves a short message alone and cuts a long one, saying so', () => {
    expect(boundMessage('short')).to.equal('short');
    const cut = boundMessage(`job ${MB} not found`);
    expect(cut.length).to.be.at.most(MAX_MESSAGE_CHARS);
    expect(cut).to.match(/\.\.\. \(message cut from 1048590 characters\)$/);
  });

  it('a message cut inside an emoji carries no lone surrogate, so grpc-js can encode it (the fuzzer crashed the aggregator so)', () => {
    for (const pad of ['', 'x']) {
      const message = `reduce.positive_label ${pad}${'😀'.repeat(400)}`;
      const mapped = toServerError(new MeshError('failed_precondition', message), false, '/x.Y/Z', silentLogger);
      expect(() => encodeURI(mapped.details)).not.to.throw();
      expect(mapped.details.length).to.be.at.most(MAX_MESSAGE_CHARS);
    }
    expect(boundMessage('a\uD83D b')).to.equal('a\uFFFD b');
    expect(boundMessage('😀')).to.equal('😀');
  });

  for (const [what, err] of [
    ['a MeshError', new MeshError('not_found', `job ${MB} not found`)],
    ['a ServerError', new ServerError(Status.NOT_FOUND, `job ${MB} not found`)],
    ["a downstream service's ClientError", new ClientError('/x.Y/Z', Status.NOT_FOUND, `job ${MB} not found`)],
  ] as const) {
    it(`toServerError bounds the message of ${what} and keeps its code`, () => {
      const mapped = toServerError(err, false, '/x.Y/Z', silentLogger);
      expect(mapped.code).to.equal(Status.NOT_FOUND);
      expect(mapped.details.length).to.be.at.most(MAX_MESSAGE_CHARS);
      expect(mapped.details).to.match(/^job x+\.\.\. \(message cut from 1048590 characters\)$/);
    });
  }
});

describe('gateway length limits on ids and tokens', () => {
  it('a job id of MAX_JOB_ID_CHARS passes; one more is refused naming the field and the length', () => {
    expect(validateJobId('job_id', 'j'.repeat(MAX_JOB_ID_CHARS))).to.have.length(MAX_JOB_ID_CHARS);
    expect(() => validateJobId('job_id', 'j'.repeat(MAX_JOB_ID_CHARS + 1))).to.throw(MeshError, 'job_id must be at most 128 characters, given a string of 129 characters');
    expect(() => validateJobId('job_id', '')).to.throw(MeshError, 'job_id is required, given ""');
  });

  it('a page token may be empty; one over MAX_PAGE_TOKEN_CHARS is refused', () => {
    expect(validatePageToken('page_token', '')).to.equal('');
    expect(() => validatePageToken('page_token', 't'.repeat(MAX_PAGE_TOKEN_CHARS + 1))).to.throw(MeshError, 'page_token must be at most 512 characters');
  });
});
