// XEP-0280 Message Carbons (urn:xmpp:carbons:2), with the XEP-0334 <no-copy/>
// hint. A session that enables carbons gets a copy of every eligible message
// its account sends from another resource (<sent/>) and of every eligible
// message delivered to another of its resources (<received/>).
//
// Choices made here (the XEP leaves them to the server):
//  - Eligible (section 6): not groupchat, error or headline; no <private/>, no
//    <no-copy/>, not itself a carbon; and either of type chat, or with a
//    <body/>, or with an IM payload (chat states, receipts, chat markers).
//    Inbound MUC private messages (muc#user <x/>) get no received carbons.
//    Errors are never copied: that would need correlation with the original.
//  - A message to one's own account gets no sent carbons: the receiving side
//    copies it to the resources that did not get it, the sender excluded.
//  - A message to a bare JID that no resource takes (offline) is not copied.
//  - Security (section 11, CVE-2017-5589): a message that carries a carbon
//    wrapper is only delivered if it comes from the recipient's own bare JID,
//    which only the server can send from; a client that tries to send a
//    carbon wrapper gets a bad-request error and nothing is routed.
import { Element } from 'ltx';
import { defineModule } from '../src/modules/api.ts';
import type { StanzaEvent } from '../src/router/events.ts';
import { bareMessageRecipients } from '../src/router/router.ts';
import type { Session } from '../src/session/session.ts';
import { childElements, cloneElement, errorReply, NS_CLIENT } from '../src/stanza.ts';

const NS_CARBONS = 'urn:xmpp:carbons:2';
const NS_FORWARD = 'urn:xmpp:forward:0';
const NS_HINTS = 'urn:xmpp:hints';
const NS_MUC_USER = 'http://jabber.org/protocol/muc#user';
/** Payloads that make any message part of an IM conversation (XEP-0085, 0184, 0333). */
const IM_PAYLOAD_NS = new Set([
  'http://jabber.org/protocol/chatstates',
  'urn:xmpp:receipts',
  'urn:xmpp:chat-markers:0',
]);

/** Above every module that might consume a message, so forgeries never reach one. */
const GUARD_PRIORITY = 1000;
/**
 * Just above the core's delivery (-1000): modules that drop or take a message
 * (blocking, offline storage) decide first, and a message they stop is not copied.
 */
const COPY_PRIORITY = -500;

type Direction = 'sent' | 'received';

function isCarbon(message: Element): boolean {
  return (
    message.getChild('sent', NS_CARBONS) !== undefined ||
    message.getChild('received', NS_CARBONS) !== undefined
  );
}

/** XEP-0280 section 6, XEP-0334 no-copy. */
export function eligible(message: Element, direction: Direction): boolean {
  const type = (message.attrs.type as string | undefined) ?? 'normal';
  if (type === 'groupchat' || type === 'error' || type === 'headline') return false;
  if (message.getChild('private', NS_CARBONS) || message.getChild('no-copy', NS_HINTS)) return false;
  if (isCarbon(message)) return false;
  if (direction === 'received' && message.getChild('x', NS_MUC_USER)) return false;
  if (type === 'chat') return true;
  return childElements(message).some(
    (child) =>
      (child.getName() === 'body' && child.getNS() === NS_CLIENT) || IM_PAYLOAD_NS.has(child.getNS() ?? ''),
  );
}

/** The wrapper a resource gets: from the account's bare JID, the original forwarded inside. */
function wrap(direction: Direction, original: Element, bare: string, to: string): Element {
  const copy = cloneElement(original);
  copy.attrs.xmlns = NS_CLIENT;
  const wrapper = new Element('message', { xmlns: NS_CLIENT, from: bare, to, type: original.attrs.type });
  wrapper.c(direction, { xmlns: NS_CARBONS }).c('forwarded', { xmlns: NS_FORWARD }).cnode(copy);
  return wrapper;
}

export default defineModule({
  name: 'carbons',
  description: 'Copies messages to all of a user’s interested clients (XEP-0280)',
  xeps: [
    { number: 280, version: '1.0.1' },
    {
      number: 334,
      version: '0.3.0',
      status: 'partial',
      note: 'Only <no-copy/>, which suppresses carbons; storage hints are for the archiving modules.',
    },
  ],
  setup(ctx) {
    // A shared fact, so that nodes of a cluster copy to sessions of other nodes too.
    const ENABLED = 'carbons:enabled';
    ctx.addFeature(NS_CARBONS);

    for (const [name, on] of [
      ['enable', true],
      ['disable', false],
    ] as const) {
      ctx.handleIq(
        'set',
        NS_CARBONS,
        name,
        async ({ origin, reply, error }) => {
          // 'self' IQs come from a local session; anything else is not ours to switch.
          if (!origin) {
            error('not-allowed');
            return true;
          }
          // Repeated requests are not errors (section 10.1). The answer waits
          // until every cluster node knows: a message the client sends right
          // after it must be copied (or not) as it asked.
          await origin.setShared(ENABLED, on ? true : undefined);
          reply();
          return true;
        },
        ['self'],
      );
    }

    /** Sends a carbon to each carbons-enabled, available resource of `bare` not in `skip`. */
    function copyTo(
      direction: Direction,
      original: Element,
      bare: string,
      skip: ReadonlySet<Session | null>,
      sessions: Session[],
    ): void {
      for (const s of sessions) {
        if (skip.has(s) || !s.available || s.getShared(ENABLED) !== true) continue;
        s.send(wrap(direction, original, bare, s.jid.toString()));
      }
    }

    function resources(bare: string): Session[] | Promise<Session[]> {
      return ctx.sessions.resources(bare);
    }

    // ---- clients that try to send carbon wrappers ----------------------------------

    const refuseWrappers = ({ stanza, origin }: StanzaEvent) => {
      if (!origin || !isCarbon(stanza)) return false;
      // Only the server makes carbons; a client that sends one is forging.
      const reply = errorReply(stanza, 'bad-request', {
        text: 'Carbon copies (urn:xmpp:carbons:2 sent/received) are made by the server',
      });
      if (reply) origin.send(reply);
      return true;
    };

    // ---- sent carbons -----------------------------------------------------------------

    // COMPAT: the hot handlers below define no named closures per message:
    // tsx compiles with esbuild's keepNames, which gives every named arrow
    // function (const run = () => ...) a __name() call that redefines its
    // `name` property, about a microsecond each time.
    function sendCopies(stanza: Element, origin: Session, bare: string, sessions: Session[]): false {
      copyTo('sent', stanza, bare, new Set([origin]), sessions);
      return false;
    }
    const copySent = (ev: StanzaEvent) => {
      const { stanza, origin } = ev;
      if (!origin || ev.to.bare.equals(origin.jid.bare) || !eligible(stanza, 'sent')) return false;
      const bare = origin.jid.bare.toString();
      const list = resources(bare);
      return list instanceof Promise
        ? list.then((sessions) => sendCopies(stanza, origin, bare, sessions))
        : sendCopies(stanza, origin, bare, list);
    };
    for (const kind of ['full', 'bare', 'host'] as const) {
      ctx.hook(`pre-message/${kind}`, refuseWrappers, GUARD_PRIORITY);
      ctx.hook(`pre-message/${kind}`, copySent, COPY_PRIORITY);
    }

    // ---- forged carbons from anyone but the account itself ---------------------

    const guard = (ev: StanzaEvent) => {
      if (!isCarbon(ev.stanza)) return false;
      const fromOwnAccount = !ev.from.resource && ev.from.equals(ev.to.bare);
      if (fromOwnAccount) return false;
      ctx.log.info(
        { from: ev.from.toString(), to: ev.to.toString() },
        'dropped a message with a carbon wrapper not sent by the recipient’s account',
      );
      return true;
    };
    ctx.hook('message/full', guard, GUARD_PRIORITY);
    ctx.hook('message/bare', guard, GUARD_PRIORITY);

    // ---- received carbons --------------------------------------------------------

    /**
     * Copies an inbound message to the resources that do not get the original,
     * then strips <private/> (section 8: SHOULD, before delivery).
     */
    function inbound(ev: StanzaEvent, recipients: Session[], sessions: Session[]): false {
      const { stanza } = ev;
      const copied = eligible(stanza, 'received');
      if (recipients.length > 0 && copied) {
        // The sender is never told about its own message as "received".
        const skip = new Set<Session | null>(recipients);
        if (ev.origin) skip.add(ev.origin);
        copyTo('received', stanza, ev.to.bare.toString(), skip, sessions);
      }
      stripPrivate(stanza);
      return false;
    }

    /** A message to a full JID: copied to the account's other resources if that one is here. */
    function toFullJid(ev: StanzaEvent, sessions: Session[]): false {
      const target = sessions.find((s) => s.jid.equals(ev.to));
      // No such resource: the core hands chat and normal messages on to
      // message/bare, which copies them there.
      if (!target) return false;
      return inbound(ev, [target], sessions);
    }

    ctx.hook(
      'message/full',
      (ev) => {
        if (!eligible(ev.stanza, 'received')) return inbound(ev, [], []);
        const list = resources(ev.to.bare.toString());
        return list instanceof Promise
          ? list.then((sessions) => toFullJid(ev, sessions))
          : toFullJid(ev, list);
      },
      COPY_PRIORITY,
    );

    ctx.hook(
      'message/bare',
      (ev) => {
        // Groupchat fan-out and the like never need the account's sessions.
        if (!eligible(ev.stanza, 'received')) return inbound(ev, [], []);
        const list = resources(ev.to.bare.toString());
        return list instanceof Promise
          ? list.then((sessions) => inbound(ev, bareMessageRecipients(ev.stanza, sessions), sessions))
          : inbound(ev, bareMessageRecipients(ev.stanza, list), list);
      },
      COPY_PRIORITY,
    );
  },
});

function stripPrivate(message: Element): void {
  message.children = message.children.filter(
    (child) => typeof child === 'string' || !child.is('private', NS_CARBONS),
  );
}
