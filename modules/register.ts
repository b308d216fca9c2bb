// XEP-0077 in-band registration: new accounts before login (off unless
// allow_registration is set), and password change or account removal for a
// logged-in user.
import { Element } from 'ltx';
import { z } from 'zod';
import { JidError, prepareLocal } from '../src/jid.ts';
import { defineModule } from '../src/modules/api.ts';
import { AddressLimiter } from '../src/util/address-limiter.ts';
import { getText } from '../src/xml/element.ts';

const NS = 'jabber:iq:register';
const NS_FEATURE = 'http://jabber.org/features/iq-register';

export default defineModule({
  name: 'register',
  description: 'In-band registration, password change and account removal (XEP-0077)',
  xeps: [{ number: 77, version: '2.4' }],
  options: z
    .object({
      /** Let anyone create an account before logging in. */
      allow_registration: z.boolean().default(false),
      /** New accounts per client address within `window_seconds`. */
      max_registrations_per_address: z.number().int().min(1).default(3),
      window_seconds: z.number().int().min(1).default(3600),
      min_password_length: z.number().int().min(1).default(6),
    })
    .strict(),
  setup(ctx) {
    const limiter = new AddressLimiter(
      ctx.options.max_registrations_per_address,
      ctx.options.window_seconds * 1000,
    );
    const form = (instructions: string) => {
      const query = new Element('query', { xmlns: NS });
      query.c('instructions').t(instructions);
      query.c('username');
      query.c('password');
      return query;
    };
    const checkPassword = (password: string | undefined): string | null => {
      if (!password) return 'A password is required';
      if ([...password].length < ctx.options.min_password_length) {
        return `The password must have at least ${ctx.options.min_password_length} characters`;
      }
      return null;
    };

    if (ctx.options.allow_registration) {
      // Registration carries the new password in the clear: like PLAIN, it
      // is only offered and accepted on an encrypted stream.
      ctx.hook('stream-features/preauth', ({ stream, features }) => {
        if (stream.secure) features.push(new Element('register', { xmlns: NS_FEATURE }));
      });
      ctx.hook('preauth-iq', async ({ stanza, payload, stream, reply, error }) => {
        if (payload.name !== 'query' || payload.attrs.xmlns !== NS) return false;
        if (!stream.secure) {
          error('not-allowed', { text: 'Registration needs an encrypted connection: use STARTTLS first' });
          return true;
        }
        if (stanza.attrs.type === 'get') {
          reply(form('Choose a username and password to register with this server.'));
          return true;
        }
        const rawUsername = getText(payload, 'username');
        const password = getText(payload, 'password');
        let username: string;
        try {
          username = prepareLocal(rawUsername ?? '');
        } catch (err) {
          error('not-acceptable', { text: err instanceof JidError ? err.message : 'Invalid username' });
          return true;
        }
        const problem = checkPassword(password);
        if (problem) {
          error('not-acceptable', { text: problem });
          return true;
        }
        if (await ctx.accounts.exists(username)) {
          error('conflict', { text: 'That username is taken' });
          return true;
        }
        if (!limiter.allow(stream.remoteAddress)) {
          error('resource-constraint', {
            type: 'wait',
            text: 'Too many registrations from your address; try later',
          });
          return true;
        }
        await ctx.accounts.create(username, password!);
        ctx.log.info({ user: `${username}@${ctx.host}`, ip: stream.remoteAddress }, 'account registered');
        reply();
        return true;
      });
    }

    ctx.addFeature(NS);
    ctx.handleIq(
      'get',
      NS,
      'query',
      ({ from, reply }) => {
        const query = new Element('query', { xmlns: NS });
        query.c('registered');
        query.c('username').t(from.local);
        query.c('password');
        reply(query);
        return true;
      },
      ['host', 'self'],
    );

    ctx.handleIq(
      'set',
      NS,
      'query',
      async ({ from, payload, reply, error }) => {
        if (payload.getChild('remove')) {
          await ctx.accounts.delete(from.local);
          ctx.log.info({ user: from.bareString() }, 'account removed by its owner');
          reply();
          // XEP-0077 3.2: the account is gone, so are its sessions.
          for (const session of await ctx.sessions.resources(from.bareString())) {
            session.close('not-authorized', 'This account was removed');
          }
          return true;
        }
        const username = getText(payload, 'username');
        if (username !== undefined && username !== from.local) {
          error('not-allowed', { text: 'You can only change your own password' });
          return true;
        }
        const password = getText(payload, 'password');
        const problem = checkPassword(password);
        if (problem) {
          error('not-acceptable', { text: problem });
          return true;
        }
        await ctx.accounts.setPassword(from.local, password!);
        ctx.log.info({ user: from.bareString() }, 'password changed');
        reply();
        return true;
      },
      ['host', 'self'],
    );
  },
});
