/**
 * The worker's side of membership: a stream to the balancer that opens with a hello and then
 * sends load reports at the interval the balancer asks for. It reconnects with backoff when the
 * balancer is away, and ends cleanly when the worker leaves.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { JoinRequest, LoadReport, WorkerHello } from '../../generated/maas/internal/v1/balancer';
import { BalancerServiceDefinition } from '../../generated/maas/internal/v1/balancer';
import { clientOnFreshChannel, createMeshClient, openMeshChannel } from '../../common/client';
import { MeshTls } from '../../common/tls';
import { Logger } from '../../common/log';

/**
 * Longest wait between two Join attempts while the balancer is away: a restarted balancer learns
 * its workers within this of SERVING (5 s before: bench:faults listed them 3.5 s after it).
 */
const MAX_JOIN_BACKOFF_MS = 2000;

/** A live membership: `reportNow` pushes a report at once; `leave` ends the stream. */
export interface Membership {
  reportNow(): void;
  /**
   * Sends the worker's current models (from the hello function) as a ModelsUpdate; resolves once
   * the message has been handed to the stream (or at once when no stream is open: the next hello
   * carries them).
   */
  updateModels(): Promise<void>;
  leave(): Promise<void>;
  /** Drops the stream at once without a goodbye (for crash tests). */
  abandon(): void;
  /** Resolves the first time the balancer accepts the worker. */
  readonly joined: Promise<void>;
}

/**
 * Joins the balancer at `balancerAddress` (over mutual TLS with `tls`, plaintext without) and
 * keeps the membership alive until `leave`. `hello` is called for each (re)join, so a new stream
 * advertises the models the worker serves now.
 */
export function joinBalancer(balancerAddress: string, hello: () => WorkerHello, load: () => LoadReport, log: Logger, tls?: MeshTls): Membership {
  // A fresh channel for an attempt after a failed one: this loop's backoff decides, not grpc-js's.
  const link = clientOnFreshChannel(
    () => openMeshChannel(balancerAddress, undefined, tls, 'balancer'),
    (channel) => createMeshClient(BalancerServiceDefinition, channel),
  );
  const stop = new AbortController();
  let leaving = false;
  let wake: (() => void) | undefined;
  let intervalMs = 1000;
  let markJoined!: () => void;
  const joined = new Promise<void>((r) => (markJoined = r));

  /** Callers of updateModels waiting for their update to be sent. */
  let updateWaiters: (() => void)[] = [];
  let streamOpen = false;

  async function* messages(): AsyncGenerator<JoinRequest> {
    // The hello carries the current models: updates asked for before it are in it.
    const helloNow = hello();
    const sent = updateWaiters;
    updateWaiters = [];
    streamOpen = true;
    try {
      yield { message: { $case: 'hello', hello: helloNow } };
      for (const w of sent) w();
      yield* afterHello();
    } finally {
      streamOpen = false;
    }
  }

  async function* afterHello(): AsyncGenerator<JoinRequest> {
    while (!leaving) {
      if (updateWaiters.length > 0) {
        const waiting = updateWaiters;
        updateWaiters = [];
        yield { message: { $case: 'models', models: { models: hello().models } } };
        for (const w of waiting) w();
        continue;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, intervalMs);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = undefined;
      if (updateWaiters.length > 0) continue;
      yield { message: { $case: 'report', report: load() } };
    }
    // Returning half-closes the stream: the balancer removes the worker and ends its side.
  }

  const loop = (async () => {
    let backoff = 100;
    while (!leaving && !stop.signal.aborted) {
      try {
        for await (const response of link.client().join(messages(), { signal: stop.signal })) {
          if (response.reportIntervalMs && response.reportIntervalMs !== intervalMs) {
            intervalMs = response.reportIntervalMs;
            // Report now: the wait under way was timed with the old interval, maybe too long.
            wake?.();
          }
          backoff = 100;
          markJoined();
        }
        if (leaving) break;
        log.warn('balancer ended the membership stream; joining again');
      } catch (err) {
        if (leaving || stop.signal.aborted) break;
        log.warn('cannot reach the balancer; retrying', { balancer: balancerAddress, error: (err as Error).message, retry_ms: backoff });
      }
      await sleep(backoff, undefined, { signal: stop.signal }).catch(() => undefined);
      backoff = Math.min(backoff * 2, MAX_JOIN_BACKOFF_MS);
    }
  })();

  return {
    joined,
    reportNow: () => wake?.(),
    updateModels() {
      if (leaving) return Promise.resolve();
      const done = new Promise<void>((resolve) => updateWaiters.push(resolve));
      // With no stream open the next hello carries the models; it resolves the waiter then.
      if (streamOpen) wake?.();
      return done;
    },
    abandon() {
      leaving = true;
      stop.abort();
      link.close();
    },
    async leave() {
      leaving = true;
      for (const w of updateWaiters.splice(0)) w();
      wake?.();
      // A balancer that does not answer the half-close within a second is not waited for.
      const timer = setTimeout(() => stop.abort(), 1000);
      await loop;
      clearTimeout(timer);
      link.close();
    },
  };
}
