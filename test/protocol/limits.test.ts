// Abuse limits that apply before and around XML: new connections per
// address, and traffic shaping of a client that floods.
import { expect } from 'chai';
import { connect as tcpConnect } from 'node:net';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { ClientPool } from '../helpers/xmpp-client.ts';

/** Opens a TCP connection and reports whether the server closed it without a word. */
function droppedAtOnce(port: number, localAddress = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const socket = tcpConnect({ host: '127.0.0.1', port, localAddress });
    let data = '';
    socket.on('data', (d) => (data += d.toString()));
    socket.on('error', reject);
    socket.on('connect', () => {
      socket.write(
        `<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>`,
      );
    });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(false);
    }, 1500);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(data === '');
    });
  });
}

describe('protocol: connection and traffic limits', () => {
  describe('new connections per address', () => {
    let server: TestServer;
    before(async () => {
      server = await startTestServer({ connectionsPerMinute: 3 });
    });
    after(() => server.stop());

    it('drops connections over the limit at once, and only from that address', async () => {
      const results: boolean[] = [];
      for (let i = 0; i < 4; i++) results.push(await droppedAtOnce(server.port));
      expect(results).to.deep.equal([false, false, false, true]);
      // Another address (127.0.0.2 is loopback too) still gets a stream.
      expect(await droppedAtOnce(server.port, '127.0.0.2')).to.equal(false);
    });
  });

  describe('bytes per second from one client', () => {
    let server: TestServer;
    let pool: ClientPool;
    before(async () => {
      server = await startTestServer({ bytesPerSecond: 20_000 });
      await server.addUser('flood', 'pw-flood');
      await server.addUser('calm', 'pw-calm');
      pool = new ClientPool(() => ({ port: server.port }));
    });
    after(() => server.stop());
    afterEach(() => pool.destroyAll());

    it('slows a flooding client down instead of failing it, and keeps serving others', async () => {
      const flood = await pool.connect();
      await flood.login('flood', 'pw-flood');
      const calm = await pool.connect();
      await calm.login('calm', 'pw-calm');
      // 100 KB of pings: 40 KB pass as a burst, the rest at 20 KB/s, so the
      // last answer cannot come before about three seconds.
      const pings = 400;
      const started = Date.now();
      let batch = '';
      for (let i = 0; i < pings; i++) {
        batch += `<iq type='get' id='p${i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`.padEnd(
          250,
          ' ',
        );
      }
      flood.sendRaw(batch);
      calm.send(`<iq type='get' id='calm' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
      await calm.expect(`<iq type='result' id='calm'/>`);
      for (let i = 0; i < pings; i++) await flood.expect(`<iq type='result' id='p${i}'/>`, 15_000);
      expect(Date.now() - started).to.be.greaterThan(2000);
    });
  });
});
