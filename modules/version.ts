// XEP-0092: the server's software name and version.
import { readFileSync } from 'node:fs';
import { Element } from 'ltx';
import { z } from 'zod';
import { defineModule } from '../src/modules/api.ts';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
  version: string;
};

export default defineModule({
  name: 'version',
  description: 'Tells the software name and version (XEP-0092)',
  xeps: [{ number: 92, version: '1.1' }],
  options: z
    .object({
      /** Revealing the OS helps attackers a little; off by default as in Prosody. */
      show_os: z.boolean().default(false),
    })
    .strict(),
  setup(ctx) {
    ctx.addFeature('jabber:iq:version');
    ctx.handleIq('get', 'jabber:iq:version', 'query', ({ reply }) => {
      const query = new Element('query', { xmlns: 'jabber:iq:version' });
      query.c('name').t('Chorus');
      query.c('version').t(pkg.version);
      if (ctx.options.show_os)
        query.c('os').t(`${process.platform} ${process.arch}, Node.js ${process.versions.node}`);
      reply(query);
      return true;
    });
  },
});
