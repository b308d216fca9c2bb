// Server-initiated XEP-0199 pings that find dead connections: a session that
// sent no stanza for a whole interval gets a ping from the server; no answer
// within the timeout closes its connection with connection-timeout. Any
// answer counts, an error too (a client without ping support answers
// service-unavailable, and is alive all the same). Whitespace keepalives and
// stream management nonzas are not counted as activity: a client that only
// sends those is pinged, which costs it one answer per interval.
import { Element } from 'ltx';
import { z } from 'zod';
import { IqError } from '../src/host.ts';
import { defineModule } from '../src/modules/api.ts';
import type { Session } from '../src/session/session.ts';

const NS_PING = 'urn:xmpp:ping';

interface Watch {
  /** session.stanzasIn at the last check. */
  lastIn: number;
  pinging: boolean;
  stop: () => void;
}

export default defineModule({
  name: 'keepalive',
  description: 'Pings idle clients and closes connections that no longer answer (XEP-0199)',
  xeps: [{ number: 199, version: '2.0.1', status: 'partial', note: 'server-to-client pings' }],
  options: z
    .object({
      /** A session that sent nothing for this long is pinged. */
      interval_seconds: z.number().int().min(1).default(300),
      /** How long a pinged client has to answer before its connection is closed. */
      timeout_seconds: z.number().int().min(1).default(60),
    })
    .strict(),
  setup(ctx) {
    const { interval_seconds: interval, timeout_seconds: timeout } = ctx.options;
    const watches = new Map<Session, Watch>();

    const ping = (session: Session, watch: Watch) => {
      watch.pinging = true;
      const sentAt = session.stanzasIn;
      const iq = new Element('iq', { type: 'get', from: ctx.host, to: session.jid.toString() });
      iq.c('ping', { xmlns: NS_PING });
      const alive = () => {
        watch.pinging = false;
        watch.lastIn = session.stanzasIn;
      };
      ctx.sendIq(iq, timeout * 1000).then(alive, (err: unknown) => {
        // An error reply is an answer; only silence means the client is gone.
        const answered = err instanceof IqError && err.stanza !== null;
        if (answered || session.stanzasIn !== sentAt || watches.get(session) !== watch) {
          alive();
          return;
        }
        watch.pinging = false;
        // A session held by stream management has no connection to close.
        if (!session.connected) return;
        ctx.log.info({ jid: session.jid.toString(), timeout }, 'no answer to a ping; closing the connection');
        session.close('connection-timeout', `No answer to a ping within ${timeout} seconds`);
      });
    };

    const check = (session: Session, watch: Watch) => {
      if (watch.pinging) return;
      if (session.stanzasIn !== watch.lastIn) {
        watch.lastIn = session.stanzasIn;
        return;
      }
      if (session.connected) ping(session, watch);
    };

    ctx.hook('resource-bind', ({ session }) => {
      const watch: Watch = { lastIn: session.stanzasIn, pinging: false, stop: () => undefined };
      watch.stop = ctx.setInterval(() => check(session, watch), interval * 1000);
      watches.set(session, watch);
    });

    ctx.hook('resource-unbind', ({ session }) => {
      watches.get(session)?.stop();
      watches.delete(session);
    });

    ctx.onUnload(() => {
      for (const watch of watches.values()) watch.stop();
      watches.clear();
    });
  },
});
