/** Batch jobs through the mesh, in one process: submit, watch, reduce, cancel, bad input, callbacks. */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, IncomingMessage, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { expect } from 'chai';
import { Webhook } from 'standardwebhooks';
import { createMeshClient, openChannel } from '../../common/client';
import { SchedulerServiceDefinition } from '../../generated/maas/internal/v1/scheduler';
import { CallbackState, Job, JobEvent, JobSpec, JobState } from '../../generated/maas/v1/jobs';
import { words } from '../../services/worker/map';
import { TaskEnd } from '../../services/worker/server';
import { Status, TestMesh, collect, grpcError, nextEvent, startMesh } from '../support';

const CORPUS = [
  'The quick brown fox jumps over the lazy dog.',
  "Don't panic: the answer is 42, the question unknown.",
  'A fox, a dog, and a cat walk into a bar.',
  'Free money!!! Click here, the offer ends soon.',
  'Meeting moved to Tuesday; the agenda is attached.',
  'the THE The tHe',
  'Numbers like 3 and 3.14 and 1e9 count as words too',
];

const inline = (texts: string[], labels: string[] = []) => ({ $case: 'inline' as const, inline: { records: texts.map((text, i) => ({ text, label: labels[i] ?? '' })) } });

/** A Standard Webhooks secret for the tests' scheduler. */
const SECRET = `whsec_${randomBytes(32).toString('base64')}`;

/** An HTTP receiver on 127.0.0.1 that records each request and answers 200; emits `delivered` on its server. */
async function startReceiver(): Promise<{ server: Server; port: number; received: { body: string; headers: Record<string, string> }[]; close(): Promise<void> }> {
  const received: { body: string; headers: Record<string, string> }[] = [];
  const server = createServer(async (req: IncomingMessage, res) => {
    let body = '';
    for await (const chunk of req) body += chunk;
    received.push({ body, headers: req.headers as Record<string, string> });
    res.writeHead(200).end('{}');
    server.emit('delivered');
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    server,
    port: (server.address() as { port: number }).port,
    received,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

interface Settled {
  job: string;
  state: 'delivered' | 'failed';
  error?: string;
}

/** Records every callback delivery that ends from now on; `wait(id)` resolves with that job's. */
function recordSettled(mesh: TestMesh): { wait(id: string): Promise<Settled>; stop(): void } {
  const seen = new Map<string, Settled>();
  const waiters = new Map<string, (s: Settled) => void>();
  const on = (s: Settled) => {
    seen.set(s.job, s);
    waiters.get(s.job)?.(s);
  };
  mesh.scheduler.jobs.callbacks.on('settled', on);
  return {
    wait: (id) => (seen.has(id) ? Promise.resolve(seen.get(id)!) : new Promise((resolve) => waiters.set(id, resolve))),
    stop: () => mesh.scheduler.jobs.callbacks.off('settled', on),
  };
}

/** Submits and waits for the job's end through Watch; returns the job and every event. */
async function run(mesh: TestMesh, spec: Partial<JobSpec>): Promise<{ job: Job; events: JobEvent[] }> {
  const { job } = await mesh.jobs.submit({ spec: JobSpec.fromPartial(spec) });
  const events = (await collect(mesh.jobs.watch({ jobId: job!.id, afterSequence: 0 }))).map((r) => r.event!);
  return { job: (await mesh.jobs.get({ jobId: job!.id })).job!, events };
}

describe('batch jobs through the mesh', function () {
  this.timeout(60000);

  describe('with echo workers', () => {
    let mesh: TestMesh;
    before(async () => {
      mesh = await startMesh({ workers: [{}, {}] });
    });
    after(() => mesh.stop());

    it('word count over a small corpus equals a single-process count', async () => {
      const { job, events } = await run(mesh, { map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(CORPUS), shardSize: 2, reducer: 'sum' });
      expect(job.state).to.equal(JobState.JOB_STATE_SUCCEEDED);
      const expected = new Map<string, number>();
      for (const text of CORPUS) for (const w of words(text)) expected.set(w, (expected.get(w) ?? 0) + 1);
      const got = job.result!.result!;
      if (got.$case !== 'wordCounts') throw new Error(`expected word counts, got ${got.$case}`);
      expect(new Map(got.wordCounts.words.map((w) => [w.word, w.count]))).to.deep.equal(expected);
      expect(got.wordCounts.totalWords).to.equal([...expected.values()].reduce((a, b) => a + b, 0));
      expect(got.wordCounts.records).to.equal(CORPUS.length);
      expect(events.filter((e) => e.event?.$case === 'taskDone')).to.have.length(4);
    });

    it('a late watcher gets every event, gapless from 1, from accepted to completed', async () => {
      const { job } = await run(mesh, { map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(CORPUS), shardSize: 3 });
      const replay = (await collect(mesh.jobs.watch({ jobId: job.id, afterSequence: 0 }))).map((r) => r.event!);
      expect(replay.map((e) => e.sequence)).to.deep.equal(replay.map((_, i) => i + 1));
      expect(replay[0].event?.$case).to.equal('accepted');
      expect(replay.at(-1)!.event?.$case).to.equal('completed');
      const resumed = (await collect(mesh.jobs.watch({ jobId: job.id, afterSequence: 3 }))).map((r) => r.event!.sequence);
      expect(resumed).to.deep.equal(replay.slice(3).map((e) => e.sequence));
    });

    it('collect writes outputs to the file in input order, in the tenant\'s folder under the output root', async () => {
      const outputFile = 'runs/out.jsonl';
      const texts = Array.from({ length: 25 }, (_, i) => `record number ${i}`);
      const { job } = await run(mesh, { map: { $case: 'model', model: 'echo' }, input: inline(texts), shardSize: 4, reducer: 'collect', outputFile });
      expect(job.state).to.equal(JobState.JOB_STATE_SUCCEEDED);
      const lines = readFileSync(join(mesh.outputRoot, 'anonymous', outputFile), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
      expect(lines.map((l) => l.index)).to.deep.equal(texts.map((_, i) => i));
    });

    it('reads a JSONL file and refuses a malformed one at submit with the line number', async () => {
      const dir = mkdtempSync(join(mesh.inputRoot, 'jobs-'));
      try {
        const good = join(dir, 'good.jsonl');
        writeFileSync(good, CORPUS.map((text) => JSON.stringify({ text })).join('\n') + '\n');
        const { job } = await run(mesh, { map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'file', file: good } });
        expect(job.state).to.equal(JobState.JOB_STATE_SUCCEEDED);
        expect(job.recordsTotal).to.equal(CORPUS.length);
        const bad = join(dir, 'bad.jsonl');
        writeFileSync(bad, `${JSON.stringify({ text: 'fine' })}\n{"text": oops}\n`);
        const badRelative = relative(mesh.inputRoot, bad);
        const err = await grpcError(mesh.jobs.submit({ spec: JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'file', file: badRelative } }) }));
        expect(err.code).to.equal(Status.INVALID_ARGUMENT);
        expect(err.details).to.equal(`spec.file "${badRelative}" line 2: malformed JSON`);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    const refusals: [string, Partial<JobSpec>, Status, RegExp][] = [
      ['an unknown dataset', { map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'dataset', dataset: 'imagenet' } }, Status.NOT_FOUND, /dataset "imagenet" not found/],
      ['an unknown mapper', { map: { $case: 'mapper', mapper: 'grep' }, input: inline(['x']) }, Status.NOT_FOUND, /mapper "grep" not found; available: wordcount/],
      ['an unknown model', { map: { $case: 'model', model: 'gpt-17' }, input: inline(['x']) }, Status.NOT_FOUND, /model "gpt-17" not found/],
      ['an unknown reducer', { map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(['x']), reducer: 'median' }, Status.NOT_FOUND, /reducer "median" not found/],
      ['a shard size of zero', { map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(['x']), shardSize: 0 }, Status.INVALID_ARGUMENT, /^spec.shard_size must be from 1 to 100000, given 0$/],
      ['a missing file', { map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'file', file: 'nonexistent/in.jsonl' } }, Status.NOT_FOUND, /^spec\.file "nonexistent\/in\.jsonl" does not exist$/],
      ['a reducer that does not fit the map', { map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(['x']), reducer: 'accuracy' }, Status.INVALID_ARGUMENT, /^spec.reducer must be one of sum, top_k, mean/],
      ['no input', { map: { $case: 'mapper', mapper: 'wordcount' } }, Status.INVALID_ARGUMENT, /^spec.input must set one of inline, file or dataset/],
      ['a callback that is not http', { map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(['x']), callbackUrl: 'ftp://example/x' }, Status.INVALID_ARGUMENT, /^spec.callback_url must use http or https, not "ftp", given "ftp:\/\/example\/x"$/],
      ['a callback to the metadata address', { map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(['x']), callbackUrl: 'http://169.254.169.254/latest/meta-data/' }, Status.INVALID_ARGUMENT, /^spec.callback_url must not name a link-local address \(169\.254\.169\.254\) unless the callback allowlist permits it, given "http:\/\/169\.254\.169\.254\/latest\/meta-data\/"$/],
      ['a callback to 127.0.0.1 as an integer', { map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(['x']), callbackUrl: 'http://2130706433:50052/' }, Status.INVALID_ARGUMENT, /^spec.callback_url must not name a loopback address \(127\.0\.0\.1\)/],
      ['a callback to IPv4-mapped loopback', { map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(['x']), callbackUrl: 'http://[::ffff:127.0.0.1]:50053/' }, Status.INVALID_ARGUMENT, /^spec.callback_url must not name a loopback address \(::ffff:7f00:1\)/],
      ['a callback to 0.0.0.0', { map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(['x']), callbackUrl: 'http://0.0.0.0:50054/' }, Status.INVALID_ARGUMENT, /^spec.callback_url must not name an unspecified address \(0\.0\.0\.0\)/],
      ['a callback to a private address', { map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(['x']), callbackUrl: 'https://10.1.2.3/hook' }, Status.INVALID_ARGUMENT, /^spec.callback_url must not name a private address \(10\.1\.2\.3\)/],
      ['a callback with credentials', { map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(['x']), callbackUrl: 'https://user:pw@hooks.example.com/' }, Status.INVALID_ARGUMENT, /^spec.callback_url must not carry a user name or password, given "https:\/\/user:pw@hooks\.example\.com\/"$/],
      ['an overlong callback URL', { map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(['x']), callbackUrl: `https://hooks.example.com/${'a'.repeat(3000)}` }, Status.INVALID_ARGUMENT, /^spec.callback_url must be at most 2048 characters, given a string of 3026 characters$/],
    ];
    for (const [what, spec, code, message] of refusals) {
      it(`refuses ${what} at submit`, async () => {
        const err = await grpcError(mesh.jobs.submit({ spec: JobSpec.fromPartial(spec) }));
        expect(Status[err.code]).to.equal(Status[code]);
        expect(err.details).to.match(message);
      });
    }

    it('refuses a callback to a loopback receiver at submit when the allowlist does not permit it', async () => {
      const receiver = await startReceiver();
      try {
        const err = await grpcError(mesh.jobs.submit({ spec: JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(['x']), callbackUrl: `http://127.0.0.1:${receiver.port}/hook` }) }));
        expect(Status[err.code]).to.equal(Status[Status.INVALID_ARGUMENT]);
        expect(err.details).to.match(/^spec\.callback_url must not name a loopback address \(127\.0\.0\.1\) unless the callback allowlist permits it/);
        expect(receiver.received).to.have.length(0);
      } finally {
        await receiver.close();
      }
    });

    it('runs a job whose callback host resolves to loopback, refuses the delivery at connect time and records why', async () => {
      const receiver = await startReceiver();
      const settled = recordSettled(mesh);
      try {
        const { job: submitted } = await mesh.jobs.submit({ spec: JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(CORPUS), callbackUrl: `http://localhost:${receiver.port}/hook` }) });
        await collect(mesh.jobs.watch({ jobId: submitted!.id, afterSequence: 0 }));
        expect((await settled.wait(submitted!.id)).state).to.equal('failed');
        const { job } = await mesh.jobs.get({ jobId: submitted!.id });
        expect(job!.state).to.equal(JobState.JOB_STATE_SUCCEEDED);
        expect(job!.result?.result?.$case).to.equal('wordCounts');
        expect(job!.callback!.state).to.equal(CallbackState.CALLBACK_STATE_FAILED);
        expect(job!.callback!.error).to.match(/^refused: localhost resolves to (127\.0\.0\.1|::1), a loopback address, which the callback allowlist does not permit$/);
        expect(receiver.received).to.have.length(0);
      } finally {
        settled.stop();
        await receiver.close();
      }
    });

    it('the scheduler refuses a forbidden callback address itself, when its port is called directly', async () => {
      const channel = openChannel(mesh.scheduler.address);
      try {
        const scheduler = createMeshClient(SchedulerServiceDefinition, channel);
        const spec = JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(['x']), shardSize: 500, reducer: 'top_k', callbackUrl: 'http://169.254.169.254/latest/meta-data/' });
        const err = await grpcError(scheduler.submitJob({ tenant: 'anonymous', spec }));
        expect(Status[err.code]).to.equal(Status[Status.INVALID_ARGUMENT]);
        expect(err.details).to.match(/^spec\.callback_url must not name a link-local address \(169\.254\.169\.254\)/);
      } finally {
        channel.close();
      }
    });

    it('answers NOT_FOUND for an unknown job id', async () => {
      const err = await grpcError(mesh.jobs.get({ jobId: 'job-nope' }));
      expect(err.code).to.equal(Status.NOT_FOUND);
    });

    it('lists jobs newest first', async () => {
      const { job } = await mesh.jobs.submit({ spec: JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(['a b']) }) });
      const { jobs } = await mesh.jobs.list({ pageSize: 0, pageToken: '' });
      expect(jobs[0].id).to.equal(job!.id);
      await collect(mesh.jobs.watch({ jobId: job!.id, afterSequence: 0 }));
    });
  });

  describe('cancellation', () => {
    it('cancel stops the running tasks and ends the job CANCELLED', async () => {
      const mesh = await startMesh({ workers: [{ echoDelayMs: 200 }] });
      try {
        const worker = mesh.workers[0];
        const started = nextEvent(worker.activity, 'task-start');
        const texts = Array.from({ length: 40 }, (_, i) => `r${i}`);
        const { job } = await mesh.jobs.submit({ spec: JobSpec.fromPartial({ map: { $case: 'model', model: 'echo' }, input: inline(texts), shardSize: 10 }) });
        await started;
        const ended = nextEvent<TaskEnd>(worker.activity, 'task-end');
        const { job: cancelled } = await mesh.jobs.cancel({ jobId: job!.id });
        expect(cancelled!.state).to.equal(JobState.JOB_STATE_CANCELLED);
        expect((await ended).outcome).to.equal('cancelled');
        const events = (await collect(mesh.jobs.watch({ jobId: job!.id, afterSequence: 0 }))).map((r) => r.event!);
        expect(events.at(-1)!.event?.$case).to.equal('cancelled');
        expect(events.filter((e) => e.event?.$case === 'taskDone')).to.have.length(0);
        expect(worker.inFlight()).to.equal(0);
      } finally {
        await mesh.stop();
      }
    });
  });

  describe('with the built-in models', () => {
    let mesh: TestMesh;
    before(async () => {
      // The allowlist lets callbacks reach the test's loopback receiver; both services take it.
      mesh = await startMesh({ workers: [{ builtin: true }], scheduler: { callbackSecret: SECRET, callbackAllow: '127.0.0.1/32' }, gateway: { callbackAllow: '127.0.0.1/32' } });
    });
    after(() => mesh.stop());

    it('an accuracy job equals the online Predict results on the same records', async () => {
      const texts = ['WIN A FREE PRIZE NOW!!! click here', 'Hi team, minutes of the meeting attached', 'Cheap meds online, no prescription', 'The build is broken again, see the log', 'You have been selected for a cash reward'];
      const labels = ['spam', 'ham', 'spam', 'ham', 'ham'];
      const { job } = await run(mesh, { map: { $case: 'model', model: 'spam-nb' }, input: inline(texts, labels), shardSize: 2, reducer: 'accuracy' });
      const online = await Promise.all(texts.map((input) => mesh.inference.predict({ model: 'spam-nb', input, priority: 0 })));
      const expected = new Map<string, number>();
      online.forEach((p, i) => expected.set(`${labels[i]}->${p.label}`, (expected.get(`${labels[i]}->${p.label}`) ?? 0) + 1));
      const r = job.result!.result!;
      if (r.$case !== 'accuracy') throw new Error(`expected accuracy, got ${r.$case}`);
      expect(new Map(r.accuracy.confusion.map((c) => [`${c.actual}->${c.predicted}`, c.count]))).to.deep.equal(expected);
      const correct = online.filter((p, i) => p.label === labels[i]).length;
      expect(r.accuracy.accuracy).to.be.closeTo(correct / texts.length, 1e-9);
    });

    it('calls an allowed callback URL with the final job, signed per Standard Webhooks, and records it delivered', async () => {
      const receiver = await startReceiver();
      const settled = recordSettled(mesh);
      try {
        const url = `http://127.0.0.1:${receiver.port}/hook`;
        const { job } = await run(mesh, { map: { $case: 'mapper', mapper: 'wordcount' }, input: inline(CORPUS), callbackUrl: url });
        expect(await settled.wait(job.id)).to.deep.equal({ job: job.id, state: 'delivered' });
        const [{ body, headers }] = receiver.received;
        const verified = new Webhook(SECRET).verify(body, headers) as { job: { id: string; state: string } };
        expect(verified.job.id).to.equal(job.id);
        expect(verified.job.state).to.equal('JOB_STATE_SUCCEEDED');
        expect(headers['webhook-id']).to.equal(`${job.id}-finished`);
        expect(() => new Webhook(SECRET).verify(body.replace('SUCCEEDED', 'FAILED'), headers)).to.throw('No matching signature found');
        const { job: after } = await mesh.jobs.get({ jobId: job.id });
        expect(after!.callback).to.deep.equal({ state: CallbackState.CALLBACK_STATE_DELIVERED, error: '' });
      } finally {
        settled.stop();
        await receiver.close();
      }
    });

  });
});
