// Server-initiated pings (XEP-0199) that find dead connections, and
// whitespace keepalives from clients.
import { expect } from 'chai';
import { useServer } from '../helpers/fixtures.ts';
import { type TestServer } from '../helpers/server.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'keepalive-test-pw';
const NS_PING = 'urn:xmpp:ping';
const NS_STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';
const PING = `<iq type='get' from='localhost'><ping xmlns='${NS_PING}'/></iq>`;

let seq = 0;
const clients: XmppClient[] = [];

async function login(server: TestServer): Promise<XmppClient> {
  const user = `ka${++seq}`;
  await server.addUser(user, PASSWORD);
  const c = await XmppClient.connect({ port: server.port, name: user });
  clients.push(c);
  await c.login(user, PASSWORD, { resource: 'r' });
  return c;
}

/** A round trip: the server still serves this client. */
async function roundTrip(c: XmppClient): Promise<void> {
  const id = c.nextId('rt');
  c.send(`<iq type='get' id='${id}' to='localhost'><ping xmlns='${NS_PING}'/></iq>`);
  await c.expect(`<iq type='result' id='${id}'/>`);
}

/** Answers the server's pings with `answer(id)` for `ms`; returns how many came. */
async function answerPings(c: XmppClient, ms: number, answer: (id: string) => string): Promise<number> {
  const until = Date.now() + ms;
  let pings = 0;
  for (;;) {
    const left = until - Date.now();
    if (left <= 0) return pings;
    let event;
    try {
      event = await c.next(left);
    } catch {
      return pings; // quiet until the end
    }
    if (event.kind !== 'element') throw new Error(`${c.name}: the stream ended (${event.kind})`);
    const ping = event.element;
    const reason = c.check(PING, ping);
    if (reason !== null) throw new Error(`${c.name}: expected a ping, got ${ping.toString()}`);
    pings++;
    c.send(answer(String(ping.attrs.id)));
  }
}

afterEach(() => {
  for (const c of clients.splice(0)) c.destroy();
});

describe('keepalive: server pings (XEP-0199)', function () {
  this.timeout(20_000);
  const server = useServer({
    yaml: [
      'modules: [disco, ping, roster, presence, smacks, csi, keepalive]',
      'module_options: { keepalive: { interval_seconds: 1, timeout_seconds: 1 } }',
    ].join('\n'),
  });

  it('a client that answers pings stays connected', async () => {
    const c = await login(server);
    const pings = await answerPings(c, 4500, (id) => `<iq type='result' to='localhost' id='${id}'/>`);
    expect(pings, 'pings received in 4.5 s').to.be.at.least(2);
    expect(c.ended).to.equal(false);
    await roundTrip(c);
  });

  it('a client that answers with an error (no ping support) stays connected', async () => {
    const c = await login(server);
    const pings = await answerPings(
      c,
      4500,
      (id) =>
        `<iq type='error' to='localhost' id='${id}'><error type='cancel'><service-unavailable xmlns='${NS_STANZAS}'/></error></iq>`,
    );
    expect(pings, 'pings received in 4.5 s').to.be.at.least(2);
    expect(c.ended).to.equal(false);
    await roundTrip(c);
  });

  it('a client that ignores pings is disconnected with connection-timeout', async () => {
    const c = await login(server);
    const started = Date.now();
    await c.expect(PING, 3000);
    await c.expectStreamError('connection-timeout', 3000);
    // One interval of idleness, then one timeout: not before.
    expect(Date.now() - started).to.be.at.least(900);
  });

  it('a client that keeps sending stanzas is not pinged', async () => {
    const c = await login(server);
    for (let i = 0; i < 6; i++) {
      await roundTrip(c); // fails on anything but the result, a ping included
      await new Promise((r) => setTimeout(r, 400));
    }
    await roundTrip(c);
  });

  it('whitespace between and around stanzas keeps working', async () => {
    const c = await login(server);
    c.sendRaw(' ');
    c.sendRaw('\n\n');
    c.sendRaw(`\r\n\t <iq type='get' id='w1' to='localhost'><ping xmlns='${NS_PING}'/></iq>  \n`);
    await c.expect(`<iq type='result' id='w1'/>`);
    c.sendRaw(' ');
    await new Promise((r) => setTimeout(r, 100));
    c.sendRaw(' \n');
    c.sendRaw(`<iq type='get' id='w2' to='localhost'><ping xmlns='${NS_PING}'/></iq>`);
    await c.expect(`<iq type='result' id='w2'/>`);
    expect(c.ended).to.equal(false);
  });
});
