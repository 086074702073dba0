/**
 * The FileDescriptorSet that `buf build` writes into generated/: what server reflection serves,
 * and the schema the request decoder consults to name a field the generated code cannot hold.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { FileRegistry, createFileRegistry, fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';

let descriptorSet: Uint8Array | undefined;
let registry: FileRegistry | undefined;

/** The raw FileDescriptorSet (read once per process). */
export function loadDescriptorSet(): Uint8Array {
  descriptorSet ??= new Uint8Array(readFileSync(resolve(__dirname, '../../generated/descriptors.binpb')));
  return descriptorSet;
}

/** Every message, enum and service of the mesh's protos (built once per process). */
export function meshRegistry(): FileRegistry {
  registry ??= createFileRegistry(fromBinary(FileDescriptorSetSchema, loadDescriptorSet()));
  return registry;
}
