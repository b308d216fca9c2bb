// Account features (disco#info to the user's own bare JID) come from what
// modules register with ctx.addAccountFeature; clients such as Conversations
// look there for urn:xmpp:mam:2 and similar per-account services.
import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { ClientPool } from '../helpers/xmpp-client.ts';

describe('protocol: disco#info of the account', () => {
  let server: TestServer;
  let pool: ClientPool;
  let dir: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'chorus-account-feature-'));
    const api = resolve('src/modules/api.ts');
    const file = join(dir, 'account-feature.ts');
    writeFileSync(
      file,
      `import { defineModule } from ${JSON.stringify(api)};\n` +
        `export default defineModule({ name: 'account-feature', description: 'test', setup(ctx) {\n` +
        `  ctx.addAccountFeature('urn:example:per-account');\n` +
        `  ctx.addFeature('urn:example:server-only');\n} });\n`,
    );
    server = await startTestServer({ yaml: `modules: [disco, ping, ${file}]` });
    await server.addUser('romeo', 'pw-romeo');
    pool = new ClientPool(() => ({ port: server.port }));
  });
  after(async () => {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  afterEach(() => pool.destroyAll());

  it('lists account features on the bare JID and server features on the host only', async () => {
    const c = await pool.connect();
    await c.login('romeo', 'pw-romeo');
    c.send(
      `<iq type='get' id='a1' to='romeo@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>`,
    );
    const account = await c.expect(
      `<iq type='result' id='a1'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='account' type='registered'/></query></iq>`,
    );
    const accountFeatures = account
      .getChild('query')!
      .getChildren('feature')
      .map((f) => f.attrs.var as string);
    expect(accountFeatures).to.include('urn:example:per-account');
    expect(accountFeatures).to.not.include('urn:example:server-only');

    c.send(
      `<iq type='get' id='h1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>`,
    );
    const host = await c.expect(`<iq type='result' id='h1'/>`);
    const hostFeatures = host
      .getChild('query')!
      .getChildren('feature')
      .map((f) => f.attrs.var as string);
    expect(hostFeatures).to.include('urn:example:server-only');
    expect(hostFeatures).to.not.include('urn:example:per-account');
  });
});
