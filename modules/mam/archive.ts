// Archiving of one-to-one messages, in the archives of both parties:
//  - outgoing, from the sender's client (pre-message/*), into the sender's
//    archive with `with` = the recipient's address as addressed;
//  - incoming, at the recipient's host (message/bare, message/full), into the
//    recipient's archive with `with` = the sender's full JID, and the
//    XEP-0359 <stanza-id/> of that archive entry added to what is delivered.
//
// Both hooks run at priority 50: below blocking (100), so a blocked message
// is not archived, and above carbons (-500) and offline storage (reached from
// message/bare's default handler), so copies and stored messages carry the
// stanza-id. A <stanza-id/> claiming to be by the user's own bare JID is a
// forgery (only this server assigns those): it is removed before anything
// else sees the message. The sender's id is added to the message only while
// carbons makes its <sent/> copies, and removed before the message leaves.
//
// The archive id is chosen here (generateArchiveId), so a message need not
// wait for its archive write to commit before it goes on: the write is
// queued and the message routed at once (option wait_for_archive restores
// waiting). Reads of the same driver see queued writes (a MAM query waits
// for them), so a client never misses a message it has received. Should a
// write fail, it is logged; the stanza-id it was given then names nothing.
// Such writes are marked write-behind (SharedAppendOptions.behind): under
// load the SQLite driver then commits them in larger groups.
// Only MAX_UNCOMMITTED writes may be outstanding: beyond that, messages wait
// for their writes again, so a storage that cannot keep up slows senders
// down instead of filling memory.
//
// A message between two users of this server is written once for both
// archives (ArchiveStore.appendShared): the sender's entry waits, until the
// current burst of synchronous work ends (process.nextTick), for the
// recipient's side to join it, and goes alone if it does not (a remote or
// offline recipient, a blocked message, a step that went async). The value
// serialized for the sender is reused for the recipient when the message
// still has the same child elements; the built-in modules change nothing
// else in between.
import type { Element } from 'ltx';
import type { Jid } from '../../src/jid.ts';
import type { ModuleContext } from '../../src/modules/api.ts';
import type { StanzaEvent } from '../../src/router/events.ts';
import { after } from '../../src/events.ts';
import { serialize } from '../../src/xml/element.ts';
import {
  generateArchiveId,
  type ArchiveEntry,
  type ArchiveStore,
  type SharedAppendOptions,
} from '../../src/storage/types.ts';
import { addStanzaId, bodyText, isArchivable, removeChild, stripStanzaIds } from './stanza-id.ts';

export const ARCHIVE_PRIORITY = 50;
/** Below carbons' copying (-500), above the core's routing: the sender's stanza-id is taken off here. */
const UNSTAMP_PRIORITY = -600;
/** Archive writes that may be in progress while their messages go on. */
export const MAX_UNCOMMITTED = 20_000;

/** appendShared's options, made once: for a write a message waits for, and for one it does not. */
const AWAITED: SharedAppendOptions = {};
const WRITE_BEHIND: SharedAppendOptions = { behind: true };

export interface ArchivingDeps {
  archive: ArchiveStore<string>;
  /**
   * Whether `user`'s preferences let messages with `contact` into the
   * archive: a plain boolean when the answer is at hand (cached preferences),
   * so that the common case routes a message without going async.
   */
  wanted(user: string, contact: Jid): boolean | Promise<boolean>;
  /** Hold each message until its archive write has committed. */
  waitForArchive?: boolean;
}

/** The sender's archive entry of a message, waiting for the recipient's to share its write. */
interface SenderEntry {
  entry: ArchiveEntry;
  /** The item's time, which its ids carry: the recipient's entry shares it. */
  when: number;
  value: string;
  text: string | undefined;
  /** The message's children when it was serialized, to tell whether `value` still fits it. */
  children: (Element | string)[];
  /** The sender's <stanza-id/>, on the message only while carbons copies it. */
  stamp: Element | null;
  /** Written already: with the recipient's entry, or alone. */
  written: boolean;
}

export function installArchiving<O>(ctx: ModuleContext<O>, deps: ArchivingDeps): void {
  const { archive, wanted } = deps;
  const waitForArchive = deps.waitForArchive === true;
  let uncommitted = 0;
  // Per-message state lives on the message itself, under symbols private to
  // this instance, rather than in a WeakMap and a WeakSet: two weak-table
  // entries per message kept the V8 garbage collector busier (its helper
  // threads used about a third more CPU in the throughput benchmark).
  const SENDER = Symbol('mam sender entry');
  const SEEN = Symbol('mam archived on arrival');
  type Marked = Element & { [SENDER]?: SenderEntry; [SEEN]?: true };
  const senders = {
    get: (stanza: Element) => (stanza as Marked)[SENDER],
    set: (stanza: Element, entry: SenderEntry) => {
      (stanza as Marked)[SENDER] = entry;
    },
  };
  /** Sender entries to write alone if no recipient entry joins them in this tick. */
  let unpaired: SenderEntry[] = [];

  const failed = (err: unknown, entries: ArchiveEntry[]): null => {
    ctx.log.error({ err, entries }, 'could not archive a message');
    return null;
  };
  /**
   * The writes behind the latest write promise. A store may give several
   * writes one promise (the SQLite driver does, per batch): they are then
   * counted and watched together, with one handler instead of one each.
   */
  let latest: { written: Promise<void>; count: number; first: ArchiveEntry[] } | undefined;

  /** Starts a write; null if the store threw at once. */
  function write(
    entries: ArchiveEntry[],
    when: number,
    value: string,
    text: string | undefined,
    options: SharedAppendOptions,
  ): Promise<void> | null {
    try {
      const item = text === undefined ? { when, value } : { when, value, text };
      return archive.appendShared(entries, item, options);
    } catch (err) {
      return failed(err, entries);
    }
  }

  /** Writes without holding the message; failures are logged. */
  function writeBehind(entries: ArchiveEntry[], when: number, value: string, text: string | undefined): void {
    const written = write(entries, when, value, text, WRITE_BEHIND);
    if (written === null) return;
    uncommitted++;
    if (latest?.written === written) {
      latest.count++;
      return;
    }
    const group = { written, count: 1, first: entries };
    latest = group;
    written.then(
      () => {
        uncommitted -= group.count;
      },
      (err: unknown) => {
        uncommitted -= group.count;
        if (group.count === 1) failed(err, group.first);
        else ctx.log.error({ err, messages: group.count, first: group.first }, 'could not archive messages');
      },
    );
  }

  function writeUnpaired(): void {
    const list = unpaired;
    unpaired = [];
    for (const s of list) {
      if (s.written) continue;
      s.written = true;
      writeBehind([s.entry], s.when, s.value, s.text);
    }
  }

  /** Whether the message must wait for its write to commit. */
  const mustWait = () => waitForArchive || uncommitted >= MAX_UNCOMMITTED;

  /** Writes and waits for the commit; the id, or null when the write failed. */
  function writeAndWait(entry: ArchiveEntry, when: number, stanza: Element): Promise<string | null> | null {
    const written = write([entry], when, serialize(stanza), bodyText(stanza), AWAITED);
    return (
      written?.then(
        () => entry.id,
        (err: unknown) => failed(err, [entry]),
      ) ?? null
    );
  }

  /** Archives an outgoing message for its sender and stamps it with the sender's stanza-id; that id, if archived. */
  function archiveOutgoing(
    stanza: Element,
    user: string,
    contact: Jid,
    by: string,
  ): string | null | Promise<string | null> {
    const when = Date.now();
    const entry: ArchiveEntry = { user, id: generateArchiveId(when), with: contact.toString() };
    if (mustWait()) {
      return (
        writeAndWait(entry, when, stanza)?.then((id) => {
          if (id === null) return null;
          const stamp = addStanzaId(stanza, id, by);
          senders.set(stanza, {
            entry,
            when,
            value: '',
            text: undefined,
            children: [],
            stamp,
            written: true,
          });
          return id;
        }) ?? null
      );
    }
    const sender: SenderEntry = {
      entry,
      when,
      value: serialize(stanza),
      text: bodyText(stanza),
      children: stanza.children.slice(),
      stamp: null,
      written: false,
    };
    senders.set(stanza, sender);
    if (unpaired.length === 0) process.nextTick(writeUnpaired);
    unpaired.push(sender);
    // Carbons' <sent/> copies carry the sender's id; taken off again at UNSTAMP_PRIORITY.
    sender.stamp = addStanzaId(stanza, entry.id, by);
    return entry.id;
  }

  /** Archives an incoming message for its recipient, together with the sender's entry when it waits. */
  function archiveIncoming(
    stanza: Element,
    user: string,
    contact: Jid,
  ): string | null | Promise<string | null> {
    const sender = senders.get(stanza);
    const paired = sender !== undefined && !sender.written && sameChildren(sender.children, stanza.children);
    // Sharing the sender's item means sharing its time, which the ids carry.
    const when = paired ? sender.when : Date.now();
    const entry: ArchiveEntry = { user, id: generateArchiveId(when), with: contact.toString() };
    if (mustWait()) return writeAndWait(entry, when, stanza);
    if (paired) {
      sender.written = true;
      writeBehind([sender.entry, entry], when, sender.value, sender.text);
    } else {
      writeBehind([entry], when, serialize(stanza), bodyText(stanza));
    }
    return entry.id;
  }

  /** Asks the preferences, then archives: synchronously when they are at hand. */
  function ifWanted(
    user: string,
    contact: Jid,
    archiveIt: () => string | null | Promise<string | null>,
  ): string | null | Promise<string | null> {
    let want: boolean | Promise<boolean>;
    try {
      want = wanted(user, contact);
    } catch (err) {
      return failed(err, []);
    }
    if (want instanceof Promise) {
      return want.then(
        (yes) => (yes ? archiveIt() : null),
        (err: unknown) => failed(err, []),
      );
    }
    return want ? archiveIt() : null;
  }

  const outgoing = (ev: StanzaEvent) => {
    const { stanza, origin, from, to } = ev;
    if (!origin || stanza.name !== 'message') return false;
    const user = from.bare.toString();
    stripStanzaIds(stanza, user, to.bare.toString());
    // A message to one's own account is archived once, on arrival.
    if (to.bare.equals(from.bare) || !isArchivable(stanza)) return false;
    return after(
      ifWanted(from.local, to, () => archiveOutgoing(stanza, from.local, to, user)),
      () => false,
    );
  };

  const unstamp = ({ stanza }: StanzaEvent) => {
    const sender = senders.get(stanza);
    if (sender?.stamp) {
      removeChild(stanza, sender.stamp);
      sender.stamp = null;
    }
    return false;
  };

  const incoming = (ev: StanzaEvent) => {
    const { stanza, to } = ev;
    // message/full hands unclaimed messages on to message/bare: archive once.
    if (!to.local || (stanza as Marked)[SEEN]) return false;
    (stanza as Marked)[SEEN] = true;
    const user = to.bare.toString();
    stripStanzaIds(stanza, user);
    if (!isArchivable(stanza)) return false;
    // A user with a session here exists: that spares a storage read per message.
    const here = ctx.sessions.resources(user);
    if (!(here instanceof Promise) && here.length > 0) return stampIncoming(ev, user);
    return ctx.accounts.exists(to.local).then((exists) => (exists ? stampIncoming(ev, user) : false));
  };

  function stampIncoming({ stanza, from, to }: StanzaEvent, user: string): false | Promise<false> {
    return after(
      ifWanted(to.local, from, () => archiveIncoming(stanza, to.local, from)),
      (id) => {
        if (id !== null) addStanzaId(stanza, id, user);
        return false as const;
      },
    );
  }

  for (const kind of ['bare', 'full'] as const) {
    ctx.hook(`pre-message/${kind}`, outgoing, ARCHIVE_PRIORITY);
    ctx.hook(`pre-message/${kind}`, unstamp, UNSTAMP_PRIORITY);
    ctx.hook(`message/${kind}`, incoming, ARCHIVE_PRIORITY);
  }
}

function sameChildren(a: (Element | string)[], b: (Element | string)[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
