// XEP-0054: vcard-temp. Users store their own vCard on the server; anyone may
// read any local user's vCard (as Prosody and ejabberd allow), since clients
// fetch the vCards of strangers (avatars, nicknames in group chats).
//
// Storage: keyval store 'vcard', keyed by username, holding the vCard as an
// XML string. Setting an empty vCard deletes it.
//
// Errors: a set to anyone else's JID is forbidden; a get for a user that
// does not exist is service-unavailable (RFC 6121 8.5.1, like any IQ to an
// unknown account); a vCard larger than max_bytes is not-acceptable: the
// request as such does not meet the server's criteria, and retrying it
// unchanged cannot succeed.
import { Element, parse } from 'ltx';
import { serialize } from '../src/xml/element.ts';
import { z } from 'zod';
import { defineModule } from '../src/modules/api.ts';
import type { IqEvent } from '../src/router/events.ts';
import { detachedCopy } from './private.ts';

export const NS_VCARD = 'vcard-temp';

export default defineModule({
  name: 'vcard',
  description: 'vCards of users (XEP-0054 vcard-temp)',
  xeps: [{ number: 54, version: '1.2' }],
  options: z
    .object({
      /**
       * Largest vCard (UTF-8 bytes, as serialized) a user may store. Avatars
       * travel inside the vCard as base64 photos; 200 KiB leaves room for the
       * rest of the IQ below the default 256 KiB stanza limit.
       */
      max_bytes: z
        .number()
        .int()
        .min(1)
        .default(200 * 1024),
    })
    .strict(),
  setup(ctx) {
    const store = ctx.storage.keyval<string>('vcard');
    const maxBytes = ctx.options.max_bytes;
    ctx.addFeature(NS_VCARD);

    async function replyWith(ev: IqEvent, user: string): Promise<true> {
      const stored = await store.get(user);
      ev.reply(stored === null ? new Element('vCard', { xmlns: NS_VCARD }) : parse(stored));
      return true;
    }

    ctx.handleIq('get', NS_VCARD, 'vCard', (ev) => replyWith(ev, ev.from.local), ['self']);

    ctx.handleIq(
      'get',
      NS_VCARD,
      'vCard',
      async (ev) => {
        if (!(await ctx.accounts.exists(ev.to.local))) {
          ev.error('service-unavailable');
          return true;
        }
        return replyWith(ev, ev.to.local);
      },
      ['bare'],
    );

    ctx.handleIq(
      'set',
      NS_VCARD,
      'vCard',
      async (ev) => {
        const vcard = detachedCopy(ev.payload);
        const empty = vcard.children.every((c) => typeof c === 'string' && c.trim() === '');
        const xml = serialize(vcard);
        const size = Buffer.byteLength(xml);
        if (!empty && size > maxBytes) {
          ev.error('not-acceptable', {
            text: `Your vCard is ${size} bytes; the limit is ${maxBytes} (try a smaller photo)`,
          });
          return true;
        }
        await store.set(ev.from.local, empty ? null : xml);
        ev.reply();
        return true;
      },
      ['self'],
    );

    ctx.handleIq(
      'set',
      NS_VCARD,
      'vCard',
      (ev) => {
        ev.error('forbidden', { text: 'You can only change your own vCard' });
        return true;
      },
      ['bare', 'host'],
    );
  },
});
