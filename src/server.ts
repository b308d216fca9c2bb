// The server: configuration, storage, certificates, hosts with their
// modules, the router and the listeners, with start, reload and stop.
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { createServer as createTcpServer, type Server as NetServer, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import type { Element } from 'ltx';
import { InProcessDirectory, type SessionDirectory } from './cluster/directory.ts';
import { RedisCluster } from './cluster/redis-cluster.ts';
import { modulesForHost, type ChorusConfig, type ListenerConfig } from './config/index.ts';
import { Host } from './host.ts';
import { Jid } from './jid.ts';
import { createLogger, type Logger } from './log.ts';
import type { AccountService, ModuleDefinition, SessionService } from './modules/api.ts';
import {
  loadModule,
  orderByDependencies,
  resolveModule,
  validateOptions,
  type LoadedModule,
} from './modules/loader.ts';
import { CertificateStore } from './net/certs.ts';
import { Router } from './router/router.ts';
import { setScramFakeSaltSecret } from './sasl/mechanisms.ts';
import { AuthThrottle } from './sasl/throttle.ts';
import { AddressLimiter } from './util/address-limiter.ts';
import { Accounts } from './storage/accounts.ts';
import { openStorage } from './storage/index.ts';
import type { StorageDriver } from './storage/types.ts';
import { ClientSession } from './session/client-session.ts';
import { C2SStream } from './stream/c2s.ts';
import type { C2SEnvironment } from './stream/environment.ts';

export interface ServerOptions {
  /** Used in messages about the configuration. */
  configPath?: string;
  log?: Logger;
  /** Replaces the configured storage (tests). */
  storage?: StorageDriver;
}

export interface BoundListener {
  config: ListenerConfig;
  server: NetServer;
  port: number;
  address: string;
}

export class Server implements C2SEnvironment {
  readonly hosts = new Map<string, Host>();
  readonly streams = new Set<C2SStream>();
  directory: SessionDirectory = new InProcessDirectory();
  /** Set when the node is part of a cluster (cluster.redis_url). */
  cluster: RedisCluster | null = null;
  private metricsTimer: NodeJS.Timeout | null = null;
  readonly router: Router;
  readonly certs: CertificateStore;
  readonly accounts: Accounts;
  readonly storage: StorageDriver;
  readonly log: Logger;
  throttle: AuthThrottle;
  private connectionLimiter: AddressLimiter | null;
  listeners: BoundListener[] = [];
  private readonly modules = new Map<string, Map<string, LoadedModule>>();
  private stopping = false;

  constructor(
    public config: ChorusConfig,
    private readonly opts: ServerOptions = {},
  ) {
    this.log = opts.log ?? createLogger(config.log);
    this.storage = opts.storage ?? openStorage(config.storage, (message) => this.log.info(message));
    this.accounts = new Accounts(this.storage, config.auth.scram_iterations);
    this.certs = new CertificateStore({ log: (msg) => this.log.info(msg) });
    this.throttle = makeThrottle(config);
    this.connectionLimiter = makeConnectionLimiter(config);
    this.router = new Router({
      hosts: this.hosts,
      directory: this.directory,
      userExists: (host, username) => this.accounts.exists(host, username),
      log: this.log,
    });
  }

  get defaultHost(): string {
    return this.config.hosts[0]!.domain;
  }

  /** Loads certificates and modules, then opens the listeners. */
  async start(): Promise<void> {
    await this.loadServerSecrets();
    await this.certs.load(this.certSources(), this.config.certs.dir);
    if (this.config.cluster.redis_url) await this.joinCluster(this.config.cluster.redis_url);
    for (const hostConfig of this.config.hosts) await this.addHost(hostConfig.domain);
    // A previous run under this node id may have died with sessions that
    // nobody reported; the modules are loaded now to do it.
    if (this.cluster) this.sessionsLost(this.cluster.nodeId, this.cluster.takeLeftovers());
    for (const listener of this.config.listeners) this.listeners.push(await this.listen(listener));
    this.log.info(
      {
        hosts: [...this.hosts.keys()],
        listeners: this.listeners.map((l) => `${l.config.tls}:${l.address}:${l.port}`),
      },
      'Chorus is ready',
    );
  }

  /** Switches to the Redis session directory and node bus; before any module loads. */
  private async joinCluster(redisUrl: string): Promise<void> {
    const { cluster: conf } = this.config;
    const cluster = await RedisCluster.start({
      nodeId: conf.node_id ?? `${hostname()}-${process.pid}`,
      redisUrl,
      prefix: conf.prefix,
      heartbeatMs: conf.heartbeat_ms,
      ...(conf.node_ttl_ms !== undefined ? { nodeTtlMs: conf.node_ttl_ms } : {}),
      log: this.log,
    });
    cluster.setHandlers({
      reroute: (stanza) => this.logRouting(this.router.route(stanza)),
      route: (stanza) => this.logRouting(this.router.route(stanza, null, true)),
      sessionsReaped: (node, sessions) => this.sessionsLost(node, sessions),
    });
    this.cluster = cluster;
    this.directory = cluster;
    this.router.useDirectory(cluster, (stanza, to) => {
      const owner = cluster.ownerOf(to.bareString());
      if (owner === cluster.nodeId) return false;
      cluster.forward(owner, stanza);
      return true;
    });
    if (conf.metrics_log_seconds > 0) {
      this.metricsTimer = setInterval(
        () => this.log.info({ ...cluster.metrics(true), router: this.router.counters }, 'cluster metrics'),
        conf.metrics_log_seconds * 1000,
      );
      this.metricsTimer.unref();
    }
  }

  /** Sessions of a node that stopped without ending them: modules tell whoever needs to know. */
  private sessionsLost(node: string, sessions: { fullJid: string; wasAvailable: boolean }[]): void {
    for (const { fullJid, wasAvailable } of sessions) {
      const jid = Jid.tryParse(fullJid);
      const host = jid && this.hosts.get(jid.domain);
      if (!jid || !host) continue;
      const fired = host.events.fire('remote-session-lost', { jid, wasAvailable, node });
      if (fired instanceof Promise) {
        fired.catch((err: unknown) =>
          this.log.error({ err, jid: fullJid }, 'remote-session-lost handler failed'),
        );
      }
    }
  }

  private logRouting(result: void | Promise<void>): void {
    if (result instanceof Promise) {
      result.catch((err: unknown) => this.log.error({ err }, 'routing a stanza failed'));
    }
  }

  /**
   * The secret behind the fake SCRAM salts of unknown users must survive
   * restarts, or a changing salt would reveal that a user does not exist.
   */
  private async loadServerSecrets(): Promise<void> {
    const secrets = this.storage.keyval<string>('*', 'server-secrets');
    let secret = await secrets.get('scram-fake-salt');
    if (!secret) {
      secret = randomBytes(32).toString('base64');
      await secrets.set('scram-fake-salt', secret);
    }
    setScramFakeSaltSecret(Buffer.from(secret, 'base64'));
  }

  private certSources() {
    return this.config.hosts.map((h) => ({ domain: h.domain, cert: h.tls?.cert, key: h.tls?.key }));
  }

  private async addHost(domain: string, plan?: PlannedModule[]): Promise<void> {
    const host = new Host(domain);
    this.router.installDefaults(host);
    this.hosts.set(domain, host);
    await this.loadHostModules(host, plan);
  }

  /**
   * Closes the streams of one host (or all) and waits until their sessions
   * have ended, so modules still see every resource-unbind.
   */
  private async closeStreams(
    domain: string | null,
    condition: 'host-gone' | 'system-shutdown',
    text: string,
  ): Promise<void> {
    const ending = [...this.streams]
      .filter((s) => domain === null || s.host === domain)
      .map((s) => {
        s.close(condition, text);
        return s.ended;
      });
    await Promise.race([Promise.all(ending), new Promise((r) => setTimeout(r, 5000).unref())]);
  }

  /** Resolves, orders and validates a host's modules without loading them. */
  private async planHostModules(config: ChorusConfig, domain: string): Promise<PlannedModule[]> {
    const hostConfig = config.hosts.find((h) => h.domain === domain)!;
    const definitions = [];
    for (const name of modulesForHost(config, hostConfig)) definitions.push(await resolveModule(name));
    return orderByDependencies(definitions, domain).map((def) => ({
      def,
      options: validateOptions(def, config.module_options[def.name], `module_options.${def.name}`),
    }));
  }

  private async loadHostModules(host: Host, plan?: PlannedModule[]): Promise<void> {
    const planned = plan ?? (await this.planHostModules(this.config, host.domain));
    const loaded = new Map<string, LoadedModule>();
    this.modules.set(host.domain, loaded);
    for (const { def, options } of planned) {
      loaded.set(def.name, await loadModule(host, def, options, this.moduleEnvironment(), loaded));
    }
  }

  private async unloadHostModules(domain: string): Promise<void> {
    const loaded = this.modules.get(domain);
    if (!loaded) return;
    for (const mod of [...loaded.values()].reverse()) await mod.unload();
    this.modules.delete(domain);
  }

  /** The modules loaded on a host, by name (for `chorus check` and tests). */
  loadedModules(domain: string): ReadonlyMap<string, LoadedModule> {
    return this.modules.get(domain) ?? new Map();
  }

  private moduleEnvironment() {
    const sessions: SessionService = {
      resources: (bare) => this.directory.resources(bare),
      get: (full) => this.directory.get(full),
    };
    return {
      log: this.log,
      storage: this.storage,
      sessions,
      cluster: this.cluster,
      accountsFor: (host: string): AccountService => ({
        exists: (u) => this.accounts.exists(host, u),
        create: (u, p) => this.accounts.create(host, u, p),
        setPassword: (u, p) => this.accounts.setPassword(host, u, p),
        delete: (u) => this.accounts.delete(host, u),
      }),
      addServiceHost: (domain: string) => {
        if (this.hosts.has(domain))
          throw new Error(`${domain} is already served; a service needs its own domain`);
        const service = new Host(domain, 'service');
        this.router.installDefaults(service);
        this.hosts.set(domain, service);
        return {
          host: service,
          remove: () => {
            if (this.hosts.get(domain) === service) this.hosts.delete(domain);
            service.cancelPendingIqs();
          },
        };
      },
      // A module's send() is fire-and-forget: a failing handler downstream
      // is logged, never left as an unhandled rejection.
      route: (stanza: Element) => this.logRouting(this.router.route(stanza, null)),
    };
  }

  private async listen(config: ListenerConfig): Promise<BoundListener> {
    const options = {
      tls: config.tls,
      starttlsRequired: config.tls === 'starttls' && config.starttls_required,
    };
    const accept = (socket: Socket) => {
      if (this.stopping) {
        socket.destroy();
        return;
      }
      const address = socket.remoteAddress ?? '';
      if (this.connectionLimiter && !this.connectionLimiter.allow(address)) {
        // Dropped before any XML: a flood of connections costs us almost nothing.
        this.log.warn({ ip: address }, 'too many new connections from this address; dropped');
        socket.destroy();
        return;
      }
      socket.setNoDelay(true);
      socket.setKeepAlive(true, 60_000);
      new C2SStream(socket, this, options);
    };
    const server =
      config.tls === 'direct'
        ? createTlsServer(
            {
              ...this.certs.defaultContextOptions(),
              SNICallback: this.certs.sniCallback,
              // XEP-0368: direct TLS clients negotiate ALPN "xmpp-client".
              ALPNProtocols: ['xmpp-client'],
            },
            accept,
          )
        : createTcpServer(accept);
    server.on('tlsClientError', (err: Error) => this.log.debug({ err: err.message }, 'TLS handshake failed'));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.port, config.address, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.log.error({ err }, 'listener error'));
    const addr = server.address();
    const port = typeof addr === 'object' && addr ? addr.port : config.port;
    return { config, server, port, address: config.address };
  }

  /**
   * SIGHUP: re-read certificates and apply a new configuration without
   * dropping sessions. Hosts and modules are reloaded; listeners stay as
   * they are (changing ports needs a restart, and says so).
   */
  async reload(next: ChorusConfig): Promise<void> {
    await this.certs.reload(
      next.hosts.map((h) => ({ domain: h.domain, cert: h.tls?.cert, key: h.tls?.key })),
      next.certs.dir,
    );
    for (const l of this.listeners) {
      if (l.config.tls === 'direct' && 'setSecureContext' in l.server) {
        (l.server as unknown as { setSecureContext(o: object): void }).setSecureContext({
          ...this.certs.defaultContextOptions(),
          SNICallback: this.certs.sniCallback,
          ALPNProtocols: ['xmpp-client'],
        });
      }
    }
    if (JSON.stringify(next.listeners) !== JSON.stringify(this.config.listeners)) {
      this.log.warn('listener changes take effect at the next restart');
    }
    if (JSON.stringify(next.storage) !== JSON.stringify(this.config.storage)) {
      this.log.warn('storage changes take effect at the next restart');
    }
    // Check every host's modules before touching the running ones, so that a
    // mistake in the new configuration leaves the server as it was.
    const plans = new Map<string, PlannedModule[]>();
    for (const h of next.hosts) plans.set(h.domain, await this.planHostModules(next, h.domain));
    const previous = this.config;
    this.config = { ...next, listeners: previous.listeners, storage: previous.storage };
    this.throttle = makeThrottle(this.config);
    this.connectionLimiter = makeConnectionLimiter(this.config);
    const vhosts = [...this.hosts.values()].filter((h) => h.kind === 'vhost').map((h) => h.domain);
    for (const domain of vhosts) {
      if (!plans.has(domain)) await this.closeStreams(domain, 'host-gone', 'This host is no longer served');
      await this.unloadHostModules(domain);
      if (!plans.has(domain)) this.hosts.delete(domain);
    }
    for (const [domain, plan] of plans) {
      const existing = this.hosts.get(domain);
      if (existing) await this.loadHostModules(existing, plan);
      else await this.addHost(domain, plan);
    }
    const wanted = [...plans.keys()];
    this.log.info({ hosts: [...wanted] }, 'configuration reloaded');
  }

  /** Closes every stream with `system-shutdown`, flushes storage, closes listeners. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    const closing = this.listeners.map(
      (l) => new Promise<void>((resolve) => l.server.close(() => resolve())),
    );
    // The other nodes stop routing here first; this node still delivers what is in flight.
    await this.cluster?.leave();
    await this.closeStreams(null, 'system-shutdown', 'The server is shutting down');
    // Sessions held without a connection (awaiting resumption) end too, so
    // their modules can save what they queued.
    await Promise.all(
      [...this.directory.all()].map((session) => {
        session.close('system-shutdown');
        return session instanceof ClientSession ? session.ended : undefined;
      }),
    );
    for (const domain of [...this.hosts.keys()]) await this.unloadHostModules(domain);
    for (const host of this.hosts.values()) host.cancelPendingIqs();
    if (this.metricsTimer) clearInterval(this.metricsTimer);
    await this.cluster?.stop();
    await this.storage.flush();
    await this.storage.close();
    // Give sockets a moment to flush their closing tags, then stop waiting.
    await Promise.race([Promise.all(closing), new Promise((r) => setTimeout(r, 1000).unref())]);
    this.log.info('stopped');
  }
}

interface PlannedModule {
  def: ModuleDefinition;
  options: unknown;
}

function makeConnectionLimiter(config: ChorusConfig): AddressLimiter | null {
  const perMinute = config.limits.connections_per_minute;
  return perMinute > 0 ? new AddressLimiter(perMinute, 60_000) : null;
}

function makeThrottle(config: ChorusConfig): AuthThrottle {
  const t = config.auth.throttle;
  return new AuthThrottle({
    delayAfter: t.delay_after,
    delayMs: t.delay_ms,
    maxDelayMs: t.max_delay_ms,
    banAfter: t.ban_after,
    banSeconds: t.ban_seconds,
    windowSeconds: t.window_seconds,
  });
}
