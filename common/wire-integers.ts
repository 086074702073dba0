/**
 * 64-bit integers the generated code cannot hold. ts-proto (forceLong=number) decodes int64 and
 * uint64 fields to JavaScript numbers and throws on a value beyond 2^53 - 1; thrown inside
 * grpc-js's deserializer, that became INTERNAL "Error deserializing request" for a valid protobuf.
 * `guardRequestDecoding` wraps a service definition's request decoders so such a message decodes
 * to an {@link UnsafeIntegerRequest} naming the field instead; the middleware answers it with
 * INVALID_ARGUMENT before any handler runs. The generated types stay as they are.
 */
import { DescMessage, ScalarType } from '@bufbuild/protobuf';
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import { meshRegistry } from './descriptors';

/** A request that named a 64-bit integer beyond what the services accept. */
export class UnsafeIntegerRequest {
  constructor(
    /** Proto path of the field, e.g. `spec.timeout_ms` or `task.generate.seed`. */
    readonly field: string,
    /** The value as given, in decimal. */
    readonly value: string,
  ) {}
}

const INT64_TYPES = new Set([ScalarType.INT64, ScalarType.UINT64, ScalarType.SINT64, ScalarType.FIXED64, ScalarType.SFIXED64]);
const MAX = BigInt(Number.MAX_SAFE_INTEGER);
const MIN = BigInt(Number.MIN_SAFE_INTEGER);
/** Nesting deeper than this is not searched (the generated decoder would have failed long before). */
const MAX_DEPTH = 32;

type Found = { field: string; value: string } | undefined;

function read64(reader: BinaryReader, scalar: ScalarType): bigint {
  switch (scalar) {
    case ScalarType.INT64:
      return BigInt(reader.int64());
    case ScalarType.UINT64:
      return BigInt(reader.uint64());
    case ScalarType.SINT64:
      return BigInt(reader.sint64());
    case ScalarType.FIXED64:
      return BigInt(reader.fixed64());
    default:
      return BigInt(reader.sfixed64());
  }
}

function wireTypeOf(scalar: ScalarType): WireType {
  return scalar === ScalarType.FIXED64 || scalar === ScalarType.SFIXED64 ? WireType.Bit64 : WireType.Varint;
}

/**
 * The first 64-bit integer field of `bytes` (a `desc` message) outside the safe range, read as the
 * generated decoder reads it (a field whose wire type does not match is skipped, as it skips it).
 */
export function findUnsafeInteger(desc: DescMessage, bytes: Uint8Array, prefix = '', depth = 0): Found {
  if (depth > MAX_DEPTH) return undefined;
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [no, wireType] = reader.tag();
    const field = desc.fields.find((f) => f.number === no);
    const name = prefix + (field?.name ?? String(no));
    if (field && field.fieldKind !== 'map' && field.scalar !== undefined && INT64_TYPES.has(field.scalar)) {
      const scalar = field.scalar;
      if (wireType === wireTypeOf(scalar)) {
        const v = read64(reader, scalar);
        if (v > MAX || v < MIN) return { field: name, value: v.toString() };
        continue;
      }
      if (field.fieldKind === 'list' && wireType === WireType.LengthDelimited) {
        const packed = new BinaryReader(reader.bytes());
        while (packed.pos < packed.len) {
          const v = read64(packed, scalar);
          if (v > MAX || v < MIN) return { field: name, value: v.toString() };
        }
        continue;
      }
    }
    if (field && wireType === WireType.LengthDelimited) {
      if (field.fieldKind === 'message' || (field.fieldKind === 'list' && field.listKind === 'message')) {
        const found = findUnsafeInteger(field.message, reader.bytes(), `${name}.`, depth + 1);
        if (found) return found;
        continue;
      }
      if (field.fieldKind === 'map') {
        const entry = new BinaryReader(reader.bytes());
        while (entry.pos < entry.len) {
          const [entryNo, entryWire] = entry.tag();
          if (entryNo === 2 && field.mapKind === 'scalar' && INT64_TYPES.has(field.scalar) && entryWire === wireTypeOf(field.scalar)) {
            const v = read64(entry, field.scalar);
            if (v > MAX || v < MIN) return { field: name, value: v.toString() };
          } else if (entryNo === 2 && field.mapKind === 'message' && entryWire === WireType.LengthDelimited) {
            const found = findUnsafeInteger(field.message, entry.bytes(), `${name}.`, depth + 1);
            if (found) return found;
          } else {
            entry.skip(entryWire, entryNo);
          }
        }
        continue;
      }
    }
    reader.skip(wireType, no);
  }
  return undefined;
}

/** Is this the generated decoder's complaint about a 64-bit integer? */
function isUnsafeIntegerError(err: unknown): boolean {
  return err instanceof Error && /Number\.(MAX|MIN)_SAFE_INTEGER/.test(err.message);
}

/** A ts-proto message type, as a generated service definition carries it. */
interface MessageType {
  decode(input: Uint8Array): unknown;
}

/** A ts-proto generated service definition (nice-grpc's ts-proto flavour). */
export interface TsProtoDefinition {
  fullName: string;
  methods: Record<string, { name: string; requestType: MessageType }>;
}

/**
 * The same definition, with each request decoder turning the generated code's 64-bit range error
 * into an {@link UnsafeIntegerRequest} (anything else it throws passes through, so bytes that are
 * not the message still get grpc-js's own answer).
 */
export function guardRequestDecoding<D extends TsProtoDefinition>(definition: D): D {
  const service = meshRegistry().getService(definition.fullName);
  const methods: Record<string, unknown> = {};
  for (const [key, method] of Object.entries(definition.methods)) {
    const input = service?.methods.find((m) => m.name === method.name)?.input;
    const decode = method.requestType.decode.bind(method.requestType);
    methods[key] = {
      ...method,
      requestType: {
        ...method.requestType,
        decode(bytes: Uint8Array): unknown {
          try {
            return decode(bytes);
          } catch (err) {
            if (!isUnsafeIntegerError(err)) throw err;
            let found: Found;
            try {
              found = input ? findUnsafeInteger(input, bytes) : undefined;
            } catch {
              found = undefined;
            }
            return new UnsafeIntegerRequest(found?.field ?? 'a 64-bit integer field', found?.value ?? 'a larger value');
          }
        },
      },
    };
  }
  return { ...definition, methods };
}
