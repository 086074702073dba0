/**
 * The `maas` command line as data: every command, its arguments and its options (with their
 * checks, defaults and doc lines) are declared once here, and the parser, `--help` and the shell
 * completion script are all derived from this table. Pure: no process globals, no gRPC.
 */
import { MAX_ATTEMPTS, MAX_SHARD_SIZE, MAX_TIMEOUT_MS, MAX_TOP_K, REDUCERS } from '../job-spec';
import { DEFAULT_MAX_TOKENS, MAX_STOP_CHARS, MAX_STOP_SEQUENCES, MAX_TOKENS_LIMIT } from '../validation';
import { DEFAULT_CERTS_DIR } from '../../common/tls';
import { UsageError } from './jobs';
import { DEFAULT_MODEL_REPOSITORY } from './make-examples';

/** How a value is checked before anything is sent. */
export type Check = { int: readonly [number, number] } | { number: readonly [number, number] } | { choices: readonly string[] };

/** One option of a command. */
export interface OptionSpec {
  /** The value's name in help (`N`, `FILE`); absent for a flag that takes no value. */
  value?: string;
  doc: string;
  /** May be given more than once; the values are collected in order. */
  multiple?: boolean;
  check?: Check;
  /** The value when the option is absent (checked like a given one). */
  default?: string;
  /** An environment variable read when the option is absent, before `default`. */
  env?: string;
  /** What the shell completes for the value. */
  complete?: 'file' | 'dir';
  /** A one-letter alias (`-h`). */
  short?: string;
}

/** One command, e.g. `maas job list`. */
export interface CommandSpec {
  path: readonly string[];
  /** Arguments as shown in usage, e.g. `PROMPT|-`. */
  args: string;
  /** Fewest and most positional arguments. */
  positionals: readonly [number, number];
  summary: string;
  /** More lines of help, shown by `maas <command> --help`. */
  details?: string;
  options: Readonly<Record<string, OptionSpec>>;
  /** Talks to the gateway: takes --gateway, --api-key, --cacert, --timeout-ms. */
  client: boolean;
  /** Has no --json (maas up: its output is the services' logs). */
  noJson?: boolean;
}

/** The gateway's port when `--gateway` names only a host. */
export const DEFAULT_GATEWAY_PORT = 50051;
/** Most of `--page-size` (the gateway's limit). */
export const MAX_PAGE_SIZE = 1000;
/** Largest seed that survives the trip through a JavaScript number (seed is a uint64). */
const MAX_SEED = Number.MAX_SAFE_INTEGER;
const PRIORITY_CHOICES = ['low', 'normal', 'high'] as const;
const PORT = { int: [1, 65535] } as const;

/** Options every command takes. */
export const COMMON_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  json: { doc: 'print one JSON document (JSON lines for streams and watches) instead of text; errors go to stderr as {"error": {...}}' },
  help: { short: 'h', doc: 'show this help' },
};

/** Options of every command that calls the gateway. */
export const CLIENT_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  gateway: { value: 'HOST[:PORT]', env: 'MAAS_GATEWAY', default: `127.0.0.1:${DEFAULT_GATEWAY_PORT}`, doc: `gateway address; a HOST alone means port ${DEFAULT_GATEWAY_PORT}` },
  'api-key': { value: 'KEY', env: 'MAAS_API_KEY', doc: 'API key, when the gateway requires one' },
  cacert: { value: 'FILE', env: 'MAAS_CACERT', complete: 'file', doc: 'talk TLS to the gateway, trusting this CA (unset or empty: plaintext)' },
  'timeout-ms': { value: 'N', default: '60000', check: { int: [1, 86_400_000] }, doc: 'deadline of the call, in milliseconds' },
};

const GENERATE_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  'max-tokens': { value: 'N', check: { int: [1, MAX_TOKENS_LIMIT] }, doc: `most tokens to generate, 1 to ${MAX_TOKENS_LIMIT} (unset: the server's default, ${DEFAULT_MAX_TOKENS})` },
  temperature: { value: 'T', check: { number: [0, 2] }, doc: 'sampling temperature, 0 (greedy) to 2 (default 1)' },
  seed: { value: 'S', check: { int: [0, MAX_SEED] }, doc: 'seed of the sampler, a whole number >= 0: same seed, same output (unset: random)' },
  stop: { value: 'SEQ', multiple: true, doc: `stop when the output contains SEQ (at most ${MAX_STOP_SEQUENCES}, each 1 to ${MAX_STOP_CHARS} characters; repeatable)` },
};

/** Every command, in the order `maas --help` lists them. */
export const COMMANDS: readonly CommandSpec[] = [
  {
    path: ['up'],
    args: '',
    positionals: [0, 0],
    client: false,
    noJson: true,
    summary: 'start every service of the mesh on this machine (Ctrl-C stops it)',
    options: {
      host: { value: 'H', default: '127.0.0.1', doc: 'interface for all services' },
      'gateway-port': { value: 'N', default: String(DEFAULT_GATEWAY_PORT), check: PORT, doc: 'public API port; scheduler N+1, balancer N+2, aggregator N+3, workers from N+4' },
      'http-port': { value: 'N', default: '8080', check: { int: [-1, 65535] }, doc: "the gateway's OpenAI-compatible HTTP API (-1: off, written --http-port=-1 or --http-port -1)" },
      'scheduler-port': { value: 'N', check: PORT, doc: 'the scheduler (default gateway port + 1)' },
      'balancer-port': { value: 'N', check: PORT, doc: 'the balancer (default gateway port + 2)' },
      'aggregator-port': { value: 'N', check: PORT, doc: 'the aggregator (default gateway port + 3)' },
      'worker-base-port': { value: 'N', check: PORT, doc: 'the first worker (default gateway port + 4)' },
      'metrics-port': { value: 'N', default: '9401', check: { int: [-1, 65535] }, doc: "Prometheus /metrics of the gateway; scheduler N+1, balancer N+2, aggregator N+3, workers a free port each (0: every service a free port, -1: off)" },
      workers: { value: 'N', default: '2', check: { int: [1, 64] }, doc: 'number of worker processes' },
      'max-restarts': { value: 'N', default: '5', check: { int: [0, 1000] }, doc: 'a service that exits unexpectedly is started again after 0.5 s, 1 s, 2 s.. (reset after 30 s of serving); after N restarts in a row maas up gives up and stops the mesh' },
      policy: { value: 'P', default: 'p2c', doc: 'balancing policy: round_robin, random, least_outstanding, p2c, p2c_ewma, weighted, consistent_hash' },
      'input-root': { value: 'DIR', default: '.maas/input', complete: 'dir', doc: "where jobs' input files are read from" },
      'output-root': { value: 'DIR', default: '.maas/output', complete: 'dir', doc: 'where collect writes output files, a folder per tenant' },
      'model-repository': { value: 'DIR', env: 'MAAS_MODEL_REPOSITORY', default: DEFAULT_MODEL_REPOSITORY, complete: 'dir', doc: "the workers' model repository" },
      'api-keys-file': { value: 'FILE', complete: 'file', doc: 'API key file for the gateway (only the gateway is given it)' },
      tls: { doc: 'mutual TLS between all services, TLS on the gateway; creates the certificates in --certs-dir if missing (see maas certs)' },
      'certs-dir': { value: 'DIR', default: DEFAULT_CERTS_DIR, complete: 'dir', doc: 'certificates for --tls' },
      insecure: { doc: 'let services serve plaintext on a non-loopback --host' },
    },
  },
  {
    path: ['certs'],
    args: '',
    positionals: [0, 0],
    client: false,
    summary: 'create the mesh CA and a certificate per service (existing files kept)',
    options: {
      out: { value: 'DIR', default: DEFAULT_CERTS_DIR, complete: 'dir', doc: 'where; keys are written 0600' },
      workers: { value: 'N', default: '2', check: { int: [1, 1000] }, doc: 'certificates for worker-1 .. worker-N' },
      'worker-ids': { value: 'A,B', doc: 'certificates for these worker ids instead' },
      san: { value: 'NAME', multiple: true, doc: 'extra DNS name or IP in every service certificate (repeatable)' },
      days: { value: 'N', default: '365', check: { int: [1, 36500] }, doc: 'validity of the service certificates, in days' },
      force: { doc: 'new CA and new certificates even where files exist' },
    },
  },
  {
    path: ['keys', 'add'],
    args: '',
    positionals: [0, 0],
    client: false,
    summary: 'make a new API key for a tenant, append its hash to a key file and print the key once',
    details: 'The key file is created (mode 600) if missing; the key itself is written nowhere else.',
    options: {
      tenant: { value: 'T', doc: 'the tenant the key belongs to (required)' },
      file: { value: 'FILE', complete: 'file', doc: "the key file, the gateway's --api-keys-file (required)" },
    },
  },
  {
    path: ['models'],
    args: '',
    positionals: [0, 0],
    client: true,
    summary: 'list the ready models with their metadata (tensor models: platform, version, inputs, outputs)',
    options: {},
  },
  {
    path: ['models', 'make-examples'],
    args: '',
    positionals: [0, 0],
    client: false,
    summary: 'write the example models (spam-onnx, mlp, tiny-llama) into a model repository folder',
    details: 'spam-onnx: spam-nb exported to ONNX; mlp: a perceptron for benchmarks; tiny-llama: a small Llama GGUF model with a Spam Assassin vocabulary.',
    options: {
      out: { value: 'DIR', env: 'MAAS_MODEL_REPOSITORY', default: DEFAULT_MODEL_REPOSITORY, complete: 'dir', doc: 'the repository folder' },
      'llama-size': { value: 'SIZE', default: 'tiny', check: { choices: ['tiny', 'bench'] }, doc: "tiny-llama's size: tiny (2 layers, loads in well under a second) or bench (4 layers, width 512, F32, 69 MB; for bench:llm)" },
    },
  },
  {
    path: ['workers'],
    args: '',
    positionals: [0, 0],
    client: true,
    summary: "the balancer's view of its workers: state, load, latency, ejections",
    options: {},
  },
  {
    path: ['generate'],
    args: 'PROMPT...|-',
    positionals: [1, Infinity],
    client: true,
    summary: 'stream generated tokens (- reads the prompt from standard input)',
    details: 'The words of PROMPT are joined by spaces. Text mode prints the tokens as they come and the finish reason on stderr; --json prints one GenerateResponse per line.',
    options: { model: { value: 'M', doc: 'the model (required)' }, ...GENERATE_OPTIONS },
  },
  {
    path: ['predict'],
    args: 'INPUT...|-',
    positionals: [1, Infinity],
    client: true,
    summary: 'classify one input: label and class probabilities (- reads it from standard input)',
    options: { model: { value: 'M', doc: 'the model (required)' } },
  },
  {
    path: ['infer'],
    args: 'MODEL',
    positionals: [1, 1],
    client: true,
    summary: 'run a tensor model (KServe v2 ModelInfer) and print its outputs as JSON',
    details: [
      'JSON maps input names to nested arrays, e.g. \'{"x": [[5.1, 3.5, 1.4, 0.2]]}\' (shape from the nesting,',
      'data type from the model), or to {"datatype", "shape", "data"}; strings are BYTES.',
      'Outputs print as {"name": {"datatype", "shape", "data"}}.',
    ].join('\n'),
    options: {
      input: { value: 'JSON', doc: 'the inputs (or --file)' },
      file: { value: 'F', complete: 'file', doc: 'read the JSON from file F (- : standard input)' },
      version: { value: 'V', doc: 'the model version (default: the newest served)' },
      priority: { value: 'P', check: { choices: PRIORITY_CHOICES }, doc: 'low, normal or high; sent as the request parameter "priority"' },
    },
  },
  {
    path: ['job', 'submit'],
    args: '',
    positionals: [0, 0],
    client: true,
    summary: 'submit a batch job: (--mapper M | --model M) (--dataset D | --input FILE | --record TEXT...)',
    details: 'Without --watch, prints the job id and returns at once. --input FILE is relative to the mesh\'s input root.',
    options: {
      mapper: { value: 'M', doc: 'a built-in mapper, e.g. wordcount' },
      model: { value: 'M', doc: 'a model applied to every record' },
      dataset: { value: 'D', doc: 'a built-in dataset, e.g. spam-assassin' },
      input: { value: 'FILE', doc: "a file under the mesh's input root, one record per line" },
      record: { value: 'TEXT', multiple: true, doc: 'an inline record (repeatable)' },
      reducer: { value: 'R', check: { choices: REDUCERS }, doc: `how outputs are reduced: ${REDUCERS.join(', ')} (default: top_k for words, collect otherwise)` },
      'shard-size': { value: 'N', check: { int: [1, MAX_SHARD_SIZE] }, doc: `records per task, 1 to ${MAX_SHARD_SIZE}` },
      'top-k': { value: 'K', check: { int: [1, MAX_TOP_K] }, doc: `words kept by top_k, 1 to ${MAX_TOP_K}` },
      'max-attempts': { value: 'N', check: { int: [1, MAX_ATTEMPTS] }, doc: `attempts per task, 1 to ${MAX_ATTEMPTS}` },
      'job-timeout-ms': { value: 'N', check: { int: [1, MAX_TIMEOUT_MS] }, doc: 'deadline of the whole job, in milliseconds (up to 7 days)' },
      priority: { value: 'P', check: { choices: PRIORITY_CHOICES }, doc: 'low, normal or high' },
      'callback-url': { value: 'URL', doc: 'called when the job ends' },
      output: { value: 'FILE', doc: 'collect: write the outputs to FILE under your folder of the output root' },
      overwrite: { doc: 'replace an existing --output file' },
      watch: { doc: 'follow the job until it ends (as maas job watch)' },
      ...GENERATE_OPTIONS,
    },
  },
  {
    path: ['job', 'watch'],
    args: 'ID',
    positionals: [1, 1],
    client: true,
    summary: "replay the job's events, then follow them live until it ends (exit 1 if it fails or is cancelled)",
    options: {},
  },
  { path: ['job', 'get'], args: 'ID', positionals: [1, 1], client: true, summary: 'state, progress and result of a job', options: {} },
  {
    path: ['job', 'list'],
    args: '',
    positionals: [0, 0],
    client: true,
    summary: 'your jobs, newest first, a page at a time',
    details: 'Text mode ends with the command for the next page when there is one; --json prints {"jobs": [...], "nextPageToken": "..."}.',
    options: {
      'page-size': { value: 'N', check: { int: [1, MAX_PAGE_SIZE] }, doc: `jobs per page, 1 to ${MAX_PAGE_SIZE} (default 50)` },
      'page-token': { value: 'T', doc: 'the page after a previous one (its nextPageToken)' },
      all: { doc: 'every page, one after the other' },
    },
  },
  { path: ['job', 'cancel'], args: 'ID', positionals: [1, 1], client: true, summary: 'cancel a job', options: {} },
  {
    path: ['completion'],
    args: 'bash',
    positionals: [1, 1],
    client: false,
    summary: 'print a shell completion script: source <(maas completion bash)',
    options: {},
  },
];

/** What the command line asks for. */
export type Invocation =
  | { kind: 'run'; command: CommandSpec; values: Values; positionals: string[]; json: boolean }
  | { kind: 'help'; path: string[] }
  | { kind: 'version'; json: boolean };

/** Parsed option values: numbers for checked numbers, arrays for repeatable options. */
export type Values = Record<string, string | number | boolean | string[] | undefined>;

/** Options of `command`, its own and the shared ones. */
export function optionsOf(command: CommandSpec): Record<string, OptionSpec> {
  const common: Record<string, OptionSpec> = { ...COMMON_OPTIONS };
  if (command.noJson) delete common.json;
  return { ...command.options, ...(command.client ? CLIENT_OPTIONS : {}), ...common };
}

const TOP_OPTIONS: Record<string, OptionSpec> = { ...CLIENT_OPTIONS, ...COMMON_OPTIONS, version: { doc: 'print the version of maas' } };

function commandName(path: readonly string[]): string {
  return `maas ${path.join(' ')}`;
}

/** `--name value` / `--name=value` / `-h`: one option and the index after it. */
interface OptionToken {
  name: string;
  value?: string;
  next: number;
}

/** Reads the option at argv[i] against `table`; throws a one-line UsageError for anything wrong. */
function readOption(argv: readonly string[], i: number, table: Record<string, OptionSpec>, where: string): OptionToken {
  const arg = argv[i];
  let name: string;
  let inline: string | undefined;
  if (arg.startsWith('--')) {
    const eq = arg.indexOf('=');
    name = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
    inline = eq === -1 ? undefined : arg.slice(eq + 1);
  } else {
    const short = Object.entries(table).find(([, o]) => o.short !== undefined && `-${o.short}` === arg);
    if (!short) throw new UsageError(`unknown option ${arg.slice(0, 40)} for ${where}`);
    name = short[0];
  }
  const spec = table[name];
  if (!spec) throw new UsageError(`unknown option --${name.slice(0, 40)} for ${where} (see ${where} --help)`);
  if (spec.value === undefined) {
    if (inline !== undefined) throw new UsageError(`--${name} takes no value, given "${inline.slice(0, 40)}"`);
    return { name, next: i + 1 };
  }
  if (inline !== undefined) return { name, value: inline, next: i + 1 };
  const value = argv[i + 1];
  // A value may start with one dash (`--seed -5`, `--file -`); `--x` after an option is a forgotten value.
  if (value === undefined || value.startsWith('--') || (/^-[A-Za-z]/.test(value) && table[value.slice(1)] === undefined)) {
    throw new UsageError(`--${name} needs a value (${spec.value})`);
  }
  return { name, value, next: i + 2 };
}

/** Checks one raw value; returns it converted (numbers for number checks). */
export function checkValue(name: string, raw: string, spec: OptionSpec, source = `--${name}`): string | number {
  const check = spec.check;
  const given = JSON.stringify(raw.slice(0, 40));
  if (check && 'int' in check) {
    const [min, max] = check.int;
    const n = Number(raw);
    if (!/^[+-]?\d+$/.test(raw.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new UsageError(`${source} must be a whole number from ${min} to ${max}, given ${given}`);
    }
    return n;
  }
  if (check && 'number' in check) {
    const [min, max] = check.number;
    const n = Number(raw);
    if (raw.trim() === '' || !Number.isFinite(n) || n < min || n > max) throw new UsageError(`${source} must be a number from ${min} to ${max}, given ${given}`);
    return n;
  }
  if (check && 'choices' in check && !check.choices.includes(raw)) {
    throw new UsageError(`${source} must be one of ${check.choices.join(', ')}, given ${given}`);
  }
  return raw;
}

function findCommand(path: readonly string[]): CommandSpec | undefined {
  return COMMANDS.find((c) => c.path.length === path.length && c.path.every((p, i) => p === path[i]));
}

/** The subcommands of a command group such as `job`. */
export function subcommandsOf(word: string): string[] {
  return COMMANDS.filter((c) => c.path[0] === word && c.path.length > 1).map((c) => c.path[1]);
}

/**
 * Parses the command line. Options may come before the command (only the shared ones:
 * `maas --gateway h:1 models`) or anywhere after it; `--` ends the options. Throws UsageError with
 * a one-line message for an unknown command or option, a missing or bad value, or a wrong number
 * of arguments.
 */
export function parseCommandLine(argv: readonly string[], env: Readonly<Record<string, string | undefined>>): Invocation {
  const before: string[] = [];
  let i = 0;
  let version = false;
  let json = false;
  while (i < argv.length && argv[i].startsWith('-') && argv[i] !== '-' && argv[i] !== '--') {
    const t = readOption(argv, i, TOP_OPTIONS, 'maas');
    if (t.name === 'help') return { kind: 'help', path: [] };
    if (t.name === 'version') version = true;
    else if (t.name === 'json') json = true;
    else before.push(...argv.slice(i, t.next));
    i = t.next;
  }
  if (argv[i] === '--') i++;
  const word = argv[i];
  if (version) return { kind: 'version', json: json || argv.includes('--json') };
  if (word === undefined) {
    throw new UsageError('no command given (see maas --help)');
  }
  if (word === 'help') {
    const path = argv.slice(i + 1).filter((a) => !a.startsWith('-'));
    if (path.length && !COMMANDS.some((c) => c.path[0] === path[0])) throw new UsageError(`unknown command "${path[0].slice(0, 40)}" (see maas --help)`);
    return { kind: 'help', path };
  }
  if (!COMMANDS.some((c) => c.path[0] === word)) throw new UsageError(`unknown command "${word.slice(0, 40)}" (see maas --help)`);
  i++;
  const subs = subcommandsOf(word);
  let command = findCommand([word]);
  if (subs.length > 0 && argv[i] !== undefined && subs.includes(argv[i])) {
    command = findCommand([word, argv[i]]);
    i++;
  }
  const rest = argv.slice(i);
  if (!command) {
    if (rest.includes('--help') || rest.includes('-h') || rest.length === 0) {
      if (rest.length === 0) throw new UsageError(`${commandName([word])} needs one of ${subs.join(', ')} (see maas ${word} --help)`);
      return { kind: 'help', path: [word] };
    }
    throw new UsageError(`${commandName([word])} needs one of ${subs.join(', ')}, given "${rest[0].slice(0, 40)}"`);
  }
  const where = commandName(command.path);
  const table = optionsOf(command);
  const given: Record<string, string[]> = {};
  const positionals: string[] = [];
  if (json) {
    if (!table.json) throw new UsageError(`unknown option --json for ${where} (see ${where} --help)`);
    given.json = [''];
  }
  const args = [...before, ...rest];
  for (let j = 0; j < args.length; ) {
    const arg = args[j];
    if (arg === '--') {
      positionals.push(...args.slice(j + 1));
      break;
    }
    if (!arg.startsWith('-') || arg === '-') {
      positionals.push(arg);
      j++;
      continue;
    }
    const t = readOption(args, j, table, where);
    if (t.name === 'help') return { kind: 'help', path: [...command.path] };
    if (given[t.name] && !table[t.name].multiple && table[t.name].value !== undefined) throw new UsageError(`--${t.name} is given twice`);
    (given[t.name] ??= []).push(t.value ?? '');
    j = t.next;
  }
  const [min, max] = command.positionals;
  if (positionals.length < min) throw new UsageError(`${where} needs ${command.args}`);
  if (positionals.length > max) {
    throw new UsageError(max === 0 ? `${where} takes no arguments, given "${positionals[0].slice(0, 40)}"` : `${where} takes ${command.args}, given ${positionals.length} arguments`);
  }
  const values: Values = {};
  for (const [name, spec] of Object.entries(table)) {
    const raws = given[name];
    if (spec.value === undefined) {
      values[name] = raws !== undefined;
      continue;
    }
    if (raws !== undefined) {
      const checked = raws.map((r) => checkValue(name, r, spec));
      values[name] = spec.multiple ? (checked as string[]) : checked[0];
      continue;
    }
    const fromEnv = spec.env !== undefined ? env[spec.env] : undefined;
    if (fromEnv !== undefined && fromEnv !== '') values[name] = checkValue(name, fromEnv, spec, `$${spec.env}`);
    else if (spec.default !== undefined) values[name] = checkValue(name, spec.default, spec);
  }
  return { kind: 'run', command, values, positionals, json: values.json === true };
}

/**
 * A gateway address with its port: `host` -> `host:50051`, `[::1]` -> `[::1]:50051`, a bare IPv6
 * address gets brackets; `host:port` is kept (the port checked). Names with a scheme (`dns:`,
 * `unix:`) are passed through.
 */
export function gatewayAddress(raw: string): string {
  const address = raw.trim();
  if (address === '') throw new UsageError('--gateway must not be empty');
  if (/^(dns|unix|unix-abstract|ipv4|ipv6):/.test(address)) return address;
  let host = address;
  let port: string | undefined;
  const bracketed = /^\[([^\]]+)\](?::(.*))?$/.exec(address);
  if (bracketed) {
    host = `[${bracketed[1]}]`;
    port = bracketed[2];
  } else if ((address.match(/:/g) ?? []).length === 1) {
    [host, port] = address.split(':');
  } else if (address.includes(':')) {
    host = `[${address}]`;
  }
  if (host === '' || host === '[]') throw new UsageError(`--gateway needs a host, given "${address.slice(0, 60)}"`);
  if (port === undefined || port === '') return `${host}:${DEFAULT_GATEWAY_PORT}`;
  const n = Number(port);
  if (!/^\d+$/.test(port) || n < 1 || n > 65535) throw new UsageError(`--gateway port must be from 1 to 65535, given "${port.slice(0, 20)}"`);
  return `${host}:${n}`;
}

function optionLines(table: Record<string, OptionSpec>): string[] {
  const rows = Object.entries(table).map(([name, o]) => {
    const left = `${o.short ? `-${o.short}, ` : ''}--${name}${o.value ? ` ${o.value}` : ''}`;
    const extra = [o.env ? `$${o.env}` : '', o.default !== undefined ? `default ${o.default}` : ''].filter(Boolean).join(', ');
    return [left, extra ? `${o.doc} (${extra})` : o.doc] as const;
  });
  const width = Math.min(28, Math.max(...rows.map(([l]) => l.length)) + 2);
  return rows.map(([left, doc]) => (left.length + 2 > width ? `  ${left}\n  ${' '.repeat(width)}${doc}` : `  ${left.padEnd(width)}${doc}`));
}

/** The exit codes, for help and README. */
export const EXIT_CODE_LINES = [
  '  0        ok',
  '  1        a watched job ended failed or cancelled',
  '  2        usage: a bad command line, refused before anything was sent',
  '  3        the gateway cannot be reached (connection refused, unknown host, TLS handshake failed)',
  '  4        a local failure (a file that cannot be read or written, a child process that failed)',
  '  10+N     the gateway answered with gRPC status N: 13 INVALID_ARGUMENT, 14 DEADLINE_EXCEEDED,',
  '           15 NOT_FOUND, 17 PERMISSION_DENIED, 18 RESOURCE_EXHAUSTED, 19 FAILED_PRECONDITION,',
  '           23 INTERNAL, 24 UNAVAILABLE (the gateway is up, the mesh behind it is not), 26 UNAUTHENTICATED',
];

/** `maas --help`, or `maas <command> --help`. */
export function helpText(path: readonly string[], version: string): string {
  if (path.length === 0) {
    const rows = COMMANDS.map((c) => [`${c.path.join(' ')}${c.args ? ` ${c.args}` : ''}`, c.summary] as const);
    const width = Math.max(...rows.map(([l]) => l.length)) + 2;
    return [
      `maas ${version}: the MaaS Mesh command line`,
      '',
      'usage: maas [options] <command> [arguments] [options]',
      '',
      'commands:',
      ...rows.map(([l, s]) => `  ${l.padEnd(width)}${s}`),
      '',
      'options of the commands that call the gateway (also before the command):',
      ...optionLines(TOP_OPTIONS),
      '',
      'exit codes:',
      ...EXIT_CODE_LINES,
      '',
      "maas <command> --help shows a command's options; maas completion bash prints a bash completion script.",
      '',
    ].join('\n');
  }
  const command = findCommand(path);
  if (!command) {
    const group = COMMANDS.filter((c) => c.path[0] === path[0]);
    return [
      `usage: maas ${path[0]} <${subcommandsOf(path[0]).join('|')}> [options]`,
      '',
      ...group.map((c) => `  ${`${c.path.join(' ')}${c.args ? ` ${c.args}` : ''}`.padEnd(22)}${c.summary}`),
      '',
      `maas ${path[0]} <subcommand> --help shows its options.`,
      '',
    ].join('\n');
  }
  return [
    `usage: ${commandName(command.path)}${command.args ? ` ${command.args}` : ''} [options]`,
    '',
    command.summary,
    ...(command.details ? [command.details] : []),
    '',
    'options:',
    ...optionLines(command.options),
    ...(command.client ? ['', 'gateway options:', ...optionLines(CLIENT_OPTIONS)] : []),
    '',
    ...optionLines(Object.fromEntries(Object.entries(COMMON_OPTIONS).filter(([n]) => !(command.noJson && n === 'json')))),
    '',
    'exit codes: see maas --help',
    '',
  ].join('\n');
}

/** A bash completion script for `maas`, derived from the command table. */
export function bashCompletion(): string {
  const groups = [...new Set(COMMANDS.map((c) => c.path[0]))];
  const subsCase = groups
    .filter((g) => subcommandsOf(g).length > 0)
    .map((g) => `    ${g}) subs="${subcommandsOf(g).join(' ')}" ;;`)
    .join('\n');
  const optsCase = COMMANDS.map((c) => {
    const names = Object.keys(optionsOf(c)).map((n) => `--${n}`);
    return `    "${c.path.join(' ')}") opts="${names.join(' ')}" ;;`;
  }).join('\n');
  const all: Record<string, OptionSpec> = Object.assign({}, TOP_OPTIONS, ...COMMANDS.map((c) => c.options));
  const valued = Object.entries(all).filter(([, o]) => o.value !== undefined);
  const valueCase = valued
    .map(([n, o]) => {
      const check = o.check;
      const action =
        check && 'choices' in check ? `COMPREPLY=($(compgen -W "${check.choices.join(' ')}" -- "$cur"))` : o.complete === 'dir' ? 'COMPREPLY=($(compgen -d -- "$cur"))' : o.complete === 'file' ? 'COMPREPLY=($(compgen -f -- "$cur"))' : 'COMPREPLY=()';
      return `    --${n}) ${action}; return 0 ;;`;
    })
    .join('\n');
  return `# bash completion for maas; load it with: source <(maas completion bash)
_maas() {
  local cur prev cmd="" sub="" subs="" opts i w
  cur="\${COMP_WORDS[COMP_CWORD]}"
  prev="\${COMP_WORDS[COMP_CWORD-1]}"
  case "$prev" in
${valueCase}
  esac
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    case "$w" in
      ${valued.map(([n]) => `--${n}`).join('|')}) ((i++)) ;;
      -*) ;;
      *)
        if [[ -z "$cmd" ]]; then cmd="$w"
        elif [[ -z "$sub" ]]; then sub="$w"
        fi ;;
    esac
  done
  case "$cmd" in
${subsCase}
  esac
  if [[ -z "$cmd" ]]; then
    if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "${Object.keys(TOP_OPTIONS).map((n) => `--${n}`).join(' ')}" -- "$cur"))
    else COMPREPLY=($(compgen -W "${groups.join(' ')} help" -- "$cur")); fi
    return 0
  fi
  if [[ -n "$subs" && -z "$sub" && "$cur" != -* ]]; then
    COMPREPLY=($(compgen -W "$subs" -- "$cur"))
    return 0
  fi
  [[ -n "$subs" && " $subs " != *" $sub "* ]] && sub=""
  case "$cmd\${sub:+ $sub}" in
${optsCase}
    *) opts="" ;;
  esac
  if [[ "$cmd" == completion && "$cur" != -* ]]; then COMPREPLY=($(compgen -W "bash" -- "$cur")); return 0; fi
  COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -F _maas maas
`;
}
