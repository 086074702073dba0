/**
 * The store files of this release, kept as fixtures so that every later release proves it opens
 * them (test/unit/store-migrations.test.ts). `node dist/test/store-fixtures.js` writes
 * test/fixtures/stores/{scheduler,aggregator}-v<version>.sqlite with the content below, for the
 * versions that have no file yet; a release that adds a migration keeps the older files and adds
 * one of its own version.
 */
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { AGGREGATOR_STORE_MIGRATIONS, AggregatorStore, STORE_FILE } from '../services/aggregator/store';
import { ReduceSpec } from '../services/aggregator/reducers';
import { splitIntoTasks } from '../services/scheduler/jobs/split';
import { JOB_STORE_MIGRATIONS, JobStore, STORE_FILE_NAME } from '../services/scheduler/jobs/store';

/** Where the fixtures live in the repository (this file runs from dist/test). */
export const STORE_FIXTURES = resolve(__dirname, '../../test/fixtures/stores');

/** The reduce spec of the aggregator fixture's job. */
export const FIXTURE_SUM: ReduceSpec = { reducer: 'sum', topK: 0, tasksTotal: 3, outputFile: '', positiveLabel: '', meanOf: '' };

/** Writes the scheduler's fixture content into a new store in `dir`: one finished job, one running. */
export function writeSchedulerFixture(dir: string): void {
  const store = new JobStore(dir, { now: () => 2_000 });
  try {
    const tasks = splitIntoTasks(5, 2);
    const inline = tasks.map((t) => Array.from({ length: t.count }, (_, k) => ({ text: `record ${t.first + k}` })));
    store.createJob({ id: 'job-done', tenant: 'acme', spec: { mapper: 'wordcount', reducer: 'sum' }, priority: 2, recordsTotal: 5, createdAt: 1_000, callbackUrl: 'https://example.test/cb' }, tasks, inline, { accepted: { tasksTotal: 3, recordsTotal: 5 } });
    for (const t of tasks) {
      store.startTask('job-done', t.index, 'worker-1');
      store.finishTask('job-done', t.index, t.count);
    }
    store.finishJob('job-done', 'succeeded', { result: { totalRecords: 5 } }, { completed: { totalRecords: 5 } }, 3_000);
    store.setCallbackState('job-done', 'failed', 'connection refused');
    store.createJob({ id: 'job-running', tenant: 'globex', spec: { mapper: 'wordcount', reducer: 'sum' }, priority: 1, recordsTotal: 5, createdAt: 1_500, deadlineAt: 99_000 }, tasks, inline, { accepted: { tasksTotal: 3, recordsTotal: 5 } });
    store.startTask('job-running', 0, 'worker-2');
    store.failTaskAttempt('job-running', 0, 'worker-2 went away');
  } finally {
    store.close();
  }
}

/** Writes the aggregator's fixture content into a new store in `dir`: two of three tasks of a sum job committed. */
export function writeAggregatorFixture(dir: string): void {
  const store = new AggregatorStore(dir);
  try {
    store.commit('job-sum', 0, 1, FIXTURE_SUM, { records: 2, wordCounts: { a: 2, b: 1 }, totalWords: 3, outputs: [] });
    store.commit('job-sum', 2, 3, FIXTURE_SUM, { records: 1, wordCounts: { b: 4 }, totalWords: 4, outputs: [] });
  } finally {
    store.close();
  }
}

if (require.main === module) {
  const work = mkdtempSync(join(tmpdir(), 'maas-store-fixtures-'));
  try {
    mkdirSync(STORE_FIXTURES, { recursive: true });
    writeSchedulerFixture(join(work, 'scheduler'));
    writeAggregatorFixture(join(work, 'aggregator'));
    const scheduler = join(STORE_FIXTURES, `scheduler-v${JOB_STORE_MIGRATIONS.length}.sqlite`);
    const aggregator = join(STORE_FIXTURES, `aggregator-v${AGGREGATOR_STORE_MIGRATIONS.length}.sqlite`);
    // A fixture once committed is kept as it is: it is what that release wrote.
    for (const [from, to] of [[join(work, 'scheduler', STORE_FILE_NAME), scheduler], [join(work, 'aggregator', STORE_FILE), aggregator]]) {
      if (existsSync(to)) {
        process.stdout.write(`kept ${to}\n`);
        continue;
      }
      copyFileSync(from, to);
      process.stdout.write(`wrote ${to}\n`);
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
