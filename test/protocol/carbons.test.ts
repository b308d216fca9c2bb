// Message Carbons (XEP-0280) with the XEP-0334 no-copy hint, with real
// clients against a real server: Romeo has two devices, Juliet one.
import { expect } from 'chai';
import { parse, type Element } from 'ltx';
import { testJids, useServer } from '../helpers/fixtures.ts';
import type { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'carbons-test-pw';
const NS_CARBONS = 'urn:xmpp:carbons:2';
const NS_FORWARD = 'urn:xmpp:forward:0';
const NS_HINTS = 'urn:xmpp:hints';
const NS_STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';
const MODULES = 'modules: [disco, ping, roster, presence, carbons]';

interface Cast {
  romeo: string;
  juliet: string;
  /** Romeo's devices, in login order. */
  a: XmppClient;
  b: XmppClient;
  j: XmppClient;
}

interface DeviceOptions {
  carbons?: boolean;
  priority?: number;
}

describe('message carbons (XEP-0280)', function () {
  this.timeout(20_000);
  const server = useServer({ yaml: MODULES });

  const { newUser, login } = testJids(PASSWORD, () => server);

  async function enable(c: XmppClient, xml = `<enable xmlns='${NS_CARBONS}'/>`, to = ''): Promise<void> {
    const id = c.nextId('carbons');
    c.send(`<iq type='set' id='${id}'${to}>${xml}</iq>`);
    await c.expect(`<iq type='result' id='${id}'/>`);
  }

  /** Initial presence; the devices already online and the new one see each other's presence. */
  async function goOnline(c: XmppClient, others: XmppClient[], priority = 0): Promise<void> {
    c.send(`<presence><priority>${priority}</priority></presence>`);
    await c.expect(`<presence from='${c.jid}'/>`);
    for (const o of others) await c.expect(`<presence from='${o.jid}'/>`);
    for (const o of others) await o.expect(`<presence from='${c.jid}'/>`);
  }

  /** Romeo with devices a and b, Juliet with device j; all online. */
  async function cast(a: DeviceOptions = {}, b: DeviceOptions = {}): Promise<Cast> {
    const romeo = await newUser('romeo');
    const juliet = await newUser('juliet');
    const devA = await login(romeo, 'a');
    const devB = await login(romeo, 'b');
    const devJ = await login(juliet, 'j');
    if (a.carbons ?? true) await enable(devA);
    if (b.carbons ?? true) await enable(devB);
    await goOnline(devA, [], a.priority);
    await goOnline(devB, [devA], b.priority);
    await goOnline(devJ, []);
    return { romeo, juliet, a: devA, b: devB, j: devJ };
  }

  async function quiet(...cs: XmppClient[]): Promise<void> {
    await Promise.all(cs.map((c) => c.expectNothing()));
  }

  function child(element: Element, name: string, ns: string): Element | undefined {
    return element.getChild(name, ns);
  }

  // ---- enabling and discovery ------------------------------------------------------

  it('advertises urn:xmpp:carbons:2 in the server’s disco#info', async () => {
    const romeo = await newUser('romeo');
    const c = await login(romeo, 'a');
    c.send(
      `<iq type='get' id='d1' to='${server.domain}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>`,
    );
    await c.expect(
      `<iq type='result' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='${NS_CARBONS}'/></query></iq>`,
    );
  });

  it('answers enable and disable with a result, also when addressed to the own bare JID and when repeated', async () => {
    const romeo = await newUser('romeo');
    const c = await login(romeo, 'a');
    await enable(c);
    await enable(c); // repeated: still a result (section 10.1)
    await enable(c, `<disable xmlns='${NS_CARBONS}'/>`, ` to='${romeo}'`);
    await enable(c, `<disable xmlns='${NS_CARBONS}'/>`);
    await enable(c, `<enable xmlns='${NS_CARBONS}'/>`, ` to='${romeo}'`);
  });

  it('does not take carbon requests addressed to another account', async () => {
    const { juliet, a, j } = await cast();
    a.send(`<iq type='set' id='x1' to='${juliet}'><enable xmlns='${NS_CARBONS}'/></iq>`);
    await a.expect(
      `<iq type='error' id='x1'><error><service-unavailable xmlns='${NS_STANZAS}'/></error></iq>`,
    );
    await quiet(j);
  });

  // ---- sent carbons ----------------------------------------------------------------

  it('copies a chat message Romeo sends from one device to his other device as <sent/>', async () => {
    const { romeo, a, b, j } = await cast();
    a.send(`<message to='${j.jid}' type='chat' id='s1'><body>Neither, fair saint</body></message>`);
    await j.expect(
      `<message from='${a.jid}' to='${j.jid}' type='chat' id='s1'><body>Neither, fair saint</body></message>`,
    );
    await b.expect(
      `<message from='${romeo}' to='${b.jid}' type='chat' strict='true'>
        <sent xmlns='${NS_CARBONS}' strict='true'>
          <forwarded xmlns='${NS_FORWARD}' strict='true'>
            <message xmlns='jabber:client' from='${a.jid}' to='${j.jid}' type='chat' id='s1' strict='true'>
              <body>Neither, fair saint</body>
            </message>
          </forwarded>
        </sent>
      </message>`,
    );
    await quiet(a, b, j);
  });

  it('copies a message to a bare JID with the bare JID kept in the forwarded original', async () => {
    const { romeo, juliet, a, b, j } = await cast();
    a.send(`<message to='${juliet}' type='chat' id='s2'><body>By a name</body></message>`);
    await j.expect(`<message from='${a.jid}' to='${juliet}' id='s2'/>`);
    await b.expect(
      `<message from='${romeo}' to='${b.jid}' type='chat'><sent xmlns='${NS_CARBONS}'><forwarded xmlns='${NS_FORWARD}'>
        <message from='${a.jid}' to='${juliet}' id='s2'><body>By a name</body></message>
      </forwarded></sent></message>`,
    );
    await quiet(a, b);
  });

  it('copies a sent message even when the sending device has not enabled carbons', async () => {
    const { a, b, j } = await cast({ carbons: false });
    a.send(`<message to='${j.jid}' type='chat' id='s3'><body>I know not how</body></message>`);
    await j.expect(`<message id='s3'/>`);
    await b.expect(
      `<message><sent xmlns='${NS_CARBONS}'><forwarded><message id='s3'/></forwarded></sent></message>`,
    );
    await quiet(a, b);
  });

  it('copies a normal message with a body, and one with only a delivery receipt, but not one with neither', async () => {
    const { romeo, a, b, j } = await cast();
    a.send(`<message to='${j.jid}' id='n1'><body>Normal</body></message>`);
    await j.expect(`<message id='n1'/>`);
    await b.expect(
      `<message from='${romeo}'><sent xmlns='${NS_CARBONS}'><forwarded><message id='n1'/></forwarded></sent></message>`,
    );
    a.send(`<message to='${j.jid}' id='n2'><received xmlns='urn:xmpp:receipts' id='s1'/></message>`);
    await j.expect(`<message id='n2'/>`);
    await b.expect(
      `<message from='${romeo}'><sent xmlns='${NS_CARBONS}'><forwarded><message id='n2'/></forwarded></sent></message>`,
    );
    a.send(`<message to='${j.jid}' id='n3'><x xmlns='jabber:x:data' type='form'/></message>`);
    await j.expect(`<message id='n3'/>`);
    await quiet(a, b);
  });

  it('gives the sent carbon only to devices that enabled carbons', async () => {
    const { a, b, j } = await cast({}, { carbons: false });
    a.send(`<message to='${j.jid}' type='chat' id='s4'><body>Hi</body></message>`);
    await j.expect(`<message id='s4'/>`);
    await quiet(a, b);
  });

  it('stops copying after disable', async () => {
    const { a, b, j } = await cast();
    await enable(b, `<disable xmlns='${NS_CARBONS}'/>`);
    a.send(`<message to='${j.jid}' type='chat' id='s5'><body>Hi</body></message>`);
    await j.expect(`<message id='s5'/>`);
    j.send(`<message to='${a.jid}' type='chat' id='r5'><body>Hello</body></message>`);
    await a.expect(`<message id='r5'/>`);
    await quiet(a, b, j);
  });

  it('gives a message between two of Romeo’s own devices to its addressee only, once', async () => {
    const { a, b } = await cast();
    a.send(`<message to='${b.jid}' type='chat' id='self1'><body>Note to self</body></message>`);
    await b.expect(
      `<message from='${a.jid}' to='${b.jid}' type='chat' id='self1'><body>Note to self</body></message>`,
    );
    await quiet(a, b);
  });

  // ---- received carbons ------------------------------------------------------------

  it('copies a message Juliet sends to one of Romeo’s devices to the other as <received/>', async () => {
    const { romeo, a, b, j } = await cast();
    j.send(
      `<message to='${a.jid}' type='chat' id='r1'><body>Wherefore art thou?</body><thread>t1</thread></message>`,
    );
    await a.expect(
      `<message from='${j.jid}' to='${a.jid}' type='chat' id='r1'><body>Wherefore art thou?</body></message>`,
    );
    await b.expect(
      `<message from='${romeo}' to='${b.jid}' type='chat' strict='true'>
        <received xmlns='${NS_CARBONS}' strict='true'>
          <forwarded xmlns='${NS_FORWARD}' strict='true'>
            <message xmlns='jabber:client' from='${j.jid}' to='${a.jid}' type='chat' id='r1' strict='true'>
              <body>Wherefore art thou?</body>
              <thread>t1</thread>
            </message>
          </forwarded>
        </received>
      </message>`,
    );
    await quiet(a, b, j);
  });

  it('delivers a chat message to the bare JID to both devices of equal priority, without carbons', async () => {
    const { romeo, a, b, j } = await cast();
    j.send(`<message to='${romeo}' type='chat' id='r2'><body>Romeo!</body></message>`);
    for (const c of [a, b]) {
      const got = await c.expect(
        `<message from='${j.jid}' to='${romeo}' type='chat' id='r2'><body>Romeo!</body></message>`,
      );
      expect(child(got, 'received', NS_CARBONS)).to.equal(undefined);
    }
    await quiet(a, b, j);
  });

  it('copies a chat message to the bare JID to the lower-priority device, which does not get the original', async () => {
    const { romeo, a, b, j } = await cast({ priority: 5 }, { priority: 1 });
    j.send(`<message to='${romeo}' type='chat' id='r3'><body>Romeo!</body></message>`);
    await a.expect(`<message from='${j.jid}' to='${romeo}' id='r3'><body>Romeo!</body></message>`);
    await b.expect(
      `<message from='${romeo}' to='${b.jid}' type='chat'><received xmlns='${NS_CARBONS}'><forwarded xmlns='${NS_FORWARD}'>
        <message from='${j.jid}' to='${romeo}' id='r3'/>
      </forwarded></received></message>`,
    );
    await quiet(a, b);
  });

  it('copies to a device of negative priority, which never gets messages to the bare JID', async () => {
    const { romeo, a, b, j } = await cast({}, { priority: -1 });
    j.send(`<message to='${romeo}' id='r4'><body>Normal message</body></message>`);
    await a.expect(`<message id='r4'/>`);
    await b.expect(
      `<message from='${romeo}'><received xmlns='${NS_CARBONS}'><forwarded><message id='r4'/></forwarded></received></message>`,
    );
    await quiet(a, b);
  });

  it('copies a message to a resource Romeo does not have, as the device that takes it does not need a copy', async () => {
    const { romeo, a, b, j } = await cast({ priority: 5 }, { priority: 1 });
    j.send(`<message to='${romeo}/gone' type='chat' id='r6'><body>Still there?</body></message>`);
    await a.expect(`<message to='${romeo}/gone' id='r6'/>`);
    await b.expect(
      `<message from='${romeo}'><received xmlns='${NS_CARBONS}'><forwarded><message id='r6'/></forwarded></received></message>`,
    );
    await quiet(a, b);
  });

  it('gives the received carbon only to devices that enabled carbons', async () => {
    const { a, b, j } = await cast({}, { carbons: false });
    j.send(`<message to='${a.jid}' type='chat' id='r7'><body>Hello</body></message>`);
    await a.expect(`<message id='r7'/>`);
    await quiet(a, b);
  });

  // ---- opting out ------------------------------------------------------------------

  for (const [label, hint] of [
    ['<private/>', `<private xmlns='${NS_CARBONS}'/>`],
    ['the <no-copy/> hint', `<no-copy xmlns='${NS_HINTS}'/>`],
  ] as const) {
    it(`makes no carbons of a message with ${label}, either way`, async () => {
      const { a, b, j } = await cast();
      a.send(`<message to='${j.jid}' type='chat' id='p1'><body>Just you</body>${hint}</message>`);
      await j.expect(`<message id='p1'><body>Just you</body></message>`);
      j.send(`<message to='${a.jid}' type='chat' id='p2'><body>Just you too</body>${hint}</message>`);
      await a.expect(`<message id='p2'><body>Just you too</body></message>`);
      await quiet(a, b, j);
    });
  }

  it('removes <private/> from the message it delivers (section 8)', async () => {
    const { a, j } = await cast();
    j.send(
      `<message to='${a.jid}' type='chat' id='p3'><body>Secret</body><private xmlns='${NS_CARBONS}'/></message>`,
    );
    const got = await a.expect(`<message id='p3'><body>Secret</body></message>`);
    expect(child(got, 'private', NS_CARBONS), got.toString()).to.equal(undefined);
  });

  for (const type of ['headline', 'groupchat', 'error'] as const) {
    it(`makes no carbons of a message of type ${type}`, async () => {
      const { a, b, j } = await cast();
      const payload = type === 'error' ? `<error type='cancel'><gone xmlns='${NS_STANZAS}'/></error>` : '';
      a.send(`<message to='${j.jid}' type='${type}' id='t1'><body>News</body>${payload}</message>`);
      await j.expect(`<message type='${type}' id='t1'/>`);
      j.send(`<message to='${a.jid}' type='${type}' id='t2'><body>News</body>${payload}</message>`);
      await a.expect(`<message type='${type}' id='t2'/>`);
      await quiet(a, b, j);
    });
  }

  // ---- forgery (XEP-0280 section 11, CVE-2017-5589) ----------------------------------

  const forged = (from: string, to: string, wrapper: 'sent' | 'received') =>
    `<message from='${from}' to='${to}' type='chat' id='forged'>` +
    `<${wrapper} xmlns='${NS_CARBONS}'><forwarded xmlns='${NS_FORWARD}'>` +
    `<message xmlns='jabber:client' from='${to}' to='${from}' type='chat'><body>I love Rosaline</body></message>` +
    `</forwarded></${wrapper}></message>`;

  it('refuses a carbon wrapper a client sends, and delivers nothing', async () => {
    const { a, b, j } = await cast();
    j.send(forged(j.jid!, a.jid!, 'sent').replace(/ from='[^']*'/, ''));
    await j.expect(
      `<message type='error' id='forged'><error type='modify'><bad-request xmlns='${NS_STANZAS}'/></error></message>`,
    );
    await quiet(a, b, j);
  });

  for (const wrapper of ['sent', 'received'] as const) {
    it(`drops a <${wrapper}/> carbon that reaches Romeo from anyone but his own account`, async () => {
      const { romeo, a, b } = await cast();
      // As if from another server, where the sender's own server did not check.
      const xml = forged(`${await newUser('juliet')}/evil`, a.jid!, wrapper);
      await server.server.router.route(parse(xml));
      const toBare = forged(`${await newUser('juliet')}/evil`, romeo, wrapper);
      await server.server.router.route(parse(toBare));
      await quiet(a, b);
    });
  }
});
