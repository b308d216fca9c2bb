// Hardening, over real TCP/TLS: restricted XML (DTDs, entity expansion,
// comments, processing instructions) and bad characters (invalid UTF-8,
// forbidden character references), before and after authentication, and the
// one thing that must keep working: a character split across two writes.
// Parser-level behaviour is in test/unit/xml-parser*.test.ts; the basic
// stream-level cases are in test/protocol/stream.test.ts. These tests add the
// positions and encodings those do not cover, and check after each attack
// that the server still serves a well-behaved client.
import { expect } from 'chai';
import { useServerAndPool } from '../helpers/fixtures.ts';
import type { ClientPool, XmppClient } from '../helpers/xmpp-client.ts';

const USERS = { romeo: 'pw-romeo', juliet: 'pw-juliet', nurse: 'pw-nurse' };

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function ping(c: XmppClient): Promise<void> {
  const id = c.nextId('ping');
  c.send(`<iq type='get' id='${id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
  await c.expect(`<iq type='result' id='${id}' from='localhost'/>`);
}

let bystanders = 0;
/** A well-behaved client logs in and pings: the server kept serving others. */
async function stillServes(pool: ClientPool): Promise<void> {
  const c = await pool.login('nurse', 'pw-nurse', { resource: `bystander${++bystanders}` });
  await ping(c);
}

const LAUGHS = [
  `<?xml version='1.0'?>`,
  `<!DOCTYPE lolz [`,
  `<!ENTITY lol "lol">`,
  ...Array.from({ length: 9 }, (_, i) => `<!ENTITY lol${i + 1} "${`&lol${i === 0 ? '' : i};`.repeat(10)}">`),
  `]>`,
].join('');

describe('hardening: restricted XML and bad characters', function () {
  const { pool } = useServerAndPool({ users: USERS });

  describe('restricted XML (RFC 6120 11.1)', () => {
    it('refuses a billion-laughs DTD before the stream header with restricted-xml, at once', async () => {
      const c = await pool.connect();
      const started = Date.now();
      c.sendRaw(
        `${LAUGHS}<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'><message>&lol9;</message>`,
      );
      await c.expectHeader();
      await c.expectStreamError('restricted-xml');
      expect(Date.now() - started, 'no expansion work was done').to.be.below(1000);
      await stillServes(pool);
    });

    it('refuses a DOCTYPE after the stream header (pre-auth) with restricted-xml', async () => {
      const c = await pool.connectSecure();
      c.sendRaw(`<!DOCTYPE stream:stream [<!ENTITY x 'y'>]>`);
      await c.expectStreamError('restricted-xml');
      await stillServes(pool);
    });

    it('refuses a billion-laughs DTD sent by an authenticated client with restricted-xml', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(
        LAUGHS.replace(`<?xml version='1.0'?>`, '') +
          `<message to='juliet@localhost'><body>&lol9;</body></message>`,
      );
      await c.expectStreamError('restricted-xml');
      await stillServes(pool);
    });

    it('refuses a DOCTYPE inside a stanza with restricted-xml', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(`<message to='juliet@localhost'><!DOCTYPE x><body>hi</body></message>`);
      await c.expectStreamError('restricted-xml');
      await stillServes(pool);
    });

    it('refuses an undefined entity in an attribute value with restricted-xml (pre-auth)', async () => {
      const c = await pool.connectSecure();
      c.sendRaw(`<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='&lol;'/>`);
      await c.expectStreamError('restricted-xml');
      await stillServes(pool);
    });

    it('refuses an undefined entity in an attribute value with restricted-xml (bound)', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(`<message to='juliet@localhost' id='&xxe;'><body>hi</body></message>`);
      await c.expectStreamError('restricted-xml');
      await stillServes(pool);
    });

    it('refuses an external entity reference spelled with a prefix-like name with restricted-xml', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      // "&amp" is a prefix of a predefined entity; the parser must not accept "&ampx;".
      c.sendRaw(`<message to='juliet@localhost'><body>&ampx;</body></message>`);
      await c.expectStreamError('restricted-xml');
      await stillServes(pool);
    });

    it('refuses a comment between stanzas after authentication with restricted-xml', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      await ping(c);
      c.sendRaw(`<!-- between stanzas -->`);
      await c.expectStreamError('restricted-xml');
      await stillServes(pool);
    });

    it('refuses a comment inside a pre-auth stanza with restricted-xml', async () => {
      const c = await pool.connectSecure();
      c.sendRaw(`<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'><!--x-->AGEAYg==</auth>`);
      await c.expectStreamError('restricted-xml');
      await stillServes(pool);
    });

    it('refuses a processing instruction inside a stanza after authentication with restricted-xml', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(`<message to='juliet@localhost'><?evil payload?><body>x</body></message>`);
      await c.expectStreamError('restricted-xml');
      await stillServes(pool);
    });

    it('refuses a second XML declaration mid-stream (a PI) after authentication with restricted-xml', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      await ping(c);
      c.sendRaw(`<?xml version='1.0'?>`);
      await c.expectStreamError('restricted-xml');
      await stillServes(pool);
    });

    it('delivers markup-like text inside CDATA as plain text (CDATA is not restricted)', async () => {
      const romeo = await pool.login('romeo', 'pw-romeo', { resource: 'cdata' });
      const juliet = await pool.login('juliet', 'pw-juliet', { resource: 'cdata' });
      romeo.sendRaw(
        `<message to='juliet@localhost/cdata' type='chat' id='cd'><body><![CDATA[<!-- &lol; <?pi?> -->]]></body></message>`,
      );
      const got = await juliet.expect(`<message from='romeo@localhost/cdata' id='cd'/>`);
      expect(got.getChildText('body')).to.equal('<!-- &lol; <?pi?> -->');
      await ping(romeo);
    });

    it('delivers a character reference to & literally, without expanding what follows', async () => {
      const romeo = await pool.login('romeo', 'pw-romeo', { resource: 'amp' });
      const juliet = await pool.login('juliet', 'pw-juliet', { resource: 'amp' });
      romeo.sendRaw(
        `<message to='juliet@localhost/amp' type='chat' id='amp'><body>&#38;lol9; &#x26;amp;</body></message>`,
      );
      const got = await juliet.expect(`<message from='romeo@localhost/amp' id='amp'/>`);
      expect(got.getChildText('body')).to.equal('&lol9; &amp;');
    });
  });

  describe('characters XML forbids', () => {
    const cases: { label: string; bytes: Buffer }[] = [
      { label: 'a 0xFF byte', bytes: Buffer.from([0xff]) },
      { label: 'an overlong encoding of "/" (C0 AF)', bytes: Buffer.from([0xc0, 0xaf]) },
      { label: 'an encoded surrogate (ED A0 80)', bytes: Buffer.from([0xed, 0xa0, 0x80]) },
      { label: 'a code point above U+10FFFF (F4 90 80 80)', bytes: Buffer.from([0xf4, 0x90, 0x80, 0x80]) },
      { label: 'a lone continuation byte (0x80)', bytes: Buffer.from([0x80]) },
      { label: 'a raw U+0001', bytes: Buffer.from([0x01]) },
      { label: 'a raw NUL', bytes: Buffer.from([0x00]) },
      { label: 'U+FFFE as UTF-8 (EF BF BE)', bytes: Buffer.from([0xef, 0xbf, 0xbe]) },
      { label: '&#0;', bytes: Buffer.from('&#0;') },
      { label: '&#x0;', bytes: Buffer.from('&#x0;') },
      { label: '&#1;', bytes: Buffer.from('&#1;') },
      { label: '&#xD800;', bytes: Buffer.from('&#xD800;') },
      { label: '&#xFFFF;', bytes: Buffer.from('&#xFFFF;') },
      { label: '&#x110000;', bytes: Buffer.from('&#x110000;') },
      { label: '&#99999999999999999999;', bytes: Buffer.from('&#99999999999999999999;') },
    ];
    for (const { label, bytes } of cases) {
      it(`ends a bound stream with not-well-formed for ${label} in a message body`, async () => {
        const c = await pool.login('romeo', 'pw-romeo');
        c.sendRaw(
          Buffer.concat([
            Buffer.from(`<message to='juliet@localhost' type='chat'><body>a`),
            bytes,
            Buffer.from(`b</body></message>`),
          ]),
        );
        await c.expectStreamError('not-well-formed');
        await stillServes(pool);
      });
    }

    it('ends a stream with not-well-formed for invalid UTF-8 in the stream header', async () => {
      const c = await pool.connect();
      c.sendRaw(
        Buffer.concat([
          Buffer.from(
            `<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='local`,
          ),
          Buffer.from([0xc3, 0x28]),
          Buffer.from(`host' version='1.0'>`),
        ]),
      );
      await c.expectHeader();
      await c.expectStreamError('not-well-formed');
      await stillServes(pool);
    });

    it('ends a stream with not-well-formed for &#0; in an attribute before authentication', async () => {
      const c = await pool.connectSecure();
      c.sendRaw(`<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PL&#0;AIN'/>`);
      await c.expectStreamError('not-well-formed');
      await stillServes(pool);
    });
  });

  describe('characters split across TCP writes', () => {
    const samples = [
      { label: 'a 2-byte character (é)', text: 'caf\u00e9' },
      { label: 'a 3-byte character (€)', text: '5 \u20ac' },
      { label: 'a 4-byte character (😀)', text: 'smile \u{1f600}' },
    ];
    for (const { label, text } of samples) {
      it(`delivers a body with ${label} split between two writes intact`, async () => {
        const romeo = await pool.login('romeo', 'pw-romeo', { resource: 'split' });
        const juliet = await pool.login('juliet', 'pw-juliet', { resource: 'split' });
        romeo.socket.setNoDelay(true);
        const bytes = Buffer.from(
          `<message to='juliet@localhost/split' type='chat' id='split'><body>${text}</body></message>`,
        );
        const last = Buffer.from(text).length;
        // Cut after the first byte of the last (multi-byte) character of the text.
        const charBytes = Buffer.from([...text].at(-1)!).length;
        const cut = bytes.indexOf(Buffer.from('</body>')) - charBytes + 1;
        expect(last).to.be.above(charBytes);
        romeo.sendRaw(bytes.subarray(0, cut));
        await sleep(60);
        romeo.sendRaw(bytes.subarray(cut));
        const got = await juliet.expect(`<message from='romeo@localhost/split' id='split'/>`);
        expect(got.getChildText('body')).to.equal(text);
      });
    }

    it('delivers a 4-byte character sent one byte per write, each in its own TLS record', async () => {
      const romeo = await pool.login('romeo', 'pw-romeo', { resource: 'bytes' });
      const juliet = await pool.login('juliet', 'pw-juliet', { resource: 'bytes' });
      romeo.socket.setNoDelay(true);
      const head = Buffer.from(`<message to='juliet@localhost/bytes' type='chat' id='b4'><body>`);
      const char = Buffer.from('\u{1d11e}'); // MUSICAL SYMBOL G CLEF
      const tail = Buffer.from(`</body></message>`);
      romeo.sendRaw(head);
      for (const byte of char) {
        await sleep(20);
        romeo.sendRaw(Buffer.from([byte]));
      }
      romeo.sendRaw(tail);
      const got = await juliet.expect(`<message from='romeo@localhost/bytes' id='b4'/>`);
      expect(got.getChildText('body')).to.equal('\u{1d11e}');
    });
  });
});
