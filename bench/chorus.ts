// Starts Chorus as a child process (`node bin/chorus.js start -c <config>`)
// with a temporary directory for its configuration, database and log.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

export interface ChorusOptions {
  port: number;
  domain?: string;
  storage?: 'sqlite' | 'memory';
  /** PEM certificate and key to use; otherwise Chorus generates a self-signed pair. */
  cert?: { cert: string; key: string };
  logLevel?: string;
  /** Modules to load (names of built-in modules; unknown ones are left out). Default: REFERENCE_MODULES. */
  modules?: string[];
  /** Archive every 1:1 message (adds `mam`), like `anchors.sh start --mam`. */
  mam?: boolean;
  /**
   * Serve MUC at conference.<domain> (adds `muc`), as both references do; for
   * the muc-fanout scenario.
   */
  muc?: boolean;
  /**
   * Run as a cluster of this many worker processes (`chorus start --cluster N`)
   * sharing the port, with a redis-server started for it.
   */
  workers?: number;
}

/**
 * Chorus modules matching what the reference servers load (anchors' configs:
 * roster, presence, disco, carbons, private storage, blocking, vCard,
 * version, time, ping, registration, CSI, stream management, offline
 * messages). MAM is added only with --mam, as for the references.
 */
export const REFERENCE_MODULES = [
  'disco',
  'ping',
  'version',
  'time',
  'register',
  'roster',
  'presence',
  'carbons',
  'offline',
  'blocking',
  'vcard',
  'private',
  'smacks',
  'csi',
];

/** The module list Chorus will get: the wanted ones that exist in this tree. */
export async function chorusModules(o: ChorusOptions): Promise<string[]> {
  const { builtinModules } = await import('../modules/index.ts');
  const wanted = [...(o.modules ?? REFERENCE_MODULES)];
  if (o.mam && !wanted.includes('mam')) wanted.push('mam');
  if (o.muc && !wanted.includes('muc')) wanted.push('muc');
  return wanted.filter((m) => m in builtinModules);
}

export interface ChorusProcess {
  pid: number;
  /** Every process serving clients: Chorus (supervisor and workers) and its redis-server. */
  pids(): number[];
  modules: string[];
  dir: string;
  log: string;
  stop(): Promise<void>;
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export function chorusConfig(o: ChorusOptions, dir: string, modules: string[], redisUrl?: string): string {
  const domain = o.domain ?? 'localhost';
  const tls = o.cert ? `, tls: { cert: '${o.cert.cert}', key: '${o.cert.key}' }` : '';
  return [
    `hosts: [{ domain: ${domain}${tls} }]`,
    `listeners: [{ port: ${o.port}, address: 127.0.0.1, tls: starttls, starttls_required: false }]`,
    `modules: [${modules.join(', ')}]`,
    `storage: { driver: ${o.storage ?? 'sqlite'}, path: '${join(dir, 'chorus.sqlite')}' }`,
    `certs: { dir: '${join(dir, 'certs')}' }`,
    'module_options:',
    '  register: { allow_registration: true, max_registrations_per_address: 1000000000, window_seconds: 1 }',
    // Like the references (ejabberd `shaper: none`, Prosody's 100mb/s c2s limit): no connection
    // rate limit per address (every bench connection comes from 127.0.0.1) and no traffic shaping.
    'limits: { connections_per_minute: 0, bytes_per_second: 0 }',
    ...(o.workers && o.workers > 1 && redisUrl
      ? [`cluster: { redis_url: '${redisUrl}', workers: ${o.workers}, node_id: bench, metrics_log_seconds: 0 }`]
      : []),
    `log: { level: ${o.logLevel ?? 'warn'}, format: json }`,
    '',
  ].join('\n');
}

export async function startChorus(o: ChorusOptions): Promise<ChorusProcess> {
  if (await canConnect(o.port)) throw new Error(`port ${o.port} is already in use`);
  const dir = mkdtempSync(join(tmpdir(), 'chorus-bench-'));
  const config = join(dir, 'chorus.yaml');
  const modules = await chorusModules(o);
  const redis = o.workers && o.workers > 1 ? await startRedis(dir) : null;
  writeFileSync(config, chorusConfig(o, dir, modules, redis?.url));
  const log = join(dir, 'chorus.log');
  const fd = openSync(log, 'a');
  // Any CHORUS_* variable would act as a configuration override: drop them.
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('CHORUS_')) env[k] = v;
  const child: ChildProcess = spawn(
    process.execPath,
    [
      ...(process.env.CHORUS_BENCH_PROFILE
        ? ['--cpu-prof', `--cpu-prof-dir=${process.env.CHORUS_BENCH_PROFILE}`]
        : []),
      // Sampling interval in µs (V8's default is 1000): finer samples show short event-loop stalls.
      ...(process.env.CHORUS_BENCH_PROFILE && process.env.CHORUS_BENCH_PROFILE_INTERVAL
        ? [`--cpu-prof-interval=${process.env.CHORUS_BENCH_PROFILE_INTERVAL}`]
        : []),
      'bin/chorus.js',
      'start',
      '-c',
      config,
    ],
    {
      cwd: ROOT,
      stdio: ['ignore', fd, fd],
      env,
    },
  );
  let exited = false;
  const exit = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true;
      resolve();
    }),
  );
  for (let i = 0; i < 300 && !exited; i++) {
    // A cluster is ready when every worker has registered in Redis.
    if ((await canConnect(o.port)) && (!redis || (await redis.nodes()) >= o.workers!)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  if (exited || !(await canConnect(o.port))) {
    child.kill('SIGKILL');
    redis?.stop();
    const text = existsSync(log) ? readFileSync(log, 'utf8').slice(-2000) : '';
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`Chorus did not start on port ${o.port}:\n${text}`);
  }
  return {
    pid: child.pid!,
    pids: () => [child.pid!, ...childrenOf(child.pid!), ...(redis ? [redis.pid] : [])],
    modules,
    dir,
    log,
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exit;
        clearTimeout(t);
      }
      redis?.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Process ids whose parent is `pid` (the cluster workers), from /proc. */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // Field 4 (ppid) follows the parenthesised command name, which may contain spaces.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(entry));
    } catch {
      // The process went away meanwhile.
    }
  }
  return out;
}

interface BenchRedis {
  url: string;
  pid: number;
  /** Cluster nodes registered so far. */
  nodes(): Promise<number>;
  stop(): void;
}

/** A redis-server for a cluster run, on a free loopback port, without persistence. */
async function startRedis(dir: string): Promise<BenchRedis> {
  const port = await new Promise<number>((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      const free = typeof address === 'object' && address ? address.port : 0;
      probe.close(() => resolve(free));
    });
  });
  const child = spawn(
    '/usr/bin/redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
    { stdio: 'ignore' },
  );
  for (let i = 0; i < 100 && !(await canConnect(port)); i++) await new Promise((r) => setTimeout(r, 50));
  const { Redis } = await import('ioredis');
  const client = new Redis(port, '127.0.0.1', { lazyConnect: true });
  await client.connect();
  return {
    url: `redis://127.0.0.1:${port}`,
    pid: child.pid!,
    nodes: () => client.scard('chorus:nodes'),
    stop() {
      client.disconnect();
      child.kill('SIGTERM');
    },
  };
}
