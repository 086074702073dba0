/**
 * A small Llama-architecture GGUF model, written here rather than downloaded: llama.cpp's `llama`
 * hyperparameters, an SPM-style vocabulary of its own (word pieces with the `▁` word prefix, the
 * byte-fallback tokens <0x00>..<0xFF>, <unk>/<s>/</s>), a chat template, and deterministic
 * weights from a seeded generator. It writes no good text; it exercises the real runtime end to
 * end (tokenize, evaluate, sample, stream, stop, cancel, batch).
 */
import { mulberry32 } from '../random';
import { GgmlType, gguf, writeGguf, type GgufTensor, type GgufValue } from './writer';

/** The sizes of a model. */
export interface LlamaShape {
  /** Width of the residual stream (llama.embedding_length). */
  embedding: number;
  /** Transformer blocks (llama.block_count). */
  layers: number;
  /** Attention heads (llama.attention.head_count); embedding must divide by it. */
  heads: number;
  /** Key/value heads (grouped-query attention); heads must divide by it. */
  kvHeads: number;
  /** Hidden width of the feed-forward block (llama.feed_forward_length). */
  feedForward: number;
  /** Longest context the model declares (llama.context_length). */
  contextLength: number;
  /** Most tokens in the vocabulary (control and byte tokens included). */
  vocabulary: number;
  /** Tensor element type of the matrices (norms are always F32). */
  type: GgmlType;
}

/**
 * Presets: `tiny` loads in well under a second (tests); `bench` is sized like a real model in the
 * way that matters for serving on a CPU: its weights (17M parameters, 69 MB in F32) are far larger
 * than the CPU's caches, so a decode step is bound by reading them and a batch of sequences shares
 * that read (what continuous batching buys), while one CPU thread still decodes on the order of
 * 100 tokens per second at one sequence. F32 rather than F16: on an AVX-512 CPU without native
 * F16 arithmetic, llama.cpp's F16 dot products are bound by converting the weights, not reading them.
 */
export const LLAMA_SHAPES = {
  tiny: { embedding: 64, layers: 2, heads: 4, kvHeads: 2, feedForward: 160, contextLength: 2048, vocabulary: 4096, type: GgmlType.F32 },
  bench: { embedding: 512, layers: 4, heads: 8, kvHeads: 2, feedForward: 1024, contextLength: 4096, vocabulary: 8192, type: GgmlType.F32 },
} as const satisfies Record<string, LlamaShape>;

/** Names of the presets. */
export type LlamaSize = keyof typeof LLAMA_SHAPES;

/** The chat template the model file carries (Jinja, as `tokenizer.chat_template`). */
export const CHAT_TEMPLATE =
  "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

/** SPM token types (llama.cpp `llama_token_type`). */
const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, byte: 6 } as const;
/** SPM's word-start mark: a space in the text is `▁` in the pieces. */
export const WORD_PREFIX = '\u2581';

/** The ids of the special tokens. */
export const SPECIAL_TOKENS = { unk: 0, bos: 1, eos: 2 } as const;

/** A vocabulary in id order, with scores and types. */
export interface Vocabulary {
  tokens: string[];
  scores: number[];
  types: number[];
}

/**
 * Builds the vocabulary: <unk> <s> </s>, the 256 byte tokens, `▁` and the printable ASCII
 * characters, then for each word (most frequent first) the word with its `▁` prefix and every
 * prefix of it, until `size` tokens. Every piece is reached by merging a shorter piece with one
 * character, so llama.cpp's SPM merges find each word; unknown text falls back to bytes.
 */
export function buildVocabulary(words: readonly string[], size: number): Vocabulary {
  const tokens: string[] = ['<unk>', '<s>', '</s>'];
  const types: number[] = [TOKEN_TYPE.unknown, TOKEN_TYPE.control, TOKEN_TYPE.control];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(TOKEN_TYPE.byte);
  }
  const seen = new Set<string>(tokens);
  const add = (piece: string) => {
    if (seen.has(piece) || tokens.length >= size) return;
    seen.add(piece);
    tokens.push(piece);
    types.push(TOKEN_TYPE.normal);
  };
  add(WORD_PREFIX);
  for (let c = 0x21; c < 0x7f; c++) add(String.fromCharCode(c));
  for (const word of words) {
    if (tokens.length >= size) break;
    for (let end = 1; end <= word.length; end++) add(WORD_PREFIX + word.slice(0, end));
  }
  // Longer pieces score higher, so a merge into a whole word wins over a shorter split.
  const scores = tokens.map((piece, id) => (types[id] === TOKEN_TYPE.normal ? piece.length - id / tokens.length : 0));
  return { tokens, scores, types };
}

/** What a model file is made from. */
export interface LlamaModelSpec {
  /** `general.name`. */
  name: string;
  /** Words for the vocabulary, most frequent first (ASCII letters, digits and `'`). */
  words: readonly string[];
  shape: LlamaShape;
  /** Seed of the weights: the same seed, words and shape give the same file, byte for byte. */
  seed: number;
}

/** The GGUF file of a Llama-architecture model. */
export function llamaGguf(spec: LlamaModelSpec): Buffer {
  const { shape } = spec;
  if (shape.embedding % shape.heads !== 0) throw new RangeError(`embedding ${shape.embedding} must divide by heads ${shape.heads}`);
  if (shape.heads % shape.kvHeads !== 0) throw new RangeError(`heads ${shape.heads} must divide by kvHeads ${shape.kvHeads}`);
  const vocab = buildVocabulary(spec.words, shape.vocabulary);
  const n = vocab.tokens.length;
  const headDim = shape.embedding / shape.heads;
  const kvWidth = headDim * shape.kvHeads;
  const random = mulberry32(spec.seed);
  /** Uniform weights with the variance of N(0, 1/fan_in) times `gain`. */
  const matrix = (name: string, inputs: number, outputs: number, gain = 1): GgufTensor => {
    const data = new Float32Array(inputs * outputs);
    const bound = gain * Math.sqrt(3 / inputs);
    for (let i = 0; i < data.length; i++) data[i] = (random() * 2 - 1) * bound;
    return { name, dims: [inputs, outputs], type: shape.type, data };
  };
  const ones = (name: string): GgufTensor => ({ name, dims: [shape.embedding], type: GgmlType.F32, data: new Float32Array(shape.embedding).fill(1) });

  const tensors: GgufTensor[] = [matrix('token_embd.weight', shape.embedding, n, Math.sqrt(shape.embedding))];
  for (let l = 0; l < shape.layers; l++) {
    const p = `blk.${l}.`;
    tensors.push(
      ones(`${p}attn_norm.weight`),
      matrix(`${p}attn_q.weight`, shape.embedding, shape.embedding),
      matrix(`${p}attn_k.weight`, shape.embedding, kvWidth),
      matrix(`${p}attn_v.weight`, shape.embedding, kvWidth),
      matrix(`${p}attn_output.weight`, shape.embedding, shape.embedding, 0.5),
      ones(`${p}ffn_norm.weight`),
      matrix(`${p}ffn_gate.weight`, shape.embedding, shape.feedForward),
      matrix(`${p}ffn_up.weight`, shape.embedding, shape.feedForward),
      matrix(`${p}ffn_down.weight`, shape.feedForward, shape.embedding, 0.5),
    );
  }
  tensors.push(ones('output_norm.weight'), matrix('output.weight', shape.embedding, n, 3));

  const metadata: [string, GgufValue][] = [
    ['general.architecture', gguf.str('llama')],
    ['general.name', gguf.str(spec.name)],
    ['general.file_type', gguf.u32(shape.type === GgmlType.F16 ? 1 : 0)],
    ['llama.context_length', gguf.u32(shape.contextLength)],
    ['llama.embedding_length', gguf.u32(shape.embedding)],
    ['llama.block_count', gguf.u32(shape.layers)],
    ['llama.feed_forward_length', gguf.u32(shape.feedForward)],
    ['llama.attention.head_count', gguf.u32(shape.heads)],
    ['llama.attention.head_count_kv', gguf.u32(shape.kvHeads)],
    ['llama.rope.dimension_count', gguf.u32(headDim)],
    ['llama.rope.freq_base', gguf.f32(10000)],
    ['llama.attention.layer_norm_rms_epsilon', gguf.f32(1e-5)],
    ['llama.vocab_size', gguf.u32(n)],
    ['tokenizer.ggml.model', gguf.str('llama')],
    ['tokenizer.ggml.tokens', gguf.strings(vocab.tokens)],
    ['tokenizer.ggml.scores', gguf.f32s(vocab.scores)],
    ['tokenizer.ggml.token_type', gguf.i32s(vocab.types)],
    ['tokenizer.ggml.unknown_token_id', gguf.u32(SPECIAL_TOKENS.unk)],
    ['tokenizer.ggml.bos_token_id', gguf.u32(SPECIAL_TOKENS.bos)],
    ['tokenizer.ggml.eos_token_id', gguf.u32(SPECIAL_TOKENS.eos)],
    ['tokenizer.ggml.add_bos_token', gguf.bool(true)],
    ['tokenizer.ggml.add_eos_token', gguf.bool(false)],
    ['tokenizer.chat_template', gguf.str(CHAT_TEMPLATE)],
  ];
  return writeGguf(metadata, tensors);
}
