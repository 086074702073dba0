/**
 * The mesh's certificates: a CA, and one certificate per service with its identity (a URI SAN,
 * see mesh-identity.ts) plus DNS and IP names, so that hostname checks of tools such as grpcurl
 * pass on loopback and under compose and Kubernetes service names. EC P-256 keys made with Node's
 * WebCrypto; certificates built with @peculiar/x509. Used by `maas certs`, `maas up --tls`, and
 * tests and the fuzz harness (which make their own in a temporary folder).
 *
 * Files in the folder: ca.pem and ca-key.pem, then <name>.pem and <name>-key.pem for gateway,
 * scheduler, balancer, aggregator, operator (a client-only certificate for tools) and
 * workers/<id> per worker. Private keys are written with mode 0600, the folder with 0700.
 */
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { MeshIdentity, MeshService, meshIdentity } from './mesh-identity';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING = { name: 'ECDSA', hash: 'SHA-256' } as const;

/** What to create; every field has a default. */
export interface MeshCertificateOptions {
  /** Worker ids to issue certificates for (default worker-1, worker-2). */
  workers?: readonly string[];
  /** Extra DNS names or IP addresses put in every service certificate (e.g. scheduler.prod.svc). */
  hosts?: readonly string[];
  /** Days a service certificate is valid (default 365). */
  validityDays?: number;
  /** Days the CA is valid (default 3650). */
  caValidityDays?: number;
  /** Make a new CA and new certificates even where files exist (default false). */
  force?: boolean;
}

/** One certificate and its key, as file paths. */
export interface CertificateFiles {
  cert: string;
  key: string;
}

/** What createMeshCertificates did. */
export interface MeshCertificates {
  dir: string;
  /** The CA certificate every service trusts. */
  ca: string;
  /** By name (gateway, scheduler, balancer, aggregator, operator, workers/<id>). */
  certs: Record<string, CertificateFiles>;
  /** File names created now, and the ones kept because they existed. */
  created: string[];
  kept: string[];
}

/** The services that get a certificate besides the workers. */
const SERVICES: readonly MeshService[] = ['gateway', 'scheduler', 'balancer', 'aggregator', 'operator'];

/** The file name of an identity's certificate, without .pem: its service, or workers/<id>. */
export function certificateName(identity: MeshIdentity): string {
  return identity.service === 'worker' ? `workers/${identity.workerId}` : identity.service;
}

/**
 * Creates the mesh CA and the certificates in `dir`. Files that exist are kept (a CA found in
 * `dir` signs the missing ones), unless `force`; a new CA always comes with new certificates.
 */
export async function createMeshCertificates(dir: string, options: MeshCertificateOptions = {}): Promise<MeshCertificates> {
  const workers = options.workers ?? ['worker-1', 'worker-2'];
  const validityDays = options.validityDays ?? 365;
  const caValidityDays = options.caValidityDays ?? 3650;
  for (const [name, days] of [['validityDays', validityDays], ['caValidityDays', caValidityDays]] as const) {
    if (!Number.isInteger(days) || days < 1 || days > 36500) throw new Error(`${name} must be an integer from 1 to 36500, given ${days}`);
  }
  const hosts = options.hosts ?? [];
  for (const h of hosts) {
    if (isIP(h) === 0 && !/^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/.test(h)) {
      throw new Error(`a SAN must be a DNS name or an IP address, given "${h.slice(0, 64)}"`);
    }
  }
  const identities = [...SERVICES.map((s) => meshIdentity(s)), ...workers.map((id) => meshIdentity('worker', id))];

  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (workers.length > 0) mkdirSync(join(dir, 'workers'), { recursive: true, mode: 0o700 });
  const caPath = join(dir, 'ca.pem');
  const caKeyPath = join(dir, 'ca-key.pem');
  const created: string[] = [];
  const kept: string[] = [];
  let ca: { cert: x509.X509Certificate; key: CryptoKey };
  let newCa = false;
  if (!options.force && existsSync(caPath) && existsSync(caKeyPath)) {
    ca = { cert: new x509.X509Certificate(readFileSync(caPath, 'utf8')), key: await importPrivateKey(readFileSync(caKeyPath, 'utf8')) };
    kept.push('ca');
  } else {
    ca = await createCa(caValidityDays);
    writePem(caKeyPath, await exportPrivateKey(ca.key), true);
    writePem(caPath, ca.cert.toString('pem'), false);
    created.push('ca');
    newCa = true;
  }

  const certs: Record<string, CertificateFiles> = {};
  for (const identity of identities) {
    const name = certificateName(identity);
    const files = { cert: join(dir, `${name}.pem`), key: join(dir, `${name}-key.pem`) };
    certs[name] = files;
    if (!newCa && !options.force && existsSync(files.cert) && existsSync(files.key)) {
      kept.push(name);
      continue;
    }
    const leaf = await issue(ca, identity, hosts, validityDays);
    writePem(files.key, await exportPrivateKey(leaf.key), true);
    writePem(files.cert, leaf.cert.toString('pem'), false);
    created.push(name);
  }
  return { dir, ca: caPath, certs, created, kept };
}

function days(n: number): Date {
  return new Date(Date.now() + n * 86_400_000);
}

/** A little before now, so that a peer whose clock is slightly behind accepts a new certificate. */
function notBefore(): Date {
  return new Date(Date.now() - 5 * 60_000);
}

async function createCa(validityDays: number) {
  const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: 'CN=MaaS Mesh CA, O=MaaS Mesh',
    notBefore: notBefore(),
    notAfter: days(validityDays),
    signingAlgorithm: SIGNING,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert, key: keys.privateKey };
}

async function issue(ca: { cert: x509.X509Certificate; key: CryptoKey }, identity: MeshIdentity, hosts: readonly string[], validityDays: number) {
  const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
  const clientOnly = identity.service === 'operator';
  const names: x509.JsonGeneralName[] = [{ type: 'url', value: identity.uri }];
  if (!clientOnly) {
    // The names the service is dialled by: its compose / Kubernetes Service name, loopback, and extras.
    const dns = identity.service === 'worker' ? [identity.workerId!, `${identity.workerId}.worker`, 'localhost'] : [identity.service, 'localhost'];
    for (const h of [...dns, ...hosts]) names.push({ type: isIP(h) ? 'ip' : 'dns', value: h });
    names.push({ type: 'ip', value: '127.0.0.1' }, { type: 'ip', value: '::1' });
  }
  const cert = await x509.X509CertificateGenerator.create({
    subject: `CN=${identity.service === 'worker' ? `worker ${identity.workerId}` : identity.service}, O=MaaS Mesh`,
    issuer: ca.cert.subject,
    notBefore: notBefore(),
    notAfter: days(validityDays),
    signingAlgorithm: SIGNING,
    publicKey: keys.publicKey,
    signingKey: ca.key,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(clientOnly ? [x509.ExtendedKeyUsage.clientAuth] : [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension(names),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey),
    ],
  });
  return { cert, key: keys.privateKey };
}

async function exportPrivateKey(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END PRIVATE KEY-----\n`;
}

async function importPrivateKey(pem: string): Promise<CryptoKey> {
  const body = /-----BEGIN PRIVATE KEY-----([\s\S]+?)-----END PRIVATE KEY-----/.exec(pem);
  if (!body) throw new Error('ca-key.pem is not a PKCS#8 PEM private key');
  return webcrypto.subtle.importKey('pkcs8', Buffer.from(body[1].replace(/\s+/g, ''), 'base64'), EC, true, ['sign']) as Promise<CryptoKey>;
}

function writePem(path: string, pem: string, secret: boolean): void {
  writeFileSync(path, pem.endsWith('\n') ? pem : `${pem}\n`, { mode: secret ? 0o600 : 0o644 });
  // writeFileSync's mode applies only to a new file: tighten one that existed.
  if (secret) chmodSync(path, 0o600);
}
