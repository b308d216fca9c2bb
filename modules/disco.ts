// XEP-0030: service discovery for the server and for users' own accounts.
// Features and identities come from what every module of the host declared.
import { Element } from 'ltx';
import { z } from 'zod';
import { defineModule } from '../src/modules/api.ts';

const NS_INFO = 'http://jabber.org/protocol/disco#info';
const NS_ITEMS = 'http://jabber.org/protocol/disco#items';

export interface DiscoItem {
  jid: string;
  name?: string;
  node?: string;
}

export interface DiscoApi {
  /** Lists an item (e.g. a MUC service) in the server's disco#items; returns a remover. */
  addItem(item: DiscoItem): () => void;
}

export default defineModule({
  name: 'disco',
  description: 'Service discovery of the server and of accounts (XEP-0030)',
  xeps: [{ number: 30, version: '2.5rc3' }],
  options: z
    .object({
      /** Extra items to list on the server, e.g. a service run elsewhere. */
      items: z.array(z.object({ jid: z.string(), name: z.string().optional() }).strict()).default([]),
      /** The name shown for the server identity. */
      name: z.string().default('Chorus'),
    })
    .strict(),
  setup(ctx): DiscoApi {
    const items: DiscoItem[] = [...ctx.options.items];
    ctx.addFeature(NS_INFO);
    ctx.addFeature(NS_ITEMS);
    ctx.addIdentity({ category: 'server', type: 'im', name: ctx.options.name });

    ctx.handleIq('get', NS_INFO, 'query', ({ payload, reply, error }) => {
      const node = payload.attrs.node as string | undefined;
      if (node) {
        error('item-not-found', { text: `No such node: ${node}` });
        return true;
      }
      const query = new Element('query', { xmlns: NS_INFO });
      for (const identity of ctx.identities()) {
        query.c('identity', { category: identity.category, type: identity.type, name: identity.name });
      }
      for (const feature of ctx.features()) query.c('feature', { var: feature });
      reply(query);
      return true;
    });

    // The account itself (RFC 6121 / XEP-0030 section 8 "account" identity).
    ctx.handleIq(
      'get',
      NS_INFO,
      'query',
      ({ payload, reply, error }) => {
        if (payload.attrs.node) {
          error('item-not-found');
          return true;
        }
        const query = new Element('query', { xmlns: NS_INFO });
        query.c('identity', { category: 'account', type: 'registered' });
        for (const feature of new Set([NS_INFO, ...ctx.accountFeatures()]))
          query.c('feature', { var: feature });
        reply(query);
        return true;
      },
      ['self'],
    );

    ctx.handleIq('get', NS_ITEMS, 'query', ({ payload, reply, error }) => {
      if (payload.attrs.node) {
        error('item-not-found');
        return true;
      }
      const query = new Element('query', { xmlns: NS_ITEMS });
      for (const item of items) query.c('item', { jid: item.jid, name: item.name, node: item.node });
      reply(query);
      return true;
    });

    ctx.handleIq(
      'get',
      NS_ITEMS,
      'query',
      ({ reply }) => {
        reply(new Element('query', { xmlns: NS_ITEMS }));
        return true;
      },
      ['self'],
    );

    return {
      addItem(item) {
        items.push(item);
        return () => {
          const i = items.indexOf(item);
          if (i >= 0) items.splice(i, 1);
        };
      },
    };
  },
});
