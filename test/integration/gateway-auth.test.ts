/**
 * Authentication covers every public method by construction: with API keys configured, every
 * method of every service the gateway serves (as its own reflection lists them, so a service or
 * method added later is in the list without this file changing) answers UNAUTHENTICATED to a call
 * without a key and to one with an unknown key, before the request is even looked at; only the
 * keyless probes (KServe ServerLive and ServerReady), health and reflection answer without one.
 */
import * as grpc from '@grpc/grpc-js';
import { expect } from 'chai';
import { ServerReflectionRequest, ServerReflectionResponse } from 'nice-grpc-server-reflection/lib/proto/grpc/reflection/v1/reflection_pb';
import { ServerReflectionService } from 'nice-grpc-server-reflection';
import { meshRegistry } from '../../common/descriptors';
import { parseApiKeys } from '../../gateway/auth';
import { KEYLESS_PUBLIC_METHODS } from '../fuzz/harness';
import { CallOutcome, RawClient } from '../raw-grpc';
import { TestMesh, startMesh } from '../support';

/** Served by every service of the mesh, outside authentication: probes and tools call them without a key. */
const INFRASTRUCTURE = ['grpc.health.v1.Health', 'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'];

/** The services a server lists through reflection. */
async function listServices(address: string): Promise<string[]> {
  const method = ServerReflectionService.serverReflectionInfo;
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  try {
    const call = client.makeBidiStreamRequest(method.path, method.requestSerialize, method.responseDeserialize);
    const response = new Promise<ServerReflectionResponse>((resolve, reject) => {
      call.once('data', resolve);
      call.once('error', reject);
    });
    const request = new ServerReflectionRequest();
    request.setListServices('*');
    call.write(request);
    call.end();
    return (await response).getListServicesResponse()!.getServiceList().map((s) => s.getName());
  } finally {
    client.close();
  }
}

/** One call of `path` with an empty request and `metadata`, whatever the method's kind. */
function callEmpty(client: RawClient, path: string, kind: string, metadata: grpc.Metadata): Promise<CallOutcome> {
  const o = { deadlineMs: 5000, metadata };
  const empty = new Uint8Array(0);
  if (kind === 'unary') return client.unary(path, empty, o);
  if (kind === 'server_streaming') return client.serverStream(path, empty, o);
  if (kind === 'client_streaming') return client.clientStream(path, [empty], o);
  return client.bidiStream(path, [empty], o);
}

describe('gateway authentication: every public method is behind the API key', function () {
  this.timeout(30_000);
  let mesh: TestMesh;
  let client: RawClient;
  let methods: { name: string; path: string; kind: string }[];

  before(async () => {
    mesh = await startMesh({ gateway: { apiKeys: parseApiKeys('acme=key-of-acme') } });
    client = new RawClient(mesh.gateway.address);
    const registry = meshRegistry();
    const served = (await listServices(mesh.gateway.address)).filter((s) => !INFRASTRUCTURE.includes(s));
    methods = served.flatMap((name) => {
      const service = registry.getService(name);
      if (!service) throw new Error(`the gateway serves ${name}, which the descriptors do not describe`);
      return service.methods.map((m) => ({ name: `${name}/${m.name}`, path: `/${name}/${m.name}`, kind: m.methodKind }));
    });
  });
  after(async () => {
    client?.close();
    await mesh?.stop();
  });

  it('finds the public services through reflection', () => {
    const services = new Set(methods.map((m) => m.name.split('/')[0]));
    expect([...services]).to.include.members(['maas.v1.InferenceService', 'maas.v1.ModelService', 'maas.v1.JobService', 'maas.v1.MeshService', 'inference.GRPCInferenceService']);
    for (const keyless of KEYLESS_PUBLIC_METHODS) expect(methods.map((m) => m.name)).to.include(keyless);
  });

  it('every method but the keyless probes answers UNAUTHENTICATED without a key', async () => {
    const answers: string[] = [];
    for (const m of methods.filter((x) => !KEYLESS_PUBLIC_METHODS.includes(x.name))) {
      const outcome = await callEmpty(client, m.path, m.kind, new grpc.Metadata());
      answers.push(`${m.name}: ${grpc.status[outcome.code]} ${outcome.details}`);
    }
    const expected = answers.map((a) => `${a.split(':')[0]}: UNAUTHENTICATED missing authorization metadata: send "authorization: Bearer <api key>"`);
    expect(answers).to.deep.equal(expected);
  });

  it('every method but the keyless probes answers UNAUTHENTICATED to an unknown key', async () => {
    const answers: string[] = [];
    const metadata = new grpc.Metadata();
    metadata.set('authorization', 'Bearer not-a-key-of-anyone');
    for (const m of methods.filter((x) => !KEYLESS_PUBLIC_METHODS.includes(x.name))) {
      const outcome = await callEmpty(client, m.path, m.kind, metadata);
      answers.push(`${m.name}: ${grpc.status[outcome.code]} ${outcome.details}`);
    }
    expect(answers).to.deep.equal(answers.map((a) => `${a.split(':')[0]}: UNAUTHENTICATED invalid API key`));
  });

  it('the keyless probes answer without a key', async () => {
    for (const name of KEYLESS_PUBLIC_METHODS) {
      const m = methods.find((x) => x.name === name)!;
      const outcome = await callEmpty(client, m.path, m.kind, new grpc.Metadata());
      expect(`${name}: ${grpc.status[outcome.code]}`).to.equal(`${name}: OK`);
    }
  });
});
