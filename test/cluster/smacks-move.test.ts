// Stream management resumption across cluster nodes, what follows it: the
// session resumed on another node still goes offline for its contacts (and
// for those it sent directed presence to) when it ends, its next presence is
// no initial one, and a handover the resuming node never completed does not
// lose what the holder queued.
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { readUntil, startCluster, type TestCluster, requireRedis, sleep } from '../helpers/cluster.ts';
import { available, fetchRoster } from '../helpers/fixtures.ts';
import { NS_STANZAS, XmppClient } from '../helpers/xmpp-client.ts';
import { authenticateToResume, drain, enableResume, SM } from '../helpers/smacks.ts';

const PASSWORD = 'smacks-move-pw';
const USERS = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace'];
/** The server never asks for acks on its own: the tests decide what is acknowledged. */
const YAML = [
  'module_options:',
  '  register: { allow_registration: false }',
  '  smacks: { resume_timeout: 60, request_ack_after: 1000, request_ack_delay_ms: 60000 }',
].join('\n');

const A = 0;
const B = 1;

describe('cluster: after a stream management resumption on another node', function () {
  this.timeout(90_000);
  let cluster: TestCluster;
  let redis: Redis;
  const clients: XmppClient[] = [];

  before(async function () {
    requireRedis(this);
    cluster = await startCluster({
      nodes: 2,
      users: Object.fromEntries(USERS.map((u) => [u, PASSWORD])),
      yaml: YAML,
      // A node stopped (SIGSTOP) for a few seconds is not taken for dead.
      heartbeatMs: 200,
      nodeTtlMs: 15_000,
    });
    redis = new Redis(cluster.redis.url);
  });

  after(async () => {
    redis?.disconnect();
    for (const node of cluster?.nodes ?? []) node.process.kill('SIGCONT');
    await cluster?.stop();
  });

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.shutdown()));
  });

  async function connect(node: number, name: string): Promise<XmppClient> {
    const c = await XmppClient.connect({ port: cluster.nodes[node]!.port, name: `${name}@${node}` });
    clients.push(c);
    return c;
  }

  async function online(node: number, user: string, resource = 'r'): Promise<XmppClient> {
    const c = await connect(node, `${user}/${resource}`);
    await c.login(user, PASSWORD, { resource });
    await fetchRoster(c);
    await available(c);
    return c;
  }

  /** A new connection, authenticated as `user` but not bound, ready to resume. */
  async function authenticated(node: number, user: string): Promise<XmppClient> {
    return authenticateToResume(await connect(node, `${user} (new connection)`), user, PASSWORD);
  }

  /** Mutual presence subscription between two online clients. */
  async function subscribe(a: XmppClient, b: XmppClient): Promise<void> {
    for (const [x, y] of [
      [a, b],
      [b, a],
    ] as const) {
      const xBare = x.jid!.split('/')[0]!;
      const yBare = y.jid!.split('/')[0]!;
      x.send(`<presence to='${yBare}' type='subscribe'/>`);
      await readUntil(y, `<presence from='${xBare}' type='subscribe'/>`);
      y.send(`<presence to='${xBare}' type='subscribed'/>`);
      await readUntil(x, `<presence from='${y.jid}'/>`);
    }
    await drain(a, 200);
    await drain(b, 200);
  }

  /** The directory entry of a full JID, parsed, or null. */
  async function entry(fullJid: string): Promise<{ n: string; c: number } | null> {
    const [bare, resource] = fullJid.split('/');
    const json = await redis.hget(`chorus:u:${bare}`, resource!);
    return json ? (JSON.parse(json) as { n: string; c: number }) : null;
  }

  async function untilHeld(fullJid: string): Promise<void> {
    for (let i = 0; i < 100; i++) {
      if ((await entry(fullJid))?.c === 0) return;
      await sleep(20);
    }
    throw new Error(`${fullJid} was never held for resumption`);
  }

  /** `user`/phone available on B with resumption enabled, dropped, then resumed on A. */
  async function movedToA(user: string, beforeDrop?: (c: XmppClient) => Promise<void>) {
    const r = await online(B, user, 'phone');
    const id = await enableResume(r);
    await beforeDrop?.(r);
    const full = r.jid!;
    r.destroy();
    await untilHeld(full);
    const n = await authenticated(A, user);
    n.send(`<resume xmlns='${SM}' previd='${id}' h='0'/>`);
    await n.expect(`<resumed xmlns='${SM}' previd='${id}' h='{any}'/>`);
    await drain(n);
    expect((await entry(full))?.n).to.equal('a');
    return { n, full };
  }

  it('tells contacts when the resumed session goes unavailable, and its next presence is no initial one', async () => {
    const alice = await online(A, 'alice');
    const { n: bob, full } = await movedToA('bob', async (b) => subscribe(alice, b));
    await drain(alice);

    // Not initial: contacts see the change, and nobody is probed again.
    bob.send(`<presence><show>away</show></presence>`);
    await readUntil(alice, `<presence from='${full}'><show>away</show></presence>`);
    const seen = await drain(bob, 700);
    const fromOthers = seen.filter((e) => e.name === 'presence' && e.attrs.from !== full);
    expect(
      fromOthers.map((e) => e.toString()),
      'presence answered to probes of an "initial" presence',
    ).to.deep.equal([]);

    bob.send(`<presence type='unavailable'/>`);
    await readUntil(alice, `<presence from='${full}' type='unavailable'/>`);
  });

  it('tells contacts, and whoever got directed presence, when the resumed session ends', async () => {
    const carol = await online(A, 'carol');
    const erin = await online(A, 'erin');
    const { n: dave, full } = await movedToA('dave', async (d) => {
      await subscribe(carol, d);
      // erin is no contact: she only got directed presence.
      d.send(`<presence to='${erin.jid}'/>`);
      await readUntil(erin, `<presence from='${d.jid}'/>`);
    });
    await drain(carol);
    await drain(erin);

    // The connection ends without being held for resumption.
    await dave.shutdown();
    await readUntil(carol, `<presence from='${full}' type='unavailable'/>`);
    await readUntil(erin, `<presence from='${full}' type='unavailable'/>`);
  });

  // Last: it stops node B for a few seconds and cuts its Redis subscription.
  it('ends the session on the holder as an expired one when the resuming node never bound it', async () => {
    const grace = await online(A, 'grace');
    const r = await online(B, 'frank', 'phone');
    await subscribe(grace, r);
    const id = await enableResume(r);
    const full = r.jid!;
    grace.send(`<message to='${full}' type='chat' id='m1'><body>m1</body></message>`);
    await readUntil(r, `<message id='m1'/>`);
    // m1 is never acknowledged.
    r.destroy();
    await untilHeld(full);
    await drain(grace);

    const n = await authenticated(A, 'frank');
    const b = cluster.nodes[B]!;
    b.process.kill('SIGSTOP');
    try {
      // The take reaches B (waiting in its socket), then B's subscription is
      // cut: A's take times out, and the done{failed} it sends then is lost.
      n.send(`<resume xmlns='${SM}' previd='${id}' h='0'/>`);
      await sleep(500);
      const list = (await redis.call('CLIENT', 'LIST', 'TYPE', 'pubsub')) as string;
      const ids = [...list.matchAll(/\bid=(\d+)/g)].map((m) => Number(m[1]));
      // Node B started (and subscribed) after node A.
      await redis.call('CLIENT', 'KILL', 'ID', String(Math.max(...ids)));
      const [, subscribers] = (await redis.call('PUBSUB', 'NUMSUB', 'chorus:bus:b')) as [string, number];
      expect(subscribers, "node B's subscription is cut").to.equal(0);
      await n.expect(`<failed xmlns='${SM}'><item-not-found xmlns='${NS_STANZAS}'/></failed>`, 6000);
      await sleep(300);
    } finally {
      b.process.kill('SIGCONT');
    }
    await sleep(300);
    expect(b.output()).to.include('handing a session over');

    // B gives the move up after 10 s: A never bound the session, so it ends
    // on B as an expired one would.
    await readUntil(grace, `<presence from='${full}' type='unavailable'/>`, 20_000);
    expect(b.output()).to.include('session handover not confirmed');
    // ...and m1 was kept offline.
    await n.bind('laptop');
    await available(n);
    const got = await drain(n, 1000);
    expect(got.filter((e) => e.name === 'message').map((e) => e.attrs.id)).to.deep.equal(['m1']);
  });
});
