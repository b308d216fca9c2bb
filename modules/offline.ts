// XEP-0160: offline messages. A chat or normal (untyped) message for a user who
// has no available resource with non-negative priority is stored in the
// archive store 'offline' (per user, `with` = the sender, value = the stanza
// as XML) and delivered, oldest first and with a XEP-0203 <delay/> saying
// when the server got it, to the first session that sends available presence
// with non-negative priority. Delivered messages are then deleted, and only
// those, so a message stored while a delivery runs waits for the next one.
//
// Not stored (XEP-0160 section 3): groupchat, headline and error messages;
// the core bounces or drops them as RFC 6121 says. Messages that carry only a
// chat state (XEP-0085) are dropped without an error: storing a stale
// "composing" is useless, and an error for it would alarm the sender.
// Receipts and markers are stored like any message.
//
// A full store (option max_messages_per_user) refuses further messages with
// resource-constraint, type wait, so the sender learns it may try later;
// XEP-0160 section 2 mentions service-unavailable, which says "never".
//
// Order at login: the stored messages follow the presence broadcast. The
// presence module does its broadcast in the user's roster queue, which is
// why this module depends on 'roster': delivery is queued there behind the
// broadcast. A message that reaches the now-available session directly while
// the stored ones are on their way may overtake them; the delay stamps tell
// the client their real order.
import { Element, parse } from 'ltx';
import { serialize } from '../src/xml/element.ts';
import { z } from 'zod';
import { defineModule } from '../src/modules/api.ts';
import type { Session } from '../src/session/session.ts';
import { childElements, errorReply } from '../src/stanza.ts';
import type { RosterApi } from './roster.ts';
import { KeyedQueue } from '../src/util/keyed-queue.ts';

const NS_DELAY = 'urn:xmpp:delay';
const NS_CHATSTATES = 'http://jabber.org/protocol/chatstates';
/** Messages read from the store per round trip while delivering. */
const BATCH = 100;

/** What store() did: kept the message, refused it (quota), or found nothing worth keeping. */
export type StoreOutcome = 'stored' | 'full' | 'skipped';

export interface OfflineApi {
  /**
   * Stores a message for `user` (a local username), e.g. one a session
   * never acknowledged. Skips what offline storage does not keep (see
   * isStorable); resolves to 'full' when the user's quota is reached,
   * leaving the error to the sender to the caller.
   */
  store(user: string, stanza: Element): Promise<StoreOutcome>;
}

/** Whether offline storage keeps a message; 'drop' means "nothing to keep, and nothing to bounce". */
export function isStorable(stanza: Element): 'store' | 'drop' | 'skip' {
  if (stanza.name !== 'message') return 'skip';
  // RFC 6121 5.2.2: no type, or one it does not define, means normal.
  const type = stanza.attrs.type as string | undefined;
  if (type === 'groupchat' || type === 'headline' || type === 'error') return 'skip';
  const children = childElements(stanza);
  const standaloneChatState =
    stanza.getChild('body') === undefined &&
    children.some((c) => c.getNS() === NS_CHATSTATES) &&
    children.every((c) => c.getNS() === NS_CHATSTATES || c.name === 'thread');
  return standaloneChatState ? 'drop' : 'store';
}

export default defineModule({
  name: 'offline',
  description: 'Stores messages for offline users and delivers them at login (XEP-0160)',
  xeps: [
    { number: 160, version: '1.0.1' },
    { number: 203, version: '2.0' },
  ],
  dependencies: ['roster'],
  options: z
    .object({
      /** Most messages kept per user; further ones are refused with resource-constraint. */
      max_messages_per_user: z.number().int().min(1).default(1000),
    })
    .strict(),
  setup(ctx): OfflineApi {
    const roster = ctx.dependency<RosterApi>('roster');
    const archive = ctx.storage.archive<string>('offline');
    const max = ctx.options.max_messages_per_user;
    // Stores and deliveries of one user run in order, so the quota check
    // and the "deliver, then delete what was delivered" step never race.
    const queue = new KeyedQueue();
    /** Sessions that got (or are getting) the stored messages since they last became available. */
    const served = new WeakSet<Session>();
    let unloaded = false;
    ctx.onUnload(() => {
      unloaded = true;
    });

    const store = (user: string, stanza: Element): Promise<StoreOutcome> => {
      if (isStorable(stanza) !== 'store') return Promise.resolve('skipped');
      const xml = serialize(stanza);
      return queue.run(user, async () => {
        if ((await archive.count(user)) >= max) return 'full';
        await archive.append(user, { with: stanza.attrs.from ?? '', value: xml });
        return 'stored';
      });
    };

    ctx.hook(
      'message/offline',
      (ev) => {
        const verdict = isStorable(ev.stanza);
        if (verdict === 'skip') return false; // the core bounces or drops it
        const user = ev.to.local;
        const work = async () => {
          // The core fires this event for unknown users too: they get its bounce.
          if (!(await ctx.accounts.exists(user))) return false;
          if (verdict === 'drop') return true;
          const outcome = await store(user, ev.stanza);
          if (outcome === 'full') {
            const error = errorReply(ev.stanza, 'resource-constraint', {
              type: 'wait',
              text: `The offline storage of ${ev.to.bare.toString()} is full (${max} messages); try again later`,
            });
            if (error) ctx.send(error);
          }
          return true;
        };
        return work().catch((err: unknown) => {
          // Not stored: let the core bounce it rather than lose it silently.
          ctx.log.error({ err, user }, 'could not store an offline message');
          return false;
        });
      },
      10,
    );

    /** Whether `session` should still get the stored messages. */
    async function stillWanted(session: Session): Promise<boolean> {
      if (unloaded || !served.has(session) || !session.available || session.priority < 0) return false;
      return (await ctx.sessions.get(session.jid.toString())) === session;
    }

    async function deliverStored(session: Session): Promise<void> {
      const user = session.jid.local;
      while (!unloaded) {
        const { items } = await archive.find(user, { limit: BATCH });
        if (items.length === 0) return;
        const done: string[] = [];
        for (const item of items) {
          // Checked before each message: what a gone session was sent is deleted all the same.
          if (!(await stillWanted(session))) break;
          done.push(item.id);
          let stanza: Element;
          try {
            stanza = parse(item.value);
          } catch (err) {
            ctx.log.error({ err, user, id: item.id }, 'dropping an unreadable offline message');
            continue;
          }
          // A message that was already held elsewhere on this server (stream
          // management) carries the earlier, truer stamp: keep only that one.
          const held = stanza.getChildren('delay', NS_DELAY).some((d) => d.attrs.from === ctx.host);
          if (!held)
            stanza.c('delay', { xmlns: NS_DELAY, from: ctx.host, stamp: new Date(item.when).toISOString() });
          session.send(stanza);
        }
        if (done.length > 0) await archive.delete(user, { ids: done });
        if (done.length < items.length) return;
      }
    }

    ctx.hook(
      'pre-presence/bare',
      ({ stanza, origin }) => {
        if (!origin || stanza.attrs.to !== undefined) return false;
        const type = stanza.attrs.type;
        if (type === 'unavailable' || (type === undefined && origin.priority < 0)) {
          served.delete(origin);
          return false;
        }
        if (type !== undefined || served.has(origin)) return false;
        // The router has already marked the session available with this priority.
        served.add(origin);
        const user = origin.jid.local;
        // The presence module queues its broadcast in the roster queue when its
        // handler (below this one) runs, in this same turn of the event loop;
        // queueing there after that puts these messages behind the broadcast.
        setImmediate(() => {
          roster
            .serialize(user, () => queue.run(user, () => deliverStored(origin)))
            .catch((err: unknown) => ctx.log.error({ err, user }, 'offline message delivery failed'));
        });
        return false;
      },
      10,
    );

    ctx.addFeature('msgoffline');
    return { store };
  },
});
