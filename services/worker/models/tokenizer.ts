/**
 * Word-level tokenizer and detokenizer shared by the built-in models.
 *
 * Tokens are URLs, e-mail addresses, numbers (with inner separators: `3.14`, `1,000`, `10:30`),
 * words (letters and digits, with inner apostrophes and hyphens: `don't`, `e-mail`) and
 * punctuation (a run of one repeated mark, such as `...` or `!!!`, is one token).
 * Whitespace is not kept; {@link detokenize} puts single spaces back by simple rules.
 */

/** Options of {@link tokenize}. */
export interface TokenizeOptions {
  /** Lower-case every token (for classifiers, where case matters less than vocabulary size). */
  lowercase?: boolean;
}

// Order matters: the first alternative that matches at a position wins.
const TOKEN_PATTERN = new RegExp(
  [
    // URLs: trailing punctuation belongs to the sentence, not the URL.
    String.raw`(?:https?|ftp):\/\/[^\s<>"]*[^\s<>".,;:!?)\]'}]`,
    String.raw`[\p{L}\p{N}._%+-]+@[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)+`,
    String.raw`\p{N}+(?:[.,:]\p{N}+)+`,
    String.raw`[\p{L}\p{N}_]+(?:['’-][\p{L}\p{N}_]+)*`,
    String.raw`([^\s\p{L}\p{N}_])\1*`,
  ].join('|'),
  'gu',
);

/** Punctuation written with no space before it. */
const NO_SPACE_BEFORE = new Set([',', '.', '!', '?', ';', ':', "'", ')', ']', '}', '%']);
/** Punctuation written with no space after it. */
const NO_SPACE_AFTER = new Set(['(', '[', '{', '$']);

/** Splits text into word, number and punctuation tokens. */
export function tokenize(text: string, options: TokenizeOptions = {}): string[] {
  const tokens = text.match(TOKEN_PATTERN) ?? [];
  return options.lowercase ? tokens.map((token) => token.toLowerCase()) : tokens;
}

/** Whether a space separates `previous` and `next` when they are written one after the other. */
export function spaceBetween(previous: string | undefined, next: string): boolean {
  if (previous === undefined) return false;
  // Punctuation tokens are runs of one mark, so their last and first characters stand for them.
  return !NO_SPACE_AFTER.has(previous[previous.length - 1]) && !NO_SPACE_BEFORE.has(next[0]);
}

/** Joins tokens into text: single spaces, none before `, . ! ? ; : ' ) ] } %` (and runs of them) and none after `( [ { $`. */
export function detokenize(tokens: readonly string[]): string {
  let text = '';
  let previous: string | undefined;
  for (const token of tokens) {
    text += (spaceBetween(previous, token) ? ' ' : '') + token;
    previous = token;
  }
  return text;
}

/** Changes whenever the tokenization or spacing rules change; part of trained models' cache keys. */
export const TOKENIZER_FINGERPRINT = [TOKEN_PATTERN.source, [...NO_SPACE_BEFORE].join(''), [...NO_SPACE_AFTER].join('')].join('\n');
