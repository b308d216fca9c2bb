// Persistent rooms survive restarts: their configuration, affiliations,
// registered nicks and subject live in the host's keyval store 'muc_rooms',
// one entry per room.
import { Room } from './room.ts';
import type { MucService } from './service.ts';

export async function restoreRooms(muc: MucService): Promise<number> {
  let n = 0;
  for await (const name of muc.store.users()) {
    const stored = await muc.store.get(name);
    if (!stored) continue;
    try {
      const room = Room.fromStored(name, `${name}@${muc.domain}`, stored, muc.defaultConfig());
      room.config.persistent = true;
      muc.rooms.set(name, room);
      n++;
    } catch (err) {
      muc.ctx.log.warn({ err, room: name }, 'skipping a stored room that cannot be read');
    }
  }
  return n;
}
