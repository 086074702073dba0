/**
 * Typed configuration: every setting of every service has a command-line flag, an environment
 * variable and a visible default. A bad value stops the start with the setting's name in the
 * message. This module reads no process globals: callers pass argv and env in.
 */

/** One setting of a service's schema. */
export interface Setting<T> {
  /** Command-line flag, e.g. `--port`. */
  readonly flag: string;
  /** Environment variable, e.g. `MAAS_GATEWAY_PORT`. */
  readonly env: string;
  /** Value used when neither the flag nor the variable is given. */
  readonly default: T;
  /** One line for `--help` and the README's config tables. */
  readonly doc: string;
  /** Parses a raw string; throws an Error whose message says what was expected. */
  parse(raw: string): T;
  /** How the default is shown. */
  show(value: T): string;
  /** The flag may be given more than once: the values are joined with commas, as the variable writes them. */
  readonly repeatable?: boolean;
}

/** A service's config schema: setting name -> setting. */
export type Schema = Record<string, Setting<unknown>>;

/** The parsed values of a schema. */
export type ConfigOf<S extends Schema> = { [K in keyof S]: S[K] extends Setting<infer T> ? T : never };

/** Thrown for a bad or unknown setting; the message names it. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Common<T> = { flag: string; env: string; default: T; doc: string };

/** An integer setting within [min, max]. */
export function integer(o: Common<number> & { min?: number; max?: number }): Setting<number> {
  const min = o.min ?? Number.MIN_SAFE_INTEGER;
  const max = o.max ?? Number.MAX_SAFE_INTEGER;
  return {
    ...o,
    parse(raw) {
      if (!/^-?\d+$/.test(raw.trim())) throw new Error(`expected an integer, given "${raw}"`);
      const n = Number(raw);
      if (n < min || n > max) throw new Error(`expected an integer from ${min} to ${max}, given ${n}`);
      return n;
    },
    show: String,
  };
}

/** A floating-point setting within [min, max]. */
export function decimal(o: Common<number> & { min?: number; max?: number }): Setting<number> {
  const min = o.min ?? -Infinity;
  const max = o.max ?? Infinity;
  return {
    ...o,
    parse(raw) {
      const n = Number(raw);
      if (raw.trim() === '' || !Number.isFinite(n)) throw new Error(`expected a number, given "${raw}"`);
      if (n < min || n > max) throw new Error(`expected a number from ${min} to ${max}, given ${n}`);
      return n;
    },
    show: String,
  };
}

/** A free-form string setting; `allowEmpty` false rejects "". */
export function text(o: Common<string> & { allowEmpty?: boolean }): Setting<string> {
  return {
    ...o,
    parse(raw) {
      if (!o.allowEmpty && raw.trim() === '') throw new Error('expected a non-empty value');
      return raw;
    },
    show: (v) => (v === '' ? '(empty)' : v),
  };
}

/** One of a fixed set of choices. */
export function choice<C extends string>(o: Common<C> & { choices: readonly C[] }): Setting<C> {
  return {
    ...o,
    parse(raw) {
      if (!(o.choices as readonly string[]).includes(raw)) {
        throw new Error(`expected one of ${o.choices.join(', ')}, given "${raw}"`);
      }
      return raw as C;
    },
    show: String,
  };
}

/** A host:port address; an empty default means "not set". */
export function address(o: Common<string>): Setting<string> {
  return {
    ...o,
    parse(raw) {
      const m = /^(.+):(\d{1,5})$/.exec(raw.trim());
      if (!m || Number(m[2]) > 65535) throw new Error(`expected host:port, given "${raw}"`);
      return raw.trim();
    },
    show: (v) => (v === '' ? '(none)' : v),
  };
}

/** A true/false setting; accepts true/false/1/0/yes/no. A bare flag means true. */
export function boolean(o: Common<boolean>): Setting<boolean> {
  return {
    ...o,
    parse(raw) {
      const v = raw.trim().toLowerCase();
      if (['true', '1', 'yes', ''].includes(v)) return true;
      if (['false', '0', 'no'].includes(v)) return false;
      throw new Error(`expected true or false, given "${raw}"`);
    },
    show: String,
  };
}

/**
 * Parses a schema from command-line arguments (`--flag value` or `--flag=value`) and environment
 * variables; flags win over variables, variables over defaults. Throws ConfigError naming the
 * setting for a bad value, and for an unknown flag.
 */
export function parseConfig<S extends Schema>(schema: S, argv: readonly string[], env: Record<string, string | undefined>): ConfigOf<S> {
  const byFlag = new Map<string, [string, Setting<unknown>]>();
  for (const [key, setting] of Object.entries(schema)) byFlag.set(setting.flag, [key, setting]);
  const fromFlags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const eq = arg.indexOf('=');
    const flag = eq >= 0 ? arg.slice(0, eq) : arg;
    const entry = byFlag.get(flag);
    if (!entry) throw new ConfigError(`unknown flag ${flag}; known flags: ${[...byFlag.keys()].join(', ')}`);
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) value = argv[++i];
    else value = '';
    const earlier = fromFlags.get(entry[0]);
    fromFlags.set(entry[0], entry[1].repeatable && earlier !== undefined ? `${earlier},${value}` : value);
  }
  const out: Record<string, unknown> = {};
  for (const [key, setting] of Object.entries(schema)) {
    // An empty environment variable counts as unset, as most shells and orchestrators mean it.
    const fromEnv = env[setting.env] === '' ? undefined : env[setting.env];
    const raw = fromFlags.get(key) ?? fromEnv;
    if (raw === undefined) {
      out[key] = setting.default;
      continue;
    }
    const source = fromFlags.has(key) ? setting.flag : setting.env;
    try {
      out[key] = setting.parse(raw);
    } catch (err) {
      throw new ConfigError(`invalid ${source} (${key}): ${(err as Error).message}`);
    }
  }
  return out as ConfigOf<S>;
}

/** A Markdown table of a schema, for `--help` and the README. */
export function describeConfig(schema: Schema): string {
  const rows = Object.values(schema).map(
    (s) => `| \`${s.flag}\` | \`${s.env}\` | \`${s.show(s.default)}\` | ${s.doc} |`,
  );
  return ['| flag | environment | default | meaning |', '|---|---|---|---|', ...rows].join('\n');
}
