// How the Redis session directory recovers from what goes wrong in a real
// cluster: a node taken for dead while it still runs, a node that just
// joined, and a node restarted under the same id before anyone noticed it
// had died. Real redis-server, real Chorus processes.
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { readUntil, startCluster, type TestCluster, requireRedis, sleep } from '../helpers/cluster.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'recovery-test-pw';

function describeWithCluster(
  title: string,
  options: { nodes: number; users: string[]; heartbeatMs: number; nodeTtlMs: number },
  body: (get: () => { cluster: TestCluster; redis: Redis; clients: XmppClient[] }) => void,
): void {
  describe(title, function () {
    this.timeout(60_000);
    let cluster: TestCluster;
    let redis: Redis;
    const clients: XmppClient[] = [];
    before(async function () {
      requireRedis(this);
      cluster = await startCluster({
        nodes: options.nodes,
        users: Object.fromEntries(options.users.map((u) => [u, PASSWORD])),
        heartbeatMs: options.heartbeatMs,
        nodeTtlMs: options.nodeTtlMs,
      });
      redis = new Redis(cluster.redis.url);
    });
    after(async () => {
      for (const c of clients) c.destroy();
      redis?.disconnect();
      await cluster?.stop();
    });
    body(() => ({ cluster, redis, clients }));
  });
}

async function online(
  clients: XmppClient[],
  port: number,
  user: string,
  resource = 'r',
): Promise<XmppClient> {
  const c = await XmppClient.connect({ port, name: `${user}/${resource}` });
  clients.push(c);
  await c.login(user, PASSWORD, { resource });
  c.send(`<presence/>`);
  await readUntil(c, `<presence from='${c.jid}' to='${c.jid}'/>`);
  return c;
}

describeWithCluster(
  'cluster directory: a node taken for dead while it runs',
  { nodes: 2, users: ['ann', 'ben'], heartbeatMs: 200, nodeTtlMs: 800 },
  (get) => {
    it('publishes its sessions again, so the others reach them', async () => {
      const { cluster, redis, clients } = get();
      const ann = await online(clients, cluster.nodes[0]!.port, 'ann');
      const ben = await online(clients, cluster.nodes[1]!.port, 'ben');
      // What a survivor does when it believes node a died (an event-loop
      // stall or a Redis restart): the heartbeat and the entries are gone.
      await redis.del('chorus:alive:a', 'chorus:u:ann@localhost', 'chorus:n:a');
      let back = false;
      for (let i = 0; i < 40 && !back; i++) {
        await sleep(50);
        back = (await redis.hexists('chorus:u:ann@localhost', 'r')) === 1;
      }
      expect(back, 'node a did not publish ann again').to.equal(true);
      expect(await redis.sismember('chorus:n:a', 'ann@localhost/r')).to.equal(1);
      ben.send(`<message to='ann@localhost' type='chat' id='after'><body>still here?</body></message>`);
      await readUntil(ann, `<message id='after'><body>still here?</body></message>`);
    });
  },
);

describeWithCluster(
  'cluster directory: a node that just joined',
  // Slow heartbeats: without an announcement the others would not know the
  // new node for up to two seconds.
  { nodes: 1, users: ['cat', 'dan'], heartbeatMs: 2000, nodeTtlMs: 6000 },
  (get) => {
    it('is reachable at once, before the next heartbeat of the others', async () => {
      const { cluster, clients } = get();
      const cat = await online(clients, cluster.nodes[0]!.port, 'cat');
      const node = await cluster.startNode('b');
      const dan = await online(clients, node.port, 'dan');
      cat.send(`<message to='dan@localhost' type='chat' id='hi'><body>welcome</body></message>`);
      await readUntil(dan, `<message id='hi'><body>welcome</body></message>`, 1500);
    });
  },
);

describeWithCluster(
  'cluster directory: a node restarted under the same id',
  // A long TTL: the node is back before anyone notices that it died.
  { nodes: 2, users: ['eve', 'fay'], heartbeatMs: 1000, nodeTtlMs: 8000 },
  (get) => {
    it('reports the sessions its previous run left, so contacts see them go', async () => {
      const { cluster, redis, clients } = get();
      const eve = await online(clients, cluster.nodes[0]!.port, 'eve');
      const fay = await online(clients, cluster.nodes[1]!.port, 'fay');
      eve.send(`<presence to='fay@localhost' type='subscribe'/>`);
      await readUntil(fay, `<presence from='eve@localhost' type='subscribe'/>`);
      fay.send(`<presence to='eve@localhost' type='subscribed'/>`);
      await readUntil(eve, `<presence from='${fay.jid}'/>`);

      await cluster.nodes[1]!.kill('SIGKILL');
      fay.destroy();
      expect(await redis.exists('chorus:alive:b'), 'the heartbeat should outlive the restart').to.equal(1);
      await cluster.startNode('b');
      await readUntil(eve, `<presence from='${fay.jid}' type='unavailable'/>`);
      expect(await redis.hlen('chorus:u:fay@localhost')).to.equal(0);
    });
  },
);
