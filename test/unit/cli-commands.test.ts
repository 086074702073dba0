/** The maas command table's parser: local refusals with one-line messages, defaults, and gateway addresses. */
import { expect } from 'chai';
import { COMMANDS, gatewayAddress, helpText, parseCommandLine } from '../../gateway/cli/commands';
import { UsageError } from '../../gateway/cli/jobs';

function refusal(args: string[], env: Record<string, string> = {}): string {
  try {
    parseCommandLine(args, env);
  } catch (err) {
    expect(err).to.be.instanceOf(UsageError);
    return (err as Error).message;
  }
  throw new Error(`${args.join(' ')} was accepted`);
}

describe('maas command line parser', () => {
  it('refuses bad numbers, choices, unknown options, commands and arguments with a one-line message', () => {
    const cases: [string[], string][] = [
      [['generate', '--model', 'ngram', '--max-tokens', '2049', 'hi'], '--max-tokens must be a whole number from 1 to 2048, given "2049"'],
      [['generate', '--model', 'ngram', '--temperature', 'warm', 'hi'], '--temperature must be a number from 0 to 2, given "warm"'],
      [['generate', '--model', 'ngram'], 'maas generate needs PROMPT...|-'],
      [['generate', '--model', 'ngram', '--max-tokens'], '--max-tokens needs a value (N)'],
      [['models', '--page-size', '3'], 'unknown option --page-size for maas models (see maas models --help)'],
      [['job', 'list', '--page-size', '0'], '--page-size must be a whole number from 1 to 1000, given "0"'],
      [['job', 'list', 'extra'], 'maas job list takes no arguments, given "extra"'],
      [['job', 'submit', '--mapper', 'wordcount', '--record', 'a', '--reducer', 'median'], '--reducer must be one of sum, top_k, accuracy, collect, mean, given "median"'],
      [['job', 'submit', '--mapper', 'wordcount', '--record', 'a', '--priority', 'urgent'], '--priority must be one of low, normal, high, given "urgent"'],
      [['job', 'submit', '--mapper', 'wordcount', '--record', 'a', '--shard-size', '-3'], '--shard-size must be a whole number from 1 to 100000, given "-3"'],
      [['job', 'get'], 'maas job get needs ID'],
      [['frob'], 'unknown command "frob" (see maas --help)'],
      [['models', '--timeout-ms', '5s'], '--timeout-ms must be a whole number from 1 to 86400000, given "5s"'],
      [['up', '--gateway', 'x'], 'unknown option --gateway for maas up (see maas up --help)'],
      [['job', 'list', '--all=yes'], '--all takes no value, given "yes"'],
      [['job', 'list', '--page-size', '5', '--page-size', '6'], '--page-size is given twice'],
      [['--bogus', 'models'], 'unknown option --bogus for maas'],
      [['up', '--json'], 'unknown option --json for maas up'],
      [['--json', 'up'], 'unknown option --json for maas up'],
      [['job', 'get', 'a', 'b'], 'maas job get takes ID, given 2 arguments'],
    ];
    for (const [args, message] of cases) {
      const got = refusal(args);
      expect(got, args.join(' ')).to.include(message);
      expect(got).not.to.include('\n');
    }
  });

  it('fills defaults, reads the environment, converts numbers, and takes the shared options before the command', () => {
    const inv = parseCommandLine(['--gateway', 'gw.example', '--json', 'generate', '--model', 'ngram', '--max-tokens', '7', '--seed=0', '--temperature', '0.5', '--stop', 'a', '--stop', 'b', 'hello', 'world'], { MAAS_API_KEY: 'k' });
    expect(inv.kind).to.equal('run');
    if (inv.kind !== 'run') return;
    expect(inv.command.path).to.deep.equal(['generate']);
    expect(inv.json).to.equal(true);
    expect(inv.positionals).to.deep.equal(['hello', 'world']);
    expect(inv.values).to.deep.include({ gateway: 'gw.example', 'api-key': 'k', 'max-tokens': 7, seed: 0, temperature: 0.5, stop: ['a', 'b'], 'timeout-ms': 60000 });
    const infer = parseCommandLine(['infer', 'mlp', '--version', '2', '--file', '-'], {});
    expect(infer.kind === 'run' && infer.values).to.deep.include({ version: '2', file: '-' });
    expect(parseCommandLine(['--version'], {})).to.deep.equal({ kind: 'version', json: false });
    expect(parseCommandLine(['job', '--help'], {})).to.deep.equal({ kind: 'help', path: ['job'] });
    expect(parseCommandLine(['job', 'list', '-h', '--bogus'], {})).to.deep.equal({ kind: 'help', path: ['job', 'list'] });
  });

  it('--gateway HOST means port 50051; ports are checked; IPv6 gets brackets', () => {
    expect(gatewayAddress('gw.example')).to.equal('gw.example:50051');
    expect(gatewayAddress('10.0.0.1:7000')).to.equal('10.0.0.1:7000');
    expect(gatewayAddress('[::1]')).to.equal('[::1]:50051');
    expect(gatewayAddress('[::1]:9')).to.equal('[::1]:9');
    expect(gatewayAddress('::1')).to.equal('[::1]:50051');
    expect(gatewayAddress('dns:///gw.example:443')).to.equal('dns:///gw.example:443');
    expect(() => gatewayAddress('h:0')).to.throw(UsageError, '--gateway port must be from 1 to 65535, given "0"');
    expect(() => gatewayAddress(':80')).to.throw(UsageError, '--gateway needs a host');
  });

  it('every command has a help page naming each of its options', () => {
    for (const c of COMMANDS) {
      const text = helpText(c.path, '0');
      expect(text).to.include(`usage: maas ${c.path.join(' ')}`);
      for (const name of Object.keys(c.options)) expect(text, `${c.path.join(' ')} --${name}`).to.include(`--${name}`);
    }
  });
});
