/** Process entry of the balancer service. */
import { runService } from '../../common/service-main';
import { balancerSchema } from './config';
import { startBalancer } from './server';

runService('balancer', balancerSchema, (config, log) => startBalancer(config, log));
