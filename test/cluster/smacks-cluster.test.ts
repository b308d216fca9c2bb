// Stream management resumption across cluster nodes (XEP-0198 with the Redis
// directory): a client whose session is held on one node resumes it on
// another, which takes the session over with everything it queued; and a
// client whose node died gets <failed/> and then its offline messages.
import { expect } from 'chai';
import type { Element } from 'ltx';
import { readUntil, sleep, subscribe, useCluster } from '../helpers/cluster.ts';
import { available } from '../helpers/fixtures.ts';
import { NS_STANZAS, type XmppClient } from '../helpers/xmpp-client.ts';
import { authenticateToResume, drain, enableResume, nextElement, SM } from '../helpers/smacks.ts';

const PASSWORD = 'smacks-cluster-pw';
const USERS = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan', 'judy'];
/** The server never asks for acks on its own: the tests decide what is acknowledged. */
const YAML = [
  'module_options:',
  '  register: { allow_registration: false }',
  '  smacks: { resume_timeout: 30, request_ack_after: 1000, request_ack_delay_ms: 60000 }',
].join('\n');

const A = 0;
const B = 1;

function chat(to: string, id: string): string {
  return `<message to='${to}' type='chat' id='${id}'><body>${id}</body></message>`;
}

/** Reads messages (skipping anything else) and checks their ids, in order. */
async function expectMessages(c: XmppClient, from: string, ids: string[]): Promise<void> {
  for (const id of ids) {
    let e = await nextElement(c, 5000);
    while (e.name !== 'message') e = await nextElement(c, 5000);
    const where = `${c.name} expected message ${id}, got ${e.toString()}`;
    expect(e.attrs.id, where).to.equal(id);
    expect(e.attrs.from, where).to.equal(from);
    expect(e.getChildText('body'), where).to.equal(id);
  }
}

function messageIds(elements: Element[]): string[] {
  return elements.filter((e) => e.name === 'message').map((e) => e.attrs.id as string);
}

describe('cluster: stream management resumption on another node', function () {
  this.timeout(60_000);
  const fixture = useCluster(
    { nodes: 2, users: Object.fromEntries(USERS.map((u) => [u, PASSWORD])), yaml: YAML },
    PASSWORD,
  );
  const { clients } = fixture;

  const online = (node: number, user: string, resource?: string) => clients.online(node, user, resource);

  /** A new connection, authenticated as `user` but not bound, ready to resume. */
  async function authenticated(node: number, user: string): Promise<XmppClient> {
    return authenticateToResume(await clients.connect(node, `${user} (new connection)`), user, PASSWORD);
  }

  /** Sends messages and waits until the sender's node has routed them (a ping round trip). */
  async function sendAll(c: XmppClient, to: string, ids: string[]): Promise<void> {
    for (const id of ids) c.send(chat(to, id));
    const ping = c.nextId('ping');
    c.send(`<iq type='get' id='${ping}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
    await readUntil(c, `<iq type='result' id='${ping}'/>`);
  }

  /** The directory entry of a full JID, parsed, or null. */
  async function entry(fullJid: string): Promise<{ n: string; c: number; s: string } | null> {
    const [bare, resource] = fullJid.split('/');
    const json = await fixture.redis.hget(`chorus:u:${bare}`, resource!);
    return json ? (JSON.parse(json) as { n: string; c: number; s: string }) : null;
  }

  /** Waits until the session's node noticed the lost connection and holds the session. */
  async function untilHeld(fullJid: string): Promise<void> {
    for (let i = 0; i < 100; i++) {
      if ((await entry(fullJid))?.c === 0) return;
      await sleep(20);
    }
    throw new Error(`${fullJid} was never held for resumption`);
  }

  it('resumes on node A a session held on node B: queued and held messages once, in order, then new ones on A', async () => {
    const sender = await online(A, 'alice');
    const r = await online(B, 'bob', 'phone');
    await subscribe(sender, r);
    const id = await enableResume(r);
    const bobJid = r.jid!;

    await sendAll(sender, bobJid, ['m1', 'm2', 'm3']);
    await expectMessages(r, sender.jid!, ['m1', 'm2', 'm3']);
    // Only m1 is acknowledged (on resumption), m2 and m3 are not.
    r.destroy();
    await untilHeld(bobJid);
    await sendAll(sender, bobJid, ['m4', 'm5']);
    await sendAll(sender, 'bob@localhost', ['m6']);

    const n = await authenticated(A, 'bob');
    n.send(`<resume xmlns='${SM}' previd='${id}' h='1'/>`);
    await n.expect(`<resumed xmlns='${SM}' previd='${id}' h='0'/>`);
    const resent = await drain(n);
    expect(messageIds(resent), 'resent after resumption').to.deep.equal(['m2', 'm3', 'm4', 'm5', 'm6']);
    expect(resent.every((m) => m.attrs.from === sender.jid)).to.equal(true);

    // The directory now points at node A.
    const entries = await fixture.redis.hgetall('chorus:u:bob@localhost');
    expect(Object.keys(entries)).to.deep.equal(['phone']);
    expect(JSON.parse(entries.phone!).n).to.equal('a');
    expect(JSON.parse(entries.phone!).c).to.equal(1);
    expect(JSON.parse(entries.phone!).a).to.equal(1);
    expect(await fixture.redis.sismember('chorus:n:a', bobJid)).to.equal(1);
    expect(await fixture.redis.sismember('chorus:n:b', bobJid)).to.equal(0);

    // Later messages arrive on A, and the stream goes on counting.
    await sendAll(sender, bobJid, ['m7']);
    await expectMessages(n, sender.jid!, ['m7']);
    // Everything so far: m1, what was resent, and m7.
    const handled = 1 + resent.length + 1;
    n.send(`<a xmlns='${SM}' h='${handled}'/>`);
    n.send(chat(sender.jid!, 'reply'));
    await readUntil(sender, `<message from='${bobJid}' id='reply'/>`);
    n.send(`<r xmlns='${SM}'/>`);
    await n.expect(`<a xmlns='${SM}' h='1'/>`);

    // The contact never saw bob go offline; the session is still available.
    const seen = await drain(sender);
    const gone = seen.filter((e) => e.name === 'presence' && e.attrs.type === 'unavailable');
    expect(gone.map((e) => e.toString())).to.deep.equal([]);
    const probe = sender.nextId('last');
    sender.send(`<iq type='get' id='${probe}' to='bob@localhost'><query xmlns='jabber:iq:last'/></iq>`);
    await sender.expect(`<iq type='result' id='${probe}'><query xmlns='jabber:iq:last' seconds='0'/></iq>`);

    // A later drop and resumption on A itself works with the same id.
    n.destroy();
    await untilHeld(bobJid);
    const again = await authenticated(A, 'bob');
    again.send(`<resume xmlns='${SM}' previd='${id}' h='${handled}'/>`);
    await again.expect(`<resumed xmlns='${SM}' previd='${id}' h='1'/>`);
    expect(await drain(again)).to.deep.equal([]);
  });

  it('loses nothing and keeps the order when messages keep coming during the handover', async () => {
    // One sender on each node: the one on B reaches the session on B until
    // it is handed over, the one on A reaches it on A as soon as it is bound there.
    const onA = await online(A, 'carol');
    const onB = await online(B, 'erin');
    const r = await online(B, 'dave', 'phone');
    const id = await enableResume(r);
    const daveJid = r.jid!;
    await sendAll(onA, daveJid, ['x0']);
    await expectMessages(r, onA.jid!, ['x0']);
    r.destroy();
    await untilHeld(daveJid);

    const n = await authenticated(A, 'dave');
    const ids = Array.from({ length: 40 }, (_, i) => `x${i + 1}`);
    const burst = async (start: number) => {
      for (const m of ids.slice(start)) {
        onA.send(chat(daveJid, `a-${m}`));
        onB.send(chat(daveJid, `b-${m}`));
        await sleep(1);
      }
    };
    for (const m of ids.slice(0, 10)) {
      onA.send(chat(daveJid, `a-${m}`));
      onB.send(chat(daveJid, `b-${m}`));
    }
    n.send(`<resume xmlns='${SM}' previd='${id}' h='0'/>`);
    await burst(10);
    await n.expect(`<resumed xmlns='${SM}' previd='${id}' h='0'/>`);
    const got = await drain(n, 1000);
    const from = (c: XmppClient) => got.filter((m) => m.name === 'message' && m.attrs.from === c.jid);
    expect(from(onA).map((m) => m.attrs.id)).to.deep.equal(['x0', ...ids.map((m) => `a-${m}`)]);
    expect(from(onB).map((m) => m.attrs.id)).to.deep.equal(ids.map((m) => `b-${m}`));
    expect((await entry(daveJid))?.n).to.equal('a');
  });

  it('takes over a session whose old connection on node B still looks alive', async () => {
    const sender = await online(A, 'erin');
    const r = await online(B, 'frank', 'laptop');
    const id = await enableResume(r);
    await sendAll(sender, r.jid!, ['y1']);
    await expectMessages(r, sender.jid!, ['y1']);

    const n = await authenticated(A, 'frank');
    n.send(`<resume xmlns='${SM}' previd='${id}' h='0'/>`);
    await n.expect(`<resumed xmlns='${SM}' previd='${id}' h='0'/>`);
    await expectMessages(n, sender.jid!, ['y1']);
    // The old connection is told why it goes.
    await r.expectStreamError('conflict');
    expect((await entry(r.jid!))?.n).to.equal('a');
  });

  it('keeps the session on B when the connection resuming it on A goes away mid-way', async () => {
    const sender = await online(A, 'ivan');
    const r = await online(B, 'judy', 'phone');
    const id = await enableResume(r);
    const judyJid = r.jid!;
    await sendAll(sender, judyJid, ['w1', 'w2']);
    await expectMessages(r, sender.jid!, ['w1', 'w2']);
    r.destroy();
    await untilHeld(judyJid);

    // The request is read, then the connection ends before the handover completes.
    const lost = await authenticated(A, 'judy');
    lost.send(`<resume xmlns='${SM}' previd='${id}' h='1'/>`);
    lost.socket.end();
    await sleep(300);
    expect(fixture.cluster.nodes[A]!.output()).to.include(
      'could not bind a session resumed from another node',
    );
    expect((await entry(judyJid))?.n, 'the session stays on B').to.equal('b');
    await sendAll(sender, judyJid, ['w3']);

    const n = await authenticated(A, 'judy');
    n.send(`<resume xmlns='${SM}' previd='${id}' h='1'/>`);
    await n.expect(`<resumed xmlns='${SM}' previd='${id}' h='0'/>`);
    expect(messageIds(await drain(n))).to.deep.equal(['w2', 'w3']);
    expect((await entry(judyJid))?.n).to.equal('a');
  });

  it("does not resume another account's session, nor an unknown id", async () => {
    const r = await online(B, 'grace', 'phone');
    const id = await enableResume(r);
    r.destroy();
    await untilHeld(r.jid!);
    const other = await authenticated(A, 'heidi');
    other.send(`<resume xmlns='${SM}' previd='${id}' h='0'/>`);
    await other.expect(`<failed xmlns='${SM}'><item-not-found xmlns='${NS_STANZAS}'/></failed>`);
    other.send(`<resume xmlns='${SM}' previd='no-such-id' h='0'/>`);
    await other.expect(`<failed xmlns='${SM}'><item-not-found xmlns='${NS_STANZAS}'/></failed>`);
    // The session is still held on B and can be resumed there.
    const back = await authenticated(B, 'grace');
    back.send(`<resume xmlns='${SM}' previd='${id}' h='0'/>`);
    await back.expect(`<resumed xmlns='${SM}' previd='${id}' h='0'/>`);
  });

  // Last: node B does not come back.
  it('answers <failed/> for a session of a node that died, and a fresh bind gets the offline messages', async () => {
    const sender = await online(A, 'alice', 'desk');
    const r = await online(B, 'carol', 'phone');
    const id = await enableResume(r);
    const carolJid = r.jid!;
    r.destroy();
    await untilHeld(carolJid);
    await fixture.cluster.nodes[B]!.kill('SIGKILL');

    // Sent after B died: kept in offline storage, whatever the directory still says.
    await sendAll(sender, 'carol@localhost', ['z1', 'z2']);
    await sendAll(sender, carolJid, ['z3']);

    const n = await authenticated(A, 'carol');
    n.send(`<resume xmlns='${SM}' previd='${id}' h='0'/>`);
    const failed = await n.expect(`<failed xmlns='${SM}'><item-not-found xmlns='${NS_STANZAS}'/></failed>`);
    expect(failed.attrs.h, 'h of a session nobody holds').to.equal(undefined);
    // The stream is still usable: bind afresh and get what was sent meanwhile.
    await n.bind('phone');
    await available(n);
    expect(messageIds(await drain(n))).to.deep.equal(['z1', 'z2', 'z3']);
    expect((await entry(carolJid))?.n).to.equal('a');
  });
});
