/** API-key authentication at the edge: maps a bearer key to its tenant. */
import { MeshError } from '../common/errors';

/** Resolves callers to tenants; with no keys configured every caller is "anonymous". */
export interface Authenticator {
  tenantOf(authorization: string | undefined): string;
}

/** Parses `tenant=key,tenant=key`; throws an Error saying which entry is malformed. */
export function parseApiKeys(spec: string): Map<string, string> {
  const keys = new Map<string, string>();
  spec
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .forEach((entry, i) => {
      const eq = entry.indexOf('=');
      // Never echo a malformed entry: it is most likely a secret.
      if (eq <= 0) throw new Error(`expected tenant=key in entry ${i + 1}, given no tenant`);
      if (eq === entry.length - 1) throw new Error(`expected tenant=key, given "${entry.slice(0, eq)}=" with an empty key`);
      keys.set(entry.slice(eq + 1), entry.slice(0, eq));
    });
  return keys;
}

/** An authenticator for the given key -> tenant map. */
export function createAuthenticator(keys: Map<string, string>): Authenticator {
  return {
    tenantOf(authorization) {
      if (keys.size === 0) return 'anonymous';
      if (!authorization) throw new MeshError('unauthenticated', 'missing authorization metadata: send "authorization: Bearer <api key>"');
      const m = /^Bearer\s+(.+)$/i.exec(authorization.trim());
      const tenant = m ? keys.get(m[1]) : undefined;
      if (!tenant) throw new MeshError('unauthenticated', 'invalid API key');
      return tenant;
    },
  };
}
