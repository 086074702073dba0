/**
 * The aggregator over gRPC: exactly-once commits, Finalize only once every task is in, the collect
 * output file, validation, and commits that survive a restart and a kill -9.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { expect } from 'chai';
import { Channel } from 'nice-grpc';
import { createMeshClient, openChannel } from '../../common/client';
import { parseConfig } from '../../common/config';
import { silentLogger } from '../../common/log';
import { AggregatorServiceDefinition, CommitRequest, ReduceSpec } from '../../generated/maas/internal/v1/aggregator';
import { MapOutput } from '../../generated/maas/internal/v1/task';
import { aggregatorSchema } from '../../services/aggregator/config';
import { RunningAggregator, startAggregator } from '../../services/aggregator/server';
import { Status, grpcError } from '../support';

const dist = resolve(__dirname, '../..');

function reduceSpec(reducer: string, tasksTotal: number, extra: Partial<ReduceSpec> = {}): ReduceSpec {
  return ReduceSpec.fromPartial({ reducer, tasksTotal, ...extra });
}

function words(counts: Record<string, number>, records = 1): MapOutput {
  return MapOutput.fromPartial({ records, wordCounts: counts, totalWords: Object.values(counts).reduce((a, b) => a + b, 0) });
}

function outputs(...rows: [number, string][]): MapOutput {
  return MapOutput.fromPartial({ records: rows.length, outputs: rows.map(([index, output]) => ({ index, output })) });
}

type Client = ReturnType<typeof connect>['client'];

function connect(address: string) {
  const channel: Channel = openChannel(address);
  return { channel, client: createMeshClient(AggregatorServiceDefinition, channel) };
}

describe('aggregator service', function () {
  this.timeout(20000);
  let dataDir: string;
  let aggregator: RunningAggregator;
  let channel: Channel;
  let client: Client;

  async function start(): Promise<void> {
    aggregator = await startAggregator({ ...parseConfig(aggregatorSchema, [], {}), port: 0, metricsPort: 0, dataDir: join(dataDir, 'store'), outputRoot: join(dataDir, 'output'), maxOutputBytes: 4096 }, silentLogger);
    ({ channel, client } = connect(aggregator.address));
  }

  async function stop(): Promise<void> {
    channel.close();
    await aggregator.shutdown();
  }

  before(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'maas-aggregator-'));
    await start();
  });
  after(async () => {
    await stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  const commit = (jobId: string, taskIndex: number, attempt: number, reduce: ReduceSpec, output: MapOutput) =>
    client.commit(CommitRequest.fromPartial({ jobId, taskIndex, attempt, reduce, output }));

  it('commits each task once; another attempt of a committed task is a duplicate and counts nothing', async () => {
    const spec = reduceSpec('sum', 2);
    const first = await commit('job-dup', 0, 1, spec, words({ cat: 2, dog: 1 }));
    expect(first.duplicate).to.equal(false);
    expect(first.tasksCommitted).to.equal(1);
    expect(first.partial?.result).to.deep.equal({
      $case: 'wordCounts',
      wordCounts: { words: [{ word: 'cat', count: 2 }, { word: 'dog', count: 1 }], totalWords: 3, distinctWords: 2, records: 1 },
    });
    const again = await commit('job-dup', 0, 2, spec, words({ cat: 100 }));
    expect(again.duplicate).to.equal(true);
    expect(again.tasksCommitted).to.equal(1);
    expect(again.partial).to.deep.equal(first.partial);
  });

  it('Finalize fails with FAILED_PRECONDITION until every task is committed, then returns the result, the same each time', async () => {
    const spec = reduceSpec('top_k', 3, { topK: 2 });
    await commit('job-fin', 2, 1, spec, words({ b: 2, c: 1 }));
    const early = await grpcError(client.finalize({ jobId: 'job-fin', reduce: spec }));
    expect(early.code).to.equal(Status.FAILED_PRECONDITION);
    expect(early.details).to.equal('job job-fin has 1 of 3 tasks committed');

    await commit('job-fin', 0, 1, spec, words({ a: 3, b: 1 }));
    await commit('job-fin', 1, 1, spec, words({ c: 1 }));
    const done = await client.finalize({ jobId: 'job-fin', reduce: spec });
    expect(done.result?.result).to.deep.equal({
      $case: 'wordCounts',
      wordCounts: { words: [{ word: 'a', count: 3 }, { word: 'b', count: 3 }], totalWords: 8, distinctWords: 3, records: 3 },
    });
    expect(await client.finalize({ jobId: 'job-fin' })).to.deep.equal(done);
  });

  it('Finalize of a job with no committed task is NOT_FOUND', async () => {
    const err = await grpcError(client.finalize({ jobId: 'job-nobody', reduce: reduceSpec('sum', 1) }));
    expect(err.code).to.equal(Status.NOT_FOUND);
    expect(err.details).to.match(/job job-nobody is not known/);
  });

  it('collect with an output file writes JSON Lines in index order, atomically, in the tenant\'s folder, and returns the count and the file', async () => {
    const file = 'out/collected.jsonl';
    const written = join(dataDir, 'output', 'acme', 'out', 'collected.jsonl');
    const spec = reduceSpec('collect', 3, { outputFile: file });
    await commit('job-file', 2, 1, spec, outputs([4, 'e'], [5, 'f "quoted"\nnewline']));
    await commit('job-file', 0, 1, spec, outputs([0, 'a'], [1, 'b']));
    await commit('job-file', 1, 1, spec, outputs([3, 'd'], [2, 'c']));
    const done = await client.finalize({ jobId: 'job-file', reduce: spec, tenant: 'acme', overwriteOutput: false });
    expect(done.result?.result).to.deep.equal({ $case: 'collect', collect: { count: 6, outputFile: file, outputs: [] } });
    const lines = readFileSync(written, 'utf8').split('\n');
    expect(lines.pop()).to.equal('');
    expect(lines.map((l) => JSON.parse(l))).to.deep.equal(
      ['a', 'b', 'c', 'd', 'e', 'f "quoted"\nnewline'].map((output, index) => ({ index, output })),
    );
    expect(lines[0]).to.equal('{"index":0,"output":"a"}');
    // Only the file itself is left: the temporary file was linked to it and removed.
    expect(readdirSync(join(dataDir, 'output', 'acme', 'out'))).to.deep.equal(['collected.jsonl']);
    // A retried Finalize finds its own content there and succeeds without overwrite_output.
    expect(await client.finalize({ jobId: 'job-file', reduce: spec, tenant: 'acme', overwriteOutput: false })).to.deep.equal(done);
    // Another tenant's job may not write there; a path out of the tenant's folder is refused.
    const other = reduceSpec('collect', 1, { outputFile: '../acme/out/collected.jsonl' });
    await commit('job-other', 0, 1, other, outputs([0, 'z']));
    const refused = await grpcError(client.finalize({ jobId: 'job-other', reduce: other, tenant: 'intruder', overwriteOutput: true }));
    expect(Status[refused.code]).to.equal('PERMISSION_DENIED');
    expect(refused.details).to.match(/^spec\.output_file must name a file inside the output root/);
    expect(readFileSync(written, 'utf8')).to.include('"output":"a"');
  });

  it('refuses a commit that takes a collect job past --max-output-bytes, naming the limit, and writes nothing', async () => {
    const spec = reduceSpec('collect', 2, { outputFile: 'big.jsonl' });
    await commit('job-big', 0, 1, spec, outputs([0, 'x'.repeat(3000)]));
    const err = await grpcError(commit('job-big', 1, 1, spec, outputs([1, 'y'.repeat(3000)])));
    expect(Status[err.code]).to.equal('FAILED_PRECONDITION');
    expect(err.details).to.match(/over the aggregator's output size limit of 4096 bytes \(--max-output-bytes\)$/);
    expect((await grpcError(client.finalize({ jobId: 'job-big', reduce: spec, tenant: 'acme', overwriteOutput: false }))).code).to.equal(Status.FAILED_PRECONDITION);
    expect(readdirSync(join(dataDir, 'output', 'acme')).filter((n) => n.startsWith('big'))).to.deep.equal([]);
  });

  it('collect without an output file returns the outputs in index order', async () => {
    const spec = reduceSpec('collect', 2);
    await commit('job-inline', 1, 1, spec, outputs([2, 'z']));
    await commit('job-inline', 0, 1, spec, outputs([1, 'y'], [0, 'x']));
    const done = await client.finalize({ jobId: 'job-inline', reduce: spec });
    expect(done.result?.result).to.deep.equal({
      $case: 'collect',
      collect: { count: 3, outputFile: '', outputs: [{ index: 0, output: 'x' }, { index: 1, output: 'y' }, { index: 2, output: 'z' }] },
    });
  });

  const badCommits: [string, Partial<CommitRequest>, RegExp][] = [
    ['an empty job_id', { jobId: '' }, /^job_id must not be empty, given ""$/],
    ['an unknown reducer', { reduce: reduceSpec('median', 2) }, /^reduce\.reducer must be one of sum, top_k, accuracy, collect, mean, given "median"$/],
    ['tasks_total 0', { reduce: reduceSpec('sum', 0) }, /^reduce\.tasks_total must be at least 1, given 0$/],
    ['task_index not below tasks_total', { taskIndex: 2 }, /^task_index must be less than reduce\.tasks_total \(2\), given 2$/],
    ['no reduce spec', { reduce: undefined }, /^reduce must be set$/],
    ['no output', { output: undefined }, /^output must be set$/],
    ['a score that is not a number', { output: MapOutput.fromPartial({ records: 1, outputs: [{ index: 0, output: 'x', score: NaN }] }) }, /^output\.outputs\[0\]\.score must be a finite number, given NaN$/],
  ];
  for (const [what, patch, message] of badCommits) {
    it(`Commit with ${what} is INVALID_ARGUMENT naming the field`, async () => {
      const request = CommitRequest.fromPartial({ jobId: 'job-bad', taskIndex: 0, attempt: 1, reduce: reduceSpec('sum', 2), output: words({ a: 1 }) });
      const err = await grpcError(client.commit({ ...request, ...patch }));
      expect(err.code).to.equal(Status.INVALID_ARGUMENT);
      expect(err.details).to.match(message);
    });
  }

  it('Finalize and Forget with an empty job_id are INVALID_ARGUMENT naming the field', async () => {
    for (const call of [client.finalize({ jobId: '' }), client.forget({ jobId: '' })]) {
      const err = await grpcError(call);
      expect(err.code).to.equal(Status.INVALID_ARGUMENT);
      expect(err.details).to.equal('job_id must not be empty, given ""');
    }
  });

  it('a commit whose reduce spec differs from the job first one is FAILED_PRECONDITION and changes nothing', async () => {
    await commit('job-spec', 0, 1, reduceSpec('sum', 3), words({ a: 1 }));
    const err = await grpcError(commit('job-spec', 1, 1, reduceSpec('sum', 4), words({ a: 1 })));
    expect(err.code).to.equal(Status.FAILED_PRECONDITION);
    expect(err.details).to.equal('job job-spec is reduced with reduce.tasks_total 3, this call gives 4');
    expect((await commit('job-spec', 0, 2, reduceSpec('sum', 3), words({ a: 1 }))).tasksCommitted).to.equal(1);
  });

  it('Finalize takes the job spec: reduce fields left empty are not checked, a set one that differs is FAILED_PRECONDITION', async () => {
    const committed = reduceSpec('accuracy', 1, { topK: 20, positiveLabel: 'spam', meanOf: 'probability of the predicted label' });
    await commit('job-loose', 0, 1, committed, MapOutput.fromPartial({ records: 2, outputs: [{ index: 0, output: 'spam', label: 'spam' }, { index: 1, output: 'spam', label: 'ham' }] }));
    // As the scheduler asks: the reducer and tasks, no positive label, no mean_of, top_k 0.
    const done = await client.finalize({ jobId: 'job-loose', reduce: reduceSpec('accuracy', 1) });
    expect(done.result?.result?.$case).to.equal('accuracy');
    expect(done.result?.result?.$case === 'accuracy' && done.result.result.accuracy).to.include({ positiveLabel: 'spam', total: 2, accuracy: 0.5, precision: 0.5, recall: 1 });
    const err = await grpcError(client.finalize({ jobId: 'job-loose', reduce: reduceSpec('accuracy', 1, { positiveLabel: 'ham' }) }));
    expect(err.code).to.equal(Status.FAILED_PRECONDITION);
    expect(err.details).to.equal('job job-loose is reduced with reduce.positive_label "spam", this call gives "ham"');
  });

  it('Forget drops the job: Finalize is NOT_FOUND afterwards and its tasks commit anew', async () => {
    const spec = reduceSpec('mean', 1, { meanOf: 'words per record' });
    await commit('job-forget', 0, 1, spec, words({ a: 4 }, 2));
    expect((await client.finalize({ jobId: 'job-forget' })).result?.result).to.deep.equal({ $case: 'mean', mean: { mean: 2, count: 2, of: 'words per record' } });
    await client.forget({ jobId: 'job-forget' });
    expect((await grpcError(client.finalize({ jobId: 'job-forget' }))).code).to.equal(Status.NOT_FOUND);
    expect((await commit('job-forget', 0, 2, spec, words({ a: 4 }, 2))).duplicate).to.equal(false);
  });

  it('committed tasks survive a restart on the same data directory, and a duplicate is still detected', async () => {
    const spec = reduceSpec('sum', 3);
    await commit('job-restart', 0, 1, spec, words({ x: 1 }));
    await commit('job-restart', 2, 1, spec, words({ y: 2 }));
    await stop();
    await start();

    const again = await commit('job-restart', 2, 2, spec, words({ zzz: 9 }));
    expect(again.duplicate).to.equal(true);
    expect(again.tasksCommitted).to.equal(2);
    expect((await grpcError(client.finalize({ jobId: 'job-restart' }))).details).to.equal('job job-restart has 2 of 3 tasks committed');
    expect((await commit('job-restart', 1, 1, spec, words({ x: 2 }))).tasksCommitted).to.equal(3);
    expect((await client.finalize({ jobId: 'job-restart' })).result?.result).to.deep.equal({
      $case: 'wordCounts',
      wordCounts: { words: [{ word: 'x', count: 3 }, { word: 'y', count: 2 }], totalWords: 5, distinctWords: 2, records: 3 },
    });
  });

  it('a commit acknowledged by an aggregator process survives kill -9 of that process', async () => {
    const processDir = mkdtempSync(join(tmpdir(), 'maas-aggregator-kill-'));
    const child = spawn(process.execPath, [resolve(dist, 'services/aggregator/main.js'), '--port', '0', '--metrics-port', '0', '--data-dir', join(processDir, 'store'), '--output-root', join(processDir, 'output')], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, MAAS_LOG_LEVEL: 'info' },
    });
    const exited = once(child, 'exit');
    let restarted: RunningAggregator | undefined;
    try {
      let stderr = '';
      const address = await new Promise<string>((resolveAddress, reject) => {
        child.stderr.on('data', (d) => {
          stderr += d;
          const m = /listening on (\S+:\d+)/.exec(stderr);
          if (m) resolveAddress(m[1]);
        });
        child.once('exit', (code) => reject(new Error(`aggregator exited (${code}) before listening: ${stderr}`)));
      });
      const spec = reduceSpec('sum', 2);
      const remote = connect(address);
      try {
        const ack = await remote.client.commit({ jobId: 'job-kill', taskIndex: 1, attempt: 1, reduce: spec, output: words({ kept: 7 }) });
        expect(ack.duplicate).to.equal(false);
      } finally {
        remote.channel.close();
      }
      child.kill('SIGKILL');
      const [, signal] = await exited;
      expect(signal).to.equal('SIGKILL');

      restarted = await startAggregator({ ...parseConfig(aggregatorSchema, [], {}), port: 0, metricsPort: 0, dataDir: join(processDir, 'store'), outputRoot: join(processDir, 'output') }, silentLogger);
      const local = connect(restarted.address);
      try {
        const again = await local.client.commit({ jobId: 'job-kill', taskIndex: 1, attempt: 2, reduce: spec, output: words({ lost: 1 }) });
        expect(again.duplicate).to.equal(true);
        expect(again.tasksCommitted).to.equal(1);
        expect(again.partial?.result).to.deep.equal({
          $case: 'wordCounts',
          wordCounts: { words: [{ word: 'kept', count: 7 }], totalWords: 7, distinctWords: 1, records: 1 },
        });
      } finally {
        local.channel.close();
      }
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await restarted?.shutdown();
      rmSync(processDir, { recursive: true, force: true });
    }
  });
});
