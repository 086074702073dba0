/** `maas keys add`, run as the real CLI: prints a new key once and appends only its hash to the key file. */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createAuthenticator, parseKeyFile } from '../../gateway/auth';

const maas = resolve(__dirname, '../../gateway/cli/maas.js');
const run = (...args: string[]) => spawnSync(process.execPath, [maas, ...args], { encoding: 'utf8' });

describe('maas keys add', () => {
  let dir: string;
  let file: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'maas-keys-cli-'));
    file = join(dir, 'keys.txt');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('creates the file (mode 600), prints each new key once and stores only its hash; the gateway accepts the keys', () => {
    const a = run('keys', 'add', '--tenant', 'acme', '--file', file);
    const b = run('keys', 'add', '--tenant', 'globex', '--file', file);
    expect([a.status, b.status]).to.deep.equal([0, 0]);
    const [keyA, keyB] = [a.stdout.trim(), b.stdout.trim()];
    expect(keyA).to.match(/^maas_[A-Za-z0-9_-]{43}$/);
    expect(keyB).not.to.equal(keyA);
    const text = readFileSync(file, 'utf8');
    expect(text).not.to.include(keyA.slice(5));
    expect(text).not.to.include(keyB.slice(5));
    expect(statSync(file).mode & 0o777).to.equal(0o600);
    const auth = createAuthenticator({ required: true, entries: parseKeyFile(text) });
    expect([auth.tenantOf(`Bearer ${keyA}`), auth.tenantOf(`Bearer ${keyB}`)]).to.deep.equal(['acme', 'globex']);
  });

  it('refuses an unsafe tenant name and a file that is not a key file, changing nothing', () => {
    const bad = run('keys', 'add', '--tenant', '../etc', '--file', file);
    expect(bad.status).to.equal(2);
    expect(bad.stderr).to.include('--tenant: the tenant name must be 1 to 64 of a-z');
    writeFileSync(file, 'acme plaintext-SECRET\n');
    const broken = run('keys', 'add', '--tenant', 'acme', '--file', file);
    expect(broken.status).to.equal(2);
    expect(broken.stderr).to.include('line 1: the second field must be sha256:');
    expect(broken.stderr).not.to.include('plaintext-SECRET');
    expect(readFileSync(file, 'utf8')).to.equal('acme plaintext-SECRET\n');
  });
});
