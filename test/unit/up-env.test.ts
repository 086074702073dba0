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
    expect(childEnv('gateway', shell, 42)).to.deep.equal({
      PATH: '/usr/bin',
      HOME: '/home/me',
      LANG: 'C.UTF-8',
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318',
      MAAS_LOG_LEVEL: 'warn',
      MAAS_GATEWAY_API_KEYS: 'acme=secret',
      MAAS_GATEWAY_API_KEYS_FILE: '/etc/maas/keys.txt',
      MAAS_GATEWAY_MAX_PROMPT_CHARS: '100',
      MAAS_PARENT_PID: '42',
    });
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
