/**
 * A small writer of ONNX models over the `onnx-proto` protobuf definitions: typed inputs and
 * outputs (dynamic dimensions by name), initializers as raw little-endian bytes, nodes with
 * attributes, and one deterministic encoding (same graph, same bytes).
 */
import { endianness } from 'node:os';
import { onnx } from 'onnx-proto';

/** ONNX element types used here (values of `TensorProto.DataType`). */
export const OnnxType = {
  FLOAT: onnx.TensorProto.DataType.FLOAT,
  INT64: onnx.TensorProto.DataType.INT64,
  STRING: onnx.TensorProto.DataType.STRING,
  DOUBLE: onnx.TensorProto.DataType.DOUBLE,
} as const;

/** One dimension of a declared shape: a fixed size, or a name for a dynamic one (`batch`). */
export type Dim = number | string;

/** An attribute value: the type is taken from the JS value (number: int unless `float()` wraps it). */
export type AttributeValue = number | string | readonly number[] | readonly string[] | { readonly float: number } | { readonly floats: readonly number[] };

/** Marks a number attribute as a float (plain numbers are ints). */
export const float = (value: number): { float: number } => ({ float: value });
/** Marks a list attribute as floats (plain number lists are ints). */
export const floats = (values: readonly number[]): { floats: readonly number[] } => ({ floats: values });

/** A node of the graph: `op` from the default ONNX domain unless `domain` says otherwise. */
export interface NodeSpec {
  readonly op: string;
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  readonly name?: string;
  readonly domain?: string;
  readonly attributes?: Readonly<Record<string, AttributeValue>>;
}

/** A declared graph input or output. */
export interface ValueSpec {
  readonly name: string;
  readonly type: number;
  readonly dims: readonly Dim[];
}

/** A constant tensor stored in the model. */
export interface InitializerSpec {
  readonly name: string;
  readonly type: typeof OnnxType.FLOAT | typeof OnnxType.DOUBLE | typeof OnnxType.INT64;
  readonly dims: readonly number[];
  readonly values: Float32Array | Float64Array | BigInt64Array;
}

/** Everything a model is made of. */
export interface ModelSpec {
  readonly graphName: string;
  readonly docString: string;
  readonly inputs: readonly ValueSpec[];
  readonly outputs: readonly ValueSpec[];
  readonly initializers: readonly InitializerSpec[];
  readonly nodes: readonly NodeSpec[];
  /** Opset of the default domain (13: Softmax over one axis, MatMul/Gemm/Cast/Add as used here). */
  readonly opset?: number;
  /** Free key/value metadata stored in the model (shown by tools such as Netron). */
  readonly metadata?: Readonly<Record<string, string>>;
}

/** IR version 8 (ONNX 1.10), the newest the `onnx-proto` definitions know; ONNX Runtime reads it. */
const IR_VERSION = 8;

/** Encodes the model as ONNX protobuf bytes. */
export function encodeModel(spec: ModelSpec): Uint8Array {
  const model: onnx.IModelProto = {
    irVersion: IR_VERSION,
    producerName: 'maas-mesh',
    producerVersion: '1',
    docString: spec.docString,
    opsetImport: [{ domain: '', version: spec.opset ?? 13 }],
    metadataProps: Object.entries(spec.metadata ?? {})
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([key, value]) => ({ key, value })),
    graph: {
      name: spec.graphName,
      input: spec.inputs.map(valueInfo),
      output: spec.outputs.map(valueInfo),
      initializer: spec.initializers.map(initializer),
      node: spec.nodes.map((node, i) => ({
        opType: node.op,
        name: node.name ?? `${node.op}_${i}`,
        domain: node.domain ?? '',
        input: [...node.inputs],
        output: [...node.outputs],
        attribute: Object.entries(node.attributes ?? {}).map(([name, value]) => attribute(name, value)),
      })),
    },
  };
  const error = onnx.ModelProto.verify(model);
  if (error) throw new Error(`invalid ONNX model ${spec.graphName}: ${error}`);
  return onnx.ModelProto.encode(model).finish();
}

function valueInfo(value: ValueSpec): onnx.IValueInfoProto {
  return {
    name: value.name,
    type: {
      tensorType: {
        elemType: value.type,
        shape: { dim: value.dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

function initializer(spec: InitializerSpec): onnx.ITensorProto {
  const elements = spec.dims.reduce((product, d) => product * d, 1);
  if (spec.values.length !== elements) {
    throw new Error(`initializer ${spec.name} of shape [${spec.dims.join(', ')}] needs ${elements} values, given ${spec.values.length}`);
  }
  return { name: spec.name, dataType: spec.type, dims: [...spec.dims], rawData: littleEndianBytes(spec.values) };
}

/** The values as little-endian bytes (ONNX's raw_data layout) whatever the machine's byte order. */
function littleEndianBytes(values: Float32Array | Float64Array | BigInt64Array): Uint8Array {
  if (endianness() === 'LE') return new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength));
  const bytes = new Uint8Array(values.length * values.BYTES_PER_ELEMENT);
  const view = new DataView(bytes.buffer);
  values.forEach((value: number | bigint, i: number) => {
    if (values instanceof Float32Array) view.setFloat32(i * 4, value as number, true);
    else if (values instanceof Float64Array) view.setFloat64(i * 8, value as number, true);
    else view.setBigInt64(i * 8, value as bigint, true);
  });
  return bytes;
}

function attribute(name: string, value: AttributeValue): onnx.IAttributeProto {
  const { AttributeType } = onnx.AttributeProto;
  if (typeof value === 'number') return { name, type: AttributeType.INT, i: value };
  if (typeof value === 'string') return { name, type: AttributeType.STRING, s: Buffer.from(value, 'utf8') };
  if ('float' in value) return { name, type: AttributeType.FLOAT, f: value.float };
  if ('floats' in value) return { name, type: AttributeType.FLOATS, floats: [...value.floats] };
  if (value.every((v): v is number => typeof v === 'number')) return { name, type: AttributeType.INTS, ints: [...value] };
  return { name, type: AttributeType.STRINGS, strings: (value as readonly string[]).map((s) => Buffer.from(s, 'utf8')) };
}
