/**
 * Repository models on a real worker behind a real balancer: ONNX Runtime inference through
 * Route (typed and raw contents, versions), the built-in spam-nb through the tensor protocol, a
 * classifier through Predict, every bad input refused at the worker with the field named, and
 * load/unload/reload while other calls run.
 */
import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createMeshClient, openChannel } from '../../common/client';
import { parseConfig } from '../../common/config';
import { silentLogger } from '../../common/log';
import { encodeBytesRaw } from '../../common/tensors';
import { InferTensorContents, ModelInferRequest, ModelInferResponse } from '../../generated/inference/grpc_service';
import { BalancerServiceDefinition } from '../../generated/maas/internal/v1/balancer';
import { Task } from '../../generated/maas/internal/v1/task';
import { WorkerServiceDefinition } from '../../generated/maas/internal/v1/worker';
import { ModelTask } from '../../generated/maas/v1/models';
import { balancerSchema } from '../../services/balancer/config';
import { RunningBalancer, startBalancer } from '../../services/balancer/server';
import { workerSchema } from '../../services/worker/config';
import { createBuiltinRuntime } from '../../services/worker/models/builtin';
import { RunningWorker, startWorker } from '../../services/worker/server';
import { DATATYPES, contentsField, encodeOutputs } from '../../common/tensors';
import { addModel, identityModel, keywordModel, writeModel } from '../onnx-fixtures';
import { MODEL_CACHE_DIR, Status, collect, grpcError, until } from '../support';

function contents(fields: Partial<InferTensorContents> = {}): InferTensorContents {
  return { boolContents: [], intContents: [], int64Contents: [], uintContents: [], uint64Contents: [], fp32Contents: [], fp64Contents: [], bytesContents: [], ...fields };
}

function addRequest(x: number[], rows: number, overrides: Partial<ModelInferRequest> = {}): ModelInferRequest {
  return {
    modelName: 'add',
    modelVersion: '',
    id: 'req-1',
    parameters: {},
    inputs: [{ name: 'x', datatype: 'FP32', shape: [rows, 3], parameters: {}, contents: contents({ fp32Contents: x }) }],
    outputs: [],
    rawInputContents: [],
    ...overrides,
  };
}

describe('ONNX models on the worker', function () {
  this.timeout(60000);
  let repo: string;
  let balancer: RunningBalancer;
  let worker: RunningWorker;
  let channel: ReturnType<typeof openChannel>;
  let workerChannel: ReturnType<typeof openChannel>;
  let client: ReturnType<typeof createMeshClient<typeof BalancerServiceDefinition>>;
  let direct: ReturnType<typeof createMeshClient<typeof WorkerServiceDefinition>>;

  const infer = async (request: ModelInferRequest): Promise<ModelInferResponse> => {
    const task: Task = { requestId: `r-${Math.random()}`, request: { $case: 'infer', infer: request } } as Task;
    const [out] = await collect(client.route({ task }));
    expect(out.output?.output?.$case).to.equal('inferResponse');
    return (out.output!.output as { inferResponse: ModelInferResponse }).inferResponse;
  };
  /** Runs on the worker directly (no balancer retry), for the bad-input cases. */
  const executeDirect = (request: ModelInferRequest) => collect(direct.execute({ task: { requestId: 'bad', request: { $case: 'infer', infer: request } } as Task }));

  before(async () => {
    repo = mkdtempSync(join(tmpdir(), 'maas-repo-test-'));
    writeModel(repo, 'add', 1, addModel(3, 1), { max_batch_size: 8, version_policy: { all: {} }, description: 'x plus a bias' });
    writeModel(repo, 'add', 2, addModel(3, 10));
    writeModel(repo, 'kw', 1, keywordModel('win'), {
      labels: ['ham', 'spam'],
      input: [{ name: 'tokens', data_type: 'TYPE_STRING', dims: [-1, -1] }],
      parameters: { text_input: 'tokens', text_tokenizer: 'words_lowercase', intra_op_threads: 2 },
    });
    writeModel(repo, 'identity', 1, identityModel());
    // FP16 travels only raw, so the typed round trip uses a model without it.
    writeModel(repo, 'identity-typed', 1, identityModel(DATATYPES.filter((dt) => dt !== 'FP16')));
    writeModel(repo, 'broken', 1, Buffer.from('not an onnx file'));
    balancer = await startBalancer({ ...parseConfig(balancerSchema, [], {}), port: 0, metricsPort: 0, reportIntervalMs: 200 }, silentLogger);
    const config = { ...parseConfig(workerSchema, [], {}), port: 0, balancer: balancer.address, aggregator: '127.0.0.1:1', workerId: 'w1', modelRepository: repo, inputRoot: join(repo, '..', `${repo.split('/').pop()}-input`), cacheDir: MODEL_CACHE_DIR };
    worker = await startWorker(config, silentLogger, createBuiltinRuntime({ cacheDir: MODEL_CACHE_DIR, echoDelayMs: 0 }));
    await worker.joined;
    channel = openChannel(balancer.address);
    workerChannel = openChannel(worker.address);
    client = createMeshClient(BalancerServiceDefinition, channel);
    direct = createMeshClient(WorkerServiceDefinition, workerChannel);
  });

  after(async () => {
    channel?.close();
    workerChannel?.close();
    await worker?.shutdown();
    await balancer?.shutdown();
    rmSync(repo, { recursive: true, force: true });
    rmSync(`${repo}-input`, { recursive: true, force: true });
  });

  it('advertises each repository model version with its platform, tensors and max_batch_size', async () => {
    const { models } = await client.listModels({});
    const add = models.filter((m) => m.name === 'add');
    expect(add.map((m) => m.version)).to.deep.equal(['1', '2']);
    expect(add[0]).to.include({ platform: 'onnxruntime_onnx', maxBatchSize: 8, description: 'x plus a bias' });
    expect(add[0].tasks).to.deep.equal([ModelTask.MODEL_TASK_INFER]);
    expect(add[0].inputs).to.deep.equal([{ name: 'x', datatype: 'FP32', shape: [-1, 3] }]);
    expect(add[0].outputs).to.deep.equal([{ name: 'y', datatype: 'FP32', shape: [-1, 3] }]);
    const kw = models.find((m) => m.name === 'kw')!;
    expect(kw.tasks).to.deep.equal([ModelTask.MODEL_TASK_INFER, ModelTask.MODEL_TASK_CLASSIFY]);
    expect(kw.labels).to.deep.equal(['ham', 'spam']);
    // Intra-op threads: the worker's flag, unless the model's config says otherwise.
    expect(add[0].metadata.intra_op_threads).to.equal('1');
    expect(kw.metadata.intra_op_threads).to.equal('2');
    const spam = models.find((m) => m.name === 'spam-nb')!;
    expect(spam.platform).to.equal('maas_builtin');
    expect(spam.inputs).to.deep.equal([{ name: 'text', datatype: 'BYTES', shape: [-1] }]);
    // A model whose file does not load is not advertised.
    expect(models.map((m) => m.name)).not.to.include('broken');
  });

  it('runs a typed request through the balancer on the version asked for (and the newest when none is)', async () => {
    const v1 = await infer(addRequest([1, 1, 1, 2, 2, 2], 2, { modelVersion: '1' }));
    expect(v1).to.include({ modelName: 'add', modelVersion: '1', id: 'req-1' });
    expect(v1.outputs[0]).to.include({ name: 'y', datatype: 'FP32' });
    expect(v1.outputs[0].shape).to.deep.equal([2, 3]);
    expect(v1.outputs[0].contents!.fp32Contents).to.deep.equal([2, 3, 4, 3, 4, 5]);
    expect(v1.rawOutputContents).to.deep.equal([]);
    const newest = await infer(addRequest([0, 0, 0], 1));
    expect(newest.modelVersion).to.equal('2');
    expect(newest.outputs[0].contents!.fp32Contents).to.deep.equal([10, 20, 30]);
  });

  it('answers raw outputs to raw inputs', async () => {
    const x = Float32Array.from([1, 2, 3]);
    const r = await infer(addRequest([], 1, { modelVersion: '1', inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 3], parameters: {} }], rawInputContents: [Buffer.from(x.buffer)] }));
    expect(r.outputs[0].contents).to.equal(undefined);
    const y = new Float32Array(new Uint8Array(r.rawOutputContents[0]).buffer);
    expect(Array.from(y)).to.deep.equal([2, 4, 6]);
  });

  it('carries every data type through ONNX Runtime unchanged, typed and raw', async () => {
    const samples: Record<string, number[] | bigint[] | boolean[] | Buffer[]> = {
      BOOL: [true, false, true],
      UINT8: [0, 7, 255],
      UINT16: [0, 9, 65535],
      UINT32: [0, 11, 4294967295],
      UINT64: [0n, 12n, 2n ** 60n],
      INT8: [-128, 0, 127],
      INT16: [-32768, 3, 32767],
      INT32: [-2147483648, 5, 2147483647],
      INT64: [-(2n ** 62n), 0n, 2n ** 62n],
      FP16: [0x3c00, 0xc000, 0x7bff], // 1, -2, 65504 as IEEE half bits
      FP32: [1.5, -2.25, 2 ** 100],
      FP64: [Math.PI, -1e300, 5e-324],
      BYTES: [Buffer.from('héllo'), Buffer.alloc(0), Buffer.from('x')],
    };
    const arrays: Record<string, ArrayLike<unknown>> = {
      BOOL: Uint8Array.from([1, 0, 1]), UINT8: Uint8Array.from(samples.UINT8 as number[]), UINT16: Uint16Array.from(samples.UINT16 as number[]),
      UINT32: Uint32Array.from(samples.UINT32 as number[]), UINT64: BigUint64Array.from(samples.UINT64 as bigint[]), INT8: Int8Array.from(samples.INT8 as number[]),
      INT16: Int16Array.from(samples.INT16 as number[]), INT32: Int32Array.from(samples.INT32 as number[]), INT64: BigInt64Array.from(samples.INT64 as bigint[]),
      FP16: Uint16Array.from(samples.FP16 as number[]), FP32: Float32Array.from(samples.FP32 as number[]), FP64: Float64Array.from(samples.FP64 as number[]), BYTES: samples.BYTES as Buffer[],
    };
    const tensors = DATATYPES.map((dt) => ({ name: `in_${dt}`, datatype: dt, shape: [3], data: arrays[dt] as never }));
    const raw = encodeOutputs(tensors, true);
    const rawAnswer = await infer({ modelName: 'identity', modelVersion: '', id: '', parameters: {}, inputs: tensors.map((t) => ({ name: t.name, datatype: t.datatype, shape: [3], parameters: {} })), outputs: [], rawInputContents: raw.rawOutputContents });
    expect(rawAnswer.outputs.map((o) => o.name)).to.deep.equal(DATATYPES.map((dt) => `out_${dt}`));
    expect(rawAnswer.outputs.map((o) => o.datatype)).to.deep.equal([...DATATYPES]);
    rawAnswer.rawOutputContents.forEach((bytes, i) => expect(bytes, DATATYPES[i]).to.deep.equal(raw.rawOutputContents[i]));
    // Typed: every type but FP16 (raw only) in its contents field; INT64/UINT64 within 2^53.
    const typedTypes = DATATYPES.filter((dt) => dt !== 'FP16');
    const typedValues = (dt: string) => (dt === 'INT64' ? [-(2 ** 50), 0, 2 ** 50] : dt === 'UINT64' ? [0, 12, 2 ** 52] : samples[dt]);
    const inputs = typedTypes.map((dt) => ({ name: `in_${dt}`, datatype: dt, shape: [3], parameters: {}, contents: contents({ [contentsField(dt)!]: typedValues(dt) }) }));
    const typedAnswer = await infer({ modelName: 'identity-typed', modelVersion: '', id: '', parameters: {}, inputs, outputs: typedTypes.map((dt) => ({ name: `out_${dt}`, parameters: {} })), rawInputContents: [] });
    expect(typedAnswer.rawOutputContents).to.deep.equal([]);
    typedAnswer.outputs.forEach((o, i) => expect(o.contents![contentsField(typedTypes[i])!], typedTypes[i]).to.deep.equal(typedValues(typedTypes[i])));
  });

  it('serves the built-in spam-nb through the tensor protocol: labels and probabilities per text', async () => {
    const texts = ['WIN MONEY NOW!!! click here for a free prize', 'see you at the meeting tomorrow, the notes are attached'];
    const r = await infer({
      modelName: 'spam-nb',
      modelVersion: '',
      id: '',
      parameters: {},
      inputs: [{ name: 'text', datatype: 'BYTES', shape: [2], parameters: {} }],
      outputs: [],
      rawInputContents: [encodeBytesRaw(texts.map((t) => Buffer.from(t)))],
    });
    expect(r.outputs.map((o) => [o.name, o.datatype, o.shape])).to.deep.equal([
      ['label', 'BYTES', [2]],
      ['probabilities', 'FP64', [2, 2]],
    ]);
    const predictions = await Promise.all(texts.map((t) => collect(client.route({ task: { requestId: 'p', request: { $case: 'predict', predict: { model: 'spam-nb', input: t, priority: 0, affinityKey: '' } } } as Task }))));
    const labels = r.rawOutputContents[0];
    expect(labels.length).to.be.greaterThan(8);
    const probs = new Float64Array(new Uint8Array(r.rawOutputContents[1]).buffer);
    const expected = predictions.map(([p]) => (p.output!.output as { prediction: { label: string; probabilities: Record<string, number> } }).prediction);
    const spamLabels = (await client.listModels({})).models.find((m) => m.name === 'spam-nb')!.labels;
    expected.forEach((p, row) => spamLabels.forEach((label, col) => expect(probs[row * 2 + col]).to.be.closeTo(p.probabilities[label], 1e-12)));
    expect(encodeBytesRaw(expected.map((p) => Buffer.from(p.label)))).to.deep.equal(labels);
  });

  it('classifies text with an ONNX classifier through Predict (tokenized as spam-nb tokenizes)', async () => {
    const predict = async (input: string) => {
      const [out] = await collect(client.route({ task: { requestId: 'p', request: { $case: 'predict', predict: { model: 'kw', input, priority: 0, affinityKey: '' } } } as Task }));
      return (out.output!.output as { prediction: { label: string; probabilities: Record<string, number> } }).prediction;
    };
    const spam = await predict('You WIN, win big');
    expect(spam.label).to.equal('spam');
    expect(spam.probabilities.spam).to.be.closeTo(Math.exp(2) / (Math.exp(2) + Math.exp(-2)), 1e-6);
    expect((await predict('hello there')).label).to.equal('ham');
    expect((await predict('')).probabilities.ham).to.be.closeTo(0.5, 1e-6);
  });

  describe('bad input, refused at the worker with the field named', () => {
    const cases: [string, () => ModelInferRequest, Status, RegExp][] = [
      ['an unknown model', () => addRequest([1, 2, 3], 1, { modelName: 'nope' }), Status.NOT_FOUND, /model "nope" is not hosted/],
      ['an unknown version', () => addRequest([1, 2, 3], 1, { modelVersion: '7' }), Status.NOT_FOUND, /model "add" version "7" is not hosted on worker w1; its versions here: 1, 2/],
      ['a wrong data type', () => addRequest([1, 2, 3], 1, { inputs: [{ name: 'x', datatype: 'FP64', shape: [1, 3], parameters: {}, contents: contents({ fp64Contents: [1, 2, 3] }) }] }), Status.INVALID_ARGUMENT, /^inputs\[0\] "x": datatype must be FP32, given FP64$/],
      ['a wrong shape', () => addRequest([1, 2, 3, 4], 1, { inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 4], parameters: {}, contents: contents({ fp32Contents: [1, 2, 3, 4] }) }] }), Status.INVALID_ARGUMENT, /^inputs\[0\] "x": shape\[1\] must be 3 as in \[-1, 3\]/],
      ['a batch over max_batch_size', () => addRequest(new Array(27).fill(0), 9), Status.INVALID_ARGUMENT, /shape\[0\] must be at most max_batch_size 8, given 9/],
      ['a raw byte length that does not match the shape', () => addRequest([], 1, { inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 3], parameters: {} }], rawInputContents: [Buffer.alloc(11)] }), Status.INVALID_ARGUMENT, /^inputs\[0\] "x": raw_input_contents must be 12 bytes \(3 FP32 elements of 4 bytes\), given 11 bytes$/],
      ['too many inputs', () => { const r = addRequest([1, 2, 3], 1); r.inputs.push({ ...r.inputs[0], name: 'z' }); return r; }, Status.INVALID_ARGUMENT, /^inputs has 2 tensors, model "add" takes 1 \(x\)$/],
      ['a missing input', () => addRequest([], 1, { inputs: [] }), Status.INVALID_ARGUMENT, /^input "x" is missing: model "add" takes x, given none$/],
      ['an unknown input name', () => addRequest([1, 2, 3], 1, { inputs: [{ name: 'q', datatype: 'FP32', shape: [1, 3], parameters: {}, contents: contents({ fp32Contents: [1, 2, 3] }) }] }), Status.INVALID_ARGUMENT, /^inputs\[0\] "q" is not an input of model "add"; its inputs are x$/],
      ['an element count that does not match the shape', () => addRequest([1, 2], 1), Status.INVALID_ARGUMENT, /contents.fp32_contents must have 3 elements \(the product of the shape\), given 2/],
      ['BF16', () => addRequest([], 1, { inputs: [{ name: 'x', datatype: 'BF16', shape: [1, 3], parameters: {} }], rawInputContents: [Buffer.alloc(6)] }), Status.INVALID_ARGUMENT, /inputs\[0\] "x": datatype BF16 is not supported/],
      ['an unknown output', () => addRequest([1, 2, 3], 1, { outputs: [{ name: 'w', parameters: {} }] }), Status.INVALID_ARGUMENT, /^outputs\[0\] "w" is not an output of model "add"; its outputs are y$/],
      ['a tensor request to a model that takes none', () => addRequest([1, 2, 3], 1, { modelName: 'echo' }), Status.FAILED_PRECONDITION, /does not take tensors/],
    ];
    for (const [what, request, code, message] of cases) {
      it(`refuses ${what}`, async () => {
        const err = await grpcError(executeDirect(request()));
        expect(err.code, err.details).to.equal(code);
        expect(err.details).to.match(message);
      });
    }

    it('answers UNAVAILABLE through the balancer for a version no worker serves, naming it', async () => {
      const task = { requestId: 'v', request: { $case: 'infer', infer: addRequest([1, 2, 3], 1, { modelVersion: '9' }) } } as Task;
      const err = await grpcError(collect(client.route({ task })));
      expect(err.code).to.equal(Status.UNAVAILABLE);
      expect(err.details).to.equal('no ready worker serves model "add" version "9"');
    });
  });

  describe('the repository while serving', () => {
    it('indexes the repository: loaded versions READY, the broken model UNAVAILABLE with its reason', async () => {
      const { response } = await client.repositoryIndex({ request: { repositoryName: '', ready: false } });
      const rows = response!.models.map((m) => [m.name, m.version, m.state]);
      expect(rows).to.deep.include.members([
        ['add', '1', 'READY'],
        ['add', '2', 'READY'],
        ['kw', '1', 'READY'],
        ['broken', '1', 'UNAVAILABLE'],
      ]);
      expect(response!.models.find((m) => m.name === 'broken')!.reason).to.match(/does not load in ONNX Runtime/);
      const ready = (await client.repositoryIndex({ request: { repositoryName: '', ready: true } })).response!.models;
      expect(ready.map((m) => m.name)).not.to.include('broken');
    });

    it('refuses to load a folder that is missing (NOT_FOUND) or broken (FAILED_PRECONDITION), naming the worker', async () => {
      const missing = await grpcError(client.loadModel({ modelName: 'absent' }));
      expect(missing.code).to.equal(Status.NOT_FOUND);
      expect(missing.details).to.match(/load of model "absent" failed on 1 of 1 workers: w1 \(NOT_FOUND: model "absent" is not a folder/);
      const broken = await grpcError(client.loadModel({ modelName: 'broken' }));
      expect(broken.code).to.equal(Status.FAILED_PRECONDITION);
      expect(broken.details).to.match(/w1 \(FAILED_PRECONDITION: model "broken" version 1: model.onnx does not load/);
    });

    it('loads, reloads and unloads a model under traffic with no failed call to the other model', async () => {
      writeModel(repo, 'hot', 1, addModel(3, 100), { max_batch_size: 4 });
      let stop = false;
      let stopHot = false;
      let other = 0;
      let hotCalls = 0;
      const otherFailures: string[] = [];
      const traffic = async () => {
        while (!stop) {
          try {
            const r = await infer(addRequest([0, 0, 0], 1, { modelVersion: '1' }));
            expect(r.outputs[0].contents!.fp32Contents).to.deep.equal([1, 2, 3]);
            other++;
          } catch (err) {
            otherFailures.push((err as Error).message);
          }
        }
      };
      const hotFailures: string[] = [];
      const hotTraffic = async () => {
        while (!stopHot) {
          try {
            const r = await infer({ ...addRequest([0, 0, 0], 1), modelName: 'hot' });
            // Either the first file or the reloaded one answers: never anything else.
            expect([100, 1000]).to.include(r.outputs[0].contents!.fp32Contents[0]);
            hotCalls++;
          } catch (err) {
            hotFailures.push((err as Error).message);
          }
        }
      };
      const loops = [traffic(), traffic(), traffic()];
      await until(() => other > 10, 10000, 'traffic to add');
      const loaded = await client.loadModel({ modelName: 'hot' });
      expect(loaded.workerIds).to.deep.equal(['w1']);
      // Once LoadModel has answered, the balancer routes to it.
      const first = await infer({ ...addRequest([0, 0, 0], 1), modelName: 'hot' });
      expect(first.outputs[0].contents!.fp32Contents).to.deep.equal([100, 200, 300]);
      const hotLoops = [hotTraffic(), hotTraffic()];
      await until(() => hotCalls > 10, 10000, 'traffic to hot');
      // Reload with a new file: calls to it go on, and switch to the new file.
      writeModel(repo, 'hot', 1, addModel(3, 1000));
      await client.loadModel({ modelName: 'hot' });
      const after = await infer({ ...addRequest([0, 0, 0], 1), modelName: 'hot' });
      expect(after.outputs[0].contents!.fp32Contents).to.deep.equal([1000, 2000, 3000]);
      const callsAfterReload = hotCalls;
      await until(() => hotCalls > callsAfterReload + 10, 10000, 'traffic to the reloaded model');
      expect(hotFailures, 'calls to the reloaded model').to.deep.equal([]);
      stopHot = true;
      await Promise.all(hotLoops);
      const before = other;
      await client.unloadModel({ modelName: 'hot' });
      await until(() => other > before + 10, 10000, 'traffic after the unload');
      stop = true;
      await Promise.all(loops);
      expect(otherFailures, 'calls to the other model').to.deep.equal([]);
      expect((await client.listModels({})).models.map((m) => m.name)).not.to.include('hot');
      const gone = await grpcError(collect(client.route({ task: { requestId: 'g', request: { $case: 'infer', infer: { ...addRequest([0, 0, 0], 1), modelName: 'hot' } } } as Task })));
      expect(gone.details).to.equal('no ready worker serves model "hot"');
      const index = (await client.repositoryIndex({ request: { repositoryName: '', ready: false } })).response!.models;
      expect(index.find((m) => m.name === 'hot')).to.include({ state: 'UNAVAILABLE', reason: 'unloaded' });
      const again = await grpcError(client.unloadModel({ modelName: 'hot' }));
      expect(again.code).to.equal(Status.NOT_FOUND);
    });

    it('refuses to load or unload a built-in model, and a malformed name', async () => {
      writeFileSync(join(repo, 'README.txt'), 'not a model');
      const builtin = await grpcError(client.unloadModel({ modelName: 'spam-nb' }));
      expect(builtin.code).to.equal(Status.FAILED_PRECONDITION);
      expect(builtin.details).to.match(/model "spam-nb" is a built-in model of worker w1/);
      const bad = await grpcError(direct.loadModel({ modelName: '../etc' }));
      expect(bad.code).to.equal(Status.INVALID_ARGUMENT);
      expect(bad.details).to.match(/^model_name must match/);
    });
  });
});
