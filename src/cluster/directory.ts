// The session directory: which sessions exist for a JID. The router asks it
// where to deliver. The in-process directory is the single-node default; a
// Redis-backed directory (cluster issue) implements the same interface and
// returns proxies for sessions on other nodes, hence the MaybePromise results.
import type { Session } from '../session/session.ts';

export type MaybePromise<T> = T | Promise<T>;

export type ConflictPolicy = 'replace_old' | 'refuse_new';

export type BindOutcome =
  { ok: true; replaced: Session | null } | { ok: false; reason: 'conflict' | 'too-many' };

export interface SessionDirectory {
  /** Registers a bound session, applying the resource conflict policy. */
  bind(session: Session, policy: ConflictPolicy, maxResources: number): MaybePromise<BindOutcome>;
  unbind(session: Session): MaybePromise<void>;
  /** The session bound to exactly this full JID. */
  get(fullJid: string): MaybePromise<Session | undefined>;
  /** All sessions of a bare JID. */
  resources(bareJid: string): MaybePromise<Session[]>;
  /**
   * A bound session's availability, priority, presence, connection or
   * shared facts changed. A distributed directory republishes its entry;
   * the promise settles once the other nodes can see the change (it never
   * rejects: a directory that cannot publish logs why).
   */
  sessionChanged?(session: Session): void | Promise<void>;
  /** Number of sessions known to this node. */
  readonly size: number;
  all(): Iterable<Session>;
}

export class InProcessDirectory implements SessionDirectory {
  private readonly byBare = new Map<string, Map<string, Session>>();
  private count = 0;

  bind(session: Session, policy: ConflictPolicy, maxResources: number): BindOutcome {
    const bare = session.jid.bareString();
    let resources = this.byBare.get(bare);
    if (!resources) {
      resources = new Map();
      this.byBare.set(bare, resources);
    }
    const existing = resources.get(session.jid.resource);
    if (existing && existing !== session) {
      if (policy === 'refuse_new') return { ok: false, reason: 'conflict' };
      resources.set(session.jid.resource, session);
      return { ok: true, replaced: existing };
    }
    if (!existing && resources.size >= maxResources) return { ok: false, reason: 'too-many' };
    if (!existing) this.count++;
    resources.set(session.jid.resource, session);
    return { ok: true, replaced: null };
  }

  unbind(session: Session): void {
    const bare = session.jid.bareString();
    const resources = this.byBare.get(bare);
    // Only remove the entry if it still points at this session: a session
    // replaced by a newer one with the same resource must not evict it.
    if (resources?.get(session.jid.resource) === session) {
      resources.delete(session.jid.resource);
      this.count--;
      if (resources.size === 0) this.byBare.delete(bare);
    }
  }

  get(fullJid: string): Session | undefined {
    const slash = fullJid.indexOf('/');
    if (slash < 0) return undefined;
    return this.byBare.get(fullJid.slice(0, slash))?.get(fullJid.slice(slash + 1));
  }

  resources(bareJid: string): Session[] {
    const resources = this.byBare.get(bareJid);
    return resources ? [...resources.values()] : [];
  }

  get size(): number {
    return this.count;
  }

  *all(): Iterable<Session> {
    for (const resources of this.byBare.values()) yield* resources.values();
  }
}
