import { expect } from 'chai';
import { MeshError } from '../../common/errors.js';
import { createAuthenticator, parseApiKeys } from '../../gateway/auth.js';

/** The MeshError that `run` throws; fails if it throws anything else or nothing. */
function meshErrorOf(run: () => unknown): MeshError {
  try {
    run();
  } catch (err) {
    expect(err).to.be.instanceOf(MeshError);
    return err as MeshError;
  }
  expect.fail('the call was accepted');
}

/** The message of the Error that `run` throws. */
function errorMessageOf(run: () => unknown): string {
  try {
    run();
  } catch (err) {
    expect(err).to.be.instanceOf(Error);
    return (err as Error).message;
  }
  expect.fail('the call was accepted');
}

const MISSING = 'missing authorization metadata: send "authorization: Bearer <api key>"';

describe('gateway auth', () => {
  describe('parseApiKeys', () => {
    it('maps each key to its tenant', () => {
      expect([...parseApiKeys('acme=k1,globex=k2')]).to.deep.equal([
        ['k1', 'acme'],
        ['k2', 'globex'],
      ]);
    });

    it('ignores whitespace around entries and empty entries', () => {
      expect([...parseApiKeys(' acme=k1 , ,globex=k2,')]).to.deep.equal([
        ['k1', 'acme'],
        ['k2', 'globex'],
      ]);
    });

    it('keeps = signs after the first one as part of the key', () => {
      expect([...parseApiKeys('acme=a2V5==')]).to.deep.equal([['a2V5==', 'acme']]);
    });

    it('returns no keys for an empty spec', () => {
      expect(parseApiKeys('').size).to.equal(0);
    });

    it('refuses an entry with an empty key, naming its tenant but no key', () => {
      expect(errorMessageOf(() => parseApiKeys('acme=k1,globex='))).to.equal('expected tenant=key, given "globex=" with an empty key');
    });

    it('refuses an entry without =, without echoing it (it may be a secret)', () => {
      const message = errorMessageOf(() => parseApiKeys('acme=k1,sk-live-123'));
      expect(message).to.equal('expected tenant=key in entry 2, given no tenant');
      expect(message).to.not.include('sk-live-123');
    });

    it('refuses an entry with an empty tenant, without echoing the key', () => {
      const message = errorMessageOf(() => parseApiKeys('=sk-live-123'));
      expect(message).to.equal('expected tenant=key in entry 1, given no tenant');
      expect(message).to.not.include('sk-live-123');
    });
  });

  describe('createAuthenticator with no keys', () => {
    const auth = createAuthenticator(new Map());

    it('resolves a caller without authorization to "anonymous"', () => {
      expect(auth.tenantOf(undefined)).to.equal('anonymous');
    });

    it('resolves a caller with any authorization to "anonymous"', () => {
      expect(auth.tenantOf('Bearer whatever')).to.equal('anonymous');
    });
  });

  describe('createAuthenticator with keys', () => {
    const auth = createAuthenticator(parseApiKeys('acme=k1,globex=k2'));

    it('refuses a missing authorization as unauthenticated, saying what to send', () => {
      const err = meshErrorOf(() => auth.tenantOf(undefined));
      expect([err.kind, err.message]).to.deep.equal(['unauthenticated', MISSING]);
    });

    it('refuses an empty authorization as missing', () => {
      const err = meshErrorOf(() => auth.tenantOf(''));
      expect([err.kind, err.message]).to.deep.equal(['unauthenticated', MISSING]);
    });

    it('refuses an unknown key as unauthenticated with "invalid API key"', () => {
      const err = meshErrorOf(() => auth.tenantOf('Bearer nope'));
      expect([err.kind, err.message]).to.deep.equal(['unauthenticated', 'invalid API key']);
    });

    it('does not echo the rejected key in the refusal', () => {
      expect(meshErrorOf(() => auth.tenantOf('Bearer s3cr3t-guess')).message).not.to.contain('s3cr3t-guess');
    });

    it('refuses a known key without the Bearer scheme', () => {
      expect(meshErrorOf(() => auth.tenantOf('k1')).message).to.equal('invalid API key');
    });

    it('refuses a known key under another scheme', () => {
      expect(meshErrorOf(() => auth.tenantOf('Basic k1')).message).to.equal('invalid API key');
    });

    it('refuses a tenant name given as the key', () => {
      expect(meshErrorOf(() => auth.tenantOf('Bearer acme')).message).to.equal('invalid API key');
    });

    it('resolves a known key to its tenant', () => {
      expect([auth.tenantOf('Bearer k1'), auth.tenantOf('Bearer k2')]).to.deep.equal(['acme', 'globex']);
    });

    it('accepts the Bearer scheme in any case', () => {
      expect(['bearer k1', 'BEARER k1', 'BeArEr k1'].map((h) => auth.tenantOf(h))).to.deep.equal(['acme', 'acme', 'acme']);
    });

    it('tolerates extra whitespace around and after the scheme', () => {
      expect(auth.tenantOf('  Bearer   k1  ')).to.equal('acme');
    });
  });
});
