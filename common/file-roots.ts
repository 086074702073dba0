/**
 * Files of batch jobs, confined to configured roots: the input root the scheduler and the workers
 * read from, and the output root (one folder per tenant) the aggregator writes to. A path a caller
 * gives is relative to its root (an absolute path is accepted only inside it); it may not climb
 * out with `..`, nor through a symlink at any component.
 *
 * Checking a path and then opening it leaves a gap in which the file can be swapped (for a symlink
 * out, say). So every open is verified on the descriptor itself: what was opened is inside the
 * root (the kernel's name of the descriptor, /proc/self/fd/N, resolved), is a regular file, and is
 * within the size limit. The path check before the open only spares opening what is plainly
 * outside (a device, a FIFO elsewhere).
 *
 * Messages name the field and show the path only as the caller gave it (a short prefix of it):
 * never the server's resolved paths, never a file's content.
 *
 * Plain TypeScript over node:fs; no gRPC, no process globals.
 */
import { createHash, randomUUID } from 'node:crypto';
import { constants, type Stats } from 'node:fs';
import { link, lstat, mkdir, open, readlink, realpath, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { ErrorKind } from './errors';

/** Why a file cannot be used. */
export type FileAccessCode =
  /** The path is empty or holds a NUL character. */
  | 'invalid'
  /** The path, or what a symlink in it resolves to, is outside the root. */
  | 'outside_root'
  /** No such file (or the root itself is missing). */
  | 'not_found'
  /** It exists but is not a regular file (a directory, a FIFO, a device, a socket). */
  | 'not_regular'
  /** Larger than the size limit. */
  | 'too_large'
  /** It exists but cannot be read or written (permissions, I/O error). */
  | 'unreadable'
  /** An output file exists and the job did not ask to overwrite it. */
  | 'exists'
  /** The path is inside a store or a model cache. */
  | 'protected';

/** The status each refusal is answered with. */
export const FILE_ACCESS_KINDS: Record<FileAccessCode, ErrorKind> = {
  invalid: 'invalid_argument',
  outside_root: 'permission_denied',
  protected: 'permission_denied',
  not_found: 'not_found',
  not_regular: 'invalid_argument',
  too_large: 'invalid_argument',
  exists: 'already_exists',
  unreadable: 'failed_precondition',
};

/** A file a job may not use; the message names the field and is safe to show to the caller. */
export class FileAccessError extends Error {
  override name = 'FileAccessError';
  constructor(
    readonly code: FileAccessCode,
    message: string,
  ) {
    super(message);
  }
}

/** Longest path a job may name, in characters (PATH_MAX on Linux); the gateway checks the same. */
export const MAX_PATH_CHARS = 4096;
/** Most components a job's path may have: a deeper one would make as many nested folders for an output. */
export const MAX_PATH_DEPTH = 32;

/** Longest component of a job's path, in bytes (NAME_MAX on Linux and most file systems). */
export const MAX_NAME_BYTES = 255;

/** Longest part of a caller's path shown in a message. */
const SHOWN_CHARS = 60;

/** A caller's path as messages show it: quoted, at most a short prefix. */
export function shownPath(given: string): string {
  return JSON.stringify(given.length > SHOWN_CHARS ? `${given.slice(0, SHOWN_CHARS)}...` : given);
}

/** Whether `path` is `root` or inside it; both absolute and normalized (a relative path is never inside). */
export function isInside(root: string, path: string): boolean {
  if (!isAbsolute(path)) return false;
  const rel = relative(root, path);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel));
}

/**
 * The absolute path `given` names under `root`, by its text alone (no file system): relative to
 * the root, or absolute inside it. Throws `invalid` for an empty path or one with a NUL, and
 * `outside_root` when it lies outside the root (an absolute path elsewhere, a `..` that climbs out).
 */
export function pathInRoot(root: string, given: string, field: string): string {
  if (given.trim() === '' || given.includes('\0')) {
    throw new FileAccessError('invalid', `${field} must be a path relative to its root, without NUL characters, given ${shownPath(given)}`);
  }
  if (given.length > MAX_PATH_CHARS) {
    throw new FileAccessError('invalid', `${field} must be at most ${MAX_PATH_CHARS} characters, given ${given.length}: ${shownPath(given)}`);
  }
  const parts = given.split('/').filter((part) => part !== '' && part !== '.');
  if (parts.length > MAX_PATH_DEPTH) {
    throw new FileAccessError('invalid', `${field} must have at most ${MAX_PATH_DEPTH} components, given ${parts.length}: ${shownPath(given)}`);
  }
  // Checked here, not left to the open: an output path is checked at submit, long before it is written.
  if (parts.some((part) => Buffer.byteLength(part) > MAX_NAME_BYTES)) {
    throw new FileAccessError('invalid', `${field} must have no component longer than ${MAX_NAME_BYTES} bytes, given ${shownPath(given)}`);
  }
  const base = resolve(root);
  const target = isAbsolute(given) ? resolve(given) : resolve(base, given);
  if (!isInside(base, target)) {
    throw new FileAccessError('outside_root', `${field} must name a file inside the ${rootName(field)} root, given ${shownPath(given)}`);
  }
  return target;
}

function rootName(field: string): string {
  return field.includes('output') ? 'output' : 'input';
}

function outside(field: string, given: string): FileAccessError {
  return new FileAccessError('outside_root', `${field} resolves outside the ${rootName(field)} root (through a symlink), given ${shownPath(given)}`);
}

/** The real path of a root; `not_found` when it does not exist. */
async function realRoot(root: string, field: string, given: string): Promise<string> {
  try {
    return await realpath(resolve(root));
  } catch {
    throw new FileAccessError('not_found', `${field} ${shownPath(given)} does not exist (the ${rootName(field)} root is missing)`);
  }
}

/** What a non-regular file is, for messages. */
function kindOf(stats: Stats): string {
  if (stats.isDirectory()) return 'a directory';
  if (stats.isFIFO()) return 'a FIFO';
  if (stats.isCharacterDevice()) return 'a character device';
  if (stats.isBlockDevice()) return 'a block device';
  if (stats.isSocket()) return 'a socket';
  if (stats.isSymbolicLink()) return 'a symlink';
  return 'not a regular file';
}

function fromErrno(error: unknown, field: string, given: string, verb: 'read' | 'written'): FileAccessError {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'ENOTDIR') return new FileAccessError('not_found', `${field} ${shownPath(given)} does not exist`);
  if (code === 'ELOOP') return outside(field, given);
  // A component longer than the file system allows (255 bytes on most): the path is malformed.
  if (code === 'ENAMETOOLONG') return new FileAccessError('invalid', `${field} ${shownPath(given)} has a component longer than the file system allows (ENAMETOOLONG)`);
  const reason = code === 'EACCES' || code === 'EPERM' ? 'permission denied' : code === 'EISDIR' ? 'it is a directory' : (code ?? 'error');
  return new FileAccessError('unreadable', `${field} ${shownPath(given)} cannot be ${verb} (${reason})`);
}

/**
 * Throws `outside_root` unless the descriptor `handle` (opened from `target`) is a file inside
 * `rootReal`: by the kernel's name of the descriptor where /proc is mounted, else by comparing
 * the descriptor with what the path resolves to now.
 */
async function verifyDescriptor(handle: FileHandle, stats: Stats, target: string, rootReal: string, field: string, given: string): Promise<void> {
  let opened: string | undefined;
  try {
    opened = await readlink(`/proc/self/fd/${handle.fd}`);
  } catch {
    opened = undefined;
  }
  if (opened !== undefined) {
    if (!isInside(rootReal, opened)) throw outside(field, given);
    return;
  }
  let now: string;
  let nowStats: Stats;
  try {
    now = await realpath(target);
    nowStats = await stat(now);
  } catch {
    throw outside(field, given);
  }
  if (!isInside(rootReal, now) || nowStats.ino !== stats.ino || nowStats.dev !== stats.dev) throw outside(field, given);
}

/** Options of {@link openInputFile}. */
export interface OpenInputOptions {
  /** The field the path came in, for messages (e.g. `spec.file`). */
  field: string;
  /** Largest file accepted, in bytes. */
  maxBytes: number;
}

/** An input file opened for reading, verified. The caller closes the handle. */
export interface OpenedInput {
  handle: FileHandle;
  /** Its size in bytes when opened. */
  size: number;
}

/**
 * Opens `given` under `root` for reading, and verifies the opened descriptor: inside the root
 * (symlinks that stay inside are followed), a regular file, at most `maxBytes`. Opens without
 * blocking (a FIFO with no writer does not hang the open) and never as a controlling terminal.
 * Throws a {@link FileAccessError}.
 */
export async function openInputFile(root: string, given: string, options: OpenInputOptions): Promise<OpenedInput> {
  const { field } = options;
  const target = pathInRoot(root, given, field);
  const rootReal = await realRoot(root, field, given);
  // A first look by path, so that nothing plainly outside (a device, a FIFO) is even opened.
  let resolved: string;
  try {
    resolved = await realpath(target);
  } catch (error) {
    throw fromErrno(error, field, given, 'read');
  }
  if (!isInside(rootReal, resolved)) throw outside(field, given);
  let handle: FileHandle;
  try {
    handle = await open(target, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (error) {
    throw fromErrno(error, field, given, 'read');
  }
  try {
    const stats = await handle.stat();
    // The file may have changed since the look above: what counts is what was opened.
    await verifyDescriptor(handle, stats, target, rootReal, field, given);
    if (!stats.isFile()) throw new FileAccessError('not_regular', `${field} must name a regular file, given ${shownPath(given)} (${kindOf(stats)})`);
    if (stats.size > options.maxBytes) {
      throw new FileAccessError('too_large', `${field} must be a file of at most ${options.maxBytes} bytes (the input size limit), given ${shownPath(given)} of ${stats.size} bytes`);
    }
    return { handle, size: stats.size };
  } catch (error) {
    await handle.close();
    throw error instanceof FileAccessError ? error : fromErrno(error, field, given, 'read');
  }
}

// ---------------------------------------------------------------------------------------------
// Outputs

/** Longest tenant folder name before it is shortened with a hash. */
const TENANT_FOLDER_CHARS = 100;

/**
 * The folder of a tenant under the output root: letters, digits, `_` and `-` as they are, every
 * other byte as `%XX` (so `.`, `..`, `/` and NUL cannot occur, and distinct tenants get distinct
 * folders); a long name is cut and ends with `~` and a hash of the whole. An empty tenant is `%`.
 */
export function tenantFolder(tenant: string): string {
  if (tenant === '') return '%';
  let name = '';
  for (const byte of Buffer.from(tenant, 'utf8')) {
    const c = String.fromCharCode(byte);
    name += /[A-Za-z0-9_-]/.test(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  if (name.length <= TENANT_FOLDER_CHARS) return name;
  return `${name.slice(0, TENANT_FOLDER_CHARS - 34)}~${createHash('sha256').update(tenant).digest('hex').slice(0, 32)}`;
}

/** Where outputs go and what they must never touch. */
export interface OutputPlace {
  /** The output root; each tenant writes in its own folder under it. */
  root: string;
  /** Directories no output may be written into (stores, model caches). */
  protectedDirs: readonly string[];
}

/**
 * Throws (a plain Error naming `setting`) when `root` contains or lies inside one of `protectedDirs`
 * (resolved through symlinks where they exist): a root must never reach a store or a model cache.
 */
export async function checkRootApart(root: string, protectedDirs: readonly string[], setting: string): Promise<void> {
  const real = await realIfExists(resolve(root));
  for (const dir of protectedDirs) {
    const guarded = await realIfExists(resolve(dir));
    if (isInside(real, guarded) || isInside(guarded, real)) {
      throw new Error(`${setting} ${root} must not contain or lie inside ${dir} (a store or a model cache)`);
    }
  }
}

/** The real path of `path`, or of its nearest existing ancestor joined with the rest. */
async function realIfExists(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch {
    const parent = dirname(path);
    if (parent === path) return path;
    return join(await realIfExists(parent), path.slice(parent.length + (parent.endsWith(sep) ? 0 : 1)));
  }
}

/**
 * Checks `given` as a tenant's output path without writing anything: inside the tenant's folder
 * by its text, no existing component a symlink out of it, not inside a protected directory, not a
 * directory, and (unless `overwrite`, or `existingChecked` when the caller checks that itself)
 * not an existing file; a read-only file is never replaced. Resolves with the lexical target.
 * Throws a {@link FileAccessError}: `outside_root`, `protected`, `not_regular` or `exists`.
 */
export async function checkOutputTarget(place: OutputPlace, tenant: string, given: string, field: string, overwrite: boolean, existingChecked = false): Promise<string> {
  const folder = join(resolve(place.root), tenantFolder(tenant));
  const target = pathInRoot(folder, given, field);
  if (target === folder) throw new FileAccessError('not_regular', `${field} must name a file, given ${shownPath(given)} (a directory)`);
  const folderReal = await realIfExists(folder);
  const resolved = await realIfExists(target);
  if (!isInside(folderReal, resolved)) throw outside(field, given);
  await checkNotProtected(resolved, place.protectedDirs, field, given);
  let existing: Stats | undefined;
  try {
    existing = await lstat(target);
  } catch {
    existing = undefined;
  }
  if (existing) {
    if (!existing.isFile()) throw new FileAccessError('not_regular', `${field} must name a regular file, given ${shownPath(given)} (${kindOf(existing)})`);
    if (!overwrite && !existingChecked) throw new FileAccessError('exists', `${field} ${shownPath(given)} exists; set overwrite_output to replace it`);
    if (overwrite && (existing.mode & 0o200) === 0) throw new FileAccessError('unreadable', `${field} ${shownPath(given)} is read-only and is not replaced`);
  }
  return target;
}

async function checkNotProtected(resolved: string, protectedDirs: readonly string[], field: string, given: string): Promise<void> {
  for (const dir of protectedDirs) {
    if (isInside(await realIfExists(resolve(dir)), resolved)) {
      throw new FileAccessError('protected', `${field} must not name a file inside a store or a model cache, given ${shownPath(given)}`);
    }
  }
}

/**
 * Creates the directories of `target` below `folder` one at a time, refusing a component that is
 * a symlink out of the folder or not a directory (mkdir -p would follow a symlink anywhere).
 */
async function makeParents(folder: string, target: string, field: string, given: string): Promise<void> {
  await mkdir(folder, { recursive: true });
  const folderReal = await realpath(folder);
  const parts = relative(folder, dirname(target)).split(sep).filter((p) => p !== '');
  let at = folder;
  for (const part of parts) {
    at = join(at, part);
    let stats: Stats;
    try {
      stats = await lstat(at);
    } catch {
      try {
        await mkdir(at);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw fromErrno(error, field, given, 'written');
      }
      stats = await lstat(at);
    }
    if (stats.isSymbolicLink()) {
      const real = await realpath(at).catch(() => '');
      if (!isInside(folderReal, real)) throw outside(field, given);
    } else if (!stats.isDirectory()) {
      throw new FileAccessError('not_regular', `${field} ${shownPath(given)} has a component that is not a directory`);
    }
  }
}

/** Options of {@link writeOutputFile}. */
export interface WriteOutputOptions {
  /** The field the path came in, for messages (e.g. `spec.output_file`). */
  field: string;
  /** Replace an existing file (else an existing file with other content is refused). */
  overwrite: boolean;
  /** Largest file written, in bytes; beyond it nothing is left on disk. */
  maxBytes: number;
}

/**
 * Writes `chunks` to the tenant's file `given`, atomically: a temporary file beside it (created
 * exclusively, never through a symlink, verified on its descriptor to be inside the tenant's
 * folder and outside every protected directory), fsynced, then renamed over the target (with
 * `overwrite`) or hard-linked to it, which fails if the target exists: creating without
 * overwriting is atomic too. An existing target that already holds exactly these bytes counts as
 * written (a retried Finalize). Over `maxBytes` nothing is left on disk. Throws a
 * {@link FileAccessError}.
 */
export async function writeOutputFile(place: OutputPlace, tenant: string, given: string, chunks: Iterable<string>, options: WriteOutputOptions): Promise<void> {
  const { field } = options;
  // An existing target is left to link(), which refuses it atomically.
  const target = await checkOutputTarget(place, tenant, given, field, options.overwrite, true);
  const folder = join(resolve(place.root), tenantFolder(tenant));
  await makeParents(folder, target, field, given);
  const folderReal = await realpath(folder);
  const temporary = `${target}.${randomUUID()}.tmp`;
  let handle: FileHandle;
  try {
    handle = await open(temporary, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644);
  } catch (error) {
    throw fromErrno(error, field, given, 'written');
  }
  const hash = createHash('sha256');
  let bytes = 0;
  let written: Stats;
  try {
    try {
      written = await handle.stat();
      await verifyDescriptor(handle, written, temporary, folderReal, field, given);
      const opened = await readlink(`/proc/self/fd/${handle.fd}`).catch(() => temporary);
      await checkNotProtected(opened, place.protectedDirs, field, given);
      for (const chunk of chunks) {
        const data = Buffer.from(chunk, 'utf8');
        bytes += data.length;
        if (bytes > options.maxBytes) {
          throw new FileAccessError('too_large', `${field} would be larger than ${options.maxBytes} bytes (the output size limit); nothing was written`);
        }
        hash.update(data);
        await handle.write(data);
      }
      await handle.sync();
    } finally {
      await handle.close();
    }
    if (options.overwrite) {
      await rename(temporary, target);
    } else {
      try {
        await link(temporary, target);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
        if (!(await holdsExactly(target, bytes, hash.digest('hex')))) {
          throw new FileAccessError('exists', `${field} ${shownPath(given)} exists; set overwrite_output to replace it`);
        }
      }
      await unlink(temporary);
    }
  } catch (error) {
    await unlink(temporary).catch(() => undefined);
    throw error instanceof FileAccessError ? error : fromErrno(error, field, given, 'written');
  }
  await syncDirectory(dirname(target));
}

/** Whether the regular file at `path` (not followed if a symlink) has `size` bytes hashing to `sha256`. */
async function holdsExactly(path: string, size: number, sha256: string): Promise<boolean> {
  let handle: FileHandle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return false;
  }
  try {
    const stats = await handle.stat();
    if (!stats.isFile() || stats.size !== size) return false;
    const hash = createHash('sha256');
    for await (const chunk of handle.createReadStream({ autoClose: false, end: Math.max(0, size - 1) })) hash.update(chunk as Buffer);
    return hash.digest('hex') === sha256;
  } finally {
    await handle.close();
  }
}

/** Makes a rename or link in `dir` durable; some platforms cannot fsync a directory, and lose nothing else. */
async function syncDirectory(dir: string): Promise<void> {
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

/**
 * A service's root at start: resolved from the working directory, created if missing (where the
 * service may; a read-only mount is left as it is), and refused (an Error naming `setting`) when
 * it contains or lies inside one of `protectedDirs`. Resolves with the absolute path.
 */
export async function prepareRoot(root: string, protectedDirs: readonly string[], setting: string): Promise<string> {
  const absolute = resolve(root);
  await mkdir(absolute, { recursive: true }).catch(() => undefined);
  await checkRootApart(absolute, protectedDirs, setting);
  return absolute;
}
