/**
 * A raw XMPP test client for protocol tests: it writes exactly the XML a test
 * gives it and checks what the server answers against XML patterns.
 *
 * Server output is parsed with the project's own StreamParser (with generous
 * limits), so any malformed byte from the server fails the test that is
 * waiting for it.
 *
 * Pattern rules (used by expect(), and by the scenario runner):
 *  - A pattern is one XML element. It is parsed inside a stream header that
 *    declares `xmlns='jabber:client'` and the `stream:` prefix, so `<iq/>`
 *    means a jabber:client iq and `<stream:error/>` needs no declaration.
 *  - Elements match on local name and, when the pattern element has an
 *    xmlns attribute or a prefix, on namespace: the received element's
 *    namespace is resolved through its ancestors, so a child that inherits
 *    its namespace matches a pattern that spells it out. A pattern child
 *    without xmlns matches any namespace (the top-level pattern element is
 *    always jabber:client unless it says otherwise).
 *  - Every attribute of the pattern must be present with an equal value.
 *    Extra attributes in the received element are allowed.
 *  - Attribute values and text may be wildcards:
 *      `{any}`    any value (the attribute must be present);
 *      `{$name}`  when `name` is unbound: captures the value into the
 *                 variable; when bound: must equal the variable's value.
 *                 Bound variables are also substituted inside longer values
 *                 ('{$user}@localhost') and in everything send() writes.
 *  - Text: if a pattern element has no child elements and non-blank text,
 *    the received element's text must equal the pattern's text (trimmed);
 *    text `{any}` accepts any text. Blank pattern text checks nothing.
 *  - Children: the pattern's child elements must appear in the received
 *    element in the same order, as a subsequence: other children may be
 *    interleaved.
 *  - `strict='true'` on a pattern element (the attribute itself is not
 *    matched) forbids extra attributes (namespace declarations aside), extra
 *    child elements and different text on that element only; its children
 *    follow the normal rules unless they are strict themselves.
 *  - The pattern `<stream:stream ...>` (an open tag) matches the server's
 *    stream header by its attributes; `</stream:stream>` matches the closing
 *    tag.
 */
import { createHash } from 'node:crypto';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { Element } from 'ltx';
import type { ScramHash } from '../../src/sasl/credentials.ts';
import type { ChannelBindingType } from '../../src/sasl/mechanisms.ts';
import { StreamParser, type StreamHeader } from '../../src/xml/parser.ts';
import { plainMessage, ScramClient } from './scram-client.ts';

export const NS_CLIENT = 'jabber:client';
export const NS_STREAMS = 'http://etherx.jabber.org/streams';
export const NS_STREAM_ERRORS = 'urn:ietf:params:xml:ns:xmpp-streams';
export const NS_STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';
export const NS_TLS = 'urn:ietf:params:xml:ns:xmpp-tls';
export const NS_SASL = 'urn:ietf:params:xml:ns:xmpp-sasl';
export const NS_BIND = 'urn:ietf:params:xml:ns:xmpp-bind';

/** Limits far above anything a correct server sends, so only malformed XML trips them. */
const CLIENT_LIMITS = { maxStanzaBytes: 16 * 1024 * 1024, maxDepth: 1000, maxAttributes: 1000 };
const TRANSCRIPT_LINES = 40;
const VAR_RE = /\{\$([A-Za-z_][\w.-]*)\}/g;
const WHOLE_VAR_RE = /^\{\$([A-Za-z_][\w.-]*)\}$/;

export type Incoming =
  | { kind: 'header'; header: StreamHeader }
  | { kind: 'element'; element: Element }
  | { kind: 'close' }
  | { kind: 'malformed'; condition: string; text: string }
  | { kind: 'eof' };

export interface ConnectOptions {
  port: number;
  host?: string;
  /** XEP-0368: TLS from the first byte, with ALPN 'xmpp-client'. */
  directTls?: boolean;
  /** The domain put in `to` and in SNI; default 'localhost'. */
  domain?: string;
  /** Variables shared with other clients (the scenario runner passes one map to all). */
  vars?: Map<string, string>;
  /** Name used in failure messages (scenario client name). */
  name?: string;
  /** TLS versions and ciphers the client offers, for direct TLS and STARTTLS alike. */
  tlsOptions?: Pick<ConnectionOptions, 'minVersion' | 'maxVersion' | 'ciphers'>;
}

export interface AuthOptions {
  /** Channel-binding type for -PLUS mechanisms; default tls-exporter on TLS 1.3, else tls-server-end-point. */
  channelBinding?: ChannelBindingType;
  /** Overrides the channel-binding data computed from the TLS connection. */
  cbData?: Buffer;
  /** GS2 flag for non-PLUS SCRAM ('y': "I support channel binding but you did not offer it"). */
  cbFlag?: 'n' | 'y';
  authzid?: string;
}

export type AuthOutcome =
  { ok: true; features: Element } | { ok: false; condition: string; failure: Element };

export interface OpenOptions {
  /** null leaves the attribute out. */
  to?: string | null;
  version?: string | null;
  xmlns?: string;
  streamNs?: string;
}

export class PatternMismatch extends Error {}

export class XmppClient {
  socket: Socket;
  readonly domain: string;
  readonly vars: Map<string, string>;
  readonly name: string;
  /** Features of the current stream, from the last open(). */
  features: Element | null = null;
  /** Full JID after bind(). */
  jid: string | null = null;
  /** Attributes of the last stream header the server sent. */
  serverHeader: Record<string, string> | null = null;

  private readonly parser: StreamParser;
  private readonly inbox: Incoming[] = [];
  private waiter: ((event: Incoming) => void) | null = null;
  private eof = false;
  private readonly transcript: string[] = [];
  private idCounter = 0;
  private readonly tlsOptions: ConnectOptions['tlsOptions'];

  private constructor(socket: Socket, opts: ConnectOptions) {
    this.tlsOptions = opts.tlsOptions;
    this.socket = socket;
    this.domain = opts.domain ?? 'localhost';
    this.vars = opts.vars ?? new Map();
    this.name = opts.name ?? 'client';
    this.parser = new StreamParser(
      {
        streamStart: (header) => this.push({ kind: 'header', header }),
        stanza: (element) => this.push({ kind: 'element', element }),
        streamEnd: () => this.push({ kind: 'close' }),
        error: (condition, text) => this.push({ kind: 'malformed', condition, text }),
      },
      CLIENT_LIMITS,
    );
    this.attach(socket);
  }

  static async connect(opts: ConnectOptions): Promise<XmppClient> {
    const host = opts.host ?? '127.0.0.1';
    const domain = opts.domain ?? 'localhost';
    let socket: Socket;
    if (opts.directTls) {
      const tls = tlsConnect({
        host,
        port: opts.port,
        servername: domain,
        rejectUnauthorized: false,
        ALPNProtocols: ['xmpp-client'],
        ...opts.tlsOptions,
      });
      await once(tls, 'secureConnect');
      socket = tls;
    } else {
      const plain = netConnect({ host, port: opts.port });
      await once(plain, 'connect');
      socket = plain;
    }
    return new XmppClient(socket, opts);
  }

  /**
   * Connects and brings the stream to the SASL step: STARTTLS on a plain
   * port, nothing more on a direct TLS port. `client.features` holds the
   * features offered over TLS.
   */
  static async connectSecure(opts: ConnectOptions): Promise<XmppClient> {
    const client = await XmppClient.connect(opts);
    try {
      await client.open();
      if (!opts.directTls) await client.startTls();
    } catch (err) {
      client.destroy();
      throw err;
    }
    return client;
  }

  /** True once TLS is up (STARTTLS done or direct TLS). */
  get secure(): boolean {
    return 'encrypted' in this.socket && (this.socket as TLSSocket).encrypted === true;
  }

  get tlsSocket(): TLSSocket {
    if (!this.secure) throw new Error(`${this.name}: the connection is not encrypted`);
    return this.socket as TLSSocket;
  }

  /** The server closed the connection (all data received). */
  get ended(): boolean {
    return this.eof;
  }

  nextId(prefix = 'c'): string {
    return `${prefix}${++this.idCounter}`;
  }

  // ---- socket and incoming events ------------------------------------------

  private attach(socket: Socket): void {
    socket.on('data', (chunk: Buffer) => this.parser.write(chunk));
    socket.on('end', () => this.push({ kind: 'eof' }));
    socket.on('close', () => this.push({ kind: 'eof' }));
    // Errors surface as the eof that follows; ECONNRESET after a server close is normal.
    socket.on('error', () => undefined);
  }

  private detach(socket: Socket): void {
    socket.removeAllListeners('data');
    socket.removeAllListeners('end');
    socket.removeAllListeners('close');
  }

  private push(event: Incoming): void {
    if (event.kind === 'eof') {
      if (this.eof) return;
      this.eof = true;
    }
    this.note(`S: ${describe(event)}`);
    const waiter = this.waiter;
    if (waiter) {
      this.waiter = null;
      waiter(event);
    } else {
      this.inbox.push(event);
    }
  }

  private note(line: string): void {
    this.transcript.push(line.length > 2000 ? `${line.slice(0, 2000)}...` : line);
    if (this.transcript.length > TRANSCRIPT_LINES) this.transcript.shift();
  }

  /** The last lines sent (C:) and received (S:), for failure messages. */
  recentTranscript(): string {
    return this.transcript.map((l) => `    ${l}`).join('\n');
  }

  /** The next thing from the server: the header, an element, the closing tag, or eof. */
  next(timeoutMs = 3000): Promise<Incoming> {
    const queued = this.inbox.shift();
    if (queued) return Promise.resolve(queued);
    if (this.eof) return Promise.resolve({ kind: 'eof' });
    if (this.waiter) throw new Error(`${this.name}: two concurrent reads`);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(
          new Error(
            `${this.name}: nothing received within ${timeoutMs} ms\n  recent traffic:\n${this.recentTranscript()}`,
          ),
        );
      }, timeoutMs);
      this.waiter = (event) => {
        clearTimeout(timer);
        resolve(event);
      };
    });
  }

  // ---- sending ---------------------------------------------------------------

  /** Writes XML as given, after substituting bound `{$name}` variables. */
  send(xml: string): void {
    const text = xml.replace(VAR_RE, (_, name: string) => {
      const value = this.vars.get(name);
      if (value === undefined) throw new Error(`${this.name}: variable {$${name}} is not bound`);
      return escapeXml(value);
    });
    this.sendRaw(text);
  }

  /** Writes bytes without any substitution. */
  sendRaw(data: string | Buffer): void {
    this.note(`C: ${typeof data === 'string' ? data : `<${data.length} bytes>`}`);
    this.socket.write(data);
  }

  // ---- expectations ------------------------------------------------------------

  /**
   * Waits for the next thing the server sends and matches it against `pattern`
   * (see the rules at the top of this file). Returns the received element
   * (for a header pattern, an element carrying the header's attributes).
   */
  async expect(pattern: string, timeoutMs = 3000): Promise<Element> {
    const trimmed = pattern.trim();
    if (trimmed === '</stream:stream>') {
      const event = await this.next(timeoutMs);
      if (event.kind !== 'close') this.mismatch(trimmed, event, 'expected the closing </stream:stream>');
      return new Element('stream:stream');
    }
    if (/^<stream:stream[\s>]/.test(trimmed) && !trimmed.endsWith('/>')) {
      // The stream prefix needs no declaration in a header pattern either.
      const declared = /\sxmlns:stream=/.test(trimmed)
        ? trimmed
        : trimmed.replace('<stream:stream', `<stream:stream xmlns:stream='${NS_STREAMS}'`);
      const patternEl = parsePattern(`${declared}</stream:stream>`, true);
      const event = await this.next(timeoutMs);
      if (event.kind !== 'header') this.mismatch(trimmed, event, 'expected a stream header');
      const received = new Element(event.header.name, { ...event.header.attrs });
      this.matchOrThrow(patternEl, received, trimmed, event);
      return received;
    }
    return this.expectElement(parsePattern(trimmed), timeoutMs, trimmed);
  }

  /** expect() with an already parsed pattern element. */
  async expectElement(pattern: Element, timeoutMs = 3000, source = pattern.toString()): Promise<Element> {
    const event = await this.next(timeoutMs);
    if (event.kind !== 'element') this.mismatch(source, event, 'expected an element');
    this.matchOrThrow(pattern, event.element, source, event);
    return event.element;
  }

  /** Checks an element against a pattern without reading anything; returns null or the reason. */
  check(pattern: string | Element, element: Element): string | null {
    const p = typeof pattern === 'string' ? parsePattern(pattern) : pattern;
    const captures = new Map<string, string>();
    const reason = matchElement(p, element, this.vars, captures, '');
    if (reason === null) for (const [k, v] of captures) this.vars.set(k, v);
    return reason;
  }

  private matchOrThrow(pattern: Element, received: Element, source: string, event: Incoming): void {
    const reason = this.check(pattern, received);
    if (reason !== null) this.mismatch(source, event, reason);
  }

  private mismatch(pattern: string, event: Incoming, reason: string): never {
    throw new PatternMismatch(
      [
        `${this.name}: received XML does not match the expected pattern (${reason})`,
        `  expected:\n${indent(pattern)}`,
        `  received:\n${indent(clip(describe(event), 3000))}`,
        `  recent traffic:\n${this.recentTranscript()}`,
      ].join('\n'),
    );
  }

  /** Fails if the server sends anything within `ms`. */
  async expectNothing(ms = 250): Promise<void> {
    const queued = this.inbox.shift();
    if (queued) this.mismatch('(nothing)', queued, 'expected no traffic');
    let event: Incoming;
    try {
      event = await this.next(ms);
    } catch {
      return; // the timeout is the success case
    }
    this.mismatch('(nothing)', event, 'expected no traffic');
  }

  /** The server's stream header; returns its attributes. */
  async expectHeader(timeoutMs = 3000): Promise<Record<string, string>> {
    const event = await this.next(timeoutMs);
    if (event.kind !== 'header') this.mismatch('<stream:stream ...>', event, 'expected a stream header');
    const { header } = event;
    if (header.localName !== 'stream' || header.namespace !== NS_STREAMS) {
      this.mismatch('<stream:stream ...>', event, `header is not {${NS_STREAMS}}stream`);
    }
    this.serverHeader = header.attrs;
    return header.attrs;
  }

  async expectFeatures(timeoutMs = 3000): Promise<Element> {
    this.features = await this.expect(`<stream:features xmlns:stream='${NS_STREAMS}'/>`, timeoutMs);
    return this.features;
  }

  /**
   * A stream error with this condition, then the closing tag, then the
   * connection closing. Returns the <stream:error/> element.
   */
  async expectStreamError(condition: string, timeoutMs = 3000): Promise<Element> {
    const error = await this.expect(
      `<stream:error xmlns:stream='${NS_STREAMS}'><${condition} xmlns='${NS_STREAM_ERRORS}'/></stream:error>`,
      timeoutMs,
    );
    await this.expectClosed(timeoutMs);
    return error;
  }

  /** The server's </stream:stream>, then the TCP connection closing. */
  async expectClosed(timeoutMs = 3000): Promise<void> {
    await this.expect('</stream:stream>', timeoutMs);
    await this.expectEof(timeoutMs);
  }

  /** The connection closes without anything more from the server. */
  async expectEof(timeoutMs = 3000): Promise<void> {
    const event = await this.next(timeoutMs);
    if (event.kind !== 'eof') this.mismatch('(connection closed)', event, 'expected the connection to close');
  }

  // ---- stream negotiation ------------------------------------------------------

  /** Sends a stream header; by default a correct one for this client's domain. */
  sendHeader(opts: OpenOptions = {}): void {
    const attrs: string[] = [
      `xmlns='${opts.xmlns ?? NS_CLIENT}'`,
      `xmlns:stream='${opts.streamNs ?? NS_STREAMS}'`,
    ];
    const to = opts.to === undefined ? this.domain : opts.to;
    if (to !== null) attrs.push(`to='${escapeXml(to)}'`);
    const version = opts.version === undefined ? '1.0' : opts.version;
    if (version !== null) attrs.push(`version='${escapeXml(version)}'`);
    this.sendRaw(`<?xml version='1.0'?><stream:stream ${attrs.join(' ')}>`);
  }

  /** Opens (or restarts) the stream; returns the features the server offers. */
  async open(opts: OpenOptions = {}): Promise<Element> {
    this.sendHeader(opts);
    await this.expectHeader();
    return this.expectFeatures();
  }

  /** STARTTLS (RFC 6120 5.4): <starttls/>, <proceed/>, TLS handshake, stream restart. */
  async startTls(): Promise<Element> {
    this.sendRaw(`<starttls xmlns='${NS_TLS}'/>`);
    await this.expect(`<proceed xmlns='${NS_TLS}'/>`);
    return this.upgradeTls();
  }

  /** The TLS handshake and stream restart that follow <proceed/>. */
  async upgradeTls(): Promise<Element> {
    const plain = this.socket;
    this.detach(plain);
    const secure = tlsConnect({
      socket: plain,
      servername: this.domain,
      rejectUnauthorized: false,
      ...this.tlsOptions,
    });
    await once(secure, 'secureConnect');
    this.socket = secure;
    this.attach(secure);
    this.parser.reset();
    return this.open();
  }

  /** Channel-binding data as the client computes it from its own view of the TLS connection. */
  channelBindingData(type: ChannelBindingType): Buffer {
    const socket = this.tlsSocket;
    switch (type) {
      case 'tls-exporter':
        return socket.exportKeyingMaterial(32, 'EXPORTER-Channel-Binding', Buffer.alloc(0));
      case 'tls-server-end-point':
        // RFC 5929 4.1: SHA-256 for a certificate signed with SHA-256 (or MD5/SHA-1).
        return createHash('sha256').update(socket.getPeerCertificate().raw).digest();
      case 'tls-unique': {
        const finished = socket.getFinished();
        if (!finished) throw new Error('no Finished message for tls-unique');
        return finished;
      }
    }
  }

  /** SASL (RFC 6120 6): resolves with the outcome; on success the stream is restarted. */
  async tryAuthenticate(
    username: string,
    password: string,
    mechanism = 'SCRAM-SHA-256',
    opts: AuthOptions = {},
  ): Promise<AuthOutcome> {
    let final: Element;
    if (mechanism === 'PLAIN') {
      const message = plainMessage(username, password, opts.authzid);
      this.sendRaw(`<auth xmlns='${NS_SASL}' mechanism='PLAIN'>${message.toString('base64')}</auth>`);
      final = await this.saslReply();
    } else {
      const m = /^SCRAM-(SHA-1|SHA-256)(-PLUS)?$/.exec(mechanism);
      if (!m) throw new Error(`unsupported mechanism ${mechanism}`);
      const hash = m[1] as ScramHash;
      const plus = m[2] !== undefined;
      let cbType: ChannelBindingType | undefined;
      if (plus) {
        cbType =
          opts.channelBinding ??
          (this.tlsSocket.getProtocol() === 'TLSv1.3' ? 'tls-exporter' : 'tls-server-end-point');
      }
      const scram = new ScramClient(hash, username, password, {
        cbType,
        cbData: cbType ? (opts.cbData ?? this.channelBindingData(cbType)) : undefined,
        cbFlag: opts.cbFlag,
        authzid: opts.authzid,
      });
      this.sendRaw(
        `<auth xmlns='${NS_SASL}' mechanism='${mechanism}'>${scram.first().toString('base64')}</auth>`,
      );
      const challenge = await this.saslReply();
      if (challenge.name !== 'challenge') return failureOutcome(challenge);
      const response = scram.final(Buffer.from(challenge.getText(), 'base64'));
      this.sendRaw(`<response xmlns='${NS_SASL}'>${response.toString('base64')}</response>`);
      final = await this.saslReply();
      if (final.name === 'success' && !scram.verifyServer(Buffer.from(final.getText(), 'base64'))) {
        throw new Error(`${this.name}: the server's SCRAM signature (v=) does not verify`);
      }
    }
    if (final.name !== 'success') return failureOutcome(final);
    // RFC 6120 6.4.6: restart the stream; the server sends nothing until we do.
    this.parser.reset();
    return { ok: true, features: await this.open() };
  }

  /** The next SASL element: challenge, success or failure. */
  async saslReply(timeoutMs = 3000): Promise<Element> {
    const event = await this.next(timeoutMs);
    if (
      event.kind !== 'element' ||
      nsOf(event.element) !== NS_SASL ||
      !['challenge', 'success', 'failure'].includes(event.element.name)
    ) {
      this.mismatch(`<challenge|success|failure xmlns='${NS_SASL}'/>`, event, 'expected a SASL reply');
    }
    return event.element;
  }

  /** SASL that must succeed; returns the features of the restarted stream. */
  async authenticate(
    username: string,
    password: string,
    mechanism = 'SCRAM-SHA-256',
    opts: AuthOptions = {},
  ) {
    const outcome = await this.tryAuthenticate(username, password, mechanism, opts);
    if (!outcome.ok) {
      throw new Error(`${this.name}: ${mechanism} authentication failed: ${outcome.failure.toString()}`);
    }
    return outcome.features;
  }

  /** Resource binding (RFC 6120 7); returns the full JID the server assigned. */
  async bind(resource?: string): Promise<string> {
    const id = this.nextId('bind');
    const inner = resource === undefined ? '' : `<resource>${escapeXml(resource)}</resource>`;
    this.sendRaw(`<iq type='set' id='${id}'><bind xmlns='${NS_BIND}'>${inner}</bind></iq>`);
    const result = await this.expect(
      `<iq type='result' id='${id}'><bind xmlns='${NS_BIND}'><jid>{any}</jid></bind></iq>`,
    );
    const jid = result.getChild('bind')?.getChildText('jid');
    if (!jid) throw new Error(`${this.name}: bind result without a JID`);
    this.jid = jid;
    return jid;
  }

  /** open + STARTTLS (unless already secure) + SASL + bind; returns the full JID. */
  async login(username: string, password: string, opts: { resource?: string; mechanism?: string } = {}) {
    await this.open();
    if (!this.secure) await this.startTls();
    await this.authenticate(username, password, opts.mechanism ?? 'SCRAM-SHA-256');
    return this.bind(opts.resource);
  }

  // ---- closing -------------------------------------------------------------------

  /** Sends </stream:stream> and waits for the server's closing tag and the connection end. */
  async close(timeoutMs = 3000): Promise<void> {
    if (this.eof) {
      this.destroy();
      return;
    }
    this.sendRaw('</stream:stream>');
    await this.expectClosed(timeoutMs);
    this.destroy();
  }

  /**
   * Cleanup for any state: closes the stream and waits (briefly) until the
   * server has closed the connection, so that by the time this resolves the
   * server has also unbound the session and the next test starts clean.
   */
  async shutdown(timeoutMs = 1000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    try {
      if (!this.eof && !this.socket.destroyed) this.socket.write('</stream:stream>');
      while (!this.eof) {
        const event = await this.next(Math.max(1, deadline - Date.now()));
        if (event.kind === 'eof') break;
      }
    } catch {
      // Timed out or the socket is gone: destroying is all that is left.
    }
    this.destroy();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

// ---- patterns -------------------------------------------------------------------------

const PATTERN_HEADER = `<stream:stream xmlns='${NS_CLIENT}' xmlns:stream='${NS_STREAMS}'>`;

/**
 * Parses one pattern element with the project's parser, inside a stream
 * header that declares jabber:client and the stream prefix. With `asHeader`,
 * `xml` is itself a stream header plus its closing tag.
 */
export function parsePattern(xml: string, asHeader = false): Element {
  const found: Element[] = [];
  let header: StreamHeader | null = null;
  let error: string | null = null;
  const parser = new StreamParser(
    {
      streamStart: (h) => (header = h),
      stanza: (e) => found.push(e),
      streamEnd: () => undefined,
      error: (condition, text) => (error = `${condition}: ${text}`),
    },
    CLIENT_LIMITS,
  );
  parser.write(Buffer.from(asHeader ? xml : `${PATTERN_HEADER}${xml}</stream:stream>`, 'utf8'));
  if (error !== null) throw new Error(`bad pattern (${error}): ${xml}`);
  if (asHeader) {
    const h = header as StreamHeader | null;
    if (!h) throw new Error(`bad header pattern: ${xml}`);
    return new Element(h.name, { ...h.attrs });
  }
  if (found.length !== 1)
    throw new Error(`a pattern must be exactly one element, got ${found.length}: ${xml}`);
  return found[0]!;
}

/** Parses a block of several elements (e.g. a scenario step) into patterns. */
export function parsePatterns(xml: string): Element[] {
  const found: Element[] = [];
  let error: string | null = null;
  const parser = new StreamParser(
    {
      streamStart: () => undefined,
      stanza: (e) => found.push(e),
      streamEnd: () => undefined,
      error: (condition, text) => (error = `${condition}: ${text}`),
    },
    CLIENT_LIMITS,
  );
  parser.write(Buffer.from(`${PATTERN_HEADER}${xml}</stream:stream>`, 'utf8'));
  if (error !== null) throw new Error(`bad pattern (${error}):\n${xml}`);
  return found;
}

function elementChildren(element: Element): Element[] {
  return element.children.filter((c): c is Element => typeof c !== 'string');
}

function ownText(element: Element): string {
  return element.children.filter((c): c is string => typeof c === 'string').join('');
}

/** The namespace of an element, resolved through its ancestors. */
export function nsOf(element: Element): string | null {
  const colon = element.name.indexOf(':');
  const key = colon < 0 ? 'xmlns' : `xmlns:${element.name.slice(0, colon)}`;
  for (let e: Element | null = element; e; e = e.parent ?? null) {
    const value = e.attrs[key] as string | undefined;
    if (value !== undefined) return value;
  }
  return null;
}

/**
 * The namespace a pattern element asks for: its prefix's, or its own xmlns
 * attribute. Null (any namespace) for an unprefixed child without xmlns, so
 * that `<error><service-unavailable/></error>` does not demand jabber:client.
 */
function explicitNs(pattern: Element): string | null {
  if (pattern.name.includes(':') || pattern.attrs.xmlns !== undefined) return nsOf(pattern);
  return null;
}

function localName(element: Element): string {
  return element.name.slice(element.name.indexOf(':') + 1);
}

function isNamespaceDecl(name: string): boolean {
  return name === 'xmlns' || name.startsWith('xmlns:');
}

/** Whether `actual` matches the pattern value; new captures go into `captures`. */
function matchValue(
  pattern: string,
  actual: string | undefined,
  vars: Map<string, string>,
  captures: Map<string, string>,
): boolean {
  if (actual === undefined) return false;
  if (pattern === '{any}') return true;
  const whole = WHOLE_VAR_RE.exec(pattern);
  if (whole && !vars.has(whole[1]!) && !captures.has(whole[1]!)) {
    captures.set(whole[1]!, actual);
    return true;
  }
  const expanded = pattern.replace(VAR_RE, (_, name: string) => {
    const value = vars.get(name) ?? captures.get(name);
    if (value === undefined) throw new Error(`variable {$${name}} is not bound`);
    return value;
  });
  return expanded === actual;
}

function shortTag(element: Element): string {
  const attrs = Object.entries(element.attrs)
    .filter(([k]) => !isNamespaceDecl(k) || (k === 'xmlns' && element.parent))
    .map(([k, v]) => ` ${k}='${String(v)}'`)
    .join('');
  return `<${element.name}${attrs}>`;
}

/** Returns null on a match, else why not (with the path of the mismatch). */
export function matchElement(
  pattern: Element,
  received: Element,
  vars: Map<string, string>,
  captures: Map<string, string>,
  path: string,
): string | null {
  const here = `${path}/${localName(pattern)}`;
  if (localName(pattern) !== localName(received)) {
    return `at ${here}: expected <${pattern.name}>, got <${received.name}>`;
  }
  const patternNs = explicitNs(pattern);
  const receivedNs = nsOf(received);
  if (patternNs !== null && patternNs !== receivedNs) {
    return `at ${here}: expected namespace '${patternNs}', got '${receivedNs ?? '(none)'}'`;
  }
  const strict = pattern.attrs.strict === 'true';
  for (const [name, value] of Object.entries(pattern.attrs)) {
    if (isNamespaceDecl(name) || name === 'strict') continue;
    const actual = received.attrs[name] as string | undefined;
    if (!matchValue(String(value), actual, vars, captures)) {
      return actual === undefined
        ? `at ${here}: attribute ${name} is missing (expected '${String(value)}')`
        : `at ${here}: attribute ${name}='${actual}', expected '${String(value)}'`;
    }
  }
  if (strict) {
    for (const name of Object.keys(received.attrs)) {
      if (!isNamespaceDecl(name) && !(name in pattern.attrs))
        return `at ${here}: unexpected attribute ${name}`;
    }
  }

  const patternKids = elementChildren(pattern);
  const receivedKids = elementChildren(received);
  const patternText = ownText(pattern).trim();
  if (patternKids.length === 0 && (patternText !== '' || strict)) {
    const actual = ownText(received);
    if (patternText === '{any}') {
      // any text
    } else if (!matchValue(patternText, actual, vars, captures)) {
      return `at ${here}: text is '${clip(actual)}', expected '${clip(patternText)}'`;
    }
  }

  if (strict && patternKids.length !== receivedKids.length) {
    return `at ${here}: expected exactly ${patternKids.length} child element(s), got ${receivedKids.length}`;
  }
  // Greedy leftmost matching finds a subsequence whenever one exists.
  let from = 0;
  for (const kid of patternKids) {
    let found = false;
    let firstReason: string | null = null;
    for (let i = from; i < receivedKids.length; i++) {
      const trial = new Map(captures);
      const reason = matchElement(kid, receivedKids[i]!, vars, trial, here);
      if (reason === null) {
        for (const [k, v] of trial) captures.set(k, v);
        from = i + 1;
        found = true;
        break;
      }
      if (strict) return reason;
      if (firstReason === null && localName(receivedKids[i]!) === localName(kid)) firstReason = reason;
    }
    if (!found) {
      return (
        firstReason ??
        `at ${here}: no child matching ${shortTag(kid)}${from > 0 ? ' after the previous matches' : ''}`
      );
    }
  }
  return null;
}

// ---- small utilities ----------------------------------------------------------------

export function escapeXml(text: string): string {
  return text
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/'/g, '&apos;')
    .replace(/"/g, '&quot;');
}

function describe(event: Incoming): string {
  switch (event.kind) {
    case 'header':
      return `<${event.header.name}${Object.entries(event.header.attrs)
        .map(([k, v]) => ` ${k}='${v}'`)
        .join('')}>`;
    case 'element':
      return event.element.toString();
    case 'close':
      return '</stream:stream>';
    case 'malformed':
      return `(malformed XML from the server: ${event.condition}: ${event.text})`;
    case 'eof':
      return '(connection closed)';
  }
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((l) => `    ${l}`)
    .join('\n');
}

function clip(text: string, max = 200): string {
  return text.length > max ? `${text.slice(0, max)}... (${text.length} characters)` : text;
}

function failureOutcome(element: Element): AuthOutcome {
  const condition = elementChildren(element).find((c) => c.name !== 'text')?.name ?? '(none)';
  return { ok: false, condition, failure: element };
}

function once(emitter: Socket, event: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    emitter.once('error', onError);
    emitter.once(event, () => {
      emitter.off('error', onError);
      resolve();
    });
  });
}

/**
 * Clients opened by one test, all destroyed by destroyAll() in afterEach, so
 * a failing test does not leave connections behind for the next one.
 */
export class ClientPool {
  private readonly clients: XmppClient[] = [];

  constructor(private readonly defaults: () => ConnectOptions) {}

  private track(client: XmppClient): XmppClient {
    this.clients.push(client);
    return client;
  }

  async connect(opts: Partial<ConnectOptions> = {}): Promise<XmppClient> {
    return this.track(await XmppClient.connect({ ...this.defaults(), ...opts }));
  }

  /** Connected and past STARTTLS (or on the direct TLS port), ready for SASL. */
  async connectSecure(opts: Partial<ConnectOptions> = {}): Promise<XmppClient> {
    return this.track(await XmppClient.connectSecure({ ...this.defaults(), ...opts }));
  }

  /** Logged in and bound; `client.jid` holds the full JID. */
  async login(
    username: string,
    password: string,
    opts: Partial<ConnectOptions> & { resource?: string; mechanism?: string } = {},
  ): Promise<XmppClient> {
    const client = await this.connect(opts);
    await client.login(username, password, { resource: opts.resource, mechanism: opts.mechanism });
    return client;
  }

  /** Closes every client of the test and waits until the server has closed them too. */
  async destroyAll(): Promise<void> {
    await Promise.all(this.clients.splice(0).map((c) => c.shutdown()));
  }
}
