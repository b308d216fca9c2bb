// Registering with a room (XEP-0045 7.10) and the reserved nick (7.12),
// with real clients against a real server: the muc#register form, the
// membership it gives, the nick it keeps for its owner (across a restart
// of persistent rooms), and unregistering.
import { expect } from 'chai';
import type { Element } from 'ltx';
import {
  acrossRestart,
  admin,
  configureRoom,
  errorCondition,
  iq,
  item,
  join,
  MucClients,
  statusCodes,
  uniqueName,
  useMucServer,
  type MucUser,
} from '../helpers/muc.ts';
import { MUC, NS_ADMIN, NS_DATA, NS_INFO, NS_MUC } from '../helpers/muc.ts';
import type { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'muc-register-pw';
const MODULES = 'modules: [disco, ping, roster, presence, muc]';
const NS_REGISTER = 'jabber:iq:register';
const NS_MUC_REGISTER = 'http://jabber.org/protocol/muc#register';

const clients = new MucClients(PASSWORD);

/** Creates and configures a room owned by `o` (as 'boss'). */
async function createRoom(
  o: XmppClient,
  config: Record<string, string> = {},
  name = uniqueName('reg'),
): Promise<string> {
  await join(o, name, 'boss');
  await configureRoom(o, name, config, { formType: false });
  return name;
}

function registration(room: string, c: XmppClient, nick: string): Promise<Element> {
  return iq(
    c,
    'set',
    `${room}@${MUC}`,
    `<query xmlns='${NS_REGISTER}'><x xmlns='${NS_DATA}' type='submit'>` +
      `<field var='FORM_TYPE'><value>${NS_MUC_REGISTER}</value></field>` +
      `<field var='muc#register_roomnick'><value>${nick}</value></field></x></query>`,
  );
}

/** The nick the room has reserved for the sender (XEP-0045 7.12), or undefined. */
async function reservedNick(c: XmppClient, room: string): Promise<string | undefined> {
  const answer = await iq(c, 'get', `${room}@${MUC}`, `<query xmlns='${NS_INFO}' node='x-roomuser-item'/>`);
  expect(answer.attrs.type, answer.toString()).to.equal('result');
  expect(answer.getChild('query')!.attrs.node).to.equal('x-roomuser-item');
  const identity = answer.getChild('query')!.getChild('identity');
  if (identity) expect(identity.attrs).to.include({ category: 'conference', type: 'text' });
  return identity?.attrs.name as string | undefined;
}

describe('multi-user chat: registering with a room (XEP-0045 7.10, 7.12)', function () {
  this.timeout(30_000);
  const { user, connect } = useMucServer(MODULES, clients);

  it('gives the muc#register form; registering reserves the nick and makes a visitor a member with voice', async () => {
    const o = await connect(await user('owner'));
    const room = await createRoom(o, { moderatedroom: '1' });
    const info = await iq(o, 'get', `${room}@${MUC}`, `<query xmlns='${NS_INFO}'/>`);
    const features = info
      .getChild('query')!
      .getChildren('feature')
      .map((f) => f.attrs.var as string);
    expect(features).to.include.members([NS_REGISTER, 'http://jabber.org/protocol/muc#request']);

    const au = await user('alice');
    const a = await connect(au);
    const seen = await join(a, room, 'al');
    expect(item(seen.find((e) => e.attrs.from === `${room}@${MUC}/al`)!).role).to.equal('visitor');
    await o.expect(`<presence from='${room}@${MUC}/al'/>`);
    expect(await reservedNick(a, room)).to.equal(undefined);

    const form = await iq(a, 'get', `${room}@${MUC}`, `<query xmlns='${NS_REGISTER}'/>`);
    expect(
      a.check(
        `<iq type='result' from='${room}@${MUC}'><query xmlns='${NS_REGISTER}'><x xmlns='${NS_DATA}' type='form'>` +
          `<field var='FORM_TYPE' type='hidden'><value>${NS_MUC_REGISTER}</value></field>` +
          `<field var='muc#register_roomnick' type='text-single'><required/></field></x></query></iq>`,
        form,
      ),
    ).to.equal(null);
    expect(form.getChild('query')!.getChild('registered')).to.equal(undefined);

    const done = await registration(room, a, 'alice');
    expect(done.attrs.type, done.toString()).to.equal('result');
    // Everyone sees her become a member, which gives her voice in this moderated room.
    const promoted = await o.expect(`<presence from='${room}@${MUC}/al'/>`);
    expect(item(promoted)).to.include({ affiliation: 'member', role: 'participant' });
    a.send(`<message to='${room}@${MUC}' type='groupchat' id='g1'><body>hello</body></message>`);
    await o.expect(`<message from='${room}@${MUC}/al' id='g1'><body>hello</body></message>`);

    // Asking again shows the registration, and the nick is hers.
    const again = await iq(a, 'get', `${room}@${MUC}`, `<query xmlns='${NS_REGISTER}'/>`);
    expect(
      a.check(`<iq type='result'><query><registered/><username>alice</username></query></iq>`, again),
    ).to.equal(null);
    expect(await reservedNick(a, room)).to.equal('alice');
    // The owner's member list shows her with her registered nick.
    const members = await iq(
      o,
      'get',
      `${room}@${MUC}`,
      `<query xmlns='${NS_ADMIN}'><item affiliation='member'/></query>`,
    );
    expect(members.getChild('query')!.getChild('item')!.attrs).to.include({
      jid: au.bare,
      affiliation: 'member',
    });
  });

  it('keeps a registered nick for its owner: others get conflict joining with it, changing to it or registering it', async () => {
    const o = await connect(await user('owner'));
    const room = await createRoom(o);
    const a = await connect(await user('alice'));
    expect((await registration(room, a, 'alice')).attrs.type).to.equal('result');

    const bu = await user('bob');
    const b = await connect(bu);
    b.send(`<presence to='${room}@${MUC}/alice'><x xmlns='${NS_MUC}'/></presence>`);
    const refused = await b.expect(`<presence type='error' from='${room}@${MUC}/alice'/>`);
    expect(errorCondition(refused)).to.equal('conflict');
    await o.expectNothing();

    await join(b, room, 'bob');
    await o.expect(`<presence from='${room}@${MUC}/bob'/>`);
    b.send(`<presence to='${room}@${MUC}/alice'/>`);
    expect(errorCondition(await b.expect(`<presence type='error'/>`))).to.equal('conflict');
    await o.expectNothing();

    expect(errorCondition(await registration(room, b, 'alice'))).to.equal('conflict');
    // Nor can a nick someone is using be registered by someone else.
    expect(errorCondition(await registration(room, a, 'bob'))).to.equal('conflict');
    expect(await reservedNick(b, room)).to.equal(undefined);

    // Alice herself enters with it.
    const seen = await join(a, room, 'alice');
    expect(item(seen.find((e) => e.attrs.from === `${room}@${MUC}/alice`)!)).to.include({
      affiliation: 'member',
    });
  });

  it('refuses registration to outcasts, to non-members of a members-only room, and without a valid form', async () => {
    const o = await connect(await user('owner'));
    const closed = await createRoom(o, { membersonly: '1' });
    const e = await connect(await user('eve'));
    const get = `<query xmlns='${NS_REGISTER}'/>`;
    expect(errorCondition(await iq(e, 'get', `${closed}@${MUC}`, get))).to.equal('not-allowed');
    expect(errorCondition(await registration(closed, e, 'eve'))).to.equal('not-allowed');
    // Registration does not open a members-only room.
    e.send(`<presence to='${closed}@${MUC}/eve'><x xmlns='${NS_MUC}'/></presence>`);
    expect(errorCondition(await e.expect(`<presence type='error'/>`))).to.equal('registration-required');

    const open = await createRoom(o);
    const mu = await user('mallory');
    const m = await connect(mu);
    const ban = await admin(o, open, `<item jid='${mu.bare}' affiliation='outcast'/>`);
    expect(ban.attrs.type).to.equal('result');
    expect(errorCondition(await iq(m, 'get', `${open}@${MUC}`, get))).to.equal('not-allowed');
    expect(errorCondition(await registration(open, m, 'mallory'))).to.equal('not-allowed');

    expect(errorCondition(await iq(e, 'get', `nosuchroom@${MUC}`, get))).to.equal('item-not-found');
    expect(errorCondition(await iq(e, 'set', `${open}@${MUC}`, `<query xmlns='${NS_REGISTER}'/>`))).to.equal(
      'bad-request',
    );
    expect(errorCondition(await registration(open, e, ''))).to.equal('bad-request');
    expect(await reservedNick(e, open)).to.equal(undefined);
  });

  it('cancels a registration with <remove/>: the nick is free again and the user no longer a member', async () => {
    const o = await connect(await user('owner'));
    const room = await createRoom(o);
    const a = await connect(await user('alice'));
    await join(a, room, 'al');
    await o.expect(`<presence from='${room}@${MUC}/al'/>`);
    expect((await registration(room, a, 'alice')).attrs.type).to.equal('result');
    expect(item(await o.expect(`<presence from='${room}@${MUC}/al'/>`)).affiliation).to.equal('member');

    const remove = `<query xmlns='${NS_REGISTER}'><remove/></query>`;
    expect((await iq(a, 'set', `${room}@${MUC}`, remove)).attrs.type).to.equal('result');
    expect(item(await o.expect(`<presence from='${room}@${MUC}/al'/>`)).affiliation).to.equal('none');
    expect(await reservedNick(a, room)).to.equal(undefined);
    expect(errorCondition(await iq(a, 'set', `${room}@${MUC}`, remove))).to.equal('item-not-found');

    const b = await connect(await user('bob'));
    const seen = await join(b, room, 'alice');
    expect(statusCodes(seen.find((e) => e.attrs.from === `${room}@${MUC}/alice`)!)).to.include('110');
  });

  it('drops the registration when an admin takes the membership away', async () => {
    const o = await connect(await user('owner'));
    const room = await createRoom(o);
    const au = await user('alice');
    const a = await connect(au);
    expect((await registration(room, a, 'alice')).attrs.type).to.equal('result');
    const revoked = await admin(o, room, `<item jid='${au.bare}' affiliation='none'/>`);
    expect(revoked.attrs.type).to.equal('result');
    expect(await reservedNick(a, room)).to.equal(undefined);
    const b = await connect(await user('bob'));
    await join(b, room, 'alice');
  });
});

describe('multi-user chat: registered nicks across a restart', function () {
  this.timeout(30_000);

  it('keeps the registered nicks of persistent rooms with their affiliations', async () => {
    const ou: MucUser = { name: 'owner', bare: 'owner@localhost' };
    const au: MucUser = { name: 'alice', bare: 'alice@localhost' };
    const bu: MucUser = { name: 'bob', bare: 'bob@localhost' };
    await acrossRestart(
      MODULES,
      clients,
      async (first) => {
        for (const u of [ou, au, bu]) await first.addUser(u.name, PASSWORD);
        const o = await clients.login(first.port, ou);
        await createRoom(o, { persistentroom: '1' }, 'kept');
        const a = await clients.login(first.port, au);
        expect((await registration('kept', a, 'alice')).attrs.type).to.equal('result');
        await clients.shutdownAll();
      },
      async (port) => {
        const a2 = await clients.login(port, au);
        expect(await reservedNick(a2, 'kept')).to.equal('alice');
        const b = await clients.login(port, bu);
        b.send(`<presence to='kept@${MUC}/alice'><x xmlns='${NS_MUC}'/></presence>`);
        expect(errorCondition(await b.expect(`<presence type='error'/>`))).to.equal('conflict');
        const seen = await join(a2, 'kept', 'alice');
        expect(item(seen.find((e) => e.attrs.from === `kept@${MUC}/alice`)!).affiliation).to.equal('member');
      },
    );
  });
});
