// Interop, message archive (XEP-0313 urn:xmpp:mam:2 with XEP-0059 paging):
// 500 messages from alice (a raw client, pipelined) reach bob live in
// python3-nbxmpp (Gajim's library), each with its XEP-0359 stanza-id. Then
// python3-slixmpp's MAM plugin pages through bob's whole archive, and nbxmpp
// catches up the way Gajim does (from a point in time, and after the last
// archive id it knows), paging with RSM <after/> until <fin complete='true'/>.
//
// mam_slixmpp.py and mam_nbxmpp.py print `RESULT key=<json>` lines and read
// JSON commands on stdin (see their docstrings). A failing step prints the
// scripts' output; CHORUS_INTEROP_DEBUG=1 adds the libraries' debug logs.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { escapeXml, XmppClient } from '../helpers/xmpp-client.ts';
import {
  GIO_TLS_CHECK,
  InteropScript,
  interopUnavailable,
  type Json,
  pythonProblem,
  ResultProcess,
} from './script-process.ts';

const LOGIN_MS = 20_000;
const STEP_MS = 20_000;
const TOTAL = 500;
const HALF = 250;
const NS_MAM = 'urn:xmpp:mam:2';

function missingLibraries(): string | null {
  const problem = pythonProblem(
    `import slixmpp.plugins.xep_0313, nbxmpp.client, nbxmpp.modules.mam\n${GIO_TLS_CHECK}`,
  );
  if (problem === null) return null;
  return `install the Debian packages python3-slixmpp python3-nbxmpp glib-networking (${problem})`;
}

/** The body of the i-th message (1-based): markup, an ampersand and non-ASCII text on the way. */
const bodyOf = (i: number) => `#${i} of ${TOTAL}: Grüße <b>&amp; “quotes”</b> ✓`;

// ---------------------------------------------------------------------------
// A script as a child process; its RESULT lines are kept until taken.

class Script extends InteropScript {
  constructor(label: string, jid: string, script: string, args: string[], password: string) {
    super(label, jid, script, args, password, {
      timeoutSeconds: 150,
      loginMs: LOGIN_MS,
      stepMs: STEP_MS,
      transcriptChars: 6_000,
      strictJson: true,
    });
  }
}

const strings = (v: unknown): string[] => (Array.isArray(v) ? v.map((x) => String(x)) : []);
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, k) => from + k);

/** XEP-0082 without fractions, as nbxmpp sends the start field. */
const secondsIso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

// ---------------------------------------------------------------------------

describe('interop: message archive (XEP-0313) with slixmpp and nbxmpp', function () {
  this.timeout(90_000);

  const password = (user: string) => `${user}-Archive-${user.length}`;
  let server: TestServer;
  let dir: string;
  let cafile: string;
  /** bob's nbxmpp client (Gajim), online through the whole suite; it received the 500 messages live. */
  let gajim: Script;
  /** The stanza-id (by bob@localhost) each message carried on live delivery, by message number - 1. */
  const liveIds: string[] = [];
  /** alice's full JID, the sender. */
  let aliceJid = '';
  /** After the first 250 messages, before the second 250: a whole second (nbxmpp sends no fractions). */
  let splitStart = '';
  let fillStartedAt = 0;
  let fillEndedAt = 0;

  const common = () => ['--host', '127.0.0.1', '--port', String(server.port), '--cafile', cafile];
  const slixmpp = (user: string, resource: string) =>
    new Script(
      `slixmpp ${user}/${resource}`,
      `${user}@localhost/${resource}`,
      'mam_slixmpp.py',
      [...common(), '--mech', 'SCRAM-SHA-256-PLUS'],
      password(user),
    );
  const nbxmpp = (user: string, resource: string) =>
    new Script(
      `nbxmpp ${user}/${resource}`,
      `${user}@localhost/${resource}`,
      'mam_nbxmpp.py',
      [...common(), '--mech', 'SCRAM-SHA-256'],
      password(user),
    );

  /** Sends messages from..to in one write and waits until bob's Gajim got each, in order. */
  async function burst(alice: XmppClient, from: number, to: number): Promise<void> {
    const xml = range(from, to)
      .map(
        (i) =>
          `<message type='chat' to='bob@localhost' id='fill-${i}'><body>${escapeXml(bodyOf(i))}</body></message>`,
      )
      .join('');
    alice.sendRaw(xml);
    for (const i of range(from, to)) {
      const got = await gajim.waitFor(
        'message',
        `live delivery of message ${i}`,
        (v) => v.body === bodyOf(i),
      );
      expect(got, `message ${i} as delivered${gajim.transcript()}`).to.include({
        from: aliceJid,
        type: 'chat',
        id: `fill-${i}`,
      });
      const ours = (got.stanza_ids as string[][]).filter(([, by]) => by === 'bob@localhost');
      expect(ours, `stanza-ids by bob@localhost on message ${i}: ${JSON.stringify(got)}`).to.have.length(1);
      liveIds[i - 1] = ours[0]![0]!;
    }
  }

  before(async function () {
    this.timeout(120_000);
    const missing = missingLibraries();
    if (missing) interopUnavailable(this, missing);
    server = await startTestServer({
      sqlite: true,
      yaml: 'modules: [disco, ping, roster, presence, carbons, offline, mam]',
    });
    for (const u of ['alice', 'bob']) await server.addUser(u, password(u));
    dir = mkdtempSync(join(tmpdir(), 'chorus-interop-mam-'));
    cafile = join(dir, 'localhost.pem');
    writeFileSync(cafile, server.server.certs.certificateFor('localhost').certPem);

    gajim = nbxmpp('bob', 'gajim');
    await gajim.ready();
    const alice = await XmppClient.connect({ port: server.port, name: 'alice (raw)' });
    try {
      aliceJid = await alice.login('alice', password('alice'), { resource: 'raw' });
      fillStartedAt = Date.now();
      await burst(alice, 1, HALF);
      // The next whole second: everything so far is before it, the rest after it.
      const split = Math.floor(Date.now() / 1000) * 1000 + 1000;
      await new Promise((resolve) => setTimeout(resolve, split - Date.now() + 20));
      splitStart = secondsIso(split);
      await burst(alice, HALF + 1, TOTAL);
      fillEndedAt = Date.now();
      // No bounce came back to the sender.
      await alice.expectNothing(300);
      await alice.close();
    } finally {
      alice.destroy();
    }
    expect(new Set(liveIds).size, 'distinct live stanza-ids').to.equal(TOTAL);
  });

  afterEach(() => {
    // Only the scripts a test started itself; bob's Gajim lives until after().
    for (const s of [...ResultProcess.running]) if (s !== gajim) s.kill();
  });

  after(async () => {
    for (const s of [...ResultProcess.running]) s.kill();
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('both libraries find urn:xmpp:mam:2 in the account’s disco#info (Gajim turns MAM on only then)', async function () {
    const sli = slixmpp('bob', 'desk');
    await sli.ready();
    sli.command({ cmd: 'disco', jid: 'bob@localhost' });
    const info = await sli.waitFor('disco', 'disco#info of bob@localhost');
    expect(info.ok, `disco failed${sli.transcript()}`).to.equal(true);
    expect(strings(info.features)).to.include(NS_MAM);

    gajim.command({ cmd: 'disco', jid: 'bob@localhost' });
    const nbInfo = await gajim.waitFor('disco', 'disco#info of bob@localhost');
    expect(nbInfo, `disco failed${gajim.transcript()}`).to.include({ ok: true, has_mam_2: true });
    expect(strings(nbInfo.features)).to.include(NS_MAM);
    await sli.logout();
  });

  it('slixmpp pages through all 500 archived messages, 50 at a time, oldest first, and the last page is complete', async function () {
    const sli = slixmpp('bob', 'laptop');
    await sli.ready();
    sli.command({ cmd: 'pages', max: 50 });
    const summary = await sli.waitFor('pages', 'paging through the archive', () => true, 60_000);
    expect(summary.ok, `paging failed: ${JSON.stringify(summary)}${sli.transcript()}`).to.equal(true);
    const pages = sli.takeAll('page');
    expect(
      pages.map((p) => strings(p.ids).length),
      `page sizes${sli.transcript()}`,
    ).to.deep.equal(Array<number>(10).fill(50));

    const ids = pages.flatMap((p) => strings(p.ids));
    const bodies = pages.flatMap((p) => strings(p.bodies));
    expect(new Set(ids).size, 'distinct archive ids').to.equal(TOTAL);
    // Oldest first, with the text as sent, and the ids bob's client saw on delivery.
    expect(bodies).to.deep.equal(range(1, TOTAL).map(bodyOf));
    expect(ids).to.deep.equal(liveIds);
    for (const p of pages) {
      expect(strings(p.froms)).to.deep.equal(Array<string>(50).fill(aliceJid));
      expect(strings(p.tos)).to.deep.equal(Array<string>(50).fill('bob@localhost'));
      // RSM <first/>/<last/> name the page's first and last result, for the next <after/>.
      expect([p.first, p.last]).to.deep.equal([strings(p.ids)[0], strings(p.ids)[49]]);
      expect(strings(p.queryids), 'results tagged with the query id').to.deep.equal([String(p.iq_id)]);
    }
    // complete='true' only on the page that holds the last message.
    expect(pages.map((p) => p.complete)).to.deep.equal([...Array<string>(9).fill('false'), 'true']);
    // The delay stamps: non-decreasing, within the time the messages were sent.
    const stamps = pages.flatMap((p) => strings(p.stamps)).map((s) => Date.parse(s));
    for (let k = 1; k < stamps.length; k++) expect(stamps[k]).to.be.at.least(stamps[k - 1]!);
    expect(stamps[0]).to.be.within(fillStartedAt - 1_000, fillEndedAt + 1_000);
    expect(stamps[TOTAL - 1]).to.be.within(fillStartedAt - 1_000, fillEndedAt + 1_000);
    // Every result was claimed by the query that asked for it.
    expect(sli.takeAll('message'), `stray messages${sli.transcript()}`).to.deep.equal([]);
    await sli.logout();
  });

  it('slixmpp iterates the archive backwards from the newest message (RSM <before/>)', async function () {
    const sli = slixmpp('bob', 'tablet');
    await sli.ready();
    sli.command({ cmd: 'iterate', max: 50, reverse: true });
    const it = await sli.waitFor('iterated', 'iterating backwards', () => true, 60_000);
    expect(it.ok, `iteration failed: ${JSON.stringify(it.error)}${sli.transcript()}`).to.equal(true);
    expect(strings(it.ids)).to.deep.equal([...liveIds].reverse());
    expect(strings(it.bodies)).to.deep.equal(range(1, TOTAL).map(bodyOf).reverse());
    await sli.logout();
  });

  /** Runs a Gajim catch-up and returns its pages. */
  async function catchUp(cmd: Json): Promise<Json[]> {
    gajim.command({ cmd: 'catchup', ...cmd });
    const end = await gajim.waitFor('catchup', `the catch-up ${JSON.stringify(cmd)}`, () => true, 60_000);
    expect(end, `catch-up failed${gajim.transcript()}`).to.include({ ok: true });
    expect(end.stray, 'results outside the running query').to.deep.equal([]);
    return gajim.takeAll('page');
  }

  function checkPages(pages: Json[], sizes: number[], numbers: number[]): void {
    const items = pages.flatMap((p) => p.items as Json[]);
    expect(
      pages.map((p) => (p.items as Json[]).length),
      `page sizes${gajim.transcript()}`,
    ).to.deep.equal(sizes);
    expect(pages.map((p) => p.complete)).to.deep.equal(sizes.map((_, k) => k === sizes.length - 1));
    expect(items.map((i) => i.body)).to.deep.equal(numbers.map(bodyOf));
    // Gajim keys its history on these ids: they are the ones seen on live delivery.
    expect(items.map((i) => i.id)).to.deep.equal(numbers.map((n) => liveIds[n - 1]));
    for (const p of pages) {
      const list = p.items as Json[];
      expect([p.first, p.last]).to.deep.equal([list[0]?.id, list[list.length - 1]?.id]);
    }
    for (const i of items)
      expect(i).to.include({ from: aliceJid, to: 'bob@localhost', archive: 'bob@localhost' });
  }

  it('nbxmpp catches up like Gajim on a first start: from a point in time, 70 a page, until complete', async function () {
    const pages = await catchUp({ start: splitStart, max: 70 });
    checkPages(pages, [70, 70, 70, 40], range(HALF + 1, TOTAL));
    expect(Date.parse(String((pages[0]!.items as Json[])[0]!.stamp))).to.be.at.least(Date.parse(splitStart));
  });

  it('nbxmpp catches up like Gajim after the last archive id it knows, without duplicates or gaps', async function () {
    const pages = await catchUp({ after: liveIds[99], max: 70 });
    checkPages(pages, [70, 70, 70, 70, 70, 50], range(101, TOTAL));
    // Nothing after the newest message: one empty, complete page.
    const none = await catchUp({ after: liveIds[TOTAL - 1], max: 70 });
    expect(none.map((p) => [(p.items as Json[]).length, p.complete])).to.deep.equal([[0, true]]);
  });

  it('nbxmpp asking for more than the server’s page limit gets pages of 250 (the default max_page)', async function () {
    const pages = await catchUp({ max: 1000 });
    checkPages(pages, [HALF, HALF], range(1, TOTAL));
  });
});
