/** Process entry of the worker service. */
import { runService } from '../../common/service-main';
import { workerSchema } from './config';
import { startWorker } from './server';

runService('worker', workerSchema, (config, log) => startWorker(config, log));
