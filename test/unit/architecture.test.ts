/**
 * The walls that keep the code easy to change (STYLE.md), checked on the sources: services meet
 * only through generated contracts and common/; domain modules import no gRPC, no generated code;
 * common/ imports no service; generated/ imports nothing of ours; no import cycles.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { expect } from 'chai';

const root = resolve(__dirname, '../../..');

function sourcesUnder(dir: string): string[] {
  const abs = join(root, dir);
  return readdirSync(abs).flatMap((name) => {
    const path = join(abs, name);
    if (statSync(path).isDirectory()) return sourcesUnder(relative(root, path));
    return name.endsWith('.ts') && !name.endsWith('.d.ts') ? [relative(root, path)] : [];
  });
}

/** Import specifiers of a file: relative ones resolved to repo paths (without extension). */
function importsOf(file: string): { packages: string[]; local: string[] } {
  const text = readFileSync(join(root, file), 'utf8');
  const specs = [...text.matchAll(/(?:^|\n)\s*(?:import|export)[^'"]*?from\s+'([^']+)'|require\('([^']+)'\)|import\('([^']+)'\)/g)].map((m) => m[1] ?? m[2] ?? m[3]);
  const packages = specs.filter((s) => !s.startsWith('.'));
  const local = specs.filter((s) => s.startsWith('.')).map((s) => relative(root, resolve(root, dirname(file), s)).replace(/\.js$/, ''));
  return { packages, local };
}

const allSources = ['common', 'gateway', 'services', 'generated'].flatMap(sourcesUnder);
const serviceOf = (path: string): string | undefined => (path.startsWith('services/') ? path.split('/')[1] : path.startsWith('gateway/') ? 'gateway' : undefined);

/** Domain modules: plain TypeScript, tested directly. */
const domainModules = [
  'services/scheduler/queue.ts',
  'services/scheduler/tenant-limits.ts',
  'common/tenant.ts',
  'services/balancer/policy.ts',
  'services/balancer/membership.ts',
  'services/balancer/ewma.ts',
  'services/balancer/hash-ring.ts',
  'services/balancer/outliers.ts',
  'services/balancer/slow-start.ts',
  'services/balancer/retry-budget.ts',
  'services/balancer/sliding-window.ts',
  'gateway/validation.ts',
  'gateway/catalog.ts',
  'gateway/auth.ts',
  'gateway/job-spec.ts',
  'services/aggregator/reducers.ts',
  'services/worker/batcher.ts',
  ...sourcesUnder('services/scheduler/jobs'),
  ...sourcesUnder('services/worker/models'),
];

describe('architecture', () => {
  it('finds the sources it checks', () => {
    expect(allSources.length).to.be.greaterThan(30);
    for (const m of domainModules) expect(allSources).to.include(m);
  });

  it('no service imports another service', () => {
    const offences = allSources.flatMap((file) => {
      const own = serviceOf(file);
      if (!own) return [];
      return importsOf(file).local.filter((dep) => serviceOf(dep) !== undefined && serviceOf(dep) !== own).map((dep) => `${file} -> ${dep}`);
    });
    expect(offences).to.deep.equal([]);
  });

  it('domain modules import no gRPC, no generated code and no process globals', () => {
    const offences = domainModules.flatMap((file) => {
      const { packages, local } = importsOf(file);
      const bad = [...packages.filter((p) => /grpc|protobuf/.test(p)), ...local.filter((l) => l.startsWith('generated/'))];
      if (/\bprocess\.(env|argv)\b/.test(readFileSync(join(root, file), 'utf8'))) bad.push('process.env/argv');
      return bad.map((b) => `${file} -> ${b}`);
    });
    expect(offences).to.deep.equal([]);
  });

  it('common/ imports no service, and generated/ imports nothing of ours', () => {
    const offences = allSources.flatMap((file) => {
      const { local } = importsOf(file);
      if (file.startsWith('common/')) return local.filter((d) => serviceOf(d)).map((d) => `${file} -> ${d}`);
      if (file.startsWith('generated/')) return local.filter((d) => !d.startsWith('generated/')).map((d) => `${file} -> ${d}`);
      return [];
    });
    expect(offences).to.deep.equal([]);
  });

  it('has no import cycles', () => {
    const graph = new Map(allSources.map((f) => [f.replace(/\.ts$/, ''), importsOf(f).local]));
    const state = new Map<string, 'visiting' | 'done'>();
    const cycles: string[] = [];
    const visit = (node: string, path: string[]) => {
      if (state.get(node) === 'done') return;
      if (state.get(node) === 'visiting') {
        cycles.push([...path.slice(path.indexOf(node)), node].join(' -> '));
        return;
      }
      state.set(node, 'visiting');
      for (const dep of graph.get(node) ?? []) if (graph.has(dep)) visit(dep, [...path, node]);
      state.set(node, 'done');
    };
    for (const node of graph.keys()) visit(node, []);
    expect(cycles).to.deep.equal([]);
  });
});
