// Service discovery of the MUC service and its rooms (XEP-0045 6): the
// service lists its public rooms; a room describes itself with one feature
// per option and a muc#roominfo form.
import { Element } from 'ltx';
import type { IqEvent } from '../../src/router/events.ts';
import {
  NS_DATA,
  NS_DISCO_INFO,
  NS_DISCO_ITEMS,
  NS_MUC,
  NODE_ROOMUSER_ITEM,
  NS_OCCUPANT_ID,
  NS_REGISTER,
  NS_REQUEST,
  NS_ROOMINFO,
  NS_SELF_PING_OPT,
} from './ns.ts';
import type { Room } from './room.ts';
import type { MucService } from './service.ts';

export function installDisco(muc: MucService): void {
  const { svc } = muc;
  svc.addIdentity({ category: 'conference', type: 'text', name: muc.ctx.options.name });
  svc.addFeature(NS_DISCO_INFO);
  svc.addFeature(NS_DISCO_ITEMS);
  svc.addFeature(NS_MUC);
  svc.addFeature(NS_OCCUPANT_ID);

  svc.handleIq('get', NS_DISCO_INFO, 'query', ({ payload, reply, error }) => {
    if (payload.attrs.node) {
      error('item-not-found');
      return true;
    }
    const query = new Element('query', { xmlns: NS_DISCO_INFO });
    for (const i of svc.identities())
      query.c('identity', { category: i.category, type: i.type, name: i.name });
    for (const f of svc.features()) query.c('feature', { var: f });
    reply(query);
    return true;
  });

  svc.handleIq('get', NS_DISCO_ITEMS, 'query', ({ reply }) => {
    const query = new Element('query', { xmlns: NS_DISCO_ITEMS });
    for (const room of muc.rooms.values()) {
      if (room.config.public && !room.locked)
        query.c('item', { jid: room.jid, name: room.config.name || room.name });
    }
    reply(query);
    return true;
  });

  svc.handleIq('get', NS_DISCO_INFO, 'query', (ev) => roomInfo(muc, ev), ['bare']);
  svc.handleIq(
    'get',
    NS_DISCO_ITEMS,
    'query',
    (ev) => {
      const room = visibleRoom(muc, ev);
      // Occupants are not listed: in a semi-anonymous room that would be a leak,
      // and clients learn them by joining.
      if (room) ev.reply(new Element('query', { xmlns: NS_DISCO_ITEMS }));
      return true;
    },
    ['bare'],
  );
}

/** The room, or an item-not-found answer for rooms that do not exist (or are not yet configured). */
function visibleRoom(muc: MucService, ev: IqEvent, nodes: string[] = []): Room | undefined {
  const room = muc.rooms.get(ev.to.local);
  if (!room || (room.locked && room.affiliation(ev.from.bareString()) !== 'owner')) {
    ev.error('item-not-found', { text: 'No such room' });
    return undefined;
  }
  const node = ev.payload.attrs.node as string | undefined;
  if (node && !nodes.includes(node)) {
    ev.error('item-not-found', { text: 'No such node' });
    return undefined;
  }
  return room;
}

function roomInfo(muc: MucService, ev: IqEvent): boolean {
  const room = visibleRoom(muc, ev, [NODE_ROOMUSER_ITEM]);
  if (!room) return true;
  if (ev.payload.attrs.node === NODE_ROOMUSER_ITEM) {
    // 7.12: the sender's registered nick, or an empty answer; also asked by occupants.
    const query = new Element('query', { xmlns: NS_DISCO_INFO, node: NODE_ROOMUSER_ITEM });
    const nick = room.reservedNick(ev.from.bareString());
    if (nick !== undefined) query.c('identity', { category: 'conference', type: 'text', name: nick });
    ev.reply(query);
    return true;
  }
  const c = room.config;
  const query = new Element('query', { xmlns: NS_DISCO_INFO });
  query.c('identity', { category: 'conference', type: 'text', name: c.name || room.name });
  const features = [
    NS_DISCO_INFO,
    NS_MUC,
    NS_OCCUPANT_ID,
    NS_SELF_PING_OPT,
    NS_REGISTER,
    NS_REQUEST,
    'http://jabber.org/protocol/muc#stable_id',
    c.persistent ? 'muc_persistent' : 'muc_temporary',
    c.membersOnly ? 'muc_membersonly' : 'muc_open',
    c.passwordProtected ? 'muc_passwordprotected' : 'muc_unsecured',
    c.moderated ? 'muc_moderated' : 'muc_unmoderated',
    c.public ? 'muc_public' : 'muc_hidden',
    c.whois === 'anyone' ? 'muc_nonanonymous' : 'muc_semianonymous',
    ...muc.roomFeatures,
  ];
  for (const f of features) query.c('feature', { var: f });
  const form = query.c('x', { xmlns: NS_DATA, type: 'result' });
  const field = (name: string, value: string, label?: string) =>
    form.c('field', { var: name, label }).c('value').t(value);
  form.c('field', { var: 'FORM_TYPE', type: 'hidden' }).c('value').t(NS_ROOMINFO);
  field('muc#roominfo_description', c.description, 'Description');
  field('muc#roominfo_occupants', String(room.occupants.size), 'Number of occupants');
  field('muc#roominfo_subject', room.subject.text, 'Subject');
  field('muc#roominfo_subjectmod', room.config.changeSubject ? '1' : '0', 'Occupants may change the subject');
  field('muc#roomconfig_roomname', c.name, 'Title');
  field('muc#maxhistoryfetch', String(c.historyLength), 'Most messages of history sent on join');
  ev.reply(query);
  return true;
}
