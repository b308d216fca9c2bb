// XEP-0198 stream management (urn:xmpp:sm:3): acknowledgements both ways,
// resumption of a session whose connection dropped, and nothing lost when a
// session ends with stanzas the client never acknowledged: messages go to
// offline storage (the 'message/offline' event) or back to their sender.
import { randomBytes } from 'node:crypto';
import { Element } from 'ltx';
import { z } from 'zod';
import { Jid } from '../src/jid.ts';
import { defineModule } from '../src/modules/api.ts';
import type { Session, StreamInfo } from '../src/session/session.ts';
import { errorReply } from '../src/stanza.ts';
import { streamErrorElement } from '../src/stream/errors.ts';

const NS = 'urn:xmpp:sm:3';
const NS_DELAY = 'urn:xmpp:delay';
/** h counts modulo 2^32 (XEP-0198 section 5). */
const MOD = 2 ** 32;

interface Unacked {
  stanza: Element;
  /** When the server first tried to deliver it, for the delay stamp on resend. */
  queuedAt: number;
}

interface SmState {
  session: Session;
  /** Resumption id, when the client asked for resumption. */
  id: string | null;
  /** session.stanzasIn when stream management was enabled. */
  inBase: number;
  /** Stanzas sent since enable, modulo 2^32. */
  sent: number;
  /** The last h the client acknowledged. */
  acked: number;
  unacked: Unacked[];
  /** Resumption window granted, in seconds. */
  maxSeconds: number;
  sinceRequest: number;
  stopListening: () => void;
  expiry: (() => void) | null;
  requestTimer: (() => void) | null;
}

function smElement(name: string, attrs: Record<string, string | number | undefined> = {}): Element {
  return new Element(name, { xmlns: NS, ...attrs });
}

function failed(condition: string, h?: number, extra?: Element): Element {
  const el = smElement('failed', { h });
  el.c(condition, { xmlns: 'urn:ietf:params:xml:ns:xmpp-stanzas' });
  if (extra) el.cnode(extra);
  return el;
}

export default defineModule({
  name: 'smacks',
  description: 'Stream management: acknowledgements and session resumption (XEP-0198)',
  xeps: [{ number: 198, version: '1.6.1' }],
  options: z
    .object({
      /** How long a dropped session waits for its client to resume, at most. */
      resume_timeout: z.number().int().min(1).max(86_400).default(300),
      /** Unacknowledged stanzas a client may owe before its stream is closed. */
      max_unacked: z.number().int().min(10).default(500),
      /** Ask the client for an ack after this many unacknowledged stanzas... */
      request_ack_after: z.number().int().min(1).default(5),
      /** ...or after this long with any unacknowledged (milliseconds). */
      request_ack_delay_ms: z.number().int().min(100).default(5000),
    })
    .strict(),
  setup(ctx) {
    const opts = ctx.options;
    const states = new WeakMap<Session, SmState>();
    const resumable = new Map<string, SmState>();

    const handledIn = (st: SmState) => (st.session.stanzasIn - st.inBase + MOD) % MOD;

    const requestAck = (st: SmState) => {
      st.sinceRequest = 0;
      st.requestTimer?.();
      st.requestTimer = null;
      st.session.sendNonza(smElement('r'));
    };

    /** Applies an ack; false when the client acknowledged more than it was sent. */
    const applyAck = (st: SmState, h: number): boolean => {
      const count = (h - st.acked + MOD) % MOD;
      if (count > st.unacked.length) return false;
      st.unacked.splice(0, count);
      st.acked = h;
      if (st.unacked.length === 0) {
        st.requestTimer?.();
        st.requestTimer = null;
      }
      return true;
    };

    const tooHigh = (st: SmState, h: number) =>
      new Element('handled-count-too-high', { xmlns: NS, h, 'send-count': st.sent });

    const enable = (session: Session, element: Element): Element => {
      if (states.has(session)) return failed('unexpected-request');
      const wantsResume = element.attrs.resume === 'true' || element.attrs.resume === '1';
      const asked = Number.parseInt(element.attrs.max ?? '', 10);
      const maxSeconds =
        Number.isFinite(asked) && asked > 0 ? Math.min(asked, opts.resume_timeout) : opts.resume_timeout;
      const st: SmState = {
        session,
        id: wantsResume ? randomBytes(18).toString('base64url') : null,
        inBase: session.stanzasIn,
        sent: 0,
        acked: 0,
        unacked: [],
        maxSeconds,
        sinceRequest: 0,
        stopListening: () => undefined,
        expiry: null,
        requestTimer: null,
      };
      st.stopListening = session.addSendListener((stanza) => {
        st.sent = (st.sent + 1) % MOD;
        st.unacked.push({ stanza, queuedAt: Date.now() });
        if (st.unacked.length > opts.max_unacked) {
          // A client that never acks cannot grow our memory without bound.
          queueMicrotask(() => session.close('policy-violation', 'Too many unacknowledged stanzas'));
          return;
        }
        if (!session.connected) return;
        if (++st.sinceRequest >= opts.request_ack_after) {
          queueMicrotask(() => requestAck(st));
        } else if (!st.requestTimer) {
          st.requestTimer = ctx.setTimeout(() => {
            st.requestTimer = null;
            if (st.unacked.length && session.connected) requestAck(st);
          }, opts.request_ack_delay_ms);
        }
      });
      states.set(session, st);
      if (st.id) resumable.set(st.id, st);
      return smElement('enabled', {
        id: st.id ?? undefined,
        resume: st.id ? 'true' : undefined,
        max: st.id ? maxSeconds : undefined,
      });
    };

    ctx.hook('stream-features', ({ features }) => {
      features.push(smElement('sm'));
    });

    ctx.hook('stream-element', async ({ stream, element, send, resume }) => {
      if (element.attrs.xmlns !== NS) return false;
      const session = stream.jid ? ((await ctx.sessions.get(stream.jid.toString())) ?? null) : null;
      switch (element.name) {
        case 'enable':
          // XEP-0198 section 3: only after resource binding.
          send(session ? enable(session, element) : failed('unexpected-request'));
          return true;
        case 'r': {
          const st = session && states.get(session);
          if (st) send(smElement('a', { h: handledIn(st) }));
          return true;
        }
        case 'a': {
          const st = session && states.get(session);
          const h = Number(element.attrs.h);
          if (!st) return true;
          if (!Number.isInteger(h) || h < 0 || h >= MOD || !applyAck(st, h)) {
            // XEP-0198 section 4: acking more than was sent ends the stream
            // with undefined-condition and <handled-count-too-high/>. The
            // session's close() takes no application condition, so the stream
            // error is written here and the stream then closed without one.
            session.sendNonza(
              streamErrorElement(
                'undefined-condition',
                `The client acknowledged ${element.attrs.h} stanzas; ${st.sent} were sent`,
                Number.isInteger(h) && h >= 0 && h < MOD ? tooHigh(st, h) : undefined,
              ),
            );
            session.close();
          }
          return true;
        }
        case 'resume':
          send(resumeSession(element, stream, resume));
          return true;
        default:
          return false;
      }
    });

    /** Returns the element to send for a <resume/> request, resuming on success. */
    const resumeSession = (element: Element, stream: StreamInfo, adopt: (s: Session) => boolean): Element => {
      const st = resumable.get(element.attrs.previd ?? '');
      const h = Number(element.attrs.h);
      // Another account's session does not exist as far as this client can
      // tell: checked before anything else, so no answer reveals the id.
      if (!st || stream.username !== st.session.jid.local || stream.host !== st.session.host) {
        return failed('item-not-found');
      }
      if (!Number.isInteger(h) || h < 0 || h >= MOD) return failed('bad-request');
      if ((h - st.acked + MOD) % MOD > st.unacked.length) {
        return failed('undefined-condition', undefined, tooHigh(st, h));
      }
      // Only the account that owned the session may take it (the core checks).
      if (!adopt(st.session)) return failed('item-not-found');
      applyAck(st, h);
      st.expiry?.();
      st.expiry = null;
      const resend = st.unacked.splice(0);
      st.sent = st.acked;
      st.sinceRequest = 0;
      queueMicrotask(() => {
        for (const { stanza, queuedAt } of resend) st.session.send(withDelay(stanza, queuedAt));
        if (st.unacked.length) requestAck(st);
      });
      ctx.log.info({ jid: st.session.jid.toString(), resent: resend.length }, 'stream resumed');
      return smElement('resumed', { previd: st.id!, h: handledIn(st) });
    };

    /** XEP-0203: stanzas held back while the client was away carry when they arrived. */
    const withDelay = (stanza: Element, queuedAt: number): Element => {
      // Only our own stamp counts: a <delay/> the sender put in must not hide
      // how long the server held the stanza.
      const stamped = stanza.getChildren('delay', NS_DELAY).some((d) => d.attrs.from === ctx.host);
      if (Date.now() - queuedAt < 1000 || stamped) return stanza;
      const copy = new Element(stanza.name, { ...stanza.attrs });
      for (const child of stanza.children) copy.children.push(child);
      copy.c('delay', { xmlns: NS_DELAY, from: ctx.host, stamp: new Date(queuedAt).toISOString() });
      return copy;
    };

    ctx.hook('session-disconnected', ({ session, hold }) => {
      const st = states.get(session);
      if (!st?.id) return;
      hold();
      st.requestTimer?.();
      st.requestTimer = null;
      st.expiry = ctx.setTimeout(() => {
        st.expiry = null;
        ctx.log.info({ jid: session.jid.toString() }, 'resumption window expired');
        session.close();
      }, st.maxSeconds * 1000);
    });

    ctx.hook('resource-unbind', async ({ session }) => {
      const st = states.get(session);
      if (!st) return;
      states.delete(session);
      if (st.id) resumable.delete(st.id);
      st.stopListening();
      st.expiry?.();
      st.requestTimer?.();
      for (const { stanza, queuedAt } of st.unacked.splice(0))
        await rescue(session, withDelay(stanza, queuedAt));
    });

    /**
     * A stanza the client never acknowledged: chat and normal messages are
     * kept for the user (offline storage or another resource); IQ requests
     * get an error back; the rest (presence, headlines) is gone with the session.
     */
    const rescue = async (session: Session, stanza: Element): Promise<void> => {
      const type = stanza.attrs.type ?? 'normal';
      if (stanza.name === 'message' && (type === 'chat' || type === 'normal')) {
        const from = Jid.tryParse(stanza.attrs.from ?? '');
        if (!from) return;
        const to = session.jid.bare;
        await ctx.fire('message/offline', { stanza, origin: null, from, to, host: ctx.host });
        return;
      }
      if (stanza.name === 'iq' && (type === 'get' || type === 'set')) {
        const reply = errorReply(stanza, 'recipient-unavailable');
        if (reply && reply.attrs.to) ctx.send(reply);
      }
    };

    ctx.onUnload(() => resumable.clear());
  },
});
