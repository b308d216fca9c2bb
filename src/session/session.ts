// What the rest of the server sees of a client session. The stream code
// (src/stream/c2s.ts) implements it; modules and the router only use this.
import type { Element } from 'ltx';
import type { Jid } from '../jid.ts';
import type { JsonValue } from '../storage/types.ts';
import type { StreamErrorCondition } from '../stream/errors.ts';

/** Facts about a stream, available before and after authentication. */
export interface StreamInfo {
  readonly id: string;
  /** The virtual host the client asked for in the stream header. */
  readonly host: string;
  readonly secure: boolean;
  readonly remoteAddress: string;
  /** Set once SASL succeeded. */
  readonly username: string | null;
  /** Set once a resource is bound. */
  readonly jid: Jid | null;
}

/**
 * Decides, before a stanza reaches the send listeners and the connection,
 * whether it goes on now ('deliver') or is held back ('hold'). A filter that
 * holds a stanza owns it: it passes it on later with release(), or drops it.
 */
export type SendFilter = (stanza: Element) => 'deliver' | 'hold';

/** A registered send filter. */
export interface SendFilterHandle {
  /**
   * Passes on a stanza this filter held: through the filters after this one,
   * then the send listeners, then the connection (dropped once the session
   * ended). May be called from inside the filter itself, to send held
   * stanzas ahead of the one being filtered. After remove(), a released
   * stanza goes through the whole chain.
   */
  release(stanza: Element): void;
  /** Unregisters the filter; it no longer sees stanzas. */
  remove(): void;
}

export interface Session {
  readonly id: string;
  /** The bound full JID. */
  readonly jid: Jid;
  readonly host: string;
  readonly secure: boolean;
  readonly remoteAddress: string;
  /** Sent initial presence and has not gone unavailable (RFC 6121 4.2). */
  available: boolean;
  /** Presence priority, -128..127; meaningful while available. */
  priority: number;
  /** The last broadcast presence, if any. */
  presence: Element | null;
  /** False while the session is held without a connection (stream management hibernation). */
  readonly connected: boolean;
  /** Stanzas received from the client since binding (for acknowledgement counting). */
  readonly stanzasIn: number;
  /**
   * Small per-session facts that modules on other cluster nodes need when
   * they route to this session (carbons enabled, roster requested, ...).
   * Setting one on a local session publishes it to the session directory;
   * a session of another node only reads them. Keys are namespaced by the
   * module that owns them, e.g. 'carbons:enabled'.
   */
  getShared(key: string): JsonValue | undefined;
  /**
   * Sets (or with undefined removes) a shared fact; local sessions only.
   * Settles once every node of a cluster sees the new value (at once without
   * one): a module that answers the client for the change answers after it,
   * so that what the client sends next finds the fact in place everywhere.
   * Setting the value a fact already has publishes nothing (and waits for
   * a publication still under way). Never rejects.
   */
  setShared(key: string, value: JsonValue | undefined): Promise<void>;
  /** Delivers a stanza to the client (or to the send listeners while no connection carries it). */
  send(stanza: Element): void;
  /** Writes a non-stanza element to the current connection, if any. */
  sendNonza(element: Element): void;
  /**
   * Sees every stanza as it is written, or queued while no connection
   * carries the session (after the send filters let it through); returns a remover.
   */
  addSendListener(listener: (stanza: Element) => void): () => void;
  /** Adds a filter that may hold outgoing stanzas back; filters run in the order added. */
  addSendFilter(filter: SendFilter): SendFilterHandle;
  /** Ends the session, with a stream error when a condition is given. */
  close(condition?: StreamErrorCondition, text?: string): void;
}
