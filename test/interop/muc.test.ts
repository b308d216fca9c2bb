// Interop, multi-user chat (XEP-0045 on conference.localhost): alice in
// python3-slixmpp creates a room with the library's xep_0045 plugin
// (join_muc_wait), configures it (name, persistent, history length) through
// get_room_config / set_room_config, and talks in it; bob in python3-nbxmpp
// (Gajim's library) discovers the room and joins it the way Gajim builds the
// join presence. Both see each other's presence (nick, affiliation, role)
// and groupchat messages (from room@conference.localhost/nick), and bob gets
// what was said before he came as history, delayed by the room (XEP-0203).
//
// muc_slixmpp.py and muc_nbxmpp.py print `RESULT key=<json>` lines and read
// JSON commands on stdin (see their docstrings). A failing step prints the
// scripts' output; CHORUS_INTEROP_DEBUG=1 adds the libraries' debug logs.
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

const LOGIN_MS = 20_000;
const STEP_MS = 15_000;
const ROOM = 'lounge@conference.localhost';
const ROOM_NAME = 'Interop Lounge – Grüße';
const HISTORY_LENGTH = 3;
/** Said in the room before bob joins: more than the room's history length. */
const EARLY = ['one: before bob', 'two: <b>&amp;</b> “quotes”', 'three ✓', 'four', 'five: the last'];

function missingLibraries(): string | null {
  const problem = pythonProblem(
    `import slixmpp.plugins.xep_0045, nbxmpp.client, nbxmpp.modules.muc\n${GIO_TLS_CHECK}`,
  );
  if (problem === null) return null;
  return `install the Debian packages python3-slixmpp python3-nbxmpp glib-networking (${problem})`;
}

class Script extends InteropScript {
  constructor(label: string, jid: string, script: string, args: string[], password: string) {
    super(label, jid, script, args, password, {
      timeoutSeconds: 100,
      loginMs: LOGIN_MS,
      stepMs: STEP_MS,
      transcriptChars: 6_000,
      strictJson: true,
    });
  }

  /** Sends a command and waits for its RESULT line. */
  async ask(cmd: Json, key: string, what: string): Promise<Json> {
    this.command(cmd);
    const got = await this.waitFor(key, what);
    expect(got.ok, `${what} failed: ${JSON.stringify(got)}${this.transcript()}`).to.equal(true);
    return got;
  }
}

const strings = (v: unknown): string[] => (Array.isArray(v) ? v.map((x) => String(x)) : []);

describe('interop: multi-user chat (XEP-0045) with slixmpp and nbxmpp', function () {
  this.timeout(60_000);

  const password = (user: string) => `${user}-Rooms-${user.length}`;
  let server: TestServer;
  let dir: string;
  /** alice in slixmpp: the room's creator and owner, nick Alice. */
  let alice: Script;
  /** bob in nbxmpp (Gajim), nick Bob. */
  let bob: Script;
  let earlyFrom = 0;
  /** The room's stanza-id of each early message, as alice got it back live. */
  const earlyIds: string[] = [];
  let earlyTo = 0;

  before(async function () {
    this.timeout(60_000);
    const missing = missingLibraries();
    if (missing) interopUnavailable(this, missing);
    server = await startTestServer({ yaml: 'modules: [disco, ping, roster, presence, mam, muc]' });
    for (const u of ['alice', 'bob']) await server.addUser(u, password(u));
    dir = mkdtempSync(join(tmpdir(), 'chorus-interop-muc-'));
    const cafile = join(dir, 'localhost.pem');
    writeFileSync(cafile, server.server.certs.certificateFor('localhost').certPem);
    const common = ['--host', '127.0.0.1', '--port', String(server.port), '--cafile', cafile];
    alice = new Script(
      'slixmpp alice/desk',
      'alice@localhost/desk',
      'muc_slixmpp.py',
      [...common, '--mech', 'SCRAM-SHA-256-PLUS'],
      password('alice'),
    );
    bob = new Script(
      'nbxmpp bob/gajim',
      'bob@localhost/gajim',
      'muc_nbxmpp.py',
      [...common, '--mech', 'SCRAM-SHA-256'],
      password('bob'),
    );
    await Promise.all([alice.ready(), bob.ready()]);
  });

  after(async () => {
    for (const s of [...ResultProcess.running]) s.kill();
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('slixmpp creates the room with join_muc_wait: owner and moderator, told the room is new (201)', async function () {
    const joined = await alice.ask({ cmd: 'join', room: ROOM, nick: 'Alice' }, 'joined', 'creating the room');
    expect(joined, alice.transcript()).to.include({
      from: `${ROOM}/Alice`,
      nick: 'Alice',
      affiliation: 'owner',
      role: 'moderator',
      subject: '',
    });
    // 110: this is you; 201: a new room (XEP-0045 10.1.1).
    expect(joined.codes).to.include.members([110, 201]);
    expect(strings(joined.occupants)).to.deep.equal(['Alice']);
    expect(strings(joined.history)).to.deep.equal([]);
    // Until it is configured, the room is locked: bob's Gajim does not find it.
    bob.command({ cmd: 'roominfo', room: ROOM });
    const locked = await bob.waitFor('roominfo', 'disco#info of the locked room');
    expect(locked.ok, `a locked room is not disco-visible to others${bob.transcript()}`).to.equal(false);
    expect(String(locked.error)).to.match(/item-not-found/);
  });

  it('slixmpp configures it through the muc#roomconfig form (name, persistent, history length) and reads it back', async function () {
    const before = await alice.ask({ cmd: 'get_config', room: ROOM }, 'config', 'get_room_config');
    expect(before.type).to.equal('form');
    const fields = before.values as Json;
    expect(fields).to.include.keys(
      'FORM_TYPE',
      'muc#roomconfig_roomname',
      'muc#roomconfig_persistentroom',
      'muc#roomconfig_historylength',
    );
    expect([fields.FORM_TYPE].flat()).to.deep.equal(['http://jabber.org/protocol/muc#roomconfig']);

    await alice.ask(
      {
        cmd: 'set_config',
        room: ROOM,
        values: {
          'muc#roomconfig_roomname': ROOM_NAME,
          'muc#roomconfig_persistentroom': true,
          'muc#roomconfig_historylength': String(HISTORY_LENGTH),
        },
      },
      'configured',
      'set_room_config',
    );

    const after = await alice.ask({ cmd: 'get_config', room: ROOM }, 'config', 'get_room_config again');
    expect(after.values, alice.transcript()).to.include({
      'muc#roomconfig_roomname': ROOM_NAME,
      'muc#roomconfig_persistentroom': '1',
      'muc#roomconfig_historylength': String(HISTORY_LENGTH),
    });
    // The room describes itself with the new configuration, to its owner and to others.
    const mine = await alice.ask({ cmd: 'roominfo', room: ROOM }, 'roominfo', 'disco#info of the room');
    expect(strings(mine.names)).to.deep.equal([ROOM_NAME]);
    expect(strings(mine.features)).to.include.members(['http://jabber.org/protocol/muc', 'muc_persistent']);
    const gajims = await bob.ask({ cmd: 'roominfo', room: ROOM }, 'roominfo', 'Gajim’s disco of the room');
    expect(gajims, bob.transcript()).to.include({ is_muc: true, name: ROOM_NAME, persistent: true });
  });

  it('slixmpp talks in the room and gets its own groupchat messages back from room/Alice', async function () {
    earlyFrom = Date.now();
    for (const [k, body] of EARLY.entries()) {
      alice.command({ cmd: 'send', room: ROOM, body, id: `early-${k}` });
      const echo = await alice.waitFor('groupchat', `the echo of “${body}”`, (m) => m.body === body);
      expect(echo, alice.transcript()).to.include({ from: `${ROOM}/Alice`, id: `early-${k}`, stamp: null });
      expect(strings(echo.stanza_id)[1], 'stanza-id by the room').to.equal(ROOM);
      earlyIds.push(strings(echo.stanza_id)[0]!);
    }
    earlyTo = Date.now();
  });

  it('nbxmpp joins like Gajim: sees Alice (owner, moderator), itself (110), the history delayed by the room, then the subject', async function () {
    bob.command({ cmd: 'join', room: ROOM, nick: 'Bob', history: { maxstanzas: 20 } });
    const subject = await bob.waitFor('subject', 'the subject that ends the join');
    expect(subject.from, bob.transcript()).to.equal(ROOM);
    expect(bob.keys('error'), `errors from the room${bob.transcript()}`).to.deep.equal([]);

    const presences = bob.takeAll('presence');
    expect(
      presences.map((p) => p.from),
      bob.transcript(),
    ).to.deep.equal([`${ROOM}/Alice`, `${ROOM}/Bob`]);
    const [aliceSeen, self] = presences as [Json, Json];
    expect(aliceSeen).to.include({
      nick: 'Alice',
      affiliation: 'owner',
      role: 'moderator',
      type: 'available',
    });
    // Semi-anonymous (the default whois): a participant does not see real JIDs.
    expect(aliceSeen.jid).to.equal(null);
    expect(aliceSeen.codes).to.deep.equal([]);
    expect(self).to.include({ nick: 'Bob', affiliation: 'none', role: 'participant', type: 'available' });
    expect(self.codes).to.include(110);
    expect(self.codes).not.to.include(201);
    expect(aliceSeen.occupant_id).to.be.a('string').and.not.equal(self.occupant_id);

    // History: only the last HISTORY_LENGTH messages (the room's limit beats maxstanzas=20), oldest first.
    const history = bob.takeAll('groupchat');
    expect(
      history.map((m) => m.body),
      bob.transcript(),
    ).to.deep.equal(EARLY.slice(-HISTORY_LENGTH));
    // The same messages as said live: the room's stanza-ids (which clients deduplicate on) match.
    expect(history.map((m) => strings(m.stanza_id)[0])).to.deep.equal(earlyIds.slice(-HISTORY_LENGTH));
    for (const m of history) {
      expect(m, JSON.stringify(m)).to.include({
        from: `${ROOM}/Alice`,
        nick: 'Alice',
        delayed: true,
        delay_from: ROOM,
      });
      expect(Date.parse(String(m.stamp))).to.be.within(earlyFrom - 1_000, earlyTo + 1_000);
      expect(m.occupant_id).to.equal(aliceSeen.occupant_id);
    }
    // XEP-0045 7.2: occupants' presence, then self-presence, then history, then the subject.
    const order = [...presences, ...history, subject].map((e) => Number(e.n));
    expect(order).to.deep.equal([...order].sort((a, b) => a - b));
    expect(Math.max(...presences.map((p) => Number(p.n)))).to.be.below(
      Math.min(...history.map((m) => Number(m.n))),
    );
  });

  it('slixmpp sees Bob come in: nick, affiliation none, role participant, and (as moderator) his real JID', async function () {
    const seen = await alice.waitFor('presence', 'Bob’s presence', (p) => p.from === `${ROOM}/Bob`);
    expect(seen, alice.transcript()).to.include({
      nick: 'Bob',
      affiliation: 'none',
      role: 'participant',
      jid: 'bob@localhost/gajim',
    });
    expect(seen.codes).to.deep.equal([]);
  });

  it('each sees the other’s groupchat messages live, from room/nick, without delay', async function () {
    alice.command({ cmd: 'send', room: ROOM, body: 'Hi Bob, from slixmpp', id: 'live-a' });
    const atBob = await bob.waitFor(
      'groupchat',
      'Alice’s live message',
      (m) => m.body === 'Hi Bob, from slixmpp',
    );
    expect(atBob, bob.transcript()).to.include({
      from: `${ROOM}/Alice`,
      id: 'live-a',
      delayed: false,
      delay_from: null,
    });
    await alice.waitFor('groupchat', 'the echo to Alice', (m) => m.id === 'live-a');

    const body = 'Hallo Alice – from nbxmpp <3 & co';
    bob.command({ cmd: 'send', room: ROOM, body, id: 'live-b' });
    const atAlice = await alice.waitFor('groupchat', 'Bob’s live message', (m) => m.body === body);
    expect(atAlice, alice.transcript()).to.include({ from: `${ROOM}/Bob`, id: 'live-b', stamp: null });
    expect(strings(atAlice.stanza_id)[1]).to.equal(ROOM);
    const echo = await bob.waitFor('groupchat', 'the echo to Bob', (m) => m.body === body);
    expect(echo).to.include({ from: `${ROOM}/Bob`, id: 'live-b', delayed: false });
    expect(echo.stanza_id).to.deep.equal(atAlice.stanza_id);
    // Nothing else reached either of them.
    expect(bob.takeAll('groupchat')).to.deep.equal([]);
    expect(alice.takeAll('groupchat')).to.deep.equal([]);
  });

  it('when Gajim leaves, slixmpp sees Bob go (unavailable, role none)', async function () {
    bob.command({ cmd: 'leave', room: ROOM, nick: 'Bob' });
    const own = await bob.waitFor(
      'presence',
      'Bob’s own unavailable presence',
      (p) => p.type === 'unavailable',
    );
    expect(own, bob.transcript()).to.include({ from: `${ROOM}/Bob`, role: 'none' });
    expect(own.codes).to.include(110);
    const gone = await alice.waitFor(
      'presence',
      'Bob leaving',
      (p) => p.from === `${ROOM}/Bob` && p.type === 'unavailable',
    );
    expect(gone, alice.transcript()).to.include({ nick: 'Bob', role: 'none', affiliation: 'none' });
  });

  it('nbxmpp rejoins like today’s Gajim in a room with MAM (history maxchars=0): no history, just presences and subject', async function () {
    // Gajim asks for no history when the room's disco#info lists urn:xmpp:mam:2 (it reads the room's archive instead).
    const info = await bob.ask({ cmd: 'roominfo', room: ROOM }, 'roominfo', 'Gajim’s disco of the room');
    expect(strings(info.features)).to.include('urn:xmpp:mam:2');
    bob.command({ cmd: 'join', room: ROOM, nick: 'Bob', history: { maxchars: 0 } });
    await bob.waitFor('subject', 'the subject that ends the rejoin');
    expect(
      bob.takeAll('presence').map((p) => [p.from, p.role]),
      bob.transcript(),
    ).to.deep.equal([
      [`${ROOM}/Alice`, 'moderator'],
      [`${ROOM}/Bob`, 'participant'],
    ]);
    expect(bob.takeAll('groupchat'), 'history despite maxchars=0').to.deep.equal([]);
    const back = await alice.waitFor(
      'presence',
      'Bob back',
      (p) => p.from === `${ROOM}/Bob` && p.type === 'available',
    );
    expect(back).to.include({ role: 'participant', jid: 'bob@localhost/gajim' });
    await Promise.all([alice.logout(), bob.logout()]);
  });
});
