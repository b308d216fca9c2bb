// Starts Chorus cluster nodes as real processes (`node bin/chorus.js start`)
// sharing one redis-server and one SQLite file, each on its own loopback
// ports so that a test chooses which node a client connects to.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Accounts } from '../../src/storage/accounts.ts';
import { SqliteDriver } from '../../src/storage/sqlite.ts';
import { freePort, startRedis, type TestRedis } from './redis.ts';

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
    const port = await freePort();
    const tlsPort = await freePort();
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
    await new Promise<void>((resolveReady, reject) => {
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

  // One after the other: the first generates the certificate the others reuse.
  for (let i = 0; i < opts.nodes; i++) await startNode(String.fromCharCode(97 + i));

  return {
    redis,
    dir,
    domain,
    nodes,
    heartbeatMs,
    nodeTtlMs,
    startNode,
    async stop() {
      await Promise.all(nodes.map((n) => n.kill('SIGTERM')));
      await redis.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
