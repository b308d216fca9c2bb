// Cluster mode (DESIGN.md section 6): the session directory and the node bus
// on Redis. Several Chorus nodes share one Redis; each keeps its own sessions
// in an in-process directory for the fast path and publishes them to Redis so
// that the others can route to them.
//
// Redis keys (all under the configured prefix, default "chorus:"):
//   u:<bare JID>   hash, resource -> DirectoryEntry JSON (per-user index)
//   n:<node>       set of the full JIDs bound on that node (per-node index)
//   nodes          set of node ids that have ever registered and not been reaped
//   alive:<node>   heartbeat key with a TTL; a node without one is dead
//   reap:<node>    lock so one survivor cleans a dead node's sessions
// Channels: bus:<node> (stanzas and requests for that node), broadcast (to all).
//
// Every change to a user's hash runs in a Lua script, so two devices binding
// the same resource on two nodes at once leave exactly one entry. Entries
// name their node; an entry whose node has no heartbeat key is ignored by
// every lookup and removed in batches by whichever survivor takes the reap
// lock, reading the dead node's index rather than scanning keys.
import { randomBytes } from 'node:crypto';
import { parse, type Element } from 'ltx';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Session } from '../session/session.ts';
import { ClientSession } from '../session/client-session.ts';
import type { JsonValue } from '../storage/types.ts';
import type { StreamErrorCondition } from '../stream/errors.ts';
import {
  InProcessDirectory,
  type BindOutcome,
  type ConflictPolicy,
  type MaybePromise,
  type SessionDirectory,
} from './directory.ts';
import { RemoteSession, type DirectoryEntry, type RemoteSessionTransport } from './remote-session.ts';

export interface RedisClusterOptions {
  nodeId: string;
  redisUrl: string;
  prefix?: string;
  /** How often the node renews its heartbeat and looks for dead nodes. */
  heartbeatMs?: number;
  /** How long a heartbeat lasts: a node silent this long is dead. */
  nodeTtlMs?: number;
  log: Logger;
}

/** What the server does with messages that arrive over the bus. */
export interface BusHandlers {
  /** A stanza whose local session is gone: route it again as undeliverable here. */
  reroute(stanza: Element): void;
  /** A stanza forwarded for routing on this node (service affinity). */
  route(stanza: Element): void;
  /** Sessions of a dead node were removed from the directory (on the node that removed them). */
  sessionsReaped?(node: string, sessions: { fullJid: string; wasAvailable: boolean }[]): void;
}

type BusMessage =
  | { k: 'i'; u: string; from: string; ts: number }
  | { k: 's'; to: string; sid: string; x: string; ts: number }
  | { k: 'c'; to: string; sid: string; cond?: StreamErrorCondition; text?: string; ts: number }
  | { k: 'r'; x: string; ts: number }
  | { k: 'b'; topic: string; d: JsonValue; from: string; ts: number }
  | { k: 'q'; id: string; topic: string; d: JsonValue; from: string; ts: number }
  | { k: 'a'; id: string; d: JsonValue | null; err?: string; ts: number };

type BroadcastHandler = (data: JsonValue, fromNode: string) => void;
type RequestHandler = (data: JsonValue, fromNode: string) => Promise<JsonValue | null> | JsonValue | null;

// KEYS: user hash, this node's index. ARGV: resource, entry, policy, max, full JID, prefix, node.
// Entries of dead nodes neither conflict nor count towards the limit; they are dropped here.
const BIND_SCRIPT = `
local function alive(json)
  local node = cjson.decode(json).n
  return node == ARGV[7] or redis.call('EXISTS', ARGV[6] .. 'alive:' .. node) == 1
end
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing and not alive(existing) then
  redis.call('HDEL', KEYS[1], ARGV[1])
  existing = false
end
if existing then
  if ARGV[3] == 'refuse_new' then return {'conflict'} end
  local old = cjson.decode(existing)
  redis.call('SREM', ARGV[6] .. 'n:' .. old.n, ARGV[5])
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[5])
  return {'replaced', existing}
end
local count = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if alive(all[i + 1]) then count = count + 1 else redis.call('HDEL', KEYS[1], all[i]) end
end
if count >= tonumber(ARGV[4]) then return {'too-many'} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[5])
return {'ok'}
`;

// KEYS: user hash, node index. ARGV: resource, session id, full JID. Removes only that session's entry.
const UNBIND_SCRIPT = `
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing and cjson.decode(existing).s == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[3])
  return 1
end
return 0
`;

// KEYS: user hash. ARGV: resource, session id, new entry. Updates only that session's entry.
const UPDATE_SCRIPT = `
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing and cjson.decode(existing).s == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
`;

// KEYS: user hash. ARGV: resource, dead node. Removes the entry if it still
// names the dead node; returns the removed entry, or false.
const REAP_SCRIPT = `
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing and cjson.decode(existing).n == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return existing
end
return false
`;

interface Scripts {
  chorusBind(...args: (string | number)[]): Promise<[string, string?]>;
  chorusUnbind(...args: (string | number)[]): Promise<number>;
  chorusUpdate(...args: (string | number)[]): Promise<number>;
  chorusReap(...args: (string | number)[]): Promise<string | null>;
}

const REAP_BATCH = 200;

/**
 * Remote sessions of a user are cached on each node (routing a message would
 * otherwise cost a Redis round trip or three). Every change to a user's
 * entries is broadcast, and the other nodes drop their copy; this TTL only
 * bounds the damage of an invalidation lost with a Redis reconnection.
 */
const CACHE_TTL_MS = 5000;
const CACHE_MAX_USERS = 100_000;

interface CachedUser {
  remote: RemoteSession[];
  at: number;
}

/** Per-node counters, logged periodically and read by tests. */
export interface ClusterMetrics {
  sessions: number;
  /** Stanzas from other nodes delivered to sessions of this node. */
  deliveredLocally: number;
  /** Stanzas sent to sessions on other nodes. */
  sentToNodes: number;
  /** Stanzas received from other nodes. */
  receivedFromNodes: number;
  /** Stanzas for a session that had gone, routed again. */
  rerouted: number;
  /** Mean and max bus latency (publish to handling) since the last report, in ms. */
  busLatencyMeanMs: number;
  busLatencyMaxMs: number;
  reapedSessions: number;
}

export class RedisCluster implements SessionDirectory, RemoteSessionTransport {
  readonly nodeId: string;
  private readonly prefix: string;
  private readonly heartbeatMs: number;
  private readonly nodeTtlMs: number;
  private readonly redis: Redis & Scripts;
  private readonly subscriber: Redis;
  private readonly local = new InProcessDirectory();
  private readonly cache = new Map<string, CachedUser>();
  /** Bumped on every invalidation: a lookup that started before one does not fill the cache. */
  private epoch = 0;
  private readonly log: Logger;
  /** Nodes with a live heartbeat, as of the last tick (always including this one). */
  private liveNodes = new Set<string>();
  private sortedLiveNodes: string[] = [];
  private timer: NodeJS.Timeout | null = null;
  private handlers: BusHandlers | null = null;
  private readonly broadcastHandlers = new Map<string, BroadcastHandler>();
  private readonly requestHandlers = new Map<string, RequestHandler>();
  private readonly pendingRequests = new Map<
    string,
    { resolve: (v: JsonValue | null) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }
  >();
  private stopped = false;
  private lastConnectionError: string | null = null;
  private readonly counters = {
    deliveredLocally: 0,
    sentToNodes: 0,
    receivedFromNodes: 0,
    rerouted: 0,
    reapedSessions: 0,
    latencySum: 0,
    latencyCount: 0,
    latencyMax: 0,
  };

  private constructor(opts: RedisClusterOptions) {
    this.nodeId = opts.nodeId;
    this.prefix = opts.prefix ?? 'chorus:';
    this.heartbeatMs = opts.heartbeatMs ?? 2000;
    this.nodeTtlMs = opts.nodeTtlMs ?? this.heartbeatMs * 3;
    this.log = opts.log.child({ node: this.nodeId });
    const redisOptions = { lazyConnect: true, maxRetriesPerRequest: 3, enableAutoPipelining: true };
    this.redis = new Redis(opts.redisUrl, redisOptions) as Redis & Scripts;
    this.subscriber = new Redis(opts.redisUrl, { lazyConnect: true });
    for (const client of [this.redis, this.subscriber]) {
      client.on('error', (err: Error) => {
        this.lastConnectionError = err.message;
        this.log.warn({ err: err.message }, 'redis connection error');
      });
    }
    this.redis.defineCommand('chorusBind', { numberOfKeys: 2, lua: BIND_SCRIPT });
    this.redis.defineCommand('chorusUnbind', { numberOfKeys: 2, lua: UNBIND_SCRIPT });
    this.redis.defineCommand('chorusUpdate', { numberOfKeys: 1, lua: UPDATE_SCRIPT });
    this.redis.defineCommand('chorusReap', { numberOfKeys: 1, lua: REAP_SCRIPT });
  }

  /**
   * Connects, cleans up what a previous run of this node id left behind
   * (after a crash its entries are stale), registers the node and starts
   * heartbeats. Rejects when Redis cannot be reached.
   */
  static async start(opts: RedisClusterOptions): Promise<RedisCluster> {
    const cluster = new RedisCluster(opts);
    try {
      await cluster.redis.connect();
      await cluster.subscriber.connect();
    } catch (err) {
      cluster.redis.disconnect();
      cluster.subscriber.disconnect();
      // ioredis rejects with "Connection is closed"; the cause is in the error event before it.
      const why = cluster.lastConnectionError ?? (err as Error).message;
      throw new Error(`cannot reach Redis at ${redactUrl(opts.redisUrl)} (cluster.redis_url): ${why}`, {
        cause: err,
      });
    }
    cluster.subscriber.on('message', (_channel: string, message: string) => cluster.onBusMessage(message));
    // Invalidations may have been missed while the subscriber was away.
    cluster.subscriber.on('ready', () => cluster.clearCache());
    await cluster.subscriber.subscribe(cluster.key(`bus:${cluster.nodeId}`), cluster.key('broadcast'));
    await cluster.reapNode(cluster.nodeId);
    await cluster.heartbeat();
    cluster.timer = setInterval(() => {
      cluster.heartbeat().catch((err: unknown) => cluster.log.warn({ err }, 'cluster heartbeat failed'));
    }, cluster.heartbeatMs);
    cluster.timer.unref();
    cluster.log.info({ nodes: cluster.sortedLiveNodes }, 'joined the cluster');
    return cluster;
  }

  setHandlers(handlers: BusHandlers): void {
    this.handlers = handlers;
  }

  private key(suffix: string): string {
    return this.prefix + suffix;
  }

  // -------------------------------------------------------------------------
  // Liveness

  private async heartbeat(): Promise<void> {
    if (this.stopped) return;
    await this.redis
      .multi()
      .set(this.key(`alive:${this.nodeId}`), String(Date.now()), 'PX', this.nodeTtlMs)
      .sadd(this.key('nodes'), this.nodeId)
      .exec();
    const nodes = await this.redis.smembers(this.key('nodes'));
    const aliveFlags = nodes.length ? await this.redis.mget(...nodes.map((n) => this.key(`alive:${n}`))) : [];
    const live = new Set<string>([this.nodeId]);
    const dead: string[] = [];
    nodes.forEach((node, i) => (aliveFlags[i] !== null ? live.add(node) : dead.push(node)));
    this.setLiveNodes(live);
    for (const node of dead) {
      if (node !== this.nodeId) await this.tryReap(node);
    }
  }

  private setLiveNodes(live: Set<string>): void {
    const before = this.sortedLiveNodes.join(',');
    this.liveNodes = live;
    this.sortedLiveNodes = [...live].sort();
    const after = this.sortedLiveNodes.join(',');
    if (before !== after) this.clearCache();
    if (before && before !== after)
      this.log.info({ nodes: this.sortedLiveNodes }, 'cluster membership changed');
  }

  private isLive(node: string): boolean {
    return this.liveNodes.has(node);
  }

  /** Nodes with a live heartbeat, sorted. */
  get nodes(): readonly string[] {
    return this.sortedLiveNodes;
  }

  /** One survivor takes the lock and removes the dead node's sessions in batches. */
  private async tryReap(node: string): Promise<void> {
    const locked = await this.redis.set(this.key(`reap:${node}`), this.nodeId, 'PX', this.nodeTtlMs, 'NX');
    if (locked !== 'OK') return;
    const removed = await this.reapNode(node);
    this.log.warn({ deadNode: node, sessions: removed }, 'removed the sessions of a node that stopped');
  }

  /** Removes every directory entry of `node`, batch by batch; resolves to how many went. */
  private async reapNode(node: string): Promise<number> {
    const index = this.key(`n:${node}`);
    let total = 0;
    for (;;) {
      const batch = await this.redis.spop(index, REAP_BATCH);
      if (!batch || batch.length === 0) break;
      const gone: { fullJid: string; wasAvailable: boolean }[] = [];
      const pipeline = this.redis.pipeline() as unknown as {
        exec(): Promise<[Error | null, unknown][] | null>;
      } & Scripts;
      for (const full of batch) {
        const slash = full.indexOf('/');
        (pipeline as unknown as Scripts).chorusReap(
          this.key(`u:${full.slice(0, slash)}`),
          full.slice(slash + 1),
          node,
        );
      }
      const results = (await pipeline.exec()) ?? [];
      results.forEach(([err, removed], i) => {
        if (err || typeof removed !== 'string') return;
        let wasAvailable = false;
        try {
          wasAvailable = (JSON.parse(removed) as DirectoryEntry).a === 1;
        } catch {
          // A malformed entry is gone all the same.
        }
        const full = batch[i]!;
        gone.push({ fullJid: full, wasAvailable });
        this.changed(full.slice(0, full.indexOf('/')));
      });
      total += gone.length;
      this.counters.reapedSessions += gone.length;
      if (gone.length && node !== this.nodeId) this.handlers?.sessionsReaped?.(node, gone);
    }
    if (node !== this.nodeId) await this.redis.srem(this.key('nodes'), node);
    return total;
  }

  // -------------------------------------------------------------------------
  // SessionDirectory

  private entryOf(session: Session): string {
    const entry: DirectoryEntry = {
      n: this.nodeId,
      s: session.id,
      a: session.available ? 1 : 0,
      p: session.priority,
      x: session.presence ? session.presence.toString() : '',
      c: session.connected ? 1 : 0,
      h: session instanceof ClientSession ? session.sharedFacts() : {},
      t: session.secure ? 1 : 0,
    };
    return JSON.stringify(entry);
  }

  async bind(session: Session, policy: ConflictPolicy, maxResources: number): Promise<BindOutcome> {
    const bare = session.jid.bareString();
    const full = session.jid.toString();
    const [outcome, previous] = await this.redis.chorusBind(
      this.key(`u:${bare}`),
      this.key(`n:${this.nodeId}`),
      session.jid.resource,
      this.entryOf(session),
      policy,
      maxResources,
      full,
      this.prefix,
      this.nodeId,
    );
    if (outcome === 'conflict' || outcome === 'too-many') return { ok: false, reason: outcome };
    this.changed(bare);
    // Redis decided; the local table follows it.
    const local = this.local.bind(session, 'replace_old', Number.MAX_SAFE_INTEGER);
    if (local.ok && local.replaced) return local;
    if (outcome === 'replaced' && previous) {
      const old = JSON.parse(previous) as DirectoryEntry;
      if (old.n !== this.nodeId) {
        // The replaced session lives elsewhere: its node ends it. It is not
        // returned, since the caller can only close local sessions itself.
        this.closeSession(old.n, full, old.s, 'conflict', 'Replaced by a new connection');
      }
    }
    return { ok: true, replaced: null };
  }

  async unbind(session: Session): Promise<void> {
    this.local.unbind(session);
    const full = session.jid.toString();
    await this.redis
      .chorusUnbind(
        this.key(`u:${session.jid.bareString()}`),
        this.key(`n:${this.nodeId}`),
        session.jid.resource,
        session.id,
        full,
      )
      .then(
        () => this.changed(session.jid.bareString()),
        (err: unknown) => this.log.warn({ err, jid: full }, 'could not remove a session from Redis'),
      );
  }

  sessionChanged(session: Session): void {
    if (this.local.get(session.jid.toString()) !== session) return;
    this.redis
      .chorusUpdate(
        this.key(`u:${session.jid.bareString()}`),
        session.jid.resource,
        session.id,
        this.entryOf(session),
      )
      .then(
        () => this.changed(session.jid.bareString()),
        (err: unknown) =>
          this.log.warn({ err, jid: session.jid.toString() }, 'could not update a session in Redis'),
      );
  }

  get(fullJid: string): MaybePromise<Session | undefined> {
    const local = this.local.get(fullJid);
    if (local) return local;
    const slash = fullJid.indexOf('/');
    if (slash < 0) return undefined;
    const find = (remote: RemoteSession[]) => remote.find((r) => r.jid.toString() === fullJid);
    const remote = this.remoteSessions(fullJid.slice(0, slash));
    return remote instanceof Promise ? remote.then(find) : find(remote);
  }

  resources(bareJid: string): MaybePromise<Session[]> {
    const combine = (remote: RemoteSession[]): Session[] => {
      const local = this.local.resources(bareJid);
      if (remote.length === 0) return local;
      // A local session wins over an entry naming another node for the same
      // resource (it is being replaced there).
      const mine = new Set(local.map((s) => s.jid.resource));
      return [...local, ...remote.filter((r) => !mine.has(r.jid.resource))];
    };
    const remote = this.remoteSessions(bareJid);
    return remote instanceof Promise ? remote.then(combine) : combine(remote);
  }

  /** The user's sessions on other live nodes: from the cache, or from Redis. */
  private remoteSessions(bareJid: string): MaybePromise<RemoteSession[]> {
    const cached = this.cache.get(bareJid);
    if (cached && Date.now() - cached.at < CACHE_TTL_MS) {
      return cached.remote.every((r) => this.isLive(r.node))
        ? cached.remote
        : cached.remote.filter((r) => this.isLive(r.node));
    }
    const epoch = this.epoch;
    return this.redis.hgetall(this.key(`u:${bareJid}`)).then(
      (all) => {
        const remote: RemoteSession[] = [];
        for (const [resource, json] of Object.entries(all)) {
          const session = this.remote(`${bareJid}/${resource}`, json);
          if (session) remote.push(session);
        }
        if (epoch === this.epoch) {
          if (this.cache.size >= CACHE_MAX_USERS) {
            // Oldest first: Map keeps insertion order.
            const oldest = this.cache.keys().next().value;
            if (oldest !== undefined) this.cache.delete(oldest);
          }
          this.cache.set(bareJid, { remote, at: Date.now() });
        }
        return remote;
      },
      (err: unknown) => {
        // Without Redis the local sessions are still known.
        this.log.warn({ err }, 'session lookup in Redis failed; using this node only');
        return [];
      },
    );
  }

  /** This node changed a user's entries: drop cached copies here and on every other node. */
  private changed(bareJid: string): void {
    this.invalidate(bareJid);
    this.redis
      .publish(
        this.key('broadcast'),
        JSON.stringify({ k: 'i', u: bareJid, from: this.nodeId, ts: Date.now() }),
      )
      .catch((err: unknown) => this.log.warn({ err }, 'could not broadcast a directory change'));
  }

  private invalidate(bareJid: string): void {
    this.epoch++;
    this.cache.delete(bareJid);
  }

  private clearCache(): void {
    this.epoch++;
    this.cache.clear();
  }

  /** A proxy for an entry of another live node; undefined for stale or own entries. */
  private remote(fullJid: string, json: string): RemoteSession | undefined {
    let entry: DirectoryEntry;
    try {
      entry = JSON.parse(json) as DirectoryEntry;
    } catch {
      return undefined;
    }
    // An entry naming this node without a local session is stale (being
    // unbound, or left by a crash of a previous run): not a session.
    if (entry.n === this.nodeId || !this.isLive(entry.n)) return undefined;
    return new RemoteSession(fullJid, entry, this);
  }

  get size(): number {
    return this.local.size;
  }

  all(): Iterable<Session> {
    return this.local.all();
  }

  // -------------------------------------------------------------------------
  // Node bus

  private publish(node: string, message: BusMessage): Promise<number> {
    return this.redis.publish(this.key(`bus:${node}`), JSON.stringify(message));
  }

  sendStanza(node: string, fullJid: string, sessionId: string, stanza: Element): void {
    this.counters.sentToNodes++;
    const xml = stanza.toString();
    this.publish(node, { k: 's', to: fullJid, sid: sessionId, x: xml, ts: Date.now() }).then(
      (receivers) => {
        // Nobody listens on that node's channel: it is gone even if its
        // heartbeat has not expired yet. Treat the session as vanished.
        if (receivers === 0) this.nodeUnreachable(node, xml);
      },
      (err: unknown) => {
        this.log.warn({ err, node }, 'could not publish to a node');
        this.nodeUnreachable(node, xml);
      },
    );
  }

  private nodeUnreachable(node: string, xml: string): void {
    if (this.liveNodes.has(node) && node !== this.nodeId) {
      const live = new Set(this.liveNodes);
      live.delete(node);
      this.setLiveNodes(live);
    }
    this.counters.rerouted++;
    this.handlers?.reroute(parse(xml) as Element);
  }

  closeSession(
    node: string,
    fullJid: string,
    sessionId: string,
    condition?: StreamErrorCondition,
    text?: string,
  ): void {
    const message: BusMessage = { k: 'c', to: fullJid, sid: sessionId, ts: Date.now() };
    if (condition) message.cond = condition;
    if (text) message.text = text;
    this.publish(node, message).catch((err: unknown) =>
      this.log.warn({ err, node }, 'could not close a remote session'),
    );
  }

  /**
   * The node that handles `key` (a service's bare JID, e.g. a MUC room):
   * rendezvous hashing over the live nodes, so keys move only when the node
   * set changes, and then only those of the nodes that came or went.
   */
  ownerOf(key: string): string {
    let best = this.nodeId;
    let bestScore = -1;
    for (const node of this.sortedLiveNodes) {
      const score = fnv1a(`${node}\u0000${key}`);
      if (score > bestScore) {
        best = node;
        bestScore = score;
      }
    }
    return best;
  }

  /** Sends a stanza to `node` to be routed there. */
  forward(node: string, stanza: Element): void {
    this.counters.sentToNodes++;
    const xml = stanza.toString();
    this.publish(node, { k: 'r', x: xml, ts: Date.now() }).then(
      (receivers) => {
        if (receivers === 0) {
          // Handled here after all: better than losing it.
          this.nodeUnreachable(node, xml);
        }
      },
      (err: unknown) => {
        this.log.warn({ err, node }, 'could not forward a stanza');
        this.nodeUnreachable(node, xml);
      },
    );
  }

  /** Tells every other node; modules use it to drop caches of shared data. */
  broadcast(topic: string, data: JsonValue): void {
    this.redis
      .publish(
        this.key('broadcast'),
        JSON.stringify({ k: 'b', topic, d: data, from: this.nodeId, ts: Date.now() }),
      )
      .catch((err: unknown) => this.log.warn({ err, topic }, 'cluster broadcast failed'));
  }

  onBroadcast(topic: string, handler: BroadcastHandler): () => void {
    this.broadcastHandlers.set(topic, handler);
    return () => {
      if (this.broadcastHandlers.get(topic) === handler) this.broadcastHandlers.delete(topic);
    };
  }

  /** Asks one node and waits for its answer (rejects on timeout or when no handler answers). */
  request(node: string, topic: string, data: JsonValue, timeoutMs = 5000): Promise<JsonValue | null> {
    const id = randomBytes(9).toString('base64url');
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pendingRequests.delete(id);
        reject(new Error(`node ${node} did not answer ${topic} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pendingRequests.set(id, { resolve, reject, timer });
      this.publish(node, { k: 'q', id, topic, d: data, from: this.nodeId, ts: Date.now() }).then(
        (receivers) => {
          if (receivers === 0) this.settleRequest(id, null, `node ${node} is not listening`);
        },
        (err: unknown) => this.settleRequest(id, null, (err as Error).message),
      );
    });
  }

  onRequest(topic: string, handler: RequestHandler): () => void {
    this.requestHandlers.set(topic, handler);
    return () => {
      if (this.requestHandlers.get(topic) === handler) this.requestHandlers.delete(topic);
    };
  }

  private settleRequest(id: string, data: JsonValue | null, err?: string): void {
    const pending = this.pendingRequests.get(id);
    if (!pending) return;
    this.pendingRequests.delete(id);
    clearTimeout(pending.timer);
    if (err) pending.reject(new Error(err));
    else pending.resolve(data);
  }

  private onBusMessage(raw: string): void {
    let message: BusMessage;
    try {
      message = JSON.parse(raw) as BusMessage;
    } catch {
      this.log.warn('ignoring a malformed bus message');
      return;
    }
    const latency = Date.now() - message.ts;
    this.counters.latencySum += latency;
    this.counters.latencyCount++;
    if (latency > this.counters.latencyMax) this.counters.latencyMax = latency;
    try {
      this.handleBusMessage(message);
    } catch (err) {
      this.log.error({ err, kind: message.k }, 'handling a bus message failed');
    }
  }

  private handleBusMessage(message: BusMessage): void {
    switch (message.k) {
      case 's': {
        this.counters.receivedFromNodes++;
        const stanza = parse(message.x) as Element;
        const session = this.local.get(message.to);
        if (session && session.id === message.sid) {
          this.counters.deliveredLocally++;
          session.send(stanza);
        } else {
          // The session went (or was replaced) between the lookup and now:
          // route again, as for a local session that vanished.
          this.counters.rerouted++;
          this.handlers?.reroute(stanza);
        }
        return;
      }
      case 'c': {
        const session = this.local.get(message.to);
        if (session && session.id === message.sid) session.close(message.cond, message.text);
        return;
      }
      case 'r':
        this.counters.receivedFromNodes++;
        this.handlers?.route(parse(message.x) as Element);
        return;
      case 'i':
        if (message.from !== this.nodeId) this.invalidate(message.u);
        return;
      case 'b':
        if (message.from !== this.nodeId)
          this.broadcastHandlers.get(message.topic)?.(message.d, message.from);
        return;
      case 'q': {
        const handler = this.requestHandlers.get(message.topic);
        const answer = (d: JsonValue | null, err?: string) => {
          const reply: BusMessage = { k: 'a', id: message.id, d, ts: Date.now() };
          if (err) reply.err = err;
          void this.publish(message.from, reply);
        };
        if (!handler) {
          answer(null, `no handler for ${message.topic} on ${this.nodeId}`);
          return;
        }
        Promise.resolve()
          .then(() => handler(message.d, message.from))
          .then(
            (d) => answer(d ?? null),
            (err: unknown) => answer(null, (err as Error).message ?? String(err)),
          );
        return;
      }
      case 'a':
        this.settleRequest(message.id, message.d, message.err);
        return;
    }
  }

  metrics(reset = false): ClusterMetrics {
    const c = this.counters;
    const result: ClusterMetrics = {
      sessions: this.local.size,
      deliveredLocally: c.deliveredLocally,
      sentToNodes: c.sentToNodes,
      receivedFromNodes: c.receivedFromNodes,
      rerouted: c.rerouted,
      busLatencyMeanMs: c.latencyCount ? Math.round((c.latencySum / c.latencyCount) * 100) / 100 : 0,
      busLatencyMaxMs: c.latencyMax,
      reapedSessions: c.reapedSessions,
    };
    if (reset) {
      c.latencySum = 0;
      c.latencyCount = 0;
      c.latencyMax = 0;
    }
    return result;
  }

  /**
   * Leaves the cluster: removes this node's remaining entries and its
   * heartbeat, so the others stop routing here at once.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    for (const pending of this.pendingRequests.values()) clearTimeout(pending.timer);
    this.pendingRequests.clear();
    try {
      await this.reapNode(this.nodeId);
      await this.redis
        .multi()
        .del(this.key(`alive:${this.nodeId}`))
        .srem(this.key('nodes'), this.nodeId)
        .exec();
    } catch (err) {
      this.log.warn({ err }, 'could not leave the cluster cleanly; the others will reap this node');
    }
    this.subscriber.disconnect();
    await this.redis.quit().catch(() => this.redis.disconnect());
  }
}

function fnv1a(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

/** A Redis URL without its password, for messages. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/([^@/]*)@/, '//***@');
}
