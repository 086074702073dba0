/** What every benchmark's command line shares: progress lines, option parsing, the code measured. */
import { execFileSync } from 'node:child_process';

/** A progress line, on stderr (stdout carries the report). */
export function say(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** An integer option in [min, max]; `fallback` when it is missing or empty. Throws naming the option. */
export function intOption(name: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer from ${min} to ${max}, given "${raw}"`);
  return n;
}

/** A number option in [min, max]; `fallback` when it is missing or empty. Throws naming the option. */
export function numberOption(name: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < min || n > max) throw new Error(`--${name} must be a number from ${min} to ${max}, given "${raw}"`);
  return n;
}

/**
 * The code measured: the commit of `repoDir`, and which tracked files differ from it (others may
 * be editing). The results under docs/ are not code, and the benchmarks rewrite them.
 */
export function codeVersion(repoDir: string): string {
  const git = (...args: string[]) => execFileSync('git', args, { cwd: repoDir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trimEnd();
  try {
    const commit = git('rev-parse', '--short', 'HEAD');
    const changed = git('status', '--porcelain', '--untracked-files=no')
      .split('\n')
      .filter(Boolean)
      .map((line) => line.slice(3))
      .filter((path) => path !== 'docs/BENCHMARKS.md' && path !== 'docs/lb-p99.svg' && path !== 'docs/bench-llm.svg');
    return changed.length === 0 ? `commit ${commit}` : `commit ${commit} plus uncommitted changes in ${changed.join(', ')}`;
  } catch {
    return 'unknown (not a git checkout)';
  }
}
