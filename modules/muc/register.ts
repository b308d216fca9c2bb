// Registering with a room (XEP-0045 7.10) and the reserved nick (7.12):
// jabber:iq:register on the room JID gets the muc#register form (or
// <registered/> and the nick already registered), and submitting it
// reserves the nick and makes an unaffiliated user a member; <remove/>
// cancels the registration (XEP-0077 3.2). Reserved nicks are kept with
// the affiliations (room.ts) and stored with persistent rooms.
//
// Who may register: anyone not banned, except in a members-only room,
// where only those already affiliated may (to reserve a nick): registering
// would otherwise let anyone make themselves a member. The XEP's other way,
// a request approved by an admin (9.9), is not implemented; such users get
// not-allowed, as 7.10 asks of users who may not register, and an admin
// adds them with muc#admin. Outcasts get not-allowed too.
//
// Clients: 7.10 says an already registered user gets "an empty
// <register/> element", but XEP-0077, which it builds on, and the clients
// that implement it look for <registered/>; that is what is sent, with
// <username/> and the form holding the current nick so that it can be
// changed by submitting the form again.
import { Element } from 'ltx';
import type { IqEvent } from '../../src/router/events.ts';
import { JidError, prepareResource } from '../../src/jid.ts';
import { getChild } from '../../src/xml/element.ts';
import { applyAffiliation } from './admin.ts';
import { formValue, formValues } from './forms.ts';
import { NS_DATA, NS_MUC_REGISTER, NS_REGISTER } from './ns.ts';
import type { Room } from './room.ts';
import type { MucService } from './service.ts';

export function installRegister(muc: MucService): void {
  muc.svc.handleIq('get', NS_REGISTER, 'query', (ev) => getForm(muc, ev), ['bare']);
  muc.svc.handleIq('set', NS_REGISTER, 'query', (ev) => register(muc, ev), ['bare']);
}

/** The room, if it exists for the sender and the sender may register; otherwise answers the IQ. */
function roomFor(muc: MucService, ev: IqEvent): Room | undefined {
  const room = muc.rooms.get(ev.to.local);
  const bare = ev.from.bareString();
  if (!room || (room.locked && room.affiliation(bare) !== 'owner')) {
    ev.error('item-not-found', { text: 'No such room' });
    return undefined;
  }
  const affiliation = room.affiliation(bare);
  if (affiliation === 'outcast') {
    ev.error('not-allowed', { text: 'You are banned from this room' });
    return undefined;
  }
  if (room.config.membersOnly && affiliation === 'none') {
    ev.error('not-allowed', {
      text: 'This room is for members only; ask an admin of the room to make you a member',
    });
    return undefined;
  }
  return room;
}

function registrationForm(nick: string | undefined): Element {
  const x = new Element('x', { xmlns: NS_DATA, type: 'form' });
  x.c('title').t('Room registration');
  x.c('instructions').t('Choose the nickname to reserve in this room. Registering makes you a member.');
  x.c('field', { var: 'FORM_TYPE', type: 'hidden' }).c('value').t(NS_MUC_REGISTER);
  const field = x.c('field', { var: 'muc#register_roomnick', type: 'text-single', label: 'Nickname' });
  field.c('required');
  if (nick !== undefined) field.c('value').t(nick);
  return x;
}

function getForm(muc: MucService, ev: IqEvent): boolean {
  const room = roomFor(muc, ev);
  if (!room) return true;
  const nick = room.reservedNick(ev.from.bareString());
  const query = new Element('query', { xmlns: NS_REGISTER });
  if (nick !== undefined) {
    // Already registered (see the top of this file on <registered/>).
    query.c('registered');
    query.c('username').t(nick);
  } else {
    query.c('instructions').t('Reserve a nickname in this room by submitting the form.');
  }
  query.cnode(registrationForm(nick));
  ev.reply(query);
  return true;
}

async function register(muc: MucService, ev: IqEvent): Promise<boolean> {
  const room = roomFor(muc, ev);
  if (!room) return true;
  const bare = ev.from.bareString();
  if (getChild(ev.payload, 'remove')) return unregister(muc, room, ev);
  const x = getChild(ev.payload, 'x', NS_DATA);
  if (x?.attrs.type === 'cancel') {
    ev.reply();
    return true;
  }
  const values = x && x.attrs.type === 'submit' ? formValues(x) : undefined;
  const formType = values && formValue(values, 'FORM_TYPE');
  if (!values || (formType !== undefined && formType !== NS_MUC_REGISTER)) {
    ev.error('bad-request', { text: 'Submit the muc#register form (or <remove/> to unregister)' });
    return true;
  }
  let nick: string;
  try {
    nick = prepareResource(formValue(values, 'muc#register_roomnick') ?? '');
  } catch (err) {
    if (!(err instanceof JidError)) throw err;
    ev.error('bad-request', { text: 'muc#register_roomnick must be a valid nickname' });
    return true;
  }
  const inUse = room.occupants.get(nick);
  if (room.nickReservedByOther(nick, bare) || (inUse && inUse.bare !== bare)) {
    ev.error('conflict', { text: `The nickname ${nick} is taken in this room` });
    return true;
  }
  room.reserveNick(bare, nick);
  if (room.affiliation(bare) === 'none') await applyAffiliation(muc, room, bare, 'member');
  await muc.save(room);
  ev.reply();
  return true;
}

/** Cancels a registration: the nick is freed, and a member becomes unaffiliated. */
async function unregister(muc: MucService, room: Room, ev: IqEvent): Promise<boolean> {
  const bare = ev.from.bareString();
  const affiliation = room.affiliation(bare);
  if (room.reservedNick(bare) === undefined && affiliation !== 'member') {
    ev.error('item-not-found', { text: 'You are not registered with this room' });
    return true;
  }
  room.reserveNick(bare, undefined);
  // Admins and owners keep their affiliation: that is for muc#admin to change.
  if (affiliation === 'member') await applyAffiliation(muc, room, bare, 'none');
  await muc.save(room);
  ev.reply();
  return true;
}
