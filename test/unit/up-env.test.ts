import { expect } from 'chai';
import { childEnv } from '../../gateway/cli/up.js';

describe('maas up: the environment of each service', () => {
  const shell = {
    PATH: '/usr/bin',
    HOME: '/home/me',
    LANG: 'C.UTF-8',
    OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318',
    MAAS_LOG_LEVEL: 'warn',
    MAAS_GATEWAY_API_KEYS: 'acme=secret',
    MAAS_GATEWAY_API_KEYS_FILE: '/etc/maas/keys.txt',
    MAAS_GATEWAY_MAX_PROMPT_CHARS: '100',
    MAAS_API_KEY: 'cli-secret',
    MAAS_WORKER_CACHE_DIR: '/cache',
    MAAS_SCHEDULER_TENANT_RATE: '5',
    AWS_SECRET_ACCESS_KEY: 'cloud-secret',
  };

  it('gives the gateway its own settings, its keys and the shared variables, and nothing else', () => {
    // LD_PRELOAD (jemalloc, when installed) is test/unit/process-env.test.ts's subject.
    const { LD_PRELOAD: _allocator, MALLOC_CONF: _allocatorConf, ...env } = childEnv('gateway', shell, 42);
    expect(env).to.deep.equal({
      PATH: '/usr/bin',
      HOME: '/home/me',
      LANG: 'C.UTF-8',
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318',
      MAAS_LOG_LEVEL: 'warn',
      MAAS_GATEWAY_API_KEYS: 'acme=secret',
      MAAS_GATEWAY_API_KEYS_FILE: '/etc/maas/keys.txt',
      MAAS_GATEWAY_MAX_PROMPT_CHARS: '100',
      MAAS_PARENT_PID: '42',
      MALLOC_ARENA_MAX: '2',
    });
  });

  it('starts every service with two malloc arenas unless the shell sets MALLOC_ARENA_MAX', () => {
    expect(childEnv('worker', shell, 42).MALLOC_ARENA_MAX).to.equal('2');
    expect(childEnv('worker', { ...shell, MALLOC_ARENA_MAX: '4' }, 42).MALLOC_ARENA_MAX).to.equal('4');
  });

  for (const service of ['scheduler', 'balancer', 'aggregator', 'worker'] as const) {
    it(`gives the ${service} no key, no key file path and no other service's settings`, () => {
      const env = childEnv(service, shell, 42);
      const text = JSON.stringify(env);
      for (const secret of ['secret', 'keys.txt', 'MAAS_GATEWAY_', 'MAAS_API_KEY', 'AWS_']) expect(text).not.to.include(secret);
      expect(Object.keys(env).filter((k) => k.startsWith('MAAS_') && k !== 'MAAS_LOG_LEVEL' && k !== 'MAAS_PARENT_PID').every((k) => k.startsWith(`MAAS_${service.toUpperCase()}_`))).to.equal(true);
    });
  }

  it('passes each service its own settings', () => {
    expect(childEnv('worker', shell, 1).MAAS_WORKER_CACHE_DIR).to.equal('/cache');
    expect(childEnv('scheduler', shell, 1).MAAS_SCHEDULER_TENANT_RATE).to.equal('5');
  });
});

describe('maas up: the model repository', () => {
  it('passes one absolute --model-repository to every worker, and lets the ONNX settings through', async () => {
    const { meshProcesses } = await import('../../gateway/cli/up.js');
    const specs = meshProcesses({ host: '127.0.0.1', gatewayPort: 1, httpPort: 8080, schedulerPort: 2, balancerPort: 3, aggregatorPort: 4, workerBasePort: 5, workers: 2, policy: 'p2c', startTimeoutMs: 1, modelRepository: 'repo' });
    const workers = specs.filter((s) => s.service === 'worker');
    expect(workers).to.have.length(2);
    for (const w of workers) {
      const at = w.args.indexOf('--model-repository');
      expect(w.args[at + 1]).to.equal(`${process.cwd()}/repo`);
    }
    const { LD_PRELOAD: _allocator, MALLOC_CONF: _allocatorConf, ...env } = childEnv('worker', { MAAS_MODEL_REPOSITORY: '/models', MAAS_ONNX_INTRA_OP_THREADS: '2', MAAS_GATEWAY_API_KEYS: 'x' }, 1);
    expect(env).to.deep.equal({ MAAS_MODEL_REPOSITORY: '/models', MAAS_ONNX_INTRA_OP_THREADS: '2', MAAS_PARENT_PID: '1', MALLOC_ARENA_MAX: '2' });
  });
});

describe('maas up: metrics ports', () => {
  const base = { host: '127.0.0.1', gatewayPort: 1, httpPort: 8080, schedulerPort: 2, balancerPort: 3, aggregatorPort: 4, workerBasePort: 5, workers: 2, policy: 'p2c', startTimeoutMs: 1 };
  const metricsFlags = async (metricsPort: number | undefined) => {
    const { meshProcesses } = await import('../../gateway/cli/up.js');
    return Object.fromEntries(meshProcesses({ ...base, metricsPort }).map((s) => [s.name, s.args.filter((a) => a.startsWith('--metrics-port'))]));
  };

  it('gives the gateway N, the scheduler N+1, the balancer N+2, the aggregator N+3 and each worker a free port, so one machine has no clash', async () => {
    expect(await metricsFlags(9500)).to.deep.equal({
      gateway: ['--metrics-port=9500'],
      scheduler: ['--metrics-port=9501'],
      balancer: ['--metrics-port=9502'],
      aggregator: ['--metrics-port=9503'],
      'worker-1': ['--metrics-port=0'],
      'worker-2': ['--metrics-port=0'],
    });
  });

  it('0 gives every service a free port, -1 turns metrics off everywhere', async () => {
    expect(new Set(Object.values(await metricsFlags(0)).flat())).to.deep.equal(new Set(['--metrics-port=0']));
    expect(new Set(Object.values(await metricsFlags(-1)).flat())).to.deep.equal(new Set(['--metrics-port=-1']));
  });
});
