import { expect } from 'chai';
import { AbortError } from 'abort-controller-x';
import { ClientError, ServerError, Status } from 'nice-grpc';
import { type ErrorKind, MeshError } from '../../common/errors.js';
import { type Logger } from '../../common/log.js';
import { toServerError } from '../../common/middleware.js';

const PATH = '/maas.v1.InferenceService/Generate';

/** A Logger that keeps every line it is given. */
class CapturingLogger implements Logger {
  readonly lines: { level: string; message: string; fields?: Record<string, unknown> }[] = [];
  readonly logsContent = false;
  debug(message: string, fields?: Record<string, unknown>): void {
    this.lines.push({ level: 'debug', message, fields });
  }
  info(message: string, fields?: Record<string, unknown>): void {
    this.lines.push({ level: 'info', message, fields });
  }
  warn(message: string, fields?: Record<string, unknown>): void {
    this.lines.push({ level: 'warn', message, fields });
  }
  error(message: string, fields?: Record<string, unknown>): void {
    this.lines.push({ level: 'error', message, fields });
  }
}

const status = (err: ServerError) => ({ code: err.code, details: err.details });

describe('toServerError', () => {
  let log: CapturingLogger;

  beforeEach(() => {
    log = new CapturingLogger();
  });

  it('returns a ServerError unchanged', () => {
    const err = new ServerError(Status.NOT_FOUND, 'no such model');
    expect(toServerError(err, false, PATH, log)).to.equal(err);
  });

  it('returns a ServerError unchanged even after the deadline expired', () => {
    const err = new ServerError(Status.UNAVAILABLE, 'down');
    expect(toServerError(err, true, PATH, log)).to.equal(err);
  });

  describe('MeshError', () => {
    const expected: Record<ErrorKind, Status> = {
      invalid_argument: Status.INVALID_ARGUMENT,
      not_found: Status.NOT_FOUND,
      already_exists: Status.ALREADY_EXISTS,
      failed_precondition: Status.FAILED_PRECONDITION,
      resource_exhausted: Status.RESOURCE_EXHAUSTED,
      unavailable: Status.UNAVAILABLE,
      deadline_exceeded: Status.DEADLINE_EXCEEDED,
      cancelled: Status.CANCELLED,
      unauthenticated: Status.UNAUTHENTICATED,
      permission_denied: Status.PERMISSION_DENIED,
    };

    for (const [kind, code] of Object.entries(expected) as [ErrorKind, Status][]) {
      it(`maps kind ${kind} to ${Status[code]} with the error's message`, () => {
        expect(status(toServerError(new MeshError(kind, `a ${kind} failure`), false, PATH, log))).to.deep.equal({ code, details: `a ${kind} failure` });
      });
    }

    it('keeps the MeshError kind even after the deadline expired', () => {
      expect(status(toServerError(new MeshError('not_found', 'no such model'), true, PATH, log))).to.deep.equal({
        code: Status.NOT_FOUND,
        details: 'no such model',
      });
    });

    it('logs nothing for a MeshError', () => {
      toServerError(new MeshError('invalid_argument', 'bad'), false, PATH, log);
      expect(log.lines).to.deep.equal([]);
    });
  });

  describe('after the deadline expired', () => {
    it('maps a plain Error to DEADLINE_EXCEEDED', () => {
      expect(status(toServerError(new Error('socket closed'), true, PATH, log))).to.deep.equal({ code: Status.DEADLINE_EXCEEDED, details: 'deadline exceeded' });
    });

    it('maps a downstream ClientError to DEADLINE_EXCEEDED rather than its own code', () => {
      const err = new ClientError('/maas.internal.v1.SchedulerService/Submit', Status.CANCELLED, 'cancelled');
      expect(status(toServerError(err, true, PATH, log))).to.deep.equal({ code: Status.DEADLINE_EXCEEDED, details: 'deadline exceeded' });
    });

    it('maps an AbortError to DEADLINE_EXCEEDED rather than CANCELLED', () => {
      expect(status(toServerError(new AbortError(), true, PATH, log))).to.deep.equal({ code: Status.DEADLINE_EXCEEDED, details: 'deadline exceeded' });
    });
  });

  describe('ClientError from a downstream service', () => {
    it('passes its code and details through', () => {
      const err = new ClientError('/maas.internal.v1.SchedulerService/Submit', Status.RESOURCE_EXHAUSTED, 'queue full: 1024 requests waiting');
      expect(status(toServerError(err, false, PATH, log))).to.deep.equal({
        code: Status.RESOURCE_EXHAUSTED,
        details: 'queue full: 1024 requests waiting',
      });
    });

    it('does not reveal the downstream method path', () => {
      const err = new ClientError('/maas.internal.v1.SchedulerService/Submit', Status.UNAVAILABLE, 'no worker');
      expect(toServerError(err, false, PATH, log).message).not.to.contain('SchedulerService');
    });
  });

  describe('abort errors', () => {
    it('maps the default reason of an aborted AbortController to CANCELLED', () => {
      const controller = new AbortController();
      controller.abort();
      expect(status(toServerError(controller.signal.reason, false, PATH, log))).to.deep.equal({ code: Status.CANCELLED, details: 'call cancelled' });
    });

    it("maps a DOMException named 'AbortError' to CANCELLED", () => {
      expect(status(toServerError(new DOMException('aborted', 'AbortError'), false, PATH, log))).to.deep.equal({
        code: Status.CANCELLED,
        details: 'call cancelled',
      });
    });

    it("maps abort-controller-x's AbortError to CANCELLED", () => {
      expect(status(toServerError(new AbortError(), false, PATH, log))).to.deep.equal({ code: Status.CANCELLED, details: 'call cancelled' });
    });

    it('logs nothing for a cancellation', () => {
      toServerError(new AbortError(), false, PATH, log);
      expect(log.lines).to.deep.equal([]);
    });
  });

  describe('unexpected errors', () => {
    it("maps an unknown Error to INTERNAL 'internal error'", () => {
      expect(status(toServerError(new Error('ENOENT: /var/lib/maas/secret.key'), false, PATH, log))).to.deep.equal({
        code: Status.INTERNAL,
        details: 'internal error',
      });
    });

    it('leaves the internal message and stack out of what the caller sees', () => {
      const err = new TypeError("Cannot read properties of undefined (reading 'tokens')");
      const mapped = toServerError(err, false, PATH, log);
      expect([mapped.details.includes('tokens'), mapped.message.includes('tokens'), mapped.message.includes('at ')]).to.deep.equal([false, false, false]);
    });

    it('logs one error line with the method path and the stack', () => {
      const err = new Error('boom');
      toServerError(err, false, PATH, log);
      expect(log.lines).to.deep.equal([{ level: 'error', message: 'unexpected error', fields: { method: PATH, err } }]);
    });

    it('logs a thrown non-Error value as a string and maps it to INTERNAL', () => {
      const mapped = toServerError('plain string', false, PATH, log);
      expect([status(mapped), log.lines[0]?.fields]).to.deep.equal([
        { code: Status.INTERNAL, details: 'internal error' },
        { method: PATH, err: 'plain string' },
      ]);
    });
  });
});
