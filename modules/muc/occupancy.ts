// Entering and leaving rooms (XEP-0045 7.2, 7.6, 7.14, 10.1): presence to
// room@service/nick joins, changes the nick, updates presence or leaves;
// XEP-0410 self-pings check that a device is still joined.
import { Element } from 'ltx';
import type { StanzaEvent } from '../../src/router/events.ts';
import { MOVED } from '../../src/session/client-session.ts';
import { getChild } from '../../src/xml/element.ts';
import { sendHistory } from './history.ts';
import { NS_MUC, NS_PING, Status } from './ns.ts';
import { refreshRoom } from './persistence.ts';
import { Room, type Occupant } from './room.ts';
import type { MucService } from './service.ts';

export function installOccupancy(muc: MucService): void {
  muc.svc.hook('presence/full', (ev) => onPresence(muc, ev));
  // A join needs a nick (XEP-0045 7.2.1).
  muc.svc.hook('presence/bare', (ev) => {
    if (ev.stanza.attrs.type === undefined)
      muc.bounce(ev.stanza, 'jid-malformed', { text: 'Join the room with a nickname: room@service/nick' });
    return true;
  });
  // Nor is the service itself a room.
  muc.svc.hook('presence/host', (ev) => {
    if (ev.stanza.attrs.type === undefined)
      muc.bounce(ev.stanza, 'jid-malformed', { text: 'Join a room: room@service/nick' });
    return true;
  });
  // A device that goes away without leaving leaves every room it was in.
  // In a cluster, each room lives on one node (service affinity: the node
  // that owns the room's address), mostly not the device's own node, so the
  // node where the session ended tells every other node, and each one removes
  // the device from the rooms it holds, as it would for a local disconnect.
  const goneHere = installGoneBroadcast(muc);
  muc.ctx.hook('resource-unbind', ({ session, reason }) => {
    // A session that moved to another cluster node keeps its full JID, and so its seats.
    if (reason === MOVED) return false;
    return goneHere(session.jid.toString());
  });
  // Cluster: a node died with the session on it; fired once, on the node that cleaned up.
  muc.ctx.hook('remote-session-lost', ({ jid }) => goneHere(jid.toString()));

  // XEP-0410: a ping to one's own occupant JID is answered by the service;
  // pings to other occupants are relayed to them (iq-relay.ts).
  muc.svc.handleIq(
    'get',
    NS_PING,
    'ping',
    ({ from, to, reply, error }) => {
      const occupant = muc.rooms.get(to.local)?.bySessionJid(from.toString());
      if (!occupant) {
        error('not-acceptable', { text: 'You are not in this room' });
        return true;
      }
      if (occupant.nick !== to.resource) return false;
      reply();
      return true;
    },
    ['full'],
  );
}

/**
 * Returns what to call when a device's session ends on this node (or a dead
 * node's session is cleaned up here): it leaves the rooms held here, and,
 * in a cluster, every other node is told to do the same for its rooms.
 *
 * Known limits, by design:
 * - A device that reconnects at once with the same full JID on another node
 *   and rejoins may be removed by the old session's notice if that arrives
 *   after the new join (there is no order between nodes). It then gets its
 *   own unavailable presence (status 110), which tells the client to rejoin.
 * - When nodes come or go, rooms move to another node (rendezvous hashing
 *   over the live nodes; only the rooms of the nodes that came or went).
 *   Occupant lists are not migrated: the new owner starts without the
 *   occupants of a moved room (a room it does not hold at all is created
 *   anew by the next join, or, if persistent, used as this node restored
 *   it from storage when it started), so occupants' self-pings (XEP-0410)
 *   get not-acceptable (below) and their clients rejoin. The old owner, if
 *   alive, keeps its copy of the occupant list but gets no stanzas for the
 *   room any more. Should the room come back to it (the other node leaves
 *   again), that copy is stale: devices that disconnected meanwhile were
 *   removed by these notices, but those that left with unavailable presence
 *   (sent to the other owner) are still seated there until they
 *   disconnect. Dropping a room's occupants when it moves away needs the
 *   core to tell modules about membership changes or expose ownerOf.
 */
function installGoneBroadcast(muc: MucService): (full: string) => false | Promise<false> {
  const { cluster } = muc.ctx;
  // A dead node's sessions are reported one by one, hundreds at a time:
  // those reported together go out in one broadcast.
  let pending: string[] = [];
  const flush = () => {
    const gone = pending;
    pending = [];
    if (gone.length > 0) cluster.broadcast({ gone });
  };
  if (cluster.enabled) {
    cluster.onBroadcast((data) => {
      const gone = (data as { gone?: unknown } | null)?.gone;
      if (!Array.isArray(gone)) return;
      for (const full of gone) {
        if (typeof full !== 'string') continue;
        Promise.resolve(leaveAll(muc, full)).catch((err: unknown) =>
          muc.ctx.log.error({ err, jid: full }, 'removing a departed device from rooms failed'),
        );
      }
    });
  }
  return (full) => {
    if (cluster.enabled) {
      if (pending.length === 0) queueMicrotask(flush);
      pending.push(full);
    }
    return leaveAll(muc, full);
  };
}

/** The device `full` leaves every room held on this node, as if it had sent unavailable presence. */
function leaveAll(muc: MucService, full: string): false | Promise<false> {
  const leaving: Promise<void>[] = [];
  for (const room of muc.rooms.values()) {
    const occupant = room.bySessionJid(full);
    if (occupant)
      leaving.push(leave(muc, room, occupant, full, new Element('presence', { type: 'unavailable' })));
  }
  return leaving.length > 0 ? Promise.all(leaving).then(() => false) : false;
}

async function onPresence(muc: MucService, ev: StanzaEvent): Promise<boolean> {
  const { stanza, from, to } = ev;
  const type = stanza.attrs.type as string | undefined;
  const full = from.toString();
  // Joins (and nothing else) may need the stored room: see refreshRoom.
  const room =
    type === undefined && !muc.rooms.get(to.local)?.bySessionJid(full)
      ? await refreshRoom(muc, to.local)
      : muc.rooms.get(to.local);
  const occupant = room?.bySessionJid(full);
  if (type === 'unavailable' || type === 'error') {
    // An error from an occupant's client means it is gone (XEP-0045 18.1).
    if (room && occupant) await leave(muc, room, occupant, full, stanza);
    return true;
  }
  if (type !== undefined) return true; // subscriptions and probes mean nothing to a room
  if (!room || !occupant) return join(muc, ev, room);
  if (occupant.nick !== to.resource) return changeNick(muc, room, occupant, ev);
  room.addSession(occupant, full, stanza);
  muc.broadcastPresence(room, occupant);
  return true;
}

async function join(muc: MucService, ev: StanzaEvent, existingRoom: Room | undefined): Promise<boolean> {
  const { stanza, from, to } = ev;
  const full = from.toString();
  const bare = from.bareString();
  const nick = to.resource;
  const request = getChild(stanza, 'x', NS_MUC);
  let room = existingRoom;
  let created = false;
  if (!room) {
    if (muc.ctx.options.room_creation === 'local' && from.domain !== muc.ctx.host) {
      muc.bounce(stanza, 'not-allowed', { text: 'Only local users may create rooms here' });
      return true;
    }
    room = new Room(to.local, to.bareString(), muc.defaultConfig());
    room.setAffiliation(bare, 'owner');
    // A client without MUC support cannot configure the room: it gets an instant room.
    room.locked = request !== undefined;
    muc.rooms.set(room.name, room);
    created = true;
  }

  const affiliation = room.affiliation(bare);
  const privileged = affiliation === 'owner' || affiliation === 'admin';
  const sameNick = room.occupants.get(nick);
  const refuse = (
    condition:
      | 'item-not-found'
      | 'forbidden'
      | 'conflict'
      | 'registration-required'
      | 'not-authorized'
      | 'service-unavailable',
    text: string,
  ) => {
    muc.bounce(stanza, condition, { text });
    return true;
  };
  if (room.locked && affiliation !== 'owner')
    return refuse('item-not-found', 'This room is being set up by its owner; try again later');
  if (affiliation === 'outcast') return refuse('forbidden', 'You are banned from this room');
  if (sameNick && sameNick.bare !== bare)
    return refuse('conflict', `The nickname ${nick} is already in use in this room`);
  // 7.12: a nick registered by someone else is theirs even when they are away.
  if (room.nickReservedByOther(nick, bare))
    return refuse('conflict', `The nickname ${nick} is registered by someone else in this room`);
  if (room.config.membersOnly && affiliation === 'none')
    return refuse('registration-required', 'This room is for members only');
  if (room.config.passwordProtected && affiliation !== 'owner') {
    const given = request?.getChildText('password') ?? undefined;
    if (given !== room.config.password) return refuse('not-authorized', 'This room needs a password');
  }
  if (!sameNick && room.config.maxUsers > 0 && room.occupants.size >= room.config.maxUsers && !privileged) {
    return refuse('service-unavailable', 'This room is full');
  }

  const selfCodes: string[] = [];
  if (room.config.whois === 'anyone') selfCodes.push(Status.nonAnonymous);
  if (created) selfCodes.push(Status.created);
  let occupant: Occupant;
  if (sameNick) {
    // Another device of the same person with the same nick shares the occupant.
    occupant = sameNick;
    room.addSession(occupant, full, stanza);
    for (const other of room.occupants.values())
      if (other !== occupant) muc.presenceSender(room, other)(full, occupant);
    muc.presenceSender(room, occupant, { selfCodes })(full, occupant);
  } else {
    occupant = muc.newOccupant(room, nick, bare);
    // The joiner learns who is there before anyone learns about the joiner (7.2.3).
    for (const other of room.occupants.values()) muc.presenceSender(room, other)(full, occupant);
    room.addSession(occupant, full, stanza);
    muc.broadcastPresence(room, occupant, { selfCodes });
  }
  if (created && !room.locked) await muc.save(room);
  await sendHistory(muc, room, full, request);
  sendSubject(muc, room, full);
  return true;
}

/** The subject, or an empty one, ends the join sequence (XEP-0045 7.2.15). */
export function sendSubject(muc: MucService, room: Room, to: string): void {
  const from = room.subject.nick ? `${room.jid}/${room.subject.nick}` : room.jid;
  const message = new Element('message', {
    from,
    to,
    type: 'groupchat',
    id: `subject-${Date.now().toString(36)}`,
  });
  const subject = message.c('subject');
  if (room.subject.text) subject.t(room.subject.text);
  muc.send(message);
}

async function changeNick(
  muc: MucService,
  room: Room,
  occupant: Occupant,
  ev: StanzaEvent,
): Promise<boolean> {
  const { stanza, from, to } = ev;
  const nick = to.resource;
  const taken = room.occupants.get(nick);
  if (taken) {
    muc.bounce(stanza, 'conflict', { text: `The nickname ${nick} is already in use in this room` });
    return true;
  }
  if (room.nickReservedByOther(nick, occupant.bare)) {
    muc.bounce(stanza, 'conflict', {
      text: `The nickname ${nick} is registered by someone else in this room`,
    });
    return true;
  }
  // 7.6: unavailable with 303 and the new nick from the old one, then presence from the new one.
  const gone = muc.presenceSender(room, occupant, {
    type: 'unavailable',
    codes: [Status.nickChanged],
    item: { nick, role: occupant.role },
  });
  for (const [full, viewer] of room.sessions()) gone(full, viewer);
  room.rename(occupant, nick);
  room.addSession(occupant, from.toString(), stanza);
  muc.broadcastPresence(room, occupant);
  return true;
}

/** One device leaves; the occupant leaves with its last device. */
export async function leave(
  muc: MucService,
  room: Room,
  occupant: Occupant,
  full: string,
  stanza: Element,
): Promise<void> {
  // Built while the device is still an occupant: moderators see the full JID
  // of the device that left (XEP-0045 7.14), not the bare fallback.
  const send = muc.presenceSender(room, occupant, { type: 'unavailable', base: stanza });
  const last = room.removeSession(occupant, full);
  send(full, occupant);
  if (!last) return;
  for (const [other, viewer] of room.sessions()) send(other, viewer);
  await muc.maybeRemove(room);
}

/** Removes an occupant with all its devices (kick, ban, destroy), telling everyone. */
export async function expel(
  muc: MucService,
  room: Room,
  occupant: Occupant,
  opts: { codes: string[]; reason?: string; actor?: string; extra?: Element; affiliation?: string },
): Promise<void> {
  const send = muc.presenceSender(room, occupant, {
    type: 'unavailable',
    codes: opts.codes,
    base: new Element('presence'),
    item: { reason: opts.reason, actor: opts.actor, affiliation: opts.affiliation },
    extra: opts.extra,
  });
  const own = [...occupant.sessions.keys()];
  room.removeOccupant(occupant);
  for (const full of own) send(full, occupant);
  for (const [full, viewer] of room.sessions()) send(full, viewer);
  await muc.maybeRemove(room);
}
