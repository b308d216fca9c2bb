// Offline messages (XEP-0160, with XEP-0203 delay stamps), with real clients
// against a real server: what a sender and a recipient who was away notice.
import { rmSync } from 'node:fs';
import { expect } from 'chai';
import type { Element } from 'ltx';
import pino from 'pino';
import { Server } from '../../src/server.ts';
import { available, testUsers } from '../helpers/fixtures.ts';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { NS_STANZAS, XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'offline-test-pw';
const MODULES = 'modules: [disco, ping, roster, presence, offline]';
const NS_DELAY = 'urn:xmpp:delay';
const NS_INFO = 'http://jabber.org/protocol/disco#info';
const NS_CHATSTATES = 'http://jabber.org/protocol/chatstates';

const { clients, newUser, track } = testUsers(PASSWORD, 'shutdown');
let ghosts = 0;

async function login(port: number, user: string, resource: string): Promise<XmppClient> {
  const c = track(await XmppClient.connect({ port, name: `${user}/${resource}` }));
  await c.login(user, PASSWORD, { resource });
  return c;
}

/** A stored message as delivered: original from, to, id and body, plus a delay from the server. */
function delayed(from: string, to: string, id: string, body: string, type = 'chat'): string {
  return `<message from='${from}' to='${to}' id='${id}' type='${type}'>
    <body>${body}</body>
    <delay xmlns='${NS_DELAY}' from='localhost' stamp='{any}'/>
  </message>`;
}

function stampOf(message: Element): number {
  const stamp = message.getChild('delay', NS_DELAY)?.attrs.stamp as string | undefined;
  expect(stamp, 'delay stamp').to.be.a('string');
  // XEP-0082 DateTime in UTC.
  expect(stamp).to.match(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
  return Date.parse(stamp!);
}

function chat(to: string, id: string, body: string): string {
  return `<message to='${to}' type='chat' id='${id}'><body>${body}</body></message>`;
}

describe('protocol: offline messages', function () {
  describe('storage and delivery (XEP-0160)', function () {
    let server: TestServer;

    before(async () => {
      server = await startTestServer({ yaml: MODULES });
    });
    after(() => server.stop());

    it('delivers messages sent while the user was away at the next login, in order, with a delay stamp', async () => {
      const romeo = await newUser(server, 'romeo');
      const juliet = await newUser(server, 'juliet');
      const r = await login(server.port, romeo, 'balcony');
      const bare = `${juliet}@localhost`;
      const before = Date.now();
      r.send(chat(bare, 'm1', 'one'));
      r.send(chat(bare, 'm2', 'two'));
      r.send(`<message to='${bare}' id='m3'><body>three</body></message>`);
      // RFC 6121 5.2.2: an unknown type is treated as normal, so it is kept too.
      r.send(`<message to='${bare}' id='m4' type='memo'><body>four</body></message>`);
      // Stored, not bounced.
      await r.expectNothing();
      const sentBy = Date.now();

      const j = await login(server.port, juliet, 'chamber');
      // Nothing before the session is available.
      await j.expectNothing();
      await available(j);
      const first = await j.expect(delayed(r.jid!, bare, 'm1', 'one'));
      const second = await j.expect(delayed(r.jid!, bare, 'm2', 'two'));
      const third = await j.expect(`<message from='${r.jid}' to='${bare}' id='m3'>
      <body>three</body><delay xmlns='${NS_DELAY}' from='localhost' stamp='{any}'/></message>`);
      expect(third.attrs.type, 'a message without type keeps having none').to.equal(undefined);
      const fourth = await j.expect(delayed(r.jid!, bare, 'm4', 'four', 'memo'));
      const stamps = [first, second, third, fourth].map(stampOf);
      // Stamps say when the server received them (millisecond resolution), not when they were delivered.
      for (const s of stamps) expect(s).to.be.within(before - 1, sentBy + 1);
      expect([...stamps].sort((a, b) => a - b)).to.deep.equal(stamps);
      await j.expectNothing();
    });

    it('keeps line breaks and tabs in attribute values of a stored message', async () => {
      const romeo = await newUser(server, 'romeo');
      const juliet = await newUser(server, 'juliet');
      const r = await login(server.port, romeo, 'balcony');
      const bare = `${juliet}@localhost`;
      // Character references survive a parser's attribute-value normalization; raw
      // line breaks and tabs, as ltx's toString() wrote them, come back as spaces.
      r.send(
        `<message to='${bare}' type='chat' id='ws1'><body>lines</body>` +
          `<note xmlns='urn:example:note' text='one&#10;two&#9;three&#13;'/></message>`,
      );
      await r.expectNothing();

      const j = await login(server.port, juliet, 'chamber');
      await available(j);
      const got = await j.expect(`<message from='${r.jid}' id='ws1'><body>lines</body></message>`);
      expect(got.getChild('note', 'urn:example:note')?.attrs.text).to.equal('one\ntwo\tthree\r');
    });

    it('delivers a long backlog completely, in order', async () => {
      const romeo = await newUser(server, 'romeo');
      const juliet = await newUser(server, 'juliet');
      const r = await login(server.port, romeo, 'balcony');
      const bare = `${juliet}@localhost`;
      const count = 250; // more than the module reads from storage at once
      for (let i = 1; i <= count; i++) r.send(chat(bare, `b${i}`, `message ${i}`));
      await r.expectNothing();

      const j = await login(server.port, juliet, 'chamber');
      await available(j);
      for (let i = 1; i <= count; i++) await j.expect(delayed(r.jid!, bare, `b${i}`, `message ${i}`));
      await j.expectNothing();
    });

    it('does not deliver the same messages twice', async () => {
      const romeo = await newUser(server, 'romeo');
      const juliet = await newUser(server, 'juliet');
      const r = await login(server.port, romeo, 'balcony');
      const bare = `${juliet}@localhost`;
      r.send(chat(bare, 'once', 'only once'));
      await r.expectNothing();

      const j1 = await login(server.port, juliet, 'chamber');
      await available(j1);
      await j1.expect(delayed(r.jid!, bare, 'once', 'only once'));
      await j1.close();

      const j2 = await login(server.port, juliet, 'garden');
      await available(j2);
      await j2.expectNothing();
      // A new available presence of the same session does not replay anything either.
      await available(j2, '<show>away</show>');
      await j2.expectNothing();
    });

    it('stores messages for a user whose only session has negative priority, and delivers them when it becomes non-negative', async () => {
      const romeo = await newUser(server, 'romeo');
      const juliet = await newUser(server, 'juliet');
      const r = await login(server.port, romeo, 'balcony');
      const j = await login(server.port, juliet, 'chamber');
      const bare = `${juliet}@localhost`;
      await available(j, '<priority>-1</priority>');

      r.send(chat(bare, 'neg', 'are you there?'));
      await r.expectNothing();
      await j.expectNothing();

      await available(j, '<priority>1</priority>');
      await j.expect(delayed(r.jid!, bare, 'neg', 'are you there?'));
      await j.expectNothing();
    });

    it('stores a chat message for a resource that is gone', async () => {
      const romeo = await newUser(server, 'romeo');
      const juliet = await newUser(server, 'juliet');
      const r = await login(server.port, romeo, 'balcony');
      const full = `${juliet}@localhost/gone`;
      r.send(chat(full, 'gone', 'to a resource'));
      await r.expectNothing();

      const j = await login(server.port, juliet, 'chamber');
      await available(j);
      await j.expect(delayed(r.jid!, full, 'gone', 'to a resource'));
    });

    it('does not store groupchat (bounced) or headline (dropped) messages', async () => {
      const romeo = await newUser(server, 'romeo');
      const juliet = await newUser(server, 'juliet');
      const r = await login(server.port, romeo, 'balcony');
      const bare = `${juliet}@localhost`;
      r.send(`<message to='${bare}' type='groupchat' id='gc'><body>room talk</body></message>`);
      await r.expect(
        `<message type='error' id='gc' from='${bare}'><error type='cancel'><service-unavailable xmlns='${NS_STANZAS}'/></error></message>`,
      );
      r.send(`<message to='${bare}' type='headline' id='hl'><body>news</body></message>`);
      await r.expectNothing();
      r.send(chat(bare, 'after', 'this one is kept'));
      await r.expectNothing();

      const j = await login(server.port, juliet, 'chamber');
      await available(j);
      // Only the chat message was kept.
      await j.expect(delayed(r.jid!, bare, 'after', 'this one is kept'));
      await j.expectNothing();
    });

    it('does not store chat-state-only messages, but stores receipts, markers and bodies with a chat state', async () => {
      const romeo = await newUser(server, 'romeo');
      const juliet = await newUser(server, 'juliet');
      const r = await login(server.port, romeo, 'balcony');
      const bare = `${juliet}@localhost`;
      r.send(`<message to='${bare}' type='chat' id='cs1'><composing xmlns='${NS_CHATSTATES}'/></message>`);
      r.send(
        `<message to='${bare}' type='chat' id='cs2'><thread>t1</thread><paused xmlns='${NS_CHATSTATES}'/></message>`,
      );
      r.send(`<message to='${bare}' id='rcpt'><received xmlns='urn:xmpp:receipts' id='orig1'/></message>`);
      r.send(
        `<message to='${bare}' type='chat' id='mark'><displayed xmlns='urn:xmpp:chat-markers:0' id='orig2'/></message>`,
      );
      r.send(
        `<message to='${bare}' type='chat' id='text'><body>hello</body><active xmlns='${NS_CHATSTATES}'/></message>`,
      );
      // A chat state for an absent user is dropped quietly: no error for the sender.
      await r.expectNothing();

      const j = await login(server.port, juliet, 'chamber');
      await available(j);
      await j.expect(`<message from='${r.jid}' id='rcpt'><received xmlns='urn:xmpp:receipts' id='orig1'/>
      <delay xmlns='${NS_DELAY}' from='localhost'/></message>`);
      await j.expect(`<message from='${r.jid}' id='mark'><displayed xmlns='urn:xmpp:chat-markers:0' id='orig2'/>
      <delay xmlns='${NS_DELAY}' from='localhost'/></message>`);
      await j.expect(`<message from='${r.jid}' id='text'><body>hello</body><active xmlns='${NS_CHATSTATES}'/>
      <delay xmlns='${NS_DELAY}' from='localhost'/></message>`);
      await j.expectNothing();
    });

    it('bounces messages to a user that does not exist, and keeps none for them', async () => {
      const romeo = await newUser(server, 'romeo');
      const r = await login(server.port, romeo, 'balcony');
      const ghost = `ghost${++ghosts}`;
      r.send(chat(`${ghost}@localhost`, 'x1', 'anyone?'));
      await r.expect(
        `<message type='error' id='x1' from='${ghost}@localhost'><error type='cancel'><service-unavailable xmlns='${NS_STANZAS}'/></error></message>`,
      );
      // Creating the account later does not reveal anything sent before it existed.
      await server.addUser(ghost, PASSWORD);
      const g = await login(server.port, ghost, 'home');
      await available(g);
      await g.expectNothing();
    });

    it('lists msgoffline in the server disco#info', async () => {
      const romeo = await newUser(server, 'romeo');
      const r = await login(server.port, romeo, 'balcony');
      r.send(`<iq type='get' id='disco' to='localhost'><query xmlns='${NS_INFO}'/></iq>`);
      await r.expect(
        `<iq type='result' id='disco' from='localhost'><query xmlns='${NS_INFO}'><feature var='msgoffline'/></query></iq>`,
      );
    });
  });

  describe('quota', function () {
    let server: TestServer;

    before(async () => {
      server = await startTestServer({
        yaml: `${MODULES}\nmodule_options: { offline: { max_messages_per_user: 2 } }`,
      });
    });
    after(() => server.stop());

    it('refuses a message beyond the quota with resource-constraint and keeps only what fitted', async () => {
      const romeo = await newUser(server, 'romeo');
      const juliet = await newUser(server, 'juliet');
      const r = await login(server.port, romeo, 'balcony');
      const bare = `${juliet}@localhost`;
      r.send(chat(bare, 'q1', 'first'));
      r.send(chat(bare, 'q2', 'second'));
      r.send(chat(bare, 'q3', 'third'));
      const error = await r.expect(
        `<message type='error' id='q3' from='${bare}' to='${r.jid}'>
        <error type='wait'><resource-constraint xmlns='${NS_STANZAS}'/><text xmlns='${NS_STANZAS}'>{any}</text></error>
      </message>`,
      );
      expect(error.getChild('error')?.getChildText('text', NS_STANZAS)).to.match(/offline storage .*is full/);
      await r.expectNothing();

      const j = await login(server.port, juliet, 'chamber');
      await available(j);
      await j.expect(delayed(r.jid!, bare, 'q1', 'first'));
      await j.expect(delayed(r.jid!, bare, 'q2', 'second'));
      await j.expectNothing();
      await j.close();

      // Delivery freed the space.
      r.send(chat(bare, 'q4', 'fourth'));
      await r.expectNothing();
      const j2 = await login(server.port, juliet, 'chamber');
      await available(j2);
      await j2.expect(delayed(r.jid!, bare, 'q4', 'fourth'));
    });

    it('rejects an invalid quota at startup', async () => {
      let failure: unknown = null;
      try {
        const bad = await startTestServer({
          yaml: `${MODULES}\nmodule_options: { offline: { max_messages_per_user: 0 } }`,
        });
        await bad.stop();
      } catch (err) {
        failure = err;
      }
      expect(String(failure)).to.match(/max_messages_per_user/);
    });
  });

  describe('with SQLite storage', function () {
    it('keeps stored messages across a server restart', async () => {
      const first = await startTestServer({ yaml: MODULES, sqlite: true });
      let second: Server | null = null;
      try {
        await first.addUser('romeo', PASSWORD);
        await first.addUser('juliet', PASSWORD);
        const r = await login(first.port, 'romeo', 'balcony');
        r.send(chat('juliet@localhost', 'p1', 'before the restart'));
        r.send(chat('juliet@localhost', 'p2', 'and another'));
        await r.expectNothing();
        const romeoJid = r.jid!;
        await r.close();
        // Stop the server but keep its directory (TestServer.stop() would delete it).
        await first.server.stop();

        second = new Server(first.server.config, { log: pino({ level: 'silent' }) });
        await second.start();
        const j = await login(second.listeners[0]!.port, 'juliet', 'chamber');
        await available(j);
        await j.expect(delayed(romeoJid, 'juliet@localhost', 'p1', 'before the restart'));
        await j.expect(delayed(romeoJid, 'juliet@localhost', 'p2', 'and another'));
        await j.expectNothing();
      } finally {
        await Promise.all(clients.splice(0).map((c) => c.shutdown()));
        if (second) await second.stop();
        else await first.server.stop();
        rmSync(first.dir, { recursive: true, force: true });
      }
    });
  });
});
