/**
 * Map tasks of batch jobs: read the shard's records, map them (a built-in mapper or a model
 * applied record by record), and commit the output to the aggregator.
 */
import { MeshError } from '../../common/errors';
import { AggregatorServiceDefinition } from '../../generated/maas/internal/v1/aggregator';
import { MapTask, MapTaskResult } from '../../generated/maas/internal/v1/task';
import { Client } from 'nice-grpc';
import { MeshCallOptions } from '../../common/client';
import { Model } from './models/runtime';

/** The built-in mappers every worker runs. */
export const MAPPERS: readonly string[] = ['wordcount'];

/** What a map task needs from the worker. */
export interface MapContext {
  /** The worker's models, by name. */
  models: ReadonlyMap<string, Model>;
  /** Client of the aggregator. */
  aggregator: Client<typeof AggregatorServiceDefinition, MeshCallOptions>;
  /** Aborts when the task is cancelled. */
  signal: AbortSignal;
  /** The task's deadline (epoch ms), if any. */
  deadline: number | undefined;
}

/** Maps one shard and commits its output; resolves with what the aggregator answered. */
export async function runMapTask(task: MapTask, context: MapContext): Promise<MapTaskResult> {
  void task;
  void context;
  throw new MeshError('unavailable', 'map tasks are not implemented yet');
}
