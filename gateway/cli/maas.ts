#!/usr/bin/env node
/**
 * The `maas` command: `maas up` starts the mesh; the other commands are clients of the gateway's
 * public API, like any other gRPC client.
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { parseArgs } from 'node:util';
import { Client, ClientError, Metadata, Status } from 'nice-grpc';
import { createMeshCertificates } from '../../common/certs';
import { MeshCallOptions, createMeshClient, openChannel, openTlsChannel } from '../../common/client';
import { DEFAULT_CERTS_DIR } from '../../common/tls';
import { FinishReason, InferenceServiceDefinition } from '../../generated/maas/v1/inference';
import { ModelServiceDefinition, ModelTask, TensorSpec } from '../../generated/maas/v1/models';
import { GRPCInferenceServiceDefinition, ModelInferRequest } from '../../generated/inference/grpc_service';
import { inputsFromJson, outputsToJson, parseInputJson } from './infer-input';
import { JobServiceDefinition } from '../../generated/maas/v1/jobs';
import { MeshServiceDefinition, WorkerState } from '../../generated/maas/v1/mesh';
import { formatJob, formatJobRow, specFromOptions, UsageError, watchJob } from './jobs';
import { keysCommand } from './keys';
import { DEFAULT_MODEL_REPOSITORY, makeExamplesCommand } from './make-examples';
import { up } from './up';

const USAGE = `usage: maas <command> [options]

commands:
  up                          start every service of the mesh on this machine (Ctrl-C stops it)
      --host H                interface for all services (default 127.0.0.1)
      --gateway-port N        public API port (default 50051); scheduler N+1, balancer N+2,
                              aggregator N+3, workers from N+4 (or --scheduler-port, --balancer-port,
                              --aggregator-port, --worker-base-port)
      --http-port N           the gateway's OpenAI-compatible HTTP API (default 8080; -1 off,
                              written --http-port=-1)
      --workers N             number of worker processes (default 2)
      --policy P              balancing policy: round_robin, random, least_outstanding, p2c,
                              p2c_ewma, weighted, consistent_hash (default p2c)
      --input-root DIR        where jobs' input files are read from (default .maas/input)
      --output-root DIR       where collect writes output files, a folder per tenant
                              (default .maas/output)
      --model-repository DIR  the workers' model repository (default $MAAS_MODEL_REPOSITORY
                              or .maas/models)
      --api-keys-file F       API key file for the gateway (only the gateway is given it)
  keys add --tenant T --file F
                              make a new API key for tenant T, append its hash to key file F
                              (created, mode 600, if missing) and print the key once
      --tls                   mutual TLS between all services, TLS on the gateway; creates the
                              certificates in --certs-dir if missing (see maas certs)
      --certs-dir DIR         certificates for --tls (default ${DEFAULT_CERTS_DIR})
      --insecure              let services serve plaintext on a non-loopback --host
  certs                       create the mesh CA and a certificate per service (existing files kept)
      --out DIR               where (default ${DEFAULT_CERTS_DIR}); keys are written 0600
      --workers N             certificates for worker-1 .. worker-N (default 2), or
      --worker-ids A,B        certificates for these worker ids
      --san NAME              extra DNS name or IP in every service certificate (repeatable)
      --days N                validity of the service certificates (default 365)
      --force                 new CA and new certificates even where files exist
  models                      list the models with their metadata; tensor models with their
                              platform, version, inputs and outputs (name, data type, shape)
  models make-examples        write the example models (spam-onnx: spam-nb exported to ONNX; mlp:
                              a perceptron for benchmarks; tiny-llama: a small Llama GGUF model
                              with a Spam Assassin vocabulary) into a model repository folder
      --out DIR               the repository (default $MAAS_MODEL_REPOSITORY or ${DEFAULT_MODEL_REPOSITORY})
      --llama-size tiny|bench tiny-llama's size: tiny (2 layers, loads in well under a second)
                              or bench (4 layers, width 512, F32, 69 MB; for bench:llm)
  workers                     the balancer's view of its workers: state, load, latency, ejections
  generate --model M PROMPT   stream generated tokens
      --max-tokens N  --temperature T  --seed S  --stop SEQ (repeatable)
  predict --model M INPUT     classify one input: label and class probabilities
  infer MODEL --input JSON    run a tensor model (KServe v2 ModelInfer) and print its outputs as
                              JSON. JSON maps input names to nested arrays, e.g.
                              '{"x": [[5.1, 3.5, 1.4, 0.2]]}' (shape from the nesting, data type
                              from the model), or to {"datatype", "shape", "data"}; strings are
                              BYTES. Outputs print as {"name": {"datatype", "shape", "data"}}.
      --file F                read the JSON from file F instead of --input
      --version V             the model version (default: the newest served)
      --priority low|normal|high   sent as the request parameter "priority"
  job submit (--mapper M | --model M) (--dataset D | --input FILE | --record TEXT...) [--watch]
      --reducer sum|top_k|accuracy|collect|mean  --shard-size N  --top-k K  --max-attempts N
      --job-timeout-ms N  --priority low|normal|high  --callback-url URL
      --output FILE [--overwrite]   (collect: FILE under your folder of the output root)
                              --input FILE is relative to the mesh's input root
      --max-tokens N --temperature T --seed S --stop SEQ   (for a generative model)
                              without --watch, prints the job id and returns at once
  job watch ID                replay the job's events, then follow them live until it ends
  job get ID                  state, progress and result
  job list [--page-size N]    your jobs, newest first
  job cancel ID               cancel a job

common options:
  --gateway HOST:PORT         gateway address (default $MAAS_GATEWAY or 127.0.0.1:50051)
  --api-key KEY               API key, when the gateway requires one (default $MAAS_API_KEY)
  --cacert FILE               talk TLS to the gateway, trusting this CA (default $MAAS_CACERT;
                              empty: plaintext)
  --timeout-ms N              deadline of the call (default 60000)
`;

async function main(argv: string[]): Promise<number> {
  // Options may come before or after the command (`maas --cacert ca.pem predict ...`).
  const { values, positionals: words } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      gateway: { type: 'string', default: process.env.MAAS_GATEWAY ?? '127.0.0.1:50051' },
      'api-key': { type: 'string', default: process.env.MAAS_API_KEY ?? '' },
      cacert: { type: 'string', default: process.env.MAAS_CACERT ?? '' },
      tls: { type: 'boolean' },
      'certs-dir': { type: 'string', default: DEFAULT_CERTS_DIR },
      insecure: { type: 'boolean' },
      out: { type: 'string' },
      'llama-size': { type: 'string', default: 'tiny' },
      'worker-ids': { type: 'string' },
      san: { type: 'string', multiple: true },
      days: { type: 'string', default: '365' },
      force: { type: 'boolean' },
      'timeout-ms': { type: 'string', default: '60000' },
      model: { type: 'string' },
      'max-tokens': { type: 'string' },
      temperature: { type: 'string' },
      seed: { type: 'string' },
      stop: { type: 'string', multiple: true },
      host: { type: 'string', default: '127.0.0.1' },
      'gateway-port': { type: 'string', default: '50051' },
      'http-port': { type: 'string', default: '8080' },
      'scheduler-port': { type: 'string' },
      'balancer-port': { type: 'string' },
      'aggregator-port': { type: 'string' },
      'worker-base-port': { type: 'string' },
      workers: { type: 'string', default: '2' },
      policy: { type: 'string', default: 'p2c' },
      'input-root': { type: 'string', default: '.maas/input' },
      'output-root': { type: 'string', default: '.maas/output' },
      'model-repository': { type: 'string' },
      mapper: { type: 'string' },
      dataset: { type: 'string' },
      input: { type: 'string' },
      record: { type: 'string', multiple: true },
      reducer: { type: 'string' },
      'shard-size': { type: 'string' },
      'top-k': { type: 'string' },
      'max-attempts': { type: 'string' },
      'job-timeout-ms': { type: 'string' },
      priority: { type: 'string' },
      'callback-url': { type: 'string' },
      output: { type: 'string' },
      overwrite: { type: 'boolean' },
      watch: { type: 'boolean' },
      'page-size': { type: 'string' },
      'api-keys-file': { type: 'string' },
      tenant: { type: 'string' },
      file: { type: 'string' },
      version: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const [command, ...positionals] = words;
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
      httpPort: num('http-port', values['http-port'])!,
      schedulerPort: num('scheduler-port', values['scheduler-port']) ?? gatewayPort + 1,
      balancerPort: num('balancer-port', values['balancer-port']) ?? gatewayPort + 2,
      aggregatorPort: num('aggregator-port', values['aggregator-port']) ?? gatewayPort + 3,
      workerBasePort: num('worker-base-port', values['worker-base-port']) ?? gatewayPort + 4,
      workers: num('workers', values.workers)!,
      policy: values.policy!,
      apiKeysFile: values['api-keys-file'],
      inputRoot: values['input-root']!,
      outputRoot: values['output-root']!,
      modelRepository: values['model-repository'] ?? process.env.MAAS_MODEL_REPOSITORY,
      startTimeoutMs: 300_000,
      certsDir: values.tls ? values['certs-dir'] : undefined,
      insecure: values.insecure,
    });
  }

  if (command === 'models' && positionals[0] === 'make-examples') {
    return makeExamplesCommand(values.out ?? (process.env.MAAS_MODEL_REPOSITORY || DEFAULT_MODEL_REPOSITORY), values['llama-size']!);
  }

  if (command === 'keys') return keysCommand(positionals[0], values.tenant, values.file, process.stdout);

  if (command === 'certs') {
    const workers = values['worker-ids'] !== undefined
      ? values['worker-ids'].split(',').map((w) => w.trim()).filter(Boolean)
      : Array.from({ length: num('workers', values.workers)! }, (_, i) => `worker-${i + 1}`);
    let made;
    try {
      made = await createMeshCertificates(values.out ?? DEFAULT_CERTS_DIR, { workers, hosts: values.san ?? [], validityDays: num('days', values.days), force: values.force });
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    const dir = relative(process.cwd(), made.dir) || '.';
    process.stdout.write(
      [
        `certificates in ${dir}: CA ca.pem (key ca-key.pem: keep it off the services' machines)`,
        `  created: ${made.created.join(', ') || 'nothing'}`,
        `  kept:    ${made.kept.join(', ') || 'nothing'}`,
        'Each service takes --tls --tls-cert <dir>/<name>.pem --tls-key <dir>/<name>-key.pem --tls-ca <dir>/ca.pem;',
        `clients of the gateway trust ca.pem: npx maas --cacert ${dir}/ca.pem models, grpcurl -cacert ${dir}/ca.pem ...`,
        '',
      ].join('\n'),
    );
    return 0;
  }

  let channel;
  if (values.cacert) {
    let ca: Buffer;
    try {
      ca = readFileSync(values.cacert);
    } catch (err) {
      throw new UsageError(`--cacert ${values.cacert} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
    channel = openTlsChannel(values.gateway!, ca);
  } else {
    channel = openChannel(values.gateway!);
  }
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
          const tasks = m.tasks.map((t) => TASK_NAMES[t] ?? String(t)).join(', ');
          const platform = m.platform ? `${m.platform}; ` : '';
          process.stdout.write(`${m.name}  (v${m.version}; ${platform}${tasks}; ${m.readyWorkers} ready worker${m.readyWorkers === 1 ? '' : 's'})\n  ${m.description}\n`);
          if (m.labels.length) process.stdout.write(`  labels: ${m.labels.join(', ')}\n`);
          if (m.inputs.length) process.stdout.write(`  inputs: ${m.inputs.map(tensorText).join(', ')}\n`);
          if (m.outputs.length) process.stdout.write(`  outputs: ${m.outputs.map(tensorText).join(', ')}\n`);
          if (m.maxBatchSize > 0) process.stdout.write(`  max_batch_size: ${m.maxBatchSize}\n`);
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
      case 'infer': {
        const model = requirePositional(positionals.slice(0, 1), 'MODEL');
        if (values.input === undefined && values.file === undefined) throw new UsageError('maas infer needs --input JSON or --file F');
        let text = values.input;
        if (values.file !== undefined) {
          try {
            text = readFileSync(values.file, 'utf8');
          } catch (err) {
            throw new UsageError(`--file ${values.file} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
          }
        }
        const kserve = createMeshClient(GRPCInferenceServiceDefinition, channel);
        const version = values.version ?? '';
        const metadataOfModel = await kserve.modelMetadata({ name: model, version }, options);
        const request = ModelInferRequest.fromPartial({
          modelName: model,
          modelVersion: version,
          inputs: inputsFromJson(parseInputJson(text!), metadataOfModel.inputs),
          parameters: values.priority ? { priority: { parameterChoice: { $case: 'stringParam', stringParam: values.priority } } } : {},
        });
        const response = await kserve.modelInfer(request, options);
        process.stderr.write(`[${response.modelName} v${response.modelVersion}]\n`);
        process.stdout.write(`${JSON.stringify(outputsToJson(response))}\n`);
        return 0;
      }
      case 'workers': {
        const mesh = createMeshClient(MeshServiceDefinition, channel);
        const { workers, policy } = await mesh.listWorkers({}, options);
        process.stdout.write(`policy ${policy}; ${workers.length} worker${workers.length === 1 ? '' : 's'}\n`);
        for (const w of workers) {
          const state = WorkerState[w.state].replace('WORKER_STATE_', '').toLowerCase();
          const ejected = w.ejectedUntilMs ? ` until ${new Date(w.ejectedUntilMs).toISOString()}` : '';
          process.stdout.write(
            `${w.workerId.padEnd(14)} ${w.address.padEnd(21)} ${state}${ejected}  outstanding ${w.outstanding}  in flight ${w.reportedInFlight}/${w.capacity}  queued ${w.reportedQueueDepth}  ewma ${w.ewmaLatencyMs.toFixed(1)} ms (worker says ${w.reportedLatencyMs.toFixed(1)})  ejections ${w.ejections}  weight ${w.weight.toFixed(2)}  models ${w.models.join(',')}\n`,
          );
        }
        return 0;
      }
      case 'job':
        return await jobCommand(createMeshClient(JobServiceDefinition, channel), positionals, values, metadata, deadline, num);
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } finally {
    channel.close();
  }
}

/** `maas job <sub>`. */
async function jobCommand(
  client: Client<typeof JobServiceDefinition, MeshCallOptions>,
  positionals: string[],
  values: Record<string, string | string[] | boolean | undefined>,
  metadata: Metadata,
  deadline: number,
  num: (name: string, raw: string | undefined) => number | undefined,
): Promise<number> {
  const [sub, id] = positionals;
  const str = (name: string) => values[name] as string | undefined;
  const options = { metadata, deadline };
  const needId = () => {
    if (!id) throw new UsageError(`maas job ${sub} needs a job id`);
    return id;
  };
  switch (sub) {
    case 'submit': {
      const spec = specFromOptions({
        mapper: str('mapper'),
        model: str('model'),
        dataset: str('dataset'),
        input: str('input'),
        records: values.record as string[] | undefined,
        reducer: str('reducer'),
        shardSize: num('shard-size', str('shard-size')),
        topK: num('top-k', str('top-k')),
        maxAttempts: num('max-attempts', str('max-attempts')),
        timeoutMs: num('job-timeout-ms', str('job-timeout-ms')),
        priority: str('priority'),
        callbackUrl: str('callback-url'),
        output: str('output'),
        overwrite: values.overwrite === true,
        maxTokens: num('max-tokens', str('max-tokens')),
        temperature: num('temperature', str('temperature')),
        seed: num('seed', str('seed')),
        stop: values.stop as string[] | undefined,
      });
      const { job } = await client.submit({ spec }, options);
      if (!values.watch) {
        process.stdout.write(`${job!.id}\n`);
        return 0;
      }
      process.stderr.write(`job ${job!.id}: ${job!.tasksTotal} tasks, ${job!.recordsTotal} records\n`);
      return watchJob(client, job!.id, process.stdout, { metadata });
    }
    case 'watch':
      return watchJob(client, needId(), process.stdout, { metadata });
    case 'get':
      process.stdout.write(formatJob((await client.get({ jobId: needId() }, options)).job!));
      return 0;
    case 'list': {
      const { jobs } = await client.list({ pageSize: num('page-size', str('page-size')) ?? 0, pageToken: '' }, options);
      if (jobs.length === 0) process.stdout.write('no jobs\n');
      for (const job of jobs) process.stdout.write(`${formatJobRow(job)}\n`);
      return 0;
    }
    case 'cancel':
      process.stdout.write(formatJob((await client.cancel({ jobId: needId() }, options)).job!));
      return 0;
    default:
      throw new UsageError(`maas job needs one of submit, watch, get, list, cancel${sub ? `, given "${sub}"` : ''}`);
  }
}

/** How `maas models` names the calls a model takes. */
const TASK_NAMES: Record<number, string> = {
  [ModelTask.MODEL_TASK_GENERATE]: 'generate',
  [ModelTask.MODEL_TASK_CLASSIFY]: 'predict',
  [ModelTask.MODEL_TASK_INFER]: 'infer',
};

/** `x FP32 [-1, 4]`. */
function tensorText(t: TensorSpec): string {
  return `${t.name} ${t.datatype} [${t.shape.join(', ')}]`;
}

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
