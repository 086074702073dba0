/**
 * Worker membership: who has joined, what each serves, how loaded each is, and everything the
 * routing knows of each worker. Each worker is one {@link Member} object that owns its state
 * (membership, load, latency estimate, slow-start ramp, ejection record, and the server's link to
 * it), as linkerd2-proxy's p2c pool and grpc-js's round robin keep one object per endpoint; the
 * policies read a {@link Candidate} from it. Plain TypeScript, no gRPC: the server adapts join
 * streams, load reports and call outcomes to these calls.
 */
import { setMaxListeners } from 'node:events';
import { DEFAULT_EWMA_DECAY_MS, PeakEwma } from './ewma';
import { EjectionReason, OutlierDetector, OutlierOptions, OutlierRecord } from './outliers';
import { Candidate } from './policy';
import { SlowStart, SlowStartOptions, SlowStartRamp } from './slow-start';

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

/** What a worker says when it joins. */
export interface JoiningWorker<M> {
  id: string;
  address: string;
  models: MemberModel<M>[];
  capacity: number;
}

/**
 * A worker that has joined: one object with all the balancer holds for it. `L` is what the server
 * keeps to reach it (its channel), opaque here.
 */
export class Member<M, L = unknown> implements Candidate {
  readonly id: string;
  readonly address: string;
  /** The models it serves, by name (the description of the newest version). */
  models: ReadonlyMap<string, M>;
  /** The models it serves, by name then version. */
  modelVersions: ReadonlyMap<string, ReadonlyMap<string, M>>;
  readonly capacity: number;
  /** Requests this balancer has in flight to the worker. */
  outstanding: number;
  /**
   * Picks made ahead for it (Dispatch's NextPick) that no call has taken yet: load the policies see
   * (a pick becomes a call soon), not counted in {@link outstanding}.
   */
  reserved = 0;
  /** In-flight count in the worker's last report. */
  reportedInFlight = 0;
  /** Queue depth in the worker's last report. */
  reportedQueueDepth = 0;
  /** The worker's own latency average in its last report, ms; 0 before it has one. */
  reportedLatencyMs = 0;
  /**
   * Load the worker carries that this balancer did not send (another balancer's, a direct
   * caller's): its last reported in-flight plus queued tasks, minus this balancer's outstanding
   * when the report arrived, never below 0.
   */
  foreignLoad = 0;
  /** True once the worker said it is shutting down: no new tasks go to it. */
  draining = false;
  /** False while the worker's gRPC health says NOT_SERVING: no new tasks go to it. */
  serving = true;
  /** Clock time of the last hello or report. */
  lastSeen: number;
  /** Peak-EWMA of the time to first output of the calls this balancer made to it (for p2c_ewma). */
  readonly latency: PeakEwma;
  /** Its slow-start ramp: begun when it joins, and again when it returns from an ejection. */
  readonly ramp: SlowStartRamp;
  /** Its outlier-ejection record; a rejoin under the same id keeps it, as it keeps `outstanding`. */
  readonly outlier: OutlierRecord;
  /** The server's link to the worker (its channel), while it has one. */
  link: L | undefined;
  private readonly goneController = new AbortController();
  /**
   * Aborted when the member is declared gone for silence ({@link Membership.expire}): the calls
   * open on it stop waiting for a worker that no longer answers. Not aborted when it leaves by its
   * own stream ending (a draining worker finishes its calls).
   */
  readonly gone: AbortSignal = noListenerLimit(this.goneController.signal);

  constructor(worker: JoiningWorker<M>, now: number, state: { latency: PeakEwma; ramp: SlowStartRamp; outlier: OutlierRecord; outstanding: number }) {
    this.id = worker.id;
    this.address = worker.address;
    this.modelVersions = byVersion(worker.models);
    this.models = newest(this.modelVersions);
    this.capacity = worker.capacity;
    this.outstanding = state.outstanding;
    this.lastSeen = now;
    this.latency = state.latency;
    this.ramp = state.ramp;
    this.outlier = state.outlier;
  }

  /** Declares the member gone: aborts {@link gone} with `reason`, once. */
  declareGone(reason: string): void {
    if (!this.gone.aborted) this.goneController.abort(reason);
  }

  /** What the policies see of it at `now` ({@link candidateOf}). */
  candidate(now: number): Candidate {
    const c = candidateOf(this, this.latency.value, this.ramp.weight(now), this.latency.ageMs);
    return this.reserved > 0 ? { ...c, outstanding: c.outstanding + PICK_LOAD * this.reserved } : c;
  }
}

/**
 * The load a pick made ahead adds to its worker, in calls: enough that the picks of one model
 * spread over equal workers (each one tips the balance), little enough that a worker holds four
 * picks before they weigh as much as one call really running there (a slow worker's call holds
 * its load for as long as it runs; a fast worker's picks turn into calls that end soon). Measured
 * with three callers and a worker 200 times slower than the other two (the scenario of
 * test/integration/balancing.test.ts): at half a call, p2c sent it 27% and 35% of the calls in two
 * runs of five, as many as round robin; at a quarter, 3% in 76 runs of 85, 8 to 13% in 6, and 18
 * to 30% in 3 (one pick per model, before slots: at most 8% in 25 runs). Picks made ahead still
 * see a fast worker's call that is about to end as load: see docs/BENCHMARKS.md.
 */
export const PICK_LOAD = 0.25;

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
 * and as latency the balancer's own estimate `ewmaMs` (`ewmaAgeMs` old, when given), or before
 * its first sample the latency the worker reports, which this balancer has not confirmed (its age
 * is then `Infinity`); undefined if neither is known, and the policy then gives it a prior.
 */
export function candidateOf(
  m: Pick<Member<unknown>, 'id' | 'outstanding' | 'foreignLoad' | 'capacity' | 'reportedLatencyMs'>,
  ewmaMs: number | undefined,
  weight: number,
  ewmaAgeMs?: number,
): Candidate {
  const reported = ewmaMs === undefined && m.reportedLatencyMs > 0;
  const age = reported ? Infinity : ewmaMs === undefined ? undefined : ewmaAgeMs;
  return {
    id: m.id,
    outstanding: loadOf(m),
    capacity: m.capacity,
    ewmaMs: ewmaMs ?? (reported ? m.reportedLatencyMs : undefined),
    ...(age === undefined ? {} : { ewmaAgeMs: age }),
    weight,
  };
}

/** Settings of the routing state each member carries; every one has a default. */
export interface MembershipOptions {
  /** Clock of the latency estimates, ms (default Date.now). */
  readonly now?: () => number;
  /** Decay time constant of each member's latency estimate, ms (default {@link DEFAULT_EWMA_DECAY_MS}). */
  readonly ewmaDecayMs?: number;
  /** The slow-start ramp of a member that joins or returns from ejection. */
  readonly slowStart?: SlowStartOptions;
  /** Outlier ejection: when a member is ejected, for how long, and what share may be out at once. */
  readonly outliers?: OutlierOptions;
}

/** The set of workers, with the queries routing needs. */
export class Membership<M, L = unknown> {
  private readonly members = new Map<string, Member<M, L>>();
  /** Members ejected, until a pick finds their ejection over and starts their ramp. */
  private readonly ejectedMembers = new Set<Member<M, L>>();
  private readonly now: () => number;
  private readonly ewmaDecayMs: number;
  private readonly slowStart: SlowStart;
  /** The settings of ejection and the share rule. */
  readonly outliers: OutlierDetector;

  /** @throws RangeError naming a setting that is out of range */
  constructor(options: MembershipOptions = {}) {
    this.now = options.now ?? Date.now;
    this.ewmaDecayMs = options.ewmaDecayMs ?? DEFAULT_EWMA_DECAY_MS;
    this.slowStart = new SlowStart(options.slowStart);
    this.outliers = new OutlierDetector(options.outliers);
  }

  /**
   * Adds (or replaces) a worker: a fresh latency estimate and a slow-start ramp begun at `now`; a
   * worker that rejoins under its id keeps its outstanding count and its ejection record.
   */
  join(worker: JoiningWorker<M>, now: number): Member<M, L> {
    const previous = this.members.get(worker.id);
    const ramp = this.slowStart.newRamp();
    ramp.begin(now);
    const member = new Member<M, L>(worker, now, {
      latency: new PeakEwma({ now: this.now, decayMs: this.ewmaDecayMs }),
      ramp,
      outlier: previous?.outlier ?? this.outliers.newRecord(),
      outstanding: previous?.outstanding ?? 0,
    });
    // The ejection goes on under the new object: its ramp starts when the ejection ends.
    if (previous && this.ejectedMembers.delete(previous)) this.ejectedMembers.add(member);
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
  leave(id: string, member?: Member<M, L>): Member<M, L> | undefined {
    const m = this.members.get(id);
    // A worker that rejoined under the same id must not be removed by its old stream ending.
    if (!m || (member && m !== member)) return undefined;
    this.members.delete(id);
    this.ejectedMembers.delete(m);
    return m;
  }

  /**
   * Removes and returns the workers not heard from since `now - silenceMs`, each declared gone
   * ({@link Member.gone}), so the calls open on it can be retried elsewhere at once.
   */
  expire(now: number, silenceMs: number): Member<M, L>[] {
    const gone = [...this.members.values()].filter((m) => now - m.lastSeen > silenceMs);
    for (const m of gone) {
      this.members.delete(m.id);
      this.ejectedMembers.delete(m);
      m.declareGone(`worker ${m.id} was removed: no load report for ${now - m.lastSeen} ms (limit ${silenceMs} ms)`);
    }
    return gone;
  }

  /** Every member, in join order. */
  all(): Member<M, L>[] {
    return [...this.members.values()];
  }

  /** The member with this id, if any. */
  get(id: string): Member<M, L> | undefined {
    return this.members.get(id);
  }

  /** True while `member` is the member under its id (not one that left or was replaced by a rejoin). */
  isMember(member: Member<M, L>): boolean {
    return this.members.get(member.id) === member;
  }

  /**
   * Records a call to `member` that succeeded at `now` (for its ejection record); ignored for a
   * member that left or was replaced.
   */
  recordSuccess(member: Member<M, L>, now: number): void {
    if (this.isMember(member)) member.outlier.recordSuccess(now);
  }

  /**
   * Records a call to `member` that failed at `now`; returns why it was ejected when this failure
   * ejected it (never more than the detector's share of the members at once). Ignored for a member
   * that left or was replaced: its record would outlive it.
   */
  recordFailure(member: Member<M, L>, now: number): EjectionReason | undefined {
    if (!this.isMember(member)) return undefined;
    const reason = member.outlier.recordFailure(now, () => this.outliers.roomToEject(this.all().filter((m) => m.outlier.isEjected(now)).length, this.members.size));
    if (reason) this.ejectedMembers.add(member);
    return reason;
  }

  /**
   * The members a pick for `model` (at `version`, when given) may choose, minus `exclude`, in join
   * order: ready ({@link candidatesFor}) and not ejected. A member whose ejection is over starts its
   * slow-start ramp here, at the first pick after it.
   */
  routable(model: string, exclude: ReadonlySet<string>, version: string | undefined, now: number): Member<M, L>[] {
    for (const m of this.ejectedMembers) {
      if (!m.outlier.isEjected(now)) {
        this.ejectedMembers.delete(m);
        m.ramp.begin(now);
      }
    }
    return this.candidatesFor(model, exclude, version).filter((m) => !m.outlier.isEjected(now));
  }

  /** Members ejected and not yet found back by a pick. */
  get ejectedCount(): number {
    return this.ejectedMembers.size;
  }

  /**
   * Ready (not draining) workers that serve `model` (at `version`, when given), minus `exclude`,
   * in join order.
   */
  candidatesFor(model: string, exclude: ReadonlySet<string> = new Set(), version?: string): Member<M, L>[] {
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

/** `signal`, which every call open on a member listens to: as many listeners as calls, no warning. */
function noListenerLimit(signal: AbortSignal): AbortSignal {
  setMaxListeners(0, signal);
  return signal;
}
