// Hardening, over real TCP/TLS: identity (forged addresses, roster pushes
// from strangers), login abuse (stanzas before authentication, SASL replayed
// or malformed, the host changed at a restart) and stanza rules that stop
// loops (IQ validation, errors never answered with errors).
// Already covered elsewhere, and not repeated here: forged `from` on messages
// (messages.test.ts), forged carbons (carbons.test.ts), forged stanza-ids
// (mam.test.ts), STARTTLS command injection (stream.test.ts), PLAIN in the
// clear and channel-binding downgrade (tls.test.ts, sasl.test.ts), login and
// registration throttling (sasl.test.ts, register.test.ts), IQ with two
// children, no child or a bad type (iq.test.ts).
import { expect } from 'chai';
import { parseConfig } from '../../src/config/index.ts';
import { useServerAndPool } from '../helpers/fixtures.ts';
import { NS_SASL, NS_STANZAS, type ClientPool, type XmppClient } from '../helpers/xmpp-client.ts';

const USERS = { romeo: 'pw-romeo', juliet: 'pw-juliet', nurse: 'pw-nurse' };

async function ping(c: XmppClient): Promise<void> {
  const id = c.nextId('ping');
  c.send(`<iq type='get' id='${id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
  await c.expect(`<iq type='result' id='${id}' from='localhost'/>`);
}

let bystanders = 0;
async function stillServes(pool: ClientPool): Promise<void> {
  const c = await pool.login('nurse', 'pw-nurse', { resource: `bystander${++bystanders}` });
  await ping(c);
}

function restartClientParser(c: XmppClient): void {
  (c as unknown as { parser: { reset(): void } }).parser.reset();
}

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');

describe('hardening: identity, login abuse and stanza rules', function () {
  this.timeout(20_000);
  const { server, pool } = useServerAndPool({ users: USERS });

  describe('forged addresses', () => {
    const forgeries: [string, string][] = [
      ['the server itself', 'localhost'],
      ['another user on another domain', 'juliet@capulet.example/balcony'],
      ['a malformed JID', 'juliet@@localhost'],
      ['an empty from', ''],
    ];
    for (const kind of ['iq', 'presence', 'message'] as const) {
      for (const [label, from] of forgeries) {
        it(`ends the stream with invalid-from for a ${kind} claiming to come from ${label}`, async () => {
          const juliet = await pool.login('juliet', 'pw-juliet', { resource: 'forged' });
          const c = await pool.login('romeo', 'pw-romeo');
          const inner = kind === 'iq' ? `<ping xmlns='urn:xmpp:ping'/>` : '';
          const type = kind === 'iq' ? ` type='get' id='f'` : '';
          c.sendRaw(`<${kind} from='${from}' to='${juliet.jid!}'${type}>${inner}</${kind}>`);
          await c.expectStreamError('invalid-from');
          await juliet.expectNothing(150);
          await stillServes(pool);
        });
      }
    }

    it('accepts its own bare JID and a differently cased own JID, and stamps the full JID', async () => {
      const juliet = await pool.login('juliet', 'pw-juliet', { resource: 'case' });
      const c = await pool.login('romeo', 'pw-romeo', { resource: 'case' });
      c.sendRaw(
        `<message from='romeo@localhost' to='${juliet.jid!}' type='chat' id='b'><body>1</body></message>`,
      );
      c.sendRaw(
        `<message from='ROMEO@LOCALHOST/case' to='${juliet.jid!}' type='chat' id='u'><body>2</body></message>`,
      );
      await juliet.expect(`<message from='romeo@localhost/case' id='b'/>`);
      await juliet.expect(`<message from='romeo@localhost/case' id='u'/>`);
      await ping(c);
    });

    it("refuses a roster push sent to another user's bare JID (forbidden), and the victim sees nothing", async () => {
      const victim = await pool.login('juliet', 'pw-juliet', { resource: 'roster' });
      const c = await pool.login('romeo', 'pw-romeo');
      c.send(
        `<iq type='set' id='push' to='juliet@localhost'><query xmlns='jabber:iq:roster'><item jid='romeo@localhost' subscription='both'/></query></iq>`,
      );
      await c.expect(
        `<iq type='error' id='push'><error type='auth'><forbidden xmlns='${NS_STANZAS}'/></error></iq>`,
      );
      await victim.expectNothing(200);
      // The victim's roster is unchanged.
      victim.send(`<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>`);
      const roster = await victim.expect(`<iq type='result' id='r'/>`);
      expect(roster.getChild('query')?.getChildren('item') ?? []).to.have.length(0);
    });

    it('a roster push to a full JID arrives only with the sender stamped, so the client can ignore it', async () => {
      // RFC 6121 2.1.6: a client ignores a push whose from is not its own
      // account. The server's part is that the from cannot be forged.
      const victim = await pool.login('juliet', 'pw-juliet', { resource: 'roster2' });
      const c = await pool.login('romeo', 'pw-romeo', { resource: 'pusher' });
      c.send(
        `<iq type='set' id='push2' to='${victim.jid!}'><query xmlns='jabber:iq:roster'><item jid='romeo@localhost' subscription='both'/></query></iq>`,
      );
      const got = await victim.expect(`<iq type='set' id='push2'/>`);
      expect(got.attrs.from).to.equal('romeo@localhost/pusher');
      victim.send(`<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>`);
      const roster = await victim.expect(`<iq type='result' id='r2'/>`);
      expect(roster.getChild('query')?.getChildren('item') ?? []).to.have.length(0);
    });
  });

  describe('before authentication', () => {
    for (const stanza of [
      `<message to='juliet@localhost' type='chat'><body>early</body></message>`,
      `<presence/>`,
    ]) {
      it(`ends the stream with not-authorized for ${stanza.slice(0, 9)}... after STARTTLS, before SASL`, async () => {
        const juliet = await pool.login('juliet', 'pw-juliet', { resource: 'early' });
        const c = await pool.connectSecure();
        c.sendRaw(stanza);
        await c.expectStreamError('not-authorized');
        await juliet.expectNothing(150);
        await stillServes(pool);
      });
    }

    it('answers an IQ to another user before authentication with an error, without routing it', async () => {
      const juliet = await pool.login('juliet', 'pw-juliet', { resource: 'early-iq' });
      const c = await pool.connectSecure();
      c.send(`<iq type='get' id='pre' to='${juliet.jid!}'><ping xmlns='urn:xmpp:ping'/></iq>`);
      await c.expect(`<iq type='error' id='pre'><error><service-unavailable/></error></iq>`);
      await juliet.expectNothing(150);
      await c.authenticate('romeo', 'pw-romeo');
    });
  });

  describe('SASL abuse', () => {
    it('a second <auth> after a successful login and restart ends the stream', async () => {
      const c = await pool.connectSecure();
      await c.authenticate('romeo', 'pw-romeo');
      c.sendRaw(`<auth xmlns='${NS_SASL}' mechanism='PLAIN'>${b64('\0juliet\0pw-juliet')}</auth>`);
      await c.expectStreamError('unsupported-stanza-type');
      await stillServes(pool);
    });

    it('a second <auth> after binding ends the stream, and the session keeps its identity', async () => {
      const c = await pool.login('romeo', 'pw-romeo', { resource: 'twice' });
      c.sendRaw(`<auth xmlns='${NS_SASL}' mechanism='PLAIN'>${b64('\0juliet\0pw-juliet')}</auth>`);
      await c.expectStreamError('unsupported-stanza-type');
      await stillServes(pool);
    });

    it('an <auth> pipelined right after <success/>, without a restart, is not a stream header', async () => {
      const c = await pool.connectSecure();
      c.sendRaw(`<auth xmlns='${NS_SASL}' mechanism='PLAIN'>${b64('\0romeo\0pw-romeo')}</auth>`);
      await c.expect(`<success xmlns='${NS_SASL}'/>`);
      restartClientParser(c);
      c.sendRaw(`<auth xmlns='${NS_SASL}' mechanism='PLAIN'>${b64('\0juliet\0pw-juliet')}</auth>`);
      await c.expectHeader();
      await c.expectStreamError('invalid-namespace');
      await stillServes(pool);
    });

    for (const [label, payload] of [
      ['garbage', b64('this is not scram')],
      ['a GS2 header without a username', b64('n,,r=abcdef')],
      ['a NUL in the username', b64('n,,n=ro\0meo,r=abcdef')],
      ['an unknown GS2 flag', b64('x,,n=romeo,r=abcdef')],
    ] as const) {
      it(`SCRAM client-first with ${label} fails with <failure/>, and the stream stays usable`, async () => {
        const c = await pool.connectSecure();
        c.sendRaw(`<auth xmlns='${NS_SASL}' mechanism='SCRAM-SHA-256'>${payload}</auth>`);
        await c.expect(`<failure xmlns='${NS_SASL}'/>`);
        await c.authenticate('romeo', 'pw-romeo');
        await stillServes(pool);
      });
    }

    it('SCRAM client-final with a nonce that is not the server nonce fails with <failure/>', async () => {
      const c = await pool.connectSecure();
      c.sendRaw(
        `<auth xmlns='${NS_SASL}' mechanism='SCRAM-SHA-256'>${b64('n,,n=romeo,r=clientnonce1')}</auth>`,
      );
      const challenge = await c.expect(`<challenge xmlns='${NS_SASL}'/>`);
      const fields = Buffer.from(challenge.getText(), 'base64').toString();
      expect(fields).to.match(/^r=clientnonce1/);
      c.sendRaw(
        `<response xmlns='${NS_SASL}'>${b64(`c=biws,r=clientnonce1forged,p=${b64(Buffer.alloc(32))}`)}</response>`,
      );
      await c.expect(`<failure xmlns='${NS_SASL}'/>`);
      await c.authenticate('romeo', 'pw-romeo');
    });

    it('SCRAM client-final that is garbage fails with <failure/>', async () => {
      const c = await pool.connectSecure();
      c.sendRaw(
        `<auth xmlns='${NS_SASL}' mechanism='SCRAM-SHA-256'>${b64('n,,n=romeo,r=clientnonce2')}</auth>`,
      );
      await c.expect(`<challenge xmlns='${NS_SASL}'/>`);
      c.sendRaw(`<response xmlns='${NS_SASL}'>${b64('\u00ff\u0000garbage')}</response>`);
      await c.expect(`<failure xmlns='${NS_SASL}'/>`);
      await stillServes(pool);
    });

    it('a 12 KiB SASL payload fails (failure or policy-violation), and others log in', async () => {
      const c = await pool.connectSecure();
      c.sendRaw(
        `<auth xmlns='${NS_SASL}' mechanism='PLAIN'>${b64('\0romeo\0' + 'p'.repeat(9 * 1024))}</auth>`,
      );
      const event = await c.next();
      expect(event.kind).to.equal('element');
      if (event.kind !== 'element') return;
      const isFailure = event.element.name === 'failure';
      const isPolicy =
        event.element.name === 'stream:error' && event.element.getChild('policy-violation') !== undefined;
      expect(isFailure || isPolicy, event.element.toString()).to.equal(true);
      await stillServes(pool);
    });

    it('a 20 KiB SASL payload (over the pre-auth limit) gets policy-violation', async () => {
      const c = await pool.connectSecure();
      c.sendRaw(
        `<auth xmlns='${NS_SASL}' mechanism='PLAIN'>${b64('\0romeo\0' + 'p'.repeat(15 * 1024))}</auth>`,
      );
      await c.expectStreamError('policy-violation');
      await stillServes(pool);
    });
  });

  describe('the host changed at a restart (two hosts served)', () => {
    before(async () => {
      const next = parseConfig(
        [
          'hosts: [{ domain: localhost }, { domain: verona.localhost }]',
          'storage: { driver: memory }',
          `certs: { dir: ${server.server.config.certs.dir} }`,
        ].join('\n'),
        { env: {} },
      );
      next.limits = server.server.config.limits;
      await server.server.reload(next);
      await server.server.accounts.create('verona.localhost', 'romeo', 'pw-verona');
    });

    it('refuses a restart after STARTTLS that names the other host with host-unknown', async () => {
      // The first header names localhost; the TLS restart names verona.localhost.
      const c = await pool.connect({ domain: 'verona.localhost' });
      await c.open({ to: 'localhost' });
      const err = await c.startTls().then(
        () => null,
        (e: unknown) => e,
      );
      expect(String(err), 'the restarted stream must not get features').to.match(/<host-unknown /);
      await c.expectClosed();
      // Both hosts still serve well-behaved clients.
      const v = await pool.connectSecure({ domain: 'verona.localhost' });
      await v.authenticate('romeo', 'pw-verona');
      await stillServes(pool);
    });

    it('refuses a restart after SASL that names the other host with host-unknown', async () => {
      const c = await pool.connectSecure();
      c.sendRaw(`<auth xmlns='${NS_SASL}' mechanism='PLAIN'>${b64('\0romeo\0pw-romeo')}</auth>`);
      await c.expect(`<success xmlns='${NS_SASL}'/>`);
      restartClientParser(c);
      c.sendHeader({ to: 'verona.localhost' });
      await c.expectHeader();
      await c.expectStreamError('host-unknown');
      await stillServes(pool);
    });
  });

  describe('IQ rules and error loops', () => {
    it('answers an IQ without an id with bad-request', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.send(`<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
      await c.expect(
        `<iq type='error'><error type='modify'><bad-request xmlns='${NS_STANZAS}'/></error></iq>`,
      );
      await ping(c);
    });

    it('answers an IQ result with two children with bad-request', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.send(`<iq type='result' id='r2' to='localhost'><a xmlns='urn:x'/><b xmlns='urn:x'/></iq>`);
      await c.expect(`<iq type='error' id='r2'><error><bad-request/></error></iq>`);
      await ping(c);
    });

    it('answers an IQ without a type with bad-request', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.send(`<iq id='nt' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
      await c.expect(`<iq type='error' id='nt'><error><bad-request/></error></iq>`);
      await ping(c);
    });

    for (const [label, stanza] of [
      [
        'a message error to a user that does not exist',
        `<message type='error' to='nobody@localhost' id='e1'><error type='cancel'><item-not-found xmlns='${NS_STANZAS}'/></error></message>`,
      ],
      [
        'a message error to an offline resource',
        `<message type='error' to='juliet@localhost/gone' id='e2'><error type='cancel'><item-not-found xmlns='${NS_STANZAS}'/></error></message>`,
      ],
      [
        'a message error to a domain not served',
        `<message type='error' to='juliet@capulet.example' id='e3'><error type='cancel'><item-not-found xmlns='${NS_STANZAS}'/></error></message>`,
      ],
      [
        'a message error to the server',
        `<message type='error' to='localhost' id='e4'><error type='cancel'><item-not-found xmlns='${NS_STANZAS}'/></error></message>`,
      ],
      [
        'an IQ error to an offline resource',
        `<iq type='error' to='juliet@localhost/gone' id='e5'><error type='cancel'><item-not-found xmlns='${NS_STANZAS}'/></error></iq>`,
      ],
      [
        'an IQ error to the server with an unknown id',
        `<iq type='error' to='localhost' id='e6'><error type='cancel'><item-not-found xmlns='${NS_STANZAS}'/></error></iq>`,
      ],
      [
        'a presence error to a user that does not exist',
        `<presence type='error' to='nobody@localhost' id='e7'><error type='cancel'><item-not-found xmlns='${NS_STANZAS}'/></error></presence>`,
      ],
    ] as const) {
      it(`never answers ${label}`, async () => {
        const c = await pool.login('romeo', 'pw-romeo');
        c.send(stanza);
        await c.expectNothing(250);
        await ping(c);
      });
    }

    it('two clients bouncing errors at each other: only what they send is delivered', async () => {
      const a = await pool.login('romeo', 'pw-romeo', { resource: 'loop' });
      const b = await pool.login('juliet', 'pw-juliet', { resource: 'loop' });
      const err = (to: string, id: string) =>
        `<message type='error' to='${to}' id='${id}'><error type='cancel'><service-unavailable xmlns='${NS_STANZAS}'/></error></message>`;
      for (let i = 0; i < 5; i++) {
        a.send(err(b.jid!, `ab${i}`));
        await b.expect(`<message type='error' from='${a.jid!}' id='ab${i}'/>`);
        b.send(err(a.jid!, `ba${i}`));
        await a.expect(`<message type='error' from='${b.jid!}' id='ba${i}'/>`);
      }
      await a.expectNothing(150);
      await b.expectNothing(50);
      await ping(a);
      await ping(b);
    });
  });
});
