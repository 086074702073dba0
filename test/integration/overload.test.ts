/**
 * Overload is refused early: with a slow model and many more concurrent calls with short
 * deadlines than the mesh can finish in time, the scheduler refuses the excess at once with
 * RESOURCE_EXHAUSTED naming the expected wait and the remaining deadline, and every call it admits
 * finishes within its deadline.
 */
import { expect } from 'chai';
import { ClientError } from 'nice-grpc';
import { scrape } from '../prometheus';
import { Status, TestMesh, startMesh } from '../support';

/** The echo model's delay before a prediction: the service time. */
const ECHO_DELAY_MS = 500;
/** The scheduler's slots. */
const SLOTS = 4;
/** The deadline of each call: 4 service times, so at most 2 waves may wait. */
const DEADLINE_MS = 2000;
/** The mesh's capacity, calls per second: its slots, each busy one service time per call. */
const CAPACITY_PER_S = (SLOTS * 1000) / ECHO_DELAY_MS;
/** Calls arrive at 4 times the capacity, one every this many ms (open loop: they do not wait for answers). */
const ARRIVAL_EVERY_MS = 1000 / (4 * CAPACITY_PER_S);
/** Calls sent: 3 s of arrivals. */
const CALLS = Math.round(3000 / ARRIVAL_EVERY_MS);

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

describe('overload at the scheduler', function () {
  this.timeout(60_000);
  let mesh: TestMesh;

  before(async () => {
    // The model list cached, as by default: a ListModels per call is not what this test measures.
    mesh = await startMesh({ workers: [{ echoDelayMs: ECHO_DELAY_MS }], maxInFlight: SLOTS, maxQueued: 1024, gateway: { catalogTtlMs: 60_000 } });
  });
  after(() => mesh.stop());

  it('refuses at once the calls whose expected wait exceeds their deadline, and the calls it admits succeed', async () => {
    // One round of calls teaches the scheduler its service time.
    await Promise.all(Array.from({ length: SLOTS }, (_, i) => mesh.inference.predict({ model: 'echo', input: `warm ${i}`, priority: 0 })));

    const begin = Date.now();
    const results = await Promise.all(
      Array.from({ length: CALLS }, async (_, i) => {
        // Each call leaves at its time in the schedule, whatever happened to the ones before.
        await new Promise((r) => setTimeout(r, begin + i * ARRIVAL_EVERY_MS - Date.now()));
        const started = Date.now();
        try {
          const r = await mesh.inference.predict({ model: 'echo', input: `call ${i}`, priority: 0 }, { deadline: started + DEADLINE_MS });
          return { ok: r.text === `call ${i}`, ms: Date.now() - started, err: undefined };
        } catch (err) {
          return { ok: false, ms: Date.now() - started, err: err as ClientError };
        }
      }),
    );
    const refused = results.filter((r) => r.err?.code === Status.RESOURCE_EXHAUSTED);
    const admitted = results.filter((r) => r.err?.code !== Status.RESOURCE_EXHAUSTED);
    const refusalP99 = percentile(refused.map((r) => r.ms), 99);
    const admittedP99 = percentile(admitted.map((r) => r.ms), 99);
    console.log(`      ${admitted.length} admitted (p99 ${admittedP99} ms), ${refused.length} refused (p50 ${percentile(refused.map((r) => r.ms), 50)} ms, p99 ${refusalP99} ms)`);

    // About the capacity gets in (3 s of it, plus the queue the deadline allows); far from all.
    expect(admitted.length).to.be.within(CAPACITY_PER_S, CALLS / 2);
    for (const r of admitted) expect(r.err?.message, 'an admitted call').to.equal(undefined);
    for (const r of admitted) expect(r.ok).to.equal(true);
    for (const r of refused) expect(r.err!.details).to.match(/^expected wait \d+ ms in the queue \(\d+ waiting ahead, 4 running, about \d+ ms each\) plus \d+ ms of service exceeds the remaining deadline of \d+ ms/);
    expect(refusalP99, 'refusal p99, ms').to.be.below(200);

    const metrics = await scrape(mesh.scheduler.metricsAddress);
    expect(metrics.value('maas_scheduler_refused_total', { reason: 'deadline_unmeetable', tenant: 'anonymous' })).to.equal(refused.length);
  });
});
