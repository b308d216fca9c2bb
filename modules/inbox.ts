// XEP-0430 Inbox (urn:xmpp:inbox:1): per user, one entry per one-to-one
// conversation (keyed by the other party's bare JID) with the number of
// unread messages and the last message, so that a client can draw its
// conversation list in one round trip.
//
// Protocol shape. XEP-0430 v0.2.0 (the stored text, Deferred) is thin and
// differs from what clients deploy; where it is silent or vague this module
// follows MongooseIM's mod_inbox, the widely deployed variant the XEP was
// based on, with the XEP's namespace:
//  - Query: <iq type='set'><inbox xmlns='urn:xmpp:inbox:1' queryid='q'/></iq>
//    (MongooseIM; type 'get', as in the XEP's example, is accepted too). The
//    filters are a XEP-0004 form inside <inbox/> (MongooseIM): start, end
//    (XEP-0082 date-times, inclusive, on the last message's time), order
//    ('desc', the default: most recent first; or 'asc') and hidden_read
//    ('true': only conversations with unread messages; 'hidden-read' is
//    accepted as an alias). The XEP's attributes unread-only='true' (the
//    same as hidden_read) and messages='false' (leave the last message out)
//    are understood as well. Unknown form fields (MongooseIM's box, archive)
//    are ignored. <iq type='get'><query xmlns='urn:xmpp:inbox:1'/></iq>
//    returns the form.
//  - One <message/> per conversation to the requesting resource, as in
//    MongooseIM: <result xmlns='urn:xmpp:inbox:1' unread='N' queryid='q'
//    jid='contact' id='last-id'><forwarded xmlns='urn:xmpp:forward:0'>
//    <delay stamp/><message .../></forwarded></result>. The jid and id
//    attributes are the XEP's <entry/> attributes, carried on <result/>.
//    queryid falls back to the IQ's id (MongooseIM).
//  - The IQ result: <fin xmlns='urn:xmpp:inbox:1' total='T' unread='U'
//    active-conversations='A'> where T counts the conversations that match
//    the filters, U their unread messages and A those of them with unread
//    messages; MongooseIM's <count/>, <unread-messages/> and
//    <active-conversations/> children say the same for its clients; then
//    a XEP-0059 <set/>.
//  - Paging (XEP-0059): <max/> (capped by the option max_page_size, which is
//    also the page size when the client gives none), <after/>, <before/>
//    (empty: the last page) and <index/>. An after/before value is either a
//    conversation (the contact's bare JID, as <first/> and <last/> return
//    them; item-not-found when it is not in the inbox) or a XEP-0082
//    date-time: the conversations strictly after or before it in the order
//    asked for.
//  - Reset: <iq type='set'><reset xmlns='urn:xmpp:inbox:1' jid='contact'/>
//    sets the unread count to 0 and keeps the last message (MongooseIM's
//    reset, in the XEP's namespace). Resetting a conversation that is not
//    in the inbox is not an error.
//  - Only the account itself may query or reset its inbox: anyone else gets
//    forbidden.
//
// What counts (XEP-0430 section 4, "Unread Messages"):
//  - Only one-to-one messages of type chat or normal with a <body/>: no
//    chat states, receipts or markers on their own, no groupchat, headline
//    or error, no MUC private messages (they carry muc#user <x/>), nothing
//    between two resources of the same account.
//  - A message received: unread + 1, it becomes the last message.
//  - A message sent from any of the user's resources: it becomes the last
//    message and unread goes to 0 (who answers has read the conversation).
//  - An XEP-0333 marker the user sends to the contact, of a kind listed in
//    reset_markers (default displayed and acknowledged, as the XEP says;
//    MongooseIM's default is displayed only): the marked message and all
//    before it are read (XEP-0430), so unread becomes the number of
//    messages received after the marked one. Markers for the last message
//    thus reset to 0, which is MongooseIM's rule. A marker whose id the
//    inbox does not know (an older message, or ids beyond the last
//    MAX_TRACKED unread ones) changes nothing.
//  - Received messages are counted when they reach the user's server,
//    before delivery (as MongooseIM does), also when the user is offline
//    (and so, on a host without offline storage, also when the core then
//    bounces the message). Blocked messages (blocking, priority 100) are not.
//
// Discovery: urn:xmpp:inbox:1 is a feature of the host and of each account.
//
// Ids: a XEP-0359 <stanza-id/> that the user's archive (module mam, at
// priority 50, above this module's -100) stamped on the message (by = the
// user's bare JID) is the entry's id when present, else the message's own id
// attribute. Without an archive on the host, stanza-ids are not trusted (no
// one removes forged ones). Markers for earlier messages are matched by the
// message's own id (XEP-0333 for one-to-one chats); a marker for the last
// message may give either id.
//
// Storage: the map store 'inbox', per user, keyed by the contact's bare JID.
// A sent message costs one map set; a received message or a marker one get
// and one set. Updates and queries of one user run in order, so a query
// always sees every message routed before it.
//
// Not done: MUC/groupchat conversations, MongooseIM's boxes, muting and
// #conversation properties, pushing reset state to the user's other
// resources, and removing the inbox when an account is deleted.
import { Element, parse } from 'ltx';
import { serialize } from '../src/xml/element.ts';
import { z } from 'zod';
import { defineModule } from '../src/modules/api.ts';
import type { IqEvent, StanzaEvent } from '../src/router/events.ts';
import { Jid } from '../src/jid.ts';
import { childElements, cloneElement, NS_CLIENT } from '../src/stanza.ts';
import { KeyedQueue } from '../src/util/keyed-queue.ts';

export const NS_INBOX = 'urn:xmpp:inbox:1';
const NS_FORWARD = 'urn:xmpp:forward:0';
const NS_DELAY = 'urn:xmpp:delay';
const NS_RSM = 'http://jabber.org/protocol/rsm';
const NS_DATA = 'jabber:x:data';
const NS_SID = 'urn:xmpp:sid:0';
const NS_MAM = 'urn:xmpp:mam:2';
const NS_MARKERS = 'urn:xmpp:chat-markers:0';
const NS_MUC_USER = 'http://jabber.org/protocol/muc#user';

/** Below blocking (100), which may stop a message; above carbons (-500) and delivery (-1000). */
const PRIORITY = -100;
/** Ids of unread messages remembered per conversation, for markers on other than the last one. */
const MAX_TRACKED = 100;

const MARKERS = ['displayed', 'acknowledged', 'received'] as const;

/** One conversation of one user, as stored. */
export interface InboxEntry {
  /** When the last message went through the server (ms since the epoch). */
  ts: number;
  /** The last message's id (stanza-id when known), '' when it had none. */
  id: string;
  unread: number;
  /** Ids of the newest unread messages, oldest first, at most MAX_TRACKED. */
  unreadIds: string[];
  /** The last message, serialized. */
  stanza: string;
}

interface Filters {
  start?: number;
  end?: number;
  order: 'asc' | 'desc';
  hiddenRead: boolean;
  messages: boolean;
}

type Cursor = { ts: number; jid?: string };

interface Paging {
  max?: number;
  after?: string;
  /** true: the last page. */
  before?: string | true;
  index?: number;
}

class BadRequest extends Error {}
class NotFound extends Error {}

/** A one-to-one instant message: chat or normal, with a body, not from a MUC. */
function countable(message: Element): boolean {
  const type = (message.attrs.type as string | undefined) ?? 'normal';
  if (type !== 'chat' && type !== 'normal') return false;
  if (message.getChild('x', NS_MUC_USER)) return false;
  return childElements(message).some((c) => c.name === 'body' && (c.getNS() ?? NS_CLIENT) === NS_CLIENT);
}

/** The reset marker a message carries, if any: its id. */
function markerId(message: Element, kinds: ReadonlySet<string>): string | undefined {
  for (const c of childElements(message)) {
    if (c.getNS() === NS_MARKERS && kinds.has(c.name)) {
      const id = c.attrs.id as string | undefined;
      if (id) return id;
    }
  }
  return undefined;
}

/** The <stanza-id/> (XEP-0359) of the user's own archive on a message, if any. */
function claimedStanzaId(message: Element, userBare: string): string | undefined {
  for (const c of message.getChildren('stanza-id', NS_SID)) {
    if (c.attrs.by === userBare && c.attrs.id) return c.attrs.id as string;
  }
  return undefined;
}

const DATE_TIME = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$/;

/** A XEP-0082 date-time in ms, or null. Fractions beyond milliseconds are cut. */
export function parseDateTime(text: string): number | null {
  const m = DATE_TIME.exec(text.trim());
  if (!m) return null;
  const fraction = (m[2] ?? '').slice(0, 3).padEnd(3, '0');
  const ms = Date.parse(`${m[1]}.${fraction}${m[3]}`);
  return Number.isNaN(ms) ? null : ms;
}

function parseBool(value: string, field: string): boolean {
  if (value === 'true' || value === '1') return true;
  if (value === 'false' || value === '0') return false;
  throw new BadRequest(`Invalid value for ${field}: '${value}' (true or false)`);
}

function parseFilters(inbox: Element): Filters {
  const filters: Filters = { order: 'desc', hiddenRead: false, messages: true };
  const unreadOnly = inbox.attrs['unread-only'] as string | undefined;
  if (unreadOnly !== undefined) filters.hiddenRead = parseBool(unreadOnly, 'unread-only');
  const messages = inbox.attrs.messages as string | undefined;
  if (messages !== undefined) filters.messages = parseBool(messages, 'messages');

  const form = inbox.getChild('x', NS_DATA);
  if (!form) return filters;
  for (const field of form.getChildren('field')) {
    const name = field.attrs.var as string | undefined;
    // A value as a child (XEP-0004) or, as some MongooseIM examples have it, an attribute.
    const value = (field.getChildText('value') ?? (field.attrs.value as string | undefined) ?? '').trim();
    switch (name) {
      case 'FORM_TYPE':
        if (value !== NS_INBOX) throw new BadRequest(`FORM_TYPE must be ${NS_INBOX}`);
        break;
      case 'start':
      case 'end': {
        if (value === '') break;
        const ms = parseDateTime(value);
        if (ms === null)
          throw new BadRequest(`Invalid inbox form field value, field=${name}, value=${value}`);
        filters[name] = ms;
        break;
      }
      case 'order':
        if (value !== 'asc' && value !== 'desc' && value !== '')
          throw new BadRequest(`Invalid inbox form field value, field=order, value=${value}`);
        if (value !== '') filters.order = value;
        break;
      case 'hidden_read':
      case 'hidden-read':
        if (value !== '') filters.hiddenRead = parseBool(value, name);
        break;
      default:
        break; // box, archive and others this server has no use for
    }
  }
  return filters;
}

function parsePaging(inbox: Element): Paging {
  const set = inbox.getChild('set', NS_RSM);
  if (!set) return {};
  const paging: Paging = {};
  const nonNegative = (text: string, name: string): number => {
    const trimmed = text.trim();
    if (!/^\d{1,9}$/.test(trimmed)) throw new BadRequest(`RSM <${name}/> must be a non-negative integer`);
    return Number.parseInt(trimmed, 10);
  };
  const max = set.getChild('max');
  if (max) paging.max = nonNegative(max.getText(), 'max');
  const index = set.getChild('index');
  if (index) paging.index = nonNegative(index.getText(), 'index');
  const after = set.getChild('after');
  if (after) {
    const text = after.getText().trim();
    if (text === '') throw new BadRequest('RSM <after/> needs a value');
    paging.after = text;
  }
  const before = set.getChild('before');
  if (before) {
    const text = before.getText().trim();
    paging.before = text === '' ? true : text;
  }
  const given = [paging.after !== undefined, paging.before !== undefined, paging.index !== undefined];
  if (given.filter(Boolean).length > 1)
    throw new BadRequest('RSM <after/>, <before/> and <index/> exclude each other');
  return paging;
}

/** Ascending by time, then by contact, so that paging is stable. */
function compareAsc(a: Cursor, b: Cursor): number {
  if (a.ts !== b.ts) return a.ts - b.ts;
  if (a.jid === undefined || b.jid === undefined) return 0;
  return a.jid < b.jid ? -1 : a.jid > b.jid ? 1 : 0;
}

function queryForm(): Element {
  const x = new Element('x', { xmlns: NS_DATA, type: 'form' });
  x.c('field', { type: 'hidden', var: 'FORM_TYPE' }).c('value').t(NS_INBOX);
  x.c('field', { type: 'text-single', var: 'start', label: 'Last message at or after (XEP-0082)' });
  x.c('field', { type: 'text-single', var: 'end', label: 'Last message at or before (XEP-0082)' });
  const order = x.c('field', { type: 'list-single', var: 'order', label: 'Order by last message' });
  order.c('value').t('desc');
  order.c('option', { label: 'Ascending by timestamp' }).c('value').t('asc');
  order.c('option', { label: 'Descending by timestamp' }).c('value').t('desc');
  x.c('field', { type: 'boolean', var: 'hidden_read', label: 'Only conversations with unread messages' })
    .c('value')
    .t('false');
  const query = new Element('query', { xmlns: NS_INBOX });
  query.cnode(x);
  return query;
}

export default defineModule({
  name: 'inbox',
  description: 'Conversation list with unread counts and last messages (XEP-0430)',
  xeps: [
    {
      number: 430,
      version: '0.2.0',
      status: 'partial',
      note: 'One-to-one conversations only, in the shape of MongooseIM mod_inbox (IQ set, form filters, <result/> and <fin/>); no groupchat, boxes or muting.',
    },
  ],
  options: z
    .object({
      /** Chat markers (XEP-0333) that, sent by the user, mark the conversation read up to the marked message. */
      reset_markers: z.array(z.enum(MARKERS)).default(['displayed', 'acknowledged']),
      /** Most conversations per page; also the page size when the client asks for none. */
      max_page_size: z.number().int().min(1).default(100),
    })
    .strict(),
  setup(ctx) {
    const store = ctx.storage.map<InboxEntry>('inbox');
    const resetMarkers = new Set<string>(ctx.options.reset_markers);
    const maxPage = ctx.options.max_page_size;
    const queue = new KeyedQueue();
    /** Messages already counted for their recipient (message/full hands some on to message/bare). */
    const received = new WeakSet<Element>();
    /** Messages already counted for their sender. */
    const sent = new WeakSet<Element>();

    ctx.addFeature(NS_INBOX);
    ctx.addAccountFeature(NS_INBOX);

    /**
     * The stanza-id the user's archive gave a message. Only trusted while an
     * archive (mam) runs on this host: it removes ids a client forges
     * before this module sees the message, and adds the real ones.
     */
    function stanzaId(message: Element, userBare: string): string | undefined {
      const claimed = claimedStanzaId(message, userBare);
      return claimed !== undefined && ctx.accountFeatures().includes(NS_MAM) ? claimed : undefined;
    }

    /** The message as stored: in the client namespace, whatever stream it came on. */
    function storedForm(message: Element): string {
      const copy = cloneElement(message);
      copy.attrs.xmlns = NS_CLIENT;
      return serialize(copy);
    }

    function update(user: string, contact: string, change: (old: InboxEntry | null) => InboxEntry | null) {
      void queue
        .run(user, async () => {
          const next = change(await store.get(user, contact));
          if (next) await store.set(user, contact, next);
        })
        .catch((err: unknown) => ctx.log.error({ err, user, contact }, 'could not update the inbox'));
    }

    function put(user: string, contact: string, entry: InboxEntry) {
      void queue
        .run(user, () => store.set(user, contact, entry))
        .catch((err: unknown) => ctx.log.error({ err, user, contact }, 'could not update the inbox'));
    }

    // ---- what the user sends -------------------------------------------------------

    const onSend = (ev: StanzaEvent) => {
      const { stanza, origin } = ev;
      if (!origin || stanza.name !== 'message' || sent.has(stanza)) return false;
      if (stanza.attrs.to === undefined || !ev.to.local) return false;
      const userBare = origin.jid.bareString();
      const contact = ev.to.bareString();
      if (contact === userBare) return false;
      const user = origin.jid.local;
      if (countable(stanza)) {
        sent.add(stanza);
        const own = stanza.attrs.id as string | undefined;
        put(user, contact, {
          ts: Date.now(),
          id: stanzaId(stanza, userBare) ?? own ?? '',
          unread: 0,
          unreadIds: [],
          stanza: storedForm(stanza),
        });
        return false;
      }
      const type = (stanza.attrs.type as string | undefined) ?? 'normal';
      if (type !== 'chat' && type !== 'normal') return false;
      const marked = markerId(stanza, resetMarkers);
      if (marked === undefined) return false;
      sent.add(stanza);
      update(user, contact, (entry) => {
        if (!entry || entry.unread === 0) return null;
        const k = entry.unreadIds.lastIndexOf(marked);
        if (k >= 0) {
          const rest = entry.unreadIds.slice(k + 1);
          return { ...entry, unread: rest.length, unreadIds: rest };
        }
        if (marked === entry.id) return { ...entry, unread: 0, unreadIds: [] };
        return null; // a message the inbox does not know: nothing to say about it
      });
      return false;
    };
    for (const kind of ['bare', 'full'] as const) ctx.hook(`pre-message/${kind}`, onSend, PRIORITY);

    // ---- what the user receives -------------------------------------------------

    const onReceive = (ev: StanzaEvent) => {
      const { stanza } = ev;
      if (received.has(stanza) || !ev.to.local || ev.to.domain !== ctx.host) return false;
      const userBare = ev.to.bareString();
      const contact = ev.from.bareString();
      if (contact === userBare || !countable(stanza)) return false;
      received.add(stanza);
      const user = ev.to.local;
      const ts = Date.now();
      const own = stanza.attrs.id as string | undefined;
      const sid = stanzaId(stanza, userBare);
      const xml = storedForm(stanza);
      void queue
        .run(user, async () => {
          // The core routes messages to unknown local users too (and bounces them).
          if (!(await ctx.accounts.exists(user))) return;
          const old = await store.get(user, contact);
          const ids = old ? [...old.unreadIds] : [];
          const tracked = own ?? sid;
          if (tracked) ids.push(tracked);
          if (ids.length > MAX_TRACKED) ids.splice(0, ids.length - MAX_TRACKED);
          await store.set(user, contact, {
            ts,
            id: sid ?? own ?? '',
            unread: (old?.unread ?? 0) + 1,
            unreadIds: ids,
            stanza: xml,
          });
        })
        .catch((err: unknown) => ctx.log.error({ err, user, contact }, 'could not update the inbox'));
      return false;
    };
    ctx.hook('message/bare', onReceive, PRIORITY);
    ctx.hook('message/full', onReceive, PRIORITY);

    // ---- the protocol ------------------------------------------------------------

    /** Only the account itself: IQs to someone else's bare JID are refused. */
    function own(ev: IqEvent): string | null {
      if (!ev.origin || !ev.from.bare.equals(ev.to.bare)) {
        ev.error('forbidden', { text: 'Only the owner of an inbox may use it' });
        return null;
      }
      return ev.to.local;
    }

    function answer(ev: IqEvent, job: (user: string) => Promise<void>): Promise<true> {
      const user = own(ev);
      if (user === null) return Promise.resolve(true);
      return queue
        .run(user, () => job(user))
        .catch((err: unknown) => {
          if (err instanceof BadRequest) ev.error('bad-request', { text: err.message });
          else if (err instanceof NotFound) ev.error('item-not-found', { text: err.message });
          else {
            ctx.log.error({ err, user }, 'inbox request failed');
            ev.error('internal-server-error');
          }
        })
        .then(() => true as const);
    }

    const query = (ev: IqEvent) =>
      answer(ev, async (user) => {
        const filters = parseFilters(ev.payload);
        const paging = parsePaging(ev.payload);
        const queryId = (ev.payload.attrs.queryid as string | undefined) ?? (ev.stanza.attrs.id as string);
        const all = await store.getAll(user);

        const dir = filters.order === 'asc' ? 1 : -1;
        const matching: (InboxEntry & { jid: string })[] = [];
        for (const [jid, entry] of all) {
          if (filters.start !== undefined && entry.ts < filters.start) continue;
          if (filters.end !== undefined && entry.ts > filters.end) continue;
          if (filters.hiddenRead && entry.unread === 0) continue;
          matching.push({ ...entry, jid });
        }
        matching.sort((a, b) => dir * compareAsc(a, b));

        const cursorOf = (value: string): Cursor => {
          const ms = parseDateTime(value);
          if (ms !== null) return { ts: ms };
          const jid = Jid.tryParse(value)?.bareString();
          const entry = jid === undefined ? undefined : all.get(jid);
          if (jid === undefined || !entry) throw new NotFound(`No conversation with ${value} in the inbox`);
          return { ts: entry.ts, jid };
        };
        const limit = Math.min(paging.max ?? maxPage, maxPage);
        let from: number;
        let to: number;
        if (paging.after !== undefined) {
          const c = cursorOf(paging.after);
          from = matching.findIndex((e) => dir * compareAsc(e, c) > 0);
          if (from < 0) from = matching.length;
          to = Math.min(from + limit, matching.length);
        } else if (paging.before !== undefined) {
          const before = paging.before;
          if (before === true) to = matching.length;
          else {
            const c = cursorOf(before);
            to = matching.findIndex((e) => dir * compareAsc(e, c) >= 0);
            if (to < 0) to = matching.length;
          }
          from = Math.max(0, to - limit);
        } else {
          from = Math.min(paging.index ?? 0, matching.length);
          to = Math.min(from + limit, matching.length);
        }
        const page = matching.slice(from, to);

        const origin = ev.origin!;
        const userBare = origin.jid.bareString();
        let n = 0;
        for (const entry of page) {
          const result = new Element('result', {
            xmlns: NS_INBOX,
            unread: String(entry.unread),
            queryid: queryId,
            jid: entry.jid,
          });
          if (entry.id) result.attrs.id = entry.id;
          if (filters.messages) {
            let last: Element | null = null;
            try {
              last = parse(entry.stanza);
            } catch (err) {
              ctx.log.error({ err, user, contact: entry.jid }, 'unreadable last message in the inbox');
            }
            const forwarded = result.c('forwarded', { xmlns: NS_FORWARD });
            forwarded.c('delay', { xmlns: NS_DELAY, stamp: new Date(entry.ts).toISOString() });
            if (last) forwarded.cnode(last);
          }
          const message = new Element('message', {
            xmlns: NS_CLIENT,
            from: userBare,
            to: origin.jid.toString(),
            id: `${queryId}-${++n}`,
          });
          message.cnode(result);
          origin.send(message);
        }

        const unread = matching.reduce((sum, e) => sum + e.unread, 0);
        const active = matching.filter((e) => e.unread > 0).length;
        const fin = new Element('fin', {
          xmlns: NS_INBOX,
          total: String(matching.length),
          unread: String(unread),
          'active-conversations': String(active),
        });
        fin.c('count').t(String(matching.length));
        fin.c('unread-messages').t(String(unread));
        fin.c('active-conversations').t(String(active));
        const set = fin.c('set', { xmlns: NS_RSM });
        if (page.length > 0) {
          set.c('first', { index: String(from) }).t(page[0]!.jid);
          set.c('last').t(page[page.length - 1]!.jid);
        }
        set.c('count').t(String(matching.length));
        ev.reply(fin);
      });

    ctx.handleIq('set', NS_INBOX, 'inbox', query, ['self', 'bare']);
    ctx.handleIq('get', NS_INBOX, 'inbox', query, ['self', 'bare']);

    ctx.handleIq(
      'get',
      NS_INBOX,
      'query',
      (ev) => {
        if (own(ev) !== null) ev.reply(queryForm());
        return true;
      },
      ['self', 'bare'],
    );

    ctx.handleIq(
      'set',
      NS_INBOX,
      'reset',
      (ev) =>
        answer(ev, async (user) => {
          const attr = ev.payload.attrs.jid as string | undefined;
          const contact = attr ? Jid.tryParse(attr) : null;
          if (!contact) throw new BadRequest('<reset/> needs the jid of the conversation');
          const key = contact.bareString();
          const entry = await store.get(user, key);
          if (entry && entry.unread > 0) await store.set(user, key, { ...entry, unread: 0, unreadIds: [] });
          ev.reply();
        }),
      ['self', 'bare'],
    );
  },
});
