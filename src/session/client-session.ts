// A bound client session. It outlives the connection that created it when a
// module holds it (stream management hibernation) and can be taken over by
// a new connection (resumption); the router and modules only ever see this
// object, never the connection behind it.
import { randomBytes } from 'node:crypto';
import type { Element } from 'ltx';
import { serialize } from '../xml/element.ts';
import type { Logger } from 'pino';
import type { SessionDirectory } from '../cluster/directory.ts';
import type { Host } from '../host.ts';
import type { Jid } from '../jid.ts';
import type { JsonValue } from '../storage/types.ts';
import type { StreamErrorCondition } from '../stream/errors.ts';
import type { SendFilter, SendFilterHandle, Session } from './session.ts';

/** What a session needs from the stream that currently carries it. */
export interface SessionConnection {
  readonly secure: boolean;
  readonly remoteAddress: string;
  /** Writes serialized XML to the client. */
  write(data: string): void;
  /** Closes the connection, with a stream error when a condition is given. */
  close(condition?: StreamErrorCondition, text?: string): void;
  /** Closes the connection without ending the session (it moved elsewhere). */
  abandon(condition: StreamErrorCondition, text: string): void;
}

/** Why a connection went away, as the stream saw it. */
export type ConnectionEnd = 'closed' | 'error' | 'replaced' | 'disconnected';

/**
 * The end reason of a session that continues on another cluster node
 * (stream management resumption there). resource-unbind handlers skip what
 * only a real end does (unavailable presence, offline storage, last activity).
 */
export const MOVED = 'moved';

export class ClientSession implements Session {
  readonly id = randomBytes(9).toString('base64url');
  available = false;
  priority = 0;
  presence: Element | null = null;
  /** Stanzas received from the client since binding (acknowledgement counting). */
  stanzasIn = 0;
  private connection: SessionConnection | null;
  private lastSecure: boolean;
  private lastAddress: string;
  private readonly sendListeners: ((stanza: Element) => void)[] = [];
  /** One object per registration, so that release() finds its own place in the chain. */
  private readonly sendFilters: { filter: SendFilter }[] = [];
  private endPromise: Promise<void> | null = null;
  private movingOut = false;
  private readonly shared = new Map<string, JsonValue>();
  /** The latest publication of a shared fact: what setShared of an unchanged value waits for. */
  private sharedPublished: Promise<void> = Promise.resolve();

  constructor(
    readonly jid: Jid,
    private readonly hostObj: Host,
    connection: SessionConnection,
    private readonly directory: SessionDirectory,
    private readonly log: Logger,
  ) {
    this.connection = connection;
    this.lastSecure = connection.secure;
    this.lastAddress = connection.remoteAddress;
  }

  get host(): string {
    return this.hostObj.domain;
  }

  get secure(): boolean {
    return this.connection?.secure ?? this.lastSecure;
  }

  get remoteAddress(): string {
    return this.connection?.remoteAddress ?? this.lastAddress;
  }

  /** False while the session is held without a connection. */
  get connected(): boolean {
    return this.connection !== null;
  }

  get isEnded(): boolean {
    return this.endPromise !== null;
  }

  /** Settles once the session has ended and resource-unbind handlers ran. */
  get ended(): Promise<void> {
    return this.endPromise ?? Promise.resolve();
  }

  getShared(key: string): JsonValue | undefined {
    return this.shared.get(key);
  }

  setShared(key: string, value: JsonValue | undefined): Promise<void> {
    // Setting what is already there publishes nothing, but still waits for
    // the publication that is under way: only then do the other nodes see it.
    const unchanged = value === undefined ? !this.shared.has(key) : this.shared.get(key) === value;
    if (unchanged) return this.sharedPublished;
    if (value === undefined) this.shared.delete(key);
    else this.shared.set(key, value);
    if (!this.endPromise) this.sharedPublished = Promise.resolve(this.directory.sessionChanged?.(this));
    return this.sharedPublished;
  }

  /** Every shared fact, for the session directory. */
  sharedFacts(): Record<string, JsonValue> {
    return Object.fromEntries(this.shared);
  }

  send(stanza: Element): void {
    this.pass(stanza, 0);
  }

  /** Filters from index `first` on, then listeners, then the connection. */
  private pass(stanza: Element, first: number): void {
    if (this.endPromise) return;
    for (let i = first; i < this.sendFilters.length; i++) {
      if (this.sendFilters[i]!.filter(stanza) === 'hold') return;
    }
    // Listeners see every stanza that is let through, also while no
    // connection carries the session: that is how stream management queues
    // for a resumption (and why held stanzas are counted only once released).
    for (const listener of this.sendListeners) listener(stanza);
    this.connection?.write(serialize(stanza));
  }

  /** Writes a non-stanza element (stream management acks and the like). */
  sendNonza(element: Element): void {
    this.connection?.write(serialize(element));
  }

  addSendListener(listener: (stanza: Element) => void): () => void {
    this.sendListeners.push(listener);
    return () => {
      const i = this.sendListeners.indexOf(listener);
      if (i >= 0) this.sendListeners.splice(i, 1);
    };
  }

  addSendFilter(filter: SendFilter): SendFilterHandle {
    const entry = { filter };
    this.sendFilters.push(entry);
    return {
      // indexOf is -1 once removed: the stanza then goes through the whole chain.
      release: (stanza) => this.pass(stanza, this.sendFilters.indexOf(entry) + 1),
      remove: () => {
        const i = this.sendFilters.indexOf(entry);
        if (i >= 0) this.sendFilters.splice(i, 1);
      },
    };
  }

  close(condition?: StreamErrorCondition, text?: string): void {
    // A session being handed over ends only as its mover decides (end(MOVED),
    // or cancelMove() then close()): the resuming node's bind replaces our
    // directory entry, which arrives here as a close with 'conflict'.
    if (this.movingOut) return;
    if (this.connection) this.connection.close(condition, text);
    else void this.end(condition === 'conflict' ? 'replaced' : 'expired');
  }

  /**
   * Starts handing the session over to another node: drops the connection
   * that still carries it, if any (as a resumption here would), and ignores
   * close() from now on. Stanzas sent meanwhile still reach the send
   * listeners, which queue them for the new node.
   */
  beginMove(): void {
    if (this.endPromise) return;
    this.movingOut = true;
    const previous = this.connection;
    this.connection = null;
    previous?.abandon('conflict', 'The session was resumed on another connection');
  }

  /** The handover failed: the session is an ordinary held session again. */
  cancelMove(): void {
    this.movingOut = false;
  }

  /**
   * The connection went away. A connection lost without a closing handshake
   * may be held by a module (hibernation); otherwise the session ends.
   */
  connectionLost(connection: SessionConnection, how: ConnectionEnd): Promise<void> {
    if (connection !== this.connection || this.endPromise) return this.ended;
    if (how === 'disconnected') {
      let held = false;
      const fired = this.hostObj.events.fire('session-disconnected', {
        session: this,
        hold: () => {
          held = true;
        },
      });
      const decide = () => {
        if (held) {
          this.connection = null;
          this.directory.sessionChanged?.(this);
          this.log.info({ jid: this.jid.toString() }, 'connection lost; session held for resumption');
          return this.ended;
        }
        return this.end(how);
      };
      return fired instanceof Promise ? fired.then(decide, () => this.end(how)) : decide();
    }
    return this.end(how);
  }

  /** A new connection takes over this session (stream management resumption). */
  attach(connection: SessionConnection): void {
    const previous = this.connection;
    this.connection = connection;
    this.lastSecure = connection.secure;
    this.lastAddress = connection.remoteAddress;
    previous?.abandon('conflict', 'The session was resumed on another connection');
    if (!previous) this.directory.sessionChanged?.(this);
  }

  /** Ends the session: unbinds it and tells the modules. */
  end(reason: string): Promise<void> {
    this.endPromise ??= this.finish(reason);
    return this.endPromise;
  }

  private async finish(reason: string): Promise<void> {
    await this.directory.unbind(this);
    try {
      await this.hostObj.events.fire('resource-unbind', { session: this, reason });
    } catch (err) {
      this.log.error({ err }, 'resource-unbind handler failed');
    }
  }
}
