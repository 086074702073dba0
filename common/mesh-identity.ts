/**
 * Identities of the mesh and who may call what. A service's identity is a URI in its certificate's
 * subject alternative names, in the SPIFFE form:
 *
 *   spiffe://maas.mesh/<service>            gateway, scheduler, balancer, aggregator, operator
 *   spiffe://maas.mesh/worker/<worker-id>   one per worker
 *
 * `operator` is a client-only identity for people and tools (grpcurl, `maas up` waiting for
 * health). This module is plain data and string handling: no gRPC, no files, no process globals.
 */

/** The trust domain of every mesh identity. */
export const TRUST_DOMAIN = 'maas.mesh';

/** The kinds of callers the mesh knows. */
export const MESH_SERVICES = ['gateway', 'scheduler', 'balancer', 'aggregator', 'worker', 'operator'] as const;
export type MeshService = (typeof MESH_SERVICES)[number];

/** A verified caller: its service, and for a worker its id. */
export interface MeshIdentity {
  readonly service: MeshService;
  /** Set only for `worker`. */
  readonly workerId?: string;
  /** The URI, e.g. spiffe://maas.mesh/worker/w1. */
  readonly uri: string;
}

/** What a worker id may look like (it is also part of a certificate's file name). */
export const WORKER_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/** The identity of `service` (and `workerId` for a worker). Throws for a malformed worker id. */
export function meshIdentity(service: MeshService, workerId?: string): MeshIdentity {
  if (service === 'worker') {
    if (workerId === undefined || !WORKER_ID_PATTERN.test(workerId)) {
      throw new Error(`a worker id must match ${WORKER_ID_PATTERN.source}, given "${String(workerId).slice(0, 64)}"`);
    }
    return { service, workerId, uri: `spiffe://${TRUST_DOMAIN}/worker/${workerId}` };
  }
  return { service, uri: `spiffe://${TRUST_DOMAIN}/${service}` };
}

/** The identity a URI names, or undefined if it is not a mesh identity. */
export function parseIdentityUri(uri: string): MeshIdentity | undefined {
  const prefix = `spiffe://${TRUST_DOMAIN}/`;
  if (!uri.startsWith(prefix)) return undefined;
  const path = uri.slice(prefix.length).split('/');
  if (path.length === 2 && path[0] === 'worker' && WORKER_ID_PATTERN.test(path[1])) return meshIdentity('worker', path[1]);
  if (path.length === 1 && path[0] !== 'worker' && (MESH_SERVICES as readonly string[]).includes(path[0])) return meshIdentity(path[0] as MeshService);
  return undefined;
}

/**
 * The mesh identity in a certificate's subject alternative names, as Node shows them
 * (`PeerCertificate.subjectaltname`: `URI:spiffe://..., DNS:localhost, IP Address:127.0.0.1`).
 * Undefined when there is none, or more than one (an ambiguous certificate names nobody).
 */
export function identityFromSubjectAltName(subjectAltName: string | undefined): MeshIdentity | undefined {
  if (!subjectAltName) return undefined;
  const found = subjectAltName
    .split(', ')
    .filter((entry) => entry.startsWith('URI:'))
    .map((entry) => entry.slice(4).replace(/^"(.*)"$/, '$1'))
    .filter((uri) => uri.startsWith(`spiffe://${TRUST_DOMAIN}/`));
  if (found.length !== 1) return undefined;
  return parseIdentityUri(found[0]);
}

/** True when `identity` is the one `expected` names (a service, or a worker by id). */
export function identityMatches(identity: MeshIdentity | undefined, expected: PeerExpectation): boolean {
  if (!identity) return false;
  if (typeof expected === 'string') return identity.service === expected;
  return identity.service === 'worker' && identity.workerId === expected.worker;
}

/** The server a client expects to reach: a service, or one worker by id. */
export type PeerExpectation = Exclude<MeshService, 'worker' | 'operator'> | { worker: string };

/** The URI an expectation names, for messages. */
export function describeExpectation(expected: PeerExpectation): string {
  return typeof expected === 'string' ? meshIdentity(expected).uri : meshIdentity('worker', expected.worker).uri;
}

/** Who may call a method: identities by service, or any certificate of the mesh. */
export type Allowed = readonly MeshService[] | 'any mesh identity';

/**
 * Who may call each method of the internal services, by gRPC path. The one table of the mesh's
 * authorization: a method that is not here is refused to everyone (when TLS is on). The README's
 * "who may call what" table is this table.
 */
export const METHOD_POLICY: Readonly<Record<string, Allowed>> = {
  // The scheduler's methods carry a tenant, which only the gateway (that authenticated it) may set.
  '/maas.internal.v1.SchedulerService/Schedule': ['gateway'],
  '/maas.internal.v1.SchedulerService/ScheduleCalls': ['gateway'],
  '/maas.internal.v1.SchedulerService/Permits': ['gateway'],
  '/maas.internal.v1.SchedulerService/SubmitJob': ['gateway'],
  '/maas.internal.v1.SchedulerService/WatchJob': ['gateway'],
  '/maas.internal.v1.SchedulerService/GetJob': ['gateway'],
  '/maas.internal.v1.SchedulerService/ListJobs': ['gateway'],
  '/maas.internal.v1.SchedulerService/CancelJob': ['gateway'],
  // The scheduler dispatches batch tasks and the online calls it admits; the gateway dispatches the
  // online calls it holds a scheduler's permit for. A worker joins only as the id its certificate
  // names (checked by the Join handler against the hello's worker_id).
  '/maas.internal.v1.BalancerService/Route': ['scheduler'],
  '/maas.internal.v1.BalancerService/Dispatch': ['scheduler', 'gateway'],
  '/maas.internal.v1.BalancerService/Join': ['worker'],
  '/maas.internal.v1.BalancerService/ListModels': ['gateway', 'operator'],
  '/maas.internal.v1.BalancerService/ListWorkers': ['gateway', 'operator'],
  // The model repository: the gateway (KServe repository extension) and operators load, unload
  // and list models; the balancer fans each call out to its workers, and only it calls them.
  '/maas.internal.v1.BalancerService/RepositoryIndex': ['gateway', 'operator'],
  '/maas.internal.v1.BalancerService/LoadModel': ['gateway', 'operator'],
  '/maas.internal.v1.BalancerService/UnloadModel': ['gateway', 'operator'],
  // Map outputs come from workers; the scheduler reduces and forgets jobs.
  '/maas.internal.v1.AggregatorService/Commit': ['worker'],
  '/maas.internal.v1.AggregatorService/Finalize': ['scheduler'],
  '/maas.internal.v1.AggregatorService/Forget': ['scheduler'],
  // Tasks run on a worker only when the balancer sends them (Route, batch tasks) or a dispatcher
  // (the scheduler, or the gateway on a scheduler's permit) runs them on the balancer's word
  // (Dispatch, online calls). All call ExecuteCalls; the balancer's plain Execute is what
  // balancers before call streams sent.
  '/maas.internal.v1.WorkerService/Execute': ['balancer'],
  '/maas.internal.v1.WorkerService/ExecuteCalls': ['scheduler', 'balancer', 'gateway'],
  '/maas.internal.v1.WorkerService/RepositoryIndex': ['balancer'],
  '/maas.internal.v1.WorkerService/LoadModel': ['balancer'],
  '/maas.internal.v1.WorkerService/UnloadModel': ['balancer'],
  // Health (the balancer follows workers' health; tools and probes check it) and reflection
  // (only descriptors, no data) are open to every certificate the mesh CA signed.
  '/grpc.health.v1.Health/Check': 'any mesh identity',
  '/grpc.health.v1.Health/Watch': 'any mesh identity',
  '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo': 'any mesh identity',
  '/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo': 'any mesh identity',
};

/** The outcome of checking one call. */
export type Decision = { allowed: true } | { allowed: false; status: 'unauthenticated' | 'permission_denied'; message: string };

/** Checks a call of `path` by `identity` (undefined: the certificate names no mesh identity). */
export function authorizeCall(path: string, identity: MeshIdentity | undefined): Decision {
  if (!identity) {
    return { allowed: false, status: 'unauthenticated', message: `${path}: the client certificate names no mesh identity (a URI SAN spiffe://${TRUST_DOMAIN}/<service>)` };
  }
  const allowed = METHOD_POLICY[path];
  if (allowed === 'any mesh identity') return { allowed: true };
  if (allowed?.includes(identity.service)) return { allowed: true };
  const who = allowed ? allowed.join(', ') : 'nobody (the method is not in the mesh policy)';
  return { allowed: false, status: 'permission_denied', message: `${path} may not be called by ${identity.uri}; allowed: ${who}` };
}
