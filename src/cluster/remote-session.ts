// A session bound on another cluster node, as this node sees it: the facts
// its directory entry holds, and a send() that crosses the node bus. Modules
// and the router treat it like a local session; the operations that only
// make sense where the connection lives (send filters, nonzas) throw.
import { parse, type Element } from 'ltx';
import { Jid } from '../jid.ts';
import type { SendFilterHandle, Session } from '../session/session.ts';
import type { JsonValue } from '../storage/types.ts';
import type { StreamErrorCondition } from '../stream/errors.ts';

/** One session as the Redis directory stores it (short keys: it is stored per session). */
export interface DirectoryEntry {
  /** Node id. */
  n: string;
  /** Session id, so a stale update or unbind never touches a newer session. */
  s: string;
  /** Available (sent initial presence). */
  a: 0 | 1;
  /** Priority. */
  p: number;
  /** Last broadcast presence, serialized, or ''. */
  x: string;
  /** Connected (0 while held for stream management resumption). */
  c: 0 | 1;
  /** Shared facts. */
  h: Record<string, JsonValue>;
  /** Secure connection. */
  t: 0 | 1;
}

/** How a remote session reaches its node. */
export interface RemoteSessionTransport {
  sendStanza(node: string, fullJid: string, sessionId: string, stanza: Element): void;
  closeSession(
    node: string,
    fullJid: string,
    sessionId: string,
    condition?: StreamErrorCondition,
    text?: string,
  ): void;
}

export class RemoteSession implements Session {
  readonly jid: Jid;
  readonly remoteAddress = '';
  readonly stanzasIn = 0;
  available: boolean;
  priority: number;
  private parsedPresence: Element | null | undefined;

  constructor(
    fullJid: string,
    private readonly entry: DirectoryEntry,
    private readonly transport: RemoteSessionTransport,
  ) {
    this.jid = Jid.parse(fullJid);
    this.available = entry.a === 1;
    this.priority = entry.p;
  }

  get id(): string {
    return this.entry.s;
  }

  /** The node the session lives on. */
  get node(): string {
    return this.entry.n;
  }

  get host(): string {
    return this.jid.domain;
  }

  get secure(): boolean {
    return this.entry.t === 1;
  }

  get connected(): boolean {
    return this.entry.c === 1;
  }

  /** Parsed on first use: most routing decisions never look at it. */
  get presence(): Element | null {
    if (this.parsedPresence === undefined) {
      this.parsedPresence = this.entry.x ? (parse(this.entry.x) as Element) : null;
    }
    return this.parsedPresence;
  }

  set presence(value: Element | null) {
    this.parsedPresence = value;
  }

  getShared(key: string): JsonValue | undefined {
    return this.entry.h[key];
  }

  setShared(): Promise<void> {
    throw new Error(`shared facts of ${this.jid.toString()} can only be set on node ${this.entry.n}`);
  }

  send(stanza: Element): void {
    this.transport.sendStanza(this.entry.n, this.jid.toString(), this.entry.s, stanza);
  }

  /** Nonzas belong to the connection, which is on the other node. */
  sendNonza(): void {}

  addSendListener(): () => void {
    throw new Error(
      `send listeners can only be added on node ${this.entry.n}, where ${this.jid.toString()} is`,
    );
  }

  addSendFilter(): SendFilterHandle {
    throw new Error(
      `send filters can only be added on node ${this.entry.n}, where ${this.jid.toString()} is`,
    );
  }

  close(condition?: StreamErrorCondition, text?: string): void {
    this.transport.closeSession(this.entry.n, this.jid.toString(), this.entry.s, condition, text);
  }
}
