// A "message of the day" module: the worked example of docs/modules.md, made
// to be copied. Load it by path (relative to the directory the server starts
// in) from conf/chorus.yaml:
//
//   modules: [disco, ping, ./docs/examples/motd.ts]
//   module_options:
//     motd: { text: 'Maintenance on Sunday, 02:00 UTC' }
import { Element } from 'ltx';
import { z } from 'zod';
// Outside this repository, import defineModule from where Chorus is installed.
import { defineModule } from '../../src/modules/api.ts';
import type { IqEvent } from '../../src/router/events.ts';

const NS = 'urn:example:motd';

export default defineModule({
  // The key of this module in module_options, and its name for dependencies.
  name: 'motd',
  description: 'Sends a message of the day to every session that logs in',
  // No XEP: the protocol is invented for the example. A real module lists the
  // XEPs it implements, e.g. xeps: [{ number: 199, version: '2.0.1' }].
  //
  // The loader checks module_options.motd against this schema at start-up and
  // on reload; a wrong value stops the server and names the option.
  // .default() gives the documented default; .strict() catches misspelt keys.
  options: z
    .object({
      text: z.string().min(1).default('Welcome to Chorus!'),
      /** false: only answer the IQ below, send nothing at login. */
      on_login: z.boolean().default(true),
    })
    .strict(),

  setup(ctx) {
    // ctx.options is typed from the schema and already has the defaults.
    const { text, on_login } = ctx.options;
    // Listed in the server's disco#info for as long as the module is loaded.
    ctx.addFeature(NS);

    if (on_login) {
      // Fired once a session has bound its resource and can receive stanzas.
      ctx.hook('resource-bind', ({ session }) => {
        const to = session.jid.toString();
        const message = new Element('message', { from: ctx.host, to, type: 'headline' });
        message.c('body').t(text);
        // Routed like any stanza, so other modules (archives, carbons) see it.
        ctx.send(message);
        // No `return true`: other modules also want to hear about new sessions.
      });
    }

    // <iq type='get'><motd xmlns='urn:example:motd'/></iq>, to the server
    // ('host') or without a `to`, which addresses the user's own account ('self').
    const answer = ({ reply }: IqEvent) => {
      reply(new Element('motd', { xmlns: NS }).t(text));
      return true; // handled: no later handler, nor the default error, runs
    };
    ctx.handleIq('get', NS, 'motd', answer, ['host', 'self']);
    // Nothing to clean up: the loader removes the hook, the IQ handler and the
    // feature when the module is unloaded (on reload or at shutdown).
  },
});
