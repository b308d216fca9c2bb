// Cluster mode with real parts: a redis-server and Chorus nodes as separate
// processes sharing it and one SQLite file. Each client connects to the node
// a test chooses; what they see must be what one server would show.
import { expect } from 'chai';
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import {
  expectNoMessage,
  readUntil,
  requireRedis,
  sleep,
  startCluster,
  subscribe,
  useCluster,
} from '../helpers/cluster.ts';
import { available } from '../helpers/fixtures.ts';
import { parseConfig } from '../../src/config/index.ts';
import { freePort } from '../helpers/redis.ts';
import { startTestServer } from '../helpers/server.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'cluster-test-pw';
const USERS = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan', 'judy'];

describe('cluster: nodes sharing Redis and storage', function () {
  this.timeout(60_000);
  const fixture = useCluster(
    { nodes: 2, users: Object.fromEntries(USERS.map((u) => [u, PASSWORD])), metricsLogSeconds: 1 },
    PASSWORD,
  );
  const { clients } = fixture;

  const login = (node: number, user: string, resource?: string) => clients.login(node, user, resource);
  const online = (node: number, user: string, resource?: string) => clients.online(node, user, resource);

  it('registers each node and lists its sessions in the directory', async () => {
    const a = await login(0, 'alice', 'laptop');
    await login(1, 'alice', 'phone');
    const entries = await fixture.redis.hgetall('chorus:u:alice@localhost');
    expect(Object.keys(entries).sort()).to.deep.equal(['laptop', 'phone']);
    expect(JSON.parse(entries.laptop!).n).to.equal('a');
    expect(JSON.parse(entries.phone!).n).to.equal('b');
    expect(await fixture.redis.sismember('chorus:n:a', 'alice@localhost/laptop')).to.equal(1);
    await a.close();
    clients.forget(a);
    // Ending the session removes its entry and its per-node index mark.
    for (let i = 0; i < 50 && (await fixture.redis.hexists('chorus:u:alice@localhost', 'laptop')); i++)
      await sleep(20);
    expect(await fixture.redis.hexists('chorus:u:alice@localhost', 'laptop')).to.equal(0);
    expect(await fixture.redis.sismember('chorus:n:a', 'alice@localhost/laptop')).to.equal(0);
  });

  it('delivers a message from a client on node A to a client on node B, in order', async () => {
    const bob = await online(0, 'bob');
    const carol = await online(1, 'carol');
    for (let i = 0; i < 20; i++) {
      bob.send(`<message to='carol@localhost' type='chat' id='m${i}'><body>hello ${i}</body></message>`);
    }
    for (let i = 0; i < 20; i++) {
      await carol.expect(
        `<message from='${bob.jid}' type='chat' id='m${i}'><body>hello ${i}</body></message>`,
      );
    }
    // And back, to the full JID.
    carol.send(`<message to='${bob.jid}' type='chat' id='back'><body>hi bob</body></message>`);
    await bob.expect(`<message from='${carol.jid}' id='back'><body>hi bob</body></message>`);
  });

  it('answers an IQ to a full JID on another node, and bounces one to a missing resource', async () => {
    const dave = await online(0, 'dave');
    const erin = await online(1, 'erin');
    dave.send(`<iq type='get' to='${erin.jid}' id='q1'><query xmlns='urn:example:x'/></iq>`);
    const iq = await erin.expect(`<iq type='get' from='${dave.jid}' id='q1'/>`);
    expect(iq.attrs.to).to.equal(erin.jid);
    erin.send(`<iq type='result' to='${dave.jid}' id='q1'/>`);
    await dave.expect(`<iq type='result' from='${erin.jid}' id='q1'/>`);
    dave.send(`<iq type='get' to='erin@localhost/nowhere' id='q2'><query xmlns='urn:example:x'/></iq>`);
    await dave.expect(
      `<iq type='error' id='q2'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>`,
    );
  });

  it('broadcasts presence to contacts on other nodes and answers probes across nodes', async () => {
    const frank = await online(0, 'frank');
    const grace = await online(1, 'grace');
    await subscribe(frank, grace);
    frank.send(`<presence><show>away</show><status>lunch</status></presence>`);
    await readUntil(
      grace,
      `<presence from='${frank.jid}'><show>away</show><status>lunch</status></presence>`,
    );
    // A new device of grace on node A learns frank's presence (on node A) and
    // a new device of frank on node B learns grace's (on node B) by probes.
    const grace2 = await login(0, 'grace', 'second');
    grace2.send('<presence/>');
    await readUntil(grace2, `<presence from='${frank.jid}'><show>away</show></presence>`);
    const frank2 = await login(1, 'frank', 'second');
    frank2.send('<presence/>');
    await readUntil(frank2, `<presence from='${grace.jid}'/>`);
    // Unavailable crosses nodes too.
    grace.send(`<presence type='unavailable'/>`);
    await readUntil(frank, `<presence from='${grace.jid}' type='unavailable'/>`);
  });

  it('copies messages to carbons-enabled devices on other nodes', async () => {
    const heidi = await online(0, 'heidi', 'desk');
    const heidiPhone = await online(1, 'heidi', 'phone');
    const ivan = await online(1, 'ivan');
    for (const c of [heidi, heidiPhone]) {
      c.send(`<iq type='set' id='cb'><enable xmlns='urn:xmpp:carbons:2'/></iq>`);
      await readUntil(c, `<iq type='result' id='cb'/>`);
    }
    heidi.send(`<message to='${ivan.jid}' type='chat' id='c1'><body>sent from desk</body></message>`);
    await readUntil(
      heidiPhone,
      `<message from='heidi@localhost' to='${heidiPhone.jid}'><sent xmlns='urn:xmpp:carbons:2'/></message>`,
    );
    ivan.send(`<message to='${heidiPhone.jid}' type='chat' id='c2'><body>to the phone</body></message>`);
    await readUntil(
      heidi,
      `<message from='heidi@localhost' to='${heidi.jid}'><received xmlns='urn:xmpp:carbons:2'/></message>`,
    );
  });

  it('copies to a device on another node from the moment its carbons <enable/> is answered', async () => {
    // Regression: the answer used to go out before the other node could know,
    // so a message sent right after it missed the new carbons device.
    const judy = await online(0, 'judy', 'desk');
    const judyPhone = await online(1, 'judy', 'phone');
    const ivan = await online(0, 'ivan', 'carbons');
    for (let round = 0; round < 10; round++) {
      // A message from the desk makes node A look up (and cache) judy's devices.
      judy.send(`<message to='${ivan.jid}' type='chat' id='warm${round}'><body>warm</body></message>`);
      await readUntil(ivan, `<message id='warm${round}'/>`);
      judyPhone.send(`<iq type='set' id='on${round}'><enable xmlns='urn:xmpp:carbons:2'/></iq>`);
      await readUntil(judyPhone, `<iq type='result' id='on${round}'/>`);
      judy.send(`<message to='${ivan.jid}' type='chat' id='copy${round}'><body>right away</body></message>`);
      // The first message the phone sees is this copy: none of the warm-up
      // message, sent while its carbons were still off.
      await judyPhone.expect(
        `<message from='judy@localhost' to='${judyPhone.jid}'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message id='copy${round}'/></forwarded></sent></message>`,
      );
      judyPhone.send(`<iq type='set' id='off${round}'><disable xmlns='urn:xmpp:carbons:2'/></iq>`);
      await readUntil(judyPhone, `<iq type='result' id='off${round}'/>`);
    }
  });

  it('routes to a device that logged in on another node right after a message warmed the cache', async () => {
    const bob = await online(1, 'bob', 'cache');
    const dave = await online(0, 'dave', 'one');
    // Node B now knows (and caches) dave's sessions.
    bob.send(`<message to='dave@localhost' id='w1'><body>first</body></message>`);
    await readUntil(dave, `<message id='w1'><body>first</body></message>`);
    const dave2 = await online(0, 'dave', 'two');
    // A normal message to the bare JID goes to every available resource:
    // the new one must be known on node B at once, not after a cache expiry.
    bob.send(`<message to='dave@localhost' id='w2'><body>second</body></message>`);
    await readUntil(dave, `<message id='w2'><body>second</body></message>`, 1000);
    await readUntil(dave2, `<message id='w2'><body>second</body></message>`, 1000);
  });

  it('delivers a chat message to the bare JID to the highest-priority resource, on whichever node', async () => {
    const low = await login(0, 'frank', 'low');
    low.send('<presence><priority>1</priority></presence>');
    await readUntil(low, `<presence from='${low.jid}'/>`);
    const high = await login(1, 'frank', 'high');
    high.send('<presence><priority>5</priority></presence>');
    await readUntil(high, `<presence from='${high.jid}'/>`);
    const sender = await online(0, 'alice', 'prio');
    sender.send(`<message to='frank@localhost' type='chat' id='p1'><body>to the top</body></message>`);
    await readUntil(high, `<message id='p1'><body>to the top</body></message>`);
    await expectNoMessage(low, 300);
    // The priorities swap: node A learns it from the directory.
    high.send('<presence><priority>0</priority></presence>');
    await readUntil(low, `<presence from='${high.jid}'/>`);
    sender.send(`<message to='frank@localhost' type='chat' id='p2'><body>now to low</body></message>`);
    await readUntil(low, `<message id='p2'><body>now to low</body></message>`);
  });

  it('applies a block list changed on one node to messages routed by another', async () => {
    const kate = await online(0, 'grace', 'block');
    const sender = await online(1, 'ivan', 'block');
    sender.send(`<message to='grace@localhost' type='chat' id='b1'><body>hello</body></message>`);
    await readUntil(kate, `<message id='b1'><body>hello</body></message>`);
    kate.send(
      `<iq type='set' id='blk'><block xmlns='urn:xmpp:blocking'><item jid='ivan@localhost'/></block></iq>`,
    );
    await readUntil(kate, `<iq type='result' id='blk'/>`);
    // Node B had grace's (empty) list cached; the change must reach it.
    sender.send(`<message to='grace@localhost' type='chat' id='b2'><body>blocked?</body></message>`);
    await readUntil(
      sender,
      `<message type='error' from='grace@localhost' id='b2'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>`,
    );
    await expectNoMessage(kate, 300);
  });

  it('logs per-node routing metrics: sessions, stanzas across nodes and bus latency', async () => {
    const sender = await online(0, 'carol', 'metrics');
    const receiver = await online(1, 'erin', 'metrics');
    sender.send(`<message to='${receiver.jid}' id='mx'><body>count me</body></message>`);
    await readUntil(receiver, `<message id='mx'><body>count me</body></message>`);
    // Only lines logged after the delivery: earlier tests left lines whose
    // counters are non-zero too, from before these sessions existed.
    const since = Date.now();
    const metricsOf = (node: number) =>
      fixture.cluster.nodes[node]!.output()
        .split('\n')
        .filter((line) => line.includes('"cluster metrics"'))
        .map((line) => JSON.parse(line) as Record<string, number>)
        .filter((m) => m.time! >= since);
    const counted = () =>
      metricsOf(0).some((m) => m.sentToNodes! > 0) && metricsOf(1).some((m) => m.receivedFromNodes! > 0);
    for (let i = 0; i < 40 && !counted(); i++) await sleep(100);
    const a = metricsOf(0).at(-1)!;
    const b = metricsOf(1).at(-1)!;
    expect(a.sentToNodes).to.be.greaterThan(0);
    expect(b.receivedFromNodes).to.be.greaterThan(0);
    expect(b.sessions).to.be.at.least(1);
    expect(b).to.have.property('busLatencyMeanMs').that.is.a('number');
    expect(b).to.have.property('router');
  });

  it('leaves exactly one session when the same resource binds on two nodes', async () => {
    const first = await login(0, 'judy', 'same');
    const second = await login(1, 'judy', 'same');
    await first.expectStreamError('conflict', 5000);
    clients.forget(first);
    const entries = await fixture.redis.hgetall('chorus:u:judy@localhost');
    expect(Object.keys(entries)).to.deep.equal(['same']);
    expect(JSON.parse(entries.same!).n).to.equal('b');
    // The survivor is reachable from node A.
    const bob = await online(0, 'bob', 'x');
    bob.send(`<message to='${second.jid}' id='s1'><body>still there?</body></message>`);
    await readUntil(second, `<message id='s1'><body>still there?</body></message>`);
  });

  it('binds one of two simultaneous logins with the same resource on two nodes, under any interleaving', async () => {
    for (let round = 0; round < 5; round++) {
      const [x, y] = await Promise.all([
        XmppClient.connect({ port: fixture.cluster.nodes[0]!.port, name: `race-a${round}` }),
        XmppClient.connect({ port: fixture.cluster.nodes[1]!.port, name: `race-b${round}` }),
      ]);
      clients.track(x, y);
      const resource = `race${round}`;
      await Promise.all([x.login('erin', PASSWORD, { resource }), y.login('erin', PASSWORD, { resource })]);
      // replace_old: one of the two is told it was replaced, the other stays.
      await sleep(300);
      const entries = await fixture.redis.hgetall('chorus:u:erin@localhost');
      expect(Object.keys(entries).filter((r) => r === `race${round}`)).to.have.length(1);
      const survivor = JSON.parse(entries[`race${round}`]!).n === 'a' ? x : y;
      const loser = survivor === x ? y : x;
      await loser.expectStreamError('conflict', 5000);
      clients.forget(loser);
    }
  });
});

describe('cluster: a node that dies', function () {
  this.timeout(60_000);
  const fixture = useCluster({ nodes: 2, users: { kate: PASSWORD, liam: PASSWORD } }, PASSWORD, 'destroy');
  const { clients } = fixture;

  const online = (node: number, user: string, resource?: string) => clients.online(node, user, resource);

  it('loses its sessions from the directory within the heartbeat TTL, and messages for its users go to offline storage', async () => {
    const liam = await online(0, 'liam');
    const kate = await online(1, 'kate');
    // Liam is subscribed to Kate's presence, so he must learn that she is gone.
    liam.send(`<presence to='kate@localhost' type='subscribe'/>`);
    await readUntil(kate, `<presence from='liam@localhost' type='subscribe'/>`);
    kate.send(`<presence to='liam@localhost' type='subscribed'/>`);
    await readUntil(liam, `<presence from='${kate.jid}'/>`);
    liam.send(`<message to='kate@localhost' type='chat' id='before'><body>before</body></message>`);
    await readUntil(kate, `<message id='before'><body>before</body></message>`);

    const killedAt = Date.now();
    await fixture.cluster.nodes[1]!.kill('SIGKILL');
    kate.destroy();
    // Sent at once: node B's heartbeat has not expired yet, so the directory
    // still names it, but nobody listens on its channel any more.
    liam.send(`<message to='kate@localhost' type='chat' id='m1'><body>while dying</body></message>`);

    let gone = -1;
    while (Date.now() - killedAt < fixture.cluster.nodeTtlMs + 10 * fixture.cluster.heartbeatMs) {
      const entries = await fixture.redis.hlen('chorus:u:kate@localhost');
      if (entries === 0) {
        gone = Date.now() - killedAt;
        break;
      }
      await sleep(25);
    }
    expect(gone, 'kate@localhost/r still in the directory').to.be.at.least(0);
    // The TTL, plus up to one heartbeat for a survivor to notice and reap.
    expect(gone).to.be.at.most(fixture.cluster.nodeTtlMs + 2 * fixture.cluster.heartbeatMs + 500);
    expect(await fixture.redis.scard('chorus:n:b')).to.equal(0);
    // The node itself leaves the list right after its last batch.
    for (let i = 0; i < 40 && (await fixture.redis.sismember('chorus:nodes', 'b')) === 1; i++)
      await sleep(25);
    expect(await fixture.redis.sismember('chorus:nodes', 'b')).to.equal(0);

    await readUntil(liam, `<presence from='kate@localhost/r' type='unavailable'/>`);
    liam.send(`<message to='kate@localhost/r' type='chat' id='m2'><body>after</body></message>`);
    // Nothing bounced to the sender: both went to storage.
    await liam.expectNothing(300);
    const again = await online(0, 'kate', 'back');
    const bodies: string[] = [];
    while (bodies.length < 2) {
      const event = await again.next(5000);
      if (event.kind === 'element' && event.element.name === 'message') {
        bodies.push(event.element.getChildText('body') ?? '');
      }
    }
    expect(bodies).to.deep.equal(['while dying', 'after']);
  });
});

describe('cluster: group chat with occupants on different nodes', function () {
  this.timeout(60_000);
  const { clients } = useCluster(
    { nodes: 3, users: { mia: PASSWORD, noah: PASSWORD, olga: PASSWORD } },
    PASSWORD,
    'shutdown',
  );
  const MUC = 'http://jabber.org/protocol/muc';
  const ROOM = 'lounge@conference.localhost';

  async function online(node: number, user: string): Promise<XmppClient> {
    const c = await clients.connect(node, user);
    await c.login(user, PASSWORD, { resource: 'r' });
    await available(c);
    return c;
  }

  async function next(c: XmppClient, name: string): Promise<import('ltx').Element> {
    for (;;) {
      const event = await c.next(5000);
      if (event.kind === 'element' && event.element.name === name) return event.element;
    }
  }

  it('shows every occupant the others’ presence and messages, wherever each is connected', async () => {
    const mia = await online(0, 'mia');
    const noah = await online(1, 'noah');
    const olga = await online(2, 'olga');

    mia.send(`<presence to='${ROOM}/Mia'><x xmlns='${MUC}'/></presence>`);
    await mia.expect(
      `<presence from='${ROOM}/Mia'><x xmlns='${MUC}#user'><status code='110'/><status code='201'/></x></presence>`,
    );
    await next(mia, 'message'); // the (empty) subject
    mia.send(
      `<iq type='set' to='${ROOM}' id='instant'><query xmlns='${MUC}#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>`,
    );
    await mia.expect(`<iq type='result' from='${ROOM}' id='instant'/>`);

    noah.send(`<presence to='${ROOM}/Noah'><x xmlns='${MUC}'/></presence>`);
    // Noah (node B) first gets Mia's presence, then his own with 110.
    expect((await next(noah, 'presence')).attrs.from).to.equal(`${ROOM}/Mia`);
    expect((await next(noah, 'presence')).attrs.from).to.equal(`${ROOM}/Noah`);
    await next(noah, 'message'); // the subject
    expect((await next(mia, 'presence')).attrs.from).to.equal(`${ROOM}/Noah`);

    olga.send(`<presence to='${ROOM}/Olga'><x xmlns='${MUC}'/></presence>`);
    const seen = [(await next(olga, 'presence')).attrs.from, (await next(olga, 'presence')).attrs.from];
    expect(seen.sort()).to.deep.equal([`${ROOM}/Mia`, `${ROOM}/Noah`]);
    expect((await next(olga, 'presence')).attrs.from).to.equal(`${ROOM}/Olga`);
    await next(olga, 'message'); // the subject
    for (const c of [mia, noah]) expect((await next(c, 'presence')).attrs.from).to.equal(`${ROOM}/Olga`);

    for (const [sender, nick] of [
      [noah, 'Noah'],
      [olga, 'Olga'],
      [mia, 'Mia'],
    ] as const) {
      sender.send(
        `<message to='${ROOM}' type='groupchat' id='from-${nick}'><body>hi from ${nick}</body></message>`,
      );
      for (const c of [mia, noah, olga]) {
        const message = await next(c, 'message');
        expect(message.attrs.from).to.equal(`${ROOM}/${nick}`);
        expect(message.getChildText('body')).to.equal(`hi from ${nick}`);
      }
    }
  });
});

/** The names of the temporary directories starting with `prefix`, sorted. */
function testDirs(prefix: string): string[] {
  return readdirSync(tmpdir())
    .filter((name) => name.startsWith(prefix))
    .sort();
}

describe('cluster: configuration and start-up errors', () => {
  it('refuses to start, naming cluster.redis_url and the cause, when Redis cannot be reached', async () => {
    const port = await freePort(); // nothing listens there
    const serverDirs = () =>
      testDirs('chorus-test-').filter((name) => !name.startsWith('chorus-test-certs-'));
    const before = serverDirs();
    let error: Error | null = null;
    await startTestServer({ yaml: `cluster: { redis_url: 'redis://127.0.0.1:${port}' }` }).then(
      (s) => s.stop(),
      (err: Error) => (error = err),
    );
    expect(error, 'the server started without Redis').to.not.equal(null);
    // The failed start leaves no directory behind (it did, one per failed start).
    expect(serverDirs()).to.deep.equal(before);
    expect(error!.message).to.include(`cannot reach Redis at redis://127.0.0.1:${port} (cluster.redis_url)`);
    expect(error!.message).to.include('ECONNREFUSED');
  });

  // A node that fails to start must not leave the test's redis-server and
  // started nodes running (one did, after a port clash, until this fix).
  it('cleans up its Redis and nodes when a test cluster fails to start', async function () {
    requireRedis(this);
    this.timeout(30_000);
    const redisDirs = () => testDirs('chorus-test-redis-');
    const before = redisDirs();
    let error: Error | null = null;
    await startCluster({ nodes: 2, modules: ['no-such-module'] }).then(
      (cluster) => cluster.stop(),
      (err: Error) => (error = err),
    );
    expect(error, 'the cluster started with an unknown module').to.not.equal(null);
    expect(error!.message).to.include('no-such-module');
    // The Redis helper removes its directory only once redis-server has exited.
    expect(redisDirs()).to.deep.equal(before);
  });

  it('rejects more than one worker without a Redis URL, naming the option', () => {
    expect(() => parseConfig('cluster: { workers: 2 }', { file: 'x.yaml', env: {} })).to.throw(
      /x\.yaml:1:\d+: cluster\.workers needs cluster\.redis_url/,
    );
  });
});
