import { expect } from 'chai';
import { context, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { ConfigError, parseConfig } from '../../common/config.js';
import { LogOptions, callerContent, createLogger, logSchema } from '../../common/log.js';

/** A logger whose lines land in an array. */
function capture(options: LogOptions = {}) {
  const lines: string[] = [];
  const log = createLogger('gateway', { ...options, write: (l) => lines.push(l) });
  const json = () => lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  return { log, lines, json };
}

function throwDeep(): never {
  throw new TypeError('the stack has\nmore than one line');
}

describe('log: JSON lines', () => {
  it('writes one JSON object per line with time, level, service, msg and the fields', () => {
    const { log, lines, json } = capture();
    log.info('worker joined', { worker: 'w1', models: 3 });
    expect(lines).to.have.lengthOf(1);
    expect(lines[0].endsWith('\n') && lines[0].indexOf('\n') === lines[0].length - 1, lines[0]).to.equal(true);
    const o = json()[0];
    expect(Object.keys(o).sort()).to.deep.equal(['level', 'models', 'msg', 'service', 'time', 'worker']);
    expect([o.level, o.service, o.msg, o.worker, o.models]).to.deep.equal(['info', 'gateway', 'worker joined', 'w1', 3]);
    expect(new Date(o.time as string).toISOString()).to.equal(o.time);
  });

  it('writes the levels at and above its own: debug only at debug, nothing when silent', () => {
    const at = (level: 'debug' | 'info' | 'warn' | 'error' | 'silent') => {
      const { log, json } = capture({ level });
      log.debug('d');
      log.info('i');
      log.warn('w');
      log.error('e');
      return json().map((o) => `${o.level}:${o.msg}`);
    };
    expect(at('debug')).to.deep.equal(['debug:d', 'info:i', 'warn:w', 'error:e']);
    expect(at('info')).to.deep.equal(['info:i', 'warn:w', 'error:e']);
    expect(at('warn')).to.deep.equal(['warn:w', 'error:e']);
    expect(at('error')).to.deep.equal(['error:e']);
    expect(at('silent')).to.deep.equal([]);
  });

  it('keeps an error with its stack in one field on one line', () => {
    const { log, lines, json } = capture();
    let err: Error | undefined;
    try {
      throwDeep();
    } catch (e) {
      err = e as Error;
    }
    log.error('unexpected error', { method: '/maas.v1.InferenceService/Generate', err });
    expect(lines).to.have.lengthOf(1);
    expect(lines[0].split('\n')).to.have.lengthOf(2); // the line and the empty rest after its newline
    const o = json()[0];
    expect(o.err).to.deep.equal({ type: 'TypeError', message: 'the stack has\nmore than one line', stack: err!.stack });
    expect(String((o.err as { stack: string }).stack)).to.include('throwDeep');
  });
});

describe('log: text mode', () => {
  it('writes one readable line: time LEVEL service: msg key=value, a stack escaped in one value', () => {
    const { log, lines } = capture({ format: 'text', level: 'debug' });
    log.debug('routed', { worker: 'w1', note: 'two words' });
    log.error('unexpected error', { err: new Error('boom') });
    expect(lines).to.have.lengthOf(2);
    expect(lines[0]).to.match(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z DEBUG gateway: routed worker=w1 note="two words"\n$/);
    expect(lines[1]).to.match(/^\S+ ERROR gateway: unexpected error err="Error: boom\\n {4}at .*"\n$/);
    expect(lines[1].split('\n')).to.have.lengthOf(2);
  });
});

describe('log: trace context', () => {
  let provider: NodeTracerProvider;
  const exporter = new InMemorySpanExporter();

  before(() => {
    // What initTracing installs when an exporter is configured: a provider and its AsyncLocalStorage context manager.
    provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    provider.register();
  });

  after(async () => {
    await provider.shutdown();
    trace.disable();
    context.disable();
  });

  it('puts the active span\'s trace_id and span_id on every line written in it, across awaits, and none outside', async () => {
    const { log, json } = capture({ level: 'debug' });
    log.info('before');
    const tracer = provider.getTracer('test');
    const ids = await tracer.startActiveSpan('call', async (span) => {
      log.debug('start');
      await new Promise((r) => setTimeout(r, 1));
      log.warn('after a timer');
      span.end();
      return span.spanContext();
    });
    log.info('after');
    const lines = json();
    expect(lines.map((o) => [o.msg, o.trace_id, o.span_id])).to.deep.equal([
      ['before', undefined, undefined],
      ['start', ids.traceId, ids.spanId],
      ['after a timer', ids.traceId, ids.spanId],
      ['after', undefined, undefined],
    ]);
    expect(exporter.getFinishedSpans().map((s) => s.spanContext().spanId)).to.include(ids.spanId);
  });
});

describe('log: settings and content', () => {
  it('parses --log-level, --log-format and --log-content, defaulting to info, json and off', () => {
    expect(parseConfig(logSchema, [], {})).to.deep.equal({ logLevel: 'info', logFormat: 'json', logContent: false });
    expect(parseConfig(logSchema, ['--log-level', 'debug', '--log-format', 'text', '--log-content'], {})).to.deep.equal({ logLevel: 'debug', logFormat: 'text', logContent: true });
    expect(parseConfig(logSchema, [], { MAAS_LOG_LEVEL: 'warn', MAAS_LOG_FORMAT: 'text', MAAS_LOG_CONTENT: 'true' })).to.deep.equal({ logLevel: 'warn', logFormat: 'text', logContent: true });
  });

  it('refuses an unknown level, naming the setting and the choices', () => {
    expect(() => parseConfig(logSchema, [], { MAAS_LOG_LEVEL: 'verbose' })).to.throw(ConfigError, /MAAS_LOG_LEVEL.*debug, info, warn, error, silent.*"verbose"|--log-level.*debug, info, warn, error, silent.*"verbose"/);
  });

  it('callerContent gives only the size unless --log-content is on', () => {
    const prompt = 'my secret diagnosis';
    expect(callerContent(createLogger('x', { content: false, write: () => {} }), prompt)).to.equal('[19 chars, not logged: --log-content is off]');
    expect(callerContent(createLogger('x', { content: true, write: () => {} }), prompt)).to.equal(prompt);
  });
});
