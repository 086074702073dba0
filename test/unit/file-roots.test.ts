/**
 * The confinement of job files to their roots (common/file-roots) and the bounds of reading them
 * (common/records), on real files, symlinks, a FIFO and a device node: every hostile path is
 * refused with the code the services turn into a status, and a message that names the field and
 * shows no server path.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileAccessError, checkRootApart, checkOutputTarget, openInputFile, tenantFolder, writeOutputFile } from '../../common/file-roots.js';
import { RecordsError, fileScans, readRecords, scanRecords } from '../../common/records.js';

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected a rejection, but the promise resolved');
}

/** The FileAccessError (or RecordsError) `promise` rejects with, checked for its code and field. */
async function refused(promise: Promise<unknown>, code: string, field: string): Promise<Error & { code: string }> {
  const error = (await rejection(promise)) as Error & { code: string };
  expect(error, String(error)).to.satisfy((e: unknown) => e instanceof FileAccessError || e instanceof RecordsError);
  expect(error.code, error.message).to.equal(code);
  expect(error.message).to.include(field);
  return error;
}

describe('job files stay inside their roots (common/file-roots)', () => {
  let base = '';
  let root = '';
  let outside = '';
  const limits = { field: 'spec.file', maxBytes: 1 << 20 };

  before(() => {
    base = mkdtempSync(join(tmpdir(), 'maas-roots-'));
    root = join(base, 'root');
    outside = join(base, 'outside');
    mkdirSync(join(root, 'sub'), { recursive: true });
    mkdirSync(outside);
    writeFileSync(join(root, 'in.txt'), 'inside\n');
    writeFileSync(join(root, 'sub', 'deep.txt'), 'deep\n');
    writeFileSync(join(outside, 'secret.txt'), 'SECRET-CONTENT\n');
    symlinkSync(join(outside, 'secret.txt'), join(root, 'link-out.txt'));
    symlinkSync(outside, join(root, 'dir-out'));
    symlinkSync(join(root, 'in.txt'), join(root, 'alias.txt'));
    symlinkSync('sub', join(root, 'sub-alias'));
  });

  after(() => {
    if (base) rmSync(base, { recursive: true, force: true });
  });

  describe('reading (openInputFile)', () => {
    async function opens(given: string): Promise<string> {
      const { handle, size } = await openInputFile(root, given, limits);
      try {
        const buffer = Buffer.alloc(size);
        await handle.read(buffer, 0, size, 0);
        return buffer.toString();
      } finally {
        await handle.close();
      }
    }

    it('opens a path relative to the root, and an absolute path inside it', async () => {
      expect(await opens('in.txt')).to.equal('inside\n');
      expect(await opens('sub/deep.txt')).to.equal('deep\n');
      expect(await opens(join(root, 'in.txt'))).to.equal('inside\n');
      expect(await opens('sub/../in.txt')).to.equal('inside\n');
    });

    it('refuses an absolute path elsewhere, without showing the server its root', async () => {
      for (const given of ['/etc/passwd', '/proc/self/environ', join(outside, 'secret.txt')]) {
        const error = await refused(openInputFile(root, given, limits), 'outside_root', 'spec.file');
        expect(error.message).not.to.include(root);
      }
    });

    it('refuses a .. that climbs out of the root', async () => {
      await refused(openInputFile(root, '../outside/secret.txt', limits), 'outside_root', 'spec.file');
      await refused(openInputFile(root, 'sub/../../outside/secret.txt', limits), 'outside_root', 'spec.file');
      await refused(openInputFile(root, '..', limits), 'outside_root', 'spec.file');
    });

    it('refuses a symlink out at the last component and at a middle one', async () => {
      await refused(openInputFile(root, 'link-out.txt', limits), 'outside_root', 'spec.file');
      await refused(openInputFile(root, 'dir-out/secret.txt', limits), 'outside_root', 'spec.file');
    });

    it('follows a symlink that stays inside the root', async () => {
      expect(await opens('alias.txt')).to.equal('inside\n');
      expect(await opens('sub-alias/deep.txt')).to.equal('deep\n');
    });

    it('refuses a FIFO at once (the open does not wait for a writer)', async () => {
      execFileSync('mkfifo', [join(root, 'fifo.txt')]);
      const error = await refused(openInputFile(root, 'fifo.txt', limits), 'not_regular', 'spec.file');
      expect(error.message).to.equal('spec.file must name a regular file, given "fifo.txt" (a FIFO)');
    });

    it('refuses a device: /dev/zero through a symlink (outside), and a device node inside the root', async function () {
      symlinkSync('/dev/zero', join(root, 'zero-link'));
      await refused(openInputFile(root, 'zero-link', limits), 'outside_root', 'spec.file');
      await refused(openInputFile(root, '/dev/zero', limits), 'outside_root', 'spec.file');
      try {
        execFileSync('mknod', [join(root, 'zero'), 'c', '1', '5'], { stdio: 'ignore' });
      } catch {
        this.skip(); // creating a device node needs privileges
      }
      const error = await refused(openInputFile(root, 'zero', limits), 'not_regular', 'spec.file');
      expect(error.message).to.include('(a character device)');
    });

    it('refuses a directory', async () => {
      const error = await refused(openInputFile(root, 'sub', limits), 'not_regular', 'spec.file');
      expect(error.message).to.include('(a directory)');
      await refused(openInputFile(root, '.', limits), 'not_regular', 'spec.file');
    });

    it('refuses a file over the size limit, naming the limit', async () => {
      writeFileSync(join(root, 'big.txt'), 'x\n'.repeat(600));
      const error = await refused(openInputFile(root, 'big.txt', { field: 'spec.file', maxBytes: 1000 }), 'too_large', 'spec.file');
      expect(error.message).to.include('at most 1000 bytes').and.to.include('1200 bytes');
    });

    it('refuses an empty path and one with a NUL', async () => {
      await refused(openInputFile(root, '', limits), 'invalid', 'spec.file');
      await refused(openInputFile(root, 'in.txt\0.png', limits), 'invalid', 'spec.file');
    });

    it('refuses a path longer than 4096 characters, one deeper than 32 components, and a component the file system cannot hold (found by the fuzzer: ENAMETOOLONG was FAILED_PRECONDITION)', async () => {
      await refused(openInputFile(root, `${'a/'.repeat(2100)}x`, limits), 'invalid', 'spec.file');
      await refused(openInputFile(root, `${'a/'.repeat(40)}x`, limits), 'invalid', 'spec.file');
      const error = await refused(openInputFile(root, 'x'.repeat(300), limits), 'invalid', 'spec.file');
      expect(error.message).to.include('255 bytes').and.not.to.include(root);
    });

    it('says not_found for a missing file, showing the path only as given', async () => {
      const error = await refused(openInputFile(root, 'sub/none.txt', limits), 'not_found', 'spec.file');
      expect(error.message).to.equal('spec.file "sub/none.txt" does not exist');
    });
  });

  describe('bounded reads (common/records)', () => {
    it('refuses a line longer than the line limit after reading only about that much', async () => {
      // 32 MiB without a newline: a reader that buffers the whole line would take all of it.
      writeFileSync(join(root, 'one-line.txt'), Buffer.alloc(32 << 20, 'a'));
      const error = await refused(scanRecords('one-line.txt', { root, maxBytes: 64 << 20, maxLineBytes: 1000 }), 'line_too_long', 'spec.file');
      expect(error.message).to.equal('spec.file "one-line.txt" line 1: longer than 1000 bytes (the line limit)');
      expect(fileScans.lastBytesRead).to.be.below(1 << 20);
    });

    it('accepts a line of exactly the limit, and counts a \\r before the newline out of it', async () => {
      writeFileSync(join(root, 'exact.txt'), `${'b'.repeat(1000)}\r\n${'c'.repeat(1000)}\n`);
      expect((await scanRecords('exact.txt', { root, maxBytes: 1 << 20, maxLineBytes: 1000 })).records).to.equal(2);
      writeFileSync(join(root, 'over.txt'), `${'b'.repeat(10)}\n${'c'.repeat(1001)}`);
      const error = await refused(scanRecords('over.txt', { root, maxBytes: 1 << 20, maxLineBytes: 1000 }), 'line_too_long', 'spec.file');
      expect((error as RecordsError).line).to.equal(2);
    });

    it('stops a scan as soon as its signal aborts, with the signal\'s reason', async () => {
      writeFileSync(join(root, 'long.txt'), 'word word word\n'.repeat(4 << 20)); // 60 MiB
      const controller = new AbortController();
      const reason = new Error('job cancelled');
      const abortedBefore = fileScans.aborted;
      const scan = scanRecords('long.txt', { root, maxBytes: 1 << 30, maxLineBytes: 1000 }, { signal: controller.signal });
      setTimeout(() => controller.abort(reason), 5);
      expect(await rejection(scan)).to.equal(reason);
      expect(fileScans.aborted).to.equal(abortedBefore + 1);
      expect(fileScans.active).to.equal(0);
      expect(fileScans.lastBytesRead).to.be.below(60 << 20);
      // And a shard read deep in the file stops the same way.
      const deep = new AbortController();
      const read = readRecords('long.txt', 4_000_000, 10, { root, maxBytes: 1 << 30, maxLineBytes: 1000 }, { signal: deep.signal });
      setTimeout(() => deep.abort(reason), 5);
      expect(await rejection(read)).to.equal(reason);
      expect(fileScans.lastBytesRead).to.be.below(60 << 20);
    });

    it('never quotes the file in an error: a malformed line is named by its number', async () => {
      writeFileSync(join(root, 'secret.jsonl'), '{"text": "fine"}\n{"text": SECRET-VALUE}\n{"text": 12345}\n');
      const malformed = await refused(scanRecords('secret.jsonl', { root, maxBytes: 1 << 20, maxLineBytes: 1000 }), 'malformed', 'spec.file');
      expect(malformed.message).to.equal('spec.file "secret.jsonl" line 2: malformed JSON');
      writeFileSync(join(root, 'number.jsonl'), '{"text": 987654321}\n');
      const typed = await refused(scanRecords('number.jsonl', { root, maxBytes: 1 << 20, maxLineBytes: 1000 }), 'malformed', 'spec.file');
      expect(typed.message).not.to.include('987654321');
    });
  });

  describe('outputs', () => {
    let outRoot = '';
    let place: { root: string; protectedDirs: string[] };
    const write = (tenant: string, given: string, lines: string[], overwrite = false, maxBytes = 1 << 20) =>
      writeOutputFile(place, tenant, given, lines, { field: 'spec.output_file', overwrite, maxBytes });

    before(() => {
      outRoot = join(base, 'out');
      mkdirSync(outRoot);
      place = { root: outRoot, protectedDirs: [join(outRoot, 'acme', 'store')] };
    });

    it('gives each tenant a folder whose name is path-safe and its own', () => {
      expect(tenantFolder('acme')).to.equal('acme');
      expect(tenantFolder('..')).to.equal('%2E%2E');
      expect(tenantFolder('a/../../b')).to.equal('a%2F%2E%2E%2F%2E%2E%2Fb');
      expect(tenantFolder('')).to.equal('%');
      expect(tenantFolder('x\0y')).to.equal('x%00y');
      const long = [tenantFolder('t'.repeat(500)), tenantFolder(`${'t'.repeat(499)}u`)];
      expect(long[0]).to.have.length.at.most(100);
      expect(long[0]).not.to.equal(long[1]);
    });

    it('writes inside the tenant folder, creating sub-folders there', async () => {
      await write('acme', 'runs/one.jsonl', ['a\n', 'b\n']);
      expect(readFileSync(join(outRoot, 'acme', 'runs', 'one.jsonl'), 'utf8')).to.equal('a\nb\n');
      await write('acme', join(outRoot, 'acme', 'abs.jsonl'), ['c\n']);
      expect(readFileSync(join(outRoot, 'acme', 'abs.jsonl'), 'utf8')).to.equal('c\n');
    });

    it('refuses an output path deeper than 32 components before making any folder (found by the fuzzer: 2,000 nested folders made at once), and a component over 255 bytes at the check', async () => {
      const deep = `${'d/'.repeat(2000)}y.jsonl`;
      await refused(write('acme', deep, ['a\n']), 'invalid', 'spec.output_file');
      await refused(checkOutputTarget(place, 'acme', `${'e/'.repeat(33)}y.jsonl`, 'spec.output_file', false), 'invalid', 'spec.output_file');
      // A name the file system cannot hold is refused by the check at submit, not only at the write (found by the fuzzer: accepted, then the job failed).
      await refused(checkOutputTarget(place, 'acme', 'y'.repeat(300), 'spec.output_file', false), 'invalid', 'spec.output_file');
      expect(existsSync(join(outRoot, 'acme', 'd'))).to.equal(false);
      expect(existsSync(join(outRoot, 'acme', 'e'))).to.equal(false);
    });

    it('never replaces an existing file unless asked; the same content again is a no-op (a retried Finalize)', async () => {
      await write('acme', 'keep.jsonl', ['first\n']);
      await write('acme', 'keep.jsonl', ['first\n']);
      await refused(write('acme', 'keep.jsonl', ['second\n']), 'exists', 'spec.output_file');
      await refused(checkOutputTarget(place, 'acme', 'keep.jsonl', 'spec.output_file', false), 'exists', 'spec.output_file');
      expect(readFileSync(join(outRoot, 'acme', 'keep.jsonl'), 'utf8')).to.equal('first\n');
      await write('acme', 'keep.jsonl', ['second\n'], true);
      expect(readFileSync(join(outRoot, 'acme', 'keep.jsonl'), 'utf8')).to.equal('second\n');
      expect(readdirSync(join(outRoot, 'acme')).filter((n) => n.endsWith('.tmp'))).to.deep.equal([]);
    });

    it('never replaces a read-only file, even when asked', async () => {
      await write('acme', 'ro.jsonl', ['old\n']);
      chmodSync(join(outRoot, 'acme', 'ro.jsonl'), 0o444);
      await refused(write('acme', 'ro.jsonl', ['new\n'], true), 'unreadable', 'spec.output_file');
      expect(readFileSync(join(outRoot, 'acme', 'ro.jsonl'), 'utf8')).to.equal('old\n');
    });

    it('refuses a path out of the tenant folder: .., an absolute path elsewhere, another tenant\'s folder', async () => {
      for (const given of ['../evil.jsonl', '../other/x.jsonl', '/tmp/evil.jsonl', join(outRoot, 'other', 'x.jsonl'), join(outside, 'x.jsonl')]) {
        await refused(write('acme', given, ['x\n']), 'outside_root', 'spec.output_file');
      }
      expect(existsSync(join(outRoot, 'evil.jsonl'))).to.equal(false);
      expect(existsSync(join(outRoot, 'other'))).to.equal(false);
    });

    it('never follows a symlink out: at a middle component or the last', async () => {
      mkdirSync(join(outRoot, 'acme'), { recursive: true });
      symlinkSync(outside, join(outRoot, 'acme', 'escape'));
      await refused(write('acme', 'escape/planted.jsonl', ['x\n']), 'outside_root', 'spec.output_file');
      await refused(write('acme', 'escape/new-dir/planted.jsonl', ['x\n']), 'outside_root', 'spec.output_file');
      expect(existsSync(join(outside, 'planted.jsonl'))).to.equal(false);
      expect(existsSync(join(outside, 'new-dir'))).to.equal(false);
      symlinkSync(join(outside, 'secret.txt'), join(outRoot, 'acme', 'last.jsonl'));
      await refused(write('acme', 'last.jsonl', ['x\n'], true), 'outside_root', 'spec.output_file');
      await refused(write('acme', 'last.jsonl', ['x\n'], false), 'outside_root', 'spec.output_file');
      expect(readFileSync(join(outside, 'secret.txt'), 'utf8')).to.equal('SECRET-CONTENT\n');
    });

    it('refuses a target in a store or a model cache', async () => {
      mkdirSync(join(outRoot, 'acme', 'store'), { recursive: true });
      await refused(write('acme', 'store/jobs.sqlite', ['x\n'], true), 'protected', 'spec.output_file');
      expect(existsSync(join(outRoot, 'acme', 'store', 'jobs.sqlite'))).to.equal(false);
    });

    it('refuses an output root that contains or lies inside a store or a cache', async () => {
      const store = join(base, 'data', 'aggregator');
      mkdirSync(store, { recursive: true });
      expect(await rejection(checkRootApart(join(base, 'data'), [store], '--output-root'))).to.match(/--output-root .* must not contain or lie inside/);
      expect(await rejection(checkRootApart(join(store, 'out'), [store], '--output-root'))).to.be.instanceOf(Error);
      await checkRootApart(join(base, 'elsewhere'), [store], '--output-root');
    });

    it('leaves nothing on disk when the output is over the size limit', async () => {
      const error = await refused(write('acme', 'huge.jsonl', ['x'.repeat(600), 'y'.repeat(600)], false, 1000), 'too_large', 'spec.output_file');
      expect(error.message).to.include('1000 bytes');
      expect(readdirSync(join(outRoot, 'acme')).filter((n) => n.startsWith('huge'))).to.deep.equal([]);
    });
  });
});
