import { expect } from 'chai';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RepositoryError, parseModelConfig, planModel, scanRepository, selectVersions } from '../../services/worker/repository';

/** The message of the RepositoryError `run` throws, with its kind checked. */
function refusal(run: () => unknown, kind: RepositoryError['kind'] = 'invalid'): string {
  try {
    run();
  } catch (err) {
    expect(err).to.be.instanceOf(RepositoryError);
    expect((err as RepositoryError).kind).to.equal(kind);
    return (err as RepositoryError).message;
  }
  expect.fail('the config was accepted');
}

const parse = (config: unknown) => parseModelConfig(JSON.stringify(config), 'm');

describe('model repository', () => {
  describe('config.json', () => {
    it('defaults every field when the file is absent', () => {
      expect(parseModelConfig(undefined, 'm')).to.deep.equal({ description: '', maxBatchSize: 0, inputs: [], outputs: [], labels: [], versionPolicy: { latest: 1 } });
    });

    it("reads the plan's example: Triton and protocol data types, batching, labels, policy, parameters", () => {
      const c = parse({
        description: 'one line',
        max_batch_size: 64,
        input: [{ name: 'x', data_type: 'TYPE_FP32', dims: [4] }],
        output: [{ name: 'p', data_type: 'FP32', dims: [3] }, { name: 's', data_type: 'TYPE_STRING' }],
        dynamic_batching: { max_queue_delay_microseconds: 2000, preferred_batch_size: [8, 16] },
        labels: ['a', 'b', 'c'],
        version_policy: { specific: { versions: [1, 3] } },
        parameters: { intra_op_threads: 2, text_input: 'x', text_tokenizer: 'words_lowercase' },
      });
      expect(c).to.deep.include({ description: 'one line', maxBatchSize: 64, labels: ['a', 'b', 'c'], versionPolicy: { specific: [1, 3] }, intraOpThreads: 2, textInput: 'x', textTokenizer: 'words_lowercase' });
      expect(c.inputs).to.deep.equal([{ name: 'x', datatype: 'FP32', dims: [4] }]);
      expect(c.outputs).to.deep.equal([{ name: 'p', datatype: 'FP32', dims: [3] }, { name: 's', datatype: 'BYTES' }]);
      expect(c.dynamicBatching).to.deep.equal({ maxQueueDelayMs: 2, preferredBatchSizes: [8, 16] });
      expect(parse({ parameters: { intra_op_threads: { string_value: '3' } } }).intraOpThreads).to.equal(3);
    });

    const cases: [string, unknown, string][] = [
      ['invalid JSON', undefined, 'config.json of model "m": is not valid JSON'],
      ['an unknown field', { max_batch: 4 }, 'config.json of model "m": unknown field "max_batch"'],
      ['a negative max_batch_size', { max_batch_size: -1 }, 'config.json of model "m": max_batch_size must be an integer from 0 to 1048576, given -1'],
      ['an unknown data type', { input: [{ name: 'x', data_type: 'TYPE_FLOAT' }] }, 'config.json of model "m": input[0].data_type must be one of BOOL'],
      ['BF16', { input: [{ name: 'x', data_type: 'TYPE_BF16' }] }, 'config.json of model "m": input[0].data_type BF16 is not supported'],
      ['a dimension below -1', { input: [{ name: 'x', dims: [-2] }] }, 'config.json of model "m": input[0].dims[0] must be an integer from -1'],
      ['a tensor named twice', { output: [{ name: 'y' }, { name: 'y' }] }, 'config.json of model "m": output[1].name "y" is declared twice'],
      ['dynamic batching without a batch dimension', { dynamic_batching: {} }, 'config.json of model "m": dynamic_batching needs max_batch_size > 0, given 0'],
      ['a preferred batch size over max_batch_size', { max_batch_size: 4, dynamic_batching: { preferred_batch_size: [8] } }, 'config.json of model "m": dynamic_batching.preferred_batch_size[0] must be an integer from 1 to 4, given 8'],
      ['a repeated label', { labels: ['a', 'a'] }, 'config.json of model "m": labels must not repeat a label'],
      ['a version policy of two kinds', { version_policy: { all: {}, latest: {} } }, 'config.json of model "m": version_policy must be one of'],
      ['num_versions 0', { version_policy: { latest: { num_versions: 0 } } }, 'config.json of model "m": version_policy.latest.num_versions must be an integer from 1 to 1000, given 0'],
      ['an unknown parameter', { parameters: { threads: 2 } }, 'config.json of model "m": parameters has unknown key "threads"'],
      ['too many threads', { parameters: { intra_op_threads: 1000 } }, 'config.json of model "m": parameters.intra_op_threads must be an integer from 1 to 256, given 1000'],
      ['an unknown tokenizer', { parameters: { text_tokenizer: 'bpe' } }, 'config.json of model "m": parameters.text_tokenizer must be "words_lowercase", given "bpe"'],
      ['a name that is not the folder', { name: 'other' }, 'config.json of model "m": name must be the folder\'s name "m", given "other"'],
      ['another platform', { platform: 'tensorflow_savedmodel' }, 'config.json of model "m": platform must be "onnxruntime_onnx"'],
    ];
    for (const [what, config, message] of cases) {
      it(`refuses ${what}, naming the field`, () => {
        const text = config === undefined ? '{ nope' : JSON.stringify(config);
        expect(refusal(() => parseModelConfig(text, 'm'))).to.contain(message);
      });
    }
  });

  it('selects versions by policy', () => {
    expect(selectVersions([3, 1, 2], { latest: 1 })).to.deep.equal([3]);
    expect(selectVersions([3, 1, 2], { latest: 2 })).to.deep.equal([2, 3]);
    expect(selectVersions([3, 1, 2], { all: true })).to.deep.equal([1, 2, 3]);
    expect(selectVersions([3, 1, 2], { specific: [2, 9] })).to.deep.equal([2]);
  });

  describe('on disk', () => {
    let root: string;
    beforeEach(() => {
      root = mkdtempSync(join(tmpdir(), 'maas-repo-unit-'));
    });
    afterEach(() => rmSync(root, { recursive: true, force: true }));

    const file = (path: string, text = 'x') => {
      mkdirSync(join(root, path, '..'), { recursive: true });
      writeFileSync(join(root, path), text);
    };

    it('a missing repository has no models', async () => {
      expect(await scanRepository(join(root, 'absent'))).to.deep.equal([]);
    });

    it('finds version folders that hold a model.onnx, ignoring other entries', async () => {
      file('a/1/model.onnx');
      file('a/10/model.onnx');
      file('a/02/model.onnx');
      file('a/3/other.onnx');
      file('b/config.json', '{}');
      file('notes.txt');
      expect(await scanRepository(root)).to.deep.equal([
        { name: 'a', versions: [1, 10] },
        { name: 'b', versions: [] },
      ]);
    });

    it('plans the versions the policy selects; refuses a missing folder (not_found) and a model with nothing to serve', async () => {
      file('a/1/model.onnx');
      file('a/2/model.onnx');
      file('a/config.json', JSON.stringify({ version_policy: { specific: { versions: [7] } } }));
      file('b/config.json', '{}');
      const plan = (name: string) => planModel(root, name);
      const message = async (name: string, kind: RepositoryError['kind']) => {
        const err = await plan(name).then(() => expect.fail('planned'), (e: RepositoryError) => e);
        expect(err.kind).to.equal(kind);
        return err.message;
      };
      expect(await message('a', 'invalid')).to.equal('model "a": version_policy selects none of the versions present (1, 2)');
      expect(await message('b', 'invalid')).to.equal('model "b" has no version folder <n>/model.onnx');
      expect(await message('zz', 'not_found')).to.equal('model "zz" is not a folder of the model repository');
      expect(await message('../a', 'not_found')).to.match(/^model "..\/a" is not a folder of the model repository/);
      file('a/config.json', '{}');
      expect((await plan('a')).versions.map((v) => v.version)).to.deep.equal([2]);
    });
  });
});
