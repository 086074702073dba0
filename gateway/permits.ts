/**
 * The gateway's end of SchedulerService.Permits: admission permits the scheduler grants ahead of
 * calls (see services/scheduler/permits.ts for when it grants). A permit is one admission slot of
 * one tenant with a budget of calls: the gateway runs the tenant's calls on it one at a time,
 * dispatching them itself, with no message to the scheduler per call. When half a budget is spent
 * it reports the calls (and the time they took), and the scheduler renews the budget.
 *
 * How many permits a tenant asks for follows its calls: a call that finds none free asks for one
 * more (up to {@link PermitClientOptions.maxPerTenant}); a permit that ran no call for `idleMs`
 * goes back (the tokens of its budget are refunded) and the ask falls to the permits kept, so
 * asks not yet granted are withdrawn. A permit the scheduler revokes goes back as soon as it runs
 * no call. When the stream is lost every permit is void (the scheduler released them); calls go
 * through the scheduler until a new stream is up.
 */
import { ClientError, Status } from 'nice-grpc';
import { Logger } from '../common/log';
import { StreamWriter } from '../common/stream-writer';
import { TurnBatch } from '../common/turn-batch';
import { PermitUsage, PermitsRequest, PermitsResponse } from '../generated/maas/internal/v1/scheduler';

/** The Permits method of a scheduler client. */
export type OpenPermits = (requests: AsyncIterable<PermitsRequest>, options: { signal: AbortSignal }) => AsyncIterable<PermitsResponse>;

export interface PermitClientOptions {
  open: OpenPermits;
  log: Logger;
  /** Permits one tenant may ask for at most (the scheduler grants 256 at most, and only while half its slots are free). */
  maxPerTenant?: number;
  /** A permit that ran no call this long goes back. */
  idleMs?: number;
  /** First wait before reconnecting to a scheduler that is gone; doubles up to 2 s. */
  reconnectMs?: number;
}

/** Tenants the gateway keeps asks for; calls of tenants beyond go through the scheduler. */
const MAX_TENANTS = 10_000;
const MAX_RECONNECT_MS = 2000;

/** One permit held. */
interface Held {
  readonly id: number;
  readonly tenant: string;
  /** Calls it may still start. */
  budget: number;
  /** Its budget when granted: usage is reported when half of it is spent. */
  readonly full: number;
  /** True while a call runs on it. */
  busy: boolean;
  /** Calls started, and microseconds they ran, since the last report. */
  calls: number;
  busyUs: number;
  /** True while a report waits for its renewal. */
  reported: boolean;
  revoked: boolean;
  /** When its last call ended (or it was granted). */
  lastUsed: number;
}

interface TenantPermits {
  /** Permits wanted. */
  want: number;
  readonly held: Map<number, Held>;
  /** Permits that run no call and have budget: the next call takes the last. */
  readonly free: Held[];
}

type Outgoing = { ask: { tenant: string; permits: number } } | { usage: PermitUsage } | { end: PermitUsage };

/** One gateway's permits. */
export class PermitClient {
  private readonly tenants = new Map<string, TenantPermits>();
  /** Every permit of the current stream, by id. */
  private readonly permits = new Map<number, Held>();
  private connected = false;
  /**
   * What to tell the scheduler: this turn's, handed to the stream's writer once the turn's writes
   * to workers and clients have gone out (nothing while no stream is up).
   */
  private readonly outbox = new TurnBatch<Outgoing>(
    (items) => {
      if (this.connected) this.writer.push(items);
    },
    { afterWrites: true },
  );
  private readonly writer = new StreamWriter<Outgoing>();
  private readonly closed = new AbortController();
  private readonly sweep: NodeJS.Timeout;
  private readonly maxPerTenant: number;
  private readonly idleMs: number;
  private runs = 0;

  constructor(private readonly o: PermitClientOptions) {
    this.maxPerTenant = o.maxPerTenant ?? 128;
    this.idleMs = o.idleMs ?? 1000;
    this.sweep = setInterval(() => this.returnIdle(), Math.max(10, this.idleMs / 2));
    this.sweep.unref();
    void this.maintain();
  }

  /** True while a Permits stream is up (for tests and diagnostics). */
  get streamUp(): boolean {
    return this.connected;
  }

  /** Permits held now, all tenants. */
  get held(): number {
    return this.permits.size;
  }

  /** Permits held for `tenant` now (for tests and diagnostics). */
  heldFor(tenant: string): number {
    return this.tenants.get(tenant)?.held.size ?? 0;
  }

  /** Calls that ran on a permit so far (for tests and diagnostics). */
  get callsOnPermits(): number {
    return this.runs;
  }

  /**
   * Takes a free permit of `tenant` for a call: the function to call when the call ends, or
   * undefined when there is none (the call goes through the scheduler, and the tenant asks for one
   * more permit for its next calls).
   */
  take(tenant: string): (() => void) | undefined {
    if (this.closed.signal.aborted) return undefined;
    let t = this.tenants.get(tenant);
    if (!t) {
      if (this.tenants.size >= MAX_TENANTS) return undefined;
      t = { want: 0, held: new Map(), free: [] };
      this.tenants.set(tenant, t);
    }
    const held = t.free.pop();
    if (!held) {
      // One more for each call that found none (the asks of a turn go as one); none while the
      // stream is down (the asks go again when it is back).
      if (this.connected && t.want < this.maxPerTenant) {
        t.want++;
        this.outbox.push({ ask: { tenant, permits: t.want } });
      }
      return undefined;
    }
    held.busy = true;
    held.budget--;
    held.calls++;
    this.runs++;
    const startedAt = performance.now();
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      held.busy = false;
      held.busyUs += Math.round((performance.now() - startedAt) * 1000);
      held.lastUsed = Date.now();
      // A permit of a lost stream was released by the scheduler already.
      if (this.permits.get(held.id) !== held) return;
      if (held.revoked) return this.giveBack(held);
      if (!held.reported && held.budget * 2 <= held.full) this.report(held);
      if (held.budget > 0) t.free.push(held);
    };
  }

  close() {
    this.closed.abort();
    clearInterval(this.sweep);
    this.outbox.close();
  }

  private report(held: Held) {
    held.reported = true;
    this.outbox.push({ usage: { permitId: held.id, calls: held.calls, busyUs: held.busyUs } });
    held.calls = 0;
    held.busyUs = 0;
  }

  /** Sends a permit back with what it ran since its last report, and forgets it. */
  private giveBack(held: Held) {
    this.permits.delete(held.id);
    const t = this.tenants.get(held.tenant);
    if (t) {
      t.held.delete(held.id);
      const i = t.free.indexOf(held);
      if (i >= 0) t.free.splice(i, 1);
    }
    this.outbox.push({ end: { permitId: held.id, calls: held.calls, busyUs: held.busyUs } });
  }

  /**
   * Gives back permits that ran no call for idleMs. A tenant with an idle permit had more than its
   * calls need, so its ask falls to the permits it keeps: asks still unanswered are withdrawn too
   * (else, after a burst, the scheduler would go on granting permits that nothing runs on, each
   * holding a slot until it idles out in turn).
   */
  private returnIdle() {
    const before = Date.now() - this.idleMs;
    for (const [tenant, t] of this.tenants) {
      let n = 0;
      for (const held of [...t.held.values()]) {
        if (held.busy || held.lastUsed > before) continue;
        this.giveBack(held);
        n++;
      }
      if (n === 0) continue;
      t.want = Math.min(Math.max(0, t.want - n), t.held.size);
      this.outbox.push({ ask: { tenant, permits: t.want } });
      if (t.want === 0 && t.held.size === 0) this.tenants.delete(tenant);
    }
  }

  private onResponse(response: PermitsResponse) {
    const now = Date.now();
    for (const grant of response.grants) {
      const id = Number(grant.permitId);
      const t = this.tenants.get(grant.tenant);
      const held: Held = { id, tenant: grant.tenant, budget: grant.calls, full: grant.calls, busy: false, calls: 0, busyUs: 0, reported: false, revoked: false, lastUsed: now };
      this.permits.set(id, held);
      if (!t) {
        // Granted for a tenant forgotten meanwhile: back at once.
        this.giveBack(held);
        continue;
      }
      t.held.set(id, held);
      if (held.budget > 0) t.free.push(held);
    }
    for (const renewal of response.renewals) {
      const held = this.permits.get(Number(renewal.permitId));
      if (!held) continue;
      const wasEmpty = held.budget === 0;
      held.budget += renewal.calls;
      held.reported = false;
      if (wasEmpty && held.budget > 0 && !held.busy && !held.revoked) this.tenants.get(held.tenant)?.free.push(held);
    }
    for (const revoked of response.revoked) {
      const held = this.permits.get(Number(revoked));
      if (!held) continue;
      held.revoked = true;
      if (!held.busy) this.giveBack(held);
    }
  }

  /** One request of what was queued: the asks (the latest per tenant), reports and permits given back. */
  private static request(items: Outgoing[]): PermitsRequest {
    const asks = new Map<string, number>();
    const request: PermitsRequest = { asks: [], usage: [], ends: [] };
    for (const item of items) {
      if ('ask' in item) asks.set(item.ask.tenant, item.ask.permits);
      else if ('usage' in item) request.usage.push(item.usage);
      else request.ends.push(item.end);
    }
    for (const [tenant, permits] of asks) request.asks.push({ tenant, permits });
    return request;
  }

  private async maintain() {
    let wait = this.o.reconnectMs ?? 100;
    while (!this.closed.signal.aborted) {
      const stream = new AbortController();
      const onClose = () => stream.abort();
      this.closed.signal.addEventListener('abort', onClose, { once: true });
      try {
        for await (const response of this.o.open(this.writer.requests(stream.signal, PermitClient.request), { signal: stream.signal })) {
          if (!this.connected) {
            this.connected = true;
            wait = this.o.reconnectMs ?? 100;
            // The asks of every tenant known, for the new stream.
            for (const [tenant, t] of this.tenants) if (t.want > 0) this.outbox.push({ ask: { tenant, permits: t.want } });
          }
          this.onResponse(response);
        }
      } catch (err) {
        if (this.connected && !this.closed.signal.aborted) {
          this.o.log.warn('scheduler permits stream lost; online calls go through the scheduler until it is back', { error: err instanceof ClientError ? `${Status[err.code]}: ${err.details}` : String(err) });
        }
      } finally {
        this.closed.signal.removeEventListener('abort', onClose);
        stream.abort();
        this.connected = false;
        this.outbox.take();
        this.writer.clear();
        this.permits.clear();
        for (const t of this.tenants.values()) {
          t.held.clear();
          t.free.length = 0;
        }
      }
      if (this.closed.signal.aborted) return;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, wait);
        this.closed.signal.addEventListener('abort', () => (clearTimeout(timer), resolve()), { once: true });
      });
      wait = Math.min(wait * 2, MAX_RECONNECT_MS);
    }
  }
}
