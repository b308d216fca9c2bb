// Stanza-level helpers from RFC 6120: error replies and IQ validation. These
// belong to the core protocol (jabber:client and the stanza error namespace),
// not to any feature.
import { Element } from 'ltx';

export const NS_CLIENT = 'jabber:client';
export const NS_STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';
export const NS_STREAMS = 'http://etherx.jabber.org/streams';
export const NS_STREAM_ERRORS = 'urn:ietf:params:xml:ns:xmpp-streams';

export type StanzaErrorType = 'auth' | 'cancel' | 'continue' | 'modify' | 'wait';
export type StanzaErrorCondition =
  | 'bad-request'
  | 'conflict'
  | 'feature-not-implemented'
  | 'forbidden'
  | 'gone'
  | 'internal-server-error'
  | 'item-not-found'
  | 'jid-malformed'
  | 'not-acceptable'
  | 'not-allowed'
  | 'not-authorized'
  | 'policy-violation'
  | 'recipient-unavailable'
  | 'redirect'
  | 'registration-required'
  | 'remote-server-not-found'
  | 'remote-server-timeout'
  | 'resource-constraint'
  | 'service-unavailable'
  | 'subscription-required'
  | 'undefined-condition'
  | 'unexpected-request';

// The usual error type for each condition (RFC 6120 section 8.3.3 examples).
const DEFAULT_TYPE: Record<StanzaErrorCondition, StanzaErrorType> = {
  'bad-request': 'modify',
  conflict: 'cancel',
  'feature-not-implemented': 'cancel',
  forbidden: 'auth',
  gone: 'cancel',
  'internal-server-error': 'cancel',
  'item-not-found': 'cancel',
  'jid-malformed': 'modify',
  'not-acceptable': 'modify',
  'not-allowed': 'cancel',
  'not-authorized': 'auth',
  'policy-violation': 'modify',
  'recipient-unavailable': 'wait',
  redirect: 'modify',
  'registration-required': 'auth',
  'remote-server-not-found': 'cancel',
  'remote-server-timeout': 'wait',
  'resource-constraint': 'wait',
  'service-unavailable': 'cancel',
  'subscription-required': 'auth',
  'undefined-condition': 'cancel',
  'unexpected-request': 'wait',
};

export interface StanzaErrorOptions {
  type?: StanzaErrorType;
  text?: string;
  /** An application-specific condition element placed beside the defined one. */
  extra?: Element;
  /** The JID that generated the error (RFC 6120 8.3.2 `by`). */
  by?: string;
}

/** The `<error/>` child for a condition. */
export function errorElement(condition: StanzaErrorCondition, opts: StanzaErrorOptions = {}): Element {
  const error = new Element('error', { type: opts.type ?? DEFAULT_TYPE[condition], by: opts.by });
  error.c(condition, { xmlns: NS_STANZAS });
  if (opts.text) error.c('text', { xmlns: NS_STANZAS }).t(opts.text);
  if (opts.extra) error.cnode(opts.extra);
  return error;
}

/**
 * The error reply to a stanza, with `to` and `from` swapped. Returns null for
 * a stanza of type error: RFC 6120 8.3.1 says an entity MUST NOT respond to
 * an error stanza with another error, which is also what stops error loops.
 */
export function errorReply(
  stanza: Element,
  condition: StanzaErrorCondition,
  opts: StanzaErrorOptions = {},
): Element | null {
  if (stanza.attrs.type === 'error') return null;
  const reply = new Element(stanza.name, {
    xmlns: stanza.attrs.xmlns,
    type: 'error',
    id: stanza.attrs.id,
    to: stanza.attrs.from,
    from: stanza.attrs.to,
  });
  // Messages and presences may echo the original payload (8.3.1); for IQs we
  // keep the original child so clients can correlate, as most servers do.
  for (const child of stanza.children) if (typeof child !== 'string') reply.cnode(cloneElement(child));
  reply.cnode(errorElement(condition, opts));
  return reply;
}

/** The result reply to an IQ, with optional payload. */
export function iqResult(iq: Element, payload?: Element): Element {
  const reply = new Element('iq', {
    xmlns: iq.attrs.xmlns,
    type: 'result',
    id: iq.attrs.id,
    to: iq.attrs.from,
    from: iq.attrs.to,
  });
  if (payload) reply.cnode(payload);
  return reply;
}

export function cloneElement(element: Element): Element {
  const copy = new Element(element.name, { ...element.attrs });
  for (const child of element.children)
    copy.children.push(typeof child === 'string' ? child : cloneElement(child));
  for (const child of copy.children) if (typeof child !== 'string') child.parent = copy;
  return copy;
}

export function childElements(element: Element): Element[] {
  const out: Element[] = [];
  for (const child of element.children) if (typeof child !== 'string') out.push(child);
  return out;
}

export type IqProblem = { condition: StanzaErrorCondition; text: string } | null;

/** RFC 6120 8.2.3: the structural rules every IQ must satisfy. */
export function validateIq(iq: Element): IqProblem {
  const type = iq.attrs.type;
  if (!iq.attrs.id) return { condition: 'bad-request', text: 'An IQ stanza must have an id attribute' };
  const children = childElements(iq);
  switch (type) {
    case 'get':
    case 'set':
      if (children.length !== 1)
        return {
          condition: 'bad-request',
          text: `An IQ of type ${type} must contain exactly one child element`,
        };
      return null;
    case 'result':
      if (children.length > 1)
        return {
          condition: 'bad-request',
          text: 'An IQ of type result may contain at most one child element',
        };
      return null;
    case 'error':
      return null;
    default:
      return { condition: 'bad-request', text: `Invalid IQ type '${type ?? ''}'` };
  }
}

/** Namespace of an element that carries its own xmlns or inherits one. */
export function namespaceOf(element: Element): string | undefined {
  return element.getNS();
}
