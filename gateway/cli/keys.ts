/**
 * `maas keys add --tenant T --file F`: makes a new random API key, appends its hash to the key file
 * (creating the file, readable by its owner only, if it does not exist) and prints the key once.
 * The key itself is written nowhere else: lose it and make another.
 */
import { appendFileSync, closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { keyFileLine, newApiKey, parseKeyFile } from '../auth';
import { UsageError } from './jobs';

/** Runs `maas keys <sub>`; writes the new key to `out`. */
export function keysCommand(sub: string | undefined, tenant: string | undefined, file: string | undefined, out: NodeJS.WritableStream, json = false): number {
  if (sub !== 'add') throw new UsageError(`maas keys needs "add"${sub ? `, given "${sub}"` : ''}`);
  if (!tenant) throw new UsageError('maas keys add needs --tenant NAME');
  if (!file) throw new UsageError('maas keys add needs --file PATH (the gateway\'s --api-keys-file)');
  const key = newApiKey();
  let line: string;
  try {
    line = keyFileLine(tenant, key);
  } catch (err) {
    throw new UsageError(`--tenant: ${(err as Error).message}`);
  }
  // Refuse to append to a file the gateway would refuse: the new key would not work.
  const fd = openSync(file, 'a+', 0o600);
  try {
    const existing = readFileSync(fd, 'utf8');
    try {
      parseKeyFile(existing);
    } catch (err) {
      throw new UsageError(`${file} is not a valid key file (${(err as Error).message}); fix it first`);
    }
    const separator = existing === '' || existing.endsWith('\n') ? '' : '\n';
    appendFileSync(fd, `${separator}${line}\n`);
    if ((fstatSync(fd).mode & 0o077) !== 0) process.stderr.write(`warning: ${file} is readable by other users; chmod 600 it\n`);
  } finally {
    closeSync(fd);
  }
  out.write(json ? `${JSON.stringify({ tenant, file, key })}\n` : `${key}\n`);
  process.stderr.write(`added a key for tenant "${tenant}" to ${file}; this is the only time the key is shown\n`);
  return 0;
}
