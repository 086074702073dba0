/**
 * A short fuzz run inside `npm test` (the full one is `npm run fuzz`): the mesh as processes, a
 * fixed seed, a few hundred generated inputs per public and internal method, and every check of
 * the full run: no process exits, no call outlives its deadline, no UNKNOWN or INTERNAL for
 * input the services can read, no echoed input, health afterwards, memory back within 20%.
 */
import { expect } from 'chai';
import { FuzzReport, MEMORY_TOLERANCE, describedServices, formatReport, fuzzTargets, runFuzz } from '../fuzz/harness.js';

/** Fixed, so a failure here replays with `npm run fuzz -- --seed 20261130 --inputs 150`. */
const SEED = 20261130;
const INPUTS_PER_METHOD = 150;

describe('fuzz (short run)', function () {
  this.timeout(300_000);
  let report: FuzzReport;

  before(async () => {
    report = await runFuzz({ seed: SEED, inputsPerMethod: INPUTS_PER_METHOD, warmUpInputs: 100, concurrency: 32, deadlineMs: 2000, settleMs: 20_000 });
  });

  it('covers every method of every maas.* service', () => {
    expect(describedServices().length).to.equal(8);
    expect(report.uncovered).to.deep.equal([]);
    expect(report.methods.map((m) => m.method).sort()).to.deep.equal(fuzzTargets().map((t) => t.name).sort());
    for (const m of report.methods) expect(m.inputs, m.method).to.equal(INPUTS_PER_METHOD);
  });

  it('no service process exits, and every one answers health SERVING afterwards', () => {
    expect(report.exits).to.deep.equal([]);
    expect(report.unhealthy).to.deep.equal([]);
  });

  it('no call outlives its deadline, no input gets UNKNOWN or INTERNAL it should not, no message echoes input', () => {
    const bad = report.methods.filter((m) => m.hangs > 0 || m.wrongCodes > 0 || m.echoes > 0);
    expect(bad.map((m) => `${m.method}: ${m.failures.join('; ')}`), formatReport(report)).to.deep.equal([]);
  });

  it("every process's memory returns to within 20% of where it started", () => {
    const grown = report.memory.filter((m) => !(m.afterKb <= m.beforeKb * (1 + MEMORY_TOLERANCE)));
    expect(grown, formatReport(report)).to.deep.equal([]);
  });
});
