/**
 * `maas job ...`: batch jobs through the gateway's public JobService. `submit --watch` and
 * `watch` draw a live progress line (tasks, records per second, ETA) and print the result.
 */
import { Client, ClientError, Metadata, Status } from 'nice-grpc';
import { MeshCallOptions } from '../../common/client';
import { Priority } from '../../generated/maas/v1/inference';
import { CallbackState, Job, JobEvent, JobResult, JobServiceDefinition, JobSpec, JobState } from '../../generated/maas/v1/jobs';

type JobClient = Client<typeof JobServiceDefinition, MeshCallOptions>;

/** Parsed options of `maas job submit`. */
export interface SubmitOptions {
  mapper?: string;
  model?: string;
  dataset?: string;
  input?: string;
  records?: string[];
  reducer?: string;
  shardSize?: number;
  topK?: number;
  maxAttempts?: number;
  timeoutMs?: number;
  priority?: string;
  callbackUrl?: string;
  output?: string;
  overwrite?: boolean;
  maxTokens?: number;
  temperature?: number;
  seed?: number;
  stop?: string[];
}

/**
 * Builds the JobSpec of `maas job submit`. Paths are sent as given: `--input` is relative to the
 * mesh's input root, `--output` to the caller's folder under its output root.
 */
export function specFromOptions(o: SubmitOptions): JobSpec {
  const given = [o.mapper, o.model].filter((x) => x !== undefined).length;
  if (given !== 1) throw new UsageError('give exactly one of --mapper or --model');
  const inputs = [o.dataset, o.input, o.records?.length ? 'records' : undefined].filter((x) => x !== undefined).length;
  if (inputs !== 1) throw new UsageError('give exactly one of --dataset, --input FILE or --record TEXT');
  const priority = o.priority === undefined ? Priority.PRIORITY_NORMAL : PRIORITIES[o.priority];
  if (priority === undefined) throw new UsageError(`--priority must be low, normal or high, given "${o.priority}"`);
  return JobSpec.fromPartial({
    map: o.mapper !== undefined ? { $case: 'mapper', mapper: o.mapper } : { $case: 'model', model: o.model! },
    input:
      o.dataset !== undefined
        ? { $case: 'dataset', dataset: o.dataset }
        : o.input !== undefined
          ? { $case: 'file', file: o.input }
          : { $case: 'inline', inline: { records: o.records!.map((text) => ({ text, label: '' })) } },
    shardSize: o.shardSize,
    reducer: o.reducer ?? '',
    topK: o.topK ?? 0,
    maxAttempts: o.maxAttempts ?? 0,
    timeoutMs: o.timeoutMs ?? 0,
    priority,
    callbackUrl: o.callbackUrl ?? '',
    outputFile: o.output ?? '',
    overwriteOutput: o.overwrite ?? false,
    generate:
      o.maxTokens !== undefined || o.temperature !== undefined || o.seed !== undefined || o.stop
        ? { maxTokens: o.maxTokens ?? 0, temperature: o.temperature, seed: o.seed, stop: o.stop ?? [] }
        : undefined,
  });
}

const PRIORITIES: Record<string, Priority> = { low: Priority.PRIORITY_LOW, normal: Priority.PRIORITY_NORMAL, high: Priority.PRIORITY_HIGH };

/** A mistake in the command line. */
export class UsageError extends Error {}

const stateName = (s: JobState) => JobState[s].replace('JOB_STATE_', '').toLowerCase();

/**
 * Follows a job's events until it ends, drawing progress (or, with `json`, writing each event as a
 * JSON line); reconnects if the stream breaks after it has started. Returns the exit code: 0 when
 * the job succeeded, 1 when it failed or was cancelled.
 */
export async function watchJob(client: JobClient, jobId: string, out: NodeJS.WriteStream, options: { metadata?: Metadata; json?: boolean } = {}): Promise<number> {
  let after = 0;
  let failures = 0;
  let started = false;
  const progress = new ProgressLine(out);
  for (;;) {
    try {
      for await (const { event } of client.watch({ jobId, afterSequence: after }, { metadata: options.metadata })) {
        started = true;
        if (!event) continue;
        after = event.sequence;
        failures = 0;
        const code = options.json ? jsonEvent(event, out) : describeEvent(event, progress, out);
        if (code !== undefined) return code;
      }
      return 0;
    } catch (err) {
      // The scheduler may be restarting: its store keeps every event, so pick up where we were.
      // A watch that never started (no gateway, no such job) fails at once.
      if (started && err instanceof ClientError && err.code === Status.UNAVAILABLE && failures++ < 30) {
        progress.note(`connection lost (${err.details}); reconnecting…`);
        await new Promise((r) => setTimeout(r, Math.min(200 * 2 ** failures, 2000)));
        continue;
      }
      throw err;
    }
  }
}

/** Writes one event as a JSON line; returns an exit code once the job has ended. */
function jsonEvent(event: JobEvent, out: NodeJS.WriteStream): number | undefined {
  out.write(`${JSON.stringify(JobEvent.toJSON(event))}\n`);
  const end = event.event?.$case;
  return end === 'completed' ? 0 : end === 'failed' || end === 'cancelled' ? 1 : undefined;
}

/** Shows one event; returns an exit code once the job has ended. */
function describeEvent(event: JobEvent, progress: ProgressLine, out: NodeJS.WriteStream): number | undefined {
  const e = event.event;
  switch (e?.$case) {
    case 'accepted':
      progress.total(e.accepted.tasksTotal, e.accepted.recordsTotal);
      return undefined;
    case 'progress':
      progress.update(e.progress.tasksDone, e.progress.recordsDone, e.progress.recordsPerSecond);
      return undefined;
    case 'taskRetried':
      progress.note(`task ${e.taskRetried.taskIndex} attempt ${e.taskRetried.attempt} failed (${e.taskRetried.error}); retrying in ${e.taskRetried.retryInMs} ms`);
      return undefined;
    case 'taskWaiting':
      progress.note(`waiting for a worker (task ${e.taskWaiting.taskIndex}: ${e.taskWaiting.reason}); no attempt is used`);
      return undefined;
    case 'taskFailed':
      progress.note(`task ${e.taskFailed.taskIndex} failed after ${e.taskFailed.attempts} attempts: ${e.taskFailed.error}`);
      return undefined;
    case 'completed':
      progress.finish('succeeded');
      out.write(formatResult(e.completed));
      return 0;
    case 'failed':
      progress.finish('failed');
      out.write(`error: ${e.failed.error}\n`);
      return 1;
    case 'cancelled':
      progress.finish('cancelled');
      out.write(`cancelled: ${e.cancelled.reason}\n`);
      return 1;
    default:
      return undefined;
  }
}

/** One progress line on stderr: redrawn in place on a terminal, printed every 10% otherwise. */
class ProgressLine {
  private tasksTotal = 0;
  private recordsTotal = 0;
  private lastDecile = -1;
  private readonly tty: boolean;
  constructor(private readonly out: NodeJS.WriteStream) {
    this.tty = Boolean(process.stderr.isTTY);
  }
  total(tasks: number, records: number) {
    this.tasksTotal = tasks;
    this.recordsTotal = records;
    this.update(0, 0, 0);
  }
  update(tasksDone: number, recordsDone: number, rate: number) {
    const share = this.tasksTotal ? tasksDone / this.tasksTotal : 0;
    const width = 30;
    const filled = Math.round(share * width);
    const eta = rate > 0 ? ` ETA ${formatSeconds((this.recordsTotal - recordsDone) / rate)}` : '';
    const line = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${tasksDone}/${this.tasksTotal} tasks, ${recordsDone}/${this.recordsTotal} records, ${rate.toFixed(0)} rec/s${eta}`;
    if (this.tty) process.stderr.write(`\r${line}\x1b[K`);
    else if (Math.floor(share * 10) > this.lastDecile) {
      this.lastDecile = Math.floor(share * 10);
      process.stderr.write(`${line}\n`);
    }
  }
  note(message: string) {
    process.stderr.write(`${this.tty ? '\r\x1b[K' : ''}${message}\n`);
  }
  finish(state: string) {
    process.stderr.write(`${this.tty ? '\n' : ''}job ${state}\n`);
    void this.out;
  }
}

function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return '?';
  return s < 60 ? `${Math.ceil(s)}s` : `${Math.floor(s / 60)}m${Math.ceil(s % 60)}s`;
}

/** A result as text. */
export function formatResult(result: JobResult | undefined): string {
  const r = result?.result;
  switch (r?.$case) {
    case 'wordCounts': {
      const w = r.wordCounts;
      const rows = w.words.slice(0, 50).map((c, i) => `${String(i + 1).padStart(4)}  ${c.word.padEnd(20)} ${c.count}`);
      const more = w.words.length > 50 ? [`  … ${w.words.length - 50} more`] : [];
      return [`records: ${w.records}  words: ${w.totalWords}  distinct: ${w.distinctWords}`, ...rows, ...more, ''].join('\n');
    }
    case 'accuracy': {
      const a = r.accuracy;
      const cells = a.confusion.map((c) => `  actual ${c.actual.padEnd(8)} predicted ${c.predicted.padEnd(8)} ${c.count}`);
      return [
        `accuracy: ${a.accuracy.toFixed(4)}  precision: ${a.precision.toFixed(4)}  recall: ${a.recall.toFixed(4)}  f1: ${a.f1.toFixed(4)}  (positive: ${a.positiveLabel}, ${a.total} records)`,
        'confusion matrix:',
        ...cells,
        '',
      ].join('\n');
    }
    case 'collect': {
      const c = r.collect;
      if (c.outputFile) return `${c.count} outputs written in input order to ${c.outputFile}\n`;
      return [...c.outputs.map((o) => `${o.index}\t${o.output}`), `${c.count} outputs`, ''].join('\n');
    }
    case 'mean':
      return `mean ${r.mean.of}: ${r.mean.mean.toFixed(4)} over ${r.mean.count} records\n`;
    default:
      return 'no result\n';
  }
}

/** A job as a few lines of text. */
export function formatJob(job: Job): string {
  const spec = job.spec;
  const what = spec?.map?.$case === 'mapper' ? `mapper ${spec.map.mapper}` : `model ${spec?.map?.$case === 'model' ? spec.map.model : '?'}`;
  const input = spec?.input?.$case === 'dataset' ? `dataset ${spec.input.dataset}` : spec?.input?.$case === 'file' ? `file ${spec.input.file}` : 'inline records';
  const lines = [
    `${job.id}  ${stateName(job.state)}`,
    `  ${what} over ${input}, reducer ${spec?.reducer}`,
    `  tasks ${job.tasksDone}/${job.tasksTotal}, records ${job.recordsDone}/${job.recordsTotal}`,
    `  created ${new Date(job.createdAtMs).toISOString()}${job.finishedAtMs ? `, finished ${new Date(job.finishedAtMs).toISOString()}` : ''}`,
  ];
  if (job.error) lines.push(`  error: ${job.error}`);
  if (job.callback) lines.push(`  callback: ${callbackStateName(job.callback.state)}${job.callback.error ? ` (${job.callback.error})` : ''}`);
  return `${lines.join('\n')}\n${job.result ? formatResult(job.result) : ''}`;
}

function callbackStateName(state: CallbackState): string {
  return CallbackState[state]?.replace('CALLBACK_STATE_', '').toLowerCase() ?? String(state);
}

/** One line per job, for `maas job list`. */
export function formatJobRow(job: Job): string {
  const pct = job.tasksTotal ? Math.floor((100 * job.tasksDone) / job.tasksTotal) : 0;
  return `${job.id.padEnd(28)} ${stateName(job.state).padEnd(10)} ${String(pct).padStart(3)}%  ${job.tasksDone}/${job.tasksTotal} tasks  ${new Date(job.createdAtMs).toISOString()}`;
}
