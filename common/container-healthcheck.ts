/**
 * The image's HEALTHCHECK (`node dist/common/container-healthcheck.js`): one command for every
 * service of the image. It reads the command line, working directory and environment of the
 * container's main process (PID 1; MAAS_HEALTHCHECK_PID for another), parses that service's
 * settings from them as `<entry> --healthcheck` would, and asks the service's own grpc.health.v1
 * (see healthcheck.ts). Exit 0: SERVING; 1: not (or not a mesh
 * service, or a setting it cannot parse).
 */
import { readFileSync, readlinkSync } from 'node:fs';
import { resolve } from 'node:path';
import { Schema, parseConfig } from './config';
import { HealthcheckConfig, checkOwnHealth } from './healthcheck';

/** Entry points this check runs: the services' main.js under dist/, nothing else. */
const SERVICE_ENTRY = /(^|\/)(gateway|services\/(scheduler|balancer|aggregator|worker))\/main\.js$/;

function fail(message: string): never {
  process.stderr.write(`healthcheck: ${message}\n`);
  process.exit(1);
}

const pid = process.env.MAAS_HEALTHCHECK_PID ?? '1';
if (!/^[1-9]\d{0,9}$/.test(pid)) fail(`MAAS_HEALTHCHECK_PID must be a process id, given ${JSON.stringify(pid.slice(0, 20))}`);
let argv: string[];
let cwd: string;
let environ: string[];
try {
  argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((a) => a !== '');
  cwd = readlinkSync(`/proc/${pid}/cwd`);
  environ = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').filter((e) => e.includes('='));
} catch (err) {
  fail(`cannot read process ${pid}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
}
const at = argv.findIndex((a) => SERVICE_ENTRY.test(a));
if (at < 0) fail(`process ${pid} runs no mesh service (${argv.slice(0, 3).join(' ').slice(0, 120)})`);
const match = SERVICE_ENTRY.exec(argv[at])!;
const service = (match[3] ?? 'gateway') as 'gateway' | 'scheduler' | 'balancer' | 'aggregator' | 'worker';
// The service's environment, not this command's: what it parsed at start is what it runs with.
const env: Record<string, string> = {};
for (const line of environ) {
  const eq = line.indexOf('=');
  if (line.startsWith('MAAS_')) env[line.slice(0, eq)] = line.slice(eq + 1);
}
// Only the service's config schema is loaded, not the service (a worker's models and runtimes):
// the check starts in a fraction of the time, every few seconds.
const configModule = resolve(cwd, argv[at].replace(/main\.js$/, 'config.js'));
const schema = (require(configModule) as Record<string, Schema>)[`${service}Schema`];
if (!schema) fail(`${configModule} exports no ${service}Schema`);
process.chdir(cwd);
let config: HealthcheckConfig;
try {
  config = parseConfig(schema, argv.slice(at + 1), env) as unknown as HealthcheckConfig;
} catch (err) {
  fail(`maas ${service}: ${(err as Error).message}`);
}
checkOwnHealth(service, config).then(
  () => {
    process.stdout.write(`maas ${service}: SERVING\n`);
    process.exit(0);
  },
  (err: unknown) => fail(`maas ${service}: not healthy: ${err instanceof Error ? err.message : String(err)}`),
);
