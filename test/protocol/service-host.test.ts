// A module can serve a subdomain (as MUC serves conference.<host>): stanzas
// to it reach the module's handlers, clients cannot log in to it, and it is
// gone when the module unloads.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseConfig } from '../../src/config/index.ts';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { ClientPool } from '../helpers/xmpp-client.ts';

describe('protocol: service hosts of modules', () => {
  let server: TestServer;
  let pool: ClientPool;
  let dir: string;
  let modulePath: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'chorus-service-'));
    modulePath = join(dir, 'echo-service.ts');
    const api = JSON.stringify(resolve('src/modules/api.ts'));
    const ltx = JSON.stringify(resolve('node_modules/ltx/src/ltx.js'));
    writeFileSync(
      modulePath,
      `import { defineModule } from ${api};\nimport { Element } from ${ltx};\n` +
        `export default defineModule({ name: 'echo-service', description: 'test', setup(ctx) {\n` +
        `  const svc = ctx.addService('echo.' + ctx.host);\n` +
        `  svc.addIdentity({ category: 'component', type: 'generic', name: 'Echo' });\n` +
        `  svc.handleIq('get', 'http://jabber.org/protocol/disco#info', 'query', ({ reply }) => {\n` +
        `    const q = new Element('query', { xmlns: 'http://jabber.org/protocol/disco#info' });\n` +
        `    for (const i of svc.identities()) q.c('identity', { category: i.category, type: i.type, name: i.name });\n` +
        `    reply(q); return true; });\n` +
        `  svc.hook('message/bare', ({ stanza, from, to }) => {\n` +
        `    ctx.send(new Element('message', { from: to.toString(), to: from.toString(), type: 'chat' }).c('body').t('echo: ' + stanza.getChildText('body')).root());\n` +
        `    return true; });\n} });\n`,
    );
    server = await startTestServer({ yaml: `modules: [disco, ping, ${modulePath}]` });
    await server.addUser('romeo', 'pw-romeo');
    pool = new ClientPool(() => ({ port: server.port }));
  });
  after(async () => {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  afterEach(() => pool.destroyAll());

  it('routes IQs and messages for the subdomain and its JIDs to the module', async () => {
    const c = await pool.connect();
    await c.login('romeo', 'pw-romeo', { resource: 'r' });
    c.send(
      `<iq type='get' id='d1' to='echo.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>`,
    );
    await c.expect(
      `<iq type='result' id='d1' from='echo.localhost'><query><identity category='component' type='generic' name='Echo'/></query></iq>`,
    );
    c.send(`<message to='room@echo.localhost' type='chat' id='m1'><body>hi</body></message>`);
    await c.expect(
      `<message from='room@echo.localhost' to='romeo@localhost/r' type='chat'><body>echo: hi</body></message>`,
    );
    // Unknown payloads to the service still get the core's answer.
    c.send(`<iq type='get' id='v1' to='echo.localhost'><query xmlns='jabber:iq:version'/></iq>`);
    await c.expect(`<iq type='error' id='v1'><error type='cancel'><service-unavailable/></error></iq>`);
  });

  it('takes no client streams', async () => {
    const c = await pool.connect();
    c.sendHeader({ to: 'echo.localhost' });
    await c.expectHeader();
    await c.expectStreamError('host-unknown');
  });

  it('is gone once the module is unloaded', async () => {
    const next = parseConfig(
      `hosts: [{ domain: localhost }]\nmodules: [disco, ping]\nstorage: { driver: memory }\ncerts: { dir: ${server.server.config.certs.dir} }`,
      { env: {} },
    );
    await server.server.reload(next);
    const c = await pool.connect();
    await c.login('romeo', 'pw-romeo');
    c.send(
      `<iq type='get' id='d2' to='echo.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>`,
    );
    await c.expect(`<iq type='error' id='d2'><error><remote-server-not-found/></error></iq>`);
  });
});
