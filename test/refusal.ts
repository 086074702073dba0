/** Assertions about refused requests, for unit tests (no services, unlike test/support.ts). */
import { expect } from 'chai';
import { MeshError } from '../common/errors.js';

/** The message of the invalid_argument MeshError that `run` throws; fails if it throws anything else, or nothing. */
export function refusal(run: () => unknown): string {
  try {
    run();
  } catch (err) {
    expect(err).to.be.instanceOf(MeshError);
    expect((err as MeshError).kind).to.equal('invalid_argument');
    return (err as MeshError).message;
  }
  expect.fail('the request was accepted');
}
