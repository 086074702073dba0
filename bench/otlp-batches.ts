/**
 * A minimal OTLP/HTTP JSON trace receiver on 127.0.0.1, for `bench:onnx --batch-trace`: the worker
 * exports its spans here, and this keeps the `batch.run` spans of the dynamic batcher (model,
 * rows, start time), so the bench can say how many rows each batch in the mesh held.
 */
import { Server, createServer } from 'node:http';

/** One batch the worker ran. */
export interface BatchSpan {
  model: string;
  rows: number;
  requests: number;
  /** Start, epoch milliseconds. */
  startMs: number;
}

interface OtlpAttribute {
  key: string;
  value?: { stringValue?: string; intValue?: string | number };
}
interface OtlpSpan {
  name: string;
  startTimeUnixNano?: string | number;
  attributes?: OtlpAttribute[];
}
interface OtlpExport {
  resourceSpans?: { scopeSpans?: { spans?: OtlpSpan[] }[] }[];
}

/** A started receiver: its traces endpoint, the batches seen so far, and stop. */
export interface BatchSpanReceiver {
  readonly endpoint: string;
  readonly batches: BatchSpan[];
  close(): Promise<void>;
}

/** Starts the receiver on a free port. */
export async function startBatchSpanReceiver(): Promise<BatchSpanReceiver> {
  const batches: BatchSpan[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as OtlpExport;
        for (const rs of body.resourceSpans ?? [])
          for (const ss of rs.scopeSpans ?? [])
            for (const span of ss.spans ?? []) {
              if (span.name !== 'batch.run') continue;
              const attr = (key: string) => span.attributes?.find((a) => a.key === key)?.value;
              batches.push({
                model: attr('maas.model')?.stringValue ?? '',
                rows: Number(attr('maas.batch.rows')?.intValue ?? 0),
                requests: Number(attr('maas.batch.size')?.intValue ?? 0),
                startMs: Number(BigInt(span.startTimeUnixNano ?? 0) / 1_000_000n),
              });
            }
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      } catch {
        res.writeHead(400).end();
      }
    });
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as { port: number };
  return {
    endpoint: `http://127.0.0.1:${port}/v1/traces`,
    batches,
    close: () => new Promise((done) => server.close(() => done())),
  };
}
