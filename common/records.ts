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
 * non-empty line. Errors name the file (its base name) and the physical line, counted from 1.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { basename } from 'node:path';
import { createInterface } from 'node:readline';

/** Why an input file cannot be used. */
export type RecordsErrorCode = 'not_found' | 'unreadable' | 'malformed';

/** An input file that is missing, unreadable, or holds a line that is not a valid record. */
export class RecordsError extends Error {
  override name = 'RecordsError';
  constructor(
    /** `not_found`: no such file; `unreadable`: it exists but cannot be read; `malformed`: a bad line. */
    readonly code: RecordsErrorCode,
    message: string,
    /** The physical line (from 1) of a malformed record. */
    readonly line?: number,
  ) {
    super(message);
  }
}

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

/** Options of {@link readRecords}. */
export interface ReadRecordsOptions {
  /** Stops the read (rejecting with the signal's reason) when it aborts. */
  signal?: AbortSignal;
}

/**
 * Reads the whole file, validates every record and counts them. Rejects with a
 * {@link RecordsError} at the first bad line, or when the file is missing or unreadable.
 */
export async function scanRecords(path: string): Promise<RecordsScan> {
  const format = recordsFormat(path);
  const name = basename(path);
  let records = 0;
  const bytes = await withLines(path, async (lines) => {
    for await (const { line, number } of lines) {
      if (isBlank(line)) continue;
      parseRecord(line, format, name, number);
      records++;
    }
  });
  return { records, bytes };
}

/**
 * Reads records `first` to `first + count - 1` (fewer when the file ends sooner), streaming the
 * file and closing it as soon as the last one is read. The lines of these records are validated
 * as {@link scanRecords} does; the lines before them are only counted, not parsed.
 */
export async function readRecords(path: string, first: number, count: number, options: ReadRecordsOptions = {}): Promise<FileRecord[]> {
  if (!Number.isSafeInteger(first) || first < 0) throw new RangeError(`first must be an integer >= 0, given ${first}`);
  if (!Number.isSafeInteger(count) || count < 0) throw new RangeError(`count must be an integer >= 0, given ${count}`);
  const format = recordsFormat(path);
  const name = basename(path);
  const records: FileRecord[] = [];
  await withLines(path, async (lines) => {
    if (count === 0) return;
    let index = 0;
    for await (const { line, number } of lines) {
      options.signal?.throwIfAborted();
      if (isBlank(line)) continue;
      if (index >= first) {
        records.push({ index, ...parseRecord(line, format, name, number) });
        if (records.length === count) return;
      }
      index++;
    }
  });
  options.signal?.throwIfAborted();
  return records;
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

/**
 * Opens the file, hands its lines to `consume`, and closes it whether `consume` reads to the end
 * or stops early. Resolves with the file's size in bytes.
 */
async function withLines(path: string, consume: (lines: AsyncIterable<NumberedLine>) => Promise<void>): Promise<number> {
  const handle = await openForReading(path);
  try {
    const { size } = await handle.stat();
    const stream = handle.createReadStream({ encoding: 'utf8', autoClose: false });
    const reader = createInterface({ input: stream, crlfDelay: Infinity });
    try {
      await consume(numbered(reader, path));
    } finally {
      reader.close();
      stream.destroy();
    }
    return size;
  } finally {
    await handle.close();
  }
}

/**
 * The lines of `reader` with their numbers; a UTF-8 byte order mark before the first is dropped.
 * A read error of the file (readline passes it on) becomes an `unreadable` {@link RecordsError}.
 */
async function* numbered(reader: AsyncIterable<string>, path: string): AsyncGenerator<NumberedLine> {
  let number = 0;
  try {
    for await (const line of reader) {
      number++;
      yield { line: number === 1 && line.startsWith('\uFEFF') ? line.slice(1) : line, number };
    }
  } catch (error) {
    // Only the file's own errors land here: an error of the consumer ends this generator by return().
    throw unreadable(path, error as NodeJS.ErrnoException);
  }
}

/** Opens a regular file for reading, turning the usual failures into a {@link RecordsError}. */
async function openForReading(path: string): Promise<FileHandle> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    const errno = error as NodeJS.ErrnoException;
    if (errno.code === 'ENOENT' || errno.code === 'ENOTDIR') {
      throw new RecordsError('not_found', `input file ${path} does not exist`);
    }
    throw unreadable(path, errno);
  }
  try {
    const stats = await handle.stat();
    if (stats.isDirectory()) throw new RecordsError('unreadable', `input file ${path} is a directory, not a file`);
  } catch (error) {
    await handle.close();
    throw error instanceof RecordsError ? error : unreadable(path, error as NodeJS.ErrnoException);
  }
  return handle;
}

function unreadable(path: string, error: NodeJS.ErrnoException): RecordsError {
  const reason = error.code === 'EACCES' || error.code === 'EPERM' ? 'permission denied' : (error.code ?? error.message);
  return new RecordsError('unreadable', `input file ${path} cannot be read (${reason})`);
}

/** The record on one non-empty line; throws a `malformed` {@link RecordsError} naming the line. */
function parseRecord(line: string, format: RecordsFormat, file: string, number: number): { text: string; label: string } {
  if (format === 'text') return { text: line, label: '' };
  const malformed = (what: string) => new RecordsError('malformed', `${file} line ${number}: ${what}`, number);
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (error) {
    throw malformed(`malformed JSON (${shorten((error as Error).message, 120)})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw malformed(`expected a JSON object with "text", given ${jsonKind(value)}`);
  }
  const { text, label } = value as { text?: unknown; label?: unknown };
  if (text === undefined) throw malformed('"text" is required');
  if (typeof text !== 'string') throw malformed(`"text" must be a string, given ${describeValue(text)}`);
  if (label !== undefined && label !== null && typeof label !== 'string') {
    throw malformed(`"label" must be a string, given ${describeValue(label)}`);
  }
  return { text, label: label ?? '' };
}

function jsonKind(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}

function describeValue(value: unknown): string {
  if (typeof value === 'object' && value !== null) return jsonKind(value);
  return shorten(JSON.stringify(value), 40);
}

function shorten(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 3)}...` : text;
}
