// Voice requests (XEP-0045 7.13 and 8.6): a visitor of a moderated room
// asks for voice with a muc#request form sent to the room; the room
// forwards a form to every session of every moderator; a moderator who
// submits it with muc#request_allow=true makes the visitor a participant,
// announced like any role change (8.3).
//
// The XEP gives no error conditions for requests it does not expect, so
// they follow RFC 6120 8.3.3: a non-occupant gets not-acceptable (as for
// any message to the room, 7.4); in a room that is not moderated no one
// asks for voice (not-allowed); an occupant who already has voice asks for
// nothing (not-acceptable); a form asking for another role is bad-request;
// with no moderator in the room to ask, recipient-unavailable (wait); an
// approval from someone who is not a moderator is forbidden (section 8).
//
// Spam: each person's request reaches the moderators at most once every
// VOICE_REQUEST_INTERVAL_MS; repeating it sooner (e.g. by rejoining) gets
// resource-constraint (wait) and the moderators see nothing. Granting or
// revoking voice clears the limit (admin.ts), so a visitor whose voice was
// taken may ask again.
//
// Clients: the forwarded form carries muc#jid and muc#roomnick, which
// clients that show voice requests (Gajim) need to answer them; the answer
// is read from those fields, and muc#request_allow may be '1' or 'true'
// (XEP-0004 booleans; clients send either). The forwarded message has no
// <body/>: a client that does not know the form would otherwise show it
// as a chat with the room itself.
import { Element } from 'ltx';
import type { StanzaEvent } from '../../src/router/events.ts';
import { Jid } from '../../src/jid.ts';
import { formBoolean, formValue, formValues } from './forms.ts';
import { NS_DATA, NS_REQUEST } from './ns.ts';
import type { Room } from './room.ts';
import type { MucService } from './service.ts';

/** How often one person's voice request may reach the moderators of a room. */
export const VOICE_REQUEST_INTERVAL_MS = 5 * 60_000;

/** The muc#request form of a message, if it carries one. */
export function requestForm(stanza: Element): Element | undefined {
  for (const x of stanza.getChildren('x', NS_DATA)) {
    if (formValue(formValues(x), 'FORM_TYPE') === NS_REQUEST) return x;
  }
  return undefined;
}

/** Handles a message to the room carrying a muc#request form. */
export function onVoiceForm(muc: MucService, room: Room, ev: StanzaEvent, x: Element): void {
  const values = formValues(x);
  // A moderator's answer carries muc#request_allow (8.6); a visitor's request does not (7.13).
  if (values.has('muc#request_allow')) approve(muc, room, ev, values);
  else request(muc, room, ev, values);
}

function request(muc: MucService, room: Room, ev: StanzaEvent, values: Map<string, string[]>): void {
  const { stanza, from } = ev;
  const occupant = room.bySessionJid(from.toString());
  if (!occupant) {
    muc.bounce(stanza, 'not-acceptable', { text: 'Only occupants may ask for voice; join the room first' });
    return;
  }
  if (!room.config.moderated) {
    muc.bounce(stanza, 'not-allowed', { text: 'This room is not moderated: everyone in it has voice' });
    return;
  }
  if (occupant.role !== 'visitor') {
    muc.bounce(stanza, 'not-acceptable', { text: 'You already have voice in this room' });
    return;
  }
  const role = formValue(values, 'muc#role') ?? 'participant';
  if (role !== 'participant') {
    muc.bounce(stanza, 'bad-request', { text: 'Only voice (muc#role participant) can be requested' });
    return;
  }
  const now = Date.now();
  for (const [bare, at] of room.voiceRequests)
    if (now - at >= VOICE_REQUEST_INTERVAL_MS) room.voiceRequests.delete(bare);
  if (room.voiceRequests.has(occupant.bare)) {
    muc.bounce(stanza, 'resource-constraint', {
      type: 'wait',
      text: 'Your request for voice has been passed on to the moderators; wait for them before asking again',
    });
    return;
  }
  const moderators = [...room.sessions()].filter(([, o]) => o.role === 'moderator').map(([full]) => full);
  if (moderators.length === 0) {
    muc.bounce(stanza, 'recipient-unavailable', {
      type: 'wait',
      text: 'No moderator is in the room to grant voice; try again later',
    });
    return;
  }
  room.voiceRequests.set(occupant.bare, now);
  const form = new Element('x', { xmlns: NS_DATA, type: 'form' });
  form.c('title').t('Voice request');
  form
    .c('instructions')
    .t(
      `${occupant.nick} asks for voice. To let them speak, tick the box and submit; to ignore the request, cancel.`,
    );
  form.c('field', { var: 'FORM_TYPE', type: 'hidden' }).c('value').t(NS_REQUEST);
  form
    .c('field', { var: 'muc#role', type: 'list-single', label: 'Requested role' })
    .c('value')
    .t('participant');
  // Moderators may always see real JIDs (XEP-0045 8), so the JID is no leak.
  form.c('field', { var: 'muc#jid', type: 'jid-single', label: 'User ID' }).c('value').t(occupant.realJid);
  form
    .c('field', { var: 'muc#roomnick', type: 'text-single', label: 'Room Nickname' })
    .c('value')
    .t(occupant.nick);
  form
    .c('field', { var: 'muc#request_allow', type: 'boolean', label: 'Grant voice to this person?' })
    .c('value')
    .t('false');
  const id = `voice-${now.toString(36)}`;
  muc.fanOut('message', { from: room.jid, id }, [form], moderators);
}

function approve(muc: MucService, room: Room, ev: StanzaEvent, values: Map<string, string[]>): void {
  const { stanza, from } = ev;
  const moderator = room.bySessionJid(from.toString());
  if (!moderator) {
    muc.bounce(stanza, 'not-acceptable', {
      text: 'Only occupants may answer voice requests; join the room first',
    });
    return;
  }
  if (moderator.role !== 'moderator') {
    muc.bounce(stanza, 'forbidden', { text: 'Only moderators may grant voice' });
    return;
  }
  const allow = formBoolean(values, 'muc#request_allow');
  if (allow === undefined) {
    muc.bounce(stanza, 'bad-request', { text: 'muc#request_allow must be a boolean' });
    return;
  }
  if (!allow) return; // declined: the visitor stays a visitor, and is not told (as in 8.6)
  const nick = formValue(values, 'muc#roomnick');
  const target = nick === undefined ? undefined : room.occupants.get(nick);
  // The nick may have passed to someone else since the request: muc#jid, when given, must still match.
  const jid = formValue(values, 'muc#jid');
  const bare = jid === undefined ? undefined : Jid.tryParse(jid)?.bareString();
  if (!target || (jid !== undefined && bare !== target.bare)) {
    muc.bounce(stanza, 'item-not-found', { text: `${nick ?? 'The requester'} is no longer in the room` });
    return;
  }
  room.voiceRequests.delete(target.bare);
  if (target.role !== 'visitor') return; // another moderator was quicker, or the role changed since
  target.role = 'participant';
  muc.broadcastPresence(room, target, { item: { actor: moderator.nick } });
}
