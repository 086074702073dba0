/**
 * Mocha's spec reporter plus one closing line, `tests: N passed, N failed`, that CI reads (and
 * that people can grep). Configured in .mocharc.json.
 */
import Mocha from 'mocha';

class SpecWithSummary extends Mocha.reporters.Spec {
  constructor(runner: Mocha.Runner, options?: Mocha.MochaOptions) {
    super(runner, options);
    runner.once(Mocha.Runner.constants.EVENT_RUN_END, () => {
      const s = runner.stats ?? { passes: 0, failures: 0, pending: 0 };
      const skipped = s.pending > 0 ? `, ${s.pending} skipped` : '';
      process.stdout.write(`tests: ${s.passes} passed, ${s.failures} failed${skipped}\n`);
    });
  }
}

export = SpecWithSummary;
