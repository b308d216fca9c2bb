// Moderator, admin and owner use cases through muc#admin (XEP-0045 sections
// 8, 9, 10): kick, voice, moderator status by nick (roles), and ban,
// membership, admin and owner status by JID (affiliations), plus reading
// those lists with the privileges the XEP asks for.
import { Element } from 'ltx';
import type { IqEvent } from '../../src/router/events.ts';
import type { StanzaErrorCondition } from '../../src/stanza.ts';
import { childElements } from '../../src/stanza.ts';
import { Jid } from '../../src/jid.ts';
import { NS_ADMIN, Status } from './ns.ts';
import { expel } from './occupancy.ts';
import {
  AFFILIATIONS,
  ROLES,
  affiliationRank,
  type Affiliation,
  type Occupant,
  type Role,
  type Room,
} from './room.ts';
import type { MucService } from './service.ts';

class Refusal extends Error {
  constructor(
    readonly condition: StanzaErrorCondition,
    text: string,
  ) {
    super(text);
  }
}

type Change =
  | { kind: 'role'; target: Occupant; role: Role; reason?: string }
  | { kind: 'affiliation'; bare: string; affiliation: Affiliation; reason?: string };

export function installAdmin(muc: MucService): void {
  muc.svc.handleIq('get', NS_ADMIN, 'query', (ev) => getList(muc, ev), ['bare']);
  muc.svc.handleIq('set', NS_ADMIN, 'query', (ev) => setItems(muc, ev), ['bare']);
}

function isPrivileged(a: Affiliation): boolean {
  return a === 'owner' || a === 'admin';
}

function getList(muc: MucService, ev: IqEvent): boolean {
  const room = muc.rooms.get(ev.to.local);
  if (!room) {
    ev.error('item-not-found', { text: 'No such room' });
    return true;
  }
  const item = childElements(ev.payload).find((c) => c.name === 'item');
  const role = item?.attrs.role as string | undefined;
  const affiliation = item?.attrs.affiliation as string | undefined;
  const mine = room.affiliation(ev.from.bareString());
  const query = new Element('query', { xmlns: NS_ADMIN });
  if (role !== undefined && ROLES.includes(role as Role)) {
    if (room.bySessionJid(ev.from.toString())?.role !== 'moderator') {
      ev.error('forbidden', { text: 'Only moderators may list occupants by role' });
      return true;
    }
    for (const o of room.occupants.values()) {
      if (o.role === role)
        query.c('item', {
          nick: o.nick,
          role: o.role,
          affiliation: room.affiliation(o.bare),
          jid: o.realJid,
        });
    }
  } else if (
    affiliation !== undefined &&
    AFFILIATIONS.includes(affiliation as Affiliation) &&
    affiliation !== 'none'
  ) {
    // 9.5: admins and owners read every list. In a members-only room members
    // also see who belongs (members, admins, owners), as clients show them
    // the group's members; the outcast list stays with admins and owners.
    const allowed =
      isPrivileged(mine) || (affiliation !== 'outcast' && mine === 'member' && room.config.membersOnly);
    if (!allowed) {
      ev.error('forbidden', { text: `You may not see the ${affiliation} list of this room` });
      return true;
    }
    for (const [bare, a] of room.affiliations) {
      if (a !== affiliation) continue;
      const present = room.byBare(bare);
      query.c('item', {
        jid: bare,
        affiliation: a,
        nick: present?.nick ?? room.reservedNick(bare),
        role: present?.role,
      });
    }
  } else {
    ev.error('bad-request', {
      text: 'Ask for one role or affiliation: <item role=.../> or <item affiliation=.../>',
    });
    return true;
  }
  ev.reply(query);
  return true;
}

async function setItems(muc: MucService, ev: IqEvent): Promise<boolean> {
  const room = muc.rooms.get(ev.to.local);
  if (!room) {
    ev.error('item-not-found', { text: 'No such room' });
    return true;
  }
  const actor = room.bySessionJid(ev.from.toString());
  const mine = room.affiliation(ev.from.bareString());
  const items = childElements(ev.payload).filter((c) => c.name === 'item');
  let changes: Change[];
  try {
    if (items.length === 0) throw new Refusal('bad-request', 'No <item/> to apply');
    changes = items.map((item) => checkItem(room, item, actor, mine));
    checkOwnersRemain(room, changes);
  } catch (err) {
    if (err instanceof Refusal) {
      ev.error(err.condition, { text: err.message });
      return true;
    }
    throw err;
  }
  for (const change of changes) await apply(muc, room, change, actor?.nick);
  await muc.save(room);
  ev.reply();
  return true;
}

function checkItem(room: Room, item: Element, actor: Occupant | undefined, mine: Affiliation): Change {
  const reason = item.getChildText('reason') ?? undefined;
  const role = item.attrs.role as string | undefined;
  const affiliation = item.attrs.affiliation as string | undefined;
  if (role !== undefined) {
    if (!ROLES.includes(role as Role)) throw new Refusal('bad-request', `Unknown role '${role}'`);
    const nick = item.attrs.nick as string | undefined;
    const target = nick === undefined ? undefined : room.occupants.get(nick);
    if (!target) throw new Refusal('item-not-found', `No occupant is called ${nick ?? '(no nick given)'}`);
    checkRole(room, actor, mine, target, role as Role);
    return { kind: 'role', target, role: role as Role, reason };
  }
  if (affiliation !== undefined) {
    if (!AFFILIATIONS.includes(affiliation as Affiliation))
      throw new Refusal('bad-request', `Unknown affiliation '${affiliation}'`);
    let bare: string | undefined;
    if (item.attrs.jid) bare = Jid.tryParse(item.attrs.jid as string)?.bareString();
    else if (item.attrs.nick) bare = room.occupants.get(item.attrs.nick as string)?.bare;
    if (!bare)
      throw new Refusal(
        'bad-request',
        'An affiliation change needs a valid jid (or the nick of an occupant)',
      );
    checkAffiliation(room, mine, bare, affiliation as Affiliation);
    return { kind: 'affiliation', bare, affiliation: affiliation as Affiliation, reason };
  }
  throw new Refusal('bad-request', 'Each <item/> needs a role or an affiliation');
}

function checkRole(
  room: Room,
  actor: Occupant | undefined,
  mine: Affiliation,
  target: Occupant,
  role: Role,
): void {
  if (actor?.role !== 'moderator') throw new Refusal('forbidden', 'Only moderators may change roles');
  const theirs = room.affiliation(target.bare);
  if (role === 'moderator' || target.role === 'moderator') {
    // 9.6 / 9.7: granting and revoking moderator status is for admins and owners.
    if (!isPrivileged(mine))
      throw new Refusal('forbidden', 'Only admins and owners may grant or revoke moderator status');
  }
  // 8.2, 8.4: no one takes voice from (or kicks) someone affiliated at or above their own level.
  if (role !== 'moderator' && isPrivileged(theirs) && affiliationRank(theirs) >= affiliationRank(mine)) {
    throw new Refusal('not-allowed', `You may not change the role of an ${theirs} of the room`);
  }
}

function checkAffiliation(room: Room, mine: Affiliation, bare: string, affiliation: Affiliation): void {
  if (!isPrivileged(mine)) throw new Refusal('forbidden', 'Only admins and owners may change affiliations');
  const theirs = room.affiliation(bare);
  if (mine !== 'owner') {
    if (isPrivileged(theirs))
      throw new Refusal('not-allowed', `An admin may not change the affiliation of an ${theirs}`);
    if (isPrivileged(affiliation))
      throw new Refusal('forbidden', `Only owners may make someone ${affiliation}`);
  }
}

/** A room always keeps an owner (10.6: the last owner cannot step down). */
function checkOwnersRemain(room: Room, changes: Change[]): void {
  const owners = new Set(room.owners());
  for (const c of changes) {
    if (c.kind !== 'affiliation') continue;
    if (c.affiliation === 'owner') owners.add(c.bare);
    else owners.delete(c.bare);
  }
  if (owners.size === 0)
    throw new Refusal('conflict', 'The room would have no owner left; make someone else owner first');
}

async function apply(muc: MucService, room: Room, change: Change, actor: string | undefined): Promise<void> {
  if (change.kind === 'role') {
    const { target, role, reason } = change;
    if (!room.occupants.has(target.nick)) return;
    if (role === 'none') {
      await expel(muc, room, target, { codes: [Status.kicked], reason, actor });
      return;
    }
    target.role = role;
    // A visitor given voice (or having it taken) may ask again later (voice.ts).
    room.voiceRequests.delete(target.bare);
    muc.broadcastPresence(room, target, { item: { reason, actor } });
    return;
  }
  const { bare, affiliation, reason } = change;
  await applyAffiliation(muc, room, bare, affiliation, { reason, actor });
}

/**
 * Sets an affiliation and shows its effect on the person's occupant, if in
 * the room: banned (301), removed from a members-only room (321), or new
 * presence with the new affiliation and role. The caller saves the room.
 */
export async function applyAffiliation(
  muc: MucService,
  room: Room,
  bare: string,
  affiliation: Affiliation,
  { reason, actor }: { reason?: string; actor?: string } = {},
): Promise<void> {
  room.setAffiliation(bare, affiliation);
  for (const occupant of [...room.occupants.values()].filter((o) => o.bare === bare)) {
    if (affiliation === 'outcast') {
      await expel(muc, room, occupant, { codes: [Status.banned], reason, actor });
    } else if (affiliation === 'none' && room.config.membersOnly) {
      await expel(muc, room, occupant, { codes: [Status.affiliationChanged], reason, actor });
    } else {
      occupant.role = room.defaultRole(bare);
      muc.broadcastPresence(room, occupant, { item: { reason, actor } });
    }
  }
}
