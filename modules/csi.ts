// XEP-0352 client state indication (urn:xmpp:csi:0). While a client says it
// is inactive, stanzas it does not need right away are held back: presence
// updates (only the latest per sender is kept) and chat-state-only
// notifications (XEP-0085, likewise). Everything else goes out at once, and
// whatever was held goes out first, so the client never sees a message or
// an IQ ahead of the presence that came before it. <active/> sends all that
// was held. A resumed stream (XEP-0198) starts active again (XEP-0352
// section 5.2), so a connection that drops flushes the hold into the stream
// management queue.
import { Element } from 'ltx';
import { z } from 'zod';
import { defineModule } from '../src/modules/api.ts';
import type { SendFilterHandle, Session } from '../src/session/session.ts';

const NS = 'urn:xmpp:csi:0';
const NS_CHATSTATES = 'http://jabber.org/protocol/chatstates';

interface CsiState {
  inactive: boolean;
  /** Held stanzas by coalescing key, oldest first (a replaced entry moves to the end). */
  held: Map<string, Element>;
  filter: SendFilterHandle;
}

/** Presence types that only tell about availability (the rest are subscriptions, probes, errors). */
function isPresenceUpdate(stanza: Element): boolean {
  const type = stanza.attrs.type as string | undefined;
  return type === undefined || type === 'unavailable';
}

/** A message that carries a chat state and nothing a user reads (XEP-0085). */
function isChatStateOnly(stanza: Element): boolean {
  if (stanza.attrs.type === 'error') return false;
  if (stanza.getChild('body') || stanza.getChild('subject')) return false;
  return stanza.children.some((c) => typeof c !== 'string' && c.attrs.xmlns === NS_CHATSTATES);
}

/** The key under which a stanza may be held, or null when it must go out now. */
function holdKey(stanza: Element): string | null {
  const from = (stanza.attrs.from as string | undefined) ?? '';
  if (stanza.name === 'presence' && isPresenceUpdate(stanza)) return `presence ${from}`;
  if (stanza.name === 'message' && isChatStateOnly(stanza)) return `chatstate ${from}`;
  return null;
}

export default defineModule({
  name: 'csi',
  description: 'Client state indication: holds presence and chat states for inactive clients (XEP-0352)',
  xeps: [{ number: 352, version: '1.0.0' }],
  options: z
    .object({
      /** Held stanzas per session (distinct senders) before all of them are sent anyway. */
      max_held: z.number().int().min(1).default(500),
    })
    .strict(),
  setup(ctx) {
    const states = new WeakMap<Session, CsiState>();

    /** Sends everything held, oldest first. */
    const flush = (st: CsiState) => {
      if (st.held.size === 0) return;
      const pending = [...st.held.values()];
      st.held.clear();
      for (const stanza of pending) st.filter.release(stanza);
    };

    const stateOf = (session: Session): CsiState => {
      let st = states.get(session);
      if (st) return st;
      const created: CsiState = {
        inactive: false,
        held: new Map(),
        filter: session.addSendFilter((stanza) => {
          if (!created.inactive) return 'deliver';
          // The client's own presence, reflected: it is waiting for that one.
          const own = stanza.attrs.from === session.jid.toString();
          const key = own ? null : holdKey(stanza);
          if (key === null) {
            // Urgent: the client gets what came before it first.
            flush(created);
            return 'deliver';
          }
          created.held.delete(key);
          created.held.set(key, stanza);
          if (created.held.size > ctx.options.max_held) flush(created);
          return 'hold';
        }),
      };
      st = created;
      states.set(session, st);
      return st;
    };

    ctx.hook('stream-features', ({ features }) => {
      features.push(new Element('csi', { xmlns: NS }));
    });

    ctx.hook('stream-element', async ({ stream, element }) => {
      if (element.attrs.xmlns !== NS) return false;
      if (element.name !== 'active' && element.name !== 'inactive') return false;
      // Before resource binding there is nothing to hold: the state is ignored.
      const session = stream.jid ? await ctx.sessions.get(stream.jid.toString()) : undefined;
      if (!session) return true;
      const st = stateOf(session);
      if (element.name === 'inactive') {
        st.inactive = true;
      } else {
        st.inactive = false;
        flush(st);
      }
      return true;
    });

    // Runs before stream management holds the session (higher priority), so
    // the flushed stanzas are queued for resending on resumption.
    ctx.hook(
      'session-disconnected',
      ({ session }) => {
        const st = states.get(session);
        if (!st) return;
        st.inactive = false;
        flush(st);
      },
      10,
    );

    ctx.hook('resource-unbind', ({ session }) => {
      const st = states.get(session);
      if (!st) return;
      states.delete(session);
      st.filter.remove();
      st.held.clear();
    });
  },
});
