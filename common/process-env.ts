/**
 * Environment every service process starts with, unless the caller's environment sets it.
 *
 * The allocator. glibc's malloc keeps memory a service has freed: after a burst of large
 * messages (the fuzz's megabyte strings through the balancer) the balancer's JavaScript heap and
 * buffers were back where they started while its resident memory stayed 32-39% higher, and the
 * settings glibc offers (MALLOC_ARENA_MAX=2, a fixed MALLOC_MMAP_THRESHOLD_) did not bring it
 * back. jemalloc returns freed pages to the system on its own (the same run: -1%). So when
 * Debian's libjemalloc2 is installed, services start with it (LD_PRELOAD), the way many Node.js
 * deployments run; `MAAS_JEMALLOC=off` keeps glibc, and an LD_PRELOAD already set is left alone.
 * jemalloc purges only when the process allocates, unless its background thread is on: after the
 * fuzz, an idle gateway stayed 27% up until `MALLOC_CONF=background_thread:true` (set unless the
 * caller sets MALLOC_CONF).
 *
 * MALLOC_ARENA_MAX=2 for glibc (without jemalloc): glibc gives each thread that allocates an
 * arena of its own, up to 8 per core, and memory freed in one arena is rarely returned (measured
 * on the aggregator over mutual TLS: heap 17.0 to 17.8 MB while RSS rose 14%; with two arenas,
 * 5%). Two arenas is the usual setting for Node.js services. jemalloc ignores it.
 */
import { existsSync } from 'node:fs';

export const SERVICE_PROCESS_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '2' };

/** Where Debian's libjemalloc2 puts the library, by architecture. */
export const JEMALLOC_PATHS: readonly string[] = ['/usr/lib/x86_64-linux-gnu/libjemalloc.so.2', '/usr/lib/aarch64-linux-gnu/libjemalloc.so.2'];

/** jemalloc's settings for services (`MALLOC_CONF`, unless the caller sets it): purge freed pages from a background thread. */
export const JEMALLOC_CONF = 'background_thread:true';

/** The jemalloc library services start with under `env`, or undefined (glibc's malloc). */
export function serviceAllocator(env: NodeJS.ProcessEnv, exists: (path: string) => boolean = existsSync): string | undefined {
  if (env.LD_PRELOAD !== undefined || ['off', '0', 'false'].includes((env.MAAS_JEMALLOC ?? '').toLowerCase())) return undefined;
  return JEMALLOC_PATHS.find(exists);
}

/** `env` with SERVICE_PROCESS_ENV filled in where `env` leaves a variable unset, and jemalloc preloaded when installed. */
export function withServiceProcessEnv(env: NodeJS.ProcessEnv, exists: (path: string) => boolean = existsSync): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { ...env };
  for (const [k, v] of Object.entries(SERVICE_PROCESS_ENV)) if (out[k] === undefined) out[k] = v;
  const jemalloc = serviceAllocator(env, exists);
  if (jemalloc) {
    out.LD_PRELOAD = jemalloc;
    // jemalloc returns freed pages after a decay time, but by default only when the process
    // allocates again: an idle service kept its peak. A background thread purges on time.
    out.MALLOC_CONF ??= JEMALLOC_CONF;
  }
  return out;
}
