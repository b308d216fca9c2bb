// Inbox (XEP-0430, urn:xmpp:inbox:1, in MongooseIM's shape) with real
// clients against a real server: Romeo has two devices, Juliet one, and a
// few more contacts write to Romeo for the paging tests.
import { expect } from 'chai';
import type { Element } from 'ltx';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { testJids } from '../helpers/fixtures.ts';
import type { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'inbox-test-pw';
const NS_INBOX = 'urn:xmpp:inbox:1';
const NS_FORWARD = 'urn:xmpp:forward:0';
const NS_DELAY = 'urn:xmpp:delay';
const NS_RSM = 'http://jabber.org/protocol/rsm';
const NS_MARKERS = 'urn:xmpp:chat-markers:0';
const NS_SID = 'urn:xmpp:sid:0';
const NS_MAM = 'urn:xmpp:mam:2';
const NS_STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';
const MODULES = 'modules: [disco, ping, roster, presence, offline, inbox]';

interface Cast {
  romeo: string;
  juliet: string;
  /** Romeo's devices. */
  a: XmppClient;
  b: XmppClient;
  j: XmppClient;
}

interface Inbox {
  results: Element[];
  fin: Element;
}

interface Conversation {
  jid: string;
  unread: number;
  /** The body of the forwarded last message. */
  body: string | null;
  /** The forwarded last message. */
  message: Element | undefined;
  stamp: string | undefined;
  id: string | undefined;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function conversation(result: Element): Conversation {
  const forwarded = result.getChild('forwarded', NS_FORWARD);
  const message = forwarded?.getChild('message');
  return {
    jid: result.attrs.jid as string,
    unread: Number(result.attrs.unread),
    body: message?.getChildText('body') ?? null,
    message,
    stamp: forwarded?.getChild('delay', NS_DELAY)?.attrs.stamp as string | undefined,
    id: result.attrs.id as string | undefined,
  };
}

function setOf(inbox: Inbox): { first: string | null; last: string | null; count: string | null } {
  const set = inbox.fin.getChild('set', NS_RSM);
  return {
    first: set?.getChildText('first') ?? null,
    last: set?.getChildText('last') ?? null,
    count: set?.getChildText('count') ?? null,
  };
}

let server: TestServer;
const { newUser, login } = testJids(PASSWORD, () => server);

/** Initial presence; the devices already online and the new one see each other's presence. */
async function goOnline(c: XmppClient, others: XmppClient[] = []): Promise<void> {
  c.send(`<presence/>`);
  await c.expect(`<presence from='${c.jid}'/>`);
  for (const o of others) await c.expect(`<presence from='${o.jid}'/>`);
  for (const o of others) await o.expect(`<presence from='${c.jid}'/>`);
}

/** Romeo with devices a and b, Juliet with device j; all online. */
async function cast(): Promise<Cast> {
  const romeo = await newUser('romeo');
  const juliet = await newUser('juliet');
  const a = await login(romeo, 'a');
  const b = await login(romeo, 'b');
  const j = await login(juliet, 'j');
  await goOnline(a);
  await goOnline(b, [a]);
  await goOnline(j);
  return { romeo, juliet, a, b, j };
}

/** Sends a chat message and waits until every receiver has it. */
async function say(
  from: XmppClient,
  to: string,
  body: string,
  id: string,
  receivers: XmppClient[],
): Promise<void> {
  from.send(`<message to='${to}' type='chat' id='${id}'><body>${body}</body></message>`);
  for (const r of receivers)
    await r.expect(`<message from='${from.jid}' id='${id}'><body>${body}</body></message>`);
}

/** Queries the inbox; collects the result messages until the IQ answer, which must be a result. */
async function query(c: XmppClient, inner = '', attrs = ''): Promise<Inbox> {
  const id = c.nextId('inbox');
  c.send(`<iq type='set' id='${id}'><inbox xmlns='${NS_INBOX}'${attrs}>${inner}</inbox></iq>`);
  const results: Element[] = [];
  for (;;) {
    const event = await c.next();
    if (event.kind !== 'element') throw new Error(`expected the inbox, got ${event.kind}`);
    const el = event.element;
    if (el.name === 'iq') {
      const reason = c.check(`<iq type='result' id='${id}'><fin xmlns='${NS_INBOX}'/></iq>`, el);
      expect(reason, el.toString()).to.equal(null);
      return { results, fin: el.getChild('fin', NS_INBOX)! };
    }
    const bare = c.jid!.split('/')[0]!;
    const reason = c.check(
      `<message from='${bare}' to='${c.jid}'><result xmlns='${NS_INBOX}'/></message>`,
      el,
    );
    expect(reason, el.toString()).to.equal(null);
    const result = el.getChild('result', NS_INBOX)!;
    expect(result.attrs.queryid).to.equal(id);
    results.push(result);
  }
}

async function conversations(c: XmppClient, inner = '', attrs = ''): Promise<Conversation[]> {
  return (await query(c, inner, attrs)).results.map(conversation);
}

function form(fields: Record<string, string>): string {
  const body = Object.entries(fields)
    .map(([name, value]) => `<field var='${name}'><value>${value}</value></field>`)
    .join('');
  return `<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>${NS_INBOX}</value></field>${body}</x>`;
}

async function iqError(c: XmppClient, xml: string, condition: string, to = ''): Promise<void> {
  const id = c.nextId('err');
  c.send(`<iq type='set' id='${id}'${to}>${xml}</iq>`);
  await c.expect(`<iq type='error' id='${id}'><error><${condition} xmlns='${NS_STANZAS}'/></error></iq>`);
}

async function reset(c: XmppClient, jid: string): Promise<void> {
  const id = c.nextId('reset');
  c.send(`<iq type='set' id='${id}'><reset xmlns='${NS_INBOX}' jid='${jid}'/></iq>`);
  await c.expect(`<iq type='result' id='${id}'/>`);
}

/** Juliet sends three messages to Romeo's bare JID; both his devices get them. */
async function threeFromJuliet({ romeo, a, b, j }: Cast): Promise<void> {
  await say(j, romeo, 'Wherefore art thou Romeo?', 'm1', [a, b]);
  await say(j, romeo, 'Deny thy father', 'm2', [a, b]);
  await say(j, romeo, 'And refuse thy name', 'm3', [a, b]);
}

describe('inbox (XEP-0430)', function () {
  this.timeout(20_000);
  before(async () => {
    server = await startTestServer({ yaml: MODULES });
  });
  after(async () => {
    await server.stop();
  });

  // ---- discovery ---------------------------------------------------------------------

  it('advertises urn:xmpp:inbox:1 in the server’s disco#info', async () => {
    const c = await login(await newUser('romeo'), 'a');
    c.send(
      `<iq type='get' id='d1' to='${server.domain}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>`,
    );
    await c.expect(
      `<iq type='result' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='${NS_INBOX}'/></query></iq>`,
    );
  });

  it('describes its filters in a data form', async () => {
    const c = await login(await newUser('romeo'), 'a');
    c.send(`<iq type='get' id='f1'><query xmlns='${NS_INBOX}'/></iq>`);
    await c.expect(
      `<iq type='result' id='f1'><query xmlns='${NS_INBOX}'><x xmlns='jabber:x:data' type='form'>
        <field var='FORM_TYPE'><value>${NS_INBOX}</value></field>
        <field var='start'/><field var='end'/>
        <field var='order'><value>desc</value></field>
        <field var='hidden_read'/>
      </x></query></iq>`,
    );
  });

  it('shows an empty inbox to a new user', async () => {
    const c = await login(await newUser('romeo'), 'a');
    const inbox = await query(c);
    expect(inbox.results).to.deep.equal([]);
    expect(inbox.fin.attrs).to.include({ total: '0', unread: '0', 'active-conversations': '0' });
    expect(setOf(inbox).count).to.equal('0');
  });

  // ---- counting ----------------------------------------------------------------------

  it('counts the messages Juliet sends and shows the last one, with its time and id', async () => {
    const cast_ = await cast();
    const { juliet, romeo, a, j } = cast_;
    const before = Date.now();
    await threeFromJuliet(cast_);
    const inbox = await query(a);
    expect(inbox.results).to.have.length(1);
    const conv = conversation(inbox.results[0]!);
    expect(conv).to.include({ jid: juliet, unread: 3, body: 'And refuse thy name', id: 'm3' });
    expect(conv.message?.attrs).to.include({ from: j.jid, to: romeo, type: 'chat', id: 'm3' });
    const stamp = Date.parse(conv.stamp ?? '');
    expect(stamp).to.be.within(before - 1000, Date.now() + 1000);
    expect(inbox.fin.attrs).to.include({ total: '1', unread: '3', 'active-conversations': '1' });
    expect(inbox.fin.getChildText('unread-messages')).to.equal('3');
    expect(setOf(inbox)).to.deep.equal({ first: juliet, last: juliet, count: '1' });
  });

  it('resets the unread count when Romeo’s other device sends a displayed marker for the last message', async () => {
    const cast_ = await cast();
    const { juliet, a, b, j } = cast_;
    await threeFromJuliet(cast_);
    b.send(
      `<message to='${juliet}' type='chat' id='mk1'><displayed xmlns='${NS_MARKERS}' id='m3'/></message>`,
    );
    await j.expect(`<message from='${b.jid}' id='mk1'><displayed xmlns='${NS_MARKERS}' id='m3'/></message>`);
    const [conv] = await conversations(a);
    expect(conv).to.include({ jid: juliet, unread: 0, body: 'And refuse thy name' });
  });

  it('leaves the messages after a marked earlier one unread', async () => {
    const cast_ = await cast();
    const { juliet, a, b, j } = cast_;
    await threeFromJuliet(cast_);
    b.send(
      `<message to='${juliet}' type='chat' id='mk2'><displayed xmlns='${NS_MARKERS}' id='m2'/></message>`,
    );
    await j.expect(`<message id='mk2'/>`);
    expect((await conversations(a))[0]).to.include({ unread: 1 });
    // A received marker does not mean read.
    b.send(
      `<message to='${juliet}' type='chat' id='mk3'><received xmlns='${NS_MARKERS}' id='m3'/></message>`,
    );
    await j.expect(`<message id='mk3'/>`);
    expect((await conversations(a))[0]).to.include({ unread: 1 });
  });

  it('makes Romeo’s reply the last message and his unread count 0, and counts it for Juliet', async () => {
    const cast_ = await cast();
    const { romeo, juliet, a, b, j } = cast_;
    await threeFromJuliet(cast_);
    await say(a, juliet, 'I take thee at thy word', 'r1', [j]);
    const [mine] = await conversations(b);
    expect(mine).to.include({ jid: juliet, unread: 0, body: 'I take thee at thy word', id: 'r1' });
    expect(mine!.message?.attrs).to.include({ from: a.jid, to: juliet });
    const [hers] = await conversations(j);
    expect(hers).to.include({ jid: romeo, unread: 1, body: 'I take thee at thy word' });
  });

  it('resets a conversation on request, keeping its last message', async () => {
    const cast_ = await cast();
    const { juliet, a, b } = cast_;
    await threeFromJuliet(cast_);
    await reset(b, juliet);
    const inbox = await query(a);
    expect(conversation(inbox.results[0]!)).to.include({ unread: 0, body: 'And refuse thy name' });
    expect(inbox.fin.attrs).to.include({ total: '1', unread: '0', 'active-conversations': '0' });
    await iqError(a, `<reset xmlns='${NS_INBOX}'/>`, 'bad-request');
  });

  it('changes nothing for chat states, receipts or headlines', async () => {
    const { romeo, juliet, a, b, j } = await cast();
    await say(j, romeo, 'Art thou not Romeo?', 'm1', [a, b]);
    const [before] = await conversations(a);
    j.send(
      `<message to='${romeo}' type='chat' id='cs1'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>`,
    );
    await a.expect(`<message id='cs1'/>`);
    await b.expect(`<message id='cs1'/>`);
    // Romeo typing, or confirming receipt, has not read anything.
    a.send(
      `<message to='${juliet}' type='chat' id='cs2'><active xmlns='http://jabber.org/protocol/chatstates'/></message>`,
    );
    await j.expect(`<message id='cs2'/>`);
    a.send(`<message to='${juliet}' id='rc1'><received xmlns='urn:xmpp:receipts' id='m1'/></message>`);
    await j.expect(`<message id='rc1'/>`);
    j.send(`<message to='${romeo}' type='headline' id='h1'><body>News</body></message>`);
    await a.expect(`<message id='h1'/>`);
    await b.expect(`<message id='h1'/>`);
    const after = await conversations(a);
    expect(after).to.have.length(1);
    expect(after[0]).to.include({ unread: 1, body: 'Art thou not Romeo?', stamp: before!.stamp, id: 'm1' });
  });

  it('counts a message to a full JID once, also when that resource is gone and it goes to the bare JID', async () => {
    const { romeo, juliet, a, b, j } = await cast();
    await say(j, a.jid!, 'To device a', 'f1', [a]);
    // No such resource: the server hands a chat message on to the bare JID (RFC 6121 8.5.3.2.1).
    j.send(`<message to='${romeo}/gone' type='chat' id='f2'><body>To nowhere</body></message>`);
    await a.expect(`<message id='f2'><body>To nowhere</body></message>`);
    await b.expect(`<message id='f2'><body>To nowhere</body></message>`);
    const [conv] = await conversations(a);
    expect(conv).to.include({ jid: juliet, unread: 2, body: 'To nowhere' });
    await b.expectNothing();
  });

  it('does not take a stanza-id the sender made up as the message id (no archive on this server)', async () => {
    const { romeo, a, b, j } = await cast();
    j.send(
      `<message to='${romeo}' type='chat' id='m1'><body>Trust me</body><stanza-id xmlns='${NS_SID}' by='${romeo}' id='forged'/></message>`,
    );
    await a.expect(`<message id='m1'/>`);
    await b.expect(`<message id='m1'/>`);
    expect((await conversations(a))[0]).to.include({ id: 'm1', unread: 1 });
  });

  it('counts nothing for messages between Romeo’s own devices', async () => {
    const { a, b } = await cast();
    await say(a, b.jid!, 'Note to self', 'n1', [b]);
    expect(await conversations(a)).to.deep.equal([]);
  });

  // ---- paging, order and filters -------------------------------------------------------

  /** Romeo (one device) hears from Juliet, then the Nurse, then Mercutio. */
  async function threeContacts(): Promise<{ a: XmppClient; contacts: string[] }> {
    const romeo = await newUser('romeo');
    const a = await login(romeo, 'a');
    await goOnline(a);
    const contacts: string[] = [];
    for (const [i, name] of ['juliet', 'nurse', 'mercutio'].entries()) {
      const bare = await newUser(name);
      const c = await login(bare, 'x');
      await say(c, romeo, `Hello from ${name}`, `p${i}`, [a]);
      contacts.push(bare);
      await sleep(5); // distinct timestamps
    }
    return { a, contacts };
  }

  it('pages through three conversations one at a time, newest first', async () => {
    const { a, contacts } = await threeContacts();
    const [juliet, nurse, mercutio] = contacts as [string, string, string];

    const page1 = await query(a, `<set xmlns='${NS_RSM}'><max>1</max></set>`);
    expect(page1.results.map((r) => r.attrs.jid)).to.deep.equal([mercutio]);
    expect(setOf(page1)).to.deep.equal({ first: mercutio, last: mercutio, count: '3' });
    expect(page1.fin.attrs).to.include({ total: '3', unread: '3', 'active-conversations': '3' });

    const page2 = await query(a, `<set xmlns='${NS_RSM}'><max>1</max><after>${mercutio}</after></set>`);
    expect(page2.results.map((r) => r.attrs.jid)).to.deep.equal([nurse]);
    expect(page2.fin.getChild('set', NS_RSM)?.getChild('first')?.attrs.index).to.equal('1');

    const page3 = await query(a, `<set xmlns='${NS_RSM}'><max>1</max><after>${nurse}</after></set>`);
    expect(page3.results.map((r) => conversation(r).body)).to.deep.equal(['Hello from juliet']);

    const page4 = await query(a, `<set xmlns='${NS_RSM}'><max>1</max><after>${juliet}</after></set>`);
    expect(page4.results).to.deep.equal([]);
    expect(setOf(page4)).to.deep.equal({ first: null, last: null, count: '3' });

    // Backwards from the end, and from a time: the delay stamp of a conversation.
    const last = await query(a, `<set xmlns='${NS_RSM}'><max>1</max><before/></set>`);
    expect(last.results.map((r) => r.attrs.jid)).to.deep.equal([juliet]);
    const stamp = conversation(page2.results[0]!).stamp!;
    const older = await query(a, `<set xmlns='${NS_RSM}'><max>5</max><after>${stamp}</after></set>`);
    expect(older.results.map((r) => r.attrs.jid)).to.deep.equal([juliet]);
    const newer = await query(a, `<set xmlns='${NS_RSM}'><before>${stamp}</before></set>`);
    expect(newer.results.map((r) => r.attrs.jid)).to.deep.equal([mercutio]);

    await iqError(
      a,
      `<inbox xmlns='${NS_INBOX}'><set xmlns='${NS_RSM}'><after>nobody@${server.domain}</after></set></inbox>`,
      'item-not-found',
    );
  });

  it('lists oldest first with order=asc', async () => {
    const { a, contacts } = await threeContacts();
    const asc = await conversations(a, form({ order: 'asc' }));
    expect(asc.map((c) => c.jid)).to.deep.equal(contacts);
    const desc = await conversations(a, form({ order: 'desc' }));
    expect(desc.map((c) => c.jid)).to.deep.equal([...contacts].reverse());
    const page = await conversations(a, `${form({ order: 'asc' })}<set xmlns='${NS_RSM}'><max>2</max></set>`);
    expect(page.map((c) => c.jid)).to.deep.equal(contacts.slice(0, 2));
  });

  it('filters by time and by unread, and can leave the messages out', async () => {
    const { a, contacts } = await threeContacts();
    const [juliet, nurse, mercutio] = contacts as [string, string, string];
    await reset(a, nurse);

    const unreadOnly = await query(a, form({ hidden_read: 'true' }));
    expect(unreadOnly.results.map((r) => r.attrs.jid)).to.deep.equal([mercutio, juliet]);
    expect(unreadOnly.fin.attrs).to.include({ total: '2', unread: '2', 'active-conversations': '2' });
    const viaAttribute = await conversations(a, '', ` unread-only='true'`);
    expect(viaAttribute.map((c) => c.jid)).to.deep.equal([mercutio, juliet]);

    const all = await conversations(a);
    const nurseStamp = all.find((c) => c.jid === nurse)!.stamp!;
    const fromNurse = await conversations(a, form({ start: nurseStamp }));
    expect(fromNurse.map((c) => c.jid)).to.deep.equal([mercutio, nurse]);
    const upToNurse = await conversations(a, form({ end: nurseStamp }));
    expect(upToNurse.map((c) => c.jid)).to.deep.equal([nurse, juliet]);
    const future = await query(a, form({ start: new Date(Date.now() + 3_600_000).toISOString() }));
    expect(future.results).to.deep.equal([]);
    expect(future.fin.attrs).to.include({ total: '0' });

    const bare = await conversations(a, '', ` messages='false'`);
    expect(bare.map((c) => [c.jid, c.unread, c.message])).to.deep.equal([
      [mercutio, 1, undefined],
      [nurse, 0, undefined],
      [juliet, 1, undefined],
    ]);

    await iqError(a, `<inbox xmlns='${NS_INBOX}'>${form({ start: 'yesterday' })}</inbox>`, 'bad-request');
    await iqError(a, `<inbox xmlns='${NS_INBOX}'>${form({ order: 'sideways' })}</inbox>`, 'bad-request');
  });

  // ---- access and persistence ------------------------------------------------------------

  it('does not let Juliet read or reset Romeo’s inbox', async () => {
    const cast_ = await cast();
    const { romeo, juliet, a, j } = cast_;
    await threeFromJuliet(cast_);
    await iqError(j, `<inbox xmlns='${NS_INBOX}'/>`, 'forbidden', ` to='${romeo}'`);
    await iqError(j, `<reset xmlns='${NS_INBOX}' jid='${juliet}'/>`, 'forbidden', ` to='${romeo}'`);
    expect((await conversations(a))[0]).to.include({ unread: 3 });
    await j.expectNothing();
  });

  it('keeps the inbox across logout, counting what arrives meanwhile', async () => {
    const cast_ = await cast();
    const { romeo, juliet, a, b, j } = cast_;
    await threeFromJuliet(cast_);
    await Promise.all([a.shutdown(), b.shutdown()]);
    // Stored offline, and counted.
    j.send(`<message to='${romeo}' type='chat' id='m4'><body>Come, gentle night</body></message>`);
    await j.expectNothing();
    const c = await login(romeo, 'c');
    const inbox = await query(c);
    expect(inbox.results.map(conversation)).to.have.length(1);
    expect(conversation(inbox.results[0]!)).to.include({
      jid: juliet,
      unread: 4,
      body: 'Come, gentle night',
    });
  });
});

describe('inbox (XEP-0430) with message archiving (XEP-0313)', function () {
  this.timeout(20_000);
  before(async () => {
    server = await startTestServer({ yaml: 'modules: [disco, roster, presence, offline, mam, inbox]' });
  });
  after(async () => {
    await server.stop();
  });

  /** The id of the newest message in the archive of `c`'s account. */
  async function newestArchiveId(c: XmppClient): Promise<string> {
    const id = c.nextId('mam');
    c.send(
      `<iq type='set' id='${id}'><query xmlns='${NS_MAM}' queryid='${id}'><set xmlns='${NS_RSM}'><max>1</max><before/></set></query></iq>`,
    );
    const result = await c.expect(
      `<message><result xmlns='${NS_MAM}' queryid='${id}' id='{any}'/></message>`,
    );
    await c.expect(`<iq type='result' id='${id}'/>`);
    return result.getChild('result', NS_MAM)!.attrs.id as string;
  }

  it('gives the archive’s stanza-id as the id of received and sent last messages', async () => {
    const { romeo, juliet, a, b, j } = await cast();
    j.send(`<message to='${romeo}' type='chat' id='m1'><body>Good night</body></message>`);
    const got = await a.expect(
      `<message id='m1'><stanza-id xmlns='${NS_SID}' by='${romeo}' id='{any}'/></message>`,
    );
    await b.expect(`<message id='m1'/>`);
    const sid = got.getChild('stanza-id', NS_SID)!.attrs.id as string;
    expect(sid).to.not.equal('m1');
    expect((await conversations(a))[0]).to.include({ jid: juliet, id: sid, unread: 1 });

    // A displayed marker may name the message by its own id.
    b.send(
      `<message to='${juliet}' type='chat' id='mk1'><displayed xmlns='${NS_MARKERS}' id='m1'/></message>`,
    );
    await j.expect(`<message id='mk1'/>`);
    expect((await conversations(a))[0]).to.include({ id: sid, unread: 0 });

    await say(a, juliet, 'Parting is such sweet sorrow', 'r1', [j]);
    const archived = await newestArchiveId(a);
    expect((await conversations(a))[0]).to.include({ id: archived, body: 'Parting is such sweet sorrow' });
    expect(archived).to.not.equal('r1');
  });
});
