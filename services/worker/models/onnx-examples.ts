/**
 * The example models of the model repository (`maas models make-examples`): spam-nb exported to
 * ONNX, trained here exactly as the built-in spam-nb is, and the benchmark perceptron.
 */
import { loadCorpus, splitCorpus, type CorpusSplit } from '../../../common/corpus/spam-assassin.js';
import { mlpModel, spamOnnxModel, type ExampleModel } from '../../../common/onnx/examples.js';
import { trainSpamNb } from './builtin.js';

/** spam-onnx and mlp; `split` defaults to the corpus's own train/test split (reading it takes about a second). */
export function exampleModels(split: CorpusSplit = splitCorpus(loadCorpus())): ExampleModel[] {
  const nb = trainSpamNb(split.train);
  const spam = spamOnnxModel(nb.parameters(), { source: 'spam-nb', train_size: String(nb.trainSize) });
  return [spam, mlpModel()];
}
