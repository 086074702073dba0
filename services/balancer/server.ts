/**
 * The balancer service: worker membership over join streams, routing each task to one worker
 * chosen by the configured policy, and forwarding the worker's output stream. A worker that fails
 * before its first output is replaced once by another; after the first output there is no retry,
 * so no output is ever duplicated.
 */
import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { Channel, ClientError, Status, createClient } from 'nice-grpc';
import { HealthCheckResponse_ServingStatus, HealthDefinition } from '../../generated/grpc/health/v1/health';
import { closeChannel, createMeshClient, openMeshChannel } from '../../common/client';
import { ConfigOf } from '../../common/config';
import { ErrorKind, MeshError, NO_READY_WORKER_TRAILER, quoteInput } from '../../common/errors';
import { Logger } from '../../common/log';
import { MeshCallContext } from '../../common/middleware';
import { callMetrics } from '../../common/call-metrics';
import { ServiceMetrics, serveMetrics } from '../../common/metrics';
import { startGrpcServer } from '../../common/server';
import { StartedService } from '../../common/service-main';
import { loadMeshTls } from '../../common/tls';
import {
  BalancerServiceDefinition,
  BalancerServiceLoadModelRequest,
  BalancerServiceLoadModelResponse,
  BalancerServiceUnloadModelRequest,
  BalancerServiceUnloadModelResponse,
  DispatchRequest,
  DispatchResponse,
  JoinRequest,
  JoinResponse,
  ListModelsResponse,
  ListWorkersResponse,
  RepositoryIndexRequest,
  RepositoryIndexResponse,
  RouteRequest,
  RouteResponse,
  RoutingState,
} from '../../generated/maas/internal/v1/balancer';
import { RepositoryIndexResponse_ModelIndex } from '../../generated/inference/grpc_service';
import { Task } from '../../generated/maas/internal/v1/task';
import { ExecuteRequest, ExecuteResponse, WorkerServiceDefinition } from '../../generated/maas/internal/v1/worker';
import { EncodedMessage, openCallStreamClient } from '../../common/call-stream';
import { WorkerInfo, WorkerState } from '../../generated/maas/v1/mesh';
import { Model } from '../../generated/maas/v1/models';
import { balancerSchema, parseModelPolicies } from './config';
import { compareVersions, Member as MemberOf, Membership } from './membership';
import { AttemptRunner, NoReadyWorkerError, RouteTarget, WORKER_EXECUTE_PATH, firstOutputLatencyMs, serveDispatch } from './dispatch';
import { RetryBudget } from './retry-budget';
import { createPolicy } from './policy';

/**
 * Worker failures that mean "try another worker" when they happen before any output. CANCELLED
 * counts only when this balancer did not cancel: a worker whose connection is torn down (process
 * killed, server force-stopped) surfaces as CANCELLED or UNAVAILABLE. RESOURCE_EXHAUSTED (a full
 * worker queue) is retried but is load shedding, not a fault: it does not count toward ejection.
 */
const RETRYABLE = new Set([Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED, Status.INTERNAL, Status.UNKNOWN, Status.CANCELLED]);

/** Prefix of the routing names of built-in mappers. */
const MAPPER_PREFIX = 'mapper:';

/** The name a task routes by: its model, or for a mapper task `mapper:<name>`. */
function routingKey(task: Task): string {
  switch (task.request?.$case) {
    case 'generate':
      return task.request.generate.model;
    case 'predict':
      return task.request.predict.model;
    case 'map': {
      const spec = task.request.map.spec;
      return spec?.map?.$case === 'model' ? spec.map.model : `${MAPPER_PREFIX}${spec?.map?.$case === 'mapper' ? spec.map.mapper : ''}`;
    }
    case 'infer':
      return task.request.infer.modelName;
    default:
      throw new MeshError('invalid_argument', 'task.request must be set');
  }
}

/** The version a task must run on: an infer task's model_version; undefined (any) for the others. */
function versionOf(task: Task): string | undefined {
  return task.request?.$case === 'infer' && task.request.infer.modelVersion !== '' ? task.request.infer.modelVersion : undefined;
}

/** How messages name what a task routes to: `model "m"` or `model "m" version "2"`. */
function routeLabel(model: string, version: string | undefined): string {
  return version === undefined ? `model ${quoteInput(model)}` : `model ${quoteInput(model)} version ${quoteInput(version)}`;
}

/** The error kind of a worker's status, for fan-out calls that fail. */
const KIND_OF_STATUS: Partial<Record<Status, ErrorKind>> = {
  [Status.INVALID_ARGUMENT]: 'invalid_argument',
  [Status.NOT_FOUND]: 'not_found',
  [Status.FAILED_PRECONDITION]: 'failed_precondition',
  [Status.RESOURCE_EXHAUSTED]: 'resource_exhausted',
  [Status.DEADLINE_EXCEEDED]: 'deadline_exceeded',
  [Status.CANCELLED]: 'cancelled',
  [Status.PERMISSION_DENIED]: 'permission_denied',
  [Status.UNAUTHENTICATED]: 'unauthenticated',
};

/** How long LoadModel/UnloadModel wait for the workers' ModelsUpdate after they answered. */
const ADVERTISE_WAIT_MS = 5000;

/** The task's affinity key, for consistent_hash; '' when it has none. */
function affinityKeyOf(task: Task): string {
  switch (task.request?.$case) {
    case 'generate':
      return task.request.generate.affinityKey;
    case 'predict':
      return task.request.predict.affinityKey;
    case 'map':
      // Tasks of one job spread over the workers; the job id would pin them all to one.
      return '';
    case 'infer': {
      const p = task.request.infer.parameters['affinity_key']?.parameterChoice;
      return p?.$case === 'stringParam' ? p.stringParam : '';
    }
    default:
      return '';
  }
}

/** How many workers one task may be tried on. */
const MAX_ATTEMPTS = 2;

/** How much per-worker and per-model state the balancer holds: each returns to 0 when every worker has left. */
export interface BalancerState {
  members: number;
  /** Open worker links: a channel and a health watch each (a replaced member's until its stream ends). */
  links: number;
  /**
   * Members holding a latency estimate, a slow-start ramp still running, an outlier record, and
   * an ejection not yet found over (each member object owns these).
   */
  latency: number;
  slowStart: number;
  outliers: number;
  ejected: number;
  /** Models with routing state in the policies (cursors, weights). */
  policyKeys: number;
}

/** A running balancer. */
export interface RunningBalancer extends StartedService {
  readonly port: number;
  /** The current members, for tests and diagnostics. */
  readonly membership: Membership<Model, WorkerLink>;
  /** Sizes of what it holds per worker and per model, for tests and diagnostics. */
  state(): BalancerState;
  /** host:port of the /metrics endpoint; undefined with --metrics-port -1. */
  readonly metricsAddress: string | undefined;
}

/**
 * What the balancer holds to reach one member while it is a member (its `link`): one channel to
 * the worker (for its tasks and its health watch) and a signal that ends the membership. Closed
 * exactly once.
 */
export interface WorkerLink {
  readonly client: ReturnType<typeof createWorkerClient>;
  /**
   * Runs a task on the worker as one call on its call stream (WorkerService.ExecuteCalls, many
   * calls on one HTTP/2 stream), yielding each ExecuteResponse as the worker encoded it. After the
   * link is closed, calls already running finish (a draining worker completes them); the stream is
   * closed once the last has ended.
   */
  execute(task: Task, signal: AbortSignal, deadline: number | undefined): AsyncGenerator<Uint8Array>;
  /** Aborted when the member leaves or is removed: its health watch stops and its join stream ends. */
  readonly left: AbortSignal;
  close(): void;
}

/** The next message of a join stream, or undefined once `left` is aborted. */
async function nextUnlessLeft<T>(messages: AsyncIterator<T>, left: AbortSignal): Promise<IteratorResult<T> | undefined> {
  if (left.aborted) return undefined;
  let onLeft!: () => void;
  const gone = new Promise<undefined>((resolve) => {
    onLeft = () => resolve(undefined);
    left.addEventListener('abort', onLeft, { once: true });
  });
  try {
    return await Promise.race([messages.next(), gone]);
  } finally {
    left.removeEventListener('abort', onLeft);
  }
}

/** Starts the balancer. */
export async function startBalancer(config: ConfigOf<typeof balancerSchema>, log: Logger): Promise<RunningBalancer> {
  const tls = loadMeshTls(config, 'balancer');
  /** The workers: each one object with its membership, load, latency, slow start, ejection and link. */
  const membership = new Membership<Model, WorkerLink>({
    ewmaDecayMs: config.ewmaDecayMs,
    outliers: {
      consecutiveFailures: config.ejectAfterFailures,
      failureRate: config.ejectFailureRate,
      failureRateMinRequests: config.ejectMinRequests,
      baseEjectionMs: config.ejectionBaseMs,
      maxEjectedShare: config.maxEjectedShare,
    },
  });
  const policy = createPolicy(config.policy);
  // Per-model overrides; a mapper task routes by its 'mapper:' name and takes the default.
  const modelPolicies = new Map([...parseModelPolicies(config.modelPolicies)].map(([model, name]) => [model, createPolicy(name)]));
  const allPolicies = [policy, ...modelPolicies.values()];
  /**
   * Links open now, to close them all at shutdown. Each member object holds its own (not one per
   * address or id: two workers may advertise one address, and a worker that rejoins under its id
   * gets a new link while its old stream winds down).
   */
  const openLinks = new Set<WorkerLink>();

  /** Opens the link of a member that just joined: its channel, and the watch of its health. */
  function openLink(member: Member): WorkerLink {
    // With TLS, the server at the address must be the worker that joined: its id, its certificate.
    const channel: Channel = openMeshChannel(member.address, config.maxMessageBytes, tls, { worker: member.id });
    const left = new AbortController();
    const calls = openCallStreamClient<ExecuteRequest, ExecuteResponse>(WorkerServiceDefinition, channel, 'executeCalls', 'execute', 4 * config.maxMessageBytes);
    let running = 0;
    const link: WorkerLink = {
      client: createWorkerClient(channel),
      async *execute(task, signal, deadline) {
        running++;
        try {
          yield* calls.callEncoded({ task }, { signal, deadline });
        } finally {
          if (--running === 0 && left.signal.aborted) calls.close();
        }
      },
      left: left.signal,
      close() {
        if (left.signal.aborted) return;
        left.abort();
        if (member.link === link) member.link = undefined;
        openLinks.delete(link);
        if (running === 0) calls.close();
        closeChannel(channel);
      },
    };
    member.link = link;
    openLinks.add(link);
    void watchHealth(member, channel, left.signal);
    return link;
  }

  function workerLink(member: Member): WorkerLink {
    const link = member.link;
    // The member left between the pick and the call: as if its connection had failed.
    if (!link) throw new ClientError(WORKER_EXECUTE_PATH, Status.UNAVAILABLE, `worker ${member.id} left`);
    return link;
  }
  const workerClient = (member: Member) => workerLink(member).client;

  /** True while `member` is the current member under its id (not one that left or was replaced). */
  const isMember = (member: Member) => membership.isMember(member);

  const retryBudget = new RetryBudget({ ratio: config.retryBudget, minRetriesPerSecond: config.retryMinPerSecond });

  const metrics = new ServiceMetrics('balancer');
  const picks = metrics.counter('maas_balancer_picks_total', 'Workers picked for a call (first tries, retries and hedges), by worker.', ['worker']);
  const retries = metrics.counter('maas_balancer_retries_total', 'Calls tried again on another worker after a failure before the first output.');
  const budgetRefusals = metrics.counter('maas_balancer_retry_budget_exhausted_total', 'Retries not made because the retry budget was spent.');
  const hedges = metrics.counter('maas_balancer_hedges_total', 'Second copies of a unary Predict sent to another worker after --hedge-delay-ms.');
  const ejections = metrics.counter('maas_balancer_ejections_total', 'Workers ejected as outliers, by worker and reason.', ['worker', 'reason']);
  metrics.gauge('maas_balancer_outstanding', 'Calls this balancer has open on each worker now.', ['worker'], (g) => {
    g.reset();
    for (const m of membership.all()) g.set({ worker: m.id }, m.outstanding);
  });
  metrics.gauge('maas_balancer_workers', 'Member workers now, by state (ready, draining, ejected).', ['state'], (g) => {
    const now = Date.now();
    const counts = { ready: 0, draining: 0, ejected: 0 };
    for (const m of membership.all()) counts[m.draining || !m.serving ? 'draining' : m.outlier.isEjected(now) ? 'ejected' : 'ready']++;
    for (const [state, n] of Object.entries(counts)) g.set({ state }, n);
  });

  /** Listeners of routing changes: the Dispatch streams, which send their dispatcher the new state. */
  const routingListeners = new Set<() => void>();
  /** Signals that the routing state may have changed (a member joined, left, changed models, was ejected, drains). */
  function routingChanged(): void {
    for (const listener of routingListeners) listener();
  }

  /** Counts a failure against a worker; ejects it when it is an outlier, ramping it back after. */
  function noteFailure(member: Member) {
    // A worker that has left (or was replaced) keeps no record.
    const reason = membership.recordFailure(member, Date.now());
    if (!reason) return;
    ejections.inc({ worker: member.id, reason });
    const state = member.outlier.state(Date.now());
    routingChanged();
    // Its return is a change of the routing state too.
    setTimeout(routingChanged, Math.max(0, (state.ejectedUntil ?? 0) - Date.now()) + 1).unref();
    log.warn('worker ejected', { worker: member.id, reason, until: new Date(state.ejectedUntil ?? 0).toISOString(), ejections: state.ejections });
  }

  /**
   * The worker for a task under the policy, among ready workers that serve `model`, minus `tried`.
   * `count`: false for a pick made ahead of its call, counted once a call takes it ({@link countPick}).
   */
  function pickWorker(model: string, tried: ReadonlySet<string>, affinityKey: string, version?: string, count = true): Member | undefined {
    const now = Date.now();
    const members = membership.routable(model, tried, version, now);
    const candidates = members.map((m) => m.candidate(now));
    const picked = (modelPolicies.get(model) ?? policy).pick(model, candidates, { affinityKey });
    const member = picked && members.find((m) => m.id === picked.id);
    if (member && count) countPick(member);
    return member;
  }

  function countPick(member: Member): void {
    picks.inc({ worker: member.id });
  }

  /** The worker a call's first attempt runs on when the call took a pick made ahead (Dispatch's NextPick): counted now. */
  function takenPick(member: Member): Member {
    countPick(member);
    return member;
  }

  /**
   * Follows a member's gRPC health: NOT_SERVING (draining, failing) takes it out of rotation at
   * once, before its next load report would. Reconnects while the membership lasts.
   */
  async function watchHealth(member: Member, channel: Channel, signal: AbortSignal): Promise<void> {
    const health = createClient(HealthDefinition, channel);
    while (!signal.aborted) {
      try {
        for await (const { status } of health.watch({ service: '' }, { signal })) {
          const serving = status === HealthCheckResponse_ServingStatus.SERVING;
          if (serving !== member.serving) {
            member.serving = serving;
            routingChanged();
          }
        }
      } catch {
        // The stream broke (the worker is going or gone); its join stream decides membership.
      }
      await sleep(config.reportIntervalMs, undefined, { signal }).catch(() => undefined);
    }
  }

  /** Drops everything held for a member that is no longer one: its link, its state by id, and the routing state of models nobody serves now. */
  function forget(member: Member, why: string) {
    member.link?.close();
    // A departed worker's series go with it: ids of restarted workers would pile up otherwise.
    picks.remove({ worker: member.id });
    for (const model of member.models.keys()) {
      if (membership.serves(model)) continue;
      for (const p of allPolicies) p.forget(model);
    }
    routingChanged();
    log.info('worker left', { worker: member.id, address: member.address, why });
  }

  async function* route(request: RouteRequest, context: MeshCallContext): AsyncGenerator<RouteResponse | EncodedMessage> {
    const task = request.task;
    if (!task?.request) throw new MeshError('invalid_argument', 'task.request must be set');
    const target: RouteTarget<Member> = {
      model: routingKey(task),
      version: versionOf(task),
      affinityKey: affinityKeyOf(task),
      requestId: task.requestId,
      hedge: config.hedgeDelayMs > 0 && task.request.$case === 'predict',
    };
    // The attempt calls the worker itself and relays its outputs unread: a RouteResponse is an
    // ExecuteResponse on the wire (its output is field 1 in both).
    const execute: AttemptRunner<Member, EncodedMessage> = async function* (member, _attempt, signal) {
      for await (const bytes of workerLink(member).execute(task, signal, context.deadline)) yield new EncodedMessage(bytes);
    };
    try {
      yield* routeCall(target, context.signal, execute);
    } catch (err) {
      if (err instanceof NoReadyWorkerError) context.trailer.set(NO_READY_WORKER_TRAILER, '1');
      throw err;
    }
  }

  /**
   * The routing of one call, shared by Route and Dispatch: picks a worker under the policy and runs
   * `run` on it; a failure before the first output is tried again on another worker (within the
   * retry budget), none after; a hedged call gets a second attempt after --hedge-delay-ms. Yields
   * the outputs of the attempt that produced them; ends on success; throws the call's final error;
   * an abort error once `signal` (the caller) is aborted.
   */
  function routeCall<T>(target: RouteTarget<Member>, signal: AbortSignal, run: AttemptRunner<Member, T>): AsyncGenerator<T> {
    return target.hedge ? hedgedCall(target, signal, run) : retriedCall(target, signal, run);
  }

  async function* retriedCall<T>(target: RouteTarget<Member>, signal: AbortSignal, run: AttemptRunner<Member, T>): AsyncGenerator<T> {
    const { model, version } = target;
    const tried = new Set<string>();
    let failure: { worker: string; details: string } | undefined;
    // True while every worker tried so far refused for a full queue: the mesh is overloaded, and
    // the client should hear RESOURCE_EXHAUSTED (back off), not UNAVAILABLE.
    let allFull = true;
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      // A first worker picked ahead of the call (Dispatch's NextPick) was the policy's decision already.
      const member = attempt === 0 && target.first ? takenPick(target.first) : pickWorker(model, tried, target.affinityKey, version);
      if (!member) {
        const label = routeLabel(model, version);
        if (failure && allFull) {
          throw new MeshError('resource_exhausted', `every ready worker serving ${label} is at capacity; last: ${failure.details}`);
        }
        if (failure) {
          throw new MeshError('unavailable', `worker ${failure.worker} failed before its first output (${failure.details}) and no other ready worker serves ${label}`);
        }
        throw new NoReadyWorkerError(`no ready worker serves ${label}`);
      }
      tried.add(member.id);
      log.debug('routed', { request_id: target.requestId, model, worker: member.id, attempt });
      member.outstanding++;
      let started = false;
      const startedAt = Date.now();
      if (attempt === 0) retryBudget.recordRequest(startedAt);
      // The attempt ends when the caller goes, or when the membership sweeper declares the worker
      // gone (silent for 3 report intervals: stopped, hung, cut off), instead of at the deadline.
      // Listeners removed when the attempt ends, rather than AbortSignal.any: a composite signal
      // that has listeners stays reachable from its sources for as long as they live, and `gone`
      // lives as long as the member, so with AbortSignal.any each call's signal would be freed only
      // once the gRPC library had removed its own listener.
      const attemptController = new AbortController();
      const abortAttempt = () => attemptController.abort();
      signal.addEventListener('abort', abortAttempt, { once: true });
      member.gone.addEventListener('abort', abortAttempt, { once: true });
      if (signal.aborted || member.gone.aborted) attemptController.abort();
      try {
        for await (const output of run(member, attempt + 1, attemptController.signal)) {
          // Time to first output is the latency sample: a stream's length depends on the request.
          if (!started) member.latency.observe(firstOutputLatencyMs(output, Date.now() - startedAt));
          started = true;
          yield output;
        }
        membership.recordSuccess(member, Date.now());
        return;
      } catch (err) {
        if (signal.aborted) throw err;
        if (member.gone.aborted) {
          allFull = false;
          const why = String(member.gone.reason);
          if (started) throw new MeshError('unavailable', `${why}; its output had begun, so the call is not retried`);
          failure = { worker: member.id, details: why };
        } else {
          if (!(err instanceof ClientError) || !RETRYABLE.has(err.code)) throw err;
          if (err.code !== Status.RESOURCE_EXHAUSTED) {
            noteFailure(member);
            allFull = false;
          }
          if (started) {
            throw new MeshError('unavailable', `worker ${member.id} failed after its output began: ${err.details}`);
          }
          failure = { worker: member.id, details: `${Status[err.code]}: ${err.details}` };
        }
        // Retries may add only a bounded share of load, so a failing worker cannot set off a storm.
        if (!retryBudget.tryRetry(Date.now())) {
          budgetRefusals.inc();
          const kind = allFull ? 'resource_exhausted' : 'unavailable';
          throw new MeshError(kind, `worker ${member.id} failed before its first output (${failure.details}); retry budget exhausted`);
        }
        log.warn('worker failed before its first output; trying another', { worker: member.id, request_id: target.requestId, error: failure.details });
        retries.inc();
      } finally {
        member.outstanding--;
        signal.removeEventListener('abort', abortAttempt);
        member.gone.removeEventListener('abort', abortAttempt);
      }
    }
    throw new MeshError('unavailable', `model ${quoteInput(model)} failed on ${MAX_ATTEMPTS} workers; last: ${failure?.worker} (${failure?.details})`);
  }

  async function* join(requests: AsyncIterable<JoinRequest>, context: MeshCallContext): AsyncGenerator<JoinResponse> {
    const messages = requests[Symbol.asyncIterator]();
    const first = await messages.next();
    if (first.done || first.value.message?.$case !== 'hello') {
      throw new MeshError('invalid_argument', 'the first message of Join must be a hello');
    }
    const hello = first.value.message.hello;
    if (!hello.workerId) throw new MeshError('invalid_argument', 'hello.worker_id must not be empty');
    // With TLS a worker joins only as the id its certificate names: no process can take another
    // worker's place in the routing table.
    if (context.caller && context.caller.workerId !== hello.workerId) {
      throw new MeshError(
        'permission_denied',
        `Join as hello.worker_id ${quoteInput(hello.workerId)} refused: the caller's certificate names ${context.caller.uri}`,
      );
    }
    if (!/^.+:\d{1,5}$/.test(hello.address)) throw new MeshError('invalid_argument', `hello.address must be host:port, given ${quoteInput(hello.address)}`);
    const member = membership.join(
      {
        id: hello.workerId,
        address: hello.address,
        capacity: hello.capacity,
        models: memberModels(hello.models, hello.mappers),
      },
      Date.now(),
    );
    const link = openLink(member);
    routingChanged();
    log.info('worker joined', { worker: member.id, address: member.address, models: [...member.models.keys()].join(',') });
    let why = 'stream ended';
    try {
      yield { reportIntervalMs: config.reportIntervalMs };
      const removed = () => {
        why = 'expired';
        return new MeshError('unavailable', `worker ${member.id} was removed: no load report for ${3 * config.reportIntervalMs} ms`);
      };
      for (;;) {
        // A member removed for silence is told so at once, not at its next report, which may never come.
        const next = await nextUnlessLeft(messages, link.left);
        if (next === undefined) throw removed();
        if (next.done) break;
        const message = next.value.message;
        if (message?.$case === 'models') {
          if (!isMember(member)) throw removed();
          const gone = membership.updateModels(member.id, memberModels(message.models.models, hello.mappers), Date.now());
          if (gone === undefined) throw removed();
          for (const name of gone) if (!membership.serves(name)) for (const p of allPolicies) p.forget(name);
          log.info('worker models changed', { worker: member.id, models: [...member.models.keys()].join(',') });
          modelEvents.emit('changed');
          routingChanged();
          continue;
        }
        if (message?.$case !== 'report') continue;
        const wasDraining = member.draining;
        if (!membership.report(member.id, message.report, Date.now())) throw removed();
        if (member.draining !== wasDraining) routingChanged();
      }
    } catch (err) {
      why = `stream failed: ${(err as Error).message}`;
      throw err;
    } finally {
      if (membership.leave(member.id, member)) forget(member, why);
      // Replaced by a rejoin under the same id, or removed for silence: the link goes all the same.
      link.close();
    }
  }

  /** What a member serves: its models by name and version, and its mappers under `mapper:<name>`. */
  function memberModels(models: Model[], mappers: string[]) {
    return [
      ...models.map((m) => ({ name: m.name, version: m.version, description: m })),
      // Mappers route like models, under a name no model can have (model names allow no ':').
      ...mappers.map((name) => ({ name: `${MAPPER_PREFIX}${name}`, description: Model.fromPartial({ name }) })),
    ];
  }

  /** Emits 'changed' whenever a member's models change (ModelsUpdate). */
  const modelEvents = new EventEmitter();
  modelEvents.setMaxListeners(0);

  /** Resolves once `done()` holds, re-checked on each ModelsUpdate; false after ADVERTISE_WAIT_MS. */
  async function modelsSettle(done: () => boolean, signal: AbortSignal): Promise<boolean> {
    if (done()) return true;
    return new Promise<boolean>((resolve) => {
      const finish = (ok: boolean) => {
        clearTimeout(timer);
        modelEvents.off('changed', check);
        signal.removeEventListener('abort', abort);
        resolve(ok);
      };
      const check = () => done() && finish(true);
      const abort = () => finish(false);
      const timer = setTimeout(() => finish(done()), ADVERTISE_WAIT_MS);
      modelEvents.on('changed', check);
      signal.addEventListener('abort', abort, { once: true });
    });
  }

  /**
   * Calls `call` on every member that is not draining; answers with the ids that succeeded, or
   * fails naming those that did not. When every member fails with one status, that status is the
   * answer's (NOT_FOUND from all: no worker has the model).
   */
  async function fanOut(what: string, model: string, context: MeshCallContext, call: (member: Member) => Promise<unknown>, ignoreNotFound = false): Promise<Member[]> {
    const members = membership.all().filter((m) => !m.draining);
    if (members.length === 0) throw new MeshError('unavailable', `no worker is a member: cannot ${what} model ${quoteInput(model)}`);
    const results = await Promise.allSettled(members.map((m) => call(m)));
    const ok: Member[] = [];
    const failed: { member: Member; code: Status; details: string }[] = [];
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') ok.push(members[i]);
      else {
        const err = r.reason;
        const code = err instanceof ClientError ? err.code : Status.UNKNOWN;
        if (ignoreNotFound && code === Status.NOT_FOUND) return;
        failed.push({ member: members[i], code, details: err instanceof ClientError ? err.details : String(err) });
      }
    });
    if (context.signal.aborted) throw new MeshError('cancelled', `${what} of model ${quoteInput(model)} was cancelled`);
    if (ignoreNotFound && ok.length === 0 && failed.length === 0) throw new MeshError('not_found', `model ${quoteInput(model)} is not loaded on any worker`);
    if (failed.length > 0) {
      const codes = new Set(failed.map((f) => f.code));
      const kind = (codes.size === 1 && KIND_OF_STATUS[failed[0].code]) || 'unavailable';
      const list = failed.map((f) => `${f.member.id} (${Status[f.code]}: ${f.details})`).join('; ');
      throw new MeshError(kind, `${what} of model ${quoteInput(model)} failed on ${failed.length} of ${members.length} workers: ${list}`);
    }
    return ok;
  }

  async function loadModel(request: BalancerServiceLoadModelRequest, context: MeshCallContext): Promise<BalancerServiceLoadModelResponse> {
    const name = request.modelName;
    if (name === '') throw new MeshError('invalid_argument', 'model_name must not be empty');
    const loaded = await fanOut('load', name, context, (m) => workerClient(m).loadModel({ modelName: name }, { signal: context.signal, deadline: context.deadline }));
    // Each worker advertised before it answered; the update may still be on its way on the Join stream.
    await modelsSettle(() => loaded.every((m) => !isMember(m) || m.models.has(name)), context.signal);
    return { workerIds: loaded.map((m) => m.id).sort() };
  }

  async function unloadModel(request: BalancerServiceUnloadModelRequest, context: MeshCallContext): Promise<BalancerServiceUnloadModelResponse> {
    const name = request.modelName;
    if (name === '') throw new MeshError('invalid_argument', 'model_name must not be empty');
    const unloaded = await fanOut('unload', name, context, (m) => workerClient(m).unloadModel({ modelName: name }, { signal: context.signal, deadline: context.deadline }), true);
    await modelsSettle(() => unloaded.every((m) => !isMember(m) || !m.models.has(name)), context.signal);
    return { workerIds: unloaded.map((m) => m.id).sort() };
  }

  /** Merges the workers' indexes: a model version is READY when one worker has it loaded. */
  async function repositoryIndex(request: RepositoryIndexRequest, context: MeshCallContext): Promise<RepositoryIndexResponse> {
    const members = membership.all().filter((m) => !m.draining);
    const answers = await Promise.allSettled(
      members.map((m) => workerClient(m).repositoryIndex({ request: request.request }, { signal: context.signal, deadline: context.deadline })),
    );
    const merged = new Map<string, RepositoryIndexResponse_ModelIndex>();
    for (const a of answers) {
      if (a.status !== 'fulfilled') continue;
      for (const row of a.value.response?.models ?? []) {
        const key = `${row.name}\u0000${row.version}`;
        const seen = merged.get(key);
        if (!seen || (seen.state !== 'READY' && row.state === 'READY')) merged.set(key, row);
      }
    }
    if (members.length > 0 && answers.every((a) => a.status === 'rejected')) {
      const first = answers[0] as PromiseRejectedResult;
      throw new MeshError('unavailable', `no worker answered RepositoryIndex: ${first.reason instanceof ClientError ? first.reason.details : String(first.reason)}`);
    }
    const models = [...merged.values()].sort((a, b) => a.name.localeCompare(b.name) || compareVersions(a.version, b.version));
    return { response: { models } };
  }

  async function listModels(): Promise<ListModelsResponse> {
    return {
      models: membership
        .models()
        .filter((m) => !m.name.startsWith(MAPPER_PREFIX))
        .map((m) => ({ ...m.description, readyWorkers: m.readyWorkers })),
    };
  }

  /**
   * One attempt of a hedged call, cancellable on its own: `started` settles at its first output (or
   * when it ends), `result` with its first output once it has succeeded; `hasOutput` holds once it
   * has output or has succeeded without any.
   */
  function hedgeAttempt<T>(member: Member, attempt: number, run: AttemptRunner<Member, T>, signal: AbortSignal) {
    const controller = new AbortController();
    const onAbort = () => controller.abort();
    signal.addEventListener('abort', onAbort, { once: true });
    // A worker declared gone for silence answers no more: its attempt fails now, so the hedge (or
    // the replacement of a first attempt that failed early) goes to another worker.
    const onGone = () => controller.abort();
    member.gone.addEventListener('abort', onGone, { once: true });
    member.outstanding++;
    const startedAt = Date.now();
    let first: { output: T } | undefined;
    let settled = false;
    let succeeded = false;
    let onStarted!: () => void;
    const started = new Promise<void>((resolve) => (onStarted = resolve));
    const result = (async () => {
      try {
        for await (const output of run(member, attempt, controller.signal)) {
          if (first) continue;
          first = { output };
          member.latency.observe(firstOutputLatencyMs(output, Date.now() - startedAt));
          onStarted();
        }
      } catch (err) {
        // Cut off because the worker is gone: a worker failure, which the hedge logic retries.
        if (member.gone.aborted && !signal.aborted) throw new ClientError(WORKER_EXECUTE_PATH, Status.UNAVAILABLE, String(member.gone.reason));
        throw err;
      }
      if (!first) member.latency.observe(Date.now() - startedAt);
      membership.recordSuccess(member, Date.now());
      succeeded = true;
      return first;
    })();
    result
      .catch((err) => {
        if (!controller.signal.aborted && err instanceof ClientError && RETRYABLE.has(err.code)) {
          if (err.code !== Status.RESOURCE_EXHAUSTED) noteFailure(member);
        }
        // A hedge loser cut off unanswered took at least this long: a latency sample all the same,
        // else a worker that is always hedged away would never show how slow it is.
        else if (controller.signal.aborted && !signal.aborted && !first) member.latency.observe(Date.now() - startedAt);
      })
      .finally(() => {
        settled = true;
        onStarted();
        member.outstanding--;
        signal.removeEventListener('abort', onAbort);
        member.gone.removeEventListener('abort', onGone);
      });
    return { member, controller, result, started, hasOutput: () => first !== undefined || succeeded, isSettled: () => settled };
  }

  /**
   * A hedged call (a unary Predict with --hedge-delay-ms): if the first worker has not answered
   * after the delay, a second attempt goes to another worker (within the retry budget). The first
   * attempt to produce output wins and the other is cancelled; there is no retry after output. A
   * first attempt that fails before the delay is replaced at once.
   */
  async function* hedgedCall<T>(target: RouteTarget<Member>, signal: AbortSignal, run: AttemptRunner<Member, T>): AsyncGenerator<T> {
    const { model, affinityKey: key } = target;
    const first = target.first ? takenPick(target.first) : pickWorker(model, new Set(), key);
    if (!first) throw new NoReadyWorkerError(`no ready worker serves model ${quoteInput(model)}`);
    retryBudget.recordRequest(Date.now());
    const calls = [hedgeAttempt(first, 1, run, signal)];
    try {
      let timer: NodeJS.Timeout | undefined;
      const hedgeDue = new Promise<'due'>((resolve) => (timer = setTimeout(() => resolve('due'), config.hedgeDelayMs)));
      // Wait for the first attempt's output (or end) or the hedge delay, whichever comes first.
      const early = await Promise.race([calls[0].started.then(() => 'settled' as const), hedgeDue]);
      clearTimeout(timer);
      if (early === 'settled' && !calls[0].hasOutput()) {
        // It failed (or succeeded with no output) before the delay.
        const err = await calls[0].result.then(() => undefined, (e: unknown) => e);
        if (err === undefined) return;
        if (signal.aborted || !(err instanceof ClientError) || !RETRYABLE.has(err.code)) throw err;
        const second = pickWorker(model, new Set([first.id]), key);
        if (!second || !retryBudget.tryRetry(Date.now())) throw err;
        hedges.inc();
        calls.push(hedgeAttempt(second, 2, run, signal));
      } else if (early === 'due') {
        const second = pickWorker(model, new Set([first.id]), key);
        if (second && retryBudget.tryRetry(Date.now())) {
          hedges.inc();
          calls.push(hedgeAttempt(second, 2, run, signal));
        }
      }
      // The first attempt with output wins and the others are cancelled; until one has output,
      // an attempt that fails leaves the other running.
      for (;;) {
        const winner = calls.find((c) => c.hasOutput());
        if (winner) {
          for (const c of calls) if (c !== winner) c.controller.abort();
          let won: { output: T } | undefined;
          try {
            won = await winner.result;
          } catch (err) {
            if (signal.aborted || !(err instanceof ClientError)) throw err;
            throw new MeshError('unavailable', `worker ${winner.member.id} failed after its output began: ${err.details}`);
          }
          if (won) yield won.output;
          return;
        }
        const open = calls.filter((c) => !c.isSettled());
        if (open.length === 0) break;
        await Promise.race(open.map((c) => c.started));
      }
      // Every attempt ended with no output: one that succeeded so is the answer, else the last error.
      const outcomes = await Promise.all(calls.map((c) => c.result.then(() => undefined, (err: unknown) => ({ err }))));
      if (outcomes.some((o) => o === undefined)) return;
      const last = outcomes.at(-1)!.err;
      if (!signal.aborted && last instanceof ClientError) throw new MeshError('unavailable', `model ${quoteInput(model)} failed on ${calls.length} workers: ${last.details}`);
      throw last;
    } finally {
      // The loser (or an attempt still running after a failure) is cancelled: its answer is not needed.
      for (const c of calls) c.controller.abort();
    }
  }

  /** The members that take calls now (ready or in slow start; not draining, not ejected), with what they serve. */
  function routingState(): RoutingState {
    const now = Date.now();
    const workers = membership
      .all()
      .filter((m) => !m.draining && m.serving && !m.outlier.isEjected(now))
      .sort((a, b) => a.id.localeCompare(b.id))
      .map((m) => ({
        workerId: m.id,
        address: m.address,
        models: [...m.modelVersions]
          .flatMap(([name, versions]) => [...versions.keys()].map((version) => ({ name, version })))
          .sort((a, b) => a.name.localeCompare(b.name) || compareVersions(a.version, b.version)),
      }));
    return { workers };
  }

  /** Routing off the data path: the dispatcher runs the attempts this balancer orders (./dispatch.ts). */
  function dispatch(requests: AsyncIterable<DispatchRequest>, context: MeshCallContext): AsyncGenerator<DispatchResponse> {
    return serveDispatch(requests, context.signal, {
      route: routeCall,
      pickAhead(model) {
        // consistent_hash picks by each call's key: a pick made before the call has none.
        if ((modelPolicies.get(model) ?? policy).name === 'consistent_hash') return undefined;
        return pickWorker(model, new Set(), '', undefined, false);
      },
      reserve(member, delta) {
        member.reserved = Math.max(0, member.reserved + delta);
      },
      routable(model, workerId) {
        return membership.routable(model, new Set(), undefined, Date.now()).find((m) => m.id === workerId);
      },
      routingState,
      onRoutingChange(listener) {
        routingListeners.add(listener);
        return () => routingListeners.delete(listener);
      },
      stateIntervalMs: config.reportIntervalMs,
      hedging: config.hedgeDelayMs > 0,
      log,
    });
  }

  async function listWorkers(): Promise<ListWorkersResponse> {
    const now = Date.now();
    const workers = membership
      .all()
      .map((m): WorkerInfo => {
        const ejection = m.outlier.state(now);
        const ejected = ejection.ejected;
        const weight = m.ramp.weight(now);
        return {
          workerId: m.id,
          address: m.address,
          state: m.draining || !m.serving
            ? WorkerState.WORKER_STATE_DRAINING
            : ejected
              ? WorkerState.WORKER_STATE_EJECTED
              : weight < 1
                ? WorkerState.WORKER_STATE_SLOW_START
                : WorkerState.WORKER_STATE_READY,
          models: [...m.models.keys()].filter((name) => !name.startsWith(MAPPER_PREFIX)).sort(),
          outstanding: m.outstanding,
          reportedInFlight: m.reportedInFlight,
          reportedQueueDepth: m.reportedQueueDepth,
          reportedLatencyMs: m.reportedLatencyMs,
          capacity: m.capacity,
          ewmaLatencyMs: m.latency.value ?? 0,
          ejections: ejection.ejections,
          ejectedUntilMs: ejected ? (ejection.ejectedUntil ?? 0) : 0,
          weight,
        };
      })
      .sort((a, b) => a.workerId.localeCompare(b.workerId));
    return { workers, policy: config.policy };
  }

  const server = await startGrpcServer({
    host: config.host,
    port: config.port,
    maxMessageBytes: config.maxMessageBytes,
    maxConcurrentStreams: config.maxConcurrentStreams,
    log,
    serving: true,
    tls,
    insecure: config.insecure,
    healthPort: config.healthPort,
    // A worker's Join stream lasts as long as the worker; it rejoins the next balancer by itself.
    // A dispatcher's stream lasts as long as the dispatcher; it reconnects by itself.
    longLivedMethods: ['/maas.internal.v1.BalancerService/Join', '/maas.internal.v1.BalancerService/Dispatch'],
    services: [{ definition: BalancerServiceDefinition, implementation: { route, dispatch, join, listModels, listWorkers, repositoryIndex, loadModel, unloadModel } }],
    callMetrics: callMetrics(metrics, { knownModel: (name) => membership.serves(name) }).middleware,
  });
  const metricsServer = await serveMetrics(metrics, { host: config.host, port: config.metricsPort, log }).catch((err: unknown) => {
    server.kill();
    throw err;
  });

  const sweeper = setInterval(() => {
    for (const m of membership.expire(Date.now(), 3 * config.reportIntervalMs)) forget(m, 'no load report');
  }, config.reportIntervalMs);
  sweeper.unref();

  log.info('routing policy', { policy: config.policy, per_model: config.modelPolicies || 'none' });
  return {
    port: server.port,
    address: server.address,
    membership,
    metricsAddress: metricsServer?.address,
    state: () => ({
      members: membership.size,
      links: openLinks.size,
      latency: membership.size,
      slowStart: membership.all().filter((m) => m.ramp.active).length,
      outliers: membership.size,
      ejected: membership.ejectedCount,
      policyKeys: allPolicies.reduce((n, p) => n + p.keys, 0),
    }),
    async shutdown() {
      clearInterval(sweeper);
      await server.shutdown(config.drainTimeoutMs);
      await metricsServer?.close();
      for (const link of [...openLinks]) link.close();
    },
  };
}

function createWorkerClient(channel: Channel) {
  return createMeshClient(WorkerServiceDefinition, channel);
}

/** A member of this balancer: a worker serving models described as on the wire, reached by its link. */
type Member = MemberOf<Model, WorkerLink>;
