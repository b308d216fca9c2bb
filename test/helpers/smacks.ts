// Stream management (XEP-0198) steps that the single-server and the cluster
// resumption tests share.
import type { Element } from 'ltx';
import type { XmppClient } from './xmpp-client.ts';

export const SM = 'urn:xmpp:sm:3';

export function isAckRequest(e: Element): boolean {
  return e.name === 'r' && e.attrs.xmlns === SM;
}

/** The next element that is not an ack request (<r/>), which the caller ignores. */
export async function nextElement(c: XmppClient, timeoutMs: number): Promise<Element> {
  for (;;) {
    const ev = await c.next(timeoutMs);
    if (ev.kind !== 'element')
      throw new Error(`${c.name}: expected an element, got ${ev.kind}\n${c.recentTranscript()}`);
    if (!isAckRequest(ev.element)) return ev.element;
  }
}

/** Everything the server sends until it is quiet for `quietMs` (ack requests left out). */
export async function drain(c: XmppClient, quietMs = 500): Promise<Element[]> {
  const out: Element[] = [];
  for (;;) {
    const ev = await c.next(quietMs).catch(() => null);
    if (!ev || ev.kind !== 'element') return out;
    if (!isAckRequest(ev.element)) out.push(ev.element);
  }
}

/** Enables stream management with resumption; returns the resumption id. */
export async function enableResume(c: XmppClient): Promise<string> {
  c.send(`<enable xmlns='${SM}' resume='true'/>`);
  const enabled = await c.expect(`<enabled xmlns='${SM}' id='{any}' resume='true' max='{any}'/>`);
  return enabled.attrs.id as string;
}

/** Takes a new connection through TLS and SASL as `user`, unbound: ready to resume. */
export async function authenticateToResume(
  c: XmppClient,
  user: string,
  password: string,
): Promise<XmppClient> {
  await c.open();
  await c.startTls();
  await c.authenticate(user, password);
  return c;
}
