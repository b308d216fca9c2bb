// XEP-0049: private XML storage (jabber:iq:private). A user stores XML
// fragments on the server, each found again by its root element's name and
// namespace; clients keep bookmarks (storage:bookmarks) and preferences here.
//
// Storage: map store 'private', keyed by username, one key per fragment in
// Clark notation ('{namespace}name') holding the fragment as an XML string.
// An empty fragment (no attributes, no content) is not stored: getting it
// back answers the same empty element either way.
//
// Error choices, where the XEP leaves room:
//  - any `to` other than the user's own bare JID: forbidden (the XEP prefers
//    it to service-unavailable);
//  - a payload in jabber:client, jabber:server or jabber:iq:private itself
//    (a child without its own xmlns inherits jabber:iq:private): not-acceptable;
//  - a get without a child: not-acceptable (the XEP's "MUST"); a get with
//    several children: bad-request (a client MUST NOT ask for more than one);
//  - a set whose total would exceed the per-user quota: policy-violation
//    (type modify). The XEP defines no quota error; resource-constraint is
//    type 'wait', which tells a client to retry the same request, and that
//    can never succeed.
import { Element, parse } from 'ltx';
import { serialize } from '../src/xml/element.ts';
import { z } from 'zod';
import { defineModule } from '../src/modules/api.ts';
import type { IqEvent } from '../src/router/events.ts';
import { childElements, cloneElement } from '../src/stanza.ts';
import { KeyedQueue } from '../src/util/keyed-queue.ts';

export const NS_PRIVATE = 'jabber:iq:private';
const RESERVED = new Set(['jabber:client', 'jabber:server', NS_PRIVATE]);

/**
 * A copy of `element` that stands on its own: the default namespace in scope
 * and every prefix its subtree uses but its ancestors declared are declared
 * on the copy itself, so its serialization parses back to the same names.
 */
export function detachedCopy(element: Element): Element {
  const copy = cloneElement(element);
  if (copy.attrs.xmlns === undefined) {
    const inScope = element.findNS();
    if (inScope !== undefined) copy.attrs.xmlns = inScope;
  }
  for (const prefix of usedPrefixes(copy)) {
    const key = `xmlns:${prefix}`;
    if (prefix === 'xml' || copy.attrs[key] !== undefined) continue;
    const uri = element.findNS(prefix);
    if (uri !== undefined) copy.attrs[key] = uri;
  }
  return copy;
}

function usedPrefixes(element: Element, into = new Set<string>()): Set<string> {
  const add = (qname: string) => {
    const colon = qname.indexOf(':');
    if (colon > 0) into.add(qname.slice(0, colon));
  };
  add(element.name);
  for (const name of Object.keys(element.attrs)) if (!name.startsWith('xmlns')) add(name);
  for (const child of childElements(element)) usedPrefixes(child, into);
  return into;
}

/** The (name, namespace) key of a fragment, in Clark notation. */
function keyOf(element: Element): string {
  return `{${element.getNS() ?? ''}}${element.getName()}`;
}

function isEmpty(element: Element): boolean {
  return (
    element.children.length === 0 && Object.keys(element.attrs).every((name) => name.startsWith('xmlns'))
  );
}

export default defineModule({
  name: 'private',
  description: 'Private XML storage (XEP-0049), e.g. bookmarks',
  xeps: [{ number: 49, version: '1.2' }],
  options: z
    .object({
      /** Most bytes (UTF-8, as serialized) a user may keep in private storage, all fragments together. */
      max_bytes: z
        .number()
        .int()
        .min(1)
        .default(1024 * 1024),
    })
    .strict(),
  setup(ctx) {
    const store = ctx.storage.map<string>('private');
    // Two sets of one user never race on the quota.
    const queue = new KeyedQueue();
    const maxBytes = ctx.options.max_bytes;

    /** Checks the payload's children; answers the error itself and returns null when they are unusable. */
    function fragments(ev: IqEvent): Element[] | null {
      const children = childElements(ev.payload);
      if (children.length === 0) {
        ev.error('not-acceptable', { text: 'The query must contain an element naming what to store or get' });
        return null;
      }
      for (const child of children) {
        const ns = child.getNS();
        if (ns === undefined || RESERVED.has(ns)) {
          ev.error('not-acceptable', {
            text: `Private data cannot be stored in the namespace '${ns ?? ''}'; use a namespace of your own`,
          });
          return null;
        }
      }
      return children;
    }

    ctx.handleIq(
      'get',
      NS_PRIVATE,
      'query',
      async (ev) => {
        const children = fragments(ev);
        if (!children) return true;
        if (children.length > 1) {
          ev.error('bad-request', { text: 'Ask for one element at a time' });
          return true;
        }
        const wanted = children[0]!;
        const stored = await store.get(ev.from.local, keyOf(wanted));
        const query = new Element('query', { xmlns: NS_PRIVATE });
        query.cnode(
          stored === null ? new Element(wanted.getName(), { xmlns: wanted.getNS() }) : parse(stored),
        );
        ev.reply(query);
        return true;
      },
      ['self'],
    );

    ctx.handleIq(
      'set',
      NS_PRIVATE,
      'query',
      (ev) => {
        const children = fragments(ev);
        if (!children) return true;
        const writes = new Map<string, string | null>();
        for (const child of children) {
          const key = keyOf(child);
          if (writes.has(key)) {
            ev.error('bad-request', { text: `<${child.getName()}/> in ${child.getNS()} is given twice` });
            return true;
          }
          writes.set(key, isEmpty(child) ? null : serialize(detachedCopy(child)));
        }
        const user = ev.from.local;
        return queue.run(user, async () => {
          let total = 0;
          for (const [key, xml] of await store.getAll(user))
            if (!writes.has(key)) total += Buffer.byteLength(xml);
          for (const xml of writes.values()) if (xml !== null) total += Buffer.byteLength(xml);
          if (total > maxBytes) {
            ev.error('policy-violation', {
              type: 'modify',
              text: `Your private storage would hold ${total} bytes; the limit is ${maxBytes}`,
            });
            return true;
          }
          for (const [key, xml] of writes) await store.set(user, key, xml);
          ev.reply();
          return true;
        });
      },
      ['self'],
    );

    const forbidden = (ev: IqEvent) => {
      ev.error('forbidden', { text: 'Private storage is only for your own account' });
      return true;
    };
    for (const type of ['get', 'set'] as const)
      ctx.handleIq(type, NS_PRIVATE, 'query', forbidden, ['host', 'bare', 'full']);
  },
});
