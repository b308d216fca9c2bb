// Interop: slixmpp's XEP-0198 plugin (python3-slixmpp) enables stream
// management with resumption against Chorus, loses its TCP connection (the
// script aborts its own transport) and resumes; messages sent to it meanwhile
// arrive exactly once. Same conventions as interop.test.ts: the script
// prints `RESULT key=<json>` lines and reads JSON commands on stdin.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';
import {
  interopUnavailable,
  PYTHON,
  pythonProblem,
  pythonScript,
  ResultProcess,
  type Json,
} from './script-process.ts';

const LOGIN_MS = 20_000;
const STEP_MS = 15_000;

/** The slixmpp script as a child process; collects its RESULT lines. */
class Script extends ResultProcess {
  constructor(args: string[], password: string) {
    super({ label: 'slixmpp', ...pythonScript('smacks_client.py', args, password) });
  }

  waitFor(key: string, timeoutMs: number, match: (v: Json) => boolean = () => true): Promise<Json> {
    return this.take(key, `RESULT ${key}`, match, timeoutMs);
  }

  async quit(): Promise<number | null> {
    this.sendQuit();
    const timer = setTimeout(() => this.kill(), STEP_MS);
    await this.done;
    clearTimeout(timer);
    return this.exitCode;
  }
}

function slixmppMissing(): string | null {
  const problem = pythonProblem('import slixmpp.plugins.xep_0198');
  return problem === null ? null : `${PYTHON} cannot load slixmpp's xep_0198: ${problem}`;
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
    if (missing) interopUnavailable(this, `install the Debian package python3-slixmpp (${missing})`);
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
