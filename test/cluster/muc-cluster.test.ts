// Multi-user chat in a cluster of three nodes. A room's occupant list lives
// on one node, the room's owner (service affinity), which is usually neither
// the node of a departing occupant nor that of the occupants who must learn
// that it left. A device that goes away without leaving, or whose node dies,
// must still leave every room, wherever the room lives.
//
// Which node owns a room: the owner is chosen by rendezvous hashing of the
// room's bare JID over the live nodes (rendezvousOwner in
// src/cluster/redis-cluster.ts). The test reads the live nodes from Redis
// (`SMEMBERS chorus:nodes`) and computes the same, so that it can pick room
// names whose owner is a node that neither occupant is connected to.
import { expect } from 'chai';
import { Redis } from 'ioredis';
import type { Element } from 'ltx';
import { rendezvousOwner } from '../../src/cluster/redis-cluster.ts';
import { startCluster, type TestCluster, requireRedis } from '../helpers/cluster.ts';
import { configureRoom, errorCondition, iq, item, join, MUC, statusCodes } from '../helpers/muc.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'muc-cluster-pw';
const NS_PING = 'urn:xmpp:ping';

/** The node that owns `key` among `nodes`, as the servers compute it. */
function ownerOf(nodes: readonly string[], key: string): string {
  return rendezvousOwner([...nodes].sort(), key)!;
}

let roomSeq = 0;

/** A fresh room name (localpart) that `owner` handles while `nodes` are live. */
function roomOwnedBy(owner: string, nodes: readonly string[], prefix: string): string {
  for (;;) {
    const name = `${prefix}${++roomSeq}`;
    if (ownerOf(nodes, `${name}@${MUC}`) === owner) return name;
  }
}

/** Reads (and skips) stanzas until one satisfies `match`; fails after `timeoutMs`. */
async function readUntil(c: XmppClient, what: string, match: (e: Element) => boolean, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = deadline - Date.now();
    const event = left > 0 ? await c.next(left).catch(() => null) : null;
    if (!event) throw new Error(`${c.name}: never got ${what}\n${c.recentTranscript()}`);
    if (event.kind === 'element' && match(event.element)) return event.element;
    if (event.kind === 'eof' || event.kind === 'close')
      throw new Error(`${c.name}: stream ended before ${what}`);
  }
}

const presenceFrom = (occupantJid: string, type?: string) => (e: Element) =>
  e.name === 'presence' && e.attrs.from === occupantJid && e.attrs.type === type;

/** A self-ping (XEP-0410) to `occupantJid`; resolves with the answer. */
function selfPing(c: XmppClient, occupantJid: string): Promise<Element> {
  return iq(c, 'get', occupantJid, `<ping xmlns='${NS_PING}'/>`);
}

describe('cluster: multi-user chat rooms on other nodes', function () {
  this.timeout(60_000);
  let cluster: TestCluster;
  let redis: Redis;
  const open: XmppClient[] = [];

  before(async function () {
    requireRedis(this);
    cluster = await startCluster({ nodes: 3, users: { xena: PASSWORD, yuri: PASSWORD } });
    redis = new Redis(cluster.redis.url);
  });

  after(async () => {
    redis?.disconnect();
    await cluster?.stop();
  });

  afterEach(async () => {
    await Promise.all(open.splice(0).map((c) => c.shutdown()));
  });

  /** Logged in as `user/resource` on node `node` (0: a, 1: b, 2: c). */
  async function login(node: number, user: string, resource: string): Promise<XmppClient> {
    const c = await XmppClient.connect({
      port: cluster.nodes[node]!.port,
      name: `${user}/${resource}@${node}`,
    });
    open.push(c);
    await c.login(user, PASSWORD, { resource });
    return c;
  }

  async function liveNodes(): Promise<string[]> {
    return (await redis.smembers('chorus:nodes')).sort();
  }

  /**
   * yuri on node b creates `room` and unlocks it; xena on node a joins as
   * Xena. Resolves when yuri has seen her arrive.
   */
  async function xenaAndYuriIn(room: string) {
    const yuri = await login(1, 'yuri', 'desk');
    await join(yuri, room, 'Yuri');
    await configureRoom(yuri, room);
    const xena = await login(0, 'xena', 'phone');
    const seen = await join(xena, room, 'Xena');
    expect(seen.some((e) => presenceFrom(`${room}@${MUC}/Yuri`)(e))).to.equal(true);
    await readUntil(yuri, 'Xena joining', presenceFrom(`${room}@${MUC}/Xena`));
    return { yuri, xena, xenaJid: xena.jid! };
  }

  it('tells the room when a device on another node disconnects, and lets it rejoin with its nick', async () => {
    const nodes = await liveNodes();
    expect(nodes).to.deep.equal(['a', 'b', 'c']);
    // Owned by c: xena is on a, yuri on b.
    const room = roomOwnedBy('c', nodes, 'cut');
    const { yuri, xena, xenaJid } = await xenaAndYuriIn(room);

    // Cut without a closing handshake (and no stream management to wait for).
    // This case also works without the MUC module's cluster notices: the
    // presence module of xena's node sends unavailable presence to whoever
    // got her directed presence (RFC 6121 4.6.3), the occupant JID included.
    // The node-death test below is the one that needs them.
    open.splice(open.indexOf(xena), 1);
    xena.destroy();
    const gone = await readUntil(
      yuri,
      "Xena's unavailable presence",
      presenceFrom(`${room}@${MUC}/Xena`, 'unavailable'),
    );
    expect(statusCodes(gone)).not.to.include('110');
    // yuri owns the room, so he sees real JIDs: the device that went.
    expect(item(gone)).to.include({ role: 'none', jid: xenaJid });

    // Back from another device and node, with the same nick: a new occupant.
    const again = await login(2, 'xena', 'laptop');
    const seq = await join(again, room, 'Xena');
    const self = seq.find(presenceFrom(`${room}@${MUC}/Xena`));
    expect(self, seq.join('\n')).not.to.equal(undefined);
    expect(statusCodes(self!)).to.include('110');
    const back = await readUntil(yuri, 'Xena rejoining', presenceFrom(`${room}@${MUC}/Xena`));
    expect(item(back).jid).to.equal(again.jid);
  });

  it('tells the room when the node of an occupant dies, and self-pings to moved rooms say to rejoin', async () => {
    const nodes = await liveNodes();
    expect(nodes).to.deep.equal(['a', 'b', 'c']);
    // Owned by c, which survives: xena's seat must go when a dies.
    const room = roomOwnedBy('c', nodes, 'kill');
    // Owned by a, which dies: the room moves to b or c, without its occupants.
    const moving = roomOwnedBy('a', nodes, 'moving');
    const { yuri } = await xenaAndYuriIn(room);
    await join(yuri, moving, 'Yuri');
    await configureRoom(yuri, moving);
    const ping = await selfPing(yuri, `${moving}@${MUC}/Yuri`);
    expect(ping.attrs.type, ping.toString()).to.equal('result');

    const xena = open.find((c) => c.name.startsWith('xena/'))!;
    open.splice(open.indexOf(xena), 1);
    const killedAt = Date.now();
    await cluster.nodes[0]!.kill('SIGKILL');
    xena.destroy();

    const gone = await readUntil(
      yuri,
      "Xena's unavailable presence",
      presenceFrom(`${room}@${MUC}/Xena`, 'unavailable'),
      cluster.nodeTtlMs + 10 * cluster.heartbeatMs + 5000,
    );
    const after = Date.now() - killedAt;
    expect(statusCodes(gone)).not.to.include('110');
    // The node's TTL, then a heartbeat or two for a survivor to notice and clean up.
    expect(after).to.be.at.most(cluster.nodeTtlMs + 3 * cluster.heartbeatMs + 1000);

    // The moved room's new owner does not have yuri as an occupant: XEP-0410
    // says the service answers not-acceptable, and the client rejoins.
    const survivors = nodes.filter((n) => n !== 'a');
    expect(ownerOf(survivors, `${moving}@${MUC}`)).not.to.equal('a');
    let answer = await selfPing(yuri, `${moving}@${MUC}/Yuri`);
    // Until b notices that a is gone, its stanzas to the room may still go to a.
    for (let i = 0; i < 20 && answer.attrs.type === 'result'; i++) {
      await new Promise((r) => setTimeout(r, cluster.heartbeatMs));
      answer = await selfPing(yuri, `${moving}@${MUC}/Yuri`);
    }
    expect(answer.attrs.type, answer.toString()).to.equal('error');
    expect(errorCondition(answer), answer.toString()).to.equal('not-acceptable');
    const rejoined = await join(yuri, moving, 'Yuri');
    expect(
      rejoined.some((e) => presenceFrom(`${moving}@${MUC}/Yuri`)(e) && statusCodes(e).includes('110')),
    ).to.equal(true);
  });

  it('gives a persistent room that moves to another node its stored owner, not the next joiner', async () => {
    // Whichever nodes are still up (the test before kills a): the room lives
    // on one that is not c, and moves when that node dies.
    const nodes = await liveNodes();
    const victim = nodes.find((n) => n !== 'c')!;
    const index = victim.charCodeAt(0) - 97;
    // Created now, after every node loaded the stored rooms: only the victim has it.
    const room = roomOwnedBy(victim, nodes, 'kept');
    const yuri = await login(index, 'yuri', 'owner');
    await join(yuri, room, 'Yuri');
    await configureRoom(yuri, room, { persistentroom: '1' });

    await cluster.nodes[index]!.kill('SIGKILL');
    open.splice(open.indexOf(yuri), 1);
    yuri.destroy();
    // The others take the room over once they see the victim gone.
    const deadline = Date.now() + cluster.nodeTtlMs + 10 * cluster.heartbeatMs;
    while ((await redis.exists(`chorus:alive:${victim}`)) === 1 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    await new Promise((r) => setTimeout(r, 3 * cluster.heartbeatMs));

    const xena = await login(2, 'xena', 'tablet');
    const seq = await join(xena, room, 'Xena');
    const self = seq.find(presenceFrom(`${room}@${MUC}/Xena`));
    expect(self, seq.join('\n')).not.to.equal(undefined);
    // Not a new room (201), and xena is nobody special in it.
    expect(statusCodes(self!)).not.to.include('201');
    expect(item(self!).affiliation).to.equal('none');
  });
});
