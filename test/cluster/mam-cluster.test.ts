// Message archive preferences in a cluster: the node that archives a
// message for a user may not be the node where the user changed them.
import { expect } from 'chai';
import type { Element } from 'ltx';
import { startCluster, type TestCluster, requireRedis, sleep } from '../helpers/cluster.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'mam-cluster-test-pw';
const NS_MAM = 'urn:xmpp:mam:2';

describe('cluster: archive preferences changed on another node', function () {
  this.timeout(60_000);
  let cluster: TestCluster;
  const clients: XmppClient[] = [];

  before(async function () {
    requireRedis(this);
    cluster = await startCluster({ nodes: 2, users: { gus: PASSWORD, hal: PASSWORD } });
  });

  after(async () => {
    for (const c of clients) c.destroy();
    await cluster?.stop();
  });

  async function login(node: number, user: string): Promise<XmppClient> {
    const c = await XmppClient.connect({ port: cluster.nodes[node]!.port, name: `${user}@${node}` });
    clients.push(c);
    await c.login(user, PASSWORD, { resource: 'r' });
    c.send('<presence/>');
    await next(c, (e) => e.name === 'presence' && e.attrs.from === c.jid);
    return c;
  }

  async function next(c: XmppClient, match: (e: Element) => boolean): Promise<Element> {
    for (;;) {
      const event = await c.next(5000);
      if (event.kind === 'element' && match(event.element)) return event.element;
    }
  }

  /** The bodies in the user's archive, oldest first. */
  async function archivedBodies(c: XmppClient): Promise<string[]> {
    const id = c.nextId('mam');
    c.send(`<iq type='set' id='${id}'><query xmlns='${NS_MAM}' queryid='${id}'/></iq>`);
    const bodies: string[] = [];
    for (;;) {
      const e = await next(c, (x) => x.name === 'message' || (x.name === 'iq' && x.attrs.id === id));
      if (e.name === 'iq') return bodies;
      const body = e
        .getChild('result', NS_MAM)
        ?.getChild('forwarded')
        ?.getChild('message')
        ?.getChildText('body');
      if (body) bodies.push(body);
    }
  }

  it('stops archiving on every node once the user says never', async () => {
    const gus = await login(0, 'gus');
    const hal = await login(1, 'hal');
    // Node B archives this for gus, and remembers gus's (default) preferences.
    hal.send(`<message to='gus@localhost' type='chat' id='m1'><body>kept</body></message>`);
    await next(gus, (e) => e.attrs.id === 'm1');
    let bodies: string[] = [];
    for (let i = 0; i < 20 && bodies.length === 0; i++, await sleep(100)) bodies = await archivedBodies(gus);
    expect(bodies).to.deep.equal(['kept']);

    gus.send(`<iq type='set' id='prefs'><prefs xmlns='${NS_MAM}' default='never'/></iq>`);
    await next(gus, (e) => e.name === 'iq' && e.attrs.id === 'prefs' && e.attrs.type === 'result');
    // The other nodes learn of the change over the bus, a moment after the
    // answer: a message already on its way through another node may still
    // be archived under the old preferences, as on any distributed server.
    await sleep(300);
    hal.send(`<message to='gus@localhost' type='chat' id='m2'><body>not kept</body></message>`);
    await next(gus, (e) => e.attrs.id === 'm2');
    await sleep(500); // archive writes are committed in the background
    expect(await archivedBodies(gus)).to.deep.equal(['kept']);
  });
});
