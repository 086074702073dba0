/**
 * Errors of the mesh, typed by kind and mapped to gRPC status codes in one place
 * (`errorMiddleware` in ./middleware). Domain code throws these (or its own errors, which the
 * server adapters translate); nothing else reaches the wire.
 */

/** The kinds of failure a caller can act on. Each maps to one gRPC status. */
export type ErrorKind =
  | 'invalid_argument'
  | 'not_found'
  | 'already_exists'
  | 'failed_precondition'
  | 'resource_exhausted'
  | 'unavailable'
  | 'deadline_exceeded'
  | 'cancelled'
  | 'unauthenticated'
  | 'permission_denied';

/** An error whose message is safe and useful to show to the caller. */
export class MeshError extends Error {
  override name = 'MeshError';
  constructor(
    readonly kind: ErrorKind,
    message: string,
  ) {
    super(message);
  }
}

/** INVALID_ARGUMENT for one field: names the field, the limit and what was given. */
export function invalidField(field: string, limit: string, given: unknown): MeshError {
  return new MeshError('invalid_argument', `${field} ${limit}, given ${formatGiven(given)}`);
}

function formatGiven(given: unknown): string {
  if (typeof given === 'string') {
    return given.length > 40 ? `a string of ${given.length} characters` : JSON.stringify(given);
  }
  return String(given);
}
