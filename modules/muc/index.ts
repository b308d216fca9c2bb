// XEP-0045 Multi-User Chat on conference.<host>, with XEP-0410 self-ping,
// XEP-0421 occupant ids and XEP-0313 archives of rooms.
//
// Parts: service.ts (rooms, stores, fan-out), room.ts (room state and
// privilege rules), occupancy.ts (join, leave, nick change, self-ping),
// messages.ts (groupchat, subject, private messages, invitations),
// iq-relay.ts (IQs between occupants), voice.ts (voice requests),
// register.ts (registration and reserved nicks),
// admin.ts (roles and affiliations), owner.ts + config-form.ts
// (configuration, destroy), history.ts (room log and history on join),
// persistence.ts (restoring persistent rooms), disco.ts, mam.ts.
//
// Storage: keyval 'muc_rooms' (persistent rooms by localpart, with their
// affiliations and registered nicks), archive
// 'muc_log' (one archive per room: its messages as XML), keyval
// 'muc_secret' (the key of occupant ids).
import { z } from 'zod';
import { defineModule } from '../../src/modules/api.ts';
import type { DiscoApi } from '../disco.ts';
import { installAdmin } from './admin.ts';
import { installDisco } from './disco.ts';
import { installIqRelay } from './iq-relay.ts';
import { installMam } from './mam.ts';
import { installMessages } from './messages.ts';
import { installOccupancy } from './occupancy.ts';
import { installOwner } from './owner.ts';
import { restoreRooms } from './persistence.ts';
import { installRegister } from './register.ts';
import { MucService } from './service.ts';

export default defineModule({
  name: 'muc',
  description: 'Multi-user chat rooms on conference.<host> (XEP-0045)',
  xeps: [
    {
      number: 45,
      version: '1.35.1',
      status: 'partial',
      note: 'no approval of registration requests (9.9); no muc#roomconfig_getmemberlist or roomadmins/roomowners fields',
    },
    {
      number: 313,
      version: '1.1.1',
      status: 'partial',
      note: 'on room JIDs: the room log (messages with a body), queried with the MAM module’s query rules',
    },
    { number: 410, version: '1.1.0' },
    { number: 421, version: '0.2.0' },
  ],
  dependencies: ['disco'],
  options: z
    .object({
      /** The service's domain; default conference.<host>. */
      domain: z.string().optional(),
      /** The name clients show for the service. */
      name: z.string().default('Chatrooms'),
      /** Who may create rooms: 'local' (accounts of this host) or 'anyone' (also remote users). */
      room_creation: z.enum(['local', 'anyone']).default('local'),
      /** History sent on join in new rooms (muc#roomconfig_historylength). */
      default_history: z.number().int().min(0).default(20),
      /** The most history any room sends on join, whatever its configuration. */
      max_history: z.number().int().min(0).default(100),
      /** Configuration of new rooms. */
      defaults: z
        .object({
          persistent: z.boolean().default(false),
          public: z.boolean().default(true),
          members_only: z.boolean().default(false),
          moderated: z.boolean().default(false),
          whois: z.enum(['moderators', 'anyone']).default('moderators'),
          allow_invites: z.boolean().default(false),
          change_subject: z.boolean().default(false),
          max_users: z.number().int().min(0).default(0),
        })
        .strict()
        .prefault({}),
    })
    .strict(),
  async setup(ctx) {
    const domain = ctx.options.domain ?? `conference.${ctx.host}`;
    const svc = ctx.addService(domain);
    const muc = new MucService(ctx, svc);
    await muc.init();
    const restored = await restoreRooms(muc);
    if (restored > 0) ctx.log.info({ rooms: restored, domain }, 'restored persistent rooms');
    installDisco(muc);
    installOccupancy(muc);
    installMessages(muc);
    installAdmin(muc);
    installOwner(muc);
    installMam(muc);
    installIqRelay(muc);
    installRegister(muc);
    const removeItem = ctx.dependency<DiscoApi>('disco').addItem({ jid: domain, name: ctx.options.name });
    ctx.onUnload(removeItem);
  },
});
