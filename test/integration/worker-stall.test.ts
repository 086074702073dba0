/**
 * A worker that stops answering (SIGSTOP: alive, connected, silent) costs its calls no more than
 * the time the balancer takes to declare it gone (3 missed load reports): calls with no output yet
 * are retried on another worker then, and calls whose output had begun end UNAVAILABLE then,
 * instead of all of them hanging until their deadline.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { ClientError } from 'nice-grpc';
import { MODEL_CACHE_DIR, Status, TestMesh, startMesh, until } from '../support';
import { ProcessGroup, ServiceProcess, freePort } from '../processes';

/** The echo model's delay before a prediction and before each token, ms. */
const ECHO_DELAY_MS = 1000;
/** The balancer's report interval: a worker silent for 3 of them is removed. */
const REPORT_INTERVAL_MS = 200;
/** The deadline of every call: far beyond what a stalled worker may cost. */
const DEADLINE_MS = 10_000;

describe('a worker that stops answering (SIGSTOP)', function () {
  this.timeout(60_000);
  let mesh: TestMesh;
  const group = new ProcessGroup();
  let tmp: string;
  let stalled: ServiceProcess | undefined;

  async function startWorkerProcess(id: string): Promise<ServiceProcess> {
    const port = await freePort();
    const worker = group.add({
      name: `worker ${id}`,
      entry: 'services/worker/main.js',
      args: ['--port', String(port), '--balancer', mesh.balancer.address, '--aggregator', mesh.aggregator.address, '--worker-id', id, '--echo-delay-ms', String(ECHO_DELAY_MS), '--input-root', join(tmp, 'input'), '--model-repository', join(tmp, 'models')],
      address: `127.0.0.1:${port}`,
      env: { MAAS_WORKER_CACHE_DIR: MODEL_CACHE_DIR },
    });
    await worker.start();
    await until(() => mesh.balancer.membership.get(id) !== undefined, 10_000, `worker ${id} joined`);
    return worker;
  }

  before(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'maas-stall-'));
    mesh = await startMesh({ workers: [], balancer: { reportIntervalMs: REPORT_INTERVAL_MS } });
  });

  after(async () => {
    if (stalled?.pid) process.kill(stalled.pid, 'SIGCONT');
    await group.dispose();
    await mesh.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('retries its calls without output on the other worker once it is removed, and ends its streams that had output UNAVAILABLE then', async () => {
    const a = await startWorkerProcess('stall-a');
    await startWorkerProcess('stall-b');
    const deadline = Date.now() + DEADLINE_MS;

    // Streams first: by the time the worker stops, each has its first token (one per second).
    const streams = Array.from({ length: 4 }, () => {
      let first!: () => void;
      const firstToken = new Promise<void>((r) => (first = r));
      const result = (async () => {
        const chunks: string[] = [];
        try {
          for await (const c of mesh.inference.generate({ model: 'echo', prompt: 'one two three four', maxTokens: 0, stop: [], priority: 0 }, { deadline })) {
            chunks.push(c.text);
            first();
          }
          return { chunks, endedAt: Date.now() };
        } catch (err) {
          first();
          return { chunks, err: err as ClientError, endedAt: Date.now() };
        }
      })();
      return { firstToken, result };
    });
    await Promise.all(streams.map((s) => s.firstToken));
    const streamsOnA = mesh.balancer.membership.get('stall-a')!.outstanding;
    expect(streamsOnA, 'streams open on the worker to stop').to.be.greaterThan(0);

    // Then unary calls, which produce no output until their one delay has passed.
    const predictStart = Date.now();
    const predicts = Array.from({ length: 8 }, (_, i) =>
      mesh.inference.predict({ model: 'echo', input: `call ${i}`, priority: 0 }, { deadline }).then(
        (r) => ({ text: r.text, endedAt: Date.now(), err: undefined }),
        (err: ClientError) => ({ text: '', endedAt: Date.now(), err }),
      ),
    );
    await until(() => mesh.balancer.membership.get('stall-a')!.outstanding > streamsOnA, 5000, 'unary calls open on the worker to stop');
    const predictsOnA = mesh.balancer.membership.get('stall-a')!.outstanding - streamsOnA;

    process.kill(a.pid!, 'SIGSTOP');
    stalled = a;
    const stoppedAt = Date.now();

    const done = await Promise.all(predicts);
    // Removal takes at most 4 report intervals after the stop (3 silent ones, checked once per
    // interval); the retry then takes one echo delay; the rest is margin for a loaded machine.
    const bound = stoppedAt - predictStart + 4 * REPORT_INTERVAL_MS + ECHO_DELAY_MS + 1500;
    for (const [i, p] of done.entries()) {
      expect(p.err?.message, `predict ${i}`).to.equal(undefined);
      expect(p.text).to.equal(`call ${i}`);
      expect(p.endedAt - predictStart, `predict ${i} took (limit ${bound} ms)`).to.be.below(bound);
    }
    expect(predictsOnA).to.be.greaterThan(0);

    const ended = await Promise.all(streams.map((s) => s.result));
    const cut = ended.filter((s) => s.err);
    const slowest = Math.max(...done.map((p) => p.endedAt - stoppedAt));
    console.log(`      ${predictsOnA} of 8 unary calls and ${streamsOnA} of 4 streams on the stopped worker; last unary call done ${slowest} ms after the stop, streams cut ${cut.map((s) => s.endedAt - stoppedAt).join(', ')} ms after it`);
    expect(cut.length, 'streams ended by the removal').to.equal(streamsOnA);
    for (const s of cut) {
      expect(s.err!.code).to.equal(Status.UNAVAILABLE);
      expect(s.err!.details).to.match(/worker stall-a was removed: no load report for \d+ ms/);
      expect(s.endedAt - stoppedAt).to.be.below(4 * REPORT_INTERVAL_MS + 1500);
    }
    for (const s of ended.filter((e) => !e.err)) expect(s.chunks.join('')).to.equal('one two three four');
    expect(mesh.balancer.membership.get('stall-a')).to.equal(undefined);
  });
});
