/**
 * SASL mechanism registry and the interface between mechanisms and the XMPP stream (RFC 6120
 * section 6). The stream code base64-decodes <auth/>/<response/> payloads, feeds them to step(),
 * and maps the returned SaslStep to <challenge/>, <success/> or <failure/>.
 */
import { createHash } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { StoredCredentials } from './credentials.ts';
import { plain } from './plain.ts';
import { recordPlusOffered, scramSha1, scramSha1Plus, scramSha256, scramSha256Plus } from './scram.ts';

export { availableChannelBindings, setScramFakeSaltSecret, MAX_SASL_MESSAGE_BYTES } from './scram.ts';

/** RFC 6120 section 6.5 failure conditions. */
export type SaslFailureCondition =
  | 'aborted'
  | 'account-disabled'
  | 'credentials-expired'
  | 'encryption-required'
  | 'incorrect-encoding'
  | 'invalid-authzid'
  | 'invalid-mechanism'
  | 'malformed-request'
  | 'mechanism-too-weak'
  | 'not-authorized'
  | 'temporary-auth-failure';

/**
 * One server turn. `data: null` on success means "no additional data" (the stream sends an empty
 * <success/>); an empty Buffer means additional data of length zero. `username` is the SASLprepped
 * authcid; `authzid` is set only when the client asked for one and authzidAllowed accepted it.
 */
export type SaslStep =
  | { kind: 'challenge'; data: Buffer }
  | { kind: 'success'; data: Buffer | null; username: string; authzid?: string }
  | { kind: 'failure'; condition: SaslFailureCondition; text?: string };

export type ChannelBindingType = 'tls-exporter' | 'tls-server-end-point' | 'tls-unique';

export interface SaslContext {
  /** Receives the authcid after SASLprep; resolves null when no such account exists. */
  lookup(username: string): Promise<StoredCredentials | null>;
  /** TLS is active on the stream. */
  secure: boolean;
  /** Channel-binding data this connection can provide; a getter returning null means unavailable. */
  channelBindings: Partial<Record<ChannelBindingType, () => Buffer | null>>;
  /**
   * Decides whether `authcid` may act as `authzid` (only called for a non-empty authzid). When
   * absent, any non-empty authzid is refused with invalid-authzid.
   */
  authzidAllowed?(authcid: string, authzid: string): boolean;
  /**
   * Iteration count shown to unknown users in the SCRAM challenge (and PBKDF2 work spent for them
   * by PLAIN). Set it to the count used for new accounts so fake challenges look real. Default 4096.
   */
  scramIterations?: number;
  /** Test hook: returns the server part of the SCRAM nonce (printable ASCII except ','). */
  randomNonce?(): string;
}

export interface SaslMechanism {
  readonly name: string;
  /** Never throws: malformed input and internal errors become failure steps. */
  step(input: Buffer | null): Promise<SaslStep>;
}

export interface SaslMechanismFactory {
  name: string;
  requiresTls: boolean;
  usesChannelBinding: boolean;
  available(ctx: SaslContext): boolean;
  create(ctx: SaslContext): SaslMechanism;
}

/** In preference order, strongest first. */
export const mechanisms: SaslMechanismFactory[] = [
  scramSha256Plus,
  scramSha1Plus,
  scramSha256,
  scramSha1,
  plain,
];

/**
 * The mechanisms to advertise on this connection: PLAIN only under TLS, -PLUS only when a channel
 * binding is available, optionally restricted to the operator's `allowed` names (case-insensitive).
 * The result is remembered for the context so a later SCRAM exchange can tell whether a client
 * sending the 'y' flag is the victim of a -PLUS stripping downgrade.
 */
export function offeredMechanisms(ctx: SaslContext, allowed?: string[]): SaslMechanismFactory[] {
  const allow = allowed ? new Set(allowed.map((name) => name.toUpperCase())) : null;
  const offered = mechanisms.filter(
    (m) => (!allow || allow.has(m.name)) && (!m.requiresTls || ctx.secure) && m.available(ctx),
  );
  recordPlusOffered(
    ctx,
    offered.some((m) => m.usesChannelBinding),
  );
  return offered;
}

/**
 * Instantiates the mechanism the client picked, or returns null if it was not on offer (the stream
 * then answers <invalid-mechanism/>). Recomputes the offer for the same `allowed` list.
 */
export function selectMechanism(ctx: SaslContext, name: string, allowed?: string[]): SaslMechanism | null {
  const factory = offeredMechanisms(ctx, allowed).find((m) => m.name === name);
  return factory ? factory.create(ctx) : null;
}

/* ------------------------------------------------------------------------------------------------ */
/* Channel-binding data from a TLS socket                                                            */
/* ------------------------------------------------------------------------------------------------ */

/** Reads one DER TLV at `offset`; returns the tag, content bounds and the end of the element. */
function readDer(der: Buffer, offset: number): { tag: number; start: number; end: number } | null {
  if (offset + 2 > der.length) return null;
  const tag = der[offset]!;
  let len = der[offset + 1]!;
  let start = offset + 2;
  if (len & 0x80) {
    const count = len & 0x7f;
    if (count === 0 || count > 4 || start + count > der.length) return null;
    len = 0;
    for (let i = 0; i < count; i++) len = len * 256 + der[start + i]!;
    start += count;
  }
  const end = start + len;
  return end > der.length ? null : { tag, start, end };
}

function decodeOid(bytes: Buffer): string {
  const arcs: number[] = [];
  let value = 0;
  for (const byte of bytes) {
    value = value * 128 + (byte & 0x7f);
    if (!(byte & 0x80)) {
      if (arcs.length === 0)
        arcs.push(value < 80 ? Math.floor(value / 40) : 2, value < 80 ? value % 40 : value - 80);
      else arcs.push(value);
      value = 0;
    }
  }
  return arcs.join('.');
}

/** signatureAlgorithm / hash OIDs to the hash RFC 5929 section 4.1 prescribes. */
const END_POINT_HASH: Record<string, string> = {
  // "if the certificate's signatureAlgorithm uses a single hash function and that hash function
  // is either MD5 or SHA-1, then use SHA-256"
  '1.2.840.113549.1.1.4': 'sha256', // md5WithRSAEncryption
  '1.2.840.113549.1.1.5': 'sha256', // sha1WithRSAEncryption
  '1.2.840.10045.4.1': 'sha256', // ecdsa-with-SHA1
  '1.2.840.10040.4.3': 'sha256', // dsa-with-sha1
  '1.3.14.3.2.26': 'sha256', // sha1 (inside RSASSA-PSS parameters)
  '1.2.840.113549.1.1.11': 'sha256',
  '1.2.840.113549.1.1.12': 'sha384',
  '1.2.840.113549.1.1.13': 'sha512',
  '1.2.840.113549.1.1.14': 'sha224',
  '1.2.840.10045.4.3.1': 'sha224',
  '1.2.840.10045.4.3.2': 'sha256',
  '1.2.840.10045.4.3.3': 'sha384',
  '1.2.840.10045.4.3.4': 'sha512',
  '2.16.840.1.101.3.4.3.2': 'sha256', // dsa-with-sha256
  '2.16.840.1.101.3.4.2.1': 'sha256',
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
  '2.16.840.1.101.3.4.2.4': 'sha224',
};
const RSASSA_PSS = '1.2.840.113549.1.1.10';

/**
 * The hash for tls-server-end-point, from Certificate.signatureAlgorithm. Returns null for
 * algorithms without a single hash (Ed25519, Ed448): RFC 5929 leaves the binding undefined there.
 */
export function endPointHashFor(certDer: Buffer): string | null {
  const cert = readDer(certDer, 0);
  if (!cert || cert.tag !== 0x30) return null;
  const tbs = readDer(certDer, cert.start);
  if (!tbs) return null;
  const sigAlg = readDer(certDer, tbs.end);
  if (!sigAlg || sigAlg.tag !== 0x30) return null;
  const oid = readDer(certDer, sigAlg.start);
  if (!oid || oid.tag !== 0x06) return null;
  const algorithm = decodeOid(certDer.subarray(oid.start, oid.end));
  if (algorithm !== RSASSA_PSS) return END_POINT_HASH[algorithm] ?? null;
  // RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] AlgorithmIdentifier DEFAULT sha1, ... }
  const params = readDer(certDer, oid.end);
  if (!params || params.tag !== 0x30 || params.end > sigAlg.end) return null;
  const first = params.start < params.end ? readDer(certDer, params.start) : null;
  if (!first || first.tag !== 0xa0) return 'sha256'; // default sha1, upgraded to SHA-256
  const hashAlg = readDer(certDer, first.start);
  const hashOid = hashAlg && hashAlg.tag === 0x30 ? readDer(certDer, hashAlg.start) : null;
  if (!hashOid || hashOid.tag !== 0x06) return null;
  return END_POINT_HASH[decodeOid(certDer.subarray(hashOid.start, hashOid.end))] ?? null;
}

/**
 * Channel-binding getters for the server side of an established TLS socket:
 * - tls-exporter (RFC 9266): TLS 1.3 only, since with TLS 1.2 it is only safe with the extended
 *   master secret, which Node does not let us confirm.
 * - tls-unique (RFC 5929 section 3): TLS <= 1.2 only (undefined for 1.3). It is the first Finished
 *   message of the latest handshake: the client's on a full handshake, ours on a resumption.
 * - tls-server-end-point (RFC 5929 section 4): hash of our own certificate.
 */
export function tlsChannelBindings(
  socket: TLSSocket,
): Partial<Record<ChannelBindingType, () => Buffer | null>> {
  return {
    'tls-exporter': () =>
      socket.getProtocol() === 'TLSv1.3'
        ? socket.exportKeyingMaterial(32, 'EXPORTER-Channel-Binding', Buffer.alloc(0))
        : null,
    'tls-unique': () => {
      const protocol = socket.getProtocol();
      if (!protocol || protocol === 'TLSv1.3') return null;
      return (socket.isSessionReused() ? socket.getFinished() : socket.getPeerFinished()) ?? null;
    },
    'tls-server-end-point': () => {
      const cert = socket.getCertificate();
      const raw = cert && 'raw' in cert ? cert.raw : undefined;
      if (!raw || raw.length === 0) return null;
      const hash = endPointHashFor(raw);
      return hash ? createHash(hash).update(raw).digest() : null;
    },
  };
}
