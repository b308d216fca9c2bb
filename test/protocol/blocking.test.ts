// XEP-0191 blocking command, with real clients against a real server: the
// block list protocol, and what blocked and blocking users notice.
import { expect } from 'chai';
import type { Element } from 'ltx';
import { bare, expectAll, testUsers, useServer } from '../helpers/fixtures.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'blocking-test-pw';
const { newUser, login, online } = testUsers(PASSWORD);
const NS = 'urn:xmpp:blocking';
const NS_ERRORS = 'urn:xmpp:blocking:errors';
const NS_STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';
const NS_ROSTER = 'jabber:iq:roster';
const MODULES = 'modules: [disco, ping, roster, presence, blocking]';

/** Sends an IQ and returns the answer (result or error) with the same id. */
async function iq(c: XmppClient, type: 'get' | 'set', payload: string): Promise<Element> {
  const id = c.nextId('iq');
  c.send(`<iq type='${type}' id='${id}'>${payload}</iq>`);
  return c.expect(`<iq id='${id}'/>`);
}

/** The JIDs of the block list, as the server reports them; also makes the resource interested. */
async function blocklist(c: XmppClient): Promise<string[]> {
  const answer = await iq(c, 'get', `<blocklist xmlns='${NS}'/>`);
  expect(answer.attrs.type).to.equal('result');
  const list = answer.getChild('blocklist', NS);
  expect(list, 'the result holds a blocklist').to.not.equal(undefined);
  return list!
    .getChildren('item')
    .map((i) => String(i.attrs.jid))
    .sort();
}

function items(jids: string[]): string {
  return jids.map((j) => `<item jid='${j}'/>`).join('');
}

/** Blocks the JIDs and checks the result; the push to `c` (if interested) is left to read. */
async function block(c: XmppClient, ...jids: string[]): Promise<void> {
  const answer = await iq(c, 'set', `<block xmlns='${NS}'>${items(jids)}</block>`);
  expect(answer.attrs.type, answer.toString()).to.equal('result');
}

async function unblock(c: XmppClient, ...jids: string[]): Promise<void> {
  const answer = await iq(c, 'set', `<unblock xmlns='${NS}'>${items(jids)}</unblock>`);
  expect(answer.attrs.type, answer.toString()).to.equal('result');
}

function pushPattern(kind: 'block' | 'unblock', jids: string[]): string {
  return `<iq type='set'><${kind} xmlns='${NS}' strict='true'>${items(jids)}</${kind}></iq>`;
}

/** Reads a block list push and acknowledges it, as a client does. */
async function expectPush(c: XmppClient, kind: 'block' | 'unblock', jids: string[]): Promise<void> {
  const pushed = await c.expect(pushPattern(kind, jids));
  c.send(`<iq type='result' id='${String(pushed.attrs.id)}'/>`);
}

/** Mutual presence subscription between two online clients; consumes everything it causes. */
async function befriend(a: XmppClient, b: XmppClient): Promise<void> {
  const [A, B] = [bare(a), bare(b)];
  a.send(`<presence to='${B}' type='subscribe'/>`);
  await a.expect(`<iq type='set'><query xmlns='${NS_ROSTER}'/></iq>`);
  await b.expect(`<presence type='subscribe' from='${A}'/>`);
  b.send(`<presence to='${A}' type='subscribed'/>`);
  await b.expect(`<iq type='set'><query xmlns='${NS_ROSTER}'/></iq>`);
  await expectAll(a, [
    `<iq type='set'><query xmlns='${NS_ROSTER}'/></iq>`,
    `<presence type='subscribed' from='${B}'/>`,
    `<presence from='${b.jid}'/>`,
  ]);
  b.send(`<presence to='${A}' type='subscribe'/>`);
  await b.expect(`<iq type='set'><query xmlns='${NS_ROSTER}'/></iq>`);
  await a.expect(`<presence type='subscribe' from='${B}'/>`);
  a.send(`<presence to='${B}' type='subscribed'/>`);
  await a.expect(`<iq type='set'><query xmlns='${NS_ROSTER}'/></iq>`);
  await expectAll(b, [
    `<iq type='set'><query xmlns='${NS_ROSTER}'/></iq>`,
    `<presence type='subscribed' from='${A}'/>`,
    `<presence from='${a.jid}'/>`,
  ]);
}

function chat(to: string, body: string): string {
  return `<message type='chat' to='${to}'><body>${body}</body></message>`;
}

/** The bounce a user gets for writing to a JID they block. */
function blockedBounce(from: string): string {
  return (
    `<message type='error' from='${from}'><error type='modify'>` +
    `<not-acceptable xmlns='${NS_STANZAS}'/><blocked xmlns='${NS_ERRORS}'/></error></message>`
  );
}

describe('blocking command (XEP-0191)', function () {
  this.timeout(20_000);
  const server = useServer({ yaml: MODULES });

  it('advertises urn:xmpp:blocking in the server disco#info', async () => {
    const c = await login(server, await newUser(server, 'disco'), 'r');
    const id = c.nextId('disco');
    c.send(
      `<iq type='get' id='${id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>`,
    );
    const answer = await c.expect(`<iq type='result' id='${id}'/>`);
    const features = answer
      .getChild('query')!
      .getChildren('feature')
      .map((f) => f.attrs.var as string);
    expect(features).to.include(NS);
  });

  it('starts with an empty block list', async () => {
    const c = await login(server, await newUser(server, 'fresh'), 'r');
    const id = c.nextId('get');
    c.send(`<iq type='get' id='${id}'><blocklist xmlns='${NS}'/></iq>`);
    await c.expect(`<iq type='result' id='${id}'><blocklist xmlns='${NS}' strict='true'/></iq>`);
  });

  it('blocking answers the requester, pushes to interested resources only, and is kept', async () => {
    const user = await newUser(server, 'romeo');
    const juliet = `${await newUser(server, 'juliet')}@localhost`;
    const r1 = await login(server, user, 'one');
    const r2 = await login(server, user, 'two');
    const quiet = await login(server, user, 'quiet'); // never asked for the list: not interested
    expect(await blocklist(r1)).to.deep.equal([]);
    expect(await blocklist(r2)).to.deep.equal([]);

    await block(r1, juliet);
    await expectPush(r1, 'block', [juliet]);
    await expectPush(r2, 'block', [juliet]);
    await quiet.expectNothing();

    expect(await blocklist(r2)).to.deep.equal([juliet]);
    await r1.close();
    await r2.close();
    const later = await login(server, user, 'later');
    expect(await blocklist(later), 'the list outlives the sessions').to.deep.equal([juliet]);
  });

  it("drops a blocked user's messages (the sender sees the blocker as offline)", async () => {
    const romeo = await online(server, await newUser(server, 'romeo'), 'r');
    const juliet = await online(server, await newUser(server, 'juliet'), 'j');
    await block(romeo, bare(juliet));

    juliet.send(chat(bare(romeo), 'hello?'));
    await juliet.expect(
      `<message type='error' from='${bare(romeo)}'><error type='cancel'><service-unavailable xmlns='${NS_STANZAS}'/></error></message>`,
    );
    juliet.send(chat(romeo.jid!, 'to your resource'));
    await juliet.expect(`<message type='error' from='${romeo.jid}'/>`);
    juliet.send(`<iq type='get' id='p1' to='${romeo.jid}'><ping xmlns='urn:xmpp:ping'/></iq>`);
    await juliet.expect(
      `<iq type='error' id='p1'><error><service-unavailable xmlns='${NS_STANZAS}'/></error></iq>`,
    );
    juliet.send(`<presence to='${romeo.jid}'/>`);
    await romeo.expectNothing();
  });

  it('bounces what the blocker sends to a blocked user with not-acceptable and <blocked/>', async () => {
    const romeo = await online(server, await newUser(server, 'romeo'), 'r');
    const juliet = await online(server, await newUser(server, 'juliet'), 'j');
    await block(romeo, bare(juliet));

    romeo.send(chat(bare(juliet), 'wherefore'));
    await romeo.expect(blockedBounce(bare(juliet)));
    romeo.send(`<iq type='get' id='q1' to='${juliet.jid}'><ping xmlns='urn:xmpp:ping'/></iq>`);
    await romeo.expect(
      `<iq type='error' id='q1'><error type='modify'><not-acceptable xmlns='${NS_STANZAS}'/><blocked xmlns='${NS_ERRORS}'/></error></iq>`,
    );
    romeo.send(`<presence to='${juliet.jid}'><status>directed</status></presence>`);
    await juliet.expectNothing();
    await romeo.expectNothing(); // presence is dropped without an error
  });

  it('blocking a subscribed contact sends them unavailable presence and cuts presence both ways; unblocking restores it', async () => {
    const romeo = await online(server, await newUser(server, 'romeo'), 'r');
    const juliet = await online(server, await newUser(server, 'juliet'), 'j');
    await befriend(romeo, juliet);

    await block(romeo, bare(juliet));
    await juliet.expect(`<presence type='unavailable' from='${romeo.jid}'/>`);

    romeo.send(`<presence><show>away</show></presence>`);
    await romeo.expect(`<presence from='${romeo.jid}' to='${romeo.jid}'><show>away</show></presence>`);
    juliet.send(`<presence><show>dnd</show></presence>`);
    await juliet.expect(`<presence from='${juliet.jid}' to='${juliet.jid}'><show>dnd</show></presence>`);
    await juliet.expectNothing();
    await romeo.expectNothing();

    // A second resource of juliet logging in probes romeo: no answer either.
    const juliet2 = await online(server, juliet.jid!.split('@')[0]!, 'j2');
    await juliet.expect(`<presence from='${juliet2.jid}'/>`);
    await juliet2.expect(`<presence from='${juliet.jid}'/>`);
    await juliet2.expectNothing();
    await romeo.expectNothing();

    await unblock(romeo, bare(juliet));
    // Romeo's current presence to juliet's resources, and juliet's back to romeo (probe).
    await juliet.expect(`<presence from='${romeo.jid}'><show>away</show></presence>`);
    await juliet2.expect(`<presence from='${romeo.jid}'><show>away</show></presence>`);
    await expectAll(romeo, [
      `<presence from='${juliet.jid}'><show>dnd</show></presence>`,
      `<presence from='${juliet2.jid}'/>`,
    ]);

    juliet.send(chat(romeo.jid!, 'again'));
    await romeo.expect(`<message type='chat' from='${juliet.jid}'><body>again</body></message>`);
    romeo.send(`<presence><status>back</status></presence>`);
    await romeo.expect(`<presence from='${romeo.jid}' to='${romeo.jid}'/>`);
    await juliet.expect(`<presence from='${romeo.jid}'><status>back</status></presence>`);
  });

  it('a domain item blocks every user of that domain; the own server stays reachable', async () => {
    const romeo = await online(server, await newUser(server, 'romeo'), 'r');
    const juliet = await online(server, await newUser(server, 'juliet'), 'j');
    await block(romeo, 'localhost', 'montague.example');

    juliet.send(chat(romeo.jid!, 'hi'));
    await juliet.expect(`<message type='error' from='${romeo.jid}'/>`);
    await romeo.expectNothing();
    romeo.send(chat(bare(juliet), 'hi'));
    await romeo.expect(blockedBounce(bare(juliet)));
    // A remote address at a blocked domain is refused before any connection attempt.
    romeo.send(chat('benvolio@montague.example', 'hi'));
    await romeo.expect(blockedBounce('benvolio@montague.example'));
    // The server itself is not blocked by blocking its domain.
    const ping = await iq(romeo, 'get', `<ping xmlns='urn:xmpp:ping'/>`);
    expect(ping.attrs.type).to.equal('result');
  });

  it('a full JID item blocks only that resource', async () => {
    const romeo = await online(server, await newUser(server, 'romeo'), 'r');
    const julietUser = await newUser(server, 'juliet');
    const balcony = await online(server, julietUser, 'balcony');
    const garden = await online(server, julietUser, 'garden');
    await balcony.expect(`<presence from='${garden.jid}'/>`);
    await garden.expect(`<presence from='${balcony.jid}'/>`);
    await block(romeo, balcony.jid!);

    balcony.send(chat(romeo.jid!, 'from the balcony'));
    await balcony.expect(`<message type='error' from='${romeo.jid}'/>`);
    garden.send(chat(romeo.jid!, 'from the garden'));
    await romeo.expect(`<message type='chat' from='${garden.jid}'><body>from the garden</body></message>`);
    await romeo.expectNothing();

    romeo.send(chat(balcony.jid!, 'no'));
    await romeo.expect(blockedBounce(balcony.jid!));
    romeo.send(chat(garden.jid!, 'yes'));
    await garden.expect(`<message type='chat' from='${romeo.jid}'><body>yes</body></message>`);
    await balcony.expectNothing();
  });

  it('unblock without items empties the list and is pushed as such', async () => {
    const romeo = await login(server, await newUser(server, 'romeo'), 'r');
    const juliet = await online(server, await newUser(server, 'juliet'), 'j');
    expect(await blocklist(romeo)).to.deep.equal([]);
    await block(romeo, bare(juliet), 'tybalt@capulet.example');
    await expectPush(romeo, 'block', [bare(juliet), 'tybalt@capulet.example']);
    expect(await blocklist(romeo)).to.have.length(2);

    await unblock(romeo);
    await expectPush(romeo, 'unblock', []);
    expect(await blocklist(romeo)).to.deep.equal([]);
    romeo.send('<presence/>');
    await romeo.expect(`<presence from='${romeo.jid}'/>`);
    juliet.send(chat(romeo.jid!, 'free'));
    await romeo.expect(`<message type='chat' from='${juliet.jid}'><body>free</body></message>`);
  });

  it('unblocking some items keeps the others', async () => {
    const romeo = await login(server, await newUser(server, 'romeo'), 'r');
    await block(romeo, 'a@x.example', 'b@x.example', 'x.example');
    await unblock(romeo, 'b@x.example');
    expect(await blocklist(romeo)).to.deep.equal(['a@x.example', 'x.example']);
  });

  it('refuses a block without items (bad-request) and a malformed JID (jid-malformed), changing nothing', async () => {
    const c = await login(server, await newUser(server, 'careless'), 'r');
    const empty = await iq(c, 'set', `<block xmlns='${NS}'/>`);
    expect(c.check(`<iq type='error'><error type='modify'><bad-request/></error></iq>`, empty)).to.equal(
      null,
    );
    const bad = await iq(
      c,
      'set',
      `<block xmlns='${NS}'><item jid='a@b@c'/><item jid='ok@x.example'/></block>`,
    );
    expect(c.check(`<iq type='error'><error><jid-malformed/></error></iq>`, bad)).to.equal(null);
    expect(await blocklist(c)).to.deep.equal([]);
  });

  it("refuses to show or change another user's block list", async () => {
    const c = await login(server, await newUser(server, 'nosy'), 'r');
    const other = `${await newUser(server, 'private')}@localhost`;
    const id = c.nextId('get');
    c.send(`<iq type='get' id='${id}' to='${other}'><blocklist xmlns='${NS}'/></iq>`);
    await c.expect(`<iq type='error' id='${id}'><error><forbidden/></error></iq>`);
  });
});

describe('blocking command (XEP-0191) max_items', function () {
  this.timeout(20_000);
  const server = useServer({ yaml: `${MODULES}\nmodule_options: { blocking: { max_items: 2 } }` });

  it('refuses a block that would exceed max_items with resource-constraint and keeps the list', async () => {
    const c = await login(server, await newUser(server, 'strict'), 'r');
    await block(c, 'a@x.example', 'b@x.example'); // not interested yet: no pushes to read
    const answer = await iq(c, 'set', `<block xmlns='${NS}'><item jid='c@x.example'/></block>`);
    expect(c.check(`<iq type='error'><error><resource-constraint/></error></iq>`, answer)).to.equal(null);
    expect(await blocklist(c)).to.deep.equal(['a@x.example', 'b@x.example']);
    // Items already on the list do not count twice.
    await block(c, 'a@x.example');
    await expectPush(c, 'block', ['a@x.example']);
    await unblock(c, 'a@x.example');
    await expectPush(c, 'unblock', ['a@x.example']);
    await block(c, 'c@x.example');
    await expectPush(c, 'block', ['c@x.example']);
    expect(await blocklist(c)).to.deep.equal(['b@x.example', 'c@x.example']);
  });
});
