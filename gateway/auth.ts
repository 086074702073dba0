/**
 * API-key authentication at the edge: maps a bearer key to its tenant.
 *
 * Keys are kept only as SHA-256 digests. A presented key is hashed and compared with every known
 * digest by `crypto.timingSafeEqual`, always all of them, so the time taken does not depend on
 * which digest (if any) matched or on how many leading bytes agreed. Keys come from a key file
 * (`<tenant> sha256:<hex>` lines, see {@link parseKeyFile}) or from plaintext `tenant=key` pairs
 * in the environment ({@link parseApiKeys}), which are hashed at once; neither parser ever puts
 * a line's content or a key into an error message.
 *
 * Plain TypeScript: reading and watching the key file is in ./key-file.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { MeshError } from '../common/errors';
import { ANONYMOUS_TENANT, TENANT_NAME_PATTERN } from '../common/tenant';

/** One key: its tenant and the SHA-256 digest of the key (32 bytes). */
export interface KeyEntry {
  readonly tenant: string;
  readonly digest: Buffer;
}

/** The rule of a tenant name, for messages that must not echo the name given. */
const TENANT_RULE = 'must be 1 to 64 of a-z, 0-9, "-" and "_", starting with a letter or digit';

/** How a key is written in a key file: `sha256:` and the lowercase hex digest of its UTF-8 bytes. */
export function hashApiKey(key: string): string {
  return `sha256:${digestOf(key).toString('hex')}`;
}

/** A new random API key (256 bits, base64url), to hand to a tenant once. */
export function newApiKey(): string {
  return `maas_${randomBytes(32).toString('base64url')}`;
}

/** A key-file line for `tenant` and `key`: what `maas keys add` appends. */
export function keyFileLine(tenant: string, key: string): string {
  if (!TENANT_NAME_PATTERN.test(tenant)) throw new Error(`the tenant name ${TENANT_RULE}`);
  return `${tenant} ${hashApiKey(key)}`;
}

function digestOf(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}

/**
 * Parses plaintext `tenant=key,tenant=key` (the environment's form) into hashed entries; the
 * plaintext is not kept. Throws an Error saying which entry is malformed, never echoing a key.
 */
export function parseApiKeys(spec: string): KeyEntry[] {
  const entries: KeyEntry[] = [];
  spec
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .forEach((entry, i) => {
      const eq = entry.indexOf('=');
      // Never echo a malformed entry: it is most likely a secret.
      if (eq <= 0) throw new Error(`expected tenant=key in entry ${i + 1}, given no tenant`);
      const tenant = entry.slice(0, eq);
      if (!TENANT_NAME_PATTERN.test(tenant)) throw new Error(`entry ${i + 1}: the tenant name ${TENANT_RULE}`);
      if (eq === entry.length - 1) throw new Error(`expected tenant=key, given "${tenant}=" with an empty key`);
      entries.push({ tenant, digest: digestOf(entry.slice(eq + 1)) });
    });
  return checkDistinct(entries, (i) => `entry ${i + 1}`);
}

/**
 * Parses a key file: one `<tenant> sha256:<64 hex digits>` per line; blank lines and everything
 * after a `#` are ignored. Throws an Error naming the first bad line by number only.
 */
export function parseKeyFile(text: string): KeyEntry[] {
  const entries: KeyEntry[] = [];
  const lineOf: number[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const hash = raw.indexOf('#');
    const line = (hash >= 0 ? raw.slice(0, hash) : raw).trim();
    if (line === '') return;
    const fields = line.split(/\s+/);
    const where = `line ${i + 1}`;
    if (fields.length !== 2) throw new Error(`${where}: expected "<tenant> sha256:<64 hex digits>", given ${fields.length} field${fields.length === 1 ? '' : 's'}`);
    const [tenant, hashed] = fields;
    if (!TENANT_NAME_PATTERN.test(tenant)) throw new Error(`${where}: the tenant name ${TENANT_RULE}`);
    const m = /^sha256:([0-9a-f]{64})$/i.exec(hashed);
    // A plaintext key pasted by mistake lands here: say so without showing it.
    if (!m) throw new Error(`${where}: the second field must be sha256: and 64 hex digits (a key's hash, never the key)`);
    entries.push({ tenant, digest: Buffer.from(m[1], 'hex') });
    lineOf.push(i + 1);
  });
  return checkDistinct(entries, (i) => `line ${lineOf[i]}`);
}

/** Throws if two entries have the same digest: one key would then name two tenants. */
function checkDistinct(entries: KeyEntry[], where: (index: number) => string): KeyEntry[] {
  const seen = new Map<string, number>();
  entries.forEach((e, i) => {
    const hex = e.digest.toString('hex');
    const first = seen.get(hex);
    if (first !== undefined) throw new Error(`${where(i)} repeats the key of ${where(first)}`);
    seen.set(hex, i);
  });
  return entries;
}

/** Resolves callers to tenants. */
export interface Authenticator {
  /** The caller's tenant; UNAUTHENTICATED when keys are required and the key is missing or unknown. */
  tenantOf(authorization: string | undefined): string;
  /** Replaces every key at once (a reload); throws, keeping the old keys, if two entries share a key. */
  replaceKeys(entries: readonly KeyEntry[]): void;
  /** How many keys and tenants are in use. */
  counts(): { keys: number; tenants: number };
}

/** Options of {@link createAuthenticator}. */
export interface AuthenticatorOptions {
  /**
   * True when the gateway was configured with keys (a key file or key variables). It stays true
   * however many keys a reload leaves, so an emptied key file locks callers out instead of letting
   * everyone in. False: every caller is tenant "anonymous".
   */
  required: boolean;
  entries: readonly KeyEntry[];
}

/** An authenticator over hashed keys, compared in constant time. */
export function createAuthenticator(options: AuthenticatorOptions): Authenticator {
  let entries: readonly KeyEntry[] = checkDistinct([...options.entries], (i) => `key ${i + 1}`);
  return {
    tenantOf(authorization) {
      if (!options.required) return ANONYMOUS_TENANT;
      if (!authorization) throw new MeshError('unauthenticated', 'missing authorization metadata: send "authorization: Bearer <api key>"');
      const m = /^Bearer\s+(.+)$/i.exec(authorization.trim());
      const tenant = m ? lookup(entries, digestOf(m[1])) : undefined;
      if (!tenant) throw new MeshError('unauthenticated', 'invalid API key');
      return tenant;
    },
    replaceKeys(next) {
      entries = checkDistinct([...next], (i) => `key ${i + 1}`);
    },
    counts() {
      return { keys: entries.length, tenants: new Set(entries.map((e) => e.tenant)).size };
    },
  };
}

/** Compares `digest` with every entry (no early exit) and returns the tenant of the match. */
function lookup(entries: readonly KeyEntry[], digest: Buffer): string | undefined {
  let tenant: string | undefined;
  for (const e of entries) {
    const same = timingSafeEqual(e.digest, digest);
    tenant = same ? e.tenant : tenant;
  }
  return tenant;
}
