/**
 * The built-in datasets a batch job can name as its input (`JobSpec.dataset`). They ship with the
 * mesh's npm dependencies, so the scheduler (which counts them) and every worker (which reads a
 * shard) see the same records in the same order, with nothing downloaded.
 */
import { loadCorpus } from './corpus/spam-assassin';

/** Names of the built-in datasets. */
export const DATASET_NAMES = ['spam-assassin'] as const;

/** Name of a built-in dataset. */
export type DatasetName = (typeof DATASET_NAMES)[number];

/** One record of a built-in dataset. */
export interface DatasetRecord {
  /** The text a mapper or model reads. */
  readonly text: string;
  /** The record's expected label ('spam' or 'ham' for spam-assassin). */
  readonly label: string;
}

/** A dataset name that is not one of {@link DATASET_NAMES}. */
export class UnknownDatasetError extends Error {
  override name = 'UnknownDatasetError';
  constructor(
    /** The name given. */
    readonly dataset: string,
  ) {
    super(`unknown dataset ${JSON.stringify(dataset)}; the built-in datasets are: ${DATASET_NAMES.join(', ')}`);
  }
}

/** Whether `name` is one of {@link DATASET_NAMES}. */
export function isDatasetName(name: string): name is DatasetName {
  return (DATASET_NAMES as readonly string[]).includes(name);
}

/** How each dataset is built from its source, on first use. */
const SOURCES: Record<DatasetName, () => DatasetRecord[]> = {
  // Record i is the i-th message in the package's fixed order; the text is the subject and the
  // cleaned body, exactly as the spam-nb model reads a message in training.
  'spam-assassin': () => loadCorpus().map(({ body, label }) => Object.freeze({ text: body, label })),
};

const loaded = new Map<DatasetName, readonly DatasetRecord[]>();

/**
 * The records of a built-in dataset, in their fixed order. Built once per process (about half a
 * second for spam-assassin) and shared afterwards: the array and its records are frozen.
 * Throws {@link UnknownDatasetError} for a name not in {@link DATASET_NAMES}.
 */
export function loadDataset(name: string): readonly DatasetRecord[] {
  if (!isDatasetName(name)) throw new UnknownDatasetError(name);
  let records = loaded.get(name);
  if (!records) {
    records = Object.freeze(SOURCES[name]());
    loaded.set(name, records);
  }
  return records;
}

/** Number of records of a built-in dataset (6046 for spam-assassin). Throws {@link UnknownDatasetError}. */
export function datasetSize(name: string): number {
  return loadDataset(name).length;
}
