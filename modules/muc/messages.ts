// Messages in a room (XEP-0045 7.4, 7.5, 7.8.2, 8.1): groupchat messages
// fan out to every occupant, the subject changes for those allowed,
// private messages reach another occupant's devices, mediated invitations
// and declines are relayed, voice requests and their approvals go to
// voice.ts.
import { Element } from 'ltx';
import type { StanzaEvent } from '../../src/router/events.ts';
import { childElements, NS_CLIENT } from '../../src/stanza.ts';
import { getChild } from '../../src/xml/element.ts';
import { Jid } from '../../src/jid.ts';
import { generateArchiveId } from '../../src/storage/types.ts';
import { record } from './history.ts';
import { NS_OCCUPANT_ID, NS_SID, NS_USER } from './ns.ts';
import type { Room } from './room.ts';
import { freeze, type MucService } from './service.ts';
import { onVoiceForm, requestForm } from './voice.ts';

export function installMessages(muc: MucService): void {
  muc.svc.hook('message/bare', (ev) => onRoomMessage(muc, ev));
  muc.svc.hook('message/full', (ev) => onPrivateMessage(muc, ev));
}

/** The payload a client may put in a room message: without ids only the room may set. */
function clientPayload(muc: MucService, room: Room, stanza: Element): Element[] {
  return childElements(stanza).filter((c) => {
    const ns = c.getNS();
    if (ns === NS_OCCUPANT_ID) return false;
    // XEP-0359 4: a stanza-id claiming to be by the room is the room's to set.
    if (c.name === 'stanza-id' && ns === NS_SID && c.attrs.by === room.jid) return false;
    return true;
  });
}

async function onRoomMessage(muc: MucService, ev: StanzaEvent): Promise<boolean> {
  const { stanza, from, to } = ev;
  const type = stanza.attrs.type as string | undefined;
  if (type === 'error') return true;
  const room = muc.rooms.get(to.local);
  if (!room) {
    muc.bounce(stanza, 'item-not-found', { text: 'No such room' });
    return true;
  }
  const x = getChild(stanza, 'x', NS_USER);
  if (type !== 'groupchat' && x && (getChild(x, 'invite') || getChild(x, 'decline'))) {
    await relayInvitation(muc, room, ev, x);
    return true;
  }
  const voiceForm = type !== 'groupchat' ? requestForm(stanza) : undefined;
  if (voiceForm) {
    onVoiceForm(muc, room, ev, voiceForm);
    return true;
  }
  const occupant = room.bySessionJid(from.toString());
  if (!occupant) {
    muc.bounce(stanza, 'not-acceptable', {
      text: 'Only occupants may send messages to the room; join it first',
    });
    return true;
  }
  if (type !== 'groupchat') {
    muc.bounce(stanza, 'bad-request', { text: 'Messages to the room must be of type groupchat' });
    return true;
  }
  const body = stanza.getChildText('body');
  const subject = getChild(stanza, 'subject');
  if (subject && body === null) {
    if (!room.mayChangeSubject(occupant)) {
      muc.bounce(stanza, 'forbidden', { text: 'You may not change the subject of this room' });
      return true;
    }
    room.subject = { text: subject.getText(), nick: occupant.nick };
    if (room.config.persistent) await muc.save(room);
  } else if (occupant.role === 'visitor') {
    // 7.4: visitors of a moderated room have no voice.
    muc.bounce(stanza, 'forbidden', { text: 'You have no voice in this moderated room' });
    return true;
  }

  const attrs = {
    from: `${room.jid}/${occupant.nick}`,
    type: 'groupchat',
    id: stanza.attrs.id as string | undefined,
  };
  const children = clientPayload(muc, room, stanza).map(freeze);
  children.push(freeze(new Element('occupant-id', { xmlns: NS_OCCUPANT_ID, id: occupant.occupantId })));
  if (body !== null) {
    const id = generateArchiveId();
    children.push(freeze(new Element('stanza-id', { xmlns: NS_SID, id, by: room.jid })));
    // Serializing the logged copy fills the frozen children's cache for the fan-out.
    const logged = new Element('message', { xmlns: NS_CLIENT, ...attrs });
    logged.children = [...children];
    await record(muc, room, logged, occupant.nick, body, id);
  }
  muc.broadcastMessage(room, attrs, children);
  return true;
}

async function onPrivateMessage(muc: MucService, ev: StanzaEvent): Promise<boolean> {
  const { stanza, from, to } = ev;
  const type = stanza.attrs.type as string | undefined;
  if (type === 'error') return true;
  const room = muc.rooms.get(to.local);
  const sender = room?.bySessionJid(from.toString());
  if (!room || !sender) {
    muc.bounce(stanza, 'not-acceptable', { text: 'Only occupants may send private messages in this room' });
    return true;
  }
  if (type === 'groupchat') {
    muc.bounce(stanza, 'bad-request', { text: 'A private message cannot be of type groupchat' });
    return true;
  }
  const target = room.occupants.get(to.resource);
  if (!target) {
    muc.bounce(stanza, 'item-not-found', { text: `No occupant is called ${to.resource}` });
    return true;
  }
  const children = clientPayload(muc, room, stanza).filter((c) => c.getNS() !== NS_USER);
  // Marks the message as a MUC private message for clients and carbons.
  children.push(new Element('x', { xmlns: NS_USER }));
  children.push(new Element('occupant-id', { xmlns: NS_OCCUPANT_ID, id: sender.occupantId }));
  muc.fanOut(
    'message',
    { from: `${room.jid}/${sender.nick}`, type, id: stanza.attrs.id as string | undefined },
    children,
    target.sessions.keys(),
  );
  return true;
}

/** XEP-0045 7.8.2 mediated invitations, and their declines (7.8.2 / 7.8.3). */
async function relayInvitation(muc: MucService, room: Room, ev: StanzaEvent, x: Element): Promise<void> {
  const { stanza, from } = ev;
  const invite = getChild(x, 'invite');
  if (!invite) {
    const decline = getChild(x, 'decline')!;
    const inviter = Jid.tryParse((decline.attrs.to as string | undefined) ?? '');
    if (!inviter) {
      muc.bounce(stanza, 'jid-malformed', { text: 'A decline needs the inviter in its to attribute' });
      return;
    }
    const out = new Element('message', { from: room.jid, to: inviter.toString() });
    const ox = out.c('x', { xmlns: NS_USER }).c('decline', { from: from.bareString() });
    const reason = decline.getChildText('reason');
    if (reason) ox.c('reason').t(reason);
    muc.send(out);
    return;
  }
  const occupant = room.bySessionJid(from.toString());
  if (!occupant) {
    muc.bounce(stanza, 'not-acceptable', { text: 'Join the room before inviting others to it' });
    return;
  }
  const affiliation = room.affiliation(occupant.bare);
  const privileged = affiliation === 'owner' || affiliation === 'admin' || occupant.role === 'moderator';
  if (!room.config.allowInvites && !privileged) {
    muc.bounce(stanza, 'forbidden', { text: 'Only moderators may invite people to this room' });
    return;
  }
  const invitee = Jid.tryParse((invite.attrs.to as string | undefined) ?? '');
  if (!invitee) {
    muc.bounce(stanza, 'jid-malformed', { text: 'An invitation needs the invitee in its to attribute' });
    return;
  }
  // 7.8.2: in a members-only room the invitee becomes a member, so the invitation can be used.
  if (room.config.membersOnly && room.affiliation(invitee.bareString()) === 'none') {
    room.setAffiliation(invitee.bareString(), 'member');
    await muc.save(room);
  }
  const reason = invite.getChildText('reason');
  const out = new Element('message', {
    from: room.jid,
    to: invitee.toString(),
    id: stanza.attrs.id as string | undefined,
  });
  const ox = out.c('x', { xmlns: NS_USER });
  const oi = ox.c('invite', { from: from.bareString() });
  if (reason) oi.c('reason').t(reason);
  if (room.config.passwordProtected) ox.c('password').t(room.config.password);
  out.c('body').t(`${from.bareString()} invites you to the room ${room.jid}${reason ? `: ${reason}` : ''}`);
  muc.send(out);
}
