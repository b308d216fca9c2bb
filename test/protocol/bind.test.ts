// Resource binding (RFC 6120 7), resource conflicts and limits, and what a
// client may send between SASL and bind.
import { expect } from 'chai';
import { useServerAndPool } from '../helpers/fixtures.ts';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { ClientPool, NS_BIND, NS_STANZAS, type XmppClient } from '../helpers/xmpp-client.ts';

const NS_SESSION = 'urn:ietf:params:xml:ns:xmpp-session';

/** Connected, STARTTLS done and authenticated as romeo, not yet bound. */
async function authenticated(pool: ClientPool): Promise<XmppClient> {
  const c = await pool.connectSecure();
  await c.authenticate('romeo', 'pw-romeo');
  return c;
}

async function ping(c: XmppClient): Promise<void> {
  const id = c.nextId('ping');
  c.send(`<iq type='get' id='${id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
  await c.expect(`<iq type='result' id='${id}' from='localhost'/>`);
}

describe('protocol: resource binding', function () {
  const { pool } = useServerAndPool({
    yaml: 'limits: { max_resources_per_user: 2 }',
    users: { romeo: 'pw-romeo', juliet: 'pw-juliet' },
  });

  it('offers <bind/> and an optional <session/> after SASL', async () => {
    const c = await pool.connectSecure();
    const features = await c.authenticate('romeo', 'pw-romeo');
    expect(features.getChild('bind', NS_BIND)).to.not.equal(undefined);
    expect(features.getChild('session', NS_SESSION)?.getChild('optional')).to.not.equal(undefined);
  });

  it('binds the resource the client asks for', async () => {
    const c = await authenticated(pool);
    expect(await c.bind('balcony')).to.equal('romeo@localhost/balcony');
  });

  it('generates a distinct resource when the client asks for none', async () => {
    const a = await authenticated(pool);
    const b = await authenticated(pool);
    const jidA = await a.bind();
    const jidB = await b.bind();
    expect(jidA).to.match(/^romeo@localhost\/.+$/);
    expect(jidB).to.match(/^romeo@localhost\/.+$/);
    expect(jidA).to.not.equal(jidB);
  });

  it('refuses a resource that is not a valid resourcepart with bad-request', async () => {
    const c = await authenticated(pool);
    c.send(
      `<iq type='set' id='b1'><bind xmlns='${NS_BIND}'><resource>${'x'.repeat(1100)}</resource></bind></iq>`,
    );
    await c.expect(
      `<iq type='error' id='b1'><error type='modify'><bad-request xmlns='${NS_STANZAS}'/></error></iq>`,
    );
    expect(await c.bind('fine')).to.equal('romeo@localhost/fine');
  });

  it('replace_old (default): the old session gets <conflict/>, the new one binds and receives', async () => {
    const old = await authenticated(pool);
    await old.bind('home');
    const fresh = await authenticated(pool);
    expect(await fresh.bind('home')).to.equal('romeo@localhost/home');
    await old.expectStreamError('conflict');

    const juliet = await pool.login('juliet', 'pw-juliet');
    juliet.send(`<message to='romeo@localhost/home' type='chat' id='m1'><body>which one?</body></message>`);
    await fresh.expect(
      `<message from='${juliet.jid}' to='romeo@localhost/home' id='m1'><body>which one?</body></message>`,
    );
  });

  it('answers the legacy session IQ with a result', async () => {
    const c = await authenticated(pool);
    await c.bind();
    c.send(`<iq type='set' id='sess1'><session xmlns='${NS_SESSION}'/></iq>`);
    await c.expect(`<iq type='result' id='sess1'/>`);
  });

  it('ends the stream with not-authorized for a message before bind', async () => {
    const c = await authenticated(pool);
    c.send(`<message to='juliet@localhost' type='chat'><body>too early</body></message>`);
    await c.expectStreamError('not-authorized');
  });

  it('ends the stream with not-authorized for presence before bind', async () => {
    const c = await authenticated(pool);
    c.send(`<presence/>`);
    await c.expectStreamError('not-authorized');
  });

  it('answers any other IQ before bind with not-authorized, and still allows binding', async () => {
    const c = await authenticated(pool);
    c.send(`<iq type='get' id='early' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
    await c.expect(
      `<iq type='error' id='early'><error type='auth'><not-authorized xmlns='${NS_STANZAS}'/></error></iq>`,
    );
    await c.bind('later');
    await ping(c);
  });

  it('refuses a third resource with resource-constraint (max_resources_per_user: 2)', async () => {
    const one = await authenticated(pool);
    await one.bind('one');
    const two = await authenticated(pool);
    await two.bind('two');
    const three = await authenticated(pool);
    three.send(`<iq type='set' id='b3'><bind xmlns='${NS_BIND}'><resource>three</resource></bind></iq>`);
    await three.expect(
      `<iq type='error' id='b3'><error type='wait'><resource-constraint xmlns='${NS_STANZAS}'/></error></iq>`,
    );
    // The refusal leaves the others alone, and frees up once one leaves.
    await ping(one);
    await two.close();
    expect(await three.bind('three')).to.equal('romeo@localhost/three');
  });

  describe('sessions.conflict: refuse_new', () => {
    let refusing: TestServer;
    const refusingPool = new ClientPool(() => ({ port: refusing.port }));

    before(async () => {
      refusing = await startTestServer({ yaml: 'sessions: { conflict: refuse_new }' });
      await refusing.addUser('romeo', 'pw-romeo');
    });
    after(async () => {
      await refusingPool.destroyAll();
      await refusing.stop();
    });

    it('answers the new bind with a conflict error and keeps the old session', async () => {
      const old = await authenticated(refusingPool);
      await old.bind('home');
      const fresh = await authenticated(refusingPool);
      fresh.send(`<iq type='set' id='b2'><bind xmlns='${NS_BIND}'><resource>home</resource></bind></iq>`);
      await fresh.expect(
        `<iq type='error' id='b2'><error type='cancel'><conflict xmlns='${NS_STANZAS}'/></error></iq>`,
      );
      await ping(old);
      // The refused client can still bind another resource.
      expect(await fresh.bind('away')).to.equal('romeo@localhost/away');
    });
  });
});
