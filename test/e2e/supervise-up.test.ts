/**
 * End to end: `maas up` supervises the services it starts. Each test kills one service with
 * SIGKILL (a worker, the balancer, the scheduler) and checks that `maas up` logs the exit, starts
 * it again by itself, that the rest of the mesh kept running, and that calls succeed again: the
 * restarted worker rejoined the balancer, the restarted balancer got its worker back, the
 * restarted scheduler reopened its durable store (a job finished before the kill is still
 * there). Then SIGINT stops everything, with no process left behind.
 */
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Channel, ClientError, Status } from 'nice-grpc';
import { createMeshClient, openChannel } from '../../common/client.js';
import { InferenceServiceDefinition } from '../../generated/maas/v1/inference.js';
import { ModelServiceDefinition } from '../../generated/maas/v1/models.js';
import { JobServiceDefinition, JobSpec, JobState } from '../../generated/maas/v1/jobs.js';
import { MaasUp, REPO_ROOT, childPids, cmdlineOf, freePortRun, meshProcessesOn, spawnMaasUp } from '../processes.js';

/** gateway, scheduler, balancer, aggregator, one worker. */
const PORTS_NEEDED = 5;

/**
 * The environment of a `maas up` under test: this process's, minus every MAAS_* and OTEL_* setting,
 * with the built-in models' cache and stores of its own in `dataDir` (a fresh store, which a
 * restarted scheduler must reopen).
 */
function upEnv(dataDir: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('MAAS_') && !k.startsWith('OTEL_')) env[k] = v;
  env.OTEL_TRACES_EXPORTER = 'none';
  env.MAAS_WORKER_CACHE_DIR = join(REPO_ROOT, '.cache/models');
  env.MAAS_SCHEDULER_DATA_DIR = join(dataDir, 'scheduler');
  env.MAAS_AGGREGATOR_DATA_DIR = join(dataDir, 'aggregator');
  return env;
}

describe('maas up supervises its services (kill -9, each comes back by itself)', function () {
  let run: MaasUp | undefined;
  let ports: number[] = [];
  let channel: Channel | undefined;
  let dataDir = '';
  /** Every service pid seen, across restarts. */
  const seenPids = new Set<number>();
  let inference: ReturnType<typeof createMeshClient<typeof InferenceServiceDefinition>>;
  let jobs: ReturnType<typeof createMeshClient<typeof JobServiceDefinition>>;
  const killOnExit = () => run?.child.kill('SIGKILL');

  /** The pid of the service of `maas up` whose command line has `entry`. */
  function pidOf(entry: string): number {
    const pids = childPids(run!.child.pid!);
    for (const pid of pids) seenPids.add(pid);
    const found = pids.filter((pid) => cmdlineOf(pid)?.includes(entry));
    expect(found, `processes of ${entry} under maas up`).to.have.lengthOf(1);
    return found[0];
  }

  /** Resolves when `maas up` has printed `text` (after `from` characters of its output). */
  async function printed(text: string, from: number, timeoutMs: number): Promise<void> {
    const child = run!.child;
    if (run!.output.indexOf(text, from) >= 0) return;
    await new Promise<void>((resolvePrinted, reject) => {
      const check = () => {
        if (run!.output.indexOf(text, from) < 0) return;
        cleanup();
        resolvePrinted();
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`maas up did not print "${text}" within ${timeoutMs} ms\n--- output ---\n${run!.output.slice(from)}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        child.stdout!.off('data', onData);
      };
      // Registered after the collector of spawnMaasUp, so the output already holds the new data.
      const onData = () => setImmediate(check);
      child.stdout!.on('data', onData);
    });
  }

  /** A Predict through the gateway, retried while the mesh answers UNAVAILABLE; resolves with the time it took. */
  async function predictSucceeds(timeoutMs: number): Promise<number> {
    const started = Date.now();
    for (;;) {
      try {
        const r = await inference.predict({ model: 'echo', input: 'still here' }, { deadline: Date.now() + 10_000 });
        expect(r.text).to.equal('still here');
        return Date.now() - started;
      } catch (err) {
        if (!(err instanceof ClientError) || err.code !== Status.UNAVAILABLE || Date.now() - started > timeoutMs) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /**
   * kill -9 of one service; runs `whileDown` once `maas up` has seen the exit; resolves once
   * `maas up` says the service is back (with the output after the kill).
   */
  async function killAndAwaitReturn(name: string, entry: string, whileDown: () => Promise<unknown> = async () => undefined): Promise<{ before: number; after: number; log: string }> {
    const before = pidOf(entry);
    const from = run!.output.length;
    process.kill(before, 'SIGKILL');
    await printed(`maas up: ${name} exited unexpectedly (SIGKILL); restart 1 of 5`, from, 10_000);
    await whileDown();
    await printed(`maas up: ${name} is back (start 2`, from, 90_000);
    const after = pidOf(entry);
    expect(after, `pid of the restarted ${name}`).to.not.equal(before);
    return { before, after, log: run!.output.slice(from) };
  }

  const wordcountSpec = () => JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'inline', inline: { records: [{ text: 'one two two' }, { text: 'three three three' }] } }, shardSize: 1, reducer: 'sum' });

  /** How the job ends: its final event's kind, seen through Watch. */
  async function jobEnd(id: string): Promise<string> {
    for await (const { event } of jobs.watch({ jobId: id }, { deadline: Date.now() + 60_000 })) {
      if (event?.event?.$case === 'completed' || event?.event?.$case === 'failed' || event?.event?.$case === 'cancelled') return event.event.$case;
    }
    return 'stream ended';
  }

  before(async function () {
    this.timeout(240_000);
    process.on('exit', killOnExit);
    dataDir = mkdtempSync(join(tmpdir(), 'maas-supervise-'));
    const gatewayPort = await freePortRun(PORTS_NEEDED);
    ports = Array.from({ length: PORTS_NEEDED }, (_, i) => gatewayPort + i);
    const env = upEnv(dataDir);
    run = spawnMaasUp(['--host', '127.0.0.1', '--gateway-port', String(gatewayPort), '--workers', '1'], env);
    await run.ready(180_000);
    for (const entry of ['gateway/main.js', 'services/scheduler/main.js', 'services/balancer/main.js', 'services/aggregator/main.js', 'services/worker/main.js']) pidOf(entry);
    channel = openChannel(`127.0.0.1:${gatewayPort}`);
    inference = createMeshClient(InferenceServiceDefinition, channel);
    jobs = createMeshClient(JobServiceDefinition, channel);
  });

  after(async function () {
    this.timeout(120_000);
    channel?.close();
    try {
      if (run && run.child.exitCode === null && run.child.signalCode === null) {
        run.child.kill('SIGKILL');
        await run.exit;
      }
      for (const { pid } of meshProcessesOn(ports)) process.kill(pid, 'SIGKILL');
    } finally {
      process.off('exit', killOnExit);
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('prints that the mesh is up only once the workers\' models are ready: the first call succeeds', async function () {
    const { models } = await createMeshClient(ModelServiceDefinition, channel!).listModels({}, { deadline: Date.now() + 10_000 });
    expect(models.find((m) => m.name === 'echo')?.readyWorkers, 'ready workers of echo').to.equal(1);
    await predictSucceeds(0);
  });

  it('a worker killed with SIGKILL is started again and rejoins the balancer; calls succeed again, and a job submitted while it was down completes with one attempt per task', async function () {
    this.timeout(120_000);
    const gateway = pidOf('gateway/main.js');
    let jobId = '';
    const { log } = await killAndAwaitReturn('worker-1', 'services/worker/main.js', async () => {
      // UNAVAILABLE while no worker serves echo (a model offered before), never NOT_FOUND.
      const err = await inference.predict({ model: 'echo', input: 'x' }, { deadline: Date.now() + 10_000 }).then(() => undefined, (e: unknown) => e);
      if (err !== undefined) expect(err instanceof ClientError && Status[err.code], String(err)).to.equal('UNAVAILABLE');
      const { job } = await jobs.submit({ spec: JobSpec.fromPartial({ ...wordcountSpec(), maxAttempts: 1 }) }, { deadline: Date.now() + 30_000 });
      jobId = job!.id;
    });
    expect(log).to.include('worker-1 is back (start 2').and.include('joined the balancer');
    expect(pidOf('gateway/main.js'), 'the gateway kept running').to.equal(gateway);
    const ms = await predictSucceeds(30_000);
    console.log(`      (calls succeed ${ms} ms after maas up reported the worker back)`);
    expect(await jobEnd(jobId), 'the job submitted while the worker was down').to.equal('completed');
  });

  it('the balancer killed with SIGKILL is started again, its worker joins it again, and calls succeed again', async function () {
    this.timeout(120_000);
    const worker = pidOf('services/worker/main.js');
    const { log } = await killAndAwaitReturn('balancer', 'services/balancer/main.js');
    expect(log).to.include('balancer is back (start 2').and.include('1 of 1 workers joined');
    expect(pidOf('services/worker/main.js'), 'the worker kept running and rejoined on its own').to.equal(worker);
    await predictSucceeds(30_000);
  });

  it('the scheduler killed with SIGKILL is started again, reopens its store (a finished job is still there), and runs new jobs', async function () {
    this.timeout(180_000);
    const spec = wordcountSpec();
    const done = jobEnd;
    const { job } = await jobs.submit({ spec }, { deadline: Date.now() + 30_000 });
    expect(await done(job!.id)).to.equal('completed');

    await killAndAwaitReturn('scheduler', 'services/scheduler/main.js');
    const again = async () => {
      for (const started = Date.now(); ; await new Promise((r) => setTimeout(r, 100))) {
        try {
          return await jobs.get({ jobId: job!.id }, { deadline: Date.now() + 10_000 });
        } catch (err) {
          if (!(err instanceof ClientError) || err.code !== Status.UNAVAILABLE || Date.now() - started > 30_000) throw err;
        }
      }
    };
    const reread = await again();
    expect(reread.job?.state, 'the job finished before the kill, read from the reopened store').to.equal(JobState.JOB_STATE_SUCCEEDED);
    const { job: second } = await jobs.submit({ spec }, { deadline: Date.now() + 30_000 });
    expect(await done(second!.id)).to.equal('completed');
    await predictSucceeds(30_000);
  });

  it('SIGINT stops every service, restarted ones included, and leaves no process', async function () {
    this.timeout(120_000);
    for (const pid of childPids(run!.child.pid!)) seenPids.add(pid);
    expect(seenPids.size, 'service pids seen: 5 first starts and 3 restarts').to.equal(8);
    run!.child.kill('SIGINT');
    const result = await run!.exit;
    expect(result, `exit of maas up\n${run!.output.slice(-2000)}`).to.deep.equal({ code: 0, signal: null });
    const left = [...seenPids].filter((pid) => cmdlineOf(pid) !== undefined && ports.some((p) => cmdlineOf(pid)!.includes(`--port ${p}`)));
    expect(left, 'service processes left').to.deep.equal([]);
    expect(meshProcessesOn(ports), 'processes on the mesh ports').to.deep.equal([]);
  });
});

describe('maas up gives up on a crash loop', function () {
  let run: MaasUp | undefined;
  let ports: number[] = [];
  let dataDir = '';
  const killOnExit = () => run?.child.kill('SIGKILL');

  before(async function () {
    this.timeout(240_000);
    process.on('exit', killOnExit);
    dataDir = mkdtempSync(join(tmpdir(), 'maas-crash-loop-'));
    const gatewayPort = await freePortRun(PORTS_NEEDED);
    ports = Array.from({ length: PORTS_NEEDED }, (_, i) => gatewayPort + i);
    const env = upEnv(dataDir);
    run = spawnMaasUp(['--host', '127.0.0.1', '--gateway-port', String(gatewayPort), '--workers', '1', '--max-restarts', '1'], env);
    await run.ready(180_000);
  });

  after(async function () {
    this.timeout(60_000);
    try {
      if (run && run.child.exitCode === null && run.child.signalCode === null) {
        run.child.kill('SIGKILL');
        await run.exit;
      }
      for (const { pid } of meshProcessesOn(ports)) process.kill(pid, 'SIGKILL');
    } finally {
      process.off('exit', killOnExit);
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('a service that exits again before it has served for 30 s, past --max-restarts, stops the mesh with a message naming it; no process is left', async function () {
    this.timeout(120_000);
    const aggregator = () => childPids(run!.child.pid!).filter((pid) => cmdlineOf(pid)?.includes('services/aggregator/main.js'));
    const [first] = aggregator();
    process.kill(first, 'SIGKILL');
    // Restarted once (the most --max-restarts 1 allows), then killed again as soon as it runs.
    for (let at = Date.now(); ; await new Promise((r) => setTimeout(r, 50))) {
      const again = aggregator().filter((pid) => pid !== first);
      if (again.length > 0) {
        process.kill(again[0], 'SIGKILL');
        break;
      }
      if (Date.now() - at > 30_000) throw new Error(`the aggregator was not restarted\n${run!.output.slice(-2000)}`);
    }
    const result = await run!.exit;
    expect(result, 'exit of maas up').to.deep.equal({ code: 1, signal: null });
    expect(run!.output).to.include('maas up: aggregator exited unexpectedly (SIGKILL); restart 1 of 1 in 500 ms');
    expect(run!.output).to.include('maas up: aggregator exited unexpectedly (SIGKILL), 2 times in a row without serving for 30 s; giving up; stopping the mesh');
    expect(meshProcessesOn(ports), 'processes on the mesh ports').to.deep.equal([]);
  });
});
