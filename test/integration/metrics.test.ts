/**
 * Prometheus metrics of every service, scraped over HTTP from real servers and parsed as the text
 * format: each family moves as calls are made, labels hold no caller content, and the service
 * processes serve /metrics on the port their flag names and log where.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { GenerateRequest } from '../../generated/maas/v1/inference';
import { JobSpec, JobState } from '../../generated/maas/v1/jobs';
import { Status, TestMesh, collect, flakyEchoRuntime, freePort, grpcError, startMesh, until } from '../support';
import { ProcessGroup, REPO_ROOT } from '../processes';
import { Scrape, httpGet, parseMetrics, scrape } from '../prometheus';

/** Every service's metrics, scraped now. */
async function scrapeAll(mesh: TestMesh): Promise<Record<'gateway' | 'scheduler' | 'balancer' | 'aggregator' | 'worker', Scrape>> {
  const [gateway, scheduler, balancer, aggregator, worker] = await Promise.all(
    [mesh.gateway, mesh.scheduler, mesh.balancer, mesh.aggregator, mesh.workers[0]].map((s) => scrape(s.metricsAddress)),
  );
  return { gateway, scheduler, balancer, aggregator, worker };
}

const PREDICT = 'maas.v1.InferenceService/Predict';
const GENERATE = 'maas.v1.InferenceService/Generate';
const SCHEDULE = 'maas.internal.v1.SchedulerService/Schedule';

describe('metrics', function () {
  this.timeout(60000);

  describe('of a mesh', () => {
    let mesh: TestMesh;
    before(async () => {
      mesh = await startMesh({ workers: [{}] });
    });
    after(() => mesh.stop());

    it('every service serves the Prometheus text format at GET /metrics, with the process metrics, and nothing else', async () => {
      const all = await scrapeAll(mesh);
      for (const [service, s] of Object.entries(all)) {
        expect(s.types.get('maas_grpc_server_handled_total'), service).to.equal('counter');
        expect(s.types.get('maas_grpc_server_handling_seconds'), service).to.equal('histogram');
        expect(s.has('process_cpu_user_seconds_total'), `${service}: process metrics`).to.equal(true);
        expect(s.has('nodejs_eventloop_lag_seconds'), `${service}: event loop lag`).to.equal(true);
      }
      expect(all.scheduler.types.get('maas_scheduler_queued')).to.equal('gauge');
      expect(all.balancer.types.get('maas_balancer_outstanding')).to.equal('gauge');
      expect(all.worker.types.get('maas_worker_batch_size')).to.equal('histogram');
      expect(all.aggregator.types.get('maas_aggregator_commits_total')).to.equal('counter');
      const other = await httpGet(mesh.gateway.metricsAddress!, '/');
      expect(other.status).to.equal(404);
      const post = await httpGet(mesh.gateway.metricsAddress!, '/metrics', 'POST');
      expect(post.status).to.equal(405);
    });

    it('every maas_ metric the Grafana dashboard queries is a family some service exports', async () => {
      const all = await scrapeAll(mesh);
      const exported = new Set(Object.values(all).flatMap((s) => [...s.types.keys()]));
      const dashboard = readFileSync(join(REPO_ROOT, 'deploy/grafana/dashboards/maas-mesh.json'), 'utf8');
      const queried = new Set([...dashboard.matchAll(/\b(maas_[a-z_]+?)(?:_bucket|_sum|_count)?\b/g)].map((m) => m[1]));
      expect(queried.size).to.be.greaterThan(15);
      expect([...queried].filter((name) => !exported.has(name))).to.deep.equal([]);
    });

    it('a Predict counts OK for its model at the gateway and the scheduler, a pick at the balancer, a batch and an execution at the worker', async () => {
      const before = await scrapeAll(mesh);
      await mesh.inference.predict({ model: 'echo', input: 'count me', priority: 0 });
      const after = await scrapeAll(mesh);
      const delta = (s: keyof typeof after, name: string, labels?: Record<string, string>) => after[s].value(name, labels) - before[s].value(name, labels);
      expect(delta('gateway', 'maas_grpc_server_handled_total', { service: 'gateway', method: PREDICT, model: 'echo', code: 'OK' })).to.equal(1);
      expect(delta('gateway', 'maas_grpc_server_handling_seconds_count', { service: 'gateway', method: PREDICT, model: 'echo' })).to.equal(1);
      expect(delta('scheduler', 'maas_grpc_server_handled_total', { service: 'scheduler', method: SCHEDULE, model: 'echo', code: 'OK' })).to.equal(1);
      expect(delta('scheduler', 'maas_scheduler_queue_wait_seconds_count', { priority: 'normal' })).to.equal(1);
      expect(delta('balancer', 'maas_balancer_picks_total', { worker: mesh.workers[0].id })).to.equal(1);
      // The balancer decides but does not carry the call: no Route; the scheduler called the worker's Execute itself.
      expect(delta('balancer', 'maas_grpc_server_handled_total', { method: 'maas.internal.v1.BalancerService/Route', model: 'echo', code: 'OK' })).to.equal(0);
      expect(delta('worker', 'maas_grpc_server_handled_total', { service: 'worker', method: 'maas.internal.v1.WorkerService/Execute', model: 'echo', code: 'OK' })).to.equal(1);
      expect(delta('worker', 'maas_worker_batch_size_count', { model: 'echo' })).to.equal(1);
      expect(delta('worker', 'maas_worker_batch_size_sum', { model: 'echo' })).to.equal(1);
      expect(delta('worker', 'maas_worker_model_execution_seconds_count', { model: 'echo' })).to.equal(1);
      expect(after.balancer.value('maas_balancer_workers', { state: 'ready' })).to.equal(1);
      // The attempt's end reaches the balancer just after the answer reaches the client.
      const outstanding = async () => (await scrape(mesh.balancer.metricsAddress)).value('maas_balancer_outstanding', { worker: mesh.workers[0].id });
      for (let tries = 0; (await outstanding()) !== 0; tries++) {
        expect(tries, 'the balancer hears the attempt ended within 5 s').to.be.below(100);
        await new Promise((r) => setTimeout(r, 50));
      }
    });

    it('a model nobody serves counts NOT_FOUND under (unknown): the name a caller sent is no label', async () => {
      const name = 'no-such-model-q7x';
      const before = await scrape(mesh.gateway.metricsAddress);
      const err = await grpcError(mesh.inference.predict({ model: name, input: 'x', priority: 0 }));
      expect(err.code).to.equal(Status.NOT_FOUND);
      const after = await scrape(mesh.gateway.metricsAddress);
      const labels = { service: 'gateway', method: PREDICT, model: '(unknown)', code: 'NOT_FOUND' };
      expect(after.value('maas_grpc_server_handled_total', labels) - before.value('maas_grpc_server_handled_total', labels)).to.equal(1);
      expect(after.text).not.to.include(name);
    });

    it('the OpenAI HTTP API counts each request by route and status, and its time', async () => {
      const before = await scrape(mesh.gateway.metricsAddress);
      const base = `http://127.0.0.1:${mesh.gateway.httpPort}`;
      const ok = await fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'echo', prompt: 'secret-http-prompt-z9', max_tokens: 4 }) });
      expect(ok.status).to.equal(200);
      await ok.text();
      const missing = await fetch(`${base}/v1/nothing-here`);
      expect(missing.status).to.equal(404);
      await missing.text();
      // The answer is counted when its connection's response closes: wait for that, not a time.
      let after = await scrape(mesh.gateway.metricsAddress);
      for (let tries = 0; tries < 50 && after.value('maas_http_requests_total', { route: 'unknown', code: '404' }) === before.value('maas_http_requests_total', { route: 'unknown', code: '404' }); tries++) {
        after = await scrape(mesh.gateway.metricsAddress);
      }
      const delta = (name: string, labels: Record<string, string>) => after.value(name, labels) - before.value(name, labels);
      expect(delta('maas_http_requests_total', { route: '/v1/completions', code: '200' })).to.equal(1);
      expect(delta('maas_http_requests_total', { route: 'unknown', code: '404' })).to.equal(1);
      expect(delta('maas_http_request_duration_seconds_count', { route: '/v1/completions' })).to.equal(1);
      expect(after.text).not.to.include('secret-http-prompt-z9');
      expect(after.text).not.to.include('nothing-here');
    });

    it('a Generate stream counts its time to first output and each output it sends', async () => {
      const before = await scrape(mesh.gateway.metricsAddress);
      const chunks = await collect(mesh.inference.generate(GenerateRequest.fromPartial({ model: 'echo', prompt: 'one two three four', maxTokens: 16 })));
      const after = await scrape(mesh.gateway.metricsAddress);
      const labels = { service: 'gateway', method: GENERATE, model: 'echo' };
      expect(after.value('maas_grpc_server_first_output_seconds_count', labels) - before.value('maas_grpc_server_first_output_seconds_count', labels)).to.equal(1);
      expect(after.value('maas_grpc_server_stream_outputs_total', labels) - before.value('maas_grpc_server_stream_outputs_total', labels)).to.equal(chunks.length);
      expect(chunks.length).to.be.greaterThan(1);
    });

    it('a job moves the job-state counts, its duration, the records processed and the aggregator\'s commits', async () => {
      const records = ['alpha beta', 'gamma', 'delta epsilon', 'zeta', 'eta theta'].map((text) => ({ text, label: '' }));
      const before = await scrapeAll(mesh);
      const { job } = await mesh.jobs.submit({ spec: JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'inline', inline: { records } }, shardSize: 2, reducer: 'sum' }) });
      await collect(mesh.jobs.watch({ jobId: job!.id, afterSequence: 0 }));
      expect((await mesh.jobs.get({ jobId: job!.id })).job!.state).to.equal(JobState.JOB_STATE_SUCCEEDED);
      const after = await scrapeAll(mesh);
      const delta = (s: keyof typeof after, name: string, labels?: Record<string, string>) => after[s].value(name, labels) - before[s].value(name, labels);
      expect(delta('scheduler', 'maas_scheduler_jobs', { state: 'succeeded' })).to.equal(1);
      expect(after.scheduler.value('maas_scheduler_jobs', { state: 'running' })).to.equal(0);
      expect(delta('scheduler', 'maas_scheduler_jobs_accepted_total')).to.equal(1);
      expect(delta('scheduler', 'maas_scheduler_jobs_ended_total', { state: 'succeeded' })).to.equal(1);
      expect(delta('scheduler', 'maas_scheduler_job_duration_seconds_count', { state: 'succeeded' })).to.equal(1);
      expect(delta('scheduler', 'maas_scheduler_job_duration_seconds_sum', { state: 'succeeded' })).to.be.greaterThan(0);
      expect(delta('scheduler', 'maas_scheduler_records_processed_total')).to.equal(records.length);
      expect(delta('aggregator', 'maas_aggregator_commits_total', { reducer: 'sum' })).to.equal(3);
      expect(delta('aggregator', 'maas_aggregator_jobs_finalized_total', { reducer: 'sum' })).to.equal(1);
      expect(delta('worker', 'maas_worker_model_execution_seconds_count', { model: 'mapper:wordcount' })).to.equal(3);
      expect(delta('gateway', 'maas_grpc_server_handled_total', { method: 'maas.v1.JobService/Submit', code: 'OK' })).to.equal(1);
    });

    it('no prompt, input or record a caller sends appears in any scrape', async () => {
      const secret = 'zq-private-4f1c9e';
      await collect(mesh.inference.generate(GenerateRequest.fromPartial({ model: 'echo', prompt: `${secret} generate`, maxTokens: 4 })));
      await mesh.inference.predict({ model: 'echo', input: `${secret} predict`, priority: 0, affinityKey: `${secret}-key` });
      await grpcError(mesh.inference.predict({ model: `${secret}-model`, input: secret, priority: 0 }));
      const { job } = await mesh.jobs.submit({ spec: JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'inline', inline: { records: [{ text: `${secret} record`, label: '' }] } }, reducer: 'sum' }) });
      await collect(mesh.jobs.watch({ jobId: job!.id, afterSequence: 0 }));
      const all = await scrapeAll(mesh);
      for (const [service, s] of Object.entries(all)) {
        expect(s.text, service).not.to.include(secret);
        expect(s.text, service).not.to.include(job!.id);
      }
      // The calls were counted all the same.
      expect(all.gateway.value('maas_grpc_server_handled_total', { method: GENERATE, model: 'echo', code: 'OK' })).to.be.greaterThan(0);
    });
  });

  describe('of admission and balancing', () => {
    it('the scheduler shows requests in flight and counts a refusal by reason and tenant', async () => {
      const mesh = await startMesh({ workers: [{ echoDelayMs: 300 }], maxInFlight: 1, maxQueued: 0 });
      try {
        const first = collect(mesh.inference.generate(GenerateRequest.fromPartial({ model: 'echo', prompt: 'slow words here', maxTokens: 3 })));
        await until(() => mesh.scheduler.queue.stats().inFlight === 1, 5000, 'the first call to hold the permit');
        const during = await scrape(mesh.scheduler.metricsAddress);
        expect(during.value('maas_scheduler_in_flight')).to.equal(1);
        expect(during.value('maas_scheduler_queued')).to.equal(0);
        const err = await grpcError(collect(mesh.inference.generate(GenerateRequest.fromPartial({ model: 'echo', prompt: 'refused', maxTokens: 1 }))));
        expect(err.code).to.equal(Status.RESOURCE_EXHAUSTED);
        await first;
        const after = await scrape(mesh.scheduler.metricsAddress);
        expect(after.value('maas_scheduler_refused_total', { reason: 'queue_full', tenant: 'anonymous' })).to.equal(1);
        expect(after.value('maas_grpc_server_handled_total', { method: SCHEDULE, model: 'echo', code: 'RESOURCE_EXHAUSTED' })).to.equal(1);
        expect(after.value('maas_scheduler_in_flight')).to.equal(0);
        const gateway = await scrape(mesh.gateway.metricsAddress);
        expect(gateway.value('maas_grpc_server_handled_total', { method: GENERATE, model: 'echo', code: 'RESOURCE_EXHAUSTED' })).to.equal(1);
      } finally {
        await mesh.stop();
      }
    });

    it('the balancer counts retries and the ejection of a failing worker, and picks per worker', async () => {
      const state = { failing: true };
      const flaky = flakyEchoRuntime(state);
      const mesh = await startMesh({ policy: 'round_robin', workers: [{ runtime: flaky }, {}], balancer: { ejectAfterFailures: 3, ejectionBaseMs: 60000 } });
      try {
        const [bad, good] = mesh.workers;
        for (let i = 0; i < 8; i++) await mesh.inference.predict({ model: 'echo', input: `x${i}`, priority: 0 });
        const s = await scrape(mesh.balancer.metricsAddress);
        expect(s.value('maas_balancer_retries_total')).to.equal(3);
        expect(s.value('maas_balancer_ejections_total', { worker: bad.id, reason: 'consecutive_failures' })).to.equal(1);
        expect(s.value('maas_balancer_picks_total', { worker: bad.id })).to.equal(3);
        expect(s.value('maas_balancer_picks_total', { worker: good.id })).to.equal(8);
        expect(s.value('maas_balancer_workers', { state: 'ejected' })).to.equal(1);
        // The failing worker's own count: its calls failed INTERNAL, each counted under the model.
        const w = await scrape(bad.metricsAddress);
        expect(w.value('maas_grpc_server_handled_total', { method: 'maas.internal.v1.WorkerService/Execute', model: 'echo', code: 'INTERNAL' })).to.equal(3);
      } finally {
        await mesh.stop();
      }
    });

    it('the balancer counts a hedge', async () => {
      // Both slow: whichever the first pick is, the hedge goes out after 30 ms.
      const mesh = await startMesh({ policy: 'round_robin', workers: [{ echoDelayMs: 400 }, { echoDelayMs: 400 }], balancer: { hedgeDelayMs: 30 } });
      try {
        await mesh.inference.predict({ model: 'echo', input: 'hedged', priority: 0 });
        const s = await scrape(mesh.balancer.metricsAddress);
        expect(s.value('maas_balancer_hedges_total')).to.equal(1);
        expect(s.value('maas_balancer_picks_total')).to.equal(2);
      } finally {
        await mesh.stop();
      }
    });
  });

  describe('of service processes', () => {
    const group = new ProcessGroup();
    const dir = mkdtempSync(join(tmpdir(), 'maas-metrics-'));
    after(async () => {
      await group.killAll();
      rmSync(dir, { recursive: true, force: true });
    });

    it('each serves /metrics on --metrics-port (or MAAS_<SERVICE>_METRICS_PORT), logs the address, and -1 turns it off', async () => {
      const [grpc1, grpc2, grpc3, metricsPort] = [await freePort(), await freePort(), await freePort(), await freePort()];
      const balancer = group.add({ name: 'balancer', entry: 'services/balancer/main.js', args: ['--port', String(grpc1), '--metrics-port', String(metricsPort)], address: `127.0.0.1:${grpc1}` });
      const aggregator = group.add({
        name: 'aggregator',
        entry: 'services/aggregator/main.js',
        args: ['--port', String(grpc2), '--data-dir', join(dir, 'agg'), '--output-root', join(dir, 'out')],
        address: `127.0.0.1:${grpc2}`,
        env: { MAAS_AGGREGATOR_METRICS_PORT: '-1' },
      });
      const scheduler = group.add({
        name: 'scheduler',
        entry: 'services/scheduler/main.js',
        args: ['--port', String(grpc3), '--balancer', `127.0.0.1:${grpc1}`, '--aggregator', `127.0.0.1:${grpc2}`, '--data-dir', join(dir, 'sched'), '--input-root', join(dir, 'in'), '--output-root', join(dir, 'out')],
        address: `127.0.0.1:${grpc3}`,
      });
      await Promise.all([balancer.start(), aggregator.start(), scheduler.start()]);
      expect(balancer.lines(/metrics on /).join('\n')).to.include(`http://127.0.0.1:${metricsPort}/metrics`);
      const s = await scrape(`127.0.0.1:${metricsPort}`);
      expect(s.has('process_resident_memory_bytes')).to.equal(true);
      expect(s.value('maas_balancer_workers', { state: 'ready' })).to.equal(0);
      expect(aggregator.lines(/metrics on /)).to.deep.equal([]);
      // The scheduler was given port 0 (the test environment's MAAS_SCHEDULER_METRICS_PORT): a free one, logged.
      const logged = /metrics on http:\/\/(127\.0\.0\.1:\d+)\/metrics/.exec(scheduler.lines(/metrics on /).join('\n'));
      expect(logged, scheduler.output()).to.not.equal(null);
      const sched = await scrape(logged![1]);
      expect(sched.value('maas_scheduler_jobs', { state: 'queued' })).to.equal(0);
      expect(parseMetrics(sched.text).types.get('maas_scheduler_refused_total')).to.equal('counter');
    });

    it('a bad --metrics-port stops the start naming the setting', async () => {
      const p = group.add({ name: 'bad balancer', entry: 'services/balancer/main.js', args: ['--port', '0', '--metrics-port', '70000'], address: '127.0.0.1:1' });
      const err = await p.start(10000).then(() => undefined, (e: Error) => e);
      expect(err?.message).to.match(/invalid --metrics-port \(metricsPort\): expected an integer from -1 to 65535, given 70000/);
    });
  });
});
