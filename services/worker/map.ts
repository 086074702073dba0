/**
 * Map tasks of batch jobs: read the shard's records, map them (a built-in mapper or a model
 * applied record by record), and commit the output to the aggregator.
 */
import { performance } from 'node:perf_hooks';
import { setImmediate as yieldToEventLoop, setTimeout as sleep } from 'node:timers/promises';
import { Client, ClientError, Status } from 'nice-grpc';
import { MeshCallOptions } from '../../common/client';
import { UnknownDatasetError, loadDataset } from '../../common/datasets';
import { MeshError, quoteInput } from '../../common/errors';
import { InputFiles, RECORDS_ERROR_KINDS, RecordsError, readRecords } from '../../common/records';
import { AggregatorServiceDefinition, CommitRequest, CommitResponse, ReduceSpec } from '../../generated/maas/internal/v1/aggregator';
import { MapOutput, MapTask, MapTaskResult, RecordOutput } from '../../generated/maas/internal/v1/task';
import { JobSpec } from '../../generated/maas/v1/jobs';
import { GenerateParams, Model, ModelTask } from './models/runtime';
import { MAPPER_NAMES } from '../../common/batch';
import { shownPath } from '../../common/file-roots';

/** The built-in mappers every worker runs. */
export const MAPPERS: readonly string[] = MAPPER_NAMES;

/** What a map task needs from the worker. */
export interface MapContext {
  /** The worker's models, by name. */
  models: Pick<ReadonlyMap<string, Model>, 'get'>;
  /** Client of the aggregator. */
  aggregator: Client<typeof AggregatorServiceDefinition, MeshCallOptions>;
  /** Aborts when the task is cancelled. */
  signal: AbortSignal;
  /** The task's deadline (epoch ms), if any. */
  deadline: number | undefined;
  /** The input root and the limits of a job's file. */
  files: InputFiles;
}

/** Maps one shard and commits its output; resolves with what the aggregator answered. */
export async function runMapTask(task: MapTask, context: MapContext): Promise<MapTaskResult> {
  const spec = specOf(task);
  const model = spec.map?.$case === 'model' ? context.models.get(spec.map.model) : undefined;
  const mapping = mappingOf(spec, model);
  const records = await shardRecords(task, context.files, context.signal);
  const output = await mapRecords(records, mapping, context.signal);
  const response = await commitOutput(context, { jobId: task.jobId, taskIndex: task.taskIndex, attempt: task.attempt, reduce: reduceSpecOf(task, model), output });
  return { records: output.records, duplicate: response.duplicate, tasksCommitted: response.tasksCommitted, partial: response.partial };
}

/** How long a worker keeps trying to commit while the aggregator is unreachable. */
export const COMMIT_RETRY_MS = 30_000;

/**
 * Commits a shard's output, retrying while the aggregator is UNAVAILABLE (restarting): the work
 * is done and a repeated commit is answered as a duplicate, so waiting beats mapping again. Bounded
 * by COMMIT_RETRY_MS and the task's deadline.
 */
async function commitOutput(context: MapContext, request: CommitRequest): Promise<CommitResponse> {
  const giveUpAt = Math.min(Date.now() + COMMIT_RETRY_MS, context.deadline ?? Infinity);
  for (let delay = 50; ; delay = Math.min(delay * 2, 1000)) {
    try {
      return await context.aggregator.commit(request, { signal: context.signal, deadline: context.deadline });
    } catch (err) {
      if (!(err instanceof ClientError) || err.code !== Status.UNAVAILABLE || context.signal.aborted || Date.now() + delay >= giveUpAt) throw err;
    }
    await sleep(delay, undefined, { signal: context.signal });
  }
}

// ---------------------------------------------------------------------------------------------
// Words

/**
 * A word: letters and digits, with inner apostrophes followed by letters (`don't`, `o'clock`).
 * Matched on lower-cased text by {@link words}. Global: use it with `match`/`matchAll` only.
 */
export const WORD_PATTERN = /[\p{L}\p{N}]+(?:'[\p{L}]+)*/gu;

/** The lower-cased words of `text`, in order: the wordcount mapper's definition of a word. */
export function words(text: string): string[] {
  return text.toLowerCase().match(WORD_PATTERN) ?? [];
}

/** How often each word of `text` occurs (lower-cased, as {@link words} splits it). */
export function countWords(text: string): Map<string, number> {
  const counts = new Map<string, number>();
  addWords(counts, text);
  return counts;
}

/** Adds the words of `text` to `counts`; returns how many there were. */
function addWords(counts: Map<string, number>, text: string): number {
  const found = words(text);
  for (const word of found) counts.set(word, (counts.get(word) ?? 0) + 1);
  return found.length;
}

// ---------------------------------------------------------------------------------------------
// What runs on each record

/** One record of a shard, with its position in the job's input. */
export interface ShardRecord {
  /** Position of the record in the job's input, from 0. */
  index: number;
  /** The text the mapper or model reads. */
  text: string;
  /** The expected label; '' when the record has none. */
  label: string;
}

/** What runs on each record: the wordcount mapper, or a model called through Predict or Generate. */
export type Mapping =
  | { kind: 'wordcount' }
  | { kind: 'classify'; model: Model }
  | { kind: 'generate'; model: Model; params: Omit<GenerateParams, 'prompt'> };

/** Max tokens per record when the job's generate options leave it 0. */
const DEFAULT_MAX_TOKENS = 64;
/** k of the top_k reducer when the job leaves it 0. */
const DEFAULT_TOP_K = 20;

/**
 * Which call a job makes on a model: `classify` (Predict) when the model classifies, else
 * `generate`; undefined when it does neither. A model that does both (echo) classifies, as the
 * gateway decides when it validates the job's reducer and generate options.
 */
export function modelCallOf(model: Model): ModelTask | undefined {
  if (model.info.tasks.includes('classify') && model.predict) return 'classify';
  if (model.info.tasks.includes('generate') && model.generate) return 'generate';
  return undefined;
}

/**
 * What runs on each record of a job. `model` is the model the spec names (the caller looks it up).
 * Throws a MeshError: INVALID_ARGUMENT for an unknown mapper or a spec with neither mapper nor
 * model, FAILED_PRECONDITION for a model that neither classifies nor generates.
 */
export function mappingOf(spec: JobSpec, model: Model | undefined): Mapping {
  switch (spec.map?.$case) {
    case 'mapper':
      if (spec.map.mapper === 'wordcount') return { kind: 'wordcount' };
      throw new MeshError('invalid_argument', `spec.mapper must be one of ${MAPPERS.join(', ')}, given ${quoteInput(spec.map.mapper)}`);
    case 'model': {
      if (!model || model.info.name !== spec.map.model) {
        throw new MeshError('not_found', `model ${quoteInput(spec.map.model)} is not hosted on this worker`);
      }
      const call = modelCallOf(model);
      if (call === 'classify') return { kind: 'classify', model };
      if (call === 'generate') {
        const options = spec.generate;
        return {
          kind: 'generate',
          model,
          params: {
            maxTokens: options?.maxTokens || DEFAULT_MAX_TOKENS,
            temperature: options?.temperature ?? 1,
            seed: options?.seed,
            stop: options?.stop ?? [],
          },
        };
      }
      throw new MeshError(
        'failed_precondition',
        `model ${JSON.stringify(model.info.name)} can run in a batch job only if it classifies or generates; it supports: ${model.info.tasks.join(', ') || 'nothing'}`,
      );
    }
    default:
      throw new MeshError('invalid_argument', 'spec.map must be set: a mapper or a model');
  }
}

/** Options of {@link mapRecords}. */
export interface MapRecordsOptions {
  /**
   * Longest run of mapping, in milliseconds, before it yields to the event loop (checked after
   * each record; default 1). 0 yields after every record.
   */
  sliceMs?: number;
  /** Clock of the slices, in milliseconds (default `performance.now`). */
  now?: () => number;
}

/** Default {@link MapRecordsOptions.sliceMs}: online requests wait at most about this long, plus one record. */
const DEFAULT_SLICE_MS = 1;

/**
 * Maps records in order: word counts over all of them (wordcount), or one output per record (a
 * model). Between records it yields to the event loop once it has run for `sliceMs`, so that
 * online requests on the same worker are not starved (yielding after every record would triple
 * the cost of counting the words of short records); it checks the signal before every record
 * and stops with the signal's reason as soon as it aborts.
 */
export async function mapRecords(
  records: readonly ShardRecord[],
  mapping: Mapping,
  signal: AbortSignal,
  options: MapRecordsOptions = {},
): Promise<MapOutput> {
  const sliceMs = options.sliceMs ?? DEFAULT_SLICE_MS;
  const now = options.now ?? (() => performance.now());
  const counts = new Map<string, number>();
  let totalWords = 0;
  const outputs: RecordOutput[] = [];
  let sliceStart = now();
  for (const record of records) {
    signal.throwIfAborted();
    switch (mapping.kind) {
      case 'wordcount':
        totalWords += addWords(counts, record.text);
        break;
      case 'classify': {
        const prediction = await mapping.model.predict!(record.text, signal);
        const score = prediction.probabilities[prediction.label] ?? 0;
        outputs.push({ index: record.index, output: prediction.label, label: record.label, score });
        break;
      }
      case 'generate': {
        let text = '';
        let tokens = 0;
        for await (const chunk of mapping.model.generate!({ ...mapping.params, prompt: record.text }, signal)) {
          text += chunk.text;
          // One chunk per token, as the worker counts completion tokens online.
          if (chunk.text !== '') tokens++;
        }
        outputs.push({ index: record.index, output: text, label: record.label, score: tokens });
        break;
      }
    }
    if (now() - sliceStart >= sliceMs) {
      await yieldToEventLoop();
      sliceStart = now();
    }
  }
  signal.throwIfAborted();
  return { records: records.length, wordCounts: Object.fromEntries(counts), totalWords, outputs };
}

/**
 * How the aggregator reduces the job of `task`. `model` is the model the job names (undefined for
 * a mapper). An unset reducer gets its documented default: top_k for wordcount, collect for a model.
 */
export function reduceSpecOf(task: MapTask, model?: Model): ReduceSpec {
  const spec = task.spec;
  const wordcount = spec?.map?.$case === 'mapper';
  const call = model ? modelCallOf(model) : undefined;
  const labels = model?.info.labels ?? [];
  return {
    reducer: spec?.reducer || (wordcount ? 'top_k' : 'collect'),
    topK: spec?.topK || DEFAULT_TOP_K,
    tasksTotal: task.tasksTotal,
    outputFile: spec?.outputFile ?? '',
    positiveLabel: labels.includes('spam') ? 'spam' : (labels[0] ?? ''),
    meanOf: wordcount ? 'words per record' : call === 'classify' ? 'probability of the predicted label' : 'tokens generated per record',
  };
}

// ---------------------------------------------------------------------------------------------
// The shard's records

/**
 * The records of a task's shard: its inline records, lines of the job's file, or a slice of a
 * built-in dataset, each with its index in the job's input. Throws a MeshError: INVALID_ARGUMENT
 * for a malformed line (with its file and line number), a file that is not a regular file or is
 * over a limit, or an input shorter than the shard; PERMISSION_DENIED for a file outside the
 * input root; NOT_FOUND for a missing file or an unknown dataset; FAILED_PRECONDITION for an
 * unreadable file.
 */
export async function shardRecords(task: MapTask, files: InputFiles, signal: AbortSignal): Promise<ShardRecord[]> {
  const spec = specOf(task);
  const first = task.firstRecord;
  const count = task.recordCount;
  switch (spec.input?.$case) {
    case 'inline':
      if (task.records.length !== count) {
        throw new MeshError('invalid_argument', `map task carries ${task.records.length} inline records, but its record_count is ${count}`);
      }
      return task.records.map((record, i) => ({ index: first + i, text: record.text, label: record.label }));
    case 'file': {
      const file = spec.input.file;
      let records: ShardRecord[];
      try {
        // Opened and verified here again: the file may have changed since the scheduler checked it.
        records = await readRecords(file, first, count, { ...files, field: 'spec.file' }, { signal });
      } catch (error) {
        if (error instanceof RecordsError) throw new MeshError(RECORDS_ERROR_KINDS[error.code], error.message);
        throw error;
      }
      if (records.length < count) throw shortInput(`spec.file ${shownPath(file)}`, first, count);
      return records;
    }
    case 'dataset': {
      let dataset;
      try {
        dataset = loadDataset(spec.input.dataset);
      } catch (error) {
        if (error instanceof UnknownDatasetError) throw new MeshError('not_found', error.message);
        throw error;
      }
      if (dataset.length < first + count) throw shortInput(`dataset ${spec.input.dataset}`, first, count);
      return dataset.slice(first, first + count).map((record, i) => ({ index: first + i, text: record.text, label: record.label }));
    }
    default:
      throw new MeshError('invalid_argument', 'spec.input must be set: inline records, a file or a dataset');
  }
}

function shortInput(input: string, first: number, count: number): MeshError {
  return new MeshError(
    'invalid_argument',
    `${input} has too few records for this task (records ${first} to ${first + count - 1}); was it changed after the job was submitted?`,
  );
}

function specOf(task: MapTask): JobSpec {
  if (!task.spec) throw new MeshError('invalid_argument', 'map task has no spec');
  return task.spec;
}
