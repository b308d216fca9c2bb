// The stanza router (DESIGN.md section 3). Client stanzas are stamped with
// the session's JID, checked, and then dispatched as events on the host they
// are addressed to; the default behaviour of RFC 6120/6121 is a set of
// low-priority handlers that modules can pre-empt.
import type { Element } from 'ltx';
import type { Logger } from 'pino';
import type { SessionDirectory } from '../cluster/directory.ts';
import { after } from '../events.ts';
import type { Host } from '../host.ts';
import { Jid } from '../jid.ts';
import type { Session } from '../session/session.ts';
import {
  childElements,
  errorReply,
  iqResult,
  validateIq,
  type StanzaErrorCondition,
  type StanzaErrorOptions,
} from '../stanza.ts';
import { StreamError } from '../stream/errors.ts';
import type { AddressKind, IqAddressKind, IqEvent, StanzaEvent } from './events.ts';

/**
 * Service affinity in a cluster: stanzas to a module's service (a MUC room,
 * say) are handled on one node per address, whose in-memory state is the
 * truth. Returns true when the stanza was sent to the owning node.
 */
export type ForwardToOwner = (stanza: Element, to: Jid) => boolean;

export interface RouterDeps {
  hosts: ReadonlyMap<string, Host>;
  directory: SessionDirectory;
  forwardToOwner?: ForwardToOwner | null;
  userExists(host: string, username: string): Promise<boolean>;
  log: Logger;
}

/** Priority of the core's default handlers: modules hook in above it. */
export const DEFAULT_PRIORITY = -1000;

type Result = void | Promise<void>;

export class Router {
  /** Stanzas routed since start, by outcome; read by metrics and tests. */
  readonly counters = { routed: 0, delivered: 0, bounced: 0, dropped: 0 };

  constructor(private readonly deps: RouterDeps) {}

  /**
   * A stanza from an authenticated, bound client session. Throws StreamError
   * for violations that end the stream (a forged `from`).
   */
  fromClient(session: Session, stanza: Element): Result {
    const claimed = stanza.attrs.from;
    const full = session.jid.toString();
    if (claimed !== undefined && claimed !== full) {
      // RFC 6120 8.1.2.1: the server MUST check a `from` the client provides;
      // only the session's own full or bare JID is acceptable.
      const parsed = Jid.tryParse(claimed);
      if (!parsed || !(parsed.equals(session.jid) || parsed.equals(session.jid.bare))) {
        throw new StreamError('invalid-from', `You are ${full}, not ${claimed}`);
      }
    }
    stanza.attrs.from = full;

    let to: Jid;
    const toAttr = stanza.attrs.to;
    if (toAttr !== undefined) {
      const parsed = Jid.tryParse(toAttr);
      if (!parsed) {
        // The error comes from the server, not from the malformed address.
        delete stanza.attrs.to;
        this.bounce(stanza, 'jid-malformed', { text: `'${toAttr}' is not a valid JID` }, session);
        return;
      }
      to = parsed;
      stanza.attrs.to = parsed.toString();
    } else {
      to = session.jid.bare;
    }

    if (stanza.name === 'iq') {
      const problem = validateIq(stanza);
      if (problem) {
        this.bounce(stanza, problem.condition, { text: problem.text }, session);
        return;
      }
    } else if (stanza.name === 'presence' && toAttr === undefined) {
      if (trackAvailability(session, stanza)) this.deps.directory.sessionChanged?.(session);
    }

    const host = this.deps.hosts.get(session.host);
    if (!host) return this.dispatch(stanza, session, session.jid, to);
    const event: StanzaEvent = { stanza, origin: session, from: session.jid, to, host: session.host };
    const pre = host.events.fire(`pre-${stanza.name as 'message'}/${addressKind(to)}`, event);
    return after(pre, (handled) => (handled ? undefined : this.dispatch(stanza, session, session.jid, to)));
  }

  /** Switches to another session directory (when the node joins a cluster). */
  useDirectory(directory: SessionDirectory, forwardToOwner: ForwardToOwner | null): void {
    this.deps.directory = directory;
    this.deps.forwardToOwner = forwardToOwner;
  }

  /**
   * Routes a stanza whose `from` is already trusted (server-made, or stamped).
   * `here`: handle it on this node even if another owns its service address
   * (it was forwarded here by the node that thought this one owns it).
   */
  route(stanza: Element, origin: Session | null = null, here = false): Result {
    const from = Jid.tryParse(stanza.attrs.from ?? '');
    const to = Jid.tryParse(stanza.attrs.to ?? '');
    if (!from || !to) {
      this.deps.log.warn(
        { stanza: stanza.toString().slice(0, 300) },
        'dropping a stanza without valid from/to',
      );
      this.counters.dropped++;
      return;
    }
    return this.dispatch(stanza, origin, from, to, here);
  }

  private dispatch(stanza: Element, origin: Session | null, from: Jid, to: Jid, here = false): Result {
    this.counters.routed++;
    const host = this.deps.hosts.get(to.domain);
    if (host?.kind === 'service' && !here && this.deps.forwardToOwner?.(stanza, to)) return;
    const event: StanzaEvent = { stanza, origin, from, to, host: to.domain };
    if (!host) {
      const originHost = this.deps.hosts.get(origin?.host ?? from.domain);
      const handled = originHost ? originHost.events.fire('route/remote', event) : false;
      return after(handled, (done) => {
        if (!done)
          this.bounce(stanza, 'remote-server-not-found', { text: `${to.domain} is not served here` });
      });
    }
    const kind = addressKind(to);
    if (stanza.name !== 'iq') return ignore(host.events.fire(`${stanza.name as 'message'}/${kind}`, event));

    const type = stanza.attrs.type as 'get' | 'set' | 'result' | 'error';
    const iqKind: IqAddressKind =
      kind === 'bare' && (origin ? !stanza.attrs.to || to.equals(from.bare) : false) ? 'self' : kind;
    if (type === 'result' || type === 'error') {
      if (kind === 'host' && host.settleIq(stanza)) return;
      return ignore(host.events.fire(`iq/${iqKind}`, event));
    }
    const payload = childElements(stanza)[0];
    const iqEvent = this.iqEvent(event, payload);
    const specific = host.events.fire(
      `iq-${type}/${iqKind}/${payload.getNS() ?? ''}:${payload.getName()}`,
      iqEvent,
    );
    return after(specific, (handled) =>
      handled ? undefined : ignore(host.events.fire(`iq/${iqKind}`, iqEvent)),
    );
  }

  // reply and error are made by the two methods below rather than written
  // inline: tsx compiles with esbuild's keepNames, which wraps a function
  // written as an object property in a __name() call (about 1 µs each, per IQ).
  private iqEvent(event: StanzaEvent, payload: Element): IqEvent {
    return { ...event, payload, reply: this.replier(event), error: this.bouncer(event) };
  }

  private replier(event: StanzaEvent): IqEvent['reply'] {
    return (result) => this.sendReply(iqResult(event.stanza, result), event.origin);
  }

  private bouncer(event: StanzaEvent): IqEvent['error'] {
    return (condition, opts) => this.bounce(event.stanza, condition, opts, event.origin);
  }

  /** Sends an error reply for `stanza` (never for an error stanza). */
  bounce(
    stanza: Element,
    condition: StanzaErrorCondition,
    opts?: StanzaErrorOptions,
    origin?: Session | null,
  ): void {
    const reply = errorReply(stanza, condition, opts);
    if (!reply) {
      this.counters.dropped++;
      return;
    }
    this.counters.bounced++;
    this.sendReply(reply, origin ?? null);
  }

  /** Replies go straight back to a local origin; anything else is routed. */
  private sendReply(reply: Element, origin: Session | null): void {
    if (origin && (reply.attrs.to === undefined || reply.attrs.to === origin.jid.toString())) {
      this.counters.delivered++;
      origin.send(reply);
      return;
    }
    if (reply.attrs.from === undefined) {
      this.counters.dropped++;
      return;
    }
    void this.route(reply, null);
  }

  deliver(session: Session, stanza: Element): void {
    this.counters.delivered++;
    session.send(stanza);
  }

  /** Installs RFC 6120/6121 default behaviour on a host, below every module. */
  installDefaults(host: Host): void {
    const on = host.events.on.bind(host.events);
    const { directory } = this.deps;

    const serviceUnavailable = (ev: StanzaEvent): true => {
      const type = ev.stanza.attrs.type;
      if (type === 'get' || type === 'set')
        this.bounce(ev.stanza, 'service-unavailable', undefined, ev.origin);
      else this.counters.dropped++;
      return true;
    };
    for (const kind of ['host', 'self', 'bare'] as const)
      on(`iq/${kind}`, serviceUnavailable, DEFAULT_PRIORITY);
    on(
      'iq/full',
      (ev) =>
        after(directory.get(ev.to.toString()), (session) => {
          if (session) this.deliver(session, ev.stanza);
          else serviceUnavailable(ev);
          return true as const;
        }),
      DEFAULT_PRIORITY,
    );

    on(
      'message/full',
      (ev) =>
        after(directory.get(ev.to.toString()), (session): boolean | Promise<boolean> => {
          if (session) {
            this.deliver(session, ev.stanza);
            return true;
          }
          // RFC 6121 8.5.3.2.1: no such resource.
          switch (messageType(ev.stanza)) {
            case 'chat':
            case 'normal':
              return after(host.events.fire('message/bare', { ...ev, to: ev.to.bare }), () => true);
            case 'groupchat':
              this.bounce(ev.stanza, 'service-unavailable', undefined, ev.origin);
              return true;
            default: // headline, error: silently ignored
              this.counters.dropped++;
              return true;
          }
        }),
      DEFAULT_PRIORITY,
    );

    on('message/bare', (ev) => this.messageToBare(host, ev), DEFAULT_PRIORITY);
    on(
      'message/offline',
      (ev) =>
        after(this.deps.userExists(ev.to.domain, ev.to.local), (exists) => {
          const type = messageType(ev.stanza);
          // Nothing is dropped silently that a user would miss: chat and normal
          // messages that no one can take are bounced to the sender.
          if (type === 'chat' || type === 'normal' || (type === 'groupchat' && !exists)) {
            this.bounce(ev.stanza, 'service-unavailable', undefined, ev.origin);
          } else {
            this.counters.dropped++;
          }
          return true as const;
        }),
      DEFAULT_PRIORITY,
    );
    on(
      'message/host',
      (ev) => {
        const type = messageType(ev.stanza);
        if (type === 'chat' || type === 'normal')
          this.bounce(ev.stanza, 'service-unavailable', undefined, ev.origin);
        else this.counters.dropped++;
        return true;
      },
      DEFAULT_PRIORITY,
    );

    on(
      'presence/bare',
      (ev) =>
        after(directory.resources(ev.to.bareString()), (sessions) => {
          const type = ev.stanza.attrs.type;
          // Probes are answered by the presence module; the core has no roster.
          if (type !== 'probe') for (const s of sessions) if (s.available) this.deliver(s, ev.stanza);
          return true as const;
        }),
      DEFAULT_PRIORITY,
    );
    on(
      'presence/full',
      (ev) =>
        after(directory.get(ev.to.toString()), (session) => {
          if (session && ev.stanza.attrs.type !== 'probe') this.deliver(session, ev.stanza);
          else this.counters.dropped++;
          return true as const;
        }),
      DEFAULT_PRIORITY,
    );
    on(
      'presence/host',
      () => {
        this.counters.dropped++;
        return true;
      },
      DEFAULT_PRIORITY,
    );
  }

  /** RFC 6121 8.5.2: a message to a local user's bare JID. */
  private messageToBare(host: Host, ev: StanzaEvent): boolean | Promise<boolean> {
    const type = messageType(ev.stanza);
    if (type === 'error') {
      this.counters.dropped++;
      return true;
    }
    if (type === 'groupchat') {
      this.bounce(ev.stanza, 'service-unavailable', undefined, ev.origin);
      return true;
    }
    return after(this.deps.directory.resources(ev.to.bareString()), (sessions) => {
      const targets = bareMessageRecipients(ev.stanza, sessions);
      if (targets.length === 0) return after(host.events.fire('message/offline', ev), () => true);
      for (const s of targets) this.deliver(s, ev.stanza);
      return true;
    });
  }
}

/** RFC 6121 5.2.2: a message without a type, or of a type not defined there, is "normal". */
function messageType(message: Element): 'chat' | 'error' | 'groupchat' | 'headline' | 'normal' {
  const type = message.attrs.type;
  return type === 'chat' || type === 'error' || type === 'groupchat' || type === 'headline' ? type : 'normal';
}

/**
 * Who gets a message addressed to a user's bare JID (RFC 6121 8.5.2.1):
 * available resources of non-negative priority; chat only the highest of
 * them (carbons copy it to the rest). Exported so modules that must know the
 * recipients (carbons) decide exactly as the router does.
 */
export function bareMessageRecipients(message: Element, sessions: readonly Session[]): Session[] {
  const type = messageType(message);
  if (type === 'error' || type === 'groupchat') return [];
  const targets = sessions.filter((s) => s.available && s.priority >= 0);
  if (type !== 'chat' || targets.length < 2) return targets;
  const top = Math.max(...targets.map((s) => s.priority));
  return targets.filter((s) => s.priority === top);
}

export function addressKind(to: Jid): AddressKind {
  if (!to.local) return 'host';
  return to.resource ? 'full' : 'bare';
}

/** RFC 6121 4.2/4.4: broadcast presence makes a session available or not; true if it did. */
function trackAvailability(session: Session, presence: Element): boolean {
  const type = presence.attrs.type;
  if (type === undefined) {
    session.available = true;
    const text = presence.getChildText('priority');
    const priority = text === null ? 0 : Number.parseInt(text, 10);
    session.priority = Number.isFinite(priority) ? Math.max(-128, Math.min(127, priority)) : 0;
    session.presence = presence;
    return true;
  }
  if (type === 'unavailable') {
    session.available = false;
    session.presence = null;
    return true;
  }
  return false;
}

function ignore(value: boolean | Promise<boolean>): Result {
  if (value instanceof Promise) return value.then(() => undefined);
}
