import { expect } from 'chai';
import { type GenerateRequest, type PredictRequest, Priority } from '../../generated/maas/v1/inference.js';
import {
  DEFAULT_MAX_TOKENS,
  MAX_MODEL_NAME_CHARS,
  MAX_STOP_CHARS,
  MAX_STOP_SEQUENCES,
  MAX_TOKENS_LIMIT,
  type RequestLimits,
  validateGenerateRequest,
  validateModelName,
  validatePredictRequest,
} from '../../gateway/validation.js';
import { refusal } from '../refusal.js';

const limits: RequestLimits = { maxPromptChars: 100, maxInputChars: 50 };

function generate(overrides: Partial<GenerateRequest> = {}): GenerateRequest {
  return { model: 'echo', prompt: 'hello', maxTokens: 0, stop: [], priority: Priority.PRIORITY_UNSPECIFIED, affinityKey: '', messages: [], ...overrides };
}

function predict(overrides: Partial<PredictRequest> = {}): PredictRequest {
  return { model: 'spam-nb', input: 'win money now', priority: Priority.PRIORITY_UNSPECIFIED, affinityKey: '', ...overrides };
}

describe('gateway validation', () => {
  it('exports the documented limits', () => {
    expect({ MAX_TOKENS_LIMIT, DEFAULT_MAX_TOKENS, MAX_STOP_SEQUENCES, MAX_STOP_CHARS, MAX_MODEL_NAME_CHARS }).to.deep.equal({
      MAX_TOKENS_LIMIT: 2048,
      DEFAULT_MAX_TOKENS: 64,
      MAX_STOP_SEQUENCES: 4,
      MAX_STOP_CHARS: 64,
      MAX_MODEL_NAME_CHARS: 128,
    });
  });

  describe('validateGenerateRequest defaults', () => {
    it('fills max_tokens 0 with 64', () => {
      expect(validateGenerateRequest(generate({ maxTokens: 0 }), limits).maxTokens).to.equal(64);
    });

    it('keeps a max_tokens that was set', () => {
      expect(validateGenerateRequest(generate({ maxTokens: 7 }), limits).maxTokens).to.equal(7);
    });

    it('fills an unset temperature with 1', () => {
      expect(validateGenerateRequest(generate({ temperature: undefined }), limits).temperature).to.equal(1);
    });

    it('keeps a temperature that was set', () => {
      expect(validateGenerateRequest(generate({ temperature: 0.5 }), limits).temperature).to.equal(0.5);
    });

    it('fills PRIORITY_UNSPECIFIED with PRIORITY_NORMAL', () => {
      expect(validateGenerateRequest(generate({ priority: Priority.PRIORITY_UNSPECIFIED }), limits).priority).to.equal(Priority.PRIORITY_NORMAL);
    });

    it('keeps PRIORITY_LOW and PRIORITY_HIGH', () => {
      expect([Priority.PRIORITY_LOW, Priority.PRIORITY_HIGH].map((priority) => validateGenerateRequest(generate({ priority }), limits).priority)).to.deep.equal([
        Priority.PRIORITY_LOW,
        Priority.PRIORITY_HIGH,
      ]);
    });

    it('passes the other fields through unchanged', () => {
      const out = validateGenerateRequest(generate({ prompt: 'abc', seed: 42, stop: ['\n'] }), limits);
      expect({ model: out.model, prompt: out.prompt, seed: out.seed, stop: out.stop }).to.deep.equal({ model: 'echo', prompt: 'abc', seed: 42, stop: ['\n'] });
    });

    it('returns a new request and leaves the given one unchanged', () => {
      const request = generate();
      const before = structuredClone(request);
      const out = validateGenerateRequest(request, limits);
      expect([out !== request, request]).to.deep.equal([true, before]);
    });
  });

  describe('validateGenerateRequest max_tokens', () => {
    it('accepts 2048', () => {
      expect(validateGenerateRequest(generate({ maxTokens: 2048 }), limits).maxTokens).to.equal(2048);
    });

    it('refuses 2049, naming the field, the limit and the value', () => {
      expect(refusal(() => validateGenerateRequest(generate({ maxTokens: 2049 }), limits))).to.equal('max_tokens must be <= 2048, given 2049');
    });
  });

  describe('validateGenerateRequest temperature', () => {
    it('accepts 0 and 2', () => {
      expect([0, 2].map((temperature) => validateGenerateRequest(generate({ temperature }), limits).temperature)).to.deep.equal([0, 2]);
    });

    it('refuses a temperature below 0', () => {
      expect(refusal(() => validateGenerateRequest(generate({ temperature: -0.5 }), limits))).to.equal('temperature must be between 0 and 2, given -0.5');
    });

    it('refuses a temperature above 2', () => {
      expect(refusal(() => validateGenerateRequest(generate({ temperature: 2.5 }), limits))).to.equal('temperature must be between 0 and 2, given 2.5');
    });

    it('refuses NaN', () => {
      expect(refusal(() => validateGenerateRequest(generate({ temperature: NaN }), limits))).to.equal('temperature must be between 0 and 2, given NaN');
    });
  });

  describe('validateGenerateRequest prompt', () => {
    it('refuses an empty prompt', () => {
      expect(refusal(() => validateGenerateRequest(generate({ prompt: '' }), limits))).to.equal('prompt is required, given ""');
    });

    it('accepts a prompt of exactly maxPromptChars characters', () => {
      const prompt = 'a'.repeat(limits.maxPromptChars);
      expect(validateGenerateRequest(generate({ prompt }), limits).prompt).to.equal(prompt);
    });

    it('refuses a prompt one character over maxPromptChars, giving its length rather than its text', () => {
      expect(refusal(() => validateGenerateRequest(generate({ prompt: 'a'.repeat(101) }), limits))).to.equal(
        'prompt must be at most 100 characters, given a string of 101 characters',
      );
    });

    it('gives a short over-long prompt by its length too: a prompt is content, never echoed', () => {
      expect(refusal(() => validateGenerateRequest(generate({ prompt: 'abcdef' }), { ...limits, maxPromptChars: 5 }))).to.equal(
        'prompt must be at most 5 characters, given a string of 6 characters',
      );
    });
  });

  describe('validateGenerateRequest stop', () => {
    it('accepts 4 stop sequences', () => {
      const stop = ['a', 'b', 'c', 'd'];
      expect(validateGenerateRequest(generate({ stop }), limits).stop).to.deep.equal(stop);
    });

    it('refuses 5 stop sequences, giving the count', () => {
      expect(refusal(() => validateGenerateRequest(generate({ stop: ['a', 'b', 'c', 'd', 'e'] }), limits))).to.equal(
        'stop must have at most 4 sequences, given 5',
      );
    });

    it('accepts a stop sequence of 64 characters', () => {
      const stop = ['x'.repeat(64)];
      expect(validateGenerateRequest(generate({ stop }), limits).stop).to.deep.equal(stop);
    });

    it('refuses a stop sequence of 65 characters, naming its index', () => {
      expect(refusal(() => validateGenerateRequest(generate({ stop: ['ok', 'x'.repeat(65)] }), limits))).to.equal(
        'stop[1] must be 1 to 64 characters, given a string of 65 characters',
      );
    });

    it('refuses an empty stop sequence, naming its index', () => {
      expect(refusal(() => validateGenerateRequest(generate({ stop: [''] }), limits))).to.equal('stop[0] must be 1 to 64 characters, given ""');
    });
  });

  describe('validateGenerateRequest priority', () => {
    it('refuses an unknown priority number', () => {
      expect(refusal(() => validateGenerateRequest(generate({ priority: 7 as Priority }), limits))).to.equal(
        'priority must be one of PRIORITY_UNSPECIFIED, PRIORITY_LOW, PRIORITY_NORMAL, PRIORITY_HIGH, given 7',
      );
    });

    it('refuses UNRECOGNIZED', () => {
      expect(refusal(() => validateGenerateRequest(generate({ priority: Priority.UNRECOGNIZED }), limits))).to.equal(
        'priority must be one of PRIORITY_UNSPECIFIED, PRIORITY_LOW, PRIORITY_NORMAL, PRIORITY_HIGH, given -1',
      );
    });
  });

  describe('validateModelName', () => {
    it('accepts letters, digits, dot, underscore and dash after a leading letter or digit', () => {
      expect(['echo', 'spam-nb', 'ngram_v2.1', '7b', 'A'].map((name) => validateModelName('model', name))).to.deep.equal([
        'echo',
        'spam-nb',
        'ngram_v2.1',
        '7b',
        'A',
      ]);
    });

    it('refuses an empty name as required', () => {
      expect(refusal(() => validateModelName('model', ''))).to.equal('model is required, given ""');
    });

    it('accepts a name of 128 characters', () => {
      const name = 'm'.repeat(128);
      expect(validateModelName('model', name)).to.equal(name);
    });

    it('refuses a name of 129 characters', () => {
      expect(refusal(() => validateModelName('model', 'm'.repeat(129)))).to.equal('model must be at most 128 characters, given a string of 129 characters');
    });

    it('refuses a space, a slash or a non-ASCII letter', () => {
      expect(['bad name', 'a/b', 'modèle'].map((name) => refusal(() => validateModelName('model', name)))).to.deep.equal([
        `model must contain only letters, digits, '.', '_' and '-', given "bad name"`,
        `model must contain only letters, digits, '.', '_' and '-', given "a/b"`,
        `model must contain only letters, digits, '.', '_' and '-', given "modèle"`,
      ]);
    });

    it('refuses a name starting with a dot, underscore or dash', () => {
      expect(['.x', '_x', '-x'].map((name) => refusal(() => validateModelName('model', name)))).to.deep.equal([
        `model must contain only letters, digits, '.', '_' and '-', given ".x"`,
        `model must contain only letters, digits, '.', '_' and '-', given "_x"`,
        `model must contain only letters, digits, '.', '_' and '-', given "-x"`,
      ]);
    });

    it('names the field it was given in the refusal', () => {
      expect(refusal(() => validateModelName('models[2]', ''))).to.equal('models[2] is required, given ""');
    });

    it('is applied to the model of a GenerateRequest', () => {
      expect(refusal(() => validateGenerateRequest(generate({ model: 'no such/model' }), limits))).to.equal(
        `model must contain only letters, digits, '.', '_' and '-', given "no such/model"`,
      );
    });
  });

  describe('validatePredictRequest', () => {
    it('fills PRIORITY_UNSPECIFIED with PRIORITY_NORMAL', () => {
      expect(validatePredictRequest(predict(), limits).priority).to.equal(Priority.PRIORITY_NORMAL);
    });

    it('passes model and input through unchanged', () => {
      const out = validatePredictRequest(predict({ model: 'spam-nb', input: 'hi' }), limits);
      expect({ model: out.model, input: out.input }).to.deep.equal({ model: 'spam-nb', input: 'hi' });
    });

    it('refuses an empty input', () => {
      expect(refusal(() => validatePredictRequest(predict({ input: '' }), limits))).to.equal('input is required, given ""');
    });

    it('accepts an input of exactly maxInputChars characters', () => {
      const input = 'i'.repeat(limits.maxInputChars);
      expect(validatePredictRequest(predict({ input }), limits).input).to.equal(input);
    });

    it('refuses an input one character over maxInputChars', () => {
      expect(refusal(() => validatePredictRequest(predict({ input: 'i'.repeat(51) }), limits))).to.equal(
        'input must be at most 50 characters, given a string of 51 characters',
      );
    });

    it('applies the model name rules', () => {
      expect(refusal(() => validatePredictRequest(predict({ model: '' }), limits))).to.equal('model is required, given ""');
    });

    it('refuses an unknown priority', () => {
      expect(refusal(() => validatePredictRequest(predict({ priority: 9 as Priority }), limits))).to.equal(
        'priority must be one of PRIORITY_UNSPECIFIED, PRIORITY_LOW, PRIORITY_NORMAL, PRIORITY_HIGH, given 9',
      );
    });
  });

  describe('chat messages and top_p (GenerateRequest.messages, top_p)', () => {
    it('accepts messages with an empty prompt, and refuses both at once naming prompt', () => {
      expect(validateGenerateRequest(generate({ prompt: '', messages: [{ role: 'user', content: 'hi' }] }), limits).messages).to.have.length(1);
      expect(refusal(() => validateGenerateRequest(generate({ messages: [{ role: 'user', content: 'hi' }] }), limits))).to.equal('prompt must be empty when messages are given, given a string of 5 characters');
    });

    it('refuses an unknown role, an empty user turn, too many messages and too much content, naming each', () => {
      const chat = (messages: GenerateRequest['messages']) => generate({ prompt: '', messages });
      expect(refusal(() => validateGenerateRequest(chat([{ role: 'wizard', content: 'x' }]), limits))).to.equal('messages[0].role must be one of system, user, assistant, given "wizard"');
      expect(refusal(() => validateGenerateRequest(chat([{ role: 'system', content: 's' }, { role: 'user', content: '' }]), limits))).to.equal('messages[1].content is required for a user message, given ""');
      expect(refusal(() => validateGenerateRequest(chat(Array.from({ length: 257 }, () => ({ role: 'user', content: 'x' }))), limits))).to.equal('messages must have at most 256 messages, given 257');
      expect(refusal(() => validateGenerateRequest(chat([{ role: 'user', content: 'x'.repeat(60) }, { role: 'assistant', content: 'y'.repeat(60) }]), limits))).to.equal('messages must have at most 100 characters of content in all, given "120 by messages[1]"');
    });

    it('refuses top_p outside (0, 1], naming it', () => {
      expect(validateGenerateRequest(generate({ topP: 1 }), limits).topP).to.equal(1);
      for (const topP of [0, -0.5, 1.01, Number.NaN]) expect(refusal(() => validateGenerateRequest(generate({ topP }), limits))).to.equal(`top_p must be greater than 0 and at most 1, given ${topP}`);
    });
  });
});
