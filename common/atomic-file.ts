/**
 * Writing a whole file so that no reader ever sees half of it. Plain node:fs; no gRPC, no process globals.
 */
import { randomUUID } from 'node:crypto';
import { rename, rm, writeFile } from 'node:fs/promises';

/**
 * Writes `contents` to a temporary file beside `path` (a name of its own, so concurrent writers do
 * not share it), then renames it over `path`. On a failure the temporary file is removed.
 */
export async function writeFileAtomically(path: string, contents: Uint8Array | string): Promise<void> {
  const temporary = `${path}.${randomUUID()}.tmp`;
  try {
    await writeFile(temporary, contents);
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
}
