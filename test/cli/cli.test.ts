// End-to-end tests of the `chorus` command, run as a separate process the way
// an admin runs it: `node bin/chorus.js ...` against a configuration file in
// a temporary directory, with real XMPP clients (STARTTLS + SCRAM) talking to
// the server it starts.
//
// Starting the command costs a few seconds (tsx compiles the sources), so
// commands that do not depend on each other are started together in the
// `before` hooks and each test awaits and checks its own result.
import { expect } from 'chai';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server as NetServer } from 'node:net';
import { generateSelfSigned } from '../../src/net/certs.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';
import {
  ChorusProcess,
  configYaml,
  freePorts,
  LEVEL,
  runChorus,
  TempDir,
  type RunResult,
} from './helpers.ts';

const NS_REGISTER = 'jabber:iq:register';

// ---------------------------------------------------------------------------
// Client-side helpers.

const openClients = new Set<XmppClient>();

async function connect(port: number, domain = 'localhost', directTls = false): Promise<XmppClient> {
  const client = await XmppClient.connect({ port, domain, directTls });
  openClients.add(client);
  return client;
}

/** STARTTLS, SCRAM-SHA-256 and bind; returns the logged-in client. */
async function login(
  port: number,
  user: string,
  password: string,
  domain = 'localhost',
): Promise<XmppClient> {
  const client = await connect(port, domain);
  const jid = await client.login(user, password);
  expect(jid.startsWith(`${user}@${domain}/`), jid).to.equal(true);
  return client;
}

/** A login attempt over STARTTLS that must fail; returns the SASL failure condition. */
async function failedLogin(port: number, user: string, password: string): Promise<string> {
  const client = await connect(port);
  await client.open();
  await client.startTls();
  const outcome = await client.tryAuthenticate(user, password);
  client.destroy();
  if (outcome.ok) expect.fail(`${user} logged in with password '${password}'`);
  return outcome.condition;
}

/** XEP-0077 registration on a STARTTLS-secured stream that has not authenticated yet. */
async function register(client: XmppClient, user: string, password: string): Promise<void> {
  const id = client.nextId('reg');
  client.send(
    `<iq type='set' id='${id}'><query xmlns='${NS_REGISTER}'>` +
      `<username>${user}</username><password>${password}</password></query></iq>`,
  );
  await client.expect(`<iq type='result' id='${id}'/>`);
}

/** Creates an account by in-band registration, on a connection of its own. */
async function registerAccount(port: number, user: string, password: string, domain = 'localhost') {
  const client = await connect(port, domain);
  await client.open();
  await client.startTls();
  await register(client, user, password);
  client.destroy();
}

/** XEP-0199 ping of the server; resolves when the result arrives. */
async function ping(client: XmppClient, domain = 'localhost'): Promise<void> {
  const id = client.nextId('ping');
  client.send(`<iq type='get' id='${id}' to='${domain}'><ping xmlns='urn:xmpp:ping'/></iq>`);
  await client.expect(`<iq type='result' id='${id}'/>`);
}

function fingerprintOf(client: XmppClient): string {
  return client.tlsSocket.getPeerCertificate().fingerprint256;
}

/** A failed result with everything the command printed, for assertion messages. */
function show(result: RunResult): string {
  return `exit ${result.code}\n--- stdout ---\n${result.stdout}--- stderr ---\n${result.stderr}`;
}

// A listener whose port is out of range, on a known line and column:
// line 4 is "  - port: 70000", the value starts at column 11.
const BAD_PORT_YAML = [
  'hosts:',
  '  - domain: localhost',
  'listeners:',
  '  - port: 70000',
  '    address: 127.0.0.1',
  '',
].join('\n');

// ---------------------------------------------------------------------------

describe('chorus command (end to end)', function () {
  this.timeout(60_000);

  afterEach(() => {
    for (const client of openClients) client.destroy();
    openClients.clear();
  });

  describe('usage', () => {
    let help: Promise<RunResult>;
    let unknown: Promise<RunResult>;
    before(() => {
      help = runChorus(['--help']);
      unknown = runChorus(['frobnicate']);
    });

    it('--help prints the usage and exits 0', async () => {
      const result = await help;
      expect(result.code, show(result)).to.equal(0);
      expect(result.stdout).to.include('Usage: chorus <command>');
      for (const command of ['start', 'check config', 'adduser', 'passwd', 'deluser', 'cert generate']) {
        expect(result.stdout).to.include(command);
      }
    });

    it('an unknown command exits 2 and names it', async () => {
      const result = await unknown;
      expect(result.code, show(result)).to.equal(2);
      expect(result.stderr).to.include("unknown command 'frobnicate'");
    });
  });

  describe('check config', () => {
    let dir: TempDir;
    let good: Promise<RunResult>;
    let badPort: Promise<RunResult>;
    let unknownKey: Promise<RunResult>;
    let badEnv: Promise<RunResult>;
    let goodPath: string;
    let badPortPath: string;
    let unknownKeyPath: string;

    before(() => {
      dir = new TempDir();
      goodPath = dir.write(
        'good.yaml',
        configYaml({ dir, ports: [15222, 15223], hosts: ['localhost', 'example.net'] }),
      );
      badPortPath = dir.write('bad-port.yaml', BAD_PORT_YAML);
      unknownKeyPath = dir.write(
        'unknown-key.yaml',
        'hosts:\n  - domain: localhost\nstorge:\n  driver: memory\n',
      );
      good = runChorus(['check', 'config', '-c', goodPath]);
      badPort = runChorus(['check', 'config', '-c', badPortPath]);
      unknownKey = runChorus(['check', 'config', '-c', unknownKeyPath]);
      badEnv = runChorus(['check', 'config', '-c', goodPath], { env: { CHORUS_LISTENERS__0__PORT: 'abc' } });
    });
    after(() => dir.remove());

    it('a good configuration exits 0 and lists the hosts, their modules and the listeners', async () => {
      const result = await good;
      expect(result.code, show(result)).to.equal(0);
      const lines = result.stdout.split('\n');
      for (const host of ['localhost', 'example.net']) {
        const line = lines.find((l) => l.startsWith(`${host}: modules `));
        expect(line, `no module line for ${host}\n${show(result)}`).to.be.a('string');
        expect(line).to.include('ping').and.to.include('disco');
      }
      expect(result.stdout).to.include('port 15222').and.to.include('port 15223');
      expect(result.stdout).to.include('configuration OK');
    });

    it('an out-of-range port exits 2 and names file:line:col and listeners[0].port', async () => {
      const result = await badPort;
      expect(result.code, show(result)).to.equal(2);
      expect(result.stderr).to.include(`${badPortPath}:4:11`);
      expect(result.stderr).to.include('listeners[0].port');
      expect(result.stderr).to.include('70000');
      expect(result.stdout).not.to.include('configuration OK');
    });

    it('an unknown option exits 2 with a "did you mean" suggestion', async () => {
      const result = await unknownKey;
      expect(result.code, show(result)).to.equal(2);
      expect(result.stderr).to.include(`${unknownKeyPath}:3:1`);
      expect(result.stderr).to.include("unknown option 'storge'");
      expect(result.stderr).to.include("did you mean 'storage'?");
    });

    it('a bad environment override exits 2 and names the variable', async () => {
      const result = await badEnv;
      expect(result.code, show(result)).to.equal(2);
      expect(result.stderr).to.include('CHORUS_LISTENERS__0__PORT');
      expect(result.stderr).to.include('listeners[0].port');
      expect(result.stderr).to.include('abc');
    });
  });

  describe('account management: adduser, passwd, deluser', () => {
    let dir: TempDir;
    let configPath: string;
    let port: number;
    let server: ChorusProcess | undefined;
    let alice: RunResult;
    let bob: Promise<RunResult>;
    let carol: Promise<RunResult>;
    let dave: Promise<RunResult>;
    let erin: Promise<RunResult>;
    let otherHost: Promise<RunResult>;
    let badJid: Promise<RunResult>;

    const chorus = (args: string[], input?: string) => runChorus([...args, '-c', configPath], { input });

    before(async function () {
      this.timeout(120_000);
      dir = new TempDir();
      const ports = await freePorts(2);
      port = ports[0]!;
      configPath = dir.write('chorus.yaml', configYaml({ dir, ports: [ports[0]!, ports[1]!] }));
      const passwordFile = dir.write('erin.pass', 'erin-file-secret\nnot part of the password\n', 0o600);
      // First, on its own: this creates the database.
      alice = await chorus(['adduser', 'alice@localhost', '--password-stdin'], 'alice-secret\n');
      const starting = ChorusProcess.start(configPath);
      bob = chorus(['adduser', 'bob@localhost', '--password-stdin'], 'bob-first\n');
      carol = chorus(['adduser', 'carol@localhost', '--password-stdin'], 'carol-old\n');
      dave = chorus(['adduser', 'dave@localhost', '--password-stdin'], 'dave-secret\n');
      erin = chorus(['adduser', 'erin@localhost', '--password-file', passwordFile]);
      otherHost = chorus(['adduser', 'alice@example.org', '--password-stdin'], 'whatever\n');
      badJid = chorus(['adduser', 'alice@@localhost', '--password-stdin'], 'whatever\n');
      server = await starting;
      await Promise.all([bob, carol, dave, erin, otherHost, badJid]);
    });
    after(async () => {
      await server?.stop();
      dir.remove();
    });

    it('adduser --password-stdin creates an account that can log in over STARTTLS + SCRAM', async () => {
      expect(alice.code, show(alice)).to.equal(0);
      expect(alice.stdout).to.include('created alice@localhost');
      const client = await login(port, 'alice', 'alice-secret');
      await ping(client);
      expect(await failedLogin(port, 'alice', 'alice-secre')).to.equal('not-authorized');
    });

    it('adduser on an existing account exits 1 saying it exists, and keeps the password', async () => {
      const first = await bob;
      expect(first.code, show(first)).to.equal(0);
      const again = await chorus(['adduser', 'bob@localhost', '--password-stdin'], 'bob-second\n');
      expect(again.code, show(again)).to.equal(1);
      expect(again.stderr).to.include('exists');
      await login(port, 'bob', 'bob-first');
      expect(await failedLogin(port, 'bob', 'bob-second')).to.equal('not-authorized');
    });

    it('passwd changes the password: the old one fails, the new one works', async () => {
      const created = await carol;
      expect(created.code, show(created)).to.equal(0);
      await login(port, 'carol', 'carol-old');
      const changed = await chorus(['passwd', 'carol@localhost', '--password-stdin'], 'carol-new\n');
      expect(changed.code, show(changed)).to.equal(0);
      expect(changed.stdout).to.include('carol@localhost');
      expect(await failedLogin(port, 'carol', 'carol-old')).to.equal('not-authorized');
      await login(port, 'carol', 'carol-new');
    });

    it('deluser removes the account (login fails) and a second deluser exits 1', async () => {
      const created = await dave;
      expect(created.code, show(created)).to.equal(0);
      await login(port, 'dave', 'dave-secret');
      const deleted = await chorus(['deluser', 'dave@localhost']);
      expect(deleted.code, show(deleted)).to.equal(0);
      expect(deleted.stdout).to.include('deleted dave@localhost');
      expect(await failedLogin(port, 'dave', 'dave-secret')).to.equal('not-authorized');
      const again = await chorus(['deluser', 'dave@localhost']);
      expect(again.code, show(again)).to.equal(1);
      expect(again.stderr).to.include('no account dave@localhost');
    });

    it('adduser --password-file uses the first line of the file', async () => {
      const result = await erin;
      expect(result.code, show(result)).to.equal(0);
      await login(port, 'erin', 'erin-file-secret');
    });

    it('adduser for a host that is not in the configuration exits 2 and names it', async () => {
      const result = await otherHost;
      expect(result.code, show(result)).to.equal(2);
      expect(result.stderr).to.include('example.org is not a host in the configuration');
      expect(result.stderr).to.include('localhost');
    });

    it('adduser with an invalid JID exits 2', async () => {
      const result = await badJid;
      expect(result.code, show(result)).to.equal(2);
      expect(result.stderr).to.include("'alice@@localhost' is not a valid JID");
    });
  });

  describe('cert generate', () => {
    let dir: TempDir;
    before(() => {
      dir = new TempDir();
    });
    after(() => dir.remove());

    it('writes DOMAIN.crt and DOMAIN.key into the certificate directory, the key private', async () => {
      const configPath = dir.write('chorus.yaml', configYaml({ dir, ports: [15222, 15223] }));
      const result = await runChorus(['cert', 'generate', 'example.org', '-c', configPath]);
      expect(result.code, show(result)).to.equal(0);
      const certPath = dir.file('certs/example.org.crt');
      const keyPath = dir.file('certs/example.org.key');
      expect(result.stdout).to.include(certPath);
      expect(statSync(keyPath).mode & 0o777).to.equal(0o600);
      const cert = new X509Certificate(readFileSync(certPath));
      expect(cert.subjectAltName).to.include('DNS:example.org');
      expect(cert.checkHost('example.org')).to.equal('example.org');
      expect(cert.checkPrivateKey(createPrivateKey(readFileSync(keyPath)))).to.equal(true);
    });
  });

  describe('start and SIGTERM', () => {
    let dir: TempDir;
    let configPath: string;
    let ports: number[];
    let server: ChorusProcess;
    let restarted: ChorusProcess | undefined;

    before(async () => {
      dir = new TempDir();
      ports = await freePorts(2);
      configPath = dir.write(
        'chorus.yaml',
        configYaml({ dir, ports: [ports[0]!, ports[1]!], registration: true }),
      );
      expect(existsSync(dir.file('certs'))).to.equal(false);
      server = await ChorusProcess.start(configPath);
    });
    after(async () => {
      await server.stop();
      await restarted?.stop();
      dir.remove();
    });

    it('start on a fresh directory generates a certificate, logs readiness and lets a client log in', async () => {
      const certPath = dir.file('certs/localhost.crt');
      const keyPath = dir.file('certs/localhost.key');
      expect(statSync(keyPath).mode & 0o777).to.equal(0o600);
      const cert = new X509Certificate(readFileSync(certPath));
      expect(cert.checkHost('localhost')).to.equal('localhost');
      expect(
        server.logs.some((r) => r.msg.includes('generated a self-signed certificate for localhost')),
      ).to.equal(true);
      const ready = server.logs.find((r) => r.msg === 'Chorus is ready');
      expect(ready?.listeners).to.deep.equal([
        `starttls:127.0.0.1:${ports[0]}`,
        `direct:127.0.0.1:${ports[1]}`,
      ]);

      await registerAccount(ports[0]!, 'frank', 'frank-secret');
      const client = await login(ports[0]!, 'frank', 'frank-secret');
      expect(fingerprintOf(client)).to.equal(cert.fingerprint256);
      await ping(client);
      const direct = await connect(ports[1]!, 'localhost', true);
      expect(fingerprintOf(direct)).to.equal(cert.fingerprint256);
    });

    it('SIGTERM closes sessions with system-shutdown, exits 0, and the data survives a restart', async () => {
      await registerAccount(ports[0]!, 'grace', 'grace-secret');
      const client = await login(ports[0]!, 'grace', 'grace-secret');
      await ping(client);

      const signalledAt = Date.now();
      server.signal('SIGTERM');
      const error = await client.expectStreamError('system-shutdown', 5000);
      expect(error.toString()).to.include('system-shutdown');
      const exit = await server.waitForExit(5000);
      expect(exit, server.output()).to.deep.equal({ code: 0, signal: null });
      expect(Date.now() - signalledAt).to.be.below(5000);

      restarted = await ChorusProcess.start(configPath);
      const again = await login(ports[0]!, 'grace', 'grace-secret');
      await ping(again);
      expect(await failedLogin(ports[0]!, 'grace', 'not-her-password')).to.equal('not-authorized');
    });
  });

  describe('SIGHUP', () => {
    let dir: TempDir;
    let configPath: string;
    let ports: number[];
    let server: ChorusProcess;

    const writeConfig = (opts: { hosts?: string[]; logLevel?: string } = {}) =>
      writeFileSync(
        configPath,
        configYaml({ dir, ports: [ports[0]!, ports[1]!], registration: true, ...opts }),
      );

    /** Sends SIGHUP and waits for the server to log the outcome. */
    const reload = async (outcome: 'configuration reloaded' | 'reload refused') => {
      const mark = server.logs.length;
      server.signal('SIGHUP');
      return server.waitForLog((r) => r.msg.startsWith(outcome), `"${outcome}" after SIGHUP`, { from: mark });
    };

    before(async () => {
      dir = new TempDir();
      ports = await freePorts(2);
      configPath = dir.file('chorus.yaml');
      writeConfig();
      server = await ChorusProcess.start(configPath);
      await registerAccount(ports[0]!, 'henry', 'henry-secret');
    });
    after(async () => {
      await server.stop();
      dir.remove();
    });

    it('applies a new host and a replaced certificate without dropping sessions', async () => {
      const client = await login(ports[0]!, 'henry', 'henry-secret');
      const oldFingerprint = fingerprintOf(client);

      // Before the reload, example.net is not served.
      const early = await connect(ports[0]!, 'example.net');
      early.sendHeader();
      await early.expectHeader();
      await early.expectStreamError('host-unknown');

      const fresh = generateSelfSigned('localhost');
      writeFileSync(dir.file('certs/localhost.key'), fresh.keyPem, { mode: 0o600 });
      writeFileSync(dir.file('certs/localhost.crt'), fresh.certPem);
      const newFingerprint = new X509Certificate(fresh.certPem).fingerprint256;
      expect(newFingerprint).not.to.equal(oldFingerprint);
      writeConfig({ hosts: ['localhost', 'example.net'] });
      await reload('configuration reloaded');

      // The session from before the reload still works.
      await ping(client);

      // The new host: its own (generated) certificate via SNI, and accounts on it.
      const other = await connect(ports[0]!, 'example.net');
      await other.open();
      await other.startTls();
      expect(other.tlsSocket.getPeerCertificate().subjectaltname).to.include('DNS:example.net');
      await register(other, 'ivy', 'ivy-secret');
      await other.authenticate('ivy', 'ivy-secret');
      expect(await other.bind()).to.match(/^ivy@example\.net\//);
      await ping(other, 'example.net');

      // New TLS connections to localhost get the replaced certificate, on both listeners.
      const viaStartTls = await login(ports[0]!, 'henry', 'henry-secret');
      expect(fingerprintOf(viaStartTls)).to.equal(newFingerprint);
      const viaDirectTls = await connect(ports[1]!, 'localhost', true);
      expect(fingerprintOf(viaDirectTls)).to.equal(newFingerprint);
      await viaDirectTls.login('henry', 'henry-secret');
    });

    it('applies a changed log.level', async () => {
      writeConfig({ hosts: ['localhost', 'example.net'], logLevel: 'info' });
      await reload('configuration reloaded');
      let mark = server.logs.length;
      await login(ports[0]!, 'henry', 'henry-secret');
      // A login logs at info, but nothing at debug while the level is info.
      await server.waitForLog((r) => r.msg === 'authenticated', 'the login', { from: mark });
      expect(server.logs.slice(mark).filter((r) => r.level <= LEVEL.debug)).to.deep.equal([]);

      writeConfig({ hosts: ['localhost', 'example.net'], logLevel: 'debug' });
      await reload('configuration reloaded');
      mark = server.logs.length;
      await login(ports[0]!, 'henry', 'henry-secret');
      await server.waitForLog((r) => r.level === LEVEL.debug, 'a debug record after switching to debug', {
        from: mark,
        timeoutMs: 3000,
      });
    });

    it('a broken configuration on SIGHUP is refused and the running one stays in use', async () => {
      writeConfig({ hosts: ['localhost', 'example.net'] });
      await reload('configuration reloaded');
      const client = await login(ports[0]!, 'henry', 'henry-secret');

      writeFileSync(configPath, BAD_PORT_YAML);
      const refused = await reload('reload refused');
      expect(refused.level).to.equal(LEVEL.error);
      expect(refused.msg).to.include(`${configPath}:4:11`);
      expect(refused.msg).to.include('listeners[0].port');

      expect(server.running).to.equal(true);
      await ping(client);
      await login(ports[0]!, 'henry', 'henry-secret');
      // example.net, which the broken file leaves out, is still served.
      const other = await connect(ports[0]!, 'example.net');
      const features = await other.open();
      expect(features.toString()).to.include('starttls');
    });
  });

  describe('start failures', () => {
    let dir: TempDir;
    let blocker: NetServer;
    let blockedPort: number;
    let badConfig: Promise<RunResult>;
    let badConfigPath: string;
    let portInUse: Promise<RunResult>;

    before(async () => {
      dir = new TempDir();
      const ports = await freePorts(2);
      blockedPort = ports[1]!;
      blocker = createServer();
      await new Promise<void>((resolve, reject) => {
        blocker.once('error', reject);
        blocker.listen(blockedPort, '127.0.0.1', () => resolve());
      });
      badConfigPath = dir.write('bad.yaml', BAD_PORT_YAML);
      const configPath = dir.write('chorus.yaml', configYaml({ dir, ports: [ports[0]!, blockedPort] }));
      badConfig = runChorus(['start', '-c', badConfigPath]);
      portInUse = runChorus(['start', '-c', configPath]);
    });
    after(async () => {
      await new Promise<void>((resolve) => blocker.close(() => resolve()));
      dir.remove();
    });

    it('start with a bad configuration exits 2 with the located message', async () => {
      const result = await badConfig;
      expect(result.code, show(result)).to.equal(2);
      expect(result.stderr).to.include(`${badConfigPath}:4:11`);
      expect(result.stderr).to.include('listeners[0].port');
      expect(result.stdout).not.to.include('Chorus is ready');
    });

    it('start on a port already in use exits 1 with a message naming the address', async () => {
      const result = await portInUse;
      expect(result.code, show(result)).to.equal(1);
      const output = result.stdout + result.stderr;
      expect(output).to.include(`127.0.0.1:${blockedPort}`);
      expect(output).to.match(/in use/i);
      expect(output).not.to.include('Chorus is ready');
    });
  });
});
