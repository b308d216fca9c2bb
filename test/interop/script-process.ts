// The child-process side of the interop tests: a client program (one of the
// Python scripts here, or xmppc) that prints `RESULT key=<json>` lines on
// stdout and, for the scripts, reads JSON commands on stdin (see
// interop_common.py). Shared by interop.test.ts, im.test.ts, mam.test.ts and
// smacks.test.ts.
import { expect } from 'chai';
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Debian's Python libraries load only under the system interpreter. */
export const PYTHON = '/usr/bin/python3';
/** This directory, where the scripts are. */
export const INTEROP_DIR = dirname(fileURLToPath(import.meta.url));

export type Json = Record<string, unknown>;

export interface ResultLine {
  key: string;
  value: Json;
  taken: boolean;
}

export interface ResultProcessOptions {
  /** Names the process in failure messages. */
  label: string;
  command: string;
  args: string[];
  env: NodeJS.ProcessEnv;
  /** When set, the child is killed after this long, whatever it does. */
  hardTimeoutMs?: number;
  /** How many characters of stdout and of stderr a transcript shows (the last ones). */
  transcriptChars?: number;
  /** A RESULT line whose JSON does not parse throws (instead of being skipped as not a result). */
  strictJson?: boolean;
}

/** A child process whose `RESULT key=<json>` lines are kept until a test takes them. */
export class ResultProcess {
  /** Every process that has not ended yet. */
  static readonly running = new Set<ResultProcess>();

  readonly label: string;
  readonly results: ResultLine[] = [];
  exitCode: number | null = null;
  signal: NodeJS.Signals | null = null;
  readonly done: Promise<void>;
  private stdout = '';
  private stderr = '';
  private partial = '';
  private exited = false;
  private killedForTimeout = false;
  private readonly waiters = new Set<() => void>();
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly hardTimer: NodeJS.Timeout | undefined;
  private readonly transcriptChars: number;
  private readonly strictJson: boolean;

  constructor(opts: ResultProcessOptions) {
    this.label = opts.label;
    this.transcriptChars = opts.transcriptChars ?? 12_000;
    this.strictJson = opts.strictJson ?? false;
    this.child = spawn(opts.command, opts.args, { env: opts.env, stdio: ['pipe', 'pipe', 'pipe'] });
    ResultProcess.running.add(this);
    this.child.stdout.setEncoding('utf8');
    this.child.stderr.setEncoding('utf8');
    this.child.stdout.on('data', (chunk: string) => this.onStdout(chunk));
    this.child.stderr.on('data', (chunk: string) => {
      this.stderr += chunk;
    });
    // A script that has exited makes writes fail with EPIPE: that is reported
    // through the exit code, not as an unhandled error.
    this.child.stdin.on('error', () => undefined);
    this.done = new Promise((resolve) => {
      this.child.on('close', (code, signal) => {
        this.exited = true;
        this.exitCode = code;
        this.signal = signal;
        clearTimeout(this.hardTimer);
        ResultProcess.running.delete(this);
        this.wake();
        resolve();
      });
      this.child.on('error', (err) => {
        this.stderr += `\n[spawn error] ${err.message}\n`;
        this.exited = true;
        clearTimeout(this.hardTimer);
        ResultProcess.running.delete(this);
        this.wake();
        resolve();
      });
    });
    if (opts.hardTimeoutMs !== undefined) {
      // The mocha side enforces the time limit: the child is killed, whatever it does.
      this.hardTimer = setTimeout(() => {
        this.killedForTimeout = true;
        this.kill();
      }, opts.hardTimeoutMs);
    }
  }

  private onStdout(chunk: string): void {
    this.stdout += chunk;
    this.partial += chunk;
    let nl: number;
    while ((nl = this.partial.indexOf('\n')) >= 0) {
      const line = this.partial.slice(0, nl).trim();
      this.partial = this.partial.slice(nl + 1);
      const m = /^RESULT ([a-z_]+)=(.*)$/.exec(line);
      if (!m) continue;
      let value: unknown;
      try {
        value = JSON.parse(m[2]!);
      } catch (err) {
        if (this.strictJson) throw err;
        continue; // not a result line after all
      }
      if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
        this.results.push({ key: m[1]!, value: value as Json, taken: false });
      }
    }
    this.wake();
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }

  /** stdout and stderr so far (their ends), for failure messages. */
  transcript(): string {
    const n = this.transcriptChars;
    const tail = (s: string) => (s.length > n ? `[...]${s.slice(-n)}` : s);
    return `\n--- ${this.label} stdout ---\n${tail(this.stdout)}\n--- ${this.label} stderr ---\n${tail(this.stderr)}\n---`;
  }

  /** All of stdout, then all of stderr. */
  get output(): string {
    return this.stdout + this.stderr;
  }

  get hasExited(): boolean {
    return this.exited;
  }

  private status(): string {
    if (this.killedForTimeout) return 'was killed after its time limit';
    if (!this.exited) return 'is still running';
    return this.signal ? `was killed by ${this.signal}` : `exited with code ${this.exitCode}`;
  }

  /**
   * Waits for the next untaken `RESULT key=` line (of one of the keys) that
   * satisfies `match`, and takes it; `what` describes it in failure messages.
   */
  take(key: string | string[], what: string, match: (v: Json) => boolean, timeoutMs: number): Promise<Json> {
    const keys = typeof key === 'string' ? [key] : key;
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.results.find((r) => !r.taken && keys.includes(r.key) && match(r.value));
        if (found) {
          found.taken = true;
          finish();
          resolve(found.value);
        } else if (this.exited) {
          finish();
          reject(new Error(`${this.label} ${this.status()} before ${what}${this.transcript()}`));
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`${this.label}: ${what} did not happen within ${timeoutMs} ms${this.transcript()}`));
      }, timeoutMs);
      const finish = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  /** Results of `key`, taken or not, in order. */
  keys(key: string): Json[] {
    return this.results.filter((r) => r.key === key).map((r) => r.value);
  }

  /** Untaken results of `key` that satisfy `match` (without taking them). */
  find(key: string, match: (v: Json) => boolean = () => true): Json[] {
    return this.results.filter((r) => !r.taken && r.key === key && match(r.value)).map((r) => r.value);
  }

  /** Takes every untaken result of `key` that satisfies `match`, and returns them. */
  takeAll(key: string, match: (v: Json) => boolean = () => true): Json[] {
    const found = this.results.filter((r) => !r.taken && r.key === key && match(r.value));
    for (const r of found) r.taken = true;
    return found.map((r) => r.value);
  }

  command(cmd: Json): void {
    this.child.stdin.write(`${JSON.stringify(cmd)}\n`);
  }

  /** Sends the quit command and closes stdin (unless the process has ended). */
  sendQuit(): void {
    if (this.exited) return;
    this.command({ cmd: 'quit' });
    this.child.stdin.end();
  }

  /** Waits for the process to end by itself; kills it and throws after timeoutMs. */
  async exit(timeoutMs: number): Promise<number | null> {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      this.done.then(() => false),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      this.kill();
      await this.done;
      throw new Error(`${this.label} did not exit within ${timeoutMs} ms${this.transcript()}`);
    }
    return this.exitCode;
  }

  kill(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}

export interface InteropScriptOptions extends Pick<
  ResultProcessOptions,
  'hardTimeoutMs' | 'transcriptChars' | 'strictJson'
> {
  /** The script's own watchdog (--timeout), in seconds. */
  timeoutSeconds: number;
  /** How long a login may take. */
  loginMs: number;
  /** How long any other step may take. */
  stepMs: number;
}

/**
 * One interop script logged in as `jid`, speaking the line protocol of
 * interop_common.py: RESULT lines to wait for, `ready` after login, `closed`
 * after a clean logout.
 */
export class InteropScript extends ResultProcess {
  private readonly loginMs: number;
  protected readonly stepMs: number;

  constructor(
    label: string,
    readonly jid: string,
    script: string,
    args: string[],
    password: string,
    opts: InteropScriptOptions,
  ) {
    const { timeoutSeconds, loginMs, stepMs, ...processOptions } = opts;
    super({
      label,
      ...pythonScript(script, ['--jid', jid, ...args, '--timeout', String(timeoutSeconds)], password),
      ...processOptions,
    });
    this.loginMs = loginMs;
    this.stepMs = stepMs;
  }

  /** Takes the next untaken `RESULT key=` line (of one of the keys) that satisfies `match`, waiting for it. */
  waitFor(
    key: string | string[],
    what: string,
    match: (v: Json) => boolean = () => true,
    timeoutMs = this.stepMs,
  ): Promise<Json> {
    return this.take(key, what, match, timeoutMs);
  }

  async ready(): Promise<void> {
    const ready = await this.waitFor('ready', 'login', () => true, this.loginMs);
    expect(ready.jid, `bound JID${this.transcript()}`).to.equal(this.jid);
  }

  /** Logs out with </stream:stream> and checks the script saw the stream end cleanly. */
  async logout(): Promise<void> {
    this.sendQuit();
    await this.waitFor('closed', 'a clean logout');
    await this.exit(this.stepMs);
    expect(this.exitCode, `${this.label} exit code${this.transcript()}`).to.equal(0);
  }
}

/** How one of the Python scripts here is run: with --debug when CHORUS_INTEROP_DEBUG=1. */
export function pythonScript(
  script: string,
  args: string[],
  password: string,
): Pick<ResultProcessOptions, 'command' | 'args' | 'env'> {
  const all = [join(INTEROP_DIR, script), ...args];
  if (process.env.CHORUS_INTEROP_DEBUG === '1') all.push('--debug');
  return {
    command: PYTHON,
    args: all,
    env: {
      ...process.env,
      INTEROP_PASSWORD: password,
      PYTHONDONTWRITEBYTECODE: '1',
      PYTHONUNBUFFERED: '1',
    },
  };
}

/** Runs `code` under PYTHON: null when it succeeds, otherwise what went wrong (last line). */
export function pythonProblem(code: string): string | null {
  if (!existsSync(PYTHON)) return `${PYTHON} does not exist (Debian package python3)`;
  const r = spawnSync(PYTHON, ['-c', code], { encoding: 'utf8', timeout: 30_000 });
  if (r.status === 0) return null;
  return (r.stderr || r.error?.message || '').trim().split('\n').pop() ?? '';
}

/** The Python code that checks nbxmpp's prerequisite: Gio with a TLS backend. */
export const GIO_TLS_CHECK = [
  'from gi.repository import Gio',
  // nbxmpp's sockets use Gio's TLS, which glib-networking provides.
  'assert Gio.TlsBackend.get_default().supports_tls(), "Gio has no TLS backend (glib-networking)"',
].join('\n');

/**
 * Ends a before hook whose prerequisites are missing: skipped (with the
 * message) when CHORUS_SKIP_INTEROP=1, otherwise failed.
 */
export function interopUnavailable(ctx: Mocha.Context, message: string, warn = false): never {
  if (process.env.CHORUS_SKIP_INTEROP === '1') {
    if (warn) console.warn(`      skipped (CHORUS_SKIP_INTEROP=1): ${message}`);
    ctx.skip();
  }
  throw new Error(`${message}. Set CHORUS_SKIP_INTEROP=1 to skip the interop tests on this machine.`);
}
