/** Names shared by the services of the batch path. */

/** Built-in mappers every worker runs. */
export const MAPPER_NAMES: readonly string[] = ['wordcount'];
