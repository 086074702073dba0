/**
 * `maas infer`: JSON in, KServe v2 tensors out, and back. The JSON maps each input name to a
 * nested array (its shape is the nesting, its data type the model's) or to an explicit
 * `{ "datatype", "shape", "data" }` (data nested or flat). Outputs print as
 * `{ name: { datatype, shape, data } }` with data nested by the shape and BYTES as UTF-8 text.
 * Pure: no gRPC; the generated request and response types fit the structural ones used here.
 */
import { ContentsLike, DATATYPES, InputTensorLike, TensorSpecLike, contentsField, decodeInputs, elementCount, isDataType } from '../../common/tensors';
import { UsageError } from './jobs';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

function emptyContents(): ContentsLike {
  return { boolContents: [], intContents: [], int64Contents: [], uintContents: [], uint64Contents: [], fp32Contents: [], fp64Contents: [], bytesContents: [] };
}

/** The shape of a nested array (every row as long as the first) and its elements in row-major order. */
function flatten(name: string, value: Json): { shape: number[]; data: Json[] } {
  if (!Array.isArray(value)) return { shape: [], data: [value] };
  if (value.length === 0) return { shape: [0], data: [] };
  const rows = value.map((v) => flatten(name, v));
  const inner = rows[0].shape;
  for (const r of rows) {
    if (r.shape.join(',') !== inner.join(',')) throw new UsageError(`--input "${name}": rows of a nested array must all have the shape [${inner.join(', ')}], given [${r.shape.join(', ')}]`);
  }
  return { shape: [value.length, ...inner], data: rows.flatMap((r) => r.data) };
}

/**
 * The input tensors of `json` (an object of input name -> value) for a model with inputs `specs`.
 * Throws UsageError naming the input for a value that does not fit.
 */
export function inputsFromJson(json: unknown, specs: readonly TensorSpecLike[]): InputTensorLike[] {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new UsageError('--input must be a JSON object mapping input names to values');
  return Object.entries(json as Record<string, Json>).map(([name, value]) => {
    const spec = specs.find((s) => s.name === name);
    const explicit = value !== null && typeof value === 'object' && !Array.isArray(value) ? value : undefined;
    const datatype = explicit && typeof explicit.datatype === 'string' ? explicit.datatype : spec?.datatype;
    if (datatype === undefined) throw new UsageError(`--input "${name}" is not an input of the model (its inputs: ${specs.map((s) => s.name).join(', ') || 'none'}); give {"datatype", "shape", "data"} to send it anyway`);
    if (!isDataType(datatype)) throw new UsageError(`--input "${name}": datatype must be one of ${DATATYPES.join(', ')}, given ${JSON.stringify(datatype).slice(0, 40)}`);
    const dt = datatype;
    const { shape: nested, data } = flatten(name, explicit ? (explicit.data ?? []) : value);
    const shape = explicit && Array.isArray(explicit.shape) ? explicit.shape.map(Number) : nested;
    if (elementCount(shape) !== data.length) throw new UsageError(`--input "${name}": shape [${shape.join(', ')}] needs ${elementCount(shape)} elements, given ${data.length}`);
    const field = contentsField(dt);
    if (field === undefined) throw new UsageError(`--input "${name}": ${dt} can only be sent raw, which maas infer does not do; use a client library`);
    const contents = emptyContents();
    if (dt === 'BYTES') contents.bytesContents = data.map((d) => Buffer.from(typeof d === 'string' ? d : JSON.stringify(d)));
    else if (dt === 'BOOL') contents.boolContents = data.map((d) => d === true || d === 1);
    else {
      (contents[field] as number[]) = data.map((d, i) => {
        const n = typeof d === 'number' ? d : Number(d);
        if (!Number.isFinite(n)) throw new UsageError(`--input "${name}": element ${i} must be a number, given ${JSON.stringify(d)?.slice(0, 40)}`);
        return n;
      });
    }
    return { name, datatype: dt, shape, contents };
  });
}

/** The part of inference.ModelInferResponse printed. */
export interface InferOutputs {
  outputs: { name: string; datatype: string; shape: number[]; contents?: ContentsLike | undefined }[];
  rawOutputContents: Buffer[];
}

function nest(flat: unknown[], shape: readonly number[]): unknown {
  if (shape.length === 0) return flat[0];
  if (shape.length === 1) return flat;
  const step = flat.length / Math.max(shape[0], 1);
  return Array.from({ length: shape[0] }, (_, i) => nest(flat.slice(i * step, (i + 1) * step), shape.slice(1)));
}

/** The outputs as a JSON-ready object: `{ name: { datatype, shape, data } }`, data nested by the shape. */
export function outputsToJson(response: InferOutputs): Record<string, { datatype: string; shape: number[]; data: unknown }> {
  const tensors = decodeInputs({ modelName: '', inputs: response.outputs, outputs: [], rawInputContents: response.rawOutputContents });
  const out: Record<string, { datatype: string; shape: number[]; data: unknown }> = {};
  for (const t of tensors) {
    const flat: unknown[] = Array.isArray(t.data)
      ? t.data.map((b) => b.toString('utf8'))
      : Array.from(t.data as ArrayLike<number | bigint>, (v) => (typeof v === 'bigint' ? Number(v) : t.datatype === 'BOOL' ? v !== 0 : v));
    out[t.name] = { datatype: t.datatype, shape: t.shape, data: nest(flat, t.shape) };
  }
  return out;
}

/** Parses the JSON of --input, naming the option on a syntax error. */
export function parseInputJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new UsageError(`--input is not valid JSON: ${(err as Error).message}`);
  }
}
