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
import type { Element } from 'ltx';
import type { Jid } from '../../src/jid.ts';
import type { ModuleContext } from '../../src/modules/api.ts';
import type { StanzaEvent } from '../../src/router/events.ts';
import type { ArchiveStore } from '../../src/storage/types.ts';
import { addStanzaId, bodyText, isArchivable, removeChild, stripStanzaIds } from './stanza-id.ts';

export const ARCHIVE_PRIORITY = 50;
/** Below carbons' copying (-500), above the core's routing: the sender's stanza-id is taken off here. */
const UNSTAMP_PRIORITY = -600;

export interface ArchivingDeps {
  archive: ArchiveStore<string>;
  /** Whether `user`'s preferences let messages with `contact` into the archive. */
  wanted(user: string, contact: Jid): Promise<boolean>;
}

export function installArchiving<O>(ctx: ModuleContext<O>, deps: ArchivingDeps): void {
  const { archive, wanted } = deps;
  /** Messages whose sender-side stanza-id is attached for carbons, to be removed again. */
  const stamped = new WeakMap<Element, Element>();
  /** Incoming messages already archived (message/full hands unclaimed ones on to message/bare). */
  const seen = new WeakSet<Element>();

  async function store(user: string, contact: Jid, stanza: Element): Promise<string | null> {
    try {
      if (!(await wanted(user, contact))) return null;
      return await archive.append(user, {
        with: contact.toString(),
        value: stanza.toString(),
        text: bodyText(stanza),
      });
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
    return ctx.accounts.exists(to.local).then(async (exists) => {
      if (!exists) return false; // the core bounces it
      const id = await store(to.local, from, stanza);
      if (id !== null) addStanzaId(stanza, id, user);
      return false;
    });
  };

  for (const kind of ['bare', 'full'] as const) {
    ctx.hook(`pre-message/${kind}`, outgoing, ARCHIVE_PRIORITY);
    ctx.hook(`pre-message/${kind}`, unstamp, UNSTAMP_PRIORITY);
    ctx.hook(`message/${kind}`, incoming, ARCHIVE_PRIORITY);
  }
}
