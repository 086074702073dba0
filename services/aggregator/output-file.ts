/**
 * The collect reducer's output file: JSON Lines, one `{"index":i,"output":"..."}` per record in
 * index order, written atomically (a temporary file beside it, fsynced, then renamed over it), so
 * a reader sees the whole previous file or the whole new one, never a part.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, open, rename, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { CollectedOutput } from './reducers';

/** Characters gathered before one write. */
const CHUNK_CHARS = 1 << 16;

/** The lines of `outputs`, in chunks of about CHUNK_CHARS. */
function* jsonLines(outputs: Iterable<CollectedOutput>): Generator<string> {
  let chunk = '';
  for (const o of outputs) {
    chunk += `${JSON.stringify({ index: o.index, output: o.output })}\n`;
    if (chunk.length >= CHUNK_CHARS) {
      yield chunk;
      chunk = '';
    }
  }
  if (chunk) yield chunk;
}

/** Writes `outputs` (already in index order) to `path` as JSON Lines, atomically; creates its directory. */
export async function writeOutputFile(path: string, outputs: Iterable<CollectedOutput>): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true });
  // A name of its own, so concurrent writers of the same file never share a temporary file.
  const temporary = `${path}.${randomUUID()}.tmp`;
  try {
    const file = await open(temporary, 'w');
    try {
      await writeFile(file, jsonLines(outputs));
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temporary, path);
  } catch (err) {
    await rm(temporary, { force: true });
    throw err;
  }
  // Make the rename itself durable; some platforms cannot fsync a directory, and lose nothing else.
  try {
    const handle = await open(dir, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch {
    // Best effort.
  }
}
