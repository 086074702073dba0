/**
 * Where a job callback may go. A callback URL is caller input that makes the mesh send a request,
 * so by default it may reach only public unicast addresses: never loopback, private, shared
 * (carrier-grade NAT), link-local (the cloud metadata address among them), multicast, broadcast,
 * unspecified or otherwise reserved space, in any IPv4 or IPv6 spelling. An allowlist of host
 * names and CIDRs opens exceptions, for development and tests.
 *
 * The gateway uses {@link checkCallbackUrl} to refuse what it can see in the URL itself; the
 * scheduler uses it again and vets, with {@link vetAddress}, every address a host name resolves
 * to, just before it connects to that very address.
 *
 * Plain TypeScript, no gRPC, no process globals.
 */
import { isIP } from 'node:net';
import type { Setting } from './config';

/** Longest callback URL accepted, in characters. */
export const MAX_CALLBACK_URL_LENGTH = 2048;

/** What kind of address an IP is; only `public` is a callback target by default. */
export type AddressKind =
  | 'public'
  | 'loopback'
  | 'private'
  | 'shared'
  | 'link-local'
  | 'multicast'
  | 'broadcast'
  | 'unspecified'
  | 'reserved';

/** An IP address as a number: 32 bits for IPv4, 128 for IPv6. */
interface Ip {
  family: 4 | 6;
  value: bigint;
}

/** One CIDR of an allowlist. */
interface Cidr {
  family: 4 | 6;
  base: bigint;
  prefix: number;
}

/** Exceptions to the default rule: host names (exact, case-insensitive) and address ranges. */
export interface CallbackAllowlist {
  /** Host names whose URLs may go wherever the name resolves. */
  readonly hosts: ReadonlySet<string>;
  /** Address ranges that may be connected to, whatever name led there. */
  readonly cidrs: readonly Cidr[];
}

/** The empty allowlist: public addresses only. */
export const NO_EXCEPTIONS: CallbackAllowlist = { hosts: new Set(), cidrs: [] };

const HOST_NAME = /^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$/;

/**
 * Parses a comma-separated allowlist: host names (`localhost`, `hooks.internal`), addresses
 * (`127.0.0.1`, `::1`) and CIDRs (`10.0.0.0/8`, `fd00::/8`). Throws an Error naming the bad entry.
 */
export function parseCallbackAllowlist(raw: string): CallbackAllowlist {
  const hosts = new Set<string>();
  const cidrs: Cidr[] = [];
  for (const part of raw.split(',')) {
    const entry = part.trim().toLowerCase();
    if (entry === '') continue;
    const slash = entry.indexOf('/');
    const address = slash >= 0 ? entry.slice(0, slash) : entry;
    const ip = parseIp(address);
    if (ip) {
      const bits = ip.family === 4 ? 32 : 128;
      const prefixText = slash >= 0 ? entry.slice(slash + 1) : String(bits);
      const prefix = /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : NaN;
      if (!(prefix >= 0 && prefix <= bits)) throw new Error(`expected a prefix length from 0 to ${bits} in ${JSON.stringify(entry.slice(0, 60))}`);
      cidrs.push({ family: ip.family, base: ip.value & mask(bits, prefix), prefix });
    } else if (slash < 0 && HOST_NAME.test(entry.replace(/\.$/, ''))) {
      hosts.add(entry.replace(/\.$/, ''));
    } else {
      throw new Error(`expected a host name, an IP address or a CIDR, given ${JSON.stringify(entry.slice(0, 60))}`);
    }
  }
  return { hosts, cidrs };
}

/** The kind of an IP address (canonical dotted IPv4 or any valid IPv6 text), or undefined if it is not one. */
export function classifyAddress(address: string): AddressKind | undefined {
  const ip = parseIp(address);
  return ip && kindOf(ip);
}

/** True when the host name (as a URL gives it) is on the allowlist. */
export function isAllowedHost(host: string, allow: CallbackAllowlist): boolean {
  return allow.hosts.has(host.toLowerCase().replace(/\.$/, ''));
}

/**
 * Vets one address about to be connected to: undefined when it may be, else why not (a phrase
 * such as "127.0.0.1 is a loopback address"). An address that is not an IP is refused.
 */
export function vetAddress(address: string, allow: CallbackAllowlist): string | undefined {
  const ip = parseIp(address);
  if (!ip) return `${JSON.stringify(address.slice(0, 60))} is not an IP address`;
  const kind = kindOf(ip);
  if (kind === 'public' || inAllowedRange(ip, allow)) return undefined;
  return `${address} is ${kind === 'unspecified' ? 'an' : 'a'} ${kind} address`;
}

/** Why a callback URL is refused: the rule it breaks, phrased to follow the field's name. */
export interface UrlRefusal {
  /** E.g. "must use http or https", "must not name a loopback address (127.0.0.1)". */
  rule: string;
}

/**
 * Checks what the URL itself shows: an absolute http or https URL with a host, no user name or
 * password, at most {@link MAX_CALLBACK_URL_LENGTH} characters, and, when the host is an IP
 * address in any spelling the URL parser accepts (2130706433, 0x7f.1, 0177.0.0.1, 127.1,
 * [::ffff:127.0.0.1]), one that {@link vetAddress} lets through. A host name is not resolved
 * here: that is the connect-time check. Returns the parsed URL, or the refusal.
 */
export function checkCallbackUrl(raw: string, allow: CallbackAllowlist): { url: URL } | UrlRefusal {
  if (raw.length > MAX_CALLBACK_URL_LENGTH) return { rule: `must be at most ${MAX_CALLBACK_URL_LENGTH} characters` };
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return { rule: 'must be an absolute http or https URL' };
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return { rule: `must use http or https, not ${JSON.stringify(url.protocol.slice(0, -1).slice(0, 20))}` };
  if (url.hostname === '') return { rule: 'must name a host' };
  if (url.username !== '' || url.password !== '') return { rule: 'must not carry a user name or password' };
  const literal = hostAddress(url);
  if (literal !== undefined && !isAllowedHost(url.hostname, allow)) {
    const ip = parseIp(literal)!;
    const kind = kindOf(ip);
    if (kind !== 'public' && !inAllowedRange(ip, allow)) {
      return { rule: `must not name ${kind === 'unspecified' ? 'an' : 'a'} ${kind} address (${literal}) unless the callback allowlist permits it` };
    }
  }
  return { url };
}

/** The IP address a URL's host is, without IPv6 brackets, or undefined for a host name. */
export function hostAddress(url: URL): string | undefined {
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  return isIP(host) ? host : undefined;
}

function inAllowedRange(ip: Ip, allow: CallbackAllowlist): boolean {
  const forms = [ip];
  const embedded = mappedIPv4(ip);
  if (embedded) forms.push(embedded);
  return allow.cidrs.some((c) => forms.some((f) => f.family === c.family && (f.value & mask(c.family === 4 ? 32 : 128, c.prefix)) === c.base));
}

function mask(bits: number, prefix: number): bigint {
  const all = (1n << BigInt(bits)) - 1n;
  return prefix === 0 ? 0n : all ^ ((1n << BigInt(bits - prefix)) - 1n);
}

/** Parses canonical IPv4 (four decimal parts, as DNS and the URL parser give it) or IPv6. */
function parseIp(text: string): Ip | undefined {
  const family = isIP(text);
  if (family === 4) {
    const parts = text.split('.').map(Number);
    return { family: 4, value: BigInt(((parts[0]! << 24) >>> 0) + (parts[1]! << 16) + (parts[2]! << 8) + parts[3]!) };
  }
  if (family !== 6) return undefined;
  let rest = text.toLowerCase();
  const zone = rest.indexOf('%');
  if (zone >= 0) rest = rest.slice(0, zone);
  // A dotted IPv4 tail (::ffff:1.2.3.4) becomes two groups.
  const tail = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(rest);
  if (tail) {
    const [a, b, c, d] = tail.slice(1).map(Number) as [number, number, number, number];
    rest = `${rest.slice(0, tail.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, back] = rest.includes('::') ? rest.split('::') : [rest, undefined];
  const front = head ? head.split(':') : [];
  const end = back ? back.split(':') : [];
  const groups = back === undefined ? front : [...front, ...Array<string>(8 - front.length - end.length).fill('0'), ...end];
  let value = 0n;
  for (const g of groups) value = (value << 16n) | BigInt(parseInt(g, 16));
  return { family: 6, value };
}

/** The IPv4 address inside an IPv4-mapped IPv6 address (::ffff:a.b.c.d), if it is one. */
function mappedIPv4(ip: Ip): Ip | undefined {
  if (ip.family === 6 && ip.value >> 32n === 0xffffn) return { family: 4, value: ip.value & 0xffffffffn };
  return undefined;
}

function inRange(ip: Ip, cidr: string): boolean {
  const slash = cidr.indexOf('/');
  const base = parseIp(cidr.slice(0, slash))!;
  const bits = base.family === 4 ? 32 : 128;
  return ip.family === base.family && (ip.value & mask(bits, Number(cidr.slice(slash + 1)))) === base.value;
}

const IPV4_RANGES: [string, AddressKind][] = [
  ['0.0.0.0/8', 'unspecified'],
  ['10.0.0.0/8', 'private'],
  ['100.64.0.0/10', 'shared'],
  ['127.0.0.0/8', 'loopback'],
  ['169.254.0.0/16', 'link-local'],
  ['172.16.0.0/12', 'private'],
  ['192.0.0.0/24', 'reserved'], // IETF protocol assignments
  ['192.0.2.0/24', 'reserved'], // documentation
  ['192.88.99.0/24', 'reserved'], // 6to4 relay anycast
  ['192.168.0.0/16', 'private'],
  ['198.18.0.0/15', 'reserved'], // benchmarking
  ['198.51.100.0/24', 'reserved'], // documentation
  ['203.0.113.0/24', 'reserved'], // documentation
  ['224.0.0.0/4', 'multicast'],
  ['255.255.255.255/32', 'broadcast'],
  ['240.0.0.0/4', 'reserved'],
];

const IPV6_RANGES: [string, AddressKind][] = [
  ['::/128', 'unspecified'],
  ['::1/128', 'loopback'],
  ['fc00::/7', 'private'], // unique local
  ['fec0::/10', 'private'], // site-local, deprecated
  ['fe80::/10', 'link-local'],
  ['ff00::/8', 'multicast'],
  ['64:ff9b:1::/48', 'private'], // local-use NAT64
  ['100::/64', 'reserved'], // discard
  ['2001::/23', 'reserved'], // IETF protocol assignments, Teredo among them
  ['2001:db8::/32', 'reserved'], // documentation
  ['3fff::/20', 'reserved'], // documentation
];

function kindOf(ip: Ip): AddressKind {
  if (ip.family === 4) return IPV4_RANGES.find(([cidr]) => inRange(ip, cidr))?.[1] ?? 'public';
  const direct = IPV6_RANGES.find(([cidr]) => inRange(ip, cidr))?.[1];
  if (direct) return direct;
  // IPv6 forms that carry an IPv4 address take that address's kind: mapped (::ffff:0:0/96),
  // NAT64 (64:ff9b::/96) and 6to4 (2002::/16). The deprecated IPv4-compatible form (::/96) is
  // never a target.
  const mapped = mappedIPv4(ip);
  if (mapped) return kindOf(mapped);
  if (ip.value >> 32n === 0x0064ff9b0000000000000000n) return kindOf({ family: 4, value: ip.value & 0xffffffffn });
  if (ip.value >> 112n === 0x2002n) return kindOf({ family: 4, value: (ip.value >> 80n) & 0xffffffffn });
  if (ip.value >> 32n === 0n) {
    const inner = kindOf({ family: 4, value: ip.value & 0xffffffffn });
    return inner === 'public' ? 'reserved' : inner;
  }
  return 'public';
}

/**
 * The `--callback-allow` setting, the same in the gateway (which refuses literal addresses at
 * submit) and the scheduler (which vets what it connects to). One environment variable sets both.
 */
export function callbackAllowSetting(): Setting<string> {
  return {
    flag: '--callback-allow',
    env: 'MAAS_CALLBACK_ALLOW',
    default: '',
    doc: 'Comma-separated hosts and CIDRs job callbacks may reach besides public addresses, e.g. `127.0.0.1/32,localhost` for development; empty: public addresses only.',
    parse(raw: string): string {
      parseCallbackAllowlist(raw);
      return raw;
    },
    show: (v: string) => (v === '' ? '(empty)' : v),
  };
}
