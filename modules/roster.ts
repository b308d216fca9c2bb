// RFC 6121 section 2: the roster (contact list), with roster versioning
// (XEP-0237). The presence module builds the subscription state machine on
// the API this module returns.
//
// Storage: map store 'roster', keyed by username. Each contact is one key
// (its bare JID) holding a StoredItem; the key VERSION_KEY (never a valid
// JID, since a localpart cannot be empty) holds the roster version. Writes
// bump the version before touching the item, so a crash in between only
// costs clients a full roster fetch, never a stale cache.
//
// Every read-modify-write of a user's roster runs in that user's queue
// (serialize()), on this node. The presence module processes subscription
// and presence stanzas for a user in the same queue, which also keeps the
// order of pushes and presence deliveries what the RFC examples show.
// Resources that asked for the roster carry the shared fact 'roster:interested'
// (in the session directory, so pushes reach them from any cluster node).
// FIXME(cluster): the queue is local to the node; two nodes changing one
// user's roster at the same moment need a store-level compare-and-set.
const INTERESTED = 'roster:interested';
import { randomBytes } from 'node:crypto';
import { Element } from 'ltx';
import { z } from 'zod';
import { Jid } from '../src/jid.ts';
import { defineModule } from '../src/modules/api.ts';
import type { IqEvent } from '../src/router/events.ts';
import { childElements } from '../src/stanza.ts';
import type { JsonValue } from '../src/storage/types.ts';
import { KeyedQueue } from '../src/util/keyed-queue.ts';

export const NS_ROSTER = 'jabber:iq:roster';
const NS_ROSTERVER = 'urn:xmpp:features:rosterver';
const VERSION_KEY = '@version';

export type Subscription = 'none' | 'to' | 'from' | 'both';

export interface RosterItem {
  name?: string;
  groups: string[];
  subscription: Subscription;
  /** Pending out: the user asked for the contact's presence (ask='subscribe'). */
  ask: boolean;
  /** Pre-approved: a subscribe from the contact is approved automatically (RFC 6121 3.4). */
  approved: boolean;
}

/** Runs after a client removed an item, inside the user's queue. */
export type RemoveListener = (user: string, contact: string, previous: RosterItem) => Promise<void>;

export interface RosterApi {
  readonly maxItems: number;
  /** Runs `task` after every earlier task of this user; tasks must not wait for their own user's queue. */
  serialize<T>(user: string, task: () => T | Promise<T>): Promise<T>;
  /** True while tasks of this user are queued or running. */
  busy(user: string): boolean;
  items(user: string): Promise<Map<string, RosterItem>>;
  item(user: string, contact: string): Promise<RosterItem | null>;
  /** Stores an item (null removes it), bumps the version and pushes it to interested resources. */
  update(user: string, contact: string, item: RosterItem | null): Promise<void>;
  onRemove(listener: RemoveListener): void;
}

const SUBSCRIPTIONS: readonly string[] = ['none', 'to', 'from', 'both'];

export function hasTo(s: Subscription): boolean {
  return s === 'to' || s === 'both';
}

export function hasFrom(s: Subscription): boolean {
  return s === 'from' || s === 'both';
}

function decodeItem(value: JsonValue): RosterItem | null {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const sub = value.subscription;
  const groups = Array.isArray(value.groups) ? value.groups.filter((g) => typeof g === 'string') : [];
  return {
    name: typeof value.name === 'string' ? value.name : undefined,
    groups,
    subscription: typeof sub === 'string' && SUBSCRIPTIONS.includes(sub) ? (sub as Subscription) : 'none',
    ask: value.ask === true,
    approved: value.approved === true,
  };
}

function encodeItem(item: RosterItem): JsonValue {
  const out: { [k: string]: JsonValue } = { groups: item.groups, subscription: item.subscription };
  if (item.name !== undefined) out.name = item.name;
  if (item.ask) out.ask = true;
  if (item.approved) out.approved = true;
  return out;
}

interface StoredVersion {
  n: number;
  epoch: string;
}

function decodeVersion(value: JsonValue | null): StoredVersion | null {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  return typeof value.n === 'number' && typeof value.epoch === 'string'
    ? { n: value.n, epoch: value.epoch }
    : null;
}

// An account without a stored version has an empty roster, whatever its
// history: "0" names exactly that state.
function versionString(v: StoredVersion | null): string {
  return v ? `${v.n}-${v.epoch}` : '0';
}

export function itemElement(jid: string, item: RosterItem | null): Element {
  if (!item) return new Element('item', { jid, subscription: 'remove' });
  const e = new Element('item', { jid, subscription: item.subscription });
  if (item.name !== undefined) e.attrs.name = item.name;
  if (item.ask) e.attrs.ask = 'subscribe';
  if (item.approved) e.attrs.approved = 'true';
  for (const g of item.groups) e.c('group').t(g);
  return e;
}

export default defineModule({
  name: 'roster',
  description: 'Contact lists (RFC 6121 section 2) with roster versioning (XEP-0237)',
  xeps: [{ number: 237, version: '1.3' }],
  options: z
    .object({
      /** Most items a roster may hold; adding more is refused with not-allowed. */
      max_items: z.number().int().min(1).default(1000),
      /** Longest item name, in characters (longer ones get not-acceptable). */
      max_name_length: z.number().int().min(1).default(1023),
      /** Longest group name, in characters (longer ones get not-acceptable). */
      max_group_length: z.number().int().min(1).default(1023),
    })
    .strict(),
  setup(ctx): RosterApi {
    const store = ctx.storage.map<JsonValue>('roster');
    const queue = new KeyedQueue();
    const removeListeners: RemoveListener[] = [];
    const { max_items: maxItems, max_name_length: maxName, max_group_length: maxGroup } = ctx.options;

    const bareOf = (user: string) => `${user}@${ctx.host}`;

    async function items(user: string): Promise<Map<string, RosterItem>> {
      const all = await store.getAll(user);
      const out = new Map<string, RosterItem>();
      for (const [key, value] of all) {
        if (key === VERSION_KEY) continue;
        const item = decodeItem(value);
        if (item) out.set(key, item);
      }
      return out;
    }

    async function item(user: string, contact: string): Promise<RosterItem | null> {
      const value = await store.get(user, contact);
      return value === null ? null : decodeItem(value);
    }

    async function push(user: string, contact: string, value: RosterItem | null, ver: string) {
      const sessions = await ctx.sessions.resources(bareOf(user));
      for (const session of sessions) {
        if (session.getShared(INTERESTED) !== true) continue;
        const iq = new Element('iq', {
          type: 'set',
          id: `push-${randomBytes(6).toString('base64url')}`,
          to: session.jid.toString(),
        });
        iq.c('query', { xmlns: NS_ROSTER, ver }).cnode(itemElement(contact, value));
        session.send(iq);
      }
    }

    /** Stores an item (null removes it) under a new roster version; returns that version. */
    async function write(user: string, contact: string, value: RosterItem | null): Promise<string> {
      const current = decodeVersion(await store.get(user, VERSION_KEY));
      const next: StoredVersion = current
        ? { n: current.n + 1, epoch: current.epoch }
        : { n: 1, epoch: randomBytes(4).toString('hex') };
      await store.set(user, VERSION_KEY, { n: next.n, epoch: next.epoch });
      await store.set(user, contact, value ? encodeItem(value) : null);
      return versionString(next);
    }

    async function update(user: string, contact: string, value: RosterItem | null): Promise<void> {
      await push(user, contact, value, await write(user, contact, value));
    }

    const serialize = <T>(user: string, task: () => T | Promise<T>) => queue.run(user, task);

    const forbidden = ({ error }: IqEvent) => {
      error('forbidden', { text: 'You can only read and change your own roster' });
      return true;
    };
    ctx.handleIq('get', NS_ROSTER, 'query', forbidden, ['bare']);
    ctx.handleIq('set', NS_ROSTER, 'query', forbidden, ['bare']);

    ctx.handleIq(
      'get',
      NS_ROSTER,
      'query',
      (ev) =>
        serialize(ev.from.local, async () => {
          const user = ev.from.local;
          const version = versionString(decodeVersion(await store.get(user, VERSION_KEY)));
          // Answered once every node knows, so that pushes from any of them follow.
          await ev.origin?.setShared(INTERESTED, true);
          const clientVer = ev.payload.attrs.ver as string | undefined;
          // XEP-0237: the client's cache is current; changes come as pushes.
          if (clientVer !== undefined && clientVer === version) {
            ev.reply();
            return true;
          }
          const query = new Element('query', { xmlns: NS_ROSTER, ver: version });
          for (const [jid, value] of await items(user)) query.cnode(itemElement(jid, value));
          ev.reply(query);
          return true;
        }),
      ['self'],
    );

    ctx.handleIq(
      'set',
      NS_ROSTER,
      'query',
      (ev) => {
        const user = ev.from.local;
        const parsed = parseSet(ev, { maxName, maxGroup });
        if (!parsed) return true;
        if (parsed.jid === bareOf(user)) {
          ev.error('not-allowed', { text: 'Your own address cannot be a contact in your roster' });
          return true;
        }
        return serialize(user, async () => {
          const existing = await item(user, parsed.jid);
          if (parsed.remove) {
            if (!existing) {
              ev.error('item-not-found', { text: `${parsed.jid} is not in your roster` });
              return true;
            }
            const ver = await write(user, parsed.jid, null);
            // RFC 6121 2.3.2 / 2.5.2: the result to the sender, then pushes to everyone interested.
            ev.reply();
            await push(user, parsed.jid, null, ver);
            for (const listener of removeListeners) await listener(user, parsed.jid, existing);
            return true;
          }
          if (!existing && (await items(user)).size >= maxItems) {
            ev.error('not-allowed', { text: `Your roster is full (at most ${maxItems} contacts)` });
            return true;
          }
          // RFC 6121 2.1.2: subscription, ask and approved in a roster set are
          // ignored; only presence stanzas change them.
          const updated: RosterItem = {
            name: parsed.name,
            groups: parsed.groups,
            subscription: existing?.subscription ?? 'none',
            ask: existing?.ask ?? false,
            approved: existing?.approved ?? false,
          };
          const ver = await write(user, parsed.jid, updated);
          ev.reply();
          await push(user, parsed.jid, updated, ver);
          return true;
        });
      },
      ['self'],
    );

    ctx.hook('stream-features', ({ features }) => {
      features.push(new Element('ver', { xmlns: NS_ROSTERVER }));
    });

    return {
      maxItems,
      serialize,
      busy: (user) => queue.busy(user),
      items,
      item,
      update,
      onRemove: (listener) => void removeListeners.push(listener),
    };
  },
});

interface ParsedSet {
  jid: string;
  remove: boolean;
  name?: string;
  groups: string[];
}

/** RFC 6121 2.3.3: checks a roster set; answers the error itself and returns null when invalid. */
function parseSet(ev: IqEvent, limits: { maxName: number; maxGroup: number }): ParsedSet | null {
  const items = childElements(ev.payload).filter((c) => c.getName() === 'item');
  if (items.length !== 1) {
    ev.error('bad-request', { text: 'A roster set must contain exactly one item' });
    return null;
  }
  const item = items[0]!;
  const raw = item.attrs.jid as string | undefined;
  if (raw === undefined) {
    ev.error('bad-request', { text: 'The roster item has no jid attribute' });
    return null;
  }
  const jid = Jid.tryParse(raw);
  if (!jid) {
    ev.error('jid-malformed', { text: `'${raw}' is not a valid JID` });
    return null;
  }
  if (jid.isFull) {
    ev.error('bad-request', { text: 'Roster items are bare JIDs (no resource)' });
    return null;
  }
  if (item.attrs.subscription === 'remove') return { jid: jid.toString(), remove: true, groups: [] };

  const name = (item.attrs.name as string | undefined) || undefined;
  if (name !== undefined && [...name].length > limits.maxName) {
    ev.error('not-acceptable', { text: `The name is longer than ${limits.maxName} characters` });
    return null;
  }
  const groups: string[] = [];
  for (const g of childElements(item)) {
    if (g.getName() !== 'group') continue;
    const text = g.getText();
    if (groups.includes(text)) {
      ev.error('bad-request', { text: `The group '${text}' is listed twice` });
      return null;
    }
    if (text.trim() === '') {
      ev.error('not-acceptable', { text: 'A group name cannot be empty' });
      return null;
    }
    if ([...text].length > limits.maxGroup) {
      ev.error('not-acceptable', { text: `A group name is longer than ${limits.maxGroup} characters` });
      return null;
    }
    groups.push(text);
  }
  return { jid: jid.toString(), remove: false, name, groups };
}
