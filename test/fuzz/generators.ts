/**
 * Generators of hostile protobuf inputs, from the mesh's own descriptors: well-formed messages with
 * ordinary, extreme and malformed values (NaN, infinities, 64-bit integers past 2^53, negative and
 * unknown enum values, invalid UTF-8, NUL and control characters, megabyte strings, unknown
 * fields), and byte-level damage (wrong wire types, truncation, mutation, random bytes).
 *
 * A plain module: no gRPC. Everything comes from one seeded generator, so a seed replays a run.
 */
import { DescField, DescMessage, ScalarType } from '@bufbuild/protobuf';
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { Random } from '../../common/random';

/** How an input was made; a report counts statuses per strategy. */
export type Strategy =
  | 'valid'
  | 'extreme-numbers'
  | 'hostile-strings'
  | 'unknown-fields'
  | 'wrong-wire-type'
  | 'truncated'
  | 'mutated'
  | 'random-bytes'
  | 'empty'
  /** A valid job but for one hostile file, output file or callback URL (made by the harness, not picked here). */
  | 'hostile-job';

export const STRATEGIES: readonly Strategy[] = ['valid', 'extreme-numbers', 'hostile-strings', 'unknown-fields', 'wrong-wire-type', 'truncated', 'mutated', 'random-bytes', 'empty'];

/** One generated input. */
export interface FuzzInput {
  strategy: Strategy;
  bytes: Uint8Array;
  /**
   * True when the bytes are a well-formed encoding of the message (every field with its own wire
   * type, nothing cut): the server must decode it, so even grpc-js's parse error is wrong for it.
   */
  wellFormed: boolean;
  /** Strings of 100 characters or more that the input carries: an error message must not echo them. */
  longStrings: string[];
}

/** Options of a {@link MessageFuzzer}. */
export interface FuzzerOptions {
  /** Strings worth trying in any string field (model names, mappers, datasets, known job ids...). */
  dictionary: readonly string[];
  /**
   * Fields whose values must stay inside a safe set, by proto field name (e.g. `callback_url`):
   * their generator replaces the random one. A caller also checks mutated bytes (see the harness).
   */
  restricted?: Readonly<Record<string, (random: Random) => string>>;
  /** Share of string fields that get a megabyte string (default 0.002). */
  megabyteShare?: number;
  /** Deepest nesting of generated messages (default 4). */
  maxDepth?: number;
}

const U64_MAX = 2n ** 64n - 1n;
const EXTREME_64 = [0n, 1n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n - 1n, 2n ** 63n, U64_MAX];
const EXTREME_SIGNED_64 = [-1n, -(2n ** 53n) + 1n, -(2n ** 53n) - 1n, -(2n ** 63n)];
const EXTREME_32 = [0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1];
const EXTREME_FLOATS = [0, -0, NaN, Infinity, -Infinity, Number.MAX_VALUE, -Number.MAX_VALUE, Number.MIN_VALUE, 3.4e38, 1e-45, -1];
const CONTROL = '\u0000\u0001\u0007\b\t\n\u000b\f\r\u001b\u007f\u0085\u2028\u2029\ufeff\ufffe';
const INVALID_UTF8 = [
  [0xff],
  [0xc0, 0x80],
  [0xed, 0xa0, 0x80],
  [0xf4, 0x90, 0x80, 0x80],
  [0xe2, 0x82],
  [0x80, 0x80, 0x80],
];

/** Small helpers over a Random. */
export class Dice {
  constructor(readonly random: Random) {}
  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.random() * n);
  }
  /** An integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.random() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }
}

/** A field value on the wire: written by `write`, plus the long strings it carries. */
type Written = (w: BinaryWriter) => void;

/** Generates inputs for messages of one registry. */
export class MessageFuzzer {
  private readonly dice: Dice;
  private readonly megabyteShare: number;
  private readonly maxDepth: number;
  private long: string[] = [];
  private mode: 'valid' | 'extreme-numbers' | 'hostile-strings' = 'valid';

  constructor(
    random: Random,
    private readonly options: FuzzerOptions,
  ) {
    this.dice = new Dice(random);
    this.megabyteShare = options.megabyteShare ?? 0.002;
    this.maxDepth = options.maxDepth ?? 4;
  }

  /** One input for `desc`, by a strategy picked at random (or the one given). */
  next(desc: DescMessage, strategy: Strategy = this.dice.pick(STRATEGIES)): FuzzInput {
    this.long = [];
    const wellFormed = (bytes: Uint8Array): FuzzInput => ({ strategy, bytes, wellFormed: true, longStrings: this.long });
    const damaged = (bytes: Uint8Array): FuzzInput => ({ strategy, bytes, wellFormed: false, longStrings: this.long });
    switch (strategy) {
      case 'valid':
      case 'extreme-numbers':
      case 'hostile-strings':
        this.mode = strategy;
        return wellFormed(this.encode(desc));
      case 'unknown-fields': {
        this.mode = 'valid';
        const w = new BinaryWriter();
        w.raw(this.encode(desc));
        for (let i = this.dice.range(1, 4); i > 0; i--) this.unknownField(w, desc);
        return wellFormed(w.finish());
      }
      case 'wrong-wire-type': {
        this.mode = 'valid';
        const w = new BinaryWriter();
        w.raw(this.encode(desc));
        const field = desc.fields.length > 0 ? this.dice.pick(desc.fields) : undefined;
        this.fieldWithWireType(w, field?.number ?? this.dice.range(1, 20), this.wrongWireType(field));
        return damaged(w.finish());
      }
      case 'truncated': {
        this.mode = 'valid';
        const bytes = this.encode(desc);
        return bytes.length < 2 ? damaged(this.dice.bytes(1)) : damaged(bytes.slice(0, this.dice.range(1, bytes.length - 1)));
      }
      case 'mutated': {
        this.mode = this.dice.pick(['valid', 'extreme-numbers', 'hostile-strings'] as const);
        return damaged(this.mutate(this.encode(desc)));
      }
      case 'random-bytes':
        return damaged(this.dice.bytes(this.dice.chance(0.1) ? this.dice.range(256, 4096) : this.dice.range(1, 64)));
      case 'empty':
      case 'hostile-job':
        return wellFormed(new Uint8Array(0));
    }
  }

  /** A well-formed encoding of a message of `desc`, in the current mode. */
  encode(desc: DescMessage, depth = 0): Uint8Array {
    const w = new BinaryWriter();
    // Proto3 oneof: one member or none; now and then two (the last one wins on decode).
    const chosen = new Set<DescField>();
    for (const oneof of desc.oneofs) {
      if (this.dice.chance(0.85)) chosen.add(this.dice.pick(oneof.fields));
      if (this.dice.chance(0.05)) chosen.add(this.dice.pick(oneof.fields));
    }
    for (const field of desc.fields) {
      if (field.oneof ? !chosen.has(field) : !this.dice.chance(this.mode === 'valid' ? 0.7 : 0.8)) continue;
      this.writeField(w, field, depth);
    }
    return w.finish();
  }

  private writeField(w: BinaryWriter, field: DescField, depth: number): void {
    switch (field.fieldKind) {
      case 'scalar':
        this.scalarValue(field.scalar, field.name)(w.tag(field.number, wireTypeOf(field.scalar)));
        return;
      case 'enum':
        w.tag(field.number, WireType.Varint).int32(this.enumValue(field.enum.values.map((v) => v.number)));
        return;
      case 'message':
        if (depth >= this.maxDepth) return;
        w.tag(field.number, WireType.LengthDelimited).bytes(this.encode(field.message, depth + 1));
        return;
      case 'list': {
        const count = this.count(field.listKind === 'message', depth);
        if (field.listKind === 'message') {
          if (depth >= this.maxDepth) return;
          // Many elements: the same few repeated, so a long list costs little to make.
          const distinct = Array.from({ length: Math.min(count, 4) }, () => this.encode(field.message, depth + 1));
          for (let i = 0; i < count; i++) w.tag(field.number, WireType.LengthDelimited).bytes(distinct[i % distinct.length]);
        } else if (field.listKind === 'enum') {
          for (let i = 0; i < count; i++) w.tag(field.number, WireType.Varint).int32(this.enumValue(field.enum.values.map((v) => v.number)));
        } else {
          const scalar = field.scalar;
          if (scalar !== ScalarType.STRING && scalar !== ScalarType.BYTES && this.dice.chance(0.5)) {
            // Packed, as proto3 writes repeated numbers.
            const packed = new BinaryWriter();
            for (let i = 0; i < count; i++) this.scalarValue(scalar, field.name)(packed);
            w.tag(field.number, WireType.LengthDelimited).bytes(packed.finish());
          } else {
            for (let i = 0; i < count; i++) this.scalarValue(scalar, field.name)(w.tag(field.number, wireTypeOf(scalar)));
          }
        }
        return;
      }
      case 'map': {
        const count = this.count(field.mapKind === 'message', depth);
        for (let i = 0; i < count; i++) {
          const entry = new BinaryWriter();
          this.scalarValue(field.mapKey, `${field.name}.key`)(entry.tag(1, wireTypeOf(field.mapKey)));
          if (field.mapKind === 'scalar') this.scalarValue(field.scalar, field.name)(entry.tag(2, wireTypeOf(field.scalar)));
          else if (field.mapKind === 'enum') entry.tag(2, WireType.Varint).int32(this.enumValue(field.enum.values.map((v) => v.number)));
          else if (depth < this.maxDepth) entry.tag(2, WireType.LengthDelimited).bytes(this.encode(field.message, depth + 1));
          w.tag(field.number, WireType.LengthDelimited).bytes(entry.finish());
        }
        return;
      }
    }
  }

  /** Elements of a repeated field: mostly a few, now and then many (of messages, fewer, and flat). */
  private count(ofMessages = false, depth = 0): number {
    if (this.mode !== 'valid' && depth <= 1 && this.dice.chance(0.02)) return ofMessages ? this.dice.range(20, 200) : this.dice.range(100, 2000);
    return this.dice.range(0, 3);
  }

  private enumValue(known: number[]): number {
    if (this.mode === 'valid' || this.dice.chance(0.5)) return this.dice.pick(known);
    return this.dice.pick([-1, known.length, 99, 2 ** 31 - 1, -(2 ** 31)]);
  }

  private scalarValue(scalar: ScalarType, fieldName: string): Written {
    const d = this.dice;
    const extreme = this.mode === 'extreme-numbers' || (this.mode !== 'valid' && d.chance(0.2));
    switch (scalar) {
      case ScalarType.STRING:
        return this.stringValue(fieldName);
      case ScalarType.BYTES:
        return (w) => w.bytes(d.bytes(d.range(0, 32)));
      case ScalarType.BOOL:
        return extreme ? (w) => w.uint64(d.pick([2n, U64_MAX])) : (w) => w.bool(d.chance(0.5));
      case ScalarType.DOUBLE:
      case ScalarType.FLOAT: {
        const v = extreme ? d.pick(EXTREME_FLOATS) : d.pick([0, 0.5, 1, 1.5, 2, 0.7]);
        return scalar === ScalarType.DOUBLE ? (w) => w.double(v) : (w) => w.raw(float32Bytes(v));
      }
      case ScalarType.INT64:
      case ScalarType.SINT64:
      case ScalarType.SFIXED64: {
        const v = extreme ? d.pick([...EXTREME_64.filter((x) => x < 2n ** 63n), ...EXTREME_SIGNED_64]) : BigInt(d.range(0, 1000));
        return scalar === ScalarType.INT64 ? (w) => w.int64(v) : scalar === ScalarType.SINT64 ? (w) => w.sint64(v) : (w) => w.sfixed64(v);
      }
      case ScalarType.UINT64:
      case ScalarType.FIXED64: {
        const v = extreme ? d.pick(EXTREME_64) : BigInt(d.pick([0, 1, 2, 10, 100, 500, 1000, 60000]));
        return scalar === ScalarType.UINT64 ? (w) => w.uint64(v) : (w) => w.fixed64(v);
      }
      case ScalarType.INT32:
      case ScalarType.SINT32:
      case ScalarType.SFIXED32: {
        const v = extreme ? d.pick([...EXTREME_32.filter((x) => x < 2 ** 31), -1, -(2 ** 31)]) : d.range(0, 100);
        return scalar === ScalarType.INT32 ? (w) => w.int32(v) : scalar === ScalarType.SINT32 ? (w) => w.sint32(v) : (w) => w.sfixed32(v);
      }
      default: {
        const v = extreme ? d.pick(EXTREME_32) : d.pick([0, 1, 2, 3, 5, 10, 64, 100, 500, 1000]);
        return scalar === ScalarType.FIXED32 ? (w) => w.fixed32(v) : (w) => w.uint32(v);
      }
    }
  }

  private stringValue(fieldName: string): Written {
    const d = this.dice;
    const restricted = this.options.restricted?.[fieldName];
    if (restricted) {
      const v = restricted(d.random);
      return (w) => w.string(v);
    }
    if (this.mode === 'valid' || d.chance(0.3)) {
      const v = d.chance(0.6) && this.options.dictionary.length > 0 ? d.pick(this.options.dictionary) : this.ascii(d.range(0, 24));
      return (w) => w.string(v);
    }
    const kind = d.int(8);
    if (kind === 0 && d.chance(this.megabyteShare * 8)) return this.keep((1 << 20) + d.range(0, 16), 'm');
    if (kind === 1) return this.keep(d.range(100, 70_000), d.pick(['a', 'é', '😀', '\u0000']));
    if (kind === 2) {
      // Invalid UTF-8 inside a string field.
      const parts = [new TextEncoder().encode(this.ascii(d.range(0, 8))), Uint8Array.from(d.pick(INVALID_UTF8)), new TextEncoder().encode(this.ascii(d.range(0, 8)))];
      const bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of parts) {
        bytes.set(p, at);
        at += p.length;
      }
      return (w) => w.bytes(bytes);
    }
    if (kind === 3) {
      const v = Array.from({ length: d.range(1, 16) }, () => d.pick([...CONTROL])).join('');
      return (w) => w.string(v);
    }
    if (kind === 4 && this.options.dictionary.length > 0) {
      // A known value with a twist: NUL, control character, space or case change.
      const base = d.pick(this.options.dictionary);
      const v = d.pick([`${base}\u0000`, ` ${base}`, base.toUpperCase(), `${base}\n`, `${base}/../${base}`, base.slice(0, -1)]);
      return (w) => w.string(v);
    }
    if (kind === 5) {
      const v = Array.from({ length: d.range(1, 12) }, () => String.fromCodePoint(d.chance(0.5) ? d.range(0x80, 0xd7ff) : d.range(0x10000, 0x10ffff))).join('');
      return (w) => w.string(v);
    }
    const v = this.ascii(d.range(0, 40));
    return (w) => w.string(v);
  }

  /** A long string of `n` copies of `unit` (kept, so a report can check no message echoes it). */
  private keep(n: number, unit: string): Written {
    const v = unit.repeat(n);
    this.long.push(v);
    return (w) => w.string(v);
  }

  private ascii(n: number): string {
    let s = '';
    for (let i = 0; i < n; i++) s += String.fromCharCode(this.dice.range(0x20, 0x7e));
    return s;
  }

  private unknownField(w: BinaryWriter, desc: DescMessage): void {
    const used = new Set(desc.fields.map((f) => f.number));
    let no = this.dice.pick([this.dice.range(1, 50), this.dice.range(1000, 5000), 536_870_911, 19_000]);
    while (used.has(no)) no++;
    // 19000-19999 are reserved numbers; they still must not crash anything.
    this.fieldWithWireType(w, no, this.dice.pick([WireType.Varint, WireType.Bit64, WireType.LengthDelimited, WireType.Bit32]));
  }

  private wrongWireType(field: DescField | undefined): WireType {
    const right = field?.fieldKind === 'scalar' ? wireTypeOf(field.scalar) : field?.fieldKind === 'enum' ? WireType.Varint : WireType.LengthDelimited;
    const all = [WireType.Varint, WireType.Bit64, WireType.LengthDelimited, WireType.StartGroup, WireType.EndGroup, WireType.Bit32];
    return this.dice.pick(all.filter((t) => t !== right));
  }

  private fieldWithWireType(w: BinaryWriter, no: number, type: WireType): void {
    w.tag(no, type);
    switch (type) {
      case WireType.Varint:
        w.uint64(this.dice.pick(EXTREME_64));
        return;
      case WireType.Bit64:
        w.fixed64(this.dice.pick(EXTREME_64));
        return;
      case WireType.LengthDelimited:
        w.bytes(this.dice.bytes(this.dice.range(0, 16)));
        return;
      case WireType.Bit32:
        w.fixed32(this.dice.int(2 ** 32));
        return;
      case WireType.StartGroup:
        // A group with no end, or an end with no start: both are malformed.
        if (this.dice.chance(0.5)) w.tag(no, WireType.EndGroup);
        return;
      default:
        return;
    }
  }

  /** Byte-level damage: flips, insertions, deletions, a length prefix made huge. */
  mutate(bytes: Uint8Array): Uint8Array {
    let out = Uint8Array.from(bytes);
    const splice = (at: number, remove: number, insert: ArrayLike<number>) => {
      const next = new Uint8Array(out.length - Math.min(remove, out.length - at) + insert.length);
      next.set(out.subarray(0, at), 0);
      next.set(insert, at);
      next.set(out.subarray(Math.min(out.length, at + remove)), at + insert.length);
      out = next;
    };
    for (let i = this.dice.range(1, 4); i > 0; i--) {
      const at = this.dice.int(out.length + 1);
      const last = Math.min(at, out.length - 1);
      switch (this.dice.int(5)) {
        case 0:
          if (out.length > 0) out[last] ^= 1 << this.dice.int(8);
          break;
        case 1:
          splice(at, 0, this.dice.bytes(this.dice.range(1, 8)));
          break;
        case 2:
          splice(at, this.dice.range(1, 8), []);
          break;
        case 3:
          if (out.length > 0) out[last] = this.dice.pick([0x00, 0x7f, 0x80, 0xff]);
          break;
        default:
          // A varint that claims a huge length.
          splice(at, 0, [0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]);
      }
    }
    return out;
  }
}

/** Four little-endian bytes of a float32 (BinaryWriter refuses values out of float32 range; the wire does not). */
function float32Bytes(v: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setFloat32(0, v, true);
  return out;
}

/** The wire type a scalar is written with. */
export function wireTypeOf(scalar: ScalarType): WireType {
  switch (scalar) {
    case ScalarType.STRING:
    case ScalarType.BYTES:
      return WireType.LengthDelimited;
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return WireType.Bit64;
    case ScalarType.FLOAT:
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return WireType.Bit32;
    default:
      return WireType.Varint;
  }
}
