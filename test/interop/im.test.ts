// Interop, instant messaging: python3-slixmpp and python3-nbxmpp (Gajim's
// library) use Chorus as a chat server. Contacts add each other with the
// libraries' own roster and presence APIs, see each other come and go (a
// clean logout and a cut connection), chat, get carbons on a second device,
// receive what was sent while they were offline, and block each other.
//
// Same conventions as interop.test.ts: im_slixmpp.py and im_nbxmpp.py print
// `RESULT key=<json>` lines and read JSON commands on stdin (see their
// docstrings). A failing step prints the scripts' stdout and stderr; set
// CHORUS_INTEROP_DEBUG=1 for the libraries' debug logs.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import {
  GIO_TLS_CHECK,
  InteropScript,
  interopUnavailable,
  type Json,
  pythonProblem,
  ResultProcess,
} from './script-process.ts';

/** Login: TLS, SCRAM with 4096 iterations, bind, initial presence. */
const LOGIN_MS = 20_000;
/** One command's answer, or one stanza to arrive. */
const STEP_MS = 10_000;
/** How long to watch for something that must not arrive. */
const QUIET_MS = 1_200;

// ---------------------------------------------------------------------------
// Prerequisites, as in interop.test.ts: a missing package fails with its
// name unless CHORUS_SKIP_INTEROP=1.

function missingLibraries(): string | null {
  const problem = pythonProblem(`import slixmpp, nbxmpp.client\n${GIO_TLS_CHECK}`);
  if (problem === null) return null;
  return `install the Debian packages python3-slixmpp python3-nbxmpp glib-networking (${problem})`;
}

// ---------------------------------------------------------------------------
// A script as a child process, collecting its RESULT lines.

class Client extends InteropScript {
  constructor(label: string, jid: string, script: string, args: string[], password: string) {
    super(label, jid, script, args, password, {
      timeoutSeconds: 100,
      loginMs: LOGIN_MS,
      stepMs: STEP_MS,
      hardTimeoutMs: 110_000,
      transcriptChars: 8_000,
    });
  }

  get bare(): string {
    return this.jid.split('/')[0]!;
  }

  /** Takes every untaken result of `key` that satisfies `match`. */
  drain(key: string, match: (v: Json) => boolean): void {
    this.takeAll(key, match);
  }

  /** Runs a command that answers with `RESULT <key>={"ok": ...}` and checks that it succeeded. */
  async ok(cmd: Json, key = String(cmd.cmd)): Promise<Json> {
    this.command(cmd);
    const answer = await this.waitFor(key, `the answer to ${JSON.stringify(cmd)}`);
    expect(
      answer.ok,
      `${this.label}: ${JSON.stringify(cmd)} failed: ${JSON.stringify(answer)}${this.transcript()}`,
    ).to.equal(true);
    return answer;
  }

  override exit(timeoutMs = STEP_MS): Promise<number | null> {
    return super.exit(timeoutMs);
  }
}

const isAvailable = (v: Json) => v.type === '';
const from = (jid: string) => (v: Json) => v.from === jid;
const str = (v: unknown) => String(v);

async function quiet(ms = QUIET_MS): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------------------

describe('interop: instant messaging with slixmpp and nbxmpp', function () {
  this.timeout(60_000);

  const password = (user: string) => `${user}-Secret-${user.length}`;
  const usernames = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'gina', 'hank'];
  let server: TestServer;
  let dir: string;
  let cafile: string;

  before(async function () {
    const missing = missingLibraries();
    if (missing) interopUnavailable(this, missing);
    server = await startTestServer({
      yaml: 'modules: [disco, ping, roster, presence, carbons, offline, blocking]',
    });
    for (const u of usernames) await server.addUser(u, password(u));
    dir = mkdtempSync(join(tmpdir(), 'chorus-interop-im-'));
    cafile = join(dir, 'localhost.pem');
    writeFileSync(cafile, server.server.certs.certificateFor('localhost').certPem);
  });

  afterEach(() => {
    for (const c of [...ResultProcess.running]) c.kill();
  });

  after(async () => {
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const common = () => ['--host', '127.0.0.1', '--port', String(server.port), '--cafile', cafile];

  /** A slixmpp client that approves subscription requests itself (auto_authorize = True). */
  function slixmpp(user: string, resource: string): Client {
    const jid = `${user}@localhost/${resource}`;
    const args = [...common(), '--mech', 'SCRAM-SHA-256-PLUS', '--auto-authorize', 'yes'];
    return new Client(`slixmpp ${jid}`, jid, 'im_slixmpp.py', args, password(user));
  }

  /** An nbxmpp client (SCRAM-SHA-256: nbxmpp 4.2 has no -PLUS); approvals are commands. */
  function nbxmpp(user: string, resource: string): Client {
    const jid = `${user}@localhost/${resource}`;
    const args = [...common(), '--mech', 'SCRAM-SHA-256'];
    return new Client(`nbxmpp ${jid}`, jid, 'im_nbxmpp.py', args, password(user));
  }

  /**
   * `sli` adds `nb` to its roster and asks for a subscription; `nb` sees the
   * request, adds `sli`, approves it and asks back; slixmpp approves that by
   * itself. Both then see the other's available presence.
   */
  async function befriend(sli: Client, nb: Client): Promise<void> {
    await sli.ok({ cmd: 'roster_set', jid: nb.bare, name: 'Nb Contact', groups: ['Friends'] });
    await sli.ok({ cmd: 'subscribe', jid: nb.bare });
    await nb.waitFor(
      'presence',
      `a subscription request from ${sli.bare}`,
      (v) => v.type === 'subscribe' && v.from === sli.bare,
    );
    await nb.ok({ cmd: 'roster_set', jid: sli.bare, name: 'Sli Contact', groups: ['Work'] });
    await nb.ok({ cmd: 'subscribed', jid: sli.bare });
    await nb.ok({ cmd: 'subscribe', jid: sli.bare });
    // RFC 6121 3.1.5/3.1.6: once approved, the contact's current presence is delivered.
    await sli.waitFor(
      'presence',
      `available presence of ${nb.jid} after the approval`,
      (v) => from(nb.jid)(v) && isAvailable(v),
    );
    await nb.waitFor(
      'presence',
      `available presence of ${sli.jid} after the approval`,
      (v) => from(sli.jid)(v) && isAvailable(v),
    );
    // slixmpp's RosterItem.authorize() sends its last presence itself as
    // well, so nb may see sli's available presence twice: settle, then forget them.
    await quiet(500);
    nb.drain('presence', from(sli.jid));
    sli.drain('presence', from(nb.jid));
  }

  async function rosterOf(c: Client): Promise<Record<string, Json>> {
    const roster = await c.ok({ cmd: 'roster_get' }, 'roster');
    return roster.items as Record<string, Json>;
  }

  async function chat(a: Client, b: Client, body: string, to = b.jid): Promise<void> {
    a.command({ cmd: 'send', to, body });
    const got = await b.waitFor('message', `message "${body}" from ${a.jid}`, (v) => v.body === body);
    expect(got, `${b.label} received${b.transcript()}`).to.include({
      from: a.jid,
      type: 'chat',
      error: null,
    });
  }

  it('two users add each other, see each other come online and go offline (clean logout and cut connection), and chat', async function () {
    this.timeout(90_000);
    let alice = slixmpp('alice', 'laptop');
    let bob = nbxmpp('bob', 'gajim');
    await Promise.all([alice.ready(), bob.ready()]);

    await befriend(alice, bob);
    const aliceRoster = await rosterOf(alice);
    expect(aliceRoster, `alice's roster${alice.transcript()}`).to.deep.equal({
      'bob@localhost': { subscription: 'both', ask: null, name: 'Nb Contact', groups: ['Friends'] },
    });
    const bobRoster = await rosterOf(bob);
    expect(bobRoster, `bob's roster${bob.transcript()}`).to.deep.equal({
      'alice@localhost': { subscription: 'both', ask: null, name: 'Sli Contact', groups: ['Work'] },
    });

    await chat(alice, bob, 'Hi Bob, glad you accepted <3 — ✓');
    await chat(bob, alice, 'Hello Alice & co, from Gajim’s library', alice.bare);

    // alice logs out cleanly: bob sees her go offline.
    await alice.logout();
    await bob.waitFor(
      'presence',
      'alice going offline after her logout',
      (v) => from(alice.jid)(v) && v.type === 'unavailable',
    );
    // alice comes back: bob sees her, and her server tells her bob is online (probe).
    alice = slixmpp('alice', 'laptop');
    await alice.ready();
    await bob.waitFor('presence', 'alice coming back online', (v) => from(alice.jid)(v) && isAvailable(v));
    await alice.waitFor(
      'presence',
      "bob's presence at alice's login",
      (v) => from(bob.jid)(v) && isAvailable(v),
    );

    // bob logs out cleanly, then comes back.
    await bob.logout();
    await alice.waitFor(
      'presence',
      'bob going offline after his logout',
      (v) => from(bob.jid)(v) && v.type === 'unavailable',
    );
    bob = nbxmpp('bob', 'gajim');
    await bob.ready();
    await alice.waitFor('presence', 'bob coming back online', (v) => from(bob.jid)(v) && isAvailable(v));

    // bob's process dies: the connection ends without </stream:stream>.
    bob.kill();
    await bob.exit();
    await alice.waitFor(
      'presence',
      'bob going offline when his connection was cut',
      (v) => from(bob.jid)(v) && v.type === 'unavailable',
    );

    bob = nbxmpp('bob', 'gajim');
    await bob.ready();
    await alice.waitFor(
      'presence',
      'bob back online after the cut',
      (v) => from(bob.jid)(v) && isAvailable(v),
    );
    await chat(alice, bob, 'Welcome back, Bob');
    await chat(bob, alice, 'Thanks, Alice', alice.bare);

    // alice's transport is aborted (no closing tag): bob sees her go offline.
    alice.command({ cmd: 'abort' });
    await alice.waitFor('aborted', 'the transport abort');
    await bob.waitFor(
      'presence',
      'alice going offline when her connection was cut',
      (v) => from(alice.jid)(v) && v.type === 'unavailable',
    );

    // Nobody got an error bounce along the way.
    for (const c of [alice, bob]) {
      expect(
        c.find('message', (v) => v.type === 'error'),
        `${c.label} got errors${c.transcript()}`,
      ).to.deep.equal([]);
    }
    await bob.logout();
  });

  it('a user with two devices (slixmpp and nbxmpp) gets carbons of what the other device sends and receives', async function () {
    const desk = slixmpp('carol', 'desk');
    const phone = nbxmpp('carol', 'phone');
    const dave = slixmpp('dave', 'home');
    await Promise.all([desk.ready(), phone.ready(), dave.ready()]);
    await desk.ok({ cmd: 'carbons' });
    await phone.ok({ cmd: 'carbons' });

    // dave writes to the desk: the phone gets a "received" carbon.
    await chat(dave, desk, 'to the desk');
    const received = await phone.waitFor(
      'carbon',
      'a received carbon on the phone',
      (v) => v.body === 'to the desk',
    );
    expect(received).to.include({ dir: 'received', from: dave.jid, to: desk.jid, type: 'chat' });

    // The desk writes to dave: the phone gets a "sent" carbon.
    await chat(desk, dave, 'from the desk', dave.bare);
    const sent = await phone.waitFor(
      'carbon',
      'a sent carbon on the phone',
      (v) => v.body === 'from the desk',
    );
    expect(sent).to.include({ dir: 'sent', from: desk.jid, to: dave.bare, type: 'chat' });

    // And the other way round.
    await chat(phone, dave, 'from the phone', dave.bare);
    const sent2 = await desk.waitFor(
      'carbon',
      'a sent carbon on the desk',
      (v) => v.body === 'from the phone',
    );
    expect(sent2).to.include({ dir: 'sent', from: phone.jid, to: dave.bare, type: 'chat' });
    await chat(dave, phone, 'to the phone');
    const received2 = await desk.waitFor(
      'carbon',
      'a received carbon on the desk',
      (v) => v.body === 'to the phone',
    );
    expect(received2).to.include({ dir: 'received', from: dave.jid, to: phone.jid, type: 'chat' });

    // A message to the bare JID shows up on both devices, either delivered
    // directly (RFC 6121 8.5.2.1.1) or as a "received" carbon (XEP-0280 section 6).
    dave.command({ cmd: 'send', to: 'carol@localhost', body: 'to carol, wherever' });
    for (const device of [desk, phone]) {
      const copy = await device.waitFor(
        ['message', 'carbon'],
        'the message dave sent to the bare JID',
        (v) => v.body === 'to carol, wherever',
      );
      expect(copy, `${device.label}${device.transcript()}`).to.include({ from: dave.jid, type: 'chat' });
    }

    // Each copy arrives once, and dave (carbons not enabled) gets none.
    await quiet(300);
    for (const c of [desk, phone]) {
      expect(
        c.find('carbon', () => true),
        `${c.label}: unexpected extra carbons${c.transcript()}`,
      ).to.deep.equal([]);
      expect(
        c.find('message', () => true),
        `${c.label}: unexpected extra messages${c.transcript()}`,
      ).to.deep.equal([]);
    }
    expect(
      dave.find('carbon', () => true),
      `dave got carbons${dave.transcript()}`,
    ).to.deep.equal([]);
    await Promise.all([desk.logout(), phone.logout(), dave.logout()]);
  });

  it('messages sent to an offline user arrive at the next login, in order, with a delay stamp', async function () {
    // erin (slixmpp) writes to frank, who has never been online.
    const erin = slixmpp('erin', 'pc');
    await erin.ready();
    const before = Date.now();
    erin.command({ cmd: 'send', to: 'frank@localhost', body: 'first, while you were away' });
    erin.command({ cmd: 'send', to: 'frank@localhost', body: 'second — ünïcode' });
    await erin.waitFor('sent', 'the second send', (v) => str(v.body).startsWith('second'));
    await quiet(300);
    expect(
      erin.find('message', () => true),
      `erin got a bounce${erin.transcript()}`,
    ).to.deep.equal([]);
    await erin.logout();

    // frank logs in with nbxmpp and gets both, in order, with delay stamps from the server.
    const frank = nbxmpp('frank', 'gajim');
    await frank.ready();
    const first = await frank.waitFor('message', 'the first offline message', (v) => v.type === 'chat');
    const second = await frank.waitFor('message', 'the second offline message', (v) => v.type === 'chat');
    expect([first.body, second.body]).to.deep.equal(['first, while you were away', 'second — ünïcode']);
    for (const m of [first, second]) {
      expect(m.from).to.match(/^erin@localhost\/pc$/);
      const delay = m.delay as Json | null;
      expect(delay, `no <delay/> on ${JSON.stringify(m)}`).to.be.an('object');
      expect(delay!.from).to.equal('localhost');
      const stamp = Date.parse(str(delay!.stamp));
      expect(stamp, `delay stamp ${str(delay!.stamp)}`).to.be.within(before - 2_000, Date.now());
    }

    // frank answers while erin is offline; slixmpp shows her msg['delay'] at her next login.
    frank.command({ cmd: 'send', to: 'erin@localhost', body: 'got it, thanks' });
    await frank.waitFor('sent', 'the answer');
    await frank.logout();
    const erin2 = slixmpp('erin', 'pc');
    await erin2.ready();
    const answer = await erin2.waitFor('message', "frank's answer", (v) => v.body === 'got it, thanks');
    expect(answer).to.include({ from: 'frank@localhost/gajim', type: 'chat' });
    expect(answer.delay, `no delay on ${JSON.stringify(answer)}`).to.be.an('object');
    expect((answer.delay as Json).from).to.equal('localhost');
    expect(Date.parse(str((answer.delay as Json).stamp))).to.be.within(before - 2_000, Date.now());

    // Delivered once: nothing else comes (the offline store was emptied).
    await quiet(500);
    expect(
      frank.find('message', () => true),
      `frank got extra messages${frank.transcript()}`,
    ).to.deep.equal([]);
    expect(
      erin2.find('message', () => true),
      `erin got extra messages${erin2.transcript()}`,
    ).to.deep.equal([]);
    await erin2.logout();
  });

  it('blocking (XEP-0191) stops messages and presence in both directions; unblocking restores them', async function () {
    const gina = slixmpp('gina', 'pc');
    const hank = nbxmpp('hank', 'gajim');
    await Promise.all([gina.ready(), hank.ready()]);
    await befriend(gina, hank);

    await gina.ok({ cmd: 'block', jid: hank.bare });
    // Section 3.3: hank, subscribed to gina, sees her go offline.
    await hank.waitFor(
      'presence',
      'gina appearing offline once she blocked hank',
      (v) => from(gina.jid)(v) && v.type === 'unavailable',
    );
    const blocklist = await gina.ok({ cmd: 'blocklist' });
    expect(blocklist.items).to.deep.equal(['hank@localhost']);

    // hank's message does not reach gina, and he gets an error as if she were offline.
    hank.command({ cmd: 'send', to: gina.bare, body: 'are you there?' });
    const bounce = await hank.waitFor(
      'message',
      'an error for the message to gina',
      (v) => v.type === 'error',
    );
    expect(bounce).to.include({ from: gina.bare, error: 'service-unavailable' });
    // gina's own message to hank is refused by her server (not-acceptable + <blocked/>).
    gina.command({ cmd: 'send', to: hank.jid, body: 'I blocked you' });
    const refused = await gina.waitFor(
      'message',
      'an error for the message to a blocked JID',
      (v) => v.type === 'error',
    );
    expect(refused).to.include({ error: 'not-acceptable', blocked: true });
    // Presence changes do not cross either.
    await gina.ok({ cmd: 'status', show: 'away', status: 'hiding' });
    await hank.ok({ cmd: 'status', show: 'dnd', status: 'busy' });
    await quiet();
    expect(
      gina.find('message', (v) => v.body === 'are you there?'),
      `gina got hank's message${gina.transcript()}`,
    ).to.deep.equal([]);
    expect(
      hank.find('message', (v) => v.body === 'I blocked you'),
      `hank got gina's message${hank.transcript()}`,
    ).to.deep.equal([]);
    expect(
      hank.find('presence', from(gina.jid)),
      `hank saw gina's presence${hank.transcript()}`,
    ).to.deep.equal([]);
    expect(
      gina.find('presence', from(hank.jid)),
      `gina saw hank's presence${gina.transcript()}`,
    ).to.deep.equal([]);

    await gina.ok({ cmd: 'unblock', jid: hank.bare });
    // Section 3.4: hank gets gina's current presence, gina gets hank's (probe).
    const back = await hank.waitFor(
      'presence',
      "gina's presence after the unblock",
      (v) => from(gina.jid)(v) && isAvailable(v),
    );
    expect(back).to.include({ show: 'away', status: 'hiding' });
    const hankBack = await gina.waitFor(
      'presence',
      "hank's presence after the unblock",
      (v) => from(hank.jid)(v) && isAvailable(v),
    );
    expect(hankBack).to.include({ show: 'dnd', status: 'busy' });
    await chat(hank, gina, 'now I can reach you', gina.bare);
    await chat(gina, hank, 'yes, sorry');
    await Promise.all([gina.logout(), hank.logout()]);
  });
});
