/**
 * Multinomial Naive Bayes text classifier: Laplace smoothing (alpha = 1), log probabilities,
 * vocabulary pruned to tokens seen at least twice in training, lower-cased word tokens.
 */
import { tokenize } from './tokenizer.js';

/** A labelled text to train or evaluate on. */
export interface LabelledText {
  /** The class, e.g. `spam` or `ham`. */
  label: string;
  /** The text to classify. */
  body: string;
}

/** Result of {@link NaiveBayes.predict}. */
export interface NaiveBayesPrediction {
  /** The most probable class. */
  label: string;
  /** Posterior probability of each class; the values sum to 1. */
  probabilities: Record<string, number>;
}

/** Held-out metrics from {@link NaiveBayes.evaluate}, with spam as the positive class. */
export interface Evaluation {
  /** Fraction of test records classified correctly. */
  accuracy: number;
  /** Of the records predicted positive, the fraction that are positive (0 if none predicted). */
  precision: number;
  /** Of the positive records, the fraction predicted positive (0 if there are none). */
  recall: number;
  /** Harmonic mean of precision and recall (0 if both are 0). */
  f1: number;
  /** Number of test records. */
  testSize: number;
  /** Number of records the model was trained on. */
  trainSize: number;
}

/** Training parameters (part of the cache key). */
export interface NaiveBayesParams {
  /** Additive (Laplace) smoothing constant. */
  alpha: number;
  /** A token joins the vocabulary when seen at least this many times in training. */
  minCount: number;
  /** The class counted as positive by evaluate(). */
  positiveLabel: string;
}

/** Parameters used by the built-in spam classifier. */
export const DEFAULT_NB_PARAMS: NaiveBayesParams = { alpha: 1, minCount: 2, positiveLabel: 'spam' };

/** The serialized form of a trained model, for caching as JSON. */
export interface NaiveBayesJSON {
  /** Training parameters. */
  params: NaiveBayesParams;
  /** Class names, in a fixed order. */
  labels: string[];
  /** Vocabulary; index i is the feature of every per-token array. */
  vocab: string[];
  /** Number of training documents per class (same order as labels). */
  docCounts: number[];
  /** Per class, the count of each vocabulary token in that class (same order as labels). */
  tokenCounts: number[][];
  /** Number of training documents. */
  trainSize: number;
}

/** What {@link NaiveBayes.parameters} returns. */
export interface NaiveBayesParameters {
  /** Class names, in the order of the per-class arrays. */
  labels: string[];
  /** Vocabulary; index i is the feature of every per-token array. */
  vocab: string[];
  /** log P(class c). */
  logPriors: number[];
  /** logLikelihoods[c][i] = log P(token i | class c), smoothed. */
  logLikelihoods: Float64Array[];
}

/** A multinomial Naive Bayes classifier; create with {@link NaiveBayes.train} or {@link NaiveBayes.fromJSON}. */
export class NaiveBayes {
  private readonly index: Map<string, number>;
  private readonly logPriors: number[];
  /** logLikelihoods[c][i] = log P(token i | class c), smoothed. */
  private readonly logLikelihoods: Float64Array[];

  private constructor(private readonly state: NaiveBayesJSON) {
    this.index = new Map(state.vocab.map((token, i) => [token, i]));
    this.logPriors = state.docCounts.map((count) => Math.log(count / state.trainSize));
    this.logLikelihoods = state.tokenCounts.map((counts) => smoothedLogLikelihoods(counts, state.params.alpha));
  }

  /** Trains on labelled texts; every label seen becomes a class. */
  static train(records: readonly LabelledText[], params: NaiveBayesParams = DEFAULT_NB_PARAMS): NaiveBayes {
    if (records.length === 0) throw new Error('NaiveBayes.train needs at least one record');
    const labels = [...new Set(records.map((record) => record.label))].sort();
    const documents = records.map((record) => tokenize(record.body, { lowercase: true }));
    const vocab = frequentTokens(documents, params.minCount);
    const index = new Map(vocab.map((token, i) => [token, i]));
    const docCounts = labels.map(() => 0);
    const tokenCounts = labels.map(() => new Array<number>(vocab.length).fill(0));
    records.forEach((record, r) => {
      const c = labels.indexOf(record.label);
      docCounts[c]++;
      for (const token of documents[r]) {
        const i = index.get(token);
        if (i !== undefined) tokenCounts[c][i]++;
      }
    });
    return new NaiveBayes({ params, labels, vocab, docCounts, tokenCounts, trainSize: records.length });
  }

  /** Rebuilds a model from {@link NaiveBayes.toJSON} output. */
  static fromJSON(json: NaiveBayesJSON): NaiveBayes {
    return new NaiveBayes(json);
  }

  /** The class names, sorted. */
  get labels(): string[] {
    return [...this.state.labels];
  }

  /** Number of vocabulary tokens. */
  get vocabSize(): number {
    return this.state.vocab.length;
  }

  /** Number of training records. */
  get trainSize(): number {
    return this.state.trainSize;
  }

  /** The most probable class of `text` and the posterior of every class (tokens outside the vocabulary are ignored). */
  predict(text: string): NaiveBayesPrediction {
    const scores = [...this.logPriors];
    for (const token of tokenize(text, { lowercase: true })) {
      const i = this.index.get(token);
      if (i === undefined) continue;
      for (let c = 0; c < scores.length; c++) scores[c] += this.logLikelihoods[c][i];
    }
    const posteriors = normalizeLogScores(scores);
    const best = posteriors.indexOf(Math.max(...posteriors));
    const probabilities: Record<string, number> = {};
    this.state.labels.forEach((label, c) => (probabilities[label] = posteriors[c]));
    return { label: this.state.labels[best], probabilities };
  }

  /** Accuracy, precision, recall and F1 on held-out records, with the positive class of the params. */
  evaluate(testRecords: readonly LabelledText[]): Evaluation {
    const positive = this.state.params.positiveLabel;
    let correct = 0;
    let truePositives = 0;
    let predictedPositives = 0;
    let actualPositives = 0;
    for (const record of testRecords) {
      const predicted = this.predict(record.body).label;
      if (predicted === record.label) correct++;
      if (predicted === positive) predictedPositives++;
      if (record.label === positive) actualPositives++;
      if (predicted === positive && record.label === positive) truePositives++;
    }
    const precision = predictedPositives === 0 ? 0 : truePositives / predictedPositives;
    const recall = actualPositives === 0 ? 0 : truePositives / actualPositives;
    return {
      accuracy: testRecords.length === 0 ? 0 : correct / testRecords.length,
      precision,
      recall,
      f1: precision + recall === 0 ? 0 : (2 * precision * recall) / (precision + recall),
      testSize: testRecords.length,
      trainSize: this.state.trainSize,
    };
  }

  /**
   * The fitted parameters the predictions are made of, for export to other runtimes (ONNX):
   * a text's score for class c is logPriors[c] plus logLikelihoods[c][i] for every occurrence of
   * vocabulary token i among its tokens; other tokens add nothing.
   */
  parameters(): NaiveBayesParameters {
    return {
      labels: [...this.state.labels],
      vocab: [...this.state.vocab],
      logPriors: [...this.logPriors],
      logLikelihoods: this.logLikelihoods.map((row) => Float64Array.from(row)),
    };
  }

  /** A plain JSON-able copy of the model. */
  toJSON(): NaiveBayesJSON {
    return this.state;
  }
}

/** Tokens seen at least `minCount` times across all documents, sorted for a stable order. */
function frequentTokens(documents: readonly string[][], minCount: number): string[] {
  const counts = new Map<string, number>();
  for (const tokens of documents) for (const token of tokens) counts.set(token, (counts.get(token) ?? 0) + 1);
  return [...counts].filter(([, count]) => count >= minCount).map(([token]) => token).sort();
}

/** log((count_i + alpha) / (total + alpha * V)) for every token i. */
function smoothedLogLikelihoods(counts: readonly number[], alpha: number): Float64Array {
  const total = counts.reduce((sum, count) => sum + count, 0);
  const denominator = Math.log(total + alpha * counts.length);
  return Float64Array.from(counts, (count) => Math.log(count + alpha) - denominator);
}

/** Turns log scores into probabilities that sum to 1 (log-sum-exp, so no underflow). */
export function normalizeLogScores(scores: readonly number[]): number[] {
  const max = Math.max(...scores);
  const logSum = max + Math.log(scores.reduce((sum, score) => sum + Math.exp(score - max), 0));
  return scores.map((score) => Math.exp(score - logSum));
}
