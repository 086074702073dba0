/**
 * Routing policies of the balancer: which of the workers serving a model gets the next request.
 *
 * Round robin and random are the baselines; least outstanding and power of two choices (p2c)
 * look at the balancer's own count of requests in flight to each worker, which keeps the tail
 * short when one worker is slow. `p2c_ewma` adds each worker's peak-EWMA latency (the
 * Finagle/Linkerd cost), `weighted` shares requests by reported capacity (nginx's smooth weighted
 * round robin), and `consistent_hash` keeps a request's affinity key on one worker with a bound on
 * load. Plain TypeScript: no gRPC, randomness injected.
 *
 * How each policy reads the optional fields of a {@link Candidate}:
 *
 * | policy              | outstanding | ewmaMs, ewmaAgeMs | capacity   | weight (slow start)                    |
 * |---------------------|-------------|-------------------|------------|----------------------------------------|
 * | `round_robin`       | -           | -                 | -          | ignored                                |
 * | `random`            | -           | -                 | -          | ignored                                |
 * | `least_outstanding` | yes         | -                 | -          | compares (outstanding + 1) / weight    |
 * | `p2c`               | yes         | -                 | -          | compares (outstanding + 1) / weight    |
 * | `p2c_ewma`          | yes         | yes               | free slots | cost divided by weight                 |
 * | `weighted`          | -           | -                 | yes        | multiplies capacity                    |
 * | `consistent_hash`   | load bound  | -                 | -          | ignored with a key; as p2c without one |
 */
import { DEFAULT_VIRTUAL_NODES, HashRing } from './hash-ring';

/** Name of a routing policy, as written in config. */
export type PolicyName = 'round_robin' | 'random' | 'least_outstanding' | 'p2c' | 'p2c_ewma' | 'weighted' | 'consistent_hash';

/** Every policy name, in the order config help lists them. */
export const POLICY_NAMES: readonly PolicyName[] = Object.freeze([
  'round_robin',
  'random',
  'least_outstanding',
  'p2c',
  'p2c_ewma',
  'weighted',
  'consistent_hash',
] as const);

/** A worker the policy may pick. Only `id` and `outstanding` are required; see the table above for who reads the rest. */
export interface Candidate {
  /** Stable identity of the worker. */
  readonly id: string;
  /** Requests in flight to this worker, as counted by the balancer. */
  readonly outstanding: number;
  /** Peak-EWMA latency of the worker, ms (see `PeakEwma`); undefined while it has no samples, and then `p2c_ewma` gives it a prior. */
  readonly ewmaMs?: number;
  /**
   * How long ago the sample behind `ewmaMs` was taken, ms: missing means the estimate is current,
   * `Infinity` that it was never confirmed by this balancer's own calls (a worker's own report).
   * `p2c_ewma` lets the estimate of a much slower worker count less the older it is, so that
   * such a worker gets a probe now and then and is found again when it recovers.
   */
  readonly ewmaAgeMs?: number;
  /**
   * Requests the worker says it can run at once; `weighted` shares by it (missing, zero or
   * negative counts as 1). `p2c_ewma` avoids a much slower worker only while the faster one has
   * fewer than this in flight (missing counts as no limit).
   */
  readonly capacity?: number;
  /**
   * Slow-start multiplier in (0, 1] (see `SlowStart`); missing means 1. Values below 0.01 count as
   * 0.01: a worker that must get nothing belongs out of the list.
   */
  readonly weight?: number;
}

/** What a request tells the policy besides its model. */
export interface PickOptions {
  /**
   * Affinity key of the request (a session id, a prompt prefix). Only `consistent_hash` reads it;
   * an empty string counts as no key.
   */
  readonly affinityKey?: string;
}

/** Picks one worker per request. A policy may keep state per key (per model), never across keys. */
export interface Policy {
  /** The policy's config name. */
  readonly name: PolicyName;
  /**
   * Picks one of `candidates` for a request for `key` (the model name); undefined when the list is
   * empty, the only candidate when there is one. Does not modify the list.
   */
  pick(key: string, candidates: readonly Candidate[], options?: PickOptions): Candidate | undefined;
  /**
   * Drops what the policy keeps for `key` (a model no worker serves any more), so state per model
   * lasts only as long as the model is served. A later pick for the key starts afresh.
   */
  forget(key: string): void;
  /** Number of keys the policy keeps state for, for tests and diagnostics. */
  readonly keys: number;
}

/** Settings of the policies that have any; each is ignored by the others. */
export interface PolicyOptions {
  /**
   * `p2c_ewma`: latency (ms) assumed for a worker with no samples. Unset (the default), such a
   * worker is given the median EWMA of the candidates that have samples: it competes like a
   * typical worker, neither flooded (as a prior of 0 would) nor starved (as a large one would).
   */
  readonly latencyPriorMs?: number;
  /**
   * `consistent_hash`: load bound factor c >= 1 (default 1.25). A worker whose outstanding
   * exceeds ceil(c × average outstanding of the candidates) is passed over for the next worker
   * on the ring.
   */
  readonly loadFactor?: number;
  /** `consistent_hash`: ring points per worker (default {@link DEFAULT_VIRTUAL_NODES}). */
  readonly virtualNodes?: number;
}

/** Default load bound factor of `consistent_hash`. */
export const DEFAULT_LOAD_FACTOR = 1.25;

/**
 * Creates the named policy.
 *
 * @param random uniform in [0, 1); defaults to `Math.random`. Tests pass a seeded generator.
 * @param options settings of the policies that have any
 * @throws RangeError for a name that is not in {@link POLICY_NAMES} (possible when it comes from config), or an option out of range
 */
export function createPolicy(name: PolicyName, random: () => number = Math.random, options: PolicyOptions = {}): Policy {
  switch (name) {
    case 'round_robin':
      return new RoundRobinPolicy(random);
    case 'random':
      return new RandomPolicy(random);
    case 'least_outstanding':
      return new LeastOutstandingPolicy(random);
    case 'p2c':
      return new PowerOfTwoChoicesPolicy(random);
    case 'p2c_ewma':
      return new PeakEwmaPolicy(random, options.latencyPriorMs);
    case 'weighted':
      return new WeightedPolicy(random);
    case 'consistent_hash':
      return new ConsistentHashPolicy(random, options.loadFactor ?? DEFAULT_LOAD_FACTOR, options.virtualNodes ?? DEFAULT_VIRTUAL_NODES);
    default: {
      const given: never = name;
      throw new RangeError(`policy must be one of ${POLICY_NAMES.join(', ')}, given ${JSON.stringify(given)}`);
    }
  }
}

/** An index in [0, n) from a generator of [0, 1); clamped in case a generator returns exactly 1. */
function randomIndex(random: () => number, n: number): number {
  return Math.min(n - 1, Math.floor(random() * n));
}

/** Two distinct indexes in [0, n) (n >= 2), each pair equally likely. */
function randomPair(random: () => number, n: number): [number, number] {
  const first = randomIndex(random, n);
  // Draw from the n-1 others and skip over `first`.
  let second = randomIndex(random, n - 1);
  if (second >= first) second++;
  return [first, second];
}

/** Lowest slow-start weight a policy uses; lower ones are raised to it so costs stay finite. */
const MIN_WEIGHT = 0.01;

/** A candidate's slow-start weight, clamped to [MIN_WEIGHT, 1]; 1 when missing or not a number. */
function weightOf(c: Candidate): number {
  const w = c.weight;
  if (w === undefined || Number.isNaN(w)) return 1;
  return Math.min(1, Math.max(MIN_WEIGHT, w));
}

/**
 * Load of a candidate as least_outstanding and p2c compare it: (outstanding + 1) / weight. With
 * every weight 1 this orders candidates exactly as outstanding does; the +1 makes a ramping
 * worker with nothing in flight still cost more than a warm one with nothing in flight.
 */
function weightedLoad(c: Candidate): number {
  return (c.outstanding + 1) / weightOf(c);
}

/**
 * A cursor per key into the candidate list. The cursor is an index, not a worker id, so when the
 * list grows or shrinks (its order stable) the next picks still walk it evenly.
 */
class Cursors {
  private readonly next = new Map<string, number>();

  constructor(private readonly random: () => number) {}

  /** Where to start for `key` in a list of `n` (n >= 1). */
  start(key: string, n: number): number {
    const cursor = this.next.get(key);
    // A new key starts at a random place so that many lightly used models do not all land on the first worker.
    return cursor === undefined ? randomIndex(this.random, n) : cursor % n;
  }

  /** Records that `index` of a list of `n` was picked for `key`. */
  advance(key: string, index: number, n: number): void {
    this.next.set(key, (index + 1) % n);
  }

  /** Drops the cursor of `key`. */
  forget(key: string): void {
    this.next.delete(key);
  }

  /** Number of keys with a cursor. */
  get size(): number {
    return this.next.size;
  }
}

class RoundRobinPolicy implements Policy {
  readonly name = 'round_robin';
  private readonly cursors: Cursors;

  constructor(random: () => number) {
    this.cursors = new Cursors(random);
  }

  forget(key: string): void {
    this.cursors.forget(key);
  }

  get keys(): number {
    return this.cursors.size;
  }

  pick(key: string, candidates: readonly Candidate[]): Candidate | undefined {
    const n = candidates.length;
    if (n <= 1) return candidates[0];
    const index = this.cursors.start(key, n);
    this.cursors.advance(key, index, n);
    return candidates[index];
  }
}

class RandomPolicy implements Policy {
  readonly name = 'random';

  constructor(private readonly random: () => number) {}

  /** Keeps nothing per key. */
  forget(): void {}

  readonly keys = 0;

  pick(_key: string, candidates: readonly Candidate[]): Candidate | undefined {
    const n = candidates.length;
    if (n <= 1) return candidates[0];
    return candidates[randomIndex(this.random, n)];
  }
}

class LeastOutstandingPolicy implements Policy {
  readonly name = 'least_outstanding';
  private readonly cursors: Cursors;

  constructor(random: () => number) {
    this.cursors = new Cursors(random);
  }

  forget(key: string): void {
    this.cursors.forget(key);
  }

  get keys(): number {
    return this.cursors.size;
  }

  pick(key: string, candidates: readonly Candidate[]): Candidate | undefined {
    const n = candidates.length;
    if (n <= 1) return candidates[0];
    // Scanning from a rotating start and keeping the first minimum spreads ties like round robin;
    // always taking the first would pile every idle moment onto one worker.
    const start = this.cursors.start(key, n);
    let best = start;
    for (let step = 1; step < n; step++) {
      const index = (start + step) % n;
      if (weightedLoad(candidates[index]) < weightedLoad(candidates[best])) best = index;
    }
    this.cursors.advance(key, best, n);
    return candidates[best];
  }
}

class PowerOfTwoChoicesPolicy implements Policy {
  readonly name = 'p2c';

  constructor(private readonly random: () => number) {}

  /** Keeps nothing per key. */
  forget(): void {}

  readonly keys = 0;

  pick(_key: string, candidates: readonly Candidate[]): Candidate | undefined {
    const n = candidates.length;
    if (n <= 1) return candidates[0];
    const [first, second] = randomPair(this.random, n);
    const a = candidates[first];
    const b = candidates[second];
    const loadA = weightedLoad(a);
    const loadB = weightedLoad(b);
    if (loadA !== loadB) return loadA < loadB ? a : b;
    return this.random() < 0.5 ? a : b;
  }
}

/** Latency floor (ms) in the p2c_ewma cost, so a worker reporting 0 ms still costs more with more in flight. */
const MIN_LATENCY_MS = 1e-3;

/** A usable latency estimate: finite and not negative. */
function knownLatency(ms: number | undefined): ms is number {
  return ms !== undefined && Number.isFinite(ms) && ms >= 0;
}

/** Median of a non-empty list. */
function median(values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/**
 * `p2c_ewma`: of the two candidates drawn, the slower is "much slower" when its latency estimate
 * is more than this many times the reference: the faster one's, or the median of all candidates'
 * estimates when that is lower (so that one healthy worker whose estimate holds a noise peak does
 * not make a slow one look near it). It is then not chosen on cost (see {@link PeakEwmaPolicy}).
 * Healthy workers of one kind differ by less than this (in `bench:lb` their estimates spread over
 * 1.2-1.5x); a worker 10 times slower stays above it on a loaded day, when the healthy estimates
 * rise toward the slow one's (3-4x apart on a saturated machine).
 */
export const MUCH_SLOWER_FACTOR = 2;

/**
 * `p2c_ewma`: time constant (ms) with which a much slower worker's estimate, while it gets no
 * samples, loses its weight: after `t` ms without a sample it counts as
 * `faster + (slower - faster) × exp(-t / τ)`. It is probed (one call, when it has none in flight)
 * once that falls to {@link MUCH_SLOWER_FACTOR} × faster, which takes τ × ln((r - 1) / (f - 1)) for
 * a worker r times slower: 1.8 s at 3.5x, 3.6 s at 7x, 4.4 s at 10x, 9.2 s at 100x; a worker just
 * over the factor is probed again within a few hundred ms. So a worker that stays slow gets
 * under one call in 2 s, and one that recovers is found within seconds, whatever the load; at
 * 1 s, on a saturated machine (150 calls/s, healthy estimates inflated to a third of the slow
 * one's) the probes alone came near 1% of the calls in `bench:lb`.
 */
export const STALE_ESTIMATE_DECAY_MS = 2000;

/** `p2c_ewma`: pairs drawn at most for one pick while both workers drawn are much slower than the median. */
const PAIR_DRAWS = 3;

/**
 * Power of two choices on the Finagle/Linkerd cost: peak-EWMA latency × (outstanding + 1), divided
 * by the slow-start weight. Latency alone would herd every request onto the fastest worker until
 * its EWMA caught up; outstanding alone cannot tell a slow worker from a fast one at equal load.
 *
 * The cost takes a worker's latency to grow with every call in flight, as on a worker that runs
 * one call at a time. Most workers run many at once (a slot per call), so a healthy worker with
 * k calls in flight is priced (k + 1) times too high, and an idle worker r times slower beats it
 * once k reaches r - 1. On a loaded machine the healthy estimates rise (a 10x slower worker looks
 * 4-7x slower), c = 16 callers keep 3-5 calls on each healthy worker, and so the slow worker won
 * whenever it was idle: it served a call at a time, every time, 1-1.5% of all calls, enough to
 * put its latency into the p99. So a candidate much slower than the reference
 * ({@link MUCH_SLOWER_FACTOR}) is not chosen on cost while the faster has a free slot (fewer in
 * flight than its capacity); it is chosen only as a probe: when it has nothing in flight and its
 * estimate is stale ({@link STALE_ESTIMATE_DECAY_MS}), or was never confirmed (a prior, or the
 * worker's own report). A probe's answer refreshes the estimate: a worker still slow goes back to
 * waiting, one that recovered competes on cost again at once (its old peak is forgotten, as the
 * time since the previous sample is long against the EWMA's decay time). When both workers drawn
 * are much slower than the median (the slow one, and a healthy one whose estimate holds a stall's
 * peak), another pair is drawn, {@link PAIR_DRAWS} draws at most: else the slow one would get the
 * call as the faster of the two.
 */
class PeakEwmaPolicy implements Policy {
  readonly name = 'p2c_ewma';

  constructor(
    private readonly random: () => number,
    private readonly latencyPriorMs: number | undefined,
  ) {
    if (latencyPriorMs !== undefined && !knownLatency(latencyPriorMs)) {
      throw new RangeError(`latencyPriorMs must be a finite number >= 0, given ${latencyPriorMs}`);
    }
  }

  /** Keeps nothing per key. */
  forget(): void {}

  readonly keys = 0;

  pick(_key: string, candidates: readonly Candidate[]): Candidate | undefined {
    const n = candidates.length;
    if (n <= 1) return candidates[0];
    let prior: number | undefined;
    const latency = (c: Candidate): number => {
      if (knownLatency(c.ewmaMs)) return c.ewmaMs;
      prior ??= this.prior(candidates);
      return prior;
    };
    const typicalMs = n > 2 ? Math.max(this.typical(candidates), MIN_LATENCY_MS) : Infinity;
    const suspect = (c: Candidate) => latency(c) > MUCH_SLOWER_FACTOR * typicalMs;
    let [first, second] = randomPair(this.random, n);
    // Two workers both much slower than the median (the slow one, and a healthy one whose estimate
    // holds a stall's peak) would hand the call to the less bad of them: draw again, a bounded number of times.
    for (let draw = 1; draw < PAIR_DRAWS && suspect(candidates[first]) && suspect(candidates[second]); draw++) [first, second] = randomPair(this.random, n);
    const a = candidates[first];
    const b = candidates[second];
    const latencyA = latency(a);
    const latencyB = latency(b);
    if (latencyA !== latencyB) {
      const [slower, faster, slowerMs, fasterMs] = latencyA > latencyB ? [a, b, latencyA, latencyB] : [b, a, latencyB, latencyA];
      // Measured against the faster of the two, or the candidates' median when that is lower: a
      // healthy worker whose estimate holds a noise peak must not make a slow one look near it.
      const referenceMs = Math.min(Math.max(fasterMs, MIN_LATENCY_MS), typicalMs);
      if (slowerMs > MUCH_SLOWER_FACTOR * referenceMs && hasFreeSlot(faster)) {
        // A prior is no confirmed estimate either: a new worker gets its first call as a probe.
        const ageMs = knownLatency(slower.ewmaMs) ? (slower.ewmaAgeMs ?? 0) : Infinity;
        return isProbe(slower, slowerMs, referenceMs, ageMs) ? slower : faster;
      }
    }
    const costA = this.cost(a, latencyA);
    const costB = this.cost(b, latencyB);
    if (costA !== costB) return costA < costB ? a : b;
    return this.random() < 0.5 ? a : b;
  }

  /** Median latency estimate of the candidates that have one; Infinity when none has. */
  private typical(candidates: readonly Candidate[]): number {
    const known = candidates.map((c) => c.ewmaMs).filter(knownLatency);
    return known.length > 0 ? median(known) : Infinity;
  }

  /** Latency assumed for a candidate with no samples: the configured prior, else the median of those with samples. */
  private prior(candidates: readonly Candidate[]): number {
    if (this.latencyPriorMs !== undefined) return this.latencyPriorMs;
    const known = candidates.map((c) => c.ewmaMs).filter(knownLatency);
    // With no samples anywhere every candidate gets the same prior, so its value does not matter.
    return known.length > 0 ? median(known) : 1;
  }

  private cost(c: Candidate, latencyMs: number): number {
    return (Math.max(latencyMs, MIN_LATENCY_MS) * (c.outstanding + 1)) / weightOf(c);
  }
}

/** True while a candidate runs fewer calls than its capacity (always, when the capacity is unknown). */
function hasFreeSlot(c: Candidate): boolean {
  const capacity = c.capacity;
  return capacity === undefined || !(capacity > 0) || c.outstanding < capacity;
}

/**
 * Whether a much slower candidate gets this call as a probe: it has nothing in flight (probes go
 * one at a time) and its estimate, `ageMs` old, has decayed to within {@link MUCH_SLOWER_FACTOR}
 * of the reference it is measured against.
 */
function isProbe(slower: Candidate, slowerMs: number, referenceMs: number, ageMs: number): boolean {
  if (!(slower.outstanding <= 0)) return false;
  const weight = ageMs > 0 ? Math.exp(-ageMs / STALE_ESTIMATE_DECAY_MS) : 1;
  return referenceMs + (slowerMs - referenceMs) * weight <= MUCH_SLOWER_FACTOR * referenceMs;
}

/** A candidate's share in `weighted`: reported capacity (1 when missing or not positive) × slow-start weight. */
function effectiveWeight(c: Candidate): number {
  const capacity = c.capacity !== undefined && Number.isFinite(c.capacity) && c.capacity > 0 ? c.capacity : 1;
  return capacity * weightOf(c);
}

/**
 * Smooth weighted round robin (nginx): each pick adds every candidate's weight to its running
 * score, takes the highest score and takes the total weight off it. Over a cycle each worker gets
 * exactly its share, and a heavy worker's picks are interleaved with the others' rather than
 * bunched (5, 1, 1 gives a a b a c a a, not a a a a a b c).
 *
 * Scores are kept per key for the candidates of the last pick; a worker missing from a pick (it
 * left, or was excluded for a retry) starts again from 0 when it reappears.
 */
class WeightedPolicy implements Policy {
  readonly name = 'weighted';
  private readonly scores = new Map<string, Map<string, number>>();

  constructor(private readonly random: () => number) {}

  forget(key: string): void {
    this.scores.delete(key);
  }

  get keys(): number {
    return this.scores.size;
  }

  pick(key: string, candidates: readonly Candidate[]): Candidate | undefined {
    const n = candidates.length;
    if (n <= 1) return candidates[0];
    let scores = this.scores.get(key);
    if (!scores) {
      scores = new Map();
      // A new key begins at a random point of the cycle, so that many lightly used models do not all start on the heaviest worker.
      for (let skip = randomIndex(this.random, n); skip > 0; skip--) scores = this.step(scores, candidates).scores;
    }
    const { chosen, scores: next } = this.step(scores, candidates);
    this.scores.set(key, next);
    return chosen;
  }

  private step(scores: ReadonlyMap<string, number>, candidates: readonly Candidate[]): { chosen: Candidate; scores: Map<string, number> } {
    const next = new Map<string, number>();
    let total = 0;
    let best = candidates[0]!;
    let bestScore = -Infinity;
    for (const c of candidates) {
      const weight = effectiveWeight(c);
      const score = (scores.get(c.id) ?? 0) + weight;
      next.set(c.id, score);
      total += weight;
      if (score > bestScore) {
        best = c;
        bestScore = score;
      }
    }
    next.set(best.id, bestScore - total);
    return { chosen: best, scores: next };
  }
}

/** Picks between two ring prunes; a worker absent from every candidate list for this many picks leaves the ring. */
const RING_PRUNE_PICKS = 1024;

/**
 * Consistent hashing with bounded load (Mirrokni, Thorup and Zadimoghaddam, as in the LLM routers
 * and HAProxy's hash-balance-factor): the request goes to the first worker clockwise from its
 * affinity key on the ring, unless that worker's outstanding exceeds ceil(c × average outstanding
 * of the candidates); then to the next worker on the ring, and so on. A hot key therefore spills
 * onto its ring successors instead of pinning a saturated worker, while every other key stays
 * put. A request without a key is placed by p2c.
 *
 * One ring holds every worker seen in recent candidate lists, across models; workers not in this
 * pick's list are skipped. Since a worker's ring points depend only on its id, that gives the same
 * answer as a ring of the candidates alone, so excluding a worker for a retry or serving a model on
 * fewer workers moves only the keys of the workers left out.
 */
class ConsistentHashPolicy implements Policy {
  readonly name = 'consistent_hash';
  private readonly ring: HashRing;
  private readonly fallback: PowerOfTwoChoicesPolicy;
  /** Pick number at which each ring member was last among the candidates. */
  private readonly lastSeen = new Map<string, number>();
  private picks = 0;

  constructor(
    random: () => number,
    private readonly loadFactor: number,
    virtualNodes: number,
  ) {
    if (!(Number.isFinite(loadFactor) && loadFactor >= 1)) throw new RangeError(`loadFactor must be a number >= 1, given ${loadFactor}`);
    this.ring = new HashRing([], { virtualNodes });
    this.fallback = new PowerOfTwoChoicesPolicy(random);
  }

  /** Keeps nothing per key: the ring is per worker, and prunes workers no pick has named for long. */
  forget(): void {}

  readonly keys = 0;

  pick(key: string, candidates: readonly Candidate[], options?: PickOptions): Candidate | undefined {
    const n = candidates.length;
    if (n <= 1) return candidates[0];
    const affinityKey = options?.affinityKey;
    if (affinityKey === undefined || affinityKey === '') return this.fallback.pick(key, candidates);
    this.track(candidates);
    const byId = new Map<string, Candidate>();
    let total = 0;
    for (const c of candidates) {
      byId.set(c.id, c);
      total += c.outstanding;
    }
    const bound = Math.ceil((this.loadFactor * total) / n);
    for (const id of this.ring.walk(affinityKey)) {
      const c = byId.get(id);
      if (c !== undefined && c.outstanding <= bound) return c;
    }
    // Unreachable: the least loaded candidate is at most the average, so within the bound. Kept for odd inputs (NaN).
    return candidates[0];
  }

  /** Puts new candidates on the ring and, now and then, takes off workers no list has named for a long time. */
  private track(candidates: readonly Candidate[]): void {
    const pick = ++this.picks;
    for (const c of candidates) {
      this.ring.add(c.id);
      this.lastSeen.set(c.id, pick);
    }
    if (pick % RING_PRUNE_PICKS !== 0) return;
    for (const [id, seen] of this.lastSeen) {
      if (pick - seen >= RING_PRUNE_PICKS) {
        this.lastSeen.delete(id);
        this.ring.remove(id);
      }
    }
  }
}
