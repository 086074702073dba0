/**
 * An outside client of the KServe v2 protocol: Debian's own /usr/bin/python3 with grpcio, stubs
 * generated at test time from proto/inference/grpc_service.proto, calling ServerMetadata,
 * ModelMetadata and ModelInfer (typed and raw) on spam-nb through a real mesh. Skips, saying why,
 * only where /usr/bin/python3 lacks grpc and MAAS_REQUIRE_PYTHON_GRPC is unset (.ci/run installs
 * python3-grpcio and python3-grpc-tools and sets it, so CI never skips).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { TestMesh, startMesh } from '../support';

const run = promisify(execFile);
const PYTHON = '/usr/bin/python3';
const ROOT = resolve(__dirname, '../../..');

async function pythonHasGrpc(): Promise<boolean> {
  try {
    await run(PYTHON, ['-c', 'import grpc, grpc_tools.protoc']);
    return true;
  } catch {
    return false;
  }
}

describe('a Python KServe v2 client (Debian python3 + grpcio)', function () {
  this.timeout(120000);
  let mesh: TestMesh | undefined;
  let stubs: string | undefined;

  before(async function () {
    if (!(await pythonHasGrpc())) {
      if (process.env.MAAS_REQUIRE_PYTHON_GRPC) throw new Error(`${PYTHON} cannot import grpc and grpc_tools, and MAAS_REQUIRE_PYTHON_GRPC is set: install python3-grpcio and python3-grpc-tools`);
      // eslint-disable-next-line no-console
      console.log(`    skipped: ${PYTHON} cannot import grpc (apt-get install python3-grpcio python3-grpc-tools)`);
      this.skip();
    }
    stubs = mkdtempSync(join(tmpdir(), 'maas-kserve-py-'));
    await run(PYTHON, ['-m', 'grpc_tools.protoc', `-I${join(ROOT, 'proto')}`, `--python_out=${stubs}`, `--grpc_python_out=${stubs}`, join(ROOT, 'proto/inference/grpc_service.proto')]);
    mesh = await startMesh({ workers: [{ builtin: true }] });
  });
  after(async () => {
    await mesh?.stop();
    if (stubs) rmSync(stubs, { recursive: true, force: true });
  });

  it('reads the server and model metadata and gets the same labels as Predict, typed and raw', async () => {
    const spam = 'WIN A FREE PRIZE NOW!!! Click here to claim your cash reward';
    const ham = 'Hi Bob, the patch for the kernel build is attached; can you review it before the meeting tomorrow?';
    const { stdout } = await run(PYTHON, [join(ROOT, 'test/python/kserve_client.py'), stubs!, mesh!.gateway.address, 'spam-nb', spam, ham], { timeout: 60000 });
    const out = JSON.parse(stdout);
    const version = (require(join(ROOT, 'package.json')) as { version: string }).version;
    expect(out.server).to.deep.equal({ name: 'maas-mesh', version, extensions: ['model_repository'] });
    expect(out.model).to.deep.include({ name: 'spam-nb', platform: 'maas_builtin', inputs: [['text', 'BYTES', [-1]]] });
    expect(out.model.outputs).to.deep.equal([
      ['label', 'BYTES', [-1]],
      ['probabilities', 'FP64', [-1, 2]],
    ]);
    const viaPredict = await Promise.all([spam, ham].map((input) => mesh!.inference.predict({ model: 'spam-nb', input, priority: 0 })));
    const labels = viaPredict.map((p) => p.label);
    expect(labels).to.deep.equal(['spam', 'ham']);
    expect([out.typed.id, out.typed.raw, out.typed.outputs.label]).to.deep.equal(['typed-1', false, ['BYTES', [2], labels]]);
    expect([out.raw.id, out.raw.raw, out.raw.outputs.label]).to.deep.equal(['raw-1', true, ['BYTES', [2], labels]]);
    for (const answer of [out.typed, out.raw]) {
      const [datatype, shape, p] = answer.outputs.probabilities as [string, number[], number[]];
      expect([datatype, shape]).to.deep.equal(['FP64', [2, 2]]);
      expect(p[0] + p[1]).to.be.closeTo(1, 1e-9);
      expect(p[2] + p[3]).to.be.closeTo(1, 1e-9);
    }
  });
});
