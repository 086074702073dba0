/**
 * deploy/ checked as far as it can be without a cluster or a Docker daemon: the kustomization
 * rendered and every object validated against the Kubernetes API schemas (kubernetes-models), the
 * NetworkPolicies evaluated against the calls the services make, drains against grace periods,
 * PodDisruptionBudgets against replicas, image tags, and compose.yaml validated against the
 * compose specification's JSON schema (test/fixtures/compose-spec) with its start order.
 */
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import Ajv from 'ajv';
import { parseConfig } from '../../common/config';
import { DEFAULT_DRAIN_TIMEOUT_MS } from '../../common/drain';
import { gatewaySchema } from '../../gateway/config';
import { DEPLOY_DIR, K8sObject, PodView, connectionAllowed, containersOf, externalEgressAllowed, loadCompose, renderKustomization, selects, splitImage } from '../deploy-files';
import { REPO_ROOT } from '../processes';

const MESH = ['gateway', 'scheduler', 'balancer', 'aggregator', 'worker'];
const WORKLOAD_KINDS = new Set(['Deployment', 'StatefulSet']);
const DEFAULT_DEADLINE_MS = parseConfig(gatewaySchema, [], {}).defaultDeadlineMs;

/** The kubernetes-models class of an object's apiVersion and kind. */
async function modelOf(o: K8sObject): Promise<new (data: unknown) => { validate(): void }> {
  const group = o.apiVersion.includes('/') ? o.apiVersion : `v1`;
  const module = (await import(`kubernetes-models/${group}/${o.kind}`)) as Record<string, new (data: unknown) => { validate(): void }>;
  const model = module[o.kind];
  if (!model) throw new Error(`kubernetes-models has no ${o.apiVersion} ${o.kind}`);
  return model;
}

async function schemaErrors(o: K8sObject): Promise<string | undefined> {
  const Model = await modelOf(o);
  try {
    new Model(structuredClone(o)).validate();
    return undefined;
  } catch (err) {
    return `${o.kind}/${o.metadata.name}: ${(err as Error).message}`;
  }
}

function envOf(o: K8sObject): Record<string, string> {
  const env: Record<string, string> = {};
  for (const c of containersOf(o)) for (const e of (c.env as { name: string; value?: string }[]) ?? []) if (e.value !== undefined) env[e.name] = e.value;
  return env;
}

function podOf(o: K8sObject): PodView {
  const namedPorts: Record<string, number> = {};
  for (const c of containersOf(o)) for (const p of (c.ports as { name?: string; containerPort: number }[]) ?? []) if (p.name) namedPorts[p.name] = p.containerPort;
  return { labels: o.spec.template.metadata.labels, namedPorts };
}

describe('deploy files', () => {
  describe('Kubernetes manifests (deploy/k8s, rendered as kustomize does)', () => {
    let objects: K8sObject[];
    let workloads: K8sObject[];
    let policies: K8sObject[];
    const workload = (name: string) => workloads.find((w) => w.metadata.name === name)!;
    before(() => {
      objects = renderKustomization(join(DEPLOY_DIR, 'k8s'));
      workloads = objects.filter((o) => WORKLOAD_KINDS.has(o.kind));
      policies = objects.filter((o) => o.kind === 'NetworkPolicy');
    });

    it('renders the mesh, Jaeger, their Services, claims, budgets and policies', () => {
      const names = (kind: string) => objects.filter((o) => o.kind === kind).map((o) => o.metadata.name).sort();
      expect(names('Deployment')).to.deep.equal(['aggregator', 'balancer', 'gateway', 'jaeger', 'scheduler']);
      expect(names('StatefulSet')).to.deep.equal(['worker']);
      expect(names('Service')).to.deep.equal(['aggregator', 'balancer', 'gateway', 'jaeger', 'scheduler', 'worker']);
      expect(names('PodDisruptionBudget')).to.deep.equal(['gateway', 'worker']);
      expect(names('NetworkPolicy')).to.include.members([...MESH, 'jaeger', 'maas-default-deny']);
    });

    it('validates every object against the Kubernetes API schemas', async () => {
      const errors = (await Promise.all(objects.map(schemaErrors))).filter((e) => e !== undefined);
      expect(errors).to.deep.equal([]);
    });

    it('the schema check rejects a wrong type, a missing required field and a bad enum (it can fail)', async () => {
      const gateway = structuredClone(workload('gateway'));
      gateway.spec.template.spec.containers[0].ports[0].containerPort = '50051';
      expect(await schemaErrors(gateway)).to.match(/containerPort must be integer/);
      const scheduler = structuredClone(workload('scheduler'));
      delete scheduler.spec.selector;
      expect(await schemaErrors(scheduler)).to.match(/data\/spec must have required property '?selector/);
      const pdb = structuredClone(objects.find((o) => o.kind === 'PodDisruptionBudget')!);
      pdb.spec.unhealthyPodEvictionPolicy = 'Sometimes';
      expect(await schemaErrors(pdb)).to.match(/must be equal to one of the allowed values/);
    });

    it('pins every image to a version: no `latest`, no bare name (manifests, compose, Dockerfile)', () => {
      const images = [
        ...workloads.flatMap(containersOf).map((c) => c.image),
        ...Object.values(loadCompose().services as Record<string, { image?: string }>).map((s) => s.image!).filter(Boolean),
      ];
      const dockerfile = readFileSync(join(DEPLOY_DIR, 'Dockerfile'), 'utf8');
      const args = Object.fromEntries([...dockerfile.matchAll(/^ARG (\w+)=(\S+)/gm)].map((m) => [m[1], m[2]]));
      for (const m of dockerfile.matchAll(/^FROM (\S+)/gm)) images.push(m[1].replace(/^\$\{(\w+)\}$/, (_, a: string) => args[a] ?? m[1]));
      expect(images.length).to.be.above(8);
      for (const image of images) {
        const { tag, digest } = splitImage(image);
        expect(tag ?? digest, `tag of ${image}`).to.not.equal(undefined);
        expect(tag, `tag of ${image}`).to.not.equal('latest');
      }
      expect(images, 'the app image on a Node.js LTS release').to.include.members(['node:24.19.0-bookworm-slim']);
      expect(images.filter((i) => i.startsWith('jaegertracing/')).map((i) => splitImage(i)), 'Jaeger 2.x').to.satisfy((l: { name: string; tag?: string }[]) => l.length > 0 && l.every((i) => i.name === 'jaegertracing/jaeger' && /^2\.\d+\.\d+$/.test(i.tag!)));
    });

    it('gives every service a preStop pause and a grace period that covers the pause and its drain, a drain no shorter than the default call deadline', () => {
      for (const name of MESH) {
        const w = workload(name);
        const container = containersOf(w)[0] as { lifecycle?: { preStop?: { exec?: { command: string[] } } } };
        const command = container.lifecycle?.preStop?.exec?.command ?? [];
        expect(command[0], `${name} preStop`).to.equal('sleep');
        const pauseS = Number(command[1]);
        const drainMs = Number(envOf(w)[`MAAS_${name.toUpperCase()}_DRAIN_TIMEOUT_MS`]);
        expect(drainMs, `${name} drain`).to.be.at.least(DEFAULT_DEADLINE_MS).and.equal(DEFAULT_DRAIN_TIMEOUT_MS);
        const grace = w.spec.template.spec.terminationGracePeriodSeconds;
        expect(grace, `${name} terminationGracePeriodSeconds`).to.be.at.least(pauseS + drainMs / 1000 + 5);
      }
    });

    it('gives the gateway replicas, a maximum connection age and a budget that keeps one up', () => {
      const env = envOf(workload('gateway'));
      expect(Number(env.MAAS_GATEWAY_MAX_CONNECTION_AGE_MS)).to.be.above(0);
      expect(Number(env.MAAS_GATEWAY_MAX_CONNECTION_AGE_GRACE_MS)).to.be.at.least(DEFAULT_DEADLINE_MS);
      expect(workload('gateway').spec.replicas).to.be.at.least(2);
    });

    it('has a PodDisruptionBudget for every workload of more than one replica, selecting its pods and allowing an eviction', () => {
      const budgets = objects.filter((o) => o.kind === 'PodDisruptionBudget');
      for (const w of workloads.filter((x) => (x.spec.replicas ?? 1) > 1)) {
        const mine = budgets.filter((b) => selects(b.spec.selector, w.spec.template.metadata.labels));
        expect(mine, `budgets of ${w.metadata.name}`).to.have.length(1);
        const b = mine[0].spec;
        const allowed = b.maxUnavailable !== undefined ? b.maxUnavailable : w.spec.replicas - b.minAvailable;
        expect(allowed, `disruptions ${w.metadata.name} allows`).to.be.within(1, w.spec.replicas - 1);
      }
      for (const b of budgets) expect(workloads.some((w) => selects(b.spec.selector, w.spec.template.metadata.labels)), `${b.metadata.name} selects a workload`).to.equal(true);
    });

    it('lets each service reach exactly what it calls, and nothing else of the mesh', () => {
      // What each workload calls, from its own settings: every MAAS_*_ADDRESS and the OTLP
      // endpoint name a Service and a port; the balancer and the dispatchers dial the address each worker advertises.
      const services = objects.filter((o) => o.kind === 'Service');
      const expected = new Set<string>();
      for (const w of workloads) {
        const env = envOf(w);
        const targets = Object.entries(env)
          .filter(([k]) => (/^MAAS_\w+_ADDRESS$/.test(k) && k !== 'MAAS_WORKER_ADVERTISE_ADDRESS') || k === 'OTEL_EXPORTER_OTLP_ENDPOINT')
          .map(([, v]) => v.replace(/^https?:\/\//, '').split(':'));
        for (const [host, port] of targets) {
          const service = services.find((s) => s.metadata.name === host);
          expect(service, `Service ${host} that ${w.metadata.name} calls`).to.not.equal(undefined);
          const target = workloads.find((t) => selects({ matchLabels: service!.spec.selector }, t.spec.template.metadata.labels))!;
          const servicePort = service!.spec.ports.find((p: { port: number }) => p.port === Number(port));
          expect(servicePort, `port ${port} of Service ${host}`).to.not.equal(undefined);
          const targetPort = typeof servicePort.targetPort === 'string' ? podOf(target).namedPorts[servicePort.targetPort] : servicePort.targetPort ?? servicePort.port;
          expected.add(`${w.metadata.name}->${target.metadata.name}:${targetPort}`);
          // OTLP over gRPC is the other port of the same collector.
          if (host === 'jaeger') expected.add(`${w.metadata.name}->jaeger:4317`);
        }
      }
      const advertised = envOf(workload('worker')).MAAS_WORKER_ADVERTISE_ADDRESS.split(':').pop();
      // The balancer (batch tasks, the repository) and both dispatchers of online calls, the
      // scheduler and the gateway (on its permits), dial the address each worker advertises.
      for (const caller of ['balancer', 'scheduler', 'gateway']) expected.add(`${caller}->worker:${advertised}`);
      expect([...expected].sort()).to.include.members([
        'gateway->scheduler:50052',
        'gateway->balancer:50053',
        'scheduler->balancer:50053',
        'scheduler->aggregator:50054',
        'balancer->worker:50054',
        'scheduler->worker:50054',
        'gateway->worker:50054',
        'worker->balancer:50053',
        'worker->aggregator:50054',
        'aggregator->jaeger:4318',
      ]);

      const wrong: string[] = [];
      for (const from of workloads) {
        for (const to of workloads) {
          const ports = new Set(Object.values(podOf(to).namedPorts));
          for (const port of ports) {
            const key = `${from.metadata.name}->${to.metadata.name}:${port}`;
            const allowed = connectionAllowed(policies, podOf(from), podOf(to), port);
            if (allowed !== expected.has(key)) wrong.push(`${key} ${allowed ? 'allowed' : 'denied'}`);
          }
        }
      }
      expect(wrong, 'connections the policies get wrong').to.deep.equal([]);

      // From outside the mesh (clients, the kubelet, Prometheus): the public API, probes, metrics.
      const outsider: PodView = { labels: { app: 'client' }, namedPorts: {} };
      // Each side is checked on its own this way too: a pod outside the mesh has no egress policy.
      const open = new Set(['gateway:grpc', 'jaeger:ui', 'jaeger:status', ...MESH.flatMap((n) => [`${n}:health`, `${n}:metrics`])]);
      const wrongIn: string[] = [];
      for (const to of workloads) {
        for (const [portName, port] of Object.entries(podOf(to).namedPorts)) {
          const allowed = connectionAllowed(policies, outsider, podOf(to), port);
          if (allowed !== open.has(`${to.metadata.name}:${portName}`)) wrongIn.push(`outside->${to.metadata.name}:${portName} ${allowed ? 'allowed' : 'denied'}`);
        }
      }
      expect(wrongIn, 'connections from outside the mesh the policies get wrong').to.deep.equal([]);
      // Job callbacks leave the cluster from the scheduler only, and only to public addresses.
      expect(externalEgressAllowed(policies, podOf(workload('scheduler')), '203.0.113.7', 443)).to.equal(true);
      expect(externalEgressAllowed(policies, podOf(workload('scheduler')), '10.1.2.3', 443)).to.equal(false);
      expect(externalEgressAllowed(policies, podOf(workload('scheduler')), '169.254.169.254', 80)).to.equal(false);
      for (const name of ['gateway', 'balancer', 'aggregator', 'worker', 'jaeger']) expect(externalEgressAllowed(policies, podOf(workload(name)), '203.0.113.7', 443), `${name} -> internet`).to.equal(false);
    });
  });

  describe('compose (deploy/compose.yaml)', () => {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    let compose: any;
    // The schema names its meta-schema by an https URL that Ajv does not carry (it is draft-07).
    const ajv = new Ajv({ allErrors: true, strict: false, validateSchema: false });
    let validate: ReturnType<Ajv['compile']>;
    before(() => {
      compose = loadCompose();
      validate = ajv.compile(JSON.parse(readFileSync(join(REPO_ROOT, 'test/fixtures/compose-spec/compose-spec.json'), 'utf8')));
    });

    it('validates against the compose specification schema', () => {
      const ok = validate(compose);
      expect(ok, ajv.errorsText(validate.errors)).to.equal(true);
    });

    it('the schema check rejects an unknown key and a bad condition (it can fail)', () => {
      const bad = structuredClone(compose);
      bad.services.gateway.helthcheck = bad.services.gateway.healthcheck;
      expect(validate(bad)).to.equal(false);
      const bad2 = structuredClone(compose);
      bad2.services.gateway.depends_on.scheduler.condition = 'service_ready';
      expect(validate(bad2)).to.equal(false);
    });

    it('health-checks every mesh service with its own gRPC health, and starts it after the services it calls are healthy', () => {
      const calls: Record<string, string[]> = { gateway: ['scheduler', 'balancer'], scheduler: ['balancer', 'aggregator'], 'worker-1': ['balancer', 'aggregator'], 'worker-2': ['balancer', 'aggregator'], balancer: [], aggregator: [] };
      for (const [name, callees] of Object.entries(calls)) {
        const s = compose.services[name];
        expect(s.healthcheck?.test, `${name} healthcheck`).to.deep.equal(['CMD', 'node', 'dist/common/container-healthcheck.js']);
        for (const callee of callees) expect(s.depends_on?.[callee]?.condition, `${name} waits for ${callee}`).to.equal('service_healthy');
        expect(s.depends_on?.certs?.condition, `${name} waits for its certificate`).to.equal('service_completed_successfully');
      }
      expect(compose.services.certs.healthcheck).to.deep.equal({ disable: true });
    });

    it('gives each service more time to stop than its drain', () => {
      const seconds = (d: string) => Number(/^(\d+)s$/.exec(d)![1]);
      for (const name of ['gateway', 'scheduler', 'balancer', 'aggregator', 'worker-1', 'worker-2']) {
        expect(seconds(compose.services[name].stop_grace_period), `${name} stop_grace_period`).to.be.at.least(DEFAULT_DRAIN_TIMEOUT_MS / 1000 + 5);
      }
    });
  });
});
