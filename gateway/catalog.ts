/**
 * The gateway's view of which models exist: the balancer's list, cached briefly so that most
 * calls cost no extra hop, and refreshed at once on a miss so a newly joined model is found.
 */

/** The part of a model description the gateway needs. */
export interface CatalogEntry {
  name: string;
}

/** Caches a list of models fetched by `fetchModels` for `ttlMs`. */
export class ModelCatalog<M extends CatalogEntry> {
  private cache: { at: number; models: Map<string, M> } | undefined;
  private pending: Promise<Map<string, M>> | undefined;

  constructor(
    private readonly fetchModels: () => Promise<M[]>,
    private readonly ttlMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** All models, fresh within the TTL. */
  async list(): Promise<M[]> {
    return [...(await this.current(false)).values()];
  }

  /** The model of that name, refreshing once on a miss; undefined if it does not exist. */
  async find(name: string): Promise<M | undefined> {
    const fresh = this.isFresh();
    const hit = (await this.current(false)).get(name);
    // A list fetched just now for this call is as fresh as a refresh would be.
    if (hit || !fresh) return hit;
    return (await this.current(true)).get(name);
  }

  private isFresh(): boolean {
    return this.cache !== undefined && this.now() - this.cache.at < this.ttlMs;
  }

  private async current(forceRefresh: boolean): Promise<Map<string, M>> {
    if (!forceRefresh && this.isFresh()) return this.cache!.models;
    // Concurrent misses share one fetch.
    this.pending ??= this.fetchModels()
      .then((models) => {
        const map = new Map(models.map((m) => [m.name, m]));
        this.cache = { at: this.now(), models: map };
        return map;
      })
      .finally(() => (this.pending = undefined));
    return this.pending;
  }
}
