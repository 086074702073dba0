/**
 * How `maas` ends: an exit code per kind of failure (the table is in `maas --help` and the README)
 * and a one-line message, as text or as a JSON object for scripts.
 */
import { ClientError, Status } from 'nice-grpc';
import { UsageError } from './jobs';

/** Exit codes other than the server's statuses. */
export const EXIT = {
  ok: 0,
  /** A watched job ended failed or cancelled. */
  jobFailed: 1,
  /** A bad command line, refused before anything was sent. */
  usage: 2,
  /** The gateway could not be reached. */
  unreachable: 3,
  /** A local failure: a file, a child process. */
  local: 4,
} as const;

/** The exit code for a gRPC status the gateway answered with: 10 + the status number. */
export function exitCodeOfStatus(code: Status): number {
  return 10 + code;
}

/** A local failure that is not a mistake in the command line (exit 4). */
export class LocalError extends Error {}

/**
 * What to tell the user, and the exit code, for an error out of a command. `connected`: whether
 * the channel to the gateway was up when the call failed; UNAVAILABLE on a channel that never
 * connected is a connection failure (refused, unknown host, TLS handshake), on a connected one it
 * is the gateway saying the mesh behind it cannot answer.
 */
export function describeFailure(err: unknown, gateway: string | undefined, connected = true): { exit: number; status?: string; message: string } {
  if (err instanceof UsageError) return { exit: EXIT.usage, message: err.message };
  if (err instanceof LocalError) return { exit: EXIT.local, message: err.message };
  if (err instanceof ClientError) {
    if (err.code === Status.UNAVAILABLE && !connected) {
      const where = gateway ?? 'the gateway';
      return {
        exit: EXIT.unreachable,
        status: Status[err.code],
        message: `cannot reach the gateway at ${where} (${firstLine(err.details)}). Start the mesh with \`npm start\` in the repository or \`npx maas up\`, or point --gateway or $MAAS_GATEWAY at a running gateway`,
      };
    }
    return { exit: exitCodeOfStatus(err.code), status: Status[err.code], message: `${Status[err.code]}: ${firstLine(err.details)}` };
  }
  return { exit: EXIT.local, message: `unexpected error: ${firstLine((err as Error)?.message ?? String(err))}` };
}

function firstLine(text: string): string {
  return text.split('\n')[0].slice(0, 500);
}
