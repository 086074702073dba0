import { expect } from 'chai';
import { JEMALLOC_PATHS, serviceAllocator, withServiceProcessEnv } from '../../common/process-env.js';
import { childEnv } from '../../gateway/cli/up.js';

describe('the environment services start with: allocator settings', () => {
  const installed = (path: string) => path === JEMALLOC_PATHS[0];
  const missing = () => false;

  it('preloads jemalloc when Debian\'s libjemalloc2 is installed, and keeps two glibc arenas as the fallback', () => {
    const env = withServiceProcessEnv({ PATH: '/usr/bin' }, installed);
    expect(env.LD_PRELOAD).to.equal(JEMALLOC_PATHS[0]);
    expect(env.MALLOC_CONF).to.equal('background_thread:true');
    expect(env.MALLOC_ARENA_MAX).to.equal('2');
    expect(withServiceProcessEnv({ MALLOC_CONF: 'narenas:2' }, installed).MALLOC_CONF, 'the caller\'s MALLOC_CONF').to.equal('narenas:2');
  });

  it('runs on glibc when jemalloc is not installed', () => {
    const env = withServiceProcessEnv({ PATH: '/usr/bin' }, missing);
    expect(env).to.not.have.property('LD_PRELOAD');
    expect(env).to.not.have.property('MALLOC_CONF');
    expect(env.MALLOC_ARENA_MAX).to.equal('2');
  });

  it('leaves an LD_PRELOAD the caller set, and MAAS_JEMALLOC=off keeps glibc', () => {
    expect(withServiceProcessEnv({ LD_PRELOAD: '/opt/other.so' }, installed).LD_PRELOAD).to.equal('/opt/other.so');
    for (const off of ['off', 'OFF', '0', 'false']) expect(serviceAllocator({ MAAS_JEMALLOC: off }, installed), off).to.equal(undefined);
    expect(serviceAllocator({}, installed)).to.equal(JEMALLOC_PATHS[0]);
  });

  it('maas up passes MAAS_JEMALLOC and LD_PRELOAD through to every service', () => {
    expect(childEnv('balancer', { MAAS_JEMALLOC: 'off' }, 1)).to.not.have.property('LD_PRELOAD');
    expect(childEnv('worker', { LD_PRELOAD: '/opt/other.so' }, 1).LD_PRELOAD).to.equal('/opt/other.so');
  });
});
