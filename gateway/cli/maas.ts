#!/usr/bin/env node
/**
 * The `maas` command: `maas up` starts the mesh; the other commands are clients of the gateway's
 * public API, like any other gRPC client. The commands and their options are declared in
 * commands.ts (which also makes --help and the completion script); this file runs them. Every
 * command prints text, or with --json one JSON document (JSON lines for streams and watches):
 * responses in the proto3 JSON mapping, as grpcurl prints them. Exit codes: exit-codes.ts.
 */
import { readFileSync } from 'node:fs';
import { relative, resolve } from 'node:path';
import { Client, Metadata } from 'nice-grpc';
import { connectivityState } from '@grpc/grpc-js';
import { createMeshCertificates } from '../../common/certs';
import { MeshCallOptions, createMeshClient, openChannel, openTlsChannel } from '../../common/client';
import { FinishReason, GenerateResponse, InferenceServiceDefinition, PredictResponse } from '../../generated/maas/v1/inference';
import { ListModelsResponse, ModelServiceDefinition, ModelTask, TensorSpec } from '../../generated/maas/v1/models';
import { GRPCInferenceServiceDefinition, ModelInferRequest } from '../../generated/inference/grpc_service';
import { inputsFromJson, outputsToJson, parseInputJson } from './infer-input';
import { Job, JobServiceDefinition } from '../../generated/maas/v1/jobs';
import { ListWorkersResponse, MeshServiceDefinition, WorkerState } from '../../generated/maas/v1/mesh';
import { CommandSpec, Values, bashCompletion, gatewayAddress, helpText, parseCommandLine } from './commands';
import { EXIT, LocalError, describeFailure } from './exit-codes';
import { formatJob, formatJobRow, specFromOptions, UsageError, watchJob } from './jobs';
import { keysCommand } from './keys';
import { makeExamplesCommand } from './make-examples';
import { MAX_STOP_CHARS, MAX_STOP_SEQUENCES } from '../validation';
import { up } from './up';

/** The version of maas: the package's. */
function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(resolve(__dirname, '../../../package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/** Writes one JSON document (or one JSON line of a stream). */
function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

/** What the run needs to report a failure: the gateway it called and whether it ever connected. */
interface RunState {
  json: boolean;
  gateway?: string;
  connected: () => boolean;
}

async function main(argv: string[], state: RunState): Promise<number> {
  const invocation = parseCommandLine(argv, process.env);
  if (invocation.kind === 'help') {
    process.stdout.write(helpText(invocation.path, packageVersion()));
    return EXIT.ok;
  }
  if (invocation.kind === 'version') {
    if (invocation.json) printJson({ version: packageVersion(), node: process.version });
    else process.stdout.write(`maas ${packageVersion()}\n`);
    return EXIT.ok;
  }
  const { command, values, positionals, json } = invocation;
  state.json = json;
  const str = (name: string) => values[name] as string | undefined;
  const int = (name: string) => values[name] as number | undefined;
  const path = command.path.join(' ');

  switch (path) {
    case 'up':
      return up({
        host: str('host')!,
        gatewayPort: int('gateway-port')!,
        httpPort: int('http-port')!,
        schedulerPort: int('scheduler-port') ?? int('gateway-port')! + 1,
        balancerPort: int('balancer-port') ?? int('gateway-port')! + 2,
        aggregatorPort: int('aggregator-port') ?? int('gateway-port')! + 3,
        workerBasePort: int('worker-base-port') ?? int('gateway-port')! + 4,
        metricsPort: int('metrics-port')!,
        workers: int('workers')!,
        maxRestarts: int('max-restarts')!,
        policy: str('policy')!,
        apiKeysFile: str('api-keys-file'),
        inputRoot: str('input-root')!,
        outputRoot: str('output-root')!,
        modelRepository: str('model-repository'),
        startTimeoutMs: 300_000,
        certsDir: values.tls ? str('certs-dir') : undefined,
        insecure: values.insecure === true,
      });
    case 'models make-examples': {
      const out = str('out')!;
      const code = await makeExamplesCommand(out, str('llama-size')!, json ? 'stderr' : 'inherit');
      if (code !== 0) throw new LocalError(`making the example models into ${out} failed (exit ${code})`);
      if (json) printJson({ repository: resolve(out) });
      return EXIT.ok;
    }
    case 'keys add':
      return keysCommand('add', str('tenant'), str('file'), process.stdout, json);
    case 'certs':
      return certsCommand(values, json);
    case 'completion':
      if (positionals[0] !== 'bash') throw new UsageError(`maas completion supports bash, given "${positionals[0].slice(0, 20)}"`);
      if (json) printJson({ shell: 'bash', script: bashCompletion() });
      else process.stdout.write(bashCompletion());
      return EXIT.ok;
  }
  return clientCommand(command, values, positionals, json, state);
}

/** `maas certs`. */
async function certsCommand(values: Values, json: boolean): Promise<number> {
  const ids = values['worker-ids'] as string | undefined;
  const workers = ids !== undefined ? ids.split(',').map((w) => w.trim()).filter(Boolean) : Array.from({ length: values.workers as number }, (_, i) => `worker-${i + 1}`);
  let made;
  try {
    made = await createMeshCertificates(values.out as string, { workers, hosts: (values.san as string[] | undefined) ?? [], validityDays: values.days as number, force: values.force === true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (json) {
    printJson({ dir: made.dir, ca: 'ca.pem', created: made.created, kept: made.kept });
    return EXIT.ok;
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
  return EXIT.ok;
}

/** Reads all of standard input (for `-`), without its final newline. */
async function readStdin(what: string): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  const text = Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
  if (text === '') throw new UsageError(`${what} from standard input is empty`);
  return text;
}

/** The words of PROMPT/INPUT joined, or standard input for `-`. */
async function textArgument(positionals: string[], what: string): Promise<string> {
  if (positionals.length === 1 && positionals[0] === '-') return readStdin(what);
  return positionals.join(' ');
}

function checkStops(stop: string[] | undefined): string[] {
  const stops = stop ?? [];
  if (stops.length > MAX_STOP_SEQUENCES) throw new UsageError(`--stop may be given at most ${MAX_STOP_SEQUENCES} times, given ${stops.length}`);
  for (const s of stops) if (s.length === 0 || s.length > MAX_STOP_CHARS) throw new UsageError(`--stop must be 1 to ${MAX_STOP_CHARS} characters, given ${s.length}`);
  return stops;
}

function requireModel(model: string | undefined, where: string): string {
  if (!model) throw new UsageError(`${where} needs --model M`);
  return model;
}

/** The commands that call the gateway. */
async function clientCommand(command: CommandSpec, values: Values, positionals: string[], json: boolean, state: RunState): Promise<number> {
  const str = (name: string) => values[name] as string | undefined;
  const path = command.path.join(' ');
  const where = `maas ${path}`;
  // Everything that can be refused locally is refused before the channel is opened.
  const address = gatewayAddress(str('gateway')!);
  const generateOptions = () => ({
    maxTokens: values['max-tokens'] as number | undefined,
    temperature: values.temperature as number | undefined,
    seed: values.seed as number | undefined,
    stop: checkStops(values.stop as string[] | undefined),
  });
  let text: string | undefined;
  if (path === 'generate' || path === 'predict') {
    requireModel(str('model'), where);
    text = await textArgument(positionals, path === 'generate' ? 'PROMPT' : 'INPUT');
  }
  if (path === 'generate') generateOptions();
  if (path === 'infer') {
    if ((str('input') === undefined) === (str('file') === undefined)) throw new UsageError('maas infer needs one of --input JSON or --file F');
    const file = str('file');
    if (file === '-') text = await readStdin('--file -');
    else if (file !== undefined) {
      try {
        text = readFileSync(file, 'utf8');
      } catch (err) {
        throw new UsageError(`--file ${file.slice(0, 200)} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
      }
    } else text = str('input');
  }
  const inferInput = path === 'infer' ? parseInputJson(text!) : undefined;
  let spec;
  if (path === 'job submit') {
    const g = generateOptions();
    spec = specFromOptions({
      mapper: str('mapper'),
      model: str('model'),
      dataset: str('dataset'),
      input: str('input'),
      records: values.record as string[] | undefined,
      reducer: str('reducer'),
      shardSize: values['shard-size'] as number | undefined,
      topK: values['top-k'] as number | undefined,
      maxAttempts: values['max-attempts'] as number | undefined,
      timeoutMs: values['job-timeout-ms'] as number | undefined,
      priority: str('priority'),
      callbackUrl: str('callback-url'),
      output: str('output'),
      overwrite: values.overwrite === true,
      maxTokens: g.maxTokens,
      temperature: g.temperature,
      seed: g.seed,
      stop: g.stop.length ? g.stop : undefined,
    });
  }

  let channel;
  const cacert = str('cacert');
  if (cacert) {
    let ca: Buffer;
    try {
      ca = readFileSync(cacert);
    } catch (err) {
      throw new UsageError(`--cacert ${cacert.slice(0, 200)} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
    channel = openTlsChannel(address, ca);
  } else {
    channel = openChannel(address);
  }
  state.gateway = address;
  let connected = false;
  const ch = channel;
  state.connected = () => connected || ch.getConnectivityState(false) === connectivityState.READY;
  const markConnected = () => {
    connected = true;
  };
  const metadata = Metadata();
  if (str('api-key')) metadata.set('authorization', `Bearer ${str('api-key')}`);
  const deadline = Date.now() + (values['timeout-ms'] as number);
  const options = { metadata, deadline };
  try {
    switch (path) {
      case 'models': {
        const models = createMeshClient(ModelServiceDefinition, channel);
        const response = await models.listModels({}, options);
        if (json) {
          printJson(ListModelsResponse.toJSON(response));
          return EXIT.ok;
        }
        const list = response.models;
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
        return EXIT.ok;
      }
      case 'generate': {
        const inference = createMeshClient(InferenceServiceDefinition, channel);
        const g = generateOptions();
        const stream = inference.generate(
          { model: str('model')!, prompt: text!, maxTokens: g.maxTokens ?? 0, temperature: g.temperature, seed: g.seed, stop: g.stop },
          options,
        );
        for await (const chunk of stream) {
          markConnected();
          if (json) {
            printJson(GenerateResponse.toJSON(chunk));
            continue;
          }
          process.stdout.write(chunk.text);
          if (chunk.finishReason !== FinishReason.FINISH_REASON_UNSPECIFIED) {
            const why = FinishReason[chunk.finishReason].replace('FINISH_REASON_', '').toLowerCase();
            process.stdout.write('\n');
            process.stderr.write(`[finish: ${why}; ${chunk.usage?.completionTokens ?? 0} tokens]\n`);
          }
        }
        return EXIT.ok;
      }
      case 'predict': {
        const inference = createMeshClient(InferenceServiceDefinition, channel);
        const r = await inference.predict({ model: str('model')!, input: text! }, options);
        if (json) {
          printJson(PredictResponse.toJSON(r));
          return EXIT.ok;
        }
        process.stdout.write(`label: ${r.label}\n`);
        for (const [label, p] of Object.entries(r.probabilities).sort((a, b) => b[1] - a[1])) {
          process.stdout.write(`  ${label.padEnd(8)} ${p.toFixed(4)}\n`);
        }
        if (r.text && r.text !== r.label) process.stdout.write(`text: ${r.text}\n`);
        return EXIT.ok;
      }
      case 'infer': {
        const model = positionals[0];
        const kserve = createMeshClient(GRPCInferenceServiceDefinition, channel);
        const version = str('version') ?? '';
        const metadataOfModel = await kserve.modelMetadata({ name: model, version }, options);
        const request = ModelInferRequest.fromPartial({
          modelName: model,
          modelVersion: version,
          inputs: inputsFromJson(inferInput, metadataOfModel.inputs),
          parameters: str('priority') ? { priority: { parameterChoice: { $case: 'stringParam', stringParam: str('priority')! } } } : {},
        });
        const response = await kserve.modelInfer(request, options);
        if (json) {
          printJson({ modelName: response.modelName, modelVersion: response.modelVersion, outputs: outputsToJson(response) });
          return EXIT.ok;
        }
        process.stderr.write(`[${response.modelName} v${response.modelVersion}]\n`);
        process.stdout.write(`${JSON.stringify(outputsToJson(response))}\n`);
        return EXIT.ok;
      }
      case 'workers': {
        const mesh = createMeshClient(MeshServiceDefinition, channel);
        const response = await mesh.listWorkers({}, options);
        if (json) {
          printJson(ListWorkersResponse.toJSON(response));
          return EXIT.ok;
        }
        const { workers, policy } = response;
        process.stdout.write(`policy ${policy}; ${workers.length} worker${workers.length === 1 ? '' : 's'}\n`);
        for (const w of workers) {
          const wstate = WorkerState[w.state].replace('WORKER_STATE_', '').toLowerCase();
          const ejected = w.ejectedUntilMs ? ` until ${new Date(w.ejectedUntilMs).toISOString()}` : '';
          process.stdout.write(
            `${w.workerId.padEnd(14)} ${w.address.padEnd(21)} ${wstate}${ejected}  outstanding ${w.outstanding}  in flight ${w.reportedInFlight}/${w.capacity}  queued ${w.reportedQueueDepth}  ewma ${w.ewmaLatencyMs.toFixed(1)} ms (worker says ${w.reportedLatencyMs.toFixed(1)})  ejections ${w.ejections}  weight ${w.weight.toFixed(2)}  models ${w.models.join(',')}\n`,
          );
        }
        return EXIT.ok;
      }
      default:
        return await jobCommand(createMeshClient(JobServiceDefinition, channel), command.path[1], positionals[0], values, { metadata, deadline }, json, spec, markConnected);
    }
  } finally {
    channel.close();
  }
}

/** `maas job <sub>`. */
async function jobCommand(
  client: Client<typeof JobServiceDefinition, MeshCallOptions>,
  sub: string,
  id: string | undefined,
  values: Values,
  options: { metadata: Metadata; deadline: number },
  json: boolean,
  spec: ReturnType<typeof specFromOptions> | undefined,
  markConnected: () => void,
): Promise<number> {
  const printJob = (job: Job) => (json ? printJson(Job.toJSON(job)) : process.stdout.write(formatJob(job)));
  switch (sub) {
    case 'submit': {
      const { job } = await client.submit({ spec: spec! }, options);
      markConnected();
      if (!values.watch) {
        if (json) printJson(Job.toJSON(job!));
        else process.stdout.write(`${job!.id}\n`);
        return EXIT.ok;
      }
      if (!json) process.stderr.write(`job ${job!.id}: ${job!.tasksTotal} tasks, ${job!.recordsTotal} records\n`);
      return watchJob(client, job!.id, process.stdout, { metadata: options.metadata, json });
    }
    case 'watch':
      return watchJob(client, id!, process.stdout, { metadata: options.metadata, json });
    case 'get':
      printJob((await client.get({ jobId: id! }, options)).job!);
      return EXIT.ok;
    case 'list': {
      const pageSize = (values['page-size'] as number | undefined) ?? 0;
      let pageToken = (values['page-token'] as string | undefined) ?? '';
      const jobs: Job[] = [];
      for (;;) {
        const page = await client.list({ pageSize, pageToken }, options);
        markConnected();
        jobs.push(...page.jobs);
        if (!json) for (const job of page.jobs) process.stdout.write(`${formatJobRow(job)}\n`);
        pageToken = page.nextPageToken;
        if (!values.all || pageToken === '') break;
      }
      if (json) printJson({ jobs: jobs.map((j) => Job.toJSON(j)), ...(pageToken ? { nextPageToken: pageToken } : {}) });
      else if (jobs.length === 0) process.stdout.write('no jobs\n');
      else if (pageToken) process.stdout.write(`more: maas job list --page-token ${pageToken}${pageSize ? ` --page-size ${pageSize}` : ''}\n`);
      return EXIT.ok;
    }
    case 'cancel':
      printJob((await client.cancel({ jobId: id! }, options)).job!);
      return EXIT.ok;
    default:
      throw new UsageError(`maas job ${sub} is not a command`);
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


const state: RunState = { json: process.argv.includes('--json'), connected: () => false };
main(process.argv.slice(2), state).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    const failure = describeFailure(err, state.gateway, state.connected());
    if (state.json) process.stderr.write(`${JSON.stringify({ error: { exit: failure.exit, ...(failure.status ? { status: failure.status } : {}), message: failure.message } })}\n`);
    else process.stderr.write(`maas: ${failure.message}\n`);
    process.exitCode = failure.exit;
  },
);
