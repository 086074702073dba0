/** Finding the 64-bit integer the generated decoder cannot hold, and the decoder that reports it. */
import { expect } from 'chai';
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { meshRegistry } from '../../common/descriptors.js';
import { UnsafeIntegerRequest, findUnsafeInteger, guardRequestDecoding } from '../../common/wire-integers.js';
import { CommitRequest, AggregatorServiceDefinition } from '../../generated/maas/internal/v1/aggregator.js';
import { JobServiceDefinition } from '../../generated/maas/v1/jobs.js';

const BIG = 2n ** 63n;

describe('64-bit integers beyond 2^53', () => {
  it('names a top-level field, a nested one and a map value, and passes a safe value', () => {
    const watch = meshRegistry().getMessage('maas.v1.WatchRequest')!;
    expect(findUnsafeInteger(watch, new BinaryWriter().uint32(2 << 3).uint64(BIG).finish())).to.deep.equal({ field: 'after_sequence', value: '9223372036854775808' });
    expect(findUnsafeInteger(watch, new BinaryWriter().uint32(2 << 3).uint64(2n ** 53n - 1n).finish())).to.equal(undefined);

    const commit = meshRegistry().getMessage('maas.internal.v1.CommitRequest')!;
    const entry = new BinaryWriter().uint32((1 << 3) | 2).string('word').uint32(2 << 3).uint64(BIG).finish();
    const output = new BinaryWriter().uint32((2 << 3) | 2).bytes(entry).finish();
    const request = new BinaryWriter().uint32((1 << 3) | 2).string('job').uint32((5 << 3) | 2).bytes(output).finish();
    expect(findUnsafeInteger(commit, request)).to.deep.equal({ field: 'output.word_counts', value: '9223372036854775808' });
    // The generated decoder indeed cannot hold it.
    expect(() => CommitRequest.decode(request)).to.throw(/MAX_SAFE_INTEGER/);
  });

  it('a field with the wrong wire type is skipped, as the generated decoder skips it', () => {
    const watch = meshRegistry().getMessage('maas.v1.WatchRequest')!;
    expect(findUnsafeInteger(watch, new BinaryWriter().uint32((2 << 3) | 1).fixed64(BIG).finish())).to.equal(undefined);
  });

  it('the guarded decoder returns a marker naming the field, decodes good bytes as before, and lets garbage throw', () => {
    const guarded = guardRequestDecoding(JobServiceDefinition);
    const decode = (b: Uint8Array) => guarded.methods.watch.requestType.decode(b);
    const marker = decode(new BinaryWriter().uint32((1 << 3) | 2).string('j').uint32(2 << 3).uint64(BIG).finish());
    expect(marker).to.be.instanceOf(UnsafeIntegerRequest);
    expect(marker).to.deep.include({ field: 'after_sequence', value: '9223372036854775808' });
    expect(decode(new BinaryWriter().uint32((1 << 3) | 2).string('j').uint32(2 << 3).uint64(7).finish())).to.deep.equal({ jobId: 'j', afterSequence: 7 });
    expect(() => decode(new Uint8Array([0x0a, 0xff]))).to.throw();
    expect(guardRequestDecoding(AggregatorServiceDefinition).methods.commit.requestType.fromPartial).to.be.a('function');
  });
});
