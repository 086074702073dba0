/**
 * Bounded admission for the scheduler.
 *
 * At most `maxInFlight` requests hold a permit at once; up to `maxQueued` more wait for one,
 * high priority before normal before low. Within a priority, tenants take turns: the waiting
 * tenants are served round robin, one request each, and each tenant's own requests in the order
 * they came. So a tenant that floods the queue delays another tenant's request by at most one of
 * its own per turn, not by its whole backlog. Each tenant may also have at most a given number of
 * requests open (holding a permit or waiting) and waiting. Anything beyond a limit is refused at
 * once, so callers can answer RESOURCE_EXHAUSTED instead of piling up work they cannot finish. A
 * waiting request leaves the queue when its deadline passes or its signal aborts.
 *
 * With `deadlineAdmission`, a request that would wait is also refused at once when its expected
 * wait plus its expected service time (from an EWMA of how long recent requests held a slot)
 * exceeds what its deadline leaves ({@link judgeDeadline}).
 *
 * Plain TypeScript: no gRPC, and time comes from an injected {@link Clock}.
 */
import { ServiceTimeEstimate, judgeDeadline } from './wait-estimate';

/** Scheduling priority of a request; strict between levels. */
export type Priority = 'low' | 'normal' | 'high';

/** Priorities in the order waiters are served. */
const SERVICE_ORDER: readonly Priority[] = ['high', 'normal', 'low'];

/** A source of time and timers, injected so tests can control time. */
export interface Clock {
  /** Current time in milliseconds. Deadlines passed to the queue are on this scale. */
  now(): number;
  /** Calls `fn` once, `ms` milliseconds from now, unless cancelled first. */
  setTimer(ms: number, fn: () => void): { cancel(): void };
}

/** Largest delay `setTimeout` honours; longer ones would fire at once. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/** The real clock: wall-clock milliseconds (`Date.now()`, the scale of gRPC deadlines) and `setTimeout`. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimer(ms: number, fn: () => void): { cancel(): void } {
    let handle: NodeJS.Timeout;
    const arm = (remaining: number): void => {
      // Node fires delays above 2^31-1 ms immediately, so a far deadline is reached in hops.
      handle =
        remaining > MAX_TIMEOUT_MS
          ? setTimeout(() => arm(remaining - MAX_TIMEOUT_MS), MAX_TIMEOUT_MS)
          : setTimeout(fn, Math.max(0, remaining));
    };
    arm(ms);
    return { cancel: () => clearTimeout(handle) };
  },
};

/** The request was refused because the queue already holds `maxQueued` waiters. */
export class QueueFullError extends Error {
  override readonly name = 'QueueFullError';
}

/** The request was refused because its tenant is at one of its own limits. */
export class TenantLimitError extends Error {
  override readonly name = 'TenantLimitError';
  constructor(
    readonly tenant: string,
    /** Which limit: requests open (in flight or waiting), or requests waiting. */
    readonly limit: 'in_flight' | 'queued',
    /** What the tenant holds now. */
    readonly count: number,
  ) {
    super(`tenant ${JSON.stringify(tenant)} has ${count} request${count === 1 ? '' : 's'} ${limit === 'in_flight' ? 'in flight' : 'queued'}, its limit`);
  }
}

/** The request would wait, and its expected wait and service exceed what its deadline leaves. */
export class DeadlineUnmeetableError extends Error {
  override readonly name = 'DeadlineUnmeetableError';
  constructor(
    message: string,
    /** The expected wait in the queue, ms. */
    readonly expectedWaitMs: number,
    /** What the deadline left when the request arrived, ms. */
    readonly remainingMs: number,
  ) {
    super(message);
  }
}

/** The request's deadline passed before it got a slot (while waiting, or before it arrived). */
export class DeadlineInQueueError extends Error {
  override readonly name = 'DeadlineInQueueError';
}

/** The right to run one request. Release it when the request ends, however it ends. */
export interface Permit {
  /** Milliseconds spent waiting in the queue before admission (0 when admitted at once). */
  readonly waitedMs: number;
  /** Gives the slot back (to the next waiter, if any). Calling it again does nothing. */
  release(): void;
}

/** What a caller asks the queue for. */
export interface AdmissionRequest {
  /** Which level to wait in. */
  priority: Priority;
  /** Whose request it is: tenants take turns within a level, and each has its own limits. "" when unknown. */
  tenant?: string;
  /** Absolute time on the queue's clock after which waiting is pointless; undefined for none. */
  deadline?: number;
  /** Aborting it while the request waits takes it out of the queue and rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** Options of an {@link AdmissionQueue}. */
export interface AdmissionQueueOptions {
  /** Requests that may hold a permit at the same time; an integer >= 1. */
  maxInFlight: number;
  /** Requests that may wait for a permit; an integer >= 0 (0 refuses whenever all slots are busy). */
  maxQueued: number;
  /** Time source; defaults to {@link systemClock}. */
  clock?: Clock;
  /**
   * Each tenant's limits: requests it may have open (holding a permit or waiting) and waiting.
   * Defaults to none beyond the queue's own.
   */
  tenantLimits?: (tenant: string) => { maxInFlight: number; maxQueued: number };
  /**
   * Refuse at once ({@link DeadlineUnmeetableError}) a request that would wait when its expected
   * wait plus service exceeds what its deadline leaves (default false).
   */
  deadlineAdmission?: boolean;
  /** Called when a request starts to wait for a slot (every slot is taken). */
  onWait?: () => void;
}

/** What one tenant holds in the queue now. */
export interface TenantUsage {
  /** Requests holding a permit or waiting for one. */
  open: number;
  /** Of those, requests waiting. */
  queued: number;
}

/** Counters of an {@link AdmissionQueue}. Each request ends in at most one of the cumulative counters. */
export interface AdmissionStats {
  /** Permits held now. */
  inFlight: number;
  /** Requests waiting now. */
  queued: number;
  /** Requests that got a permit, at once or after waiting. */
  admitted: number;
  /** Requests refused because the queue was full. */
  rejected: number;
  /** Requests whose deadline passed before they got a permit, in the queue or before it. */
  expired: number;
  /** Requests whose signal aborted before they got a permit. */
  cancelled: number;
  /** Of the rejected, those refused because their deadline could not be met. */
  unmeetable: number;
  /** The service-time estimate (EWMA of the time a permit is held), ms; undefined before the first release. */
  serviceMs: number | undefined;
}

/** One waiting request: a node of an intrusive doubly linked list, so removal from the middle is O(1). */
interface Waiter {
  readonly enqueuedAt: number;
  readonly tenant: string;
  readonly resolve: (permit: Permit) => void;
  prev: Waiter | undefined;
  next: Waiter | undefined;
  /** The list holding this waiter; undefined once it has left (admitted, expired or aborted). */
  list: WaiterList | undefined;
  /** The priority level it waits in. */
  readonly level: Level;
  timer: { cancel(): void } | undefined;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

/** FIFO of waiters of one tenant in one priority: O(1) push, peek and removal of any member. */
class WaiterList {
  private head: Waiter | undefined;
  private tail: Waiter | undefined;
  size = 0;

  push(waiter: Waiter): void {
    waiter.list = this;
    waiter.prev = this.tail;
    waiter.next = undefined;
    if (this.tail) this.tail.next = waiter;
    else this.head = waiter;
    this.tail = waiter;
    this.size++;
  }

  get first(): Waiter | undefined {
    return this.head;
  }

  remove(waiter: Waiter): void {
    if (waiter.list !== this) return;
    if (waiter.prev) waiter.prev.next = waiter.next;
    else this.head = waiter.next;
    if (waiter.next) waiter.next.prev = waiter.prev;
    else this.tail = waiter.prev;
    waiter.prev = waiter.next = waiter.list = undefined;
    this.size--;
  }
}

/**
 * The waiters of one priority: a FIFO per tenant, and the tenants in the order of their turns.
 * A Map keeps insertion order, so the tenant served is moved to the back: round robin in O(1).
 */
class Level {
  private readonly tenants = new Map<string, WaiterList>();
  /** Waiters in this level, all tenants. */
  size = 0;

  push(waiter: Waiter): void {
    this.size++;
    let list = this.tenants.get(waiter.tenant);
    if (!list) {
      list = new WaiterList();
      this.tenants.set(waiter.tenant, list);
    }
    list.push(waiter);
  }

  /** Takes a waiter out from anywhere; a tenant left with none loses its place in the turns. */
  remove(waiter: Waiter): void {
    const list = waiter.list;
    if (!list) return;
    list.remove(waiter);
    this.size--;
    if (list.size === 0) this.tenants.delete(waiter.tenant);
  }

  /**
   * The oldest waiter of the tenant whose turn it is, left in place for the caller to remove; that
   * tenant goes to the back of the turns.
   */
  next(): Waiter | undefined {
    for (const [tenant, list] of this.tenants) {
      this.tenants.delete(tenant);
      this.tenants.set(tenant, list);
      return list.first;
    }
    return undefined;
  }
}

const UNLIMITED = { maxInFlight: Infinity, maxQueued: Infinity };

/**
 * Bounded admission with strict priorities and turns between tenants: see the module comment.
 *
 * Invariant: a request waits only while every slot is taken, because a released slot passes
 * straight to the next waiter. So a request that finds a free slot never overtakes a waiter.
 */
export class AdmissionQueue {
  private readonly maxInFlight: number;
  private readonly maxQueued: number;
  private readonly clock: Clock;
  private readonly levels: Record<Priority, Level> = {
    high: new Level(),
    normal: new Level(),
    low: new Level(),
  };
  private readonly tenantLimits: (tenant: string) => { maxInFlight: number; maxQueued: number };
  private readonly usage = new Map<string, TenantUsage>();
  private inFlightCount = 0;
  private queuedCount = 0;
  private admittedCount = 0;
  private rejectedCount = 0;
  private expiredCount = 0;
  private cancelledCount = 0;
  private unmeetableCount = 0;
  private readonly deadlineAdmission: boolean;
  /** How long recent requests held their permit. */
  readonly serviceTime = new ServiceTimeEstimate();

  /** @throws RangeError when a limit is not an integer in range (the message names it). */
  constructor(options: AdmissionQueueOptions) {
    const { maxInFlight, maxQueued } = options;
    if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1) {
      throw new RangeError(`max_in_flight must be an integer >= 1, given ${maxInFlight}`);
    }
    if (!Number.isSafeInteger(maxQueued) || maxQueued < 0) {
      throw new RangeError(`max_queued must be an integer >= 0, given ${maxQueued}`);
    }
    this.maxInFlight = maxInFlight;
    this.maxQueued = maxQueued;
    this.clock = options.clock ?? systemClock;
    this.tenantLimits = options.tenantLimits ?? (() => UNLIMITED);
    this.deadlineAdmission = options.deadlineAdmission ?? false;
    this.onWait = options.onWait;
  }

  private readonly onWait: (() => void) | undefined;

  /** What `tenant` holds now. */
  tenantUsage(tenant: string): TenantUsage {
    const u = this.usage.get(tenant);
    return { open: u?.open ?? 0, queued: u?.queued ?? 0 };
  }

  /** Permits held now. */
  get inFlight(): number {
    return this.inFlightCount;
  }

  /** Requests waiting now, all priorities together. */
  get queued(): number {
    return this.queuedCount;
  }

  /** A snapshot of the gauges and cumulative counters. */
  stats(): AdmissionStats {
    return {
      inFlight: this.inFlightCount,
      queued: this.queuedCount,
      admitted: this.admittedCount,
      rejected: this.rejectedCount,
      expired: this.expiredCount,
      cancelled: this.cancelledCount,
      unmeetable: this.unmeetableCount,
      serviceMs: this.serviceTime.valueMs,
    };
  }

  /**
   * Resolves with a permit as soon as a slot is free: at once (no timer) when a slot is free now.
   * Rejects at once with {@link TenantLimitError} when the tenant already has its most requests
   * open, or would wait while it has its most requests waiting; with
   * {@link QueueFullError} when `maxQueued` requests already wait, with
   * {@link DeadlineInQueueError} when the deadline is already past or passes while waiting, and
   * with the signal's reason when the signal is already aborted or aborts while waiting. A
   * request that settles without a permit takes no slot and leaves the queue.
   */
  admitOrReject(request: AdmissionRequest): Promise<Permit> {
    const { priority, deadline, signal } = request;
    const tenant = request.tenant ?? '';
    if (!SERVICE_ORDER.includes(priority)) {
      return Promise.reject(
        new RangeError(`priority must be one of ${SERVICE_ORDER.join(', ')}, given ${JSON.stringify(priority)}`),
      );
    }
    if (deadline !== undefined && Number.isNaN(deadline)) {
      return Promise.reject(new RangeError('deadline must be a number of milliseconds, given NaN'));
    }
    if (signal?.aborted) {
      this.cancelledCount++;
      return Promise.reject(signal.reason);
    }
    const now = this.clock.now();
    if (deadline !== undefined && deadline <= now) {
      this.expiredCount++;
      return Promise.reject(
        new DeadlineInQueueError(`deadline passed ${now - deadline} ms before the request reached the queue`),
      );
    }
    const limits = this.tenantLimits(tenant);
    const usage = this.tenantUsage(tenant);
    if (usage.open >= limits.maxInFlight) {
      this.rejectedCount++;
      return Promise.reject(new TenantLimitError(tenant, 'in_flight', usage.open));
    }
    if (this.inFlightCount < this.maxInFlight) {
      this.inFlightCount++;
      this.admittedCount++;
      this.count(tenant, 1, 0);
      return Promise.resolve(this.createPermit(tenant, 0));
    }
    if (this.queuedCount >= this.maxQueued) {
      this.rejectedCount++;
      return Promise.reject(
        new QueueFullError(
          `queue full: ${this.queuedCount} requests waiting (max_queued=${this.maxQueued}), ` +
            `${this.inFlightCount} in flight (max_in_flight=${this.maxInFlight})`,
        ),
      );
    }
    if (usage.queued >= limits.maxQueued) {
      this.rejectedCount++;
      return Promise.reject(new TenantLimitError(tenant, 'queued', usage.queued));
    }
    if (this.deadlineAdmission && deadline !== undefined) {
      const verdict = judgeDeadline({ ahead: this.waitingAhead(priority), slots: this.maxInFlight, serviceMs: this.serviceTime.valueMs, remainingMs: deadline - now });
      if (!verdict.admit) {
        this.rejectedCount++;
        this.unmeetableCount++;
        return Promise.reject(new DeadlineUnmeetableError(verdict.message, verdict.expectedWaitMs, verdict.remainingMs));
      }
    }
    this.onWait?.();
    return this.enqueue(this.levels[priority], tenant, now, deadline, signal);
  }

  /**
   * A slot now, without waiting and without a timer, when one is free, nothing waits and the tenant
   * is under its in-flight limit; otherwise undefined (nothing is counted as refused). It is held
   * for a gateway that runs calls on it (SchedulerService.Permits): releasing it observes no
   * service time (the gateway reports the time its calls took; see {@link serviceTime}).
   */
  tryAdmitNow(tenant: string): Permit | undefined {
    if (this.queuedCount > 0 || this.inFlightCount >= this.maxInFlight) return undefined;
    if (this.tenantUsage(tenant).open >= this.tenantLimits(tenant).maxInFlight) return undefined;
    this.inFlightCount++;
    this.admittedCount++;
    this.count(tenant, 1, 0);
    return this.createPermit(tenant, 0, false);
  }

  /** Requests waiting that a new request of `priority` would be served after: its level and those above. */
  private waitingAhead(priority: Priority): number {
    let ahead = 0;
    for (const p of SERVICE_ORDER) {
      ahead += this.levels[p].size;
      if (p === priority) break;
    }
    return ahead;
  }

  /** Adds to what `tenant` holds (negative to take away); forgets a tenant that holds nothing. */
  private count(tenant: string, open: number, queued: number): void {
    const u = this.usage.get(tenant) ?? { open: 0, queued: 0 };
    u.open += open;
    u.queued += queued;
    if (u.open <= 0) this.usage.delete(tenant);
    else this.usage.set(tenant, u);
  }

  private enqueue(level: Level, tenant: string, now: number, deadline: number | undefined, signal: AbortSignal | undefined): Promise<Permit> {
    return new Promise<Permit>((resolve, reject) => {
      const waiter: Waiter = {
        enqueuedAt: now,
        tenant,
        level,
        resolve,
        prev: undefined,
        next: undefined,
        list: undefined,
        timer: undefined,
        signal: undefined,
        onAbort: undefined,
      };
      level.push(waiter);
      this.queuedCount++;
      this.count(tenant, 1, 1);
      if (deadline !== undefined && deadline !== Infinity) {
        waiter.timer = this.clock.setTimer(deadline - now, () => {
          if (!this.leave(waiter)) return;
          this.count(tenant, -1, 0);
          this.expiredCount++;
          const waited = this.clock.now() - waiter.enqueuedAt;
          reject(new DeadlineInQueueError(`deadline passed after waiting ${waited} ms in the queue`));
        });
      }
      if (signal) {
        const onAbort = (): void => {
          if (!this.leave(waiter)) return;
          this.count(tenant, -1, 0);
          this.cancelledCount++;
          reject(signal.reason);
        };
        waiter.signal = signal;
        waiter.onAbort = onAbort;
        signal.addEventListener('abort', onAbort, { once: true });
      }
    });
  }

  /**
   * Takes a waiter out of its list and drops its timer and abort listener.
   * Returns false when it had already left, so each waiter settles exactly once.
   */
  private leave(waiter: Waiter): boolean {
    if (waiter.list === undefined) return false;
    waiter.level.remove(waiter);
    this.queuedCount--;
    this.count(waiter.tenant, 0, -1);
    waiter.timer?.cancel();
    waiter.timer = undefined;
    if (waiter.signal && waiter.onAbort) waiter.signal.removeEventListener('abort', waiter.onAbort);
    waiter.signal = waiter.onAbort = undefined;
    return true;
  }

  /** Takes the waiter to serve next out of the queue: highest priority first, tenants in turn within it. */
  private nextWaiter(): Waiter | undefined {
    for (const priority of SERVICE_ORDER) {
      const waiter = this.levels[priority].next();
      if (waiter) {
        this.leave(waiter);
        return waiter;
      }
    }
    return undefined;
  }

  private createPermit(tenant: string, waitedMs: number, observe = true): Permit {
    let released = false;
    const admittedAt = this.clock.now();
    return Object.freeze({
      waitedMs,
      release: (): void => {
        if (released) return;
        released = true;
        if (observe) this.serviceTime.observe(this.clock.now() - admittedAt);
        this.count(tenant, -1, 0);
        this.releaseSlot();
      },
    });
  }

  private releaseSlot(): void {
    const waiter = this.nextWaiter();
    if (waiter === undefined) {
      this.inFlightCount--;
      return;
    }
    // The slot passes straight to the waiter: inFlight stays the same.
    this.admittedCount++;
    waiter.resolve(this.createPermit(waiter.tenant, this.clock.now() - waiter.enqueuedAt));
  }
}
