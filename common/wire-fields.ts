/**
 * Reading one field out of an encoded protobuf message without decoding the rest: a relay that
 * passes a nested message on (the gateway, a generated token from the worker's output) takes its
 * bytes as they are instead of decoding them into objects and encoding them again.
 */

/** Reads a varint at `pos`; returns [value, next position], or undefined when the bytes end first. */
function varint(bytes: Uint8Array, pos: number): [number, number] | undefined {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= bytes.length) return undefined;
    const b = bytes[pos++];
    value += (b & 0x7f) * scale;
    if ((b & 0x80) === 0) return [value, pos];
    scale *= 128;
  }
  return undefined;
}

/**
 * The bytes of the last occurrence of length-delimited field `field` at the top level of
 * `bytes` (for a message field: the embedded message, as proto3 merges repeated occurrences only
 * for messages, and the mesh never sends one twice), or undefined when it is absent. Throws on
 * bytes that are not a protobuf message.
 */
export function lengthDelimitedField(bytes: Uint8Array, field: number): Uint8Array | undefined {
  let found: Uint8Array | undefined;
  let pos = 0;
  while (pos < bytes.length) {
    const tag = varint(bytes, pos);
    if (!tag) throw new Error('truncated tag');
    pos = tag[1];
    const number = Math.floor(tag[0] / 8);
    switch (tag[0] & 7) {
      case 0: {
        const v = varint(bytes, pos);
        if (!v) throw new Error('truncated varint');
        pos = v[1];
        break;
      }
      case 1:
        pos += 8;
        break;
      case 2: {
        const len = varint(bytes, pos);
        if (!len) throw new Error('truncated length');
        const end = len[1] + len[0];
        if (end > bytes.length) throw new Error('truncated field');
        if (number === field) found = bytes.subarray(len[1], end);
        pos = end;
        break;
      }
      case 5:
        pos += 4;
        break;
      default:
        throw new Error(`wire type ${tag[0] & 7} is not supported`);
    }
    if (pos > bytes.length) throw new Error('truncated field');
  }
  return found;
}
