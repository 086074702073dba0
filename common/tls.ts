/**
 * Mutual TLS between the services: the settings every service has (`--tls`, `--tls-cert`,
 * `--tls-key`, `--tls-ca`, `--insecure`), loading and checking the certificate at start, the
 * credentials of servers and clients, the rule that plaintext stays on loopback, and the grpc-js
 * server interceptor that authorizes each call by the identity in the caller's verified
 * certificate (see METHOD_POLICY in mesh-identity.ts).
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { constants as http2Constants, Http2Stream } from 'node:http2';
import { PeerCertificate, checkServerIdentity } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { classifyAddress } from './callback-target';
import { boolean, integer, text } from './config';
import {
  MeshIdentity,
  MeshService,
  PeerExpectation,
  authorizeCall,
  describeExpectation,
  identityFromSubjectAltName,
  identityMatches,
} from './mesh-identity';

/** Default folder of the mesh's certificates (what `maas certs` writes). */
export const DEFAULT_CERTS_DIR = '.maas/certs';

/**
 * Metadata entry through which the verified caller identity (its URI) reaches handlers. The
 * interceptor deletes any entry of this name a caller sent, then sets it from the certificate.
 */
export const PEER_IDENTITY_HEADER = 'maas-peer-identity';

/** The TLS settings of a service's config schema; `name` is its certificate's file name. */
export function tlsSchema(envPrefix: string, name: string) {
  return {
    tls: boolean({
      flag: '--tls',
      env: `${envPrefix}_TLS`,
      default: false,
      doc: 'Mutual TLS: serve with --tls-cert, require a client certificate from --tls-ca and authorize each method by the caller\'s identity, and call other services the same way. Create the files with `maas certs`.',
    }),
    tlsCert: text({ flag: '--tls-cert', env: `${envPrefix}_TLS_CERT`, default: `${DEFAULT_CERTS_DIR}/${name}.pem`, doc: 'This service\'s certificate (PEM), with its mesh identity; read when --tls is on.' }),
    tlsKey: text({ flag: '--tls-key', env: `${envPrefix}_TLS_KEY`, default: `${DEFAULT_CERTS_DIR}/${name}-key.pem`, doc: 'Private key of --tls-cert (PEM).' }),
    tlsCa: text({ flag: '--tls-ca', env: `${envPrefix}_TLS_CA`, default: `${DEFAULT_CERTS_DIR}/ca.pem`, doc: 'The mesh CA (PEM): peers must present a certificate it signed.' }),
    insecure: boolean({
      flag: '--insecure',
      env: `${envPrefix}_INSECURE`,
      default: false,
      doc: 'Allow plaintext (no authentication, no encryption) on a --host other than loopback; without it such a start is refused.',
    }),
    healthPort: integer({
      flag: '--health-port',
      env: `${envPrefix}_HEALTH_PORT`,
      default: 0,
      min: 0,
      max: 65535,
      doc: 'A second port on --host serving only grpc.health.v1, in plaintext, for probes that cannot present a client certificate (Kubernetes gRPC probes); 0: none.',
    }),
  };
}

/** The TLS part of a parsed config. */
export interface TlsConfig {
  tls: boolean;
  tlsCert: string;
  tlsKey: string;
  tlsCa: string;
  insecure: boolean;
  healthPort: number;
}

/** A service's loaded certificate, key and CA, and the identity its certificate names. */
export interface MeshTls {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly identity: MeshIdentity;
}

/**
 * Loads the files of a TLS config when `tls` is on (undefined when off) and checks them: readable,
 * a key that matches the certificate, a certificate signed by the CA and naming a mesh identity of
 * `service`. Throws an Error naming the setting at fault.
 */
export function loadMeshTls(config: TlsConfig, service: MeshService): MeshTls | undefined {
  if (!config.tls) return undefined;
  const read = (flag: string, path: string) => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new Error(`--tls is on but ${flag} ${path} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'}); create the files with \`maas certs\``);
    }
  };
  const cert = read('--tls-cert', config.tlsCert);
  const key = read('--tls-key', config.tlsKey);
  const ca = read('--tls-ca', config.tlsCa);
  let x509: X509Certificate;
  let caCert: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch {
    throw new Error(`--tls-cert ${config.tlsCert} is not a PEM certificate`);
  }
  try {
    caCert = new X509Certificate(ca);
  } catch {
    throw new Error(`--tls-ca ${config.tlsCa} is not a PEM certificate`);
  }
  let matches = false;
  try {
    matches = x509.checkPrivateKey(createPrivateKey(key));
  } catch {
    throw new Error(`--tls-key ${config.tlsKey} is not a PEM private key`);
  }
  if (!matches) throw new Error(`--tls-key ${config.tlsKey} is not the key of --tls-cert ${config.tlsCert}`);
  if (!x509.checkIssued(caCert) || !x509.verify(caCert.publicKey)) {
    throw new Error(`--tls-cert ${config.tlsCert} is not signed by the CA of --tls-ca ${config.tlsCa}`);
  }
  if (Date.parse(x509.validTo) < Date.now()) throw new Error(`--tls-cert ${config.tlsCert} expired on ${x509.validTo}`);
  const identity = identityFromSubjectAltName(x509.subjectAltName);
  if (!identity) throw new Error(`--tls-cert ${config.tlsCert} names no mesh identity (a URI SAN spiffe://maas.mesh/...)`);
  if (identity.service !== service) throw new Error(`--tls-cert ${config.tlsCert} names ${identity.uri}, not a ${service} identity`);
  return { ca, cert, key, identity };
}

/** True for an address that only this machine can reach. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  // The same address rules as callbacks: 127/8, ::1 and their IPv4-mapped forms.
  return h === 'localhost' || classifyAddress(h) === 'loopback';
}

/**
 * Plaintext only on loopback: throws (saying why and what to do) when a server without TLS is to
 * listen on another address and `insecure` was not given.
 */
export function checkListenSecurity(host: string, tlsOn: boolean, insecure: boolean): void {
  if (tlsOn || insecure || isLoopbackHost(host)) return;
  throw new Error(
    `refusing to listen on ${host} without TLS: any machine that reaches it could call every method unauthenticated, in plaintext. ` +
      'Turn on --tls (certificates from `maas certs`), bind --host 127.0.0.1, or pass --insecure to serve plaintext anyway',
  );
}

/**
 * Credentials of a server. Internal services require a client certificate from the mesh CA (the
 * handshake fails otherwise); the gateway's public port (`requireClientCert` false) does not:
 * its clients authenticate with API keys.
 */
export function serverCredentials(tls: MeshTls | undefined, requireClientCert: boolean): grpc.ServerCredentials {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  return grpc.ServerCredentials.createSsl(tls.ca, [{ cert_chain: tls.cert, private_key: tls.key }], requireClientCert);
}

/**
 * Credentials of a client inside the mesh: presents this service's certificate, trusts only the
 * mesh CA, and checks that the server is the identity expected (its URI SAN), not its host name,
 * so a worker reached at a pod IP needs no IP in its certificate. Undefined (plaintext) without TLS.
 */
export function meshClientCredentials(tls: MeshTls | undefined, expected: PeerExpectation): grpc.ChannelCredentials | undefined {
  if (!tls) return undefined;
  return grpc.credentials.createSsl(tls.ca, tls.key, tls.cert, {
    checkServerIdentity(_host: string, cert: PeerCertificate) {
      const identity = identityFromSubjectAltName(cert.subjectaltname);
      if (identityMatches(identity, expected)) return undefined;
      return new Error(`the server presented ${identity?.uri ?? 'no mesh identity'}, expected ${describeExpectation(expected)}`);
    },
  });
}

/** Credentials of a tool: an optional client certificate, the given CA, and the usual host name check. */
export function toolCredentials(ca: Buffer, client?: { cert: Buffer; key: Buffer }): grpc.ChannelCredentials {
  return grpc.credentials.createSsl(ca, client?.key ?? null, client?.cert ?? null, { checkServerIdentity });
}

/**
 * After a call is answered before its request was read, asks the client to stop sending it, as
 * HTTP/2 allows (RFC 9113, 8.1): RST_STREAM with NO_ERROR after the complete response. Without it
 * the unread body stalls on flow control, neither end closes the stream, and a caller refused many
 * times while sending large messages fills the connection's stream limit: every later call on that
 * connection then fails. grpc-js keeps the HTTP/2 stream on the call object it hands the first
 * interceptor; test/integration/mtls.test.ts fails if that stops being so.
 */
function stopRequestBody(call: grpc.ServerInterceptingCallInterface): void {
  const stream = (call as unknown as { stream?: Http2Stream }).stream;
  if (!stream || typeof stream.close !== 'function') return;
  // Not at once: a reset that reaches a grpc-js client before it has processed the answer turns
  // the answer into INTERNAL "Call ended without gRPC status".
  const timer = setTimeout(() => {
    if (!stream.closed && !stream.destroyed) stream.close(http2Constants.NGHTTP2_NO_ERROR);
  }, RESET_AFTER_ANSWER_MS);
  timer.unref();
  stream.once('close', () => clearTimeout(timer));
}

/** How long after answering a refused call its stream is reset (see stopRequestBody). */
const RESET_AFTER_ANSWER_MS = 50;

/** The identity the verified peer certificate of a call names (undefined without TLS or without one). */
function peerIdentity(call: grpc.ServerInterceptingCallInterface): MeshIdentity | undefined {
  const cert = call.getAuthContext()?.sslPeerCertificate;
  return cert ? identityFromSubjectAltName(cert.subjectaltname) : undefined;
}

/**
 * grpc-js server interceptor: drops any identity a caller sent in metadata; when `enforce` is on
 * (an internal server with TLS), refuses calls whose certificate's identity METHOD_POLICY does not
 * allow for the method (PERMISSION_DENIED naming method and identity; UNAUTHENTICATED when the
 * certificate names no identity), and passes the verified identity on to handlers.
 */
export function authorizationInterceptor(enforce: boolean): grpc.ServerInterceptor {
  return (method, call) =>
    new grpc.ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(metadata, mdNext) {
            metadata.remove(PEER_IDENTITY_HEADER);
            if (!enforce) return mdNext(metadata);
            const identity = peerIdentity(call);
            const decision = authorizeCall(method.path, identity);
            if (!decision.allowed) {
              const code = decision.status === 'unauthenticated' ? grpc.status.UNAUTHENTICATED : grpc.status.PERMISSION_DENIED;
              call.sendStatus({ code, details: decision.message, metadata: new grpc.Metadata() });
              stopRequestBody(call);
              return;
            }
            metadata.set(PEER_IDENTITY_HEADER, identity!.uri);
            mdNext(metadata);
          },
        });
      },
    });
}
