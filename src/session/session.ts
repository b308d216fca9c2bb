// What the rest of the server sees of a client session. The stream code
// (src/stream/c2s.ts) implements it; modules and the router only use this.
import type { Element } from 'ltx';
import type { Jid } from '../jid.ts';
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
  /** Delivers a stanza to the client. */
  send(stanza: Element): void;
  /** Ends the session, with a stream error when a condition is given. */
  close(condition?: StreamErrorCondition, text?: string): void;
}
