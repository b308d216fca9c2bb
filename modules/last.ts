// XEP-0012: last activity (jabber:iq:last).
//
//  - To the server: how many seconds the server (this module on this host)
//    has been up.
//  - To a user's bare JID: when the user was last online. Allowed for the
//    user themselves and for those the user shares presence with
//    (subscription 'from' or 'both' in the user's roster), forbidden for
//    everyone else; service-unavailable when there is no such user.
//    While the user has an available resource the answer is seconds='0':
//    they are online now, and the server knows nothing about idle time
//    (that is for the clients, queried at their full JIDs). Otherwise it is
//    the seconds since the user's last session ended, with the status text
//    of that session's unavailable presence (empty when it sent none). A
//    user who never logged out since the record was kept has no last
//    activity to tell: item-not-found.
//
// Storage: keyval store 'lastactivity', keyed by username:
// { when: ms since the epoch, status: string }, written when the user's last
// session ends.
import { Element } from 'ltx';
import { defineModule } from '../src/modules/api.ts';
import type { IqEvent } from '../src/router/events.ts';
import { MOVED } from '../src/session/client-session.ts';
import type { Session } from '../src/session/session.ts';
import type { JsonValue } from '../src/storage/types.ts';
import { hasFrom, type RosterApi } from './roster.ts';

export const NS_LAST = 'jabber:iq:last';

interface LastActivity {
  when: number;
  status: string;
}

function decode(value: JsonValue | null): LastActivity | null {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  if (typeof value.when !== 'number') return null;
  return { when: value.when, status: typeof value.status === 'string' ? value.status : '' };
}

function answer(seconds: number, text = ''): Element {
  const query = new Element('query', { xmlns: NS_LAST, seconds: String(Math.max(0, seconds)) });
  if (text !== '') query.t(text);
  return query;
}

export default defineModule({
  name: 'last',
  description: 'Last activity of users and server uptime (XEP-0012)',
  xeps: [{ number: 12, version: '2.0' }],
  dependencies: ['roster'],
  setup(ctx) {
    const roster = ctx.dependency<RosterApi>('roster');
    const store = ctx.storage.keyval<JsonValue>('lastactivity');
    const started = Date.now();
    /** The status text of each session's last broadcast unavailable presence. */
    const goodbyes = new WeakMap<Session, string>();
    const bareOf = (user: string) => `${user}@${ctx.host}`;
    const secondsSince = (ms: number) => Math.floor((Date.now() - ms) / 1000);

    ctx.addFeature(NS_LAST);

    // Above the presence module (priority 0), which ends the chain for broadcast presence.
    ctx.hook(
      'pre-presence/bare',
      ({ stanza, origin }) => {
        if (!origin || stanza.attrs.to !== undefined) return false;
        const type = stanza.attrs.type as string | undefined;
        if (type === 'unavailable') goodbyes.set(origin, stanza.getChildText('status') ?? '');
        else if (type === undefined) goodbyes.delete(origin);
        return false;
      },
      10,
    );

    // The core removes the session from the directory before this event, so
    // "no resources left" means this was the user's last session.
    ctx.hook(
      'resource-unbind',
      async ({ session, reason }) => {
        // A session that moved to another cluster node did not go offline.
        if (reason === MOVED) return false;
        const user = session.jid.local;
        if ((await ctx.sessions.resources(bareOf(user))).length > 0) return false;
        await store.set(user, { when: Date.now(), status: goodbyes.get(session) ?? '' });
        return false;
      },
      10,
    );

    async function reply(ev: IqEvent, user: string): Promise<true> {
      const sessions = await ctx.sessions.resources(bareOf(user));
      if (sessions.some((s) => s.available)) {
        ev.reply(answer(0));
        return true;
      }
      const last = decode(await store.get(user));
      if (!last) {
        ev.error('item-not-found', { text: `No last activity is recorded for ${bareOf(user)}` });
        return true;
      }
      ev.reply(answer(secondsSince(last.when), last.status));
      return true;
    }

    ctx.handleIq('get', NS_LAST, 'query', ({ reply: send }) => {
      send(answer(secondsSince(started)));
      return true;
    });

    ctx.handleIq('get', NS_LAST, 'query', (ev) => reply(ev, ev.from.local), ['self']);

    ctx.handleIq(
      'get',
      NS_LAST,
      'query',
      async (ev) => {
        const user = ev.to.local;
        if (!(await ctx.accounts.exists(user))) {
          ev.error('service-unavailable');
          return true;
        }
        const item = await roster.item(user, ev.from.bare.toString());
        if (!item || !hasFrom(item.subscription)) {
          ev.error('forbidden', { text: `${bareOf(user)} does not share their presence with you` });
          return true;
        }
        return reply(ev, user);
      },
      ['bare'],
    );
  },
});
