// Interop tests: real XMPP client libraries, as Debian ships them, against a
// Chorus server started in this process. The Python clients (slixmpp_client.py,
// nbxmpp_client.py) print `RESULT key=<json>` lines and take JSON commands on
// stdin (see interop_common.py); xmppc is libstrophe's command-line client.
// See README.md in this directory.
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer, type Server as NetServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import {
  GIO_TLS_CHECK,
  interopUnavailable,
  PYTHON,
  pythonProblem,
  pythonScript,
  ResultProcess,
  type Json,
} from './script-process.ts';

/** How long a client may take to log in (TLS, SCRAM with 4096 iterations, bind). */
const LOGIN_MS = 20_000;
/** How long a client may take to answer a command or receive a message. */
const STEP_MS = 15_000;
/** xmppc sleeps 10 s after sending before it disconnects (and only then flushes). */
const XMPPC_MS = 45_000;
/** libstrophe (xmppc) has no option for the port: after an SRV lookup it connects to <domain>:5222. */
const XMPP_CLIENT_PORT = 5222;

// ---------------------------------------------------------------------------
// Prerequisites: a missing package fails the test with its name, unless
// CHORUS_SKIP_INTEROP=1, in which case the test is skipped with that message.

interface Need {
  /** Debian package(s) to install. */
  pkg: string;
  /** Returns a description of the problem, or null when the need is met. */
  probe(): string | null;
}

const probeCache = new Map<Need, string | null>();

function pythonModule(code: string, pkg: string, what: string): Need {
  return {
    pkg,
    probe() {
      const problem = pythonProblem(code);
      return problem === null ? null : `${PYTHON} cannot load ${what}: ${problem}`;
    },
  };
}

const SLIXMPP = pythonModule('import slixmpp', 'python3-slixmpp', 'slixmpp');
const NBXMPP = pythonModule(
  `import nbxmpp.client\n${GIO_TLS_CHECK}`,
  'python3-nbxmpp glib-networking',
  'nbxmpp with Gio TLS',
);
const XMPPC: Need = {
  pkg: 'xmppc',
  probe() {
    const r = spawnSync('xmppc', ['--help'], { encoding: 'utf8', timeout: 10_000 });
    if (r.error) return `cannot run xmppc: ${r.error.message}`;
    return /xmppc/i.test(r.stdout + r.stderr) ? null : `xmppc --help printed nothing recognisable`;
  },
};

function need(ctx: Mocha.Context, ...needs: Need[]): void {
  const problems: string[] = [];
  for (const n of needs) {
    if (!probeCache.has(n)) probeCache.set(n, n.probe());
    const problem = probeCache.get(n);
    if (problem) problems.push(`install the Debian package(s) ${n.pkg} (${problem})`);
  }
  if (problems.length) interopUnavailable(ctx, `interop prerequisites missing: ${problems.join('; ')}`, true);
}

// ---------------------------------------------------------------------------
// Child processes that print `RESULT key=<json>` lines.

class ClientProcess extends ResultProcess {
  constructor(label: string, command: string, args: string[], env: NodeJS.ProcessEnv, hardTimeoutMs: number) {
    super({ label, command, args, env, hardTimeoutMs });
  }

  /** Waits for the next (not yet taken) `RESULT key=` line that satisfies `match`. */
  waitFor(key: string, timeoutMs: number, match: (v: Json) => boolean = () => true): Promise<Json> {
    return this.take(key, `printing RESULT ${key}=...`, match, timeoutMs);
  }

  /** Sends quit (closes stdin) and waits for the exit; returns the exit code. */
  async quit(timeoutMs = STEP_MS): Promise<number | null> {
    this.sendQuit();
    return this.exit(timeoutMs);
  }
}

interface ClientOptions {
  jid: string;
  password: string;
  mech: string;
  server: TestServer;
  cafile: string;
}

function startPythonClient(script: string, label: string, o: ClientOptions): ClientProcess {
  const args = [
    ...['--jid', o.jid, '--host', '127.0.0.1', '--port', String(o.server.port)],
    ...['--cafile', o.cafile, '--mech', o.mech, '--timeout', '120'],
  ];
  const run = pythonScript(script, args, o.password);
  return new ClientProcess(`${label} (${o.jid})`, run.command, run.args, run.env, 150_000);
}

const slixmpp = (o: ClientOptions) => startPythonClient('slixmpp_client.py', 'slixmpp', o);
const nbxmpp = (o: ClientOptions) => startPythonClient('nbxmpp_client.py', 'nbxmpp', o);

function str(value: unknown): string {
  expect(value).to.be.a('string');
  return value as string;
}

// ---------------------------------------------------------------------------
// xmppc cannot be told a port (xmppc 0.1 calls xmpp_connect_client() with
// no alternative host and port 0), so libstrophe looks up
// _xmpp-client._tcp.<domain> and otherwise connects to <domain>:5222. The test
// therefore forwards loopback port 5222 (IPv4 and IPv6: `localhost` may
// resolve to either first) to the test server's STARTTLS port. TLS is
// end to end, so channel binding and certificate checks are unaffected.

async function listen(server: NetServer, host: string, port: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

async function forwardXmppClientPort(ctx: Mocha.Context, targetPort: number): Promise<() => Promise<void>> {
  const sockets = new Set<Socket>();
  const servers: NetServer[] = [];
  const make = () =>
    createServer((client) => {
      const upstream = netConnect(targetPort, '127.0.0.1');
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
        s.on('close', () => sockets.delete(s));
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
  const close = async () => {
    for (const s of sockets) s.destroy();
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  };
  for (const host of ['127.0.0.1', '::1']) {
    const server = make();
    try {
      await listen(server, host, XMPP_CLIENT_PORT);
      servers.push(server);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // No IPv6 on this machine: then `localhost` cannot resolve to ::1 either.
      if (host === '::1' && (code === 'EADDRNOTAVAIL' || code === 'EAFNOSUPPORT')) continue;
      await close();
      interopUnavailable(
        ctx,
        `the xmppc test needs [${host}]:${XMPP_CLIENT_PORT} (libstrophe always connects to <domain>:5222) ` +
          `to forward it to the test server, but listening there failed: ${code ?? String(err)}`,
        true,
      );
    }
  }
  return close;
}

// ---------------------------------------------------------------------------

describe('interop with real client libraries (Debian packages)', function () {
  this.timeout(60_000);

  const users = {
    alice: { jid: 'alice@localhost', password: 'älice Secret 1' },
    bob: { jid: 'bob@localhost', password: 'bob-Secret-2' },
    carol: { jid: 'carol@localhost', password: 'carol-Secret-3' },
    dave: { jid: 'dave@localhost', password: 'dave-Secret-4' },
  };
  let server: TestServer;
  /** A server that offers SCRAM-SHA-256 only, no -PLUS mechanism. */
  let noPlusServer: TestServer;
  let dir: string;
  let cafile: string;

  before(async function () {
    this.timeout(60_000);
    server = await startTestServer();
    noPlusServer = await startTestServer({ yaml: 'auth: { mechanisms: [SCRAM-SHA-256] }' });
    for (const s of [server, noPlusServer]) {
      for (const [name, u] of Object.entries(users)) await s.addUser(name, u.password);
    }
    dir = mkdtempSync(join(tmpdir(), 'chorus-interop-'));
    cafile = join(dir, 'localhost.pem');
    // Both servers share the self-signed certificate of `localhost`; every
    // client trusts exactly that certificate and checks its name.
    writeFileSync(cafile, server.server.certs.certificateFor('localhost').certPem);
  });

  afterEach(async () => {
    for (const p of [...ResultProcess.running]) p.kill();
  });

  after(async () => {
    await server?.stop();
    await noPlusServer?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const opts = (user: keyof typeof users, resource: string, mech: string, s = server): ClientOptions => ({
    jid: `${users[user].jid}/${resource}`,
    password: users[user].password,
    mech,
    server: s,
    cafile,
  });

  async function discoAndPing(client: ClientProcess): Promise<void> {
    client.command({ cmd: 'disco', jid: 'localhost' });
    const disco = await client.waitFor('disco', STEP_MS);
    expect(disco.ok, `disco#info failed: ${JSON.stringify(disco)}`).to.equal(true);
    expect(disco.features).to.include('urn:xmpp:ping');
    expect(disco.features).to.include('http://jabber.org/protocol/disco#info');
    expect(disco.identities).to.deep.include.members([['server', 'im', 'Chorus']]);

    client.command({ cmd: 'ping', jid: 'localhost' });
    const ping = await client.waitFor('ping', STEP_MS);
    expect(ping.ok, `ping failed: ${JSON.stringify(ping)}`).to.equal(true);
  }

  async function quitCleanly(client: ClientProcess): Promise<void> {
    const code = await client.quit();
    expect(code, `${client.label} did not log out cleanly${client.transcript()}`).to.equal(0);
    expect(client.results.map((r) => r.key)).to.include('closed');
  }

  describe('slixmpp (python3-slixmpp)', () => {
    it('logs in over STARTTLS with SCRAM-SHA-256-PLUS (tls-unique), runs disco#info and pings the server', async function () {
      need(this, SLIXMPP);
      const alice = slixmpp(opts('alice', 'slixmpp', 'SCRAM-SHA-256-PLUS'));
      const ready = await alice.waitFor('ready', LOGIN_MS);
      expect(ready.jid).to.equal('alice@localhost/slixmpp');
      expect(ready.mechanism).to.equal('SCRAM-SHA-256-PLUS');
      expect(str(ready.tls)).to.match(/^TLSv1\.[23]$/);
      await discoAndPing(alice);
      await quitCleanly(alice);
    });

    it('logs in with SCRAM-SHA-256 on a server that offers no -PLUS mechanism', async function () {
      need(this, SLIXMPP);
      // slixmpp sends the gs2 flag "y" (it could bind, but the server did not
      // offer -PLUS), which RFC 5802 accepts when -PLUS was not offered.
      const alice = slixmpp(opts('alice', 'nonplus', 'SCRAM-SHA-256', noPlusServer));
      const ready = await alice.waitFor('ready', LOGIN_MS);
      expect(ready.jid).to.equal('alice@localhost/nonplus');
      expect(ready.mechanism).to.equal('SCRAM-SHA-256');
      await discoAndPing(alice);
      await quitCleanly(alice);
    });

    it('is refused when it downgrades to SCRAM-SHA-256 although -PLUS was offered (RFC 5802 "y" flag)', async function () {
      need(this, SLIXMPP);
      const alice = slixmpp(opts('alice', 'downgraded', 'SCRAM-SHA-256'));
      const failed = await alice.waitFor('login_failed', LOGIN_MS);
      expect(str(failed.reason)).to.contain('server-does-support-channel-binding');
      expect(await alice.exit(STEP_MS)).to.equal(1);
      expect(alice.results.map((r) => r.key)).not.to.include('ready');
    });
  });

  describe('nbxmpp (python3-nbxmpp, Gajim)', () => {
    // nbxmpp 4.2 cannot do -PLUS: its sasl.py discards the -PLUS mechanisms
    // because GLib gives it no channel-binding data. It sends the gs2 flag
    // "n", so plain SCRAM-SHA-256 works even where -PLUS is offered.
    it('logs in over STARTTLS with SCRAM-SHA-256, runs disco#info and pings the server', async function () {
      need(this, NBXMPP);
      const bob = nbxmpp(opts('bob', 'nbxmpp', 'SCRAM-SHA-256'));
      const ready = await bob.waitFor('ready', LOGIN_MS);
      expect(ready.jid).to.equal('bob@localhost/nbxmpp');
      expect(ready.mechanism).to.equal('SCRAM-SHA-256');
      await discoAndPing(bob);
      await quitCleanly(bob);
    });
  });

  describe('messages between libraries', () => {
    it('slixmpp and nbxmpp exchange chat messages in both directions', async function () {
      need(this, SLIXMPP, NBXMPP);
      const alice = slixmpp(opts('alice', 'chat', 'SCRAM-SHA-256-PLUS'));
      const bob = nbxmpp(opts('bob', 'chat', 'SCRAM-SHA-256'));
      // Sync point: nothing is sent before both are bound and available.
      const [aliceReady, bobReady] = await Promise.all([
        alice.waitFor('ready', LOGIN_MS),
        bob.waitFor('ready', LOGIN_MS),
      ]);
      const aliceJid = str(aliceReady.jid);
      const bobJid = str(bobReady.jid);
      expect(aliceJid).to.equal('alice@localhost/chat');
      expect(bobJid).to.equal('bob@localhost/chat');

      // slixmpp -> nbxmpp, to the full JID. The body needs XML escaping and UTF-8.
      const toBob = 'Hi Bob <b>&amp; friends</b> — grüße from slixmpp ✓';
      alice.command({ cmd: 'send', to: bobJid, body: toBob, id: 'sli-1' });
      const atBob = await bob.waitFor('message', STEP_MS, (m) => m.type === 'chat');
      expect(atBob).to.include({ from: aliceJid, body: toBob, type: 'chat', id: 'sli-1' });

      // nbxmpp -> slixmpp, to the bare JID: routed to alice's available resource.
      const toAlice = 'Hello Alice "quoted" \'and\' <tagged> — from nbxmpp ✓';
      bob.command({ cmd: 'send', to: 'alice@localhost', body: toAlice, id: 'nb-1' });
      const atAlice = await alice.waitFor('message', STEP_MS, (m) => m.type === 'chat');
      expect(atAlice).to.include({ from: bobJid, body: toAlice, type: 'chat', id: 'nb-1' });

      // Neither side got an error bounce.
      for (const c of [alice, bob]) {
        const errors = c.results.filter((r) => r.key === 'message' && r.value.type === 'error');
        expect(errors, `${c.label} received error messages`).to.deep.equal([]);
      }
      await quitCleanly(alice);
      await quitCleanly(bob);
    });
  });

  describe('xmppc (libstrophe)', () => {
    it('sends a chat message that a slixmpp client receives', async function () {
      this.timeout(90_000);
      need(this, SLIXMPP, XMPPC);
      const stopForwarding = await forwardXmppClientPort(this, server.port);
      try {
        const carol = slixmpp(opts('carol', 'inbox', 'SCRAM-SHA-256-PLUS'));
        await carol.waitFor('ready', LOGIN_MS);

        // xmppc 0.1 refuses to start without ~/.config/xmppc.conf, so it gets
        // its own HOME, which also keeps the password off the command line.
        const home = join(dir, 'xmppc-home');
        mkdirSync(join(home, '.config'), { recursive: true });
        const conf = join(home, '.config', 'xmppc.conf');
        writeFileSync(conf, `[default]\njid=${users.dave.jid}\npwd=${users.dave.password}\n`);
        chmodSync(conf, 0o600);
        const body = 'Hello Carol — sent by xmppc/libstrophe ✓';
        const xmppc = new ClientProcess(
          'xmppc (dave@localhost)',
          'xmppc',
          ['-vvv', '-m', 'message', 'chat', users.carol.jid, body],
          {
            ...process.env,
            HOME: home,
            // libstrophe verifies the certificate (and its name) with
            // OpenSSL's default store, which SSL_CERT_FILE replaces: it
            // trusts exactly the test server's certificate, no checks off.
            SSL_CERT_FILE: cafile,
            // Keep the SRV lookup of _xmpp-client._tcp.localhost short.
            RES_OPTIONS: 'timeout:1 attempts:1',
          },
          XMPPC_MS + 15_000,
        );

        const received = await carol.waitFor('message', XMPPC_MS, (m) => m.type === 'chat');
        expect(str(received.from), `from${xmppc.transcript()}`).to.match(/^dave@localhost\/[^/]+$/);
        expect(received.body).to.equal(body);
        // xmppc exits 0 even when it fails, so its log shows how it logged in.
        await xmppc.exit(XMPPC_MS);
        expect(xmppc.output, `xmppc did not use TLS${xmppc.transcript()}`).to.contain(
          'Certificate verification passed',
        );
        expect(xmppc.output, `xmppc did not use SCRAM${xmppc.transcript()}`).to.match(
          /SASL SCRAM-SHA-256\S* auth successful/,
        );
        await quitCleanly(carol);
      } finally {
        await stopForwarding();
      }
    });
  });
});
