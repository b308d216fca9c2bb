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

/**
 * Cluster: the room `name` as storage has it now, for a node that becomes
 * its owner (service affinity moved it here). Every node loads the stored
 * rooms once at start, so a room created or changed later on another node
 * is missing or stale here; without this a join would create a fresh room
 * with the joiner as its owner. Only persistent rooms are stored: a
 * temporary room ends with the node that held it.
 */
export async function refreshRoom(muc: MucService, name: string): Promise<Room | undefined> {
  const inMemory = muc.rooms.get(name);
  if (!muc.ctx.cluster.enabled) return inMemory;
  // A room with occupants here has been ours all along.
  if (inMemory && (!inMemory.config.persistent || inMemory.occupants.size > 0)) return inMemory;
  const stored = await muc.store.get(name);
  const now = muc.rooms.get(name);
  // Created, refreshed or destroyed here while we read: that is newer.
  if (now !== inMemory) return now;
  if (!stored) {
    // Destroyed on another node since we loaded it.
    if (inMemory) muc.rooms.delete(name);
    return undefined;
  }
  try {
    const room = Room.fromStored(name, `${name}@${muc.domain}`, stored, muc.defaultConfig());
    room.config.persistent = true;
    muc.rooms.set(name, room);
    return room;
  } catch (err) {
    muc.ctx.log.warn({ err, room: name }, 'a stored room cannot be read');
    return inMemory;
  }
}
