/**
 * Tensors of the KServe v2 / Open Inference Protocol: data types, element counts, typed and raw
 * contents, and the checks of a request against a model's tensor specs. Pure: no gRPC, no
 * generated code (the interfaces below are structural, so the generated messages fit them), no
 * ONNX Runtime. The gateway validates requests with it; the worker decodes and encodes with it.
 *
 * API:
 * - `DATATYPES`, `isDataType(s)`, `bytesPerElement(dt)` (undefined for BYTES), `elementCount(shape)`.
 * - `checkInferRequest(request, model)`: every check a ModelInferRequest gets against the model's
 *   inputs/outputs/max_batch_size: names (unknown, duplicate, missing, too many), data types
 *   (BF16 and unknown types refused), shapes (rank, fixed dims, -1 any, batch <= max_batch_size),
 *   contents (the field that matches the type, element counts, integer ranges), raw byte lengths
 *   (BYTES raw = 4-byte LE length + bytes per element), requested output names. Throws
 *   `MeshError('invalid_argument')` whose message names the input (`inputs[0] "x"`), what was
 *   expected and what was given.
 * - `decodeInputs(request)`: the inputs as {@link Tensor}s (typed arrays; BYTES as Buffer[]),
 *   for a request that passed the checks.
 * - `encodeOutputs(tensors, raw)`: output tensors and raw_output_contents for a response.
 * - `encodeBytesRaw(items)` / `decodeBytesRaw(buffer, field)`: the BYTES raw format.
 */
import { MeshError, quoteInput } from './errors';

/** The protocol's data types that the mesh serves (BF16 is refused: ONNX Runtime for Node lacks it). */
export const DATATYPES = ['BOOL', 'UINT8', 'UINT16', 'UINT32', 'UINT64', 'INT8', 'INT16', 'INT32', 'INT64', 'FP16', 'FP32', 'FP64', 'BYTES'] as const;
export type DataType = (typeof DATATYPES)[number];

const DATATYPE_SET: ReadonlySet<string> = new Set(DATATYPES);

/** True if `s` is one of {@link DATATYPES}. */
export function isDataType(s: string): s is DataType {
  return DATATYPE_SET.has(s);
}

const BYTES_PER_ELEMENT: Record<Exclude<DataType, 'BYTES'>, number> = {
  BOOL: 1,
  UINT8: 1,
  UINT16: 2,
  UINT32: 4,
  UINT64: 8,
  INT8: 1,
  INT16: 2,
  INT32: 4,
  INT64: 8,
  FP16: 2,
  FP32: 4,
  FP64: 8,
};

/** Size of one element in raw contents; undefined for BYTES (variable length). */
export function bytesPerElement(dt: DataType): number | undefined {
  return dt === 'BYTES' ? undefined : BYTES_PER_ELEMENT[dt];
}

/** The typed-contents field that carries a data type's elements (FP16 has none: raw only). */
export type ContentsField = 'boolContents' | 'intContents' | 'int64Contents' | 'uintContents' | 'uint64Contents' | 'fp32Contents' | 'fp64Contents' | 'bytesContents';

const CONTENTS_FIELD: Record<DataType, ContentsField | undefined> = {
  BOOL: 'boolContents',
  INT8: 'intContents',
  INT16: 'intContents',
  INT32: 'intContents',
  INT64: 'int64Contents',
  UINT8: 'uintContents',
  UINT16: 'uintContents',
  UINT32: 'uintContents',
  UINT64: 'uint64Contents',
  FP16: undefined,
  FP32: 'fp32Contents',
  FP64: 'fp64Contents',
  BYTES: 'bytesContents',
};

/** The proto name of a contents field (as messages show it). */
const PROTO_FIELD: Record<ContentsField, string> = {
  boolContents: 'bool_contents',
  intContents: 'int_contents',
  int64Contents: 'int64_contents',
  uintContents: 'uint_contents',
  uint64Contents: 'uint64_contents',
  fp32Contents: 'fp32_contents',
  fp64Contents: 'fp64_contents',
  bytesContents: 'bytes_contents',
};

/** The typed-contents field for a data type; undefined for FP16 (raw only). */
export function contentsField(dt: DataType): ContentsField | undefined {
  return CONTENTS_FIELD[dt];
}

/** Inclusive integer ranges for the types carried in 32-bit contents fields. */
const INT_RANGE: Partial<Record<DataType, [number, number]>> = {
  INT8: [-128, 127],
  INT16: [-32768, 32767],
  INT32: [-2147483648, 2147483647],
  UINT8: [0, 255],
  UINT16: [0, 65535],
  UINT32: [0, 4294967295],
};

/** Number of elements of a shape (1 for a scalar []). */
export function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** A tensor's description, as maas.v1.TensorSpec has it. */
export interface TensorSpecLike {
  name: string;
  datatype: string;
  shape: number[];
}

/** What the checks need to know of a model (maas.v1.Model fits). */
export interface TensorModelLike {
  name: string;
  inputs: TensorSpecLike[];
  outputs: TensorSpecLike[];
  /** > 0: the first dimension of every input and output is the batch, at most this large. */
  maxBatchSize: number;
}

/** Typed contents (inference.InferTensorContents fits). */
export interface ContentsLike {
  boolContents: boolean[];
  intContents: number[];
  int64Contents: number[];
  uintContents: number[];
  uint64Contents: number[];
  fp32Contents: number[];
  fp64Contents: number[];
  bytesContents: Buffer[];
}

/** An input tensor of a request (inference.ModelInferRequest_InferInputTensor fits). */
export interface InputTensorLike {
  name: string;
  datatype: string;
  shape: number[];
  contents?: ContentsLike | undefined;
}

/** The parts of inference.ModelInferRequest the checks read. */
export interface InferRequestLike {
  modelName: string;
  inputs: InputTensorLike[];
  outputs: { name: string }[];
  rawInputContents: Buffer[];
}

/** An output tensor of a response (inference.ModelInferResponse_InferOutputTensor fits). */
export interface OutputTensorLike {
  name: string;
  datatype: string;
  shape: number[];
  parameters: Record<string, never>;
  contents?: ContentsLike | undefined;
}

/**
 * A decoded tensor. Elements by type: BOOL and UINT8 Uint8Array (BOOL as 0/1), INT8 Int8Array,
 * INT16 Int16Array, UINT16 Uint16Array, FP16 Uint16Array (the IEEE half bits), INT32 Int32Array,
 * UINT32 Uint32Array, INT64 BigInt64Array, UINT64 BigUint64Array, FP32 Float32Array,
 * FP64 Float64Array, BYTES Buffer[].
 */
export interface Tensor {
  name: string;
  datatype: DataType;
  shape: number[];
  data: TensorData;
}

export type TensorData =
  | Uint8Array
  | Int8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | BigInt64Array
  | BigUint64Array
  | Float32Array
  | Float64Array
  | Buffer[];

/** Most tensors one request may carry (the check that names "too many inputs" uses the model's count). */
const SHOWN_NAMES = 8;

function names(specs: readonly { name: string }[]): string {
  const shown = specs.slice(0, SHOWN_NAMES).map((s) => s.name);
  return shown.join(', ') + (specs.length > SHOWN_NAMES ? `, ... (${specs.length} in all)` : '');
}

function invalid(message: string): MeshError {
  return new MeshError('invalid_argument', message);
}

/** `inputs[0] "x"`: how messages name an input. */
function inputLabel(index: number, name: string): string {
  return `inputs[${index}] ${quoteInput(name)}`;
}

function shapeText(shape: readonly number[]): string {
  const shown = shape.length > 10 ? [...shape.slice(0, 10).map(String), `... (${shape.length} dims)`] : shape.map(String);
  return `[${shown.join(', ')}]`;
}

/**
 * Checks a data type string given for a tensor; returns it typed. `label` names the tensor.
 */
export function checkDataType(label: string, given: string, expected?: string): DataType {
  if (given === 'BF16') throw invalid(`${label}: datatype BF16 is not supported (ONNX Runtime for Node has no bfloat16); use FP32 or FP16`);
  if (!isDataType(given)) throw invalid(`${label}: datatype must be one of ${DATATYPES.join(', ')}, given ${quoteInput(given)}`);
  if (expected !== undefined && given !== expected) throw invalid(`${label}: datatype must be ${expected}, given ${given}`);
  return given;
}

/**
 * Checks a shape given for a tensor against its spec (-1 in the spec matches any size) and, when
 * the model batches, its batch dimension against max_batch_size. Every dimension must be a
 * non-negative integer.
 */
export function checkShape(label: string, given: readonly number[], spec: readonly number[] | undefined, maxBatchSize = 0): void {
  given.forEach((d, i) => {
    if (!Number.isSafeInteger(d) || d < 0) throw invalid(`${label}: shape[${i}] must be a non-negative integer, given ${d}`);
  });
  if (spec === undefined) return;
  const expected = `${shapeText(spec)} (-1: any size)`;
  if (given.length !== spec.length) {
    throw invalid(`${label}: shape must have ${spec.length} dimensions as ${expected}, given ${shapeText(given)}`);
  }
  spec.forEach((d, i) => {
    if (d >= 0 && given[i] !== d) throw invalid(`${label}: shape[${i}] must be ${d} as in ${expected}, given ${shapeText(given)}`);
  });
  if (maxBatchSize > 0 && given.length > 0 && given[0] > maxBatchSize) {
    throw invalid(`${label}: the batch dimension shape[0] must be at most max_batch_size ${maxBatchSize}, given ${given[0]}`);
  }
}

/**
 * Checks one input's contents: raw bytes (when `raw` is given) or the typed field matching its
 * data type, with exactly `count` elements.
 */
export function checkContents(label: string, dt: DataType, count: number, contents: ContentsLike | undefined, raw: Buffer | undefined): void {
  if (raw !== undefined) {
    if (contents !== undefined && filledFields(contents).length > 0) {
      throw invalid(`${label}: contents must be empty when raw_input_contents is used, given ${filledFields(contents).map((f) => PROTO_FIELD[f]).join(', ')}`);
    }
    const size = bytesPerElement(dt);
    if (size === undefined) {
      decodeBytesRaw(raw, `${label}: raw_input_contents`, count);
    } else if (raw.length !== count * size) {
      throw invalid(`${label}: raw_input_contents must be ${count * size} bytes (${count} ${dt} elements of ${size} bytes), given ${raw.length} bytes`);
    }
    return;
  }
  const field = contentsField(dt);
  if (field === undefined) throw invalid(`${label}: ${dt} elements can only be sent in raw_input_contents`);
  const filled = contents === undefined ? [] : filledFields(contents);
  const others = filled.filter((f) => f !== field);
  if (others.length > 0) {
    throw invalid(`${label}: a ${dt} tensor carries its elements in contents.${PROTO_FIELD[field]}, given ${others.map((f) => PROTO_FIELD[f]).join(', ')}`);
  }
  const values = contents?.[field] ?? [];
  if (values.length !== count) {
    throw invalid(`${label}: contents.${PROTO_FIELD[field]} must have ${count} elements (the product of the shape), given ${values.length}`);
  }
  const range = INT_RANGE[dt];
  if (range !== undefined) {
    const ints = values as number[];
    for (let i = 0; i < ints.length; i++) {
      if (ints[i] < range[0] || ints[i] > range[1]) {
        throw invalid(`${label}: contents.${PROTO_FIELD[field]}[${i}] must be within ${dt}'s range ${range[0]}..${range[1]}, given ${ints[i]}`);
      }
    }
  }
}

function filledFields(contents: ContentsLike): ContentsField[] {
  return (Object.keys(PROTO_FIELD) as ContentsField[]).filter((f) => (contents[f]?.length ?? 0) > 0);
}

/**
 * Every check of a ModelInferRequest against the model: inputs by name (unknown, duplicate,
 * missing, too many), data types, shapes, contents or raw contents, requested outputs.
 * Throws MeshError('invalid_argument') naming the field, the expectation and what was given.
 */
export function checkInferRequest(request: InferRequestLike, model: TensorModelLike): void {
  const specs = new Map(model.inputs.map((s) => [s.name, s]));
  const modelName = quoteInput(model.name);
  if (request.inputs.length > model.inputs.length) {
    throw invalid(`inputs has ${request.inputs.length} tensors, model ${modelName} takes ${model.inputs.length} (${names(model.inputs)})`);
  }
  const raw = request.rawInputContents.length > 0;
  if (raw && request.rawInputContents.length !== request.inputs.length) {
    throw invalid(`raw_input_contents must have one entry per input (${request.inputs.length}), given ${request.rawInputContents.length}`);
  }
  const seen = new Set<string>();
  request.inputs.forEach((input, i) => {
    const label = inputLabel(i, input.name);
    const spec = specs.get(input.name);
    if (!spec) throw invalid(`${label} is not an input of model ${modelName}; its inputs are ${names(model.inputs)}`);
    if (seen.has(input.name)) throw invalid(`${label} is given twice`);
    seen.add(input.name);
    const dt = checkDataType(label, input.datatype, spec.datatype);
    checkShape(label, input.shape, spec.shape, model.maxBatchSize);
    checkContents(label, dt, elementCount(input.shape), input.contents, raw ? request.rawInputContents[i] : undefined);
  });
  const missing = model.inputs.filter((s) => !seen.has(s.name));
  if (missing.length > 0) {
    throw invalid(`input ${quoteInput(missing[0].name)} is missing: model ${modelName} takes ${names(model.inputs)}, given ${request.inputs.length === 0 ? 'none' : names(request.inputs)}`);
  }
  if (model.maxBatchSize > 0 && request.inputs.length > 1) {
    const batch = request.inputs[0].shape[0];
    request.inputs.forEach((input, i) => {
      if (input.shape[0] !== batch) {
        throw invalid(`${inputLabel(i, input.name)}: shape[0] (the batch) must equal that of inputs[0] (${batch}), given ${input.shape[0]}`);
      }
    });
  }
  const outputNames = new Set(model.outputs.map((o) => o.name));
  request.outputs.forEach((o, i) => {
    if (!outputNames.has(o.name)) {
      throw invalid(`outputs[${i}] ${quoteInput(o.name)} is not an output of model ${modelName}; its outputs are ${names(model.outputs)}`);
    }
  });
}

/**
 * Parses BYTES raw contents: each element a 4-byte little-endian length, then that many bytes.
 * With `count`, the buffer must hold exactly that many elements. `field` names it in errors.
 */
export function decodeBytesRaw(raw: Buffer, field: string, count?: number): Buffer[] {
  const items: Buffer[] = [];
  let at = 0;
  while (at < raw.length) {
    if (count !== undefined && items.length === count) {
      throw invalid(`${field} must hold ${count} BYTES elements, given ${raw.length - at} bytes after the last one`);
    }
    if (at + 4 > raw.length) {
      throw invalid(`${field}: BYTES element ${items.length} needs a 4-byte length at byte ${at}, given ${raw.length - at} bytes`);
    }
    const len = raw.readUInt32LE(at);
    at += 4;
    if (at + len > raw.length) {
      throw invalid(`${field}: BYTES element ${items.length} declares ${len} bytes, given ${raw.length - at}`);
    }
    items.push(raw.subarray(at, at + len));
    at += len;
  }
  if (count !== undefined && items.length !== count) {
    throw invalid(`${field} must hold ${count} BYTES elements (the product of the shape), given ${items.length}`);
  }
  return items;
}

/** Writes BYTES elements in the raw format (4-byte little-endian length, then the bytes). */
export function encodeBytesRaw(items: readonly Buffer[]): Buffer {
  const out = Buffer.alloc(items.reduce((n, b) => n + 4 + b.length, 0));
  let at = 0;
  for (const b of items) {
    out.writeUInt32LE(b.length, at);
    b.copy(out, at + 4);
    at += 4 + b.length;
  }
  return out;
}

/** A fresh, aligned copy of raw little-endian bytes as the typed array of `dt`. */
function fromRaw(dt: Exclude<DataType, 'BYTES'>, raw: Buffer): TensorData {
  const copy = new Uint8Array(raw).buffer; // aligned copy; hosts are little-endian (x86, arm64)
  switch (dt) {
    case 'BOOL':
      return new Uint8Array(copy).map((v) => (v ? 1 : 0));
    case 'UINT8':
      return new Uint8Array(copy);
    case 'INT8':
      return new Int8Array(copy);
    case 'UINT16':
    case 'FP16':
      return new Uint16Array(copy);
    case 'INT16':
      return new Int16Array(copy);
    case 'INT32':
      return new Int32Array(copy);
    case 'UINT32':
      return new Uint32Array(copy);
    case 'INT64':
      return new BigInt64Array(copy);
    case 'UINT64':
      return new BigUint64Array(copy);
    case 'FP32':
      return new Float32Array(copy);
    case 'FP64':
      return new Float64Array(copy);
  }
}

/** Typed contents as the typed array of `dt` (FP16 has no typed form). */
function fromContents(dt: DataType, contents: ContentsLike | undefined): TensorData {
  const c = contents;
  switch (dt) {
    case 'BOOL':
      return Uint8Array.from(c?.boolContents ?? [], (b) => (b ? 1 : 0));
    case 'UINT8':
      return Uint8Array.from(c?.uintContents ?? []);
    case 'INT8':
      return Int8Array.from(c?.intContents ?? []);
    case 'UINT16':
      return Uint16Array.from(c?.uintContents ?? []);
    case 'INT16':
      return Int16Array.from(c?.intContents ?? []);
    case 'INT32':
      return Int32Array.from(c?.intContents ?? []);
    case 'UINT32':
      return Uint32Array.from(c?.uintContents ?? []);
    case 'INT64':
      return BigInt64Array.from(c?.int64Contents ?? [], (v) => BigInt(v));
    case 'UINT64':
      return BigUint64Array.from(c?.uint64Contents ?? [], (v) => BigInt(v));
    case 'FP32':
      return Float32Array.from(c?.fp32Contents ?? []);
    case 'FP64':
      return Float64Array.from(c?.fp64Contents ?? []);
    case 'BYTES':
      return [...(c?.bytesContents ?? [])];
    case 'FP16':
      throw invalid('FP16 elements can only be sent in raw_input_contents');
  }
}

/** The inputs of a request that passed {@link checkInferRequest}, decoded. */
export function decodeInputs(request: InferRequestLike): Tensor[] {
  const raw = request.rawInputContents.length > 0;
  return request.inputs.map((input, i) => {
    const dt = checkDataType(inputLabel(i, input.name), input.datatype);
    let data: TensorData;
    if (raw) {
      const bytes = request.rawInputContents[i];
      data = dt === 'BYTES' ? decodeBytesRaw(bytes, `${inputLabel(i, input.name)}: raw_input_contents`) : fromRaw(dt, bytes);
    } else {
      data = fromContents(dt, input.contents);
    }
    return { name: input.name, datatype: dt, shape: [...input.shape], data };
  });
}

function emptyContents(): ContentsLike {
  return { boolContents: [], intContents: [], int64Contents: [], uintContents: [], uint64Contents: [], fp32Contents: [], fp64Contents: [], bytesContents: [] };
}

/** A tensor's elements as raw little-endian bytes. */
export function toRaw(tensor: Tensor): Buffer {
  if (Array.isArray(tensor.data)) return encodeBytesRaw(tensor.data);
  const view = tensor.data as Exclude<TensorData, Buffer[]>;
  return Buffer.from(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength));
}

/** A tensor's elements in its typed contents field (FP16 has none: the caller answers raw). */
function toContents(tensor: Tensor): ContentsLike {
  const contents = emptyContents();
  const field = contentsField(tensor.datatype);
  if (field === undefined) throw new Error(`${tensor.datatype} has no typed contents`);
  const data = tensor.data;
  if (tensor.datatype === 'BOOL') contents.boolContents = Array.from(data as Uint8Array, (v) => v !== 0);
  else if (tensor.datatype === 'BYTES') contents.bytesContents = [...(data as Buffer[])];
  else if (tensor.datatype === 'INT64' || tensor.datatype === 'UINT64') contents[field as 'int64Contents'] = Array.from(data as BigInt64Array, (v) => Number(v));
  else contents[field as 'fp32Contents'] = Array.from(data as Float32Array);
  return contents;
}

/**
 * The response form of output tensors: typed contents, or raw_output_contents when `raw` (or
 * when an output is FP16, which has no typed form).
 */
export function encodeOutputs(tensors: readonly Tensor[], raw: boolean): { outputs: OutputTensorLike[]; rawOutputContents: Buffer[] } {
  const useRaw = raw || tensors.some((t) => t.datatype === 'FP16');
  return {
    outputs: tensors.map((t) => ({
      name: t.name,
      datatype: t.datatype,
      shape: [...t.shape],
      parameters: {},
      contents: useRaw ? undefined : toContents(t),
    })),
    rawOutputContents: useRaw ? tensors.map(toRaw) : [],
  };
}
