// Owner use cases (XEP-0045 section 10): the configuration form, the
// instant room, and destroying a room.
import { Element } from 'ltx';
import { getChild } from '../../src/xml/element.ts';
import { applyForm, ConfigError, configForm } from './config-form.ts';
import { NS_DATA, NS_OWNER, NS_USER, Status } from './ns.ts';
import { expel } from './occupancy.ts';
import type { Room, RoomConfig } from './room.ts';
import type { MucService } from './service.ts';

export function installOwner(muc: MucService): void {
  muc.svc.handleIq(
    'get',
    NS_OWNER,
    'query',
    ({ from, to, reply, error }) => {
      const room = muc.rooms.get(to.local);
      if (!room) {
        error('item-not-found', { text: 'No such room' });
        return true;
      }
      if (room.affiliation(from.bareString()) !== 'owner') {
        error('forbidden', { text: 'Only owners may configure the room' });
        return true;
      }
      reply(new Element('query', { xmlns: NS_OWNER }).cnode(configForm(room.config)).root());
      return true;
    },
    ['bare'],
  );

  muc.svc.handleIq(
    'set',
    NS_OWNER,
    'query',
    async ({ from, to, payload, reply, error }) => {
      const room = muc.rooms.get(to.local);
      if (!room) {
        error('item-not-found', { text: 'No such room' });
        return true;
      }
      if (room.affiliation(from.bareString()) !== 'owner') {
        error('forbidden', { text: 'Only owners may configure or destroy the room' });
        return true;
      }
      const destroy = getChild(payload, 'destroy');
      if (destroy) {
        await destroyRoom(muc, room, destroy);
        reply();
        return true;
      }
      const x = getChild(payload, 'x', NS_DATA);
      if (!x) {
        error('bad-request', { text: 'Send a muc#roomconfig form or <destroy/>' });
        return true;
      }
      if (x.attrs.type === 'cancel') {
        // 10.1.3: cancelling the initial configuration destroys the new room.
        if (room.locked) await destroyRoom(muc, room, new Element('destroy'));
        reply();
        return true;
      }
      if (x.attrs.type !== 'submit') {
        error('bad-request', { text: "The form must be of type 'submit'" });
        return true;
      }
      let config: RoomConfig;
      try {
        config = applyForm(room.config, x);
      } catch (err) {
        if (err instanceof ConfigError) {
          error('not-acceptable', { text: err.message });
          return true;
        }
        throw err;
      }
      const before = room.config;
      const initial = room.locked;
      room.config = config;
      room.locked = false;
      if (before.persistent && !config.persistent) await muc.store.set(room.name, null);
      await muc.save(room);
      // The initial configuration is no change anyone in the room could notice.
      if (!initial) await announceChanges(muc, room, before);
      reply();
      return true;
    },
    ['bare'],
  );
}

/** What occupants notice of a configuration change (XEP-0045 10.2.1). */
async function announceChanges(muc: MucService, room: Room, before: RoomConfig): Promise<void> {
  const config = room.config;
  const codes: string[] = [];
  if (JSON.stringify(before) !== JSON.stringify(config)) codes.push(Status.configChanged);
  if (before.whois !== config.whois)
    codes.push(config.whois === 'anyone' ? Status.configNonAnonymous : Status.configSemiAnonymous);
  if (codes.length > 0) {
    const x = new Element('x', { xmlns: NS_USER });
    for (const code of codes) x.c('status', { code });
    const attrs = { from: room.jid, type: 'groupchat', id: `config-${Date.now().toString(36)}` };
    muc.fanOut(
      'message',
      attrs,
      [x],
      [...room.sessions()].map(([full]) => full),
    );
  }
  // Becoming members-only removes those who are not members (9.3 / status 322).
  if (config.membersOnly && !before.membersOnly) {
    for (const occupant of [...room.occupants.values()]) {
      if (room.affiliation(occupant.bare) === 'none')
        await expel(muc, room, occupant, { codes: [Status.membersOnly] });
    }
  }
  // Moderation decides who has voice: newcomers without affiliation are visitors.
  if (config.moderated !== before.moderated) {
    for (const occupant of room.occupants.values()) {
      const role = room.defaultRole(occupant.bare);
      if (role !== occupant.role && occupant.role !== 'moderator') {
        occupant.role = role;
        muc.broadcastPresence(room, occupant);
      }
    }
  }
}

/** 10.9: everyone leaves with <destroy/>, and the room is gone. */
export async function destroyRoom(muc: MucService, room: Room, request: Element): Promise<void> {
  const destroy = new Element('destroy', { jid: request.attrs.jid as string | undefined });
  const reason = request.getChildText('reason');
  if (reason) destroy.c('reason').t(reason);
  const password = request.getChildText('password');
  if (password) destroy.c('password').t(password);
  room.config = { ...room.config, persistent: false };
  for (const occupant of [...room.occupants.values()]) {
    await expel(muc, room, occupant, { codes: [], extra: destroy, affiliation: 'none' });
  }
  await muc.remove(room);
}
