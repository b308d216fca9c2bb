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
  | { k: 'h' | 'x'; from: string; ts: number }
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
-- Entries of dead nodes are left for the reaper, which reports each one
-- (contacts learn the resource went away); here they neither conflict nor
-- count. A dead entry for this very resource is simply overwritten.
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing and not alive(existing) then existing = false end
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
  if all[i] ~= ARGV[1] and alive(all[i + 1]) then count = count + 1 end
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

// KEYS: user hash, the node's index. ARGV: resource, dead node, prefix, force, full JID.
// Removes the entry if it still names the dead node; returns it, or false. A
// node that came back to life keeps its entry (and its index mark) unless
// forced (a node cleaning up after its own previous run).
const REAP_SCRIPT = `
if ARGV[4] ~= '1' and redis.call('EXISTS', ARGV[3] .. 'alive:' .. ARGV[2]) == 1 then
  redis.call('SADD', KEYS[2], ARGV[5])
  return false
end
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing and cjson.decode(existing).n == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return existing
end
return false
`;

// KEYS: user hash, this node's index. ARGV: resource, entry, full JID, session id.
// Puts back a local session's entry that Redis lost (node wrongly declared
// dead, Redis restarted); 'taken' if another session holds the resource now.
const REPUBLISH_SCRIPT = `
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing and cjson.decode(existing).s ~= ARGV[4] then return 'taken' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 'ok'
`;

interface Scripts {
  chorusBind(...args: (string | number)[]): Promise<[string, string?]>;
  chorusUnbind(...args: (string | number)[]): Promise<number>;
  chorusUpdate(...args: (string | number)[]): Promise<number>;
  chorusReap(...args: (string | number)[]): Promise<string | null>;
  chorusRepublish(...args: (string | number)[]): Promise<string>;
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
  /** Sessions a previous run of this node id left in Redis, for remote-session-lost once modules run. */
  private leftovers: { fullJid: string; wasAvailable: boolean }[] = [];
  /** Unbinds that failed, retried at each heartbeat so no phantom entry stays behind. */
  private readonly failedUnbinds = new Map<string, Session>();
  /** One Redis lookup at a time per user: answers come back in the order stanzas were routed. */
  private readonly lookups = new Map<string, Promise<RemoteSession[]>>();
  private heartbeats = 0;
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
    this.redis.defineCommand('chorusReap', { numberOfKeys: 2, lua: REAP_SCRIPT });
    this.redis.defineCommand('chorusRepublish', { numberOfKeys: 2, lua: REPUBLISH_SCRIPT });
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
    cluster.leftovers = await cluster.reapNode(cluster.nodeId, true);
    await cluster.heartbeat();
    // The others add this node at once instead of at their next heartbeat.
    await cluster.redis.publish(
      cluster.key('broadcast'),
      JSON.stringify({ k: 'h', from: cluster.nodeId, ts: Date.now() }),
    );
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

  /**
   * Sessions that a previous run under this node id (a crash, then a restart
   * within the heartbeat TTL) left behind and that this start removed. The
   * server reports them as lost once its modules are loaded.
   */
  takeLeftovers(): { fullJid: string; wasAvailable: boolean }[] {
    const leftovers = this.leftovers;
    this.leftovers = [];
    return leftovers;
  }

  private key(suffix: string): string {
    return this.prefix + suffix;
  }

  // -------------------------------------------------------------------------
  // Liveness

  private async heartbeat(): Promise<void> {
    if (this.stopped) return;
    const previous = await this.redis.call(
      'SET',
      this.key(`alive:${this.nodeId}`),
      String(Date.now()),
      'PX',
      String(this.nodeTtlMs),
      'GET',
    );
    await this.redis.sadd(this.key('nodes'), this.nodeId);
    if (previous === null && this.heartbeats > 0) {
      // Our heartbeat had expired (a stall longer than the TTL, or Redis
      // restarted): the others may have removed our sessions. Put them back.
      this.log.warn('this node was taken for dead; publishing its sessions again');
      await this.republish();
    }
    this.heartbeats++;
    for (const [key, session] of this.failedUnbinds) {
      this.failedUnbinds.delete(key);
      await this.unbindRemote(session);
    }
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

  /** Writes every local session's entry again; a session whose resource was taken meanwhile ends. */
  private async republish(): Promise<void> {
    for (const session of [...this.local.all()]) {
      const bare = session.jid.bareString();
      const outcome = await this.redis.chorusRepublish(
        this.key(`u:${bare}`),
        this.key(`n:${this.nodeId}`),
        session.jid.resource,
        this.entryOf(session),
        session.jid.toString(),
        session.id,
      );
      if (outcome === 'taken') session.close('conflict', 'Replaced by a new connection');
      this.changed(bare);
    }
  }

  /** One survivor takes the lock and removes the dead node's sessions in batches. */
  private async tryReap(node: string): Promise<void> {
    const locked = await this.redis.set(this.key(`reap:${node}`), this.nodeId, 'PX', this.nodeTtlMs, 'NX');
    if (locked !== 'OK') return;
    const removed = await this.reapNode(node);
    this.log.warn(
      { deadNode: node, sessions: removed.length },
      'removed the sessions of a node that stopped',
    );
  }

  /**
   * Removes every directory entry of `node`, batch by batch, and resolves to
   * them. Stops if the node comes back to life, unless `force` (this node
   * cleaning up after its own previous run).
   */
  private async reapNode(node: string, force = false): Promise<{ fullJid: string; wasAvailable: boolean }[]> {
    const index = this.key(`n:${node}`);
    const all: { fullJid: string; wasAvailable: boolean }[] = [];
    for (;;) {
      if (!force && (await this.redis.exists(this.key(`alive:${node}`))) === 1) break;
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
          index,
          full.slice(slash + 1),
          node,
          this.prefix,
          force ? '1' : '0',
          full,
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
      all.push(...gone);
      this.counters.reapedSessions += gone.length;
      if (gone.length && node !== this.nodeId) this.handlers?.sessionsReaped?.(node, gone);
    }
    if (node !== this.nodeId && (await this.redis.exists(this.key(`alive:${node}`))) === 0) {
      await this.redis.srem(this.key('nodes'), node);
    }
    return all;
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
    await this.unbindRemote(session);
  }

  private async unbindRemote(session: Session): Promise<void> {
    const full = session.jid.toString();
    const removal = this.redis.chorusUnbind(
      this.key(`u:${session.jid.bareString()}`),
      this.key(`n:${this.nodeId}`),
      session.jid.resource,
      session.id,
      full,
    );
    // Issued right behind the change on the same connection, so every node
    // drops its copy before anything this node sends later reaches it.
    this.changed(session.jid.bareString());
    await removal.then(
      () => undefined,
      (err: unknown) => {
        // Retried at the next heartbeat: a phantom entry would count towards
        // the resource limit and draw stanzas to this node.
        this.failedUnbinds.set(`${full} ${session.id}`, session);
        this.log.warn({ err, jid: full }, 'could not remove a session from Redis; will retry');
      },
    );
  }

  sessionChanged(session: Session): Promise<void> {
    if (this.local.get(session.jid.toString()) !== session) return Promise.resolve();
    const updated = this.redis
      .chorusUpdate(
        this.key(`u:${session.jid.bareString()}`),
        session.jid.resource,
        session.id,
        this.entryOf(session),
      )
      .then(
        () => undefined,
        (err: unknown) =>
          this.log.warn({ err, jid: session.jid.toString() }, 'could not update a session in Redis'),
      );
    // Right behind the update on the same connection: the other nodes drop
    // their copy before they see the presence this change is part of.
    const broadcast = this.changed(session.jid.bareString());
    // Redis pushes the broadcast to the other nodes before it answers the
    // publish, so they have it before any answer to the client could reach them.
    return Promise.all([updated, broadcast]).then(() => undefined);
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
    const inFlight = this.lookups.get(bareJid);
    if (inFlight) return inFlight;
    const epoch = this.epoch;
    const lookup = this.redis.hgetall(this.key(`u:${bareJid}`)).then(
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
    this.lookups.set(bareJid, lookup);
    void lookup.finally(() => {
      if (this.lookups.get(bareJid) === lookup) this.lookups.delete(bareJid);
    });
    return lookup;
  }

  /** This node changed a user's entries: drop cached copies here and on every other node. */
  private changed(bareJid: string): Promise<void> {
    this.invalidate(bareJid);
    return this.redis
      .publish(
        this.key('broadcast'),
        JSON.stringify({ k: 'i', u: bareJid, from: this.nodeId, ts: Date.now() }),
      )
      .then(
        () => undefined,
        (err: unknown) => this.log.warn({ err }, 'could not broadcast a directory change'),
      );
  }

  private invalidate(bareJid: string): void {
    this.epoch++;
    this.cache.delete(bareJid);
    this.lookups.delete(bareJid);
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
    const xml = stanza.toString();
    this.publishStanza(node, { k: 's', to: fullJid, sid: sessionId, x: xml, ts: Date.now() });
  }

  /**
   * Publishes a stanza for `node`. When nobody listens on that node's
   * channel, it is gone even if its heartbeat has not expired yet: the
   * stanza is routed again here, as for a session that vanished.
   */
  private publishStanza(node: string, message: BusMessage & { x: string }): void {
    this.counters.sentToNodes++;
    this.publish(node, message).then(
      (receivers) => {
        if (receivers === 0) this.nodeUnreachable(node, message.x);
      },
      (err: unknown) => {
        this.log.warn({ err, node }, 'could not publish to a node');
        this.nodeUnreachable(node, message.x);
      },
    );
  }

  private dropLiveNode(node: string): void {
    if (node === this.nodeId || !this.liveNodes.has(node)) return;
    const live = new Set(this.liveNodes);
    live.delete(node);
    this.setLiveNodes(live);
  }

  private nodeUnreachable(node: string, xml: string): void {
    this.dropLiveNode(node);
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
    return rendezvousOwner(this.sortedLiveNodes, key) ?? this.nodeId;
  }

  /** Sends a stanza to `node` to be routed there. */
  forward(node: string, stanza: Element): void {
    this.publishStanza(node, { k: 'r', x: stanza.toString(), ts: Date.now() });
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
        if (message.from !== this.nodeId) {
          this.heardFrom(message.from);
          this.invalidate(message.u);
        }
        return;
      case 'h':
        if (message.from !== this.nodeId) this.heardFrom(message.from);
        return;
      case 'x':
        this.dropLiveNode(message.from);
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
          this.publish(message.from, reply).catch((err: unknown) =>
            this.log.warn({ err, node: message.from }, 'could not answer a request'),
          );
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

  /** A node that just spoke is alive, even before the next heartbeat says so. */
  private heardFrom(node: string): void {
    if (this.stopped || this.liveNodes.has(node)) return;
    this.setLiveNodes(new Set([...this.liveNodes, node]));
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
   * First step of a shutdown: the heartbeat goes and the others are told, so
   * they stop routing here (messages for the sessions that are closing go to
   * offline storage, rooms move) while this node still receives what is in
   * flight.
   */
  async leave(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    try {
      await this.redis.del(this.key(`alive:${this.nodeId}`));
      await this.redis.publish(
        this.key('broadcast'),
        JSON.stringify({ k: 'x', from: this.nodeId, ts: Date.now() }),
      );
    } catch (err) {
      this.log.warn({ err }, 'could not announce leaving the cluster');
    }
  }

  /**
   * Leaves the cluster: removes this node's remaining entries and its
   * heartbeat, so the others stop routing here at once.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    for (const pending of this.pendingRequests.values()) {
      clearTimeout(pending.timer);
      pending.reject(new Error('this node is leaving the cluster'));
    }
    this.pendingRequests.clear();
    try {
      await this.reapNode(this.nodeId, true);
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

/**
 * Rendezvous (highest random weight) hashing: the node of `nodes` (sorted)
 * that owns `key`. Exported so that tests can tell which node holds a room.
 */
export function rendezvousOwner(nodes: readonly string[], key: string): string | undefined {
  let best: string | undefined;
  let bestScore = -1;
  for (const node of nodes) {
    const score = fnv1a(`${node}\u0000${key}`);
    if (score > bestScore) {
      best = node;
      bestScore = score;
    }
  }
  return best;
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
