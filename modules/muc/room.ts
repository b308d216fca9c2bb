// The state of one room: its configuration, affiliations (kept across
// visits), occupants (who is in now, with their role) and subject. Pure
// data and privilege rules; sending is done by the parts that use it.
import type { Element } from 'ltx';

export type Affiliation = 'owner' | 'admin' | 'member' | 'outcast' | 'none';
export type Role = 'moderator' | 'participant' | 'visitor' | 'none';

export const AFFILIATIONS: readonly Affiliation[] = ['owner', 'admin', 'member', 'outcast', 'none'];
export const ROLES: readonly Role[] = ['moderator', 'participant', 'visitor', 'none'];

const AFFILIATION_RANK: Record<Affiliation, number> = { owner: 4, admin: 3, member: 2, none: 1, outcast: 0 };

export function affiliationRank(a: Affiliation): number {
  return AFFILIATION_RANK[a];
}

export interface RoomConfig {
  name: string;
  description: string;
  persistent: boolean;
  public: boolean;
  membersOnly: boolean;
  passwordProtected: boolean;
  password: string;
  moderated: boolean;
  /** Who may see occupants' real JIDs. */
  whois: 'moderators' | 'anyone';
  allowInvites: boolean;
  /** Whether participants (not only moderators) may change the subject. */
  changeSubject: boolean;
  /** 0: no limit. */
  maxUsers: number;
  /** Most messages of history sent on join. */
  historyLength: number;
}

export interface Subject {
  text: string;
  /** The nick that set it ('' when the room itself did). */
  nick: string;
}

/** What is stored for a persistent room. */
export interface StoredRoom {
  config: RoomConfig;
  affiliations: Record<string, Affiliation>;
  /** Nicks reserved by registration (XEP-0045 7.10), by real bare JID; absent in older records. */
  nicks?: Record<string, string>;
  subject: Subject;
}

export class Occupant {
  role: Role;
  /** Each joined device (full JID) and the presence it last sent to the room. */
  readonly sessions = new Map<string, Element>();

  constructor(
    public nick: string,
    /** The real bare JID; every session of an occupant shares it. */
    readonly bare: string,
    role: Role,
    readonly occupantId: string,
  ) {
    this.role = role;
  }

  /** The presence shown to others: the one the most recent session sent. */
  get presence(): Element {
    let last: Element | undefined;
    for (const p of this.sessions.values()) last = p;
    if (!last) throw new Error(`occupant ${this.nick} has no session`);
    return last;
  }

  /** A real full JID to show to those who may see it. */
  get realJid(): string {
    let last = this.bare;
    for (const full of this.sessions.keys()) last = full;
    return last;
  }
}

export class Room {
  readonly affiliations = new Map<string, Affiliation>();
  /**
   * Registered nicks (XEP-0045 7.10) by real bare JID. A registration goes
   * with an affiliation: it is dropped when the affiliation becomes none or
   * outcast (see setAffiliation).
   */
  private readonly reserved = new Map<string, string>();
  /** When each person's last voice request went to the moderators (voice.ts), by real bare JID. */
  readonly voiceRequests = new Map<string, number>();
  /** By nick. */
  readonly occupants = new Map<string, Occupant>();
  private readonly bySession = new Map<string, Occupant>();
  subject: Subject = { text: '', nick: '' };
  /** XEP-0045 10.1: a new room admits no one but its owner until configured. */
  locked = false;

  constructor(
    /** The room's localpart. */
    readonly name: string,
    /** The room's bare JID. */
    readonly jid: string,
    public config: RoomConfig,
  ) {}

  affiliation(bare: string): Affiliation {
    return this.affiliations.get(bare) ?? 'none';
  }

  setAffiliation(bare: string, a: Affiliation): void {
    if (a === 'none' || a === 'outcast') this.reserved.delete(bare);
    if (a === 'none') this.affiliations.delete(bare);
    else this.affiliations.set(bare, a);
  }

  /** The nick `bare` registered with the room, if any. */
  reservedNick(bare: string): string | undefined {
    return this.reserved.get(bare);
  }

  /** Who registered `nick`, if anyone. */
  nickOwner(nick: string): string | undefined {
    for (const [bare, n] of this.reserved) if (n === nick) return bare;
    return undefined;
  }

  /** Reserves `nick` for `bare` (replacing their earlier one), or frees it with undefined. */
  reserveNick(bare: string, nick: string | undefined): void {
    if (nick === undefined) this.reserved.delete(bare);
    else this.reserved.set(bare, nick);
  }

  /** Whether `nick` is registered by someone other than `bare`. */
  nickReservedByOther(nick: string, bare: string): boolean {
    const owner = this.nickOwner(nick);
    return owner !== undefined && owner !== bare;
  }

  owners(): string[] {
    return [...this.affiliations].filter(([, a]) => a === 'owner').map(([j]) => j);
  }

  /** The role an occupant gets on entering (XEP-0045 5.1). */
  defaultRole(bare: string): Role {
    const a = this.affiliation(bare);
    if (a === 'owner' || a === 'admin') return 'moderator';
    if (a === 'outcast') return 'none';
    if (a === 'none' && this.config.moderated) return 'visitor';
    return 'participant';
  }

  bySessionJid(full: string): Occupant | undefined {
    return this.bySession.get(full);
  }

  /** Occupants whose real bare JID is `bare` (at most one, as nicks are per person). */
  byBare(bare: string): Occupant | undefined {
    for (const o of this.occupants.values()) if (o.bare === bare) return o;
    return undefined;
  }

  addSession(occupant: Occupant, full: string, presence: Element): void {
    this.occupants.set(occupant.nick, occupant);
    occupant.sessions.set(full, presence);
    this.bySession.set(full, occupant);
  }

  /** Removes one device; returns true when that was the occupant's last one. */
  removeSession(occupant: Occupant, full: string): boolean {
    occupant.sessions.delete(full);
    this.bySession.delete(full);
    if (occupant.sessions.size > 0) return false;
    this.occupants.delete(occupant.nick);
    return true;
  }

  removeOccupant(occupant: Occupant): void {
    for (const full of occupant.sessions.keys()) this.bySession.delete(full);
    occupant.sessions.clear();
    this.occupants.delete(occupant.nick);
  }

  rename(occupant: Occupant, nick: string): void {
    this.occupants.delete(occupant.nick);
    occupant.nick = nick;
    this.occupants.set(nick, occupant);
  }

  /** Whether `viewer` may see the real JIDs of occupants. */
  showsJidsTo(viewer: Occupant | undefined): boolean {
    return this.config.whois === 'anyone' || viewer?.role === 'moderator';
  }

  mayChangeSubject(o: Occupant): boolean {
    return o.role === 'moderator' || (this.config.changeSubject && o.role === 'participant');
  }

  /** Every session of every occupant, with its occupant. */
  *sessions(): Iterable<[string, Occupant]> {
    for (const o of this.occupants.values()) for (const full of o.sessions.keys()) yield [full, o];
  }

  toStored(): StoredRoom {
    return {
      config: { ...this.config },
      affiliations: Object.fromEntries(this.affiliations),
      nicks: Object.fromEntries(this.reserved),
      subject: this.subject,
    };
  }

  static fromStored(name: string, jid: string, stored: StoredRoom, defaults: RoomConfig): Room {
    const room = new Room(name, jid, { ...defaults, ...stored.config });
    for (const [bare, a] of Object.entries(stored.affiliations ?? {})) {
      if (AFFILIATIONS.includes(a)) room.setAffiliation(bare, a);
    }
    for (const [bare, nick] of Object.entries(stored.nicks ?? {})) {
      const a = room.affiliation(bare);
      if (typeof nick === 'string' && nick !== '' && a !== 'none' && a !== 'outcast')
        room.reserveNick(bare, nick);
    }
    if (stored.subject) room.subject = { text: stored.subject.text ?? '', nick: stored.subject.nick ?? '' };
    return room;
  }
}
