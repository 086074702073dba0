/**
 * End to end, logs as an operator reads them: `maas up` runs the real mesh (each service its own
 * process) with debug logs in JSON and traces exported over OTLP/HTTP to a receiver this test
 * runs. Checks that every line written while serving a traced call carries that call's trace_id and
 * the span_id of a span of that service in the trace, and that no prompt, input or output of a
 * Generate, a Predict and a job reaches any log line or any span (attributes, events, status)
 * unless --log-content is on.
 */
import { expect } from 'chai';
import { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { resolve } from 'node:path';
import { Channel, ClientError, Metadata, Status } from 'nice-grpc';
import { createMeshClient, openChannel } from '../../common/client.js';
import { InferenceServiceDefinition } from '../../generated/maas/v1/inference.js';
import { JobServiceDefinition, JobSpec, JobState } from '../../generated/maas/v1/jobs.js';
import { MaasUp, ProcessGroup, freePort, freePortRun, spawnMaasUp } from '../processes.js';
import { OtlpReceiver } from '../otlp-receiver';

const repoRoot = resolve(__dirname, '../../..');
const WORKERS = 2;
const PORTS_NEEDED = 4 + WORKERS;

/** The JSON lines of `maas up`'s output (`[service] {...}`), with the service that wrote each. */
function jsonLines(output: string): Array<{ from: string; line: Record<string, unknown> }> {
  const out: Array<{ from: string; line: Record<string, unknown> }> = [];
  for (const raw of output.split('\n')) {
    const m = /^\[([^\]]+)\] (\{.*\})$/.exec(raw);
    if (m) out.push({ from: m[1], line: JSON.parse(m[2]) as Record<string, unknown> });
  }
  return out;
}

/** Resolves once `check()` holds, checked every 50 ms; rejects with `what()` after `timeoutMs`. */
async function until(check: () => boolean, timeoutMs: number, what: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`gave up after ${timeoutMs} ms: ${what()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('logs: JSON lines with the trace of the call, and no caller content', function () {
  // Distinct per run, so nothing but this run's calls can contain them.
  const tag = randomBytes(6).toString('hex');
  const prompt = `confidential prompt ${tag}`;
  const predictInput = `confidential input ${tag}`;
  const recordWord = `confidentialrecord${tag}`;
  const secrets = [tag, prompt, predictInput, recordWord];
  const traceId = randomBytes(16).toString('hex');
  const callerSpanId = randomBytes(8).toString('hex');

  let receiver: OtlpReceiver;
  let run: MaasUp | undefined;
  let up: ChildProcess | undefined;
  let channel: Channel | undefined;
  let schedulerPort = 0;
  let balancerPort = 0;
  const group = new ProcessGroup();
  const killOnExit = () => up?.kill('SIGKILL');

  before(async function () {
    this.timeout(180_000);
    process.on('exit', killOnExit);
    receiver = new OtlpReceiver();
    await receiver.start();
    const gatewayPort = await freePortRun(PORTS_NEEDED);
    schedulerPort = gatewayPort + 1;
    balancerPort = gatewayPort + 2;
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('MAAS_') && !k.startsWith('OTEL_')) env[k] = v;
    env.OTEL_EXPORTER_OTLP_ENDPOINT = `http://127.0.0.1:${receiver.port}`;
    env.MAAS_WORKER_CACHE_DIR = resolve(repoRoot, '.cache/models');
    env.MAAS_LOG_LEVEL = 'debug';
    env.MAAS_LOG_FORMAT = 'json';
    run = spawnMaasUp(['--host', '127.0.0.1', '--gateway-port', String(gatewayPort), '--workers', String(WORKERS)], env);
    up = run.child;
    await run.ready(120_000);
    channel = openChannel(`127.0.0.1:${gatewayPort}`);
  });

  after(async function () {
    this.timeout(120_000);
    channel?.close();
    await group.dispose();
    if (up && up.exitCode === null && up.signalCode === null) {
      up.kill('SIGINT');
      await run!.exit;
    }
    process.off('exit', killOnExit);
    await receiver?.close();
  });

  it('writes every line of a traced call with its trace_id and the span_id of that service\'s span', async function () {
    this.timeout(60_000);
    const inference = createMeshClient(InferenceServiceDefinition, channel!);
    const metadata = Metadata({ traceparent: `00-${traceId}-${callerSpanId}-01` });
    for await (const _chunk of inference.generate({ model: 'echo', prompt, maxTokens: 8 }, { metadata, deadline: Date.now() + 20_000 })) {
      // drain the stream
    }
    const hops: Array<[string, string, string]> = [
      // [maas up's name for the process, OTLP service name, debug message]
      ['gateway', 'maas-gateway', 'generate'],
      ['scheduler', 'maas-scheduler', 'admitted'],
      ['balancer', 'maas-balancer', 'routed'],
      ['worker-', 'maas-worker', 'task ended'],
    ];
    const traced = () => jsonLines(run!.output).filter((l) => l.line.trace_id === traceId);
    const spansOf = (service: string) => receiver.spans.filter((s) => s.traceId === traceId && s.service === service);
    const describe = () => `lines of the trace:\n${traced().map((l) => `  [${l.from}] ${JSON.stringify(l.line)}`).join('\n')}\nspans:\n${receiver.spans.filter((s) => s.traceId === traceId).map((s) => `  ${s.service} ${s.name} ${s.spanId}`).join('\n')}`;
    // Each service exports its spans in batches of its own: wait for the span each line names (the
    // balancer's routing span may come after its ListModels span of the same trace).
    const lineOf = (from: string, msg: string) => traced().find((l) => l.from.startsWith(from) && l.line.msg === msg);
    await until(() => hops.every(([from, service, msg]) => spansOf(service).some((s) => s.spanId === lineOf(from, msg)?.line.span_id)), 20_000, describe);

    for (const [from, service, msg] of hops) {
      const line = lineOf(from, msg)!;
      expect(Object.keys(line.line), describe()).to.include.members(['time', 'level', 'service', 'msg', 'trace_id', 'span_id']);
      expect(line.line.level, `${from} ${msg}`).to.equal('debug');
      expect(spansOf(service).map((s) => s.spanId), `span_id of [${line.from}] "${msg}" is a span of ${service} in the trace\n${describe()}`).to.include(line.line.span_id);
    }
    // The gateway's line is written in its server span, the child of the caller's.
    const gatewayLine = traced().find((l) => l.from === 'gateway')!;
    const root = spansOf('maas-gateway').find((s) => s.name === 'maas.v1.InferenceService/Generate');
    expect(gatewayLine.line.span_id, describe()).to.equal(root?.spanId);

    // Every line that names the call's request id was written inside the call: each has the trace.
    const requestId = gatewayLine.line.request_id;
    const ofRequest = jsonLines(run!.output).filter((l) => l.line.request_id === requestId);
    expect(ofRequest.length, describe()).to.be.at.least(hops.length);
    expect(ofRequest.filter((l) => l.line.trace_id !== traceId).map((l) => JSON.stringify(l.line))).to.deep.equal([]);
  });

  it('with --log-content, the debug line of a call carries its prompt (the grep below can find it)', async function () {
    this.timeout(60_000);
    const port = await freePort();
    const gateway = group.add({
      name: 'gateway with --log-content',
      entry: 'gateway/main.js',
      args: ['--port', String(port), '--http-port', '-1', '--scheduler', `127.0.0.1:${schedulerPort}`, '--balancer', `127.0.0.1:${balancerPort}`, '--log-content'],
      address: `127.0.0.1:${port}`,
      env: { MAAS_LOG_LEVEL: 'debug' },
    });
    await gateway.start();
    const content = `shown on purpose ${tag.split('').reverse().join('')}`;
    const other = openChannel(gateway.address);
    try {
      for await (const _chunk of createMeshClient(InferenceServiceDefinition, other).generate({ model: 'echo', prompt: content, maxTokens: 4 }, { deadline: Date.now() + 20_000 })) {
        // drain the stream
      }
    } finally {
      other.close();
    }
    await until(() => gateway.lines(/"msg":"generate"/).length > 0, 10_000, () => gateway.output());
    expect(gateway.lines(/"msg":"generate"/).join('\n')).to.include(`"prompt":"${content}"`);
  });

  it('writes no prompt, input, record or output into any log line or span, at debug level with tracing on', async function () {
    this.timeout(120_000);
    const inference = createMeshClient(InferenceServiceDefinition, channel!);
    const prediction = await inference.predict({ model: 'spam-nb', input: predictInput }, { deadline: Date.now() + 20_000 });
    expect(prediction.label).to.be.a('string');
    // A refused call: its message reaches the gateway span's status, so it must not quote the prompt.
    const refused = await (async () => {
      for await (const _chunk of inference.generate({ model: 'echo', prompt, messages: [{ role: 'user', content: 'hi' }] }, { deadline: Date.now() + 20_000 })) {
        // not reached
      }
    })().then(() => undefined, (err: unknown) => err as ClientError);
    expect(refused?.code, String(refused)).to.equal(Status.INVALID_ARGUMENT);
    expect(refused?.details).to.equal(`prompt must be empty when messages are given, given a string of ${prompt.length} characters`);
    const jobs = createMeshClient(JobServiceDefinition, channel!);
    const spec = JobSpec.fromPartial({ map: { $case: 'mapper', mapper: 'wordcount' }, input: { $case: 'inline', inline: { records: [{ text: `${recordWord} ${recordWord} plain words`, label: '' }] } }, reducer: 'sum' });
    const { job } = await jobs.submit({ spec }, { deadline: Date.now() + 20_000 });
    for await (const _event of jobs.watch({ jobId: job!.id, afterSequence: 0 }, { deadline: Date.now() + 60_000 })) {
      // until the job ends
    }
    const done = (await jobs.get({ jobId: job!.id })).job!;
    expect(done.state, 'the job ran').to.equal(JobState.JOB_STATE_SUCCEEDED);
    // The result holds the word: the output exists and is the caller's, not the log's.
    expect(JSON.stringify(done)).to.include(recordWord);

    // Stop the mesh: each service flushes its spans and its last lines as it exits.
    up!.kill('SIGINT');
    const exit = await run!.exit;
    expect(exit.code, 'maas up exit code').to.equal(0);

    const output = run!.output;
    const lines = jsonLines(output);
    // The grep is not vacuous: debug lines of every service and the spans of the calls are there.
    expect([...new Set(lines.filter((l) => l.line.level === 'debug').map((l) => l.line.service))].sort()).to.deep.equal(['balancer', 'gateway', 'scheduler', 'worker']);
    for (const name of ['maas.v1.InferenceService/Predict', 'maas.v1.JobService/Submit', 'maas.internal.v1.AggregatorService/Commit']) {
      expect(receiver.spans.map((s) => s.name), `a span named ${name}`).to.include(name);
    }

    const found: string[] = [];
    for (const secret of secrets) {
      for (const raw of output.split('\n')) if (raw.includes(secret)) found.push(`log line has "${secret}": ${raw.slice(0, 300)}`);
      for (const body of receiver.bodies) if (body.includes(secret)) found.push(`spans have "${secret}": …${body.slice(Math.max(0, body.indexOf(secret) - 200), body.indexOf(secret) + 100)}…`);
    }
    expect(found).to.deep.equal([]);
    const predictLine = lines.find((l) => l.from === 'gateway' && l.line.msg === 'predict');
    expect(predictLine?.line.input, 'the gateway logged the Predict, with the size of its input').to.equal(`[${predictInput.length} chars, not logged: --log-content is off]`);
  });
});
