/**
 * The fuzzer's own safety rules (test/fuzz/hostile): whatever it mutates a value into, a callback
 * URL may only name localhost or a literal address that is not public (no name is ever resolved,
 * nothing leaves the machine), and a path may only be one of the run's hostile list or a plain name.
 */
import { expect } from 'chai';
import { harmlessCallbackUrl, harmlessPath, hostileValues, refusedAtSubmit } from '../fuzz/hostile.js';

const context = { inputRoot: '/tmp/run/data/input', outputRoot: '/tmp/run/data/output', dataDir: '/tmp/run/data', outside: '/tmp/fuzz/outside', canary: '/tmp/fuzz/outside/secret.jsonl', listenerPort: 4567 };

describe('fuzz hostile values (test/fuzz/hostile)', () => {
  it('every hostile callback URL is harmless to send, and every one with a literal address must be refused at submit', () => {
    const values = hostileValues(context);
    for (const url of values.callbackUrl) expect(harmlessCallbackUrl(url), url).to.equal(true);
    expect(refusedAtSubmit('callbackUrl', 'http://2130706433:4567/callback', values)).to.equal(true);
    expect(refusedAtSubmit('callbackUrl', 'http://169.254.169.254/latest/meta-data/', values)).to.equal(true);
    expect(refusedAtSubmit('callbackUrl', 'http://localhost:4567/callback', values)).to.equal(false);
  });

  it('a public address or any host name but localhost is never sent: it would leave the machine or need DNS', () => {
    for (const url of ['http://8.8.8.8/', 'http://134744072/', 'http://[2001:4860:4860::8888]/', 'http://example.com/', 'http://localhost.example/', 'https://metadata.google.internal/', 'http://a/']) {
      expect(harmlessCallbackUrl(url), url).to.equal(false);
    }
    for (const url of ['not a url', 'file:///etc/passwd', 'http://LOCALHOST:1/', 'http://0x7f.1/', 'http://10.1.2.3/']) expect(harmlessCallbackUrl(url), url).to.equal(true);
  });

  it('paths: the hostile list and plain names only; every hostile output path aims into the run\'s folders or at a device', () => {
    const values = hostileValues(context);
    for (const p of [...values.file, 'plain-name.jsonl']) expect(harmlessPath(p, values.file), p).to.equal(true);
    for (const p of ['/etc/shadow', '../../../../etc/passwd', 'x/../../y']) expect(harmlessPath(p, values.file), p).to.equal(false);
    for (const p of values.outputFile.filter((x) => x.startsWith('/'))) expect(p, p).to.match(/^(\/tmp\/run\/|\/tmp\/fuzz\/|\/dev\/(null|zero)$|\/proc\/self\/environ$|\/$)/);
    // Climbs resolve, from a tenant's folder, into the data folder or the folder outside.
    expect(values.outputFile).to.include('../../../../fuzz/outside/written.jsonl');
  });
});
