/**
 * Worker membership: who has joined, what each serves, how loaded each is. Plain data, no gRPC:
 * the server adapts join streams and load reports to these calls.
 */
import { Candidate } from './policy';

/** A model as a worker describes it; `M` is the wire type, opaque here. */
export interface MemberModel<M> {
  name: string;
  /** The version served; '' when the model has no versions (a mapper). */
  version?: string;
  description: M;
}

/** Versions sort by number when both are numbers, else as strings. */
export function compareVersions(a: string, b: string): number {
  const na = Number(a);
  const nb = Number(b);
  return a !== '' && b !== '' && Number.isFinite(na) && Number.isFinite(nb) ? na - nb : a.localeCompare(b);
}

/** Name -> version -> description, from a worker's list. */
function byVersion<M>(models: readonly MemberModel<M>[]): Map<string, Map<string, M>> {
  const out = new Map<string, Map<string, M>>();
  for (const m of models) {
    const versions = out.get(m.name) ?? new Map<string, M>();
    versions.set(m.version ?? '', m.description);
    out.set(m.name, versions);
  }
  return out;
}

/** Name -> description of its newest version. */
function newest<M>(versions: ReadonlyMap<string, ReadonlyMap<string, M>>): Map<string, M> {
  return new Map([...versions].map(([name, vs]) => [name, vs.get([...vs.keys()].sort(compareVersions).at(-1)!)!]));
}

/** A worker that has joined. */
export interface Member<M> extends Candidate {
  readonly id: string;
  readonly address: string;
  /** The models it serves, by name (the description of the newest version). */
  models: ReadonlyMap<string, M>;
  /** The models it serves, by name then version. */
  modelVersions: ReadonlyMap<string, ReadonlyMap<string, M>>;
  readonly capacity: number;
  /** Requests this balancer has in flight to the worker. */
  outstanding: number;
  /** In-flight count in the worker's last report. */
  reportedInFlight: number;
  /** Queue depth in the worker's last report. */
  reportedQueueDepth: number;
  /** The worker's own latency average in its last report, ms; 0 before it has one. */
  reportedLatencyMs: number;
  /**
   * Load the worker carries that this balancer did not send (another balancer's, a direct
   * caller's): its last reported in-flight plus queued tasks, minus this balancer's outstanding
   * when the report arrived, never below 0.
   */
  foreignLoad: number;
  /** True once the worker said it is shutting down: no new tasks go to it. */
  draining: boolean;
  /** False while the worker's gRPC health says NOT_SERVING: no new tasks go to it. */
  serving: boolean;
  /** Clock time of the last hello or report. */
  lastSeen: number;
}

/** What a worker's load report says, as membership keeps it. */
export interface LoadReport {
  /** Tasks running on the worker. */
  inFlight: number;
  /** True once the worker is shutting down. */
  draining: boolean;
  /** Tasks waiting for a slot on the worker (0 when missing). */
  queueDepth?: number;
  /** The worker's own moving average of time to first output, ms (0 when missing or unknown). */
  latencyMs?: number;
}

/**
 * The load a policy should see for a member: this balancer's outstanding calls (exact, current)
 * plus the load others put on the worker, from its last report.
 */
export function loadOf(m: Pick<Member<unknown>, 'outstanding' | 'foreignLoad'>): number {
  return m.outstanding + m.foreignLoad;
}

/**
 * What the policies see of a member: its load ({@link loadOf}), capacity and slow-start weight,
 * and as latency the balancer's own estimate `ewmaMs`, or before its first sample the latency the
 * worker reports (undefined if neither is known, and the policy then gives it a prior).
 */
export function candidateOf(m: Member<unknown>, ewmaMs: number | undefined, weight: number): Candidate {
  return {
    id: m.id,
    outstanding: loadOf(m),
    capacity: m.capacity,
    ewmaMs: ewmaMs ?? (m.reportedLatencyMs > 0 ? m.reportedLatencyMs : undefined),
    weight,
  };
}

/** The set of workers, with the queries routing needs. */
export class Membership<M> {
  private readonly members = new Map<string, Member<M>>();

  /** Adds (or replaces) a worker. */
  join(worker: { id: string; address: string; models: MemberModel<M>[]; capacity: number }, now: number): Member<M> {
    const modelVersions = byVersion(worker.models);
    const member: Member<M> = {
      id: worker.id,
      address: worker.address,
      models: newest(modelVersions),
      modelVersions,
      capacity: worker.capacity,
      outstanding: this.members.get(worker.id)?.outstanding ?? 0,
      reportedInFlight: 0,
      reportedQueueDepth: 0,
      reportedLatencyMs: 0,
      foreignLoad: 0,
      draining: false,
      serving: true,
      lastSeen: now,
    };
    this.members.set(worker.id, member);
    return member;
  }

  /** Records a load report; false when the worker is no longer a member. */
  report(id: string, report: LoadReport, now: number): boolean {
    const m = this.members.get(id);
    if (!m) return false;
    m.reportedInFlight = report.inFlight;
    m.reportedQueueDepth = report.queueDepth ?? 0;
    m.reportedLatencyMs = report.latencyMs ?? 0;
    m.foreignLoad = Math.max(0, m.reportedInFlight + m.reportedQueueDepth - m.outstanding);
    m.draining = report.draining;
    m.lastSeen = now;
    return true;
  }

  /**
   * Replaces the models a member serves (after a load or unload on the worker); returns the names
   * it no longer serves, or undefined when the worker is no longer a member.
   */
  updateModels(id: string, models: MemberModel<M>[], now: number): string[] | undefined {
    const m = this.members.get(id);
    if (!m) return undefined;
    const before = [...m.models.keys()];
    m.modelVersions = byVersion(models);
    m.models = newest(m.modelVersions);
    m.lastSeen = now;
    return before.filter((name) => !m.models.has(name));
  }

  /** Removes a worker; returns it if it was a member. */
  leave(id: string, member?: Member<M>): Member<M> | undefined {
    const m = this.members.get(id);
    // A worker that rejoined under the same id must not be removed by its old stream ending.
    if (!m || (member && m !== member)) return undefined;
    this.members.delete(id);
    return m;
  }

  /** Removes and returns the workers not heard from since `now - silenceMs`. */
  expire(now: number, silenceMs: number): Member<M>[] {
    const gone = [...this.members.values()].filter((m) => now - m.lastSeen > silenceMs);
    for (const m of gone) this.members.delete(m.id);
    return gone;
  }

  /** Every member, in join order. */
  all(): Member<M>[] {
    return [...this.members.values()];
  }

  /** The member with this id, if any. */
  get(id: string): Member<M> | undefined {
    return this.members.get(id);
  }

  /**
   * Ready (not draining) workers that serve `model` (at `version`, when given), minus `exclude`,
   * in join order.
   */
  candidatesFor(model: string, exclude: ReadonlySet<string> = new Set(), version?: string): Member<M>[] {
    return [...this.members.values()].filter(
      (m) => !m.draining && m.serving && m.models.has(model) && (!version || m.modelVersions.get(model)?.has(version)) && !exclude.has(m.id),
    );
  }

  /** Whether any member (ready or not) serves `model`. */
  serves(model: string): boolean {
    for (const m of this.members.values()) if (m.models.has(model)) return true;
    return false;
  }

  /**
   * Every model version served by a ready worker, with how many ready workers serve it, sorted by
   * name then version.
   */
  models(): { name: string; version: string; description: M; readyWorkers: number }[] {
    const byKey = new Map<string, { name: string; version: string; description: M; readyWorkers: number }>();
    for (const m of this.members.values()) {
      if (m.draining) continue;
      for (const [name, versions] of m.modelVersions) {
        for (const [version, description] of versions) {
          const key = `${name}\u0000${version}`;
          const entry = byKey.get(key) ?? { name, version, description, readyWorkers: 0 };
          entry.readyWorkers++;
          byKey.set(key, entry);
        }
      }
    }
    return [...byKey.values()].sort((a, b) => a.name.localeCompare(b.name) || compareVersions(a.version, b.version));
  }

  /** Number of members. */
  get size(): number {
    return this.members.size;
  }
}
