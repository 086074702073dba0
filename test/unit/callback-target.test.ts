/** Where a job callback may go: the address classifier, the URL check and the allowlist. No traffic is sent. */
import { expect } from 'chai';
import {
  AddressKind,
  checkCallbackUrl,
  classifyAddress,
  MAX_CALLBACK_URL_LENGTH,
  NO_EXCEPTIONS,
  parseCallbackAllowlist,
  vetAddress,
} from '../../common/callback-target.js';

/** URLs whose host is a forbidden address in some spelling, and the kind and canonical address the refusal names. */
const FORBIDDEN: [string, AddressKind, string][] = [
  ['http://127.0.0.1/hook', 'loopback', '127.0.0.1'],
  ['http://127.255.255.254:8080/', 'loopback', '127.255.255.254'],
  ['http://2130706433/', 'loopback', '127.0.0.1'], // one integer
  ['http://0x7f000001/', 'loopback', '127.0.0.1'], // hex integer
  ['http://0x7f.0x0.0x0.0x1/', 'loopback', '127.0.0.1'], // hex parts
  ['http://0177.0.0.01/', 'loopback', '127.0.0.1'], // octal parts
  ['http://127.1/', 'loopback', '127.0.0.1'], // short form
  ['http://127.0.1/', 'loopback', '127.0.0.1'],
  ['http://127.0.0.1./', 'loopback', '127.0.0.1'], // trailing dot
  ['http://[::1]/', 'loopback', '::1'],
  ['http://[0:0:0:0:0:0:0:1]/', 'loopback', '::1'],
  ['http://[::ffff:127.0.0.1]/', 'loopback', '::ffff:7f00:1'], // IPv4-mapped
  ['http://[::ffff:7f00:1]/', 'loopback', '::ffff:7f00:1'],
  ['http://[0:0:0:0:0:ffff:127.0.0.1]/', 'loopback', '::ffff:7f00:1'],
  ['http://[::127.0.0.1]/', 'loopback', '::7f00:1'], // IPv4-compatible (deprecated)
  ['http://[64:ff9b::127.0.0.1]/', 'loopback', '64:ff9b::7f00:1'], // NAT64
  ['http://[2002:7f00:1::]/', 'loopback', '2002:7f00:1::'], // 6to4
  ['http://10.0.0.1/', 'private', '10.0.0.1'],
  ['http://167772161/', 'private', '10.0.0.1'],
  ['http://172.16.0.1/', 'private', '172.16.0.1'],
  ['http://172.31.255.255/', 'private', '172.31.255.255'],
  ['http://192.168.1.1/', 'private', '192.168.1.1'],
  ['http://0xc0a80101/', 'private', '192.168.1.1'],
  ['http://[::ffff:10.1.2.3]/', 'private', '::ffff:a01:203'],
  ['http://[fc00::1]/', 'private', 'fc00::1'],
  ['http://[fd12:3456::1]/', 'private', 'fd12:3456::1'],
  ['http://100.64.0.1/', 'shared', '100.64.0.1'],
  ['http://100.127.255.254/', 'shared', '100.127.255.254'],
  ['http://169.254.169.254/latest/meta-data/', 'link-local', '169.254.169.254'], // cloud metadata
  ['http://2852039166/', 'link-local', '169.254.169.254'],
  ['http://0xa9.0xfe.0xa9.0xfe/', 'link-local', '169.254.169.254'],
  ['http://0251.0376.0251.0376/', 'link-local', '169.254.169.254'],
  ['http://169.254.43518/', 'link-local', '169.254.169.254'],
  ['http://[::ffff:169.254.169.254]/', 'link-local', '::ffff:a9fe:a9fe'],
  ['http://[fe80::1]/', 'link-local', 'fe80::1'],
  ['http://[febf::1]/', 'link-local', 'febf::1'],
  ['http://224.0.0.1/', 'multicast', '224.0.0.1'],
  ['http://239.255.255.250/', 'multicast', '239.255.255.250'],
  ['http://[ff02::1]/', 'multicast', 'ff02::1'],
  ['http://255.255.255.255/', 'broadcast', '255.255.255.255'],
  ['http://4294967295/', 'broadcast', '255.255.255.255'],
  ['http://0.0.0.0/', 'unspecified', '0.0.0.0'],
  ['http://0/', 'unspecified', '0.0.0.0'],
  ['http://0x0/', 'unspecified', '0.0.0.0'],
  ['http://0.1.2.3/', 'unspecified', '0.1.2.3'],
  ['http://[::]/', 'unspecified', '::'],
  ['http://[::ffff:0.0.0.0]/', 'unspecified', '::ffff:0:0'],
  ['http://192.0.2.1/', 'reserved', '192.0.2.1'],
  ['http://240.0.0.1/', 'reserved', '240.0.0.1'],
  ['http://[2001:db8::1]/', 'reserved', '2001:db8::1'],
];

const PUBLIC = ['93.184.216.34', '1.1.1.1', '8.8.8.8', '172.15.255.255', '172.32.0.1', '100.63.255.255', '100.128.0.1', '169.253.0.1', '223.255.255.255', '2606:4700::1', '2a00:1450:4001:80b::200e', '::ffff:93.184.216.34', '64:ff9b::93.184.216.34', '2002:5db8:d822::1'];

describe('callbacks: classifyAddress', () => {
  it('classifies canonical addresses of every forbidden kind', () => {
    const cases: [string, AddressKind][] = [
      ['127.0.0.1', 'loopback'],
      ['::1', 'loopback'],
      ['::ffff:127.0.0.1', 'loopback'],
      ['10.255.255.255', 'private'],
      ['fd00::1', 'private'],
      ['100.64.0.0', 'shared'],
      ['169.254.169.254', 'link-local'],
      ['fe80::abcd', 'link-local'],
      ['ff05::2', 'multicast'],
      ['224.0.0.251', 'multicast'],
      ['255.255.255.255', 'broadcast'],
      ['0.0.0.0', 'unspecified'],
      ['::', 'unspecified'],
    ];
    for (const [address, kind] of cases) expect(classifyAddress(address), address).to.equal(kind);
  });

  it('classifies public IPv4 and IPv6 addresses, including the edges of the forbidden ranges, as public', () => {
    for (const address of PUBLIC) expect(classifyAddress(address), address).to.equal('public');
  });

  it('is undefined for what is not an IP address', () => {
    for (const text of ['localhost', 'example.com', '2130706433', '127.1', '0x7f000001', '1.2.3.4.5', '']) expect(classifyAddress(text), text).to.equal(undefined);
  });
});

describe('callbacks: checkCallbackUrl', () => {
  for (const [url, kind, address] of FORBIDDEN) {
    it(`refuses ${url} (${kind})`, () => {
      const checked = checkCallbackUrl(url, NO_EXCEPTIONS);
      expect(checked).to.deep.equal({ rule: `must not name a${kind === 'unspecified' ? 'n' : ''} ${kind} address (${address}) unless the callback allowlist permits it` });
    });
  }

  it('accepts public addresses and host names (which it does not resolve)', () => {
    for (const url of ['http://93.184.216.34/hook', 'https://[2606:4700::1]:8443/x?y=1', 'https://hooks.example.com/jobs', 'http://localhost:8080/', 'http://127.0.0.1.nip.io/']) {
      const checked = checkCallbackUrl(url, NO_EXCEPTIONS);
      expect('url' in checked, url).to.equal(true);
    }
  });

  it('refuses other schemes, user info, hostless and overlong URLs, naming the rule', () => {
    const cases: [string, string][] = [
      ['ftp://example.com/x', 'must use http or https, not "ftp"'],
      ['file:///etc/passwd', 'must use http or https, not "file"'],
      ['gopher://example.com/', 'must use http or https, not "gopher"'],
      ['javascript:alert(1)', 'must use http or https, not "javascript"'],
      ['http://user:pass@example.com/', 'must not carry a user name or password'],
      ['https://token@example.com/', 'must not carry a user name or password'],
      ['not a url', 'must be an absolute http or https URL'],
      ['/relative/path', 'must be an absolute http or https URL'],
      ['http://', 'must be an absolute http or https URL'],
      [`https://example.com/${'a'.repeat(MAX_CALLBACK_URL_LENGTH)}`, `must be at most ${MAX_CALLBACK_URL_LENGTH} characters`],
    ];
    for (const [url, rule] of cases) expect(checkCallbackUrl(url, NO_EXCEPTIONS), url.slice(0, 40)).to.deep.equal({ rule });
    expect('url' in checkCallbackUrl(`https://example.com/${'a'.repeat(MAX_CALLBACK_URL_LENGTH - 20)}`, NO_EXCEPTIONS)).to.equal(true);
  });

  it('lets the allowlist open exactly what it names', () => {
    const allow = parseCallbackAllowlist('127.0.0.1/32, localhost ,10.0.0.0/8,::1');
    expect('url' in checkCallbackUrl('http://127.0.0.1:8080/hook', allow)).to.equal(true);
    expect('url' in checkCallbackUrl('http://2130706433:8080/hook', allow)).to.equal(true);
    expect('url' in checkCallbackUrl('http://[::ffff:127.0.0.1]/', allow)).to.equal(true);
    expect('url' in checkCallbackUrl('http://10.9.8.7/', allow)).to.equal(true);
    expect('url' in checkCallbackUrl('http://[::1]/', allow)).to.equal(true);
    expect(checkCallbackUrl('http://127.0.0.2/', allow)).to.have.property('rule').that.match(/loopback address \(127\.0\.0\.2\)/);
    expect(checkCallbackUrl('http://169.254.169.254/', allow)).to.have.property('rule').that.match(/link-local/);
    expect(checkCallbackUrl('http://192.168.0.1/', allow)).to.have.property('rule').that.match(/private/);
    expect(checkCallbackUrl('ftp://127.0.0.1/', allow)).to.deep.equal({ rule: 'must use http or https, not "ftp"' });
  });
});

describe('callbacks: parseCallbackAllowlist and vetAddress', () => {
  it('parses hosts, addresses and CIDRs; empty means public only', () => {
    expect(parseCallbackAllowlist('')).to.deep.equal({ hosts: new Set(), cidrs: [] });
    const allow = parseCallbackAllowlist('LocalHost.,hooks.internal,192.168.0.0/16,fd00::/8');
    expect([...allow.hosts]).to.deep.equal(['localhost', 'hooks.internal']);
    expect(allow.cidrs).to.have.length(2);
  });

  it('refuses malformed entries, naming them', () => {
    expect(() => parseCallbackAllowlist('10.0.0.0/33')).to.throw(/prefix length from 0 to 32 in "10\.0\.0\.0\/33"/);
    expect(() => parseCallbackAllowlist('::1/129')).to.throw(/prefix length from 0 to 128/);
    expect(() => parseCallbackAllowlist('10.0.0.0/x')).to.throw(/prefix length/);
    expect(() => parseCallbackAllowlist('not a host!')).to.throw(/host name, an IP address or a CIDR, given "not a host!"/);
    expect(() => parseCallbackAllowlist('example.com/8')).to.throw(/given "example\.com\/8"/);
  });

  it('vets resolved addresses against the kinds and the CIDRs', () => {
    expect(vetAddress('93.184.216.34', NO_EXCEPTIONS)).to.equal(undefined);
    expect(vetAddress('2606:4700::1', NO_EXCEPTIONS)).to.equal(undefined);
    expect(vetAddress('127.0.0.1', NO_EXCEPTIONS)).to.equal('127.0.0.1 is a loopback address');
    expect(vetAddress('::ffff:169.254.169.254', NO_EXCEPTIONS)).to.equal('::ffff:169.254.169.254 is a link-local address');
    expect(vetAddress('0.0.0.0', NO_EXCEPTIONS)).to.equal('0.0.0.0 is an unspecified address');
    expect(vetAddress('localhost', NO_EXCEPTIONS)).to.equal('"localhost" is not an IP address');
    const allow = parseCallbackAllowlist('127.0.0.0/8,fd00::/8');
    expect(vetAddress('127.1.2.3', allow)).to.equal(undefined);
    expect(vetAddress('::ffff:127.0.0.1', allow)).to.equal(undefined);
    expect(vetAddress('fd00::5', allow)).to.equal(undefined);
    expect(vetAddress('fc00::5', allow)).to.equal('fc00::5 is a private address');
    // A host name on the list is not an address range: it does not open what it resolves to for other names.
    expect(vetAddress('127.0.0.1', parseCallbackAllowlist('localhost'))).to.equal('127.0.0.1 is a loopback address');
  });
});
