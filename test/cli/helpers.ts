// Helpers for end-to-end tests of the `chorus` command: temporary
// directories with a configuration file, free loopback ports, one-shot runs
// of `node bin/chorus.js ...`, and long-running `chorus start` processes
// whose JSON log lines can be waited for.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server as NetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CHORUS_BIN = join(REPO_ROOT, 'bin', 'chorus.js');

/** Every process started here, so that a failed test cannot leave one running. */
const started = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of started)
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});

/**
 * The environment for a child: this process's, without CHORUS_* variables
 * (a developer's CHORUS_CONFIG must not leak into a test), plus `extra`.
 */
function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith('CHORUS_')) env[name] = value;
  }
  return { ...env, ...extra };
}

// ---------------------------------------------------------------------------
// Temporary directories and configuration.

export class TempDir {
  readonly path: string;

  constructor(prefix = 'chorus-cli-') {
    this.path = mkdtempSync(join(tmpdir(), prefix));
  }

  file(name: string): string {
    return join(this.path, name);
  }

  /** Writes `name` in the directory and returns its absolute path. */
  write(name: string, content: string | Buffer, mode?: number): string {
    const file = this.file(name);
    writeFileSync(file, content, mode === undefined ? undefined : { mode });
    return file;
  }

  remove(): void {
    rmSync(this.path, { recursive: true, force: true });
  }
}

/**
 * `count` distinct ports that were free a moment ago: each is bound to port 0
 * on 127.0.0.1 (all at once, so the kernel cannot hand out one twice), then
 * released for the server under test.
 */
export async function freePorts(count: number): Promise<number[]> {
  const servers: NetServer[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < count; i++) {
      const server = createServer();
      servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', () => resolve());
      });
      const address = server.address();
      if (address === null || typeof address === 'string') throw new Error('no port from the kernel');
      ports.push(address.port);
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
}

export interface ConfigOptions {
  dir: TempDir;
  /** STARTTLS port, direct TLS port. */
  ports: [number, number];
  hosts?: string[];
  logLevel?: string;
  /** Let clients create accounts before logging in (XEP-0077). */
  registration?: boolean;
}

/**
 * A configuration as an admin would write it: both listeners on 127.0.0.1,
 * SQLite and certificates inside the temporary directory (absolute paths),
 * JSON logs on stdout. Failed logins are not slowed down, since tests fail
 * on purpose. Paths are written as JSON strings, which YAML reads as is.
 */
export function configYaml(opts: ConfigOptions): string {
  const hosts = opts.hosts ?? ['localhost'];
  return [
    'hosts:',
    ...hosts.map((h) => `  - domain: ${h}`),
    'listeners:',
    `  - { port: ${opts.ports[0]}, address: 127.0.0.1, tls: starttls }`,
    `  - { port: ${opts.ports[1]}, address: 127.0.0.1, tls: direct }`,
    `storage: { driver: sqlite, path: ${JSON.stringify(opts.dir.file('data/chorus.sqlite'))} }`,
    `certs: { dir: ${JSON.stringify(opts.dir.file('certs'))} }`,
    'auth:',
    '  throttle: { delay_after: 100, ban_after: 1000 }',
    `log: { level: ${opts.logLevel ?? 'info'}, format: json }`,
    ...(opts.registration ? ['module_options:', '  register: { allow_registration: true }'] : []),
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------
// One-shot commands.

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  env?: Record<string, string>;
  /** Written to the command's standard input, which is then closed. */
  input?: string;
  timeoutMs?: number;
}

/** Runs `node bin/chorus.js ...args` from the repository root to completion. */
export function runChorus(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const child = spawn(process.execPath, [CHORUS_BIN, ...args], {
    cwd: REPO_ROOT,
    env: childEnv(opts.env),
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  started.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  child.stdin.on('error', () => undefined); // the command may exit before reading
  child.stdin.end(opts.input ?? '');
  const timeoutMs = opts.timeoutMs ?? 45_000;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`chorus ${args.join(' ')} did not finish in ${timeoutMs} ms\n${stdout}${stderr}`));
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      started.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

// ---------------------------------------------------------------------------
// A running server.

/** One pino JSON line of the server's log. */
export interface LogRecord {
  level: number;
  msg: string;
  [field: string]: unknown;
}

export const LEVEL = { debug: 20, info: 30, warn: 40, error: 50, fatal: 60 } as const;

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

interface LogWaiter {
  from: number;
  match: (r: LogRecord) => boolean;
  resolve: (r: LogRecord) => void;
}

export class ChorusProcess {
  readonly child: ChildProcess;
  readonly logs: LogRecord[] = [];
  stdout = '';
  stderr = '';
  exitStatus: Exit | null = null;
  readonly exited: Promise<Exit>;
  private partial = '';
  private waiters: LogWaiter[] = [];

  private constructor(args: string[], env?: Record<string, string>) {
    this.child = spawn(process.execPath, [CHORUS_BIN, ...args], {
      cwd: REPO_ROOT,
      env: childEnv(env),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    started.add(this.child);
    this.child.stdout!.setEncoding('utf8').on('data', (s: string) => this.onStdout(s));
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => (this.stderr += s));
    this.exited = new Promise((resolve) => {
      this.child.on('close', (code, signal) => {
        started.delete(this.child);
        this.exitStatus = { code, signal };
        resolve(this.exitStatus);
      });
    });
  }

  /** `chorus start -c <config>`; resolves once the server logs that it is ready. */
  static async start(configPath: string, env?: Record<string, string>): Promise<ChorusProcess> {
    const proc = ChorusProcess.spawn(configPath, env);
    // Generous: on a busy machine loading the TypeScript sources alone can take many seconds.
    await proc.waitForLog((r) => r.msg === 'Chorus is ready', 'the "Chorus is ready" log line', {
      timeoutMs: 45_000,
    });
    return proc;
  }

  /** `chorus start -c <config>` without waiting for anything. */
  static spawn(configPath: string, env?: Record<string, string>): ChorusProcess {
    return new ChorusProcess(['start', '-c', configPath], env);
  }

  get running(): boolean {
    return this.exitStatus === null;
  }

  private onStdout(text: string): void {
    this.stdout += text;
    const lines = (this.partial + text).split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) {
      if (line.trim() === '') continue;
      let record: LogRecord;
      try {
        const parsed: unknown = JSON.parse(line);
        record =
          typeof parsed === 'object' && parsed !== null && 'msg' in parsed
            ? (parsed as LogRecord)
            : { level: 0, msg: line };
      } catch {
        record = { level: 0, msg: line };
      }
      this.logs.push(record);
      const index = this.logs.length - 1;
      this.waiters = this.waiters.filter((w) => {
        if (index < w.from || !w.match(record)) return true;
        w.resolve(record);
        return false;
      });
    }
  }

  /**
   * The first log record from index `from` on (see `logs.length` to take a
   * mark before an action) that matches; fails if the process exits first
   * or nothing matches within the time limit.
   */
  waitForLog(
    match: (r: LogRecord) => boolean,
    what: string,
    opts: { from?: number; timeoutMs?: number } = {},
  ): Promise<LogRecord> {
    const from = opts.from ?? 0;
    const found = this.logs.slice(from).find(match);
    if (found) return Promise.resolve(found);
    const timeoutMs = opts.timeoutMs ?? 15_000;
    return new Promise((resolve, reject) => {
      const fail = (why: string) => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`waiting for ${what}: ${why}\n--- server output ---\n${this.output()}`));
      };
      const timer = setTimeout(() => fail(`not logged within ${timeoutMs} ms`), timeoutMs);
      const waiter: LogWaiter = {
        from,
        match,
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
      };
      this.waiters.push(waiter);
      void this.exited.then((exit) => {
        clearTimeout(timer);
        if (this.waiters.includes(waiter)) fail(`the server exited (${JSON.stringify(exit)})`);
      });
    });
  }

  signal(signal: NodeJS.Signals): void {
    this.child.kill(signal);
  }

  /** Resolves with the exit status, or rejects if the process is still running after `timeoutMs`. */
  waitForExit(timeoutMs: number): Promise<Exit> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`the server did not exit within ${timeoutMs} ms\n${this.output()}`)),
        timeoutMs,
      );
      void this.exited.then((exit) => {
        clearTimeout(timer);
        resolve(exit);
      });
    });
  }

  /** Cleanup: SIGTERM, then SIGKILL if it lingers. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.signal('SIGTERM');
    try {
      await this.waitForExit(5000);
    } catch {
      this.signal('SIGKILL');
      await this.exited;
    }
  }

  /** Everything the process printed, for failure messages. */
  output(): string {
    return `${this.stdout}${this.stderr}`;
  }
}
