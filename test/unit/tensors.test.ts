import { expect } from 'chai';
import {
  type ContentsLike,
  checkInferRequest,
  decodeBytesRaw,
  decodeInputs,
  elementCount,
  encodeBytesRaw,
  encodeOutputs,
  type InferRequestLike,
  type TensorModelLike,
} from '../../common/tensors.js';
import { refusal } from '../refusal.js';

function contents(fields: Partial<ContentsLike> = {}): ContentsLike {
  return { boolContents: [], intContents: [], int64Contents: [], uintContents: [], uint64Contents: [], fp32Contents: [], fp64Contents: [], bytesContents: [], ...fields };
}

const model: TensorModelLike = {
  name: 'mlp',
  maxBatchSize: 8,
  inputs: [
    { name: 'x', datatype: 'FP32', shape: [-1, 3] },
    { name: 'mask', datatype: 'BOOL', shape: [-1, 3] },
  ],
  outputs: [{ name: 'y', datatype: 'FP32', shape: [-1, 2] }],
};

function request(overrides: Partial<InferRequestLike> = {}): InferRequestLike {
  return {
    modelName: 'mlp',
    inputs: [
      { name: 'x', datatype: 'FP32', shape: [2, 3], contents: contents({ fp32Contents: [1, 2, 3, 4, 5, 6] }) },
      { name: 'mask', datatype: 'BOOL', shape: [2, 3], contents: contents({ boolContents: [true, false, true, true, true, false] }) },
    ],
    outputs: [],
    rawInputContents: [],
    ...overrides,
  };
}

function rawRequest(x: Buffer, mask: Buffer, shape = [2, 3]): InferRequestLike {
  return request({
    inputs: [
      { name: 'x', datatype: 'FP32', shape },
      { name: 'mask', datatype: 'BOOL', shape },
    ],
    rawInputContents: [x, mask],
  });
}

describe('tensors (KServe v2 contents and checks)', () => {
  it('counts elements of a shape (a scalar has one)', () => {
    expect(elementCount([2, 3, 4])).to.equal(24);
    expect(elementCount([])).to.equal(1);
    expect(elementCount([5, 0])).to.equal(0);
  });

  it('accepts a request that matches the model, typed and raw', () => {
    checkInferRequest(request(), model);
    checkInferRequest(rawRequest(Buffer.alloc(24), Buffer.alloc(6)), model);
  });

  it('refuses an unknown input, naming it and the inputs the model takes', () => {
    const r = request();
    r.inputs[1].name = 'z';
    expect(refusal(() => checkInferRequest(r, model))).to.equal('inputs[1] "z" is not an input of model "mlp"; its inputs are x, mask');
  });

  it('refuses too many inputs', () => {
    const r = request();
    r.inputs.push({ ...r.inputs[0] });
    expect(refusal(() => checkInferRequest(r, model))).to.equal('inputs has 3 tensors, model "mlp" takes 2 (x, mask)');
  });

  it('refuses a missing input, naming it', () => {
    const r = request();
    r.inputs.pop();
    expect(refusal(() => checkInferRequest(r, model))).to.equal('input "mask" is missing: model "mlp" takes x, mask, given x');
  });

  it('refuses an input given twice', () => {
    const r = request();
    r.inputs[1] = { ...r.inputs[0] };
    expect(refusal(() => checkInferRequest(r, model))).to.equal('inputs[1] "x" is given twice');
  });

  it('refuses a wrong data type, naming the expected and the given', () => {
    const r = request();
    r.inputs[0].datatype = 'FP64';
    expect(refusal(() => checkInferRequest(r, model))).to.equal('inputs[0] "x": datatype must be FP32, given FP64');
  });

  it('refuses BF16 and unknown data types', () => {
    const r = request();
    r.inputs[0].datatype = 'BF16';
    expect(refusal(() => checkInferRequest(r, model))).to.match(/^inputs\[0\] "x": datatype BF16 is not supported/);
    r.inputs[0].datatype = 'FLOAT';
    expect(refusal(() => checkInferRequest(r, model))).to.match(/^inputs\[0\] "x": datatype must be one of BOOL, .*, given "FLOAT"$/);
  });

  it('refuses a wrong rank and a wrong fixed dimension', () => {
    const r = request();
    r.inputs[0].shape = [6];
    expect(refusal(() => checkInferRequest(r, model))).to.equal('inputs[0] "x": shape must have 2 dimensions as [-1, 3] (-1: any size), given [6]');
    r.inputs[0].shape = [3, 2];
    expect(refusal(() => checkInferRequest(r, model))).to.equal('inputs[0] "x": shape[1] must be 3 as in [-1, 3] (-1: any size), given [3, 2]');
  });

  it('refuses negative dimensions and a batch over max_batch_size', () => {
    const r = request();
    r.inputs[0].shape = [-2, 3];
    expect(refusal(() => checkInferRequest(r, model))).to.equal('inputs[0] "x": shape[0] must be a non-negative integer, given -2');
    r.inputs[0].shape = [9, 3];
    expect(refusal(() => checkInferRequest(r, model))).to.equal('inputs[0] "x": the batch dimension shape[0] must be at most max_batch_size 8, given 9');
  });

  it('refuses inputs whose batch sizes differ', () => {
    const r = request();
    r.inputs[1].shape = [1, 3];
    r.inputs[1].contents = contents({ boolContents: [true, true, true] });
    expect(refusal(() => checkInferRequest(r, model))).to.equal('inputs[1] "mask": shape[0] (the batch) must equal that of inputs[0] (2), given 1');
  });

  it('refuses an element count that does not match the shape', () => {
    const r = request();
    r.inputs[0].contents = contents({ fp32Contents: [1, 2, 3] });
    expect(refusal(() => checkInferRequest(r, model))).to.equal('inputs[0] "x": contents.fp32_contents must have 6 elements (the product of the shape), given 3');
  });

  it('refuses elements in the field of another type', () => {
    const r = request();
    r.inputs[0].contents = contents({ fp64Contents: [1, 2, 3, 4, 5, 6] });
    expect(refusal(() => checkInferRequest(r, model))).to.equal('inputs[0] "x": a FP32 tensor carries its elements in contents.fp32_contents, given fp64_contents');
  });

  it('refuses integers outside the range of their type', () => {
    const m: TensorModelLike = { name: 'i8', maxBatchSize: 0, inputs: [{ name: 'a', datatype: 'INT8', shape: [2] }], outputs: [] };
    const r: InferRequestLike = { modelName: 'i8', outputs: [], rawInputContents: [], inputs: [{ name: 'a', datatype: 'INT8', shape: [2], contents: contents({ intContents: [1, 300] }) }] };
    expect(refusal(() => checkInferRequest(r, m))).to.equal('inputs[0] "a": contents.int_contents[1] must be within INT8\'s range -128..127, given 300');
  });

  it('refuses a raw byte length that does not match the shape', () => {
    expect(refusal(() => checkInferRequest(rawRequest(Buffer.alloc(20), Buffer.alloc(6)), model))).to.equal(
      'inputs[0] "x": raw_input_contents must be 24 bytes (6 FP32 elements of 4 bytes), given 20 bytes',
    );
  });

  it('refuses raw contents with one entry per input missing, and typed contents beside raw', () => {
    const r = rawRequest(Buffer.alloc(24), Buffer.alloc(6));
    r.rawInputContents.pop();
    expect(refusal(() => checkInferRequest(r, model))).to.equal('raw_input_contents must have one entry per input (2), given 1');
    const both = rawRequest(Buffer.alloc(24), Buffer.alloc(6));
    both.inputs[0].contents = contents({ fp32Contents: [1] });
    expect(refusal(() => checkInferRequest(both, model))).to.equal('inputs[0] "x": contents must be empty when raw_input_contents is used, given fp32_contents');
  });

  it('refuses FP16 in typed contents', () => {
    const m: TensorModelLike = { name: 'h', maxBatchSize: 0, inputs: [{ name: 'a', datatype: 'FP16', shape: [1] }], outputs: [] };
    const r: InferRequestLike = { modelName: 'h', outputs: [], rawInputContents: [], inputs: [{ name: 'a', datatype: 'FP16', shape: [1], contents: contents() }] };
    expect(refusal(() => checkInferRequest(r, m))).to.equal('inputs[0] "a": FP16 elements can only be sent in raw_input_contents');
  });

  it('refuses an unknown requested output', () => {
    expect(refusal(() => checkInferRequest(request({ outputs: [{ name: 'q' }] }), model))).to.equal('outputs[0] "q" is not an output of model "mlp"; its outputs are y');
  });

  describe('BYTES raw contents', () => {
    const m: TensorModelLike = { name: 'b', maxBatchSize: 0, inputs: [{ name: 't', datatype: 'BYTES', shape: [-1] }], outputs: [] };
    const r = (raw: Buffer, n: number): InferRequestLike => ({ modelName: 'b', outputs: [], rawInputContents: [raw], inputs: [{ name: 't', datatype: 'BYTES', shape: [n] }] });

    it('round-trips length-prefixed elements', () => {
      const items = [Buffer.from('win'), Buffer.from(''), Buffer.from('money')];
      const raw = encodeBytesRaw(items);
      expect(raw.length).to.equal(3 * 4 + 8);
      expect(decodeBytesRaw(raw, 'f', 3).map(String)).to.deep.equal(['win', '', 'money']);
      checkInferRequest(r(raw, 3), m);
    });

    it('refuses a length prefix that runs past the end', () => {
      const raw = Buffer.concat([Buffer.from([10, 0, 0, 0]), Buffer.from('abc')]);
      expect(refusal(() => checkInferRequest(r(raw, 1), m))).to.equal('inputs[0] "t": raw_input_contents: BYTES element 0 declares 10 bytes, given 3');
    });

    it('refuses a truncated length prefix and a wrong element count', () => {
      const raw = Buffer.concat([encodeBytesRaw([Buffer.from('a')]), Buffer.from([1, 0])]);
      expect(refusal(() => checkInferRequest(r(raw, 2), m))).to.equal('inputs[0] "t": raw_input_contents: BYTES element 1 needs a 4-byte length at byte 5, given 2 bytes');
      expect(refusal(() => checkInferRequest(r(encodeBytesRaw([Buffer.from('a')]), 2), m))).to.equal(
        'inputs[0] "t": raw_input_contents must hold 2 BYTES elements (the product of the shape), given 1',
      );
      expect(refusal(() => checkInferRequest(r(encodeBytesRaw([Buffer.from('a'), Buffer.from('b')]), 1), m))).to.equal(
        'inputs[0] "t": raw_input_contents must hold 1 BYTES elements, given 5 bytes after the last one',
      );
    });
  });

  it('decodes typed and raw contents to the same typed arrays', () => {
    const x = Float32Array.from([1, 2, 3, 4, 5, 6]);
    const typed = decodeInputs(request());
    const raw = decodeInputs(rawRequest(Buffer.from(x.buffer), Buffer.from([1, 0, 1, 1, 1, 0])));
    expect(typed[0].data).to.deep.equal(x);
    expect(raw[0].data).to.deep.equal(x);
    expect(Array.from(typed[1].data as Uint8Array)).to.deep.equal([1, 0, 1, 1, 1, 0]);
    expect(Array.from(raw[1].data as Uint8Array)).to.deep.equal([1, 0, 1, 1, 1, 0]);
  });

  it('decodes raw from an unaligned buffer slice', () => {
    const backing = Buffer.alloc(25);
    Buffer.from(Float32Array.from([1, 2, 3, 4, 5, 6]).buffer).copy(backing, 1);
    const out = decodeInputs(rawRequest(backing.subarray(1), Buffer.alloc(6)));
    expect(Array.from(out[0].data as Float32Array)).to.deep.equal([1, 2, 3, 4, 5, 6]);
  });

  it('encodes outputs typed or raw; FP16 is always raw', () => {
    const y = { name: 'y', datatype: 'INT64' as const, shape: [2], data: BigInt64Array.from([5n, -7n]) };
    const typed = encodeOutputs([y], false);
    expect(typed.rawOutputContents).to.deep.equal([]);
    expect(typed.outputs[0].contents!.int64Contents).to.deep.equal([5, -7]);
    const raw = encodeOutputs([y], true);
    expect(raw.outputs[0].contents).to.equal(undefined);
    expect(new BigInt64Array(new Uint8Array(raw.rawOutputContents[0]).buffer)).to.deep.equal(y.data);
    const half = encodeOutputs([y, { name: 'h', datatype: 'FP16', shape: [1], data: Uint16Array.from([0x3c00]) }], false);
    expect(half.rawOutputContents.length).to.equal(2);
  });
});
