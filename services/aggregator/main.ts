/** Process entry of the aggregator service. */
import { runService } from '../../common/service-main';
import { aggregatorSchema } from './config';
import { startAggregator } from './server';

runService('aggregator', aggregatorSchema, (config, log) => startAggregator(config, log));
