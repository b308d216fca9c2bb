// Stream management under a flaky network: two clients exchange numbered
// messages while one of them loses its TCP connection at random moments and
// resumes (XEP-0198). With correct h handling on both sides every message
// must arrive exactly once and in order, whatever the moment of the cut.
import { expect } from 'chai';
import type { Element } from 'ltx';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { XmppClient, type Incoming } from '../helpers/xmpp-client.ts';

const SM = 'urn:xmpp:sm:3';
const PASSWORD = 'chaos-test-pw';
const PER_SENDER = 1000;
const CUTS = 20;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function waitUntil(
  what: string,
  cond: () => boolean,
  timeoutMs: number,
  check?: () => void,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    check?.();
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

function isStanza(e: Element): boolean {
  return e.name === 'message' || e.name === 'presence' || e.name === 'iq';
}

/**
 * A client that does XEP-0198 right: counts the stanzas it handles, answers
 * every <r/>, acks on its own every few stanzas, keeps what it sent until the
 * server acknowledged it, and resends the rest after a resumption.
 */
class Peer {
  client: XmppClient | null = null;
  smId = '';
  /** Stanzas handled from the server on this stream management session (our h). */
  handled = 0;
  /** Stanzas sent to the server and not yet acknowledged, oldest first. */
  outQueue: string[] = [];
  /** The server's h for outQueue[0]. */
  outBase = 0;
  /** Numbers received, per sender name, in arrival order. */
  readonly received = new Map<string, number[]>();
  /** While frozen, stanzas are not handled (not counted, not recorded). */
  frozen = false;
  errors: string[] = [];
  resumptions = 0;
  private gen = 0;
  private sinceRequest = 0;

  constructor(
    readonly user: string,
    readonly server: TestServer,
  ) {}

  get jid(): string {
    return `${this.user}@localhost`;
  }

  count(sender: string): number {
    return this.received.get(sender)?.length ?? 0;
  }

  /** Logs in, becomes available and enables stream management with resumption. */
  async start(resource: string): Promise<void> {
    const c = await XmppClient.connect({ port: this.server.port, name: `${this.user}/${resource}` });
    await c.login(this.user, PASSWORD, { resource });
    // Enabled before presence, so that everything the server sends once the
    // session is available (stored messages too) is counted.
    c.send(`<enable xmlns='${SM}' resume='true'/>`);
    const enabled = await c.expect(`<enabled xmlns='${SM}' id='{any}' resume='true'/>`);
    this.smId = enabled.attrs.id as string;
    this.handled = 0;
    this.outBase = 0;
    this.frozen = false;
    this.writable = true;
    this.attach(c);
    // Whatever the server never acknowledged on the previous session goes out again.
    const unacked = this.outQueue.splice(0);
    this.send('<presence/>');
    for (const xml of unacked) this.send(xml);
  }

  /** False while stanzas are only queued (see settle()). */
  private writable = true;

  private attach(c: XmppClient): void {
    this.client = c;
    const gen = ++this.gen;
    void this.readLoop(c, gen);
  }

  /** Cuts the TCP connection without a closing tag (the network went away). */
  cut(): void {
    this.gen++;
    this.client?.destroy();
    this.client = null;
  }

  /** Resumes on a new connection; returns the server's answer (<resumed/> or <failed/>). */
  async resume(): Promise<Element> {
    const c = await XmppClient.connect({ port: this.server.port, name: `${this.user} (resuming)` });
    await c.open();
    await c.startTls();
    await c.authenticate(this.user, PASSWORD);
    c.send(`<resume xmlns='${SM}' previd='${this.smId}' h='${this.handled}'/>`);
    const answer = await c.next(5000);
    if (answer.kind !== 'element') throw new Error(`${this.user}: no answer to <resume/>: ${answer.kind}`);
    const e = answer.element;
    if (e.name === 'resumed') {
      this.resumptions++;
      this.serverAck(Number(e.attrs.h));
      this.attach(c);
      for (const xml of this.outQueue) c.send(xml);
    } else {
      this.pendingFailed = c;
    }
    return e;
  }

  /** The connection whose resumption failed, ready to bind a new session. */
  pendingFailed: XmppClient | null = null;

  /** Queues a stanza for the server; written now if connected, else on resumption. */
  send(xml: string): void {
    this.outQueue.push(xml);
    const c = this.client;
    if (!c || !this.writable) return;
    c.send(xml);
    if (++this.sinceRequest >= 10) {
      this.sinceRequest = 0;
      c.send(`<r xmlns='${SM}'/>`);
    }
  }

  /**
   * Acknowledges everything handled and waits until the server's <a/> shows
   * it has seen that ack (and handled all we sent); from then on nothing is
   * handled, so what the server sends next stays unacknowledged.
   */
  async settle(): Promise<void> {
    const c = this.client!;
    this.frozen = true;
    this.writable = false;
    // Everything written so far; the answer to this <r/> covers all of it.
    const written = this.outBase + this.outQueue.length;
    c.send(`<a xmlns='${SM}' h='${this.handled}'/><r xmlns='${SM}'/>`);
    await waitUntil(`${this.user}: the server's ack of ${written}`, () => this.outBase >= written, 5000);
  }

  private serverAck(h: number): void {
    const count = h - this.outBase;
    if (count < 0 || count > this.outQueue.length) {
      this.errors.push(
        `${this.user}: the server acked h=${h}, base ${this.outBase}, ${this.outQueue.length} queued`,
      );
      return;
    }
    this.outQueue.splice(0, count);
    this.outBase = h;
  }

  private async readLoop(c: XmppClient, gen: number): Promise<void> {
    for (;;) {
      let ev: Incoming;
      try {
        ev = await c.next(30_000);
      } catch (err) {
        if (gen === this.gen) this.errors.push(String(err));
        return;
      }
      if (gen !== this.gen) return;
      if (ev.kind !== 'element') {
        this.errors.push(
          `${this.user}: the server ended the connection (${ev.kind})\n${c.recentTranscript()}`,
        );
        return;
      }
      this.handle(c, ev.element);
    }
  }

  private handle(c: XmppClient, e: Element): void {
    if (e.attrs.xmlns === SM) {
      if (e.name === 'r') c.send(`<a xmlns='${SM}' h='${this.handled}'/>`);
      else if (e.name === 'a') this.serverAck(Number(e.attrs.h));
      else this.errors.push(`${this.user}: unexpected ${e.toString()}`);
      return;
    }
    if (!isStanza(e)) {
      this.errors.push(`${this.user}: unexpected ${e.toString()}`);
      return;
    }
    if (this.frozen) return;
    this.handled++;
    if (e.name === 'message') {
      if (e.attrs.type === 'error') this.errors.push(`${this.user}: error bounce ${e.toString()}`);
      const m = /^([a-z]+)-(\d+)$/.exec(e.getChildText('body') ?? '');
      if (m) {
        const list = this.received.get(m[1]!) ?? [];
        list.push(Number(m[2]));
        this.received.set(m[1]!, list);
      }
    }
    if (this.handled % 7 === 0) c.send(`<a xmlns='${SM}' h='${this.handled}'/>`);
  }
}

/** Fails with the first problem in a sender's sequence: a duplicate, a gap, or disorder. */
function checkSequence(label: string, got: number[]): void {
  const seen = new Map<number, number>();
  for (const n of got) seen.set(n, (seen.get(n) ?? 0) + 1);
  const duplicates = [...seen].filter(([, k]) => k > 1).map(([n]) => n);
  const missing: number[] = [];
  for (let n = 1; n <= PER_SENDER; n++) if (!seen.has(n)) missing.push(n);
  const firstDisorder = got.findIndex((n, i) => n !== i + 1);
  expect(duplicates, `${label}: duplicates`).to.deep.equal([]);
  expect(missing, `${label}: lost messages`).to.deep.equal([]);
  expect(
    firstDisorder,
    `${label}: out of order at index ${firstDisorder}: ${got.slice(firstDisorder - 2, firstDisorder + 3).join(',')}`,
  ).to.equal(-1);
  expect(got).to.have.length(PER_SENDER);
}

describe('protocol: stream management chaos (XEP-0198)', function () {
  this.timeout(60_000);
  let server: TestServer;
  const peers: Peer[] = [];

  before(async () => {
    server = await startTestServer({
      yaml: [
        'modules: [disco, ping, roster, presence, offline, smacks]',
        'module_options:',
        '  smacks: { resume_timeout: 2, max_unacked: 5000, request_ack_after: 5, request_ack_delay_ms: 200 }',
        '  offline: { max_messages_per_user: 5000 }',
      ].join('\n'),
    });
  });
  after(() => server.stop());
  afterEach(async () => {
    for (const p of peers.splice(0)) {
      p.cut();
      p.pendingFailed?.destroy();
    }
    await sleep(50);
  });

  let seq = 0;
  async function pair(): Promise<[Peer, Peer]> {
    seq++;
    await server.addUser(`alice${seq}`, PASSWORD);
    await server.addUser(`bob${seq}`, PASSWORD);
    const a = new Peer(`alice${seq}`, server);
    const b = new Peer(`bob${seq}`, server);
    peers.push(a, b);
    await a.start('desk');
    await b.start('phone');
    return [a, b];
  }

  /** Sends `alice-1..N` / `bob-1..N` to the other side's bare JID, a few at a time. */
  async function pump(from: Peer, to: Peer, label: string, gate: () => Promise<void>): Promise<void> {
    for (let n = 1; n <= PER_SENDER; n++) {
      await gate();
      from.send(
        `<message to='${to.jid}' type='chat' id='${label}-${n}'><body>${label}-${n}</body></message>`,
      );
      if (n % 10 === 0) await sleep(1);
    }
  }

  function failOnErrors(...ps: Peer[]): () => void {
    return () => {
      for (const p of ps) if (p.errors.length) throw new Error(p.errors.join('\n'));
    };
  }

  it(`delivers ${2 * PER_SENDER} messages exactly once and in order while one side is cut ${CUTS} times and resumes`, async () => {
    const [a, b] = await pair();
    const check = failOnErrors(a, b);
    const open = () => Promise.resolve();
    const pumps = Promise.all([pump(a, b, 'alice', open), pump(b, a, 'bob', open)]);
    // Cuts at random points of bob's progress, at random moments in between.
    const points = Array.from(
      { length: CUTS },
      () => Math.floor(Math.random() * (PER_SENDER - 50)) + 10,
    ).sort((x, y) => x - y);
    for (const point of points) {
      await waitUntil(
        `bob to reach ${point}`,
        () => b.count('alice') >= point || a.count('bob') >= point,
        20_000,
        check,
      );
      await sleep(Math.random() * 15);
      b.cut();
      await sleep(Math.random() * 30);
      const answer = await b.resume();
      expect(answer.name, `resumption refused: ${answer.toString()}`).to.equal('resumed');
    }
    await pumps;
    await waitUntil(
      'all messages',
      () => a.count('bob') >= PER_SENDER && b.count('alice') >= PER_SENDER,
      30_000,
      check,
    );
    await sleep(500); // late duplicates would show up here
    check();
    expect(b.resumptions).to.equal(CUTS);
    checkSequence('alice -> bob', b.received.get('alice') ?? []);
    checkSequence('bob -> alice', a.received.get('bob') ?? []);
    expect([...b.received.keys(), ...a.received.keys()].sort()).to.deep.equal(['alice', 'bob']);
  });

  it('loses nothing and duplicates nothing when a resumption is refused: offline storage takes over', async () => {
    const [a, b] = await pair();
    const check = failOnErrors(a, b);
    let paused: Promise<void> | null = null;
    let release = () => undefined as void;
    const gate = () => paused ?? Promise.resolve();
    const pumps = Promise.all([pump(a, b, 'alice', gate), pump(b, a, 'bob', () => Promise.resolve())]);

    // A few resumed cuts first.
    for (const point of [50, 120, 200]) {
      await waitUntil(`bob to reach ${point}`, () => b.count('alice') >= point, 20_000, check);
      b.cut();
      expect((await b.resume()).name).to.equal('resumed');
    }
    await waitUntil('bob to reach 300', () => b.count('alice') >= 300, 20_000, check);
    // Bob acks what he handled, then goes away; alice keeps writing.
    await b.settle();
    b.cut();
    await sleep(2600); // past resume_timeout: the session expires, its queue goes offline
    const answer = await b.resume();
    expect(answer.name, `resumed after the window: ${answer.toString()}`).to.equal('failed');
    expect(answer.getChild('item-not-found')).to.not.equal(undefined);
    b.pendingFailed!.destroy();
    b.pendingFailed = null;

    // Offline delivery may be overtaken by live messages (see modules/offline.ts),
    // so alice waits while bob logs in afresh and catches up from storage.
    paused = new Promise<void>((resolve) => {
      release = resolve;
    });
    await sleep(50);
    const sentByAlice = a.outQueue.length + a.outBase;
    await b.start('phone');
    await waitUntil(
      `bob to catch up to ${sentByAlice}`,
      () => b.count('alice') >= Math.min(sentByAlice, PER_SENDER),
      20_000,
      check,
    );
    paused = null;
    release();

    await pumps;
    await waitUntil(
      'all messages',
      () => a.count('bob') >= PER_SENDER && b.count('alice') >= PER_SENDER,
      30_000,
      check,
    );
    await sleep(500);
    check();
    checkSequence('alice -> bob', b.received.get('alice') ?? []);
    checkSequence('bob -> alice', a.received.get('bob') ?? []);
  });
});
