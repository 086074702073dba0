import { expect } from 'chai';
import { MeshError } from '../../common/errors.js';
import { createHash } from 'node:crypto';
import { Authenticator, KeyEntry, createAuthenticator, hashApiKey, keyFileLine, newApiKey, parseApiKeys, parseKeyFile } from '../../gateway/auth.js';

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

const sha = (key: string) => createHash('sha256').update(key).digest('hex');
const shown = (entries: KeyEntry[]) => entries.map((e) => [e.tenant, e.digest.toString('hex')]);

const MISSING = 'missing authorization metadata: send "authorization: Bearer <api key>"';

describe('gateway auth', () => {
  describe('parseApiKeys', () => {
    it('maps each key to its tenant, keeping only the SHA-256 of the key', () => {
      expect(shown(parseApiKeys('acme=k1,globex=k2'))).to.deep.equal([
        ['acme', sha('k1')],
        ['globex', sha('k2')],
      ]);
    });

    it('keeps no plaintext key in what it returns', () => {
      expect(JSON.stringify(parseApiKeys('acme=very-secret-key'))).not.to.contain('very-secret-key');
      expect(String(parseApiKeys('acme=very-secret-key').map((e) => e.digest.toString('latin1')))).not.to.contain('very-secret-key');
    });

    it('ignores whitespace around entries and empty entries', () => {
      expect(shown(parseApiKeys(' acme=k1 , ,globex=k2,'))).to.deep.equal([
        ['acme', sha('k1')],
        ['globex', sha('k2')],
      ]);
    });

    it('keeps = signs after the first one as part of the key', () => {
      expect(shown(parseApiKeys('acme=a2V5=='))).to.deep.equal([['acme', sha('a2V5==')]]);
    });

    it('returns no keys for an empty spec', () => {
      expect(parseApiKeys('')).to.have.length(0);
    });

    it('refuses a tenant name that is not a safe path segment, without echoing the key', () => {
      for (const tenant of ['../etc', 'Acme', 'a/b', 'a b', '-x', 'x'.repeat(65), 'caf\u00e9']) {
        const message = errorMessageOf(() => parseApiKeys(`ok=k0,${tenant}=sk-live-123`));
        expect(message).to.match(/^entry 2: the tenant name must be 1 to 64 of a-z, 0-9/);
        expect(message).not.to.include('sk-live-123');
      }
    });

    it('refuses one key given to two tenants', () => {
      expect(errorMessageOf(() => parseApiKeys('acme=same,globex=same'))).to.equal('entry 2 repeats the key of entry 1');
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

  describe('parseKeyFile', () => {
    it('reads one "<tenant> sha256:<hex>" per line, skipping blank lines and # comments', () => {
      const text = `# keys of the mesh\n\nacme ${hashApiKey('k1')}   # rotated 2026-11\n  globex\t${hashApiKey('k2').toUpperCase().replace('SHA256', 'sha256')}\r\nacme ${hashApiKey('k3')}\n`;
      expect(shown(parseKeyFile(text))).to.deep.equal([
        ['acme', sha('k1')],
        ['globex', sha('k2')],
        ['acme', sha('k3')],
      ]);
    });

    it('reads an empty file as no keys', () => {
      expect(parseKeyFile('# nothing yet\n')).to.have.length(0);
    });

    const bad: Array<[string, string, RegExp]> = [
      ['a plaintext key instead of a hash', 'acme sk-live-SECRET', /^line 2: the second field must be sha256: and 64 hex digits \(a key's hash, never the key\)$/],
      ['a line with one field', 'sk-live-SECRET', /^line 2: expected "<tenant> sha256:<64 hex digits>", given 1 field$/],
      ['a line with three fields', `acme ${hashApiKey('x')} sk-live-SECRET`, /^line 2: expected "<tenant> sha256:<64 hex digits>", given 3 fields$/],
      ['a short hash', 'acme sha256:abcdef', /^line 2: the second field must be sha256/],
      ['an unsafe tenant name', `../sk-live-SECRET ${hashApiKey('x')}`, /^line 2: the tenant name must be 1 to 64 of a-z/],
      ['a repeated key', `globex ${hashApiKey('k1')}`, /^line 2 repeats the key of line 1$/],
    ];
    for (const [what, line, expected] of bad) {
      it(`refuses ${what}, naming the line by number and never its content`, () => {
        const message = errorMessageOf(() => parseKeyFile(`acme ${hashApiKey('k1')}\n${line}\n`));
        expect(message).to.match(expected);
        expect(message).not.to.include('SECRET');
        expect(message).not.to.include('abcdef');
      });
    }
  });

  describe('keys for the key file', () => {
    it('makes a different 256-bit key each time', () => {
      const a = newApiKey();
      const b = newApiKey();
      expect(a).to.match(/^maas_[A-Za-z0-9_-]{43}$/);
      expect(a).not.to.equal(b);
    });

    it('writes a line that parseKeyFile reads back to the same tenant and hash', () => {
      const key = newApiKey();
      const line = keyFileLine('acme', key);
      expect(line).not.to.include(key);
      expect(shown(parseKeyFile(line))).to.deep.equal([['acme', sha(key)]]);
    });

    it('refuses an unsafe tenant name', () => {
      expect(errorMessageOf(() => keyFileLine('../x', 'k'))).to.match(/^the tenant name must be/);
    });
  });

  describe('createAuthenticator with no keys', () => {
    const auth = createAuthenticator({ required: false, entries: [] });

    it('resolves a caller without authorization to "anonymous"', () => {
      expect(auth.tenantOf(undefined)).to.equal('anonymous');
    });

    it('resolves a caller with any authorization to "anonymous"', () => {
      expect(auth.tenantOf('Bearer whatever')).to.equal('anonymous');
    });
  });

  describe('createAuthenticator with keys', () => {
    const auth = createAuthenticator({ required: true, entries: parseApiKeys('acme=k1,globex=k2') });

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

  describe('createAuthenticator: reloads', () => {
    let auth: Authenticator;
    beforeEach(() => {
      auth = createAuthenticator({ required: true, entries: parseApiKeys('acme=k1,globex=k2') });
    });

    it('accepts an added key and refuses a removed one after replaceKeys', () => {
      auth.replaceKeys(parseApiKeys('acme=k1,initech=k3'));
      expect(auth.tenantOf('Bearer k3')).to.equal('initech');
      expect(meshErrorOf(() => auth.tenantOf('Bearer k2')).message).to.equal('invalid API key');
    });

    it('keeps the keys in use when the new set gives one key to two tenants', () => {
      const twice: KeyEntry[] = [...parseApiKeys('acme=k9'), ...parseApiKeys('globex=k9')];
      expect(errorMessageOf(() => auth.replaceKeys(twice))).to.equal('key 2 repeats the key of key 1');
      expect(auth.tenantOf('Bearer k2')).to.equal('globex');
    });

    it('still requires a key when a reload leaves none (an emptied file locks out, never opens up)', () => {
      auth.replaceKeys([]);
      expect(meshErrorOf(() => auth.tenantOf(undefined)).kind).to.equal('unauthenticated');
      expect(meshErrorOf(() => auth.tenantOf('Bearer k1')).message).to.equal('invalid API key');
    });
  });
});
