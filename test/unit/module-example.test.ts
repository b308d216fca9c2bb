// The worked example of docs/modules.md, docs/examples/motd.ts, loaded by its
// path into a real server on loopback and used by a real client over TLS.
import { expect } from 'chai';
// A static import as well, so that the type check covers the example.
import motd from '../../docs/examples/motd.ts';
import { ModuleError, resolveModule, validateOptions } from '../../src/modules/loader.ts';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { ClientPool, type XmppClient } from '../helpers/xmpp-client.ts';

/** As an admin writes it in conf/chorus.yaml: relative to the directory the server runs in. */
const MOTD_PATH = './docs/examples/motd.ts';
const NS_MOTD = 'urn:example:motd';
const NS_DISCO_INFO = 'http://jabber.org/protocol/disco#info';
const PASSWORD = 'correct horse';

const NS_STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';

/**
 * A real server running disco, ping and the example module. The schema of
 * `modules:` in conf/chorus.yaml only takes built-in names today (see the
 * first test), so the path is added through a configuration reload, which
 * resolves and loads modules the same way start-up does.
 */
async function serverWithMotd(motdOptions?: string): Promise<TestServer> {
  const lines = ['modules: [disco, ping]'];
  if (motdOptions) lines.push(`module_options: { motd: ${motdOptions} }`);
  const t = await startTestServer({ yaml: lines.join('\n') });
  await t.server.reload({ ...t.server.config, modules: [...t.server.config.modules, MOTD_PATH] });
  await t.addUser('alice', PASSWORD);
  return t;
}

/** The features in the server's disco#info, as the client sees them. */
async function discoFeatures(client: XmppClient, id: string): Promise<string[]> {
  client.send(`<iq type='get' id='${id}' to='localhost'><query xmlns='${NS_DISCO_INFO}'/></iq>`);
  const result = await client.expect(`<iq type='result' id='${id}'><query xmlns='${NS_DISCO_INFO}'/></iq>`);
  return (result.getChild('query')?.getChildren('feature') ?? []).map((f) => String(f.attrs.var));
}

describe('docs/examples/motd.ts', function () {
  let t: TestServer | null = null;
  const pool = new ClientPool(() => ({ port: t!.port, domain: t!.domain }));
  const login = (resource: string) => pool.login('alice', PASSWORD, { resource });

  afterEach(async function () {
    await pool.destroyAll();
    await t?.stop();
    t = null;
  });

  it('loads when conf/chorus.yaml lists it by path', async function () {
    t = await startTestServer({ yaml: `modules: [disco, ping, ${MOTD_PATH}]` });
    expect([...t.server.loadedModules(t.domain).keys()]).to.include('motd');
  });

  describe('with a configured text', function () {
    const HEADLINE = (resource: string) =>
      `<message type='headline' from='localhost' to='alice@localhost/${resource}' strict='true'>` +
      `<body>Upgrade tonight at 22:00</body></message>`;

    beforeEach(async function () {
      t = await serverWithMotd("{ text: 'Upgrade tonight at 22:00' }");
    });

    it('sends the text as a headline from the server when a client logs in', async function () {
      const alice = await login('laptop');
      await alice.expect(HEADLINE('laptop'));
    });

    it('sends it to the new session only, once', async function () {
      const laptop = await login('laptop');
      await laptop.expect(HEADLINE('laptop'));
      const phone = await login('phone');
      await phone.expect(HEADLINE('phone'));
      await phone.expectNothing();
      await laptop.expectNothing();
    });

    it("lists urn:example:motd in the server's disco#info", async function () {
      const alice = await login('laptop');
      await alice.expect(HEADLINE('laptop'));
      const features = await discoFeatures(alice, 'd1');
      expect(features).to.include(NS_MOTD).and.include('urn:xmpp:ping');
    });

    it('answers the motd IQ sent without a `to`, and sent to the server', async function () {
      const alice = await login('laptop');
      await alice.expect(HEADLINE('laptop'));
      alice.send(`<iq type='get' id='m1'><motd xmlns='${NS_MOTD}'/></iq>`);
      await alice.expect(
        `<iq type='result' id='m1'><motd xmlns='${NS_MOTD}'>Upgrade tonight at 22:00</motd></iq>`,
      );
      alice.send(`<iq type='get' id='m2' to='localhost'><motd xmlns='${NS_MOTD}'/></iq>`);
      await alice.expect(
        `<iq type='result' id='m2' from='localhost'><motd xmlns='${NS_MOTD}'>Upgrade tonight at 22:00</motd></iq>`,
      );
    });

    it('leaves nothing behind once a reload drops it from the module list', async function () {
      await t!.server.reload({ ...t!.server.config, modules: ['disco', 'ping'] });
      expect([...t!.server.loadedModules(t!.domain).keys()]).not.to.include('motd');
      const alice = await login('laptop');
      alice.send(`<iq type='get' id='m1'><motd xmlns='${NS_MOTD}'/></iq>`);
      // No headline came first: the next stanza is the answer, an error.
      await alice.expect(
        `<iq type='error' id='m1'><error type='cancel'><service-unavailable xmlns='${NS_STANZAS}'/></error></iq>`,
      );
      expect(await discoFeatures(alice, 'd1')).not.to.include(NS_MOTD);
    });
  });

  it('uses its default text, and sends nothing at login with on_login: false', async function () {
    t = await serverWithMotd('{ on_login: false }');
    const alice = await login('laptop');
    alice.send(`<iq type='get' id='m1'><motd xmlns='${NS_MOTD}'/></iq>`);
    // The answer is the first stanza after the bind: no headline was sent.
    await alice.expect(`<iq type='result' id='m1'><motd xmlns='${NS_MOTD}'>Welcome to Chorus!</motd></iq>`);
    await alice.expectNothing();
  });

  describe('options', function () {
    it('fills in the documented defaults', function () {
      expect(validateOptions(motd, undefined, 'module_options.motd')).to.deep.equal({
        text: 'Welcome to Chorus!',
        on_login: true,
      });
    });

    it('refuses an empty text, naming module_options.motd.text', async function () {
      const def = await resolveModule(MOTD_PATH);
      expect(() => validateOptions(def, { text: '' }, 'module_options.motd'))
        .to.throw(ModuleError)
        .with.property('message')
        .that.includes('module_options.motd.text');
    });

    it('refuses a misspelt option', function () {
      expect(() => validateOptions(motd, { txet: 'hello' }, 'module_options.motd'))
        .to.throw(ModuleError)
        .with.property('message')
        .that.includes('txet');
    });
  });
});
