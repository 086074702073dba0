/** Process entry of the gateway. */
import { runService } from '../common/service-main';
import { gatewaySchema } from './config';
import { startGateway } from './server';

runService('gateway', gatewaySchema, async (config, log) => {
  // The config holds only the keys' hashes: drop the plaintext so nothing this process starts or
  // prints later can carry it.
  delete process.env.MAAS_GATEWAY_API_KEYS;
  const gateway = await startGateway(config, log);
  process.on('SIGHUP', () => gateway.reloadApiKeys());
  return gateway;
});
