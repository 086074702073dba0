/**
 * The collect reducer's output file: JSON Lines, one `{"index":i,"output":"..."}` per record in
 * index order. Where it goes and how it is written (inside the tenant's folder under the output
 * root, atomically, never over an existing file unless asked, within the size limit) is
 * common/file-roots' `writeOutputFile`; this module says what the lines are and what they weigh.
 */
import { CollectedOutput } from './reducers';

/** Characters gathered before one write. */
const CHUNK_CHARS = 1 << 16;

/** The line of one output, with its newline. */
export function outputLine(o: CollectedOutput): string {
  return `${JSON.stringify({ index: o.index, output: o.output })}\n`;
}

/** Bytes the lines of `outputs` take in the file (UTF-8). */
export function outputBytes(outputs: Iterable<CollectedOutput>): number {
  let bytes = 0;
  for (const o of outputs) bytes += Buffer.byteLength(outputLine(o));
  return bytes;
}

/** The lines of `outputs` (already in index order), in chunks of about CHUNK_CHARS. */
export function* jsonLines(outputs: Iterable<CollectedOutput>): Generator<string> {
  let chunk = '';
  for (const o of outputs) {
    chunk += outputLine(o);
    if (chunk.length >= CHUNK_CHARS) {
      yield chunk;
      chunk = '';
    }
  }
  if (chunk) yield chunk;
}
