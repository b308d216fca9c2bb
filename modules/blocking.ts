// XEP-0191: the blocking command. A user keeps a list of JIDs (full, bare or
// domain) with which no stanza is exchanged in either direction.
//
// Storage: keyval store 'blocklist', one JSON array of normalised JID strings
// per user. Lists of users with sessions are cached here (written through on
// every change, dropped when the last session ends), so that the hot path of
// routing between online users stays synchronous.
//
// Enforcement (section 3.3 onwards):
//  - a client sending to a JID it blocks ('pre-*' hooks, on the sender's
//    host): messages and IQ requests bounce with not-acceptable and
//    <blocked xmlns='urn:xmpp:blocking:errors'/>; presence is dropped;
//  - at the destination ('message|presence|iq/<bare|full>'): stanzas from a
//    JID the addressee blocks are handled as if the addressee were offline
//    (presence and IQ results dropped, messages and IQ requests answered with
//    service-unavailable), and stanzas the server sends on behalf of a user
//    who blocks the addressee (presence broadcast, probe answers) are dropped;
//  - 'route/remote': the same for stanzas leaving for another server.
// Blocking a contact subscribed to the user's presence sends them
// unavailable presence from each available resource; unblocking sends the
// current presence, and probes contacts the user is subscribed to, whose
// presence was dropped while the block lasted.
//
// In a cluster each node caches the lists of its own users' sessions; a change
// is broadcast so the other nodes drop their copy.
// FIXME(cluster): a node that reads a list while another saves it may cache
// the old one after the broadcast passed; a version stamp would close that.
import { randomBytes } from 'node:crypto';
import { Element } from 'ltx';
import { z } from 'zod';
import { after } from '../src/events.ts';
import { Jid } from '../src/jid.ts';
import { defineModule } from '../src/modules/api.ts';
import type { IqEvent, StanzaEvent } from '../src/router/events.ts';
import type { Session } from '../src/session/session.ts';
import { childElements, cloneElement, errorReply, type StanzaErrorCondition } from '../src/stanza.ts';
import { hasFrom, hasTo, type RosterApi } from './roster.ts';

export const NS_BLOCKING = 'urn:xmpp:blocking';
export const NS_BLOCKING_ERRORS = 'urn:xmpp:blocking:errors';

/** Answers "does `user` of this host block `jid`?", synchronously when the list is cached. */
type BlockCheck = (user: string, jid: Jid) => boolean | Promise<boolean>;

// Hosts of this process that run the module, so that a stanza a user of one
// host sends to a user of another local host is checked against the sender's
// list too (each host's storage is its own).
const checksByHost = new Map<string, BlockCheck>();

// Stanzas this module sends itself on behalf of a user (the unavailable
// presence of section 3.3) must reach a contact the user has just blocked.
const exempt = new WeakSet<Element>();

/** XEP-0016 section 2.1 order: full JID, bare JID, domain/resource, domain. */
export function matches(list: ReadonlySet<string>, jid: Jid): boolean {
  if (list.size === 0) return false;
  return list.has(jid.toString()) || list.has(jid.bareString()) || list.has(jid.domain);
}

function decodeList(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : [];
}

export default defineModule({
  name: 'blocking',
  description: 'Communications blocking (XEP-0191)',
  xeps: [
    {
      number: 191,
      version: '1.3',
      status: 'partial',
      note: 'directed presence sent before a block is not withdrawn; remote IQs to a bare JID that a module answers for the user are not filtered',
    },
  ],
  dependencies: ['roster'],
  options: z
    .object({
      /** Most JIDs a block list may hold; blocking more is refused with resource-constraint. */
      max_items: z.number().int().min(1).default(1000),
    })
    .strict(),
  setup(ctx) {
    const roster = ctx.dependency<RosterApi>('roster');
    const store = ctx.storage.keyval<string[]>('blocklist');
    const maxItems = ctx.options.max_items;
    const cache = new Map<string, Set<string>>();
    /** Sessions that asked for the block list: they get pushes (section 3.3). */
    const INTERESTED = 'blocking:interested';

    const bareOf = (user: string) => `${user}@${ctx.host}`;

    async function load(user: string): Promise<Set<string>> {
      const list = new Set(decodeList(await store.get(user)));
      if ((await ctx.sessions.resources(bareOf(user))).length === 0) return list;
      // A change saved meanwhile is newer than what was read.
      const cached = cache.get(user);
      if (cached) return cached;
      cache.set(user, list);
      return list;
    }

    function listOf(user: string): Set<string> | Promise<Set<string>> {
      return cache.get(user) ?? load(user);
    }

    async function save(user: string, list: Set<string>): Promise<void> {
      await store.set(user, list.size ? [...list] : null);
      ctx.cluster.broadcast(user);
      if (cache.has(user) || (await ctx.sessions.resources(bareOf(user))).length > 0) cache.set(user, list);
    }

    const blocks: BlockCheck = (user, jid) => {
      if (jid.bareString() === bareOf(user)) return false; // nobody blocks themself
      if (!jid.local && !jid.isFull && jid.domain === ctx.host) return false; // nor their own server
      return after(listOf(user), (list) => matches(list, jid));
    };
    ctx.cluster.onBroadcast((user) => {
      if (typeof user === 'string') cache.delete(user);
    });
    checksByHost.set(ctx.host, blocks);
    ctx.onUnload(() => {
      if (checksByHost.get(ctx.host) === blocks) checksByHost.delete(ctx.host);
    });

    ctx.hook('resource-unbind', ({ session }) =>
      after(ctx.sessions.resources(session.jid.bareString()), (left) => {
        if (!left.some((s) => s !== session)) cache.delete(session.jid.local);
      }),
    );

    /** Does the local user `from` (of any host running this module) block `to`? */
    function senderBlocks(from: Jid, to: Jid): boolean | Promise<boolean> {
      if (!from.local) return false;
      const check = from.domain === ctx.host ? blocks : checksByHost.get(from.domain);
      return check ? check(from.local, to) : false;
    }

    function reply(ev: StanzaEvent, error: Element | null): void {
      if (!error) return;
      exempt.add(error); // an answer to the stanza refused, not a stanza to refuse
      if (ev.origin && error.attrs.to === ev.origin.jid.toString()) ev.origin.send(error);
      else if (error.attrs.from !== undefined) ctx.send(error);
    }

    /** Section 3.3: the user tried to reach a JID they block. */
    function refuseOutbound(ev: StanzaEvent): true {
      const { stanza } = ev;
      const type = stanza.attrs.type as string | undefined;
      const answerable =
        stanza.name === 'message' || (stanza.name === 'iq' && (type === 'get' || type === 'set'));
      if (answerable) {
        reply(
          ev,
          errorReply(stanza, 'not-acceptable', {
            text: `You have blocked ${ev.to.toString()}`,
            extra: new Element('blocked', { xmlns: NS_BLOCKING_ERRORS }),
          }),
        );
      }
      return true;
    }

    /** Section 3.5: a blocked entity sees the user as offline. */
    function refuseInbound(ev: StanzaEvent): true {
      const { stanza } = ev;
      const type = (stanza.attrs.type as string | undefined) ?? (stanza.name === 'message' ? 'normal' : '');
      let condition: StanzaErrorCondition | null = null;
      if (stanza.name === 'message' && (type === 'chat' || type === 'normal'))
        condition = 'service-unavailable';
      if (stanza.name === 'iq' && (type === 'get' || type === 'set')) condition = 'service-unavailable';
      if (condition) reply(ev, errorReply(stanza, condition));
      return true;
    }

    // ---- outbound, from the user's own client (on the sender's host) ----------------

    const onClientSend = (ev: StanzaEvent) => {
      if (!ev.origin || ev.stanza.attrs.to === undefined) return false;
      if (ev.to.bareString() === ev.origin.jid.bareString()) return false;
      return after(blocks(ev.origin.jid.local, ev.to), (blocked) => {
        if (blocked) return refuseOutbound(ev);
        if (ev.stanza.name !== 'iq') return false;
        // IQs to a user's bare JID may be answered by the server on their
        // behalf before the destination hooks run: check the addressee here.
        return after(recipientBlocks(ev), (refused) => (refused ? refuseInbound(ev) : false));
      });
    };
    for (const kind of ['bare', 'full', 'host'] as const) {
      ctx.hook(`pre-message/${kind}`, onClientSend, 100);
      ctx.hook(`pre-presence/${kind}`, onClientSend, 100);
      ctx.hook(`pre-iq/${kind}`, onClientSend, 100);
    }

    // ---- at the destination ----------------------------------------------------------

    /** Does the addressee (a local user of the host running `ev.to`'s check) block the sender? */
    function recipientBlocks(ev: StanzaEvent): boolean | Promise<boolean> {
      if (!ev.to.local || ev.from.bareString() === ev.to.bareString()) return false;
      const check = ev.to.domain === ctx.host ? blocks : checksByHost.get(ev.to.domain);
      return check ? check(ev.to.local, ev.from) : false;
    }

    const onDeliver = (ev: StanzaEvent) => {
      if (exempt.has(ev.stanza)) return false;
      return after(recipientBlocks(ev), (refused) => {
        if (refused) return refuseInbound(ev);
        if (ev.from.bareString() === ev.to.bareString()) return false;
        return after(senderBlocks(ev.from, ev.to), (blocked) => (blocked ? refuseOutbound(ev) : false));
      });
    };
    for (const kind of ['bare', 'full'] as const) {
      ctx.hook(`message/${kind}`, onDeliver, 100);
      ctx.hook(`presence/${kind}`, onDeliver, 100);
      ctx.hook(`iq/${kind}`, onDeliver, 100);
    }

    // Leaving for another server: only the sender's list applies here.
    ctx.hook(
      'route/remote',
      (ev) => {
        if (exempt.has(ev.stanza)) return false;
        return after(senderBlocks(ev.from, ev.to), (blocked) => (blocked ? refuseOutbound(ev) : false));
      },
      100,
    );

    // ---- the protocol ----------------------------------------------------------------

    ctx.addFeature(NS_BLOCKING);

    function itemsElement(name: 'blocklist' | 'block' | 'unblock', jids: Iterable<string>): Element {
      const el = new Element(name, { xmlns: NS_BLOCKING });
      for (const jid of jids) el.c('item', { jid });
      return el;
    }

    /** The JIDs of a block/unblock request, normalised; answers the error itself and returns null when invalid. */
    function parseItems(ev: IqEvent): string[] | null {
      const out: string[] = [];
      for (const item of childElements(ev.payload)) {
        if (item.getName() !== 'item') continue;
        const raw = item.attrs.jid as string | undefined;
        if (raw === undefined) {
          ev.error('bad-request', { text: 'An item has no jid attribute' });
          return null;
        }
        const jid = Jid.tryParse(raw);
        if (!jid) {
          ev.error('jid-malformed', { text: `'${raw}' is not a valid JID` });
          return null;
        }
        if (!out.includes(jid.toString())) out.push(jid.toString());
      }
      return out;
    }

    async function push(user: string, payload: Element): Promise<void> {
      for (const session of await ctx.sessions.resources(bareOf(user))) {
        if (session.getShared(INTERESTED) !== true) continue;
        const iq = new Element('iq', {
          type: 'set',
          id: `block-${randomBytes(6).toString('base64url')}`,
          to: session.jid.toString(),
        });
        iq.cnode(cloneElement(payload));
        session.send(iq);
      }
    }

    async function availableSessions(user: string): Promise<Session[]> {
      return (await ctx.sessions.resources(bareOf(user))).filter((s) => s.available);
    }

    /** Contacts of the roster whose blocked state differs between two lists. */
    async function changedContacts(user: string, before: Set<string>, now: Set<string>) {
      const out: { jid: string; from: boolean; to: boolean; blocked: boolean }[] = [];
      for (const [contact, item] of await roster.items(user)) {
        const jid = Jid.tryParse(contact);
        if (!jid) continue;
        const was = matches(before, jid);
        const is = matches(now, jid);
        if (was !== is)
          out.push({
            jid: contact,
            from: hasFrom(item.subscription),
            to: hasTo(item.subscription),
            blocked: is,
          });
      }
      return out;
    }

    /**
     * Section 3.3: contacts that may see the user's presence get unavailable
     * presence when blocked; section 3.4: they get the current presence back
     * when unblocked, and the user asks again for the presence of contacts
     * whose presence was dropped meanwhile.
     */
    async function presenceEffects(user: string, before: Set<string>, now: Set<string>) {
      const contacts = await changedContacts(user, before, now);
      if (contacts.length === 0) return;
      const sessions = await availableSessions(user);
      for (const contact of contacts) {
        for (const s of sessions) {
          const from = s.jid.toString();
          if (contact.blocked) {
            if (!contact.from) continue;
            const unavailable = new Element('presence', { type: 'unavailable', from, to: contact.jid });
            exempt.add(unavailable);
            ctx.send(unavailable);
            continue;
          }
          if (contact.from && s.presence) {
            const current = cloneElement(s.presence);
            current.attrs.from = from;
            current.attrs.to = contact.jid;
            ctx.send(current);
          }
          if (contact.to) ctx.send(new Element('presence', { type: 'probe', from, to: contact.jid }));
        }
      }
    }

    ctx.handleIq(
      'get',
      NS_BLOCKING,
      'blocklist',
      (ev) =>
        after(listOf(ev.from.local), async (list) => {
          // Answered once every node knows, so that pushes from any of them follow.
          await ev.origin?.setShared(INTERESTED, true);
          ev.reply(itemsElement('blocklist', list));
          return true;
        }),
      ['self'],
    );

    ctx.handleIq(
      'set',
      NS_BLOCKING,
      'block',
      (ev) => {
        const jids = parseItems(ev);
        if (!jids) return true;
        if (jids.length === 0) {
          ev.error('bad-request', { text: 'A block request must name at least one JID' });
          return true;
        }
        const user = ev.from.local;
        return roster.serialize(user, async () => {
          const before = await listOf(user);
          const now = new Set(before);
          for (const jid of jids) now.add(jid);
          if (now.size > maxItems) {
            ev.error('resource-constraint', {
              text: `Your block list is full (at most ${maxItems} JIDs)`,
            });
            return true;
          }
          await save(user, now);
          ev.reply();
          await push(user, itemsElement('block', jids));
          await presenceEffects(user, before, now);
          return true;
        });
      },
      ['self'],
    );

    ctx.handleIq(
      'set',
      NS_BLOCKING,
      'unblock',
      (ev) => {
        const jids = parseItems(ev);
        if (!jids) return true;
        const user = ev.from.local;
        return roster.serialize(user, async () => {
          const before = await listOf(user);
          // Section 3.5: no items means everything.
          const now = jids.length === 0 ? new Set<string>() : new Set(before);
          for (const jid of jids) now.delete(jid);
          await save(user, now);
          ev.reply();
          await push(user, itemsElement('unblock', jids));
          await presenceEffects(user, before, now);
          return true;
        });
      },
      ['self'],
    );

    const forbidden = ({ error }: IqEvent) => {
      error('forbidden', { text: 'You can only read and change your own block list' });
      return true;
    };
    ctx.handleIq('get', NS_BLOCKING, 'blocklist', forbidden, ['bare']);
    ctx.handleIq('set', NS_BLOCKING, 'block', forbidden, ['bare']);
    ctx.handleIq('set', NS_BLOCKING, 'unblock', forbidden, ['bare']);
  },
});
