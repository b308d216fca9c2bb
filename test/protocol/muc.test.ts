// Multi-user chat (XEP-0045, with XEP-0410 self-ping and XEP-0421
// occupant ids) on conference.localhost, with real clients against a real
// server: what room owners, moderators, occupants and outsiders notice.
import { expect } from 'chai';
import {
  acrossRestart,
  admin,
  collectUntil,
  configureRoom,
  errorCondition,
  groupchat,
  iq,
  isSubject,
  item,
  join,
  MucClients,
  roomConfigFields,
  statusCodes,
  uniqueName,
  useMucServer,
  type MucUser,
} from '../helpers/muc.ts';
import { MUC, NS_ADMIN, NS_DATA, NS_INFO, NS_MUC, NS_OWNER, NS_USER } from '../helpers/muc.ts';
import type { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'muc-test-pw';
const MODULES = 'modules: [disco, ping, roster, presence, vcard, muc]';
const NS_ITEMS = 'http://jabber.org/protocol/disco#items';
const NS_DELAY = 'urn:xmpp:delay';
const NS_OID = 'urn:xmpp:occupant-id:0';

const clients = new MucClients(PASSWORD);

function roomName(prefix = 'room'): string {
  return uniqueName(prefix);
}

/** Creates a room (owner joins, then configures it, which unlocks it). */
async function createRoom(
  c: XmppClient,
  nick: string,
  values: Record<string, string> = {},
  name = roomName(),
): Promise<string> {
  const seen = await join(c, name, nick);
  const self = seen.find((e) => e.name === 'presence' && statusCodes(e).includes('110'));
  expect(self && statusCodes(self), 'the owner is told the room was created').to.include('201');
  await configureRoom(c, name, values);
  return name;
}

describe('multi-user chat (XEP-0045)', function () {
  this.timeout(30_000);
  const { user, connect } = useMucServer(MODULES, clients);

  describe('discovery', () => {
    it('lists the service on the server, which says it is a text conference service', async () => {
      const c = await connect(await user('disco'));
      const items = await iq(c, 'get', 'localhost', `<query xmlns='${NS_ITEMS}'/>`);
      expect(
        c.check(`<iq type='result'><query><item jid='${MUC}' name='Chatrooms'/></query></iq>`, items),
      ).to.equal(null);
      const info = await iq(c, 'get', MUC, `<query xmlns='${NS_INFO}'/>`);
      expect(
        c.check(
          `<iq type='result' from='${MUC}'><query><identity category='conference' type='text'/><feature var='${NS_MUC}'/></query></iq>`,
          info,
        ),
      ).to.equal(null);
      const features = info
        .getChild('query')!
        .getChildren('feature')
        .map((f) => f.attrs.var as string);
      expect(features).to.include(NS_OID);
    });

    it('lists public rooms but not hidden or unconfigured ones, and describes a room by its options', async () => {
      const c = await connect(await user('owner'));
      const open = await createRoom(c, 'o', { roomname: 'Open talk', roomdesc: 'about things' });
      const hidden = await createRoom(c, 'o', {
        publicroom: '0',
        membersonly: '1',
        passwordprotectedroom: '1',
        roomsecret: 's3cret',
        moderatedroom: '1',
        whois: 'anyone',
        persistentroom: '1',
      });
      const locked = roomName();
      await join(c, locked, 'o');
      const items = await iq(c, 'get', MUC, `<query xmlns='${NS_ITEMS}'/>`);
      const jids = items
        .getChild('query')!
        .getChildren('item')
        .map((i) => i.attrs.jid as string);
      expect(jids).to.include(`${open}@${MUC}`);
      expect(jids).not.to.include(`${hidden}@${MUC}`);
      expect(jids).not.to.include(`${locked}@${MUC}`);
      expect(
        items
          .getChild('query')!
          .getChildren('item')
          .find((i) => i.attrs.jid === `${open}@${MUC}`)?.attrs.name,
      ).to.equal('Open talk');

      const featuresOf = async (room: string) =>
        (await iq(c, 'get', `${room}@${MUC}`, `<query xmlns='${NS_INFO}'/>`))
          .getChild('query')!
          .getChildren('feature')
          .map((f) => f.attrs.var as string);
      expect(await featuresOf(open)).to.include.members([
        NS_MUC,
        'muc_temporary',
        'muc_open',
        'muc_unsecured',
        'muc_unmoderated',
        'muc_public',
        'muc_semianonymous',
        NS_OID,
      ]);
      expect(await featuresOf(hidden)).to.include.members([
        'muc_persistent',
        'muc_membersonly',
        'muc_passwordprotected',
        'muc_moderated',
        'muc_hidden',
        'muc_nonanonymous',
      ]);
      const info = await iq(c, 'get', `${open}@${MUC}`, `<query xmlns='${NS_INFO}'/>`);
      expect(
        c.check(
          `<iq type='result'><query><identity category='conference' type='text' name='Open talk'/>
            <x xmlns='${NS_DATA}' type='result'>
              <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roominfo</value></field>
              <field var='muc#roominfo_description'><value>about things</value></field>
              <field var='muc#roominfo_occupants'><value>1</value></field>
            </x></query></iq>`,
          info,
        ),
      ).to.equal(null);
      // A room that does not exist is not found.
      const none = await iq(c, 'get', `nosuchroom@${MUC}`, `<query xmlns='${NS_INFO}'/>`);
      expect(errorCondition(none)).to.equal('item-not-found');
    });
  });

  describe('entering, talking and leaving', () => {
    it('creates a locked room: the owner gets 201, others cannot enter until it is configured', async () => {
      const o = await connect(await user('owner'));
      const p = await connect(await user('guest'));
      const room = roomName();
      const seen = await join(o, room, 'boss');
      expect(seen.map((e) => e.name)).to.deep.equal(['presence', 'message']);
      expect(statusCodes(seen[0]!)).to.include.members(['110', '201']);
      expect(item(seen[0]!)).to.include({ affiliation: 'owner', role: 'moderator' });
      expect(seen[1]!.getChild('subject')!.getText(), 'an empty subject ends the join').to.equal('');

      p.send(`<presence to='${room}@${MUC}/guest'><x xmlns='${NS_MUC}'/></presence>`);
      const refused = await p.expect(`<presence type='error' from='${room}@${MUC}/guest'/>`);
      expect(errorCondition(refused)).to.equal('item-not-found');

      // An empty submitted form makes it an instant room.
      await configureRoom(o, room);
      const joined = await join(p, room, 'guest');
      expect(joined.map((e) => e.attrs.from)).to.deep.equal([
        `${room}@${MUC}/boss`,
        `${room}@${MUC}/guest`,
        `${room}@${MUC}`,
      ]);
    });

    it('shows the joiner who is there first, then itself with 110; others see the newcomer, real JIDs only to moderators', async () => {
      const ou = await user('owner');
      const au = await user('alice');
      const bu = await user('bob');
      const o = await connect(ou);
      const a = await connect(au);
      const b = await connect(bu);
      const room = await createRoom(o, 'boss');
      await join(a, room, 'alice');
      const ownerSees = await o.expect(`<presence from='${room}@${MUC}/alice'/>`);
      expect(item(ownerSees)).to.include({ role: 'participant', affiliation: 'none', jid: `${au.bare}/dev` });

      const seen = await join(b, room, 'bob');
      const presences = seen.filter((e) => e.name === 'presence');
      expect(presences.map((e) => e.attrs.from)).to.deep.equal([
        `${room}@${MUC}/boss`,
        `${room}@${MUC}/alice`,
        `${room}@${MUC}/bob`,
      ]);
      // Semi-anonymous: a participant does not see real JIDs, except its own.
      expect(item(presences[0]!).jid).to.equal(undefined);
      expect(item(presences[1]!).jid).to.equal(undefined);
      expect(statusCodes(presences[2]!)).to.include('110');
      expect(statusCodes(presences[2]!)).not.to.include('100');
      expect(item(presences[2]!).jid).to.equal(`${bu.bare}/dev`);
      const aliceSees = await a.expect(`<presence from='${room}@${MUC}/bob'/>`);
      expect(item(aliceSees).jid).to.equal(undefined);
      expect(statusCodes(aliceSees)).not.to.include('110');
      const bossSees = await o.expect(`<presence from='${room}@${MUC}/bob'/>`);
      expect(item(bossSees).jid).to.equal(`${bu.bare}/dev`);
    });

    it('tells everyone in a non-anonymous room the real JIDs, with status 100 to the joiner', async () => {
      const o = await connect(await user('owner'));
      const au = await user('alice');
      const a = await connect(au);
      const room = await createRoom(o, 'boss', { whois: 'anyone' });
      const seen = await join(a, room, 'alice');
      expect(item(seen[0]!).jid).to.match(/^owner\d+@localhost\/dev$/);
      expect(statusCodes(seen[1]!)).to.include.members(['100', '110']);
    });

    it('gives a client without MUC support (no <x/>) an instant room others can enter at once', async () => {
      const o = await connect(await user('owner'));
      const a = await connect(await user('alice'));
      const room = roomName();
      o.send(`<presence to='${room}@${MUC}/boss'/>`);
      const seen = await collectUntil(o, isSubject);
      expect(statusCodes(seen[0]!)).to.include('201');
      const joined = await join(a, room, 'alice');
      expect(statusCodes(joined[1]!)).to.include('110');
    });

    it('asks for a nickname when presence goes to the bare room JID', async () => {
      const o = await connect(await user('owner'));
      o.send(`<presence to='nonick@${MUC}'><x xmlns='${NS_MUC}'/></presence>`);
      expect(errorCondition(await o.expect(`<presence type='error' from='nonick@${MUC}'/>`))).to.equal(
        'jid-malformed',
      );
      // Nor is the service itself a room.
      o.send(`<presence to='${MUC}/boss'><x xmlns='${NS_MUC}'/></presence>`);
      expect(errorCondition(await o.expect(`<presence type='error' from='${MUC}/boss'/>`))).to.equal(
        'jid-malformed',
      );
      const items = await iq(o, 'get', MUC, `<query xmlns='${NS_ITEMS}'/>`);
      expect(
        items
          .getChild('query')!
          .getChildren('item')
          .map((i) => i.attrs.jid),
      ).not.to.include(MUC);
    });

    it('refuses a nick in use by someone else with a conflict', async () => {
      const o = await connect(await user('owner'));
      const a = await connect(await user('alice'));
      const room = await createRoom(o, 'boss');
      a.send(`<presence to='${room}@${MUC}/boss'><x xmlns='${NS_MUC}'/></presence>`);
      const err = await a.expect(`<presence type='error' from='${room}@${MUC}/boss'/>`);
      expect(errorCondition(err)).to.equal('conflict');
      expect(err.getChild('error')!.attrs.type).to.equal('cancel');
      await o.expectNothing();
    });

    it('fans groupchat messages out to every occupant, sender included, and refuses non-occupants', async () => {
      const o = await connect(await user('owner'));
      const a = await connect(await user('alice'));
      const x = await connect(await user('outsider'));
      const room = await createRoom(o, 'boss');
      await join(a, room, 'alice');
      await o.expect(`<presence from='${room}@${MUC}/alice'/>`);
      a.send(groupchat(room, 'hello all', 'm1'));
      for (const c of [a, o]) {
        const m = await c.expect(
          `<message type='groupchat' from='${room}@${MUC}/alice' id='m1'><body>hello all</body></message>`,
        );
        expect(m.getChild('occupant-id', NS_OID)?.attrs.id).to.be.a('string');
        expect(m.getChild('stanza-id', 'urn:xmpp:sid:0')?.attrs.by).to.equal(`${room}@${MUC}`);
      }
      x.send(groupchat(room, 'let me in', 'm2'));
      const err = await x.expect(`<message type='error' id='m2' from='${room}@${MUC}'/>`);
      expect(errorCondition(err)).to.equal('not-acceptable');
      await o.expectNothing();
    });

    it('relays private messages to the occupant named, marked as MUC private messages', async () => {
      const o = await connect(await user('owner'));
      const a = await connect(await user('alice'));
      const x = await connect(await user('outsider'));
      const room = await createRoom(o, 'boss');
      await join(a, room, 'alice');
      await o.expect(`<presence from='${room}@${MUC}/alice'/>`);
      a.send(`<message to='${room}@${MUC}/boss' type='chat' id='pm1'><body>psst</body></message>`);
      await o.expect(
        `<message from='${room}@${MUC}/alice' type='chat' id='pm1'><body>psst</body><x xmlns='${NS_USER}'/></message>`,
      );
      a.send(`<message to='${room}@${MUC}/nobody' type='chat' id='pm2'><body>?</body></message>`);
      expect(errorCondition(await a.expect(`<message type='error' id='pm2'/>`))).to.equal('item-not-found');
      x.send(`<message to='${room}@${MUC}/boss' type='chat' id='pm3'><body>hi</body></message>`);
      expect(errorCondition(await x.expect(`<message type='error' id='pm3'/>`))).to.equal('not-acceptable');
      await o.expectNothing();
    });

    it('changes nicks with 303 and the new nick, and announces leaving with 110 to the leaver', async () => {
      const o = await connect(await user('owner'));
      const a = await connect(await user('alice'));
      const room = await createRoom(o, 'boss');
      await join(a, room, 'alice');
      await o.expect(`<presence from='${room}@${MUC}/alice'/>`);
      a.send(`<presence to='${room}@${MUC}/alicia'/>`);
      for (const c of [a, o]) {
        const gone = await c.expect(
          `<presence type='unavailable' from='${room}@${MUC}/alice'><x xmlns='${NS_USER}'><item nick='alicia'/><status code='303'/></x></presence>`,
        );
        expect(statusCodes(gone).includes('110')).to.equal(c === a);
        await c.expect(`<presence from='${room}@${MUC}/alicia'/>`);
      }
      a.send(`<presence to='${room}@${MUC}/alicia' type='unavailable'><status>bye</status></presence>`);
      const self = await a.expect(
        `<presence type='unavailable' from='${room}@${MUC}/alicia'><status>bye</status><x xmlns='${NS_USER}'><item role='none'/></x></presence>`,
      );
      expect(statusCodes(self)).to.include('110');
      const seen = await o.expect(`<presence type='unavailable' from='${room}@${MUC}/alicia'/>`);
      expect(statusCodes(seen)).not.to.include('110');
      // XEP-0045 7.14: moderators see the full JID of the device that left.
      const item = seen.getChild('x', NS_USER)?.getChild('item');
      expect(item?.attrs.jid).to.equal(a.jid);
      // Gone means gone: messages from the old occupant are refused.
      a.send(groupchat(room, 'still here?', 'late'));
      expect(errorCondition(await a.expect(`<message type='error' id='late'/>`))).to.equal('not-acceptable');
    });

    it('removes an occupant whose connection ends', async () => {
      const o = await connect(await user('owner'));
      const a = await connect(await user('alice'));
      const room = await createRoom(o, 'boss');
      await join(a, room, 'alice');
      await o.expect(`<presence from='${room}@${MUC}/alice'/>`);
      a.destroy();
      await o.expect(`<presence type='unavailable' from='${room}@${MUC}/alice'/>`);
    });

    it('lets only those the configuration allows change the subject, and sends it to joiners', async () => {
      const o = await connect(await user('owner'));
      const a = await connect(await user('alice'));
      const room = await createRoom(o, 'boss');
      await join(a, room, 'alice');
      await o.expect(`<presence from='${room}@${MUC}/alice'/>`);
      a.send(`<message to='${room}@${MUC}' type='groupchat' id='s1'><subject>mine now</subject></message>`);
      expect(errorCondition(await a.expect(`<message type='error' id='s1'/>`))).to.equal('forbidden');
      o.send(`<message to='${room}@${MUC}' type='groupchat' id='s2'><subject>Plans</subject></message>`);
      for (const c of [o, a])
        await c.expect(
          `<message type='groupchat' from='${room}@${MUC}/boss'><subject>Plans</subject></message>`,
        );
      await configureRoom(o, room, { changesubject: '1' });
      // Occupants learn that the configuration changed (104).
      await a.expect(
        `<message type='groupchat' from='${room}@${MUC}'><x xmlns='${NS_USER}'><status code='104'/></x></message>`,
      );
      a.send(
        `<message to='${room}@${MUC}' type='groupchat' id='s3'><subject>Alice's plans</subject></message>`,
      );
      for (const c of [o, a])
        await c.expect(`<message from='${room}@${MUC}/alice'><subject>Alice's plans</subject></message>`);
      const b = await connect(await user('bob'));
      const seen = await join(b, room, 'bob');
      expect(seen.at(-1)!.getChildText('subject')).to.equal("Alice's plans");
      expect(seen.at(-1)!.attrs.from).to.equal(`${room}@${MUC}/alice`);
    });

    it('delivers each message exactly once to each of 12 occupants', async () => {
      const o = await connect(await user('owner'));
      const room = await createRoom(o, 'boss');
      const members: XmppClient[] = [o];
      for (let i = 0; i < 11; i++) {
        const c = await connect(await user('crowd'));
        await join(c, room, `n${i}`);
        members.push(c);
      }
      // Let the join presences settle before counting.
      await Promise.all(
        members.slice(0, -1).map((c) => collectUntil(c, (e) => e.attrs.from === `${room}@${MUC}/n10`)),
      );
      members[3]!.send(groupchat(room, 'one', 'f1'));
      members[7]!.send(groupchat(room, 'two', 'f2'));
      for (const c of members) {
        await c.expect(
          `<message type='groupchat' from='${room}@${MUC}/n2' id='f1'><body>one</body></message>`,
        );
        await c.expect(
          `<message type='groupchat' from='${room}@${MUC}/n6' id='f2'><body>two</body></message>`,
        );
      }
      await Promise.all(members.map((c) => c.expectNothing(300)));
    });
  });

  describe('roles and affiliations', () => {
    async function roomWithAlice() {
      const ou = await user('owner');
      const au = await user('alice');
      const bu = await user('bob');
      const o = await connect(ou);
      const a = await connect(au);
      const b = await connect(bu);
      const room = await createRoom(o, 'boss');
      await join(a, room, 'alice');
      await o.expect(`<presence from='${room}@${MUC}/alice'/>`);
      await join(b, room, 'bob');
      await o.expect(`<presence from='${room}@${MUC}/bob'/>`);
      await a.expect(`<presence from='${room}@${MUC}/bob'/>`);
      return { ou, au, bu, o, a, b, room };
    }

    it('lets a moderator kick (307 with reason) but not a participant', async () => {
      const { o, a, b, room } = await roomWithAlice();
      const refused = await admin(a, room, `<item nick='bob' role='none'/>`);
      expect(errorCondition(refused)).to.equal('forbidden');
      await b.expectNothing();

      const ok = await admin(o, room, `<item nick='bob' role='none'><reason>spam</reason></item>`);
      expect(ok.attrs.type).to.equal('result');
      const kicked = await b.expect(
        `<presence type='unavailable' from='${room}@${MUC}/bob'><x xmlns='${NS_USER}'><item role='none'><actor nick='boss'/><reason>spam</reason></item></x></presence>`,
      );
      expect(statusCodes(kicked)).to.include.members(['110', '307']);
      const seen = await a.expect(`<presence type='unavailable' from='${room}@${MUC}/bob'/>`);
      expect(statusCodes(seen)).to.deep.equal(['307']);
      b.send(groupchat(room, 'back?', 'k1'));
      expect(errorCondition(await b.expect(`<message type='error' id='k1'/>`))).to.equal('not-acceptable');
      // A kicked user may come back (unlike a banned one).
      await join(b, room, 'bob');
    });

    it('bans with 301; an outcast cannot enter; an admin cannot ban an owner', async () => {
      const { ou, au, bu, o, a, b, room } = await roomWithAlice();
      const ok = await admin(
        o,
        room,
        `<item jid='${bu.bare}' affiliation='outcast'><reason>gone</reason></item>`,
      );
      expect(ok.attrs.type).to.equal('result');
      const banned = await b.expect(`<presence type='unavailable' from='${room}@${MUC}/bob'/>`);
      expect(statusCodes(banned)).to.include.members(['110', '301']);
      expect(item(banned)).to.include({ affiliation: 'outcast', role: 'none' });
      await a.expect(`<presence type='unavailable' from='${room}@${MUC}/bob'/>`);
      b.send(`<presence to='${room}@${MUC}/bob2'><x xmlns='${NS_MUC}'/></presence>`);
      const refused = await b.expect(`<presence type='error'/>`);
      expect(errorCondition(refused)).to.equal('forbidden');
      expect(refused.getChild('error')!.attrs.type).to.equal('auth');

      // Admins rank below owners.
      expect((await admin(o, room, `<item jid='${au.bare}' affiliation='admin'/>`)).attrs.type).to.equal(
        'result',
      );
      const promoted = await a.expect(`<presence from='${room}@${MUC}/alice'/>`);
      expect(item(promoted)).to.include({ affiliation: 'admin', role: 'moderator' });
      const refusedBan = await admin(a, room, `<item jid='${ou.bare}' affiliation='outcast'/>`);
      expect(errorCondition(refusedBan)).to.equal('not-allowed');
      // And the last owner cannot step down.
      const stepDown = await admin(o, room, `<item jid='${ou.bare}' affiliation='member'/>`);
      expect(errorCondition(stepDown)).to.equal('conflict');
    });

    it('keeps non-members out of a members-only room until made members; lists members only to those allowed', async () => {
      const ou = await user('owner');
      const au = await user('alice');
      const o = await connect(ou);
      const a = await connect(au);
      const room = await createRoom(o, 'boss', { membersonly: '1' });
      a.send(`<presence to='${room}@${MUC}/alice'><x xmlns='${NS_MUC}'/></presence>`);
      const refused = await a.expect(`<presence type='error' from='${room}@${MUC}/alice'/>`);
      expect(errorCondition(refused)).to.equal('registration-required');
      expect(refused.getChild('error')!.attrs.type).to.equal('auth');

      const list = `<query xmlns='${NS_ADMIN}'><item affiliation='member'/></query>`;
      expect(errorCondition(await iq(a, 'get', `${room}@${MUC}`, list))).to.equal('forbidden');
      expect((await admin(o, room, `<item jid='${au.bare}' affiliation='member'/>`)).attrs.type).to.equal(
        'result',
      );
      const members = await iq(o, 'get', `${room}@${MUC}`, list);
      expect(
        members
          .getChild('query')!
          .getChildren('item')
          .map((i) => i.attrs.jid),
      ).to.deep.equal([au.bare]);
      const seen = await join(a, room, 'alice');
      expect(item(seen[1]!)).to.include({ affiliation: 'member', role: 'participant' });
      // In a members-only room, members may read the member list; not the outcast list.
      expect((await iq(a, 'get', `${room}@${MUC}`, list)).attrs.type).to.equal('result');
      const owners = await iq(
        a,
        'get',
        `${room}@${MUC}`,
        `<query xmlns='${NS_ADMIN}'><item affiliation='owner'/></query>`,
      );
      expect(
        owners
          .getChild('query')!
          .getChildren('item')
          .map((i) => i.attrs.jid),
      ).to.deep.equal([ou.bare]);
      const outcasts = `<query xmlns='${NS_ADMIN}'><item affiliation='outcast'/></query>`;
      expect(errorCondition(await iq(a, 'get', `${room}@${MUC}`, outcasts))).to.equal('forbidden');
      // Taking membership away removes her (321).
      await o.expect(`<presence from='${room}@${MUC}/alice'/>`);
      expect((await admin(o, room, `<item jid='${au.bare}' affiliation='none'/>`)).attrs.type).to.equal(
        'result',
      );
      const removed = await a.expect(`<presence type='unavailable' from='${room}@${MUC}/alice'/>`);
      expect(statusCodes(removed)).to.include('321');
    });

    it('asks for the password of a password-protected room', async () => {
      const o = await connect(await user('owner'));
      const a = await connect(await user('alice'));
      const room = await createRoom(o, 'boss', { passwordprotectedroom: '1', roomsecret: 'open sesame' });
      a.send(`<presence to='${room}@${MUC}/alice'><x xmlns='${NS_MUC}'/></presence>`);
      const refused = await a.expect(`<presence type='error' from='${room}@${MUC}/alice'/>`);
      expect(errorCondition(refused)).to.equal('not-authorized');
      a.send(
        `<presence to='${room}@${MUC}/alice'><x xmlns='${NS_MUC}'><password>wrong</password></x></presence>`,
      );
      expect(errorCondition(await a.expect(`<presence type='error'/>`))).to.equal('not-authorized');
      const seen = await join(a, room, 'alice', '<password>open sesame</password>');
      expect(statusCodes(seen[1]!)).to.include('110');
    });

    it('gives voice in a moderated room: visitors cannot speak until a moderator lets them', async () => {
      const o = await connect(await user('owner'));
      const a = await connect(await user('alice'));
      const room = await createRoom(o, 'boss', { moderatedroom: '1' });
      const seen = await join(a, room, 'alice');
      expect(item(seen[1]!).role).to.equal('visitor');
      await o.expect(`<presence from='${room}@${MUC}/alice'/>`);
      a.send(groupchat(room, 'can I speak?', 'v1'));
      expect(errorCondition(await a.expect(`<message type='error' id='v1'/>`))).to.equal('forbidden');
      await o.expectNothing();
      // A participant of the list of roles is visible to moderators only.
      const roles = `<query xmlns='${NS_ADMIN}'><item role='visitor'/></query>`;
      expect(errorCondition(await iq(a, 'get', `${room}@${MUC}`, roles))).to.equal('forbidden');
      const visitors = await iq(o, 'get', `${room}@${MUC}`, roles);
      expect(
        visitors
          .getChild('query')!
          .getChildren('item')
          .map((i) => i.attrs.nick),
      ).to.deep.equal(['alice']);

      expect((await admin(o, room, `<item nick='alice' role='participant'/>`)).attrs.type).to.equal('result');
      const voiced = await a.expect(`<presence from='${room}@${MUC}/alice'/>`);
      expect(item(voiced).role).to.equal('participant');
      a.send(groupchat(room, 'thanks', 'v2'));
      await o.expect(`<message from='${room}@${MUC}/alice' id='v2'><body>thanks</body></message>`);
    });
  });

  describe('configuration', () => {
    it('gives owners the muc#roomconfig form and refuses it to others', async () => {
      const o = await connect(await user('owner'));
      const a = await connect(await user('alice'));
      const room = await createRoom(o, 'boss', { roomname: 'Tea', maxusers: '20' });
      const form = await iq(o, 'get', `${room}@${MUC}`, `<query xmlns='${NS_OWNER}'/>`);
      const vars = new Map(
        form
          .getChild('query')!
          .getChild('x', NS_DATA)!
          .getChildren('field')
          .map((f) => [f.attrs.var as string, f.getChildText('value')]),
      );
      for (const name of [
        'roomname',
        'roomdesc',
        'persistentroom',
        'publicroom',
        'membersonly',
        'passwordprotectedroom',
        'roomsecret',
        'moderatedroom',
        'whois',
        'allowinvites',
        'changesubject',
        'maxusers',
        'historylength',
      ]) {
        expect(vars.has(`muc#roomconfig_${name}`), name).to.equal(true);
      }
      expect(vars.get('muc#roomconfig_roomname')).to.equal('Tea');
      expect(vars.get('muc#roomconfig_maxusers')).to.equal('20');
      await join(a, room, 'alice');
      expect(errorCondition(await iq(a, 'get', `${room}@${MUC}`, `<query xmlns='${NS_OWNER}'/>`))).to.equal(
        'forbidden',
      );
      const bad = await iq(
        o,
        'set',
        `${room}@${MUC}`,
        `<query xmlns='${NS_OWNER}'><x xmlns='${NS_DATA}' type='submit'>${roomConfigFields({ whois: 'everybody' })}</x></query>`,
      );
      expect(errorCondition(bad)).to.equal('not-acceptable');
    });

    it('tells occupants when the room becomes non-anonymous, and removes non-members when it becomes members-only', async () => {
      const o = await connect(await user('owner'));
      const au = await user('alice');
      const a = await connect(au);
      const b = await connect(await user('bob'));
      const room = await createRoom(o, 'boss');
      await join(a, room, 'alice');
      await join(b, room, 'bob');
      await a.expect(`<presence from='${room}@${MUC}/bob'/>`);
      expect((await admin(o, room, `<item jid='${au.bare}' affiliation='member'/>`)).attrs.type).to.equal(
        'result',
      );
      for (const c of [a, b])
        await c.expect(
          `<presence from='${room}@${MUC}/alice'><x xmlns='${NS_USER}'><item affiliation='member'/></x></presence>`,
        );
      await configureRoom(o, room, { whois: 'anyone', membersonly: '1' });
      for (const c of [a, b]) {
        const notice = await c.expect(`<message type='groupchat' from='${room}@${MUC}'/>`);
        expect(statusCodes(notice)).to.include.members(['104', '172']);
      }
      const removed = await b.expect(`<presence type='unavailable' from='${room}@${MUC}/bob'/>`);
      expect(statusCodes(removed)).to.include.members(['110', '322']);
      const seen = await a.expect(`<presence type='unavailable' from='${room}@${MUC}/bob'/>`);
      expect(statusCodes(seen)).to.deep.equal(['322']);
    });

    it('keeps at most maxusers occupants', async () => {
      const o = await connect(await user('owner'));
      const a = await connect(await user('alice'));
      const b = await connect(await user('bob'));
      const room = await createRoom(o, 'boss', { maxusers: '2' });
      await join(a, room, 'alice');
      b.send(`<presence to='${room}@${MUC}/bob'><x xmlns='${NS_MUC}'/></presence>`);
      expect(errorCondition(await b.expect(`<presence type='error'/>`))).to.equal('service-unavailable');
    });

    it('destroys a room: everyone leaves with the reason and the alternate venue', async () => {
      const o = await connect(await user('owner'));
      const a = await connect(await user('alice'));
      const room = await createRoom(o, 'boss');
      await join(a, room, 'alice');
      await o.expect(`<presence from='${room}@${MUC}/alice'/>`);
      expect(
        errorCondition(await iq(a, 'set', `${room}@${MUC}`, `<query xmlns='${NS_OWNER}'><destroy/></query>`)),
      ).to.equal('forbidden');
      const id = o.nextId('destroy');
      o.send(
        `<iq type='set' id='${id}' to='${room}@${MUC}'><query xmlns='${NS_OWNER}'><destroy jid='elsewhere@${MUC}'><reason>moving</reason></destroy></query></iq>`,
      );
      const pattern = (nick: string) =>
        `<presence type='unavailable' from='${room}@${MUC}/${nick}'><x xmlns='${NS_USER}'><item affiliation='none' role='none'/><destroy jid='elsewhere@${MUC}'><reason>moving</reason></destroy></x></presence>`;
      const seen = await collectUntil(o, (e) => e.name === 'iq');
      expect(seen.map((e) => e.name)).to.deep.equal(['presence', 'iq']);
      expect(o.check(pattern('boss'), seen[0]!)).to.equal(null);
      expect(seen[1]!.attrs.type).to.equal('result');
      const aliceSees = await collectUntil(a, (e) => e.attrs.from === `${room}@${MUC}/alice`);
      expect(aliceSees.every((e) => a.check(pattern(e.attrs.from!.split('/')[1]!), e) === null)).to.equal(
        true,
      );
      const info = await iq(a, 'get', `${room}@${MUC}`, `<query xmlns='${NS_INFO}'/>`);
      expect(errorCondition(info)).to.equal('item-not-found');
    });

    it('forgets a temporary room when its last occupant leaves', async () => {
      const o = await connect(await user('owner'));
      const room = await createRoom(o, 'boss');
      o.send(`<presence to='${room}@${MUC}/boss' type='unavailable'/>`);
      await o.expect(`<presence type='unavailable'/>`);
      expect(errorCondition(await iq(o, 'get', `${room}@${MUC}`, `<query xmlns='${NS_INFO}'/>`))).to.equal(
        'item-not-found',
      );
    });
  });

  describe('history', () => {
    it('sends recent messages to joiners, delayed by the room, as much as they ask and the room allows', async () => {
      const o = await connect(await user('owner'));
      const room = await createRoom(o, 'boss', { historylength: '3' });
      for (let i = 1; i <= 5; i++) {
        o.send(groupchat(room, `message ${i}`, `h${i}`));
        await o.expect(`<message id='h${i}'/>`);
      }
      const a = await connect(await user('alice'));
      const seen = await join(a, room, 'alice');
      const history = seen.filter((e) => e.name === 'message' && e.getChild('body'));
      expect(history.map((m) => m.getChildText('body'))).to.deep.equal([
        'message 3',
        'message 4',
        'message 5',
      ]);
      for (const m of history) {
        expect(m.attrs.from).to.equal(`${room}@${MUC}/boss`);
        expect(m.attrs.to).to.equal(a.jid);
        expect(m.getChild('delay', NS_DELAY)?.attrs.from).to.equal(`${room}@${MUC}`);
        expect(Date.parse(m.getChild('delay', NS_DELAY)!.attrs.stamp as string)).to.be.closeTo(
          Date.now(),
          10_000,
        );
      }
      // History comes before the subject.
      expect(seen.at(-1)!.getChild('subject')).not.to.equal(undefined);

      const b = await connect(await user('bob'));
      const one = await join(b, room, 'bob', `<history maxstanzas='1'/>`);
      expect(one.filter((e) => e.getChild('body')).map((m) => m.getChildText('body'))).to.deep.equal([
        'message 5',
      ]);
      const c = await connect(await user('carol'));
      const none = await join(c, room, 'carol', `<history maxchars='0'/>`);
      expect(none.filter((e) => e.getChild('body'))).to.have.length(0);
      const d = await connect(await user('dave'));
      const future = new Date(Date.now() + 60_000).toISOString();
      const since = await join(d, room, 'dave', `<history since='${future}'/>`);
      expect(since.filter((e) => e.getChild('body'))).to.have.length(0);
    });
  });

  describe('archive of the room (XEP-0313)', () => {
    it('answers MAM queries on the room JID with the room’s messages, to those who may enter', async () => {
      const o = await connect(await user('owner'));
      const room = await createRoom(o, 'boss');
      for (let i = 1; i <= 3; i++) {
        o.send(groupchat(room, `archived ${i}`, `a${i}`));
        await o.expect(`<message id='a${i}'/>`);
      }
      const info = await iq(o, 'get', `${room}@${MUC}`, `<query xmlns='${NS_INFO}'/>`);
      const features = info
        .getChild('query')!
        .getChildren('feature')
        .map((f) => f.attrs.var);
      expect(features).to.include.members(['urn:xmpp:mam:2', 'urn:xmpp:sid:0']);

      const a = await connect(await user('alice'));
      a.send(
        `<iq type='set' id='q1' to='${room}@${MUC}'><query xmlns='urn:xmpp:mam:2' queryid='f1'><set xmlns='http://jabber.org/protocol/rsm'><max>2</max><before/></set></query></iq>`,
      );
      const seen = await collectUntil(a, (e) => e.name === 'iq');
      const bodies = seen
        .filter((e) => e.name === 'message')
        .map((m) => {
          const forwarded = m
            .getChild('result', 'urn:xmpp:mam:2')!
            .getChild('forwarded', 'urn:xmpp:forward:0')!;
          const original = forwarded.getChild('message')!;
          expect(original.attrs.from).to.equal(`${room}@${MUC}/boss`);
          expect(m.attrs.from).to.equal(`${room}@${MUC}`);
          return original.getChildText('body');
        });
      expect(bodies).to.deep.equal(['archived 2', 'archived 3']);
      expect(
        a.check(
          `<iq type='result' id='q1'><fin xmlns='urn:xmpp:mam:2' complete='false'/></iq>`,
          seen.at(-1)!,
        ),
      ).to.equal(null);

      await configureRoom(o, room, { membersonly: '1' });
      const refused = await iq(a, 'set', `${room}@${MUC}`, `<query xmlns='urn:xmpp:mam:2'/>`);
      expect(errorCondition(refused)).to.equal('forbidden');
    });
  });

  describe('invitations', () => {
    it('relays a mediated invitation, and makes the invitee a member of a members-only room', async () => {
      const ou = await user('owner');
      const au = await user('alice');
      const o = await connect(ou);
      const a = await connect(au);
      const room = await createRoom(o, 'boss', { membersonly: '1' });
      a.send('<presence/>');
      await a.expect(`<presence from='${a.jid}'/>`);
      o.send(
        `<message to='${room}@${MUC}' id='inv1'><x xmlns='${NS_USER}'><invite to='${au.bare}'><reason>join us</reason></invite></x></message>`,
      );
      await a.expect(
        `<message from='${room}@${MUC}'><x xmlns='${NS_USER}'><invite from='${ou.bare}'><reason>join us</reason></invite></x></message>`,
      );
      const seen = await join(a, room, 'alice');
      expect(item(seen[1]!).affiliation).to.equal('member');
    });

    it('relays a decline back to the inviter', async () => {
      const ou = await user('owner');
      const o = await connect(ou);
      const a = await connect(await user('alice'));
      const room = await createRoom(o, 'boss');
      o.send('<presence/>');
      await o.expect(`<presence from='${o.jid}'/>`);
      a.send(
        `<message to='${room}@${MUC}'><x xmlns='${NS_USER}'><decline to='${ou.bare}'><reason>busy</reason></decline></x></message>`,
      );
      await o.expect(
        `<message from='${room}@${MUC}'><x xmlns='${NS_USER}'><decline from='{any}'><reason>busy</reason></decline></x></message>`,
      );
    });

    it('refuses invitations from non-occupants and, unless allowed, from participants', async () => {
      const o = await connect(await user('owner'));
      const au = await user('alice');
      const a = await connect(au);
      const x = await connect(await user('outsider'));
      const room = await createRoom(o, 'boss');
      await join(a, room, 'alice');
      a.send(
        `<message to='${room}@${MUC}' id='inv2'><x xmlns='${NS_USER}'><invite to='someone@localhost'/></x></message>`,
      );
      expect(errorCondition(await a.expect(`<message type='error' id='inv2'/>`))).to.equal('forbidden');
      x.send(
        `<message to='${room}@${MUC}' id='inv3'><x xmlns='${NS_USER}'><invite to='${au.bare}'/></x></message>`,
      );
      expect(errorCondition(await x.expect(`<message type='error' id='inv3'/>`))).to.equal('not-acceptable');
    });
  });

  describe('several devices, self-ping and occupant ids', () => {
    it('lets two devices share a nick; each device gets every message once', async () => {
      const au = await user('alice');
      const o = await connect(await user('owner'));
      const room = await createRoom(o, 'boss');
      const phone = await connect(au, 'phone');
      const laptop = await connect(au, 'laptop');
      await join(phone, room, 'alice');
      await o.expect(`<presence from='${room}@${MUC}/alice'/>`);
      const second = await join(laptop, room, 'alice');
      expect(statusCodes(second.filter((e) => e.name === 'presence').at(-1)!)).to.include('110');
      o.send(groupchat(room, 'to both', 'd1'));
      for (const c of [phone, laptop, o])
        await c.expect(`<message from='${room}@${MUC}/boss' id='d1'><body>to both</body></message>`);
      laptop.send(groupchat(room, 'from the laptop', 'd2'));
      for (const c of [phone, laptop, o]) await c.expect(`<message from='${room}@${MUC}/alice' id='d2'/>`);
      await Promise.all([phone, laptop, o].map((c) => c.expectNothing(300)));
      // One device leaving does not make the occupant leave.
      laptop.send(`<presence to='${room}@${MUC}/alice' type='unavailable'/>`);
      await laptop.expect(`<presence type='unavailable' from='${room}@${MUC}/alice'/>`);
      await o.expectNothing();
      o.send(groupchat(room, 'still there?', 'd3'));
      await phone.expect(`<message id='d3'/>`);
    });

    it('answers a self-ping when joined and not-acceptable when not (XEP-0410)', async () => {
      const o = await connect(await user('owner'));
      const a = await connect(await user('alice'));
      const room = await createRoom(o, 'boss');
      const ping = `<ping xmlns='urn:xmpp:ping'/>`;
      expect((await iq(o, 'get', `${room}@${MUC}/boss`, ping)).attrs.type).to.equal('result');
      expect(errorCondition(await iq(a, 'get', `${room}@${MUC}/alice`, ping))).to.equal('not-acceptable');
    });

    it('relays requests between occupants without revealing real JIDs, and vCard requests to the account', async () => {
      const o = await connect(await user('owner'));
      const a = await connect(await user('alice'));
      const room = await createRoom(o, 'boss');
      await join(a, room, 'alice');
      await o.expect(`<presence from='${room}@${MUC}/alice'/>`);
      const setCard = await iq(a, 'set', '', `<vCard xmlns='vcard-temp'><FN>Alice A.</FN></vCard>`);
      expect(setCard.attrs.type).to.equal('result');

      o.send(`<iq type='get' id='p1' to='${room}@${MUC}/alice'><ping xmlns='urn:xmpp:ping'/></iq>`);
      const relayed = await a.expect(
        `<iq type='get' from='${room}@${MUC}/boss' to='${a.jid}'><ping xmlns='urn:xmpp:ping'/></iq>`,
      );
      a.send(`<iq type='result' id='${relayed.attrs.id}' to='${room}@${MUC}/boss'/>`);
      await o.expect(`<iq type='result' id='p1' from='${room}@${MUC}/alice' to='${o.jid}'/>`);

      const card = await iq(o, 'get', `${room}@${MUC}/alice`, `<vCard xmlns='vcard-temp'/>`);
      expect(
        o.check(
          `<iq type='result' from='${room}@${MUC}/alice'><vCard xmlns='vcard-temp'><FN>Alice A.</FN></vCard></iq>`,
          card,
        ),
      ).to.equal(null);
      await a.expectNothing();
      const none = await iq(o, 'get', `${room}@${MUC}/nobody`, `<vCard xmlns='vcard-temp'/>`);
      expect(errorCondition(none)).to.equal('item-not-found');
    });

    it('marks presence and messages with a stable occupant id per person and room (XEP-0421)', async () => {
      const o = await connect(await user('owner'));
      const au = await user('alice');
      const a = await connect(au);
      const room = await createRoom(o, 'boss');
      const seen = await join(a, room, 'alice');
      const bossId = seen[0]!.getChild('occupant-id', NS_OID)!.attrs.id as string;
      const aliceId = seen[1]!.getChild('occupant-id', NS_OID)!.attrs.id as string;
      expect(bossId).to.be.a('string').and.not.equal(aliceId);
      expect(aliceId).not.to.include(au.name);
      // A forged occupant id is replaced.
      a.send(
        `<message to='${room}@${MUC}' type='groupchat' id='oid'><body>x</body><occupant-id xmlns='${NS_OID}' id='${bossId}'/></message>`,
      );
      const m = (await collectUntil(o, (e) => e.name === 'message' && e.attrs.id === 'oid')).at(-1)!;
      const ids = m.getChildren('occupant-id', NS_OID).map((e) => e.attrs.id);
      expect(ids).to.deep.equal([aliceId]);
      // Leave and come back under another nick: same id.
      a.send(`<presence to='${room}@${MUC}/alice' type='unavailable'/>`);
      await collectUntil(a, (e) => e.name === 'presence' && e.attrs.type === 'unavailable');
      const again = await join(a, room, 'alice2');
      expect(again[1]!.getChild('occupant-id', NS_OID)!.attrs.id).to.equal(aliceId);
    });
  });
});

describe('multi-user chat: persistent rooms across a restart', function () {
  this.timeout(30_000);

  it('restores configuration, affiliations and history of persistent rooms; temporary ones are gone', async () => {
    const ou: MucUser = { name: 'owner', bare: 'owner@localhost' };
    const au: MucUser = { name: 'alice', bare: 'alice@localhost' };
    await acrossRestart(
      MODULES,
      clients,
      async (first) => {
        await first.addUser(ou.name, PASSWORD);
        await first.addUser(au.name, PASSWORD);
        const o = await clients.login(first.port, ou);
        await createRoom(o, 'boss', { persistentroom: '1', membersonly: '1', roomname: 'Kept' }, 'kept');
        await createRoom(o, 'boss', {}, 'temp');
        expect((await admin(o, 'kept', `<item jid='${au.bare}' affiliation='member'/>`)).attrs.type).to.equal(
          'result',
        );
        o.send(`<message to='kept@${MUC}' type='groupchat' id='s'><subject>Remembered</subject></message>`);
        await o.expect(`<message id='s'/>`);
        o.send(groupchat('kept', 'before the restart', 'k1'));
        await o.expect(`<message id='k1'/>`);
        await o.close();
      },
      async (port) => {
        const a = await clients.login(port, au);
        const seen = await join(a, 'kept', 'alice');
        expect(item(seen.find((e) => e.attrs.from === `kept@${MUC}/alice`)!).affiliation).to.equal('member');
        expect(seen.find((e) => e.getChild('body'))?.getChildText('body')).to.equal('before the restart');
        expect(seen.at(-1)!.getChildText('subject')).to.equal('Remembered');
        const info = await iq(a, 'get', `kept@${MUC}`, `<query xmlns='${NS_INFO}'/>`);
        expect(info.getChild('query')!.getChild('identity')!.attrs.name).to.equal('Kept');
        expect(errorCondition(await iq(a, 'get', `temp@${MUC}`, `<query xmlns='${NS_INFO}'/>`))).to.equal(
          'item-not-found',
        );
        // The owner is still the owner.
        const o2 = await clients.login(port, ou);
        const form = await iq(o2, 'get', `kept@${MUC}`, `<query xmlns='${NS_OWNER}'/>`);
        expect(form.attrs.type).to.equal('result');
      },
    );
  });
});
