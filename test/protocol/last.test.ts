// Last activity (XEP-0012, jabber:iq:last), with real clients against a real
// server: server uptime, and when a contact was last online.
import { expect } from 'chai';
import type { Element } from 'ltx';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { available, bare, testUsers } from '../helpers/fixtures.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'last-test-pw';
const { newUser, login } = testUsers(PASSWORD);
const NS_LAST = 'jabber:iq:last';
const NS_STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';
const MODULES = 'modules: [disco, ping, roster, presence, vcard, private, last]';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Goes unavailable with a status text, then ends the stream (whatever else is in flight). */
async function goodbye(c: XmppClient, status: string): Promise<void> {
  c.send(`<presence type='unavailable'><status>${status}</status></presence>`);
  await waitFor(c, `<presence type='unavailable' from='${c.jid}'/>`);
  await c.shutdown();
}

/** Reads stanzas until one matches, skipping the others (roster pushes, presence). */
async function waitFor(c: XmppClient, pattern: string): Promise<Element> {
  for (;;) {
    const event = await c.next();
    if (event.kind !== 'element') throw new Error(`${c.name}: expected a stanza, got ${event.kind}`);
    if (c.check(pattern, event.element) === null) return event.element;
  }
}

/** `asker` subscribes to the presence of `target`, who approves: target's roster has asker with 'from'. */
async function subscribe(asker: XmppClient, target: XmppClient): Promise<void> {
  asker.send(`<presence to='${bare(target)}' type='subscribe'/>`);
  await waitFor(target, `<presence type='subscribe' from='${bare(asker)}'/>`);
  target.send(`<presence to='${bare(asker)}' type='subscribed'/>`);
  await waitFor(asker, `<presence type='subscribed' from='${bare(target)}'/>`);
}

function sendLast(c: XmppClient, to?: string): string {
  const id = c.nextId('last');
  c.send(
    `<iq type='get' id='${id}'${to === undefined ? '' : ` to='${to}'`}><query xmlns='${NS_LAST}'/></iq>`,
  );
  return id;
}

/** A last activity query; resolves with the seconds and the text of the answer. */
async function last(c: XmppClient, to?: string): Promise<{ seconds: number; text: string }> {
  const id = sendLast(c, to);
  const result = await waitFor(c, `<iq id='${id}'/>`);
  expect(c.check(`<iq type='result'><query xmlns='${NS_LAST}' seconds='{any}'/></iq>`, result)).to.equal(
    null,
  );
  const query = result.getChild('query', NS_LAST)!;
  const seconds = String(query.attrs.seconds);
  expect(seconds, 'seconds is a non-negative integer').to.match(/^\d+$/);
  return { seconds: Number(seconds), text: query.getText() };
}

async function expectError(c: XmppClient, id: string, condition: string, type: string): Promise<void> {
  await waitFor(
    c,
    `<iq type='error' id='${id}'><error type='${type}'><${condition} xmlns='${NS_STANZAS}'/></error></iq>`,
  );
}

describe('last activity (XEP-0012)', function () {
  this.timeout(20_000);
  let server: TestServer;
  let startedBefore: number;
  let startedAfter: number;
  before(async () => {
    startedBefore = Date.now();
    server = await startTestServer({ yaml: MODULES });
    startedAfter = Date.now();
  });
  after(async () => {
    await server.stop();
  });

  it('announces jabber:iq:last in the server disco#info', async () => {
    const c = await login(server, await newUser(server, 'disco'));
    const id = c.nextId('disco');
    c.send(
      `<iq type='get' id='${id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>`,
    );
    await c.expect(
      `<iq type='result' id='${id}'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='jabber:iq:last'/></query></iq>`,
    );
  });

  it('answers the server uptime in seconds', async () => {
    const c = await login(server, await newUser(server, 'uptime'));
    await sleep(Math.max(0, 1100 - (Date.now() - startedAfter)));
    const { seconds, text } = await last(c, 'localhost');
    const now = Date.now();
    expect(seconds)
      .to.be.at.least(Math.floor((now - startedAfter) / 1000) - 1)
      .and.at.least(1);
    expect(seconds).to.be.at.most(Math.ceil((now - startedBefore) / 1000));
    expect(text).to.equal('');
  });

  it('tells a subscriber how long ago the user logged out, with the status of the goodbye', async () => {
    const target = await login(server, await newUser(server, 'juliet'));
    const asker = await login(server, await newUser(server, 'romeo'));
    await available(target);
    await available(asker);
    await subscribe(asker, target);

    await goodbye(target, 'Gone to the balcony');
    const loggedOut = Date.now();
    await sleep(1200);

    const { seconds, text } = await last(asker, bare(target));
    expect(seconds).to.be.at.least(1);
    expect(seconds).to.be.at.most(Math.ceil((Date.now() - loggedOut) / 1000) + 1);
    expect(text).to.equal('Gone to the balcony');
  });

  it("answers seconds='0' while the user has an available resource", async () => {
    const user = await newUser(server, 'online');
    // An earlier session left a record: it does not count while the user is online.
    const earlier = await login(server, user, 'earlier');
    await available(earlier);
    await goodbye(earlier, 'old');
    await sleep(1100);

    const target = await login(server, user);
    const asker = await login(server, await newUser(server, 'watcher'));
    await available(target);
    await available(asker);
    await subscribe(asker, target);
    const id = sendLast(asker, bare(target));
    await waitFor(
      asker,
      `<iq type='result' id='${id}'><query xmlns='${NS_LAST}' seconds='0' strict='true'/></iq>`,
    );

    // Once that session has gone too, the record is the new one.
    await goodbye(target, 'new');
    const { text } = await last(asker, bare(target));
    expect(text).to.equal('new');
  });

  it('records the end of the last session only, and an empty text when no unavailable presence was sent', async () => {
    const user = await newUser(server, 'twice');
    const first = await login(server, user, 'first');
    const second = await login(server, user, 'second');
    const asker = await login(server, await newUser(server, 'peer'));
    await available(first);
    await available(asker);
    await subscribe(asker, first);

    await goodbye(first, 'first gone');
    await sleep(1200);
    second.destroy(); // the connection drops: no unavailable presence, no closing tag
    await sleep(100);

    const { seconds, text } = await last(asker, `${user}@localhost`);
    expect(seconds, 'counted from when the second session ended').to.equal(0);
    expect(text).to.equal('');
  });

  it('answers forbidden without a subscription, and with only a subscription the other way', async () => {
    const target = await login(server, await newUser(server, 'private'));
    const asker = await login(server, await newUser(server, 'nosy'));
    await available(target);
    await available(asker);

    const none = sendLast(asker, bare(target));
    await expectError(asker, none, 'forbidden', 'auth');

    // target subscribes to asker: asker shares presence with target, not the reverse.
    await subscribe(target, asker);
    const reverse = sendLast(asker, bare(target));
    await expectError(asker, reverse, 'forbidden', 'auth');
    // ... while target may now ask about asker.
    const allowed = sendLast(target, bare(asker));
    await waitFor(target, `<iq type='result' id='${allowed}'><query xmlns='${NS_LAST}' seconds='0'/></iq>`);
  });

  it('answers service-unavailable for a user that does not exist', async () => {
    const c = await login(server, await newUser(server, 'lonely'));
    const id = sendLast(c, 'nobody-at-all@localhost');
    await expectError(c, id, 'service-unavailable', 'cancel');
  });

  it('lets users ask about their own account, and the record survives until the next login', async () => {
    const user = await newUser(server, 'self');
    const first = await login(server, user, 'one');

    // Never logged out before: nothing to tell.
    const nothing = sendLast(first);
    await expectError(first, nothing, 'item-not-found', 'cancel');

    await available(first);
    await goodbye(first, 'see you');
    await sleep(1100);

    // The next session, before its initial presence, sees when the previous one ended.
    const again = await login(server, user, 'two');
    const own = await last(again);
    expect(own.seconds).to.be.at.least(1);
    expect(own.text).to.equal('see you');
    const byJid = await last(again, `${user}@localhost`);
    expect(byJid.text).to.equal('see you');

    await available(again);
    expect((await last(again)).seconds, 'online now').to.equal(0);
  });
});
