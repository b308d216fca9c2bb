// RFC 6121 sections 3-4: presence subscriptions and presence broadcast.
//
// Outbound (a local client sends, 'pre-presence/*'): broadcast presence goes
// to the user's own resources and to contacts subscribed to the user; the
// first one of a session also probes the contacts the user is subscribed to
// and delivers the subscription requests that waited for the user to come
// online. Subscription stanzas update the sender's roster before routing.
// Inbound ('presence/bare', 'presence/full'): subscription stanzas and probes
// are handled for the addressed user; plain presence is delivered by the
// core unless the user's queue is busy, in which case it is delivered here,
// in order.
//
// Pending inbound subscription requests live in the map store
// 'subscription_requests' (username -> requester's bare JID -> the request
// as XML), so that one sent while the user was offline is shown at login.
import { Element, parse } from 'ltx';
import { serialize } from '../../src/xml/element.ts';
import { Jid } from '../../src/jid.ts';
import { defineModule } from '../../src/modules/api.ts';
import type { StanzaEvent } from '../../src/router/events.ts';
import { MOVED } from '../../src/session/client-session.ts';
import type { Session } from '../../src/session/session.ts';
import { cloneElement, errorReply } from '../../src/stanza.ts';
import { hasFrom, hasTo, type RosterApi, type RosterItem } from '../roster.ts';
import {
  inbound,
  isSubscriptionType,
  outbound,
  type SubState,
  type SubscriptionType,
} from './subscriptions.ts';

const NS_PREAPPROVAL = 'urn:xmpp:features:pre-approval';
/**
 * Cluster: the shared session fact listing where a session sent directed
 * presence, so that the node it moves to (stream management resumption
 * there) still tells them when it goes.
 */
const SHARED_DIRECTED = 'presence:directed';

export default defineModule({
  name: 'presence',
  description: 'Presence broadcast, probes and subscriptions (RFC 6121 sections 3-4)',
  dependencies: ['roster'],
  setup(ctx) {
    const roster = ctx.dependency<RosterApi>('roster');
    const requests = ctx.storage.map<string>('subscription_requests');
    /** Sessions that sent initial presence and have not gone unavailable since. */
    const announced = new WeakSet<Session>();
    /** Where each session sent directed available presence (RFC 6121 4.6). */
    const directed = new WeakMap<Session, Set<string>>();

    /** Publishes a session's directed-presence targets for the other nodes (cluster only). */
    const shareDirected = (session: Session) => {
      if (!ctx.cluster.enabled) return;
      const set = directed.get(session);
      void session.setShared(SHARED_DIRECTED, set?.size ? [...set] : undefined);
    };

    const bareOf = (user: string) => `${user}@${ctx.host}`;
    const presence = (attrs: Record<string, string>) => new Element('presence', attrs);

    async function availableSessions(user: string): Promise<Session[]> {
      return (await ctx.sessions.resources(bareOf(user))).filter((s) => s.available);
    }

    /** A copy of `stanza` from `from` to `to`. */
    function copy(stanza: Element, from: string, to: string): Element {
      const out = cloneElement(stanza);
      out.attrs.from = from;
      out.attrs.to = to;
      return out;
    }

    /** Presence (or unavailable) from each available resource of `user` to `to`. */
    async function sendFromResources(user: string, to: string, unavailable: boolean) {
      for (const s of await availableSessions(user)) {
        const from = s.jid.toString();
        if (unavailable) ctx.send(presence({ type: 'unavailable', from, to }));
        else if (s.presence) ctx.send(copy(s.presence, from, to));
      }
    }

    async function stateOf(user: string, contact: string) {
      const item = await roster.item(user, contact);
      const pendingIn = (await requests.get(user, contact)) !== null;
      const state: SubState = {
        subscription: item?.subscription ?? 'none',
        ask: item?.ask ?? false,
        approved: item?.approved ?? false,
        pendingIn,
      };
      return { item, state };
    }

    /** Stores what changed between two states; pushes the roster item when it changed. */
    async function save(
      user: string,
      contact: string,
      item: RosterItem | null,
      before: SubState,
      after: SubState,
    ) {
      if (before.pendingIn && !after.pendingIn) await requests.set(user, contact, null);
      const changed =
        before.subscription !== after.subscription ||
        before.ask !== after.ask ||
        before.approved !== after.approved;
      if (changed) {
        await roster.update(user, contact, {
          name: item?.name,
          groups: item?.groups ?? [],
          subscription: after.subscription,
          ask: after.ask,
          approved: after.approved,
        });
      }
    }

    // ---- outbound: from a local client -------------------------------------------

    async function outboundSubscription(session: Session, stanza: Element, type: SubscriptionType, to: Jid) {
      const user = session.jid.local;
      const contact = to.bare.toString();
      if (contact === bareOf(user)) return; // the user is always subscribed to themself
      const { item, state } = await stateOf(user, contact);
      const result = outbound(type, state);
      const creates =
        !item && (result.state.ask || result.state.approved || result.state.subscription !== 'none');
      if (creates && (await roster.items(user)).size >= roster.maxItems) {
        const error = errorReply(stanza, 'resource-constraint', {
          text: `Your roster is full (at most ${roster.maxItems} contacts)`,
        });
        if (error) session.send(error);
        return;
      }
      await save(user, contact, item, state, result.state);
      // RFC 6121 3.1.2 and others: subscription stanzas travel between bare JIDs.
      stanza.attrs.from = bareOf(user);
      stanza.attrs.to = contact;
      if (result.route) ctx.send(stanza);
      if (result.sendPresence) await sendFromResources(user, contact, false);
      if (result.sendUnavailable) await sendFromResources(user, contact, true);
    }

    async function broadcastAvailable(session: Session, stanza: Element) {
      const user = session.jid.local;
      const full = session.jid.toString();
      const initial = !announced.has(session);
      announced.add(session);
      const own = await availableSessions(user);
      // RFC 6121 4.2.2 / 4.4.2: every available resource of the user, the sender included.
      for (const s of own) s.send(copy(stanza, full, s.jid.toString()));
      const items = await roster.items(user);
      for (const [jid, item] of items) if (hasFrom(item.subscription)) ctx.send(copy(stanza, full, jid));
      if (!initial) return;
      for (const s of own) {
        if (s !== session && s.presence) session.send(copy(s.presence, s.jid.toString(), full));
      }
      for (const [jid, item] of items) {
        if (hasTo(item.subscription)) ctx.send(presence({ type: 'probe', from: full, to: jid }));
        // 3.1.2: a request the contact has not answered yet is sent again.
        else if (item.ask) ctx.send(presence({ type: 'subscribe', from: bareOf(user), to: jid }));
      }
      // 3.1.3: requests that arrived while the user was away.
      for (const xml of (await requests.getAll(user)).values()) {
        session.send(parse(xml));
      }
    }

    async function broadcastUnavailable(session: Session, stanza: Element) {
      const user = session.jid.local;
      const full = session.jid.toString();
      const wasAvailable = announced.delete(session);
      const targets = directed.get(session);
      directed.delete(session);
      if (targets?.size) shareDirected(session);
      if (!wasAvailable && !targets) return;
      const reached = new Set<string>();
      if (wasAvailable) {
        session.send(copy(stanza, full, full));
        for (const s of await availableSessions(user)) {
          if (s !== session) s.send(copy(stanza, full, s.jid.toString()));
        }
        for (const [jid, item] of await roster.items(user)) {
          if (!hasFrom(item.subscription)) continue;
          ctx.send(copy(stanza, full, jid));
          reached.add(jid);
        }
      }
      // 4.6.3: whoever got directed presence learns that the session is gone.
      for (const target of targets ?? []) {
        const jid = Jid.tryParse(target);
        if (jid && !reached.has(jid.bare.toString())) ctx.send(copy(stanza, full, target));
      }
    }

    function trackDirected(session: Session, stanza: Element, to: Jid) {
      if (to.bare.equals(session.jid.bare)) return;
      const target = to.toString();
      if (stanza.attrs.type === 'unavailable') {
        if (directed.get(session)?.delete(target)) shareDirected(session);
        return;
      }
      let set = directed.get(session);
      if (!set) directed.set(session, (set = new Set()));
      if (set.has(target)) return;
      set.add(target);
      shareDirected(session);
    }

    const onOutbound = (ev: StanzaEvent) => {
      const { stanza, origin } = ev;
      if (!origin) return false;
      const type = stanza.attrs.type as string | undefined;
      const user = origin.jid.local;
      if (stanza.attrs.to === undefined) {
        // Broadcast presence; other types make no sense without an addressee.
        if (type !== undefined && type !== 'unavailable') return true;
        return roster
          .serialize(user, () =>
            type === undefined ? broadcastAvailable(origin, stanza) : broadcastUnavailable(origin, stanza),
          )
          .then(() => true);
      }
      if (isSubscriptionType(type)) {
        return roster
          .serialize(user, () => outboundSubscription(origin, stanza, type, ev.to))
          .then(() => true);
      }
      if (type === undefined || type === 'unavailable') trackDirected(origin, stanza, ev.to);
      return false;
    };
    ctx.hook('pre-presence/bare', onOutbound);
    ctx.hook('pre-presence/full', onOutbound);
    ctx.hook('pre-presence/host', onOutbound);

    // Cluster: a session resumed here from another node (stream management)
    // arrives available, without initial presence sent here: it counts as
    // announced (it goes offline for contacts when it ends, and its next
    // presence is no initial one), with the directed presence it sent there.
    ctx.hook('resource-bind', ({ session }) => {
      if (session.available) announced.add(session);
      const shared = session.getShared(SHARED_DIRECTED);
      if (!Array.isArray(shared)) return;
      const targets = shared.filter((t): t is string => typeof t === 'string');
      if (targets.length) directed.set(session, new Set(targets));
    });

    // A session that ends without unavailable presence still goes offline for
    // everyone; one that moved to another cluster node (stream management
    // resumption there) is still online.
    ctx.hook('resource-unbind', ({ session, reason }) =>
      reason === MOVED
        ? undefined
        : roster.serialize(session.jid.local, () =>
            broadcastUnavailable(session, presence({ type: 'unavailable', from: session.jid.toString() })),
          ),
    );

    // Cluster: a node died with this session on it. Nobody saw it go, so tell
    // the user's other resources and the contacts what its end would have.
    ctx.hook('remote-session-lost', ({ jid, wasAvailable }) => {
      if (!wasAvailable) return;
      const full = jid.toString();
      const stanza = presence({ type: 'unavailable', from: full });
      roster
        .serialize(jid.local, async () => {
          for (const s of await availableSessions(jid.local)) s.send(copy(stanza, full, s.jid.toString()));
          for (const [contact, item] of await roster.items(jid.local)) {
            if (hasFrom(item.subscription)) ctx.send(copy(stanza, full, contact));
          }
        })
        .catch((err: unknown) => ctx.log.error({ err, jid: full }, 'unavailable for a lost session failed'));
    });

    // ---- inbound: to a local user ----------------------------------------------------

    async function inboundSubscription(ev: StanzaEvent, type: SubscriptionType) {
      const user = ev.to.local;
      const contact = ev.from.bare.toString();
      if (contact === bareOf(user)) return;
      const { item, state } = await stateOf(user, contact);
      const result = inbound(type, state);
      if (result.deliver && type === 'subscribe' && !item && !(await ctx.accounts.exists(user))) {
        // RFC 6121 8.5.1: no such user.
        ctx.send(presence({ type: 'unsubscribed', from: bareOf(user), to: contact }));
        return;
      }
      const stanza = ev.stanza;
      stanza.attrs.from = contact;
      stanza.attrs.to = bareOf(user);
      if (result.state.pendingIn && !state.pendingIn) await requests.set(user, contact, serialize(stanza));
      await save(user, contact, item, state, result.state);
      if (result.deliver) for (const s of await availableSessions(user)) s.send(stanza);
      if (result.autoReply) ctx.send(presence({ type: 'subscribed', from: bareOf(user), to: contact }));
      if (result.sendPresence) await sendFromResources(user, contact, false);
      if (result.sendUnavailable) await sendFromResources(user, contact, true);
    }

    /** RFC 6121 4.3.2: a probe is answered only for subscribers. */
    async function answerProbe(ev: StanzaEvent) {
      const user = ev.to.local;
      const prober = ev.from.toString();
      const item = await roster.item(user, ev.from.bare.toString());
      if (!item || !hasFrom(item.subscription)) {
        if (!ev.from.bare.equals(ev.to.bare))
          ctx.send(presence({ type: 'unsubscribed', from: bareOf(user), to: ev.from.bare.toString() }));
        return;
      }
      let sessions = await availableSessions(user);
      if (ev.to.isFull) sessions = sessions.filter((s) => s.jid.equals(ev.to));
      if (sessions.length === 0)
        ctx.send(presence({ type: 'unavailable', from: ev.to.toString(), to: prober }));
      for (const s of sessions) if (s.presence) ctx.send(copy(s.presence, s.jid.toString(), prober));
    }

    /** Plain presence, delivered in order behind the user's queued work. */
    async function deliverInOrder(ev: StanzaEvent) {
      if (ev.to.isFull) {
        const session = await ctx.sessions.get(ev.to.toString());
        if (session) session.send(ev.stanza);
        return;
      }
      for (const s of await availableSessions(ev.to.local)) s.send(ev.stanza);
    }

    // Inbound work is started by whoever routed the stanza, often without
    // waiting for it: a failure is logged here rather than left unhandled.
    const inQueue = (user: string, what: string, task: () => Promise<void>) =>
      roster.serialize(user, task).then(
        () => true,
        (err: unknown) => {
          ctx.log.error({ err, user }, `inbound ${what} failed`);
          return true;
        },
      );

    const onInbound = (ev: StanzaEvent) => {
      const type = ev.stanza.attrs.type as string | undefined;
      const user = ev.to.local;
      if (type === 'probe') return inQueue(user, 'probe', () => answerProbe(ev));
      if (isSubscriptionType(type)) return inQueue(user, type, () => inboundSubscription(ev, type));
      if (!roster.busy(user)) return false; // the core delivers it right away
      return inQueue(user, 'presence', () => deliverInOrder(ev));
    };
    ctx.hook('presence/bare', onInbound);
    ctx.hook('presence/full', onInbound);

    // RFC 6121 3.4: pre-approval support is announced as a stream feature.
    ctx.hook('stream-features', ({ features }) => {
      features.push(new Element('sub', { xmlns: NS_PREAPPROVAL }));
    });

    // 2.5.2: removing a contact ends the subscriptions both ways.
    roster.onRemove(async (user, contact, previous) => {
      const pendingIn = (await requests.get(user, contact)) !== null;
      const from = bareOf(user);
      if (hasTo(previous.subscription) || previous.ask)
        ctx.send(presence({ type: 'unsubscribe', from, to: contact }));
      if (hasFrom(previous.subscription) || pendingIn)
        ctx.send(presence({ type: 'unsubscribed', from, to: contact }));
      if (pendingIn) await requests.set(user, contact, null);
      if (hasFrom(previous.subscription)) await sendFromResources(user, contact, true);
    });
  },
});
