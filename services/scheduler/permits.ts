/**
 * Admission granted ahead of calls (SchedulerService.Permits). The scheduler still decides who is
 * admitted; it decides before the calls arrive, when the answer cannot be anything but yes: nothing
 * waits in its queue, at most half its slots are taken, the tenant holds under half its in-flight
 * limit and has rate tokens.
 *
 * A permit is a real slot of the {@link AdmissionQueue}, held by one gateway stream for one tenant,
 * on which the gateway runs that tenant's calls one at a time, with a budget of calls whose rate
 * tokens were charged ahead. The gateway reports what it ran when half a budget is spent; the desk
 * renews the budget with as many tokens as the tenant has, and learns the calls' service time.
 *
 * Each gateway says how many permits it would like per tenant (its asks); the desk tops each
 * stream up to its asks while grants are allowed, and revokes permits as soon as a call is about
 * to wait, so that they never hold slots a waiting call needs. A permit given back refunds the
 * tokens of its unused budget. A stream that ends releases all it held.
 */
import { MeshError } from '../../common/errors';
import { StreamWriter } from '../../common/stream-writer';
import { tenantNameProblem } from '../../common/tenant';
import { TurnBatch } from '../../common/turn-batch';
import { PermitGrant, PermitUsage, PermitsRequest, PermitsResponse } from '../../generated/maas/internal/v1/scheduler';
import { AdmissionQueue, Permit } from './queue';

/** Permits one stream may hold for one tenant. */
export const MAX_PERMITS_PER_TENANT = 256;
/** Tenants one stream may have asks for; an ask for one more is ignored. */
export const MAX_TENANTS_PER_STREAM = 10_000;
/** The largest budget of one permit, in calls. */
export const MAX_BUDGET = 64;
/** A budget is about this many seconds of the tenant's rate (so a permit does not hoard its tokens). */
const BUDGET_SECONDS = 0.05;

/** What happened, for metrics: permits granted, given back, revoked; calls run on permits. */
export type PermitEvent = 'granted' | 'returned' | 'revoked' | 'calls';

export interface PermitDeskOptions {
  queue: AdmissionQueue;
  /** The queue's --max-in-flight: grants stop once half of it is taken. */
  maxInFlight: number;
  /** The tenant's limits: grants for it stop once it holds half its in-flight limit. */
  limitsOf(tenant: string): { maxInFlight: number; rate: number; burst: number };
  /**
   * Takes up to `n` rate tokens of the tenant, leaving at least half its burst for the calls that
   * go through the queue; how many it took (nothing is counted as refused).
   */
  takeRateTokens(tenant: string, n: number): number;
  /** Gives back rate tokens charged for calls never run. */
  refundRateTokens(tenant: string, n: number): void;
  onEvent?(event: PermitEvent, count: number): void;
}

/** Why a grant was not made: the whole scheduler is too busy, or only this tenant is. */
type NoGrant = 'scheduler' | 'tenant';

/** The permits of every gateway stream. */
export class PermitDesk {
  private readonly streams = new Set<PermitStream>();
  private closed = false;
  private topUpScheduled = false;

  constructor(private readonly o: PermitDeskOptions) {}

  /** Permits held by all streams now (for tests and diagnostics). */
  get held(): number {
    let n = 0;
    for (const s of this.streams) n += s.held;
    return n;
  }

  /** Permits held for `tenant` by all streams now. */
  heldBy(tenant: string): number {
    let n = 0;
    for (const s of this.streams) n += s.heldBy(tenant);
    return n;
  }

  /**
   * Calls waiting for a permit's slot (see {@link waitForRelease}), all tenants and by tenant: no
   * more wait than there are permits to come back.
   */
  private waiting = 0;
  private readonly waitingBy = new Map<string, number>();
  /** The waiting calls, oldest first: each permit given back wakes one. */
  private readonly releaseWaiters = new Set<() => void>();

  /** Calls waiting for a permit's slot now (all tenants, or `tenant`'s). */
  waitingFor(tenant?: string): number {
    return tenant === undefined ? this.waiting : (this.waitingBy.get(tenant) ?? 0);
  }

  /**
   * Resolves once a permit is given back or released (its slot is free again), each release waking
   * the oldest waiting call; rejects with the signal's reason when it aborts first.
   */
  waitForRelease(tenant: string, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(signal.reason);
    this.waiting++;
    this.waitingBy.set(tenant, (this.waitingBy.get(tenant) ?? 0) + 1);
    return new Promise<void>((resolve, reject) => {
      const leave = () => {
        this.releaseWaiters.delete(done);
        signal.removeEventListener('abort', onAbort);
        this.waiting--;
        const n = (this.waitingBy.get(tenant) ?? 1) - 1;
        if (n > 0) this.waitingBy.set(tenant, n);
        else this.waitingBy.delete(tenant);
      };
      const onAbort = () => {
        leave();
        reject(signal.reason);
      };
      const done = () => {
        leave();
        resolve();
      };
      this.releaseWaiters.add(done);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** `n` permits' slots were freed: as many waiting calls try again. */
  released(n: number) {
    for (const wake of this.releaseWaiters) {
      if (n-- <= 0) return;
      wake();
    }
  }

  /** Serves one gateway's Permits stream: applies its requests, sends grants, renewals and revocations. */
  async *serve(requests: AsyncIterable<PermitsRequest>, signal: AbortSignal): AsyncGenerator<PermitsResponse> {
    const stream = new PermitStream(this);
    this.streams.add(stream);
    const onAbort = () => stream.finish(undefined);
    signal.addEventListener('abort', onAbort, { once: true });
    void (async () => {
      for await (const request of requests) stream.apply(request);
    })().then(
      () => stream.finish(undefined),
      (err: unknown) => stream.finish(err),
    );
    try {
      // The first message says the stream is up: asks are heard from now on.
      yield { grants: [], renewals: [], revoked: [] };
      yield* stream.responses();
    } finally {
      signal.removeEventListener('abort', onAbort);
      this.streams.delete(stream);
      stream.releaseAll();
      this.slotsFreed();
    }
  }

  /** A permit for `tenant` now, with its budget charged, or why not. */
  grant(tenant: string): { permit: Permit; budget: number } | NoGrant {
    if (this.closed) return 'scheduler';
    const q = this.o.queue;
    if (q.queued > 0 || (q.inFlight + 1) * 2 > this.o.maxInFlight) return 'scheduler';
    const limits = this.o.limitsOf(tenant);
    if ((q.tenantUsage(tenant).open + 1) * 2 > limits.maxInFlight) return 'tenant';
    const budget = this.o.takeRateTokens(tenant, this.fullBudget(tenant));
    if (budget === 0) return 'tenant';
    const permit = q.tryAdmitNow(tenant);
    if (!permit) {
      this.o.refundRateTokens(tenant, budget);
      return 'scheduler';
    }
    return { permit, budget };
  }

  /** The budget of a permit of `tenant`: a twentieth of a second of its rate, 1 to {@link MAX_BUDGET} (and no more than its burst). */
  fullBudget(tenant: string): number {
    const { rate, burst } = this.o.limitsOf(tenant);
    if (rate <= 0) return MAX_BUDGET;
    return Math.max(1, Math.min(MAX_BUDGET, burst, Math.floor(rate * BUDGET_SECONDS)));
  }

  /** More budget for a permit of `tenant`: up to `n` calls, as many as it has tokens for. */
  renew(tenant: string, n: number): number {
    return n <= 0 ? 0 : this.o.takeRateTokens(tenant, n);
  }

  refund(tenant: string, n: number) {
    this.o.refundRateTokens(tenant, n);
  }

  /** Calls ran on permits: `busyUs` microseconds in all (the queue's service-time estimate learns their mean). */
  ran(calls: number, busyUs: number) {
    if (calls <= 0) return;
    this.o.queue.serviceTime.observe(busyUs / calls / 1000);
    this.count('calls', calls);
  }

  count(event: PermitEvent, n = 1) {
    if (n > 0) this.o.onEvent?.(event, n);
  }

  /** Slots were freed: streams short of their asks get more, once this turn ends. */
  slotsFreed() {
    if (this.topUpScheduled || this.closed) return;
    this.topUpScheduled = true;
    setImmediate(() => {
      this.topUpScheduled = false;
      for (const s of this.streams) if (!s.topUp()) return;
    });
  }

  /** A call is about to wait (or `tenant` is at its limit): permits go back (all, or the tenant's). */
  reclaim(tenant?: string) {
    for (const s of this.streams) s.revoke(tenant);
  }

  /** Grants no more and revokes every permit (the scheduler drains). */
  close() {
    this.closed = true;
    this.reclaim();
  }
}

/** One thing to tell the gateway. */
type Outgoing = { grant: PermitGrant } | { renewal: PermitGrant } | { revoked: number };

interface Held {
  readonly tenant: string;
  readonly permit: Permit;
  /** Calls granted and not yet reported. */
  budget: number;
  revoked: boolean;
}

/** One gateway's stream. */
class PermitStream {
  private readonly permits = new Map<number, Held>();
  /** Per tenant: permits wanted, and the ids held. */
  private readonly tenants = new Map<string, { want: number; readonly held: Set<number> }>();
  /** Tenants holding fewer permits than they ask for. */
  private readonly short = new Set<string>();
  private nextId = 1;
  /** Permits held and not revoked: a call that waits revokes nothing more once it is 0 (it waits on every enqueue). */
  private revocable = 0;
  /** What to tell the gateway: this turn's, handed at its end to the writer, which sends what is queued as one response. */
  private readonly outbox = new TurnBatch<Outgoing>((items) => this.writer.push(items));
  private readonly writer = new StreamWriter<Outgoing>();
  /** Aborted when the stream ends (its requests ended or failed, or the call was cancelled). */
  private readonly ending = new AbortController();
  private ended = false;
  private error: unknown;

  constructor(private readonly desk: PermitDesk) {}

  get held(): number {
    return this.permits.size;
  }

  heldBy(tenant: string): number {
    return this.tenants.get(tenant)?.held.size ?? 0;
  }

  apply(request: PermitsRequest) {
    if (this.ended) return;
    for (const ask of request.asks) {
      const problem = tenantNameProblem(ask.tenant);
      if (problem) throw new MeshError('invalid_argument', `asks: tenant ${problem}`);
      const want = Math.min(MAX_PERMITS_PER_TENANT, ask.permits);
      let t = this.tenants.get(ask.tenant);
      if (!t) {
        if (want === 0 || this.tenants.size >= MAX_TENANTS_PER_STREAM) continue;
        t = { want, held: new Set() };
        this.tenants.set(ask.tenant, t);
      }
      t.want = want;
      this.review(ask.tenant);
    }
    for (const usage of request.usage) {
      const held = this.permits.get(Number(usage.permitId));
      if (!held) continue;
      this.account(held, usage);
      if (held.revoked) continue;
      const added = this.desk.renew(held.tenant, this.desk.fullBudget(held.tenant) - held.budget);
      held.budget += added;
      if (added > 0) this.outbox.push({ renewal: { permitId: Number(usage.permitId), tenant: '', calls: added } });
      else if (held.budget === 0) this.revokeOne(Number(usage.permitId), held); // the tenant is out of tokens: its calls go to the queue, which refuses them
    }
    let freed = 0;
    for (const end of request.ends) {
      const id = Number(end.permitId);
      const held = this.permits.get(id);
      if (!held) continue;
      this.account(held, end);
      this.drop(id, held);
      freed++;
    }
    if (freed > 0) {
      this.desk.released(freed);
      this.desk.slotsFreed();
    } else this.topUp();
  }

  /** Grants to tenants short of their asks while grants are allowed; false when the scheduler allows none now. */
  topUp(): boolean {
    for (const tenant of this.short) {
      const t = this.tenants.get(tenant);
      if (!t) {
        this.short.delete(tenant);
        continue;
      }
      while (t.held.size < t.want) {
        const granted = this.desk.grant(tenant);
        if (granted === 'scheduler') return false;
        if (granted === 'tenant') break;
        const id = this.nextId++;
        this.permits.set(id, { tenant, permit: granted.permit, budget: granted.budget, revoked: false });
        this.revocable++;
        t.held.add(id);
        this.outbox.push({ grant: { permitId: id, tenant, calls: granted.budget } });
        this.desk.count('granted');
      }
      if (t.held.size >= t.want) this.short.delete(tenant);
    }
    return true;
  }

  /** Asks for permits back (all tenants', or one's). */
  revoke(tenant?: string) {
    if (tenant === undefined) {
      if (this.revocable === 0) return;
      for (const [id, held] of this.permits) this.revokeOne(id, held);
      return;
    }
    for (const id of this.tenants.get(tenant)?.held ?? []) {
      const held = this.permits.get(id);
      if (held) this.revokeOne(id, held);
    }
  }

  /** The responses to send, each what was queued since the last, until the stream ends (then throws its error, if any). */
  async *responses(): AsyncGenerator<PermitsResponse> {
    yield* this.writer.requests(this.ending.signal, PermitStream.response);
    if (this.error !== undefined) throw this.error;
  }

  finish(error: unknown) {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    this.outbox.close();
    this.ending.abort();
  }

  /** The stream ended: every permit it held is released, and the tokens of their budgets refunded. */
  releaseAll() {
    this.ended = true;
    for (const held of this.permits.values()) {
      held.permit.release();
      this.desk.refund(held.tenant, held.budget);
    }
    const freed = this.permits.size;
    this.permits.clear();
    this.revocable = 0;
    this.tenants.clear();
    this.short.clear();
    this.desk.released(freed);
  }

  /** Counts a permit's calls against its budget (no more than it had) and their time. */
  private account(held: Held, usage: PermitUsage) {
    const calls = Math.min(held.budget, usage.calls);
    held.budget -= calls;
    this.desk.ran(calls, Math.min(usage.busyUs, calls * 3_600_000_000));
  }

  private drop(id: number, held: Held) {
    this.permits.delete(id);
    if (!held.revoked) this.revocable--;
    held.permit.release();
    this.desk.refund(held.tenant, held.budget);
    this.desk.count('returned');
    const t = this.tenants.get(held.tenant);
    t?.held.delete(id);
    this.review(held.tenant);
  }

  private revokeOne(id: number, held: Held) {
    if (held.revoked) return;
    held.revoked = true;
    this.revocable--;
    this.outbox.push({ revoked: id });
    this.desk.count('revoked');
  }

  /** Keeps the tenant in the short set when it asks for more permits than it holds; forgets a tenant that asks for none and holds none. */
  private review(tenant: string) {
    const t = this.tenants.get(tenant);
    if (!t) return;
    if (t.held.size < t.want) this.short.add(tenant);
    else this.short.delete(tenant);
    if (t.want === 0 && t.held.size === 0) this.tenants.delete(tenant);
  }

  /** One response of what was queued: grants, renewals and revocations, each in the order queued. */
  private static response(items: Outgoing[]): PermitsResponse {
    const response: PermitsResponse = { grants: [], renewals: [], revoked: [] };
    for (const item of items) {
      if ('grant' in item) response.grants.push(item.grant);
      else if ('renewal' in item) response.renewals.push(item.renewal);
      else response.revoked.push(item.revoked);
    }
    return response;
  }
}
