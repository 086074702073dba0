/**
 * The gateway's view of which models exist: the balancer's list, cached briefly so that most
 * calls cost no extra hop, and refreshed at once on a miss so a newly joined model is found. A
 * model served in several versions is listed once per version; lookups by name answer the newest.
 */

/** The part of a model description the gateway needs. */
export interface CatalogEntry {
  name: string;
  /** The version; entries without one count as a single version. */
  version?: string;
  /** Ready workers serving this version; versions with none are passed over when choosing the newest. */
  readyWorkers?: number;
}

/**
 * Orders versions newest first: integer versions (Triton's `<model>/<version>` folders) by
 * value, above any other version string, which compare as text.
 */
export function compareVersionsNewestFirst(a: string, b: string): number {
  const ia = /^\d{1,15}$/.test(a) ? Number(a) : undefined;
  const ib = /^\d{1,15}$/.test(b) ? Number(b) : undefined;
  if (ia !== undefined && ib !== undefined) return ib - ia;
  if (ia !== undefined) return -1;
  if (ib !== undefined) return 1;
  return a < b ? 1 : a > b ? -1 : 0;
}

/** Caches a list of models fetched by `fetchModels` for `ttlMs`. */
export class ModelCatalog<M extends CatalogEntry> {
  private cache: { at: number; models: M[]; byName: Map<string, M[]> } | undefined;
  private pending: Promise<Map<string, M[]>> | undefined;
  /** Every model listed since this catalog was made, as last listed (newest version first). */
  private readonly offered = new Map<string, M[]>();

  constructor(
    private readonly fetchModels: () => Promise<M[]>,
    private readonly ttlMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** All models (every version), fresh within the TTL, in the balancer's order. */
  async list(): Promise<M[]> {
    await this.current(false);
    return [...this.cache!.models];
  }

  /**
   * The model of that name, refreshing once on a miss; undefined if it does not exist. Of several
   * versions, the newest that has a ready worker (or the newest, when none has).
   */
  async find(name: string): Promise<M | undefined> {
    return newestServed(await this.versions(name));
  }

  /**
   * Every version of the model, newest first, refreshing once on a miss; [] if it does not exist.
   * A model the list holds is answered at once even when the list has expired, and the list is
   * refreshed behind the call: every call looks its model up, and waiting for the balancer's list
   * on the first call after each TTL would add a round trip to that call's time to first token
   * (the balancer, which routes the call, has the last word on where the model is served anyway).
   */
  async versions(name: string): Promise<M[]> {
    const fresh = this.isFresh();
    const known = fresh ? undefined : this.cache?.byName.get(name);
    if (known) {
      this.current(true).catch(() => undefined);
      return known;
    }
    const hit = (await this.current(false)).get(name);
    // A list fetched just now for this call is as fresh as a refresh would be.
    if (hit || !fresh) return hit ?? [];
    return (await this.current(true)).get(name) ?? [];
  }

  /**
   * The versions of a model that was listed before but may not be now (its workers are starting,
   * restarting or gone), as last listed; [] for a model never listed since this catalog was made.
   * Tells "not ready now" (UNAVAILABLE) from "does not exist" (NOT_FOUND).
   */
  offeredBefore(name: string): M[] {
    return [...(this.offered.get(name) ?? [])];
  }

  private isFresh(): boolean {
    return this.cache !== undefined && this.now() - this.cache.at < this.ttlMs;
  }

  private async current(forceRefresh: boolean): Promise<Map<string, M[]>> {
    if (!forceRefresh && this.isFresh()) return this.cache!.byName;
    // Concurrent misses share one fetch.
    this.pending ??= this.fetchModels()
      .then((models) => {
        const byName = new Map<string, M[]>();
        for (const m of models) byName.set(m.name, [...(byName.get(m.name) ?? []), m]);
        for (const versions of byName.values()) versions.sort((a, b) => compareVersionsNewestFirst(a.version ?? '', b.version ?? ''));
        this.cache = { at: this.now(), models, byName };
        for (const [name, versions] of byName) this.offered.set(name, versions);
        return byName;
      })
      .finally(() => (this.pending = undefined));
    return this.pending;
  }
}

/** Of versions sorted newest first: the newest with a ready worker, else the newest. */
export function newestServed<M extends CatalogEntry>(versions: readonly M[]): M | undefined {
  return versions.find((m) => (m.readyWorkers ?? 1) > 0) ?? versions[0];
}
