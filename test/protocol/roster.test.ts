// Roster management (RFC 6121 section 2) and roster versioning (XEP-0237),
// with real clients against a real server.
import { expect } from 'chai';
import type { Element } from 'ltx';
import { testUsers, useServer } from '../helpers/fixtures.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'roster-test-pw';
const { newUser, login } = testUsers(PASSWORD);
const NS_ROSTER = 'jabber:iq:roster';
const MODULES = 'modules: [disco, ping, roster, presence]';

/** A roster get; resolves with the result IQ. */
async function getRoster(c: XmppClient, ver?: string): Promise<Element> {
  const id = c.nextId('get');
  const verAttr = ver === undefined ? '' : ` ver='${ver}'`;
  c.send(`<iq type='get' id='${id}'><query xmlns='${NS_ROSTER}'${verAttr}/></iq>`);
  return c.expect(`<iq type='result' id='${id}'/>`);
}

/** Sends a roster set with one item (raw XML) and returns the id used. */
function setItem(c: XmppClient, itemXml: string, attrs = ''): string {
  const id = c.nextId('set');
  c.send(`<iq type='set' id='${id}'${attrs}><query xmlns='${NS_ROSTER}'>${itemXml}</query></iq>`);
  return id;
}

async function expectError(c: XmppClient, id: string, condition: string, type: string): Promise<void> {
  await c.expect(
    `<iq type='error' id='${id}'><error type='${type}'><${condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>`,
  );
}

function items(query: Element | undefined): string[] {
  if (!query) return [];
  return query.getChildren('item').map((i) => {
    const groups = i.getChildren('group').map((g) => g.getText());
    const name = i.attrs.name === undefined ? '' : ` name=${String(i.attrs.name)}`;
    return `${String(i.attrs.jid)} ${String(i.attrs.subscription)}${name}${groups.length ? ` [${groups.join(',')}]` : ''}`;
  });
}

describe('roster (RFC 6121 section 2)', function () {
  this.timeout(20_000);
  const server = useServer({ yaml: MODULES });

  it('offers roster versioning as a stream feature and starts with an empty, versioned roster', async () => {
    const user = await newUser(server, 'empty');
    const c = await login(server, user, 'phone');
    expect(
      c.check(`<stream:features><ver xmlns='urn:xmpp:features:rosterver'/></stream:features>`, c.features!),
    ).to.equal(null);
    const result = await getRoster(c);
    const query = result.getChild('query', NS_ROSTER);
    expect(query, 'the result carries a query').to.not.equal(undefined);
    expect(query!.attrs.ver).to.be.a('string').and.not.equal('');
    expect(items(query)).to.deep.equal([]);
  });

  it('adds a contact: result to the sender, push with the new version to every interested resource', async () => {
    const user = await newUser(server, 'adder');
    const phone = await login(server, user, 'phone');
    const laptop = await login(server, user, 'laptop');
    const quiet = await login(server, user, 'quiet'); // never asks for the roster: not interested
    const before = (await getRoster(phone)).getChild('query')!.attrs.ver as string;
    await getRoster(laptop);

    const id = setItem(phone, `<item jid='nurse@localhost' name='Nurse'><group>Servants</group></item>`);
    await phone.expect(`<iq type='result' id='${id}'/>`);
    const pushes: Element[] = [];
    for (const c of [phone, laptop]) {
      pushes.push(
        await c.expect(
          `<iq type='set' to='${c.jid}'><query xmlns='${NS_ROSTER}' ver='{any}'>` +
            `<item jid='nurse@localhost' name='Nurse' subscription='none' strict='true'><group>Servants</group></item>` +
            `</query></iq>`,
        ),
      );
    }
    const pushedVer = pushes[0]!.getChild('query')!.attrs.ver as string;
    expect(pushedVer).to.not.equal(before);
    expect(pushes[1]!.getChild('query')!.attrs.ver).to.equal(pushedVer);
    await quiet.expectNothing();

    // A fresh session gets the stored item and the pushed version.
    const tablet = await login(server, user, 'tablet');
    const query = (await getRoster(tablet)).getChild('query')!;
    expect(query.attrs.ver).to.equal(pushedVer);
    expect(items(query)).to.deep.equal(['nurse@localhost none name=Nurse [Servants]']);
  });

  it('updates an item in place: new name and groups replace the old ones', async () => {
    const user = await newUser(server, 'updater');
    const c = await login(server, user, 'r');
    await getRoster(c);
    const first = setItem(
      c,
      `<item jid='friend@example.net' name='Old'><group>A</group><group>B</group></item>`,
    );
    await c.expect(`<iq type='result' id='${first}'/>`);
    await c.expect(
      `<iq type='set'><query xmlns='${NS_ROSTER}'><item jid='friend@example.net'/></query></iq>`,
    );

    // subscription='both' in a roster set is ignored (RFC 6121 2.1.2.5), not an error.
    const second = setItem(
      c,
      `<item jid='friend@example.net' name='New' subscription='both'><group>C</group></item>`,
    );
    await c.expect(`<iq type='result' id='${second}'/>`);
    await c.expect(
      `<iq type='set'><query xmlns='${NS_ROSTER}'><item jid='friend@example.net' name='New' subscription='none' strict='true'><group>C</group></item></query></iq>`,
    );
    expect(items((await getRoster(c)).getChild('query'))).to.deep.equal([
      'friend@example.net none name=New [C]',
    ]);
  });

  it('removes an item: push with subscription=remove, gone from the roster; unknown items are item-not-found', async () => {
    const user = await newUser(server, 'remover');
    const c = await login(server, user, 'r');
    const other = await login(server, user, 'other');
    await getRoster(c);
    await getRoster(other);
    const add = setItem(c, `<item jid='gone@example.net'/>`);
    await c.expect(`<iq type='result' id='${add}'/>`);
    await c.expect(`<iq type='set'><query xmlns='${NS_ROSTER}'><item jid='gone@example.net'/></query></iq>`);
    await other.expect(
      `<iq type='set'><query xmlns='${NS_ROSTER}'><item jid='gone@example.net'/></query></iq>`,
    );

    const remove = setItem(c, `<item jid='gone@example.net' subscription='remove'/>`);
    await c.expect(`<iq type='result' id='${remove}'/>`);
    for (const r of [c, other]) {
      await r.expect(
        `<iq type='set'><query xmlns='${NS_ROSTER}' ver='{any}'><item jid='gone@example.net' subscription='remove'/></query></iq>`,
      );
    }
    expect(items((await getRoster(c)).getChild('query'))).to.deep.equal([]);

    const again = setItem(c, `<item jid='gone@example.net' subscription='remove'/>`);
    await expectError(c, again, 'item-not-found', 'cancel');
    await other.expectNothing();
  });

  it('roster versioning: the current version gets an empty result and no pushes, an old one the full roster', async () => {
    const user = await newUser(server, 'versioned');
    const c = await login(server, user, 'r');
    const v0 = (await getRoster(c)).getChild('query')!.attrs.ver as string;
    const id = setItem(c, `<item jid='a@example.net'/>`);
    await c.expect(`<iq type='result' id='${id}'/>`);
    const push = await c.expect(`<iq type='set'><query xmlns='${NS_ROSTER}' ver='{any}'/></iq>`);
    const v1 = push.getChild('query')!.attrs.ver as string;
    c.destroy();

    const again = await login(server, user, 'r2');
    const same = await getRoster(again, v1);
    expect(same.getChildElements(), 'an empty result for an up-to-date cache').to.have.length(0);
    await again.expectNothing();

    const stale = (await getRoster(again, v0)).getChild('query', NS_ROSTER);
    expect(stale?.attrs.ver).to.equal(v1);
    expect(items(stale)).to.deep.equal(['a@example.net none']);

    const unknown = (await getRoster(again, '')).getChild('query', NS_ROSTER);
    expect(items(unknown)).to.deep.equal(['a@example.net none']);
  });

  it('rejects invalid roster sets with the RFC 6121 2.3.3 errors and changes nothing', async () => {
    const user = await newUser(server, 'invalid');
    const other = await newUser(server, 'victim');
    const c = await login(server, user, 'r');
    await getRoster(c);
    const cases: [string, string, string, string][] = [
      [`<item jid='a@example.net'/><item jid='b@example.net'/>`, 'bad-request', 'modify', 'two items'],
      ['', 'bad-request', 'modify', 'no item'],
      [
        `<item jid='a@example.net'><group>X</group><group>X</group></item>`,
        'bad-request',
        'modify',
        'same group twice',
      ],
      [`<item jid='a@example.net'><group></group></item>`, 'not-acceptable', 'modify', 'empty group'],
      [`<item name='no jid'/>`, 'bad-request', 'modify', 'no jid'],
      [`<item jid='a@b@example.net'/>`, 'jid-malformed', 'modify', 'invalid jid'],
      [`<item jid='a@example.net/phone'/>`, 'bad-request', 'modify', 'full jid'],
      [`<item jid='${user}@localhost'/>`, 'not-allowed', 'cancel', 'own jid'],
    ];
    for (const [xml, condition, type, what] of cases) {
      const id = setItem(c, xml);
      try {
        await expectError(c, id, condition, type);
      } catch (err) {
        throw new Error(`case '${what}': ${(err as Error).message}`, { cause: err });
      }
    }
    // Someone else's roster is not ours to change.
    const id = setItem(c, `<item jid='a@example.net'/>`, ` to='${other}@localhost'`);
    await expectError(c, id, 'forbidden', 'auth');

    await c.expectNothing();
    expect(items((await getRoster(c)).getChild('query'))).to.deep.equal([]);
  });
});

describe('roster limits', function () {
  this.timeout(20_000);
  const server = useServer({
    yaml: `${MODULES}\nmodule_options: { roster: { max_items: 2, max_name_length: 8 } }`,
  });

  it('refuses a contact beyond max_items with not-allowed, but still updates existing ones', async () => {
    const user = await newUser(server, 'full');
    const c = await login(server, user, 'r');
    await getRoster(c);
    for (const jid of ['one@example.net', 'two@example.net']) {
      const id = setItem(c, `<item jid='${jid}'/>`);
      await c.expect(`<iq type='result' id='${id}'/>`);
      await c.expect(`<iq type='set'><query xmlns='${NS_ROSTER}'><item jid='${jid}'/></query></iq>`);
    }
    const third = setItem(c, `<item jid='three@example.net'/>`);
    await expectError(c, third, 'not-allowed', 'cancel');

    const rename = setItem(c, `<item jid='two@example.net' name='Two'/>`);
    await c.expect(`<iq type='result' id='${rename}'/>`);
    await c.expect(
      `<iq type='set'><query xmlns='${NS_ROSTER}'><item jid='two@example.net' name='Two'/></query></iq>`,
    );

    // A subscription request would need a new item too.
    c.send(`<presence to='three@example.net' type='subscribe' id='sub1'/>`);
    await c.expect(
      `<presence type='error' id='sub1'><error type='wait'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>`,
    );
    expect(items((await getRoster(c)).getChild('query'))).to.have.members([
      'one@example.net none',
      'two@example.net none name=Two',
    ]);
  });

  it('refuses an item name longer than max_name_length with not-acceptable', async () => {
    const user = await newUser(server, 'longname');
    const c = await login(server, user, 'r');
    await getRoster(c);
    const id = setItem(c, `<item jid='x@example.net' name='Much too long'/>`);
    await expectError(c, id, 'not-acceptable', 'modify');
    const ok = setItem(c, `<item jid='x@example.net' name='Short'/>`);
    await c.expect(`<iq type='result' id='${ok}'/>`);
  });
});
