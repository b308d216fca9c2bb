// XEP-0198 stream management (urn:xmpp:sm:3): acknowledgements both ways,
// resumption of a session whose connection dropped, and nothing lost when a
// session ends with stanzas the client never acknowledged: messages go to
// offline storage (the 'message/offline' event) or back to their sender.
//
// In a cluster a client may resume on another node than the one holding its
// session. The resumption id is published as a shared session fact, so the
// node the client reaches finds the holder through the session directory
// (wherever the session went since), and the two hand it over:
//
//   1. take (new node -> holder): the holder checks h, drops the connection
//      that may still carry the session, marks the session as moving and
//      answers with its state and the unacknowledged stanzas. Stanzas that
//      arrive for it from now on are still queued there (the "tail").
//   2. The new node creates the session on the client's connection with a
//      send filter holding everything back, binds it (the directory now
//      points at the new node; the holder ignores the close that replaces its
//      entry), answers <resumed/>, and resends the unacknowledged stanzas.
//   3. done (new node -> holder): the holder ends its session as moved (no
//      unavailable presence, nothing to offline storage) and answers with the
//      tail; the new node sends the tail, then what its filter held, then
//      lets stanzas through. The client sees them in the order they arrived.
//   4. tailed (new node -> holder): the tail arrived. A holder that hears
//      nothing (the answer came after the new node stopped waiting) routes
//      the tail again itself: to wherever the session is now, or offline.
//
// A holder that never hears `done` asks the new node whether it bound the
// session (`bound`): only then does its session end as moved; otherwise it
// ends as an expired held session would (queue offline, contacts told).
//
// A stanza that was on its way to the holder when the session ended there is
// routed again by the cluster (to the new node): it is not lost, though it may
// come after stanzas sent later on the direct route.
import { randomBytes } from 'node:crypto';
import { Element, parse } from 'ltx';
import { serialize } from '../src/xml/element.ts';
import { z } from 'zod';
import { RemoteSession } from '../src/cluster/remote-session.ts';
import { Jid } from '../src/jid.ts';
import { defineModule } from '../src/modules/api.ts';
import type { StreamElementEvent } from '../src/router/events.ts';
import { ClientSession, MOVED } from '../src/session/client-session.ts';
import type { SendFilterHandle, Session, StreamInfo } from '../src/session/session.ts';
import type { JsonValue } from '../src/storage/types.ts';
import { errorReply } from '../src/stanza.ts';
import { streamErrorElement } from '../src/stream/errors.ts';

const NS = 'urn:xmpp:sm:3';
const NS_DELAY = 'urn:xmpp:delay';
/** h counts modulo 2^32 (XEP-0198 section 5). */
const MOD = 2 ** 32;
/** The shared session fact naming a session's resumption id (cluster mode only). */
const SHARED_ID = 'smacks:id';
/** How long a resuming node waits for the holder's answers. */
const HANDOVER_REQUEST_MS = 3000;
/** How long a holder waits for the resuming node to finish; then the move is off. */
const HANDOVER_LIMIT_MS = 10_000;

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

/** A stanza on the bus: its XML and when it was first queued. */
type QueuedJson = [string, number];

/** What the holding node hands over to the node a client resumes on. */
interface Handover {
  jid: string;
  /** Stanzas the server handled from the client (the h of <resumed/>). */
  h: number;
  max: number;
  available: boolean;
  priority: number;
  presence: string;
  shared: Record<string, JsonValue>;
  queue: QueuedJson[];
}

/** A session arriving from another node, until the holder's tail is delivered. */
interface Arrival {
  st: SmState;
  /** Holds every stanza for the session until the tail is in. */
  gate: SendFilterHandle;
  held: Element[];
}

/** A session being handed over from this node, by resumption id. */
interface Outgoing {
  st: SmState;
  /** The node taking it. */
  to: string;
  /** The unacknowledged stanzas handed over, kept until the other node confirms. */
  queue: Unacked[];
  cancelTimer: () => void;
}

/** A tail handed over in a `done` answer, kept until the new node confirms it arrived. */
interface SentTail {
  session: ClientSession;
  to: string;
  tail: Unacked[];
  cancelTimer: () => void;
}

function isRecord(v: JsonValue | null | undefined): v is Record<string, JsonValue> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function queuedList(v: JsonValue | undefined): QueuedJson[] {
  if (!Array.isArray(v)) return [];
  return v.filter(
    (q): q is QueuedJson => Array.isArray(q) && typeof q[0] === 'string' && typeof q[1] === 'number',
  );
}

function asHandover(v: JsonValue | null): Handover | null {
  if (!isRecord(v) || typeof v.jid !== 'string' || typeof v.h !== 'number') return null;
  return {
    jid: v.jid,
    h: v.h,
    max: typeof v.max === 'number' ? v.max : 60,
    available: v.available === true,
    priority: typeof v.priority === 'number' ? v.priority : 0,
    presence: typeof v.presence === 'string' ? v.presence : '',
    shared: isRecord(v.shared) ? v.shared : {},
    queue: queuedList(v.queue),
  };
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
    /** Sessions this node is handing over to another (cluster), by resumption id. */
    const outgoing = new Map<string, Outgoing>();
    /** Tails answered to a `done`, by ticket, until the new node confirms them (step 4). */
    const sentTails = new Map<string, SentTail>();
    /** Resumption ids of sessions recently taken over from another node, for `bound`. */
    const adopted = new Set<string>();

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

    const tooHigh = (h: number, sent: number) =>
      new Element('handled-count-too-high', { xmlns: NS, h, 'send-count': sent });

    const newState = (session: Session, id: string | null, maxSeconds: number): SmState => ({
      session,
      id,
      inBase: session.stanzasIn,
      sent: 0,
      acked: 0,
      unacked: [],
      maxSeconds,
      sinceRequest: 0,
      stopListening: () => undefined,
      expiry: null,
      requestTimer: null,
    });

    /** Counts and queues every stanza sent to the session, and asks for acks. */
    const track = (st: SmState) => {
      const session = st.session;
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
    };

    const enable = (session: Session, element: Element): Element => {
      if (states.has(session)) return failed('unexpected-request');
      const wantsResume = element.attrs.resume === 'true' || element.attrs.resume === '1';
      const asked = Number.parseInt(element.attrs.max ?? '', 10);
      const maxSeconds =
        Number.isFinite(asked) && asked > 0 ? Math.min(asked, opts.resume_timeout) : opts.resume_timeout;
      const st = newState(session, wantsResume ? randomBytes(18).toString('base64url') : null, maxSeconds);
      track(st);
      // The other nodes find the session to resume through the directory.
      if (st.id && ctx.cluster.enabled) void session.setShared(SHARED_ID, st.id);
      return smElement('enabled', {
        id: st.id ?? undefined,
        resume: st.id ? 'true' : undefined,
        max: st.id ? maxSeconds : undefined,
      });
    };

    ctx.hook('stream-features', ({ features }) => {
      features.push(smElement('sm'));
    });

    ctx.hook('stream-element', async (ev) => {
      const { stream, element, send, resume } = ev;
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
                Number.isInteger(h) && h >= 0 && h < MOD ? tooHigh(h, st.sent) : undefined,
              ),
            );
            session.close();
          }
          return true;
        }
        case 'resume':
          if (resumable.has(element.attrs.previd ?? '') || !ctx.cluster.enabled)
            send(resumeSession(element, stream, resume));
          else await resumeFromNode(element, ev);
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
        return failed('undefined-condition', undefined, tooHigh(h, st.sent));
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

    // ---- cluster: resuming a session another node holds ------------------------------

    /** The client's node: finds the holder, takes the session over and binds it here. */
    const resumeFromNode = async (element: Element, ev: StreamElementEvent): Promise<void> => {
      const { stream, send } = ev;
      const previd = element.attrs.previd ?? '';
      const h = Number(element.attrs.h);
      const adoption = ev.adoptMoved;
      // Only the sessions of the account this stream authenticated as are
      // looked at: an id of another account is not found.
      const holder =
        previd && stream.username && adoption
          ? (await ctx.sessions.resources(`${stream.username}@${stream.host}`)).find(
              (s): s is RemoteSession => s instanceof RemoteSession && s.getShared(SHARED_ID) === previd,
            )
          : undefined;
      if (!holder) return send(failed('item-not-found'));
      if (!Number.isInteger(h) || h < 0 || h >= MOD) return send(failed('bad-request'));
      let answer: JsonValue | null;
      try {
        answer = await ctx.cluster.request(
          holder.node,
          { take: previd, jid: holder.jid.toString(), h },
          HANDOVER_REQUEST_MS,
        );
      } catch (err) {
        // The holder died, or does not answer: its session is gone with it.
        // Should a slow holder have handed the session over after all, this
        // tells it to keep the session (its bus is ordered: it sees the
        // take before this).
        ctx.log.info({ err: (err as Error).message, node: holder.node }, 'cannot resume from another node');
        ctx.cluster.request(holder.node, { done: previd, failed: true }).catch(() => undefined);
        return send(failed('item-not-found'));
      }
      const handover = asHandover(answer);
      if (!handover) {
        const refused = isRecord(answer) ? answer : {};
        if (refused.error === 'too-high' && typeof refused.sent === 'number')
          return send(failed('undefined-condition', undefined, tooHigh(h, refused.sent)));
        return send(failed(refused.error === 'bad-request' ? 'bad-request' : 'item-not-found'));
      }

      // Set by prepare(), which runs inside adoptMoved() before the bind.
      const arrival: { current: Arrival | null } = { current: null };
      const session = await adoption!(Jid.parse(handover.jid), (s) => {
        s.available = handover.available;
        s.priority = handover.priority;
        s.presence = handover.presence ? (parse(handover.presence) as Element) : null;
        for (const [key, value] of Object.entries(handover.shared)) void s.setShared(key, value);
        const st = newState(s, previd, handover.max);
        // The client's count of our stanzas goes on from its h; ours of its
        // stanzas from the holder's.
        st.inBase = (s.stanzasIn - handover.h + MOD) % MOD;
        st.sent = h;
        st.acked = h;
        track(st);
        // Nothing reaches the client before <resumed/> and the stanzas queued
        // on the holder: what arrives meanwhile waits here, in order.
        const held: Element[] = [];
        const gate = s.addSendFilter((stanza) => {
          held.push(stanza);
          return 'hold';
        });
        arrival.current = { st, gate, held };
      });
      const parsed = handover.queue.map(([xml, at]) => ({ stanza: parse(xml) as Element, queuedAt: at }));

      if (!session || !arrival.current) {
        // Not bound here (the connection closed meanwhile, or too many
        // resources): the holder keeps the session, with its queue back.
        const a = arrival.current;
        if (a) {
          states.delete(a.st.session);
          if (resumable.get(previd) === a.st) resumable.delete(previd);
          a.st.stopListening();
          a.gate.remove();
        }
        ctx.log.info({ jid: handover.jid }, 'could not bind a session resumed from another node');
        await ctx.cluster
          .request(holder.node, { done: previd, failed: true }, HANDOVER_REQUEST_MS)
          .catch(async () => {
            for (const q of parsed) await rescue(holder.jid, withDelay(q.stanza, q.queuedAt));
          });
        return send(failed('item-not-found'));
      }

      const { st, gate, held } = arrival.current;
      // The holder may ask whether the session got here (its `done` lost).
      adopted.add(previd);
      ctx.setTimeout(() => adopted.delete(previd), 3 * HANDOVER_LIMIT_MS);
      send(smElement('resumed', { previd, h: handover.h }));
      for (const q of parsed) gate.release(withDelay(q.stanza, q.queuedAt));
      ctx.log.info(
        { jid: handover.jid, from: holder.node, resent: parsed.length },
        'stream resumed from another node',
      );
      // The tail (stanzas the holder queued after answering) comes after the
      // socket resumes reading: the client may go on meanwhile.
      void ctx.cluster
        .request(holder.node, { done: previd }, HANDOVER_REQUEST_MS)
        .then(
          (done) => {
            if (!isRecord(done)) return [];
            // Step 4: the holder keeps the tail until told it arrived.
            if (typeof done.ticket === 'string')
              ctx.cluster.request(holder.node, { tailed: done.ticket }).catch(() => undefined);
            return queuedList(done.tail);
          },
          (err: unknown) => {
            // A late answer is dropped: the holder then routes the tail here itself.
            ctx.log.warn({ err: (err as Error).message, node: holder.node }, 'no tail from the holder');
            return [] as QueuedJson[];
          },
        )
        .then(async (tail) => {
          const rest = [...tail.map(([xml, at]) => withDelay(parse(xml) as Element, at)), ...held.splice(0)];
          if (session.isEnded) {
            for (const stanza of rest) await rescue(session.jid, stanza);
            return;
          }
          for (const stanza of rest) gate.release(stanza);
          gate.remove();
          if (st.unacked.length && session.connected) requestAck(st);
        })
        .catch((err: unknown) =>
          ctx.log.error({ err, jid: handover.jid }, 'could not deliver the tail of a resumed session'),
        );
    };

    /** The holding node: hands a session over to `to` (step 1). */
    const takeOut = (data: Record<string, JsonValue>, to: string): JsonValue => {
      const id = typeof data.take === 'string' ? data.take : '';
      const st = resumable.get(id);
      const session = st?.session;
      if (!st || !(session instanceof ClientSession) || session.jid.toString() !== data.jid)
        return { error: 'item-not-found' };
      const h = data.h;
      if (typeof h !== 'number' || !Number.isInteger(h) || h < 0 || h >= MOD) return { error: 'bad-request' };
      if (!applyAck(st, h)) return { error: 'too-high', sent: st.sent };
      st.expiry?.();
      st.expiry = null;
      st.requestTimer?.();
      st.requestTimer = null;
      resumable.delete(id);
      session.beginMove();
      const queue = st.unacked.splice(0);
      outgoing.set(id, { st, to, queue, cancelTimer: ctx.setTimeout(() => giveUp(id), HANDOVER_LIMIT_MS) });
      ctx.log.info({ jid: session.jid.toString(), to, queued: queue.length }, 'handing a session over');
      const handover: Handover = {
        jid: session.jid.toString(),
        h: handledIn(st),
        max: st.maxSeconds,
        available: session.available,
        priority: session.priority,
        presence: session.presence ? serialize(session.presence) : '',
        shared: session.sharedFacts(),
        queue: queue.map((q) => [serialize(q.stanza), q.queuedAt]),
      };
      return { ...handover };
    };

    /** The holding node: the other node bound the session, or could not (step 3). */
    const handOver = (data: Record<string, JsonValue>, from: string): JsonValue => {
      const id = typeof data.done === 'string' ? data.done : '';
      const out = outgoing.get(id);
      if (!out || out.to !== from) return { tail: [] };
      outgoing.delete(id);
      out.cancelTimer();
      const { st } = out;
      const session = st.session as ClientSession;
      if (data.failed === true) {
        // Not bound there: held here again, as before, for another resumption.
        session.cancelMove();
        st.unacked.unshift(...out.queue);
        st.sent = (st.acked + st.unacked.length) % MOD;
        if (st.id) resumable.set(st.id, st);
        hold(st);
        return { tail: [] };
      }
      const kept = st.unacked.splice(0);
      const tail: QueuedJson[] = kept.map((q) => [serialize(q.stanza), q.queuedAt]);
      // Ending synchronously after taking the tail: nothing more is queued.
      if (!session.isEnded) void session.end(MOVED);
      ctx.log.info({ jid: session.jid.toString(), to: from, tail: tail.length }, 'session handed over');
      if (kept.length === 0) return { tail };
      // Kept until the other node confirms it got the answer (step 4): if the
      // answer comes after it stopped waiting, the tail is routed again.
      const ticket = randomBytes(12).toString('base64url');
      sentTails.set(ticket, {
        session,
        to: from,
        tail: kept,
        cancelTimer: ctx.setTimeout(() => {
          sentTails.delete(ticket);
          ctx.log.warn(
            { jid: session.jid.toString(), to: from },
            'handed-over tail not confirmed; routing it',
          );
          routeTail(session, kept);
        }, HANDOVER_REQUEST_MS),
      });
      return { tail, ticket };
    };

    /** Step 4: the new node got the tail. */
    const tailed = (data: Record<string, JsonValue>, from: string): JsonValue => {
      const ticket = typeof data.tailed === 'string' ? data.tailed : '';
      const sent = sentTails.get(ticket);
      if (sent && sent.to === from) {
        sentTails.delete(ticket);
        sent.cancelTimer();
      }
      return null;
    };

    /** `bound` (holder -> new node): did the session get bound here? */
    const isBound = (data: Record<string, JsonValue>): JsonValue => ({
      bound: typeof data.bound === 'string' && adopted.has(data.bound),
    });

    /**
     * Once `session` has ended here as moved: sends what it queued meanwhile
     * to wherever the session is now (the directory), or keeps it as for a
     * session that ended, when there is none.
     */
    const routeTail = (session: ClientSession, tail: Unacked[]): void => {
      if (tail.length === 0) return;
      void session.ended
        .then(async () => {
          const now = await ctx.sessions.get(session.jid.toString());
          const alive = now && now !== session && !(now instanceof ClientSession && now.isEnded);
          for (const q of tail) {
            const stanza = withDelay(q.stanza, q.queuedAt);
            if (alive) now.send(stanza);
            else await rescue(session.jid, stanza);
          }
        })
        .catch((err: unknown) =>
          ctx.log.error({ err, jid: session.jid.toString() }, 'could not route the tail of a moved session'),
        );
    };

    /**
     * The node taking the session never confirmed. It is asked whether it
     * bound the session (its `done` may be what got lost): if so, the session
     * ends here as moved and what it queued meanwhile follows it there.
     * Otherwise (that node died, never got the take answer in time, or its
     * `done{failed}` got lost) the session ends here as a held session
     * expires, with everything it queued going to offline storage and
     * contacts seeing it go.
     */
    const giveUp = (id: string) => {
      const out = outgoing.get(id);
      if (!out) return;
      outgoing.delete(id);
      const { st } = out;
      const session = st.session as ClientSession;
      const jid = session.jid.toString();
      ctx.log.warn({ jid, to: out.to }, 'session handover not confirmed');
      const asked = ctx.cluster.nodes().includes(out.to)
        ? ctx.cluster.request(out.to, { bound: id, jid }, HANDOVER_REQUEST_MS).then(
            (answer) => isRecord(answer) && answer.bound === true,
            () => false,
          )
        : Promise.resolve(false);
      void asked
        .then((bound) => {
          if (session.isEnded) return;
          if (bound) {
            const tail = st.unacked.splice(0);
            void session.end(MOVED);
            ctx.log.info({ jid, to: out.to, tail: tail.length }, 'session handed over (unconfirmed)');
            routeTail(session, tail);
            return;
          }
          ctx.log.info({ jid, to: out.to }, 'session not taken over; ending it here');
          session.cancelMove();
          st.unacked.unshift(...out.queue);
          session.close();
        })
        .catch((err: unknown) => ctx.log.error({ err, jid }, 'could not settle an unconfirmed handover'));
    };

    ctx.cluster.onRequest((data, fromNode) => {
      if (!isRecord(data)) return null;
      if (typeof data.take === 'string') return takeOut(data, fromNode);
      if (typeof data.done === 'string') return handOver(data, fromNode);
      if (typeof data.tailed === 'string') return tailed(data, fromNode);
      if (typeof data.bound === 'string') return isBound(data);
      return null;
    });

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

    /** Keeps a session without a connection for its resumption window. */
    const hold = (st: SmState) => {
      st.requestTimer?.();
      st.requestTimer = null;
      st.expiry?.();
      st.expiry = ctx.setTimeout(() => {
        st.expiry = null;
        ctx.log.info({ jid: st.session.jid.toString() }, 'resumption window expired');
        st.session.close();
      }, st.maxSeconds * 1000);
    };

    ctx.hook('session-disconnected', ({ session, hold: keep }) => {
      const st = states.get(session);
      if (!st?.id) return;
      keep();
      hold(st);
    });

    ctx.hook('resource-unbind', async ({ session, reason }) => {
      const st = states.get(session);
      if (!st) return;
      states.delete(session);
      if (st.id && resumable.get(st.id) === st) resumable.delete(st.id);
      st.stopListening();
      st.expiry?.();
      st.requestTimer?.();
      // Handed over to another node: the queue went (or goes) there.
      if (reason === MOVED) return;
      for (const { stanza, queuedAt } of st.unacked.splice(0))
        await rescue(session.jid, withDelay(stanza, queuedAt));
    });

    /**
     * A stanza the client never acknowledged: chat and normal messages are
     * kept for the user (offline storage or another resource); IQ requests
     * get an error back; the rest (presence, headlines) is gone with the session.
     */
    const rescue = async (owner: Jid, stanza: Element): Promise<void> => {
      const type = stanza.attrs.type ?? 'normal';
      if (stanza.name === 'message' && (type === 'chat' || type === 'normal')) {
        const from = Jid.tryParse(stanza.attrs.from ?? '');
        if (!from) return;
        await ctx.fire('message/offline', { stanza, origin: null, from, to: owner.bare, host: ctx.host });
        return;
      }
      if (stanza.name === 'iq' && (type === 'get' || type === 'set')) {
        const reply = errorReply(stanza, 'recipient-unavailable');
        if (reply && reply.attrs.to) ctx.send(reply);
      }
    };

    ctx.onUnload(async () => {
      resumable.clear();
      adopted.clear();
      // Tails not confirmed yet: routed again, as when the confirmation never comes.
      for (const [ticket, sent] of [...sentTails]) {
        sentTails.delete(ticket);
        sent.cancelTimer();
        routeTail(sent.session, sent.tail);
      }
      // Sessions being handed over when the node stops: the other node has
      // them (or will not get them); what they queued meanwhile is kept offline.
      for (const [id, out] of [...outgoing]) {
        outgoing.delete(id);
        out.cancelTimer();
        const session = out.st.session as ClientSession;
        const tail = out.st.unacked.splice(0);
        if (!session.isEnded) void session.end(MOVED);
        for (const q of tail) await rescue(session.jid, withDelay(q.stanza, q.queuedAt));
      }
    });
  },
});
