/**
 * Input files of batch jobs, read the same way by the scheduler (which counts and validates the
 * records when a job is submitted) and by the workers (which read one shard each).
 *
 * Two formats, chosen by the file name:
 * - `*.jsonl`: JSON Lines; every non-empty line is an object with `"text"` (a string, required)
 *   and `"label"` (a string, optional; null or absent means no label). Other fields are ignored.
 * - anything else: plain text; every non-empty line is one record, as written, with no label.
 *
 * A line is empty when it holds only whitespace; empty lines are skipped, so record i is the i-th
 * non-empty line. Errors name the field and the path as the caller gave it, and the physical line,
 * counted from 1; they never quote a line (a file's content is not the caller's to see).
 *
 * Every read is bounded: the file is opened inside the input root and verified (a regular file,
 * at most the size limit: see ./file-roots), no line longer than the line limit is held, and the
 * read stops when its signal aborts.
 */
import type { FileHandle } from 'node:fs/promises';
import { ErrorKind } from './errors';
import { FILE_ACCESS_KINDS, FileAccessCode, FileAccessError, openInputFile, shownPath } from './file-roots';

/** Why an input file cannot be used: a {@link FileAccessCode}, a malformed line, or a line over the limit. */
export type RecordsErrorCode = FileAccessCode | 'malformed' | 'line_too_long';

/** An input file that cannot be used, or holds a line that is not a valid record. */
export class RecordsError extends Error {
  override name = 'RecordsError';
  constructor(
    /** See {@link RecordsErrorCode}. */
    readonly code: RecordsErrorCode,
    message: string,
    /** The physical line (from 1) of a malformed record or a line over the limit. */
    readonly line?: number,
  ) {
    super(message);
  }
}

/** The status of each kind of input-file failure, as the scheduler and the workers answer it. */
export const RECORDS_ERROR_KINDS: Record<RecordsErrorCode, ErrorKind> = {
  ...FILE_ACCESS_KINDS,
  line_too_long: 'invalid_argument',
  malformed: 'invalid_argument',
};

/** One record of an input file. */
export interface FileRecord {
  /** Position of the record in the file, from 0 (empty lines are not counted). */
  index: number;
  /** The text a mapper or model reads. */
  text: string;
  /** The expected label; '' when the record has none. */
  label: string;
}

/** What {@link scanRecords} found. */
export interface RecordsScan {
  /** Number of records (non-empty lines). */
  records: number;
  /** Size of the file in bytes. */
  bytes: number;
}

/** How the lines of a file are read. */
export type RecordsFormat = 'jsonl' | 'text';

/** The format of a file, by its name: `jsonl` for a name ending in `.jsonl` (any case), else `text`. */
export function recordsFormat(path: string): RecordsFormat {
  return path.toLowerCase().endsWith('.jsonl') ? 'jsonl' : 'text';
}

/** Where input files are and how much of one is read. */
export interface InputFiles {
  /** The input root: a job's path is relative to it (see common/file-roots). */
  root: string;
  /** Largest input file, in bytes. */
  maxBytes: number;
  /** Longest line, in bytes (its newline excluded). */
  maxLineBytes: number;
  /** The field the path came in, for messages; default `spec.file`. */
  field?: string;
}

/** Options of a read. */
export interface ReadRecordsOptions {
  /** Stops the read (rejecting with the signal's reason) when it aborts; checked before every chunk. */
  signal?: AbortSignal;
}

/**
 * Reads made of input files in this process, for diagnostics and tests: how many are running,
 * how many stopped early because their signal aborted, and the bytes the last one to end had read.
 */
export const fileScans = { active: 0, aborted: 0, lastBytesRead: 0 };

/**
 * Reads the whole file, validates every record and counts them. Rejects with a
 * {@link RecordsError} at the first bad line, or when the file cannot be used.
 */
export async function scanRecords(given: string, files: InputFiles, options: ReadRecordsOptions = {}): Promise<RecordsScan> {
  const format = recordsFormat(given);
  const where = `${files.field ?? 'spec.file'} ${shownPath(given)}`;
  let records = 0;
  const bytes = await withLines(given, files, options.signal, async (batches) => {
    for await (const batch of batches) {
      for (const { line, number } of batch) {
        if (isBlank(line)) continue;
        parseRecord(line, format, where, number);
        records++;
      }
    }
  });
  return { records, bytes };
}

/**
 * Reads records `first` to `first + count - 1` (fewer when the file ends sooner), streaming the
 * file and closing it as soon as the last one is read. The lines of these records are validated
 * as {@link scanRecords} does; the lines before them are only counted, not parsed.
 */
export async function readRecords(given: string, first: number, count: number, files: InputFiles, options: ReadRecordsOptions = {}): Promise<FileRecord[]> {
  if (!Number.isSafeInteger(first) || first < 0) throw new RangeError(`first must be an integer >= 0, given ${first}`);
  if (!Number.isSafeInteger(count) || count < 0) throw new RangeError(`count must be an integer >= 0, given ${count}`);
  const format = recordsFormat(given);
  const where = `${files.field ?? 'spec.file'} ${shownPath(given)}`;
  const records: FileRecord[] = [];
  await withLines(given, files, options.signal, async (batches) => {
    if (count === 0) return;
    let index = 0;
    for await (const batch of batches) {
      for (const { line, number } of batch) {
        if (isBlank(line)) continue;
        if (index >= first) {
          records.push({ index, ...parseRecord(line, format, where, number) });
          if (records.length === count) return;
        }
        index++;
      }
    }
  });
  options.signal?.throwIfAborted();
  return records;
}

/** Whether the last of `parts` ends with a carriage return. */
function lastByteIsCr(parts: readonly Buffer[]): boolean {
  const last = parts[parts.length - 1];
  return last !== undefined && last.length > 0 && last[last.length - 1] === 13;
}

/** Whether a line holds no record. */
function isBlank(line: string): boolean {
  return line.trim() === '';
}

/** A line and its physical number, from 1. */
interface NumberedLine {
  line: string;
  number: number;
}

/** Bytes read at once. */
const CHUNK_BYTES = 1 << 16;

/**
 * Opens the file inside its root (verified: see common/file-roots), hands its lines to `consume`,
 * and closes it whether `consume` reads to the end or stops early. Resolves with the file's size.
 */
async function withLines(given: string, files: InputFiles, signal: AbortSignal | undefined, consume: (batches: AsyncIterable<NumberedLine[]>) => Promise<void>): Promise<number> {
  const field = files.field ?? 'spec.file';
  signal?.throwIfAborted();
  let opened;
  try {
    opened = await openInputFile(files.root, given, { field, maxBytes: files.maxBytes });
  } catch (error) {
    if (error instanceof FileAccessError) throw new RecordsError(error.code, error.message);
    throw error;
  }
  const { handle, size } = opened;
  const progress = { bytes: 0 };
  fileScans.active++;
  try {
    await consume(boundedLines(handle, given, field, files, progress, signal));
    return size;
  } catch (error) {
    if (signal?.aborted) fileScans.aborted++;
    throw error;
  } finally {
    fileScans.active--;
    fileScans.lastBytesRead = progress.bytes;
    await handle.close();
  }
}

/**
 * The lines of the file, split at `\n` (a `\r` before it is dropped; a UTF-8 byte order mark
 * before the first line too), one batch per chunk read. Never holds more than one line over the
 * limit: a longer line is refused as soon as its first `maxLineBytes + 1` bytes are in. Reads at
 * most `maxBytes` in all (a file that grows while read is refused), and stops with the signal,
 * checked before every chunk.
 */
async function* boundedLines(
  handle: FileHandle,
  given: string,
  field: string,
  files: InputFiles,
  progress: { bytes: number },
  signal: AbortSignal | undefined,
): AsyncGenerator<NumberedLine[]> {
  const buffer = Buffer.allocUnsafe(CHUNK_BYTES);
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let number = 0;
  const finish = (line: string): string => {
    if (line.endsWith('\r')) line = line.slice(0, -1);
    if (number === 1 && line.startsWith('\uFEFF')) line = line.slice(1);
    return line;
  };
  const tooLong = () =>
    new RecordsError('line_too_long', `${field} ${shownPath(given)} line ${number + 1}: longer than ${files.maxLineBytes} bytes (the line limit)`, number + 1);
  for (;;) {
    signal?.throwIfAborted();
    let read: number;
    try {
      ({ bytesRead: read } = await handle.read(buffer, 0, CHUNK_BYTES, progress.bytes));
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      throw new RecordsError('unreadable', `${field} ${shownPath(given)} cannot be read (${code === 'EACCES' || code === 'EPERM' ? 'permission denied' : (code ?? 'error')})`);
    }
    if (read === 0) break;
    signal?.throwIfAborted();
    progress.bytes += read;
    if (progress.bytes > files.maxBytes) {
      throw new RecordsError('too_large', `${field} must be a file of at most ${files.maxBytes} bytes (the input size limit), given ${shownPath(given)}, which grew past it`);
    }
    const batch: NumberedLine[] = [];
    let start = 0;
    for (;;) {
      const end = buffer.indexOf(10, start);
      if (end < 0 || end >= read) break;
      // The line's length without its newline, and without a \r before it.
      const length = pendingBytes + (end - start) - (end > start ? (buffer[end - 1] === 13 ? 1 : 0) : lastByteIsCr(pending) ? 1 : 0);
      if (length > files.maxLineBytes) throw tooLong();
      let line: string;
      if (pendingBytes === 0) {
        line = buffer.toString('utf8', start, end);
      } else {
        pending.push(buffer.subarray(start, end));
        line = Buffer.concat(pending).toString('utf8');
        pending = [];
        pendingBytes = 0;
      }
      number++;
      batch.push({ line: finish(line), number });
      start = end + 1;
    }
    if (start < read) {
      pendingBytes += read - start;
      if (pendingBytes > files.maxLineBytes + 1) throw tooLong();
      // A copy: the buffer is read into again.
      pending.push(Buffer.from(buffer.subarray(start, read)));
    }
    if (batch.length > 0) yield batch;
  }
  if (pendingBytes > 0) {
    if (pendingBytes - (lastByteIsCr(pending) ? 1 : 0) > files.maxLineBytes) throw tooLong();
    number++;
    yield [{ line: finish(Buffer.concat(pending).toString('utf8')), number }];
  }
}

/** The record on one non-empty line; throws a `malformed` {@link RecordsError} naming the line. */
function parseRecord(line: string, format: RecordsFormat, file: string, number: number): { text: string; label: string } {
  if (format === 'text') return { text: line, label: '' };
  const malformed = (what: string) => new RecordsError('malformed', `${file} line ${number}: ${what}`, number);
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    // Not the parser's message: it quotes the line, and an error never echoes a file's content.
    throw malformed('malformed JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw malformed(`expected a JSON object with "text", given ${jsonKind(value)}`);
  }
  const { text, label } = value as { text?: unknown; label?: unknown };
  if (text === undefined) throw malformed('"text" is required');
  if (typeof text !== 'string') throw malformed(`"text" must be a string, given ${jsonKind(text)}`);
  if (label !== undefined && label !== null && typeof label !== 'string') {
    throw malformed(`"label" must be a string, given ${jsonKind(label)}`);
  }
  return { text, label: label ?? '' };
}

function jsonKind(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : typeof value === 'boolean' ? 'a boolean' : `a ${typeof value}`;
}
