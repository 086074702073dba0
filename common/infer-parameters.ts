/**
 * The request parameters of a KServe v2 ModelInfer call that the mesh reads: `priority` (string:
 * low, normal or high) and `affinity_key` (string), the same settings maas.v1 requests carry in
 * their own fields. The gateway checks them (gateway/infer-request.ts); the scheduler reads the
 * priority and the balancer the affinity key of an infer task with these functions. Pure: the
 * parameter type is structural, so inference.InferParameter fits.
 */

/** An InferParameter: one of the protocol's parameter values. */
export interface InferParameterLike {
  parameterChoice?: { $case: string; [value: string]: unknown } | undefined;
}

/** The parameter that sets a call's priority. */
export const PRIORITY_PARAMETER = 'priority';
/** The parameter that sets a call's affinity key (consistent hashing pins equal keys to one worker). */
export const AFFINITY_KEY_PARAMETER = 'affinity_key';

/** The priorities a ModelInfer call may ask for, lowest first. */
export const INFER_PRIORITIES = ['low', 'normal', 'high'] as const;
export type InferPriority = (typeof INFER_PRIORITIES)[number];

function stringParam(parameters: Readonly<Record<string, InferParameterLike>> | undefined, key: string): string | undefined {
  const choice = parameters?.[key]?.parameterChoice;
  return choice?.$case === 'stringParam' ? String(choice.stringParam) : undefined;
}

/** The call's priority; 'normal' when the parameter is absent (or not one of {@link INFER_PRIORITIES}). */
export function inferPriorityOf(parameters: Readonly<Record<string, InferParameterLike>> | undefined): InferPriority {
  const given = stringParam(parameters, PRIORITY_PARAMETER);
  return (INFER_PRIORITIES as readonly string[]).includes(given ?? '') ? (given as InferPriority) : 'normal';
}

/** The call's affinity key; '' when it has none. */
export function inferAffinityKeyOf(parameters: Readonly<Record<string, InferParameterLike>> | undefined): string {
  return stringParam(parameters, AFFINITY_KEY_PARAMETER) ?? '';
}
