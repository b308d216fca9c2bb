// In-band registration (XEP-0077): account creation before login when the
// operator allows it, password change and account removal after login.
import { expect } from 'chai';
import { useServerAndPool } from '../helpers/fixtures.ts';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { ClientPool, NS_STANZAS, type XmppClient } from '../helpers/xmpp-client.ts';

const NS_REGISTER = 'jabber:iq:register';
const NS_FEATURE = 'http://jabber.org/features/iq-register';

function registerSet(id: string, username: string, password: string): string {
  return `<iq type='set' id='${id}'><query xmlns='${NS_REGISTER}'><username>${username}</username><password>${password}</password></query></iq>`;
}

async function loginFails(pool: ClientPool, username: string, password: string): Promise<string> {
  const c = await pool.connectSecure();
  const outcome = await c.tryAuthenticate(username, password);
  if (outcome.ok) throw new Error(`${username} could still log in with ${password}`);
  return outcome.condition;
}

describe('protocol: in-band registration', function () {
  describe('disabled (the default)', () => {
    const { server, pool } = useServerAndPool();

    it('advertises no <register/> stream feature', async () => {
      const c = await pool.connectSecure();
      expect(c.features!.getChild('mechanisms'), 'SASL is offered').to.not.equal(undefined);
      expect(c.features!.getChild('register', NS_FEATURE)).to.equal(undefined);
    });

    it('answers a pre-auth registration IQ with service-unavailable and creates nothing', async () => {
      const c = await pool.connectSecure();
      c.send(`<iq type='get' id='g1'><query xmlns='${NS_REGISTER}'/></iq>`);
      await c.expect(
        `<iq type='error' id='g1'><error type='cancel'><service-unavailable xmlns='${NS_STANZAS}'/></error></iq>`,
      );
      c.send(registerSet('s1', 'mallory', 'long-password'));
      await c.expect(
        `<iq type='error' id='s1'><error type='cancel'><service-unavailable xmlns='${NS_STANZAS}'/></error></iq>`,
      );
      expect(await server.server.accounts.exists('localhost', 'mallory')).to.equal(false);
    });
  });

  describe('enabled', () => {
    const { server, pool } = useServerAndPool({
      yaml: 'module_options: { register: { allow_registration: true, max_registrations_per_address: 100 } }',
      users: { romeo: 'pw-romeo' },
    });

    it('advertises the <register/> stream feature after STARTTLS', async () => {
      const c = await pool.connectSecure();
      expect(c.features!.getChild('register', NS_FEATURE)).to.not.equal(undefined);
    });

    it('returns the registration form', async () => {
      const c = await pool.connectSecure();
      c.send(`<iq type='get' id='form'><query xmlns='${NS_REGISTER}'/></iq>`);
      await c.expect(
        `<iq type='result' id='form'>
           <query xmlns='${NS_REGISTER}'><instructions>{any}</instructions><username/><password/></query>
         </iq>`,
      );
    });

    it('creates an account that can then log in', async () => {
      const c = await pool.connectSecure();
      c.send(registerSet('new', 'benvolio', 'cousin-pw'));
      await c.expect(`<iq type='result' id='new'/>`);
      // The same stream goes on to authenticate as the new account.
      await c.authenticate('benvolio', 'cousin-pw');
      expect(await c.bind('r')).to.equal('benvolio@localhost/r');
    });

    it('normalizes the username (case folding) before creating it', async () => {
      const c = await pool.connectSecure();
      c.send(registerSet('caps', 'Balthasar', 'servant-pw'));
      await c.expect(`<iq type='result' id='caps'/>`);
      await c.authenticate('balthasar', 'servant-pw');
      expect(await c.bind('r')).to.equal('balthasar@localhost/r');
    });

    it('refuses an existing username with conflict', async () => {
      const c = await pool.connectSecure();
      c.send(registerSet('dup', 'romeo', 'hijack-pw'));
      await c.expect(
        `<iq type='error' id='dup'><error type='cancel'><conflict xmlns='${NS_STANZAS}'/></error></iq>`,
      );
      // The original password still works: nothing was overwritten.
      await (await pool.connectSecure()).authenticate('romeo', 'pw-romeo');
    });

    it('refuses a too short password and an invalid username with not-acceptable', async () => {
      const c = await pool.connectSecure();
      c.send(registerSet('short', 'peter', 'abc'));
      await c.expect(
        `<iq type='error' id='short'><error type='modify'><not-acceptable xmlns='${NS_STANZAS}'/></error></iq>`,
      );
      c.send(registerSet('badname', 'peter@home', 'long-enough'));
      await c.expect(
        `<iq type='error' id='badname'><error type='modify'><not-acceptable xmlns='${NS_STANZAS}'/></error></iq>`,
      );
      expect(await server.server.accounts.exists('localhost', 'peter')).to.equal(false);
    });

    describe('after login', () => {
      let user: string;
      let counter = 0;
      beforeEach(async () => {
        user = `friar${++counter}`;
        await server.addUser(user, 'old-password');
      });

      it('tells a logged-in user that they are registered', async () => {
        const c = await pool.login(user, 'old-password');
        c.send(`<iq type='get' id='info' to='localhost'><query xmlns='${NS_REGISTER}'/></iq>`);
        await c.expect(
          `<iq type='result' id='info'><query xmlns='${NS_REGISTER}'><registered/><username>${user}</username></query></iq>`,
        );
      });

      it('changes the password: the new one logs in, the old one fails', async () => {
        const c = await pool.login(user, 'old-password');
        c.send(
          `<iq type='set' id='pw' to='localhost'><query xmlns='${NS_REGISTER}'><username>${user}</username><password>new-password</password></query></iq>`,
        );
        await c.expect(`<iq type='result' id='pw'/>`);
        expect(await loginFails(pool, user, 'old-password')).to.equal('not-authorized');
        const again = await pool.login(user, 'new-password', { resource: 'again' });
        expect(again.jid).to.equal(`${user}@localhost/again`);
      });

      it("refuses to change someone else's password with not-allowed", async () => {
        const c = await pool.login(user, 'old-password');
        c.send(
          `<iq type='set' id='other' to='localhost'><query xmlns='${NS_REGISTER}'><username>romeo</username><password>taken-over</password></query></iq>`,
        );
        await c.expect(
          `<iq type='error' id='other'><error type='cancel'><not-allowed xmlns='${NS_STANZAS}'/></error></iq>`,
        );
        await (await pool.connectSecure()).authenticate('romeo', 'pw-romeo');
      });

      it('removes the account: result, every session closed, and no more logins', async () => {
        const a = await pool.login(user, 'old-password', { resource: 'a' });
        const b = await pool.login(user, 'old-password', { resource: 'b' });
        a.send(`<iq type='set' id='bye' to='localhost'><query xmlns='${NS_REGISTER}'><remove/></query></iq>`);
        await a.expect(`<iq type='result' id='bye'/>`);
        await a.expectStreamError('not-authorized');
        await b.expectStreamError('not-authorized');
        expect(await loginFails(pool, user, 'old-password')).to.equal('not-authorized');
      });
    });
  });

  describe('per-address limit (max_registrations_per_address: 2)', () => {
    let server: TestServer;
    const pool = new ClientPool(() => ({ port: server.port }));
    before(async () => {
      server = await startTestServer({
        yaml: 'module_options: { register: { allow_registration: true, max_registrations_per_address: 2 } }',
      });
    });
    after(async () => {
      await pool.destroyAll();
      await server.stop();
    });

    it('refuses the third registration from one address with resource-constraint', async () => {
      let c: XmppClient = await pool.connectSecure();
      c.send(registerSet('r1', 'sampson', 'capulet-1'));
      await c.expect(`<iq type='result' id='r1'/>`);
      c = await pool.connectSecure(); // a new connection does not reset the count
      c.send(registerSet('r2', 'gregory', 'capulet-2'));
      await c.expect(`<iq type='result' id='r2'/>`);
      c.send(registerSet('r3', 'abram', 'montague-1'));
      await c.expect(
        `<iq type='error' id='r3'><error type='wait'><resource-constraint xmlns='${NS_STANZAS}'/></error></iq>`,
      );
      expect(await server.server.accounts.exists('localhost', 'abram')).to.equal(false);
      expect(await server.server.accounts.exists('localhost', 'gregory')).to.equal(true);
    });
  });
});
