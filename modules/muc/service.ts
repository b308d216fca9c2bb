// What every part of the MUC module shares: the rooms of the service, the
// stores, and the fan-out that sends a room's stanzas to its occupants.
//
// Fan-out cost (DESIGN.md: "one serialization plus one write per online
// occupant"): the payload of a room stanza is frozen once, so every
// recipient's stanza is a fresh shell (its own `to`) around the same child
// elements, and each child is serialized only the first time.
import { createHash, randomBytes } from 'node:crypto';
import { Element } from 'ltx';
import type { ModuleContext, ServiceContext } from '../../src/modules/api.ts';
import {
  childElements,
  errorReply,
  NS_CLIENT,
  type StanzaErrorCondition,
  type StanzaErrorOptions,
} from '../../src/stanza.ts';
import type { ArchiveStore, KeyValStore } from '../../src/storage/types.ts';
import { NS_MUC, NS_OCCUPANT_ID, NS_USER } from './ns.ts';
import { Occupant, Room, type RoomConfig, type StoredRoom } from './room.ts';

export interface MucOptions {
  domain?: string | undefined;
  name: string;
  /** Who may create rooms: anyone with an account on the host, or any JID. */
  room_creation: 'local' | 'anyone';
  default_history: number;
  max_history: number;
  defaults: {
    persistent: boolean;
    public: boolean;
    members_only: boolean;
    moderated: boolean;
    whois: 'moderators' | 'anyone';
    allow_invites: boolean;
    change_subject: boolean;
    max_users: number;
  };
}

/** An element whose serialization is computed once and reused for every recipient. */
class FrozenElement extends Element {
  private serialized: string | undefined;

  override write(writer: (part: string) => void): void {
    if (this.serialized === undefined) {
      let s = '';
      super.write((part) => {
        s += part;
      });
      this.serialized = s;
    }
    writer(this.serialized);
  }
}

/**
 * The parent of frozen children, shared by every recipient's copy: it only
 * makes namespace look-ups (getNS) of unprefixed children find jabber:client,
 * as they would inside a parsed stanza (the archive and carbons rely on it).
 */
const STANZA_PARENT = new Element('message', { xmlns: NS_CLIENT });

export function freeze(element: Element): Element {
  if (element instanceof FrozenElement) return element;
  const frozen = new FrozenElement(element.name, { ...element.attrs });
  frozen.parent = STANZA_PARENT;
  for (const child of element.children) {
    frozen.children.push(child);
    if (typeof child !== 'string') child.parent = frozen;
  }
  return frozen;
}

export interface PresenceOptions {
  type?: 'unavailable';
  /** Status codes for every recipient (110 is added for the occupant's own sessions). */
  codes?: string[];
  /** Status codes only the occupant's own sessions get (e.g. 201, 100). */
  selfCodes?: string[];
  /** The presence whose payload is shown; defaults to the occupant's current one. */
  base?: Element;
  item?: { nick?: string; reason?: string; actor?: string; role?: string; affiliation?: string };
  /** A payload (e.g. <destroy/>) added inside the muc#user element. */
  extra?: Element;
}

export class MucService {
  readonly rooms = new Map<string, Room>();
  /** Extra disco features of every room (e.g. MAM when the room archive is queryable). */
  readonly roomFeatures: string[] = [];
  readonly store: KeyValStore<StoredRoom>;
  readonly log: ArchiveStore<string>;
  private secret = '';

  constructor(
    readonly ctx: ModuleContext<MucOptions>,
    readonly svc: ServiceContext,
  ) {
    this.store = ctx.storage.keyval<StoredRoom>('muc_rooms');
    this.log = ctx.storage.archive<string>('muc_log');
  }

  get domain(): string {
    return this.svc.domain;
  }

  async init(): Promise<void> {
    // occupant-id must not reveal the real JID, so it is a keyed hash; the key
    // is kept so that ids stay stable across restarts (XEP-0421 section 4).
    const meta = this.ctx.storage.keyval<string>('muc_secret');
    let secret = await meta.get(this.domain);
    if (!secret) {
      secret = randomBytes(24).toString('base64');
      await meta.set(this.domain, secret);
    }
    this.secret = secret;
  }

  defaultConfig(): RoomConfig {
    const d = this.ctx.options.defaults;
    return {
      name: '',
      description: '',
      persistent: d.persistent,
      public: d.public,
      membersOnly: d.members_only,
      passwordProtected: false,
      password: '',
      moderated: d.moderated,
      whois: d.whois,
      allowInvites: d.allow_invites,
      changeSubject: d.change_subject,
      maxUsers: d.max_users,
      historyLength: this.ctx.options.default_history,
    };
  }

  occupantId(room: Room, bare: string): string {
    return createHash('sha256')
      .update(`${this.secret}\0${room.jid}\0${bare}`)
      .digest('base64url')
      .slice(0, 24);
  }

  newOccupant(room: Room, nick: string, bare: string): Occupant {
    return new Occupant(nick, bare, room.defaultRole(bare), this.occupantId(room, bare));
  }

  send(stanza: Element): void {
    this.ctx.send(stanza);
  }

  /** Replies to a stanza with an error (never to an error). */
  bounce(stanza: Element, condition: StanzaErrorCondition, opts?: StanzaErrorOptions): void {
    const reply = errorReply(stanza, condition, opts);
    if (reply) this.send(reply);
  }

  async save(room: Room): Promise<void> {
    await this.store.set(room.name, room.config.persistent ? room.toStored() : null);
  }

  /** Forgets a room (and its stored state and log). */
  async remove(room: Room): Promise<void> {
    if (this.rooms.get(room.name) === room) this.rooms.delete(room.name);
    await this.store.set(room.name, null);
    await this.log.delete(room.name);
  }

  /** A room with no occupants left goes away unless it is persistent. */
  async maybeRemove(room: Room): Promise<void> {
    if (room.occupants.size === 0 && !room.config.persistent) await this.remove(room);
  }

  // ---- fan-out ----------------------------------------------------------------

  /** Sends one stanza per session: a shell with its own `to` around shared, frozen children. */
  fanOut(
    name: string,
    attrs: Record<string, string | undefined>,
    children: Element[],
    to: Iterable<string>,
  ): number {
    const frozen = children.map(freeze);
    let n = 0;
    for (const full of to) {
      const shell = new Element(name, { xmlns: NS_CLIENT, ...attrs, to: full });
      shell.children = [...frozen]; // its own array: a filter may append (smacks' delay)
      this.send(shell);
      n++;
    }
    return n;
  }

  /** A groupchat (or subject) message from an occupant to every session in the room. */
  broadcastMessage(room: Room, attrs: Record<string, string | undefined>, children: Element[]): void {
    this.fanOut(
      'message',
      attrs,
      children,
      [...room.sessions()].map(([full]) => full),
    );
  }

  /**
   * Returns a sender of `occupant`'s presence as each viewer may see it:
   * with or without the real JID, and with status 110 for the occupant's own
   * sessions. Each variant is built (and serialized) once.
   */
  presenceSender(
    room: Room,
    occupant: Occupant,
    opts: PresenceOptions = {},
  ): (to: string, viewer: Occupant | undefined) => void {
    const base = opts.base ?? occupant.presence;
    const payload = childElements(base)
      .filter((c) => {
        const ns = c.getNS();
        return ns !== NS_MUC && ns !== NS_USER && ns !== NS_OCCUPANT_ID;
      })
      .map(freeze);
    const occupantId = freeze(new Element('occupant-id', { xmlns: NS_OCCUPANT_ID, id: occupant.occupantId }));
    const variants = new Map<string, Element[]>();
    const from = `${room.jid}/${occupant.nick}`;
    // Taken now: an occupant being removed has no sessions left when the variants are built.
    const realJid = occupant.realJid;
    const unavailable = opts.type === 'unavailable';
    return (to, viewer) => {
      const self = viewer === occupant;
      const showJid = self || room.showsJidsTo(viewer);
      const key = `${self ? 1 : 0}${showJid ? 1 : 0}`;
      let children = variants.get(key);
      if (!children) {
        const x = new Element('x', { xmlns: NS_USER });
        const item = x.c('item', {
          affiliation: opts.item?.affiliation ?? room.affiliation(occupant.bare),
          role: opts.item?.role ?? (unavailable ? 'none' : occupant.role),
          jid: showJid ? realJid : undefined,
          nick: opts.item?.nick,
        });
        if (opts.item?.actor) item.c('actor', { nick: opts.item.actor });
        if (opts.item?.reason) item.c('reason').t(opts.item.reason);
        if (opts.extra) x.cnode(opts.extra);
        const codes = [...(opts.codes ?? [])];
        if (self) codes.push(...(opts.selfCodes ?? []), '110');
        for (const code of [...new Set(codes)].sort()) x.c('status', { code });
        children = [...payload, freeze(x), occupantId];
        variants.set(key, children);
      }
      const shell = new Element('presence', { xmlns: NS_CLIENT, from, to, type: opts.type });
      shell.children = [...children];
      this.send(shell);
    };
  }

  /** Sends an occupant's presence to everyone in the room (its own sessions included). */
  broadcastPresence(room: Room, occupant: Occupant, opts: PresenceOptions = {}): void {
    const send = this.presenceSender(room, occupant, opts);
    for (const [full, viewer] of room.sessions()) send(full, viewer);
  }
}
