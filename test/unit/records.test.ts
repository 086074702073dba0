import { expect } from 'chai';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RecordsError, fileScans, readRecords, recordsFormat, scanRecords } from '../../common/records.js';

/** Resolves with the error `promise` rejects with; fails the test if it resolves. */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected a rejection, but the promise resolved');
}

/** Resolves with the RecordsError `promise` rejects with. */
async function recordsError(promise: Promise<unknown>): Promise<RecordsError> {
  const error = await rejection(promise);
  expect(error).to.be.instanceOf(RecordsError);
  return error as RecordsError;
}

describe('input records (common/records)', () => {
  let dir = '';
  /** Writes a file in the input root (the test's directory); returns its path relative to the root. */
  const file = (name: string, contents: string): string => {
    writeFileSync(join(dir, name), contents);
    return name;
  };
  /** The input root and its limits. */
  const F = () => ({ root: dir, maxBytes: 1 << 24, maxLineBytes: 1 << 16 });

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'maas-records-'));
  });

  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  describe('formats', () => {
    it('reads a name ending in .jsonl (any case) as JSON Lines and anything else as plain text', () => {
      expect(recordsFormat('/data/in.jsonl')).to.equal('jsonl');
      expect(recordsFormat('IN.JSONL')).to.equal('jsonl');
      expect(recordsFormat('in.json')).to.equal('text');
      expect(recordsFormat('in.txt')).to.equal('text');
      expect(recordsFormat('jsonl')).to.equal('text');
    });
  });

  describe('scanRecords', () => {
    it('counts the non-empty lines of a JSON Lines file (blank and whitespace-only lines skipped) and gives its size in bytes', async () => {
      const path = file('scan.jsonl', '{"text":"a"}\n\n{"text":"b","label":"x"}\n   \t\n{"text":"c"}\n\n');
      expect(await scanRecords(path, F())).to.deep.equal({ records: 3, bytes: statSync(join(dir, path)).size });
    });

    it('counts the non-empty lines of a plain text file, whatever they hold', async () => {
      const path = file('scan.txt', 'first line\n\n{"not":"parsed"}\nlast line without newline');
      expect(await scanRecords(path, F())).to.deep.equal({ records: 3, bytes: statSync(join(dir, path)).size });
    });

    it('counts bytes, not characters, for non-ASCII text', async () => {
      const path = file('utf8.txt', 'café\nnaïve ✓\n');
      expect(await scanRecords(path, F())).to.deep.equal({ records: 2, bytes: Buffer.byteLength('café\nnaïve ✓\n') });
    });

    it('finds no records in an empty file', async () => {
      expect(await scanRecords(file('empty.jsonl', ''), F())).to.deep.equal({ records: 0, bytes: 0 });
    });

    it('reports malformed JSON with the field, the path as given and its physical line number, never the line itself', async () => {
      const path = file('input.jsonl', '{"text":"a"}\n\n{"text":"b"}\n{"text": oops}\n{"text":"d"}\n');
      const error = await recordsError(scanRecords(path, F()));
      expect(error.code).to.equal('malformed');
      expect(error.line).to.equal(4);
      expect(error.message).to.equal('spec.file "input.jsonl" line 4: malformed JSON');
      expect(error.message).not.to.include(dir);
    });

    it('reports a line that is JSON but not an object, saying what it is', async () => {
      const cases: Array<[string, string]> = [
        ['["a"]', 'an array'],
        ['"text"', 'a string'],
        ['42', 'a number'],
        ['null', 'null'],
        ['true', 'a boolean'],
      ];
      for (const [line, kind] of cases) {
        const error = await recordsError(scanRecords(file('kinds.jsonl', `{"text":"ok"}\n${line}\n`), F()));
        expect(error.message, line).to.equal(`spec.file "kinds.jsonl" line 2: expected a JSON object with "text", given ${kind}`);
      }
    });

    it('reports a missing "text" on its line', async () => {
      const error = await recordsError(scanRecords(file('missing.jsonl', '{"text":"a"}\n{"label":"spam"}\n'), F()));
      expect(error.message).to.equal('spec.file "missing.jsonl" line 2: "text" is required');
      expect(error.line).to.equal(2);
    });

    it('reports a "text" that is not a string, with the kind of value given (never the value: it is the file\'s content)', async () => {
      const lines = ['{"text":"a"}', '', '', '', '', '', '{"text":42}'].join('\n');
      const error = await recordsError(scanRecords(file('number.jsonl', lines), F()));
      expect(error.message).to.equal('spec.file "number.jsonl" line 7: "text" must be a string, given a number');
      const nested = await recordsError(scanRecords(file('object.jsonl', '{"text":{"a":1}}'), F()));
      expect(nested.message).to.equal('spec.file "object.jsonl" line 1: "text" must be a string, given an object');
    });

    it('reports a "label" that is not a string, and accepts a null or absent one', async () => {
      const error = await recordsError(scanRecords(file('label.jsonl', '{"text":"a","label":null}\n{"text":"b"}\n{"text":"c","label":1}\n'), F()));
      expect(error.message).to.equal('spec.file "label.jsonl" line 3: "label" must be a string, given a number');
    });

    it('counts CRLF line endings as line ends and drops a UTF-8 byte order mark', async () => {
      const path = file('crlf.jsonl', '\uFEFF{"text":"a"}\r\n\r\n{"text":"b"}\r\n');
      expect((await scanRecords(path, F())).records).to.equal(2);
      expect(await readRecords(path, 0, 2, F())).to.deep.equal([
        { index: 0, text: 'a', label: '' },
        { index: 1, text: 'b', label: '' },
      ]);
    });

    it('rejects a missing file with code not_found and its path as given', async () => {
      const path = 'nope.jsonl';
      const error = await recordsError(scanRecords(path, F()));
      expect(error.code).to.equal('not_found');
      expect(error.message).to.equal('spec.file "nope.jsonl" does not exist');
    });

    it('rejects a directory with code not_regular', async () => {
      const path = 'a-directory.jsonl';
      mkdirSync(join(dir, path));
      const error = await recordsError(scanRecords(path, F()));
      expect(error.code).to.equal('not_regular');
      expect(error.message).to.equal('spec.file must name a regular file, given "a-directory.jsonl" (a directory)');
    });

    it('rejects a file without read permission with code unreadable', async function () {
      if (process.getuid?.() === 0) this.skip(); // root reads any file
      const path = file('secret.txt', 'a\n');
      chmodSync(join(dir, path), 0o000);
      const error = await recordsError(scanRecords(path, F()));
      expect(error.code).to.equal('unreadable');
      expect(error.message).to.equal('spec.file "secret.txt" cannot be read (permission denied)');
    });
  });

  describe('readRecords', () => {
    const jsonl = [
      '{"text":"zero","label":"ham"}',
      '',
      '{"text":"one","label":"spam","extra":true}',
      '{"text":"two"}',
      '   ',
      '{"text":"three","label":null}',
      '{"text":"four","label":"ham"}',
      '{"text":"five"}',
      '{"text":"six"}',
    ].join('\n');

    it('reads records with their index, text and label ("" when absent or null), skipping empty lines', async () => {
      const path = file('read.jsonl', jsonl);
      expect(await readRecords(path, 0, 4, F())).to.deep.equal([
        { index: 0, text: 'zero', label: 'ham' },
        { index: 1, text: 'one', label: 'spam' },
        { index: 2, text: 'two', label: '' },
        { index: 3, text: 'three', label: '' },
      ]);
    });

    it('reads plain text lines as records with no label, as written', async () => {
      const path = file('read.txt', 'Hello, world!\n\n  indented line\n{"text":"kept as is"}\n');
      expect(await readRecords(path, 0, 10, F())).to.deep.equal([
        { index: 0, text: 'Hello, world!', label: '' },
        { index: 1, text: '  indented line', label: '' },
        { index: 2, text: '{"text":"kept as is"}', label: '' },
      ]);
    });

    it('splits a file into shards that cover every record once, in order', async () => {
      const path = file('shards.jsonl', jsonl);
      const { records } = await scanRecords(path, F());
      expect(records).to.equal(7);
      const shards = [await readRecords(path, 0, 3, F()), await readRecords(path, 3, 3, F()), await readRecords(path, 6, 3, F())];
      expect(shards.map((shard) => shard.length)).to.deep.equal([3, 3, 1]);
      expect(shards.flat().map((r) => r.index)).to.deep.equal([0, 1, 2, 3, 4, 5, 6]);
      expect(shards.flat().map((r) => r.text)).to.deep.equal(['zero', 'one', 'two', 'three', 'four', 'five', 'six']);
    });

    it('returns fewer records when the file ends inside the shard, and none past its end or for count 0', async () => {
      const path = file('short.jsonl', jsonl);
      expect((await readRecords(path, 5, 10, F())).map((r) => r.index)).to.deep.equal([5, 6]);
      expect(await readRecords(path, 7, 10, F())).to.deep.equal([]);
      expect(await readRecords(path, 2, 0, F())).to.deep.equal([]);
    });

    it('stops reading after the shard: bad lines after it are never reached', async () => {
      const path = file('stops.jsonl', '{"text":"a"}\n{"text":"b"}\nnot json at all\n{"text":7}\n');
      expect((await readRecords(path, 0, 2, F())).map((r) => r.text)).to.deep.equal(['a', 'b']);
    });

    it('reports a bad line inside the shard with its physical line number', async () => {
      const path = file('bad-shard.jsonl', '{"text":"a"}\n\n{"text":"b"}\n{"text":"c"\n');
      const error = await recordsError(readRecords(path, 1, 5, F()));
      expect(error.code).to.equal('malformed');
      expect(error.line).to.equal(4);
      expect(error.message).to.equal('spec.file "bad-shard.jsonl" line 4: malformed JSON');
      const wrongType = file('bad-type.jsonl', '{"text":"a"}\n{"text":["b"]}\n');
      expect((await recordsError(readRecords(wrongType, 1, 1, F()))).message).to.equal('spec.file "bad-type.jsonl" line 2: "text" must be a string, given an array');
    });

    it('rejects a missing file with code not_found', async () => {
      const error = await recordsError(readRecords(join(dir, 'absent.txt'), 0, 1, F()));
      expect(error.code).to.equal('not_found');
    });

    it('rejects a negative or fractional range', async () => {
      const path = file('range.txt', 'a\n');
      expect(await rejection(readRecords(path, -1, 1, F()))).to.be.instanceOf(RangeError);
      expect(await rejection(readRecords(path, 0, 1.5, F()))).to.be.instanceOf(RangeError);
    });

    it('rejects with the signal reason once the signal has aborted', async () => {
      const path = file('abort.txt', 'a\nb\n');
      const controller = new AbortController();
      const reason = new Error('task cancelled');
      controller.abort(reason);
      expect(await rejection(readRecords(path, 0, 2, F(), { signal: controller.signal }))).to.equal(reason);
    });

    it('reads a shard deep in a large file', async () => {
      const lines = Array.from({ length: 50_000 }, (_, i) => JSON.stringify({ text: `record ${i}`, label: i % 2 ? 'odd' : 'even' }));
      const path = file('large.jsonl', lines.join('\n') + '\n');
      expect((await scanRecords(path, F())).records).to.equal(50_000);
      const shard = await readRecords(path, 49_990, 100, F());
      expect(shard).to.have.length(10);
      expect(shard[0]).to.deep.equal({ index: 49_990, text: 'record 49990', label: 'even' });
    });
  });
});
