// What gets archived, and XEP-0359 stanza ids.
import { Element } from 'ltx';
import { Jid } from '../../src/jid.ts';
import { childElements, NS_CLIENT } from '../../src/stanza.ts';

export const NS_SID = 'urn:xmpp:sid:0';
const NS_RECEIPTS = 'urn:xmpp:receipts';
const NS_MARKERS = 'urn:xmpp:chat-markers:0';
const NS_HINTS = 'urn:xmpp:hints';
const NS_CARBONS = 'urn:xmpp:carbons:2';
const NS_MAM = 'urn:xmpp:mam:2';
/** Chat markers (XEP-0333) that report progress; <markable/> alone is only a request. */
const MARKERS = new Set(['received', 'displayed', 'acknowledged']);

/**
 * Whether a one-to-one message belongs in the archive: messages with a body
 * (corrections included), delivery receipts and chat markers, or anything
 * the sender marked with the XEP-0334 <store/> hint. Not: groupchat, error
 * and headline messages, chat-state-only messages, receipt requests alone,
 * carbons and MAM results (copies of messages archived already), and
 * messages with a <no-store/> or <no-permanent-store/> hint.
 */
export function isArchivable(message: Element): boolean {
  const type = (message.attrs.type as string | undefined) ?? 'normal';
  if (type === 'groupchat' || type === 'error' || type === 'headline') return false;
  let worth = false;
  for (const child of childElements(message)) {
    const ns = child.getNS();
    if (ns === NS_HINTS) {
      if (child.name === 'no-store' || child.name === 'no-permanent-store') return false;
      if (child.name === 'store') worth = true;
    } else if (ns === NS_CARBONS || (ns === NS_MAM && child.name === 'result')) {
      return false;
    } else if (child.name === 'body' && ns === NS_CLIENT) {
      worth = true;
    } else if (ns === NS_RECEIPTS && child.name === 'received') {
      worth = true;
    } else if (ns === NS_MARKERS && MARKERS.has(child.name)) {
      worth = true;
    }
  }
  return worth;
}

/** The text indexed for full-text search: the message body, if any. */
export function bodyText(message: Element): string | undefined {
  const body = message.getChild('body', NS_CLIENT);
  const text = body?.getText();
  return text ? text : undefined;
}

/**
 * Removes every <stanza-id/> that claims to come from `by` or `alsoBy` (only the
 * server may add those). Most messages carry none: they are left untouched.
 */
export function stripStanzaIds(message: Element, by: string, alsoBy: string = by): number {
  if (!message.children.some((child) => isForgedId(child, by, alsoBy))) return 0;
  const before = message.children.length;
  message.children = message.children.filter((child) => !isForgedId(child, by, alsoBy));
  return before - message.children.length;
}

function isForgedId(child: Element | string, by: string, alsoBy: string): boolean {
  if (typeof child === 'string' || child.name !== 'stanza-id' || child.getNS() !== NS_SID) return false;
  const claimed = normalize(child.attrs.by);
  return claimed === by || claimed === alsoBy;
}

function normalize(by: unknown): string {
  const text = typeof by === 'string' ? by : '';
  return Jid.tryParse(text)?.toString() ?? text;
}

export function addStanzaId(message: Element, id: string, by: string): Element {
  const el = new Element('stanza-id', { xmlns: NS_SID, id, by });
  message.cnode(el);
  return el;
}

/** Removes exactly this element (one the server added) again. */
export function removeChild(message: Element, el: Element): void {
  message.children = message.children.filter((child) => child !== el);
}
