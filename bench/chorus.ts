// Starts Chorus as a child process (`node bin/chorus.js start -c <config>`)
// with a temporary directory for its configuration, database and log.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
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

export function chorusConfig(o: ChorusOptions, dir: string, modules: string[]): string {
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
    `log: { level: ${o.logLevel ?? 'warn'}, format: json }`,
    '',
  ].join('\n');
}

export async function startChorus(o: ChorusOptions): Promise<ChorusProcess> {
  if (await canConnect(o.port)) throw new Error(`port ${o.port} is already in use`);
  const dir = mkdtempSync(join(tmpdir(), 'chorus-bench-'));
  const config = join(dir, 'chorus.yaml');
  const modules = await chorusModules(o);
  writeFileSync(config, chorusConfig(o, dir, modules));
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
    if (await canConnect(o.port)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  if (exited || !(await canConnect(o.port))) {
    child.kill('SIGKILL');
    const text = existsSync(log) ? readFileSync(log, 'utf8').slice(-2000) : '';
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`Chorus did not start on port ${o.port}:\n${text}`);
  }
  return {
    pid: child.pid!,
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
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
