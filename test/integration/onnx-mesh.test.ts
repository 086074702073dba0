/**
 * The example ONNX models (common/onnx/examples.ts) served from a repository by a worker in a
 * whole mesh: spam-onnx in batch jobs (accuracy and collect reducers, the same answers as
 * spam-nb), and the perceptron under dynamic batching (each caller gets exactly its own rows).
 */
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { createMeshClient, openChannel } from '../../common/client';
import { loadCorpus, splitCorpus } from '../../common/corpus/spam-assassin';
import { mlpModel, writeModels } from '../../common/onnx/examples';
import { InferTensorContents, ModelInferRequest, ModelInferResponse } from '../../generated/inference/grpc_service';
import { BalancerServiceDefinition } from '../../generated/maas/internal/v1/balancer';
import { Task } from '../../generated/maas/internal/v1/task';
import { Job, JobSpec } from '../../generated/maas/v1/jobs';
import { exampleModels } from '../../services/worker/models/onnx-examples';
import { TestMesh, collect, startMesh } from '../support';

const inline = (texts: string[], labels: string[]) => ({ $case: 'inline' as const, inline: { records: texts.map((text, i) => ({ text, label: labels[i] })) } });

function contents(fp32Contents: number[]): InferTensorContents {
  return { boolContents: [], intContents: [], int64Contents: [], uintContents: [], uint64Contents: [], fp32Contents, fp64Contents: [], bytesContents: [] };
}

describe('example ONNX models in the mesh', function () {
  this.timeout(120000);
  let repo: string;
  let mesh: TestMesh;
  const split = splitCorpus(loadCorpus());
  // Held-out records that fit a job's inline record limit.
  const heldOut = split.test.filter((r) => r.body.length <= 8192);
  // A small perceptron (the example's shape, narrower) with batching that waits for company.
  const mlp = mlpModel({ inputs: 16, hidden: [32], classes: 4 });
  mlp.config.dynamic_batching = { max_queue_delay_microseconds: 100_000, preferred_batch_size: [8] };
  mlp.config.max_batch_size = 8;

  before(async () => {
    repo = mkdtempSync(join(tmpdir(), 'maas-examples-'));
    const [spam] = exampleModels(split);
    await writeModels(repo, [spam, mlp]);
    mesh = await startMesh({ workers: [{ builtin: true }], worker: { modelRepository: repo } });
  });

  after(async () => {
    await mesh?.stop();
    rmSync(repo, { recursive: true, force: true });
  });

  async function runJob(spec: Partial<JobSpec>): Promise<Job> {
    const { job } = await mesh.jobs.submit({ spec: JobSpec.fromPartial(spec) });
    await collect(mesh.jobs.watch({ jobId: job!.id, afterSequence: 0 }));
    return (await mesh.jobs.get({ jobId: job!.id })).job!;
  }

  it('an accuracy job with spam-onnx gives spam-nb\'s confusion matrix on held-out records', async () => {
    const records = heldOut.slice(0, 120);
    const input = inline(records.map((r) => r.body), records.map((r) => r.label));
    const [onnx, nb] = await Promise.all(['spam-onnx', 'spam-nb'].map((model) => runJob({ map: { $case: 'model', model }, input, shardSize: 40, reducer: 'accuracy' })));
    const accuracy = (job: Job) => {
      const r = job.result?.result;
      if (r?.$case !== 'accuracy') throw new Error(`job ${job.id} ended ${job.state} with ${job.error || r?.$case}`);
      return r.accuracy;
    };
    expect(accuracy(onnx).confusion).to.deep.equal(accuracy(nb).confusion);
    expect(accuracy(onnx).accuracy).to.be.greaterThan(0.9);
  });

  it('a collect job with spam-onnx labels each record as Predict does', async () => {
    const texts = heldOut.slice(200, 210).map((r) => r.body);
    const job = await runJob({ map: { $case: 'model', model: 'spam-onnx' }, input: inline(texts, texts.map(() => '')), shardSize: 5, reducer: 'collect' });
    const r = job.result?.result;
    if (r?.$case !== 'collect') throw new Error(`job ended ${job.state} with ${job.error || r?.$case}`);
    const online = await Promise.all(texts.map((input) => mesh.inference.predict({ model: 'spam-onnx', input, priority: 0 })));
    expect(r.collect.outputs.map((x) => x.output)).to.deep.equal(online.map((p) => p.label));
  });

  it('batches concurrent perceptron calls, and each caller gets exactly its own rows', async () => {
    const channel = openChannel(mesh.balancer.address);
    const balancer = createMeshClient(BalancerServiceDefinition, channel);
    const session = await ort.InferenceSession.create(Buffer.from(mlp.onnx));
    try {
      const callers = 16;
      const inputs = Array.from({ length: callers }, (_, i) => Array.from({ length: (1 + (i % 3)) * 16 }, (_, j) => Math.sin(i * 31 + j)));
      const request = (x: number[]): ModelInferRequest => ({
        modelName: 'mlp',
        modelVersion: '1',
        id: '',
        parameters: {},
        inputs: [{ name: 'x', datatype: 'FP32', shape: [x.length / 16, 16], parameters: {}, contents: contents(x) }],
        outputs: [],
        rawInputContents: [],
      });
      const model = mesh.workers[0].models.get('mlp', '1')!;
      const before = model.batchStats!();
      const answers = await Promise.all(
        inputs.map(async (x) => {
          const [out] = await collect(balancer.route({ task: { requestId: 'b', request: { $case: 'infer', infer: request(x) } } as Task }));
          return (out.output!.output as { inferResponse: ModelInferResponse }).inferResponse;
        }),
      );
      const after = model.batchStats!();
      expect(after.rows - before.rows).to.equal(inputs.reduce((n, x) => n + x.length / 16, 0));
      expect(after.batches - before.batches, 'batches run').to.be.lessThan(callers);
      for (const [i, x] of inputs.entries()) {
        const alone = await session.run({ x: new ort.Tensor('float32', Float32Array.from(x), [x.length / 16, 16]) });
        const expected = Array.from(alone.probabilities.data as Float32Array);
        expect(answers[i].outputs[0].shape).to.deep.equal([x.length / 16, 4]);
        answers[i].outputs[0].contents!.fp32Contents.forEach((v, k) => expect(v).to.be.closeTo(expected[k], 1e-6));
      }
    } finally {
      channel.close();
      await session.release();
    }
  });
});
