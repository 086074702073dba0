import { expect } from 'chai';
import {
  address,
  boolean,
  choice,
  ConfigError,
  decimal,
  describeConfig,
  integer,
  parseConfig,
  type Schema,
  type Setting,
  text,
} from '../../common/config.js';
import { gatewaySchema } from '../../gateway/config.js';
import { balancerSchema } from '../../services/balancer/config.js';
import { schedulerSchema } from '../../services/scheduler/config.js';
import { aggregatorSchema } from '../../services/aggregator/config';
import { workerSchema } from '../../services/worker/config.js';

/** A schema with one setting of every kind. */
const schema = {
  port: integer({ flag: '--port', env: 'MAAS_TEST_PORT', default: 8080, min: 0, max: 65535, doc: 'Port to bind.' }),
  ratio: decimal({ flag: '--ratio', env: 'MAAS_TEST_RATIO', default: 0.5, min: 0, max: 1, doc: 'A fraction.' }),
  name: text({ flag: '--name', env: 'MAAS_TEST_NAME', default: 'mesh', doc: 'A name.' }),
  note: text({ flag: '--note', env: 'MAAS_TEST_NOTE', default: '', allowEmpty: true, doc: 'An optional note.' }),
  mode: choice<'fast' | 'slow'>({ flag: '--mode', env: 'MAAS_TEST_MODE', default: 'fast', choices: ['fast', 'slow'], doc: 'Speed.' }),
  peer: address({ flag: '--peer', env: 'MAAS_TEST_PEER', default: '127.0.0.1:9000', doc: 'Address of a peer.' }),
  verbose: boolean({ flag: '--verbose', env: 'MAAS_TEST_VERBOSE', default: false, doc: 'Log more.' }),
};

/** The ConfigError thrown by parseConfig, or a failure if none is thrown. */
function configErrorOf(argv: string[], env: Record<string, string | undefined> = {}): ConfigError {
  try {
    parseConfig(schema, argv, env);
  } catch (err) {
    expect(err).to.be.instanceOf(ConfigError);
    return err as ConfigError;
  }
  expect.fail(`parseConfig accepted ${JSON.stringify(argv)} ${JSON.stringify(env)}`);
}

/** The message of the Error a setting's parse throws for `raw`. */
function parseErrorOf<T>(setting: Setting<T>, raw: string): string {
  try {
    setting.parse(raw);
  } catch (err) {
    expect(err).to.be.instanceOf(Error);
    return (err as Error).message;
  }
  expect.fail(`${setting.flag} accepted ${JSON.stringify(raw)}`);
}

const common = { env: 'MAAS_X', doc: 'x' };

describe('config', () => {
  describe('parseConfig precedence', () => {
    it('uses every default when neither flag nor environment variable is given', () => {
      expect(parseConfig(schema, [], {})).to.deep.equal({
        port: 8080,
        ratio: 0.5,
        name: 'mesh',
        note: '',
        mode: 'fast',
        peer: '127.0.0.1:9000',
        verbose: false,
      });
    });

    it('an environment variable overrides the default', () => {
      expect(parseConfig(schema, [], { MAAS_TEST_PORT: '9001' }).port).to.equal(9001);
    });

    it('a flag overrides the environment variable', () => {
      expect(parseConfig(schema, ['--port', '9002'], { MAAS_TEST_PORT: '9001' }).port).to.equal(9002);
    });

    it('does not parse an environment variable whose setting a flag overrides', () => {
      expect(parseConfig(schema, ['--port', '9002'], { MAAS_TEST_PORT: 'not a number' }).port).to.equal(9002);
    });

    it('ignores environment variables that belong to no setting', () => {
      expect(parseConfig(schema, [], { MAAS_OTHER: 'x', PATH: '/bin' }).port).to.equal(8080);
    });
  });

  describe('parseConfig flag forms', () => {
    it('reads --flag=value', () => {
      expect(parseConfig(schema, ['--name=alpha'], {}).name).to.equal('alpha');
    });

    it('reads --flag value', () => {
      expect(parseConfig(schema, ['--name', 'alpha'], {}).name).to.equal('alpha');
    });

    it('keeps everything after the first = of --flag=value, including further = signs', () => {
      expect(parseConfig(schema, ['--name=a=b'], {}).name).to.equal('a=b');
    });

    it('reads several flags of both forms in one argv', () => {
      const config = parseConfig(schema, ['--port=1', '--mode', 'slow', '--peer', 'db:5432'], {});
      expect([config.port, config.mode, config.peer]).to.deep.equal([1, 'slow', 'db:5432']);
    });

    it('takes a negative number after a flag as its value', () => {
      expect(parseConfig({ n: integer({ flag: '--n', ...common, default: 0 }) }, ['--n', '-5'], {}).n).to.equal(-5);
    });

    it('treats a bare boolean flag as true', () => {
      expect(parseConfig(schema, ['--verbose'], {}).verbose).to.equal(true);
    });

    it('treats a bare boolean flag followed by another flag as true and reads the next flag', () => {
      const config = parseConfig(schema, ['--verbose', '--port', '1'], {});
      expect([config.verbose, config.port]).to.deep.equal([true, 1]);
    });

    it('lets the last of a repeated flag win', () => {
      expect(parseConfig(schema, ['--port', '1', '--port', '2'], {}).port).to.equal(2);
    });
  });

  describe('ConfigError', () => {
    it('for a bad flag value names the flag, the setting key, the expectation and what was given', () => {
      expect(configErrorOf(['--port', 'abc']).message).to.equal('invalid --port (port): expected an integer, given "abc"');
    });

    it('for a bad environment variable names the variable, the setting key, the expectation and what was given', () => {
      expect(configErrorOf([], { MAAS_TEST_PORT: '70000' }).message).to.equal(
        'invalid MAAS_TEST_PORT (port): expected an integer from 0 to 65535, given 70000',
      );
    });

    it('for an unknown flag names it and lists the known flags', () => {
      expect(configErrorOf(['--prot', '1']).message).to.equal(
        'unknown flag --prot; known flags: --port, --ratio, --name, --note, --mode, --peer, --verbose',
      );
    });

    it('for an unknown --flag=value names only the flag, not the value', () => {
      expect(configErrorOf(['--secret=hunter2']).message).to.match(/^unknown flag --secret; known flags: /);
    });

    it('refuses a positional argument as an unknown flag', () => {
      expect(configErrorOf(['stray']).message).to.match(/^unknown flag stray; known flags: /);
    });

    it('is an Error named ConfigError', () => {
      const err = configErrorOf(['--port', 'x']);
      expect([err instanceof Error, err.name]).to.deep.equal([true, 'ConfigError']);
    });
  });

  describe('integer', () => {
    const port = integer({ flag: '--p', ...common, default: 1, min: 0, max: 65535 });

    it('accepts the bounds of its range', () => {
      expect([port.parse('0'), port.parse('65535')]).to.deep.equal([0, 65535]);
    });

    it('refuses one below the minimum, naming the range and the value', () => {
      expect(parseErrorOf(port, '-1')).to.equal('expected an integer from 0 to 65535, given -1');
    });

    it('refuses one above the maximum, naming the range and the value', () => {
      expect(parseErrorOf(port, '65536')).to.equal('expected an integer from 0 to 65535, given 65536');
    });

    it('refuses a decimal number', () => {
      expect(parseErrorOf(port, '1.5')).to.equal('expected an integer, given "1.5"');
    });

    it('refuses exponent and hexadecimal notation', () => {
      expect([parseErrorOf(port, '1e3'), parseErrorOf(port, '0x10')]).to.deep.equal([
        'expected an integer, given "1e3"',
        'expected an integer, given "0x10"',
      ]);
    });

    it('refuses an empty value', () => {
      expect(parseErrorOf(port, '')).to.equal('expected an integer, given ""');
    });

    it('tolerates surrounding whitespace', () => {
      expect(port.parse(' 42 ')).to.equal(42);
    });

    it('without min and max accepts negative integers', () => {
      expect(integer({ flag: '--n', ...common, default: 0 }).parse('-7')).to.equal(-7);
    });

    it('shows a value as its decimal digits', () => {
      expect(port.show(8080)).to.equal('8080');
    });
  });

  describe('decimal', () => {
    const ratio = decimal({ flag: '--r', ...common, default: 0.5, min: 0, max: 1 });

    it('accepts fractions and the bounds of its range', () => {
      expect([ratio.parse('0'), ratio.parse('0.25'), ratio.parse('1')]).to.deep.equal([0, 0.25, 1]);
    });

    it('refuses a value outside its range, naming the range and the value', () => {
      expect(parseErrorOf(ratio, '1.5')).to.equal('expected a number from 0 to 1, given 1.5');
    });

    it('refuses text that is not a number', () => {
      expect(parseErrorOf(ratio, 'half')).to.equal('expected a number, given "half"');
    });

    it('refuses an empty or blank value', () => {
      expect([parseErrorOf(ratio, ''), parseErrorOf(ratio, '  ')]).to.deep.equal([
        'expected a number, given ""',
        'expected a number, given "  "',
      ]);
    });

    it('refuses Infinity even without bounds', () => {
      expect(parseErrorOf(decimal({ flag: '--d', ...common, default: 0 }), 'Infinity')).to.equal('expected a number, given "Infinity"');
    });
  });

  describe('text', () => {
    const required = text({ flag: '--t', ...common, default: 'a' });
    const optional = text({ flag: '--t', ...common, default: '', allowEmpty: true });

    it('returns the value as given', () => {
      expect(required.parse('hello world')).to.equal('hello world');
    });

    it('without allowEmpty refuses an empty or blank value', () => {
      expect([parseErrorOf(required, ''), parseErrorOf(required, '   ')]).to.deep.equal([
        'expected a non-empty value',
        'expected a non-empty value',
      ]);
    });

    it('with allowEmpty accepts an empty value', () => {
      expect(optional.parse('')).to.equal('');
    });

    it('shows an empty value as (empty)', () => {
      expect([optional.show(''), optional.show('x')]).to.deep.equal(['(empty)', 'x']);
    });
  });

  describe('choice', () => {
    const mode = choice<'a' | 'b'>({ flag: '--m', ...common, default: 'a', choices: ['a', 'b'] });

    it('accepts each of its choices', () => {
      expect([mode.parse('a'), mode.parse('b')]).to.deep.equal(['a', 'b']);
    });

    it('refuses anything else, listing the choices and what was given', () => {
      expect(parseErrorOf(mode, 'c')).to.equal('expected one of a, b, given "c"');
    });

    it('is case-sensitive', () => {
      expect(parseErrorOf(mode, 'A')).to.equal('expected one of a, b, given "A"');
    });
  });

  describe('address', () => {
    const peer = address({ flag: '--a', ...common, default: '' });

    it('accepts host:port and trims surrounding whitespace', () => {
      expect([peer.parse('127.0.0.1:50051'), peer.parse(' db.local:5432 ')]).to.deep.equal(['127.0.0.1:50051', 'db.local:5432']);
    });

    it('accepts a bracketed IPv6 host', () => {
      expect(peer.parse('[::1]:50051')).to.equal('[::1]:50051');
    });

    it('accepts port 65535 and refuses 65536', () => {
      expect([peer.parse('h:65535'), parseErrorOf(peer, 'h:65536')]).to.deep.equal(['h:65535', 'expected host:port, given "h:65536"']);
    });

    it('refuses a host without a port', () => {
      expect(parseErrorOf(peer, 'localhost')).to.equal('expected host:port, given "localhost"');
    });

    it('refuses a port without a host', () => {
      expect(parseErrorOf(peer, ':80')).to.equal('expected host:port, given ":80"');
    });

    it('refuses a non-numeric port', () => {
      expect(parseErrorOf(peer, 'host:http')).to.equal('expected host:port, given "host:http"');
    });

    it('shows an empty value as (none)', () => {
      expect([peer.show(''), peer.show('h:1')]).to.deep.equal(['(none)', 'h:1']);
    });
  });

  describe('boolean', () => {
    const flag = boolean({ flag: '--b', ...common, default: false });

    it('reads true, 1, yes and the empty string as true, in any case', () => {
      expect(['true', '1', 'yes', '', 'TRUE', 'Yes', ' true '].map((raw) => flag.parse(raw))).to.deep.equal(Array(7).fill(true));
    });

    it('reads false, 0 and no as false, in any case', () => {
      expect(['false', '0', 'no', 'FALSE', 'No'].map((raw) => flag.parse(raw))).to.deep.equal(Array(5).fill(false));
    });

    it('refuses anything else, naming what was given', () => {
      expect(parseErrorOf(flag, 'maybe')).to.equal('expected true or false, given "maybe"');
    });

    it('reads --flag=false as false', () => {
      expect(parseConfig({ b: flag }, ['--b=false'], {}).b).to.equal(false);
    });

    it('reads --flag no as false', () => {
      expect(parseConfig({ b: flag }, ['--b', 'no'], {}).b).to.equal(false);
    });

    it('reads an environment variable of 1 as true', () => {
      expect(parseConfig({ b: flag }, [], { MAAS_X: '1' }).b).to.equal(true);
    });
  });

  describe('describeConfig', () => {
    const table = describeConfig(schema).split('\n');

    it('starts with a Markdown header row and separator', () => {
      expect(table.slice(0, 2)).to.deep.equal(['| flag | environment | default | meaning |', '|---|---|---|---|']);
    });

    it('renders one row per setting, in schema order', () => {
      expect(table.slice(2).map((row) => row.split('`')[1])).to.deep.equal(Object.values(schema).map((s) => s.flag));
    });

    it('renders flag, environment variable, shown default and doc in each row', () => {
      expect(table.slice(2)).to.deep.equal([
        '| `--port` | `MAAS_TEST_PORT` | `8080` | Port to bind. |',
        '| `--ratio` | `MAAS_TEST_RATIO` | `0.5` | A fraction. |',
        '| `--name` | `MAAS_TEST_NAME` | `mesh` | A name. |',
        '| `--note` | `MAAS_TEST_NOTE` | `(empty)` | An optional note. |',
        '| `--mode` | `MAAS_TEST_MODE` | `fast` | Speed. |',
        '| `--peer` | `MAAS_TEST_PEER` | `127.0.0.1:9000` | Address of a peer. |',
        '| `--verbose` | `MAAS_TEST_VERBOSE` | `false` | Log more. |',
      ]);
    });
  });

  describe('service schemas', () => {
    const services: [string, Schema][] = [
      ['gateway', gatewaySchema],
      ['balancer', balancerSchema],
      ['scheduler', schedulerSchema],
      ['worker', workerSchema],
      ['aggregator', aggregatorSchema],
    ];

    for (const [service, serviceSchema] of services) {
      describe(`${service}`, () => {
        const settings = Object.values(serviceSchema);

        it('gives every setting a distinct --flag', () => {
          const flags = settings.map((s) => s.flag);
          expect(flags.every((f) => /^--[a-z][a-z0-9-]*$/.test(f)), flags.join(' ')).to.equal(true);
          expect(new Set(flags).size).to.equal(flags.length);
        });

        it('gives every setting a distinct environment variable starting with MAAS_', () => {
          const envs = settings.map((s) => s.env);
          expect(envs.every((e) => /^MAAS_[A-Z0-9_]+$/.test(e)), envs.join(' ')).to.equal(true);
          expect(new Set(envs).size).to.equal(envs.length);
        });

        it('documents every setting', () => {
          expect(Object.entries(serviceSchema).filter(([, s]) => s.doc.trim() === '').map(([key]) => key)).to.deep.equal([]);
        });

        it('has defaults that parse back to themselves through their own parse', () => {
          for (const [key, s] of Object.entries(serviceSchema)) {
            // An empty default (or empty list) stands for "not set"; its shown form ("(empty)") is not meant to parse.
            const empty = s.default === '' || (Array.isArray(s.default) && s.default.length === 0) || (s.default instanceof Map && s.default.size === 0);
            const raw = empty ? '' : s.show(s.default);
            expect(s.parse(raw), `${service}.${key} from ${JSON.stringify(raw)}`).to.deep.equal(s.default);
          }
        });

        it('parses with no flags and no environment to exactly its defaults', () => {
          const defaults = Object.fromEntries(Object.entries(serviceSchema).map(([key, s]) => [key, s.default]));
          expect(parseConfig(serviceSchema, [], {})).to.deep.equal(defaults);
        });
      });
    }
  });
});
