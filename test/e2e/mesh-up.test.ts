/**
 * End to end: `maas up` starts the real mesh (gateway, scheduler, balancer, two workers), each
 * service in its own process, exporting traces over OTLP/HTTP to a receiver that this test runs.
 * The tests talk to the gateway through the generated clients, check one request's trace across
 * every hop, and check that Ctrl-C (SIGINT) on `maas up` leaves no service process behind.
 */
import { expect } from 'chai';
import { ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { Channel } from 'nice-grpc';
import { createMeshClient, openChannel } from '../../common/client.js';
import { FinishReason, GenerateResponse, InferenceServiceDefinition } from '../../generated/maas/v1/inference.js';
import { ModelServiceDefinition } from '../../generated/maas/v1/models.js';
import OpenAI from 'openai';
import { MaasUp, childPids, cmdlineOf, freePort, freePortRun, meshProcessesOn, spawnMaasUp } from '../processes.js';
import { CollectedSpan, OtlpReceiver } from '../otlp-receiver';
import { scrape } from '../prometheus.js';
import { untilAsync } from '../support.js';

/** The repository root (this file runs from dist/test/e2e). */
const repoRoot = resolve(__dirname, '../../..');
const WORKERS = 2;
/** gateway, scheduler, balancer, aggregator and the workers take N, N+1, N+2, N+3, N+4.. */
const PORTS_NEEDED = 4 + WORKERS;

// OTLP span kinds (the API's SpanKind + 1).
const KIND_SERVER = 2;
const KIND_CLIENT = 3;

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

describe('maas up: the whole mesh as separate processes', function () {
  let receiver: OtlpReceiver;
  let up: ChildProcess | undefined;
  let upExit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  let run: MaasUp | undefined;
  let gatewayPort = 0;
  let httpPort = 0;
  /** The gateway's /metrics port; the scheduler's is the next. */
  let metricsPort = 0;
  let ports: number[] = [];
  let servicePids: number[] = [];
  let channel: Channel | undefined;

  // Last resort if mocha itself dies: `maas up` must not outlive the test run. Its services watch
  // its pid (MAAS_PARENT_PID) and stop when it disappears.
  const killOnExit = () => {
    if (up && !exited(up)) up.kill('SIGKILL');
  };

  before(async function () {
    this.timeout(180_000);
    process.on('exit', killOnExit);
    receiver = new OtlpReceiver();
    await receiver.start();
    gatewayPort = await freePortRun(PORTS_NEEDED);
    ports = Array.from({ length: PORTS_NEEDED }, (_, i) => gatewayPort + i);

    // A clean environment: no inherited MAAS_* or OTEL_* setting may change what is under test.
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('MAAS_') && !k.startsWith('OTEL_')) env[k] = v;
    env.OTEL_EXPORTER_OTLP_ENDPOINT = `http://127.0.0.1:${receiver.port}`;
    env.MAAS_WORKER_CACHE_DIR = resolve(repoRoot, '.cache/models');

    httpPort = await freePort();
    metricsPort = await freePortRun(4);
    run = spawnMaasUp(['--host', '127.0.0.1', '--gateway-port', String(gatewayPort), '--http-port', String(httpPort), '--metrics-port', String(metricsPort), '--workers', String(WORKERS)], env);
    const child = run.child;
    up = child;
    upExit = run.exit;
    await run.ready(120_000);

    servicePids = childPids(child.pid!);
    expect(servicePids, `service processes of maas up (pid ${child.pid})`).to.have.lengthOf(PORTS_NEEDED);
    channel = openChannel(`127.0.0.1:${gatewayPort}`);
  });

  after(async function () {
    this.timeout(180_000);
    channel?.close();
    const problems: string[] = [];
    try {
      if (up && !exited(up)) {
        up.kill('SIGINT');
        let timer: NodeJS.Timeout | undefined;
        const result = await Promise.race([
          upExit,
          new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), 120_000))),
        ]);
        clearTimeout(timer);
        if (!result) {
          problems.push('maas up did not exit within 120 s of SIGINT');
          up.kill('SIGKILL');
          await upExit;
        } else if (result.code !== 0) {
          problems.push(`maas up exited with ${result.signal ?? `code ${result.code}`} after SIGINT`);
        }
      }
      // maas up waits for each service's exit before its own, so they must be gone by now.
      const left = servicePids.filter((pid) => {
        const cmdline = cmdlineOf(pid);
        return cmdline !== undefined && ports.some((p) => cmdline.includes(`--port ${p}`));
      });
      const strays = meshProcessesOn(ports);
      if (left.length > 0 || strays.length > 0) {
        problems.push(`service processes left after maas up exited: ${strays.map((s) => `${s.pid} ${s.cmdline}`).join('; ') || left.join(', ')}`);
        for (const pid of new Set([...left, ...strays.map((s) => s.pid)])) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
      }
    } finally {
      process.off('exit', killOnExit);
      await receiver?.close();
    }
    expect(problems, `shutdown of the mesh\n--- output of maas up ---\n${run?.output}`).to.deep.equal([]);
  });

  it('lists the three built-in models through a generated client', async function () {
    const models = createMeshClient(ModelServiceDefinition, channel!);
    const { models: list } = await models.listModels({}, { deadline: Date.now() + 10_000 });
    const names = list.map((m) => m.name);
    expect(names).to.include.members(['spam-nb', 'ngram', 'echo']);
    const spam = list.find((m) => m.name === 'spam-nb')!;
    expect(spam.metadata, 'spam-nb metadata').to.have.property('accuracy');
    expect(Number(spam.metadata.accuracy), `spam-nb accuracy "${spam.metadata.accuracy}"`).to.be.greaterThan(0.9);
  });

  it('streams Generate chunks from ngram with the same output for the same seed', async function () {
    const inference = createMeshClient(InferenceServiceDefinition, channel!);
    const collect = async (): Promise<GenerateResponse[]> => {
      const chunks: GenerateResponse[] = [];
      const stream = inference.generate({ model: 'ngram', prompt: 'the meeting', maxTokens: 12, seed: 42 }, { deadline: Date.now() + 30_000 });
      for await (const chunk of stream) chunks.push(chunk);
      return chunks;
    };
    const first = await collect();
    const second = await collect();
    expect(first.length, 'chunks in one stream').to.be.greaterThan(1);
    expect(second).to.deep.equal(first);
    expect(first[first.length - 1].finishReason, 'finish reason of the last chunk').to.not.equal(FinishReason.FINISH_REASON_UNSPECIFIED);
    for (const chunk of first.slice(0, -1)) expect(chunk.finishReason, `finish reason of chunk ${chunk.index}`).to.equal(FinishReason.FINISH_REASON_UNSPECIFIED);
  });

  it('classifies an obvious spam message', async function () {
    const inference = createMeshClient(InferenceServiceDefinition, channel!);
    const r = await inference.predict({ model: 'spam-nb', input: 'WIN A FREE PRIZE NOW, click here to claim your cash' }, { deadline: Date.now() + 30_000 });
    expect(r.label).to.equal('spam');
    const sum = Object.values(r.probabilities).reduce((a, b) => a + b, 0);
    expect(sum, `sum of ${JSON.stringify(r.probabilities)}`).to.be.closeTo(1, 1e-6);
  });

  it('serves more Predict calls than HTTP/2 tolerates stream resets, with no failure', async function () {
    // nghttp2 accepts a burst of 1000 RST_STREAMs per connection, then 33 a second; a hop that
    // cancelled its downstream call once the prediction arrived lost the connection past that.
    this.timeout(120_000);
    const inference = createMeshClient(InferenceServiceDefinition, channel!);
    let next = 0;
    const caller = async () => {
      while (next++ < 2000) await inference.predict({ model: 'echo', input: `call ${next}` }, { deadline: Date.now() + 30_000 });
    };
    await Promise.all(Array.from({ length: 32 }, caller));
  });

  it('one Generate call is one trace across gateway, scheduler, balancer and worker with correct parents, through the scheduler or on its permit (the balancer\'s routing beside the data path)', async function () {
    this.timeout(60_000);
    const inference = createMeshClient(InferenceServiceDefinition, channel!);
    const gatewayMetrics = `127.0.0.1:${metricsPort}`;
    const schedulerMetrics = `127.0.0.1:${metricsPort + 1}`;
    const metric = async (address: string, name: string, labels: Record<string, string> = {}) => (await scrape(address)).value(name, labels);
    const generate = async () => {
      const before = new Set(receiver.spans.filter((s) => s.name === 'maas.v1.InferenceService/Generate').map((s) => s.spanId));
      for await (const _chunk of inference.generate({ model: 'echo', prompt: 'trace me please', maxTokens: 3 }, { deadline: Date.now() + 10_000 })) {
        // drain the stream
      }
      return before;
    };

    // The permits the earlier tests' calls left go back after a second without calls: then the
    // next call of the tenant finds none at the gateway and goes through the scheduler.
    await untilAsync(async () => (await metric(schedulerMetrics, 'maas_scheduler_in_flight')) === 0, 20_000, 'the scheduler to hold no permit and no call');
    const granted = await metric(schedulerMetrics, 'maas_scheduler_permits_total', { event: 'granted' });
    const viaScheduler = await traceOf(await generate(), [
      ['maas-gateway', 'maas.internal.v1.SchedulerService/Schedule'],
      ['maas-scheduler', 'maas.internal.v1.SchedulerService/Schedule'],
      ['maas-scheduler', 'scheduler.queue_wait'],
      ['maas-balancer', 'maas.internal.v1.BalancerService/Route'],
      ['maas-scheduler', 'maas.internal.v1.WorkerService/Execute'],
      ['maas-worker', 'maas.internal.v1.WorkerService/Execute'],
      ['maas-worker', 'model.execute'],
    ]);
    expect(viaScheduler.root.attributes['maas.admission']).to.equal('scheduler');
    expect([...new Set(viaScheduler.spans.map((s) => s.service))]).to.include.members(['maas-gateway', 'maas-scheduler', 'maas-balancer', 'maas-worker']);
    const gatewayClient = viaScheduler.child(viaScheduler.root, 'maas-gateway', KIND_CLIENT, 'maas.internal.v1.SchedulerService/Schedule');
    const schedulerServer = viaScheduler.child(gatewayClient, 'maas-scheduler', KIND_SERVER, 'maas.internal.v1.SchedulerService/Schedule');
    viaScheduler.child(schedulerServer, 'maas-scheduler', undefined, 'scheduler.queue_wait');
    // The balancer decides where the call goes (its routing span, under the scheduler's); the
    // scheduler calls the worker itself.
    viaScheduler.child(schedulerServer, 'maas-balancer', KIND_SERVER, 'maas.internal.v1.BalancerService/Route');
    const schedulerClient = viaScheduler.child(schedulerServer, 'maas-scheduler', KIND_CLIENT, 'maas.internal.v1.WorkerService/Execute');
    const schedulerWorker = viaScheduler.child(schedulerClient, 'maas-worker', KIND_SERVER, 'maas.internal.v1.WorkerService/Execute');
    viaScheduler.child(schedulerWorker, 'maas-worker', undefined, 'model.execute');

    // That call found no permit, so the gateway asked for one: once it holds it, the next call
    // runs on it, dispatched by the gateway, with the scheduler not on its path.
    await untilAsync(async () => (await metric(schedulerMetrics, 'maas_scheduler_permits_total', { event: 'granted' })) > granted, 10_000, 'the scheduler to grant a permit');
    await untilAsync(async () => (await metric(gatewayMetrics, 'maas_gateway_permits_held')) > 0, 10_000, 'the gateway to hold the permit');
    const onPermit = await traceOf(await generate(), [
      ['maas-balancer', 'maas.internal.v1.BalancerService/Route'],
      ['maas-gateway', 'maas.internal.v1.WorkerService/Execute'],
      ['maas-worker', 'maas.internal.v1.WorkerService/Execute'],
      ['maas-worker', 'model.execute'],
    ]);
    expect(onPermit.root.attributes['maas.admission']).to.equal('permit');
    expect(onPermit.spans.filter((s) => s.service === 'maas-scheduler'), 'scheduler spans of a call on a permit').to.deep.equal([]);
    onPermit.child(onPermit.root, 'maas-balancer', KIND_SERVER, 'maas.internal.v1.BalancerService/Route');
    const gatewayExecute = onPermit.child(onPermit.root, 'maas-gateway', KIND_CLIENT, 'maas.internal.v1.WorkerService/Execute');
    const permitWorker = onPermit.child(gatewayExecute, 'maas-worker', KIND_SERVER, 'maas.internal.v1.WorkerService/Execute');
    onPermit.child(permitWorker, 'maas-worker', undefined, 'model.execute');
  });

  /**
   * The trace of the Generate call whose root span is not in `before`, once the spans `expected`
   * names have all arrived (each process flushes its own batches); every span's parent is a span
   * of the trace. `child` finds the one child of a span with a service, kind and name.
   */
  async function traceOf(before: Set<string>, expected: Array<[string, string]>) {
    const isRoot = (s: CollectedSpan) => s.service === 'maas-gateway' && s.kind === KIND_SERVER && s.name === 'maas.v1.InferenceService/Generate' && !s.parentSpanId && !before.has(s.spanId);
    const describe = (spans: CollectedSpan[]) => {
      const root = spans.find(isRoot);
      const shown = root ? spans.filter((s) => s.traceId === root.traceId) : spans;
      return `${root ? `trace ${root.traceId}` : 'no root Generate span yet'}; spans:\n${shown
        .map((s) => `  ${s.service.padEnd(15)} kind=${s.kind} ${s.name} span=${s.spanId} parent=${s.parentSpanId ?? '-'} trace=${s.traceId}`)
        .join('\n')}`;
    };
    const found = await receiver.waitFor(
      (spans) => {
        const root = spans.find(isRoot);
        if (!root) return undefined;
        const inTrace = spans.filter((s) => s.traceId === root.traceId);
        const complete = expected.every(([svc, name]) => inTrace.some((s) => s.service === svc && s.name === name));
        return complete ? { root, spans: inTrace } : undefined;
      },
      15_000,
      describe,
    );
    const explain = `\n${describe(receiver.spans)}`;
    const byId = new Map(found.spans.map((s) => [s.spanId, s]));
    for (const s of found.spans) {
      if (s === found.root) continue;
      expect(s.parentSpanId, `parent of ${s.service} ${s.name}${explain}`).to.be.a('string');
      expect(byId.has(s.parentSpanId!), `parent ${s.parentSpanId} of ${s.service} ${s.name} is a span of the trace${explain}`).to.equal(true);
    }
    const child = (parent: CollectedSpan, service: string, kind: number | undefined, name: string): CollectedSpan => {
      const matches = found.spans.filter((s) => s.parentSpanId === parent.spanId && s.service === service && (kind === undefined || s.kind === kind) && s.name === name);
      expect(matches, `${service} span "${name}"${kind ? ` (kind ${kind})` : ''} under ${parent.service} "${parent.name}"${explain}`).to.have.lengthOf(1);
      return matches[0];
    };
    return { ...found, child };
  }

  it('an OpenAI API call continues the caller\'s traceparent: its trace id is on every hop down to the model', async function () {
    this.timeout(30_000);
    expect(run!.output, 'maas up prints the HTTP API').to.include(`http://127.0.0.1:${httpPort}/v1`);
    const traceId = 'a1b2c3d4e5f60718293a4b5c6d7e8f90';
    const callerSpanId = '1122334455667788';
    const openai = new OpenAI({ baseURL: `http://127.0.0.1:${httpPort}/v1`, apiKey: 'unused', maxRetries: 0 });
    const stream = await openai.chat.completions.create(
      { model: 'echo', messages: [{ role: 'user', content: 'trace me please' }], max_tokens: 3, stream: true },
      { headers: { traceparent: `00-${traceId}-${callerSpanId}-01` } },
    );
    for await (const _chunk of stream) {
      // drain the stream
    }
    const describe = (spans: CollectedSpan[]) =>
      `spans of trace ${traceId}:\n${spans.filter((s) => s.traceId === traceId).map((s) => `  ${s.service.padEnd(15)} ${s.name} span=${s.spanId} parent=${s.parentSpanId ?? '-'}`).join('\n')}`;
    const inTrace = await receiver.waitFor(
      (spans) => {
        const mine = spans.filter((s) => s.traceId === traceId);
        // Each process flushes its own batches: wait for the first hop and the last.
        const complete = mine.some((s) => s.service === 'maas-worker' && s.name === 'model.execute') && mine.some((s) => s.service === 'maas-gateway' && s.kind === KIND_SERVER);
        return complete ? mine : undefined;
      },
      15_000,
      describe,
    );
    const edge = inTrace.filter((s) => s.service === 'maas-gateway' && s.kind === KIND_SERVER && s.name === 'POST /v1/chat/completions');
    expect(edge, describe(receiver.spans)).to.have.lengthOf(1);
    expect(edge[0].parentSpanId, 'the HTTP span is a child of the caller\'s span').to.equal(callerSpanId);
    // Every hop the call took: through the scheduler, or dispatched by the gateway on its permit.
    const hops = new Set(inTrace.map((s) => s.service));
    expect([...hops]).to.include.members(['maas-gateway', 'maas-balancer', 'maas-worker']);
    const admission = inTrace.find((s) => s.service === 'maas-gateway' && s.attributes['maas.admission'])?.attributes['maas.admission'];
    expect(admission, describe(receiver.spans)).to.be.oneOf(['scheduler', 'permit']);
    expect(hops.has('maas-scheduler'), `the scheduler in the trace of a call admitted by ${admission}`).to.equal(admission === 'scheduler');
  });
});
