/**
 * A minimal OTLP/HTTP trace receiver for end-to-end tests. The installed
 * @opentelemetry/exporter-trace-otlp-http (0.223.x, Node) posts JSON (`application/json`,
 * JsonTraceSerializer: hex ids, numeric kinds), uncompressed unless
 * OTEL_EXPORTER_OTLP_COMPRESSION=gzip, which is handled too. It keeps every request body as text
 * (for a test that greps them) and the spans in them.
 */
import { EventEmitter, once } from 'node:events';
import { IncomingMessage, Server, ServerResponse, createServer as createHttpServer } from 'node:http';
import { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';

/** One span as the exporter sends it, with its resource's service.name. */
export interface CollectedSpan {
  service: string;
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  /** The span's string attributes. */
  attributes: Record<string, string>;
}

interface OtlpJsonRequest {
  resourceSpans?: Array<{
    resource?: { attributes?: Array<{ key: string; value?: { stringValue?: string } }> };
    scopeSpans?: Array<{ spans?: Array<Omit<CollectedSpan, 'service' | 'attributes'> & { attributes?: Array<{ key: string; value?: { stringValue?: string } }> }> }>;
  }>;
}

export class OtlpReceiver {
  readonly spans: CollectedSpan[] = [];
  /** Every trace request's body, decompressed, as text. */
  readonly bodies: string[] = [];
  private readonly arrivals = new EventEmitter();
  private readonly server: Server = createHttpServer((req, res) => void this.handle(req, res));
  port = 0;

  async start(): Promise<void> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    this.port = (this.server.address() as AddressInfo).port;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const parts: Buffer[] = [];
    for await (const part of req) parts.push(part as Buffer);
    if (req.method !== 'POST' || req.url !== '/v1/traces') {
      res.writeHead(404).end();
      return;
    }
    let body = Buffer.concat(parts);
    if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
    const text = body.toString('utf8');
    this.bodies.push(text);
    const type = req.headers['content-type'] ?? '';
    if (!type.startsWith('application/json')) {
      res.writeHead(415, { 'content-type': 'application/json' }).end(JSON.stringify({ error: `unsupported content-type ${type}` }));
      return;
    }
    const request = JSON.parse(text) as OtlpJsonRequest;
    const added: CollectedSpan[] = [];
    for (const rs of request.resourceSpans ?? []) {
      const service = rs.resource?.attributes?.find((a) => a.key === 'service.name')?.value?.stringValue ?? '?';
      for (const ss of rs.scopeSpans ?? []) {
        for (const s of ss.spans ?? []) {
          const attributes: Record<string, string> = {};
          for (const a of s.attributes ?? []) if (a.value?.stringValue !== undefined) attributes[a.key] = a.value.stringValue;
          added.push({ service, traceId: s.traceId, spanId: s.spanId, parentSpanId: s.parentSpanId || undefined, name: s.name, kind: s.kind, attributes });
        }
      }
    }
    this.spans.push(...added);
    res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    if (added.length > 0) this.arrivals.emit('spans');
  }

  /**
   * Resolves with the first non-undefined result of `check(spans)`, evaluated now and each time new
   * spans arrive; rejects after `timeoutMs` with `describe(spans)` in the message.
   */
  async waitFor<T>(check: (spans: CollectedSpan[]) => T | undefined, timeoutMs: number, describe: (spans: CollectedSpan[]) => string): Promise<T> {
    const first = check(this.spans);
    if (first !== undefined) return first;
    return new Promise<T>((resolvePromise, reject) => {
      const onSpans = () => {
        const result = check(this.spans);
        if (result === undefined) return;
        cleanup();
        resolvePromise(result);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`gave up after ${timeoutMs} ms: ${describe(this.spans)}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.arrivals.off('spans', onSpans);
      };
      this.arrivals.on('spans', onSpans);
    });
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
