/**
 * Hostile values for the fields that reach files and the network: job files and output files
 * (absolute paths outside the roots, `..` climbs, devices, /proc, symlinks out, very long, NUL)
 * and callback URLs (loopback in every spelling, cloud metadata, private, shared, link-local,
 * multicast, broadcast, unspecified, `localhost`), and the rule that keeps the fuzzer harmless
 * whatever it mutates them into: a path is one of these or a plain name, and a URL's host is a
 * literal IP address that is not public, or `localhost`. So no input can make the mesh connect
 * to another machine, resolve a public name, or write outside the fuzz run's temporary folders
 * (the hostile output paths all point into them, or at devices where a write is harmless).
 *
 * Plain data: no gRPC, no files.
 */
import { classifyAddress, hostAddress } from '../../common/callback-target';

/** A word only the canary file outside the roots holds: it must never appear in a result. */
export const CANARY_WORD = 'fuzzcanaryword';

/** Where the run's files are. */
export interface HostileContext {
  /** The mesh's input root (scheduler and workers). */
  inputRoot: string;
  /** The aggregator's output root (a folder per tenant inside). */
  outputRoot: string;
  /** The folder of the mesh's stores and roots. */
  dataDir: string;
  /** A folder outside every root, holding the canary file; output paths aim into it. */
  outside: string;
  /** The canary file (JSON Lines, one record of {@link CANARY_WORD}) in `outside`. */
  canary: string;
  /** Port of the HTTP listener on 127.0.0.1 that must never receive a callback. */
  listenerPort: number;
}

/** The values the fuzzer picks from, by field (as decoded, camelCase). */
export interface HostileValues {
  file: string[];
  outputFile: string[];
  callbackUrl: string[];
  /** Absolute paths outside the roots that must not exist after the run. */
  mustNotExist: string[];
}

/** Relative path from `from` to `to`, both absolute POSIX paths (no node:path, to stay plain). */
function relative(from: string, to: string): string {
  const a = from.split('/').filter(Boolean);
  const b = to.split('/').filter(Boolean);
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return [...a.slice(i).map(() => '..'), ...b.slice(i)].join('/');
}

/** The hostile (and a few valid) values for one run. */
export function hostileValues(c: HostileContext): HostileValues {
  const store = `${c.dataDir}/scheduler/scheduler.sqlite`;
  const file = [
    // Valid, so that some inputs get past the path checks.
    'records.jsonl',
    'missing.jsonl',
    // Outside the root: absolute, climbing, devices, /proc, the mesh's own store.
    c.canary,
    relative(c.inputRoot, c.canary),
    `../${relative(c.dataDir, c.canary)}`,
    `records.jsonl/../../${relative(c.dataDir, c.canary)}`,
    store,
    relative(c.inputRoot, store),
    '../../../../../../../../etc/passwd',
    '/etc/passwd',
    '/proc/self/environ',
    '/proc/self/mem',
    '/dev/zero',
    '/dev/urandom',
    // Symlinks inside the root that point out of it (made by the harness).
    'link-out.jsonl',
    'link-dir/secret.jsonl',
    // Not a regular file, empty, NUL, control characters, very long.
    '.',
    '..',
    '/',
    ' ',
    'records.jsonl\u0000/etc/passwd',
    'a\nb',
    'x'.repeat(300),
    `${'a/'.repeat(3000)}x`,
  ];
  const escaped = `${c.outside}/written.jsonl`;
  const escapedData = `${c.dataDir}/escaped.jsonl`;
  const outputFile = [
    'out.jsonl',
    'nested/out.jsonl',
    // Out of the tenant's folder: into another tenant's, the root, the data folder, the store,
    // the folder outside; absolute; devices and /proc (where a write harms nothing).
    '../other-tenant/out.jsonl',
    '../escaped.jsonl',
    '../../escaped.jsonl',
    '../../scheduler/scheduler.sqlite',
    `../../${relative(c.dataDir, escaped)}`,
    escaped,
    escapedData,
    store,
    '/dev/null',
    '/dev/zero',
    '/proc/self/environ',
    // A symlink in the tenant's folder to the folder outside (made by the harness).
    'link-out/written.jsonl',
    '.',
    '..',
    '/',
    'out.jsonl\u0000.txt',
    'y'.repeat(300),
    `${'b/'.repeat(3000)}y`,
  ];
  const p = c.listenerPort;
  const callbackUrl = [
    '',
    'not a url',
    'http://127.0.0.1:1/callback',
    // Loopback in every spelling, pointing at the listener that must receive nothing.
    `http://127.0.0.1:${p}/callback`,
    `https://127.0.0.1:${p}/callback`,
    `http://localhost:${p}/callback`,
    `http://LOCALHOST:${p}/callback`,
    `http://2130706433:${p}/callback`,
    `http://0x7f000001:${p}/callback`,
    `http://0x7f.1:${p}/callback`,
    `http://0177.0.0.1:${p}/callback`,
    `http://127.1:${p}/callback`,
    `http://[::1]:${p}/callback`,
    `http://[::ffff:127.0.0.1]:${p}/callback`,
    `http://[::ffff:7f00:1]:${p}/callback`,
    `http://0.0.0.0:${p}/callback`,
    `http://0:${p}/callback`,
    `http://[::]:${p}/callback`,
    // Metadata, private, shared, link-local, multicast, broadcast.
    'http://169.254.169.254/latest/meta-data/',
    'http://[fd00:ec2::254]/latest/meta-data/',
    'http://10.0.0.1/callback',
    'http://172.16.0.1/callback',
    'http://192.168.0.1/callback',
    'http://100.64.0.1/callback',
    'http://[fe80::1]/callback',
    'http://[fc00::1]/callback',
    'http://224.0.0.1/callback',
    'http://255.255.255.255/callback',
    // Credentials, other schemes.
    `http://user:pass@127.0.0.1:${p}/callback`,
    `ftp://127.0.0.1:${p}/callback`,
    'file:///etc/passwd',
    `gopher://127.0.0.1:${p}/_callback`,
  ];
  return { file, outputFile, callbackUrl, mustNotExist: [escaped, escapedData] };
}

/**
 * True when a callback URL is harmless to send: not a URL at all, a URL with no host, or one
 * whose host is `localhost` or a literal IP address (in any spelling the URL parser reads) that
 * is not public. A host name other than `localhost` would make the scheduler resolve it; a
 * public address, connect out of this machine.
 */
export function harmlessCallbackUrl(value: string): boolean {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return true;
  }
  if (url.hostname === '') return true;
  if (url.hostname === 'localhost') return true;
  const literal = hostAddress(url);
  if (literal === undefined) return false;
  const kind = classifyAddress(literal);
  return kind !== undefined && kind !== 'public';
}

/** True when a path is one of `known` or a plain name (no separator, not `.` or `..`). */
export function harmlessPath(value: string, known: readonly string[]): boolean {
  if (known.includes(value)) return true;
  return !value.includes('/') && !value.includes('\\') && value !== '.' && value !== '..';
}

/** Paths of the lists above that are valid (they may be accepted at submit). */
const VALID_PATHS = ['records.jsonl', 'missing.jsonl', 'out.jsonl', 'nested/out.jsonl'];

/**
 * True when `value` of field `field` must be refused where a job is submitted: a hostile file or
 * output file of the lists (not one of the valid names), or a callback URL that is not a URL or
 * has a literal address. (A `localhost` callback passes at submit; the scheduler refuses it where
 * it connects, and the listener checks that nothing arrives.)
 */
export function refusedAtSubmit(field: 'file' | 'outputFile' | 'callbackUrl', value: string, values: HostileValues): boolean {
  if (field === 'callbackUrl') {
    if (value === '') return false;
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      return true;
    }
    return url.hostname !== 'localhost';
  }
  return values[field].includes(value) && !VALID_PATHS.includes(value);
}
