/**
 * Authentication as the gateway's server middleware: the caller's API key is resolved to its
 * tenant once per call, before any handler runs, and the tenant reaches the handler in its call
 * context (`context.tenant`). A method added to a public service is covered without a line of its
 * own; only the methods of {@link KEYLESS_METHODS} answer without a key. Health and reflection are
 * served outside the public services and never ask for one.
 */
import { ServerMiddleware } from 'nice-grpc';
import { MeshCallContext, MeshContextExt } from '../common/middleware';
import { Authenticator } from './auth';

/** What authentication adds to the call context of every public method that needs a key. */
export interface TenantContextExt {
  /** The caller's tenant, from its API key ("anonymous" when the gateway has no keys). */
  tenant: string;
}

/** The call context of the gateway's handlers. */
export type GatewayCallContext = MeshCallContext & TenantContextExt;

/**
 * Public methods (by path) that answer without an API key: the KServe v2 liveness and readiness
 * probes, which load balancers and orchestrators call without credentials. Their handlers get no
 * tenant and must not read one.
 */
export const KEYLESS_METHODS: ReadonlySet<string> = new Set(['/inference.GRPCInferenceService/ServerLive', '/inference.GRPCInferenceService/ServerReady']);

/**
 * The middleware: UNAUTHENTICATED (thrown as MeshError, mapped by the mesh's error middleware that
 * runs before this one) when keys are configured and the call's key is missing or unknown;
 * otherwise the handler runs with `context.tenant` set.
 */
export function authenticationMiddleware(auth: Pick<Authenticator, 'tenantOf'>, keyless: ReadonlySet<string> = KEYLESS_METHODS): ServerMiddleware<TenantContextExt, MeshContextExt> {
  return async function* authenticate(call, context) {
    // A keyless method's handler takes no tenant: the context passes through as it came.
    if (keyless.has(call.method.path)) return yield* call.next(call.request, context as typeof context & TenantContextExt);
    const tenant = auth.tenantOf(context.metadata.get('authorization'));
    return yield* call.next(call.request, { ...context, tenant });
  };
}
