import { expect } from 'chai';
import { inferAffinityKeyOf, inferPriorityOf } from '../../common/infer-parameters';
import { priorityOf } from '../../services/scheduler/server';
import { ModelInferRequest } from '../../generated/inference/grpc_service';
import { validateInferEnvelope } from '../../gateway/infer-request';

const str = (stringParam: string) => ({ parameterChoice: { $case: 'stringParam' as const, stringParam } });

describe('ModelInfer parameters: priority and affinity_key', () => {
  it('reads the priority and affinity key an infer task carries, normal and empty by default', () => {
    expect(inferPriorityOf({ priority: str('high') })).to.equal('high');
    expect(inferPriorityOf({ priority: str('low') })).to.equal('low');
    expect(inferPriorityOf({})).to.equal('normal');
    expect(inferAffinityKeyOf({ affinity_key: str('user-7') })).to.equal('user-7');
    expect(inferAffinityKeyOf({ affinity_key: { parameterChoice: { $case: 'int64Param', int64Param: 7 } } })).to.equal('');
  });

  it('the scheduler queues an infer task at the priority of its parameter', () => {
    const task = (parameters: ModelInferRequest['parameters']) => ({ requestId: 'r', tenant: 't', request: { $case: 'infer' as const, infer: ModelInferRequest.fromPartial({ modelName: 'm', parameters }) } });
    expect(priorityOf(task({ priority: str('high') }))).to.equal('high');
    expect(priorityOf(task({ priority: str('low') }))).to.equal('low');
    expect(priorityOf(task({}))).to.equal('normal');
  });

  it('the gateway normalises the priority\'s case and refuses an affinity key over 256 characters, naming it', () => {
    const request = (parameters: ModelInferRequest['parameters']) => ModelInferRequest.fromPartial({ modelName: 'm', parameters });
    expect(validateInferEnvelope(request({ priority: str('HIGH') }), { maxTensorElements: 10 }).parameters.priority).to.deep.equal(str('high'));
    expect(() => validateInferEnvelope(request({ affinity_key: str('k'.repeat(257)) }), { maxTensorElements: 10 })).to.throw('parameters["affinity_key"] must be at most 256 characters, given a string of 257 characters');
    expect(() => validateInferEnvelope(request({ affinity_key: { parameterChoice: { $case: 'boolParam', boolParam: true } } }), { maxTensorElements: 10 })).to.throw('parameters["affinity_key"] must be a string_param, given a bool_param');
  });
});
