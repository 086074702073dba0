/** Process entry of the scheduler service. */
import { runService } from '../../common/service-main';
import { schedulerSchema } from './config';
import { startScheduler } from './server';

runService('scheduler', schedulerSchema, (config, log) => startScheduler(config, log));
