// Client side of SCRAM-SHA-1 / SCRAM-SHA-256 (RFC 5802, RFC 7677) for the
// load generator. Salted passwords are cached per (hash, salt, iterations,
// password) so repeated logins of the same account cost the generator only a
// few HMACs; the first login pays PBKDF2 once, on the libuv thread pool.
import { createHash, createHmac, pbkdf2, randomBytes, timingSafeEqual } from 'node:crypto';

export type ScramHash = 'sha1' | 'sha256';

const saltedCache = new Map<string, Buffer>();

function saltedPassword(
  hash: ScramHash,
  password: string,
  salt: Buffer,
  iterations: number,
): Promise<Buffer> {
  const key = `${hash}\u0000${salt.toString('base64')}\u0000${iterations}\u0000${password}`;
  const hit = saltedCache.get(key);
  if (hit) return Promise.resolve(hit);
  const len = hash === 'sha1' ? 20 : 32;
  return new Promise((resolve, reject) => {
    pbkdf2(password, salt, iterations, len, hash, (err, derived) => {
      if (err) return reject(err);
      saltedCache.set(key, derived);
      resolve(derived);
    });
  });
}

function hmac(hash: ScramHash, key: Buffer, data: string): Buffer {
  return createHmac(hash, key).update(data).digest();
}

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.allocUnsafe(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!;
  return out;
}

/** Usernames used by the benchmark are plain ASCII; still escape ',' and '=' as the RFC asks. */
function saslName(name: string): string {
  return name.replace(/=/g, '=3D').replace(/,/g, '=2C');
}

export class ScramClient {
  private readonly nonce = randomBytes(18).toString('base64');
  private readonly clientFirstBare: string;
  private serverSignature: Buffer | null = null;

  constructor(
    private readonly hash: ScramHash,
    username: string,
    private readonly password: string,
  ) {
    this.clientFirstBare = `n=${saslName(username)},r=${this.nonce}`;
  }

  /** Base64 of the client-first message (no channel binding). */
  first(): string {
    return Buffer.from(`n,,${this.clientFirstBare}`).toString('base64');
  }

  /** Takes the base64 server-first message, returns the base64 client-final message. */
  async final(challengeB64: string): Promise<string> {
    const serverFirst = Buffer.from(challengeB64, 'base64').toString();
    const attrs = new Map<string, string>();
    for (const part of serverFirst.split(',')) attrs.set(part.slice(0, 1), part.slice(2));
    const r = attrs.get('r');
    const s = attrs.get('s');
    const i = Number(attrs.get('i'));
    if (!r || !s || !Number.isInteger(i) || !r.startsWith(this.nonce)) {
      throw new Error(`bad SCRAM server-first message: ${serverFirst}`);
    }
    const salted = await saltedPassword(this.hash, this.password, Buffer.from(s, 'base64'), i);
    const clientFinalNoProof = `c=biws,r=${r}`;
    const authMessage = `${this.clientFirstBare},${serverFirst},${clientFinalNoProof}`;
    const clientKey = hmac(this.hash, salted, 'Client Key');
    const storedKey = createHash(this.hash).update(clientKey).digest();
    const proof = xor(clientKey, hmac(this.hash, storedKey, authMessage));
    this.serverSignature = hmac(this.hash, hmac(this.hash, salted, 'Server Key'), authMessage);
    return Buffer.from(`${clientFinalNoProof},p=${proof.toString('base64')}`).toString('base64');
  }

  /** Checks the server's v= verifier (base64 of the server-final message). */
  verify(successB64: string): boolean {
    if (!this.serverSignature) return false;
    const text = Buffer.from(successB64, 'base64').toString();
    if (!text.startsWith('v=')) return false;
    const v = Buffer.from(text.slice(2), 'base64');
    return v.length === this.serverSignature.length && timingSafeEqual(v, this.serverSignature);
  }
}
