/**
 * `npm run bench:hop`: what one hop costs in grpc-js, the experiment behind the call streams
 * (issue 11). An echo service (WorkerService/Execute answering one message) runs in its own
 * process; a relay process forwards to it. Each way is measured at concurrency 1 (latency) and at
 * a concurrency of 64 (throughput), with the CPU time each process used per call:
 *
 * - `plain`: a new gRPC call (HTTP/2 stream) per request, client to echo;
 * - `plain relay`: the same through a relay that makes a new call per request to the echo;
 * - `stream`: calls on one call stream (common/call-stream.ts), client to echo;
 * - `stream relay`: calls on call streams, client to relay to echo (the relay passes the bytes on).
 *
 * Every server runs the mesh's own middleware (common/server.ts), so the numbers are those of the
 * services, not of bare grpc-js. Prints a table and rewrites its section of docs/BENCHMARKS.md
 * (not with --quick).
 */
import { fork } from 'node:child_process';
import { loadavg } from 'node:os';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { createChannel, createClient } from 'nice-grpc';
import { EncodedMessage, openCallStreamClient } from '../common/call-stream';
import { silentLogger } from '../common/log';
import { startGrpcServer } from '../common/server';
import { ExecuteRequest, ExecuteResponse, WorkerServiceDefinition } from '../generated/maas/internal/v1/worker';
import { markdownTable, textTable, writeBenchSection } from './benchmarks-doc';
import { codeVersion, cpuSampler, exitWhenDone, say } from './bench-cli';

const REQUEST: ExecuteRequest = { task: { requestId: 'r', tenant: 't', request: { $case: 'predict', predict: { model: 'echo', input: 'the quick brown fox jumps over the lazy dog', priority: 0, affinityKey: '' } } } };
const others = { repositoryIndex: async () => ({}), loadModel: async () => ({}), unloadModel: async () => ({}) };

/** Child process roles: the echo service, or a relay to `upstream` (plain calls or call streams). */
async function child(role: string, upstream: string | undefined): Promise<void> {
  let execute: (request: ExecuteRequest, context: { signal: AbortSignal }) => AsyncIterable<ExecuteResponse | EncodedMessage>;
  if (role === 'echo') {
    execute = async function* (request) {
      const input = request.task?.request?.$case === 'predict' ? request.task.request.predict.input : '';
      yield { output: { workerId: 'echo', output: { $case: 'prediction', prediction: { model: 'echo', label: '', probabilities: {}, text: input } } } };
    };
  } else if (role === 'plain-relay') {
    const next = createClient(WorkerServiceDefinition, createChannel(upstream!));
    execute = (request, context) => next.execute(request, { signal: context.signal });
  } else {
    const next = openCallStreamClient<ExecuteRequest, ExecuteResponse>(WorkerServiceDefinition, createChannel(upstream!), 'executeCalls', 'execute');
    execute = async function* (request, context) {
      for await (const bytes of next.callEncoded(request, { signal: context.signal })) yield new EncodedMessage(bytes);
    };
  }
  const server = await startGrpcServer({
    host: '127.0.0.1',
    port: 0,
    maxMessageBytes: 1 << 20,
    maxConcurrentStreams: 1000,
    services: [{ definition: WorkerServiceDefinition, implementation: { execute, ...others } }],
    callStreams: [{ service: 0, calls: 'executeCalls', carries: 'execute' }],
    log: silentLogger,
    serving: true,
  });
  process.send!(server.address);
}

async function main(): Promise<number> {
  const { values } = parseArgs({ args: process.argv.slice(2), options: { quick: { type: 'boolean', default: false }, 'duration-s': { type: 'string' } } });
  const durationMs = Number(values['duration-s'] ?? (values.quick ? 1.5 : 5)) * 1000;
  const start = (args: string[]) =>
    new Promise<{ pid: number; address: string; kill(): void }>((resolveChild, reject) => {
      const c = fork(__filename, args, { stdio: 'inherit' });
      c.once('message', (address) => resolveChild({ pid: c.pid!, address: String(address), kill: () => c.kill() }));
      c.once('error', reject);
    });
  const echo = await start(['echo']);
  const plainRelay = await start(['plain-relay', echo.address]);
  const streamRelay = await start(['stream-relay', echo.address]);
  const loadBefore = loadavg();
  const cpuNow = cpuSampler({ client: 'self', echo: echo.pid, plainRelay: plainRelay.pid, streamRelay: streamRelay.pid });
  type Way = { name: string; target: string; stream: boolean; relay?: 'plainRelay' | 'streamRelay' };
  const ways: Way[] = [
    { name: 'plain', target: echo.address, stream: false },
    { name: 'plain relay', target: plainRelay.address, stream: false, relay: 'plainRelay' },
    { name: 'stream', target: echo.address, stream: true },
    { name: 'stream relay', target: streamRelay.address, stream: true, relay: 'streamRelay' },
  ];
  const rows: (string | number)[][] = [];
  try {
    for (const concurrency of [1, 64]) {
      for (const way of ways) {
        const channel = createChannel(way.target);
        const plain = createClient(WorkerServiceDefinition, channel);
        const calls = openCallStreamClient<ExecuteRequest, ExecuteResponse>(WorkerServiceDefinition, channel, 'executeCalls', 'execute');
        const one = async () => {
          for await (const _ of way.stream ? calls.call(REQUEST) : plain.execute(REQUEST));
        };
        for (let i = 0; i < 300; i++) await one();
        say(`${way.name}, c=${concurrency}`);
        const before = cpuNow();
        const latencies: number[] = [];
        const startedAt = performance.now();
        await Promise.all(
          Array.from({ length: concurrency }, async () => {
            while (performance.now() - startedAt < durationMs) {
              const t = performance.now();
              await one();
              latencies.push(performance.now() - t);
            }
          }),
        );
        const elapsed = performance.now() - startedAt;
        const after = cpuNow();
        latencies.sort((a, b) => a - b);
        const n = latencies.length;
        const us = (owner: keyof typeof after) => ((1000 * (after[owner] - before[owner])) / n).toFixed(0);
        rows.push([way.name, concurrency, n, ((1000 * n) / elapsed).toFixed(0), latencies[n >> 1].toFixed(3), latencies[Math.floor(n * 0.99)].toFixed(3), us('client'), us('echo'), way.relay ? us(way.relay) : '']);
        calls.close();
        channel.close();
      }
    }
  } finally {
    echo.kill();
    plainRelay.kill();
    streamRelay.kill();
  }
  const headers = ['way', 'concurrency', 'calls', 'calls/s', 'p50 ms', 'p99 ms', 'client µs/call', 'echo µs/call', 'relay µs/call'];
  const right = [false, true, true, true, true, true, true, true, true];
  const repoDir = resolve(__dirname, '../..');
  const head = `code ${codeVersion(repoDir)}; load average before ${loadBefore[0].toFixed(2)}, after ${loadavg()[0].toFixed(2)}; ${durationMs / 1000} s per row`;
  process.stdout.write(`\n${head}\n${textTable(headers, rows, right)}\n`);
  if (!values.quick) {
    writeBenchSection(resolve(repoDir, 'docs/BENCHMARKS.md'), 'hop', [
      '## What one hop costs: a call per request against calls on one stream',
      '',
      `- Command: \`npm run bench:hop\`; ${new Date().toISOString()}; ${head}.`,
      '- An echo service in its own process, reached straight (`plain`, `stream`) or through a relay process (`... relay`), by a new gRPC call per request (`plain`) or by calls on one call stream (`stream`, common/call-stream.ts, the relay passing the bytes on). Every server runs the mesh\'s middleware. CPU from /proc (10 ms resolution).',
      '',
      markdownTable(headers, rows, right),
    ].join('\n'));
    say('wrote docs/BENCHMARKS.md');
  }
  return 0;
}

if (process.argv[2] === 'echo' || process.argv[2] === 'plain-relay' || process.argv[2] === 'stream-relay') void child(process.argv[2], process.argv[3]);
else exitWhenDone('bench', main());
