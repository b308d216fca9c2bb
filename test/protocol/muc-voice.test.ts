// Voice requests in moderated rooms (XEP-0045 7.13 and 8.6), with real
// clients against a real server: a visitor asks, every moderator's device
// gets the form, and a moderator's approval gives the visitor voice.
import { expect } from 'chai';
import type { Element } from 'ltx';
import {
  admin,
  configureRoom,
  errorCondition,
  groupchat,
  iq,
  item,
  join,
  MucClients,
  uniqueName,
  useMucServer,
  type MucUser,
} from '../helpers/muc.ts';
import { MUC, NS_DATA, NS_OWNER } from '../helpers/muc.ts';
import { NS_STANZAS, type XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'muc-voice-pw';
const MODULES = 'modules: [disco, ping, roster, presence, muc]';
const NS_REQUEST = 'http://jabber.org/protocol/muc#request';

const clients = new MucClients(PASSWORD);

/** The values of a data form's fields, by var. */
function formFields(x: Element): Record<string, string | undefined> {
  return Object.fromEntries(
    x.getChildren('field').map((f) => [f.attrs.var as string, f.getChildText('value') ?? undefined]),
  );
}

/** A visitor's request for voice (XEP-0045 example 94). */
function voiceRequest(room: string, id: string, role = 'participant'): string {
  return (
    `<message to='${room}@${MUC}' id='${id}'><x xmlns='${NS_DATA}' type='submit'>` +
    `<field var='FORM_TYPE'><value>${NS_REQUEST}</value></field>` +
    `<field var='muc#role' type='text-single' label='Requested role'><value>${role}</value></field>` +
    `</x></message>`
  );
}

/** A moderator's answer to a forwarded request (XEP-0045 example 124). */
function approval(room: string, id: string, fields: Record<string, string>): string {
  const all = { FORM_TYPE: NS_REQUEST, 'muc#role': 'participant', ...fields };
  return (
    `<message to='${room}@${MUC}' id='${id}'><x xmlns='${NS_DATA}' type='submit'>` +
    Object.entries(all)
      .map(([k, v]) => `<field var='${k}'><value>${v}</value></field>`)
      .join('') +
    `</x></message>`
  );
}

describe('multi-user chat: voice requests (XEP-0045 7.13, 8.6)', function () {
  this.timeout(30_000);
  const { user, connect } = useMucServer(MODULES, clients);

  /** An owner in a configured room; `moderated` decides whether newcomers are visitors. */
  async function ownedRoom(moderated: boolean): Promise<{ o: XmppClient; ou: MucUser; room: string }> {
    const ou = await user('owner');
    const o = await connect(ou);
    const room = uniqueName('voice');
    await join(o, room, 'boss');
    await configureRoom(o, room, { moderatedroom: moderated ? '1' : '0' });
    return { o, ou, room };
  }

  /** `c` joins as `nick`; everyone in `watchers` reads the newcomer's presence. */
  async function enter(c: XmppClient, room: string, nick: string, watchers: XmppClient[]): Promise<Element> {
    const seen = await join(c, room, nick);
    for (const w of watchers) await w.expect(`<presence from='${room}@${MUC}/${nick}'/>`);
    return seen.find((e) => e.name === 'presence' && e.attrs.from === `${room}@${MUC}/${nick}`)!;
  }

  it('sends a visitor’s request to every device of every moderator; an approval gives the visitor voice', async () => {
    const { o, room } = await ownedRoom(true);
    const mu = await user('mod');
    const pu = await user('member');
    const vu = await user('visitor');
    const m = await connect(mu);
    const p = await connect(pu);
    const v = await connect(vu);
    // An admin is a moderator; a member is a participant with voice.
    for (const [bare, affiliation] of [
      [mu.bare, 'admin'],
      [pu.bare, 'member'],
    ]) {
      const ok = await admin(o, room, `<item jid='${bare}' affiliation='${affiliation}'/>`);
      expect(ok.attrs.type).to.equal('result');
    }
    expect(item(await enter(m, room, 'mod', [o])).role).to.equal('moderator');
    expect(item(await enter(p, room, 'member', [o, m])).role).to.equal('participant');
    expect(item(await enter(v, room, 'vis', [o, m, p])).role).to.equal('visitor');

    v.send(voiceRequest(room, 'ask1'));
    for (const mod of [o, m]) {
      const forwarded = await mod.expect(
        `<message from='${room}@${MUC}'><x xmlns='${NS_DATA}' type='form'><field var='FORM_TYPE' type='hidden'><value>${NS_REQUEST}</value></field></x></message>`,
      );
      expect(forwarded.attrs.type).to.equal(undefined);
      expect(formFields(forwarded.getChild('x', NS_DATA)!)).to.deep.equal({
        FORM_TYPE: NS_REQUEST,
        'muc#role': 'participant',
        'muc#jid': `${vu.bare}/dev`,
        'muc#roomnick': 'vis',
        'muc#request_allow': 'false',
      });
      const allow = forwarded
        .getChild('x', NS_DATA)!
        .getChildren('field')
        .find((f) => f.attrs.var === 'muc#request_allow')!;
      expect(allow.attrs.type).to.equal('boolean');
    }
    // Neither the participant nor the visitor sees the request.
    await p.expectNothing();
    await v.expectNothing();

    m.send(
      approval(room, 'yes1', {
        'muc#jid': `${vu.bare}/dev`,
        'muc#roomnick': 'vis',
        'muc#request_allow': 'true',
      }),
    );
    for (const c of [o, m, p, v]) {
      const voiced = await c.expect(`<presence from='${room}@${MUC}/vis'/>`);
      expect(item(voiced)).to.include({ role: 'participant', affiliation: 'none' });
    }
    v.send(groupchat(room, 'thank you', 'g1'));
    for (const c of [o, m, p, v])
      await c.expect(
        `<message type='groupchat' from='${room}@${MUC}/vis' id='g1'><body>thank you</body></message>`,
      );
  });

  it('reaches a moderator’s second device too', async () => {
    const ou = await user('owner');
    const o = await connect(ou);
    const room = uniqueName('voice');
    await join(o, room, 'boss');
    await iq(
      o,
      'set',
      `${room}@${MUC}`,
      `<query xmlns='${NS_OWNER}'><x xmlns='${NS_DATA}' type='submit'><field var='muc#roomconfig_moderatedroom'><value>1</value></field></x></query>`,
    );
    const o2 = await connect(ou, 'phone');
    await join(o2, room, 'boss');
    const v = await connect(await user('visitor'));
    await enter(v, room, 'vis', [o, o2]);
    v.send(voiceRequest(room, 'ask'));
    for (const device of [o, o2]) {
      const forwarded = await device.expect(
        `<message from='${room}@${MUC}'><x xmlns='${NS_DATA}' type='form'/></message>`,
      );
      expect(formFields(forwarded.getChild('x', NS_DATA)!)['muc#roomnick']).to.equal('vis');
    }
    // Answering from the phone works as well as from the first device.
    o2.send(approval(room, 'yes', { 'muc#roomnick': 'vis', 'muc#request_allow': '1' }));
    expect(item(await v.expect(`<presence from='${room}@${MUC}/vis'/>`)).role).to.equal('participant');
  });

  it('refuses requests from non-occupants, from those who have voice, and in rooms that are not moderated', async () => {
    const { o, room } = await ownedRoom(true);
    const out = await connect(await user('outsider'));
    out.send(voiceRequest(room, 'r1'));
    expect(
      errorCondition(await out.expect(`<message type='error' id='r1' from='${room}@${MUC}'/>`)),
    ).to.equal('not-acceptable');

    // The owner is a moderator: it has voice already.
    o.send(voiceRequest(room, 'r2'));
    expect(errorCondition(await o.expect(`<message type='error' id='r2'/>`))).to.equal('not-acceptable');

    // Asking for another role than participant is not a voice request.
    const v = await connect(await user('visitor'));
    await enter(v, room, 'vis', [o]);
    v.send(voiceRequest(room, 'r3', 'moderator'));
    expect(errorCondition(await v.expect(`<message type='error' id='r3'/>`))).to.equal('bad-request');
    await o.expectNothing();

    const open = await ownedRoom(false);
    const a = await connect(await user('alice'));
    expect(item(await enter(a, open.room, 'alice', [open.o])).role).to.equal('participant');
    a.send(voiceRequest(open.room, 'r4'));
    const refused = await a.expect(`<message type='error' id='r4'/>`);
    expect(errorCondition(refused)).to.equal('not-allowed');
    expect(refused.getChild('error')!.getChildText('text', NS_STANZAS)).to.match(/not moderated/);
    await open.o.expectNothing();
  });

  it('passes on one request per visitor at a time, even across a rejoin, and tells a visitor when no moderator is there', async () => {
    const { o, room } = await ownedRoom(true);
    const v = await connect(await user('visitor'));
    await enter(v, room, 'vis', [o]);
    v.send(voiceRequest(room, 'a1'));
    await o.expect(`<message from='${room}@${MUC}'><x xmlns='${NS_DATA}' type='form'/></message>`);
    v.send(voiceRequest(room, 'a2'));
    const limited = await v.expect(`<message type='error' id='a2'/>`);
    expect(errorCondition(limited)).to.equal('resource-constraint');
    expect(limited.getChild('error')!.attrs.type).to.equal('wait');
    // Leaving and coming back does not reset the limit.
    v.send(`<presence to='${room}@${MUC}/vis' type='unavailable'/>`);
    await v.expect(`<presence type='unavailable'/>`);
    await o.expect(`<presence type='unavailable' from='${room}@${MUC}/vis'/>`);
    await enter(v, room, 'vis2', [o]);
    v.send(voiceRequest(room, 'a3'));
    expect(errorCondition(await v.expect(`<message type='error' id='a3'/>`))).to.equal('resource-constraint');
    await o.expectNothing();

    // With no moderator in the room, the request has no one to go to.
    const w = await connect(await user('walker'));
    await enter(w, room, 'walker', [o, v]);
    o.send(`<presence to='${room}@${MUC}/boss' type='unavailable'/>`);
    await o.expect(`<presence type='unavailable'/>`);
    await v.expect(`<presence type='unavailable' from='${room}@${MUC}/boss'/>`);
    await w.expect(`<presence type='unavailable' from='${room}@${MUC}/boss'/>`);
    w.send(voiceRequest(room, 'a4'));
    const alone = await w.expect(`<message type='error' id='a4'/>`);
    expect(errorCondition(alone)).to.equal('recipient-unavailable');
  });

  it('lets only moderators approve; a declined request or one for someone gone changes nothing', async () => {
    const { o, ou, room } = await ownedRoom(true);
    const pu = await user('member');
    const p = await connect(pu);
    const member = await admin(o, room, `<item jid='${pu.bare}' affiliation='member'/>`);
    expect(member.attrs.type).to.equal('result');
    await enter(p, room, 'member', [o]);
    const vu = await user('visitor');
    const v = await connect(vu);
    await enter(v, room, 'vis', [o, p]);
    v.send(voiceRequest(room, 'q'));
    await o.expect(`<message from='${room}@${MUC}'><x xmlns='${NS_DATA}' type='form'/></message>`);

    const yes = { 'muc#jid': `${vu.bare}/dev`, 'muc#roomnick': 'vis', 'muc#request_allow': 'true' };
    // A participant, and the visitor itself, may not approve.
    p.send(approval(room, 'p1', yes));
    expect(errorCondition(await p.expect(`<message type='error' id='p1'/>`))).to.equal('forbidden');
    v.send(approval(room, 'v1', yes));
    expect(errorCondition(await v.expect(`<message type='error' id='v1'/>`))).to.equal('forbidden');
    // Declining leaves the visitor a visitor, and nobody is told anything.
    o.send(approval(room, 'o1', { ...yes, 'muc#request_allow': 'false' }));
    await v.expectNothing();
    await p.expectNothing();
    v.send(groupchat(room, 'may I?', 'g1'));
    expect(errorCondition(await v.expect(`<message type='error' id='g1'/>`))).to.equal('forbidden');
    // An approval naming a nick now used by someone else does not give them voice.
    o.send(approval(room, 'o2', { ...yes, 'muc#jid': `${ou.bare}/dev` }));
    expect(errorCondition(await o.expect(`<message type='error' id='o2'/>`))).to.equal('item-not-found');
    o.send(approval(room, 'o3', { ...yes, 'muc#roomnick': 'nobody' }));
    expect(errorCondition(await o.expect(`<message type='error' id='o3'/>`))).to.equal('item-not-found');
    await v.expectNothing();
  });
});
