/**
 * docs/BENCHMARKS.md is shared by every benchmark: each owns one section between
 * `<!-- bench:<id>:start -->` and `<!-- bench:<id>:end -->` and rewrites only that.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

const HEADER = `# Benchmarks

Results written by the benchmarks in \`bench/\`. Each benchmark rewrites only its own section,
between its \`<!-- bench:<id>:start -->\` and \`<!-- bench:<id>:end -->\` markers; text outside the
markers is kept.
`;

/** Replaces the section `id` of the markdown file at `path` (appending it when absent). */
export function writeBenchSection(path: string, id: string, body: string): void {
  const start = `<!-- bench:${id}:start -->`;
  const end = `<!-- bench:${id}:end -->`;
  const section = `${start}\n${body.trim()}\n${end}`;
  const current = existsSync(path) ? readFileSync(path, 'utf8') : HEADER;
  const from = current.indexOf(start);
  const to = current.indexOf(end, from);
  let next: string;
  if (from >= 0 && to > from) {
    next = current.slice(0, from) + section + current.slice(to + end.length);
  } else {
    next = `${current.trimEnd()}\n\n${section}\n`;
  }
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, next);
}

/** A markdown table; numbers are right-aligned. */
export function markdownTable(headers: string[], rows: (string | number)[][], rightAligned: boolean[]): string {
  const line = (cells: (string | number)[]) => `| ${cells.join(' | ')} |`;
  return [line(headers), line(rightAligned.map((r) => (r ? '---:' : '---'))), ...rows.map(line)].join('\n');
}

/** A fixed-width text table for the terminal. */
export function textTable(headers: string[], rows: (string | number)[][], rightAligned: boolean[]): string {
  const cells = [headers, ...rows].map((r) => r.map(String));
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  const pad = (s: string, i: number) => (rightAligned[i] ? s.padStart(widths[i]) : s.padEnd(widths[i]));
  const render = (r: string[]) => r.map(pad).join('  ').trimEnd();
  return [render(cells[0]), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map(render)].join('\n');
}
