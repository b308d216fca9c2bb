// A minimal, fast XMPP client for the load generator.
//
// It does not build an XML tree. During negotiation it matches the few
// elements it waits for (features, proceed, SASL challenge/success, iq
// results by id, the presence echo) with string searches on the received
// text. Once the session is up it switches to a message scanner that only
// looks for `</message>`, takes the `<body>` text and hands it to a callback.
// Anything else the server sends after that (presence, iq) is skipped.
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { ScramClient, type ScramHash } from './scram.ts';

export interface ConnOptions {
  host: string;
  port: number;
  domain: string;
  /** Source address for the TCP connection (to spread over 127.0.0.x). */
  localAddress?: string;
  /** Per-step timeout in milliseconds. */
  timeoutMs?: number;
}

export interface LoginOptions {
  username: string;
  password: string;
  /** Negotiate STARTTLS before authenticating. */
  tls: boolean;
  resource?: string;
  /** Preferred SASL mechanism; the default takes SCRAM-SHA-1 when offered, else SCRAM-SHA-256. */
  mechanism?: 'SCRAM-SHA-1' | 'SCRAM-SHA-256';
  /** Send initial presence and wait for the server's echo of it. */
  presence?: boolean;
}

export type RegisterResult = 'created' | 'exists';

interface Waiter {
  find: (buf: string) => { end: number; value: string } | null;
  resolve: (value: string) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
  what: string;
}

export class XmppError extends Error {}

const STREAM_OPEN = (domain: string) =>
  `<?xml version='1.0'?><stream:stream to='${domain}' xmlns='jabber:client' ` +
  `xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>`;

/** Finds a whole element named `name` (with or without prefix) whose open tag passes `test`. */
function findElement(buf: string, names: readonly string[], test?: (openTag: string) => boolean) {
  let from = 0;
  for (;;) {
    let best = -1;
    let bestName = '';
    for (const name of names) {
      let i = buf.indexOf(`<${name}`, from);
      while (i >= 0) {
        const c = buf.charCodeAt(i + name.length + 1);
        // '>' '/' or whitespace after the name.
        if (c === 62 || c === 47 || c === 32 || c === 9 || c === 10 || c === 13) break;
        i = buf.indexOf(`<${name}`, i + 1);
      }
      if (i >= 0 && (best < 0 || i < best)) {
        best = i;
        bestName = name;
      }
    }
    if (best < 0) return null;
    const tagEnd = buf.indexOf('>', best);
    if (tagEnd < 0) return null;
    const openTag = buf.slice(best, tagEnd + 1);
    let end: number;
    if (buf.charCodeAt(tagEnd - 1) === 47) {
      end = tagEnd + 1;
    } else {
      const close = buf.indexOf(`</${bestName}>`, tagEnd);
      if (close < 0) return null;
      end = close + bestName.length + 3;
    }
    if (!test || test(openTag)) return { end, value: buf.slice(best, end) };
    from = end;
  }
}

function attr(openTag: string, name: string): string | undefined {
  const m = new RegExp(`\\s${name}=(['"])(.*?)\\1`).exec(openTag);
  return m ? m[2] : undefined;
}

function innerText(element: string, name: string): string | undefined {
  const open = element.indexOf(`<${name}`);
  if (open < 0) return undefined;
  const gt = element.indexOf('>', open);
  if (element.charCodeAt(gt - 1) === 47) return '';
  const close = element.indexOf(`</${name}>`, gt);
  return close < 0 ? undefined : element.slice(gt + 1, close);
}

/** `type/condition: text` of the <error/> in an error stanza, or its start. */
function errorSummary(stanza: string): string {
  const e = stanza.indexOf('<error');
  if (e < 0) return stanza.slice(0, 300);
  const gt = stanza.indexOf('>', e);
  const cond = /<([\w-]+)[^>]*xmlns=['"]urn:ietf:params:xml:ns:xmpp-stanzas['"]/.exec(stanza.slice(gt));
  const text = /<text[^>]*>([^<]*)<\/text>/.exec(stanza.slice(gt));
  const type = attr(stanza.slice(e, gt + 1), 'type') ?? '?';
  return `${type}/${cond && cond[1] !== 'text' ? cond[1] : '?'}${text ? `: ${text[1]}` : ''}`;
}

export function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;');
}

// Outgoing data is queued per connection and written once per event-loop turn,
// so that many stanzas produced while handling one read go out in one write.
const dirty = new Set<BenchConn>();
let flushScheduled = false;
function flushAll(): void {
  flushScheduled = false;
  for (const c of dirty) c.flush();
  dirty.clear();
}

export class BenchConn {
  socket: Socket | TLSSocket;
  private buf = '';
  private waiter: Waiter | null = null;
  private out = '';
  private onBody: ((body: string) => void) | null = null;
  private readonly timeoutMs: number;
  closed = false;
  /** Error messages (type='error') received in message mode. */
  errorMessages = 0;
  jid = '';
  private closeWaiters: (() => void)[] = [];

  private constructor(
    socket: Socket,
    private readonly opts: ConnOptions,
  ) {
    this.socket = socket;
    this.timeoutMs = opts.timeoutMs ?? 20000;
    this.attach(socket);
  }

  static connect(opts: ConnOptions): Promise<BenchConn> {
    return new Promise((resolve, reject) => {
      const socket = netConnect({ host: opts.host, port: opts.port, localAddress: opts.localAddress });
      socket.setNoDelay(true);
      const onError = (err: Error) => reject(err);
      socket.once('error', onError);
      socket.once('connect', () => {
        socket.off('error', onError);
        resolve(new BenchConn(socket, opts));
      });
    });
  }

  private attach(socket: Socket | TLSSocket): void {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => {
      this.closed = true;
      this.fail(new XmppError('connection closed'));
      for (const w of this.closeWaiters) w();
      this.closeWaiters = [];
    });
  }

  private fail(err: Error): void {
    const w = this.waiter;
    if (w) {
      this.waiter = null;
      clearTimeout(w.timer);
      w.reject(new XmppError(`${err.message} (while waiting for ${w.what})`));
    }
  }

  private onData(chunk: string): void {
    if (this.onBody) {
      this.scanMessages(chunk);
      return;
    }
    this.buf += chunk;
    this.check();
  }

  private check(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.buf.includes('<stream:error')) {
      this.waiter = null;
      clearTimeout(w.timer);
      w.reject(new XmppError(`stream error while waiting for ${w.what}: ${this.buf.slice(0, 400)}`));
      return;
    }
    const hit = w.find(this.buf);
    if (!hit) return;
    this.buf = this.buf.slice(hit.end);
    this.waiter = null;
    clearTimeout(w.timer);
    w.resolve(hit.value);
  }

  private wait(what: string, find: Waiter['find']): Promise<string> {
    return new Promise((resolve, reject) => {
      if (this.closed) return reject(new XmppError(`connection closed (before ${what})`));
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new XmppError(`timeout waiting for ${what}; received: ${this.buf.slice(0, 300)}`));
      }, this.timeoutMs);
      this.waiter = { find, resolve, reject, timer, what };
      this.check();
    });
  }

  private waitElement(names: readonly string[], what: string, test?: (openTag: string) => boolean) {
    return this.wait(what, (buf) => findElement(buf, names, test));
  }

  private waitIq(id: string): Promise<string> {
    return this.waitElement(['iq'], `iq ${id}`, (tag) => attr(tag, 'id') === id);
  }

  /** Queues raw XML; it is written at the end of the current event-loop turn. */
  send(xml: string): void {
    if (this.closed) return;
    this.out += xml;
    dirty.add(this);
    if (!flushScheduled) {
      flushScheduled = true;
      setImmediate(flushAll);
    }
  }

  flush(): void {
    if (this.out && !this.closed) this.socket.write(this.out);
    this.out = '';
  }

  /** Bytes queued in the socket (for back-pressure decisions). */
  get pendingBytes(): number {
    return this.socket.writableLength + this.out.length;
  }

  private async openStream(): Promise<string> {
    this.send(STREAM_OPEN(this.opts.domain));
    return this.waitElement(['stream:features', 'features'], 'stream features');
  }

  private async startTls(): Promise<string> {
    this.send(`<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>`);
    const answer = await this.waitElement(['proceed', 'failure'], 'STARTTLS proceed');
    if (!answer.startsWith('<proceed')) throw new XmppError(`STARTTLS refused: ${answer}`);
    const plain = this.socket as Socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    plain.removeAllListeners('error');
    this.buf = '';
    const secure = await new Promise<TLSSocket>((resolve, reject) => {
      const s = tlsConnect({ socket: plain, servername: this.opts.domain, rejectUnauthorized: false });
      s.once('secureConnect', () => resolve(s));
      s.once('error', reject);
    });
    this.socket = secure;
    this.attach(secure);
    return this.openStream();
  }

  /** Opens the stream and, if asked, upgrades it with STARTTLS. Returns the features. */
  async negotiate(tls: boolean): Promise<string> {
    const features = await this.openStream();
    if (!tls) return features;
    if (!features.includes('<starttls')) throw new XmppError('server does not offer STARTTLS');
    return this.startTls();
  }

  /** XEP-0077 registration on a negotiated, not yet authenticated stream. */
  async register(username: string, password: string): Promise<RegisterResult> {
    const id = 'reg1';
    this.send(
      `<iq type='set' id='${id}'><query xmlns='jabber:iq:register'><username>${escapeXml(username)}</username>` +
        `<password>${escapeXml(password)}</password></query></iq>`,
    );
    const iq = await this.waitIq(id);
    const type = attr(iq.slice(0, iq.indexOf('>') + 1), 'type');
    if (type === 'result') return 'created';
    if (iq.includes('<conflict')) return 'exists';
    throw new XmppError(`registration of ${username} failed: ${iq}`);
  }

  /** SASL SCRAM, stream restart, resource binding and (optionally) initial presence. */
  async authenticate(features: string, o: LoginOptions): Promise<void> {
    const offered = new Set<string>();
    for (const m of features.matchAll(/<mechanism>([^<]+)<\/mechanism>/g)) offered.add(m[1]!.trim());
    const mech =
      o.mechanism && offered.has(o.mechanism)
        ? o.mechanism
        : offered.has('SCRAM-SHA-1')
          ? 'SCRAM-SHA-1'
          : offered.has('SCRAM-SHA-256')
            ? 'SCRAM-SHA-256'
            : null;
    if (!mech) throw new XmppError(`no SCRAM mechanism offered (${[...offered].join(', ') || 'none'})`);
    const hash: ScramHash = mech === 'SCRAM-SHA-1' ? 'sha1' : 'sha256';
    const scram = new ScramClient(hash, o.username, o.password);
    this.send(`<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='${mech}'>${scram.first()}</auth>`);
    const saslNames = ['challenge', 'success', 'failure'] as const;
    const challenge = await this.waitElement(saslNames, 'SASL challenge');
    if (!challenge.startsWith('<challenge'))
      throw new XmppError(`SASL failed for ${o.username}: ${challenge}`);
    this.send(
      `<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>${await scram.final(innerText(challenge, 'challenge') ?? '')}</response>`,
    );
    let answer = await this.waitElement(saslNames, 'SASL success');
    if (answer.startsWith('<challenge')) {
      // Some servers send the verifier in a final challenge.
      if (!scram.verify(innerText(answer, 'challenge') ?? ''))
        throw new XmppError('bad SCRAM server signature');
      this.send(`<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>`);
      answer = await this.waitElement(saslNames, 'SASL success');
    } else if (answer.startsWith('<success')) {
      const v = innerText(answer, 'success');
      if (v && !scram.verify(v)) throw new XmppError('bad SCRAM server signature');
    }
    if (!answer.startsWith('<success')) throw new XmppError(`SASL failed for ${o.username}: ${answer}`);
    const features2 = await this.openStream();
    if (!features2.includes('<bind')) throw new XmppError(`no resource binding offered: ${features2}`);
    this.send(
      `<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>${escapeXml(o.resource ?? 'bench')}</resource></bind></iq>`,
    );
    const bound = await this.waitIq('bind1');
    this.jid = innerText(bound, 'jid') ?? '';
    if (!this.jid) throw new XmppError(`bind failed: ${bound}`);
    // RFC 3921 session establishment, only where the server still insists on it.
    if (features2.includes('urn:ietf:params:xml:ns:xmpp-session') && !features2.includes('<optional')) {
      this.send(`<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>`);
      await this.waitIq('sess1');
    }
    if (o.presence !== false) {
      this.send('<presence/>');
      await this.waitElement(['presence'], 'presence echo');
    }
  }

  /**
   * Sends an IQ (whose id attribute must be `id`) and waits for the answer:
   * resolves with the `<iq type='result'>`, rejects on `type='error'`.
   * Only before receiveMessages().
   */
  async iq(id: string, xml: string): Promise<string> {
    this.send(xml);
    const answer = await this.waitIq(id);
    const type = attr(answer.slice(0, answer.indexOf('>') + 1), 'type');
    if (type !== 'result') throw new XmppError(`iq ${id} failed: ${errorSummary(answer)}`);
    return answer;
  }

  /**
   * XEP-0045 join: presence to `occupantJid` (room@service/nick) with
   * `<x xmlns='http://jabber.org/protocol/muc'/>` and, if given, a history
   * request; waits for the presence the room sends back from that occupant
   * JID (the self-presence, status 110, or an error). Found by searching for
   * its from attribute, so the presence of the other occupants that comes
   * first is skipped without being parsed. Returns whether the room was
   * created by this join (status 201). Only before receiveMessages().
   */
  async joinRoom(occupantJid: string, history?: string): Promise<{ created: boolean }> {
    this.send(
      `<presence to='${escapeXml(occupantJid)}'><x xmlns='http://jabber.org/protocol/muc'>${history ?? ''}</x></presence>`,
    );
    const j = escapeXml(occupantJid);
    const presence = await this.wait(`self-presence from ${occupantJid}`, (buf) => {
      for (const q of ["'", '"']) {
        const at = buf.indexOf(`from=${q}${j}${q}`);
        if (at < 0) continue;
        const start = buf.lastIndexOf('<presence', at);
        if (start < 0) continue;
        const tagEnd = buf.indexOf('>', at);
        if (tagEnd < 0) return null;
        let end: number;
        if (buf.charCodeAt(tagEnd - 1) === 47) end = tagEnd + 1;
        else {
          const close = buf.indexOf('</presence>', tagEnd);
          if (close < 0) return null;
          end = close + 11;
        }
        return { end, value: buf.slice(start, end) };
      }
      return null;
    });
    const open = presence.slice(0, presence.indexOf('>') + 1);
    if (attr(open, 'type') === 'error')
      throw new XmppError(`join of ${occupantJid} refused: ${errorSummary(presence)}`);
    if (attr(open, 'type') === 'unavailable')
      throw new XmppError(`join of ${occupantJid} ended in unavailable: ${presence.slice(0, 600)}`);
    return { created: /code=['"]201['"]/.test(presence) };
  }

  /** Connect, negotiate, authenticate: a logged-in session. */
  static async login(c: ConnOptions, o: LoginOptions): Promise<BenchConn> {
    const conn = await BenchConn.connect(c);
    try {
      const features = await conn.negotiate(o.tls);
      await conn.authenticate(features, o);
      return conn;
    } catch (err) {
      conn.destroy();
      throw err;
    }
  }

  /**
   * Switches to message mode: every `<message>` that arrives from now on has its
   * body passed to `onBody`; error messages are counted and dropped.
   */
  receiveMessages(onBody: (body: string) => void): void {
    this.onBody = onBody;
    const rest = this.buf;
    this.buf = '';
    if (rest) this.scanMessages(rest);
  }

  private scanMessages(chunk: string): void {
    const buf = this.buf.length ? this.buf + chunk : chunk;
    let pos = 0;
    for (;;) {
      const end = buf.indexOf('</message>', pos);
      if (end < 0) break;
      const start = buf.lastIndexOf('<message', end);
      if (start >= pos) {
        const tagEnd = buf.indexOf('>', start);
        const open = buf.slice(start, tagEnd);
        if (open.includes("type='error'") || open.includes('type="error"')) {
          this.errorMessages++;
        } else {
          const b = buf.indexOf('<body', tagEnd);
          if (b >= 0 && b < end) {
            const bGt = buf.indexOf('>', b);
            const bEnd = buf.indexOf('</body>', bGt);
            if (bEnd >= 0 && bEnd < end) this.onBody!(buf.slice(bGt + 1, bEnd));
          }
        }
      }
      pos = end + 10;
    }
    let rest = pos ? buf.slice(pos) : buf;
    // Drop whatever precedes an incomplete message (presence, iq, whitespace)
    // so unrelated traffic (e.g. the presence of 500 MUC occupants joining)
    // neither piles up nor is scanned again with the next chunk. Every
    // complete message has been taken, so a '<message' left is incomplete;
    // without one, only a possibly cut '<messa...' at the end is kept ('<' is
    // always escaped in text and attribute values).
    if (rest.length > 0) {
      const m = rest.lastIndexOf('<message');
      if (m > 0) rest = rest.slice(m);
      else if (m < 0) {
        const lt = rest.lastIndexOf('<');
        rest = lt >= 0 && rest.length - lt < 9 ? rest.slice(lt) : '';
      }
    }
    this.buf = rest;
  }

  /** Closes the stream politely and waits (bounded) for the socket to close. */
  close(waitMs = 2000): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.flush();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.destroy();
        resolve();
      }, waitMs);
      this.closeWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
      try {
        this.socket.end('</stream:stream>');
      } catch {
        this.destroy();
      }
    });
  }

  destroy(): void {
    this.closed = true;
    this.socket.destroy();
  }
}
