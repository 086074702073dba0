/**
 * OpenTelemetry setup shared by every service. Tracing is switched on by the standard variables,
 * and then every call gets spans and W3C trace context propagation: OTLP over HTTP when
 * `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (or
 * `OTEL_TRACES_EXPORTER=otlp`), to the console with `OTEL_TRACES_EXPORTER=console`.
 * `OTEL_SERVICE_NAME` overrides the service's own name.
 */
import { Span, SpanStatusCode, Tracer, trace } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor, SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions';

/** Handle on the process's tracing: flush and stop at shutdown. */
export interface Tracing {
  shutdown(): Promise<void>;
}

let installed: NodeTracerProvider | undefined;

/**
 * True once initTracing found an exporter configured. Without one, no provider, context manager
 * or tracing middleware is installed: spans that go nowhere would cost every call CPU (async
 * hooks, span objects) for nothing.
 */
export function tracingEnabled(): boolean {
  return installed !== undefined;
}

/** Installs the global tracer provider for `serviceName` when an exporter is configured (once per process). */
export function initTracing(serviceName: string, env: Record<string, string | undefined> = process.env): Tracing {
  if (!installed) {
    const spanProcessors = spanProcessorsFromEnv(env);
    if (spanProcessors.length === 0) return { shutdown: async () => {} };
    installed = new NodeTracerProvider({
      resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: env.OTEL_SERVICE_NAME || serviceName }),
      spanProcessors,
    });
    installed.register();
  }
  const provider = installed;
  return { shutdown: () => provider.shutdown() };
}

function spanProcessorsFromEnv(env: Record<string, string | undefined>): SpanProcessor[] {
  const choice = (env.OTEL_TRACES_EXPORTER ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  const endpoint = env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
  const processors: SpanProcessor[] = [];
  if (choice.includes('none') || env.OTEL_SDK_DISABLED === 'true') return processors;
  if (choice.includes('otlp') || (choice.length === 0 && endpoint)) {
    processors.push(new BatchSpanProcessor(new OTLPTraceExporter(), { scheduledDelayMillis: 500 }));
  }
  if (choice.includes('console')) processors.push(new SimpleSpanProcessor(new ConsoleSpanExporter()));
  return processors;
}

/** The tracer of the mesh's own spans (queue wait, model execution). */
export function meshTracer(): Tracer {
  return trace.getTracer('maas-mesh');
}

/** Ends `span`, recording `err` as its error status when given. */
export function endSpan(span: Span, err?: unknown): void {
  if (err !== undefined) {
    span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
  }
  span.end();
}
