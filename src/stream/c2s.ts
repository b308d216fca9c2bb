// The client-to-server stream (RFC 6120): header exchange, STARTTLS, SASL,
// resource binding, then stanzas to the router. One instance per connection;
// it processes the connection's elements strictly in order and pauses the
// socket while a handler awaits storage (backpressure).
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { Element } from 'ltx';
import { serialize } from '../xml/element.ts';
import type { Logger } from 'pino';
import type { Host } from '../host.ts';
import { Jid, JidError, prepareLocal, prepareResource } from '../jid.ts';
import type { ChannelBindingType, SaslContext, SaslMechanism, SaslStep } from '../sasl/mechanisms.ts';
import { offeredMechanisms } from '../sasl/mechanisms.ts';
import type { StreamElementEvent } from '../router/events.ts';
import { ClientSession, type ConnectionEnd, type SessionConnection } from '../session/client-session.ts';
import type { Session, StreamInfo } from '../session/session.ts';
import {
  NS_CLIENT,
  NS_STREAMS,
  childElements,
  errorReply,
  iqResult,
  type StanzaErrorCondition,
  type StanzaErrorOptions,
} from '../stanza.ts';
import { StreamParser, type ParserErrorCondition, type StreamHeader } from '../xml/parser.ts';
import { StreamError, streamErrorElement, type StreamErrorCondition } from './errors.ts';
import type { C2SEnvironment } from './environment.ts';

const NS_TLS = 'urn:ietf:params:xml:ns:xmpp-tls';
const NS_SASL = 'urn:ietf:params:xml:ns:xmpp-sasl';
const NS_BIND = 'urn:ietf:params:xml:ns:xmpp-bind';
const NS_SESSION = 'urn:ietf:params:xml:ns:xmpp-session';
const NS_SASL_CB = 'urn:xmpp:sasl-cb:0';

/** RFC 6120 6.4.5: a reasonable number of retries (2 to 5) before giving up. */
const MAX_AUTH_ATTEMPTS = 5;
/** How long we wait for the peer's closing tag after sending ours. */
const CLOSE_GRACE_MS = 3000;
/** A client that reads nothing cannot make us buffer without bound. */
const MAX_OUTBOUND_BYTES = 4 * 1024 * 1024;

type State = 'header' | 'pre-tls' | 'tls-handshake' | 'sasl' | 'bind' | 'bound' | 'closed';

export interface ListenerOptions {
  /** 'direct' sockets are TLS from the first byte. */
  tls: 'starttls' | 'direct' | 'none';
  starttlsRequired: boolean;
}

export class C2SStream implements StreamInfo, SessionConnection {
  readonly id = randomBytes(12).toString('base64url');
  host = '';
  username: string | null = null;
  /** The bound session this connection carries, once bound (or resumed). */
  session: ClientSession | null = null;
  readonly remoteAddress: string;

  private socket: Socket;
  private state: State = 'header';
  private readonly parser: StreamParser;
  private headerSent = false;
  private headerCount = 0;
  private closing = false;
  private closeSent = false;
  private authAttempts = 0;
  private sasl: SaslMechanism | null = null;
  private hostObj: Host | null = null;
  private readonly queue: Element[] = [];
  private busy = false;
  private handshakeTimer: NodeJS.Timeout | null;
  private readonly log: Logger;

  constructor(
    socket: Socket,
    private readonly env: C2SEnvironment,
    private readonly listener: ListenerOptions,
  ) {
    this.socket = socket;
    this.remoteAddress = socket.remoteAddress ?? 'unknown';
    this.log = env.log.child({ stream: this.id, ip: this.remoteAddress });
    const limits = env.config.limits;
    this.parser = new StreamParser(
      {
        streamStart: (header) => this.onHeader(header),
        stanza: (element) => this.enqueue(element),
        streamEnd: () => this.onStreamEnd(),
        error: (condition, text) => this.onParserError(condition, text),
      },
      {
        maxStanzaBytes: limits.stanza_size_preauth,
        maxDepth: limits.max_depth,
        maxAttributes: limits.max_attributes,
      },
    );
    this.attachSocket(socket);
    this.handshakeTimer = setTimeout(
      () => this.close('connection-timeout', 'Authentication and resource binding took too long'),
      limits.handshake_timeout * 1000,
    );
    this.handshakeTimer.unref();
    env.streams.add(this);
  }

  get jid(): Jid | null {
    return this.session?.jid ?? null;
  }

  get secure(): boolean {
    return this.socket instanceof TLSSocket && this.socket.encrypted === true;
  }

  // ---- socket plumbing -------------------------------------------------

  private attachSocket(socket: Socket): void {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.shape(chunk.length);
      this.parser.write(chunk);
    });
    socket.on('error', (err) => this.log.debug({ err: err.message }, 'socket error'));
    socket.on('close', () => this.onSocketClosed());
  }

  /** SessionConnection.write: serialized XML for the client. */
  write(data: string): void {
    if (this.state === 'closed' || this.closeSent || this.socket.destroyed) return;
    if (!this.corked) {
      // Everything written in this turn of the event loop leaves in one
      // system call (and one TLS record): a stream header with its features,
      // a burst of messages to one recipient. A write is mostly its system
      // call, and each one may wake the client. startTls() flushes
      // <proceed/> itself before the TLS layer takes the socket over.
      const socket = this.socket;
      this.corked = true;
      socket.cork();
      process.nextTick(() => this.flushCorked(socket));
    }
    this.socket.write(data);
    if (this.socket.writableLength > MAX_OUTBOUND_BYTES && !this.closing) {
      // The client is not reading: it cannot make us buffer without bound.
      this.log.warn({ buffered: this.socket.writableLength }, 'client does not read; closing');
      this.socket.destroy();
    }
  }

  /** Sends what write() gathered on `socket` this turn. */
  private flushCorked(socket: Socket): void {
    this.corked = false;
    socket.uncork();
  }

  private sendElement(element: Element): void {
    this.write(serialize(element));
  }

  // ---- ordered processing with backpressure --------------------------

  private enqueue(element: Element): void {
    if (this.state === 'closed' || this.closing) return;
    if (this.busy) {
      this.queue.push(element);
      return;
    }
    this.process(element);
  }

  private process(element: Element): void {
    let result: void | Promise<void>;
    try {
      result = this.handleElement(element);
    } catch (err) {
      this.fail(err);
      return;
    }
    if (result instanceof Promise) {
      this.busy = true;
      this.socket.pause();
      result.then(
        () => this.drain(),
        (err: unknown) => this.fail(err),
      );
    }
  }

  private drain(): void {
    this.busy = false;
    while (!this.busy && this.queue.length && !this.closing) this.process(this.queue.shift()!);
    if (!this.busy && !this.shapingTimer && !this.socket.destroyed) this.socket.resume();
  }

  // ---- traffic shaping ---------------------------------------------------

  /** Bytes the client may still send at once (token bucket, refilled at limits.bytes_per_second). */
  private allowance: number | null = null;
  private allowanceAt = 0;
  private shapingTimer: NodeJS.Timeout | null = null;

  /**
   * A client that sends faster than limits.bytes_per_second is slowed down by
   * reading from its socket less often, rather than buffering its flood.
   * Bursts of two seconds' worth pass at once.
   */
  private shape(bytes: number): void {
    const rate = this.env.config.limits.bytes_per_second;
    if (rate <= 0) return;
    const now = Date.now();
    const burst = rate * 2;
    this.allowance =
      this.allowance === null
        ? burst
        : Math.min(burst, this.allowance + ((now - this.allowanceAt) * rate) / 1000);
    this.allowanceAt = now;
    this.allowance -= bytes;
    if (this.allowance >= 0 || this.shapingTimer) return;
    this.socket.pause();
    const wait = Math.ceil((-this.allowance * 1000) / rate);
    this.shapingTimer = setTimeout(() => {
      this.shapingTimer = null;
      if (!this.busy && !this.socket.destroyed) this.socket.resume();
    }, wait);
    this.shapingTimer.unref();
  }

  private fail(err: unknown): void {
    if (err instanceof StreamError) {
      this.close(err.condition, err.message === err.condition ? undefined : err.message);
    } else {
      this.log.error({ err }, 'internal error while processing a stanza');
      this.close('internal-server-error');
    }
  }

  // ---- stream header ---------------------------------------------------

  private onHeader(header: StreamHeader): void {
    try {
      this.acceptHeader(header);
    } catch (err) {
      this.fail(err);
    }
  }

  private acceptHeader(header: StreamHeader): void {
    const to = (header.attrs.to ?? '').toLowerCase();
    const requestedHost = to || this.env.defaultHost;
    // Reply with a header first, so that any stream error below is well-formed.
    const firstHeader = !this.host;
    const served = this.env.hosts.get(requestedHost)?.kind === 'vhost';
    if (firstHeader) this.host = served ? requestedHost : this.env.defaultHost;
    this.sendHeader(header.attrs.from);

    if (header.localName !== 'stream' || header.namespace !== NS_STREAMS) {
      throw new StreamError(
        'invalid-namespace',
        'The stream element must be {http://etherx.jabber.org/streams}stream',
      );
    }
    if (header.namespaces[''] !== NS_CLIENT) {
      throw new StreamError('invalid-namespace', `This port serves ${NS_CLIENT} streams`);
    }
    const version = header.attrs.version;
    if (!version || Number.parseInt(version.split('.')[0] ?? '0', 10) < 1) {
      throw new StreamError('unsupported-version', 'XMPP 1.0 (version="1.0") is required');
    }
    if (!served) throw new StreamError('host-unknown', `${requestedHost} is not served here`);
    if (requestedHost !== this.host) {
      // The host may not change across a restart: credentials belong to one host.
      throw new StreamError('host-unknown', `This stream was opened for ${this.host}`);
    }
    this.hostObj = this.env.hosts.get(this.host) ?? null;
    this.sendFeatures();
  }

  private sendHeader(peerFrom: string | undefined): void {
    const attrs: Record<string, string> = {
      xmlns: NS_CLIENT,
      'xmlns:stream': NS_STREAMS,
      // RFC 6120 4.3.3: a restarted stream gets a new stream ID. The first
      // header carries the connection id that the logs use.
      id: this.headerCount++ === 0 ? this.id : randomBytes(12).toString('base64url'),
      from: this.host || this.env.defaultHost,
      version: '1.0',
      'xml:lang': 'en',
    };
    if (peerFrom) {
      const jid = Jid.tryParse(peerFrom);
      if (jid) attrs.to = jid.toString();
    }
    const header = new Element('stream:stream', attrs).toString().replace(/\/>$/, '>');
    this.write(`<?xml version='1.0'?>${header}`);
    this.headerSent = true;
  }

  private sendFeatures(): void {
    const features = new Element('stream:features');
    if (this.state === 'header') this.state = this.needsTls() ? 'pre-tls' : 'sasl';
    if (this.state === 'pre-tls' || (this.state === 'sasl' && this.canStartTls())) {
      const starttls = features.c('starttls', { xmlns: NS_TLS });
      if (this.listener.starttlsRequired) starttls.c('required');
    }
    if (this.state === 'sasl') {
      const mechanisms = features.c('mechanisms', { xmlns: NS_SASL });
      for (const m of offeredMechanisms(this.saslContext(), this.env.config.auth.mechanisms)) {
        mechanisms.c('mechanism').t(m.name);
      }
      const bindings = this.channelBindingTypes();
      if (bindings.length) {
        // XEP-0440: tell the client which channel-binding types we support.
        const cb = features.c('sasl-channel-binding', { xmlns: NS_SASL_CB });
        for (const type of bindings) cb.c('channel-binding', { type });
      }
      const extra: Element[] = [];
      void this.hostObj?.events.fire('stream-features/preauth', { stream: this, features: extra });
      for (const e of extra) features.cnode(e);
    } else if (this.state === 'bind') {
      features.c('bind', { xmlns: NS_BIND });
      // draft-cridland-xmpp-session-01: advertised as optional for old clients.
      features.c('session', { xmlns: NS_SESSION }).c('optional');
      const extra: Element[] = [];
      void this.hostObj?.events.fire('stream-features', { stream: this, features: extra });
      for (const e of extra) features.cnode(e);
    }
    this.sendElement(features);
  }

  private canStartTls(): boolean {
    return this.listener.tls === 'starttls' && !this.secure;
  }

  private needsTls(): boolean {
    return this.canStartTls() && this.listener.starttlsRequired;
  }

  // ---- element dispatch -------------------------------------------------

  private handleElement(element: Element): void | Promise<void> {
    const ns = element.attrs.xmlns as string | undefined;
    switch (this.state) {
      case 'pre-tls':
      case 'sasl':
        if (element.name === 'starttls' && ns === NS_TLS) return this.startTls();
        if (this.state === 'pre-tls') {
          throw new StreamError('policy-violation', 'Use STARTTLS first: this server requires encryption');
        }
        if (ns === NS_SASL) return this.handleSasl(element);
        if (element.name === 'iq' && ns === NS_CLIENT) return this.handlePreAuthIq(element);
        throw new StreamError('not-authorized', 'Authenticate first');
      case 'bind':
        if (element.name === 'iq' && ns === NS_CLIENT) return this.handleBindIq(element);
        if (element.name === 'message' || element.name === 'presence') {
          throw new StreamError('not-authorized', 'Bind a resource first');
        }
        return this.handleStreamElement(element);
      case 'bound':
        if (
          (element.name === 'message' || element.name === 'presence' || element.name === 'iq') &&
          ns === NS_CLIENT
        ) {
          const session = this.session!;
          session.stanzasIn++;
          if (element.name === 'iq' && isSessionIq(element)) {
            session.send(iqResult(element));
            return;
          }
          return this.env.router.fromClient(session, element);
        }
        return this.handleStreamElement(element);
      default:
        throw new StreamError('not-authorized');
    }
  }

  private handleStreamElement(element: Element): void | Promise<void> {
    const event: StreamElementEvent = {
      stream: this,
      element,
      send: (e) => this.sendElement(e),
      resume: (session) => this.resume(session),
      adoptMoved: (jid, prepare) => this.adoptMoved(jid, prepare),
    };
    const handled = this.hostObj?.events.fire('stream-element', event);
    const check = (done: boolean | undefined) => {
      if (!done)
        throw new StreamError('unsupported-stanza-type', `<${element.name}/> is not understood here`);
    };
    return handled instanceof Promise ? handled.then(check) : check(handled);
  }

  // ---- STARTTLS ------------------------------------------------------------

  private startTls(): void {
    if (!this.canStartTls()) throw new StreamError('policy-violation', 'TLS is already active');
    this.sendElement(new Element('proceed', { xmlns: NS_TLS }));
    this.state = 'tls-handshake';
    const plain = this.socket;
    // <proceed/> must be on the wire before TLS wraps the socket.
    if (this.corked) this.flushCorked(plain);
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    plain.removeAllListeners('error');
    const secure = new TLSSocket(plain, {
      isServer: true,
      secureContext: this.env.certs.contextFor(this.host),
      SNICallback: this.env.certs.sniCallback,
    });
    // RFC 6120 5.3.3: after TLS both sides restart the stream. Resetting now
    // also discards any plaintext the client pipelined after <starttls/>
    // (command injection, CVE-2011-0411 style).
    this.parser.reset();
    secure.once('secure', () => {
      this.state = 'header';
      this.log.debug({ protocol: secure.getProtocol() }, 'TLS established');
    });
    this.attachSocket(secure);
    secure.on('error', (err) => {
      // Only a failure before 'secure' is a handshake failure; later errors
      // (a client resetting the connection) are logged by attachSocket.
      if (this.state === 'tls-handshake') this.log.info({ err: err.message }, 'TLS handshake failed');
      secure.destroy();
    });
  }

  // ---- SASL --------------------------------------------------------------

  private channelBindingTypes(): ChannelBindingType[] {
    if (!(this.socket instanceof TLSSocket) || !this.secure) return [];
    const version = this.socket.getProtocol();
    // RFC 9266: tls-exporter is only safe on TLS 1.3 here (we cannot see
    // whether a TLS 1.2 session used extended master secret); tls-unique is
    // undefined for TLS 1.3 (RFC 8446 C.5).
    const types: ChannelBindingType[] = ['tls-server-end-point'];
    if (version === 'TLSv1.3') types.unshift('tls-exporter');
    else types.push('tls-unique');
    return types;
  }

  private channelBindingData(type: ChannelBindingType): Buffer | null {
    const socket = this.socket;
    if (!(socket instanceof TLSSocket) || !this.secure) return null;
    switch (type) {
      case 'tls-exporter':
        return socket.getProtocol() === 'TLSv1.3'
          ? socket.exportKeyingMaterial(32, 'EXPORTER-Channel-Binding', Buffer.alloc(0))
          : null;
      case 'tls-server-end-point':
        return this.env.certs.certificateFor(socket.servername || this.host).tlsServerEndPoint;
      case 'tls-unique':
        return socket.getProtocol() === 'TLSv1.3' ? null : this.tlsUnique();
    }
  }

  /** RFC 5929 3.1: the first Finished message of the handshake, the client's for a full handshake. */
  private tlsUnique(): Buffer | null {
    const socket = this.socket;
    if (!(socket instanceof TLSSocket) || socket.isSessionReused()) return null;
    return socket.getPeerFinished() ?? null;
  }

  private saslCtx: SaslContext | null = null;
  /** Writes of this event-loop turn are being gathered (see write()). */
  private corked = false;

  /** One SASL context per TLS state of the stream. */
  private saslContext(): SaslContext {
    if (this.saslCtx && this.saslCtx.secure === this.secure) return this.saslCtx;
    this.saslCtx = this.makeSaslContext();
    return this.saslCtx;
  }

  private makeSaslContext(): SaslContext {
    const bindings: SaslContext['channelBindings'] = {};
    for (const type of this.channelBindingTypes()) {
      // Asked for by every -PLUS mechanism offered and by XEP-0440: compute once per TLS state.
      let data: Buffer | null | undefined;
      bindings[type] = () => (data === undefined ? (data = this.channelBindingData(type)) : data);
    }
    // COMPAT: slixmpp (Debian 1.8) always asks for tls-unique, also on TLS 1.3
    // where RFC 8446 C.5 leaves it undefined. OpenSSL on both ends takes the
    // client's Finished message, which is unique per connection, so we accept
    // it without advertising it (XEP-0440 lists only the sound types).
    if (this.secure && !bindings['tls-unique']) bindings['tls-unique'] = () => this.tlsUnique();
    return {
      secure: this.secure,
      channelBindings: bindings,
      scramIterations: this.env.config.auth.scram_iterations,
      lookup: async (username) => {
        let local: string;
        try {
          local = prepareLocal(username);
        } catch {
          return null;
        }
        return this.env.accounts.getCredentials(this.host, local);
      },
      authzidAllowed: (authcid, authzid) => {
        const jid = Jid.tryParse(authzid);
        return jid !== null && jid.isBare && jid.domain === this.host && jid.local === safePrep(authcid);
      },
    };
  }

  private async handleSasl(element: Element): Promise<void> {
    const text = element.getText().trim();
    if (element.name === 'abort') {
      this.sasl = null;
      this.sendSaslFailure('aborted');
      return;
    }
    if (element.name === 'auth') {
      if (this.sasl) this.sasl = null; // a new attempt replaces an unfinished one
      const name = element.attrs.mechanism as string | undefined;
      // The same context that listed the mechanisms: it remembers whether
      // -PLUS was offered, which the SCRAM downgrade check relies on.
      const context = this.saslContext();
      const factory = offeredMechanisms(context, this.env.config.auth.mechanisms).find(
        (m) => m.name === name,
      );
      if (!factory) {
        this.sendSaslFailure('invalid-mechanism', `Mechanism ${name ?? '(none)'} is not offered`);
        return;
      }
      const verdict = this.env.throttle.check(this.remoteAddress);
      if (!verdict.allowed) {
        this.sendSaslFailure(
          'temporary-auth-failure',
          `Too many failed logins from your address; try again in ${verdict.retryAfterSeconds ?? 60} s`,
        );
        return;
      }
      if (verdict.delayMs > 0) await delay(verdict.delayMs);
      this.sasl = factory.create(context);
      const input = text === '' ? null : text === '=' ? Buffer.alloc(0) : decodeBase64(text);
      if (input === undefined) return this.saslDone({ kind: 'failure', condition: 'incorrect-encoding' });
      return this.saslDone(await this.sasl.step(input));
    }
    if (element.name === 'response') {
      if (!this.sasl) {
        this.sendSaslFailure('malformed-request', 'No authentication exchange is in progress');
        return;
      }
      const input = text === '' ? Buffer.alloc(0) : decodeBase64(text);
      if (input === undefined) return this.saslDone({ kind: 'failure', condition: 'incorrect-encoding' });
      return this.saslDone(await this.sasl.step(input));
    }
    throw new StreamError('unsupported-stanza-type', `<${element.name}/> is not a SASL element`);
  }

  private saslDone(step: SaslStep): void {
    if (this.closing) return;
    if (step.kind === 'challenge') {
      this.sendElement(new Element('challenge', { xmlns: NS_SASL }).t(step.data.toString('base64')));
      return;
    }
    this.sasl = null;
    if (step.kind === 'failure') {
      this.env.throttle.recordFailure(this.remoteAddress);
      this.log.info({ condition: step.condition }, 'authentication failed');
      this.sendSaslFailure(step.condition, step.text);
      if (++this.authAttempts >= MAX_AUTH_ATTEMPTS)
        this.close('policy-violation', 'Too many failed attempts');
      return;
    }
    this.env.throttle.recordSuccess(this.remoteAddress);
    this.username = safePrep(step.username);
    const success = new Element('success', { xmlns: NS_SASL });
    if (step.data) success.t(step.data.length ? step.data.toString('base64') : '=');
    this.sendElement(success);
    this.log.info({ user: `${this.username}@${this.host}` }, 'authenticated');
    // RFC 6120 6.4.6: the stream restarts; the authenticated limits apply now.
    this.state = 'bind';
    const limits = this.env.config.limits;
    this.parser.reset();
    this.parser.setLimits({
      maxStanzaBytes: limits.stanza_size,
      maxDepth: limits.max_depth,
      maxAttributes: limits.max_attributes,
    });
    this.headerSent = false;
  }

  private sendSaslFailure(condition: string, text?: string): void {
    const failure = new Element('failure', { xmlns: NS_SASL });
    failure.c(condition);
    if (text) failure.c('text', { 'xml:lang': 'en' }).t(text);
    this.sendElement(failure);
  }

  private handlePreAuthIq(iq: Element): void | Promise<void> {
    const payload = childElements(iq)[0];
    const host = this.hostObj;
    const reply = (p?: Element) => this.sendElement(iqResult(iq, p));
    const error = (condition: StanzaErrorCondition, opts?: StanzaErrorOptions) => {
      const e = errorReply(iq, condition, opts);
      if (e) this.sendElement(e);
    };
    if (!payload || !iq.attrs.id || (iq.attrs.type !== 'get' && iq.attrs.type !== 'set')) {
      if (iq.attrs.type !== 'result' && iq.attrs.type !== 'error') error('bad-request');
      return;
    }
    const handled =
      host?.events.fire('preauth-iq', { stream: this, stanza: iq, payload, reply, error }) ?? false;
    const fallback = (done: boolean) => {
      if (!done) error('service-unavailable', { text: 'Authenticate first' });
    };
    return handled instanceof Promise ? handled.then(fallback) : fallback(handled);
  }

  // ---- resource binding ----------------------------------------------------

  private async handleBindIq(iq: Element): Promise<void> {
    const payload = childElements(iq)[0];
    const bounce = (condition: StanzaErrorCondition, text?: string) => {
      const e = errorReply(iq, condition, { text });
      if (e) this.sendElement(e);
    };
    if (iq.attrs.type !== 'set' || !payload || payload.name !== 'bind' || payload.attrs.xmlns !== NS_BIND) {
      if (iq.attrs.type === 'get' || iq.attrs.type === 'set')
        bounce('not-authorized', 'Bind a resource first');
      return;
    }
    const requested = payload.getChildText('resource');
    let resource: string;
    try {
      resource = requested ? prepareResource(requested) : `chorus-${randomBytes(6).toString('base64url')}`;
    } catch (err) {
      bounce('bad-request', err instanceof JidError ? err.message : 'Invalid resource');
      return;
    }
    const jid = Jid.of(this.username!, this.host, resource);
    const session = new ClientSession(jid, this.hostObj!, this, this.env.directory, this.log);
    const { sessions, limits } = this.env.config;
    const outcome = await this.env.directory.bind(session, sessions.conflict, limits.max_resources_per_user);
    if (this.closing) {
      if (outcome.ok) await this.env.directory.unbind(session);
      return;
    }
    if (!outcome.ok) {
      if (outcome.reason === 'conflict') bounce('conflict', `Resource ${resource} is in use`);
      else bounce('resource-constraint', 'Too many resources are connected for this account');
      return;
    }
    if (outcome.replaced)
      outcome.replaced.close('conflict', 'Replaced by a new connection with the same resource');
    this.session = session;
    this.state = 'bound';
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    this.sendElement(iqResult(iq, new Element('bind', { xmlns: NS_BIND }).c('jid').t(jid.toString()).root()));
    this.log.info({ jid: jid.toString() }, 'resource bound');
    await this.hostObj?.events.fire('resource-bind', { session });
  }

  /**
   * Stream management resumption: this authenticated, unbound connection
   * takes over a held session of the same account.
   */
  private resume(target: Session): boolean {
    if (this.state !== 'bind' || !(target instanceof ClientSession) || target.isEnded) return false;
    if (target.jid.local !== this.username || target.host !== this.host) return false;
    this.session = target;
    target.attach(this);
    this.state = 'bound';
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    this.log.info({ jid: target.jid.toString() }, 'session resumed');
    return true;
  }

  /**
   * Cluster resumption: binds on this authenticated, unbound connection a
   * session of the same account that another node handed over. The bind
   * replaces the other node's directory entry whatever the conflict policy
   * (it is the same session, not a competing one).
   */
  private async adoptMoved(
    jid: Jid,
    prepare: (session: ClientSession) => void,
  ): Promise<ClientSession | null> {
    if (this.state !== 'bind' || this.closing || !this.hostObj) return null;
    if (jid.local !== this.username || jid.domain !== this.host) return null;
    const session = new ClientSession(jid, this.hostObj, this, this.env.directory, this.log);
    prepare(session);
    const { limits } = this.env.config;
    const outcome = await this.env.directory.bind(session, 'replace_old', limits.max_resources_per_user);
    if (!outcome.ok) return null;
    if (outcome.replaced)
      outcome.replaced.close('conflict', 'Replaced by a session resumed from another node');
    this.log.info({ jid: jid.toString() }, 'session resumed from another node');
    if (this.closing) {
      // The connection went away while binding: the session is bound here
      // now, and goes the way of any session whose connection dropped (held
      // for resumption when stream management asks for it).
      void session.connectionLost(this, 'disconnected');
    } else {
      this.session = session;
      this.state = 'bound';
      if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
      this.handshakeTimer = null;
    }
    await this.hostObj.events.fire('resource-bind', { session });
    return session;
  }

  /** SessionConnection.abandon: the session moved to another connection. */
  abandon(condition: StreamErrorCondition, text: string): void {
    this.session = null;
    this.close(condition, text);
  }

  // ---- closing -------------------------------------------------------------

  private onParserError(condition: ParserErrorCondition, text: string): void {
    this.close(condition as StreamErrorCondition, text);
  }

  private onStreamEnd(): void {
    // The client closed its stream: answer with ours and end the connection.
    this.close();
  }

  /** Closes the stream, with a stream error when a condition is given. */
  close(condition?: StreamErrorCondition, text?: string): void {
    if (this.closing || this.state === 'closed') return;
    this.closing = true;
    if (condition) {
      if (!this.headerSent && this.state !== 'tls-handshake') this.sendHeader(undefined);
      this.log.info({ condition, text }, 'closing stream with an error');
      this.sendElement(streamErrorElement(condition, text));
    }
    if (this.state !== 'tls-handshake') this.write('</stream:stream>');
    // Nothing may follow the closing tag; stanzas still routed to the session
    // go to its send listeners (stream management rescues them).
    this.closeSent = true;
    const socket = this.socket;
    if (this.state === 'tls-handshake') {
      // Nothing can be said inside an unfinished TLS handshake: just drop it.
      socket.destroy();
    } else {
      socket.end();
      setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref();
    }
    void this.connectionEnded(condition === 'conflict' ? 'replaced' : condition ? 'error' : 'closed');
  }

  private onSocketClosed(): void {
    void this.connectionEnded('disconnected');
    this.state = 'closed';
  }

  private endPromise: Promise<void> | null = null;
  /** After close(): settles once the connection is done and its session ended or was held. */
  get ended(): Promise<void> {
    return this.endPromise ?? Promise.resolve();
  }

  private connectionEnded(how: ConnectionEnd): Promise<void> {
    this.endPromise ??= this.finishConnection(how);
    return this.endPromise;
  }

  private async finishConnection(how: ConnectionEnd): Promise<void> {
    this.closing = true;
    if (this.shapingTimer) clearTimeout(this.shapingTimer);
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.env.streams.delete(this);
    const session = this.session;
    this.session = null;
    if (session) await session.connectionLost(this, how);
  }
}

function isSessionIq(iq: Element): boolean {
  const payload = childElements(iq)[0];
  return (
    iq.attrs.type === 'set' &&
    !iq.attrs.to &&
    payload?.name === 'session' &&
    payload.attrs.xmlns === NS_SESSION
  );
}

function safePrep(username: string): string {
  try {
    return prepareLocal(username);
  } catch {
    return username;
  }
}

/** Strict base64 (RFC 6120 6.4.2 wants incorrect-encoding for anything else). */
function decodeBase64(text: string): Buffer | undefined {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) return undefined;
  return Buffer.from(text, 'base64');
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
