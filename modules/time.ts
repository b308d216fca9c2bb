// XEP-0202: the server's time, in UTC.
import { Element } from 'ltx';
import { defineModule } from '../src/modules/api.ts';

export default defineModule({
  name: 'time',
  description: 'Tells the server time (XEP-0202)',
  xeps: [{ number: 202, version: '2.0' }],
  setup(ctx) {
    ctx.addFeature('urn:xmpp:time');
    ctx.handleIq('get', 'urn:xmpp:time', 'time', ({ reply }) => {
      const time = new Element('time', { xmlns: 'urn:xmpp:time' });
      time.c('tzo').t('+00:00');
      // XEP-0082 DateTime, UTC, millisecond precision.
      time.c('utc').t(new Date().toISOString());
      reply(time);
      return true;
    });
  },
});
