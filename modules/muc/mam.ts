// XEP-0313 on the room JID: the room log ('muc_log', written by history.ts)
// queried like a personal archive, for those who may read the room. The
// query parsing and paging are the MAM module's (modules/mam/query.ts).
import type { IqEvent } from '../../src/router/events.ts';
import { formReply, NS_MAM, runQuery } from '../mam/query.ts';
import { NS_SID } from './ns.ts';
import type { Room } from './room.ts';
import type { MucService } from './service.ts';

const MAX_PAGE = 100;
const DEFAULT_PAGE = 50;

export function installMam(muc: MucService): void {
  // Clients trust a room's stanza-ids (XEP-0359) for MAM only when it says it sets them.
  muc.roomFeatures.push(NS_MAM, NS_SID);
  muc.svc.handleIq(
    'get',
    NS_MAM,
    'query',
    (ev) => {
      if (readableRoom(muc, ev)) ev.reply(formReply(muc.log));
      return true;
    },
    ['bare'],
  );
  muc.svc.handleIq(
    'set',
    NS_MAM,
    'query',
    async (ev) => {
      const room = readableRoom(muc, ev);
      if (room)
        await runQuery(ev, room.name, { archive: muc.log, maxPage: MAX_PAGE, defaultPage: DEFAULT_PAGE });
      return true;
    },
    ['bare'],
  );
}

/** Who may read a room's archive: whoever may enter it, or is in it now. */
function readableRoom(muc: MucService, ev: IqEvent): Room | undefined {
  const room = muc.rooms.get(ev.to.local);
  if (!room || room.locked) {
    ev.error('item-not-found', { text: 'No such room' });
    return undefined;
  }
  const affiliation = room.affiliation(ev.from.bareString());
  const inside = room.bySessionJid(ev.from.toString()) !== undefined;
  const closed = room.config.membersOnly || room.config.passwordProtected;
  if (affiliation === 'outcast' || (closed && affiliation === 'none' && !inside)) {
    ev.error('forbidden', { text: 'You may not read the archive of this room' });
    return undefined;
  }
  return room;
}
