/**
 * Routing policies of the balancer: which of the workers serving a model gets the next request.
 *
 * Round robin and random are the baselines; least outstanding and power of two choices (p2c)
 * look at the balancer's own count of requests in flight to each worker, which keeps the tail
 * short when one worker is slow. Plain TypeScript: no gRPC, randomness injected.
 */

/** Name of a routing policy, as written in config. */
export type PolicyName = 'round_robin' | 'random' | 'least_outstanding' | 'p2c';

/** Every policy name, in the order config help lists them. */
export const POLICY_NAMES: readonly PolicyName[] = Object.freeze([
  'round_robin',
  'random',
  'least_outstanding',
  'p2c',
] as const);

/** A worker the policy may pick. */
export interface Candidate {
  /** Stable identity of the worker. */
  readonly id: string;
  /** Requests in flight to this worker, as counted by the balancer. */
  readonly outstanding: number;
}

/** Picks one worker per request. A policy may keep state per key (per model), never across keys. */
export interface Policy {
  /** The policy's config name. */
  readonly name: PolicyName;
  /**
   * Picks one of `candidates` for a request for `key` (the model name); undefined when the list is
   * empty, the only candidate when there is one. Does not modify the list.
   */
  pick(key: string, candidates: readonly Candidate[]): Candidate | undefined;
}

/**
 * Creates the named policy.
 *
 * @param random uniform in [0, 1); defaults to `Math.random`. Tests pass a seeded generator.
 * @throws RangeError for a name that is not in {@link POLICY_NAMES} (possible when it comes from config).
 */
export function createPolicy(name: PolicyName, random: () => number = Math.random): Policy {
  switch (name) {
    case 'round_robin':
      return new RoundRobinPolicy(random);
    case 'random':
      return new RandomPolicy(random);
    case 'least_outstanding':
      return new LeastOutstandingPolicy(random);
    case 'p2c':
      return new PowerOfTwoChoicesPolicy(random);
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
}

class RoundRobinPolicy implements Policy {
  readonly name = 'round_robin';
  private readonly cursors: Cursors;

  constructor(random: () => number) {
    this.cursors = new Cursors(random);
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

  pick(key: string, candidates: readonly Candidate[]): Candidate | undefined {
    const n = candidates.length;
    if (n <= 1) return candidates[0];
    // Scanning from a rotating start and keeping the first minimum spreads ties like round robin;
    // always taking the first would pile every idle moment onto one worker.
    const start = this.cursors.start(key, n);
    let best = start;
    for (let step = 1; step < n; step++) {
      const index = (start + step) % n;
      if (candidates[index].outstanding < candidates[best].outstanding) best = index;
    }
    this.cursors.advance(key, best, n);
    return candidates[best];
  }
}

class PowerOfTwoChoicesPolicy implements Policy {
  readonly name = 'p2c';

  constructor(private readonly random: () => number) {}

  pick(_key: string, candidates: readonly Candidate[]): Candidate | undefined {
    const n = candidates.length;
    if (n <= 1) return candidates[0];
    const first = randomIndex(this.random, n);
    // Draw from the n-1 others and skip over `first`: two distinct candidates, each pair equally likely.
    let second = randomIndex(this.random, n - 1);
    if (second >= first) second++;
    const a = candidates[first];
    const b = candidates[second];
    if (a.outstanding !== b.outstanding) return a.outstanding < b.outstanding ? a : b;
    return this.random() < 0.5 ? a : b;
  }
}
