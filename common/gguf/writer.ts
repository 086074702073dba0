/**
 * A GGUF v3 writer: the file format llama.cpp reads. A file is a header (magic `GGUF`, version,
 * tensor count, metadata count), typed metadata key/values, tensor infos (name, dims, ggml type,
 * offset), then the tensor data, every tensor aligned to `general.alignment` (32 bytes).
 * Everything is little-endian. Only what the project's test models need: scalar and array
 * metadata of every GGUF type, F32 and F16 tensors.
 */

/** GGUF metadata value types (gguf.h `gguf_type`). */
export enum GgufType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

/** Tensor element types this writer emits (ggml.h `ggml_type`). */
export enum GgmlType {
  F32 = 0,
  F16 = 1,
}

/** A scalar metadata value with its GGUF type. */
export type GgufScalar =
  | { type: GgufType.UINT8 | GgufType.INT8 | GgufType.UINT16 | GgufType.INT16 | GgufType.UINT32 | GgufType.INT32 | GgufType.FLOAT32 | GgufType.FLOAT64; value: number }
  | { type: GgufType.UINT64 | GgufType.INT64; value: bigint }
  | { type: GgufType.BOOL; value: boolean }
  | { type: GgufType.STRING; value: string };

/** A metadata value: a scalar, or an array of scalars of one type. */
export type GgufValue = GgufScalar | { type: GgufType.ARRAY; itemType: Exclude<GgufType, GgufType.ARRAY>; items: readonly (number | bigint | boolean | string)[] };

/** One tensor: `dims` in ggml order (dims[0] is the row length, the innermost), data row-major in that order. */
export interface GgufTensor {
  name: string;
  dims: readonly number[];
  type: GgmlType;
  /** Values, dims[0] * dims[1] * ... of them; converted to `type` on write. */
  data: Float32Array;
}

/** Tensor data alignment llama.cpp assumes when `general.alignment` is absent. */
export const GGUF_ALIGNMENT = 32;

const MAGIC = 0x46554747; // "GGUF" read as a little-endian uint32
const VERSION = 3;

/** Helpers for metadata values. */
export const gguf = {
  u32: (value: number): GgufValue => ({ type: GgufType.UINT32, value }),
  i32: (value: number): GgufValue => ({ type: GgufType.INT32, value }),
  f32: (value: number): GgufValue => ({ type: GgufType.FLOAT32, value }),
  bool: (value: boolean): GgufValue => ({ type: GgufType.BOOL, value }),
  str: (value: string): GgufValue => ({ type: GgufType.STRING, value }),
  strings: (items: readonly string[]): GgufValue => ({ type: GgufType.ARRAY, itemType: GgufType.STRING, items }),
  f32s: (items: readonly number[]): GgufValue => ({ type: GgufType.ARRAY, itemType: GgufType.FLOAT32, items }),
  i32s: (items: readonly number[]): GgufValue => ({ type: GgufType.ARRAY, itemType: GgufType.INT32, items }),
};

/** Growable little-endian byte buffer. */
class ByteWriter {
  private buffer = Buffer.alloc(1 << 16);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buffer.length) return;
    let size = this.buffer.length * 2;
    while (size < this.length + n) size *= 2;
    const next = Buffer.alloc(size);
    this.buffer.copy(next, 0, 0, this.length);
    this.buffer = next;
  }

  u8(v: number) { this.reserve(1); this.buffer.writeUInt8(v, this.length); this.length += 1; }
  i8(v: number) { this.reserve(1); this.buffer.writeInt8(v, this.length); this.length += 1; }
  u16(v: number) { this.reserve(2); this.buffer.writeUInt16LE(v, this.length); this.length += 2; }
  i16(v: number) { this.reserve(2); this.buffer.writeInt16LE(v, this.length); this.length += 2; }
  u32(v: number) { this.reserve(4); this.buffer.writeUInt32LE(v, this.length); this.length += 4; }
  i32(v: number) { this.reserve(4); this.buffer.writeInt32LE(v, this.length); this.length += 4; }
  f32(v: number) { this.reserve(4); this.buffer.writeFloatLE(v, this.length); this.length += 4; }
  f64(v: number) { this.reserve(8); this.buffer.writeDoubleLE(v, this.length); this.length += 8; }
  u64(v: bigint | number) { this.reserve(8); this.buffer.writeBigUInt64LE(BigInt(v), this.length); this.length += 8; }
  i64(v: bigint) { this.reserve(8); this.buffer.writeBigInt64LE(v, this.length); this.length += 8; }
  bytes(b: Uint8Array) { this.reserve(b.length); this.buffer.set(b, this.length); this.length += b.length; }
  string(s: string) { const b = Buffer.from(s, 'utf8'); this.u64(b.length); this.bytes(b); }
  pad(alignment: number) { const n = (alignment - (this.length % alignment)) % alignment; this.reserve(n); this.length += n; }
  result(): Buffer { return this.buffer.subarray(0, this.length); }
}

function writeScalar(w: ByteWriter, type: GgufType, value: number | bigint | boolean | string, key: string): void {
  const bad = () => new TypeError(`GGUF metadata ${key}: value ${String(value).slice(0, 40)} does not fit type ${GgufType[type]}`);
  switch (type) {
    case GgufType.UINT8: return w.u8(value as number);
    case GgufType.INT8: return w.i8(value as number);
    case GgufType.UINT16: return w.u16(value as number);
    case GgufType.INT16: return w.i16(value as number);
    case GgufType.UINT32: return w.u32(value as number);
    case GgufType.INT32: return w.i32(value as number);
    case GgufType.FLOAT32: return w.f32(value as number);
    case GgufType.FLOAT64: return w.f64(value as number);
    case GgufType.UINT64: return w.u64(value as bigint);
    case GgufType.INT64: return w.i64(value as bigint);
    case GgufType.BOOL: if (typeof value !== 'boolean') throw bad(); return w.u8(value ? 1 : 0);
    case GgufType.STRING: if (typeof value !== 'string') throw bad(); return w.string(value);
    default: throw bad();
  }
}

/** Bytes per element of a tensor type. */
function elementBytes(type: GgmlType): number {
  return type === GgmlType.F16 ? 2 : 4;
}

/** Scratch for {@link toFloat16Bits}: one float and its bits (no allocation per value; a model has tens of millions). */
const scratchFloat = new Float32Array(1);
const scratchBits = new Uint32Array(scratchFloat.buffer);

/** IEEE 754 half precision bits of a float (round to nearest even). */
export function toFloat16Bits(value: number): number {
  scratchFloat[0] = value;
  const bits = scratchBits[0];
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  let mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  const e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - e;
    let half = mantissa >>> shift;
    const rest = mantissa & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rest > halfway || (rest === halfway && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && half & 1)) half++;
  return sign | half;
}

/**
 * Serializes a GGUF v3 file. Metadata keys are written in the order given; `general.alignment`
 * is added when absent.
 *
 * @throws TypeError when a tensor's data length does not match its dims, or a value its type
 */
export function writeGguf(metadata: ReadonlyArray<readonly [string, GgufValue]>, tensors: readonly GgufTensor[]): Buffer {
  const entries = [...metadata];
  if (!entries.some(([k]) => k === 'general.alignment')) entries.push(['general.alignment', gguf.u32(GGUF_ALIGNMENT)]);
  const header = new ByteWriter();
  header.u32(MAGIC);
  header.u32(VERSION);
  header.u64(tensors.length);
  header.u64(entries.length);
  for (const [key, value] of entries) {
    header.string(key);
    header.u32(value.type);
    if (value.type === GgufType.ARRAY) {
      header.u32(value.itemType);
      header.u64(value.items.length);
      for (const item of value.items) writeScalar(header, value.itemType, item, key);
    } else {
      writeScalar(header, value.type, value.value, key);
    }
  }
  let offset = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    const count = t.dims.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) throw new TypeError(`GGUF tensor ${t.name}: dims ${t.dims.join('x')} hold ${count} values, given ${t.data.length}`);
    header.string(t.name);
    header.u32(t.dims.length);
    for (const d of t.dims) header.u64(d);
    header.u32(t.type);
    header.u64(offset);
    offsets.push(offset);
    offset += count * elementBytes(t.type);
    offset += (GGUF_ALIGNMENT - (offset % GGUF_ALIGNMENT)) % GGUF_ALIGNMENT;
  }
  header.pad(GGUF_ALIGNMENT);
  const head = header.result();
  const file = Buffer.alloc(head.length + offset);
  head.copy(file, 0);
  tensors.forEach((t, i) => {
    const at = head.length + offsets[i];
    if (t.type === GgmlType.F32) {
      Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).copy(file, at);
    } else {
      for (let j = 0; j < t.data.length; j++) file.writeUInt16LE(toFloat16Bits(t.data[j]), at + 2 * j);
    }
  });
  return file;
}
