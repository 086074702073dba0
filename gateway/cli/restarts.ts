/**
 * When `maas up` starts a crashed service again: exponential backoff between restarts, reset once
 * the service has served for a healthy period, and a bound on restarts in a row after which a
 * crash loop is given up. Plain logic: the clock is passed in.
 */

/** Settings of the restart backoff of one service. */
export interface RestartSettings {
  /** Delay before the first restart, ms; doubles with each restart in a row. */
  baseMs: number;
  /** Longest delay between restarts, ms. */
  maxMs: number;
  /** Time a service must report SERVING without exiting for its restarts in a row to reset, ms. */
  healthyMs: number;
  /** Restarts in a row allowed; one more exit gives up. */
  maxRestarts: number;
}

/** What `maas up` uses: 0.5 s, 1 s, 2 s, 4 s, 8 s, then give up; reset after 30 s of serving. */
export const DEFAULT_RESTARTS: RestartSettings = { baseMs: 500, maxMs: 10_000, healthyMs: 30_000, maxRestarts: 5 };

/** The decision after an unexpected exit. */
export type RestartDecision =
  | { restart: true; delayMs: number; /** 1 for the first restart in a row. */ inARow: number }
  | { restart: false; /** Exits in a row, the last one included. */ exits: number };

/** The restart state of one service. */
export class RestartBackoff {
  private inARow = 0;

  constructor(private readonly settings: RestartSettings = DEFAULT_RESTARTS) {}

  /**
   * The service exited unexpectedly at `now`; it had reported SERVING since `servingSince`
   * (undefined if it never did since its last start). Says whether and when to start it again.
   */
  onExit(now: number, servingSince: number | undefined): RestartDecision {
    if (servingSince !== undefined && now - servingSince >= this.settings.healthyMs) this.inARow = 0;
    if (this.inARow >= this.settings.maxRestarts) return { restart: false, exits: this.inARow + 1 };
    this.inARow++;
    const delayMs = Math.min(this.settings.maxMs, this.settings.baseMs * 2 ** (this.inARow - 1));
    return { restart: true, delayMs, inARow: this.inARow };
  }
}
