// RFC 6121 8.5 (server rules for processing XML stanzas addressed to a local
// account) with two or three resources per user at different priorities, and
// RFC 6120 10.3 (stanzas without a `to`). The server runs the core rules and
// the presence module only: no offline storage, no carbons, so anything the
// core cannot deliver either bounces or is dropped, and no copies are made.
//
// "Nothing else arrived" is checked deterministically: a client pings the
// server and the pong must be the very next thing it receives. A client's
// stanzas are processed in order, so once the sender's own pong is back the
// server has finished routing the sender's earlier stanzas, and whatever it
// delivered to another client was written to that client before the pong
// that client asks for afterwards.
import { expect } from 'chai';
import type { Element } from 'ltx';
import { useServerAndPool } from '../helpers/fixtures.ts';
import { NS_STANZAS, nsOf, parsePattern, type XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'delivery-test-pw';
const MODULES = 'modules: [disco, ping, roster, presence]';

describe('protocol: delivery rules with several resources (RFC 6121 8.5)', function () {
  const { server, pool } = useServerAndPool({ yaml: MODULES });
  let seq = 0;
  let pings = 0;

  // ---- helpers ---------------------------------------------------------------------

  /** A fresh account (so no test sees another test's sessions); returns the username. */
  async function account(prefix: string): Promise<string> {
    const name = `${prefix}${++seq}`;
    await server.addUser(name, PASSWORD);
    return name;
  }

  /** Pings the server and returns everything that arrived before the pong. */
  async function drain(c: XmppClient): Promise<Element[]> {
    const id = `sync-${++pings}`;
    c.send(`<iq type='get' id='${id}' to='${server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>`);
    const before: Element[] = [];
    for (;;) {
      const event = await c.next();
      if (event.kind !== 'element') throw new Error(`${c.name}: expected a stanza, got ${event.kind}`);
      const e = event.element;
      if (e.name === 'iq' && e.attrs.id === id) {
        expect(e.attrs.type, `${c.name}: the sync ping failed`).to.equal('result');
        return before;
      }
      before.push(e);
    }
  }

  /** Asserts that nothing (besides the pong) has arrived for `c`. */
  async function quiet(...clients: XmppClient[]): Promise<void> {
    for (const c of clients) {
      const extra = await drain(c);
      expect(
        extra.map((e) => e.toString()),
        `${c.name} received stanzas it should not have`,
      ).to.deep.equal([]);
    }
  }

  /** Logs in `user` with `resource`; with a priority, also sends initial presence. */
  async function connect(user: string, resource: string, priority?: number): Promise<XmppClient> {
    const c = await pool.login(user, PASSWORD, { resource, name: `${user}/${resource}` });
    if (priority !== undefined) await setPresence(c, priority);
    return c;
  }

  /**
   * Broadcast presence with a priority, then discards the presence traffic it
   * causes on every other connected client given, so tests start quiet.
   */
  async function setPresence(c: XmppClient, priority: number, ...others: XmppClient[]): Promise<void> {
    c.send(`<presence><priority>${priority}</priority></presence>`);
    await drain(c);
    for (const o of others) await drain(o);
  }

  /** Several resources of one new account, each with its priority (null: no presence). */
  async function resources(
    prefix: string,
    spec: Record<string, number | null>,
  ): Promise<{ user: string; bare: string; res: Record<string, XmppClient>; all: XmppClient[] }> {
    const user = await account(prefix);
    const res: Record<string, XmppClient> = {};
    const all: XmppClient[] = [];
    for (const [name, priority] of Object.entries(spec)) {
      const c = await connect(user, name);
      if (priority !== null) await setPresence(c, priority, ...all);
      res[name] = c;
      all.push(c);
    }
    return { user, bare: `${user}@${server.domain}`, res, all };
  }

  /** A sender on another account, not available (it only sends). */
  async function sender(): Promise<XmppClient> {
    return connect(await account('romeo'), 'balcony');
  }

  function serviceUnavailable(kind: string, id: string, from: string, to: string): string {
    return `<${kind} type='error' id='${id}' from='${from}' to='${to}'>
      <error type='cancel'><service-unavailable xmlns='${NS_STANZAS}'/></error>
    </${kind}>`;
  }

  // ---- RFC 6121 8.5.2.1.1: message to a bare JID with available resources ---------------

  describe('RFC 6121 8.5.2.1.1: message to localpart@domain with available resources', () => {
    it('chat goes only to the highest-priority resource', async () => {
      const j = await resources('juliet', { high: 5, low: 1, negative: -1 });
      const romeo = await sender();
      romeo.send(`<message to='${j.bare}' type='chat' id='c1'><body>Which one?</body></message>`);
      await quiet(romeo);
      await j.res.high!.expect(
        `<message from='${romeo.jid}' to='${j.bare}' type='chat' id='c1'><body>Which one?</body></message>`,
      );
      await quiet(j.res.high!, j.res.low!, j.res.negative!);
    });

    it('chat goes to every resource sharing the top priority (two equal top priorities both get it)', async () => {
      const j = await resources('juliet', { first: 3, second: 3, lower: 2 });
      const romeo = await sender();
      romeo.send(`<message to='${j.bare}' type='chat' id='c2'><body>Both of you</body></message>`);
      await quiet(romeo);
      for (const c of [j.res.first!, j.res.second!]) {
        await c.expect(
          `<message from='${romeo.jid}' to='${j.bare}' type='chat' id='c2'><body>Both of you</body></message>`,
        );
      }
      await quiet(j.res.first!, j.res.second!, j.res.lower!);
    });

    it('normal (type omitted and type="normal") goes to every resource with non-negative priority', async () => {
      const j = await resources('juliet', { high: 7, zero: 0, negative: -3 });
      const romeo = await sender();
      romeo.send(`<message to='${j.bare}' id='n1'><body>No type</body></message>`);
      romeo.send(`<message to='${j.bare}' type='normal' id='n2'><body>Normal</body></message>`);
      await quiet(romeo);
      for (const c of [j.res.high!, j.res.zero!]) {
        await c.expect(`<message from='${romeo.jid}' to='${j.bare}' id='n1'><body>No type</body></message>`);
        await c.expect(
          `<message from='${romeo.jid}' to='${j.bare}' type='normal' id='n2'><body>Normal</body></message>`,
        );
      }
      await quiet(j.res.high!, j.res.zero!, j.res.negative!);
    });

    it('headline goes to every resource with non-negative priority', async () => {
      const j = await resources('juliet', { high: 7, zero: 0, negative: -3 });
      const romeo = await sender();
      romeo.send(`<message to='${j.bare}' type='headline' id='h1'><body>News</body></message>`);
      await quiet(romeo);
      for (const c of [j.res.high!, j.res.zero!]) {
        await c.expect(
          `<message from='${romeo.jid}' to='${j.bare}' type='headline' id='h1'><body>News</body></message>`,
        );
      }
      await quiet(j.res.high!, j.res.zero!, j.res.negative!);
    });

    it('a negative-priority resource gets no bare-addressed message of any type, but every full-JID one (8.5.3.1)', async () => {
      const j = await resources('juliet', { main: 1, hidden: -1 });
      const romeo = await sender();
      for (const type of ['chat', 'normal', 'headline']) {
        romeo.send(`<message to='${j.bare}' type='${type}' id='bare-${type}'><body>${type}</body></message>`);
      }
      await quiet(romeo);
      for (const type of ['chat', 'normal', 'headline'])
        await j.res.main!.expect(`<message type='${type}' id='bare-${type}'/>`);
      await quiet(j.res.main!, j.res.hidden!);

      const hidden = j.res.hidden!.jid!;
      for (const type of ['chat', 'normal', 'headline']) {
        romeo.send(`<message to='${hidden}' type='${type}' id='full-${type}'><body>${type}</body></message>`);
      }
      await quiet(romeo);
      for (const type of ['chat', 'normal', 'headline']) {
        await j.res.hidden!.expect(
          `<message from='${romeo.jid}' to='${hidden}' type='${type}' id='full-${type}'><body>${type}</body></message>`,
        );
      }
      await quiet(j.res.main!, j.res.hidden!);
    });

    it('a priority change in new broadcast presence moves chat to the new top resource', async () => {
      const j = await resources('juliet', { desk: 5, phone: 1 });
      const { desk, phone } = j.res as { desk: XmppClient; phone: XmppClient };
      const romeo = await sender();
      const chat = async (id: string, to: XmppClient, notTo: XmppClient) => {
        romeo.send(`<message to='${j.bare}' type='chat' id='${id}'><body>${id}</body></message>`);
        await quiet(romeo);
        await to.expect(`<message from='${romeo.jid}' type='chat' id='${id}'/>`);
        await quiet(to, notTo);
      };
      await chat('before', desk, phone);
      await setPresence(phone, 10, desk);
      await chat('raised', phone, desk);
      // Going negative takes a resource out of bare-JID delivery altogether.
      await setPresence(phone, -1, desk);
      await chat('negative', desk, phone);
    });

    it('a resource that sent unavailable is skipped for chat and normal, though still reachable by full JID', async () => {
      const j = await resources('juliet', { stays: 1, leaves: 5, other: 0 });
      const { stays, leaves, other } = j.res as Record<string, XmppClient>;
      leaves!.send(`<presence type='unavailable'/>`);
      await drain(leaves!);
      await drain(stays!);
      await drain(other!);
      const romeo = await sender();
      romeo.send(`<message to='${j.bare}' type='chat' id='u1'><body>chat</body></message>`);
      romeo.send(`<message to='${j.bare}' type='normal' id='u2'><body>normal</body></message>`);
      romeo.send(`<message to='${leaves!.jid}' type='chat' id='u3'><body>direct</body></message>`);
      await quiet(romeo);
      await stays!.expect(`<message type='chat' id='u1'/>`);
      await stays!.expect(`<message type='normal' id='u2'/>`);
      await other!.expect(`<message type='normal' id='u2'/>`);
      await leaves!.expect(`<message from='${romeo.jid}' to='${leaves!.jid}' type='chat' id='u3'/>`);
      await quiet(stays!, other!, leaves!);
    });

    it('a connected resource that never sent initial presence gets no bare-addressed message', async () => {
      const j = await resources('juliet', { online: 0, silent: null });
      const romeo = await sender();
      for (const type of ['chat', 'normal', 'headline'])
        romeo.send(`<message to='${j.bare}' type='${type}' id='s-${type}'><body>x</body></message>`);
      await quiet(romeo);
      for (const type of ['chat', 'normal', 'headline'])
        await j.res.online!.expect(`<message type='${type}' id='s-${type}'/>`);
      await quiet(j.res.online!, j.res.silent!);
    });

    it('groupchat to a bare JID is answered with service-unavailable and reaches no resource', async () => {
      const j = await resources('juliet', { a: 1, b: 0 });
      const romeo = await sender();
      romeo.send(`<message to='${j.bare}' type='groupchat' id='g1'><body>Room?</body></message>`);
      await romeo.expect(serviceUnavailable('message', 'g1', j.bare, romeo.jid!));
      await quiet(romeo, ...j.all);
    });

    it('an error message to a bare JID is silently ignored: no resource gets it, no error comes back', async () => {
      const j = await resources('juliet', { a: 1, b: 0 });
      const romeo = await sender();
      romeo.send(
        `<message to='${j.bare}' type='error' id='e1'><error type='cancel'><item-not-found xmlns='${NS_STANZAS}'/></error></message>`,
      );
      await quiet(romeo, ...j.all);
    });
  });

  // ---- RFC 6121 8.5.2.2: no available resource ------------------------------------------

  describe('RFC 6121 8.5.2.2: message to localpart@domain with no available resource (no offline storage)', () => {
    it('when the only available resource has negative priority, chat and normal bounce and headline is dropped', async () => {
      const j = await resources('juliet', { hidden: -5, silent: null });
      const romeo = await sender();
      romeo.send(`<message to='${j.bare}' type='chat' id='x1'><body>Hello?</body></message>`);
      romeo.send(`<message to='${j.bare}' type='normal' id='x2'><body>Hello?</body></message>`);
      romeo.send(`<message to='${j.bare}' type='headline' id='x3'><body>News</body></message>`);
      await romeo.expect(serviceUnavailable('message', 'x1', j.bare, romeo.jid!));
      await romeo.expect(serviceUnavailable('message', 'x2', j.bare, romeo.jid!));
      await quiet(romeo, ...j.all);
    });
  });

  // ---- RFC 6121 8.5.3: message to a full JID -----------------------------------------------

  describe('RFC 6121 8.5.3.1: message to localpart@domain/resource, resource matches', () => {
    it('every message type is delivered to exactly that resource, whatever its priority', async () => {
      const j = await resources('juliet', { high: 9, low: 1 });
      const low = j.res.low!.jid!;
      const romeo = await sender();
      const types = ['chat', 'normal', 'headline', 'groupchat'];
      for (const type of types)
        romeo.send(`<message to='${low}' type='${type}' id='f-${type}'><body>${type}</body></message>`);
      romeo.send(
        `<message to='${low}' type='error' id='f-error'><error type='cancel'><item-not-found xmlns='${NS_STANZAS}'/></error></message>`,
      );
      await quiet(romeo);
      for (const type of [...types, 'error'])
        await j.res.low!.expect(`<message from='${romeo.jid}' to='${low}' type='${type}' id='f-${type}'/>`);
      await quiet(j.res.low!, j.res.high!);
    });
  });

  describe('RFC 6121 8.5.3.2.1: message to localpart@domain/resource, no resource matches', () => {
    it('chat to a resource that does not exist is treated as bare: it goes to the highest-priority resource', async () => {
      const j = await resources('juliet', { high: 4, low: 2 });
      const romeo = await sender();
      romeo.send(`<message to='${j.bare}/gone' type='chat' id='g-chat'><body>Still there?</body></message>`);
      await quiet(romeo);
      await j.res.high!.expect(
        `<message from='${romeo.jid}' to='${j.bare}/gone' type='chat' id='g-chat'><body>Still there?</body></message>`,
      );
      await quiet(j.res.high!, j.res.low!);
    });

    it('normal to a resource that does not exist is treated as bare: every non-negative resource gets it', async () => {
      const j = await resources('juliet', { high: 4, low: 0, negative: -1 });
      const romeo = await sender();
      romeo.send(`<message to='${j.bare}/gone' id='g-normal'><body>For all</body></message>`);
      await quiet(romeo);
      for (const c of [j.res.high!, j.res.low!])
        await c.expect(
          `<message from='${romeo.jid}' to='${j.bare}/gone' id='g-normal'><body>For all</body></message>`,
        );
      await quiet(...j.all);
    });

    it('chat to the full JID of a resource that logged out reaches the resource that is left', async () => {
      const j = await resources('juliet', { staying: 0, leaving: 8 });
      const leavingJid = j.res.leaving!.jid!;
      await j.res.leaving!.close();
      // The session is unbound before the others hear that it went away.
      await j.res.staying!.expect(`<presence type='unavailable' from='${leavingJid}'/>`);
      const romeo = await sender();
      romeo.send(`<message to='${leavingJid}' type='chat' id='left'><body>Come back</body></message>`);
      await quiet(romeo);
      await j.res.staying!.expect(`<message from='${romeo.jid}' to='${leavingJid}' type='chat' id='left'/>`);
      await quiet(j.res.staying!);
    });

    it('headline to a resource that does not exist is silently dropped: nobody gets it, the sender gets no error', async () => {
      const j = await resources('juliet', { high: 4, low: 0 });
      const romeo = await sender();
      romeo.send(`<message to='${j.bare}/gone' type='headline' id='g-headline'><body>News</body></message>`);
      await quiet(romeo, ...j.all);
    });

    it('groupchat to a resource that does not exist is answered with service-unavailable', async () => {
      const j = await resources('juliet', { high: 4, low: 0 });
      const romeo = await sender();
      romeo.send(`<message to='${j.bare}/gone' type='groupchat' id='g-gc'><body>Room?</body></message>`);
      await romeo.expect(serviceUnavailable('message', 'g-gc', `${j.bare}/gone`, romeo.jid!));
      await quiet(romeo, ...j.all);
    });

    it('an error message to a resource that does not exist is silently ignored', async () => {
      const j = await resources('juliet', { high: 4, low: 0 });
      const romeo = await sender();
      romeo.send(
        `<message to='${j.bare}/gone' type='error' id='g-err'><error type='cancel'><item-not-found xmlns='${NS_STANZAS}'/></error></message>`,
      );
      await quiet(romeo, ...j.all);
    });
  });

  // ---- RFC 6121 8.5.1: no such user -----------------------------------------------------------

  describe('RFC 6121 8.5.1: no such user', () => {
    it('chat and normal to an account that does not exist are answered with service-unavailable', async () => {
      const romeo = await sender();
      const nobody = `rosaline${++seq}@${server.domain}`;
      romeo.send(`<message to='${nobody}' type='chat' id='ns1'><body>Hello?</body></message>`);
      romeo.send(`<message to='${nobody}' type='normal' id='ns2'><body>Hello?</body></message>`);
      romeo.send(`<message to='${nobody}/phone' type='chat' id='ns3'><body>Hello?</body></message>`);
      await romeo.expect(serviceUnavailable('message', 'ns1', nobody, romeo.jid!));
      await romeo.expect(serviceUnavailable('message', 'ns2', nobody, romeo.jid!));
      await romeo.expect(serviceUnavailable('message', 'ns3', `${nobody}/phone`, romeo.jid!));
      await quiet(romeo);
    });

    it('headline and error messages to an account that does not exist are silently dropped', async () => {
      const romeo = await sender();
      const nobody = `rosaline${++seq}@${server.domain}`;
      romeo.send(`<message to='${nobody}' type='headline' id='nh1'><body>News</body></message>`);
      romeo.send(`<message to='${nobody}/phone' type='headline' id='nh2'><body>News</body></message>`);
      romeo.send(
        `<message to='${nobody}' type='error' id='ne1'><error type='cancel'><item-not-found xmlns='${NS_STANZAS}'/></error></message>`,
      );
      await quiet(romeo);
    });

    it('an IQ get to an account that does not exist is answered with service-unavailable', async () => {
      const romeo = await sender();
      const nobody = `rosaline${++seq}@${server.domain}`;
      romeo.send(`<iq to='${nobody}/phone' type='get' id='nq1'><ping xmlns='urn:xmpp:ping'/></iq>`);
      await romeo.expect(serviceUnavailable('iq', 'nq1', `${nobody}/phone`, romeo.jid!));
      await quiet(romeo);
    });
  });

  // ---- IQ (RFC 6121 8.5.3.1 / 8.5.3.2.3, RFC 6120 8.2.3) ------------------------------------

  describe('RFC 6121 8.5.3 (IQ): IQ to localpart@domain/resource', () => {
    it('8.5.3.1: an IQ get reaches that resource only, and the result goes back to the asking resource only', async () => {
      const j = await resources('juliet', { high: 5, low: 1 });
      const r = await resources('romeo', { asking: 1, other: 9 });
      const { asking, other } = r.res as Record<string, XmppClient>;
      const low = j.res.low!.jid!;
      asking!.send(`<iq to='${low}' type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>`);
      await quiet(asking!);
      await j.res.low!.expect(
        `<iq from='${asking!.jid}' to='${low}' type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>`,
      );
      await quiet(j.res.high!);
      j.res.low!.send(
        `<iq to='${asking!.jid}' type='result' id='v1'><query xmlns='jabber:iq:version'><name>Nurse</name></query></iq>`,
      );
      await quiet(j.res.low!);
      await asking!.expect(
        `<iq from='${low}' to='${asking!.jid}' type='result' id='v1'><query xmlns='jabber:iq:version'><name>Nurse</name></query></iq>`,
      );
      await quiet(asking!, other!, j.res.high!);
    });

    it('8.5.3.2.3: an IQ get or set to a resource that is gone is answered with service-unavailable', async () => {
      const j = await resources('juliet', { high: 5, gone: 1 });
      const goneJid = j.res.gone!.jid!;
      await j.res.gone!.close();
      await j.res.high!.expect(`<presence type='unavailable' from='${goneJid}'/>`);
      const romeo = await sender();
      romeo.send(`<iq to='${goneJid}' type='get' id='q-get'><ping xmlns='urn:xmpp:ping'/></iq>`);
      romeo.send(`<iq to='${goneJid}' type='set' id='q-set'><query xmlns='urn:example:thing'/></iq>`);
      await romeo.expect(serviceUnavailable('iq', 'q-get', goneJid, romeo.jid!));
      await romeo.expect(serviceUnavailable('iq', 'q-set', goneJid, romeo.jid!));
      await quiet(romeo, j.res.high!);
    });

    it('RFC 6120 8.2.3: an IQ result or error to a resource that is gone is dropped without reply', async () => {
      const j = await resources('juliet', { high: 5, low: 1 });
      const romeo = await sender();
      romeo.send(`<iq to='${j.bare}/gone' type='result' id='late'/>`);
      romeo.send(
        `<iq to='${j.bare}/gone' type='error' id='late2'><error type='cancel'><item-not-found xmlns='${NS_STANZAS}'/></error></iq>`,
      );
      await quiet(romeo, ...j.all);
    });
  });

  // ---- presence (RFC 6121 8.5.3.1 / 8.5.3.2.2) ------------------------------------------------

  describe('RFC 6121 8.5.3 (presence): directed presence to localpart@domain/resource', () => {
    it('8.5.3.1: directed presence to a full JID reaches that resource only, even one with negative priority', async () => {
      const j = await resources('juliet', { high: 5, hidden: -1 });
      const romeo = await sender();
      const hidden = j.res.hidden!.jid!;
      romeo.send(`<presence to='${hidden}'><show>away</show><status>Below</status></presence>`);
      await quiet(romeo);
      await j.res.hidden!.expect(
        `<presence from='${romeo.jid}' to='${hidden}'><show>away</show><status>Below</status></presence>`,
      );
      await quiet(...j.all);
    });

    it('8.5.3.2.2: directed presence to a resource that does not exist is silently ignored', async () => {
      const j = await resources('juliet', { high: 5, low: 0 });
      const romeo = await sender();
      romeo.send(`<presence to='${j.bare}/gone'><show>chat</show></presence>`);
      await quiet(romeo, ...j.all);
    });
  });

  describe('RFC 6121 8.5.2.1.2: presence to localpart@domain', () => {
    it('directed presence to a bare JID reaches every available resource, negative priority included, and no other', async () => {
      const j = await resources('juliet', { high: 3, hidden: -4, silent: null });
      const romeo = await sender();
      romeo.send(`<presence to='${j.bare}'><status>Hello all</status></presence>`);
      await quiet(romeo);
      for (const c of [j.res.high!, j.res.hidden!])
        await c.expect(`<presence from='${romeo.jid}' to='${j.bare}'><status>Hello all</status></presence>`);
      await quiet(...j.all);
    });
  });

  describe('RFC 6121 5.2.2: a message of unknown type is processed as type normal', () => {
    it('to a bare JID: every non-negative resource gets it', async () => {
      const j = await resources('juliet', { high: 3, zero: 0, hidden: -1 });
      const romeo = await sender();
      romeo.send(`<message to='${j.bare}' type='bogus' id='t1'><body>What am I?</body></message>`);
      await quiet(romeo);
      for (const c of [j.res.high!, j.res.zero!])
        await c.expect(`<message from='${romeo.jid}' id='t1'><body>What am I?</body></message>`);
      await quiet(...j.all);
    });

    it('to a resource that does not exist (8.5.3.2.1): treated as bare like normal, not dropped', async () => {
      const j = await resources('juliet', { high: 3, zero: 0 });
      const romeo = await sender();
      romeo.send(`<message to='${j.bare}/gone' type='bogus' id='t2'><body>Anyone?</body></message>`);
      await quiet(romeo);
      for (const c of [j.res.high!, j.res.zero!])
        await c.expect(
          `<message from='${romeo.jid}' to='${j.bare}/gone' id='t2'><body>Anyone?</body></message>`,
        );
      await quiet(...j.all);
    });

    it('to an account with no available resource (8.5.2.2.1): bounced like normal, not dropped', async () => {
      const j = await resources('juliet', { silent: null });
      const romeo = await sender();
      romeo.send(`<message to='${j.bare}' type='bogus' id='t3'><body>Anyone?</body></message>`);
      await romeo.expect(serviceUnavailable('message', 't3', j.bare, romeo.jid!));
      await quiet(romeo, ...j.all);
    });
  });

  describe('RFC 6120 10.5: message to the server domain itself', () => {
    it('chat and normal are answered with service-unavailable; headline and error are dropped', async () => {
      const romeo = await sender();
      const domain = server.domain;
      romeo.send(`<message to='${domain}' type='chat' id='d1'><body>Server?</body></message>`);
      romeo.send(`<message to='${domain}' id='d2'><body>Server?</body></message>`);
      romeo.send(`<message to='${domain}' type='headline' id='d3'><body>News</body></message>`);
      romeo.send(
        `<message to='${domain}' type='error' id='d4'><error type='cancel'><item-not-found xmlns='${NS_STANZAS}'/></error></message>`,
      );
      await romeo.expect(serviceUnavailable('message', 'd1', domain, romeo.jid!));
      await romeo.expect(serviceUnavailable('message', 'd2', domain, romeo.jid!));
      await quiet(romeo);
    });
  });

  // ---- RFC 6120 10.3: no `to` ------------------------------------------------------------------

  describe('RFC 6120 10.3: stanzas without a to address', () => {
    it('10.3.1: a message without to is handled as if sent to the own bare JID (chat: top-priority own resource)', async () => {
      const j = await resources('juliet', { top: 6, writer: 2, zero: 0 });
      const { top, writer, zero } = j.res as Record<string, XmppClient>;
      writer!.send(`<message type='chat' id='self1'><body>Note to self</body></message>`);
      await quiet(writer!);
      const got = await top!.expect(
        `<message from='${writer!.jid}' type='chat' id='self1'><body>Note to self</body></message>`,
      );
      // Delivered as if addressed to the bare JID: no `to`, or the account's bare JID.
      if (got.attrs.to !== undefined) expect(got.attrs.to).to.equal(j.bare);
      await quiet(top!, zero!);

      // Normal: every non-negative own resource, the writer included, and nothing else.
      writer!.send(`<message type='normal' id='self2'><body>For all of me</body></message>`);
      for (const c of [writer!, top!, zero!]) {
        await c.expect(`<message from='${writer!.jid}' type='normal' id='self2'/>`);
        await quiet(c);
      }
    });

    it('10.3.1: a message without to from an account with no available resource bounces (no offline storage)', async () => {
      const alone = await connect(await account('juliet'), 'only');
      alone.send(`<message type='chat' id='self3'><body>Anyone?</body></message>`);
      const error = await alone.expect(
        `<message type='error' id='self3'><error type='cancel'><service-unavailable xmlns='${NS_STANZAS}'/></error></message>`,
      );
      expect(error.attrs.to).to.equal(alone.jid);
      await quiet(alone);
    });

    it('10.3.2: presence without to is broadcast to the available own resources, negative priority included', async () => {
      const j = await resources('juliet', { high: 3, hidden: -2, silent: null });
      const { high, hidden, silent } = j.res as Record<string, XmppClient>;
      high!.send(`<presence><show>dnd</show><priority>4</priority></presence>`);
      await high!.expect(`<presence from='${high!.jid}'><show>dnd</show><priority>4</priority></presence>`);
      await quiet(high!);
      await hidden!.expect(
        `<presence from='${high!.jid}' to='${hidden!.jid}'><show>dnd</show><priority>4</priority></presence>`,
      );
      await quiet(hidden!, silent!);
    });
  });

  // ---- payloads pass through untouched -----------------------------------------------------------

  describe('extension payloads pass through untouched (XEP-0184, XEP-0333, XEP-0085, unknown)', () => {
    type Node = string | { name: string; ns: string | null; attrs: [string, string][]; children: Node[] };

    /** Structure of an element: name, namespace, attributes (declarations aside) and children, text included. */
    function shape(e: Element): Node {
      return {
        name: e.name,
        ns: nsOf(e),
        attrs: Object.entries(e.attrs)
          .filter(([k]) => k !== 'xmlns' && !k.startsWith('xmlns:'))
          .map(([k, v]): [string, string] => [k, String(v)])
          .sort(([a], [b]) => a.localeCompare(b)),
        children: e.children.map((c) => (typeof c === 'string' ? c : shape(c))),
      };
    }

    const PAYLOADS: Record<string, string> = {
      'XEP-0184 request and XEP-0085 active':
        `<body>Read me &amp; tell me &lt;3</body><request xmlns='urn:xmpp:receipts'/>` +
        `<active xmlns='http://jabber.org/protocol/chatstates'/>` +
        `<markable xmlns='urn:xmpp:chat-markers:0'/>`,
      'XEP-0184 receipt': `<received xmlns='urn:xmpp:receipts' id='orig-1'/>`,
      'XEP-0333 displayed marker': `<displayed xmlns='urn:xmpp:chat-markers:0' id='orig-2'/><store xmlns='urn:xmpp:hints'/>`,
      'XEP-0085 composing': `<composing xmlns='http://jabber.org/protocol/chatstates'/>`,
      'unknown extensions, attributes and prefixes':
        `<x xmlns='urn:example:unknown' level='3' note='a &quot;b&quot;'><y z='1'>text <b>bold</b> tail</y><y/></x>` +
        `<ex:thing xmlns:ex='urn:example:prefixed' ex:flag='on' plain='p'><ex:inner>v</ex:inner></ex:thing>` +
        `<body xml:lang='fr'>Bonjour</body>`,
    };

    for (const [label, payload] of Object.entries(PAYLOADS)) {
      it(`${label}: the delivered message has the sent children and attributes, exactly`, async () => {
        const j = await resources('juliet', { high: 2, low: 1 });
        const r = await resources('romeo', { balcony: 0 });
        const romeo = r.res.balcony!;
        const sentXml = `<message to='${j.bare}' type='chat' id='p1' xml:lang='en' xmlns:foo='urn:example:foo' data-extra='kept'>${payload}</message>`;
        romeo.send(sentXml);
        await quiet(romeo);
        const got = await j.res.high!.expect(`<message from='${romeo.jid}' to='${j.bare}' id='p1'/>`);
        await quiet(...j.all);

        const sent = parsePattern(sentXml);
        const gotShape = shape(got) as Exclude<Node, string>;
        const sentShape = shape(sent) as Exclude<Node, string>;
        expect(gotShape.children, 'payload').to.deep.equal(sentShape.children);
        expect(gotShape.attrs, 'message attributes').to.deep.equal(
          [...sentShape.attrs, ['from', romeo.jid!] as [string, string]].sort(([a], [b]) =>
            a.localeCompare(b),
          ),
        );
      });
    }

    it('a receipt and a marker sent back to the full JID arrive unchanged, and nowhere else', async () => {
      const j = await resources('juliet', { high: 2, low: 1 });
      const r = await resources('romeo', { balcony: 5, garden: 0 });
      const { balcony, garden } = r.res as Record<string, XmppClient>;
      const payload =
        `<received xmlns='urn:xmpp:receipts' id='m-77'/>` +
        `<acknowledged xmlns='urn:xmpp:chat-markers:0' id='m-77'/>` +
        `<gone xmlns='http://jabber.org/protocol/chatstates'/>`;
      j.res.low!.send(`<message to='${garden!.jid}' type='chat' id='ack'>${payload}</message>`);
      await quiet(j.res.low!);
      const got = await garden!.expect(`<message from='${j.res.low!.jid}' to='${garden!.jid}' id='ack'/>`);
      await quiet(garden!, balcony!, j.res.high!);
      const sent = parsePattern(`<message>${payload}</message>`);
      expect((shape(got) as Exclude<Node, string>).children).to.deep.equal(
        (shape(sent) as Exclude<Node, string>).children,
      );
    });
  });
});
