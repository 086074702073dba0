/**
 * Job files stay inside their roots, attacked through the public gateway of a real mesh
 * (gateway, scheduler, balancer, worker, aggregator on 127.0.0.1:0): every hostile `file` and
 * `output_file` gets its exact status and a message naming the field; a file swapped for a
 * symlink after submit is refused by the worker; a cancelled call or job stops its scan of a
 * large file; a job whose collected output is over the limit fails, naming it, with nothing on disk.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileScans } from '../../common/records';
import { JobSpec, JobState } from '../../generated/maas/v1/jobs';
import { Status, TestMesh, collect, grpcError, startMesh, until } from '../support';

const wordcount = { $case: 'mapper' as const, mapper: 'wordcount' };
const fileInput = (file: string) => ({ $case: 'file' as const, file });
const inline = (texts: string[]) => ({ $case: 'inline' as const, inline: { records: texts.map((text) => ({ text, label: '' })) } });

/** Watches a job to its end; resolves with the job as Get returns it then. */
async function finished(mesh: TestMesh, id: string) {
  await collect(mesh.jobs.watch({ jobId: id, afterSequence: 0 }));
  return (await mesh.jobs.get({ jobId: id })).job!;
}

/** Resolves once the balancer lists a ready worker serving echo (after workers were swapped). */
async function echoServed(mesh: TestMesh): Promise<void> {
  for (let tries = 0; tries < 500; tries++) {
    const { models } = await mesh.models.listModels({});
    if (models.some((m) => m.name === 'echo')) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('no worker serves echo');
}

describe('job files stay inside their roots (through the gateway)', function () {
  this.timeout(60000);
  let mesh: TestMesh;
  let outside = '';
  let input = '';
  let tenantOut = '';

  before(async () => {
    mesh = await startMesh({
      workers: [{ echoDelayMs: 0 }],
      scheduler: { maxInputBytes: 32 << 20, maxLineBytes: 1024, maxTasksPerJob: 1, maxBatchTasks: 1 },
      worker: { maxInputBytes: 32 << 20, maxLineBytes: 1024 },
      aggregator: { maxOutputBytes: 2000 },
    });
    input = mesh.inputRoot;
    outside = join(mesh.dataDir, 'outside');
    tenantOut = join(mesh.outputRoot, 'anonymous');
    mkdirSync(join(input, 'sub'), { recursive: true });
    mkdirSync(outside, { recursive: true });
    mkdirSync(tenantOut, { recursive: true });
    writeFileSync(join(input, 'ok.txt'), 'hello world\nhello again\n');
    writeFileSync(join(outside, 'secret.txt'), 'TOP-SECRET-WORD\n');
    symlinkSync(join(outside, 'secret.txt'), join(input, 'link-out.txt'));
    symlinkSync(outside, join(input, 'dir-out'));
    symlinkSync('/dev/zero', join(input, 'zero'));
    symlinkSync(join(input, 'ok.txt'), join(input, 'alias.txt'));
    execFileSync('mkfifo', [join(input, 'fifo.txt')]);
    writeFileSync(join(input, 'long.txt'), `short\n${'x'.repeat(5000)}\n`);
    writeFileSync(join(input, 'leak.jsonl'), '{"text": "fine"}\n{"text": TOP-SECRET-WORD}\n');
    symlinkSync(outside, join(tenantOut, 'escape'));
    writeFileSync(join(tenantOut, 'exists.jsonl'), 'keep me\n');
  });

  after(async () => {
    await mesh?.stop();
  });

  const refusedFiles: [string, string, Status, RegExp][] = [
    ['an absolute path elsewhere', '/etc/passwd', Status.PERMISSION_DENIED, /^spec\.file must name a file inside the input root, given "\/etc\/passwd"$/],
    ['/proc/self/environ', '/proc/self/environ', Status.PERMISSION_DENIED, /^spec\.file must name a file inside the input root/],
    ['a .. that climbs out', '../outside/secret.txt', Status.PERMISSION_DENIED, /^spec\.file must name a file inside the input root, given "\.\.\/outside\/secret\.txt"$/],
    ['a .. deep inside that climbs out', 'sub/../../outside/secret.txt', Status.PERMISSION_DENIED, /^spec\.file must name a file inside the input root/],
    ['a symlink out (last component)', 'link-out.txt', Status.PERMISSION_DENIED, /^spec\.file resolves outside the input root \(through a symlink\), given "link-out\.txt"$/],
    ['a symlink out (middle component)', 'dir-out/secret.txt', Status.PERMISSION_DENIED, /^spec\.file resolves outside the input root/],
    ['a symlink to /dev/zero', 'zero', Status.PERMISSION_DENIED, /^spec\.file resolves outside the input root/],
    ['a FIFO', 'fifo.txt', Status.INVALID_ARGUMENT, /^spec\.file must name a regular file, given "fifo\.txt" \(a FIFO\)$/],
    ['a directory', 'sub', Status.INVALID_ARGUMENT, /^spec\.file must name a regular file, given "sub" \(a directory\)$/],
    ['a line over the line limit', 'long.txt', Status.INVALID_ARGUMENT, /^spec\.file "long\.txt" line 2: longer than 1024 bytes \(the line limit\)$/],
    ['a NUL in the path', 'ok.txt\0', Status.INVALID_ARGUMENT, /^spec\.file must not contain control characters/],
    ['a missing file', 'nowhere.txt', Status.NOT_FOUND, /^spec\.file "nowhere\.txt" does not exist$/],
  ];
  for (const [what, file, code, message] of refusedFiles) {
    it(`refuses as spec.file ${what} with ${Status[code]}`, async () => {
      const err = await grpcError(mesh.jobs.submit({ spec: JobSpec.fromPartial({ map: wordcount, input: fileInput(file) }) }));
      expect(Status[err.code]).to.equal(Status[code]);
      expect(err.details).to.match(message);
      expect(err.details).not.to.include(mesh.dataDir);
    });
  }

  it('refuses a file over the input size limit, naming the limit', async () => {
    // Sparse, so that writing it costs nothing: the size alone is refused, before any read.
    await truncate(join(input, 'big.txt'), (32 << 20) + 1).catch(async () => {
      await writeFile(join(input, 'big.txt'), '');
      await truncate(join(input, 'big.txt'), (32 << 20) + 1);
    });
    const err = await grpcError(mesh.jobs.submit({ spec: JobSpec.fromPartial({ map: wordcount, input: fileInput('big.txt') }) }));
    expect(Status[err.code]).to.equal('INVALID_ARGUMENT');
    expect(err.details).to.match(/^spec\.file must be a file of at most 33554432 bytes \(the input size limit\), given "big\.txt" of 33554433 bytes$/);
  });

  it('never echoes a file\'s content in an error', async () => {
    const err = await grpcError(mesh.jobs.submit({ spec: JobSpec.fromPartial({ map: wordcount, input: fileInput('leak.jsonl') }) }));
    expect(Status[err.code]).to.equal('INVALID_ARGUMENT');
    expect(err.details).to.equal('spec.file "leak.jsonl" line 2: malformed JSON');
  });

  it('reads a file inside the root, by a relative path and through a symlink that stays inside', async () => {
    for (const file of ['ok.txt', 'alias.txt', join(input, 'ok.txt')]) {
      const { job } = await mesh.jobs.submit({ spec: JobSpec.fromPartial({ map: wordcount, input: fileInput(file) }) });
      const done = await finished(mesh, job!.id);
      expect(done.state, done.error).to.equal(JobState.JOB_STATE_SUCCEEDED);
      expect(done.result?.result?.$case === 'wordCounts' && done.result.result.wordCounts.words[0]).to.deep.equal({ word: 'hello', count: 2 });
    }
  });

  const collectSpec = (outputFile: string, overwriteOutput = false) =>
    JobSpec.fromPartial({ map: { $case: 'model', model: 'echo' }, input: inline(['a b', 'c d']), reducer: 'collect', outputFile, overwriteOutput });

  const refusedOutputs: [string, string, Status, RegExp][] = [
    ['an absolute path elsewhere', '/tmp/maas-evil.jsonl', Status.PERMISSION_DENIED, /^spec\.output_file must name a file inside the output root, given "\/tmp\/maas-evil\.jsonl"$/],
    ['a .. into another tenant\'s folder', '../other/x.jsonl', Status.PERMISSION_DENIED, /^spec\.output_file must name a file inside the output root/],
    ['a .. out of the output root', '../../x.jsonl', Status.PERMISSION_DENIED, /^spec\.output_file must name a file inside the output root/],
    ['a symlink out (middle component)', 'escape/planted.jsonl', Status.PERMISSION_DENIED, /^spec\.output_file resolves outside the output root/],
    ['an existing file without overwrite_output', 'exists.jsonl', Status.ALREADY_EXISTS, /^spec\.output_file "exists\.jsonl" exists; set overwrite_output to replace it$/],
    ['a directory', 'escape/..', Status.INVALID_ARGUMENT, /^spec\.output_file must name a file/],
  ];
  for (const [what, file, code, message] of refusedOutputs) {
    it(`refuses as spec.output_file ${what} with ${Status[code]}`, async () => {
      const err = await grpcError(mesh.jobs.submit({ spec: collectSpec(file) }));
      expect(Status[err.code]).to.equal(Status[code]);
      expect(err.details).to.match(message);
      expect(err.details).not.to.include(mesh.dataDir);
    });
  }

  it('writes an output in the tenant\'s folder, and replaces an existing one only with overwrite_output', async () => {
    const { job } = await mesh.jobs.submit({ spec: collectSpec('exists.jsonl', true) });
    const done = await finished(mesh, job!.id);
    expect(done.state, done.error).to.equal(JobState.JOB_STATE_SUCCEEDED);
    // The echo model classifies every record as "echo".
    expect(readFileSync(join(tenantOut, 'exists.jsonl'), 'utf8')).to.equal('{"index":0,"output":"echo"}\n{"index":1,"output":"echo"}\n');
    expect(existsSync(join(outside, 'planted.jsonl'))).to.equal(false);
    expect(existsSync('/tmp/maas-evil.jsonl')).to.equal(false);
  });

  it('fails a job whose output exceeds --max-output-bytes, naming the limit, and leaves nothing on disk', async () => {
    // About 28 bytes per output line: 200 of them are over 2000 bytes.
    const texts = Array.from({ length: 200 }, (_, i) => `record ${i}`);
    const spec = JobSpec.fromPartial({ map: { $case: 'model', model: 'echo' }, input: inline(texts), shardSize: 20, reducer: 'collect', outputFile: 'too-big.jsonl' });
    const { job } = await mesh.jobs.submit({ spec });
    const done = await finished(mesh, job!.id);
    expect(done.state).to.equal(JobState.JOB_STATE_FAILED);
    expect(done.error).to.match(/over the aggregator's output size limit of 2000 bytes \(--max-output-bytes\)$/);
    expect(readdirSync(tenantOut).filter((n) => n.startsWith('too-big'))).to.deep.equal([]);
  });

  it('the worker refuses a file swapped for a symlink out after submit', async () => {
    writeFileSync(join(input, 'swap.txt'), 'one\ntwo\nthree\n');
    // One record per task, one task at a time, each taking a while: the later tasks open the file
    // after the swap below. The check at submit passed; the worker's own check must refuse it.
    const spec = JobSpec.fromPartial({ map: { $case: 'model', model: 'echo' }, input: fileInput('swap.txt'), shardSize: 1, reducer: 'mean' });
    // Swap the fast worker for a slow one for this test, and back after it.
    const fast = mesh.workers.shift()!;
    await mesh.addWorker({ echoDelayMs: 150 });
    await fast.shutdown();
    await echoServed(mesh);
    try {
      const { job } = await mesh.jobs.submit({ spec });
      renameSync(join(input, 'swap.txt'), join(input, 'swap-original.txt'));
      symlinkSync(join(outside, 'secret.txt'), join(input, 'swap.txt'));
      const done = await finished(mesh, job!.id);
      expect(done.state).to.equal(JobState.JOB_STATE_FAILED);
      expect(done.error).to.match(/failed after 1 attempt: spec\.file resolves outside the input root \(through a symlink\), given "swap\.txt"$/);
      expect(done.error).not.to.include('TOP-SECRET');
    } finally {
      const slow = mesh.workers.shift()!;
      await mesh.addWorker({ echoDelayMs: 0 });
      await slow.shutdown();
      await echoServed(mesh);
    }
  });

  describe('scans stop when their call or job is cancelled', () => {
    const lines = 2 << 20; // 2 Mi short lines, 30 MiB: a scan takes on the order of a second

    before(async () => {
      // Written without blocking this process's event loop: the in-process worker must keep
      // reporting to the balancer (a silent one is removed).
      await writeFile(join(input, 'large.txt'), 'word word word\n'.repeat(lines));
      await echoServed(mesh);
    });

    it('a Submit cancelled during its scan stops the scheduler\'s read', async () => {
      const abortedBefore = fileScans.aborted;
      const controller = new AbortController();
      const submit = mesh.jobs.submit({ spec: JobSpec.fromPartial({ map: wordcount, input: fileInput('large.txt') }) }, { signal: controller.signal }).then(
        () => 'submitted',
        (err: Error) => err.name,
      );
      await until(() => fileScans.active > 0, 10000, 'the scan to start');
      controller.abort();
      expect(await submit).to.equal('AbortError');
      await until(() => fileScans.active === 0 && fileScans.aborted > abortedBefore, 10000, 'the scan to stop');
      expect(fileScans.lastBytesRead).to.be.below(lines * 15);
    });

    it('a cancelled job stops its worker\'s read of its shard', async () => {
      // 21 tasks, one at a time: task k first reads past k * 100000 lines, which takes a while.
      const spec = JobSpec.fromPartial({ map: wordcount, input: fileInput('large.txt'), shardSize: 100_000 });
      const { job } = await mesh.jobs.submit({ spec });
      let tasksDone = 0;
      await until(() => {
        void mesh.jobs.get({ jobId: job!.id }).then((r) => (tasksDone = r.job!.tasksDone));
        return tasksDone >= 5;
      }, 30000, 'five tasks to finish');
      // Submit has counted the file: a read running now is a worker's, of a shard deep in it.
      await until(() => fileScans.active > 0, 10000, 'the worker to read the second shard');
      const abortedBefore = fileScans.aborted;
      await mesh.jobs.cancel({ jobId: job!.id });
      await until(() => fileScans.active === 0, 10000, 'the read to stop');
      expect(fileScans.aborted).to.be.greaterThan(abortedBefore);
      expect((await mesh.jobs.get({ jobId: job!.id })).job!.state).to.equal(JobState.JOB_STATE_CANCELLED);
    });
  });

  it('still reaches the built-in datasets by name', async () => {
    const { job } = await mesh.jobs.submit({ spec: JobSpec.fromPartial({ map: wordcount, input: { $case: 'dataset', dataset: 'spam-assassin' } }) });
    expect(job!.recordsTotal).to.equal(6046);
    await mesh.jobs.cancel({ jobId: job!.id });
    // (Last: the in-process worker then loads the dataset, which holds this process's event loop a while.)
  });

});
