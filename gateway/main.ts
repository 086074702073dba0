/** Process entry of the gateway. */
import { runService } from '../common/service-main';
import { gatewaySchema } from './config';
import { startGateway } from './server';

runService('gateway', gatewaySchema, (config, log) => startGateway(config, log));
