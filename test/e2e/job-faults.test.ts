/**
 * Batch jobs under faults, with real processes: one balancer, one aggregator, one scheduler, two
 * workers and one gateway, each its own `node dist/.../main.js` on 127.0.0.1. A job is started,
 * and once its Watch stream shows it is under way (its second taskDone event), one process is
 * killed with SIGKILL:
 *
 * 1. a worker: the job completes with the fault-free result; the killed worker's task ran again
 *    (retried by the scheduler, or re-routed by the balancer to the other worker);
 * 2. the scheduler, restarted on the same port and data directory: the job resumes and completes
 *    with the same result, Get works, a job acknowledged just before the kill completes too, and a
 *    new Watch from the last sequence seen continues with no gap;
 * 3. the aggregator, restarted on the same port and data directory: the jobs complete, with no
 *    committed task lost or counted twice (collect: each record once; word count: exact totals).
 *
 * The fault-free result is computed in this suite: the echo job is run once with no fault first,
 * and the word counts of the dataset are counted here with the worker's own `words()`.
 */
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Channel, ClientError, Status } from 'nice-grpc';
import { createMeshClient, openChannel } from '../../common/client';
import { loadDataset } from '../../common/datasets';
import { Job, JobEvent, JobResult, JobServiceDefinition, JobSpec, JobState } from '../../generated/maas/v1/jobs';
import { ModelServiceDefinition } from '../../generated/maas/v1/models';
import { words } from '../../services/worker/map';
import { ProcessGroup, REPO_ROOT, ServiceProcess, freePort } from '../processes';

/** Delay of the echo model per prediction: one record of an echo job takes this long on a worker. */
const ECHO_DELAY_MS = 20;
/** The echo job: RECORDS records in shards of SHARD_SIZE, so each task takes about 100 ms. */
const RECORDS = 120;
const SHARD_SIZE = 5;
const TASKS = RECORDS / SHARD_SIZE;
/** Word count over the built-in dataset, in shards of this size. */
const DATASET = 'spam-assassin';
const DATASET_SHARD_SIZE = 100;

/** The echo model over `records` inline records, collected in input order. */
const echoSpec = (over: Partial<JobSpec> = {}, records = RECORDS, shardSize = SHARD_SIZE): JobSpec =>
  JobSpec.fromPartial({
    map: { $case: 'model', model: 'echo' },
    input: { $case: 'inline', inline: { records: Array.from({ length: records }, (_, i) => ({ text: `record ${i}: the quick brown fox ${i % 7}`, label: '' })) } },
    shardSize,
    reducer: 'collect',
    ...over,
  });

/** Word count over the built-in dataset, every word (sum). */
const wordcountSpec = (over: Partial<JobSpec> = {}): JobSpec =>
  JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'dataset', dataset: DATASET }, shardSize: DATASET_SHARD_SIZE, reducer: 'sum', ...over });

const caseOf = (e: JobEvent) => e.event?.$case;
const FINAL = new Set(['completed', 'failed', 'cancelled']);
const isUnavailable = (err: unknown) => err instanceof ClientError && err.code === Status.UNAVAILABLE;

/** What each test measured, printed at the end of the suite (for the closing note). */
const measured: string[] = [];

describe('batch jobs under kill -9 of real processes', function () {
  this.timeout(60_000);

  const group = new ProcessGroup();
  let tmp = '';
  let balancer: ServiceProcess;
  let aggregator: ServiceProcess;
  let scheduler: ServiceProcess;
  let workers: ServiceProcess[] = [];
  let gateway: ServiceProcess;
  let channel: Channel | undefined;
  let jobs: ReturnType<typeof createMeshClient<typeof JobServiceDefinition>>;
  let models: ReturnType<typeof createMeshClient<typeof ModelServiceDefinition>>;
  // Last resort if the test process exits before `after` runs: the group kills its processes on
  // exit, and this removes the data directories. (Killed by a signal, no exit hook runs: the
  // services then stop by themselves, as they watch MAAS_PARENT_PID, and the directory stays.)
  const removeTmp = () => {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  };
  /** The echo job's fault-free result and run time. */
  let baseline: { result: JobResult; ms: number };

  /** Resolves once the gateway lists echo with every worker ready (the catalog comes from the balancer). */
  async function modelsReady(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      try {
        const { models: list } = await models.listModels({}, { deadline: Date.now() + 2000 });
        const echo = list.find((m) => m.name === 'echo');
        last = list.map((m) => `${m.name}(${m.readyWorkers})`).join(', ');
        if (echo && echo.readyWorkers === workers.length && ['spam-nb', 'ngram'].every((n) => list.some((m) => m.name === n))) return;
      } catch (err) {
        last = String(err);
      }
      if (Date.now() > deadline) throw new Error(`the gateway did not list echo on ${workers.length} workers in time; last: ${last}`);
      await sleep(50);
    }
  }

  /** Calls `fn` until it does not fail with UNAVAILABLE (a restarted hop, or a channel in reconnect backoff). */
  async function whileUnavailable<T>(fn: () => Promise<T>, timeoutMs = 15_000): Promise<{ value: T; retries: number }> {
    const deadline = Date.now() + timeoutMs;
    for (let retries = 0; ; retries++) {
      try {
        return { value: await fn(), retries };
      } catch (err) {
        if (!isUnavailable(err) || Date.now() > deadline) throw err;
        await sleep(50);
      }
    }
  }

  /**
   * Watches the job from `after` until its final event, pushing every event into `events` and
   * calling `onEvent`. With `reconnectForMs`, a broken stream is opened again from the last
   * sequence received (for up to that long); without, a broken stream rejects.
   */
  async function follow(
    jobId: string,
    options: { after?: number; events?: JobEvent[]; onEvent?: (e: JobEvent, all: JobEvent[]) => void; reconnectForMs?: number } = {},
  ): Promise<{ events: JobEvent[]; reconnects: number }> {
    const events = options.events ?? [];
    let last = options.after ?? 0;
    let reconnects = 0;
    const giveUp = Date.now() + (options.reconnectForMs ?? 0);
    for (;;) {
      let why: unknown;
      try {
        for await (const { event } of jobs.watch({ jobId, afterSequence: last }, { deadline: Date.now() + 45_000 })) {
          events.push(event!);
          last = event!.sequence;
          options.onEvent?.(event!, events);
          if (FINAL.has(caseOf(event!) ?? '')) return { events, reconnects };
        }
        why = new Error(`the Watch stream of ${jobId} ended after sequence ${last} without a final event`);
      } catch (err) {
        why = err;
      }
      if (!options.reconnectForMs || Date.now() > giveUp) throw why;
      reconnects++;
      await sleep(50);
    }
  }

  /** A promise that resolves with the n-th taskDone event (pass onEvent to follow). */
  function afterTaskDone(n: number) {
    let resolveIt!: (e: JobEvent) => void;
    const reached = new Promise<JobEvent>((r) => (resolveIt = r));
    const onEvent = (e: JobEvent, all: JobEvent[]) => {
      if (caseOf(e) === 'taskDone' && all.filter((x) => caseOf(x) === 'taskDone').length === n) resolveIt(e);
    };
    return { reached, onEvent };
  }

  /** taskDone events by task index; each index must appear exactly once. */
  function expectEachTaskDoneOnce(events: JobEvent[], tasks: number, what: string): void {
    const done = events.filter((e) => caseOf(e) === 'taskDone').map((e) => (e.event as { taskDone: { taskIndex: number } }).taskDone.taskIndex);
    expect([...done].sort((a, b) => a - b), `taskDone task indices of ${what}`).to.deep.equal(Array.from({ length: tasks }, (_, i) => i));
  }

  function expectGapless(events: JobEvent[], what: string): void {
    expect(events.map((e) => e.sequence), `sequences of ${what}`).to.deep.equal(events.map((_, i) => i + 1));
  }

  /** The collect result of the echo job: every record exactly once, in input order. */
  function expectEchoResult(job: Job, what: string): void {
    expect(JobState[job.state], `state of ${what} (error: ${job.error})`).to.equal('JOB_STATE_SUCCEEDED');
    const r = job.result?.result;
    if (r?.$case !== 'collect') throw new Error(`${what}: expected a collect result, got ${r?.$case}`);
    expect(r.collect.count, `records collected by ${what}`).to.equal(RECORDS);
    expect(r.collect.outputs.map((o) => o.index), `indices collected by ${what}`).to.deep.equal(Array.from({ length: RECORDS }, (_, i) => i));
    expect(job.result, `result of ${what} against the fault-free run`).to.deep.equal(baseline.result);
  }

  const retriesOf = (events: JobEvent[]) => events.filter((e) => caseOf(e) === 'taskRetried');
  /** taskDone events of an attempt after the first (a task that ran again). */
  const laterAttempts = (events: JobEvent[]) => events.filter((e) => caseOf(e) === 'taskDone' && (e.event as { taskDone: { attempt: number } }).taskDone.attempt > 1).length;
  const describeRetries = (events: JobEvent[]) =>
    retriesOf(events)
      .map((e) => {
        const r = (e.event as { taskRetried: { taskIndex: number; attempt: number; error: string } }).taskRetried;
        return `task ${r.taskIndex} attempt ${r.attempt}: ${r.error}`;
      })
      .join('; ');
  /** Lines of the balancer's log about a task of `jobId` re-routed to another worker. */
  const reroutesOf = (jobId: string) => balancer.lines(/worker failed before its first output; trying another/).filter((l) => l.includes(jobId));

  before(async function () {
    this.timeout(120_000);
    const started = Date.now();
    tmp = mkdtempSync(join(tmpdir(), 'maas-job-faults-'));
    process.on('exit', removeTmp);
    const ports = new Set<number>();
    while (ports.size < 6) ports.add(await freePort());
    const [gwPort, schedPort, balPort, aggPort, w1Port, w2Port] = [...ports];
    const at = (port: number) => `127.0.0.1:${port}`;
    const env = { MAAS_LOG_LEVEL: 'warn' };
    balancer = group.add({ name: 'balancer', entry: 'services/balancer/main.js', args: ['--port', String(balPort), '--report-interval-ms', '200'], address: at(balPort), env });
    aggregator = group.add({ name: 'aggregator', entry: 'services/aggregator/main.js', args: ['--port', String(aggPort), '--data-dir', join(tmp, 'agg'), '--output-root', join(tmp, 'output')], address: at(aggPort), env });
    workers = [w1Port, w2Port].map((port, i) =>
      group.add({
        name: `worker w${i + 1}`,
        entry: 'services/worker/main.js',
        args: ['--port', String(port), '--aggregator', at(aggPort), '--balancer', at(balPort), '--worker-id', `w${i + 1}`, '--echo-delay-ms', String(ECHO_DELAY_MS), '--input-root', join(tmp, 'input')],
        address: at(port),
        env: { ...env, MAAS_WORKER_CACHE_DIR: resolve(REPO_ROOT, '.cache/models') },
      }),
    );
    scheduler = group.add({
      name: 'scheduler',
      entry: 'services/scheduler/main.js',
      args: [
        ...['--port', String(schedPort), '--data-dir', join(tmp, 'sched'), '--aggregator', at(aggPort), '--balancer', at(balPort)],
        ...['--input-root', join(tmp, 'input'), '--output-root', join(tmp, 'output')],
        ...['--retry-base-ms', '50', '--retry-max-ms', '500', '--max-batch-tasks', '2', '--max-tasks-per-job', '2'],
      ],
      address: at(schedPort),
      env,
    });
    gateway = group.add({
      name: 'gateway',
      entry: 'gateway/main.js',
      args: ['--port', String(gwPort), '--http-port', '-1', '--scheduler', at(schedPort), '--balancer', at(balPort), '--catalog-ttl-ms', '0'],
      address: at(gwPort),
      env,
    });
    await Promise.all([balancer.start(), aggregator.start()]);
    await Promise.all([...workers.map((w) => w.start()), scheduler.start(), gateway.start()]);
    channel = openChannel(gateway.address);
    jobs = createMeshClient(JobServiceDefinition, channel);
    models = createMeshClient(ModelServiceDefinition, channel);
    await modelsReady();
    const upMs = Date.now() - started;

    // The fault-free run of the echo job.
    const t0 = Date.now();
    try {
      const { job } = await jobs.submit({ spec: echoSpec() });
      const { events } = await follow(job!.id);
      const { job: done } = await jobs.get({ jobId: job!.id });
      expect(JobState[done!.state], `fault-free echo job (error: ${done!.error})`).to.equal('JOB_STATE_SUCCEEDED');
      expect(retriesOf(events), 'retries of the fault-free run').to.have.length(0);
      expectEachTaskDoneOnce(events, TASKS, 'the fault-free run');
      baseline = { result: done!.result!, ms: Date.now() - t0 };
    } catch (err) {
      process.stderr.write(`\n--- output of the mesh processes ---\n${group.output()}\n`);
      throw err;
    }
    measured.push(`mesh up (6 processes, models listed): ${upMs} ms; fault-free echo job (${RECORDS} records, ${TASKS} tasks): ${baseline.ms} ms`);
  });

  afterEach(async function () {
    this.timeout(120_000);
    if (this.currentTest?.state === 'failed') process.stderr.write(`\n--- output of the mesh processes ---\n${group.output()}\n`);
    // Whatever a test killed runs again, so the next test starts from a whole mesh.
    const down = group.all.filter((p) => !p.running);
    if (down.length > 0) {
      await Promise.all(down.map((p) => p.start()));
      await modelsReady();
    }
  });

  after(async function () {
    this.timeout(60_000);
    channel?.close();
    try {
      await group.dispose();
    } finally {
      removeTmp();
      process.off('exit', removeTmp);
    }
    if (measured.length > 0) process.stdout.write(`\n  measured:\n${measured.map((m) => `    - ${m}\n`).join('')}`);
  });

  it('kill -9 of a worker mid-job: the job completes with the fault-free result; the lost task ran again', async () => {
    const t0 = Date.now();
    const { job } = await jobs.submit({ spec: echoSpec() });
    const mid = afterTaskDone(2);
    const watching = follow(job!.id, { onEvent: mid.onEvent });
    const second = await mid.reached;
    // That worker has just been given the next task (about 100 ms of work): kill it.
    const victimId = (second.event as { taskDone: { workerId: string } }).taskDone.workerId;
    const victim = workers.find((w) => w.spec.args.includes(victimId));
    if (!victim) throw new Error(`taskDone names worker "${victimId}", not one of this mesh's`);
    const killedAt = Date.now();
    await victim.kill9();
    const { events } = await watching;
    const ms = Date.now() - t0;
    const { job: done } = await jobs.get({ jobId: job!.id });

    expectEchoResult(done!, 'the job');
    expectGapless(events, 'the job');
    expectEachTaskDoneOnce(events, TASKS, 'the job');
    const retried = retriesOf(events);
    const rerouted = reroutesOf(job!.id);
    expect(retried.length + rerouted.length, `tasks retried (taskRetried events) or re-routed (balancer log) after ${victimId} died\n${describeRetries(events)}`).to.be.greaterThan(0);
    const doneByVictimAfterKill = events.filter((e) => caseOf(e) === 'taskDone' && e.timeMs > killedAt + 50 && (e.event as { taskDone: { workerId: string } }).taskDone.workerId === victimId);
    expect(doneByVictimAfterKill, 'tasks reported done by the dead worker').to.have.length(0);
    measured.push(
      `worker kill: job ${ms} ms (fault-free ${baseline.ms} ms); ${victimId} killed ${killedAt - t0} ms in; ${retried.length} taskRetried event(s)` +
        `${retried.length ? ` [${describeRetries(events)}]` : ''}; ${rerouted.length} re-route(s) by the balancer`,
    );
  });

  it('kill -9 of the scheduler mid-job, restarted on its port and data dir: jobs resume and complete, Watch resumes with no gap', async () => {
    const t0 = Date.now();
    const { job: a } = await jobs.submit({ spec: echoSpec() });
    const mid = afterTaskDone(2);
    const before: JobEvent[] = [];
    // Settled at once into its error (or undefined), so the rejection it gets at the kill is handled.
    const firstWatch = follow(a!.id, { events: before, onEvent: mid.onEvent }).then(
      () => undefined,
      (err: unknown) => err,
    );
    await mid.reached;
    // Accepted just before the kill: Submit has returned, so the job must survive it.
    const { job: b } = await jobs.submit({ spec: echoSpec() });
    expect(b!.id).to.be.a('string').and.not.equal('');
    const killedAt = Date.now();
    await scheduler.kill9();
    const broken = await firstWatch;
    expect(broken, 'the first Watch ends with an error when the scheduler dies').to.be.instanceOf(Error);
    const lastSeen = before.at(-1)!.sequence;
    expect(before.filter((e) => FINAL.has(caseOf(e) ?? '')), 'final events before the kill').to.have.length(0);

    const restartAt = Date.now();
    await scheduler.start();
    const servingAt = Date.now();

    // Get works after the restart (retried while the gateway's channel reconnects).
    const { value: got, retries: getRetries } = await whileUnavailable(() => jobs.get({ jobId: a!.id }));
    const firstGetAt = Date.now();
    expect(got.job!.id).to.equal(a!.id);
    expect(JobState[got.job!.state], 'job A after the restart').to.be.oneOf(['JOB_STATE_RUNNING', 'JOB_STATE_QUEUED', 'JOB_STATE_SUCCEEDED']);

    // A new Watch from the last sequence seen continues with no gap.
    const after = await follow(a!.id, { after: lastSeen, reconnectForMs: 15_000 });
    expect(after.events[0]?.sequence, 'first sequence of the new Watch').to.equal(lastSeen + 1);
    const all = [...before, ...after.events];
    expectGapless(all, 'job A across the restart');
    expect(caseOf(all.at(-1)!)).to.equal('completed');
    expectEachTaskDoneOnce(all, TASKS, 'job A');
    const { job: doneA } = await jobs.get({ jobId: a!.id });
    expectEchoResult(doneA!, 'job A');
    const aMs = Date.now() - t0;

    // The job accepted just before the kill completes too.
    const { events: bEvents } = await follow(b!.id, { reconnectForMs: 15_000 });
    expectGapless(bEvents, 'job B');
    expectEachTaskDoneOnce(bEvents, TASKS, 'job B');
    const { job: doneB } = await jobs.get({ jobId: b!.id });
    expectEchoResult(doneB!, 'job B');
    const bMs = Date.now() - t0;

    const retried = [...retriesOf(all), ...retriesOf(bEvents)];
    measured.push(
      `scheduler kill: killed ${killedAt - t0} ms in, after seq ${lastSeen} of job A; restart to SERVING ${servingAt - restartAt} ms; ` +
        `first Get through the gateway ${firstGetAt - servingAt} ms after SERVING (${getRetries} UNAVAILABLE retries); ` +
        `Watch reconnects ${after.reconnects}; job A done ${aMs} ms, job B done ${bMs} ms after A's submit (fault-free one job: ${baseline.ms} ms); ` +
        `${retried.length} taskRetried event(s); tasks done on a later attempt: job A ${laterAttempts(all)}, job B ${laterAttempts(bEvents)}`,
    );
  });

  it('kill -9 of the aggregator mid-job, restarted on its port and data dir: the jobs complete, no task lost or counted twice', async () => {
    // Expected word counts of the dataset, counted here as the wordcount mapper counts.
    const expected = new Map<string, number>();
    const records = loadDataset(DATASET);
    for (const r of records) for (const w of words(r.text)) expected.set(w, (expected.get(w) ?? 0) + 1);
    const expectedTotal = [...expected.values()].reduce((x, y) => x + y, 0);
    const wcTasks = Math.ceil(records.length / DATASET_SHARD_SIZE);

    // While the aggregator is down every commit fails and costs its task an attempt (see the
    // skipped test below); this test is about exactly-once, so tasks get the most attempts.
    const t0 = Date.now();
    const { job: e } = await jobs.submit({ spec: echoSpec({ maxAttempts: 10 }) });
    const { job: w } = await jobs.submit({ spec: wordcountSpec({ maxAttempts: 10 }) });
    const eMid = afterTaskDone(2);
    const wMid = afterTaskDone(2);
    const eWatch = follow(e!.id, { onEvent: eMid.onEvent, reconnectForMs: 30_000 });
    const wWatch = follow(w!.id, { onEvent: wMid.onEvent, reconnectForMs: 30_000 });
    await Promise.all([eMid.reached, wMid.reached]);
    const killedAt = Date.now();
    await aggregator.kill9();
    const restartAt = Date.now();
    await aggregator.start();
    const servingAt = Date.now();

    const [{ events: eEvents }, { events: wEvents }] = await Promise.all([eWatch, wWatch]);
    const ms = Date.now() - t0;
    const wDoneAtKill = wEvents.filter((x) => caseOf(x) === 'taskDone' && x.timeMs <= killedAt).length;
    const eDoneAtKill = eEvents.filter((x) => caseOf(x) === 'taskDone' && x.timeMs <= killedAt).length;

    const { job: doneE } = await jobs.get({ jobId: e!.id });
    const { job: doneW } = await jobs.get({ jobId: w!.id });
    const report = `echo job retries: ${describeRetries(eEvents) || 'none'}\nwordcount job retries: ${describeRetries(wEvents) || 'none'}`;
    expect(JobState[doneW!.state], `state of the wordcount job (error: ${doneW!.error})\n${report}`).to.equal('JOB_STATE_SUCCEEDED');
    expect(JobState[doneE!.state], `state of the echo job (error: ${doneE!.error})\n${report}`).to.equal('JOB_STATE_SUCCEEDED');
    expectEchoResult(doneE!, 'the echo job');
    expectEachTaskDoneOnce(eEvents, TASKS, 'the echo job');
    expectEachTaskDoneOnce(wEvents, wcTasks, 'the wordcount job');
    const r = doneW!.result?.result;
    if (r?.$case !== 'wordCounts') throw new Error(`expected word counts, got ${r?.$case}`);
    expect(r.wordCounts.totalWords, 'words counted in all').to.equal(expectedTotal);
    expect(r.wordCounts.records, 'records counted').to.equal(records.length);
    expect(r.wordCounts.distinctWords, 'distinct words').to.equal(expected.size);
    const got = new Map(r.wordCounts.words.map((x) => [x.word, x.count]));
    const wrong = [...expected].filter(([word, n]) => got.get(word) !== n).slice(0, 5);
    expect(wrong, 'words whose count differs from a count in this process').to.deep.equal([]);
    expect(got.size).to.equal(expected.size);

    const retried = [...retriesOf(eEvents), ...retriesOf(wEvents)];
    const highestAttempt = Math.max(0, ...retried.map((x) => (x.event as { taskRetried: { attempt: number } }).taskRetried.attempt));
    const firstDoneAfter = [...eEvents, ...wEvents].filter((x) => caseOf(x) === 'taskDone' && x.timeMs > servingAt).map((x) => x.timeMs);
    const errors = [...new Set(retried.map((x) => (x.event as { taskRetried: { error: string } }).taskRetried.error.replace(/job-[\w-]+/g, 'job-…').slice(0, 160)))];
    measured.push(
      `aggregator kill: killed ${killedAt - t0} ms in (echo job ${eDoneAtKill}/${TASKS} tasks done, wordcount job ${wDoneAtKill}/${wcTasks}); ` +
        `restart to SERVING ${servingAt - restartAt} ms; both jobs done ${ms} ms after submit; ${retried.length} taskRetried event(s) ` +
        `(echo ${retriesOf(eEvents).length}, wordcount ${retriesOf(wEvents).length}; highest failed attempt ${highestAttempt}); ` +
        `first taskDone ${firstDoneAfter.length ? Math.min(...firstDoneAfter) - servingAt : '-'} ms after the aggregator was SERVING; retry errors: ${errors.join(' | ')}; total words ${r.wordCounts.totalWords} = expected ${expectedTotal}`,
    );
  });

  // A worker whose commit finds the aggregator down keeps trying the (idempotent) commit while it
  // is UNAVAILABLE, instead of failing the task: with 3 attempts and a backoff of 50-500 ms the
  // attempts would be gone before a restarted aggregator serves again (about 1 s).
  it('an aggregator restart does not fail a small job whose commits arrive while it is down', async () => {
    const records = 10;
    const { job } = await jobs.submit({ spec: echoSpec({}, records, 5) });
    let startedIt!: () => void;
    const started = new Promise<void>((r) => (startedIt = r));
    const watching = follow(job!.id, { onEvent: (e) => caseOf(e) === 'started' && startedIt(), reconnectForMs: 30_000 });
    await started;
    // Each task maps for about 100 ms, then commits: the aggregator is down by then.
    await aggregator.kill9();
    await aggregator.start();
    const { events } = await watching;
    const { job: done } = await jobs.get({ jobId: job!.id });
    expect(JobState[done!.state], `state of the job (error: ${done!.error})\n${describeRetries(events)}`).to.equal('JOB_STATE_SUCCEEDED');
    const r = done!.result?.result;
    if (r?.$case !== 'collect') throw new Error(`expected a collect result, got ${r?.$case}`);
    expect(r.collect.outputs.map((o) => o.index)).to.deep.equal(Array.from({ length: records }, (_, i) => i));
  });
});
