/**
 * A consistent-hash ring with virtual nodes: each worker owns many points on a 32-bit circle, and
 * a key belongs to the first worker point at or after the key's own hash. When a worker joins it
 * takes over only the keys that fall just before its points (about 1/(n+1) of them); when one
 * leaves only its keys move, to the next workers along the circle. Plain TypeScript.
 */

/** Virtual nodes per worker unless configured: ketama's number, enough for an even spread over a few workers. */
export const DEFAULT_VIRTUAL_NODES = 160;

/**
 * 32-bit hash of a string: FNV-1a over its UTF-16 code units, then murmur3's finalizer so that
 * strings differing only in their last characters (`w1#0`, `w1#1`) land far apart on the ring.
 */
export function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Settings of a {@link HashRing}. */
export interface HashRingOptions {
  /** Points per worker on the ring (default {@link DEFAULT_VIRTUAL_NODES}); more spreads keys more evenly. */
  readonly virtualNodes?: number;
  /** Hash of keys and of virtual node names into [0, 2^32); default {@link hash32}. */
  readonly hash?: (text: string) => number;
}

/** Workers placed on a hash ring; maps keys to workers. */
export class HashRing {
  /** Points per worker in use. */
  readonly virtualNodes: number;
  private readonly hash: (text: string) => number;
  private readonly members = new Set<string>();
  /** Ring points in ascending order, and the worker owning each. */
  private points: number[] = [];
  private owners: string[] = [];
  /** Set when members changed since the points were laid out; the next lookup lays them out again, so a batch of adds costs one sort. */
  private stale = true;

  /** @throws RangeError for a virtual node count that is not an integer >= 1 */
  constructor(ids: Iterable<string> = [], options: HashRingOptions = {}) {
    const virtualNodes = options.virtualNodes ?? DEFAULT_VIRTUAL_NODES;
    if (!(Number.isInteger(virtualNodes) && virtualNodes >= 1)) throw new RangeError(`virtualNodes must be an integer >= 1, given ${virtualNodes}`);
    this.virtualNodes = virtualNodes;
    this.hash = options.hash ?? hash32;
    for (const id of ids) this.members.add(id);
  }

  /** Number of workers on the ring. */
  get size(): number {
    return this.members.size;
  }

  /** Whether `id` is on the ring. */
  has(id: string): boolean {
    return this.members.has(id);
  }

  /** The workers on the ring, in the order they were added. */
  ids(): string[] {
    return [...this.members];
  }

  /** Places a worker on the ring; false if it was already there. */
  add(id: string): boolean {
    if (this.members.has(id)) return false;
    this.members.add(id);
    this.stale = true;
    return true;
  }

  /** Takes a worker off the ring; false if it was not there. */
  remove(id: string): boolean {
    if (!this.members.delete(id)) return false;
    this.stale = true;
    return true;
  }

  /** The worker that owns `key`; undefined when the ring is empty. */
  owner(key: string): string | undefined {
    this.layOut();
    if (this.points.length === 0) return undefined;
    return this.owners[this.indexOf(key)];
  }

  /**
   * Every worker once, in the order met walking the ring clockwise from `key`'s point: first the
   * owner, then the worker that would own the key if the owner were gone, and so on. Bounded-load
   * hashing takes the first of these that is not over its bound.
   */
  *walk(key: string): Generator<string, void, undefined> {
    this.layOut();
    const total = this.points.length;
    if (total === 0) return;
    const seen = new Set<string>();
    const start = this.indexOf(key);
    for (let step = 0; step < total && seen.size < this.members.size; step++) {
      const id = this.owners[(start + step) % total]!;
      if (seen.has(id)) continue;
      seen.add(id);
      yield id;
    }
  }

  /** Index of the first point at or after `key`'s hash, wrapping to 0 past the last point. */
  private indexOf(key: string): number {
    const h = this.hash(key) >>> 0;
    let lo = 0;
    let hi = this.points.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.points[mid]! < h) lo = mid + 1;
      else hi = mid;
    }
    return lo === this.points.length ? 0 : lo;
  }

  private layOut(): void {
    if (!this.stale) return;
    this.stale = false;
    const entries: { point: number; id: string }[] = [];
    for (const id of this.members) {
      for (let v = 0; v < this.virtualNodes; v++) entries.push({ point: this.hash(`${id}#${v}`) >>> 0, id });
    }
    // Ties (two workers on one point) are broken by id, so the ring does not depend on the order workers were added.
    entries.sort((a, b) => a.point - b.point || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    this.points = entries.map((e) => e.point);
    this.owners = entries.map((e) => e.id);
  }
}

/**
 * How many of `keys` map to a different worker under `after` than under `before`: the cost of a
 * membership change. Takes plain functions so any placement can be measured, e.g.
 * `countMovedKeys(keys, (k) => ring10.owner(k), (k) => ring11.owner(k))` against modulo hashing.
 */
export function countMovedKeys(
  keys: Iterable<string>,
  before: (key: string) => string | undefined,
  after: (key: string) => string | undefined,
): number {
  let moved = 0;
  for (const key of keys) if (before(key) !== after(key)) moved++;
  return moved;
}
