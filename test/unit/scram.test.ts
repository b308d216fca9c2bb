import { createHash, generateKeyPairSync } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import type { TLSSocket } from 'node:tls';
import { expect } from 'chai';
import fc from 'fast-check';
import forge from 'node-forge';
import {
  deriveCredentials,
  deriveScramKeys,
  verifyPassword,
  verifyPasswordAsync,
} from '../../src/sasl/credentials.ts';
import type { ScramHash, StoredCredentials } from '../../src/sasl/credentials.ts';
import {
  endPointHashFor,
  mechanisms,
  offeredMechanisms,
  selectMechanism,
  tlsChannelBindings,
} from '../../src/sasl/mechanisms.ts';
import type {
  ChannelBindingType,
  SaslContext,
  SaslMechanism,
  SaslMechanismFactory,
  SaslStep,
} from '../../src/sasl/mechanisms.ts';
import { plainMessage, ScramClient } from '../helpers/scram-client.ts';

const ITER = 4096;

function factory(name: string): SaslMechanismFactory {
  const found = mechanisms.find((m) => m.name === name);
  if (!found) throw new Error(`no mechanism ${name}`);
  return found;
}

function makeCtx(
  users: Record<string, StoredCredentials>,
  extra: Partial<SaslContext> = {},
): SaslContext & {
  lookups: string[];
} {
  const lookups: string[] = [];
  return {
    lookups,
    secure: true,
    channelBindings: {},
    lookup: async (username: string) => {
      lookups.push(username);
      return users[username] ?? null;
    },
    ...extra,
  };
}

function challengeData(step: SaslStep): Buffer {
  if (step.kind !== 'challenge') throw new Error(`expected challenge, got ${JSON.stringify(step)}`);
  return step.data;
}

function expectFailure(step: SaslStep, condition?: string): void {
  expect(step.kind, JSON.stringify(step)).to.equal('failure');
  if (condition && step.kind === 'failure') expect(step.condition).to.equal(condition);
}

/** Runs a full exchange; returns the final step and whether the client accepted the server. */
async function exchange(
  mech: SaslMechanism,
  client: ScramClient,
): Promise<{ result: SaslStep; serverVerified: boolean }> {
  const serverFirst = challengeData(await mech.step(client.first()));
  const result = await mech.step(client.final(serverFirst));
  const serverVerified =
    result.kind === 'success' && result.data !== null && client.verifyServer(result.data);
  return { result, serverVerified };
}

// Derive once: PBKDF2 at 4096 iterations is cheap but adds up over many tests.
const pencil = deriveCredentials('pencil', ITER);
const cbBuffers: Record<ChannelBindingType, Buffer> = {
  'tls-exporter': Buffer.alloc(32, 0xa1),
  'tls-server-end-point': Buffer.alloc(32, 0xb2),
  'tls-unique': Buffer.alloc(12, 0xc3),
};
const allBindings = {
  'tls-exporter': () => cbBuffers['tls-exporter'],
  'tls-server-end-point': () => cbBuffers['tls-server-end-point'],
  'tls-unique': () => cbBuffers['tls-unique'],
};

describe('sasl credentials', () => {
  it('derives SHA-1 and SHA-256 verifiers with distinct random salts and no password', () => {
    const creds = deriveCredentials('correct horse battery staple', ITER);
    expect(Object.keys(creds.scram).sort()).to.deep.equal(['SHA-1', 'SHA-256']);
    const json = JSON.stringify(creds);
    expect(json).to.not.include('correct horse');
    expect(json).to.not.include(Buffer.from('correct horse battery staple').toString('base64'));
    expect(json).to.not.include(Buffer.from('correct horse battery staple').toString('hex'));
    const sha1 = creds.scram['SHA-1']!;
    const sha256 = creds.scram['SHA-256']!;
    expect(sha1.salt).to.not.equal(sha256.salt);
    expect(Buffer.from(sha1.salt, 'base64').length).to.be.at.least(16);
    expect(Buffer.from(sha256.salt, 'base64').length).to.be.at.least(16);
    expect(sha1.iterations).to.equal(ITER);
    expect(Buffer.from(sha1.storedKey, 'base64')).to.have.length(20);
    expect(Buffer.from(sha256.serverKey, 'base64')).to.have.length(32);
    const again = deriveCredentials('correct horse battery staple', ITER);
    expect(again.scram['SHA-256']!.salt).to.not.equal(sha256.salt);
  });

  it('honours the hashes argument', () => {
    const creds = deriveCredentials('pw', ITER, ['SHA-256']);
    expect(Object.keys(creds.scram)).to.deep.equal(['SHA-256']);
  });

  it('verifyPassword accepts the right password and rejects others', async () => {
    expect(verifyPassword(pencil, 'pencil')).to.equal(true);
    expect(verifyPassword(pencil, 'Pencil')).to.equal(false);
    expect(verifyPassword(pencil, '')).to.equal(false);
    expect(verifyPassword({ scram: {} }, 'pencil')).to.equal(false);
    expect(await verifyPasswordAsync(pencil, 'pencil')).to.equal(true);
    expect(await verifyPasswordAsync(pencil, 'pen')).to.equal(false);
    const sha1Only = deriveCredentials('pencil', ITER, ['SHA-1']);
    expect(verifyPassword(sha1Only, 'pencil')).to.equal(true);
    expect(verifyPassword(sha1Only, 'crayon')).to.equal(false);
  });

  it('verifyPassword treats corrupted stored data as a mismatch', () => {
    const keys = pencil.scram['SHA-256']!;
    expect(
      verifyPassword({ scram: { 'SHA-256': { ...keys, storedKey: 'not base64!' } } }, 'pencil'),
    ).to.equal(false);
    expect(verifyPassword({ scram: { 'SHA-256': { ...keys, iterations: 0 } } }, 'pencil')).to.equal(false);
    expect(verifyPassword({ scram: { 'SHA-256': { ...keys, salt: '' } } }, 'pencil')).to.equal(false);
  });

  it('applies SASLprep to passwords (RFC 4013)', () => {
    // U+00AD SOFT HYPHEN is mapped to nothing, U+2168 ROMAN NUMERAL NINE is NFKC-normalised to "IX",
    // and U+00A0 NO-BREAK SPACE is mapped to SPACE.
    const softHyphen = deriveCredentials('pen\u00ADcil', ITER);
    expect(verifyPassword(softHyphen, 'pencil')).to.equal(true);
    expect(verifyPassword(pencil, 'pen\u00ADcil')).to.equal(true);
    expect(verifyPassword(deriveCredentials('\u2168', ITER), 'IX')).to.equal(true);
    expect(verifyPassword(deriveCredentials('a\u00A0b', ITER), 'a b')).to.equal(true);
  });

  it('rejects passwords SASLprep prohibits or that prepare to nothing', () => {
    expect(() => deriveCredentials('bell\u0007', ITER)).to.throw(/SASLprep/);
    // The library throws a TypeError for input that maps to nothing; either way it is refused.
    expect(() => deriveCredentials('\u00AD', ITER)).to.throw(/SASLprep|empty/);
    expect(() => deriveCredentials('pencil', 0)).to.throw(RangeError);
    expect(verifyPassword(pencil, 'bell\u0007')).to.equal(false);
  });
});

describe('SCRAM test vectors', () => {
  it('reproduces RFC 5802 section 5 (SCRAM-SHA-1)', async () => {
    const creds = {
      scram: { 'SHA-1': deriveScramKeys('pencil', 'SHA-1', 4096, Buffer.from('QSXCR+Q6sek8bf92', 'base64')) },
    };
    const ctx = makeCtx({ user: creds }, { secure: false, randomNonce: () => '3rfcNHYJY1ZVvWVs7j' });
    const mech = factory('SCRAM-SHA-1').create(ctx);
    const client = new ScramClient('SHA-1', 'user', 'pencil', { clientNonce: 'fyko+d2lbbFgONRv9qkxdawL' });

    expect(client.first().toString()).to.equal('n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL');
    const serverFirst = challengeData(await mech.step(client.first()));
    expect(serverFirst.toString()).to.equal(
      'r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096',
    );
    const clientFinal = client.final(serverFirst);
    expect(clientFinal.toString()).to.equal(
      'c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=',
    );
    const result = await mech.step(clientFinal);
    expect(result).to.deep.equal({
      kind: 'success',
      data: Buffer.from('v=rmF9pqV8S7suAoZWja4dJRkFsKQ='),
      username: 'user',
    });
    expect(client.verifyServer(Buffer.from('v=rmF9pqV8S7suAoZWja4dJRkFsKQ='))).to.equal(true);
    expect(ctx.lookups).to.deep.equal(['user']);
  });

  it('reproduces RFC 7677 section 3 (SCRAM-SHA-256)', async () => {
    const salt = Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64');
    const creds = { scram: { 'SHA-256': deriveScramKeys('pencil', 'SHA-256', 4096, salt) } };
    const ctx = makeCtx({ user: creds }, { randomNonce: () => '%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0' });
    const mech = factory('SCRAM-SHA-256').create(ctx);
    const client = new ScramClient('SHA-256', 'user', 'pencil', { clientNonce: 'rOprNGfwEbeRWgbNEkqO' });

    const serverFirst = challengeData(await mech.step(client.first()));
    expect(serverFirst.toString()).to.equal(
      'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096',
    );
    const clientFinal = client.final(serverFirst);
    expect(clientFinal.toString()).to.equal(
      'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
    );
    const result = await mech.step(clientFinal);
    expect(result.kind).to.equal('success');
    if (result.kind !== 'success') return;
    expect(result.data?.toString()).to.equal('v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=');
  });
});

describe('SCRAM exchanges', () => {
  const hashes: ScramHash[] = ['SHA-1', 'SHA-256'];

  for (const hash of hashes) {
    it(`SCRAM-${hash} succeeds without channel binding ('n' flag)`, async () => {
      const ctx = makeCtx({ juliet: pencil });
      const { result, serverVerified } = await exchange(
        factory(`SCRAM-${hash}`).create(ctx),
        new ScramClient(hash, 'juliet', 'pencil'),
      );
      expect(result.kind).to.equal('success');
      expect(serverVerified).to.equal(true);
      if (result.kind === 'success') expect(result.username).to.equal('juliet');
    });

    it(`SCRAM-${hash} accepts 'y' when the server offers no channel binding`, async () => {
      const ctx = makeCtx({ juliet: pencil });
      const { result, serverVerified } = await exchange(
        factory(`SCRAM-${hash}`).create(ctx),
        new ScramClient(hash, 'juliet', 'pencil', { cbFlag: 'y' }),
      );
      expect(result.kind).to.equal('success');
      expect(serverVerified).to.equal(true);
    });

    for (const cbType of Object.keys(cbBuffers) as ChannelBindingType[]) {
      it(`SCRAM-${hash}-PLUS succeeds with ${cbType}`, async () => {
        const ctx = makeCtx({ juliet: pencil }, { channelBindings: allBindings });
        const { result, serverVerified } = await exchange(
          factory(`SCRAM-${hash}-PLUS`).create(ctx),
          new ScramClient(hash, 'juliet', 'pencil', { cbType, cbData: cbBuffers[cbType] }),
        );
        expect(result.kind, JSON.stringify(result)).to.equal('success');
        expect(serverVerified).to.equal(true);
      });
    }

    it(`SCRAM-${hash}-PLUS fails when the channel-binding data differ`, async () => {
      const ctx = makeCtx({ juliet: pencil }, { channelBindings: allBindings });
      const { result } = await exchange(
        factory(`SCRAM-${hash}-PLUS`).create(ctx),
        new ScramClient(hash, 'juliet', 'pencil', { cbType: 'tls-exporter', cbData: Buffer.alloc(32, 0xee) }),
      );
      expectFailure(result, 'not-authorized');
    });

    it(`SCRAM-${hash} with a wrong password fails with not-authorized`, async () => {
      const ctx = makeCtx({ juliet: pencil });
      const { result, serverVerified } = await exchange(
        factory(`SCRAM-${hash}`).create(ctx),
        new ScramClient(hash, 'juliet', 'crayon'),
      );
      expectFailure(result, 'not-authorized');
      expect(serverVerified).to.equal(false);
    });
  }

  it('hides whether a user exists at the challenge stage', async () => {
    const ctx = makeCtx({ juliet: pencil }, { scramIterations: ITER });
    const shape = /^r=([\x21-\x2b\x2d-\x7e]+),s=([A-Za-z0-9+/]+=*),i=(\d+)$/;
    const challenge = async (user: string) =>
      challengeData(
        await factory('SCRAM-SHA-256')
          .create(ctx)
          .step(new ScramClient('SHA-256', user, 'x').first()),
      ).toString();

    const real = shape.exec(await challenge('juliet'));
    const ghost1 = shape.exec(await challenge('romeo'));
    const ghost2 = shape.exec(await challenge('romeo'));
    const other = shape.exec(await challenge('mercutio'));
    expect(real && ghost1 && ghost2 && other).to.not.equal(null);
    // Same shape: nonce length, salt length, iteration count.
    expect(ghost1![1]!.length).to.equal(real![1]!.length);
    expect(ghost1![2]!.length).to.equal(real![2]!.length);
    expect(ghost1![3]).to.equal(real![3]);
    // Stable salt for a given unknown user, different across users, nonces always fresh.
    expect(ghost2![2]).to.equal(ghost1![2]);
    expect(other![2]).to.not.equal(ghost1![2]);
    expect(ghost2![1]).to.not.equal(ghost1![1]);
  });

  it('fails an unknown user exactly like a wrong password', async () => {
    const ctx = makeCtx({ juliet: pencil });
    const wrong = await exchange(
      factory('SCRAM-SHA-256').create(ctx),
      new ScramClient('SHA-256', 'juliet', 'x'),
    );
    const ghost = await exchange(
      factory('SCRAM-SHA-256').create(ctx),
      new ScramClient('SHA-256', 'romeo', 'pencil'),
    );
    expectFailure(ghost.result, 'not-authorized');
    expect(ghost.result).to.deep.equal(wrong.result);
  });

  it('fails like an unknown user when the account lacks a verifier for the hash', async () => {
    const sha256Only = deriveCredentials('pencil', ITER, ['SHA-256']);
    const ctx = makeCtx({ juliet: sha256Only });
    const { result } = await exchange(
      factory('SCRAM-SHA-1').create(ctx),
      new ScramClient('SHA-1', 'juliet', 'pencil'),
    );
    expectFailure(result, 'not-authorized');
  });

  it("treats 'y' as a downgrade when -PLUS was offered (RFC 5802 section 6)", async () => {
    const ctx = makeCtx({ juliet: pencil }, { channelBindings: allBindings });
    const step = await factory('SCRAM-SHA-256')
      .create(ctx)
      .step(new ScramClient('SHA-256', 'juliet', 'pencil', { cbFlag: 'y' }).first());
    expectFailure(step, 'not-authorized');
  });

  it("accepts 'y' when the operator did not offer -PLUS even though bindings exist", async () => {
    const ctx = makeCtx({ juliet: pencil }, { channelBindings: allBindings });
    const offered = offeredMechanisms(ctx, ['SCRAM-SHA-256', 'PLAIN']).map((m) => m.name);
    expect(offered).to.deep.equal(['SCRAM-SHA-256', 'PLAIN']);
    const { result } = await exchange(
      selectMechanism(ctx, 'SCRAM-SHA-256', ['SCRAM-SHA-256', 'PLAIN'])!,
      new ScramClient('SHA-256', 'juliet', 'pencil', { cbFlag: 'y' }),
    );
    expect(result.kind).to.equal('success');
  });

  it("rejects 'y' once offeredMechanisms advertised -PLUS", async () => {
    const ctx = makeCtx({ juliet: pencil }, { channelBindings: allBindings });
    offeredMechanisms(ctx);
    const step = await factory('SCRAM-SHA-1')
      .create(ctx)
      .step(new ScramClient('SHA-1', 'juliet', 'pencil', { cbFlag: 'y' }).first());
    expectFailure(step, 'not-authorized');
  });

  it('rejects channel-binding flag misuse', async () => {
    const ctx = makeCtx(
      { juliet: pencil },
      { channelBindings: { 'tls-exporter': allBindings['tls-exporter'] } },
    );
    const first = (opts: ConstructorParameters<typeof ScramClient>[3]) =>
      new ScramClient('SHA-256', 'juliet', 'pencil', opts).first();
    // p= on a non-PLUS mechanism
    expectFailure(
      await factory('SCRAM-SHA-256')
        .create(ctx)
        .step(first({ cbType: 'tls-exporter' })),
      'malformed-request',
    );
    // n and y on a -PLUS mechanism
    expectFailure(await factory('SCRAM-SHA-256-PLUS').create(ctx).step(first({})), 'malformed-request');
    expectFailure(
      await factory('SCRAM-SHA-256-PLUS')
        .create(ctx)
        .step(first({ cbFlag: 'y' })),
      'malformed-request',
    );
    // a type this connection cannot provide, and one that does not exist
    expectFailure(
      await factory('SCRAM-SHA-256-PLUS')
        .create(ctx)
        .step(first({ cbType: 'tls-unique' })),
      'not-authorized',
    );
    expectFailure(
      await factory('SCRAM-SHA-256-PLUS').create(ctx).step(Buffer.from('p=tls-bogus,,n=juliet,r=abc')),
      'not-authorized',
    );
    // a getter that yields nothing counts as unavailable
    const nullCtx = makeCtx({ juliet: pencil }, { channelBindings: { 'tls-exporter': () => null } });
    expectFailure(
      await factory('SCRAM-SHA-256-PLUS')
        .create(nullCtx)
        .step(first({ cbType: 'tls-exporter' })),
      'not-authorized',
    );
  });

  it('rejects a c= that does not repeat the gs2 header', async () => {
    const ctx = makeCtx({ juliet: pencil });
    const mech = factory('SCRAM-SHA-256').create(ctx);
    const client = new ScramClient('SHA-256', 'juliet', 'pencil');
    const serverFirst = challengeData(await mech.step(client.first()));
    // "eSws" is base64("y,,"): the client claims a different flag than it sent.
    const tampered = client.final(serverFirst).toString().replace('c=biws', 'c=eSws');
    expectFailure(await mech.step(Buffer.from(tampered)), 'not-authorized');
  });

  it('sends an empty challenge when there is no initial response', async () => {
    const ctx = makeCtx({ juliet: pencil });
    const mech = factory('SCRAM-SHA-256').create(ctx);
    expect(await mech.step(null)).to.deep.equal({ kind: 'challenge', data: Buffer.alloc(0) });
    const { result } = await exchange(mech, new ScramClient('SHA-256', 'juliet', 'pencil'));
    expect(result.kind).to.equal('success');
    const twice = factory('SCRAM-SHA-256').create(ctx);
    await twice.step(null);
    expectFailure(await twice.step(null), 'malformed-request');
  });

  it('fails any step after completion', async () => {
    const ctx = makeCtx({ juliet: pencil });
    const mech = factory('SCRAM-SHA-256').create(ctx);
    const client = new ScramClient('SHA-256', 'juliet', 'pencil');
    const serverFirst = challengeData(await mech.step(client.first()));
    const final = client.final(serverFirst);
    expect((await mech.step(final)).kind).to.equal('success');
    expectFailure(await mech.step(final));
    expectFailure(await mech.step(null));
    expectFailure(await mech.step(client.first()));

    const failed = factory('SCRAM-SHA-256').create(ctx);
    expectFailure(await failed.step(Buffer.from('garbage')));
    expectFailure(await failed.step(client.first()));
  });

  it('handles usernames needing =2C / =3D escapes and SASLprep', async () => {
    const ctx = makeCtx({ 'a,b=c': pencil, IX: pencil });
    const { result } = await exchange(
      factory('SCRAM-SHA-256').create(ctx),
      new ScramClient('SHA-256', 'a,b=c', 'pencil'),
    );
    expect(result.kind).to.equal('success');
    if (result.kind === 'success') expect(result.username).to.equal('a,b=c');
    // The server prepares the username too, whatever the client did.
    const mech = factory('SCRAM-SHA-256').create(ctx);
    challengeData(await mech.step(Buffer.from('n,,n=\u2168,r=abcdef')));
    expect(ctx.lookups.at(-1)).to.equal('IX');
  });

  it('checks the authzid against the policy', async () => {
    const strict = makeCtx({ juliet: pencil });
    expectFailure(
      await factory('SCRAM-SHA-256')
        .create(strict)
        .step(new ScramClient('SHA-256', 'juliet', 'pencil', { authzid: 'juliet@example.com' }).first()),
      'invalid-authzid',
    );
    const policy = makeCtx(
      { juliet: pencil },
      { authzidAllowed: (authcid, authzid) => authzid === `${authcid}@example.com` },
    );
    const { result } = await exchange(
      factory('SCRAM-SHA-256').create(policy),
      new ScramClient('SHA-256', 'juliet', 'pencil', { authzid: 'juliet@example.com' }),
    );
    expect(result).to.include({ kind: 'success', username: 'juliet', authzid: 'juliet@example.com' });
    expectFailure(
      await factory('SCRAM-SHA-256')
        .create(policy)
        .step(new ScramClient('SHA-256', 'juliet', 'pencil', { authzid: 'romeo@example.com' }).first()),
      'invalid-authzid',
    );
  });

  it('reports temporary-auth-failure when the lookup throws', async () => {
    const ctx: SaslContext = {
      secure: true,
      channelBindings: {},
      lookup: () => Promise.reject(new Error('database down')),
    };
    expectFailure(
      await factory('SCRAM-SHA-256')
        .create(ctx)
        .step(new ScramClient('SHA-256', 'juliet', 'pencil').first()),
      'temporary-auth-failure',
    );
  });

  describe('malformed client-first-message', () => {
    const cases: Record<string, Buffer> = {
      empty: Buffer.alloc(0),
      'unknown gs2 flag': Buffer.from('x,,n=juliet,r=abc'),
      'gs2 header without authzid field': Buffer.from('n,n=juliet,r=abc'),
      'no commas': Buffer.from('n'),
      'bad authzid field': Buffer.from('n,b=x,n=juliet,r=abc'),
      'empty authzid': Buffer.from('n,a=,n=juliet,r=abc'),
      'bad escape in authzid': Buffer.from('n,a=x=41,n=juliet,r=abc'),
      'empty cb-name': Buffer.from('p=,,n=juliet,r=abc'),
      'missing n=': Buffer.from('n,,r=abc'),
      'missing r=': Buffer.from('n,,n=juliet'),
      'empty nonce': Buffer.from('n,,n=juliet,r='),
      'nonce with DEL': Buffer.from('n,,n=juliet,r=ab\x7fc'),
      'empty username': Buffer.from('n,,n=,r=abc'),
      'bad escape in username': Buffer.from('n,,n=jul=2Xiet,r=abc'),
      'truncated escape': Buffer.from('n,,n=juliet=2,r=abc'),
      'm= extension first': Buffer.from('n,,m=ext,n=juliet,r=abc'),
      'm= extension later': Buffer.from('n,,n=juliet,r=abc,m=ext'),
      'invalid extension': Buffer.from('n,,n=juliet,r=abc,garbage'),
      'duplicate r=': Buffer.from('n,,n=juliet,r=abc,r=def'),
      'NUL byte': Buffer.from('n,,n=jul\0iet,r=abc'),
      'invalid UTF-8': Buffer.concat([
        Buffer.from('n,,n=jul'),
        Buffer.from([0xc3, 0x28]),
        Buffer.from(',r=abc'),
      ]),
      'lone surrogate encoding': Buffer.concat([
        Buffer.from('n,,n='),
        Buffer.from([0xed, 0xa0, 0x80]),
        Buffer.from(',r=a'),
      ]),
      'over 4 KiB': Buffer.from(`n,,n=juliet,r=${'a'.repeat(5000)}`),
    };
    for (const [label, input] of Object.entries(cases)) {
      it(`fails on ${label}`, async () => {
        const ctx = makeCtx({ juliet: pencil });
        const mech = factory('SCRAM-SHA-256').create(ctx);
        expectFailure(await mech.step(input), 'malformed-request');
        expect(ctx.lookups).to.deep.equal([]);
      });
    }

    it('ignores unknown well-formed extensions', async () => {
      const ctx = makeCtx({ juliet: pencil });
      const step = await factory('SCRAM-SHA-256')
        .create(ctx)
        .step(Buffer.from('n,,n=juliet,r=abc,x=whatever'));
      expect(step.kind).to.equal('challenge');
    });

    it('rejects a prohibited username with not-authorized without a lookup', async () => {
      const ctx = makeCtx({ juliet: pencil });
      expectFailure(
        await factory('SCRAM-SHA-256').create(ctx).step(Buffer.from('n,,n=a\u0007b,r=abc')),
        'not-authorized',
      );
      expect(ctx.lookups).to.deep.equal([]);
    });
  });

  describe('malformed client-final-message', () => {
    async function afterFirst(): Promise<{ mech: SaslMechanism; final: string; nonce: string }> {
      const ctx = makeCtx({ juliet: pencil });
      const mech = factory('SCRAM-SHA-256').create(ctx);
      const client = new ScramClient('SHA-256', 'juliet', 'pencil', { clientNonce: 'clientnonce' });
      const serverFirst = challengeData(await mech.step(client.first()));
      const nonce = /^r=([^,]+)/.exec(serverFirst.toString())![1]!;
      return { mech, final: client.final(serverFirst).toString(), nonce };
    }

    const mutations: Record<string, (final: string, nonce: string) => Buffer | null> = {
      'nonce not extending the client nonce': (f, n) => Buffer.from(f.replace(n, `other${n.slice(11)}`)),
      'nonce missing the server part': (f, n) => Buffer.from(f.replace(n, 'clientnonce')),
      'missing r=': (f) => Buffer.from(f.replace(/,r=[^,]+/, '')),
      'missing p=': (f) => Buffer.from(f.replace(/,p=.*$/, '')),
      'missing c=': (f) => Buffer.from(f.replace(/^c=[^,]+,/, '')),
      'proof not base64': (f) => Buffer.from(f.replace(/p=.*$/, 'p=!!!!')),
      'proof of wrong length': (f) => Buffer.from(f.replace(/p=.*$/, 'p=AAAA')),
      'm= extension': (f) => Buffer.from(f.replace(',p=', ',m=x,p=')),
      'attributes out of order': (f) => {
        const [c, r, p] = f.split(',');
        return Buffer.from([r, c, p].join(','));
      },
      'invalid UTF-8': (f) => Buffer.concat([Buffer.from(f), Buffer.from([0xff])]),
      'over 4 KiB': (f) => Buffer.from(f.replace(',p=', `,x=${'y'.repeat(5000)},p=`)),
      'no response': () => null,
      'empty response': () => Buffer.alloc(0),
    };
    for (const [label, mutate] of Object.entries(mutations)) {
      it(`fails on ${label}`, async () => {
        const { mech, final, nonce } = await afterFirst();
        const step = await mech.step(mutate(final, nonce));
        expectFailure(step);
        expect(
          step.kind === 'failure' && ['malformed-request', 'not-authorized'].includes(step.condition),
        ).to.equal(true);
      });
    }

    it('checks the nonce itself, even when the proof is valid for the altered message', async () => {
      const ctx = makeCtx({ juliet: pencil });
      for (const wrong of ['clientnonce', 'clientnonceX', 'otherclientnonce']) {
        const mech = factory('SCRAM-SHA-256').create(ctx);
        const client = new ScramClient('SHA-256', 'juliet', 'pencil', { clientNonce: 'clientnonce' });
        const serverFirst = challengeData(await mech.step(client.first()));
        expectFailure(await mech.step(client.final(serverFirst, wrong)), 'malformed-request');
      }
    });

    it('an intact message still succeeds (sanity check for the mutations)', async () => {
      const { mech, final } = await afterFirst();
      expect((await mech.step(Buffer.from(final))).kind).to.equal('success');
    });
  });

  it('never throws and never succeeds on arbitrary input (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...mechanisms.map((m) => m.name)),
        fc.array(
          fc.oneof(
            fc.uint8Array({ maxLength: 300 }),
            fc.string({ maxLength: 100 }).map((s) => new TextEncoder().encode(s)),
          ),
          {
            minLength: 1,
            maxLength: 3,
          },
        ),
        async (name, inputs) => {
          const ctx = makeCtx({ juliet: pencil }, { channelBindings: allBindings });
          const mech = factory(name).create(ctx);
          for (const input of inputs) {
            const step = await mech.step(Buffer.from(input));
            expect(step.kind).to.not.equal('success');
            if (step.kind === 'failure') break;
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('PLAIN', () => {
  const plain = () => factory('PLAIN');

  it('requires TLS', () => {
    expect(plain().requiresTls).to.equal(true);
    expect(plain().available(makeCtx({}, { secure: false }))).to.equal(false);
    expect(plain().available(makeCtx({}))).to.equal(true);
  });

  it('authenticates a good password', async () => {
    const ctx = makeCtx({ juliet: pencil });
    expect(await plain().create(ctx).step(plainMessage('juliet', 'pencil'))).to.deep.equal({
      kind: 'success',
      data: null,
      username: 'juliet',
    });
  });

  it('SASLprep-normalises authcid and password', async () => {
    const ctx = makeCtx({ IX: pencil });
    const step = await plain().create(ctx).step(plainMessage('\u2168', 'pen\u00ADcil'));
    expect(step).to.include({ kind: 'success', username: 'IX' });
  });

  it('rejects a bad password and an unknown user alike', async () => {
    const ctx = makeCtx({ juliet: pencil });
    const bad = await plain().create(ctx).step(plainMessage('juliet', 'crayon'));
    const ghost = await plain().create(ctx).step(plainMessage('romeo', 'pencil'));
    expectFailure(bad, 'not-authorized');
    expect(ghost).to.deep.equal(bad);
  });

  it('sends an empty challenge without initial response', async () => {
    const ctx = makeCtx({ juliet: pencil });
    const mech = plain().create(ctx);
    expect(await mech.step(null)).to.deep.equal({ kind: 'challenge', data: Buffer.alloc(0) });
    expect((await mech.step(plainMessage('juliet', 'pencil'))).kind).to.equal('success');
    expectFailure(await mech.step(plainMessage('juliet', 'pencil')));
  });

  const malformedCases: Record<string, Buffer> = {
    'no NUL': Buffer.from('julietpencil'),
    'one NUL': Buffer.from('juliet\0pencil'),
    'extra part': Buffer.from('\0juliet\0pencil\0more'),
    'empty authcid': Buffer.from('\0\0pencil'),
    'empty password': Buffer.from('\0juliet\0'),
    'empty message': Buffer.alloc(0),
    'invalid UTF-8': Buffer.concat([Buffer.from('\0juliet\0pen'), Buffer.from([0xff, 0xfe])]),
    'over 4 KiB': Buffer.from(`\0juliet\0${'p'.repeat(5000)}`),
  };
  for (const [label, input] of Object.entries(malformedCases)) {
    it(`fails on ${label}`, async () => {
      const ctx = makeCtx({ juliet: pencil });
      expectFailure(await plain().create(ctx).step(input), 'malformed-request');
      expect(ctx.lookups).to.deep.equal([]);
    });
  }

  it('checks the authzid', async () => {
    const strict = makeCtx({ juliet: pencil });
    expectFailure(
      await plain()
        .create(strict)
        .step(plainMessage('juliet', 'pencil', 'juliet@example.com')),
      'invalid-authzid',
    );
    const policy = makeCtx({ juliet: pencil }, { authzidAllowed: (c, z) => z === `${c}@example.com` });
    expect(
      await plain()
        .create(policy)
        .step(plainMessage('juliet', 'pencil', 'juliet@example.com')),
    ).to.include({
      kind: 'success',
      authzid: 'juliet@example.com',
    });
  });
});

describe('mechanism offer', () => {
  const names = (list: SaslMechanismFactory[]) => list.map((m) => m.name);

  it('lists mechanisms in preference order', () => {
    expect(names(mechanisms)).to.deep.equal([
      'SCRAM-SHA-256-PLUS',
      'SCRAM-SHA-1-PLUS',
      'SCRAM-SHA-256',
      'SCRAM-SHA-1',
      'PLAIN',
    ]);
  });

  it('offers PLAIN only under TLS and -PLUS only with a channel binding', () => {
    expect(names(offeredMechanisms(makeCtx({}, { secure: false })))).to.deep.equal([
      'SCRAM-SHA-256',
      'SCRAM-SHA-1',
    ]);
    expect(names(offeredMechanisms(makeCtx({})))).to.deep.equal(['SCRAM-SHA-256', 'SCRAM-SHA-1', 'PLAIN']);
    expect(names(offeredMechanisms(makeCtx({}, { channelBindings: allBindings })))).to.deep.equal(
      names(mechanisms),
    );
    expect(
      names(offeredMechanisms(makeCtx({}, { channelBindings: { 'tls-unique': () => null } }))),
    ).to.deep.equal(['SCRAM-SHA-256', 'SCRAM-SHA-1', 'PLAIN']);
    // A binding without TLS is meaningless.
    expect(
      names(offeredMechanisms(makeCtx({}, { secure: false, channelBindings: allBindings }))),
    ).to.deep.equal(['SCRAM-SHA-256', 'SCRAM-SHA-1']);
  });

  it('restricts to the allowed list, case-insensitively', () => {
    const ctx = makeCtx({}, { channelBindings: allBindings });
    expect(names(offeredMechanisms(ctx, ['plain', 'SCRAM-SHA-1-PLUS']))).to.deep.equal([
      'SCRAM-SHA-1-PLUS',
      'PLAIN',
    ]);
  });

  it('selectMechanism refuses what was not offered', () => {
    const ctx = makeCtx({}, { secure: false });
    expect(selectMechanism(ctx, 'PLAIN')).to.equal(null);
    expect(selectMechanism(ctx, 'DIGEST-MD5')).to.equal(null);
    expect(selectMechanism(ctx, 'SCRAM-SHA-1')?.name).to.equal('SCRAM-SHA-1');
  });
});

describe('TLS channel bindings', function () {
  this.timeout(20000);

  // One key for every certificate: only the signature hash varies between them.
  let keyPem = '';
  let forgeKey: forge.pki.rsa.PrivateKey;

  function selfSigned(mdName: 'sha1' | 'sha256' | 'sha384' | 'sha512'): {
    key: string;
    cert: string;
    der: Buffer;
  } {
    const cert = forge.pki.createCertificate();
    cert.publicKey = forge.pki.setRsaPublicKey(forgeKey.n, forgeKey.e);
    cert.serialNumber = '01';
    cert.validity.notBefore = new Date(Date.now() - 60_000);
    cert.validity.notAfter = new Date(Date.now() + 86_400_000);
    const attrs = [{ name: 'commonName', value: 'localhost' }];
    cert.setSubject(attrs);
    cert.setIssuer(attrs);
    cert.sign(forgeKey, forge.md[mdName].create());
    const der = Buffer.from(forge.asn1.toDer(forge.pki.certificateToAsn1(cert)).getBytes(), 'binary');
    return { key: keyPem, cert: forge.pki.certificateToPem(cert), der };
  }

  let rsa: { key: string; cert: string; der: Buffer };
  before(() => {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    keyPem = privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();
    forgeKey = forge.pki.privateKeyFromPem(keyPem) as forge.pki.rsa.PrivateKey;
    rsa = selfSigned('sha256');
  });

  it('picks the tls-server-end-point hash from the signature algorithm (RFC 5929 section 4.1)', () => {
    expect(endPointHashFor(rsa.der)).to.equal('sha256');
    expect(endPointHashFor(selfSigned('sha1').der)).to.equal('sha256');
    expect(endPointHashFor(selfSigned('sha384').der)).to.equal('sha384');
    expect(endPointHashFor(selfSigned('sha512').der)).to.equal('sha512');
    expect(endPointHashFor(Buffer.from([0x30, 0x03, 0x02, 0x01, 0x00]))).to.equal(null);
    expect(endPointHashFor(Buffer.alloc(0))).to.equal(null);
  });

  async function connect(
    maxVersion: 'TLSv1.2' | 'TLSv1.3',
  ): Promise<{ server: TLSSocket; client: TLSSocket; close: () => void }> {
    const srv = tls.createServer({ key: rsa.key, cert: rsa.cert, maxVersion });
    const serverSide = once(srv, 'secureConnection') as Promise<[TLSSocket]>;
    srv.listen(0, '127.0.0.1');
    await once(srv, 'listening');
    const { port } = srv.address() as AddressInfo;
    const client = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, maxVersion });
    await once(client, 'secureConnect');
    const [server] = await serverSide;
    return {
      server,
      client,
      close: () => {
        client.destroy();
        server.destroy();
        srv.close();
      },
    };
  }

  it('provides tls-exporter and tls-server-end-point on TLS 1.3', async () => {
    const { server, client, close } = await connect('TLSv1.3');
    try {
      const cb = tlsChannelBindings(server);
      expect(server.getProtocol()).to.equal('TLSv1.3');
      expect(cb['tls-exporter']!()).to.deep.equal(
        client.exportKeyingMaterial(32, 'EXPORTER-Channel-Binding', Buffer.alloc(0)),
      );
      expect(cb['tls-unique']!()).to.equal(null);
      const peerRaw = client.getPeerCertificate().raw;
      expect(cb['tls-server-end-point']!()).to.deep.equal(createHash('sha256').update(peerRaw).digest());

      // End to end: SCRAM-SHA-256-PLUS where each side derives the binding from its own socket.
      const ctx = makeCtx({ juliet: pencil }, { channelBindings: cb });
      expect(offeredMechanisms(ctx).map((m) => m.name)).to.include('SCRAM-SHA-256-PLUS');
      const { result, serverVerified } = await exchange(
        selectMechanism(ctx, 'SCRAM-SHA-256-PLUS')!,
        new ScramClient('SHA-256', 'juliet', 'pencil', {
          cbType: 'tls-exporter',
          cbData: client.exportKeyingMaterial(32, 'EXPORTER-Channel-Binding', Buffer.alloc(0)),
        }),
      );
      expect(result.kind).to.equal('success');
      expect(serverVerified).to.equal(true);
    } finally {
      close();
    }
  });

  it('provides tls-unique but not tls-exporter on TLS 1.2', async () => {
    const { server, client, close } = await connect('TLSv1.2');
    try {
      const cb = tlsChannelBindings(server);
      expect(server.getProtocol()).to.equal('TLSv1.2');
      expect(cb['tls-exporter']!()).to.equal(null);
      // Full handshake: the first Finished is the client's.
      const unique = cb['tls-unique']!();
      expect(unique).to.not.equal(null);
      expect(unique).to.deep.equal(client.getFinished());
    } finally {
      close();
    }
  });
});
