/**
 * Summarises V8 .cpuprofile files (written by `node --cpu-prof`): self time per function and per
 * origin (our code, each npm package, Node internals, GC), optionally only within time windows.
 * Also a command: `node dist/bench/cpu-profile.js FILE.cpuprofile [TOP]`.
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';

/** The parts of a .cpuprofile this summary reads. */
interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number } }[];
  /** Microseconds, on the monotonic clock (the clock of process.hrtime on Linux). */
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** A window of monotonic time, in microseconds (process.hrtime.bigint() / 1000n). */
export interface TimeWindow {
  startUs: number;
  endUs: number;
}

/** Self time of one function or origin. */
export interface SelfTime {
  name: string;
  ms: number;
}

/** Where one process spent its time. */
export interface ProfileSummary {
  /** Wall time covered (the windows, or the whole profile), in milliseconds. */
  wallMs: number;
  /** Time on the CPU (everything but `(idle)`), in milliseconds. */
  busyMs: number;
  /** Self time per origin, largest first. */
  byOrigin: SelfTime[];
  /** Self time per function, largest first (idle excluded). */
  byFunction: SelfTime[];
}

/** Summarises `file`; with `windows`, only samples taken inside them count. */
export function summariseCpuProfile(file: string, windows?: TimeWindow[], repoDir?: string): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const frames = new Map(profile.nodes.map((n) => [n.id, n.callFrame]));
  const byFunction = new Map<string, number>();
  const byOrigin = new Map<string, number>();
  let busyUs = 0;
  let wallUs = 0;
  let t = profile.startTime;
  for (let i = 0; i < profile.samples.length; i++) {
    t += profile.timeDeltas[i];
    // A sample stands for the time until the next one.
    const dt = i + 1 < profile.timeDeltas.length ? profile.timeDeltas[i + 1] : 0;
    if (windows && !windows.some((w) => t >= w.startUs && t < w.endUs)) continue;
    wallUs += dt;
    const frame = frames.get(profile.samples[i]);
    if (!frame || frame.functionName === '(idle)') continue;
    busyUs += dt;
    const origin = originOf(frame.url, frame.functionName);
    byOrigin.set(origin, (byOrigin.get(origin) ?? 0) + dt);
    const where = frame.url ? ` ${shortUrl(frame.url, repoDir)}:${frame.lineNumber + 1}` : '';
    const key = `${frame.functionName || '(anonymous)'}${where}`;
    byFunction.set(key, (byFunction.get(key) ?? 0) + dt);
  }
  const sorted = (m: Map<string, number>) =>
    [...m.entries()].map(([name, us]) => ({ name, ms: us / 1000 })).sort((a, b) => b.ms - a.ms);
  return { wallMs: wallUs / 1000, busyMs: busyUs / 1000, byOrigin: sorted(byOrigin), byFunction: sorted(byFunction) };
}

/**
 * Which code a frame belongs to, grouped so the summary reads as layers: `ours`, `node http2`,
 * `node async_hooks` (what AsyncLocalStorage costs), `node (other)`, `grpc-js`, `nice-grpc`,
 * `opentelemetry` (API, SDK and the nice-grpc middleware), `protobuf`, another package, or a V8
 * pseudo-frame such as `(garbage collector)` and `(program)` (native code outside JavaScript).
 */
function originOf(url: string, functionName: string): string {
  if (!url) return functionName.startsWith('(') ? functionName : '(native)';
  if (url.startsWith('node:')) {
    if (url.includes('http2')) return 'node http2';
    if (url.includes('async_hooks')) return 'node async_hooks';
    return 'node (other)';
  }
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)?.[1];
  if (!pkg) return 'ours';
  if (pkg.startsWith('@opentelemetry/') || pkg === 'nice-grpc-opentelemetry') return 'opentelemetry';
  if (pkg.startsWith('nice-grpc') || pkg === 'abort-controller-x') return 'nice-grpc';
  if (pkg === '@grpc/grpc-js') return 'grpc-js';
  if (pkg === '@bufbuild/protobuf') return 'protobuf';
  return pkg;
}

function shortUrl(url: string, repoDir?: string): string {
  const path = url.replace(/^file:\/\//, '');
  const inPackage = /node_modules\/(.*)$/.exec(path);
  if (inPackage) return inPackage[1];
  if (repoDir && path.startsWith(repoDir)) return path.slice(repoDir.length + 1);
  return path;
}

/** Plain-text lines of a summary: origins and the `top` functions. */
export function formatProfileSummary(title: string, s: ProfileSummary, top = 12): string[] {
  const pct = (ms: number) => (s.busyMs > 0 ? ((100 * ms) / s.busyMs).toFixed(1) : '0.0');
  return [
    `${title}: busy ${s.busyMs.toFixed(0)} ms of ${s.wallMs.toFixed(0)} ms wall (${s.wallMs > 0 ? ((100 * s.busyMs) / s.wallMs).toFixed(0) : 0}% of one core)`,
    `  by origin: ${s.byOrigin
      .slice(0, 10)
      .map((o) => `${o.name} ${pct(o.ms)}%`)
      .join(', ')}`,
    ...s.byFunction.slice(0, top).map((f) => `  ${pct(f.ms).padStart(5)}%  ${f.ms.toFixed(0).padStart(6)} ms  ${f.name}`),
  ];
}

if (require.main === module) {
  const [file, top] = process.argv.slice(2);
  if (!file) {
    process.stderr.write('usage: node dist/bench/cpu-profile.js FILE.cpuprofile [TOP]\n');
    process.exit(2);
  }
  const summary = summariseCpuProfile(file, undefined, process.cwd());
  process.stdout.write(formatProfileSummary(basename(file), summary, Number(top) || 25).join('\n') + '\n');
}
