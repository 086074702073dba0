/**
 * Schema versions of the mesh's SQLite stores: the version is the file's `PRAGMA user_version`,
 * and a store's code carries the list of forward migrations, the k-th (from 0) bringing a file from
 * version k to k + 1. At open, the migrations a file lacks run in one transaction (all or none),
 * then the version is set; a file newer than the code is refused, so an older release never
 * writes into tables it does not know. Version 0 is a new, empty file (or one made before
 * versions existed, which the first migration must accept).
 */
import type Database from 'better-sqlite3';

/** One forward migration of a store's schema. */
export interface StoreMigration {
  /** What it changes, for the log and for readers. */
  description: string;
  /** Applies the change (inside the open's transaction). */
  up(db: Database.Database): void;
}

/** A store file written by a newer release than this code (its schema version is unknown here). */
export class StoreTooNewError extends Error {
  override readonly name = 'StoreTooNewError';
}

/** What {@link migrateStore} did. */
export interface MigrationOutcome {
  /** The file's version when opened (0: new or unversioned). */
  from: number;
  /** Its version now: the number of migrations. */
  to: number;
}

/**
 * Brings the store open on `db` to the newest version of `migrations`, in one immediate
 * transaction; `label` names the store and its file in the messages. Throws
 * {@link StoreTooNewError} when the file's version is newer than the code's.
 */
export function migrateStore(db: Database.Database, label: string, migrations: readonly StoreMigration[]): MigrationOutcome {
  return db
    .transaction((): MigrationOutcome => {
      const from = db.pragma('user_version', { simple: true }) as number;
      const to = migrations.length;
      if (from > to) {
        throw new StoreTooNewError(
          `${label} has schema version ${from}, but this release knows versions up to ${to}: it was written by a newer release; run that release, or restore a copy made before the upgrade`,
        );
      }
      for (let v = from; v < to; v++) migrations[v].up(db);
      // PRAGMA takes no bound parameters; `to` is a count, not input.
      if (from !== to) db.pragma(`user_version = ${to}`);
      return { from, to };
    })
    .immediate();
}
