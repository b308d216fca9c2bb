// Hardening, over real TCP/TLS: connections that hold resources without
// doing anything useful — idle before the handshake, slow-loris headers, a
// stalled TLS handshake, many aborted connections — and a client that never
// reads what it is sent (the 4 MiB outbound cap in src/stream/c2s.ts).
// Connection rate limits and traffic shaping are in test/protocol/limits.test.ts.
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { expect } from 'chai';
import { useServerAndPool } from '../helpers/fixtures.ts';
import type { TestServer } from '../helpers/server.ts';
import type { ClientPool, XmppClient } from '../helpers/xmpp-client.ts';

const USERS = { romeo: 'pw-romeo', juliet: 'pw-juliet', nurse: 'pw-nurse' };
const KiB = 1024;
const MiB = 1024 * KiB;
const HEADER = `<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>`;

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

function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  gc();
  gc();
}

async function streamsDrainTo(server: TestServer, count: number, maxMs = 5000): Promise<number> {
  const deadline = Date.now() + maxMs;
  while (server.server.streams.size > count && Date.now() < deadline) await sleep(25);
  return server.server.streams.size;
}

/** A raw TCP connection that collects what it receives until the server closes it. */
function rawConnection(
  port: number,
): Promise<{ socket: Socket; received: () => string; closed: Promise<number> }> {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host: '127.0.0.1', port });
    let data = '';
    const started = Date.now();
    const closed = new Promise<number>((done) => socket.on('close', () => done(Date.now() - started)));
    socket.on('data', (d: Buffer) => (data += d.toString('latin1')));
    socket.on('error', () => undefined);
    socket.once('connect', () => resolve({ socket, received: () => data, closed }));
    socket.once('error', reject);
  });
}

function timeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([
    p,
    sleep(ms).then(() => {
      throw new Error(`${what}: nothing within ${ms} ms`);
    }),
  ]);
}

describe('hardening: idle, slow and aborted connections (limits.handshake_timeout: 1)', function () {
  this.timeout(30_000);
  const { server, pool } = useServerAndPool({ users: USERS, yaml: 'limits: { handshake_timeout: 1 }' });

  it('ends a connection that never sends a byte with connection-timeout, after its own header', async () => {
    const c = await pool.connect();
    const started = Date.now();
    await c.expectHeader(3000);
    await c.expectStreamError('connection-timeout', 3000);
    expect(Date.now() - started).to.be.within(700, 2500);
    await stillServes(pool);
  });

  it('ends a slow-loris client trickling its header one byte per 100 ms with connection-timeout', async () => {
    const c = await pool.connect();
    c.socket.setNoDelay(true);
    const started = Date.now();
    // At most 30 bytes (3 s); the header never completes within the timeout.
    for (let i = 0; i < 30 && !c.ended && Date.now() - started < 3000; i++) {
      c.socket.write(HEADER[i]!);
      await sleep(100);
      if (c.ended) break;
    }
    await c.expectHeader(3000);
    await c.expectStreamError('connection-timeout', 3000);
    expect(Date.now() - started).to.be.within(700, 3500);
    await stillServes(pool);
  });

  it('ends a slow-loris client trickling a pre-auth stanza after a complete header', async () => {
    const c = await pool.connectSecure();
    c.socket.setNoDelay(true);
    const stanza = `<iq type='get' id='loris'><query xmlns='urn:example:loris'>${'z'.repeat(100)}`;
    const started = Date.now();
    for (let i = 0; i < 30 && !c.ended && Date.now() - started < 3000; i++) {
      c.socket.write(stanza[i]!);
      await sleep(100);
    }
    await c.expectStreamError('connection-timeout', 3000);
    await stillServes(pool);
  });

  it('drops a connection that stalls the TLS handshake after <proceed/>', async () => {
    const raw = await rawConnection(server.port);
    raw.socket.write(HEADER);
    await sleep(100);
    raw.socket.write(`<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>`);
    const elapsed = await timeout(raw.closed, 6000, 'connection close');
    expect(raw.received()).to.contain('<proceed');
    // handshake_timeout is 1 s here; nothing can be sent inside a TLS
    // handshake, so the socket is dropped then, without a closing grace period.
    expect(elapsed).to.be.below(2900);
    await stillServes(pool);
  });

  it('leaves no stream behind after 500 connect/abort cycles, with memory flat', async () => {
    collectGarbage();
    const before = process.memoryUsage();
    const baseline = server.server.streams.size;
    const started = Date.now();
    let opened = 0;
    // Ten rounds of 50 concurrent connections, each aborted at a different stage.
    for (let round = 0; round < 10 && Date.now() - started < 15_000; round++) {
      await Promise.all(
        Array.from({ length: 50 }, async (_, i) => {
          const kind = i % 5;
          if (kind === 4) {
            // Direct TLS, aborted right after the handshake starts.
            const s = tlsConnect({ host: '127.0.0.1', port: server.tlsPort, rejectUnauthorized: false });
            s.on('error', () => undefined);
            await sleep(5);
            s.destroy();
          } else {
            const raw = await rawConnection(server.port);
            if (kind >= 1) raw.socket.write(HEADER);
            if (kind >= 2) raw.socket.write(`<iq type='get' id='half'><query xmlns='urn:x'>`);
            if (kind === 3) await sleep(10);
            raw.socket.destroy();
          }
          opened++;
        }),
      );
    }
    expect(opened).to.equal(500);
    expect(await streamsDrainTo(server, baseline)).to.equal(baseline);
    collectGarbage();
    const after = process.memoryUsage();
    const growth = after.heapUsed - before.heapUsed;
    expect(growth, `heapUsed grew by ${growth} bytes`).to.be.below(8 * MiB);
    await stillServes(pool);
  });
});

describe('hardening: a client that never reads', function () {
  this.timeout(30_000);
  const { server, pool } = useServerAndPool({ users: USERS });

  it('is disconnected past the outbound cap; the sender and a third client are unaffected', async () => {
    const victim = await pool.login('juliet', 'pw-juliet', { resource: 'deaf' });
    const sender = await pool.login('romeo', 'pw-romeo', { resource: 'loud' });
    const third = await pool.login('nurse', 'pw-nurse', { resource: 'third' });
    const victimJid = victim.jid!;
    // The victim's client stops reading: the kernel buffers fill, then the server's.
    victim.socket.pause();

    const body = 'm'.repeat(16 * KiB);
    const started = Date.now();
    let sentBytes = 0;
    let gone = false;
    // ~10 MB is usually enough; kernel buffers on loopback may take more, so
    // keep going in 1 MB steps up to 40 MB or 15 s.
    for (let step = 0; step < 40 && !gone && Date.now() - started < 15_000; step++) {
      let batch = '';
      for (let i = 0; i < 64; i++) {
        batch += `<message to='${victimJid}' type='headline'><body>${body}</body></message>`;
      }
      sender.sendRaw(batch);
      sentBytes += batch.length;
      await ping(sender); // the sender's own stanzas keep being answered, in order
      if (sentBytes >= 10 * MiB) gone = (await server.server.directory.get(victimJid)) === undefined;
    }
    for (let i = 0; i < 40 && !gone; i++) {
      await sleep(50);
      gone = (await server.server.directory.get(victimJid)) === undefined;
    }
    expect(gone, `the reader was still connected after ${sentBytes} bytes`).to.equal(true);

    // What a user notices: the deaf resource is gone for everyone else.
    third.send(`<iq type='get' id='where' to='${victimJid}'><ping xmlns='urn:xmpp:ping'/></iq>`);
    await third.expect(`<iq type='error' id='where'><error><service-unavailable/></error></iq>`);
    // And its connection was cut: once it reads again, it finds the end.
    victim.socket.resume();
    let ended = false;
    for (let i = 0; i < 20_000 && !ended; i++) {
      const event = await victim.next(5000);
      ended = event.kind === 'eof';
    }
    expect(ended).to.equal(true);

    // The sender and the third client are unaffected.
    await ping(sender);
    await ping(third);
    third.send(`<message to='${sender.jid!}' type='chat' id='ok'><body>still here</body></message>`);
    await sender.expect(`<message from='${third.jid!}' id='ok'><body>still here</body></message>`);
    await stillServes(pool);
  });
});
