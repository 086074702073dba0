import { expect } from 'chai';
import { parseConfig } from '../../common/config.js';
import { workerSchema } from '../../services/worker/config.js';
import { parseUpstreams, upstreamFromConfig } from '../../services/worker/models/upstream.js';

describe('worker --upstream (upstream engines)', () => {
  it('repeats: the same name adds replicas, #model names the engine model, env and flags take the same form', () => {
    const fromFlags = parseConfig(workerSchema, ['--upstream', 'llm=http://10.0.0.1:8000/v1/#meta/llama-3', '--upstream', 'llm=http://10.0.0.2:8000/v1#meta/llama-3', '--upstream=small=https://e.example/v1'], {});
    expect(fromFlags.upstreams).to.deep.equal([
      { name: 'llm', urls: ['http://10.0.0.1:8000/v1', 'http://10.0.0.2:8000/v1'], engineModel: 'meta/llama-3' },
      { name: 'small', urls: ['https://e.example/v1'], engineModel: 'small' },
    ]);
    const fromEnv = parseConfig(workerSchema, [], { MAAS_WORKER_UPSTREAMS: 'llm=http://10.0.0.1:8000/v1#meta/llama-3, llm=http://10.0.0.2:8000/v1#meta/llama-3,small=https://e.example/v1' });
    expect(fromEnv.upstreams).to.deep.equal(fromFlags.upstreams);
  });

  it('refuses bad entries naming the entry and the setting, never echoing a URL', () => {
    const refusal = (raw: string) => {
      try {
        parseConfig(workerSchema, ['--upstream', raw], {});
      } catch (err) {
        return (err as Error).message;
      }
      throw new Error('accepted');
    };
    expect(refusal('nourl')).to.equal('invalid --upstream (upstreams): entry 1: expected name=url[#engine-model]');
    expect(refusal('a=http://x/v1,b=ftp://secret-host/v1')).to.equal('invalid --upstream (upstreams): entry 2 (b): the engine URL must be http or https, given ftp:');
    expect(refusal('a=http://user:hunter2@x/v1')).to.equal('invalid --upstream (upstreams): entry 1 (a): put no credentials in the engine URL; use --upstream-api-key');
    expect(refusal('a=not a url')).to.not.include('not a url');
    expect(refusal('a=http://x/v1#m1,a=http://y/v1#m2')).to.equal('invalid --upstream (upstreams): entry 2 (a): every replica of a model must name the same engine model');
    expect(refusal('bad name=http://x/v1')).to.include('entry 1: the model name must be');
  });

  it('parses an empty value to no upstreams', () => {
    expect(parseUpstreams('')).to.deep.equal([]);
  });

  it('reads a repository config.json of platform openai_upstream, refusing bad fields by name', () => {
    expect(upstreamFromConfig({ platform: 'onnxruntime_onnx' }, 'm')).to.equal(undefined);
    expect(upstreamFromConfig({ platform: 'openai_upstream', upstream: { urls: ['http://a:1/v1/', 'http://b:1/v1'], model: 'llama3:8b' } }, 'm')).to.deep.equal({ name: 'm', urls: ['http://a:1/v1', 'http://b:1/v1'], engineModel: 'llama3:8b', description: undefined });
    const refusal = (config: unknown) => {
      try {
        upstreamFromConfig(config, 'm');
      } catch (err) {
        return (err as Error).message;
      }
      throw new Error('accepted');
    };
    expect(refusal({ platform: 'openai_upstream' })).to.include('upstream must be an object');
    expect(refusal({ platform: 'openai_upstream', upstream: { urls: [] } })).to.equal('upstream.urls must be an array of 1 to 64 engine URLs');
    expect(refusal({ platform: 'openai_upstream', upstream: { urls: ['http://a/v1', 'file:///etc/passwd'] } })).to.equal('upstream.urls[1]: the engine URL must be http or https, given file:');
    expect(refusal({ platform: 'openai_upstream', upstream: { urls: ['http://a/v1'], key: 'x' } })).to.equal('upstream has unknown key "key"; the keys are urls, model');
    expect(refusal({ platform: 'openai_upstream', input: [], upstream: { urls: ['http://a/v1'] } })).to.include('unknown field "input"');
  });
});
