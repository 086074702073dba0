/**
 * Replicas and restarts: the gateway tells a client connection to go away after its maximum age
 * (so clients behind one Service address spread over the replicas), without cutting the calls in
 * flight on it; and a stopping service lets calls in flight finish for its drain time, cut after
 * it, and is not held up by streams that never end (health watches).
 */
import { expect } from 'chai';
import { Channel as ChannelImplementation, connectivityState } from '@grpc/grpc-js';
import { createClient } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';
import { createMeshClient, openChannel } from '../../common/client';
import { FinishReason, GenerateRequest, InferenceServiceDefinition } from '../../generated/maas/v1/inference';
import { TestMesh, collect, grpcError, startMesh } from '../support';

const generate = (prompt: string): GenerateRequest => ({ model: 'echo', prompt, maxTokens: 0, stop: [], priority: 0, affinityKey: '', messages: [] });
const words = (n: number) => Array.from({ length: n }, (_, i) => `w${i}`).join(' ');

/** Resolves with the next connectivity state of `channel` other than `from`, or rejects after `ms`. */
function nextState(channel: ChannelImplementation, from: connectivityState, ms: number): Promise<connectivityState> {
  return new Promise((resolve, reject) => {
    channel.watchConnectivityState(from, Date.now() + ms, (err?: Error) => (err ? reject(new Error(`the channel stayed ${connectivityState[from]} for ${ms} ms`)) : resolve(channel.getConnectivityState(false))));
  });
}

describe('gateway connection age and drains', function () {
  this.timeout(60_000);

  describe('with --max-connection-age-ms 400', () => {
    let mesh: TestMesh;
    before(async () => {
      mesh = await startMesh({ workers: [{ echoDelayMs: 100 }], gateway: { httpPort: -1, maxConnectionAgeMs: 400, maxConnectionAgeGraceMs: 20_000 } });
    });
    after(() => mesh?.stop());

    it('sends GOAWAY to a connection past its age, and the call in flight on it still completes', async () => {
      const channel = openChannel(mesh.gateway.address) as unknown as ChannelImplementation;
      try {
        const inference = createMeshClient(InferenceServiceDefinition, channel as never);
        // 15 words at 100 ms each: the call outlives the connection's 400 ms by far.
        const call = collect(inference.generate(generate(words(15))));
        // The connection comes up for the call, then the server tells it to go away: the channel
        // leaves READY (to IDLE) while the call goes on over the old connection.
        let state = channel.getConnectivityState(false);
        const deadline = Date.now() + 10_000;
        while (state !== connectivityState.READY) state = await nextState(channel, state, deadline - Date.now());
        const readyAt = Date.now();
        const after = await nextState(channel, connectivityState.READY, 5_000);
        const goneAfterMs = Date.now() - readyAt;
        expect(after).to.not.equal(connectivityState.READY);
        expect(goneAfterMs, 'time from READY to the GOAWAY').to.be.within(300, 3_000);
        const chunks = await call;
        expect(chunks.map((c) => c.text).join('').trim().split(/\s+/)).to.have.length(15);
        expect(chunks.at(-1)?.finishReason, 'the last chunk ends the stream').to.not.equal(FinishReason.FINISH_REASON_UNSPECIFIED);
        // The next call opens a new connection and succeeds.
        const again = await collect(inference.generate(generate('x y')));
        expect(again.map((c) => c.text).join('')).to.contain('y');
      } finally {
        channel.close();
      }
    });

    it('keeps a connection READY without the setting (the property above comes from it)', async () => {
      const other = await startMesh({ workers: [{ echoDelayMs: 0 }], gateway: { httpPort: -1, maxConnectionAgeMs: 0 } });
      const channel = openChannel(other.gateway.address) as unknown as ChannelImplementation;
      try {
        const inference = createMeshClient(InferenceServiceDefinition, channel as never);
        await collect(inference.generate(generate('a b')));
        expect(channel.getConnectivityState(false)).to.equal(connectivityState.READY);
        const left = await nextState(channel, connectivityState.READY, 1_500).catch(() => undefined);
        expect(left, 'state change with no connection age').to.equal(undefined);
      } finally {
        channel.close();
        await other.stop();
      }
    });
  });

  describe('drain on shutdown', () => {
    it('lets a call in flight finish within --drain-timeout-ms, and does not wait for a health watch', async () => {
      const mesh = await startMesh({ workers: [{ echoDelayMs: 100 }], gateway: { httpPort: -1, drainTimeoutMs: 20_000 } });
      const channel = openChannel(mesh.gateway.address);
      try {
        const inference = createMeshClient(InferenceServiceDefinition, channel);
        const health = createClient(HealthDefinition, channel);
        const watch = collect(health.watch({ service: '' })).catch((err: unknown) => err);
        const stream = inference.generate(generate(words(10)))[Symbol.asyncIterator]();
        const first = await stream.next();
        expect(first.done).to.equal(false);
        const started = Date.now();
        const stopped = mesh.gateway.shutdown().then(() => Date.now() - started);
        let count = 1;
        for (let r = await stream.next(); !r.done; r = await stream.next()) count++;
        expect(count, 'chunks of the call that was in flight').to.be.at.least(10);
        const took = await stopped;
        // The call needed about 0.9 s more; the open health watch would have held the stop for 20 s.
        expect(took, 'shutdown time').to.be.below(5_000);
        await watch;
      } finally {
        channel.close();
        await mesh.stop();
      }
    });

    it('cuts a call still running when --drain-timeout-ms ends', async () => {
      const mesh = await startMesh({ workers: [{ echoDelayMs: 100 }], gateway: { httpPort: -1, drainTimeoutMs: 300 } });
      const channel = openChannel(mesh.gateway.address);
      try {
        const inference = createMeshClient(InferenceServiceDefinition, channel);
        const stream = inference.generate(generate(words(50)))[Symbol.asyncIterator]();
        await stream.next();
        const started = Date.now();
        const stopped = mesh.gateway.shutdown().then(() => Date.now() - started);
        const err = await grpcError(
          (async () => {
            for (let r = await stream.next(); !r.done; r = await stream.next());
          })(),
        );
        expect(err.message).to.match(/cancel|unavailable|closed|reset/i);
        expect(await stopped, 'shutdown time').to.be.within(250, 2_000);
      } finally {
        channel.close();
        await mesh.stop();
      }
    });
  });
});
