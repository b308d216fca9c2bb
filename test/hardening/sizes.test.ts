// Hardening, over real TCP/TLS: size and shape limits of the XML stream
// (docs/security.md, "The XML stream"): oversized stanzas in one write and one
// byte at a time, memory during a flood, deep nesting, many children, many
// attributes, huge attribute values and names, and namespace prefix tricks.
// Each attack ends with a check that a well-behaved client is still served.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { expect } from 'chai';
import { useServerAndPool } from '../helpers/fixtures.ts';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { ClientPool, type XmppClient } from '../helpers/xmpp-client.ts';

const USERS = { romeo: 'pw-romeo', juliet: 'pw-juliet', nurse: 'pw-nurse' };
const KiB = 1024;
const MiB = 1024 * KiB;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function ping(c: XmppClient): Promise<void> {
  const id = c.nextId('ping');
  c.send(`<iq type='get' id='${id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
  await c.expect(`<iq type='result' id='${id}' from='localhost'/>`);
}

let bystanders = 0;
async function stillServes(pool: ClientPool): Promise<void> {
  const c = await pool.login('nurse', 'pw-nurse', { resource: `bystander${++bystanders}` });
  await ping(c);
}

/** A forced full garbage collection (the flag is set at run time, not on the command line). */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  gc();
  gc();
}

/** Waits until the socket drains or closes; false once it is closed. */
function drained(c: XmppClient): Promise<boolean> {
  const s = c.socket;
  if (s.destroyed || s.writableEnded) return Promise.resolve(false);
  if (!s.writableNeedDrain) return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      s.off('drain', onDrain);
      s.off('close', onClose);
      resolve(ok);
    };
    const onDrain = () => done(true);
    const onClose = () => done(false);
    s.on('drain', onDrain);
    s.on('close', onClose);
  });
}

/**
 * Writes `total` bytes of `fill` after `head`, `chunk` bytes per write,
 * respecting backpressure; stops early when the connection closes or after
 * `maxMs`. Returns the bytes written.
 */
async function flood(c: XmppClient, head: string, total: number, chunk: number, maxMs = 10_000) {
  const deadline = Date.now() + maxMs;
  c.sendRaw(head);
  const block = Buffer.alloc(chunk, 'a');
  let sent = 0;
  for (let i = 0; sent < total && i < total / chunk + 1 && Date.now() < deadline; i++) {
    if (c.socket.destroyed) break;
    c.socket.write(block);
    sent += chunk;
    if (c.socket.writableNeedDrain && !(await drained(c))) break;
  }
  return sent;
}

/** The test client restarts its parser only inside its own helpers; SASL by hand needs it too. */
function restartClientParser(c: XmppClient): void {
  (c as unknown as { parser: { reset(): void } }).parser.reset();
}

/** One byte per write, with a yield to the event loop every `every` bytes. */
async function trickle(c: XmppClient, data: Buffer, every = 256): Promise<void> {
  c.socket.setNoDelay(true);
  for (let i = 0; i < data.length; i++) {
    if (c.socket.destroyed || c.ended) return;
    c.socket.write(data.subarray(i, i + 1));
    if (i % every === every - 1) await new Promise((resolve) => setImmediate(resolve));
  }
}

describe('hardening: size and shape limits', function () {
  this.timeout(30_000);
  const { server, pool } = useServerAndPool({ users: USERS });

  describe('oversized stanzas', () => {
    it('pre-auth: 20 KiB sent one byte per write, never closed, gets policy-violation', async () => {
      const c = await pool.connectSecure();
      const head = `<iq type='get' id='slow'><query xmlns='urn:example:big'>`;
      const data = Buffer.from(head + 'x'.repeat(20 * KiB - head.length));
      await trickle(c, data);
      await c.expectStreamError('policy-violation', 5000);
      await stillServes(pool);
    });

    it('pre-auth: an oversized stream header sent one byte per write gets policy-violation', async () => {
      const c = await pool.connect();
      const head = `<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0' junk='`;
      await trickle(c, Buffer.from(head + 'j'.repeat(17 * KiB)));
      await c.expectHeader();
      await c.expectStreamError('policy-violation', 5000);
      await stillServes(pool);
    });

    it('bound: a 300 KiB message in one write gets policy-violation (default limit 256 KiB)', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(`<message to='juliet@localhost'><body>${'b'.repeat(300 * KiB)}</body></message>`);
      await c.expectStreamError('policy-violation');
      await stillServes(pool);
    });

    it('bound: a message just under 256 KiB is delivered', async () => {
      const romeo = await pool.login('romeo', 'pw-romeo', { resource: 'fits' });
      const head = `<message to='romeo@localhost/fits' type='chat' id='fits'><body>`;
      const tail = `</body></message>`;
      const body = 'f'.repeat(256 * KiB - head.length - tail.length - 64);
      romeo.sendRaw(head + body + tail);
      const got = await romeo.expect(`<message id='fits'/>`);
      expect(got.getChildText('body')).to.equal(body);
    });

    it('bound: a 10 MB flood in one unclosed stanza is cut at the limit, without the server buffering it', async () => {
      const witness = await pool.login('juliet', 'pw-juliet', { resource: 'witness' });
      const c = await pool.login('romeo', 'pw-romeo', { resource: 'flood' });
      collectGarbage();
      const before = process.memoryUsage();
      const sent = await flood(c, `<message to='juliet@localhost/witness'><body>`, 10 * MiB, 64 * KiB);
      await c.expectStreamError('policy-violation', 5000);
      collectGarbage();
      const after = process.memoryUsage();
      const heapGrowth = after.heapUsed - before.heapUsed;
      const rssGrowth = after.rss - before.rss;
      expect(sent, 'the flood got past the limit').to.be.above(256 * KiB);
      expect(heapGrowth, `heapUsed grew by ${heapGrowth} bytes after ${sent} bytes`).to.be.below(4 * MiB);
      expect(rssGrowth, `rss grew by ${rssGrowth} bytes after ${sent} bytes`).to.be.below(24 * MiB);
      await witness.expectNothing(100);
      await ping(witness);
      await stillServes(pool);
    });
  });

  describe('after authentication, one byte at a time (limits.stanza_size: 4096)', () => {
    let small: TestServer;
    const smallPool = new ClientPool(() => ({ port: small.port }));
    before(async () => {
      small = await startTestServer({ yaml: 'limits: { stanza_size: 4096, stanza_size_preauth: 2048 }' });
      await small.addUser('romeo', 'pw-romeo');
      await small.addUser('nurse', 'pw-nurse');
    });
    afterEach(() => smallPool.destroyAll());
    after(() => small.stop());

    it('gets policy-violation for 6 KiB sent one byte per write', async () => {
      const c = await smallPool.login('romeo', 'pw-romeo');
      const head = `<message to='romeo@localhost'><body>`;
      await trickle(c, Buffer.from(head + 'y'.repeat(6 * KiB)));
      await c.expectStreamError('policy-violation', 5000);
      await stillServes(smallPool);
    });
  });

  describe('nesting, children and attributes', () => {
    it('bound: 10,000 nested elements get policy-violation (max_depth 64)', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(`<message to='juliet@localhost'>${'<a>'.repeat(10_000)}${'</a>'.repeat(10_000)}</message>`);
      await c.expectStreamError('policy-violation');
      await stillServes(pool);
    });

    it('pre-auth: 10,000 nested elements get policy-violation', async () => {
      const c = await pool.connectSecure();
      c.sendRaw(`<iq type='get' id='deep'>${'<a>'.repeat(10_000)}`);
      await c.expectStreamError('policy-violation');
      await stillServes(pool);
    });

    it('bound: 64 levels (the stanza counts as one) are delivered, 65 are refused', async () => {
      const c = await pool.login('romeo', 'pw-romeo', { resource: 'depth' });
      const nested = (levels: number) =>
        `<message to='romeo@localhost/depth' type='chat' id='d${levels}'><body>x</body>${'<a xmlns="urn:x">'.repeat(levels - 1)}${'</a>'.repeat(levels - 1)}</message>`;
      c.sendRaw(nested(64));
      await c.expect(`<message id='d64'/>`);
      c.sendRaw(nested(65));
      await c.expectStreamError('policy-violation');
      await stillServes(pool);
    });

    it('bound: 100,000 children (400 KB) exceed the default 256 KiB limit: policy-violation', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(`<message to='juliet@localhost'>${'<a/>'.repeat(100_000)}</message>`);
      await c.expectStreamError('policy-violation');
      await stillServes(pool);
    });

    it('bound: 10,000 attributes get policy-violation (max_attributes 64)', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      const attrs = Array.from({ length: 10_000 }, (_, i) => ` a${i}='x'`).join('');
      c.sendRaw(`<message to='juliet@localhost'${attrs}><body>x</body></message>`);
      await c.expectStreamError('policy-violation');
      await stillServes(pool);
    });

    it('bound: 64 attributes on a child are accepted, 65 are refused', async () => {
      const c = await pool.login('romeo', 'pw-romeo', { resource: 'attrs' });
      const child = (n: number) =>
        `<x xmlns='urn:example:attrs'${Array.from({ length: n - 1 }, (_, i) => ` a${i}='v'`).join('')}/>`;
      c.sendRaw(
        `<message to='romeo@localhost/attrs' type='chat' id='a64'><body>x</body>${child(64)}</message>`,
      );
      await c.expect(`<message id='a64'/>`);
      c.sendRaw(
        `<message to='romeo@localhost/attrs' type='chat' id='a65'><body>x</body>${child(65)}</message>`,
      );
      await c.expectStreamError('policy-violation');
      await stillServes(pool);
    });

    it('pre-auth: 10,000 attributes on the stream header get policy-violation', async () => {
      const c = await pool.connect();
      const attrs = Array.from({ length: 10_000 }, (_, i) => ` a${i}='x'`).join('');
      c.sendRaw(
        `<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'${attrs}>`,
      );
      await c.expectHeader();
      await c.expectStreamError('policy-violation');
      await stillServes(pool);
    });

    it('bound: a 1 MiB attribute value gets policy-violation', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(`<message to='juliet@localhost' id='${'i'.repeat(MiB)}'><body>x</body></message>`);
      await c.expectStreamError('policy-violation');
      await stillServes(pool);
    });

    it('pre-auth: a 20 KiB attribute value gets policy-violation', async () => {
      const c = await pool.connectSecure();
      c.sendRaw(`<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='${'M'.repeat(20 * KiB)}'/>`);
      await c.expectStreamError('policy-violation');
      await stillServes(pool);
    });

    it('bound: a 2 KiB element name gets policy-violation', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(`<message to='juliet@localhost'><${'n'.repeat(2 * KiB)} xmlns='urn:x'/></message>`);
      await c.expectStreamError('policy-violation');
      await stillServes(pool);
    });
  });

  describe('100,000 children within a raised limit (limits.stanza_size: 1048576)', () => {
    let big: TestServer;
    const bigPool = new ClientPool(() => ({ port: big.port }));
    before(async () => {
      big = await startTestServer({ yaml: 'limits: { stanza_size: 1048576 }' });
      await big.addUser('romeo', 'pw-romeo');
      await big.addUser('juliet', 'pw-juliet');
      await big.addUser('nurse', 'pw-nurse');
    });
    afterEach(() => bigPool.destroyAll());
    after(() => big.stop());

    it('delivers a message with 100,000 children intact and keeps answering others', async () => {
      const romeo = await bigPool.login('romeo', 'pw-romeo', { resource: 'wide' });
      const juliet = await bigPool.login('juliet', 'pw-juliet', { resource: 'wide' });
      const started = Date.now();
      romeo.sendRaw(
        `<message to='juliet@localhost/wide' type='chat' id='wide'><body>x</body><w xmlns='urn:example:wide'>${'<a/>'.repeat(100_000)}</w></message>`,
      );
      await ping(romeo);
      const got = await juliet.expect(`<message from='romeo@localhost/wide' id='wide'/>`, 10_000);
      expect(got.getChild('w')?.children.length).to.equal(100_000);
      expect(Date.now() - started, 'handled in reasonable time').to.be.below(10_000);
      await stillServes(bigPool);
    });
  });

  describe('namespace prefix tricks', () => {
    it('bound: an unbound element prefix gets not-well-formed', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(`<message to='juliet@localhost'><evil:body>x</evil:body></message>`);
      await c.expectStreamError('not-well-formed');
      await stillServes(pool);
    });

    it('bound: an unbound attribute prefix gets not-well-formed', async () => {
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(`<message to='juliet@localhost' evil:from='juliet@localhost'><body>x</body></message>`);
      await c.expectStreamError('not-well-formed');
      await stillServes(pool);
    });

    it('bound: a stanza in a prefix bound to jabber:client is not routed (unsupported-stanza-type)', async () => {
      const juliet = await pool.login('juliet', 'pw-juliet', { resource: 'pfx' });
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(
        `<c:message xmlns:c='jabber:client' to='juliet@localhost/pfx' from='juliet@localhost/pfx' type='chat'><c:body>spoof</c:body></c:message>`,
      );
      await c.expectStreamError('unsupported-stanza-type');
      await juliet.expectNothing(200);
      await stillServes(pool);
    });

    it('bound: a jabber:server stanza from a client is refused (unsupported-stanza-type), not routed', async () => {
      const juliet = await pool.login('juliet', 'pw-juliet', { resource: 'srv' });
      const c = await pool.login('romeo', 'pw-romeo');
      c.sendRaw(
        `<message xmlns='jabber:server' from='juliet@localhost/srv' to='juliet@localhost/srv' type='chat'><body>spoof</body></message>`,
      );
      await c.expectStreamError('unsupported-stanza-type');
      await juliet.expectNothing(200);
      await stillServes(pool);
    });

    it('bound: redeclaring the stream prefix inside a stanza changes nothing for the stream', async () => {
      const c = await pool.login('romeo', 'pw-romeo', { resource: 'sp' });
      c.sendRaw(
        `<message xmlns:stream='urn:example:not-streams' to='romeo@localhost/sp' type='chat' id='sp'><body>x</body><stream:error/></message>`,
      );
      await c.expect(`<message id='sp'/>`);
      await ping(c);
    });

    it('pre-auth: an unbound prefix on the stream header gets a stream error after a header', async () => {
      const c = await pool.connect();
      c.sendRaw(`<?xml version='1.0'?><evil:stream xmlns='jabber:client' to='localhost' version='1.0'>`);
      await c.expectHeader();
      await c.expectStreamError('invalid-namespace');
      await stillServes(pool);
    });

    for (const [label, opts, condition] of [
      ['jabber:server as default namespace', { xmlns: 'jabber:server' }, 'invalid-namespace'],
      ['a different stream namespace', { streamNs: 'urn:example:streams' }, 'invalid-namespace'],
      ['a host that is not served', { to: 'verona.example' }, 'host-unknown'],
    ] as const) {
      it(`a restart after SASL with ${label} gets ${condition}`, async () => {
        const c = await pool.connectSecure();
        c.sendRaw(
          `<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>${Buffer.from('\0romeo\0pw-romeo').toString('base64')}</auth>`,
        );
        await c.expect(`<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>`);
        restartClientParser(c);
        c.sendHeader(opts);
        await c.expectHeader();
        await c.expectStreamError(condition);
        await stillServes(pool);
      });
    }
  });

  describe('afterwards', () => {
    it('leaves no stream open once the attackers are gone', async () => {
      await pool.destroyAll();
      const deadline = Date.now() + 3000;
      while (server.server.streams.size > 0 && Date.now() < deadline) await sleep(50);
      expect(server.server.streams.size).to.equal(0);
    });
  });
});
