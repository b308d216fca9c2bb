// Discussion history (XEP-0045 7.2.15): every groupchat message with a body
// goes to the room's log (archive 'muc_log', one archive per room, the value
// being the message as XML), and a joiner gets the recent part of it,
// delayed (XEP-0203), as much as its <history/> request and the room's
// historylength allow.
import { Element, parse } from 'ltx';
import { serialize } from '../../src/xml/element.ts';
import { NS_DELAY, NS_MUC } from './ns.ts';
import type { Room } from './room.ts';
import type { MucService } from './service.ts';

/** Archives a room message under `id` (also its stanza-id). */
export async function record(
  muc: MucService,
  room: Room,
  message: Element,
  nick: string,
  body: string,
  id: string,
): Promise<void> {
  await muc.log.append(room.name, { id, with: `${room.jid}/${nick}`, value: serialize(message), text: body });
}

function nonNegativeInt(value: string | undefined): number | undefined {
  if (value === undefined || !/^\d+$/.test(value)) return undefined;
  return Number(value);
}

/** Sends the history a joiner asked for (its <x xmlns=muc/> from the join presence). */
export async function sendHistory(
  muc: MucService,
  room: Room,
  to: string,
  request: Element | undefined,
): Promise<void> {
  const history = request?.getChild('history', NS_MUC) ?? request?.getChild('history');
  const cap = Math.min(room.config.historyLength, muc.ctx.options.max_history);
  const maxStanzas = Math.min(nonNegativeInt(history?.attrs.maxstanzas as string | undefined) ?? cap, cap);
  const maxChars = nonNegativeInt(history?.attrs.maxchars as string | undefined);
  const seconds = nonNegativeInt(history?.attrs.seconds as string | undefined);
  const since = history?.attrs.since ? Date.parse(history.attrs.since as string) : NaN;
  if (maxStanzas === 0 || maxChars === 0) return;
  let start: number | undefined;
  if (seconds !== undefined) start = Date.now() - seconds * 1000;
  if (!Number.isNaN(since)) start = Math.max(start ?? 0, since);

  const { items } = await muc.log.find(room.name, { start, limit: maxStanzas, reverse: true });
  const out: Element[] = [];
  let chars = 0;
  for (const item of items) {
    let message: Element;
    try {
      message = parse(item.value);
    } catch {
      continue;
    }
    message.attrs.to = to;
    message.c('delay', { xmlns: NS_DELAY, from: room.jid, stamp: new Date(item.when).toISOString() });
    // maxchars counts the characters of the full stanzas (XEP-0045 7.2.15).
    chars += serialize(message).length;
    if (maxChars !== undefined && chars > maxChars) break;
    out.push(message);
  }
  for (const message of out.reverse()) muc.send(message);
}
