/**
 * Reading deploy/ as the tools would, for the tests: the kustomization rendered (the kustomize
 * features deploy/k8s uses: resources, namespace, images; anything else is refused, so a new
 * feature there fails the tests until this renderer learns it), compose.yaml with its anchors and
 * merge keys resolved, and NetworkPolicy semantics (which pod may open a TCP connection to which
 * pod on which port) to check the policies against the calls the services make.
 */
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { CORE_SCHEMA, load, loadAll, mergeTag } from 'js-yaml';
import { REPO_ROOT } from './processes';

export const DEPLOY_DIR = join(REPO_ROOT, 'deploy');

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type K8sObject = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string> }; spec?: any };

const SUPPORTED_KUSTOMIZE_KEYS = new Set(['apiVersion', 'kind', 'resources', 'namespace', 'images']);

/** Kinds without a namespace, which `namespace:` leaves alone. */
const CLUSTER_SCOPED = new Set(['Namespace', 'ClusterRole', 'ClusterRoleBinding', 'PersistentVolume', 'StorageClass', 'CustomResourceDefinition']);

/** Renders a kustomization directory: its resources, with `namespace` and `images` applied. */
export function renderKustomization(dir: string): K8sObject[] {
  const k = load(readFileSync(join(dir, 'kustomization.yaml'), 'utf8')) as Record<string, unknown>;
  for (const key of Object.keys(k)) if (!SUPPORTED_KUSTOMIZE_KEYS.has(key)) throw new Error(`kustomization.yaml uses "${key}", which this renderer does not implement`);
  const objects: K8sObject[] = [];
  for (const resource of (k.resources as string[]) ?? []) {
    const path = resolve(dir, resource);
    if (dirname(path) !== resolve(dir)) throw new Error(`resource ${resource}: only files of the kustomization's own folder are supported`);
    for (const doc of loadAll(readFileSync(path, 'utf8'))) if (doc) objects.push(doc as K8sObject);
  }
  const namespace = k.namespace as string | undefined;
  if (namespace) for (const o of objects) if (!CLUSTER_SCOPED.has(o.kind)) o.metadata.namespace = namespace;
  const images = (k.images as { name: string; newName?: string; newTag?: string; digest?: string }[]) ?? [];
  for (const container of objects.flatMap(containersOf)) {
    const { name } = splitImage(container.image);
    const rule = images.find((i) => i.name === name);
    if (!rule) continue;
    container.image = `${rule.newName ?? name}${rule.digest ? `@${rule.digest}` : rule.newTag ? `:${rule.newTag}` : ''}`;
  }
  return objects;
}

/** The containers (and init containers) of a workload's pod template. */
export function containersOf(o: K8sObject): { name: string; image: string; [k: string]: unknown }[] {
  const pod = o.spec?.template?.spec;
  return pod ? [...(pod.initContainers ?? []), ...(pod.containers ?? [])] : [];
}

/** An image reference's name and tag (undefined when it has none, i.e. `latest`). */
export function splitImage(image: string): { name: string; tag?: string; digest?: string } {
  const [rest, digest] = image.split('@');
  const slash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  return colon > slash ? { name: rest.slice(0, colon), tag: rest.slice(colon + 1), digest } : { name: rest, digest };
}

/** compose.yaml with anchors and merge keys resolved, as `docker compose config` reads it. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function loadCompose(): any {
  // YAML 1.2 core schema plus merge keys (`<<: *anchor`), which compose files use.
  return load(readFileSync(join(DEPLOY_DIR, 'compose.yaml'), 'utf8'), { schema: CORE_SCHEMA.withTags(mergeTag) });
}

// --- NetworkPolicy semantics -------------------------------------------------------------------

interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: { key: string; operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist'; values?: string[] }[];
}

/** A pod as the policies see it: its labels and its named container ports. */
export interface PodView {
  labels: Record<string, string>;
  namedPorts: Record<string, number>;
}

export function selects(selector: LabelSelector, labels: Record<string, string>): boolean {
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of selector.matchExpressions ?? []) {
    const has = e.key in labels;
    if (e.operator === 'In' && !(has && e.values!.includes(labels[e.key]))) return false;
    if (e.operator === 'NotIn' && has && e.values!.includes(labels[e.key])) return false;
    if (e.operator === 'Exists' && !has) return false;
    if (e.operator === 'DoesNotExist' && has) return false;
  }
  return true;
}

interface Peer {
  podSelector?: LabelSelector;
  namespaceSelector?: LabelSelector;
  ipBlock?: { cidr: string; except?: string[] };
}
interface Rule {
  ports?: { protocol?: string; port?: number | string; endPort?: number }[];
  from?: Peer[];
  to?: Peer[];
}

function portMatches(rule: Rule, port: number, target: PodView): boolean {
  if (!rule.ports || rule.ports.length === 0) return true;
  return rule.ports.some((p) => {
    if ((p.protocol ?? 'TCP') !== 'TCP') return false;
    if (p.port === undefined) return true;
    const n = typeof p.port === 'string' ? target.namedPorts[p.port] : p.port;
    return n !== undefined && (p.endPort ? port >= n && port <= p.endPort : port === n);
  });
}

/** A peer of a rule matches a pod of the same namespace (no namespaceSelector, or one that selects all). */
function peerMatchesPod(peer: Peer, pod: PodView): boolean {
  if (peer.ipBlock) return false; // pod IPs are assumed to lie outside the cluster-external blocks used here
  if (peer.namespaceSelector && Object.keys(peer.namespaceSelector).length > 0) return false;
  return peer.podSelector ? selects(peer.podSelector, pod.labels) : true;
}

/**
 * True when the policies let pod `from` open a TCP connection to pod `to` on `port` (both in the
 * policies' namespace): the egress side of `from` and the ingress side of `to` must both allow it.
 */
export function connectionAllowed(policies: K8sObject[], from: PodView, to: PodView, port: number): boolean {
  const side = (pod: PodView, type: 'Ingress' | 'Egress', peer: PodView, target: PodView) => {
    const applying = policies.filter((p) => selects(p.spec.podSelector, pod.labels) && (p.spec.policyTypes ?? ['Ingress']).includes(type));
    if (applying.length === 0) return true;
    const key = type === 'Ingress' ? 'ingress' : 'egress';
    const peers = type === 'Ingress' ? 'from' : 'to';
    return applying.some((p) =>
      ((p.spec[key] ?? []) as Rule[]).some((rule) => portMatches(rule, port, target) && (!rule[peers] || rule[peers]!.length === 0 || rule[peers]!.some((x) => peerMatchesPod(x, peer)))),
    );
  };
  return side(from, 'Egress', to, to) && side(to, 'Ingress', from, to);
}

/** True when the policies let pod `from` reach an address outside the cluster (`ip`, TCP `port`). */
export function externalEgressAllowed(policies: K8sObject[], from: PodView, ip: string, port: number): boolean {
  const applying = policies.filter((p) => selects(p.spec.podSelector, from.labels) && (p.spec.policyTypes ?? ['Ingress']).includes('Egress'));
  if (applying.length === 0) return true;
  const outside: PodView = { labels: {}, namedPorts: {} };
  return applying.some((p) =>
    ((p.spec.egress ?? []) as Rule[]).some(
      (rule) => portMatches(rule, port, outside) && (!rule.to || rule.to.length === 0 || rule.to.some((peer) => peer.ipBlock && inCidr(ip, peer.ipBlock.cidr) && !(peer.ipBlock.except ?? []).some((e) => inCidr(ip, e)))),
    ),
  );
}

function inCidr(ip: string, cidr: string): boolean {
  const [base, bits] = cidr.split('/');
  const toInt = (a: string) => a.split('.').reduce((n, o) => n * 256 + Number(o), 0);
  const mask = Number(bits) === 0 ? 0 : 2 ** 32 - 2 ** (32 - Number(bits));
  const and = (a: number) => Number(BigInt(a) & BigInt(mask));
  return and(toInt(ip)) === and(toInt(base));
}
