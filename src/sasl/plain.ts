/**
 * Server side of SASL PLAIN (RFC 4616). The password travels in the clear inside the stream, so
 * the factory is only offered once TLS is up (RFC 4616 section 6 and RFC 6120 section 13.8.3).
 */
import { burnPasswordWork, saslprep, verifyPasswordAsync } from './credentials.ts';
import {
  authzidPermitted,
  decodeUtf8Strict,
  DEFAULT_SCRAM_ITERATIONS,
  MAX_SASL_MESSAGE_BYTES,
  saslFailure,
} from './scram.ts';
import type { SaslContext, SaslMechanism, SaslMechanismFactory, SaslStep } from './mechanisms.ts';

type PlainState = 'start' | 'empty-challenge-sent' | 'busy' | 'done';

function prepare(value: string): string | null {
  try {
    return saslprep(value);
  } catch {
    return null;
  }
}

class PlainServer implements SaslMechanism {
  readonly name = 'PLAIN';
  private state: PlainState = 'start';

  constructor(private readonly ctx: SaslContext) {}

  async step(input: Buffer | null): Promise<SaslStep> {
    if (this.state === 'done') return saslFailure('malformed-request', 'exchange already finished');
    if (this.state === 'busy') {
      this.state = 'done';
      return saslFailure('malformed-request', 'concurrent step');
    }
    if (input === null && this.state === 'start') {
      // RFC 6120 section 6.4.2: without an initial response the server sends an empty challenge.
      this.state = 'empty-challenge-sent';
      return { kind: 'challenge', data: Buffer.alloc(0) };
    }
    this.state = 'busy';
    try {
      return input === null ? saslFailure('malformed-request', 'missing response') : await this.verify(input);
    } catch {
      return saslFailure('temporary-auth-failure', 'internal error');
    } finally {
      this.state = 'done';
    }
  }

  private async verify(input: Buffer): Promise<SaslStep> {
    if (input.length > MAX_SASL_MESSAGE_BYTES) return saslFailure('malformed-request', 'message too large');
    const text = decodeUtf8Strict(input);
    if (text === null) return saslFailure('malformed-request', 'not UTF-8');
    // message = [authzid] UTF8NUL authcid UTF8NUL passwd: exactly two NULs, and authcid and
    // passwd are 1*SAFE, i.e. non-empty.
    const parts = text.split('\0');
    if (parts.length !== 3)
      return saslFailure('malformed-request', 'expected authzid NUL authcid NUL passwd');
    const [rawAuthzid, rawAuthcid, rawPassword] = parts as [string, string, string];
    if (rawAuthcid === '' || rawPassword === '')
      return saslFailure('malformed-request', 'empty authcid or password');

    // RFC 4616 section 2: the server prepares authcid and passwd with SASLprep (query profile).
    const authcid = prepare(rawAuthcid);
    const password = prepare(rawPassword);
    if (authcid === null || authcid === '' || password === null || password === '') {
      return saslFailure('not-authorized');
    }
    if (!authzidPermitted(this.ctx, authcid, rawAuthzid)) {
      return saslFailure('invalid-authzid', 'invalid authorization identity');
    }

    let creds;
    try {
      creds = await this.ctx.lookup(authcid);
    } catch {
      return saslFailure('temporary-auth-failure');
    }
    if (!creds) {
      // Spend the PBKDF2 time a real check would take so response latency does not reveal
      // whether the account exists.
      await burnPasswordWork('SHA-256', password, this.ctx.scramIterations ?? DEFAULT_SCRAM_ITERATIONS);
      return saslFailure('not-authorized');
    }
    if (!(await verifyPasswordAsync(creds, password))) return saslFailure('not-authorized');
    const success: SaslStep = { kind: 'success', data: null, username: authcid };
    if (rawAuthzid !== '') success.authzid = rawAuthzid;
    return success;
  }
}

export const plain: SaslMechanismFactory = {
  name: 'PLAIN',
  requiresTls: true,
  usesChannelBinding: false,
  available: (ctx) => ctx.secure,
  create: (ctx) => new PlainServer(ctx),
};
