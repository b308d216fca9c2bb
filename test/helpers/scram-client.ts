/**
 * Client side of SCRAM (RFC 5802 / RFC 7677) and PLAIN (RFC 4616) for tests. Written directly
 * against node:crypto rather than reusing src/sasl so that it checks the server independently.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import saslprep from '@mongodb-js/saslprep';
import type { ScramHash } from '../../src/sasl/credentials.ts';
import type { ChannelBindingType } from '../../src/sasl/mechanisms.ts';

export interface ScramClientOptions {
  cbType?: ChannelBindingType;
  cbData?: Buffer;
  /** Defaults to 'p' when cbType is given, else 'n'. */
  cbFlag?: 'n' | 'y';
  clientNonce?: string;
  authzid?: string;
}

const ALG: Record<ScramHash, string> = { 'SHA-1': 'sha1', 'SHA-256': 'sha256' };
const LEN: Record<ScramHash, number> = { 'SHA-1': 20, 'SHA-256': 32 };

function escapeSaslname(value: string): string {
  return value.replace(/=/g, '=3D').replace(/,/g, '=2C');
}

export class ScramClient {
  readonly gs2Header: string;
  readonly clientFirstBare: string;
  private serverSignature: Buffer | null = null;

  constructor(
    private readonly hash: ScramHash,
    username: string,
    private readonly password: string,
    private readonly opts: ScramClientOptions = {},
  ) {
    const flag = opts.cbType ? `p=${opts.cbType}` : (opts.cbFlag ?? 'n');
    const authz = opts.authzid ? `a=${escapeSaslname(opts.authzid)}` : '';
    this.gs2Header = `${flag},${authz},`;
    const nonce = opts.clientNonce ?? randomBytes(18).toString('base64');
    this.clientFirstBare = `n=${escapeSaslname(saslprep(username))},r=${nonce}`;
  }

  first(): Buffer {
    return Buffer.from(this.gs2Header + this.clientFirstBare, 'utf8');
  }

  /**
   * `nonceOverride` sends a different r= while still signing it correctly, to check that the
   * server compares the nonce itself rather than relying on the proof to fail.
   */
  final(serverFirst: Buffer, nonceOverride?: string): Buffer {
    const text = serverFirst.toString('utf8');
    const attrs = new Map<string, string>();
    for (const part of text.split(',')) attrs.set(part.slice(0, 1), part.slice(2));
    const nonce = attrs.get('r');
    const salt = attrs.get('s');
    const iterations = Number(attrs.get('i'));
    const clientNonce = this.clientFirstBare.slice(this.clientFirstBare.indexOf(',r=') + 3);
    if (!nonce || !salt || !Number.isInteger(iterations) || !nonce.startsWith(clientNonce)) {
      throw new Error(`bad server-first-message: ${text}`);
    }
    const cbInput = Buffer.concat([
      Buffer.from(this.gs2Header, 'utf8'),
      this.opts.cbType ? (this.opts.cbData ?? Buffer.alloc(0)) : Buffer.alloc(0),
    ]);
    const withoutProof = `c=${cbInput.toString('base64')},r=${nonceOverride ?? nonce}`;
    const authMessage = `${this.clientFirstBare},${text},${withoutProof}`;

    const alg = ALG[this.hash];
    const salted = pbkdf2Sync(
      saslprep(this.password),
      Buffer.from(salt, 'base64'),
      iterations,
      LEN[this.hash],
      alg,
    );
    const clientKey = createHmac(alg, salted).update('Client Key').digest();
    const storedKey = createHash(alg).update(clientKey).digest();
    const clientSignature = createHmac(alg, storedKey).update(authMessage).digest();
    const proof = Buffer.from(clientKey.map((byte, i) => byte ^ clientSignature[i]!));
    const serverKey = createHmac(alg, salted).update('Server Key').digest();
    this.serverSignature = createHmac(alg, serverKey).update(authMessage).digest();
    return Buffer.from(`${withoutProof},p=${proof.toString('base64')}`, 'utf8');
  }

  verifyServer(successData: Buffer): boolean {
    const text = successData.toString('utf8');
    if (!this.serverSignature || !text.startsWith('v=')) return false;
    const got = Buffer.from(text.slice(2), 'base64');
    return got.length === this.serverSignature.length && timingSafeEqual(got, this.serverSignature);
  }
}

/** RFC 4616 message: [authzid] NUL authcid NUL passwd. */
export function plainMessage(authcid: string, password: string, authzid = ''): Buffer {
  return Buffer.from(`${authzid}\0${authcid}\0${password}`, 'utf8');
}
