// The typed event map. Event names follow Prosody's scheme, so module authors
// who know Prosody find their way; in TypeScript a misspelt event family is a
// compile error rather than a silent no-op.
import type { Element } from 'ltx';
import type { Jid } from '../jid.ts';
import type { ClientSession } from '../session/client-session.ts';
import type { Session, StreamInfo } from '../session/session.ts';
import type { StanzaErrorCondition, StanzaErrorOptions } from '../stanza.ts';

/** How the destination of a stanza relates to the host that handles it. */
export type AddressKind = 'bare' | 'full' | 'host';
/** IQs from a user to their own account (no `to`, or their own bare JID) are "self". */
export type IqAddressKind = AddressKind | 'self';
export type IqType = 'get' | 'set' | 'result' | 'error';

export interface StanzaEvent {
  stanza: Element;
  /** The local client session the stanza came from, or null for stanzas the server made. */
  origin: Session | null;
  /** The sender (always set: stamped by the router for client stanzas). */
  from: Jid;
  /** The addressee; for client stanzas without `to`, the sender's own bare JID. */
  to: Jid;
  /** The virtual host handling the event. */
  host: string;
}

export interface IqEvent extends StanzaEvent {
  /** The IQ's single payload element (get/set). */
  payload: Element;
  /** Sends a result, optionally with a payload. */
  reply(payload?: Element): void;
  /** Sends an error reply. */
  error(condition: StanzaErrorCondition, opts?: StanzaErrorOptions): void;
}

export interface SessionEvent {
  session: Session;
}

export interface SessionEndEvent extends SessionEvent {
  /**
   * Why the session ended: 'closed' (a closing handshake), 'error' (a stream
   * error, shutdown included), 'replaced' (resource conflict), or
   * 'disconnected' (the connection dropped without a closing tag), or
   * 'moved' (MOVED: it goes on on another cluster node; skip what only a real
   * end does, such as unavailable presence or offline storage).
   */
  reason: string;
}

export interface StreamFeaturesEvent {
  stream: StreamInfo;
  /** Append feature elements to this list. */
  features: Element[];
}

export interface StreamElementEvent {
  stream: StreamInfo;
  /** A top-level element that is not a stanza and that the core does not know. */
  element: Element;
  /** Writes an element to the stream. */
  send(element: Element): void;
  /**
   * Makes this authenticated but unbound stream carry a held session of the
   * same account (stream management resumption); false when not possible.
   */
  resume(session: Session): boolean;
  /**
   * Cluster resumption: creates and binds, on this authenticated, unbound
   * stream, a session of the same account that another node handed over.
   * `prepare` runs before the bind, so the directory entry starts with the
   * restored facts and nothing is delivered before the module is ready.
   * Resolves with the bound session, or null when this stream cannot take it
   * (not its owner, already bound, closed, too many resources).
   */
  adoptMoved?(jid: Jid, prepare: (session: ClientSession) => void): Promise<ClientSession | null>;
}

export interface SessionDisconnectedEvent extends SessionEvent {
  /** Keeps the session bound without a connection; the module must end it later with close(). */
  hold(): void;
}

export interface PreAuthIqEvent {
  stream: StreamInfo;
  stanza: Element;
  payload: Element;
  reply(payload?: Element): void;
  error(condition: StanzaErrorCondition, opts?: StanzaErrorOptions): void;
}

type StanzaEvents = {
  [K in `${'message' | 'presence'}/${AddressKind}`]: StanzaEvent;
} & {
  [K in `pre-${'message' | 'presence' | 'iq'}/${AddressKind}`]: StanzaEvent;
} & {
  [K in `iq/${IqAddressKind}`]: StanzaEvent;
} & {
  // Only requests are dispatched by payload; results and errors go to `iq/<kind>`.
  [K in `iq-${'get' | 'set'}/${IqAddressKind}/${string}`]: IqEvent;
};

export interface RemoteSessionLostEvent {
  /** The full JID of the session. */
  jid: Jid;
  /** It had sent available presence. */
  wasAvailable: boolean;
  /** The node it lived on. */
  node: string;
}

export type ChorusEvents = StanzaEvents & {
  /** A session bound a resource and can now send and receive stanzas. */
  'resource-bind': SessionEvent;
  /**
   * A session ended; its resource is gone. The session is already out of the
   * directory when this fires (modules rely on that to see "last session gone").
   */
  'resource-unbind': SessionEndEvent;
  /** A session's connection dropped without a closing handshake. */
  'session-disconnected': SessionDisconnectedEvent;
  /**
   * Cluster: a session of a node that stopped without ending it was removed
   * from the directory. Fired once in the cluster, on the node that cleaned
   * up, so that modules can do what 'resource-unbind' would have done for
   * others to see (the presence module tells contacts the resource is gone).
   */
  'remote-session-lost': RemoteSessionLostEvent;
  /**
   * A message (not groupchat or error) for a local bare JID that no session can take
   * (the account may not exist: the core default checks before bouncing).
   */
  'message/offline': StanzaEvent;
  /** A stanza for a domain that is not served here (s2s hooks in here). */
  'route/remote': StanzaEvent;
  /** Collecting the stream features to offer (after authentication). */
  'stream-features': StreamFeaturesEvent;
  /** Collecting the stream features to offer before authentication. */
  'stream-features/preauth': StreamFeaturesEvent;
  /** A non-stanza top-level element after authentication (e.g. stream management). */
  'stream-element': StreamElementEvent;
  /** An IQ before authentication (in-band registration). */
  'preauth-iq': PreAuthIqEvent;
};

export type ChorusEventName = keyof ChorusEvents;
