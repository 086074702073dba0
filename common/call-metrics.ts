/**
 * Metrics of every gRPC call a server handles, as one server middleware: calls by service, method,
 * model and status code, their latency, and for streams the time to the first output and the
 * outputs sent. It sits outside the error mapping, so it sees the status the caller sees.
 *
 * The model label is the name a request carries only when the service knows it as a model (the
 * service's own check, or a streaming call for it that already produced output here); any other
 * name is counted as `(unknown)`, so a caller cannot mint label values.
 */
import { ServerError, ServerMiddleware, Status } from 'nice-grpc';
import { isAbortError } from 'abort-controller-x';
import { ServiceMetrics, UNKNOWN_MODEL } from './metrics';

/** Most model names remembered as seen with output; beyond it, only the service's check counts. */
const MAX_SEEN_MODELS = 512;
/**
 * A stream's outputs are added to their counter this many at a time, and the rest at its end: one
 * labelled increment per output cost the gateway about 2% of its CPU at 16 streamed Generates.
 */
const OUTPUTS_PER_COUNT = 32;

/** The metric families of gRPC calls; one set per service. */
export interface CallMetrics {
  readonly middleware: ServerMiddleware;
}

/**
 * The middleware counting the calls of `metrics`' service. `knownModel` says whether a name is a
 * model the service knows (the gateway's catalog, a worker's table, the balancer's members).
 */
export function callMetrics(metrics: ServiceMetrics, options: { knownModel?: (name: string) => boolean; labelModels?: boolean } = {}): CallMetrics {
  const knownModel = options.knownModel ?? (() => false);
  const labelModels = options.labelModels ?? true;
  const handled = metrics.counter('maas_grpc_server_handled_total', 'gRPC calls completed by the server, by service, method, model and status code.', ['service', 'method', 'model', 'code']);
  const handling = metrics.histogram('maas_grpc_server_handling_seconds', 'Time from a call arriving to its status being sent, in seconds (a whole stream for a streaming call).', ['service', 'method', 'model']);
  const firstOutput = metrics.histogram('maas_grpc_server_first_output_seconds', 'Time from a server-streaming call arriving to its first output message, in seconds.', ['service', 'method', 'model']);
  const outputs = metrics.counter('maas_grpc_server_stream_outputs_total', `Output messages sent on server-streaming calls (rate() gives outputs per second), counted ${OUTPUTS_PER_COUNT} at a time while a stream runs and the rest at its end.`, ['service', 'method', 'model']);
  const service = metrics.service;
  const seen = new Set<string>();
  const label = (name: string): string => {
    if (name === '') return '';
    return seen.has(name) || knownModel(name) ? name : UNKNOWN_MODEL;
  };
  const remember = (name: string) => {
    if (name !== '' && seen.size < MAX_SEEN_MODELS) seen.add(name);
  };

  const middleware: ServerMiddleware = async function* countCalls(call, context) {
    const method = call.method.path.replace(/^\//, '');
    // Health and reflection are the platform's, not the mesh's traffic: probes would drown the rest.
    if (method.startsWith('grpc.')) return yield* call.next(call.request, context);
    const started = performance.now();
    const name = call.requestStream || !labelModels ? '' : modelOfRequest(call.request);
    let code = Status.OK;
    let sent = 0;
    let counted = 0;
    let outputLabels: { service: string; method: string; model: string } | undefined;
    try {
      if (!call.responseStream) return yield* call.next(call.request, context);
      for await (const response of call.next(call.request, context) as AsyncIterable<unknown>) {
        if (outputLabels === undefined) {
          remember(name);
          outputLabels = { service, method, model: label(name) };
          firstOutput.observe(outputLabels, (performance.now() - started) / 1000);
        }
        if (++sent - counted >= OUTPUTS_PER_COUNT) {
          outputs.inc(outputLabels, sent - counted);
          counted = sent;
        }
        yield response as never;
      }
      return undefined as never;
    } catch (err) {
      code = err instanceof ServerError ? err.code : isAbortError(err) ? Status.CANCELLED : Status.UNKNOWN;
      throw err;
    } finally {
      // A stream whose consumer stopped reading before the end was cut off: the caller went away.
      if (code === Status.OK && context.signal.aborted) code = Status.CANCELLED;
      if (outputLabels !== undefined && sent > counted) outputs.inc(outputLabels, sent - counted);
      const model = label(name);
      handled.inc({ service, method, model, code: Status[code] });
      handling.observe({ service, method, model }, (performance.now() - started) / 1000);
    }
  };
  return { middleware };
}

/**
 * The model a request names: `model` (maas.v1 Predict/Generate), `model_name` (KServe v2), a job
 * spec's model or `mapper:<name>`, or the same inside an internal task. '' when it names none.
 */
export function modelOfRequest(request: unknown): string {
  if (typeof request !== 'object' || request === null) return '';
  const r = request as Record<string, unknown>;
  if (typeof r.model === 'string') return r.model;
  if (typeof r.modelName === 'string') return r.modelName;
  if (typeof r.spec === 'object' && r.spec !== null) return modelOfSpec(r.spec);
  const task = r.task as { request?: { $case?: string } & Record<string, unknown> } | undefined;
  const inner = task?.request;
  if (inner?.$case) {
    const body = inner[inner.$case] as Record<string, unknown> | undefined;
    if (inner.$case === 'map') return typeof body?.spec === 'object' && body.spec !== null ? modelOfSpec(body.spec) : '';
    return modelOfRequest(body);
  }
  return '';
}

function modelOfSpec(spec: object): string {
  const map = (spec as { map?: { $case?: string; model?: string; mapper?: string } }).map;
  if (map?.$case === 'model' && typeof map.model === 'string') return map.model;
  if (map?.$case === 'mapper' && typeof map.mapper === 'string') return `mapper:${map.mapper}`;
  return '';
}
