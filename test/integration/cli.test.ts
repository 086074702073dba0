/**
 * `maas`, run as the real CLI (a child process) against a real mesh (in this process, on ephemeral
 * ports): every command's text and --json output and exit code, paging, standard input, the local
 * refusals (exit 2, one line, nothing sent), an unreachable gateway (exit 3) and server errors
 * (exit 10 + status), and the bash completion script run by bash.
 */
import { expect } from 'chai';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { TestMesh, freePort, startMesh } from '../support';

const maas = resolve(__dirname, '../../gateway/cli/maas.js');
const pkg = JSON.parse(readFileSync(resolve(__dirname, '../../../package.json'), 'utf8')) as { version: string };

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `maas args...` (asynchronously: the mesh serves from this process), optionally with standard input. */
async function run(args: string[], input?: string): Promise<Run> {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('MAAS_')) env[k] = v;
  const child = spawn(process.execPath, [maas, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  child.stdin.end(input ?? '');
  const [status] = (await once(child, 'exit')) as [number | null];
  return { status, stdout, stderr };
}

const jsonLines = (text: string) =>
  text
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);

describe('maas CLI against a real mesh', function () {
  this.timeout(120_000);
  let mesh: TestMesh;
  let gw: string[];
  let dir: string;

  before(async () => {
    mesh = await startMesh({ workers: [{ builtin: true }] });
    gw = ['--gateway', mesh.gateway.address];
    dir = mkdtempSync(join(tmpdir(), 'maas-cli-'));
  });
  after(async () => {
    await mesh?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('--help lists every command and the exit codes; <command> --help shows its own options; --version prints the package version', async () => {
    const help = await run(['--help']);
    expect(help.status).to.equal(0);
    for (const c of ['up', 'certs', 'keys add', 'models', 'models make-examples', 'workers', 'generate', 'predict', 'infer', 'job submit', 'job watch', 'job get', 'job list', 'job cancel', 'completion']) {
      expect(help.stdout).to.match(new RegExp(`^  ${c}\\b`, 'm'));
    }
    expect(help.stdout).to.include('exit codes:').and.include('10+N');
    const list = await run(['job', 'list', '--help']);
    expect(list.status).to.equal(0);
    expect(list.stdout).to.include('usage: maas job list').and.include('--page-size N').and.include('--page-token T').and.include('--all');
    const gen = await run(['help', 'generate']);
    expect(gen.stdout).to.include('--max-tokens N').and.include('1 to 2048').and.include("the server's default, 64");
    const version = await run(['--version']);
    expect([version.status, version.stdout]).to.deep.equal([0, `maas ${pkg.version}\n`]);
    const versionJson = await run(['--version', '--json']);
    expect(JSON.parse(versionJson.stdout)).to.include({ version: pkg.version });
    const none = await run([]);
    expect(none.status).to.equal(2);
    expect(none.stderr).to.equal('maas: no command given (see maas --help)\n');
  });

  it('refuses the issue\'s bad numbers and a wrong-command option locally: exit 2, one line, no stack trace, before any call (the rest: test/unit/cli-commands)', async () => {
    const cases: [string[], string][] = [
      [['generate', '--model', 'ngram', '--max-tokens', '-1', 'hi'], '--max-tokens must be a whole number from 1 to 2048, given "-1"'],
      [['generate', '--model', 'ngram', '--max-tokens', '1.5', 'hi'], '--max-tokens must be a whole number from 1 to 2048, given "1.5"'],
      [['generate', '--model', 'ngram', '--max-tokens', '0', 'hi'], '--max-tokens must be a whole number from 1 to 2048, given "0"'],
      [['generate', '--model', 'ngram', '--seed=-5', 'hi'], '--seed must be a whole number from 0 to 9007199254740991, given "-5"'],
      [['predict', '--model', 'spam-nb', '--max-tokens', '3', 'hi'], 'unknown option --max-tokens for maas predict (see maas predict --help)'],
      [['job', 'frob'], 'maas job needs one of submit, watch, get, list, cancel, given "frob"'],
      [['up', '--workers', '0'], '--workers must be a whole number from 1 to 64, given "0"'],
      [['generate', '--model', 'ngram', '--stop', 'a', '--stop', 'b', '--stop', 'c', '--stop', 'd', '--stop', 'e', 'hi'], '--stop may be given at most 4 times, given 5'],
      [['generate', 'hi'], 'maas generate needs --model M'],
      [['infer', 'mlp'], 'maas infer needs one of --input JSON or --file F'],
      [['infer', 'mlp', '--input', '{"x": [1,'], '--input is not valid JSON'],
      [['completion', 'fish'], 'maas completion supports bash, given "fish"'],
    ];
    for (const [args, message] of cases) {
      const r = await run([...args, ...(['up', 'completion'].includes(args[0]) || args.includes('--gateway') ? [] : gw)]);
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).to.equal(2);
      expect(r.stderr, args.join(' ')).to.include(`maas: ${message}`);
      expect(r.stderr.trim().split('\n'), args.join(' ')).to.have.length(1);
      expect(r.stderr).not.to.match(/\n\s+at /);
      expect(r.stdout).to.equal('');
    }
    const asJson = await run(['generate', '--json', '--model', 'ngram', '--max-tokens', '1.5', 'hi', ...gw]);
    expect(asJson.status).to.equal(2);
    expect(JSON.parse(asJson.stderr)).to.deep.equal({ error: { exit: 2, message: '--max-tokens must be a whole number from 1 to 2048, given "1.5"' } });
  });

  it('an unreachable gateway: exit 3 and how to start the mesh', async () => {
    const port = await freePort();
    const r = await run(['models', '--gateway', `127.0.0.1:${port}`]);
    expect(r.status).to.equal(3);
    expect(r.stderr).to.include(`cannot reach the gateway at 127.0.0.1:${port}`).and.include('npm start').and.include('npx maas up');
    expect(r.stderr.trim().split('\n')).to.have.length(1);
    const j = await run(['job', 'watch', 'job-x', '--json', '--gateway', `127.0.0.1:${port}`]);
    expect(j.status).to.equal(3);
    expect(JSON.parse(j.stderr).error).to.include({ exit: 3, status: 'UNAVAILABLE' });
  });

  it('server errors exit 10 + their gRPC status, naming it', async () => {
    const missing = await run(['job', 'get', 'no-such-job', ...gw]);
    expect(missing.status).to.equal(15);
    expect(missing.stderr).to.match(/^maas: NOT_FOUND: /);
    const model = await run(['predict', '--json', '--model', 'no-such-model', 'hi', ...gw]);
    expect(model.status).to.equal(15);
    expect(JSON.parse(model.stderr).error).to.include({ exit: 15, status: 'NOT_FOUND' });
    const tooLong = await run(['predict', '--model', 'spam-nb', '-', ...gw], 'x'.repeat(200_000));
    expect(tooLong.status, tooLong.stderr).to.equal(13);
    expect(tooLong.stderr).to.match(/^maas: INVALID_ARGUMENT: input/);
  });

  it('models, workers: text and one JSON document', async () => {
    const text = await run(['models', ...gw]);
    expect(text.status).to.equal(0);
    expect(text.stdout).to.match(/^spam-nb {2}\(v/m).and.match(/^ngram {2}/m);
    const json = await run(['models', '--json', ...gw]);
    expect(json.status).to.equal(0);
    const doc = JSON.parse(json.stdout) as { models: { name: string; readyWorkers: number; tasks: string[] }[] };
    const spam = doc.models.find((m) => m.name === 'spam-nb')!;
    expect(spam.readyWorkers).to.equal(1);
    expect(spam.tasks).to.include('MODEL_TASK_CLASSIFY');
    const workers = await run(['workers', '--json', ...gw]);
    const w = JSON.parse(workers.stdout) as { policy: string; workers: { workerId: string; state: string }[] };
    expect(w.policy).to.equal('p2c');
    expect(w.workers.map((x) => x.workerId)).to.deep.equal(['w1']);
    // The worker joined seconds ago: it is READY, or still in its 10 s slow-start ramp on a fast run.
    expect(w.workers[0].state).to.be.oneOf(['WORKER_STATE_READY', 'WORKER_STATE_SLOW_START']);
    const workersText = await run(['workers', ...gw]);
    expect(workersText.stdout).to.match(/^policy p2c; 1 worker\nw1 /);
  });

  it('generate: text, JSON lines, and the prompt from standard input (-) gives the same tokens', async () => {
    const args = ['generate', '--model', 'ngram', '--seed', '7', '--max-tokens', '5', ...gw];
    const text = await run([...args, 'the', 'free', 'offer']);
    expect(text.status, text.stderr).to.equal(0);
    expect(text.stderr).to.equal('[finish: length; 5 tokens]\n');
    const stdin = await run([...args, '-'], 'the free offer\n');
    expect(stdin.stdout).to.equal(text.stdout);
    const lines = jsonLines((await run([...args, '--json', 'the', 'free', 'offer'])).stdout);
    expect(lines.length).to.be.greaterThan(1);
    expect(lines.map((l) => l.text ?? '').join('')).to.equal(text.stdout.replace(/\n$/, ''));
    expect(lines.at(-1)).to.deep.include({ finishReason: 'FINISH_REASON_LENGTH' });
    expect(lines.at(-1)!.usage).to.deep.include({ completionTokens: 5 });
    const empty = await run(['generate', '--model', 'ngram', '-', ...gw], '');
    expect(empty.status).to.equal(2);
    expect(empty.stderr).to.equal('maas: PROMPT from standard input is empty\n');
  });

  it('predict: text, JSON, and the input from standard input (-)', async () => {
    const mail = 'WIN A FREE PRIZE NOW click here to claim your cash';
    const text = await run(['predict', '--model', 'spam-nb', ...gw, ...mail.split(' ')]);
    expect(text.status, text.stderr).to.equal(0);
    expect(text.stdout).to.match(/^label: spam\n {2}spam {5}0\.\d{4}\n {2}ham {6}0\.\d{4}\n$/);
    const json = JSON.parse((await run(['predict', '--json', '--model', 'spam-nb', ...gw, '-'], `${mail}\n`)).stdout) as { label: string; probabilities: Record<string, number> };
    expect(json.label).to.equal('spam');
    expect(Object.keys(json.probabilities).sort()).to.deep.equal(['ham', 'spam']);
  });

  it('job submit, watch, get, cancel: text, JSON and JSON lines, exit codes', async () => {
    const submitted = await run(['job', 'submit', '--json', '--mapper', 'wordcount', '--record', 'a b b', '--record', 'b c', ...gw]);
    expect(submitted.status, submitted.stderr).to.equal(0);
    const job = JSON.parse(submitted.stdout) as { id: string; state: string };
    expect(job.id).to.be.a('string').and.not.equal('');
    const watched = await run(['job', 'watch', job.id, '--json', ...gw]);
    expect(watched.status, watched.stderr).to.equal(0);
    const events = jsonLines(watched.stdout);
    expect(Object.keys(events[0])).to.include('accepted');
    const done = events.at(-1)!.completed as { wordCounts: { records: number; words: { word: string; count: number }[] } };
    expect(done.wordCounts.records).to.equal(2);
    expect(done.wordCounts.words[0]).to.deep.equal({ word: 'b', count: 3 });
    const got = JSON.parse((await run(['job', 'get', job.id, '--json', ...gw])).stdout) as { id: string; state: string };
    expect(got).to.include({ id: job.id, state: 'JOB_STATE_SUCCEEDED' });
    const gotText = await run(['job', 'get', job.id, ...gw]);
    expect(gotText.stdout).to.match(new RegExp(`^${job.id} {2}succeeded\n`));

    const withWatch = await run(['job', 'submit', '--watch', '--mapper', 'wordcount', '--record', 'x y', ...gw]);
    expect(withWatch.status, withWatch.stderr).to.equal(0);
    expect(withWatch.stdout).to.include('records: 1  words: 2  distinct: 2');

    // A job that fails: watch exits 1.
    const failing = await run(['job', 'submit', '--watch', '--json', '--model', 'no-such-model', '--record', 'x', ...gw]);
    if (failing.status !== 1) expect(failing.status, failing.stderr).to.equal(15);
    else expect(jsonLines(failing.stdout).at(-1)).to.have.property('failed');

    const cancelled = await run(['job', 'cancel', job.id, '--json', ...gw]);
    expect(cancelled.status, cancelled.stderr).to.be.oneOf([0, 19]);
  });

  it('job list pages: --page-size and --page-token, --all, text and JSON', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await run(['job', 'submit', '--mapper', 'wordcount', '--record', `page ${i}`, ...gw]);
      expect(r.status, r.stderr).to.equal(0);
      ids.push(r.stdout.trim());
    }
    const all = JSON.parse((await run(['job', 'list', '--json', '--all', '--page-size', '1', ...gw])).stdout) as { jobs: { id: string }[]; nextPageToken?: string };
    expect(all.nextPageToken).to.equal(undefined);
    const total = all.jobs.length;
    expect(all.jobs.map((j) => j.id)).to.include.members(ids);
    expect(new Set(all.jobs.map((j) => j.id)).size).to.equal(total);

    const first = JSON.parse((await run(['job', 'list', '--json', '--page-size', '2', ...gw])).stdout) as { jobs: { id: string }[]; nextPageToken: string };
    expect(first.jobs).to.have.length(2);
    expect(first.nextPageToken).to.be.a('string').and.not.equal('');
    expect(first.jobs.map((j) => j.id)).to.deep.equal(all.jobs.slice(0, 2).map((j) => j.id));
    const second = JSON.parse((await run(['job', 'list', '--json', '--page-size', '2', '--page-token', first.nextPageToken, ...gw])).stdout) as { jobs: { id: string }[] };
    expect(second.jobs.map((j) => j.id)).to.deep.equal(all.jobs.slice(2, 4).map((j) => j.id));

    const text = await run(['job', 'list', '--page-size', '2', ...gw]);
    expect(text.status).to.equal(0);
    const rows = text.stdout.trim().split('\n');
    expect(rows).to.have.length(3);
    expect(rows[0].startsWith(all.jobs[0].id)).to.equal(true);
    expect(rows[2]).to.equal(`more: maas job list --page-token ${first.nextPageToken} --page-size 2`);
  });

  it('keys add, certs and completion take --json', async () => {
    const file = join(dir, 'keys.txt');
    const key = await run(['keys', 'add', '--json', '--tenant', 'acme', '--file', file]);
    expect(key.status, key.stderr).to.equal(0);
    const k = JSON.parse(key.stdout) as { tenant: string; file: string; key: string };
    expect(k).to.include({ tenant: 'acme', file });
    expect(k.key).to.match(/^maas_/);
    const missing = await run(['keys', 'add', '--tenant', 'acme']);
    expect(missing.status).to.equal(2);

    const certs = await run(['certs', '--json', '--out', join(dir, 'certs'), '--workers', '1', '--days', '2']);
    expect(certs.status, certs.stderr).to.equal(0);
    const c = JSON.parse(certs.stdout) as { dir: string; created: string[]; kept: string[] };
    expect(c.created).to.include('ca').and.include('gateway');
    const again = JSON.parse((await run(['certs', '--json', '--out', join(dir, 'certs'), '--workers', '1'])).stdout) as { created: string[]; kept: string[] };
    expect(again.created).to.deep.equal([]);

    const script = await run(['completion', '--json', 'bash']);
    expect(JSON.parse(script.stdout)).to.have.property('shell', 'bash');
  });
});

describe('maas completion bash', () => {
  /** What bash completes for the words of a command line (the last one is being typed). */
  let script: string;
  before(() => {
    script = spawnSync(process.execPath, [maas, 'completion', 'bash'], { encoding: 'utf8' }).stdout;
  });
  function complete(words: string[]): string[] {
    const bash = `${script}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _maas; printf '%s\\n' "\${COMPREPLY[@]}"`;
    const r = spawnSync('bash', ['-c', bash], { encoding: 'utf8', cwd: tmpdir() });
    expect(r.status, r.stderr).to.equal(0);
    return r.stdout.split('\n').filter(Boolean).sort();
  }

  it('completes commands, subcommands, each command\'s own options and the values of choices', () => {
    expect(complete(['maas', 'jo'])).to.deep.equal(['job']);
    expect(complete(['maas', 'job', ''])).to.deep.equal(['cancel', 'get', 'list', 'submit', 'watch']);
    expect(complete(['maas', 'job', 'list', '--pa'])).to.deep.equal(['--page-size', '--page-token']);
    expect(complete(['maas', 'generate', '--m'])).to.deep.equal(['--max-tokens', '--model']);
    expect(complete(['maas', 'predict', '--m'])).to.deep.equal(['--model']);
    expect(complete(['maas', '--gateway', 'h:1', 'job', 'submit', '--reducer', ''])).to.deep.equal(['accuracy', 'collect', 'mean', 'sum', 'top_k']);
    expect(complete(['maas', 'models', 'make-examples', '--llama-size', ''])).to.deep.equal(['bench', 'tiny']);
    expect(complete(['maas', '--v'])).to.deep.equal(['--version']);
  });
});
