/**
 * Password credentials for SASL (RFC 5802 SCRAM, RFC 7677 SCRAM-SHA-256).
 *
 * Only the SCRAM verifier (salt, iteration count, StoredKey, ServerKey) is ever persisted: from it
 * the server can check both a SCRAM proof and a PLAIN password, but it cannot recover the password
 * nor impersonate the user to another server (StoredKey = H(ClientKey) is one-way).
 */
import { createHash, createHmac, pbkdf2, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import saslprepLib from '@mongodb-js/saslprep';

export type ScramHash = 'SHA-1' | 'SHA-256';

export interface ScramKeys {
  /** base64 */
  salt: string;
  iterations: number;
  /** base64 of H(HMAC(SaltedPassword, "Client Key")) */
  storedKey: string;
  /** base64 of HMAC(SaltedPassword, "Server Key") */
  serverKey: string;
}

export interface StoredCredentials {
  scram: Partial<Record<ScramHash, ScramKeys>>;
}

/** Strongest first; also the default set of verifiers derived for a new password. */
export const SCRAM_HASHES: readonly ScramHash[] = ['SHA-256', 'SHA-1'];

/** Salt length for new verifiers; RFC 5802 only asks for a random salt, 16 bytes is 128 bits. */
export const SALT_BYTES = 16;

/**
 * Upper bound accepted for a stored iteration count. A corrupted or hostile database row with a
 * huge count would otherwise let one PLAIN attempt pin a CPU for minutes.
 */
export const MAX_ITERATIONS = 10_000_000;

const NODE_ALGORITHM: Record<ScramHash, 'sha1' | 'sha256'> = { 'SHA-1': 'sha1', 'SHA-256': 'sha256' };
const HASH_LENGTH: Record<ScramHash, number> = { 'SHA-1': 20, 'SHA-256': 32 };

export function hashLength(hash: ScramHash): number {
  return HASH_LENGTH[hash];
}

export function scramHmac(hash: ScramHash, key: Buffer, data: Buffer | string): Buffer {
  return createHmac(NODE_ALGORITHM[hash], key).update(data).digest();
}

export function scramDigest(hash: ScramHash, data: Buffer): Buffer {
  return createHash(NODE_ALGORITHM[hash]).update(data).digest();
}

/**
 * RFC 4013 SASLprep. `stored` selects the "stored strings" profile (unassigned code points are
 * prohibited, RFC 3454 section 7), which is what a password being set must satisfy; otherwise the
 * "query" profile is used (AllowUnassigned), as RFC 5802 section 5.1 asks for the username and for
 * a password being checked. Throws on prohibited characters or bidi violations.
 */
export function saslprep(input: string, opts: { stored?: boolean } = {}): string {
  return saslprepLib(input, { allowUnassigned: opts.stored !== true });
}

/** Hi() of RFC 5802 section 2.2 is PBKDF2 with HMAC-H and a dkLen equal to the hash length. */
function saltedPassword(hash: ScramHash, preparedPassword: string, salt: Buffer, iterations: number): Buffer {
  return pbkdf2Sync(
    Buffer.from(preparedPassword, 'utf8'),
    salt,
    iterations,
    HASH_LENGTH[hash],
    NODE_ALGORITHM[hash],
  );
}

function saltedPasswordAsync(
  hash: ScramHash,
  preparedPassword: string,
  salt: Buffer,
  iterations: number,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    pbkdf2(
      Buffer.from(preparedPassword, 'utf8'),
      salt,
      iterations,
      HASH_LENGTH[hash],
      NODE_ALGORITHM[hash],
      (err, key) => (err ? reject(err) : resolve(key)),
    );
  });
}

function keysFromSalted(hash: ScramHash, salted: Buffer): { storedKey: Buffer; serverKey: Buffer } {
  const clientKey = scramHmac(hash, salted, 'Client Key');
  return {
    storedKey: scramDigest(hash, clientKey),
    serverKey: scramHmac(hash, salted, 'Server Key'),
  };
}

function checkIterations(iterations: number): void {
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > MAX_ITERATIONS) {
    throw new RangeError(`SCRAM iteration count must be an integer in 1..${MAX_ITERATIONS}`);
  }
}

function preparePasswordForStorage(password: string): string {
  let prepared: string;
  try {
    prepared = saslprep(password, { stored: true });
  } catch (err) {
    throw new Error(`password rejected by SASLprep: ${(err as Error).message}`, { cause: err });
  }
  if (prepared.length === 0) throw new Error('password is empty after SASLprep');
  return prepared;
}

/**
 * Derives one SCRAM verifier. `salt` is only for reproducing published test vectors and for
 * importing; leave it out so a fresh random salt is drawn.
 */
export function deriveScramKeys(
  password: string,
  hash: ScramHash,
  iterations: number,
  salt?: Buffer,
): ScramKeys {
  checkIterations(iterations);
  const prepared = preparePasswordForStorage(password);
  const saltBytes = salt ?? randomBytes(SALT_BYTES);
  if (saltBytes.length === 0) throw new RangeError('SCRAM salt must not be empty');
  const { storedKey, serverKey } = keysFromSalted(
    hash,
    saltedPassword(hash, prepared, saltBytes, iterations),
  );
  return {
    salt: saltBytes.toString('base64'),
    iterations,
    storedKey: storedKey.toString('base64'),
    serverKey: serverKey.toString('base64'),
  };
}

/**
 * Builds the verifiers to persist for a new password. Each hash gets its own salt so the two
 * verifiers cannot be correlated. Throws if the password is not acceptable under SASLprep
 * (stored-string profile) or is empty once prepared; the password itself is not retained.
 */
export function deriveCredentials(
  password: string,
  iterations: number,
  hashes: ScramHash[] = [...SCRAM_HASHES],
): StoredCredentials {
  if (hashes.length === 0) throw new RangeError('at least one SCRAM hash is required');
  const scram: Partial<Record<ScramHash, ScramKeys>> = {};
  for (const hash of hashes) scram[hash] = deriveScramKeys(password, hash, iterations);
  return { scram };
}

/**
 * deriveCredentials without blocking the event loop: PBKDF2 at 4096+
 * iterations takes milliseconds per hash, during which no other client would
 * be served. Account creation and password changes in the server use this.
 */
export async function deriveCredentialsAsync(
  password: string,
  iterations: number,
  hashes: ScramHash[] = [...SCRAM_HASHES],
): Promise<StoredCredentials> {
  if (hashes.length === 0) throw new RangeError('at least one SCRAM hash is required');
  checkIterations(iterations);
  const prepared = preparePasswordForStorage(password);
  const scram: Partial<Record<ScramHash, ScramKeys>> = {};
  await Promise.all(
    hashes.map(async (hash) => {
      const salt = randomBytes(SALT_BYTES);
      const { storedKey, serverKey } = keysFromSalted(
        hash,
        await saltedPasswordAsync(hash, prepared, salt, iterations),
      );
      scram[hash] = {
        salt: salt.toString('base64'),
        iterations,
        storedKey: storedKey.toString('base64'),
        serverKey: serverKey.toString('base64'),
      };
    }),
  );
  return { scram };
}

/** Decoded, validated form of a stored verifier; null when the stored data is unusable. */
export interface DecodedScramKeys {
  salt: Buffer;
  iterations: number;
  storedKey: Buffer;
  serverKey: Buffer;
}

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict base64 (RFC 4648 section 4, padded, no whitespace); null when not canonical-looking. */
export function decodeBase64Strict(text: string): Buffer | null {
  if (!BASE64_RE.test(text)) return null;
  return Buffer.from(text, 'base64');
}

export function decodeScramKeys(hash: ScramHash, keys: ScramKeys | undefined): DecodedScramKeys | null {
  if (!keys) return null;
  const salt = decodeBase64Strict(keys.salt);
  const storedKey = decodeBase64Strict(keys.storedKey);
  const serverKey = decodeBase64Strict(keys.serverKey);
  if (!salt || salt.length === 0) return null;
  if (!storedKey || storedKey.length !== HASH_LENGTH[hash]) return null;
  if (!serverKey || serverKey.length !== HASH_LENGTH[hash]) return null;
  if (!Number.isInteger(keys.iterations) || keys.iterations < 1 || keys.iterations > MAX_ITERATIONS)
    return null;
  return { salt, iterations: keys.iterations, storedKey, serverKey };
}

/** Prefers the strongest hash; both verifiers come from the same password so one check suffices. */
function pickVerifier(creds: StoredCredentials): { hash: ScramHash; keys: DecodedScramKeys } | null {
  for (const hash of SCRAM_HASHES) {
    const keys = decodeScramKeys(hash, creds.scram[hash]);
    if (keys) return { hash, keys };
  }
  return null;
}

function preparePasswordForQuery(password: string): string | null {
  try {
    const prepared = saslprep(password);
    return prepared.length === 0 ? null : prepared;
  } catch {
    return null;
  }
}

/**
 * Checks a cleartext password (SASL PLAIN, or a password change that requires the old one) against
 * the stored verifier, recomputing StoredKey with the stored salt and iteration count and comparing
 * in constant time.
 */
export function verifyPassword(creds: StoredCredentials, password: string): boolean {
  const picked = pickVerifier(creds);
  const prepared = preparePasswordForQuery(password);
  if (!picked || prepared === null) return false;
  const { hash, keys } = picked;
  const { storedKey } = keysFromSalted(hash, saltedPassword(hash, prepared, keys.salt, keys.iterations));
  return timingSafeEqual(storedKey, keys.storedKey);
}

/** Same as verifyPassword but runs PBKDF2 on the libuv pool so the event loop is not blocked. */
export async function verifyPasswordAsync(creds: StoredCredentials, password: string): Promise<boolean> {
  const picked = pickVerifier(creds);
  const prepared = preparePasswordForQuery(password);
  if (!picked || prepared === null) return false;
  const { hash, keys } = picked;
  const salted = await saltedPasswordAsync(hash, prepared, keys.salt, keys.iterations);
  return timingSafeEqual(keysFromSalted(hash, salted).storedKey, keys.storedKey);
}

/**
 * Spends the same PBKDF2 work a real check would, for callers that must not reveal through timing
 * that an account does not exist (PLAIN with an unknown username).
 */
export async function burnPasswordWork(hash: ScramHash, password: string, iterations: number): Promise<void> {
  checkIterations(iterations);
  await saltedPasswordAsync(hash, password, randomBytes(SALT_BYTES), iterations);
}
