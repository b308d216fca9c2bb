// STARTTLS (RFC 6120 5) and direct TLS (XEP-0368) over real sockets.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { expect } from 'chai';
import type { Element } from 'ltx';
import pino from 'pino';
import { parseConfig } from '../../src/config/index.ts';
import { Server } from '../../src/server.ts';
import { MemoryDriver } from '../../src/storage/memory.ts';
import { useServerAndPool } from '../helpers/fixtures.ts';
import { ClientPool, NS_SASL, NS_STANZAS, NS_TLS } from '../helpers/xmpp-client.ts';

function mechanismNames(features: Element | null): string[] {
  const mechanisms = features?.getChild('mechanisms', NS_SASL);
  return mechanisms ? mechanisms.getChildren('mechanism').map((m) => m.getText()) : [];
}

describe('protocol: TLS', function () {
  const { server, pool } = useServerAndPool({ users: { romeo: 'pw-romeo' } });

  describe('STARTTLS port (required)', () => {
    it('answers the header with its own and offers only <starttls><required/></starttls>', async () => {
      const c = await pool.connect();
      c.sendHeader();
      const header = await c.expectHeader();
      expect(header.from).to.equal('localhost');
      expect(header.version).to.equal('1.0');
      expect(header.id).to.be.a('string').and.not.equal('');
      await c.expect(
        `<stream:features strict='true'>
           <starttls xmlns='${NS_TLS}' strict='true'><required strict='true'/></starttls>
         </stream:features>`,
      );
    });

    it('ends the stream with policy-violation when <auth> comes before STARTTLS', async () => {
      const c = await pool.connect();
      await c.open();
      c.send(
        `<auth xmlns='${NS_SASL}' mechanism='PLAIN'>${Buffer.from('\0romeo\0pw-romeo').toString('base64')}</auth>`,
      );
      await c.expectStreamError('policy-violation');
    });

    it('ends the stream with policy-violation when a stanza comes before STARTTLS', async () => {
      const c = await pool.connect();
      await c.open();
      c.send(`<message to='romeo@localhost'><body>in clear text</body></message>`);
      await c.expectStreamError('policy-violation');
    });

    it('offers SASL only after TLS, PLAIN included, and no second STARTTLS', async () => {
      const c = await pool.connect();
      const before = await c.open();
      expect(mechanismNames(before)).to.deep.equal([]);
      const after = await c.startTls();
      expect(c.tlsSocket.getProtocol()).to.equal('TLSv1.3');
      expect(mechanismNames(after)).to.include.members(['SCRAM-SHA-256', 'SCRAM-SHA-1', 'PLAIN']);
      expect(after.getChild('starttls', NS_TLS), 'starttls offered again over TLS').to.equal(undefined);
    });

    it('refuses a second STARTTLS with policy-violation', async () => {
      const c = await pool.connectSecure();
      c.send(`<starttls xmlns='${NS_TLS}'/>`);
      await c.expectStreamError('policy-violation');
    });

    it('logs in after STARTTLS and binds', async () => {
      const c = await pool.login('romeo', 'pw-romeo', { resource: 'tls' });
      expect(c.jid).to.equal('romeo@localhost/tls');
    });

    it('refuses TLS 1.1 during STARTTLS with a protocol_version alert', async () => {
      const c = await pool.connect();
      await c.open();
      c.send(`<starttls xmlns='${NS_TLS}'/>`);
      await c.expect(`<proceed xmlns='${NS_TLS}'/>`);
      const err = await tlsFailure({ socket: c.socket });
      expect(err.code).to.equal('ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION');
    });
  });

  describe('direct TLS port (XEP-0368)', () => {
    it("negotiates ALPN 'xmpp-client' and offers SASL right away", async () => {
      const c = await pool.connect({ port: server.tlsPort, directTls: true });
      expect(c.tlsSocket.alpnProtocol).to.equal('xmpp-client');
      const features = await c.open();
      expect(features.getChild('starttls', NS_TLS)).to.equal(undefined);
      expect(mechanismNames(features)).to.include.members([
        'SCRAM-SHA-256-PLUS',
        'SCRAM-SHA-1-PLUS',
        'SCRAM-SHA-256',
        'SCRAM-SHA-1',
        'PLAIN',
      ]);
    });

    it('logs in and binds', async () => {
      const c = await pool.login('romeo', 'pw-romeo', {
        port: server.tlsPort,
        directTls: true,
        resource: 'direct',
      });
      expect(c.jid).to.equal('romeo@localhost/direct');
    });

    it('refuses TLS 1.1 with a protocol_version alert', async () => {
      const err = await tlsFailure({ host: '127.0.0.1', port: server.tlsPort });
      expect(err.code).to.equal('ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION');
    });

    it('accepts TLS 1.2', async () => {
      const c = await pool.connect({
        port: server.tlsPort,
        directTls: true,
        tlsOptions: { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' },
      });
      expect(c.tlsSocket.getProtocol()).to.equal('TLSv1.2');
      expect(mechanismNames(await c.open())).to.include('SCRAM-SHA-256-PLUS');
    });
  });

  describe('STARTTLS port with starttls_required: false', () => {
    let optional: Server;
    let certDir: string;
    const optionalPool = new ClientPool(() => ({ port: optional.listeners[0]!.port }));

    before(async () => {
      certDir = mkdtempSync(join(tmpdir(), 'chorus-tls-test-'));
      const config = parseConfig(
        [
          'hosts: [{ domain: localhost }]',
          'listeners: [{ port: 1, address: 127.0.0.1, tls: starttls, starttls_required: false }]',
          'storage: { driver: memory }',
          `certs: { dir: ${certDir} }`,
          'module_options: { register: { allow_registration: true } }',
        ].join('\n'),
        { file: 'optional-tls.yaml', env: {} },
      );
      config.listeners[0]!.port = 0;
      optional = new Server(config, { log: pino({ level: 'silent' }), storage: new MemoryDriver() });
      await optional.start();
      await optional.accounts.create('localhost', 'romeo', 'pw-romeo');
    });
    afterEach(() => optionalPool.destroyAll());
    after(async () => {
      await optionalPool.destroyAll();
      await optional.stop();
      rmSync(certDir, { recursive: true, force: true });
    });

    it('offers optional STARTTLS and SCRAM, but neither PLAIN nor -PLUS, in the clear', async () => {
      const c = await optionalPool.connect();
      const features = await c.open();
      const starttls = features.getChild('starttls', NS_TLS);
      expect(starttls, 'starttls offered').to.not.equal(undefined);
      expect(starttls!.getChild('required')).to.equal(undefined);
      expect(mechanismNames(features)).to.deep.equal(['SCRAM-SHA-256', 'SCRAM-SHA-1']);
    });

    it('refuses PLAIN in the clear with invalid-mechanism', async () => {
      const c = await optionalPool.connect();
      await c.open();
      const outcome = await c.tryAuthenticate('romeo', 'pw-romeo', 'PLAIN');
      expect(outcome.ok).to.equal(false);
      if (!outcome.ok) expect(outcome.condition).to.equal('invalid-mechanism');
    });

    // Registration carries the new password in the clear, exactly what
    // keeping PLAIN off unencrypted streams is meant to prevent.
    it('does not offer in-band registration in the clear', async () => {
      const c = await optionalPool.connect();
      const features = await c.open();
      expect(features.getChild('register', 'http://jabber.org/features/iq-register')).to.equal(undefined);
    });

    it('does not create an account from a registration sent in the clear', async () => {
      const c = await optionalPool.connect();
      await c.open();
      c.send(
        `<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>paris</username><password>in-the-clear</password></query></iq>`,
      );
      await c.expect(
        `<iq type='error' id='reg'><error type='cancel'><not-allowed xmlns='${NS_STANZAS}'/></error></iq>`,
      );
      expect(await optional.accounts.exists('localhost', 'paris')).to.equal(false);
    });

    it('offers registration once STARTTLS is done', async () => {
      const c = await optionalPool.connect();
      await c.open();
      const features = await c.startTls();
      expect(features.getChild('register', 'http://jabber.org/features/iq-register')).to.not.equal(undefined);
    });

    it('offers PLAIN once STARTTLS is done', async () => {
      const c = await optionalPool.connect();
      await c.open();
      expect(mechanismNames(await c.startTls())).to.include('PLAIN');
      await c.authenticate('romeo', 'pw-romeo', 'PLAIN');
      expect(await c.bind('r')).to.equal('romeo@localhost/r');
    });
  });
});

/** A TLS 1.0/1.1-only handshake (security level 0 so that our side really offers it); resolves with the error. */
function tlsFailure(target: { socket: tls.ConnectionOptions['socket'] } | { host: string; port: number }) {
  return new Promise<NodeJS.ErrnoException>((resolve, reject) => {
    const socket = tls.connect({
      ...target,
      servername: 'localhost',
      rejectUnauthorized: false,
      minVersion: 'TLSv1',
      maxVersion: 'TLSv1.1',
      ciphers: 'DEFAULT@SECLEVEL=0',
    });
    socket.once('secureConnect', () => {
      socket.destroy();
      reject(new Error(`the server accepted ${socket.getProtocol()}`));
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err));
  });
}
