// Stream management (XEP-0198, urn:xmpp:sm:3) with raw clients against a real
// server: acknowledgements, resumption after a dropped connection, and what
// happens to stanzas a client never acknowledged (offline storage, errors).
import { rmSync } from 'node:fs';
import { expect } from 'chai';
import type { Element } from 'ltx';
import pino from 'pino';
import { Server } from '../../src/server.ts';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { NS_STANZAS, NS_STREAM_ERRORS, XmppClient } from '../helpers/xmpp-client.ts';
import {
  authenticateToResume,
  drain,
  enableResume,
  isAckRequest,
  nextElement,
  SM,
} from '../helpers/smacks.ts';

const NS_DELAY = 'urn:xmpp:delay';
const PASSWORD = 'smacks-test-pw';
const MODULES = 'modules: [disco, ping, roster, presence, offline, smacks]';

interface SmOptions {
  resume_timeout: number;
  max_unacked: number;
  request_ack_after: number;
  request_ack_delay_ms: number;
}

function smYaml(o: SmOptions): string {
  const opts = Object.entries(o)
    .map(([k, v]) => `${k}: ${v}`)
    .join(', ');
  return `${MODULES}\nmodule_options:\n  smacks: { ${opts} }`;
}

/** Resumption window of 2 s; the server never asks for acks on its own. */
const QUIET = smYaml({
  resume_timeout: 2,
  max_unacked: 500,
  request_ack_after: 1000,
  request_ack_delay_ms: 60_000,
});
/** Asks for an ack after 3 stanzas or 400 ms; closes a stream that owes more than 10. */
const EAGER = smYaml({ resume_timeout: 2, max_unacked: 10, request_ack_after: 3, request_ack_delay_ms: 400 });

let seq = 0;
const clients: XmppClient[] = [];

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function newUser(server: TestServer, prefix: string): Promise<string> {
  const name = `${prefix}${++seq}`;
  await server.addUser(name, PASSWORD);
  return name;
}

async function connect(port: number, name: string): Promise<XmppClient> {
  const c = await XmppClient.connect({ port, name });
  clients.push(c);
  return c;
}

async function login(port: number, user: string, resource: string): Promise<XmppClient> {
  const c = await connect(port, `${user}/${resource}`);
  await c.login(user, PASSWORD, { resource });
  return c;
}

/** Logs in, sends available presence and enables resumable stream management. */
async function smLogin(port: number, user: string, resource: string): Promise<{ c: XmppClient; id: string }> {
  const c = await login(port, user, resource);
  await available(c);
  const id = await enableResume(c);
  return { c, id };
}

/** Sends broadcast presence and waits for the server's reflection of it. */
async function available(c: XmppClient): Promise<void> {
  c.send(`<presence/>`);
  await c.expect(`<presence from='${c.jid}' to='${c.jid}'/>`);
}

/** A new connection, authenticated as `user` but not bound, ready to resume. */
async function authenticated(port: number, user: string): Promise<XmppClient> {
  return authenticateToResume(await connect(port, `${user} (new connection)`), user, PASSWORD);
}

function chat(to: string, id: string, body = id): string {
  return `<message to='${to}' type='chat' id='${id}'><body>${body}</body></message>`;
}

/** Sends messages and waits until the server has routed them (a ping round trip). */
async function sendAll(c: XmppClient, to: string, ids: string[]): Promise<void> {
  for (const id of ids) c.send(chat(to, id));
  const ping = c.nextId('ping');
  c.send(`<iq type='get' id='${ping}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
  await c.expect(`<iq type='result' id='${ping}'/>`);
}

function messageIds(elements: Element[]): string[] {
  return elements.filter((e) => e.name === 'message').map((e) => e.attrs.id as string);
}

function delays(message: Element): Element[] {
  return message.getChildren('delay', NS_DELAY);
}

/** The stamp of the first XEP-0203 delay of a message, in ms since the epoch. */
function stampOf(message: Element): number {
  const stamp = delays(message)[0]?.attrs.stamp as string | undefined;
  expect(stamp, `delay stamp on ${message.toString()}`).to.be.a('string');
  expect(stamp).to.match(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
  return Date.parse(stamp!);
}

/** Reads `ids.length` messages (ack requests ignored) and checks their ids and bodies, in order. */
async function expectMessages(c: XmppClient, from: string, ids: string[]): Promise<Element[]> {
  const got: Element[] = [];
  for (const id of ids) {
    const e = await nextElement(c, 3000);
    const where = `${c.name} expected message ${id}, got ${e.toString()}`;
    expect(e.name, where).to.equal('message');
    expect(e.attrs.id, where).to.equal(id);
    expect(e.attrs.from, where).to.equal(from);
    expect(e.getChildText('body'), where).to.equal(id);
    got.push(e);
  }
  return got;
}

/** Logs in afresh, becomes available and returns the messages delivered from offline storage. */
async function offlineMessages(port: number, user: string, resource: string): Promise<Element[]> {
  const c = await login(port, user, resource);
  await available(c);
  return (await drain(c)).filter((e) => e.name === 'message');
}

describe('protocol: stream management (XEP-0198)', function () {
  this.timeout(20_000);
  let server: TestServer;
  let eager: TestServer;

  before(async () => {
    server = await startTestServer({ yaml: QUIET });
    eager = await startTestServer({ yaml: EAGER });
  });
  after(async () => {
    await server.stop();
    await eager.stop();
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.shutdown()));
  });

  describe('negotiation', () => {
    it('offers <sm/> only after authentication', async () => {
      const user = await newUser(server, 'feat');
      const c = await connect(server.port, user);
      const plain = await c.open();
      expect(plain.getChild('sm', SM), 'sm offered before TLS').to.equal(undefined);
      const secure = await c.startTls();
      expect(secure.getChild('sm', SM), 'sm offered before authentication').to.equal(undefined);
      const afterAuth = await c.authenticate(user, PASSWORD);
      expect(afterAuth.getChild('sm', SM), 'sm not offered after authentication').to.not.equal(undefined);
      expect(afterAuth.getChild('bind'), 'bind offered with sm').to.not.equal(undefined);
    });

    it('refuses <enable/> before resource binding with <unexpected-request/>, and allows it after', async () => {
      const user = await newUser(server, 'early');
      const c = await authenticated(server.port, user);
      c.send(`<enable xmlns='${SM}' resume='true'/>`);
      await c.expect(`<failed xmlns='${SM}'><unexpected-request xmlns='${NS_STANZAS}'/></failed>`);
      // The stream is still usable: bind, then enabling works.
      await c.bind('late');
      await enableResume(c);
    });

    it('refuses a second <enable/> on the same session', async () => {
      const user = await newUser(server, 'twice');
      const c = await login(server.port, user, 'r');
      await enableResume(c);
      c.send(`<enable xmlns='${SM}' resume='true'/>`);
      await c.expect(`<failed xmlns='${SM}'><unexpected-request xmlns='${NS_STANZAS}'/></failed>`);
      // The first enable is still in force: acks keep counting from it.
      c.send(`<r xmlns='${SM}'/>`);
      await c.expect(`<a xmlns='${SM}' h='0'/>`);
    });

    it('enables stream management without resumption: <enabled/> carries no id', async () => {
      const user = await newUser(server, 'noresume');
      const c = await login(server.port, user, 'r');
      c.send(`<enable xmlns='${SM}'/>`);
      await c.expect(`<enabled xmlns='${SM}' strict='true'/>`);
      c.send(`<r xmlns='${SM}'/>`);
      await c.expect(`<a xmlns='${SM}' h='0'/>`);
    });

    it('grants the configured resumption window when the client asks for more', async () => {
      const user = await newUser(server, 'max');
      const c = await login(server.port, user, 'r');
      c.send(`<enable xmlns='${SM}' resume='true' max='3600'/>`);
      await c.expect(`<enabled xmlns='${SM}' id='{any}' resume='true' max='2'/>`);
    });
  });

  describe('acknowledgements', () => {
    it('answers <r/> with <a h/> counting the stanzas the client sent since <enable/>', async () => {
      const user = await newUser(server, 'count');
      const other = await newUser(server, 'sink');
      const c = await login(server.port, user, 'r');
      // Stanzas before <enable/> do not count.
      c.send(`<iq type='get' id='before' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
      await c.expect(`<iq type='result' id='before'/>`);
      await enableResume(c);
      c.send(`<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
      c.send(`<iq type='get' id='p2' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
      c.send(chat(`${other}@localhost`, 'm1'));
      await c.expect(`<iq type='result' id='p1'/>`);
      await c.expect(`<iq type='result' id='p2'/>`);
      c.send(`<r xmlns='${SM}'/>`);
      await c.expect(`<a xmlns='${SM}' h='3' strict='true'/>`);
      c.send(chat(`${other}@localhost`, 'm2'));
      c.send(`<r xmlns='${SM}'/>`);
      await c.expect(`<a xmlns='${SM}' h='4' strict='true'/>`);
    });

    it('requests an ack after request_ack_after stanzas, and after request_ack_delay_ms', async () => {
      const user = await newUser(eager, 'asked');
      const sender = await newUser(eager, 'sender');
      const { c } = await smLogin(eager.port, user, 'r');
      const s = await login(eager.port, sender, 's');
      await sendAll(s, c.jid!, ['m1', 'm2', 'm3']);
      await c.expect(`<message id='m1'/>`);
      await c.expect(`<message id='m2'/>`);
      await c.expect(`<message id='m3'/>`);
      await c.expect(`<r xmlns='${SM}'/>`);
      c.send(`<a xmlns='${SM}' h='3'/>`);
      // Two more: fewer than request_ack_after, so the request comes from the timer.
      const sentAt = Date.now();
      await sendAll(s, c.jid!, ['m4', 'm5']);
      await c.expect(`<message id='m4'/>`);
      await c.expect(`<message id='m5'/>`);
      await c.expect(`<r xmlns='${SM}'/>`, 2000);
      expect(Date.now() - sentAt, 'ack requested before request_ack_delay_ms').to.be.at.least(350);
      c.send(`<a xmlns='${SM}' h='5'/>`);
      // Everything acknowledged: no further requests.
      await c.expectNothing(700);
    });

    it('keeps exactly the unacknowledged stanzas: a resumption resends those, in order', async () => {
      const user = await newUser(server, 'partial');
      const sender = await newUser(server, 'sender');
      const { c, id } = await smLogin(server.port, user, 'r');
      const s = await login(server.port, sender, 's');
      const ids = ['m1', 'm2', 'm3', 'm4', 'm5'];
      await sendAll(s, c.jid!, ids);
      await expectMessages(c, s.jid!, ids);
      c.send(`<a xmlns='${SM}' h='2'/>`);
      c.send(`<r xmlns='${SM}'/>`);
      await c.expect(`<a xmlns='${SM}' h='0'/>`);
      c.destroy();

      const r = await authenticated(server.port, user);
      r.send(`<resume xmlns='${SM}' previd='${id}' h='2'/>`);
      await r.expect(`<resumed xmlns='${SM}' previd='${id}' h='0'/>`);
      await expectMessages(r, s.jid!, ['m3', 'm4', 'm5']);
      expect(await drain(r), 'stanzas resent beyond the unacknowledged ones').to.deep.equal([]);
      expect(await drain(s), 'the sender got something back').to.deep.equal([]);
    });

    it('ends the stream with undefined-condition and <handled-count-too-high/> when the client acks too much', async () => {
      const user = await newUser(server, 'greedy');
      const sender = await newUser(server, 'sender');
      const { c } = await smLogin(server.port, user, 'r');
      const s = await login(server.port, sender, 's');
      await sendAll(s, c.jid!, ['m1', 'm2']);
      await expectMessages(c, s.jid!, ['m1', 'm2']);
      c.send(`<a xmlns='${SM}' h='5'/>`);
      const error = await c.expectStreamError('undefined-condition');
      const detail = error.getChild('handled-count-too-high', SM);
      expect(detail, `no <handled-count-too-high/> in ${error.toString()}`).to.not.equal(undefined);
      expect(detail!.attrs).to.include({ h: '5', 'send-count': '2' });
      // The two messages were never acknowledged: they wait in offline storage.
      const stored = await offlineMessages(server.port, user, 'again');
      expect(messageIds(stored)).to.deep.equal(['m1', 'm2']);
    });
  });

  describe('resumption', () => {
    it('resumes after the TCP connection was cut, delivering what arrived meanwhile, in order, with a delay', async () => {
      const user = await newUser(server, 'cut');
      const sender = await newUser(server, 'sender');
      const { c, id } = await smLogin(server.port, user, 'phone');
      const fullJid = c.jid!;
      const s = await login(server.port, sender, 's');
      c.destroy(); // no closing tag: the network went away
      await sleep(100);
      const before = Date.now();
      await sendAll(s, fullJid, ['away1', 'away2']);
      await sleep(1200);
      const r = await authenticated(server.port, user);
      await sendAll(s, fullJid, ['away3']);
      r.send(`<resume xmlns='${SM}' previd='${id}' h='0'/>`);
      await r.expect(`<resumed xmlns='${SM}' previd='${id}' h='0'/>`);
      const [m1, m2, m3] = await expectMessages(r, s.jid!, ['away1', 'away2', 'away3']);
      for (const m of [m1!, m2!]) {
        const stamp = stampOf(m);
        expect(stamp, 'delay stamp before the message was sent').to.be.at.least(before - 1000);
        expect(stamp, 'delay stamp is not when the message first arrived').to.be.below(before + 1000);
      }
      expect(delays(m3!), 'a message held for less than a second got a delay').to.deep.equal([]);
      expect(await drain(r)).to.deep.equal([]);
      // The resumed session is the same one: the full JID is unchanged and works.
      await sendAll(s, fullJid, ['live']);
      await expectMessages(r, s.jid!, ['live']);
      expect(await drain(s), 'the sender got an error').to.deep.equal([]);
    });

    it('stamps a held message although its sender put a <delay/> of its own in it', async () => {
      const user = await newUser(server, 'forgeddelay');
      const sender = await newUser(server, 'sender');
      const { c, id } = await smLogin(server.port, user, 'phone');
      const fullJid = c.jid!;
      const s = await login(server.port, sender, 's');
      c.destroy();
      await sleep(100);
      const before = Date.now();
      s.send(
        `<message to='${fullJid}' type='chat' id='forged'><body>forged</body>` +
          `<delay xmlns='${NS_DELAY}' from='elsewhere.example' stamp='2000-01-01T00:00:00Z'/></message>`,
      );
      await sendAll(s, fullJid, []);
      await sleep(1200);
      const r = await authenticated(server.port, user);
      r.send(`<resume xmlns='${SM}' previd='${id}' h='0'/>`);
      await r.expect(`<resumed xmlns='${SM}' previd='${id}' h='0'/>`);
      const [m] = await expectMessages(r, s.jid!, ['forged']);
      const ours = delays(m!).filter((d) => d.attrs.from === 'localhost');
      expect(ours, 'the server stamped how long it held the message').to.have.length(1);
      expect(Date.parse(ours[0]!.attrs.stamp as string)).to.be.at.least(before - 1000);
    });

    it('keeps counting h across a resumption', async () => {
      const user = await newUser(server, 'hcount');
      const sender = await newUser(server, 'sender');
      const { c, id } = await smLogin(server.port, user, 'r');
      const s = await login(server.port, sender, 's');
      for (const p of ['p1', 'p2', 'p3'])
        c.send(`<iq type='get' id='${p}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
      for (const p of ['p1', 'p2', 'p3']) await c.expect(`<iq type='result' id='${p}'/>`);
      c.destroy();

      // The client handled the three results: nothing is resent; the server handled three pings.
      const r = await authenticated(server.port, user);
      r.send(`<resume xmlns='${SM}' previd='${id}' h='3'/>`);
      await r.expect(`<resumed xmlns='${SM}' previd='${id}' h='3'/>`);
      expect(await drain(r), 'acknowledged stanzas were resent').to.deep.equal([]);
      r.send(`<iq type='get' id='p4' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
      await r.expect(`<iq type='result' id='p4'/>`);
      r.send(`<r xmlns='${SM}'/>`);
      await r.expect(`<a xmlns='${SM}' h='4'/>`);
      // The server's count goes on too: 3 results + 1 result + 1 message = 5.
      await sendAll(s, c.jid!, ['m1']);
      await expectMessages(r, s.jid!, ['m1']);
      r.send(`<a xmlns='${SM}' h='5'/>`);
      await r.expectNothing(300);
      // And a second drop, resumed with the right h, resends nothing.
      r.destroy();
      const r2 = await authenticated(server.port, user);
      r2.send(`<resume xmlns='${SM}' previd='${id}' h='5'/>`);
      await r2.expect(`<resumed xmlns='${SM}' previd='${id}' h='4'/>`);
      expect(await drain(r2)).to.deep.equal([]);
    });

    it('takes over a session whose old connection still looks alive (the network changed)', async () => {
      const user = await newUser(server, 'roam');
      const sender = await newUser(server, 'sender');
      const { c, id } = await smLogin(server.port, user, 'r');
      const s = await login(server.port, sender, 's');
      await sendAll(s, c.jid!, ['m1', 'm2']);
      await expectMessages(c, s.jid!, ['m1', 'm2']);
      c.send(`<a xmlns='${SM}' h='1'/>`);
      // The old TCP connection is still open as far as the server knows.
      const r = await authenticated(server.port, user);
      r.send(`<resume xmlns='${SM}' previd='${id}' h='1'/>`);
      await r.expect(`<resumed xmlns='${SM}' previd='${id}' h='0'/>`);
      await expectMessages(r, s.jid!, ['m2']);
      await c.expectStreamError('conflict');
      // The session lives on over the new connection.
      await sendAll(s, c.jid!, ['m3']);
      await expectMessages(r, s.jid!, ['m3']);
      r.send(`<r xmlns='${SM}'/>`);
      await r.expect(`<a xmlns='${SM}' h='0'/>`);
      expect(await drain(s), 'the sender got an error').to.deep.equal([]);
    });

    it('answers an unknown previd with <item-not-found/>, after which the client can bind', async () => {
      const user = await newUser(server, 'wrongid');
      const r = await authenticated(server.port, user);
      r.send(`<resume xmlns='${SM}' previd='no-such-session' h='0'/>`);
      await r.expect(`<failed xmlns='${SM}'><item-not-found xmlns='${NS_STANZAS}'/></failed>`);
      const jid = await r.bind('fresh');
      expect(jid).to.equal(`${user}@localhost/fresh`);
      await available(r);
      await enableResume(r);
    });

    it('refuses a resumption after the window expired; the unacknowledged messages wait in offline storage', async () => {
      const user = await newUser(server, 'late');
      const sender = await newUser(server, 'sender');
      const { c, id } = await smLogin(server.port, user, 'r');
      const s = await login(server.port, sender, 's');
      const sentAt = Date.now();
      await sendAll(s, c.jid!, ['m1', 'm2']);
      await expectMessages(c, s.jid!, ['m1', 'm2']);
      c.send(`<a xmlns='${SM}' h='1'/>`); // m1 handled, m2 not
      await sleep(50);
      c.destroy();
      await sendAll(s, c.jid!, ['m3']); // queued for the held session
      await sleep(2600); // resume_timeout is 2 s
      await sendAll(s, `${user}@localhost`, ['m4']); // the user is offline now

      const r = await authenticated(server.port, user);
      r.send(`<resume xmlns='${SM}' previd='${id}' h='1'/>`);
      await r.expect(`<failed xmlns='${SM}'><item-not-found xmlns='${NS_STANZAS}'/></failed>`);
      await r.bind('fresh');
      await available(r);
      const stored = (await drain(r)).filter((e) => e.name === 'message');
      // No loss (m2, m3 from the expired session, m4 sent later), no duplicate (m1 was acked).
      expect(messageIds(stored)).to.deep.equal(['m2', 'm3', 'm4']);
      for (const m of stored) {
        const stamp = stampOf(m);
        expect(stamp, `delay stamp of ${m.attrs.id as string}`).to.be.within(sentAt - 1000, Date.now());
      }
      // The stamp of a message the session held says when it first arrived, not when it was stored.
      expect(stampOf(stored[0]!), 'm2 stamped with its storage time').to.be.below(sentAt + 1500);
      expect(await drain(s), 'the sender got an error').to.deep.equal([]);
    });

    it('stamps a message rescued from an expired session once, with the time it first arrived', async () => {
      const user = await newUser(server, 'stamp');
      const sender = await newUser(server, 'sender');
      const { c } = await smLogin(server.port, user, 'r');
      const s = await login(server.port, sender, 's');
      c.destroy();
      await sleep(100);
      const sentAt = Date.now();
      await sendAll(s, c.jid!, ['held']);
      await sleep(2600); // held past the 2 s window, then stored offline
      const [m] = await offlineMessages(server.port, user, 'back');
      expect(m?.attrs.id).to.equal('held');
      // Two <delay/> from the same server with different stamps leave the
      // client guessing when the message was sent (XEP-0203 section 4).
      expect(
        delays(m!).map((d) => d.toString()),
        'delay elements',
      ).to.have.length(1);
      expect(stampOf(m!)).to.be.within(sentAt - 1000, sentAt + 1000);
    });

    it('does not let another account take a session, even with the right previd', async () => {
      const owner = await newUser(server, 'owner');
      const thief = await newUser(server, 'thief');
      const sender = await newUser(server, 'sender');
      const { c, id } = await smLogin(server.port, owner, 'r');
      const s = await login(server.port, sender, 's');
      c.destroy();
      await sendAll(s, c.jid!, ['secret']);

      const t = await authenticated(server.port, thief);
      t.send(`<resume xmlns='${SM}' previd='${id}' h='0'/>`);
      await t.expect(`<failed xmlns='${SM}'><item-not-found xmlns='${NS_STANZAS}'/></failed>`);
      expect(await drain(t), 'the thief received something').to.deep.equal([]);
      // An h too high must not tell the thief that the id exists either.
      t.send(`<resume xmlns='${SM}' previd='${id}' h='99'/>`);
      await t.expect(`<failed xmlns='${SM}'><item-not-found xmlns='${NS_STANZAS}'/></failed>`);

      const r = await authenticated(server.port, owner);
      r.send(`<resume xmlns='${SM}' previd='${id}' h='0'/>`);
      await r.expect(`<resumed xmlns='${SM}' previd='${id}' h='0'/>`);
      await expectMessages(r, s.jid!, ['secret']);
    });

    it('refuses a resumption whose h is larger than what the server sent', async () => {
      const user = await newUser(server, 'bigh');
      const sender = await newUser(server, 'sender');
      const { c, id } = await smLogin(server.port, user, 'r');
      const s = await login(server.port, sender, 's');
      await sendAll(s, c.jid!, ['m1', 'm2']);
      await expectMessages(c, s.jid!, ['m1', 'm2']);
      c.destroy();
      const r = await authenticated(server.port, user);
      r.send(`<resume xmlns='${SM}' previd='${id}' h='7'/>`);
      const failed = await r.expect(
        `<failed xmlns='${SM}'><undefined-condition xmlns='${NS_STANZAS}'/></failed>`,
      );
      expect(failed.getChild('handled-count-too-high', SM)?.attrs).to.include({ h: '7', 'send-count': '2' });
      // Not resumed: the client binds a new session instead.
      expect(await r.bind('other')).to.equal(`${user}@localhost/other`);
    });

    it('keeps a hibernated session available: messages to the bare JID wait for it instead of bouncing', async () => {
      const user = await newUser(server, 'sleepy');
      const sender = await newUser(server, 'sender');
      const { c, id } = await smLogin(server.port, user, 'r');
      const s = await login(server.port, sender, 's');
      c.destroy();
      await sleep(100);
      await sendAll(s, `${user}@localhost`, ['bare1', 'bare2']);
      expect(await drain(s, 300), 'the sender got an error').to.deep.equal([]);
      const r = await authenticated(server.port, user);
      r.send(`<resume xmlns='${SM}' previd='${id}' h='0'/>`);
      await r.expect(`<resumed xmlns='${SM}' previd='${id}' h='0'/>`);
      await expectMessages(r, s.jid!, ['bare1', 'bare2']);
      // Delivered to the session, so not also kept in offline storage.
      r.send(`<a xmlns='${SM}' h='2'/>`);
      const other = await offlineMessages(server.port, user, 'second');
      expect(messageIds(other), 'also stored offline').to.deep.equal([]);
    });
  });

  describe('stanzas that were never acknowledged', () => {
    it('closes a stream that owes more than max_unacked acks with policy-violation; the messages go offline', async () => {
      const user = await newUser(eager, 'deaf');
      const sender = await newUser(eager, 'sender');
      const { c } = await smLogin(eager.port, user, 'r');
      const s = await login(eager.port, sender, 's');
      const ids = Array.from({ length: 11 }, (_, i) => `q${i + 1}`);
      await sendAll(s, c.jid!, ids);
      const seen: Element[] = [];
      for (;;) {
        const ev = await c.next();
        if (ev.kind !== 'element') throw new Error(`no stream error before ${ev.kind}`);
        if (ev.element.name === 'stream:error' || ev.element.name === 'error') {
          expect(
            ev.element.getChild('policy-violation', NS_STREAM_ERRORS),
            ev.element.toString(),
          ).to.not.equal(undefined);
          break;
        }
        if (!isAckRequest(ev.element)) seen.push(ev.element);
      }
      await c.expectClosed();
      expect(messageIds(seen), 'messages received before the close').to.deep.equal(ids);
      await sleep(100);
      await sendAll(s, `${user}@localhost`, ['after']);
      const stored = await offlineMessages(eager.port, user, 'again');
      expect(messageIds(stored)).to.deep.equal([...ids, 'after']);
      expect(await drain(s), 'the sender got an error').to.deep.equal([]);
    });

    it('answers an IQ request queued for a session that expires with an error to the requester', async () => {
      const user = await newUser(server, 'gone');
      const asker = await newUser(server, 'asker');
      const { c } = await smLogin(server.port, user, 'r');
      const a = await login(server.port, asker, 'a');
      c.destroy();
      await sleep(100);
      a.send(`<iq type='get' id='v1' to='${c.jid!}'><query xmlns='jabber:iq:version'/></iq>`);
      await a.expectNothing(1000); // queued for the hibernated session
      const reply = await a.expect(`<iq type='error' id='v1' from='${c.jid!}'><error/></iq>`, 4000);
      expect(
        reply.getChild('error')?.getChild('recipient-unavailable', NS_STANZAS),
        reply.toString(),
      ).to.not.equal(undefined);
      await a.expectNothing(300);
    });

    it('stores unacknowledged messages offline when the client closes its stream cleanly', async () => {
      const user = await newUser(server, 'polite');
      const sender = await newUser(server, 'sender');
      const { c, id } = await smLogin(server.port, user, 'r');
      const s = await login(server.port, sender, 's');
      await sendAll(s, c.jid!, ['m1', 'm2', 'm3']);
      await expectMessages(c, s.jid!, ['m1', 'm2', 'm3']);
      c.send(`<a xmlns='${SM}' h='1'/>`);
      await c.close();
      // A clean close ends the session: nothing to resume.
      const r = await authenticated(server.port, user);
      r.send(`<resume xmlns='${SM}' previd='${id}' h='1'/>`);
      await r.expect(`<failed xmlns='${SM}'><item-not-found xmlns='${NS_STANZAS}'/></failed>`);
      await r.bind('again');
      await available(r);
      const stored = (await drain(r)).filter((e) => e.name === 'message');
      expect(messageIds(stored)).to.deep.equal(['m2', 'm3']);
      for (const m of stored) stampOf(m);
    });

    it('stores unacknowledged messages offline when the server shuts down (connected and hibernated sessions)', async () => {
      const first = await startTestServer({ yaml: QUIET, sqlite: true });
      let second: Server | null = null;
      try {
        for (const u of ['online', 'asleep', 'sender']) await first.addUser(u, PASSWORD);
        const { c: online } = await smLogin(first.port, 'online', 'r');
        const { c: asleep } = await smLogin(first.port, 'asleep', 'r');
        const s = await login(first.port, 'sender', 's');
        await sendAll(s, online.jid!, ['o1', 'o2']);
        await expectMessages(online, s.jid!, ['o1', 'o2']);
        online.send(`<a xmlns='${SM}' h='1'/>`);
        asleep.destroy();
        await sleep(100);
        await sendAll(s, asleep.jid!, ['z1', 'z2']);
        await first.server.stop();
        await online.expectStreamError('system-shutdown');

        second = new Server(first.server.config, { log: pino({ level: 'silent' }) });
        await second.start();
        const port = second.listeners[0]!.port;
        expect(messageIds(await offlineMessages(port, 'online', 'back'))).to.deep.equal(['o2']);
        expect(messageIds(await offlineMessages(port, 'asleep', 'back'))).to.deep.equal(['z1', 'z2']);
      } finally {
        await Promise.all(clients.splice(0).map((c) => c.shutdown()));
        await first.server.stop();
        await second?.stop();
        rmSync(first.dir, { recursive: true, force: true });
      }
    });
  });
});
