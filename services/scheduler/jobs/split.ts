/**
 * Splitting a job's input into tasks (shards): consecutive ranges of records, each mapped by one
 * worker. Plain TypeScript, no gRPC.
 */

/** One task's share of the input: records `first` to `first + count - 1`, in input order. */
export interface TaskRange {
  /** Position of the task in the job, from 0. */
  index: number;
  /** Position of the task's first record in the input, from 0. */
  first: number;
  /** Records in the task; at least 1. */
  count: number;
}

/**
 * Splits `recordsTotal` records into tasks of `shardSize` records each, in input order; the last
 * task holds what remains (so it may be shorter). No records, no tasks.
 *
 * @throws RangeError when `recordsTotal` is not an integer >= 0 or `shardSize` not an integer >= 1.
 */
export function splitIntoTasks(recordsTotal: number, shardSize: number): TaskRange[] {
  if (!Number.isSafeInteger(recordsTotal) || recordsTotal < 0) {
    throw new RangeError(`records_total must be an integer >= 0, given ${recordsTotal}`);
  }
  if (!Number.isSafeInteger(shardSize) || shardSize < 1) {
    throw new RangeError(`shard_size must be an integer >= 1, given ${shardSize}`);
  }
  const tasks: TaskRange[] = [];
  for (let first = 0, index = 0; first < recordsTotal; first += shardSize, index++) {
    tasks.push({ index, first, count: Math.min(shardSize, recordsTotal - first) });
  }
  return tasks;
}
