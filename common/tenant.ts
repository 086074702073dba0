/**
 * Tenant names. A tenant name comes from the gateway's key file or environment, travels with every
 * task and job, and other services make per-tenant folders from it, so it is checked once, at the
 * gateway's start, against a charset that is safe as a path segment, a metric label and a log field.
 */

/** Lowercase letters, digits, `-` and `_`; starts with a letter or digit; at most 64 characters. */
export const TENANT_NAME_PATTERN = /^[a-z0-9][a-z0-9_-]{0,63}$/;

/** The tenant of every caller when no API keys are configured. */
export const ANONYMOUS_TENANT = 'anonymous';

/**
 * Null when `name` is a valid tenant name, else why not (never echoing more than a short prefix).
 */
export function tenantNameProblem(name: string): string | null {
  if (TENANT_NAME_PATTERN.test(name)) return null;
  const shown = name.length > 24 ? `${JSON.stringify(name.slice(0, 24))}… (${name.length} characters)` : JSON.stringify(name);
  return `a tenant name must be 1 to 64 of a-z, 0-9, "-" and "_", starting with a letter or digit; given ${shown}`;
}
