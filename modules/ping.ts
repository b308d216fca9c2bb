// XEP-0199: answer pings to the server and to the user's own account.
import { defineModule } from '../src/modules/api.ts';

export default defineModule({
  name: 'ping',
  description: 'Answers XMPP pings (XEP-0199)',
  xeps: [{ number: 199, version: '2.0.1' }],
  setup(ctx) {
    ctx.addFeature('urn:xmpp:ping');
    ctx.handleIq(
      'get',
      'urn:xmpp:ping',
      'ping',
      ({ reply }) => {
        reply();
        return true;
      },
      ['host', 'self'],
    );
  },
});
