// SASL over real TLS connections (RFC 6120 6, RFC 5802/7677, RFC 9266,
// XEP-0440), including the failure conditions and the per-address throttle.
import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import type { Element } from 'ltx';
import type { ChannelBindingType } from '../../src/sasl/mechanisms.ts';
import { plainMessage, ScramClient } from '../helpers/scram-client.ts';
import { useServerAndPool } from '../helpers/fixtures.ts';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { ClientPool, NS_BIND, NS_SASL, type AuthOutcome, type XmppClient } from '../helpers/xmpp-client.ts';

const NS_SASL_CB = 'urn:xmpp:sasl-cb:0';

function failureCondition(outcome: AuthOutcome): string {
  if (outcome.ok) throw new Error('authentication succeeded but a failure was expected');
  return outcome.condition;
}

function channelBindingTypes(features: Element | null): string[] {
  const cb = features?.getChild('sasl-channel-binding', NS_SASL_CB);
  return cb ? cb.getChildren('channel-binding').map((e) => e.attrs.type as string) : [];
}

/** The SCRAM server-first-message for `user`, answering an initial client-first. */
async function serverFirst(c: XmppClient, user: string): Promise<Map<string, string>> {
  const scram = new ScramClient('SHA-256', user, 'irrelevant');
  c.send(`<auth xmlns='${NS_SASL}' mechanism='SCRAM-SHA-256'>${scram.first().toString('base64')}</auth>`);
  const challenge = await c.expect(`<challenge xmlns='${NS_SASL}'>{any}</challenge>`);
  const attrs = new Map<string, string>();
  for (const part of Buffer.from(challenge.getText(), 'base64').toString('utf8').split(',')) {
    attrs.set(part.slice(0, 1), part.slice(2));
  }
  return attrs;
}

describe('protocol: SASL', function () {
  // The failure tests below would otherwise trip the default throttle.
  const { server, pool } = useServerAndPool({
    yaml: 'auth: { throttle: { delay_after: 1000, ban_after: 1000 } }',
    users: { romeo: 'pw-romeo' },
  });

  describe('each mechanism logs in', () => {
    for (const mechanism of ['SCRAM-SHA-1', 'SCRAM-SHA-256', 'PLAIN']) {
      it(`${mechanism}: success, stream restart with <bind/>, then a bound JID`, async () => {
        const c = await pool.connectSecure();
        const features = await c.authenticate('romeo', 'pw-romeo', mechanism);
        expect(features.getChild('bind', NS_BIND), 'bind offered after SASL').to.not.equal(undefined);
        expect(features.getChild('mechanisms', NS_SASL), 'mechanisms offered again').to.equal(undefined);
        expect(await c.bind('m')).to.equal('romeo@localhost/m');
      });
    }

    const plus: [string, ChannelBindingType][] = [
      ['SCRAM-SHA-1-PLUS', 'tls-exporter'],
      ['SCRAM-SHA-256-PLUS', 'tls-exporter'],
      ['SCRAM-SHA-1-PLUS', 'tls-server-end-point'],
      ['SCRAM-SHA-256-PLUS', 'tls-server-end-point'],
    ];
    for (const [mechanism, channelBinding] of plus) {
      it(`${mechanism} with ${channelBinding} over TLS 1.3`, async () => {
        const c = await pool.connectSecure();
        expect(c.tlsSocket.getProtocol()).to.equal('TLSv1.3');
        await c.authenticate('romeo', 'pw-romeo', mechanism, { channelBinding });
        expect(await c.bind()).to.match(/^romeo@localhost\/.+/);
      });
    }

    it('SCRAM-SHA-256-PLUS with tls-exporter on the direct TLS port', async () => {
      const c = await pool.connectSecure({ port: server.tlsPort, directTls: true });
      await c.authenticate('romeo', 'pw-romeo', 'SCRAM-SHA-256-PLUS', { channelBinding: 'tls-exporter' });
      expect(await c.bind()).to.match(/^romeo@localhost\//);
    });
  });

  it('SCRAM without an initial response: an empty challenge first (RFC 6120 6.4.2)', async () => {
    const c = await pool.connectSecure();
    const scram = new ScramClient('SHA-256', 'romeo', 'pw-romeo');
    c.send(`<auth xmlns='${NS_SASL}' mechanism='SCRAM-SHA-256'/>`);
    await c.expect(`<challenge xmlns='${NS_SASL}' strict='true'/>`);
    c.send(`<response xmlns='${NS_SASL}'>${scram.first().toString('base64')}</response>`);
    const first = await c.expect(`<challenge xmlns='${NS_SASL}'>{any}</challenge>`);
    const final = scram.final(Buffer.from(first.getText(), 'base64'));
    c.send(`<response xmlns='${NS_SASL}'>${final.toString('base64')}</response>`);
    const success = await c.expect(`<success xmlns='${NS_SASL}'>{any}</success>`);
    expect(scram.verifyServer(Buffer.from(success.getText(), 'base64')), 'server signature').to.equal(true);
  });

  describe('channel binding', () => {
    it('XEP-0440: lists exactly tls-exporter and tls-server-end-point on TLS 1.3', async () => {
      const c = await pool.connectSecure();
      expect(channelBindingTypes(c.features).sort()).to.deep.equal(['tls-exporter', 'tls-server-end-point']);
    });

    it('XEP-0440: on TLS 1.2 lists tls-server-end-point and tls-unique, not tls-exporter', async () => {
      const c = await pool.connectSecure({ tlsOptions: { maxVersion: 'TLSv1.2' } });
      expect(c.tlsSocket.getProtocol()).to.equal('TLSv1.2');
      expect(channelBindingTypes(c.features).sort()).to.deep.equal(['tls-server-end-point', 'tls-unique']);
    });

    for (const channelBinding of ['tls-server-end-point', 'tls-unique'] as const) {
      it(`SCRAM-SHA-256-PLUS with ${channelBinding} over TLS 1.2`, async () => {
        const c = await pool.connectSecure({ tlsOptions: { maxVersion: 'TLSv1.2' } });
        await c.authenticate('romeo', 'pw-romeo', 'SCRAM-SHA-256-PLUS', { channelBinding });
      });
    }

    it('refuses tls-exporter over TLS 1.2 with not-authorized', async () => {
      const c = await pool.connectSecure({ tlsOptions: { maxVersion: 'TLSv1.2' } });
      const outcome = await c.tryAuthenticate('romeo', 'pw-romeo', 'SCRAM-SHA-256-PLUS', {
        channelBinding: 'tls-exporter',
        cbData: randomBytes(32),
      });
      expect(failureCondition(outcome)).to.equal('not-authorized');
    });

    for (const channelBinding of ['tls-exporter', 'tls-server-end-point'] as const) {
      it(`fails with not-authorized when the ${channelBinding} data is wrong`, async () => {
        const c = await pool.connectSecure();
        const outcome = await c.tryAuthenticate('romeo', 'pw-romeo', 'SCRAM-SHA-256-PLUS', {
          channelBinding,
          cbData: randomBytes(32),
        });
        expect(failureCondition(outcome)).to.equal('not-authorized');
      });
    }

    it("fails a client that says 'y' (no channel binding offered) while -PLUS is offered", async () => {
      const c = await pool.connectSecure();
      const outcome = await c.tryAuthenticate('romeo', 'pw-romeo', 'SCRAM-SHA-256', { cbFlag: 'y' });
      expect(failureCondition(outcome)).to.equal('not-authorized');
    });

    it("accepts 'y' when the operator disabled the -PLUS mechanisms (nothing was stripped)", async () => {
      const noPlus = await startTestServer({ yaml: 'auth: { mechanisms: [SCRAM-SHA-256] }' });
      try {
        await noPlus.addUser('romeo', 'pw-romeo');
        const c = await pool.connectSecure({ port: noPlus.port });
        expect(
          c.features
            ?.getChild('mechanisms', NS_SASL)
            ?.getChildren('mechanism')
            .map((m) => m.getText()),
        ).to.deep.equal(['SCRAM-SHA-256']);
        await c.authenticate('romeo', 'pw-romeo', 'SCRAM-SHA-256', { cbFlag: 'y' });
      } finally {
        await pool.destroyAll();
        await noPlus.stop();
      }
    });
  });

  describe('failures', () => {
    for (const mechanism of ['SCRAM-SHA-256', 'SCRAM-SHA-1-PLUS', 'PLAIN']) {
      it(`${mechanism}: wrong password -> <failure><not-authorized/></failure>, and the stream stays usable`, async () => {
        const c = await pool.connectSecure();
        const outcome = await c.tryAuthenticate('romeo', 'wrong', mechanism);
        expect(failureCondition(outcome)).to.equal('not-authorized');
        // RFC 6120 6.4.5: the client may retry on the same stream.
        await c.authenticate('romeo', 'pw-romeo', mechanism);
      });
    }

    for (const mechanism of ['SCRAM-SHA-256', 'PLAIN']) {
      it(`${mechanism}: an unknown user fails exactly like a wrong password`, async () => {
        const c = await pool.connectSecure();
        const wrongPassword = await c.tryAuthenticate('romeo', 'wrong', mechanism);
        const unknownUser = await c.tryAuthenticate('nobody-here', 'wrong', mechanism);
        if (wrongPassword.ok || unknownUser.ok) throw new Error('expected two failures');
        expect(unknownUser.failure.toString()).to.equal(wrongPassword.failure.toString());
      });
    }

    it('SCRAM: the challenge for an unknown user has the same shape as for a real one', async () => {
      const c = await pool.connectSecure();
      const real = await serverFirst(c, 'romeo');
      c.send(`<abort xmlns='${NS_SASL}'/>`);
      await c.expect(`<failure xmlns='${NS_SASL}'><aborted/></failure>`);
      const fake = await serverFirst(c, 'nobody-here');
      expect([...fake.keys()]).to.deep.equal([...real.keys()]);
      expect(fake.get('i')).to.equal(real.get('i'));
      expect(Buffer.from(fake.get('s')!, 'base64').length).to.equal(
        Buffer.from(real.get('s')!, 'base64').length,
      );
    });

    it('malformed base64 in <auth> -> incorrect-encoding', async () => {
      const c = await pool.connectSecure();
      c.send(`<auth xmlns='${NS_SASL}' mechanism='PLAIN'>not*base64!</auth>`);
      await c.expect(`<failure xmlns='${NS_SASL}'><incorrect-encoding/></failure>`);
    });

    it('malformed base64 in <response> -> incorrect-encoding', async () => {
      const c = await pool.connectSecure();
      const scram = new ScramClient('SHA-256', 'romeo', 'pw-romeo');
      c.send(`<auth xmlns='${NS_SASL}' mechanism='SCRAM-SHA-256'>${scram.first().toString('base64')}</auth>`);
      await c.expect(`<challenge xmlns='${NS_SASL}'>{any}</challenge>`);
      c.send(`<response xmlns='${NS_SASL}'>%%%</response>`);
      await c.expect(`<failure xmlns='${NS_SASL}'><incorrect-encoding/></failure>`);
    });

    for (const mechanism of ['DIGEST-MD5', 'X-UNKNOWN']) {
      it(`an unknown mechanism (${mechanism}) -> invalid-mechanism`, async () => {
        const c = await pool.connectSecure();
        c.send(`<auth xmlns='${NS_SASL}' mechanism='${mechanism}'>=</auth>`);
        await c.expect(`<failure xmlns='${NS_SASL}'><invalid-mechanism/></failure>`);
      });
    }

    it('<response/> without an exchange in progress -> malformed-request', async () => {
      const c = await pool.connectSecure();
      c.send(`<response xmlns='${NS_SASL}'>=</response>`);
      await c.expect(`<failure xmlns='${NS_SASL}'><malformed-request/></failure>`);
    });

    it('PLAIN: an authzid of another user -> invalid-authzid; the own bare JID is accepted', async () => {
      const c = await pool.connectSecure();
      const other = await c.tryAuthenticate('romeo', 'pw-romeo', 'PLAIN', { authzid: 'juliet@localhost' });
      expect(failureCondition(other)).to.equal('invalid-authzid');
      await c.authenticate('romeo', 'pw-romeo', 'PLAIN', { authzid: 'romeo@localhost' });
      expect(await c.bind('z')).to.equal('romeo@localhost/z');
    });

    it('<abort/> mid-exchange -> aborted, and a new exchange can follow', async () => {
      const c = await pool.connectSecure();
      const scram = new ScramClient('SHA-256', 'romeo', 'pw-romeo');
      c.send(`<auth xmlns='${NS_SASL}' mechanism='SCRAM-SHA-256'>${scram.first().toString('base64')}</auth>`);
      await c.expect(`<challenge xmlns='${NS_SASL}'>{any}</challenge>`);
      c.send(`<abort xmlns='${NS_SASL}'/>`);
      await c.expect(`<failure xmlns='${NS_SASL}'><aborted/></failure>`);
      await c.authenticate('romeo', 'pw-romeo');
    });

    it('ends the stream after five failed attempts on one connection', async () => {
      const c = await pool.connectSecure();
      const wrong = plainMessage('romeo', 'wrong').toString('base64');
      for (let i = 0; i < 4; i++) {
        c.send(`<auth xmlns='${NS_SASL}' mechanism='PLAIN'>${wrong}</auth>`);
        await c.expect(`<failure xmlns='${NS_SASL}'><not-authorized/></failure>`);
      }
      c.send(`<auth xmlns='${NS_SASL}' mechanism='PLAIN'>${wrong}</auth>`);
      await c.expect(`<failure xmlns='${NS_SASL}'><not-authorized/></failure>`);
      await c.expectStreamError('policy-violation');
    });
  });

  describe('throttle', () => {
    let tight: TestServer;
    const tightPool = new ClientPool(() => ({ port: tight.port }));

    before(async () => {
      tight = await startTestServer({
        yaml: 'auth: { throttle: { delay_after: 1, delay_ms: 300, max_delay_ms: 600, ban_after: 3, ban_seconds: 60, window_seconds: 60 } }',
      });
      await tight.addUser('romeo', 'pw-romeo');
    });
    after(async () => {
      await tightPool.destroyAll();
      await tight.stop();
    });

    async function timedAttempt(password: string): Promise<{ outcome: AuthOutcome; ms: number }> {
      // A fresh connection each time: the throttle is per address, not per stream.
      const c = await tightPool.connectSecure();
      const start = performance.now();
      const outcome = await c.tryAuthenticate('romeo', password, 'PLAIN');
      return { outcome, ms: performance.now() - start };
    }

    it('slows repeated failures down, then refuses even the right password with temporary-auth-failure', async () => {
      const first = await timedAttempt('wrong-1'); // failure 1: no delay before it
      expect(failureCondition(first.outcome)).to.equal('not-authorized');
      const second = await timedAttempt('wrong-2'); // failure 2: within delay_after, no delay
      expect(failureCondition(second.outcome)).to.equal('not-authorized');
      expect(second.ms).to.be.below(300);
      const third = await timedAttempt('wrong-3'); // delayed by delay_ms, then failure 3 = ban
      expect(failureCondition(third.outcome)).to.equal('not-authorized');
      expect(third.ms).to.be.at.least(290);

      const banned = await timedAttempt('pw-romeo');
      expect(failureCondition(banned.outcome)).to.equal('temporary-auth-failure');
      if (!banned.outcome.ok) {
        expect(banned.outcome.failure.getChildText('text')).to.match(/try again in \d+ s/);
      }
    });
  });
});
