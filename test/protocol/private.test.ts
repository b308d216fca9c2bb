// Private XML storage (XEP-0049, jabber:iq:private), with real clients
// against a real server.
import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import type { Element } from 'ltx';
import { startTestServer } from '../helpers/server.ts';
import { testUsers, useServer } from '../helpers/fixtures.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'private-test-pw';
const { clients, newUser, login } = testUsers(PASSWORD);
const NS_PRIVATE = 'jabber:iq:private';
const NS_BOOKMARKS = 'storage:bookmarks';
const NS_STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';
const MODULES = 'modules: [disco, ping, roster, presence, vcard, private, last]';

const BOOKMARKS =
  `<storage xmlns='${NS_BOOKMARKS}'>` +
  `<conference name='Council' autojoin='true' jid='council@conference.example.org'><nick>Juliet</nick></conference>` +
  `</storage>`;

/** Sends a private storage IQ (raw XML) and returns its id. */
function sendPrivate(c: XmppClient, type: 'get' | 'set', inner: string, attrs = ''): string {
  const id = c.nextId(type);
  c.sendRaw(`<iq type='${type}' id='${id}'${attrs}><query xmlns='${NS_PRIVATE}'>${inner}</query></iq>`);
  return id;
}

async function store(c: XmppClient, inner: string): Promise<void> {
  const id = sendPrivate(c, 'set', inner);
  await c.expect(`<iq type='result' id='${id}'/>`);
}

/** Gets one element; resolves with the element the server returned inside the query. */
async function fetch(c: XmppClient, name: string, ns: string): Promise<Element> {
  const id = sendPrivate(c, 'get', `<${name} xmlns='${ns}'/>`);
  const result = await c.expect(
    `<iq type='result' id='${id}'><query xmlns='${NS_PRIVATE}' strict='true'><${name} xmlns='${ns}'/></query></iq>`,
  );
  return result.getChild('query')!.getChild(name, ns)!;
}

async function expectError(c: XmppClient, id: string, condition: string, type: string): Promise<void> {
  await c.expect(
    `<iq type='error' id='${id}'><error type='${type}'><${condition} xmlns='${NS_STANZAS}'/></error></iq>`,
  );
}

describe('private XML storage (XEP-0049)', function () {
  this.timeout(30_000);
  const server = useServer({ yaml: MODULES });

  it('stores bookmarks and returns them in a later session', async () => {
    const user = await newUser(server, 'bookmarks');
    const first = await login(server, user, 'phone');
    await store(first, BOOKMARKS);
    await first.close();

    const again = await login(server, user, 'laptop');
    const storage = await fetch(again, 'storage', NS_BOOKMARKS);
    const conference = storage.getChild('conference');
    expect(conference?.attrs.jid).to.equal('council@conference.example.org');
    expect(conference?.attrs.autojoin).to.equal('true');
    expect(conference?.getChildText('nick')).to.equal('Juliet');
  });

  it('keeps line breaks and tabs in attribute values', async () => {
    const user = await newUser(server, 'whitespace');
    const first = await login(server, user, 'phone');
    await store(first, `<prefs xmlns='urn:example:ws'><note text='one&#10;two&#9;three&#13;'/></prefs>`);
    await first.close();

    const again = await login(server, user, 'laptop');
    const prefs = await fetch(again, 'prefs', 'urn:example:ws');
    expect(prefs.getChild('note')?.attrs.text).to.equal('one\ntwo\tthree\r');
  });

  it('answers the empty element for something never stored', async () => {
    const c = await login(server, await newUser(server, 'nothing'));
    const id = sendPrivate(c, 'get', `<prefs xmlns='urn:example:prefs'/>`);
    await c.expect(
      `<iq type='result' id='${id}'><query xmlns='${NS_PRIVATE}' strict='true'><prefs xmlns='urn:example:prefs' strict='true'/></query></iq>`,
    );
  });

  it('keeps each element by its name and namespace, and a set replaces only what it names', async () => {
    const c = await login(server, await newUser(server, 'keyed'));
    await store(c, `<prefs xmlns='urn:example:a'><colour>red</colour></prefs>`);
    await store(c, `<prefs xmlns='urn:example:b'><colour>blue</colour></prefs>`);
    await store(c, `<other xmlns='urn:example:a'><colour>green</colour></other>`);
    expect((await fetch(c, 'prefs', 'urn:example:a')).getChildText('colour')).to.equal('red');
    expect((await fetch(c, 'prefs', 'urn:example:b')).getChildText('colour')).to.equal('blue');
    expect((await fetch(c, 'other', 'urn:example:a')).getChildText('colour')).to.equal('green');

    // Several elements in one set are stored separately; the others are kept.
    await store(
      c,
      `<prefs xmlns='urn:example:a'><colour>black</colour></prefs><other xmlns='urn:example:a'/>`,
    );
    expect((await fetch(c, 'prefs', 'urn:example:a')).getChildText('colour')).to.equal('black');
    expect((await fetch(c, 'prefs', 'urn:example:b')).getChildText('colour')).to.equal('blue');
    const cleared = await fetch(c, 'other', 'urn:example:a');
    expect(cleared.children, 'storing an empty element clears it').to.deep.equal([]);
  });

  it('keeps the data of each user apart', async () => {
    const a = await login(server, await newUser(server, 'alice'));
    const b = await login(server, await newUser(server, 'bob'));
    await store(a, `<prefs xmlns='urn:example:prefs'><theme>dark</theme></prefs>`);
    const bobs = await fetch(b, 'prefs', 'urn:example:prefs');
    expect(bobs.children).to.deep.equal([]);
  });

  it("answers forbidden for another user's storage or the server's, and changes nothing", async () => {
    const victim = await newUser(server, 'victim');
    const v = await login(server, victim);
    await store(v, BOOKMARKS);

    const m = await login(server, await newUser(server, 'mallory'));
    const read = sendPrivate(m, 'get', `<storage xmlns='${NS_BOOKMARKS}'/>`, ` to='${victim}@localhost'`);
    await expectError(m, read, 'forbidden', 'auth');
    const write = sendPrivate(m, 'set', `<storage xmlns='${NS_BOOKMARKS}'/>`, ` to='${victim}@localhost'`);
    await expectError(m, write, 'forbidden', 'auth');
    const host = sendPrivate(m, 'get', `<storage xmlns='${NS_BOOKMARKS}'/>`, ` to='localhost'`);
    await expectError(m, host, 'forbidden', 'auth');
    const full = sendPrivate(m, 'get', `<storage xmlns='${NS_BOOKMARKS}'/>`, ` to='${v.jid!}'`);
    await expectError(m, full, 'forbidden', 'auth');
    await v.expectNothing();

    const storage = await fetch(v, 'storage', NS_BOOKMARKS);
    expect(storage.getChild('conference')?.attrs.jid).to.equal('council@conference.example.org');
  });

  it('works addressed to the own bare JID', async () => {
    const user = await newUser(server, 'selfaddr');
    const c = await login(server, user);
    const id = sendPrivate(
      c,
      'set',
      `<prefs xmlns='urn:example:p'><x>1</x></prefs>`,
      ` to='${user}@localhost'`,
    );
    await c.expect(`<iq type='result' id='${id}'/>`);
    expect((await fetch(c, 'prefs', 'urn:example:p')).getChildText('x')).to.equal('1');
  });

  for (const [label, inner] of [
    ['jabber:client', `<data xmlns='jabber:client'/>`],
    ['jabber:server', `<data xmlns='jabber:server'/>`],
    ['jabber:iq:private (explicit)', `<data xmlns='jabber:iq:private'/>`],
    ['jabber:iq:private (inherited, no xmlns)', `<data/>`],
  ] as const) {
    it(`refuses the reserved namespace ${label} with not-acceptable, on set and get`, async () => {
      const c = await login(server, await newUser(server, 'reserved'));
      const set = sendPrivate(c, 'set', inner.replace('/>', '>x</data>'));
      await expectError(c, set, 'not-acceptable', 'modify');
      const get = sendPrivate(c, 'get', inner);
      await expectError(c, get, 'not-acceptable', 'modify');
    });
  }

  it('refuses a query without an element (not-acceptable) and a get of two (bad-request)', async () => {
    const c = await login(server, await newUser(server, 'malformed'));
    await expectError(c, sendPrivate(c, 'get', ''), 'not-acceptable', 'modify');
    await expectError(c, sendPrivate(c, 'set', ''), 'not-acceptable', 'modify');
    const two = sendPrivate(c, 'get', `<a xmlns='urn:example:a'/><b xmlns='urn:example:b'/>`);
    await expectError(c, two, 'bad-request', 'modify');
  });

  it('keeps prefixes declared outside the stored element', async () => {
    const c = await login(server, await newUser(server, 'prefixed'));
    const id = c.nextId('set');
    c.sendRaw(
      `<iq type='set' id='${id}' xmlns:e='urn:example:ext'><query xmlns='${NS_PRIVATE}' xmlns:p='urn:example:p'>` +
        `<p:prefs><e:item e:weight='2'>x</e:item><plain/></p:prefs></query></iq>`,
    );
    await c.expect(`<iq type='result' id='${id}'/>`);
    const again = await login(server, c.jid!.split('@')[0]!, 'other');
    const prefs = await fetch(again, 'prefs', 'urn:example:p');
    const item = prefs.getChild('item', 'urn:example:ext');
    expect(item?.getText()).to.equal('x');
    // <plain/> had no prefix: it was in the default namespace in scope, jabber:iq:private.
    expect(prefs.getChild('plain')?.getNS()).to.equal(NS_PRIVATE);
  });

  it('has a default quota of 1 MiB per user: policy-violation beyond it, nothing stored', async () => {
    const c = await login(server, await newUser(server, 'quota'));
    const chunk = () => randomBytes(180 * 1024).toString('base64'); // 240 KiB of text
    for (let i = 0; i < 4; i++) await store(c, `<blob${i} xmlns='urn:example:blob'>${chunk()}</blob${i}>`);
    const id = sendPrivate(c, 'set', `<blob4 xmlns='urn:example:blob'>${chunk()}</blob4>`);
    await expectError(c, id, 'policy-violation', 'modify');
    expect((await fetch(c, 'blob4', 'urn:example:blob')).children).to.deep.equal([]);
    // Replacing an element counts its new size only: still within the quota.
    await store(c, `<blob0 xmlns='urn:example:blob'>${chunk()}</blob0>`);
  });

  it('applies the max_bytes option, counting all elements together', async () => {
    const small = await startTestServer({
      yaml: `${MODULES}\nmodule_options: { private: { max_bytes: 1000 } }`,
    });
    try {
      await small.addUser('tiny', PASSWORD);
      const c = await login(small, 'tiny');
      await store(c, `<a xmlns='urn:example:q'>${'a'.repeat(500)}</a>`);
      const over = sendPrivate(c, 'set', `<b xmlns='urn:example:q'>${'b'.repeat(500)}</b>`);
      await expectError(c, over, 'policy-violation', 'modify');
      expect((await fetch(c, 'b', 'urn:example:q')).children).to.deep.equal([]);
      // Replacing the first with a larger one is fine while the total fits.
      await store(c, `<a xmlns='urn:example:q'>${'c'.repeat(900)}</a>`);
      expect((await fetch(c, 'a', 'urn:example:q')).getText()).to.equal('c'.repeat(900));
      // Clearing it frees the space.
      await store(c, `<a xmlns='urn:example:q'/>`);
      await store(c, `<b xmlns='urn:example:q'>${'b'.repeat(500)}</b>`);
    } finally {
      for (const c of clients.splice(0)) c.destroy();
      await small.stop();
    }
  });
});
