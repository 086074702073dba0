/**
 * Per-tenant limits of the scheduler: how many online requests a tenant may have open and waiting,
 * how many unfinished jobs and Watch streams it may hold, and how fast it may send requests (a
 * token bucket with a burst). Defaults apply to every tenant; `parseTenantOverrides` reads
 * per-tenant exceptions (`acme:rate=100,burst=200;globex:in_flight=32`).
 *
 * Plain TypeScript: no gRPC, no process globals; time comes from the caller.
 */

/** The limits that apply to one tenant. */
export interface TenantLimitValues {
  /** Online requests open at once (holding a slot or waiting for one). */
  maxInFlight: number;
  /** Of those, how many may wait for a slot. */
  maxQueued: number;
  /** Unfinished (queued or running) batch jobs. */
  maxActiveJobs: number;
  /** Open WatchJob streams. */
  maxWatches: number;
  /** Sustained requests per second; 0 for no rate limit. */
  rate: number;
  /** Requests that may arrive at once above the rate (the bucket's size). */
  burst: number;
}

/** Names of the limits in an override, as written: `in_flight=32`. */
const OVERRIDE_KEYS: Record<string, keyof TenantLimitValues> = {
  in_flight: 'maxInFlight',
  queued: 'maxQueued',
  jobs: 'maxActiveJobs',
  watches: 'maxWatches',
  rate: 'rate',
  burst: 'burst',
};

/** Tenant name -> the limits it sets differently from the defaults. */
export type TenantOverrides = Map<string, Partial<TenantLimitValues>>;

/**
 * Parses `tenant:key=value,key=value;tenant:...` (keys: in_flight, queued, jobs, watches, rate,
 * burst). Throws an Error naming the bad entry's position and what was expected.
 */
export function parseTenantOverrides(spec: string, isTenantName: (name: string) => boolean): TenantOverrides {
  const out: TenantOverrides = new Map();
  spec
    .split(';')
    .map((s) => s.trim())
    .filter(Boolean)
    .forEach((entry, i) => {
      const colon = entry.indexOf(':');
      const tenant = colon > 0 ? entry.slice(0, colon).trim() : '';
      if (!isTenantName(tenant)) throw new Error(`entry ${i + 1}: expected tenant:limit=value,..., with a valid tenant name`);
      if (out.has(tenant)) throw new Error(`entry ${i + 1}: tenant "${tenant}" is given twice`);
      const limits: Partial<TenantLimitValues> = {};
      for (const pair of entry.slice(colon + 1).split(',').map((s) => s.trim()).filter(Boolean)) {
        const [key, value, ...rest] = pair.split('=');
        const name = OVERRIDE_KEYS[key?.trim() ?? ''];
        if (!name || rest.length > 0) throw new Error(`entry ${i + 1} (${tenant}): expected one of ${Object.keys(OVERRIDE_KEYS).join(', ')} =value`);
        const n = Number(value);
        const integerOnly = name !== 'rate';
        if (value === undefined || value.trim() === '' || !Number.isFinite(n) || n < 0 || (integerOnly && !Number.isSafeInteger(n))) {
          throw new Error(`entry ${i + 1} (${tenant}): ${key} must be ${integerOnly ? 'an integer' : 'a number'} >= 0`);
        }
        limits[name] = n;
      }
      if (Object.keys(limits).length === 0) throw new Error(`entry ${i + 1} (${tenant}): no limits given`);
      out.set(tenant, limits);
    });
  return out;
}

/** The limits of every tenant: the defaults, with each tenant's overrides on top. */
export class TenantLimits {
  constructor(
    private readonly defaults: TenantLimitValues,
    private readonly overrides: TenantOverrides = new Map(),
  ) {}

  /** The limits that apply to `tenant`. */
  of(tenant: string): TenantLimitValues {
    const o = this.overrides.get(tenant);
    return o ? { ...this.defaults, ...o } : this.defaults;
  }

  /** True when `tenant` has its own value of `limit` (so a message can name the override). */
  isOverridden(tenant: string, limit: keyof TenantLimitValues): boolean {
    return this.overrides.get(tenant)?.[limit] !== undefined;
  }
}

/** A token bucket: `burst` tokens at most, refilled at `rate` per second. */
export class TokenBucket {
  private tokens: number;
  private updatedAt: number;

  constructor(now: number, burst: number) {
    this.tokens = burst;
    this.updatedAt = now;
  }

  /**
   * Takes one token if there is one (refilling first for the time since the last call) and returns
   * 0; otherwise takes nothing and returns the milliseconds until one is due.
   */
  take(now: number, rate: number, burst: number): number {
    this.refill(now, rate, burst);
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - this.tokens) * 1000) / rate);
  }

  /** Takes up to `n` whole tokens, leaving at least `keep` (after refilling); returns how many it took. */
  takeUpTo(now: number, rate: number, burst: number, n: number, keep: number): number {
    this.refill(now, rate, burst);
    const taken = Math.max(0, Math.min(n, Math.floor(this.tokens - keep)));
    this.tokens -= taken;
    return taken;
  }

  private refill(now: number, rate: number, burst: number) {
    const elapsed = Math.max(0, now - this.updatedAt);
    this.tokens = Math.min(burst, this.tokens + (elapsed * rate) / 1000);
    this.updatedAt = now;
  }

  /** Gives back `n` tokens taken for requests that were never sent (never above `burst`). */
  refund(burst: number, n: number): void {
    this.tokens = Math.min(burst, this.tokens + n);
  }

  /** True when the bucket would be full at `now`: it can be forgotten without changing anything. */
  fullAt(now: number, rate: number, burst: number): boolean {
    return this.tokens + ((now - this.updatedAt) * rate) / 1000 >= burst;
  }
}

/** Buckets this many tenants at most before the full ones are forgotten. */
const PRUNE_AT = 10_000;

/**
 * One token bucket per tenant. A full bucket says nothing a new one would not, so once the map
 * holds {@link PRUNE_AT} tenants the full ones are forgotten; what stays is the tenants that sent
 * requests within their last refill time. The next prune waits until the map has doubled, so a
 * flood of tenants that all keep their buckets below full costs amortized O(1) per new tenant,
 * not a scan of the map each.
 */
export class RateLimiter {
  private readonly buckets = new Map<string, TokenBucket>();
  private pruneAt = PRUNE_AT;

  constructor(
    private readonly limitsOf: (tenant: string) => { rate: number; burst: number },
    private readonly now: () => number,
  ) {}

  /** 0 when `tenant` may send a request now (and counts it); else milliseconds until it may. */
  take(tenant: string): number {
    const { rate, burst } = this.limitsOf(tenant);
    if (rate <= 0) return 0;
    return this.bucket(tenant, burst).take(this.now(), rate, burst);
  }

  /** The tenant's bucket, made full when it has none. */
  private bucket(tenant: string, burst: number): TokenBucket {
    let bucket = this.buckets.get(tenant);
    if (!bucket) {
      const now = this.now();
      if (this.buckets.size >= this.pruneAt) {
        this.prune(now);
        this.pruneAt = Math.max(PRUNE_AT, 2 * this.buckets.size);
      }
      bucket = new TokenBucket(now, burst);
      this.buckets.set(tenant, bucket);
    }
    return bucket;
  }

  /**
   * Takes up to `n` tokens of `tenant` now, leaving at least `keep` of its burst in the bucket (all
   * `n` with no rate limit); returns how many it took.
   */
  takeUpTo(tenant: string, n: number, keep = 0): number {
    const { rate, burst } = this.limitsOf(tenant);
    if (rate <= 0) return n;
    return this.bucket(tenant, burst).takeUpTo(this.now(), rate, burst, n, keep);
  }

  /** Gives back `n` tokens taken for requests `tenant` never sent (a permit's unused budget). */
  refund(tenant: string, n: number): void {
    const { rate, burst } = this.limitsOf(tenant);
    if (rate <= 0 || n <= 0) return;
    this.buckets.get(tenant)?.refund(burst, n);
  }

  /** Tenants with a bucket now (for tests). */
  get size(): number {
    return this.buckets.size;
  }

  private prune(now: number): void {
    for (const [tenant, bucket] of this.buckets) {
      const { rate, burst } = this.limitsOf(tenant);
      if (bucket.fullAt(now, rate, burst)) this.buckets.delete(tenant);
    }
  }
}

/** Counts what each tenant holds (such as open Watch streams) against a limit. */
export class TenantCounter {
  private readonly counts = new Map<string, number>();

  /** Counts one more for `tenant` and returns true, unless it already holds `max`. */
  tryAcquire(tenant: string, max: number): boolean {
    const n = this.counts.get(tenant) ?? 0;
    if (n >= max) return false;
    this.counts.set(tenant, n + 1);
    return true;
  }

  /** Gives one back. */
  release(tenant: string): void {
    const n = (this.counts.get(tenant) ?? 0) - 1;
    if (n <= 0) this.counts.delete(tenant);
    else this.counts.set(tenant, n);
  }

  /** What `tenant` holds now. */
  count(tenant: string): number {
    return this.counts.get(tenant) ?? 0;
  }
}
