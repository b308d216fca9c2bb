import { expect } from 'chai';
import { createHash, createPrivateKey, X509Certificate } from 'node:crypto';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { CertificateStore, ensureHostCertificate, generateSelfSigned } from '../../src/net/certs.ts';

interface Handshake {
  subjectCN: string;
  fingerprint: string;
  protocol: string | null;
}

function handshake(port: number, options: tls.ConnectionOptions): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...options }, () => {
      const cert = socket.getPeerCertificate();
      const result = {
        subjectCN: String(cert.subject.CN),
        fingerprint: cert.fingerprint256,
        protocol: socket.getProtocol(),
      };
      socket.end();
      resolve(result);
    });
    socket.on('error', reject);
  });
}

async function rejects(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  expect.fail('expected a rejection');
}

describe('certs', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'chorus-certs-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  describe('generation', () => {
    it('generates a self-signed pair once, then reuses it', async () => {
      const messages: string[] = [];
      const first = await ensureHostCertificate('example.org', dir, (m) => messages.push(m));
      expect(first).to.deep.equal({
        certPath: path.join(dir, 'example.org.crt'),
        keyPath: path.join(dir, 'example.org.key'),
        generated: true,
      });
      expect(messages.join('\n')).to.include('self-signed certificate for example.org');

      const x509 = new X509Certificate(readFileSync(first.certPath));
      const san = x509.subjectAltName!.split(', ');
      expect(san).to.include('DNS:example.org');
      expect(san).to.include('DNS:*.example.org');
      expect(san).to.include('othername:XmppAddr:example.org');
      expect(x509.subject).to.equal('CN=example.org');
      expect(x509.issuer).to.equal('CN=example.org');
      expect(x509.checkHost('conference.example.org')).to.equal('*.example.org');
      expect(x509.keyUsage).to.have.members(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
      expect(x509.verify(x509.publicKey)).to.equal(true);
      expect(x509.checkPrivateKey(createPrivateKey(readFileSync(first.keyPath)))).to.equal(true);
      const days = (Date.parse(x509.validTo) - Date.parse(x509.validFrom)) / 86_400_000;
      expect(days).to.be.within(365, 366);
      expect(x509.publicKey.asymmetricKeyDetails?.modulusLength).to.equal(2048);

      expect(statSync(first.keyPath).mode & 0o777).to.equal(0o600);

      const certBefore = readFileSync(first.certPath, 'utf8');
      const second = await ensureHostCertificate('example.org', dir);
      expect(second.generated).to.equal(false);
      expect(readFileSync(second.certPath, 'utf8')).to.equal(certBefore);
    });

    it('covers 127.0.0.1 and ::1 for localhost', () => {
      const { certPem, keyPem } = generateSelfSigned('localhost');
      const x509 = new X509Certificate(certPem);
      const san = x509.subjectAltName!.split(', ');
      expect(san).to.include.members(['DNS:localhost', 'DNS:*.localhost', 'IP Address:127.0.0.1']);
      expect(x509.checkIP('::1')).to.equal('::1');
      expect(keyPem).to.match(/^-----BEGIN PRIVATE KEY-----/);
    });

    it('uses an IP subjectAltName for IP hosts', () => {
      const x509 = new X509Certificate(generateSelfSigned('[::1]').certPem);
      expect(x509.checkIP('::1')).to.equal('::1');
      expect(x509.subjectAltName).to.not.include('DNS:');
    });

    it('refuses names that are not domains', () => {
      expect(() => generateSelfSigned('../etc/passwd')).to.throw(/not a valid domain/);
    });

    it('generates exactly one pair when called concurrently', async () => {
      const results = await Promise.all([
        ensureHostCertificate('race.example', dir),
        ensureHostCertificate('race.example', dir),
        ensureHostCertificate('race.example', dir),
      ]);
      expect(results.filter((r) => r.generated)).to.have.length(1);
      // The losers' temporary files are gone.
      expect(readdirSync(dir).sort()).to.deep.equal(['race.example.crt', 'race.example.key']);
      const x509 = new X509Certificate(readFileSync(results[0]!.certPath));
      expect(x509.checkPrivateKey(createPrivateKey(readFileSync(results[0]!.keyPath)))).to.equal(true);
    });
  });

  describe('CertificateStore', () => {
    let store: CertificateStore;
    let server: tls.Server;
    let port: number;
    const hosts = [{ domain: 'example.org' }, { domain: 'example.net' }];
    // Key generation is slow on small machines; generate once and give each
    // test its own copy, since tests replace files.
    let template: string;
    before(async () => {
      template = mkdtempSync(path.join(tmpdir(), 'chorus-certs-template-'));
      for (const h of hosts) await ensureHostCertificate(h.domain, template);
    });
    after(() => {
      rmSync(template, { recursive: true, force: true });
    });

    beforeEach(async () => {
      cpSync(template, dir, { recursive: true });
      store = new CertificateStore();
      await store.load(hosts, dir);
      server = tls.createServer(
        { ...store.defaultContextOptions(), SNICallback: store.sniCallback },
        (socket) => {
          socket.on('error', () => {});
          socket.end();
        },
      );
      server.on('tlsClientError', () => {});
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      port = (server.address() as AddressInfo).port;
    });
    afterEach(async () => {
      await new Promise((resolve) => server.close(resolve));
    });

    it('serves each domain its own certificate by SNI', async () => {
      expect((await handshake(port, { servername: 'example.org' })).subjectCN).to.equal('example.org');
      expect((await handshake(port, { servername: 'example.net' })).subjectCN).to.equal('example.net');
      expect((await handshake(port, { servername: 'EXAMPLE.NET' })).subjectCN).to.equal('example.net');
    });

    it('serves subdomains the parent certificate and unknown names the first host', async () => {
      expect((await handshake(port, { servername: 'conference.example.net' })).subjectCN).to.equal(
        'example.net',
      );
      expect((await handshake(port, { servername: 'other.test' })).subjectCN).to.equal('example.org');
      // No SNI at all: the server's default context.
      expect((await handshake(port, {})).subjectCN).to.equal('example.org');
    });

    it('exposes the served certificate for channel binding', async () => {
      const info = store.certificateFor('muc.example.net');
      const onDisk = new X509Certificate(readFileSync(path.join(dir, 'example.net.crt')));
      expect(info.der.equals(onDisk.raw)).to.equal(true);
      expect(info.certPem).to.equal(onDisk.toString());
      expect(info.tlsServerEndPoint.equals(createHash('sha256').update(onDisk.raw).digest())).to.equal(true);
      const seen = await handshake(port, { servername: 'example.net' });
      expect(seen.fingerprint).to.equal(onDisk.fingerprint256);
      expect(store.domains()).to.deep.equal(['example.org', 'example.net']);
      expect(store.contextFor('example.net')).to.equal(store.contextFor('a.b.example.net'));
    });

    it('negotiates TLS 1.2 and 1.3', async () => {
      expect((await handshake(port, { servername: 'example.org', maxVersion: 'TLSv1.2' })).protocol).to.equal(
        'TLSv1.2',
      );
      expect((await handshake(port, { servername: 'example.org' })).protocol).to.equal('TLSv1.3');
    });

    it('refuses TLS 1.1', async () => {
      // The client has to lower OpenSSL's security level to offer TLS 1.1 at
      // all; the refusal must then come from the server.
      const err = await rejects(
        handshake(port, {
          servername: 'example.org',
          minVersion: 'TLSv1',
          maxVersion: 'TLSv1.1',
          ciphers: 'DEFAULT:@SECLEVEL=0',
        }),
      );
      expect((err as NodeJS.ErrnoException).code).to.equal('ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION');

      // Control: the same client does get TLS 1.1 from a server that allows it.
      const lax = tls.createServer({
        cert: readFileSync(path.join(dir, 'example.org.crt')),
        key: readFileSync(path.join(dir, 'example.org.key')),
        minVersion: 'TLSv1',
        ciphers: 'DEFAULT:@SECLEVEL=0',
      });
      lax.on('secureConnection', (socket) => socket.end());
      await new Promise<void>((resolve) => lax.listen(0, '127.0.0.1', resolve));
      try {
        const ok = await handshake((lax.address() as AddressInfo).port, {
          minVersion: 'TLSv1',
          maxVersion: 'TLSv1.1',
          ciphers: 'DEFAULT:@SECLEVEL=0',
        });
        expect(ok.protocol).to.equal('TLSv1.1');
      } finally {
        await new Promise((resolve) => lax.close(resolve));
      }
    });

    it('reload picks up a replaced certificate', async () => {
      const before = await handshake(port, { servername: 'example.org' });
      const { certPem, keyPem } = generateSelfSigned('example.org');
      writeFileSync(path.join(dir, 'example.org.crt'), certPem);
      writeFileSync(path.join(dir, 'example.org.key'), keyPem, { mode: 0o600 });
      // Not re-read until asked.
      expect((await handshake(port, { servername: 'example.org' })).fingerprint).to.equal(before.fingerprint);

      await store.reload(hosts, dir);
      const after = await handshake(port, { servername: 'example.org' });
      expect(after.fingerprint).to.equal(new X509Certificate(certPem).fingerprint256);
      expect(after.fingerprint).to.not.equal(before.fingerprint);
      expect(store.certificateFor('example.org').certPem).to.equal(new X509Certificate(certPem).toString());
    });

    it('reload with a broken file keeps the old certificates and names the file', async () => {
      const before = await handshake(port, { servername: 'example.net' });
      const certPath = path.join(dir, 'example.net.crt');
      writeFileSync(certPath, 'not a certificate\n');

      const err = await rejects(store.reload(hosts, dir));
      expect(err.message).to.include(certPath);
      expect(err.message).to.include('still using the previous certificates');
      expect((await handshake(port, { servername: 'example.net' })).fingerprint).to.equal(before.fingerprint);
      expect((await handshake(port, { servername: 'example.org' })).subjectCN).to.equal('example.org');
    });

    it('reload with a mismatched key keeps the old certificates', async () => {
      const before = store.certificateFor('example.org').der;
      writeFileSync(path.join(dir, 'example.org.key'), generateSelfSigned('example.org').keyPem);
      const err = await rejects(store.reload(hosts, dir));
      expect(err.message).to.match(
        /private key for host example\.org: .*example\.org\.key: the key does not match/,
      );
      expect(store.certificateFor('example.org').der.equals(before)).to.equal(true);
    });
  });

  describe('configured certificate files', () => {
    it('loads a configured pair', async () => {
      const { certPem, keyPem } = generateSelfSigned('example.com');
      const cert = path.join(dir, 'fullchain.pem');
      const key = path.join(dir, 'privkey.pem');
      writeFileSync(cert, certPem);
      writeFileSync(key, keyPem, { mode: 0o600 });
      const store = new CertificateStore();
      await store.load(
        [{ domain: 'example.com', cert, key }, { domain: 'localhost' }],
        path.join(dir, 'generated'),
      );
      expect(store.certificateFor('example.com').certPem).to.equal(new X509Certificate(certPem).toString());
      expect(new X509Certificate(store.certificateFor('localhost').der).subject).to.equal('CN=localhost');
      expect(store.defaultContextOptions()).to.include({ cert: certPem, key: keyPem, minVersion: 'TLSv1.2' });
    });

    it('a missing file is named', async () => {
      const store = new CertificateStore();
      const cert = path.join(dir, 'missing.crt');
      const err = await rejects(
        store.load([{ domain: 'Example.org', cert, key: path.join(dir, 'missing.key') }], dir),
      );
      expect(err.message).to.equal(`tls.cert for host example.org: ${cert}: no such file`);
    });

    it('a key that does not match is named', async () => {
      const a = generateSelfSigned('example.org');
      const b = generateSelfSigned('example.org');
      const cert = path.join(dir, 'a.crt');
      const key = path.join(dir, 'b.key');
      writeFileSync(cert, a.certPem);
      writeFileSync(key, b.keyPem);
      const err = await rejects(new CertificateStore().load([{ domain: 'example.org', cert, key }], dir));
      expect(err.message).to.equal(
        `tls.key for host example.org: ${key}: the key does not match the certificate in ${cert}`,
      );
    });

    it('a certificate that is not PEM is named', async () => {
      const cert = path.join(dir, 'x.crt');
      const key = path.join(dir, 'x.key');
      writeFileSync(cert, 'garbage');
      writeFileSync(key, generateSelfSigned('example.org').keyPem);
      const err = await rejects(new CertificateStore().load([{ domain: 'example.org', cert, key }], dir));
      expect(err.message).to.match(
        new RegExp(`^tls\\.cert for host example\\.org: ${cert}: no PEM certificate`),
      );
    });

    it('warns about a certificate for another name', async () => {
      const { certPem, keyPem } = generateSelfSigned('example.com');
      const cert = path.join(dir, 'c.crt');
      const key = path.join(dir, 'c.key');
      writeFileSync(cert, certPem);
      writeFileSync(key, keyPem);
      const messages: string[] = [];
      await new CertificateStore({ log: (m) => messages.push(m) }).load(
        [{ domain: 'example.org', cert, key }],
        dir,
      );
      expect(messages.join('\n')).to.include('does not cover host example.org');
    });

    it('contextFor before load is an error', () => {
      expect(() => new CertificateStore().contextFor('example.org')).to.throw(/load\(\)/);
    });
  });
});
