/** The model a request names, as the call metrics label it. */
import { expect } from 'chai';
import { modelOfRequest } from '../../common/call-metrics';

describe('call metrics: the model of a request', () => {
  it('reads maas.v1 model, KServe model_name, a job spec and an internal task; nothing else', () => {
    expect(modelOfRequest({ model: 'echo', input: 'secret' })).to.equal('echo');
    expect(modelOfRequest({ modelName: 'spam-onnx', inputs: [] })).to.equal('spam-onnx');
    expect(modelOfRequest({ tenant: 't', spec: { map: { $case: 'model', model: 'spam-nb' } } })).to.equal('spam-nb');
    expect(modelOfRequest({ spec: { map: { $case: 'mapper', mapper: 'wordcount' } } })).to.equal('mapper:wordcount');
    expect(modelOfRequest({ task: { request: { $case: 'generate', generate: { model: 'ngram', prompt: 'secret' } } } })).to.equal('ngram');
    expect(modelOfRequest({ task: { request: { $case: 'infer', infer: { modelName: 'mlp' } } } })).to.equal('mlp');
    expect(modelOfRequest({ task: { request: { $case: 'map', map: { jobId: 'j', spec: { map: { $case: 'mapper', mapper: 'wordcount' } } } } } })).to.equal('mapper:wordcount');
    expect(modelOfRequest({ jobId: 'job-1', prompt: 'secret' })).to.equal('');
    expect(modelOfRequest(undefined)).to.equal('');
  });
});
