/**
 * The KServe v2 protocol at the gateway (inference.GRPCInferenceService), through a real mesh:
 * server and model metadata, and every bad ModelInfer input refused at the edge with the exact
 * status and a message naming the field. The tensor model here is advertised by a worker that
 * joins the real balancer with a hello and load reports (its address answers nothing): each call below is
 * refused by the gateway before the scheduler, so none reaches it.
 */
import { expect } from 'chai';
import { createMeshClient, openChannel } from '../../common/client';
import { BalancerServiceDefinition, JoinRequest } from '../../generated/maas/internal/v1/balancer';
import { GRPCInferenceServiceDefinition, ModelInferRequest } from '../../generated/inference/grpc_service';
import { Model, ModelTask } from '../../generated/maas/v1/models';
import { Status, TestMesh, grpcError, startMesh, until } from '../support';

/** A tensor model: FP32 x [-1, 4] and BYTES tag [-1], batching up to 8. */
const TENSORS = Model.fromPartial({
  name: 'tensors',
  version: '3',
  description: 'advertised only',
  tasks: [ModelTask.MODEL_TASK_INFER],
  platform: 'onnxruntime_onnx',
  maxBatchSize: 8,
  inputs: [
    { name: 'x', datatype: 'FP32', shape: [-1, 4] },
    { name: 'tag', datatype: 'BYTES', shape: [-1] },
  ],
  outputs: [{ name: 'y', datatype: 'FP32', shape: [-1, 2] }],
  readyWorkers: 1,
});

/** Joins the balancer as a worker that advertises `models`; resolves to a function that leaves. */
async function advertise(balancerAddress: string, workerId: string, models: Model[]): Promise<() => void> {
  const channel = openChannel(balancerAddress);
  const client = createMeshClient(BalancerServiceDefinition, channel);
  const abort = new AbortController();
  async function* messages(): AsyncGenerator<JoinRequest> {
    yield { message: { $case: 'hello', hello: { workerId, address: '127.0.0.1:1', models, capacity: 1, mappers: [] } } };
    // Load reports keep it a member: the balancer removes a worker silent for three intervals.
    while (!abort.signal.aborted) {
      await new Promise<void>((r) => {
        const timer = setTimeout(r, 200);
        abort.signal.addEventListener('abort', () => (clearTimeout(timer), r()), { once: true });
      });
      if (abort.signal.aborted) return;
      yield { message: { $case: 'report', report: { inFlight: 0, capacity: 1, completed: 0, draining: false, queueDepth: 0, latencyMs: 0 } } };
    }
  }
  (async () => {
    for await (const _ of client.join(messages(), { signal: abort.signal })) void _;
  })().catch(() => undefined);
  return () => {
    abort.abort();
    channel.close();
  };
}

/** A valid request for TENSORS with a batch of `rows`, typed contents. */
function typed(rows = 2, o: Partial<ModelInferRequest> = {}): ModelInferRequest {
  return ModelInferRequest.fromPartial({
    modelName: 'tensors',
    inputs: [
      { name: 'x', datatype: 'FP32', shape: [rows, 4], contents: { fp32Contents: Array.from({ length: rows * 4 }, (_, i) => i) } },
      { name: 'tag', datatype: 'BYTES', shape: [rows], contents: { bytesContents: Array.from({ length: rows }, (_, i) => Buffer.from(`t${i}`)) } },
    ],
    ...o,
  });
}

/** The same request with raw contents. */
function raw(rows = 2): ModelInferRequest {
  const x = Buffer.alloc(rows * 4 * 4);
  const tag = Buffer.concat(Array.from({ length: rows }, () => Buffer.from([2, 0, 0, 0, 0x68, 0x69])));
  return ModelInferRequest.fromPartial({
    modelName: 'tensors',
    inputs: [
      { name: 'x', datatype: 'FP32', shape: [rows, 4] },
      { name: 'tag', datatype: 'BYTES', shape: [rows] },
    ],
    rawInputContents: [x, tag],
  });
}

describe('KServe v2 protocol at the gateway', function () {
  this.timeout(30000);
  let mesh: TestMesh;
  let kserve: ReturnType<typeof createMeshClient<typeof GRPCInferenceServiceDefinition>>;
  let channel: ReturnType<typeof openChannel>;
  let leave: () => void;

  before(async () => {
    mesh = await startMesh({ gateway: { maxTensorElements: 4096, repositoryTenants: [] } });
    leave = await advertise(mesh.balancer.address, 'tensor-worker', [TENSORS]);
    await until(() => mesh.balancer.membership.size === 2, 5000, 'the advertising worker to join');
    channel = openChannel(mesh.gateway.address);
    kserve = createMeshClient(GRPCInferenceServiceDefinition, channel);
  });
  after(async () => {
    leave?.();
    channel?.close();
    await mesh?.stop();
  });

  /** The status of a ModelInfer call that must fail. */
  const refusal = async (request: ModelInferRequest) => {
    const err = await grpcError(kserve.modelInfer(request, { deadline: Date.now() + 5000 }));
    return { code: Status[err.code], details: err.details };
  };

  it('answers ServerLive, ServerReady and ServerMetadata (name, package version, extensions)', async () => {
    expect((await kserve.serverLive({})).live).to.equal(true);
    expect((await kserve.serverReady({})).ready).to.equal(true);
    const version = (require('../../../package.json') as { version: string }).version;
    expect(await kserve.serverMetadata({})).to.deep.equal({ name: 'maas-mesh', version, extensions: ['model_repository'] });
  });

  it('ModelMetadata gives the versions, platform, inputs and outputs from the catalog', async () => {
    const m = await kserve.modelMetadata({ name: 'tensors', version: '' });
    expect(m).to.deep.equal({
      name: 'tensors',
      versions: ['3'],
      platform: 'onnxruntime_onnx',
      inputs: [
        { name: 'x', datatype: 'FP32', shape: [-1, 4] },
        { name: 'tag', datatype: 'BYTES', shape: [-1] },
      ],
      outputs: [{ name: 'y', datatype: 'FP32', shape: [-1, 2] }],
    });
    expect((await kserve.modelMetadata({ name: 'echo', version: '' })).platform).to.equal('maas_builtin');
  });

  it('ModelMetadata: NOT_FOUND naming an unknown model, and an unknown version with the versions served', async () => {
    const a = await grpcError(kserve.modelMetadata({ name: 'nope', version: '' }));
    expect([Status[a.code], a.details]).to.deep.equal(['NOT_FOUND', 'model "nope" not found']);
    const b = await grpcError(kserve.modelMetadata({ name: 'tensors', version: '9' }));
    expect([Status[b.code], b.details]).to.deep.equal(['NOT_FOUND', 'model "tensors" has no version "9"; versions served: 3']);
  });

  it('ModelReady: true for a served model and version, false for another version or model', async () => {
    expect((await kserve.modelReady({ name: 'echo', version: '' })).ready).to.equal(true);
    expect((await kserve.modelReady({ name: 'tensors', version: '3' })).ready).to.equal(true);
    expect((await kserve.modelReady({ name: 'tensors', version: '4' })).ready).to.equal(false);
    expect((await kserve.modelReady({ name: 'nope', version: '' })).ready).to.equal(false);
  });

  describe('ModelInfer refuses bad input at the edge, naming the field', () => {
    it('an unknown model: NOT_FOUND', async () => {
      expect(await refusal(typed(2, { modelName: 'nope' }))).to.deep.equal({ code: 'NOT_FOUND', details: 'model "nope" not found' });
    });

    it('an unknown version: NOT_FOUND naming it and the versions served', async () => {
      expect(await refusal(typed(2, { modelVersion: '4' }))).to.deep.equal({ code: 'NOT_FOUND', details: 'model "tensors" has no version "4"; versions served: 3' });
    });

    it('a wrong data type', async () => {
      const r = typed();
      r.inputs[0] = { ...r.inputs[0], datatype: 'FP64', contents: { ...r.inputs[0].contents!, fp32Contents: [], fp64Contents: r.inputs[0].contents!.fp32Contents } };
      expect(await refusal(r)).to.deep.equal({ code: 'INVALID_ARGUMENT', details: 'inputs[0] "x": datatype must be FP32, given FP64' });
    });

    it('BF16, which ONNX Runtime for Node lacks', async () => {
      const r = typed();
      r.inputs[0] = { ...r.inputs[0], datatype: 'BF16' };
      const { code, details } = await refusal(r);
      expect(code).to.equal('INVALID_ARGUMENT');
      expect(details).to.match(/^inputs\[0\] "x": datatype BF16 is not supported/);
    });

    it('a wrong shape: a fixed dimension that differs, and a wrong rank', async () => {
      const r = typed();
      r.inputs[0] = { ...r.inputs[0], shape: [4, 2] };
      expect(await refusal(r)).to.deep.equal({ code: 'INVALID_ARGUMENT', details: 'inputs[0] "x": shape[1] must be 4 as in [-1, 4] (-1: any size), given [4, 2]' });
      const s = typed();
      s.inputs[1] = { ...s.inputs[1], shape: [2, 1] };
      expect(await refusal(s)).to.deep.equal({ code: 'INVALID_ARGUMENT', details: 'inputs[1] "tag": shape must have 1 dimensions as [-1] (-1: any size), given [2, 1]' });
    });

    it('a batch above max_batch_size', async () => {
      expect(await refusal(typed(9))).to.deep.equal({ code: 'INVALID_ARGUMENT', details: 'inputs[0] "x": the batch dimension shape[0] must be at most max_batch_size 8, given 9' });
    });

    it('typed contents whose element count does not match the shape', async () => {
      const r = typed();
      r.inputs[0].contents!.fp32Contents.pop();
      expect(await refusal(r)).to.deep.equal({ code: 'INVALID_ARGUMENT', details: 'inputs[0] "x": contents.fp32_contents must have 8 elements (the product of the shape), given 7' });
    });

    it('raw contents whose byte length does not match the shape (fixed-size and BYTES)', async () => {
      const r = raw();
      r.rawInputContents[0] = r.rawInputContents[0].subarray(1);
      expect(await refusal(r)).to.deep.equal({ code: 'INVALID_ARGUMENT', details: 'inputs[0] "x": raw_input_contents must be 32 bytes (8 FP32 elements of 4 bytes), given 31 bytes' });
      const s = raw();
      s.rawInputContents[1] = Buffer.concat([s.rawInputContents[1], Buffer.from([9, 0, 0, 0])]);
      const { code, details } = await refusal(s);
      expect(code).to.equal('INVALID_ARGUMENT');
      expect(details).to.match(/^inputs\[1\] "tag": raw_input_contents/);
    });

    it('too many inputs', async () => {
      const r = typed();
      r.inputs.push({ ...r.inputs[1], name: 'extra' });
      expect(await refusal(r)).to.deep.equal({ code: 'INVALID_ARGUMENT', details: 'inputs has 3 tensors, model "tensors" takes 2 (x, tag)' });
    });

    it('a missing input', async () => {
      const r = typed();
      r.inputs.pop();
      expect(await refusal(r)).to.deep.equal({ code: 'INVALID_ARGUMENT', details: 'input "tag" is missing: model "tensors" takes x, tag, given x' });
    });

    it('an input the model does not have', async () => {
      const r = typed();
      r.inputs[1] = { ...r.inputs[1], name: 'label' };
      expect(await refusal(r)).to.deep.equal({ code: 'INVALID_ARGUMENT', details: 'inputs[1] "label" is not an input of model "tensors"; its inputs are x, tag' });
    });

    it('raw and typed contents both set', async () => {
      const r = raw();
      r.inputs[0] = { ...r.inputs[0], contents: typed().inputs[0].contents };
      expect(await refusal(r)).to.deep.equal({ code: 'INVALID_ARGUMENT', details: 'inputs[0] "x": contents must be empty when raw_input_contents is used, given fp32_contents' });
    });

    it('a raw entry count that differs from the inputs', async () => {
      const r = raw();
      r.rawInputContents.pop();
      expect(await refusal(r)).to.deep.equal({ code: 'INVALID_ARGUMENT', details: 'raw_input_contents must have one entry per input (2), given 1' });
    });

    it('an oversized tensor, naming the limit and its setting, before looking at its contents', async () => {
      const r = typed();
      r.inputs[0] = { ...r.inputs[0], shape: [1000000, 4], contents: undefined };
      expect(await refusal(r)).to.deep.equal({
        code: 'INVALID_ARGUMENT',
        details: 'inputs[0] "x": a tensor may have at most 4096 elements (--max-tensor-elements), given shape [1000000, 4] with 4000000',
      });
    });

    it('a requested output the model does not have', async () => {
      expect(await refusal(typed(2, { outputs: [{ name: 'z', parameters: {} }] }))).to.deep.equal({
        code: 'INVALID_ARGUMENT',
        details: 'outputs[0] "z" is not an output of model "tensors"; its outputs are y',
      });
    });

    it('a priority parameter that is not low, normal or high', async () => {
      const r = typed(2, { parameters: { priority: { parameterChoice: { $case: 'stringParam', stringParam: 'urgent' } } } });
      expect(await refusal(r)).to.deep.equal({ code: 'INVALID_ARGUMENT', details: 'parameters["priority"] must be a string_param, one of low, normal, high, given "urgent"' });
      const s = typed(2, { parameters: { priority: { parameterChoice: { $case: 'int64Param', int64Param: 3 } } } });
      expect((await refusal(s)).details).to.equal('parameters["priority"] must be a string_param, one of low, normal, high, given an int64_param');
    });

    it('a model without tensors (echo)', async () => {
      expect(await refusal(typed(2, { modelName: 'echo' }))).to.deep.equal({ code: 'INVALID_ARGUMENT', details: 'model "echo" does not take tensors (ModelInfer); it supports: Generate, Predict' });
    });

    it('a model name with a path in it', async () => {
      const { code, details } = await refusal(typed(2, { modelName: '../tensors' }));
      expect(code).to.equal('INVALID_ARGUMENT');
      expect(details).to.match(/^model_name must contain only letters/);
    });
  });

  describe('repository calls at the edge', () => {
    it('RepositoryModelLoad refuses a model_name that is a path, naming the field', async () => {
      // A tenant allowed to load (the gateway below allows nobody), so the name check is what answers.
      const open = await startMesh({ workers: [] });
      const client = createMeshClient(GRPCInferenceServiceDefinition, openChannel(open.gateway.address));
      try {
        for (const modelName of ['../etc', 'a/b', 'a\\b', 'x..y']) {
          const err = await grpcError(client.repositoryModelLoad({ repositoryName: '', modelName, parameters: {} }));
          expect([Status[err.code], err.details.startsWith('model_name must be a folder name of the model repository')]).to.deep.equal(['INVALID_ARGUMENT', true]);
        }
        const long = await grpcError(client.repositoryModelUnload({ repositoryName: '', modelName: 'm'.repeat(129), parameters: {} }));
        expect([Status[long.code], long.details]).to.deep.equal(['INVALID_ARGUMENT', 'model_name must be at most 128 characters, given a string of 129 characters']);
        const repo = await grpcError(client.repositoryIndex({ repositoryName: 'other', ready: false }));
        expect(Status[repo.code]).to.equal('NOT_FOUND');
      } finally {
        await open.stop();
      }
    });

    it('RepositoryModelLoad and Unload are refused to a tenant not in --repository-tenants', async () => {
      const err = await grpcError(kserve.repositoryModelLoad({ repositoryName: '', modelName: 'tensors', parameters: {} }));
      expect([Status[err.code], err.details]).to.deep.equal(['PERMISSION_DENIED', 'tenant "anonymous" may not load or unload models; allowed: nobody (--repository-tenants)']);
      const un = await grpcError(kserve.repositoryModelUnload({ repositoryName: '', modelName: 'tensors', parameters: {} }));
      expect(Status[un.code]).to.equal('PERMISSION_DENIED');
    });
  });
});
