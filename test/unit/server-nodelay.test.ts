import { expect } from 'chai';
import http2 = require('node:http2');
import { silentLogger } from '../../common/log.js';
import { startGrpcServer } from '../../common/server.js';

describe('startGrpcServer: sockets without Nagle', () => {
  it('makes the HTTP/2 servers grpc-js builds (plain and TLS) accept with TCP_NODELAY', async () => {
    const server = await startGrpcServer({ host: '127.0.0.1', port: 0, maxMessageBytes: 1 << 20, maxConcurrentStreams: 10, services: [], log: silentLogger, serving: true });
    try {
      // grpc-js creates its servers through these two functions, with options of its own (maxSessionMemory among them);
      // `noDelay` is the net.Server option that sets TCP_NODELAY on every accepted socket.
      const plain = http2.createServer({ maxSessionMemory: 7 });
      const secure = http2.createSecureServer({ maxSessionMemory: 7 });
      const noDelay = (s: object) => (s as { noDelay?: boolean }).noDelay;
      expect([noDelay(plain), noDelay(secure)]).to.deep.equal([true, true]);
      plain.close();
      secure.close();
    } finally {
      await server.shutdown();
    }
  });
});
