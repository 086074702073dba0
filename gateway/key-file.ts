/**
 * The gateway's API key file: read it, and watch it so that an edited file takes effect without a
 * restart (SIGHUP also reloads: see ./main). A file that does not parse keeps the keys in use; the
 * log says why by line number, never with a line's content.
 */
import { readFileSync, watch, FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { KeyEntry, parseKeyFile } from './auth';

/** Largest key file read, in bytes: thousands of keys fit; anything bigger is a mistake. */
const MAX_KEY_FILE_BYTES = 1 << 20;

/** Reads and parses the key file; throws an Error that names the file and the bad line's number. */
export function loadKeyFile(path: string): KeyEntry[] {
  let text: string;
  try {
    const bytes = readFileSync(path);
    if (bytes.length > MAX_KEY_FILE_BYTES) throw new Error(`larger than ${MAX_KEY_FILE_BYTES} bytes`);
    text = bytes.toString('utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new Error(`cannot read the API key file ${path}: ${code ?? (err as Error).message}`);
  }
  try {
    return parseKeyFile(text);
  } catch (err) {
    throw new Error(`API key file ${path}, ${(err as Error).message}`);
  }
}

/**
 * Calls `onChange` (debounced by `debounceMs`) whenever the key file may have changed. Watches the
 * file's folder rather than the file, so an editor or `mv` that replaces the file is seen too.
 */
export function watchKeyFile(path: string, onChange: () => void, debounceMs = 50): { close(): void } {
  const full = resolve(path);
  const name = basename(full);
  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dirname(full), { persistent: false }, (_event, changed) => {
      if (changed !== null && changed.toString() !== name) return;
      clearTimeout(timer);
      timer = setTimeout(onChange, debounceMs);
    });
    // A folder that disappears or becomes unreadable ends the watch; SIGHUP still reloads.
    watcher.on('error', () => watcher?.close());
  } catch {
    watcher = undefined;
  }
  return {
    close() {
      clearTimeout(timer);
      watcher?.close();
    },
  };
}
