#!/usr/bin/env node
/**
 * The `maas` command: `maas up` starts the mesh; the other commands are clients of the gateway's
 * public API, like any other gRPC client.
 */
import { parseArgs } from 'node:util';
import { ClientError, Metadata, Status } from 'nice-grpc';
import { createMeshClient, openChannel } from '../../common/client';
import { FinishReason, InferenceServiceDefinition } from '../../generated/maas/v1/inference';
import { ModelServiceDefinition, ModelTask } from '../../generated/maas/v1/models';
import { up } from './up';

const USAGE = `usage: maas <command> [options]

commands:
  up                          start every service of the mesh on this machine (Ctrl-C stops it)
      --host H                interface for all services (default 127.0.0.1)
      --gateway-port N        public API port (default 50051); scheduler N+1, balancer N+2,
                              workers from N+3 unless --scheduler-port/--balancer-port/--worker-base-port
      --workers N             number of worker processes (default 2)
      --policy P              balancing policy: round_robin, random, least_outstanding, p2c (default p2c)
  models                      list the models with their metadata
  generate --model M PROMPT   stream generated tokens
      --max-tokens N  --temperature T  --seed S  --stop SEQ (repeatable)
  predict --model M INPUT     classify one input: label and class probabilities

common options:
  --gateway HOST:PORT         gateway address (default $MAAS_GATEWAY or 127.0.0.1:50051)
  --api-key KEY               API key, when the gateway requires one (default $MAAS_API_KEY)
  --timeout-ms N              deadline of the call (default 60000)
`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      gateway: { type: 'string', default: process.env.MAAS_GATEWAY ?? '127.0.0.1:50051' },
      'api-key': { type: 'string', default: process.env.MAAS_API_KEY ?? '' },
      'timeout-ms': { type: 'string', default: '60000' },
      model: { type: 'string' },
      'max-tokens': { type: 'string' },
      temperature: { type: 'string' },
      seed: { type: 'string' },
      stop: { type: 'string', multiple: true },
      host: { type: 'string', default: '127.0.0.1' },
      'gateway-port': { type: 'string', default: '50051' },
      'scheduler-port': { type: 'string' },
      'balancer-port': { type: 'string' },
      'worker-base-port': { type: 'string' },
      workers: { type: 'string', default: '2' },
      policy: { type: 'string', default: 'p2c' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (!command || values.help || command === 'help') {
    process.stdout.write(USAGE);
    return command ? 0 : 2;
  }
  const num = (name: string, raw: string | undefined): number | undefined => {
    if (raw === undefined) return undefined;
    const n = Number(raw);
    if (raw.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${name} expects a number, given "${raw}"`);
    return n;
  };

  if (command === 'up') {
    const gatewayPort = num('gateway-port', values['gateway-port'])!;
    return up({
      host: values.host!,
      gatewayPort,
      schedulerPort: num('scheduler-port', values['scheduler-port']) ?? gatewayPort + 1,
      balancerPort: num('balancer-port', values['balancer-port']) ?? gatewayPort + 2,
      workerBasePort: num('worker-base-port', values['worker-base-port']) ?? gatewayPort + 3,
      workers: num('workers', values.workers)!,
      policy: values.policy!,
      startTimeoutMs: 300_000,
    });
  }

  const channel = openChannel(values.gateway!);
  const metadata = Metadata();
  if (values['api-key']) metadata.set('authorization', `Bearer ${values['api-key']}`);
  const deadline = Date.now() + num('timeout-ms', values['timeout-ms'])!;
  const options = { metadata, deadline };
  try {
    switch (command) {
      case 'models': {
        const models = createMeshClient(ModelServiceDefinition, channel);
        const { models: list } = await models.listModels({}, options);
        if (list.length === 0) process.stdout.write('no models are ready\n');
        for (const m of list) {
          const tasks = m.tasks.map((t) => (t === ModelTask.MODEL_TASK_GENERATE ? 'generate' : 'predict')).join(', ');
          process.stdout.write(`${m.name}  (v${m.version}; ${tasks}; ${m.readyWorkers} ready worker${m.readyWorkers === 1 ? '' : 's'})\n  ${m.description}\n`);
          if (m.labels.length) process.stdout.write(`  labels: ${m.labels.join(', ')}\n`);
          for (const [k, v] of Object.entries(m.metadata).sort()) process.stdout.write(`  ${k}: ${v}\n`);
          process.stdout.write('\n');
        }
        return 0;
      }
      case 'generate': {
        const inference = createMeshClient(InferenceServiceDefinition, channel);
        const stream = inference.generate(
          {
            model: requireModel(values.model),
            prompt: requirePositional(positionals, 'PROMPT'),
            maxTokens: num('max-tokens', values['max-tokens']) ?? 0,
            temperature: num('temperature', values.temperature),
            seed: num('seed', values.seed),
            stop: values.stop ?? [],
          },
          options,
        );
        for await (const chunk of stream) {
          process.stdout.write(chunk.text);
          if (chunk.finishReason !== FinishReason.FINISH_REASON_UNSPECIFIED) {
            const why = FinishReason[chunk.finishReason].replace('FINISH_REASON_', '').toLowerCase();
            process.stdout.write('\n');
            process.stderr.write(`[finish: ${why}; ${chunk.usage?.completionTokens ?? 0} tokens]\n`);
          }
        }
        return 0;
      }
      case 'predict': {
        const inference = createMeshClient(InferenceServiceDefinition, channel);
        const r = await inference.predict({ model: requireModel(values.model), input: requirePositional(positionals, 'INPUT') }, options);
        process.stdout.write(`label: ${r.label}\n`);
        for (const [label, p] of Object.entries(r.probabilities).sort((a, b) => b[1] - a[1])) {
          process.stdout.write(`  ${label.padEnd(8)} ${p.toFixed(4)}\n`);
        }
        if (r.text && r.text !== r.label) process.stdout.write(`text: ${r.text}\n`);
        return 0;
      }
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } finally {
    channel.close();
  }
}

class UsageError extends Error {}

function requireModel(model: string | undefined): string {
  if (!model) throw new UsageError('--model is required');
  return model;
}

function requirePositional(positionals: string[], name: string): string {
  if (positionals.length === 0) throw new UsageError(`${name} is required`);
  return positionals.join(' ');
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    if (err instanceof UsageError || (err as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      process.stderr.write(`maas: ${(err as Error).message}\n\n${USAGE}`);
      process.exitCode = 2;
    } else if (err instanceof ClientError) {
      process.stderr.write(`error: ${Status[err.code]}: ${err.details}\n`);
      process.exitCode = 1;
    } else {
      process.stderr.write(`maas: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    }
  },
);
