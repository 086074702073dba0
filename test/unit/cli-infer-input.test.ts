import { expect } from 'chai';
import { inputsFromJson, outputsToJson } from '../../gateway/cli/infer-input';
import { encodeBytesRaw } from '../../common/tensors';

const specs = [
  { name: 'x', datatype: 'FP32', shape: [-1, 4] },
  { name: 'text', datatype: 'BYTES', shape: [-1] },
  { name: 'n', datatype: 'INT64', shape: [-1] },
];

describe('maas infer: JSON to tensors and back', () => {
  it('takes the shape from the nesting and the data type from the model', () => {
    const [x, text] = inputsFromJson({ x: [[1, 2, 3, 4], [5, 6, 7, 8]], text: ['hi', 'there'] }, specs);
    expect([x.datatype, x.shape, x.contents!.fp32Contents]).to.deep.equal(['FP32', [2, 4], [1, 2, 3, 4, 5, 6, 7, 8]]);
    expect([text.datatype, text.shape, text.contents!.bytesContents.map(String)]).to.deep.equal(['BYTES', [2], ['hi', 'there']]);
  });

  it('takes an explicit {datatype, shape, data} with flat data', () => {
    const [n] = inputsFromJson({ n: { datatype: 'INT64', shape: [1, 3], data: [1, 2, 3] } }, specs);
    expect([n.shape, n.contents!.int64Contents]).to.deep.equal([[1, 3], [1, 2, 3]]);
  });

  it('refuses ragged rows, a shape that does not match the data, an unknown input and a non-number, naming the input', () => {
    expect(() => inputsFromJson({ x: [[1, 2], [3]] }, specs)).to.throw('--input "x": rows of a nested array must all have the shape [2], given [1]');
    expect(() => inputsFromJson({ n: { shape: [4], data: [1] } }, specs)).to.throw('--input "n": shape [4] needs 4 elements, given 1');
    expect(() => inputsFromJson({ y: [1] }, specs)).to.throw('--input "y" is not an input of the model');
    expect(() => inputsFromJson({ n: [1, 'a'] }, specs)).to.throw('--input "n": element 1 must be a number, given "a"');
  });

  it('prints typed and raw outputs alike, nested by their shape, BYTES as text', () => {
    const typed = outputsToJson({
      outputs: [{ name: 'p', datatype: 'FP64', shape: [2, 2], contents: { boolContents: [], intContents: [], int64Contents: [], uintContents: [], uint64Contents: [], fp32Contents: [], fp64Contents: [0.25, 0.75, 1, 0], bytesContents: [] } }],
      rawOutputContents: [],
    });
    expect(typed).to.deep.equal({ p: { datatype: 'FP64', shape: [2, 2], data: [[0.25, 0.75], [1, 0]] } });
    const raw = outputsToJson({
      outputs: [
        { name: 'label', datatype: 'BYTES', shape: [2] },
        { name: 'k', datatype: 'INT32', shape: [2] },
      ],
      rawOutputContents: [encodeBytesRaw([Buffer.from('spam'), Buffer.from('ham')]), Buffer.from(new Int32Array([7, -1]).buffer)],
    });
    expect(raw).to.deep.equal({ label: { datatype: 'BYTES', shape: [2], data: ['spam', 'ham'] }, k: { datatype: 'INT32', shape: [2], data: [7, -1] } });
  });
});
