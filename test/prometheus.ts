/**
 * Test support for metrics: scrape a service's `/metrics` over HTTP and parse the Prometheus text
 * exposition format (version 0.0.4) into samples, strictly: a line that is not a comment, a blank
 * or a well-formed sample fails the parse, so a malformed scrape fails the test that reads it.
 */
import { get } from 'node:http';

/** One sample line: `name{label="value",...} value`. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A parsed scrape: its samples, and each family's `# TYPE`. */
export interface Scrape {
  readonly text: string;
  readonly samples: Sample[];
  readonly types: Map<string, string>;
  /** Sum of the samples named `name` whose labels include every pair of `labels`; 0 when none. */
  value(name: string, labels?: Record<string, string>): number;
  /** True when a sample named `name` with those labels exists. */
  has(name: string, labels?: Record<string, string>): boolean;
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/;
const LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)/y;

function parseValue(raw: string, line: string): number {
  // As Prometheus reads them (Go's ParseFloat): NaN and Inf in any case; prom-client writes "Nan".
  if (/^[+]?inf$/i.test(raw)) return Infinity;
  if (/^-inf$/i.test(raw)) return -Infinity;
  if (/^nan$/i.test(raw)) return NaN;
  const n = Number(raw);
  if (raw.trim() === '' || Number.isNaN(n)) throw new Error(`bad sample value ${JSON.stringify(raw)} in ${JSON.stringify(line)}`);
  return n;
}

function parseLabels(raw: string, line: string): Record<string, string> {
  const labels: Record<string, string> = {};
  LABEL.lastIndex = 0;
  while (LABEL.lastIndex < raw.length) {
    const at = LABEL.lastIndex;
    const m = LABEL.exec(raw);
    if (!m || m.index !== at) throw new Error(`bad labels in ${JSON.stringify(line)}`);
    labels[m[1]] = m[2].replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    if (m[3] === '') break;
  }
  return labels;
}

/** Parses the text format; throws naming the first line that is not in it. */
export function parseMetrics(text: string): Scrape {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    if (line.startsWith('#')) {
      const type = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/.exec(line);
      if (type) types.set(type[1], type[2]);
      else if (!/^# HELP \S+ /.test(line)) throw new Error(`bad comment line ${JSON.stringify(line)}`);
      continue;
    }
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`bad sample line ${JSON.stringify(line)}`);
    samples.push({ name: m[1], labels: m[2] ? parseLabels(m[2], line) : {}, value: parseValue(m[3], line) });
  }
  const matching = (name: string, labels: Record<string, string> = {}) =>
    samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  return {
    text,
    samples,
    types,
    value: (name, labels) => matching(name, labels).reduce((sum, s) => sum + s.value, 0),
    has: (name, labels) => matching(name, labels).length > 0,
  };
}

/** GET http://<address><path>: status, content type and body. */
export function httpGet(address: string, path = '/metrics', method = 'GET'): Promise<{ status: number; contentType: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = get({ host: address.slice(0, address.lastIndexOf(':')), port: Number(address.slice(address.lastIndexOf(':') + 1)), path, method, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), body }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

/** Scrapes `address`'s /metrics and parses it; fails unless it answers 200 in the text format. */
export async function scrape(address: string | undefined): Promise<Scrape> {
  if (!address) throw new Error('the service has no metrics endpoint');
  const res = await httpGet(address);
  if (res.status !== 200) throw new Error(`GET http://${address}/metrics answered ${res.status}: ${res.body.slice(0, 200)}`);
  if (!res.contentType.startsWith('text/plain; version=0.0.4')) throw new Error(`GET http://${address}/metrics has content type ${res.contentType}`);
  return parseMetrics(res.body);
}
