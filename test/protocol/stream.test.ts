// Stream-level behaviour (RFC 6120 4 and 11): headers, stream errors,
// restricted XML, size limits, keepalives, closing and timeouts.
import { expect } from 'chai';
import { useServerAndPool } from '../helpers/fixtures.ts';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { ClientPool, NS_CLIENT, NS_STREAMS, NS_TLS, type XmppClient } from '../helpers/xmpp-client.ts';

async function ping(c: XmppClient, id = c.nextId('ping')): Promise<void> {
  c.send(`<iq type='get' id='${id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
  await c.expect(`<iq type='result' id='${id}' from='localhost'/>`);
}

describe('protocol: streams', function () {
  const { pool } = useServerAndPool({ users: { romeo: 'pw-romeo' } });

  describe('stream header', () => {
    it('answers with from, a fresh id, version 1.0, and to = the client from', async () => {
      const a = await pool.connect();
      a.sendRaw(
        `<?xml version='1.0'?><stream:stream xmlns='${NS_CLIENT}' xmlns:stream='${NS_STREAMS}' to='localhost' from='romeo@localhost' version='1.0'>`,
      );
      await a.expect(`<stream:stream from='localhost' to='romeo@localhost' version='1.0' id='{$firstId}'>`);
      const b = await pool.connect();
      b.sendHeader();
      const header = await b.expectHeader();
      expect(header.id).to.be.a('string').with.length.above(8);
      expect(header.id, 'stream ids are unique').to.not.equal(a.vars.get('firstId'));
    });

    it('sends a new stream id on every restart (RFC 6120 4.3.3)', async () => {
      const c = await pool.connect();
      await c.open();
      const initial = c.serverHeader!.id;
      await c.startTls();
      const afterTls = c.serverHeader!.id;
      await c.authenticate('romeo', 'pw-romeo');
      const afterSasl = c.serverHeader!.id;
      for (const id of [initial, afterTls, afterSasl]) expect(id).to.be.a('string').with.length.above(8);
      expect(
        new Set([initial, afterTls, afterSasl]).size,
        `ids: ${initial}, ${afterTls}, ${afterSasl}`,
      ).to.equal(3);
    });

    it('ends a stream with the wrong stream namespace with invalid-namespace (after its own header)', async () => {
      const c = await pool.connect();
      c.sendHeader({ streamNs: 'http://example.com/not-streams' });
      await c.expectHeader();
      await c.expectStreamError('invalid-namespace');
    });

    it('ends a jabber:server stream on the client port with invalid-namespace', async () => {
      const c = await pool.connect();
      c.sendHeader({ xmlns: 'jabber:server' });
      await c.expectHeader();
      await c.expectStreamError('invalid-namespace');
    });

    it('ends a stream to a host it does not serve with host-unknown', async () => {
      const c = await pool.connect();
      c.sendHeader({ to: 'verona.example' });
      await c.expectHeader();
      await c.expectStreamError('host-unknown');
    });

    for (const version of [null, '0.9']) {
      it(`ends a stream with ${version === null ? 'no version' : `version ${version}`} with unsupported-version`, async () => {
        const c = await pool.connect();
        c.sendHeader({ version });
        await c.expectHeader();
        await c.expectStreamError('unsupported-version');
      });
    }

    it('serves the default host when the header has no to', async () => {
      const c = await pool.connect();
      c.sendHeader({ to: null });
      const header = await c.expectHeader();
      expect(header.from).to.equal('localhost');
      await c.expect(`<stream:features><starttls xmlns='${NS_TLS}'/></stream:features>`);
    });

    it('sends a header before the error when the first bytes are not XML', async () => {
      const c = await pool.connect();
      c.sendRaw('HELO verona\r\n');
      await c.expectHeader();
      await c.expectStreamError('not-well-formed');
    });

    it('refuses an encoding other than UTF-8 with unsupported-encoding', async () => {
      const c = await pool.connect();
      c.sendRaw(
        `<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream xmlns='${NS_CLIENT}' xmlns:stream='${NS_STREAMS}' to='localhost' version='1.0'>`,
      );
      await c.expectHeader();
      await c.expectStreamError('unsupported-encoding');
    });
  });

  describe('restricted and malformed XML', () => {
    it('ends the stream with not-well-formed on mismatched tags', async () => {
      const c = await pool.connectSecure();
      c.sendRaw(`<iq type='get' id='x'><query xmlns='urn:x'></iq>`);
      await c.expectStreamError('not-well-formed');
    });

    it('ends the stream with not-well-formed on text at stream level', async () => {
      const c = await pool.connectSecure();
      c.sendRaw('hello');
      await c.expectStreamError('not-well-formed');
    });

    it('ends a bound stream with not-well-formed too', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(`<message to='romeo@localhost'><body>unclosed</message>`);
      await c.expectStreamError('not-well-formed');
    });

    it('ends the stream with restricted-xml on a comment', async () => {
      const c = await pool.connectSecure();
      c.sendRaw('<!-- a comment -->');
      await c.expectStreamError('restricted-xml');
    });

    it('ends the stream with restricted-xml on a comment inside a stanza', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(`<message to='romeo@localhost'><!-- hidden --><body>x</body></message>`);
      await c.expectStreamError('restricted-xml');
    });

    it('ends the stream with restricted-xml on a processing instruction', async () => {
      const c = await pool.connectSecure();
      c.sendRaw('<?php echo 1; ?>');
      await c.expectStreamError('restricted-xml');
    });

    it('ends the stream with restricted-xml on a DTD', async () => {
      const c = await pool.connect();
      c.sendRaw(`<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY lol 'lol'>]>`);
      await c.expectHeader();
      await c.expectStreamError('restricted-xml');
    });

    it('ends the stream with restricted-xml on an undefined entity', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(`<message to='romeo@localhost'><body>&lol;</body></message>`);
      await c.expectStreamError('restricted-xml');
    });

    it('ends the stream with unsupported-stanza-type for an unknown top-level element', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(`<frobnicate xmlns='urn:example:frob'/>`);
      await c.expectStreamError('unsupported-stanza-type');
    });
  });

  describe('size limits', () => {
    it('ends the stream with policy-violation for a pre-auth stanza over 16 KiB', async () => {
      const c = await pool.connectSecure();
      c.sendRaw(
        `<iq type='get' id='big'><query xmlns='urn:example:big'>${'a'.repeat(17 * 1024)}</query></iq>`,
      );
      await c.expectStreamError('policy-violation');
    });

    it('accepts a pre-auth stanza just under 16 KiB', async () => {
      const c = await pool.connectSecure();
      const head = `<iq type='get' id='fits'><query xmlns='urn:example:big'>`;
      const tail = `</query></iq>`;
      c.sendRaw(head + 'a'.repeat(16 * 1024 - head.length - tail.length - 16) + tail);
      await c.expect(`<iq type='error' id='fits'><error><service-unavailable/></error></iq>`);
    });

    it('accepts a 17 KiB stanza after authentication (the larger limit applies)', async () => {
      const c = await pool.login('romeo', 'pw-romeo', { resource: 'big' });
      const body = 'b'.repeat(17 * 1024);
      c.send(`<message to='romeo@localhost/big' type='chat' id='bigmsg'><body>${body}</body></message>`);
      const got = await c.expect(`<message from='romeo@localhost/big' id='bigmsg'/>`);
      expect(got.getChildText('body')).to.equal(body);
    });
  });

  describe('size limit after authentication (limits.stanza_size: 32768)', () => {
    let small: TestServer;
    const smallPool = new ClientPool(() => ({ port: small.port }));
    before(async () => {
      small = await startTestServer({ yaml: 'limits: { stanza_size: 32768 }' });
      await small.addUser('romeo', 'pw-romeo');
    });
    afterEach(() => smallPool.destroyAll());
    after(() => small.stop());

    it('ends the stream with policy-violation for a stanza over the limit', async () => {
      const c = await smallPool.login('romeo', 'pw-romeo', { resource: 'big' });
      c.send(`<message to='romeo@localhost/big' id='huge'><body>${'h'.repeat(33 * 1024)}</body></message>`);
      await c.expectStreamError('policy-violation');
    });
  });

  describe('keepalives and closing', () => {
    it('accepts whitespace keepalives before and between stanzas', async () => {
      const c = await pool.connect();
      // Not before the header: an XML declaration must be the very first bytes.
      c.sendHeader();
      c.sendRaw('\n ');
      await c.expectHeader();
      await c.expectFeatures();
      c.sendRaw(' ');
      await c.startTls();
      c.sendRaw('\n\n');
      await c.authenticate('romeo', 'pw-romeo');
      await c.bind();
      c.sendRaw(' \n\t ');
      await ping(c);
      c.sendRaw(' ');
      await ping(c);
      await c.expectNothing(100);
    });

    it("answers the client's </stream:stream> with its own and closes the connection", async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw('</stream:stream>');
      await c.expect('</stream:stream>');
      await c.expectEof();
    });

    it('closes before authentication too', async () => {
      const c = await pool.connectSecure();
      c.sendRaw('</stream:stream>');
      await c.expectClosed();
    });

    it('unbinds a session that closed: its full JID is unavailable afterwards', async () => {
      const gone = await pool.login('romeo', 'pw-romeo', { resource: 'gone' });
      await gone.close();
      const other = await pool.login('romeo', 'pw-romeo', { resource: 'other' });
      other.send(`<iq type='get' id='g' to='romeo@localhost/gone'><ping xmlns='urn:xmpp:ping'/></iq>`);
      await other.expect(`<iq type='error' id='g'><error type='cancel'><service-unavailable/></error></iq>`);
    });

    it('discards plaintext pipelined after <starttls/> (no STARTTLS command injection)', async () => {
      const c = await pool.connect();
      await c.open();
      c.sendRaw(
        `<starttls xmlns='${NS_TLS}'/><iq type='get' id='injected' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`,
      );
      await c.expect(`<proceed xmlns='${NS_TLS}'/>`);
      await c.upgradeTls();
      // Pre-auth IQs are answered in order: had the injected one been
      // processed, its answer would come before this one.
      c.send(`<iq type='get' id='after-tls' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
      await c.expect(`<iq type='error' id='after-tls'/>`);
      await c.expectNothing(150);
    });
  });

  describe('handshake timeout (limits.handshake_timeout: 1)', () => {
    let quick: TestServer;
    const quickPool = new ClientPool(() => ({ port: quick.port }));

    before(async () => {
      quick = await startTestServer({ yaml: 'limits: { handshake_timeout: 1 }' });
      await quick.addUser('romeo', 'pw-romeo');
    });
    after(async () => {
      await quickPool.destroyAll();
      await quick.stop();
    });

    it('ends a stream that does not authenticate in time with connection-timeout', async () => {
      const c = await quickPool.connectSecure();
      const start = Date.now();
      await c.expectStreamError('connection-timeout', 3000);
      expect(Date.now() - start).to.be.within(500, 2500);
    });

    it('ends a stream that authenticates but never binds with connection-timeout', async () => {
      const c = await quickPool.connectSecure();
      await c.authenticate('romeo', 'pw-romeo');
      await c.expectStreamError('connection-timeout', 3000);
    });

    it('leaves a bound session alone after the timeout', async () => {
      const c = await quickPool.connect();
      await c.login('romeo', 'pw-romeo');
      await new Promise((r) => setTimeout(r, 1300));
      await ping(c);
    });
  });
});
