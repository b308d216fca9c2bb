// Interop: slixmpp's XEP-0198 plugin (python3-slixmpp) enables stream
// management with resumption against Chorus, loses its TCP connection (the
// script aborts its own transport) and resumes; messages sent to it meanwhile
// arrive exactly once. Same conventions as interop.test.ts: the script
// prints `RESULT key=<json>` lines and reads JSON commands on stdin.
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';

/** Debian's Python libraries load only under the system interpreter. */
const PYTHON = '/usr/bin/python3';
const HERE = dirname(fileURLToPath(import.meta.url));
const LOGIN_MS = 20_000;
const STEP_MS = 15_000;

type Json = Record<string, unknown>;

/** The slixmpp script as a child process; collects its RESULT lines. */
class Script {
  readonly results: { key: string; value: Json; taken: boolean }[] = [];
  private output = '';
  private partial = '';
  private exited = false;
  exitCode: number | null = null;
  private readonly waiters = new Set<() => void>();
  private readonly child: ChildProcessWithoutNullStreams;
  readonly done: Promise<void>;

  constructor(args: string[], password: string) {
    this.child = spawn(PYTHON, [join(HERE, 'smacks_client.py'), ...args], {
      env: {
        ...process.env,
        INTEROP_PASSWORD: password,
        PYTHONDONTWRITEBYTECODE: '1',
        PYTHONUNBUFFERED: '1',
      },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stdout.setEncoding('utf8');
    this.child.stderr.setEncoding('utf8');
    this.child.stdout.on('data', (chunk: string) => this.onStdout(chunk));
    this.child.stderr.on('data', (chunk: string) => {
      this.output += chunk;
    });
    this.child.stdin.on('error', () => undefined);
    this.done = new Promise((resolve) => {
      this.child.on('close', (code) => {
        this.exited = true;
        this.exitCode = code;
        this.wake();
        resolve();
      });
    });
  }

  private onStdout(chunk: string): void {
    this.output += chunk;
    this.partial += chunk;
    let nl: number;
    while ((nl = this.partial.indexOf('\n')) >= 0) {
      const line = this.partial.slice(0, nl).trim();
      this.partial = this.partial.slice(nl + 1);
      const m = /^RESULT ([a-z_]+)=(.*)$/.exec(line);
      if (!m) continue;
      try {
        const value: unknown = JSON.parse(m[2]!);
        if (value && typeof value === 'object' && !Array.isArray(value)) {
          this.results.push({ key: m[1]!, value: value as Json, taken: false });
        }
      } catch {
        // not a result line after all
      }
    }
    this.wake();
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }

  transcript(): string {
    return `\n--- slixmpp output ---\n${this.output.slice(-12_000)}\n---`;
  }

  keys(key: string): Json[] {
    return this.results.filter((r) => r.key === key).map((r) => r.value);
  }

  waitFor(key: string, timeoutMs: number, match: (v: Json) => boolean = () => true): Promise<Json> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.results.find((r) => !r.taken && r.key === key && match(r.value));
        if (found) {
          found.taken = true;
          finish();
          resolve(found.value);
        } else if (this.exited) {
          finish();
          reject(new Error(`slixmpp exited (${this.exitCode}) before RESULT ${key}${this.transcript()}`));
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`slixmpp: no RESULT ${key} within ${timeoutMs} ms${this.transcript()}`));
      }, timeoutMs);
      const finish = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  command(cmd: Json): void {
    this.child.stdin.write(`${JSON.stringify(cmd)}\n`);
  }

  async quit(): Promise<number | null> {
    if (!this.exited) {
      this.command({ cmd: 'quit' });
      this.child.stdin.end();
    }
    const timer = setTimeout(() => this.kill(), STEP_MS);
    await this.done;
    clearTimeout(timer);
    return this.exitCode;
  }

  kill(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}

function slixmppMissing(): string | null {
  if (!existsSync(PYTHON)) return `${PYTHON} does not exist (Debian package python3)`;
  const r = spawnSync(PYTHON, ['-c', 'import slixmpp.plugins.xep_0198'], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  return r.status === 0 ? null : `${PYTHON} cannot load slixmpp's xep_0198: ${(r.stderr ?? '').trim()}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

describe('interop: slixmpp stream management (XEP-0198)', function () {
  this.timeout(60_000);
  const alicePw = 'älice sm Secret';
  const bobPw = 'bob-sm-Secret';
  let server: TestServer;
  let dir: string;
  let cafile: string;
  const scripts: Script[] = [];
  const clients: XmppClient[] = [];

  before(async function () {
    const missing = slixmppMissing();
    if (missing) {
      const message = `install the Debian package python3-slixmpp (${missing})`;
      if (process.env.CHORUS_SKIP_INTEROP === '1') this.skip();
      throw new Error(`${message}. Set CHORUS_SKIP_INTEROP=1 to skip the interop tests on this machine.`);
    }
    server = await startTestServer({
      yaml: [
        'modules: [disco, ping, roster, presence, offline, smacks]',
        'module_options:',
        '  smacks: { resume_timeout: 30, request_ack_after: 2, request_ack_delay_ms: 200 }',
      ].join('\n'),
    });
    await server.addUser('alice', alicePw);
    await server.addUser('bob', bobPw);
    dir = mkdtempSync(join(tmpdir(), 'chorus-interop-sm-'));
    cafile = join(dir, 'localhost.pem');
    writeFileSync(cafile, server.server.certs.certificateFor('localhost').certPem);
  });

  afterEach(async () => {
    for (const s of scripts.splice(0)) s.kill();
    await Promise.all(clients.splice(0).map((c) => c.shutdown()));
  });

  after(async () => {
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  function slixmpp(resource: string): Script {
    const args = [
      '--jid',
      `alice@localhost/${resource}`,
      '--host',
      '127.0.0.1',
      '--port',
      String(server.port),
    ];
    args.push('--cafile', cafile, '--mech', 'SCRAM-SHA-256-PLUS', '--timeout', '50');
    if (process.env.CHORUS_INTEROP_DEBUG === '1') args.push('--debug');
    const s = new Script(args, alicePw);
    scripts.push(s);
    return s;
  }

  it('resumes the session after slixmpp loses its TCP connection, with nothing lost or repeated', async () => {
    const alice = slixmpp('sm');
    const ready = await alice.waitFor('ready', LOGIN_MS);
    expect(ready.jid).to.equal('alice@localhost/sm');
    const smId = ready.sm_id;
    expect(smId, `no resumption id${alice.transcript()}`).to.be.a('string').and.not.equal('');

    const bob = await XmppClient.connect({ port: server.port, name: 'bob' });
    clients.push(bob);
    await bob.login('bob', bobPw, { resource: 'raw' });
    const send = (id: string) =>
      bob.send(`<message to='alice@localhost/sm' type='chat' id='${id}'><body>${id}</body></message>`);

    send('before-cut');
    const first = await alice.waitFor('message', STEP_MS, (m) => m.id === 'before-cut');
    expect(first).to.include({ from: 'bob@localhost/raw', body: 'before-cut' });

    alice.command({ cmd: 'cut' });
    await alice.waitFor('cut', STEP_MS);
    // While alice is away, the server keeps her session and queues for it.
    await sleep(200);
    send('while-away-1');
    send('while-away-2');
    const resumed = await alice.waitFor('resumed', STEP_MS);
    expect(resumed.previd, `resumed another session${alice.transcript()}`).to.equal(smId);
    expect(resumed.jid).to.equal('alice@localhost/sm');
    await alice.waitFor('message', STEP_MS, (m) => m.id === 'while-away-1');
    await alice.waitFor('message', STEP_MS, (m) => m.id === 'while-away-2');

    // The resumed session works both ways.
    alice.command({ cmd: 'send', to: 'bob@localhost/raw', body: 'back again', id: 'from-alice' });
    await bob.expect(
      `<message from='alice@localhost/sm' id='from-alice' type='chat'><body>back again</body></message>`,
      STEP_MS,
    );
    send('after-resume');
    await alice.waitFor('message', STEP_MS, (m) => m.id === 'after-resume');
    await sleep(500);

    const ids = alice.keys('message').map((m) => m.id);
    expect(ids, `messages as slixmpp saw them${alice.transcript()}`).to.deep.equal([
      'before-cut',
      'while-away-1',
      'while-away-2',
      'after-resume',
    ]);
    expect(alice.keys('new_session'), 'slixmpp had to start a new session').to.deep.equal([]);
    expect(alice.keys('sm_failed'), 'the server refused something').to.deep.equal([]);
    expect(await alice.quit(), alice.transcript()).to.equal(0);
  });
});
