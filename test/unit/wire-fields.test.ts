import { expect } from 'chai';
import { lengthDelimitedField } from '../../common/wire-fields';
import { ScheduleResponse } from '../../generated/maas/internal/v1/scheduler';
import { FinishReason, GenerateResponse } from '../../generated/maas/v1/inference';

describe('lengthDelimitedField: one field of an encoded message, unread', () => {
  const chunk = GenerateResponse.fromPartial({ text: 'héllo ', index: 3, finishReason: FinishReason.FINISH_REASON_LENGTH, usage: { promptTokens: 2, completionTokens: 4 } });
  const response = ScheduleResponse.encode({ output: { workerId: 'w-1', output: { $case: 'chunk', chunk } } }).finish();

  it('finds the chunk of a worker\'s output: the same bytes the generated code would write for it', () => {
    const output = lengthDelimitedField(response, 1);
    const bytes = output && lengthDelimitedField(output, 10);
    expect(bytes && Buffer.from(bytes).equals(Buffer.from(GenerateResponse.encode(chunk).finish()))).to.equal(true);
    expect(GenerateResponse.decode(bytes!)).to.deep.equal(chunk);
  });

  it('answers undefined for a field the message does not hold (a prediction, not a chunk)', () => {
    const prediction = ScheduleResponse.encode({ output: { workerId: 'w', output: { $case: 'prediction', prediction: { model: 'm', label: 'x', probabilities: { x: 1 }, text: '' } } } }).finish();
    expect(lengthDelimitedField(lengthDelimitedField(prediction, 1)!, 10)).to.equal(undefined);
    expect(lengthDelimitedField(new Uint8Array(0), 1)).to.equal(undefined);
  });

  it('throws on bytes that end inside a field instead of reading past them', () => {
    expect(() => lengthDelimitedField(response.subarray(0, response.length - 2), 1)).to.throw(/truncated/);
    expect(() => lengthDelimitedField(Uint8Array.from([0x0a, 0x05, 0x01]), 1)).to.throw(/truncated/);
    expect(() => lengthDelimitedField(Uint8Array.from([0x0b]), 1)).to.throw(/wire type 3/);
  });
});
