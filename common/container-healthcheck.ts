/**
 * The image's HEALTHCHECK (`node dist/common/container-healthcheck.js`): one command for every
 * service of the image. It reads the command line, working directory and environment of the
 * container's main process (PID 1; MAAS_HEALTHCHECK_PID for another), and runs that service's entry
 * point with the same flags and environment plus --healthcheck, which asks the service's own
 * grpc.health.v1 (see healthcheck.ts). Exit 0: SERVING; 1: not (or not a mesh service).
 */
import { readFileSync, readlinkSync } from 'node:fs';
import { resolve } from 'node:path';
import { HEALTHCHECK_FLAG } from './healthcheck';

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
const entry = resolve(cwd, argv[at]);
// The service's environment, not this command's: what it parsed at start is what it runs with.
for (const key of Object.keys(process.env)) if (key.startsWith('MAAS_') && key !== 'MAAS_HEALTHCHECK_PID') delete process.env[key];
for (const line of environ) {
  const eq = line.indexOf('=');
  const key = line.slice(0, eq);
  if (key.startsWith('MAAS_') && key !== 'MAAS_PARENT_PID') process.env[key] = line.slice(eq + 1);
}
process.chdir(cwd);
process.argv = [process.argv[0], entry, ...argv.slice(at + 1), HEALTHCHECK_FLAG];
require(entry);
