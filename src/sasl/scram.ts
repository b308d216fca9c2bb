/**
 * Server side of SCRAM (RFC 5802) with SHA-1 and SHA-256 (RFC 7677), with and without channel
 * binding (-PLUS; RFC 5929 tls-server-end-point / tls-unique, RFC 9266 tls-exporter).
 *
 * Also holds the helpers shared with PLAIN, so that mechanisms.ts can import both mechanism files
 * without an import cycle (the mechanism files import only types from mechanisms.ts).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import {
  decodeBase64Strict,
  decodeScramKeys,
  hashLength,
  saslprep,
  SALT_BYTES,
  scramDigest,
  scramHmac,
} from './credentials.ts';
import type { DecodedScramKeys, ScramHash } from './credentials.ts';
import type {
  ChannelBindingType,
  SaslContext,
  SaslFailureCondition,
  SaslMechanism,
  SaslMechanismFactory,
  SaslStep,
} from './mechanisms.ts';

/* ------------------------------------------------------------------------------------------------ */
/* Shared helpers                                                                                    */
/* ------------------------------------------------------------------------------------------------ */

/**
 * Largest SASL message accepted, in octets after base64 decoding. Legitimate SCRAM and PLAIN
 * messages are a few hundred bytes; anything this large is an attempt to make us parse junk.
 */
export const MAX_SASL_MESSAGE_BYTES = 4096;

/** Iteration count shown to unknown users when the context does not say which one is in use. */
export const DEFAULT_SCRAM_ITERATIONS = 4096;

export const CHANNEL_BINDING_TYPES: readonly ChannelBindingType[] = [
  'tls-exporter',
  'tls-server-end-point',
  'tls-unique',
];

export function saslFailure(condition: SaslFailureCondition, text?: string): SaslStep {
  return text === undefined ? { kind: 'failure', condition } : { kind: 'failure', condition, text };
}

const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Decodes UTF-8, returning null on any invalid sequence instead of substituting U+FFFD. */
export function decodeUtf8Strict(data: Buffer): string | null {
  try {
    return utf8Decoder.decode(data);
  } catch {
    return null;
  }
}

/**
 * Without a policy from the caller only an empty authzid is accepted: RFC 6120 section 6.3.8 lets
 * the server refuse any authzid it cannot vouch for, and the lead passes a closure that knows the
 * domain (authzid == authcid@domain is then allowed).
 */
export function authzidPermitted(ctx: SaslContext, authcid: string, authzid: string): boolean {
  if (authzid === '') return true;
  return ctx.authzidAllowed ? ctx.authzidAllowed(authcid, authzid) : false;
}

/** Calls a channel-binding getter, treating a throw or an empty value as "not available". */
export function channelBindingData(ctx: SaslContext, type: ChannelBindingType): Buffer | null {
  const getter = ctx.channelBindings[type];
  if (!getter) return null;
  try {
    const data = getter();
    return data && data.length > 0 ? data : null;
  } catch {
    return null;
  }
}

/** Channel-binding types this connection can actually provide right now (XEP-0440 advertises these). */
export function availableChannelBindings(ctx: SaslContext): ChannelBindingType[] {
  if (!ctx.secure) return [];
  return CHANNEL_BINDING_TYPES.filter((type) => channelBindingData(ctx, type) !== null);
}

/**
 * Whether -PLUS mechanisms were advertised on this connection, as recorded by offeredMechanisms().
 * The downgrade check needs what was *offered*, which can be narrower than what is possible when
 * the operator disables the -PLUS mechanisms.
 */
const plusOffered = new WeakMap<SaslContext, boolean>();

export function recordPlusOffered(ctx: SaslContext, offered: boolean): void {
  plusOffered.set(ctx, offered);
}

function plusWasOffered(ctx: SaslContext): boolean {
  const recorded = plusOffered.get(ctx);
  return recorded ?? availableChannelBindings(ctx).length > 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* Fake salts for unknown users                                                                      */
/* ------------------------------------------------------------------------------------------------ */

let fakeSaltSecret = randomBytes(32);

/**
 * Sets the secret from which the fake salts of unknown users are derived. With the default random
 * per-process secret an observer could notice that a non-existent user's salt changes across
 * restarts while real users' salts do not; a persisted secret closes that gap.
 */
export function setScramFakeSaltSecret(secret: Buffer): void {
  if (secret.length < 16) throw new RangeError('fake salt secret must be at least 16 bytes');
  fakeSaltSecret = Buffer.from(secret);
}

function fakeSalt(hash: ScramHash, username: string): Buffer {
  return createHmac('sha256', fakeSaltSecret)
    .update(`scram-fake-salt\0${hash}\0${username}`, 'utf8')
    .digest()
    .subarray(0, SALT_BYTES);
}

/* ------------------------------------------------------------------------------------------------ */
/* Parsing (RFC 5802 section 7)                                                                      */
/* ------------------------------------------------------------------------------------------------ */

/** A parse error carries the SASL condition and an RFC 5802 server-error-value as text. */
class ScramError extends Error {
  constructor(
    readonly condition: SaslFailureCondition,
    readonly text: string,
  ) {
    super(text);
  }
}

function malformed(text: string): ScramError {
  return new ScramError('malformed-request', text);
}

/** Attribute names RFC 5802 defines; they may not reappear as extensions. */
const DEFINED_ATTRIBUTES = new Set(['a', 'n', 'm', 'r', 'c', 's', 'i', 'p', 'v', 'e']);

/**
 * saslname = 1*(value-safe-char / "=2C" / "=3D"). RFC 5802 section 5.1: "If the server receives a
 * username that contains '=' not followed by either '2C' or '3D', then the server MUST fail the
 * authentication."
 */
function decodeSaslname(value: string, what: string): string {
  if (value.length === 0) throw malformed(`empty ${what}`);
  let out = '';
  for (let i = 0; i < value.length; i++) {
    const ch = value[i]!;
    if (ch !== '=') {
      out += ch;
      continue;
    }
    const escape = value.slice(i + 1, i + 3);
    if (escape === '2C') out += ',';
    else if (escape === '3D') out += '=';
    else throw malformed(`invalid-encoding: bad '=' escape in ${what}`);
    i += 2;
  }
  return out;
}

/** printable = %x21-2B / %x2D-7E (any visible ASCII except ','). */
const NONCE_RE = /^[\x21-\x2b\x2d-\x7e]+$/;
const CB_NAME_RE = /^[A-Za-z0-9.-]+$/;
/** attr-val = ALPHA "=" value, value = 1*value-char (NUL and ',' are already excluded). */
const EXTENSION_RE = /^([A-Za-z])=.+$/s;

function attribute(part: string | undefined, name: string): string {
  if (part === undefined || !part.startsWith(`${name}=`)) throw malformed(`missing ${name}= attribute`);
  return part.slice(2);
}

/**
 * Optional extensions are allowed by the grammar and otherwise ignored, except the reserved "m":
 * RFC 5802 section 5.1, "its presence in a client or a server message MUST cause authentication
 * failure when the attribute is parsed by the other end."
 */
function checkExtensions(parts: string[]): void {
  for (const part of parts) {
    const match = EXTENSION_RE.exec(part);
    if (!match) throw malformed('invalid attribute');
    const name = match[1]!;
    if (name === 'm') throw malformed('extensions-not-supported');
    if (DEFINED_ATTRIBUTES.has(name)) throw malformed(`unexpected ${name}= attribute`);
  }
}

function messageText(input: Buffer): string {
  if (input.length > MAX_SASL_MESSAGE_BYTES) throw malformed('message too large');
  const text = decodeUtf8Strict(input);
  if (text === null) throw malformed('invalid-encoding: not UTF-8');
  if (text.includes('\0')) throw malformed('invalid-encoding: NUL in message');
  return text;
}

type CbFlag = { kind: 'n' } | { kind: 'y' } | { kind: 'p'; type: string };

interface ClientFirst {
  gs2Header: string;
  flag: CbFlag;
  authzid: string;
  username: string;
  clientNonce: string;
  bare: string;
}

function parseClientFirst(text: string): ClientFirst {
  const firstComma = text.indexOf(',');
  const secondComma = firstComma < 0 ? -1 : text.indexOf(',', firstComma + 1);
  if (secondComma < 0) throw malformed('invalid gs2 header');
  const flagPart = text.slice(0, firstComma);
  const authzPart = text.slice(firstComma + 1, secondComma);

  let flag: CbFlag;
  if (flagPart === 'n' || flagPart === 'y') flag = { kind: flagPart };
  else if (flagPart.startsWith('p=') && CB_NAME_RE.test(flagPart.slice(2)))
    flag = { kind: 'p', type: flagPart.slice(2) };
  else throw malformed('invalid gs2 channel-binding flag');

  let authzid = '';
  if (authzPart !== '') {
    if (!authzPart.startsWith('a=')) throw malformed('invalid gs2 header');
    authzid = decodeSaslname(authzPart.slice(2), 'authzid');
  }

  const bare = text.slice(secondComma + 1);
  const parts = bare.split(',');
  if (parts[0]?.startsWith('m=')) throw malformed('extensions-not-supported');
  const username = decodeSaslname(attribute(parts[0], 'n'), 'username');
  const clientNonce = attribute(parts[1], 'r');
  if (!NONCE_RE.test(clientNonce)) throw malformed('invalid nonce');
  checkExtensions(parts.slice(2));

  return { gs2Header: text.slice(0, secondComma + 1), flag, authzid, username, clientNonce, bare };
}

interface ClientFinal {
  channelBinding: string;
  nonce: string;
  proof: Buffer;
  withoutProof: string;
}

function parseClientFinal(text: string, proofLength: number): ClientFinal {
  const parts = text.split(',');
  if (parts.length < 3) throw malformed('missing attributes in client-final-message');
  const channelBinding = attribute(parts[0], 'c');
  const nonce = attribute(parts[1], 'r');
  const proofText = attribute(parts[parts.length - 1], 'p');
  checkExtensions(parts.slice(2, -1));
  const proof = decodeBase64Strict(proofText);
  if (!proof || proof.length !== proofLength) throw malformed('invalid proof');
  return { channelBinding, nonce, proof, withoutProof: text.slice(0, text.lastIndexOf(',')) };
}

/* ------------------------------------------------------------------------------------------------ */
/* Server state machine                                                                              */
/* ------------------------------------------------------------------------------------------------ */

interface AwaitingFinal {
  phase: 'awaiting-final';
  username: string;
  authzid: string;
  gs2Header: string;
  cbData: Buffer | null;
  nonce: string;
  authMessagePrefix: string;
  /** null for an unknown user: the exchange continues only so it looks like a real one. */
  keys: DecodedScramKeys | null;
}

type ScramState =
  { phase: 'start'; emptyChallengeSent: boolean } | AwaitingFinal | { phase: 'busy' } | { phase: 'done' };

class ScramServer implements SaslMechanism {
  private state: ScramState = { phase: 'start', emptyChallengeSent: false };

  constructor(
    readonly name: string,
    private readonly hash: ScramHash,
    private readonly plus: boolean,
    private readonly ctx: SaslContext,
  ) {}

  async step(input: Buffer | null): Promise<SaslStep> {
    const state = this.state;
    if (state.phase === 'done') return saslFailure('malformed-request', 'exchange already finished');
    if (state.phase === 'busy') {
      this.state = { phase: 'done' };
      return saslFailure('malformed-request', 'concurrent step');
    }
    if (state.phase === 'start' && input === null && !state.emptyChallengeSent) {
      // RFC 6120 section 6.4.2: without an initial response the server sends an empty challenge.
      this.state = { phase: 'start', emptyChallengeSent: true };
      return { kind: 'challenge', data: Buffer.alloc(0) };
    }
    this.state = { phase: 'busy' };
    let result: SaslStep;
    try {
      if (input === null) throw malformed('missing response');
      result =
        state.phase === 'start'
          ? await this.clientFirst(messageText(input))
          : this.clientFinal(state, messageText(input));
    } catch (err) {
      result =
        err instanceof ScramError
          ? saslFailure(err.condition, err.text)
          : saslFailure('temporary-auth-failure', 'internal error');
    }
    if (result.kind !== 'challenge') this.state = { phase: 'done' };
    return result;
  }

  private checkChannelBinding(flag: CbFlag): Buffer | null {
    if (this.plus) {
      // RFC 5802 section 6: a -PLUS mechanism is only ever used with channel binding.
      if (flag.kind !== 'p') throw malformed('channel binding required by -PLUS mechanism');
      const type = CHANNEL_BINDING_TYPES.find((t) => t === flag.type);
      const data = type && this.ctx.secure ? channelBindingData(this.ctx, type) : null;
      if (!data) throw new ScramError('not-authorized', 'unsupported-channel-binding-type');
      return data;
    }
    if (flag.kind === 'p') throw malformed('channel binding requested on a non-PLUS mechanism');
    if (flag.kind === 'y' && plusWasOffered(this.ctx)) {
      // RFC 5802 section 6: "If the flag is set to "y" and the server supports channel binding,
      // the server MUST fail authentication" -- the client saw no -PLUS offer, so it was stripped.
      throw new ScramError('not-authorized', 'server-does-support-channel-binding');
    }
    return null;
  }

  private async clientFirst(text: string): Promise<SaslStep> {
    const first = parseClientFirst(text);
    const cbData = this.checkChannelBinding(first.flag);

    let username: string;
    try {
      username = saslprep(first.username);
    } catch {
      throw new ScramError('not-authorized', 'invalid-username-encoding');
    }
    if (username === '') throw new ScramError('not-authorized', 'invalid-username-encoding');
    if (!authzidPermitted(this.ctx, username, first.authzid)) {
      throw new ScramError('invalid-authzid', 'invalid authorization identity');
    }

    const serverNonce = this.ctx.randomNonce ? this.ctx.randomNonce() : randomBytes(24).toString('base64');
    if (!NONCE_RE.test(serverNonce)) throw new Error('server nonce contains non-printable characters');
    const nonce = first.clientNonce + serverNonce;

    let creds;
    try {
      creds = await this.ctx.lookup(username);
    } catch {
      return saslFailure('temporary-auth-failure');
    }
    const keys = decodeScramKeys(this.hash, creds?.scram[this.hash]);
    // Unknown users (and users lacking a verifier for this hash) get a challenge of the same shape
    // with a salt that is stable per username, so neither its presence nor its churn reveals anything.
    const salt = keys ? keys.salt : fakeSalt(this.hash, username);
    const iterations = keys ? keys.iterations : (this.ctx.scramIterations ?? DEFAULT_SCRAM_ITERATIONS);
    const serverFirst = `r=${nonce},s=${salt.toString('base64')},i=${iterations}`;

    this.state = {
      phase: 'awaiting-final',
      username,
      authzid: first.authzid,
      gs2Header: first.gs2Header,
      cbData,
      nonce,
      authMessagePrefix: `${first.bare},${serverFirst},`,
      keys,
    };
    return { kind: 'challenge', data: Buffer.from(serverFirst, 'utf8') };
  }

  private clientFinal(state: AwaitingFinal, text: string): SaslStep {
    const final = parseClientFinal(text, hashLength(this.hash));

    // c= is base64(gs2-header [cbind-data]); it must be byte-for-byte what we expect, which also
    // proves the gs2 header (flag and authzid) was not altered in transit.
    const expectedCb = Buffer.concat([Buffer.from(state.gs2Header, 'utf8'), state.cbData ?? Buffer.alloc(0)]);
    if (final.channelBinding !== expectedCb.toString('base64')) {
      return saslFailure('not-authorized', 'channel-bindings-dont-match');
    }
    if (final.nonce !== state.nonce) return saslFailure('malformed-request', 'nonce mismatch');

    const authMessage = state.authMessagePrefix + final.withoutProof;
    // For an unknown user, verify against random keys anyway so the work done is the same.
    const storedKey = state.keys?.storedKey ?? randomBytes(hashLength(this.hash));
    const clientSignature = scramHmac(this.hash, storedKey, authMessage);
    const clientKey = Buffer.alloc(clientSignature.length);
    for (let i = 0; i < clientKey.length; i++) clientKey[i] = final.proof[i]! ^ clientSignature[i]!;
    const proofOk = timingSafeEqual(scramDigest(this.hash, clientKey), storedKey);
    if (!proofOk || state.keys === null) return saslFailure('not-authorized');

    const serverSignature = scramHmac(this.hash, state.keys.serverKey, authMessage);
    const success: SaslStep = {
      kind: 'success',
      data: Buffer.from(`v=${serverSignature.toString('base64')}`, 'utf8'),
      username: state.username,
    };
    if (state.authzid !== '') success.authzid = state.authzid;
    return success;
  }
}

function scramFactory(hash: ScramHash, plus: boolean): SaslMechanismFactory {
  const name = `SCRAM-${hash}${plus ? '-PLUS' : ''}`;
  return {
    name,
    requiresTls: plus,
    usesChannelBinding: plus,
    available: (ctx) => !plus || availableChannelBindings(ctx).length > 0,
    create: (ctx) => new ScramServer(name, hash, plus, ctx),
  };
}

export const scramSha256Plus = scramFactory('SHA-256', true);
export const scramSha1Plus = scramFactory('SHA-1', true);
export const scramSha256 = scramFactory('SHA-256', false);
export const scramSha1 = scramFactory('SHA-1', false);
