// IQs between occupants (XEP-0045 7.7 and 17.3): an occupant's request to
// room@service/nick goes to the target's real JID from the sender's
// occupant JID, so that neither learns the other's address; the answer comes
// back the same way. vCard requests go to the target's bare JID, where the
// server keeps the vCard (avatars in the occupant list).
import { randomBytes } from 'node:crypto';
import type { Element } from 'ltx';
import { cloneElement } from '../../src/stanza.ts';
import type { MucService } from './service.ts';

/** A relayed request not yet answered is forgotten after this long. */
const PENDING_MS = 60_000;
const MAX_PENDING = 10_000;

interface Pending {
  /** The requester's real full JID and the id it used. */
  requester: string;
  id: string;
  /** The occupant JID the request was addressed to. */
  occupantJid: string;
  /** Who must answer (the target's real JID). */
  target: string;
  at: number;
}

export function installIqRelay(muc: MucService): void {
  const pending = new Map<string, Pending>();

  const prune = (now: number) => {
    for (const [key, p] of pending) {
      if (now - p.at < PENDING_MS && pending.size <= MAX_PENDING) break;
      pending.delete(key);
    }
  };

  muc.svc.hook('iq/full', (ev) => {
    const { stanza, from, to } = ev;
    const type = stanza.attrs.type as string;
    const room = muc.rooms.get(to.local);
    if (type === 'result' || type === 'error') {
      const key = stanza.attrs.id as string | undefined;
      const p = key === undefined ? undefined : pending.get(key);
      if (!p || p.target !== from.toString()) return true; // not ours: dropped
      pending.delete(key!);
      const answer = relayed(stanza, { from: p.occupantJid, to: p.requester, id: p.id });
      muc.send(answer);
      return true;
    }
    const sender = room?.bySessionJid(from.toString());
    if (!room || !sender) {
      muc.bounce(stanza, 'not-acceptable', { text: 'Only occupants may send requests to occupants' });
      return true;
    }
    const target = room.occupants.get(to.resource);
    if (!target) {
      muc.bounce(stanza, 'item-not-found', { text: `No occupant is called ${to.resource}` });
      return true;
    }
    const payload = stanza.children.find((c): c is Element => typeof c !== 'string');
    const targetJid = payload?.getNS() === 'vcard-temp' ? target.bare : target.realJid;
    const now = Date.now();
    prune(now);
    const key = `muc-${randomBytes(9).toString('base64url')}`;
    pending.set(key, {
      requester: from.toString(),
      id: (stanza.attrs.id as string | undefined) ?? '',
      occupantJid: to.toString(),
      target: targetJid,
      at: now,
    });
    muc.send(relayed(stanza, { from: `${room.jid}/${sender.nick}`, to: targetJid, id: key }));
    return true;
  });
}

function relayed(stanza: Element, attrs: { from: string; to: string; id: string }): Element {
  const copy = cloneElement(stanza);
  copy.attrs.from = attrs.from;
  copy.attrs.to = attrs.to;
  copy.attrs.id = attrs.id;
  return copy;
}
