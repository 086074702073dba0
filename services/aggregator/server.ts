/**
 * The aggregator service: commits each task's output of a batch job exactly once into its durable
 * store, folds it with the job's reducer and answers with the partial result; at the end returns
 * the final result (and writes the collect reducer's output file). This file only adapts the
 * store and the reducers to the wire: validation, conversion, errors.
 */
import { resolve } from 'node:path';
import { ConfigOf } from '../../common/config';
import { MeshError, invalidField } from '../../common/errors';
import { Logger } from '../../common/log';
import { callMetrics } from '../../common/call-metrics';
import { ServiceMetrics, serveMetrics } from '../../common/metrics';
import { startGrpcServer } from '../../common/server';
import { StartedService } from '../../common/service-main';
import { loadMeshTls } from '../../common/tls';
import {
  AggregatorServiceDefinition,
  AggregatorServiceImplementation,
  CommitRequest,
  CommitResponse,
  FinalizeRequest,
  FinalizeResponse,
  ForgetRequest,
  ForgetResponse,
  ReduceSpec as WireReduceSpec,
} from '../../generated/maas/internal/v1/aggregator';
import { MapOutput } from '../../generated/maas/internal/v1/task';
import { JobResult } from '../../generated/maas/v1/jobs';
import { aggregatorSchema } from './config';
import { FILE_ACCESS_KINDS, FileAccessError, OutputPlace, prepareRoot, writeOutputFile } from '../../common/file-roots';
import { jsonLines } from './output-file';
import { REDUCER_NAMES, ReduceResult, ReduceSpec, ShardOutput, isReducerName } from './reducers';
import { AggregatorStore, checkSameSpec } from './store';

/** A running aggregator. */
export interface RunningAggregator extends StartedService {
  readonly port: number;
  /** host:port of the /metrics endpoint; undefined with --metrics-port -1. */
  readonly metricsAddress: string | undefined;
}

/** The spec of a request, validated: INVALID_ARGUMENT names the field. */
function validSpec(reduce: WireReduceSpec | undefined): ReduceSpec {
  if (!reduce) throw new MeshError('invalid_argument', 'reduce must be set');
  if (!isReducerName(reduce.reducer)) throw invalidField('reduce.reducer', `must be one of ${REDUCER_NAMES.join(', ')}`, reduce.reducer);
  if (reduce.tasksTotal < 1) throw invalidField('reduce.tasks_total', 'must be at least 1', reduce.tasksTotal);
  return specOf(reduce);
}

/** A spec in the reducers' terms. */
function specOf(reduce: WireReduceSpec): ReduceSpec {
  return {
    reducer: reduce.reducer,
    topK: reduce.topK,
    tasksTotal: reduce.tasksTotal,
    outputFile: reduce.outputFile,
    positiveLabel: reduce.positiveLabel,
    meanOf: reduce.meanOf,
  };
}

/** The fields of a spec that are set: non-empty strings, non-zero numbers. */
function setFieldsOf(reduce: WireReduceSpec): Partial<ReduceSpec> {
  return Object.fromEntries(Object.entries(specOf(reduce)).filter(([, value]) => value !== '' && value !== 0));
}

/** Longest job id (the scheduler's are about 30 characters); messages quote ids in full. */
const MAX_JOB_ID_CHARS = 128;

function validJobId(jobId: string): string {
  if (jobId === '') throw invalidField('job_id', 'must not be empty', jobId);
  if (jobId.length > MAX_JOB_ID_CHARS) throw invalidField('job_id', `must be at most ${MAX_JOB_ID_CHARS} characters`, jobId);
  return jobId;
}

/** A commit's output in the reducers' terms, validated. */
function validOutput(output: MapOutput | undefined): ShardOutput {
  if (!output) throw new MeshError('invalid_argument', 'output must be set');
  output.outputs.forEach((r, i) => {
    if (!Number.isFinite(r.score)) throw invalidField(`output.outputs[${i}].score`, 'must be a finite number', r.score);
  });
  return {
    records: output.records,
    wordCounts: output.wordCounts,
    totalWords: output.totalWords,
    outputs: output.outputs.map((r) => ({ index: r.index, output: r.output, label: r.label, score: r.score })),
  };
}

/** A reducer's result on the wire. */
function toJobResult(result: ReduceResult): JobResult {
  switch (result.kind) {
    case 'wordCounts': {
      const { kind: _, ...wordCounts } = result;
      return { result: { $case: 'wordCounts', wordCounts } };
    }
    case 'accuracy': {
      const { kind: _, ...accuracy } = result;
      return { result: { $case: 'accuracy', accuracy } };
    }
    case 'collect': {
      const { kind: _, ...collect } = result;
      return { result: { $case: 'collect', collect } };
    }
    case 'mean': {
      const { kind: _, ...mean } = result;
      return { result: { $case: 'mean', mean } };
    }
  }
}

/** Starts the aggregator: opens its store in config.dataDir, then serves. */
export async function startAggregator(config: ConfigOf<typeof aggregatorSchema>, log: Logger): Promise<RunningAggregator> {
  const tls = loadMeshTls(config, 'aggregator');
  const protectedDirs = [config.dataDir, ...config.protectedDirs.split(',').map((d) => d.trim()).filter((d) => d !== '')];
  const outputs: OutputPlace = { root: await prepareRoot(config.outputRoot, protectedDirs, '--output-root'), protectedDirs: protectedDirs.map((d) => resolve(d)) };
  const store = new AggregatorStore(resolve(config.dataDir), { cachedJobs: config.cachedJobs, maxOutputBytes: config.maxOutputBytes });
  if (store.schema.from !== store.schema.to) log.info('store schema migrated', { file: store.path, from_version: store.schema.from, to_version: store.schema.to });
  log.info('store open', { path: store.path });
  const metrics = new ServiceMetrics('aggregator');
  const commits = metrics.counter('maas_aggregator_commits_total', "Task outputs committed (each task of a job once), by the job's reducer.", ['reducer']);
  const duplicates = metrics.counter('maas_aggregator_duplicates_total', 'Commits of a task already committed (a retried or re-run task), ignored, by reducer.', ['reducer']);
  const finalized = metrics.counter('maas_aggregator_jobs_finalized_total', 'Jobs whose final result was reduced, by reducer.', ['reducer']);

  const implementation: AggregatorServiceImplementation = {
    async commit(request: CommitRequest): Promise<CommitResponse> {
      const jobId = validJobId(request.jobId);
      const spec = validSpec(request.reduce);
      if (request.taskIndex >= spec.tasksTotal) {
        throw invalidField('task_index', `must be less than reduce.tasks_total (${spec.tasksTotal})`, request.taskIndex);
      }
      const output = validOutput(request.output);
      const outcome = store.commit(jobId, request.taskIndex, request.attempt, spec, output);
      (outcome.duplicate ? duplicates : commits).inc({ reducer: spec.reducer });
      if (outcome.duplicate) {
        log.info('task already committed; duplicate ignored', { job: jobId, task: request.taskIndex, attempt: request.attempt });
      } else if (outcome.tasksCommitted === spec.tasksTotal) {
        log.info('every task of the job is committed', { job: jobId, tasks: spec.tasksTotal });
      }
      return { duplicate: outcome.duplicate, tasksCommitted: outcome.tasksCommitted, partial: toJobResult(outcome.partial) };
    },

    async finalize(request: FinalizeRequest): Promise<FinalizeResponse> {
      const jobId = validJobId(request.jobId);
      const progress = store.progress(jobId);
      if (!progress) throw new MeshError('not_found', `job ${jobId} is not known to the aggregator: no task committed, or forgotten`);
      // The job is reduced as its commits said. Fields the caller sets must agree; fields it
      // leaves empty or 0 (the scheduler may not know the defaults workers filled in) are not checked.
      if (request.reduce) checkSameSpec(jobId, progress.spec, { ...progress.spec, ...setFieldsOf(request.reduce) });
      const { tasksCommitted, spec } = progress;
      if (tasksCommitted < spec.tasksTotal) {
        throw new MeshError('failed_precondition', `job ${jobId} has ${tasksCommitted} of ${spec.tasksTotal} tasks committed`);
      }
      const result = store.result(jobId, true)!;
      // Written on every call: the same content each time, so Finalize stays idempotent even if
      // the file was removed in between (an existing file holding exactly this content counts as
      // written, so a retry without overwrite_output succeeds too).
      if (result.kind === 'collect' && result.outputFile) {
        try {
          await writeOutputFile(outputs, request.tenant, result.outputFile, jsonLines(store.collectedOutputs(jobId)), {
            field: 'spec.output_file',
            overwrite: request.overwriteOutput,
            maxBytes: config.maxOutputBytes,
          });
        } catch (err) {
          if (err instanceof FileAccessError) throw new MeshError(FILE_ACCESS_KINDS[err.code], err.message);
          throw err;
        }
      }
      log.info('job finalized', { job: jobId, reducer: spec.reducer, tasks: spec.tasksTotal });
      finalized.inc({ reducer: spec.reducer });
      return { result: toJobResult(result) };
    },

    async forget(request: ForgetRequest): Promise<ForgetResponse> {
      const jobId = validJobId(request.jobId);
      if (store.forget(jobId)) log.info('job forgotten', { job: jobId });
      return {};
    },
  };

  const server = await startGrpcServer({
    host: config.host,
    port: config.port,
    maxMessageBytes: config.maxMessageBytes,
    maxConcurrentStreams: config.maxConcurrentStreams,
    log,
    serving: true,
    tls,
    insecure: config.insecure,
    healthPort: config.healthPort,
    services: [{ definition: AggregatorServiceDefinition, implementation }],
    callMetrics: callMetrics(metrics, { labelModels: false }).middleware,
  }).catch((err: unknown) => {
    store.close();
    throw err;
  });
  const metricsServer = await serveMetrics(metrics, { host: config.host, port: config.metricsPort, log }).catch((err: unknown) => {
    server.kill();
    store.close();
    throw err;
  });

  return {
    port: server.port,
    address: server.address,
    metricsAddress: metricsServer?.address,
    async shutdown() {
      await server.shutdown(config.drainTimeoutMs);
      await metricsServer?.close();
      store.close();
    },
  };
}
