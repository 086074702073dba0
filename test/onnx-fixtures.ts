/**
 * Tiny ONNX graphs for the worker's tests, written with onnx-proto (no download): an Add model
 * with a dynamic batch dimension, and a keyword classifier over BYTES tokens.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { onnx } from 'onnx-proto';

const FLOAT = onnx.TensorProto.DataType.FLOAT;
const STRING = onnx.TensorProto.DataType.STRING;
const INT64 = onnx.TensorProto.DataType.INT64;

type Dim = number | string;

function valueInfo(name: string, elemType: number, dims: Dim[]): onnx.IValueInfoProto {
  return {
    name,
    type: { tensorType: { elemType, shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } } },
  };
}

function model(graph: onnx.IGraphProto): Uint8Array {
  return onnx.ModelProto.encode(
    onnx.ModelProto.create({ irVersion: 9, producerName: 'maas-test', opsetImport: [{ domain: '', version: 19 }], graph }),
  ).finish();
}

/** y = x + bias: x FP32 [batch, width] (batch symbolic), bias = [1, 2, ..., width] times `scale`. */
export function addModel(width = 3, scale = 1): Uint8Array {
  return model({
    name: 'add',
    node: [{ opType: 'Add', input: ['x', 'bias'], output: ['y'] }],
    initializer: [{ name: 'bias', dims: [width], dataType: FLOAT, floatData: Array.from({ length: width }, (_, i) => (i + 1) * scale) }],
    input: [valueInfo('x', FLOAT, ['batch', width])],
    output: [valueInfo('y', FLOAT, ['batch', width])],
  });
}

/**
 * A keyword classifier: tokens BYTES [batch, n] -> probabilities FP32 [batch, 2], where the second
 * column (spam) grows with the count of `keyword` among the tokens: softmax(count * [-1, 1]).
 */
export function keywordModel(keyword = 'win'): Uint8Array {
  return model({
    name: 'keyword',
    node: [
      { opType: 'Equal', input: ['tokens', 'keyword'], output: ['hit'] },
      { opType: 'Cast', input: ['hit'], output: ['hitf'], attribute: [{ name: 'to', type: onnx.AttributeProto.AttributeType.INT, i: FLOAT }] },
      { opType: 'ReduceSum', input: ['hitf', 'axes'], output: ['count'], attribute: [{ name: 'keepdims', type: onnx.AttributeProto.AttributeType.INT, i: 1 }] },
      { opType: 'Mul', input: ['count', 'sign'], output: ['logits'] },
      { opType: 'Softmax', input: ['logits'], output: ['probabilities'], attribute: [{ name: 'axis', type: onnx.AttributeProto.AttributeType.INT, i: -1 }] },
    ],
    initializer: [
      { name: 'keyword', dims: [], dataType: STRING, stringData: [Buffer.from(keyword)] },
      { name: 'axes', dims: [1], dataType: INT64, int64Data: [1] },
      { name: 'sign', dims: [1, 2], dataType: FLOAT, floatData: [-1, 1] },
    ],
    input: [valueInfo('tokens', STRING, ['batch', 'n'])],
    output: [valueInfo('probabilities', FLOAT, ['batch', 2])],
  });
}

/** The ONNX element type of each protocol data type. */
export const ONNX_TYPES = {
  BOOL: onnx.TensorProto.DataType.BOOL,
  UINT8: onnx.TensorProto.DataType.UINT8,
  UINT16: onnx.TensorProto.DataType.UINT16,
  UINT32: onnx.TensorProto.DataType.UINT32,
  UINT64: onnx.TensorProto.DataType.UINT64,
  INT8: onnx.TensorProto.DataType.INT8,
  INT16: onnx.TensorProto.DataType.INT16,
  INT32: onnx.TensorProto.DataType.INT32,
  INT64: onnx.TensorProto.DataType.INT64,
  FP16: onnx.TensorProto.DataType.FLOAT16,
  FP32: onnx.TensorProto.DataType.FLOAT,
  FP64: onnx.TensorProto.DataType.DOUBLE,
  BYTES: onnx.TensorProto.DataType.STRING,
} as const;

/** For every data type T (of `only`, default all): input `in_T` [-1] passed through Identity to output `out_T`. */
export function identityModel(only?: readonly string[]): Uint8Array {
  const types = Object.entries(ONNX_TYPES).filter(([t]) => !only || only.includes(t));
  return model({
    name: 'identity',
    node: types.map(([t]) => ({ opType: 'Identity', input: [`in_${t}`], output: [`out_${t}`] })),
    input: types.map(([t, e]) => valueInfo(`in_${t}`, e, ['n'])),
    output: types.map(([t, e]) => valueInfo(`out_${t}`, e, ['n'])),
  });
}

/** Writes `<root>/<name>/<version>/model.onnx` (and config.json when given). */
export function writeModel(root: string, name: string, version: number, bytes: Uint8Array, config?: object): void {
  mkdirSync(join(root, name, String(version)), { recursive: true });
  writeFileSync(join(root, name, String(version), 'model.onnx'), bytes);
  if (config) writeFileSync(join(root, name, 'config.json'), JSON.stringify(config));
}
