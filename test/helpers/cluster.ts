// Starts Chorus cluster nodes as real processes (`node bin/chorus.js start`)
// sharing one redis-server and one SQLite file, each on its own loopback
// ports so that a test chooses which node a client connects to.
import type { Element } from 'ltx';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { Accounts } from '../../src/storage/accounts.ts';
import { SqliteDriver } from '../../src/storage/sqlite.ts';
import { available, fetchRoster } from './fixtures.ts';
import { freePorts, redisMissing, startRedis, type TestRedis } from './redis.ts';
import { XmppClient } from './xmpp-client.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export interface ClusterNode {
  id: string;
  /** STARTTLS port. */
  port: number;
  process: ChildProcess;
  /** Everything the node logged so far (JSON lines). */
  output(): string;
  /** Resolves when the process has exited. */
  exited: Promise<number | null>;
  kill(signal: NodeJS.Signals): Promise<void>;
}

export interface TestCluster {
  redis: TestRedis;
  dir: string;
  domain: string;
  nodes: ClusterNode[];
  heartbeatMs: number;
  nodeTtlMs: number;
  /** Starts one more node (also used to restart one). */
  startNode(id: string): Promise<ClusterNode>;
  stop(): Promise<void>;
}

export interface TestClusterOptions {
  nodes: number;
  users?: Record<string, string>;
  modules?: string[];
  /** Extra YAML for every node. */
  yaml?: string;
  heartbeatMs?: number;
  nodeTtlMs?: number;
  /** cluster.metrics_log_seconds (0, off, unless given). */
  metricsLogSeconds?: number;
}

export async function startCluster(opts: TestClusterOptions): Promise<TestCluster> {
  const redis = await startRedis();
  const dir = mkdtempSync(join(tmpdir(), 'chorus-test-cluster-'));
  const domain = 'localhost';
  const heartbeatMs = opts.heartbeatMs ?? 200;
  const nodeTtlMs = opts.nodeTtlMs ?? 800;
  const sqlitePath = join(dir, 'chorus.sqlite');

  // Accounts go straight into the shared database before any node runs.
  const storage = SqliteDriver.open(sqlitePath);
  const accounts = new Accounts(storage, 4096);
  for (const [user, password] of Object.entries(opts.users ?? {}))
    await accounts.create(domain, user, password);
  await storage.close();

  const nodes: ClusterNode[] = [];
  const startNode = async (id: string): Promise<ClusterNode> => {
    const [port, tlsPort] = (await freePorts(2)) as [number, number];
    const configPath = join(dir, `${id}.yaml`);
    writeFileSync(
      configPath,
      [
        `hosts: [{ domain: ${domain} }]`,
        ...(opts.modules ? [`modules: [${opts.modules.join(', ')}]`] : []),
        'listeners:',
        `  - { port: ${port}, address: 127.0.0.1, tls: starttls }`,
        `  - { port: ${tlsPort}, address: 127.0.0.1, tls: direct }`,
        `storage: { driver: sqlite, path: ${sqlitePath} }`,
        `certs: { dir: ${join(dir, 'certs')} }`,
        'limits: { connections_per_minute: 0, bytes_per_second: 0 }',
        `cluster: { redis_url: '${redis.url}', node_id: ${id}, heartbeat_ms: ${heartbeatMs}, node_ttl_ms: ${nodeTtlMs}, metrics_log_seconds: ${opts.metricsLogSeconds ?? 0} }`,
        `log: { level: ${process.env.CHORUS_TEST_LOG ?? 'info'}, format: json }`,
        opts.yaml ?? '',
      ].join('\n'),
    );
    const child = spawn(process.execPath, [join(ROOT, 'bin/chorus.js'), 'start', '-c', configPath], {
      cwd: dir,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CHORUS_CONFIG: '' },
    });
    let output = '';
    child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const ready = new Promise<void>((resolveReady, reject) => {
      const timer = setTimeout(() => reject(new Error(`node ${id} did not start:\n${output}`)), 30_000);
      const check = () => {
        if (output.includes('Chorus is ready')) {
          clearTimeout(timer);
          child.stdout!.off('data', check);
          resolveReady();
        }
      };
      child.stdout!.on('data', check);
      void exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`node ${id} exited with ${code} while starting:\n${output}`));
      });
    });
    try {
      await ready;
    } catch (err) {
      // A node that never got ready is not in `nodes`: stop it here.
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
      throw err;
    }
    const node: ClusterNode = {
      id,
      port,
      process: child,
      output: () => output,
      exited,
      async kill(signal) {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill(signal);
          await exited;
        }
      },
    };
    nodes.push(node);
    return node;
  };

  const stop = async () => {
    await Promise.all(nodes.map((n) => n.kill('SIGTERM')));
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    // One after the other: the first generates the certificate the others reuse.
    for (let i = 0; i < opts.nodes; i++) await startNode(String.fromCharCode(97 + i));
  } catch (err) {
    // Nobody gets the cluster to stop: what did start goes now.
    await stop();
    throw err;
  }

  return { redis, dir, domain, nodes, heartbeatMs, nodeTtlMs, startNode, stop };
}

/**
 * For a before hook (`requireRedis(this)`): skips the describe block when no
 * redis-server is installed, except under CI, where that is a failure.
 */
export function requireRedis(ctx: Mocha.Context): void {
  const missing = redisMissing();
  if (missing) {
    // .ci/run installs redis-server, so in CI its absence is a failure.
    if (process.env.CI) throw new Error(missing);
    console.log(`      skipped: ${missing}`);
    ctx.skip();
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Clients of one describe block on the nodes of a cluster, all with one password. */
export class ClusterClients {
  /** Every client made or tracked since the last shutdownAll/destroyAll. */
  readonly all: XmppClient[] = [];

  /** `cluster` is read when a client connects (it may start in a before hook). */
  constructor(
    private readonly cluster: () => TestCluster,
    private readonly password: string,
  ) {}

  /** Adds clients made elsewhere to those ended together. */
  track(...clients: XmppClient[]): void {
    this.all.push(...clients);
  }

  /** No longer ends `c` with the others (it is gone already). */
  forget(c: XmppClient): void {
    this.all.splice(this.all.indexOf(c), 1);
  }

  /** Connects to node `node`, named `<name>@<node>` in failures. */
  async connect(node: number, name: string): Promise<XmppClient> {
    const c = await XmppClient.connect({ port: this.cluster().nodes[node]!.port, name: `${name}@${node}` });
    this.all.push(c);
    return c;
  }

  /** Connected to node `node` and logged in as `user/resource`. */
  async login(node: number, user: string, resource = 'r'): Promise<XmppClient> {
    const c = await this.connect(node, `${user}/${resource}`);
    await c.login(user, this.password, { resource });
    return c;
  }

  /** Logged in, roster fetched, available. */
  async online(node: number, user: string, resource = 'r'): Promise<XmppClient> {
    const c = await this.login(node, user, resource);
    await fetchRoster(c);
    await available(c);
    return c;
  }

  /** Closes every client's stream and waits for the server to close it too. */
  async shutdownAll(): Promise<void> {
    await Promise.all(this.all.splice(0).map((c) => c.shutdown()));
  }

  /** Cuts every client's connection. */
  destroyAll(): void {
    for (const c of this.all.splice(0)) c.destroy();
  }
}

/**
 * Reads every stanza until one matches `pattern` (pushes and presence may
 * come first); fails when none has within `timeoutMs`.
 */
export async function readUntil(c: XmppClient, pattern: string, timeoutMs = 5000): Promise<Element> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    const event = await c.next(Math.max(1, deadline - Date.now())).catch(() => null);
    if (!event) break;
    if (event.kind === 'element') {
      if (c.check(pattern, event.element) === null) return event.element;
      last = event.element.toString();
    }
  }
  throw new Error(`${c.name}: never got ${pattern} (last: ${last})\n${c.recentTranscript()}`);
}

/** Fails if a message arrives within `ms` (presence and pushes may). */
export async function expectNoMessage(c: XmppClient, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const event = await c.next(Math.max(1, deadline - Date.now())).catch(() => null);
    if (!event) return;
    if (event.kind === 'element' && event.element.name === 'message') {
      throw new Error(`${c.name}: unexpected ${event.element.toString()}`);
    }
  }
}

/** Mutual presence subscription between two online clients. */
export async function subscribe(a: XmppClient, b: XmppClient): Promise<void> {
  const aJid = a.jid!.split('/')[0]!;
  const bJid = b.jid!.split('/')[0]!;
  for (const [x, y, xJid, yJid] of [
    [a, b, aJid, bJid],
    [b, a, bJid, aJid],
  ] as const) {
    x.send(`<presence to='${yJid}' type='subscribe'/>`);
    await readUntil(y, `<presence from='${xJid}' type='subscribe'/>`);
    y.send(`<presence to='${xJid}' type='subscribed'/>`);
    await readUntil(x, `<presence from='${y.jid}'/>`);
  }
}

export interface ClusterFixture {
  /** The running cluster (from the before hook on). */
  readonly cluster: TestCluster;
  /** A connection to the cluster's redis-server, to look at the directory. */
  readonly redis: Redis;
  /** Clients on the cluster's nodes, logging in with the fixture's password. */
  readonly clients: ClusterClients;
}

/**
 * Registers hooks in the calling describe block: before, requireRedis and a
 * cluster started with `opts` (plus a Redis connection to it); after, the
 * clients end, then the Redis connection and the cluster. `endClients` says
 * how the clients end: shut down after each test ('shutdown-each', the
 * default), or once after all tests, cut ('destroy') or shut down ('shutdown').
 */
export function useCluster(
  opts: TestClusterOptions,
  password: string,
  endClients: 'shutdown-each' | 'destroy' | 'shutdown' = 'shutdown-each',
): ClusterFixture {
  let cluster: TestCluster | undefined;
  let redis: Redis | undefined;
  const running = (): TestCluster => {
    if (!cluster) throw new Error('the test cluster is not running (used outside a test?)');
    return cluster;
  };
  const clients = new ClusterClients(running, password);
  before(async function () {
    requireRedis(this);
    cluster = await startCluster(opts);
    redis = new Redis(cluster.redis.url);
  });
  if (endClients === 'shutdown-each') afterEach(() => clients.shutdownAll());
  after(async () => {
    if (endClients === 'destroy') clients.destroyAll();
    else await clients.shutdownAll();
    redis?.disconnect();
    await cluster?.stop();
  });
  return {
    get cluster() {
      return running();
    },
    get redis() {
      if (!redis) throw new Error('the test cluster is not running (used outside a test?)');
      return redis;
    },
    clients,
  };
}
