// XEP-0352 client state indication: what an inactive client receives, when,
// and that stream management still counts exactly what was written.
import { expect } from 'chai';
import type { Element } from 'ltx';
import { type TestServer } from '../helpers/server.ts';
import { bare, testUsers, useServer } from '../helpers/fixtures.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'csi-test-pw';
const NS_CSI = 'urn:xmpp:csi:0';
const NS_SM = 'urn:xmpp:sm:3';
const NS_CHATSTATES = 'http://jabber.org/protocol/chatstates';
const NS_ROSTER = 'jabber:iq:roster';

const { newUser, track } = testUsers(PASSWORD);

/** Reads until an element matches, skipping the rest (setup only). */
async function waitFor(c: XmppClient, pattern: string): Promise<Element> {
  for (;;) {
    const event = await c.next();
    if (event.kind !== 'element') throw new Error(`${c.name}: expected ${pattern}, got ${event.kind}`);
    if (c.check(pattern, event.element) === null) return event.element;
  }
}

/** Discards whatever the server still sends within `ms`. */
async function drain(c: XmppClient, ms = 200): Promise<void> {
  for (;;) {
    try {
      await c.next(ms);
    } catch {
      return;
    }
  }
}

/** A round trip to the server: everything the client sent before has been processed. */
async function sync(c: XmppClient): Promise<void> {
  const id = c.nextId('sync');
  c.send(`<iq type='get' id='${id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
  await c.expect(`<iq type='result' id='${id}'/>`);
}

/** Logged in, roster fetched, available. */
async function online(server: TestServer, user: string, resource: string): Promise<XmppClient> {
  const c = track(await XmppClient.connect({ port: server.port, name: `${user}/${resource}` }));
  await c.login(user, PASSWORD, { resource });
  c.send(`<iq type='get' id='roster'><query xmlns='${NS_ROSTER}'/></iq>`);
  await c.expect(`<iq type='result' id='roster'/>`);
  c.send('<presence/>');
  await c.expect(`<presence from='${c.jid}'/>`);
  return c;
}

/** Mutual presence subscription between two online clients. */
async function befriend(a: XmppClient, b: XmppClient): Promise<void> {
  for (const [x, y] of [
    [a, b],
    [b, a],
  ] as const) {
    x.send(`<presence to='${bare(y)}' type='subscribe'/>`);
    await waitFor(y, `<presence type='subscribe' from='${bare(x)}'/>`);
    y.send(`<presence to='${bare(x)}' type='subscribed'/>`);
    await waitFor(x, `<presence type='subscribed' from='${bare(y)}'/>`);
    await waitFor(x, `<presence from='${y.jid}'/>`);
  }
  await Promise.all([drain(a), drain(b)]);
}

/** A presence update from `c`, waiting for its reflection (the server has routed it). */
async function update(c: XmppClient, status: string): Promise<void> {
  c.send(`<presence><status>${status}</status></presence>`);
  await c.expect(`<presence from='${c.jid}'><status>${status}</status></presence>`);
}

function chatState(to: XmppClient, state: string): string {
  return `<message to='${to.jid}' type='chat'><${state} xmlns='${NS_CHATSTATES}'/></message>`;
}

async function pair(server: TestServer): Promise<[XmppClient, XmppClient]> {
  const [u1, u2] = [await newUser(server, 'idle'), await newUser(server, 'friend')];
  const a = await online(server, u1, 'phone');
  const b = await online(server, u2, 'desk');
  await befriend(a, b);
  return [a, b];
}

/** Makes `c` inactive, and waits until the server has taken note. */
async function goInactive(c: XmppClient): Promise<void> {
  c.send(`<inactive xmlns='${NS_CSI}'/>`);
  await sync(c);
}

describe('client state indication (XEP-0352)', function () {
  this.timeout(20_000);
  const server = useServer({
    yaml: 'modules: [disco, ping, roster, presence, smacks, csi, keepalive]',
  });

  it('is offered as a stream feature after authentication', async () => {
    const user = await newUser(server, 'feat');
    const c = track(await XmppClient.connect({ port: server.port }));
    await c.open();
    await c.startTls();
    expect(c.features?.getChild('csi', NS_CSI), 'csi before authentication').to.equal(undefined);
    const features = await c.authenticate(user, PASSWORD);
    expect(features.getChild('csi', NS_CSI), 'csi after authentication').to.not.equal(undefined);
  });

  it('holds presence updates while inactive and sends only the latest on <active/>', async () => {
    const [a, b] = await pair(server);
    await goInactive(a);
    await update(b, 'one');
    await update(b, 'two');
    await update(b, 'three');
    await a.expectNothing(400);

    a.send(`<active xmlns='${NS_CSI}'/>`);
    await a.expect(`<presence from='${b.jid}'><status>three</status></presence>`);
    await a.expectNothing(300);

    // Active again: updates arrive as they happen.
    await update(b, 'four');
    await a.expect(`<presence from='${b.jid}'><status>four</status></presence>`);
  });

  it('holds chat-state notifications while inactive', async () => {
    const [a, b] = await pair(server);
    await goInactive(a);
    b.send(chatState(a, 'composing'));
    b.send(chatState(a, 'paused'));
    await sync(b);
    await a.expectNothing(400);

    a.send(`<active xmlns='${NS_CSI}'/>`);
    await a.expect(`<message from='${b.jid}'><paused xmlns='${NS_CHATSTATES}'/></message>`);
    await a.expectNothing(300);
  });

  it('delivers a message with a body at once, after what was held before it', async () => {
    const [a, b] = await pair(server);
    await goInactive(a);
    await update(b, 'away for lunch');
    b.send(chatState(a, 'composing'));
    await sync(b);
    await a.expectNothing(300);

    b.send(
      `<message to='${a.jid}' type='chat' id='m1'><body>hello</body><active xmlns='${NS_CHATSTATES}'/></message>`,
    );
    await a.expect(`<presence from='${b.jid}'><status>away for lunch</status></presence>`);
    await a.expect(`<message from='${b.jid}'><composing xmlns='${NS_CHATSTATES}'/></message>`);
    await a.expect(`<message from='${b.jid}' id='m1'><body>hello</body></message>`);
    await a.expectNothing(300);

    // Still inactive: the next update is held again.
    await update(b, 'back');
    await a.expectNothing(300);
  });

  it('delivers an IQ at once, after the presence held before it', async () => {
    const [a, b] = await pair(server);
    await goInactive(a);
    await update(b, 'busy');
    await a.expectNothing(300);

    b.send(`<iq type='get' to='${a.jid}' id='v1'><query xmlns='jabber:iq:version'/></iq>`);
    await a.expect(`<presence from='${b.jid}'><status>busy</status></presence>`);
    await a.expect(`<iq type='get' from='${b.jid}' id='v1'><query xmlns='jabber:iq:version'/></iq>`);
    a.send(`<iq type='result' to='${b.jid}' id='v1'/>`);
    await b.expect(`<iq type='result' from='${a.jid}' id='v1'/>`);
  });

  it('delivers subscription requests at once', async () => {
    const [a] = await pair(server);
    const stranger = await online(server, await newUser(server, 'stranger'), 'x');
    await goInactive(a);
    stranger.send(`<presence to='${bare(a)}' type='subscribe'/>`);
    await a.expect(`<presence type='subscribe' from='${bare(stranger)}'/>`);
  });

  it("reflects the client's own presence at once, after what was held", async () => {
    const [a, b] = await pair(server);
    await goInactive(a);
    await update(b, 'elsewhere');
    await a.expectNothing(300);
    a.send('<presence><show>away</show></presence>');
    await a.expect(`<presence from='${b.jid}'><status>elsewhere</status></presence>`);
    await a.expect(`<presence from='${a.jid}'><show>away</show></presence>`);
  });

  it('on <active/> flushes everything held, in order, once per sender', async () => {
    const [a, b] = await pair(server);
    const u3 = await newUser(server, 'third');
    const c = await online(server, u3, 'laptop');
    await befriend(a, c);
    await goInactive(a);

    await update(b, 'b1');
    await update(c, 'c1');
    b.send(chatState(a, 'composing'));
    await sync(b);
    await update(b, 'b2');
    await a.expectNothing(300);

    a.send(`<active xmlns='${NS_CSI}'/>`);
    await a.expect(`<presence from='${c.jid}'><status>c1</status></presence>`);
    await a.expect(`<message from='${b.jid}'><composing xmlns='${NS_CHATSTATES}'/></message>`);
    await a.expect(`<presence from='${b.jid}'><status>b2</status></presence>`);
    await a.expectNothing(300);
  });

  describe('with stream management', function () {
    /** Counts stanzas received (h), answering the server's ack requests. */
    class Counter {
      h = 0;
      constructor(readonly c: XmppClient) {}
      async expect(pattern: string): Promise<Element> {
        for (;;) {
          const event = await this.c.next();
          if (event.kind === 'element' && event.element.name === 'r') {
            this.c.send(`<a xmlns='${NS_SM}' h='${this.h}'/>`);
            continue;
          }
          if (event.kind !== 'element') throw new Error(`expected ${pattern}, got ${event.kind}`);
          const reason = this.c.check(pattern, event.element);
          if (reason !== null) throw new Error(`${reason}: ${event.element.toString()}`);
          this.h++;
          return event.element;
        }
      }
      async sync(): Promise<void> {
        const id = this.c.nextId('sync');
        this.c.send(`<iq type='get' id='${id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
        await this.expect(`<iq type='result' id='${id}'/>`);
      }
    }

    async function enable(a: XmppClient): Promise<string> {
      a.send(`<enable xmlns='${NS_SM}' resume='true'/>`);
      const enabled = await a.expect(`<enabled xmlns='${NS_SM}' id='{any}'/>`);
      return String(enabled.attrs.id);
    }

    /** Drops a's connection and resumes its session on a new one, acknowledging h. */
    async function resume(user: string, a: XmppClient, id: string, h: number): Promise<XmppClient> {
      a.destroy();
      const a2 = track(await XmppClient.connect({ port: server.port, name: `${user} (resumed)` }));
      await a2.open();
      await a2.startTls();
      await a2.authenticate(user, PASSWORD);
      a2.send(`<resume xmlns='${NS_SM}' previd='${id}' h='${h}'/>`);
      await a2.expect(`<resumed xmlns='${NS_SM}' previd='${id}'/>`);
      a2.jid = a.jid;
      return a2;
    }

    it('counts held stanzas only when written, so acks and resumption stay exact', async () => {
      const [a, b] = await pair(server);
      const user = bare(a).split('@')[0]!;
      const id = await enable(a);
      const counter = new Counter(a);
      a.send(`<inactive xmlns='${NS_CSI}'/>`);
      await counter.sync();

      await update(b, 'x1');
      await update(b, 'x2');
      await update(b, 'x3');
      await a.expectNothing(300);
      a.send(`<active xmlns='${NS_CSI}'/>`);
      await counter.expect(`<presence from='${b.jid}'><status>x3</status></presence>`);
      expect(counter.h).to.equal(2);
      // Acknowledge exactly what was written: the server must accept it...
      a.send(`<a xmlns='${NS_SM}' h='${counter.h}'/>`);
      await counter.sync();
      a.send(`<a xmlns='${NS_SM}' h='${counter.h}'/>`);

      // ...and, having nothing unacknowledged, resend nothing on resumption:
      // the two superseded updates were never counted as sent.
      const a2 = await resume(user, a, id, counter.h);
      await a2.expectNothing(400);
      await sync(a2);
    });

    it('a presence held when the connection drops is delivered on resumption, and the stream is active again', async () => {
      const [a, b] = await pair(server);
      const user = bare(a).split('@')[0]!;
      const id = await enable(a);
      const counter = new Counter(a);
      a.send(`<inactive xmlns='${NS_CSI}'/>`);
      await counter.sync();
      await update(b, 'held');
      await a.expectNothing(300);

      const a2 = await resume(user, a, id, counter.h);
      const after = new Counter(a2);
      await after.expect(`<presence from='${b.jid}'><status>held</status></presence>`);
      // Nothing in between (the counter only skips ack requests).
      await update(b, 'live');
      await after.expect(`<presence from='${b.jid}'><status>live</status></presence>`);
    });
  });
});
