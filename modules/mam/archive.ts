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
// The archive id is chosen here (newArchiveId), so a message need not
// wait for its archive write to commit before it goes on: the write is
// queued and the message routed at once (option wait_for_archive restores
// waiting). Reads of the same driver see queued writes (a MAM query waits
// for them), so a client never misses a message it has received. Should a
// write fail, it is logged; the stanza-id it was given then names nothing.
// Only MAX_UNCOMMITTED writes may be outstanding: beyond that, messages wait
// for their writes again, so a storage that cannot keep up slows senders
// down instead of filling memory.
import type { Element } from 'ltx';
import type { Jid } from '../../src/jid.ts';
import type { ModuleContext } from '../../src/modules/api.ts';
import type { StanzaEvent } from '../../src/router/events.ts';
import { randomBytes } from 'node:crypto';
import type { ArchiveStore } from '../../src/storage/types.ts';
import { addStanzaId, bodyText, isArchivable, removeChild, stripStanzaIds } from './stanza-id.ts';

export const ARCHIVE_PRIORITY = 50;
/** Below carbons' copying (-500), above the core's routing: the sender's stanza-id is taken off here. */
const UNSTAMP_PRIORITY = -600;
/** Ids made per refill of the random pool. */
const ID_POOL = 256;
let pool = Buffer.alloc(0);
let poolAt = 0;

/**
 * A fresh archive id, like generateArchiveId (16 URL-safe characters from 96
 * random bits) but cut from a pool of random bytes: one call into the
 * crypto module per ID_POOL ids rather than one per message.
 */
export function newArchiveId(): string {
  if (poolAt >= pool.length) {
    pool = randomBytes(12 * ID_POOL);
    poolAt = 0;
  }
  poolAt += 12;
  return pool.toString('base64url', poolAt - 12, poolAt);
}

/** Archive writes that may be in progress while their messages go on. */
export const MAX_UNCOMMITTED = 5000;

export interface ArchivingDeps {
  archive: ArchiveStore<string>;
  /** Whether `user`'s preferences let messages with `contact` into the archive. */
  wanted(user: string, contact: Jid): Promise<boolean>;
  /** Hold each message until its archive write has committed. */
  waitForArchive?: boolean;
}

export function installArchiving<O>(ctx: ModuleContext<O>, deps: ArchivingDeps): void {
  const { archive, wanted } = deps;
  const waitForArchive = deps.waitForArchive === true;
  let uncommitted = 0;
  /** Messages whose sender-side stanza-id is attached for carbons, to be removed again. */
  const stamped = new WeakMap<Element, Element>();
  /** Incoming messages already archived (message/full hands unclaimed ones on to message/bare). */
  const seen = new WeakSet<Element>();

  async function store(user: string, contact: Jid, stanza: Element): Promise<string | null> {
    try {
      if (!(await wanted(user, contact))) return null;
      const id = newArchiveId();
      const written = archive.append(user, {
        id,
        fresh: true,
        with: contact.toString(),
        value: stanza.toString(),
        text: bodyText(stanza),
      });
      if (waitForArchive || uncommitted >= MAX_UNCOMMITTED) {
        await written;
        return id;
      }
      uncommitted++;
      written.then(
        () => {
          uncommitted--;
        },
        (err: unknown) => {
          uncommitted--;
          ctx.log.error({ err, user, id }, 'could not archive a message');
        },
      );
      return id;
    } catch (err) {
      // Delivery matters more than the archive: the message goes on without an id.
      ctx.log.error({ err, user }, 'could not archive a message');
      return null;
    }
  }

  const outgoing = (ev: StanzaEvent) => {
    const { stanza, origin, from, to } = ev;
    if (!origin || stanza.name !== 'message') return false;
    const user = from.bare.toString();
    stripStanzaIds(stanza, new Set([user, to.bare.toString()]));
    // A message to one's own account is archived once, on arrival.
    if (to.bare.equals(from.bare) || !isArchivable(stanza)) return false;
    return store(from.local, to, stanza).then((id) => {
      if (id !== null) stamped.set(stanza, addStanzaId(stanza, id, user));
      return false;
    });
  };

  const unstamp = ({ stanza }: StanzaEvent) => {
    const el = stamped.get(stanza);
    if (el) {
      removeChild(stanza, el);
      stamped.delete(stanza);
    }
    return false;
  };

  const incoming = (ev: StanzaEvent) => {
    const { stanza, from, to } = ev;
    if (!to.local || seen.has(stanza)) return false;
    seen.add(stanza);
    const user = to.bare.toString();
    stripStanzaIds(stanza, new Set([user]));
    if (!isArchivable(stanza)) return false;
    const archiveIt = async (exists: boolean) => {
      if (!exists) return false; // the core bounces it
      const id = await store(to.local, from, stanza);
      if (id !== null) addStanzaId(stanza, id, user);
      return false;
    };
    // A user with a session here exists: that spares a storage read per message.
    const here = ctx.sessions.resources(user);
    if (!(here instanceof Promise) && here.length > 0) return archiveIt(true);
    return ctx.accounts.exists(to.local).then(archiveIt);
  };

  for (const kind of ['bare', 'full'] as const) {
    ctx.hook(`pre-message/${kind}`, outgoing, ARCHIVE_PRIORITY);
    ctx.hook(`pre-message/${kind}`, unstamp, UNSTAMP_PRIORITY);
    ctx.hook(`message/${kind}`, incoming, ARCHIVE_PRIORITY);
  }
}
