/**
 * Validation of a batch job's spec at the edge: every field, with the limit and the value given,
 * and defaults filled in so the scheduler stores a complete spec. What only the scheduler can
 * know (a file's contents, a dataset's size) it checks itself.
 */
import { CallbackAllowlist, checkCallbackUrl } from '../common/callback-target';
import { contentGiven, invalidField, MeshError, quoteInput } from '../common/errors';
import { MAX_PATH_CHARS } from '../common/file-roots';
import { validateGenerateRequest, validateModelName } from './validation';

/** The fields of maas.v1.JobSpec that validation reads (the generated type fits). */
export interface JobSpecFields {
  map?: { $case: 'mapper'; mapper: string } | { $case: 'model'; model: string } | undefined;
  input?:
    | { $case: 'inline'; inline: { records: { text: string; label: string }[] } }
    | { $case: 'file'; file: string }
    | { $case: 'dataset'; dataset: string }
    | undefined;
  shardSize?: number | undefined;
  reducer: string;
  topK: number;
  maxAttempts: number;
  timeoutMs: number;
  priority: number;
  callbackUrl: string;
  generate?: { maxTokens: number; temperature?: number | undefined; seed?: number | undefined; stop: string[] } | undefined;
  outputFile: string;
  overwriteOutput?: boolean;
}

/** What the gateway knows of the world when it validates a spec. */
export interface JobSpecContext {
  /** Built-in mappers. */
  mappers: readonly string[];
  /** Built-in datasets. */
  datasets: readonly string[];
  /** The tasks of a model, or undefined if no such model is served. */
  modelTasks(name: string): Promise<readonly ('generate' | 'classify')[] | undefined>;
  /** Where callbacks may go besides public addresses (the same setting as the scheduler's). */
  callbackAllow: CallbackAllowlist;
  /** Limits: most inline records, longest record text. */
  maxInlineRecords: number;
  maxRecordChars: number;
}

/** The reducers, and which maps each suits. */
export const REDUCERS = ['sum', 'top_k', 'accuracy', 'collect', 'mean'] as const;
const WORD_REDUCERS = ['sum', 'top_k', 'mean'];
const CLASSIFY_REDUCERS = ['accuracy', 'collect', 'mean'];
const GENERATE_REDUCERS = ['collect', 'mean'];

/** Most records per task, most attempts, longest deadline (7 days), largest k. */
export const MAX_SHARD_SIZE = 100_000;
export const DEFAULT_SHARD_SIZE = 500;
export const MAX_ATTEMPTS = 10;
export const DEFAULT_ATTEMPTS = 3;
export const MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000;
export const MAX_TOP_K = 1000;
export const DEFAULT_TOP_K = 20;

/** Longest name of a mapper, dataset or reducer; longest file path, callback URL and record label. */
export const MAX_NAME_CHARS = 128;
export { MAX_PATH_CHARS };
export const MAX_URL_CHARS = 2048;
export const MAX_LABEL_CHARS = 256;

/** Refuses a string longer than `max`, before it is compared, looked up or forwarded. */
function checkLength(field: string, value: string, max: number): void {
  if (value.length > max) throw invalidField(field, `must be at most ${max} characters`, value);
}

/** Validates a spec and returns it with every default filled in. */
export async function validateJobSpec<T extends JobSpecFields>(spec: T, context: JobSpecContext): Promise<T> {
  if (!spec.map) throw invalidField('spec.map', 'must set one of mapper or model', 'neither');
  let kind: 'words' | 'classify' | 'generate';
  if (spec.map.$case === 'mapper') {
    checkLength('spec.mapper', spec.map.mapper, MAX_NAME_CHARS);
    if (!context.mappers.includes(spec.map.mapper)) {
      throw new MeshError('not_found', `mapper ${quoteInput(spec.map.mapper)} not found; available: ${context.mappers.join(', ')}`);
    }
    kind = 'words';
  } else {
    const name = validateModelName('spec.model', spec.map.model);
    const tasks = await context.modelTasks(name);
    if (!tasks) throw new MeshError('not_found', `model ${quoteInput(name)} not found`);
    kind = tasks.includes('classify') ? 'classify' : 'generate';
  }

  if (!spec.input) throw invalidField('spec.input', 'must set one of inline, file or dataset', 'none');
  if (spec.input.$case === 'inline') {
    const records = spec.input.inline.records;
    if (records.length === 0) throw invalidField('spec.inline.records', 'must have at least 1 record', 0);
    if (records.length > context.maxInlineRecords) {
      throw invalidField('spec.inline.records', `must have at most ${context.maxInlineRecords} records`, records.length);
    }
    records.forEach((r, i) => {
      if (r.text.length > context.maxRecordChars) {
        throw invalidField(`spec.inline.records[${i}].text`, `must be at most ${context.maxRecordChars} characters`, contentGiven(r.text));
      }
      checkLength(`spec.inline.records[${i}].label`, r.label, MAX_LABEL_CHARS);
    });
  } else if (spec.input.$case === 'file') {
    validatePath('spec.file', spec.input.file);
  } else {
    checkLength('spec.dataset', spec.input.dataset, MAX_NAME_CHARS);
    if (!context.datasets.includes(spec.input.dataset)) {
      throw new MeshError('not_found', `dataset ${quoteInput(spec.input.dataset)} not found; available: ${context.datasets.join(', ')}`);
    }
  }

  if (spec.shardSize !== undefined && (spec.shardSize < 1 || spec.shardSize > MAX_SHARD_SIZE)) {
    throw invalidField('spec.shard_size', `must be from 1 to ${MAX_SHARD_SIZE}`, spec.shardSize);
  }
  checkLength('spec.reducer', spec.reducer, MAX_NAME_CHARS);
  checkLength('spec.callback_url', spec.callbackUrl, MAX_URL_CHARS);
  checkLength('spec.output_file', spec.outputFile, MAX_PATH_CHARS);
  const reducer = spec.reducer === '' ? (kind === 'words' ? 'top_k' : 'collect') : spec.reducer;
  if (!(REDUCERS as readonly string[]).includes(reducer)) {
    throw new MeshError('not_found', `reducer ${quoteInput(reducer)} not found; available: ${REDUCERS.join(', ')}`);
  }
  const suited = kind === 'words' ? WORD_REDUCERS : kind === 'classify' ? CLASSIFY_REDUCERS : GENERATE_REDUCERS;
  if (!suited.includes(reducer)) {
    const what = kind === 'words' ? `mapper ${quoteInput(spec.map.$case === 'mapper' ? spec.map.mapper : '')}` : `a ${kind === 'classify' ? 'classifier' : 'generative model'}`;
    throw invalidField('spec.reducer', `must be one of ${suited.join(', ')} for ${what}`, reducer);
  }
  if (spec.topK > MAX_TOP_K) throw invalidField('spec.top_k', `must be <= ${MAX_TOP_K}`, spec.topK);
  if (spec.maxAttempts > MAX_ATTEMPTS) throw invalidField('spec.max_attempts', `must be <= ${MAX_ATTEMPTS}`, spec.maxAttempts);
  if (spec.timeoutMs > MAX_TIMEOUT_MS) throw invalidField('spec.timeout_ms', `must be <= ${MAX_TIMEOUT_MS} (7 days)`, spec.timeoutMs);
  if (!Number.isInteger(spec.priority) || spec.priority < 0 || spec.priority > 3) {
    throw invalidField('spec.priority', 'must be one of PRIORITY_UNSPECIFIED, PRIORITY_LOW, PRIORITY_NORMAL, PRIORITY_HIGH', spec.priority);
  }
  if (spec.callbackUrl !== '') {
    // What the URL itself shows; where its host name resolves is the scheduler's check, at delivery.
    const checked = checkCallbackUrl(spec.callbackUrl, context.callbackAllow);
    if ('rule' in checked) throw invalidField('spec.callback_url', checked.rule, spec.callbackUrl);
  }
  if (spec.outputFile !== '' && reducer !== 'collect') throw invalidField('spec.output_file', 'is only for the collect reducer', spec.outputFile);
  if (spec.outputFile !== '') validatePath('spec.output_file', spec.outputFile);
  if (spec.overwriteOutput && spec.outputFile === '') throw invalidField('spec.overwrite_output', 'is only for a job with an output_file', true);
  if (spec.generate && kind !== 'generate') throw invalidField('spec.generate', 'is only for a generative model', 'set');
  const generate = kind === 'generate' ? validateGenerateOptions(spec.generate) : spec.generate;

  return {
    ...spec,
    shardSize: spec.shardSize ?? DEFAULT_SHARD_SIZE,
    reducer,
    topK: reducer === 'top_k' && spec.topK === 0 ? DEFAULT_TOP_K : spec.topK,
    maxAttempts: spec.maxAttempts || DEFAULT_ATTEMPTS,
    priority: spec.priority || 2,
    generate,
  };
}

/**
 * What the edge can know of a path: not empty, no NUL, not absurdly long. Whether it stays inside
 * its root only the scheduler, the workers and the aggregator can tell (they know the roots).
 */
function validatePath(field: string, path: string): void {
  if (path.trim() === '') throw invalidField(field, 'must be a path', path);
  if (path.length > MAX_PATH_CHARS) throw invalidField(field, `must be at most ${MAX_PATH_CHARS} characters`, path);
  if (/[\u0000-\u001f]/.test(path)) throw invalidField(field, 'must not contain control characters (NUL, newline...)', path);
}

function validateGenerateOptions(options: JobSpecFields['generate']): JobSpecFields['generate'] {
  const given = options ?? { maxTokens: 0, stop: [] };
  try {
    const valid = validateGenerateRequest({ model: 'm', prompt: 'p', priority: 0, ...given }, { maxPromptChars: 1, maxInputChars: 1 });
    return { maxTokens: valid.maxTokens, temperature: valid.temperature, seed: given.seed, stop: valid.stop };
  } catch (err) {
    // Same limits as Generate; name the job's field.
    if (err instanceof MeshError) throw new MeshError(err.kind, `spec.generate.${err.message}`);
    throw err;
  }
}
