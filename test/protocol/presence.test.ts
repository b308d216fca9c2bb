// Presence subscriptions and presence broadcast (RFC 6121 sections 3-4),
// with two or three real clients against a real server.
import { expect } from 'chai';
import type { Element } from 'ltx';
import { available, bare, expectAll, testUsers, useServer } from '../helpers/fixtures.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'presence-test-pw';
const { newUser, login, online } = testUsers(PASSWORD);
const NS_ROSTER = 'jabber:iq:roster';

async function getRoster(c: XmppClient): Promise<Element | undefined> {
  const id = c.nextId('get');
  c.send(`<iq type='get' id='${id}'><query xmlns='${NS_ROSTER}'/></iq>`);
  return (await c.expect(`<iq type='result' id='${id}'/>`)).getChild('query', NS_ROSTER);
}

function push(jid: string, attrs: string): string {
  return `<iq type='set'><query xmlns='${NS_ROSTER}' ver='{any}'><item jid='${jid}' ${attrs} strict='true'/></query></iq>`;
}

function rosterLine(query: Element | undefined): string[] {
  return (query?.getChildren('item') ?? []).map((i) => {
    const ask = i.attrs.ask ? ` ask=${String(i.attrs.ask)}` : '';
    const approved = i.attrs.approved ? ` approved=${String(i.attrs.approved)}` : '';
    return `${String(i.attrs.jid)} ${String(i.attrs.subscription)}${ask}${approved}`;
  });
}

/**
 * The complete handshake of RFC 6121 3.1 in both directions between two
 * interested, available resources; ends with subscription 'both' on each side.
 */
async function befriend(a: XmppClient, b: XmppClient): Promise<void> {
  const [A, B] = [bare(a), bare(b)];
  a.send(`<presence to='${B}' type='subscribe'/>`);
  await a.expect(push(B, `subscription='none' ask='subscribe'`));
  await b.expect(`<presence type='subscribe' from='${A}' to='${B}'/>`);

  b.send(`<presence to='${A}' type='subscribed'/>`);
  await b.expect(push(A, `subscription='from'`));
  await a.expect(push(B, `subscription='to'`));
  await a.expect(`<presence type='subscribed' from='${B}' to='${A}'/>`);
  await a.expect(`<presence from='${b.jid}' to='${A}'/>`);

  b.send(`<presence to='${A}' type='subscribe'/>`);
  await b.expect(push(A, `subscription='from' ask='subscribe'`));
  await a.expect(`<presence type='subscribe' from='${B}' to='${A}'/>`);

  a.send(`<presence to='${B}' type='subscribed'/>`);
  await a.expect(push(B, `subscription='both'`));
  await b.expect(push(A, `subscription='both'`));
  await b.expect(`<presence type='subscribed' from='${A}' to='${B}'/>`);
  await b.expect(`<presence from='${a.jid}' to='${B}'/>`);
}

describe('presence subscriptions (RFC 6121 section 3)', function () {
  this.timeout(20_000);
  const server = useServer({ yaml: 'modules: [disco, ping, roster, presence]' });

  it('a full handshake ends in both, after which each sees the other come and go', async () => {
    const a = await online(server, await newUser(server, 'romeo'), 'balcony');
    const b = await online(server, await newUser(server, 'juliet'), 'chamber');
    await befriend(a, b);
    expect(rosterLine(await getRoster(a))).to.deep.equal([`${bare(b)} both`]);
    expect(rosterLine(await getRoster(b))).to.deep.equal([`${bare(a)} both`]);

    b.send(`<presence><show>away</show></presence>`);
    await b.expect(`<presence from='${b.jid}' to='${b.jid}'><show>away</show></presence>`);
    await a.expect(`<presence from='${b.jid}' to='${bare(a)}'><show>away</show></presence>`);
    a.send(`<presence><status>hi</status></presence>`);
    await a.expect(`<presence from='${a.jid}' to='${a.jid}'><status>hi</status></presence>`);
    await b.expect(`<presence from='${a.jid}' to='${bare(b)}'><status>hi</status></presence>`);
  });

  it('a request to an offline user waits for their next login and comes back until answered', async () => {
    const a = await online(server, await newUser(server, 'asker'), 'r');
    const bUser = await newUser(server, 'sleeper');
    const B = `${bUser}@localhost`;
    a.send(`<presence to='${B}' type='subscribe'><status>let me in</status></presence>`);
    await a.expect(push(B, `subscription='none' ask='subscribe'`));

    const b1 = await login(server, bUser, 'one');
    expect(rosterLine(await getRoster(b1)), 'a pending request is not a roster item').to.deep.equal([]);
    b1.send('<presence/>');
    await b1.expect(`<presence from='${b1.jid}' to='${b1.jid}'/>`);
    await b1.expect(
      `<presence type='subscribe' from='${bare(a)}' to='${B}'><status>let me in</status></presence>`,
    );
    await b1.close();

    const b2 = await online(server, bUser, 'two');
    await b2.expect(`<presence type='subscribe' from='${bare(a)}' to='${B}'/>`);
    b2.send(`<presence to='${bare(a)}' type='subscribed'/>`);
    await b2.expect(push(bare(a), `subscription='from'`));
    await a.expect(push(B, `subscription='to'`));
    await a.expect(`<presence type='subscribed' from='${B}'/>`);
    await a.expect(`<presence from='${b2.jid}'/>`);
    await b2.close();
    await a.expect(`<presence type='unavailable' from='${b2.jid}'/>`);

    // Answered: the next login shows nothing but the reflection.
    const b3 = await online(server, bUser, 'three');
    await b3.expectNothing();
    await a.expect(`<presence from='${b3.jid}'/>`);
  });

  it('denying a request (unsubscribed) clears the pending state on both sides', async () => {
    const a = await online(server, await newUser(server, 'hopeful'), 'r');
    const b = await online(server, await newUser(server, 'refuser'), 'r');
    a.send(`<presence to='${bare(b)}' type='subscribe'/>`);
    await a.expect(push(bare(b), `subscription='none' ask='subscribe'`));
    await b.expect(`<presence type='subscribe' from='${bare(a)}'/>`);
    b.send(`<presence to='${bare(a)}' type='unsubscribed'/>`);
    await a.expect(push(bare(b), `subscription='none'`));
    await a.expect(`<presence type='unsubscribed' from='${bare(b)}'/>`);
    await b.expectNothing();
    await b.close();
    const again = await online(server, b.jid!.split('@')[0]!, 'later');
    await again.expectNothing();
  });

  it('pre-approval: approving before the request makes the later request succeed without asking', async () => {
    const aUser = await newUser(server, 'approver');
    const a = await login(server, aUser, 'r');
    expect(
      a.check(
        `<stream:features><sub xmlns='urn:xmpp:features:pre-approval'/></stream:features>`,
        a.features!,
      ),
    ).to.equal(null);
    await getRoster(a);
    await available(a);
    const bUser = await newUser(server, 'welcome');
    const B = `${bUser}@localhost`;

    a.send(`<presence to='${B}' type='subscribed'/>`);
    await a.expect(push(B, `subscription='none' approved='true'`));

    const b = await online(server, bUser, 'r');
    await b.expectNothing(); // a pre-approval is not sent to the contact
    b.send(`<presence to='${bare(a)}' type='subscribe'/>`);
    await b.expect(push(bare(a), `subscription='none' ask='subscribe'`));
    await b.expect(push(bare(a), `subscription='to'`));
    await b.expect(`<presence type='subscribed' from='${bare(a)}' to='${B}'/>`);
    await b.expect(`<presence from='${a.jid}' to='${B}'/>`);
    await a.expect(push(B, `subscription='from'`));
    await a.expectNothing(); // the user is not asked
  });

  it('unsubscribe: the user stops receiving the contact, who still receives the user', async () => {
    const a = await online(server, await newUser(server, 'leaver'), 'r');
    const b = await online(server, await newUser(server, 'left'), 'r');
    await befriend(a, b);

    a.send(`<presence to='${bare(b)}' type='unsubscribe'/>`);
    await a.expect(push(bare(b), `subscription='from'`));
    await b.expect(push(bare(a), `subscription='to'`));
    await b.expect(`<presence type='unsubscribe' from='${bare(a)}'/>`);
    await a.expect(`<presence type='unavailable' from='${b.jid}'/>`);

    b.send(`<presence><show>dnd</show></presence>`);
    await b.expect(`<presence from='${b.jid}' to='${b.jid}'/>`);
    await a.expectNothing();
    a.send(`<presence><show>chat</show></presence>`);
    await a.expect(`<presence from='${a.jid}' to='${a.jid}'/>`);
    await b.expect(`<presence from='${a.jid}'><show>chat</show></presence>`);
  });

  it('unsubscribed: cancelling the contact’s subscription sends them unavailable and stops updates', async () => {
    const a = await online(server, await newUser(server, 'canceller'), 'r');
    const b = await online(server, await newUser(server, 'cancelled'), 'r');
    await befriend(a, b);

    a.send(`<presence to='${bare(b)}' type='unsubscribed'/>`);
    await a.expect(push(bare(b), `subscription='to'`));
    await b.expect(push(bare(a), `subscription='from'`));
    await b.expect(`<presence type='unsubscribed' from='${bare(a)}'/>`);
    await b.expect(`<presence type='unavailable' from='${a.jid}'/>`);

    a.send(`<presence><show>xa</show></presence>`);
    await a.expect(`<presence from='${a.jid}' to='${a.jid}'/>`);
    await b.expectNothing();
  });

  it('removing a contact ends both subscriptions (RFC 6121 2.5.2)', async () => {
    const a = await online(server, await newUser(server, 'cleaner'), 'r');
    const b = await online(server, await newUser(server, 'removed'), 'r');
    await befriend(a, b);

    a.send(
      `<iq type='set' id='rm1'><query xmlns='${NS_ROSTER}'><item jid='${bare(b)}' subscription='remove'/></query></iq>`,
    );
    await a.expect(`<iq type='result' id='rm1'/>`);
    await a.expect(push(bare(b), `subscription='remove'`));
    await b.expect(push(bare(a), `subscription='to'`));
    await b.expect(`<presence type='unsubscribe' from='${bare(a)}'/>`);
    await b.expect(push(bare(a), `subscription='none'`));
    await b.expect(`<presence type='unsubscribed' from='${bare(a)}'/>`);
    await b.expect(`<presence type='unavailable' from='${a.jid}'/>`);
    await a.expect(`<presence type='unavailable' from='${b.jid}'/>`);
    expect(rosterLine(await getRoster(a))).to.deep.equal([]);
    expect(rosterLine(await getRoster(b))).to.deep.equal([`${bare(a)} none`]);
  });

  it('a subscription request to an account that does not exist is answered with unsubscribed', async () => {
    const a = await online(server, await newUser(server, 'lonely'), 'r');
    a.send(`<presence to='nobody-here@localhost' type='subscribe'/>`);
    await a.expect(push('nobody-here@localhost', `subscription='none' ask='subscribe'`));
    await a.expect(push('nobody-here@localhost', `subscription='none'`));
    await a.expect(`<presence type='unsubscribed' from='nobody-here@localhost'/>`);
  });
});

describe('presence broadcast (RFC 6121 section 4)', function () {
  this.timeout(20_000);
  const server = useServer({ yaml: 'modules: [disco, ping, roster, presence]' });

  /** Two users with a mutual subscription; `a` is logged out again at the end. */
  async function friends(): Promise<{ aUser: string; b: XmppClient; a: XmppClient }> {
    const aUser = await newUser(server, 'alice');
    const a = await online(server, aUser, 'first');
    const b = await online(server, await newUser(server, 'bob'), 'desk');
    await befriend(a, b);
    return { aUser, a, b };
  }

  it('a user logging in sees contacts already online (probe answers), and they see the user', async () => {
    const { aUser, a, b } = await friends();
    await a.close();
    await b.expect(`<presence type='unavailable' from='${a.jid}'/>`);

    b.send(`<presence><show>away</show><status>lunch</status><priority>5</priority></presence>`);
    await b.expect(`<presence from='${b.jid}' to='${b.jid}'/>`);
    const again = await login(server, aUser, 'second');
    expect(rosterLine(await getRoster(again))).to.deep.equal([`${bare(b)} both`]);
    again.send('<presence/>');
    await again.expect(`<presence from='${again.jid}' to='${again.jid}'/>`);
    await again.expect(
      `<presence from='${b.jid}' to='${again.jid}'><show>away</show><status>lunch</status><priority>5</priority></presence>`,
    );
    await b.expect(`<presence from='${again.jid}' to='${bare(b)}'/>`);
  });

  it('a probe for an offline contact is answered with unavailable from the bare JID', async () => {
    const { aUser, a, b } = await friends();
    await b.close();
    await a.expect(`<presence type='unavailable' from='${b.jid}'/>`);
    await a.close();
    const again = await online(server, aUser, 'later');
    await again.expect(`<presence type='unavailable' from='${bare(b)}' to='${again.jid}'/>`);
  });

  it('contacts see unavailable on explicit unavailable, on a clean logout and on a dropped connection', async () => {
    const { aUser, a, b } = await friends();
    a.send(`<presence type='unavailable'><status>bye</status></presence>`);
    await a.expect(`<presence type='unavailable' from='${a.jid}' to='${a.jid}'/>`);
    await b.expect(
      `<presence type='unavailable' from='${a.jid}' to='${bare(b)}'><status>bye</status></presence>`,
    );
    await a.close();
    await b.expectNothing(); // already unavailable: no second notice

    const clean = await online(server, aUser, 'clean');
    await clean.expect(`<presence from='${b.jid}'/>`);
    await b.expect(`<presence from='${clean.jid}'/>`);
    await clean.close();
    await b.expect(`<presence type='unavailable' from='${clean.jid}' to='${bare(b)}'/>`);

    const dropped = await online(server, aUser, 'dropped');
    await dropped.expect(`<presence from='${b.jid}'/>`);
    await b.expect(`<presence from='${dropped.jid}'/>`);
    dropped.destroy(); // no closing tag, no unavailable
    await b.expect(`<presence type='unavailable' from='${dropped.jid}' to='${bare(b)}'/>`);
  });

  it('directed presence to a non-contact is followed by unavailable when the session ends', async () => {
    const a = await online(server, await newUser(server, 'director'), 'r');
    const stranger = await online(server, await newUser(server, 'stranger'), 'r');
    a.send(`<presence><show>chat</show></presence>`);
    await a.expect(`<presence from='${a.jid}' to='${a.jid}'/>`);
    await stranger.expectNothing(); // broadcast presence does not reach non-contacts

    a.send(`<presence to='${stranger.jid}'><status>psst</status></presence>`);
    await stranger.expect(`<presence from='${a.jid}' to='${stranger.jid}'><status>psst</status></presence>`);
    await a.close();
    await stranger.expect(`<presence type='unavailable' from='${a.jid}' to='${stranger.jid}'/>`);
  });

  it('directed unavailable ends the tracking: nothing more is sent at logout', async () => {
    const a = await online(server, await newUser(server, 'brief'), 'r');
    const other = await online(server, await newUser(server, 'visited'), 'r');
    a.send(`<presence to='${bare(other)}'/>`);
    await other.expect(`<presence from='${a.jid}' to='${bare(other)}'/>`);
    a.send(`<presence to='${bare(other)}' type='unavailable'/>`);
    await other.expect(`<presence type='unavailable' from='${a.jid}'/>`);
    a.destroy();
    await other.expectNothing(400);
  });

  it('own resources see each other: a new resource gets the others’ presence, priority changes included', async () => {
    const user = await newUser(server, 'multi');
    const phone = await online(server, user, 'phone');
    const laptop = await login(server, user, 'laptop');
    await getRoster(laptop);
    laptop.send(`<presence><priority>10</priority></presence>`);
    await expectAll(laptop, [
      `<presence from='${laptop.jid}' to='${laptop.jid}'><priority>10</priority></presence>`,
      `<presence from='${phone.jid}' to='${laptop.jid}'/>`,
    ]);
    await phone.expect(`<presence from='${laptop.jid}' to='${phone.jid}'><priority>10</priority></presence>`);

    phone.send(`<presence><priority>-1</priority></presence>`);
    await phone.expect(`<presence from='${phone.jid}' to='${phone.jid}'><priority>-1</priority></presence>`);
    await laptop.expect(
      `<presence from='${phone.jid}' to='${laptop.jid}'><priority>-1</priority></presence>`,
    );
    await laptop.expectNothing();

    await phone.close();
    await laptop.expect(`<presence type='unavailable' from='${phone.jid}' to='${laptop.jid}'/>`);
  });
});
