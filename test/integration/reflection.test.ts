/**
 * Server reflection, as grpcurl uses it: every service lists its services and hands out the
 * descriptors the proto compiler produced, so map fields keep protoc's shape (a nested
 * `...Entry` message with map_entry set) and tools can describe and call them.
 */
import * as grpc from '@grpc/grpc-js';
import { expect } from 'chai';
import { FileDescriptorProto } from 'google-protobuf/google/protobuf/descriptor_pb';
import { ServerReflectionRequest, ServerReflectionResponse } from 'nice-grpc-server-reflection/lib/proto/grpc/reflection/v1/reflection_pb';
import { ServerReflectionService } from 'nice-grpc-server-reflection';
import { TestMesh, startMesh } from '../support';

/** One reflection request/response exchange over `version` (v1 or v1alpha). */
async function reflect(address: string, version: 'v1' | 'v1alpha', request: ServerReflectionRequest): Promise<ServerReflectionResponse> {
  const method = ServerReflectionService.serverReflectionInfo;
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  try {
    const call = client.makeBidiStreamRequest(
      method.path.replace('grpc.reflection.v1.', `grpc.reflection.${version}.`),
      method.requestSerialize,
      method.responseDeserialize,
    );
    const response = new Promise<ServerReflectionResponse>((resolve, reject) => {
      call.once('data', resolve);
      call.once('error', reject);
    });
    call.write(request);
    call.end();
    return await response;
  } finally {
    client.close();
  }
}

describe('server reflection', function () {
  this.timeout(20000);
  let mesh: TestMesh;
  before(async () => {
    mesh = await startMesh();
  });
  after(() => mesh.stop());

  for (const version of ['v1', 'v1alpha'] as const) {
    it(`lists the gateway's services over ${version}`, async () => {
      const r = await reflect(mesh.gateway.address, version, new ServerReflectionRequest().setListServices('*'));
      const names = r.getListServicesResponse()!.getServiceList().map((s) => s.getName());
      expect(names).to.include.members(['maas.v1.InferenceService', 'maas.v1.ModelService', 'inference.GRPCInferenceService', 'grpc.health.v1.Health']);
    });
  }

  it('lists each internal service on its own server', async () => {
    const expected: [string, string][] = [
      [mesh.scheduler.address, 'maas.internal.v1.SchedulerService'],
      [mesh.balancer.address, 'maas.internal.v1.BalancerService'],
      [mesh.workers[0].address, 'maas.internal.v1.WorkerService'],
    ];
    for (const [address, service] of expected) {
      const r = await reflect(address, 'v1', new ServerReflectionRequest().setListServices('*'));
      expect(r.getListServicesResponse()!.getServiceList().map((s) => s.getName())).to.include.members([service, 'grpc.health.v1.Health']);
    }
  });

  it('describes a message with a map field the way protoc does (nested map_entry message)', async () => {
    const r = await reflect(mesh.gateway.address, 'v1', new ServerReflectionRequest().setFileContainingSymbol('maas.v1.PredictResponse'));
    const files = r.getFileDescriptorResponse()!.getFileDescriptorProtoList_asU8().map((b) => FileDescriptorProto.deserializeBinary(b));
    const file = files.find((f) => f.getName() === 'maas/v1/inference.proto')!;
    const message = file.getMessageTypeList().find((m) => m.getName() === 'PredictResponse')!;
    const field = message.getFieldList().find((f) => f.getName() === 'probabilities')!;
    expect(field.getTypeName()).to.equal('.maas.v1.PredictResponse.ProbabilitiesEntry');
    const entry = message.getNestedTypeList().find((m) => m.getName() === 'ProbabilitiesEntry')!;
    expect(entry.getOptions()!.getMapEntry()).to.equal(true);
    expect(entry.getFieldList().map((f) => f.getName())).to.deep.equal(['key', 'value']);
  });

  it('answers NOT_FOUND for an unknown symbol', async () => {
    const r = await reflect(mesh.gateway.address, 'v1', new ServerReflectionRequest().setFileContainingSymbol('maas.v1.Nope'));
    expect(r.getErrorResponse()!.getErrorCode()).to.equal(grpc.status.NOT_FOUND);
  });
});
