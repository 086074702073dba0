/**
 * The models a worker serves, by name and version, with the calls each has in flight. Loads and
 * reloads swap a name's versions in one step (a call starts on the old set or the new one, never
 * on neither); the models taken out are released only once their calls in flight have finished.
 * Plain TypeScript: no gRPC.
 */
import type { Model } from './models/runtime';

interface Entry {
  readonly model: Model;
  inFlight: number;
  /** Set when the entry was taken out: called when its last call ends. */
  onIdle?: () => void;
}

/** A model taken for one call; `release` when the call ends (once). */
export interface Lease {
  readonly model: Model;
  release(): void;
}

/** Versions sort by number when both are numbers, else as strings. */
function compareVersions(a: string, b: string): number {
  const na = Number(a);
  const nb = Number(b);
  return Number.isFinite(na) && Number.isFinite(nb) ? na - nb : a.localeCompare(b);
}

/** The worker's models; see the module comment. */
export class ModelTable {
  private readonly byName = new Map<string, Map<string, Entry>>();

  /** The model `name` at `version`, or its newest version when `version` is undefined or ''. */
  get(name: string, version?: string): Model | undefined {
    return this.entry(name, version)?.model;
  }

  /** The versions of `name` served, ascending (empty when it is not served). */
  versions(name: string): string[] {
    return [...(this.byName.get(name)?.keys() ?? [])].sort(compareVersions);
  }

  /** Takes a model for one call, so it is not released under it; undefined when not served. */
  acquire(name: string, version?: string): Lease | undefined {
    const entry = this.entry(name, version);
    if (!entry) return undefined;
    entry.inFlight++;
    let released = false;
    return {
      model: entry.model,
      release: () => {
        if (released) return;
        released = true;
        entry.inFlight--;
        if (entry.inFlight === 0) entry.onIdle?.();
      },
    };
  }

  /**
   * Serves `models` (every version of one name) in place of what `name` served; resolves once the
   * replaced models have no call in flight and have been released.
   */
  replace(name: string, models: readonly Model[]): Promise<void> {
    const old = this.byName.get(name);
    if (models.length === 0) this.byName.delete(name);
    else this.byName.set(name, new Map(models.map((m) => [m.info.version, { model: m, inFlight: 0 }])));
    return retire(old ? [...old.values()] : []);
  }

  /** Stops serving `name`; resolves once its calls in flight have finished and it is released. */
  remove(name: string): Promise<void> {
    return this.replace(name, []);
  }

  /** Whether `name` is served (any version). */
  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** Every model served, by name then version. */
  all(): Model[] {
    return [...this.byName.keys()].sort().flatMap((name) => this.versions(name).map((v) => this.byName.get(name)!.get(v)!.model));
  }

  /** The entry of `name` at `version`, or its newest. */
  private entry(name: string, version?: string): Entry | undefined {
    const versions = this.byName.get(name);
    if (!versions) return undefined;
    if (version) return versions.get(version);
    const newest = [...versions.keys()].sort(compareVersions).at(-1);
    return newest === undefined ? undefined : versions.get(newest);
  }
}

/** Waits for each entry's calls to end, then releases its model. */
async function retire(entries: Entry[]): Promise<void> {
  await Promise.all(
    entries.map(async (entry) => {
      if (entry.inFlight > 0) await new Promise<void>((resolve) => (entry.onIdle = resolve));
      await entry.model.release?.();
    }),
  );
}
