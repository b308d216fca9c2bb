// SQLite storage through better-sqlite3. better-sqlite3 is synchronous, so
// the async API is a thin shell; what matters is write throughput, which comes
// from two things:
//  - group commit: writes are queued and committed together in one
//    transaction per batch, because the cost of a commit (WAL append, fsync
//    at checkpoints) dwarfs the cost of the rows;
//  - a writer thread (sqlite-writer.ts) with its own connection applies the
//    batches, so inserts and index upkeep run beside the event loop rather
//    than in it. Each turn's writes are sent at the end of the turn; the
//    batches that reach the thread while it commits go in its next
//    transaction together, so transactions grow with the load while writes
//    do not wait on this thread (see sqlite-writer.ts for why that matters).
// Reads run on this thread's connection (WAL lets them run while the writer
// commits) and wait only for queued writes that could change what they read.
// An in-memory database cannot be shared between connections: it is written
// inline, on this thread, by the same code.

import { existsSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import {
  ItemNotFoundError,
  bareJid,
  checkLimit,
  generateArchiveId,
  type ArchiveAppend,
  type ArchiveEntry,
  type SharedAppend,
  type SharedAppendOptions,
  type ArchiveCaps,
  type ArchiveDeleteQuery,
  type ArchiveItem,
  type ArchiveQuery,
  type ArchiveResult,
  type ArchiveStore,
  type ArchiveSummaryEntry,
  type JsonValue,
  type KeyValStore,
  type MapStore,
  type StorageDriver,
} from './types.ts';
import {
  applyBatches,
  BatchApplier,
  outcomeAt,
  type Outcome,
  type PackedOutcomes,
  type SharedAppendOp,
  type WriteOp,
} from './sqlite-ops.ts';
import {
  archiveFor,
  StatementCache,
  filterClauses,
  findEntry,
  ftsMatch,
  migrate,
  OWNER,
  PURGE_SQL,
  type EntryKey,
  type GetRow,
  type MigrationLog,
  type SqlParam,
} from './sqlite-schema.ts';
import type { WriterData, WriterReply, WriterRequest } from './sqlite-writer.ts';

export interface SqliteOptions {
  /**
   * How long writes may wait to be grouped into one transaction. 0 (default)
   * sends them on the next turn of the event loop, which already batches every
   * write issued by the same burst of I/O callbacks.
   */
  groupCommitMs?: number;
  /**
   * Where writes are applied: 'thread' (default for database files), a worker
   * thread with its own connection, or 'inline', on this thread (always for
   * in-memory databases).
   */
  writer?: 'thread' | 'inline';
  /** Idle time (ms) after which the writer catches up the full-text index [1000]. */
  ftsIdleMs?: number;
  /**
   * The writer thread's nice value, 0 (the server's own priority) to 19
   * (lowest) [10]; Linux only. Archiving every message costs the writer
   * about as much CPU as routing it costs the main thread: where the two
   * compete for cores, the lower priority lets routing go first and the
   * writer catch up in larger transactions.
   */
  writerNice?: number;
  /**
   * Under sustained load, the least time (ms) between two of the writer
   * thread's commits of write-behind archive appends [100]; 0 commits each as
   * soon as the thread is free. Larger commits cost less per message (see
   * sqlite-writer.ts); a read or an awaited write never waits for it.
   */
  busyCommitMs?: number;
  /** Progress of schema migrations; defaults to lines on stderr. */
  log?: MigrationLog;
}

interface ArchiveRow {
  id: string;
  when: number;
  with: string;
  value: string;
  text: string | null;
}

/**
 * An archive item's value as stored: JSON, except that a string (an archived
 * stanza, the common case) is kept as itself behind a single quote, which no
 * JSON text starts with. That spares escaping a whole stanza on the way in
 * and parsing it on the way out; values stored as JSON read back as before.
 */
function encodeItemValue(value: unknown): string {
  return typeof value === 'string' ? `'${value}` : JSON.stringify(value);
}

function decodeItemValue(stored: string): unknown {
  return stored.charCodeAt(0) === 0x27 ? stored.slice(1) : JSON.parse(stored);
}

function rowToItem<T>(row: ArchiveRow): ArchiveItem<T> {
  const item: ArchiveItem<T> = {
    id: row.id,
    when: row.when,
    with: row.with,
    value: decodeItemValue(row.value) as T,
  };
  if (row.text !== null) item.text = row.text;
  return item;
}

interface BatchReply {
  outcomes: PackedOutcomes;
  text?: Outcome;
  commits: number;
  writes: number;
}

/** Applies batches of writes somewhere and says how each went, once committed. */
interface Writer {
  /** `behind`: nothing waits for this batch, so the writer may hold it (busyCommitMs). */
  send(ops: WriteOp[], syncText: boolean, behind: boolean): Promise<BatchReply>;
  /** Something now waits for every batch sent: hold none of them any longer. */
  flush(): void;
  /** Called with true while a batch is in flight (a thread keeps the process alive then). */
  busy(busy: boolean): void;
  close(): Promise<void>;
}

class InlineWriter implements Writer {
  readonly #applier: BatchApplier;
  constructor(db: Database.Database) {
    this.#applier = new BatchApplier(db);
  }
  async send(ops: WriteOp[], syncText: boolean): Promise<BatchReply> {
    const [result] = applyBatches(this.#applier, [{ n: 0, ops, syncText }]);
    // No idle time on this thread: after deletes, the archive's JIDs are pruned at once.
    this.#applier.pruneJidsIfWanted();
    return { ...result!, commits: this.#applier.commits, writes: this.#applier.writes };
  }
  flush(): void {}
  busy(): void {}
  async close(): Promise<void> {}
}

/** Writer threads whose driver has closed, kept for the next driver opened. */
const idleThreads: Worker[] = [];
const MAX_IDLE_THREADS = 2;

function startWriterThread(): Worker {
  const here = import.meta.url;
  const workerData = { sqliteWriter: true };
  if (!here.endsWith('.ts')) return new Worker(new URL('./sqlite-writer.js', here), { workerData });
  // Under tsx (development, tests) the worker needs the TypeScript loader as
  // well, and Node 20 does not pass loader hooks on to workers (not even
  // through --import in execArgv): the worker registers tsx itself. The ESM
  // entry of tsx's API is found next to the CommonJS one (createRequire, as
  // mocha loads this file as CommonJS; the CommonJS entry cannot register
  // ESM hooks from a worker).
  const cjs = createRequire(here).resolve('tsx/esm/api');
  const esm = cjs.replace(/\.cjs$/, '.mjs');
  const api = JSON.stringify(pathToFileURL(existsSync(esm) ? esm : cjs).href);
  const entry = JSON.stringify(new URL('./sqlite-writer.ts', here).href);
  return new Worker(
    `import(${api}).then((m) => { (m.register ?? m.default.register)(); return import(${entry}); });`,
    { eval: true, workerData },
  );
}

class ThreadWriter implements Writer {
  readonly #worker: Worker;
  readonly #pending = new Map<number, { resolve(r: BatchReply): void; reject(e: unknown): void }>();
  #next = 1;
  #failed: Error | undefined;
  #closed: (() => void) | undefined;
  #exited = false;
  readonly #onMessage = (msg: WriterReply) => {
    if (msg.t === 'done') {
      for (const b of msg.batches) {
        const p = this.#pending.get(b.n);
        this.#pending.delete(b.n);
        p?.resolve({ outcomes: b.outcomes, text: b.text, commits: msg.commits, writes: msg.writes });
      }
    } else if (msg.t === 'failed') {
      this.#fail(new Error(`sqlite writer: ${msg.message}`));
    } else if (msg.t === 'closed') {
      this.#closed?.();
    } else if (msg.t === 'opened' && msg.warning !== undefined) {
      this.#log(msg.warning);
    }
  };
  readonly #onError = (err: Error) => this.#fail(err);
  readonly #onExit = () => {
    this.#exited = true;
    this.#fail(new Error('sqlite writer thread stopped'));
    this.#closed?.();
  };

  readonly #log: MigrationLog;

  constructor(data: WriterData, log: MigrationLog) {
    this.#log = log;
    this.#worker = idleThreads.pop() ?? startWriterThread();
    this.#worker.unref();
    this.#worker.on('message', this.#onMessage);
    this.#worker.on('error', this.#onError);
    this.#worker.on('exit', this.#onExit);
    this.#worker.postMessage({ t: 'open', ...data } satisfies WriterRequest);
  }

  #fail(err: Error): void {
    this.#failed ??= err;
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
  }

  send(ops: WriteOp[], syncText: boolean, behind: boolean): Promise<BatchReply> {
    if (this.#failed) return Promise.reject(this.#failed);
    const n = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(n, { resolve, reject });
      const msg: WriterRequest = { t: 'batch', n, ops };
      if (syncText) msg.syncText = true;
      if (behind) msg.behind = true;
      this.#worker.postMessage(msg);
    });
  }

  flush(): void {
    if (!this.#failed) this.#worker.postMessage({ t: 'flush' } satisfies WriterRequest);
  }

  busy(busy: boolean): void {
    if (busy) this.#worker.ref();
    else this.#worker.unref();
  }

  async close(): Promise<void> {
    const w = this.#worker;
    // Keep the process up until the thread has closed its connection.
    w.ref();
    const healthy = this.#failed === undefined;
    if (!this.#exited) {
      await new Promise<void>((resolve) => {
        this.#closed = resolve;
        w.postMessage({ t: 'close' } satisfies WriterRequest);
      });
    }
    w.off('message', this.#onMessage);
    w.off('error', this.#onError);
    w.off('exit', this.#onExit);
    w.unref();
    if (healthy && this.#failed === undefined && idleThreads.length < MAX_IDLE_THREADS) idleThreads.push(w);
    else void w.terminate();
  }
}

interface Queued {
  resolve(value: number | null): void;
  reject(error: unknown): void;
}

function outcomeError(o: Extract<Outcome, { ok: false }>): Error {
  const err = new Error(o.message) as Error & { code?: string };
  if (o.code !== undefined) err.code = o.code;
  return err;
}

/**
 * Batches sent to the writer and not yet acknowledged, at most. Beyond it,
 * writes queue here: a writer that cannot keep up then gets fewer, larger
 * batches. Room for the batches of a whole spaced commit (busyCommitMs) under
 * load, even when each event-loop turn carries only a few writes: writes
 * queued here live long enough for the garbage collector to move them.
 */
const MAX_IN_FLIGHT = 2048;

/** Queued writes that are sent at once, without waiting for the end of the turn. */
const SEND_AT = 64;

/** See SqliteOptions.writerNice. */
export const DEFAULT_WRITER_NICE = 10;

const defaultLog: MigrationLog = (message) => process.stderr.write(`chorus storage (sqlite): ${message}\n`);

export class SqliteDriver implements StorageDriver {
  readonly name = 'sqlite';
  readonly #db: Database.Database;
  readonly #writer: Writer;
  readonly #groupCommitMs: number;
  readonly #statements: StatementCache;
  #closed = false;
  #commits = 0;
  #writes = 0;

  // The queue: writes not yet sent, which go as batch number #queueNo.
  #queue: WriteOp[] = [];
  /** How to settle each queued write; null for an appendShared, which settles #queueShared. */
  #queueCallbacks: (Queued | null)[] = [];
  /**
   * The one promise of every appendShared in the queue. Archiving a message
   * is such a write, and a promise (with its callbacks) per message, alive
   * until the commit, was a good part of what the garbage collector had to
   * move. One append of a batch cannot fail alone in practice (its rows have
   * fresh keys); should one, every appendShared of the batch is told.
   */
  #queueShared: (Queued & { promise: Promise<void> }) | undefined;
  /** Text reads waiting for the full-text index to catch up along with the queued batch. */
  #queueTextWaiters: Queued[] = [];
  /** Nothing waits for the queued batch yet: only write-behind appends are in it. */
  #queueBehind = true;
  /** The last batch sent as write-behind, and the last one the writer was told to stop holding. */
  #behindSent = 0;
  #flushedUpTo = 0;
  #queueNo = 1;
  /** Cancels the scheduled send; set while one is scheduled. */
  #cancelSend: (() => void) | undefined;
  /** Batches sent and not yet acknowledged. */
  #inFlight = 0;
  /** Highest acknowledged (committed) batch number. */
  #acked = 0;
  /** Reads waiting for a batch to be acknowledged. */
  #waiters: { n: number; resolve(): void; reject(e: unknown): void }[] = [];
  /** Per (host, store): which batches hold writes to it, see Scope. */
  readonly #scopes = new Map<string, Scope>();

  private constructor(db: Database.Database, writer: Writer, opts: SqliteOptions) {
    this.#db = db;
    this.#statements = new StatementCache(db);
    this.#writer = writer;
    this.#groupCommitMs = opts.groupCommitMs ?? 0;
  }

  static open(path: string, opts: SqliteOptions = {}): SqliteDriver {
    if (opts.groupCommitMs !== undefined && !(opts.groupCommitMs >= 0)) {
      throw new RangeError(`groupCommitMs must be >= 0, got ${opts.groupCommitMs}`);
    }
    if (opts.busyCommitMs !== undefined && !(opts.busyCommitMs >= 0 && Number.isFinite(opts.busyCommitMs))) {
      throw new RangeError(`busyCommitMs must be a finite number >= 0, got ${opts.busyCommitMs}`);
    }
    const nice = opts.writerNice ?? DEFAULT_WRITER_NICE;
    if (!Number.isInteger(nice) || nice < 0 || nice > 19) {
      throw new RangeError(`writerNice must be an integer from 0 to 19, got ${nice}`);
    }
    const inMemory =
      path === ':memory:' || path === '' || (path.startsWith('file:') && path.includes('memory'));
    if (path !== ':memory:' && path !== '' && !path.startsWith('file:')) {
      mkdirSync(dirname(path), { recursive: true });
    }
    const db = new Database(path);
    let writer: Writer;
    try {
      db.pragma('journal_mode = WAL');
      // With WAL, NORMAL only risks the last commits on power loss, never corruption.
      db.pragma('synchronous = NORMAL');
      migrate(db, opts.log ?? defaultLog);
      // Every commit of the writer thread's connection invalidates this
      // connection's page cache; with the file mapped, reading the pages
      // again costs no system calls.
      if (!inMemory) db.pragma('mmap_size = 268435456');
      writer =
        inMemory || opts.writer === 'inline'
          ? new InlineWriter(db)
          : new ThreadWriter(
              { path, ftsIdleMs: opts.ftsIdleMs ?? 1000, busyCommitMs: opts.busyCommitMs ?? 100, nice },
              opts.log ?? defaultLog,
            );
    } catch (err) {
      db.close();
      throw err;
    }
    return new SqliteDriver(db, writer, opts);
  }

  // -- plumbing ------------------------------------------------------------

  #check(): void {
    if (this.#closed) throw new Error('storage driver "sqlite" is closed');
  }

  readonly #getRow: GetRow = (sql, params) => this.#stmt(sql).get(...params);

  #stmt(sql: string): Database.Statement<SqlParam[]> {
    return this.#statements.get(sql);
  }

  /** The scope of a (host, store), made on first use and kept (there are few). */
  #scope(host: string, store: string): Scope {
    const key = `${host}\u0000${store}`;
    let scope = this.#scopes.get(key);
    if (scope === undefined) {
      scope = { any: 0, whole: 0, users: new Map(), sweepAt: SWEEP_AT };
      this.#scopes.set(key, scope);
    }
    return scope;
  }

  /**
   * Queues a write for the next batch; resolves once that batch has
   * committed. `user`: whose reads must see it (null: every user of the store).
   */
  #write(scope: Scope, user: string | null, op: WriteOp): Promise<number | null> {
    try {
      this.#check();
    } catch (err) {
      return Promise.reject(err);
    }
    this.#mark(scope, user);
    this.#queueBehind = false;
    return new Promise<number | null>((resolve, reject) => {
      this.#enqueue(op, { resolve, reject });
    });
  }

  /** Queues an appendShared; its promise is the one of every appendShared in this batch. */
  #writeShared(scope: Scope, users: string[], op: WriteOp, behind: boolean): Promise<void> {
    try {
      this.#check();
    } catch (err) {
      return Promise.reject(err);
    }
    this.#mark(scope, users);
    if (!behind) this.#queueBehind = false;
    let shared = this.#queueShared;
    if (shared === undefined) {
      let settle!: Queued;
      const promise = new Promise<void>((resolve, reject) => {
        settle = { resolve: () => resolve(), reject };
      });
      shared = this.#queueShared = { ...settle, promise };
    }
    this.#enqueue(op, null);
    return shared.promise;
  }

  /** Notes that the queued batch writes to these users of the scope. */
  #mark(scope: Scope, users: string | string[] | null): void {
    const n = this.#queueNo;
    scope.any = n;
    if (users === null) scope.whole = n;
    else if (typeof users === 'string') scope.users.set(users, n);
    else for (const u of users) scope.users.set(u, n);
  }

  /** Drops acknowledged entries from scopes that have grown. */
  #sweep(): void {
    for (const scope of this.#scopes.values()) {
      if (scope.users.size < scope.sweepAt) continue;
      for (const [user, n] of scope.users) if (n <= this.#acked) scope.users.delete(user);
      // Users still waiting stay: sweep again only once as many more have come.
      scope.sweepAt = Math.max(SWEEP_AT, 2 * scope.users.size);
    }
  }

  #enqueue(op: WriteOp, callback: Queued | null): void {
    this.#queue.push(op);
    this.#queueCallbacks.push(callback);
    // A busy turn of the event loop (hundreds of messages) sends as it goes:
    // its first writes would otherwise stay here until it ends.
    if (this.#queue.length >= SEND_AT && this.#groupCommitMs === 0) this.#send();
    else this.#schedule();
  }

  #schedule(): void {
    if (this.#cancelSend !== undefined || this.#inFlight >= MAX_IN_FLIGHT) return;
    if (this.#groupCommitMs > 0) {
      const t = setTimeout(() => this.#send(), this.#groupCommitMs);
      this.#cancelSend = () => clearTimeout(t);
    } else {
      const t = setImmediate(() => this.#send());
      this.#cancelSend = () => clearImmediate(t);
    }
  }

  /**
   * Sends the queued writes as one batch, unless MAX_IN_FLIGHT are already
   * waiting for their commit (then they follow the next acknowledgement).
   */
  #send(): void {
    this.#cancelSend?.();
    this.#cancelSend = undefined;
    if (this.#inFlight >= MAX_IN_FLIGHT) return;
    const syncText = this.#queueTextWaiters.length > 0;
    if (this.#queue.length === 0 && !syncText) return;
    const ops = this.#queue;
    const callbacks = this.#queueCallbacks;
    const shared = this.#queueShared;
    const textWaiters = this.#queueTextWaiters;
    const behind = this.#queueBehind && !syncText;
    const n = this.#queueNo++;
    this.#queue = [];
    this.#queueCallbacks = [];
    this.#queueShared = undefined;
    this.#queueTextWaiters = [];
    this.#queueBehind = true;
    if (behind) this.#behindSent = n;
    if (this.#inFlight++ === 0) this.#writer.busy(true);
    const settle = (reply: BatchReply | undefined, error: unknown) => {
      this.#inFlight--;
      this.#acked = n;
      if (reply) {
        this.#commits = reply.commits;
        this.#writes = reply.writes;
      }
      this.#sweep();
      let sharedFailed = false;
      let sharedFailure: unknown;
      callbacks.forEach((c, i) => {
        const o = reply && outcomeAt(reply.outcomes, i);
        if (o?.ok) {
          c?.resolve(o.value);
          return;
        }
        const failure = o === undefined ? error : outcomeError(o);
        if (c !== null) c.reject(failure);
        else if (!sharedFailed) {
          sharedFailed = true;
          sharedFailure = failure;
        }
      });
      if (sharedFailed) shared?.reject(sharedFailure);
      else shared?.resolve(null);
      for (const w of textWaiters) {
        const o = reply?.text;
        if (o === undefined) w.reject(error);
        else if (o.ok) w.resolve(null);
        else w.reject(outcomeError(o));
      }
      const waiting = this.#waiters;
      this.#waiters = [];
      for (const w of waiting) {
        if (w.n > n) this.#waiters.push(w);
        else if (reply) w.resolve();
        else w.reject(error);
      }
      // What had to wait for an acknowledgement goes now.
      if (this.#queue.length > 0 || this.#queueTextWaiters.length > 0) this.#send();
      if (this.#inFlight === 0) this.#writer.busy(false);
    };
    this.#writer.send(ops, syncText, behind).then(
      (reply) => settle(reply, undefined),
      (err: unknown) => settle(undefined, err),
    );
  }

  /** Resolves once batch `n` (and every one before it) is acknowledged. */
  #waitFor(n: number): Promise<void> {
    if (n <= this.#acked) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.#waiters.push({ n, resolve, reject });
      // A read is waiting: send the queued batch now rather than at the next
      // tick, and have the writer hold none of the batches sent before it.
      if (n === this.#queueNo) {
        this.#queueBehind = false;
        this.#send();
      }
      if (this.#behindSent > this.#acked && this.#behindSent > this.#flushedUpTo) {
        this.#flushedUpTo = this.#behindSent;
        this.#writer.flush();
      }
    });
  }

  /** Resolves once every write queued so far is committed and in the full-text index. */
  #syncText(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#queueTextWaiters.push({ resolve: () => resolve(), reject });
      this.#send();
    });
  }

  /**
   * Runs a read, first waiting for queued writes if any of them could change
   * what it reads, so reads always see earlier writes. Only those: a read of
   * one user's preferences must not wait for another store's queued appends,
   * or every message would cost its own transaction and group commit would be
   * lost on the hot path.
   */
  async #read<R>(scope: Scope, user: string | null, run: () => R, text = false): Promise<R> {
    this.#check();
    if (text) {
      await this.#syncText();
    } else {
      const n =
        user === null
          ? scope.any
          : // this user's writes, or a queued whole-store write (a retention sweep)
            Math.max(scope.users.get(user) ?? 0, scope.whole);
      if (n > this.#acked) await this.#waitFor(n);
    }
    this.#check();
    return run();
  }

  /** Committed transactions and the writes they carried, to observe how well grouping works. */
  get stats(): { commits: number; writes: number } {
    return { commits: this.#commits, writes: this.#writes };
  }

  async flush(): Promise<void> {
    this.#check();
    await this.#waitFor(this.#queue.length > 0 ? this.#queueNo : this.#queueNo - 1);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.#waitFor(this.#queue.length > 0 ? this.#queueNo : this.#queueNo - 1);
    } finally {
      await this.#writer.close();
      this.#statements.clear();
      this.#db.close();
    }
  }

  // -- keyval --------------------------------------------------------------

  keyval<T = JsonValue>(host: string, store: string): KeyValStore<T> {
    const scope = this.#scope(host, store);
    const read = <R>(user: string | null, fn: () => R) => this.#read(scope, user, fn);
    const write = (user: string, op: WriteOp) => this.#write(scope, user, op);
    const stmt = (sql: string) => this.#stmt(sql);
    return {
      get(user) {
        return read(user, () => {
          const row = stmt('SELECT value FROM keyval WHERE host = ? AND store = ? AND user = ?').get(
            host,
            store,
            user,
          ) as { value: string } | undefined;
          return row ? (JSON.parse(row.value) as T) : null;
        });
      },
      async set(user, value) {
        const json = value === null ? null : JSON.stringify(value);
        await write(user, { k: 'kvSet', host, store, user, value: json });
      },
      async *users() {
        // Keyset pages rather than a live iterator: better-sqlite3 refuses other
        // statements on the connection while an iterator is open, and the
        // consumer may well write between steps.
        let last: string | undefined;
        for (;;) {
          const page = await read(
            null,
            () =>
              (last === undefined
                ? stmt('SELECT user FROM keyval WHERE host = ? AND store = ? ORDER BY user LIMIT ?').all(
                    host,
                    store,
                    USERS_PAGE,
                  )
                : stmt(
                    'SELECT user FROM keyval WHERE host = ? AND store = ? AND user > ? ORDER BY user LIMIT ?',
                  ).all(host, store, last, USERS_PAGE)) as { user: string }[],
          );
          for (const r of page) yield r.user;
          if (page.length < USERS_PAGE) return;
          last = page[page.length - 1]!.user;
        }
      },
    };
  }

  // -- map -----------------------------------------------------------------

  map<T = JsonValue>(host: string, store: string): MapStore<T> {
    const scope = this.#scope(host, store);
    const read = <R>(user: string | null, fn: () => R) => this.#read(scope, user, fn);
    const write = (user: string, op: WriteOp) => this.#write(scope, user, op);
    const stmt = (sql: string) => this.#stmt(sql);
    return {
      get(user, key) {
        return read(user, () => {
          const row = stmt('SELECT value FROM map WHERE host = ? AND store = ? AND user = ? AND key = ?').get(
            host,
            store,
            user,
            key,
          ) as { value: string } | undefined;
          return row ? (JSON.parse(row.value) as T) : null;
        });
      },
      async set(user, key, value) {
        const json = value === null ? null : JSON.stringify(value);
        await write(user, { k: 'mapSet', host, store, user, key, value: json });
      },
      getAll(user) {
        return read(user, () => {
          const rows = stmt('SELECT key, value FROM map WHERE host = ? AND store = ? AND user = ?').all(
            host,
            store,
            user,
          ) as { key: string; value: string }[];
          return new Map(rows.map((r) => [r.key, JSON.parse(r.value) as T]));
        });
      },
      async deleteAll(user) {
        await write(user, { k: 'mapClear', host, store, user });
      },
    };
  }

  // -- archive -------------------------------------------------------------

  /**
   * The SQL for one page of `find`: the filters, the keyset bounds from the
   * before/after anchors, and an ORDER BY that walks the index from whichever
   * end the page is taken. Fetches one row more than the limit to learn
   * whether the page is complete.
   */
  #pageQuery(
    host: string,
    store: string,
    user: string,
    query: ArchiveQuery,
  ): { sql: string; params: SqlParam[]; fromEnd: boolean } {
    const owner: SqlParam[] = [host, store, user];
    const findId = (id: string) => findEntry(this.#getRow, owner, id);
    const anchor = (id: string): EntryKey => {
      const key = findId(id);
      if (!key) throw new ItemNotFoundError(id);
      return key;
    };
    const where = [`oid = ${OWNER}`];
    const params: SqlParam[] = [...owner];
    if (query.after !== undefined) {
      const a = anchor(query.after);
      where.push('("when", seq) > (?, ?)');
      params.push(a.when, a.seq);
    }
    if (typeof query.before === 'string') {
      const b = anchor(query.before);
      where.push('("when", seq) < (?, ?)');
      params.push(b.when, b.seq);
    }
    filterClauses(query, where, params, { get: this.#getRow, owner });
    // `before` and `reverse` both page backwards: the page is taken from the newest end.
    const fromEnd = query.reverse === true || query.before !== undefined;
    const dir = fromEnd ? 'DESC' : 'ASC';
    // A conversation is read off its own index. Without statistics the planner
    // would rather walk the owner's whole timeline (the key) and filter it,
    // which also needs no sort but reads every other conversation's entries.
    const from = archiveFor(query);
    let sql =
      `SELECT id, "when", jid AS "with", value, text FROM ${from} ` +
      `JOIN archive_item ON item_seq = seq JOIN archive_jid ON jid_id = with_id ` +
      `WHERE ${where.join(' AND ')} ORDER BY "when" ${dir}, seq ${dir}`;
    if (query.limit !== undefined) {
      sql += ' LIMIT ?';
      params.push(query.limit + 1);
    }
    return { sql, params, fromEnd };
  }

  /**
   * EXPLAIN QUERY PLAN of the page query `find` would run, one line per plan
   * step. For tests and diagnostics: a page must be an index SEARCH, never a
   * SCAN of the archive. Sees committed writes only.
   */
  queryPlan(host: string, store: string, user: string, query: ArchiveQuery = {}): string[] {
    this.#check();
    const { sql, params } = this.#pageQuery(host, store, user, query);
    return this.#explain(sql, params);
  }

  /** EXPLAIN QUERY PLAN of any statement on the reading connection (diagnostics, tests). */
  #explain(sql: string, params: SqlParam[]): string[] {
    const rows = this.#db.prepare<SqlParam[]>(`EXPLAIN QUERY PLAN ${sql}`).all(...params) as {
      detail: string;
    }[];
    return rows.map((r) => r.detail);
  }

  /**
   * EXPLAIN QUERY PLAN of the other archive statements (count, summary, total,
   * delete, retention), for the "indexes only" checks.
   */
  archivePlans(
    host: string,
    store: string,
    user: string,
    query: ArchiveQuery = {},
  ): Record<string, string[]> {
    this.#check();
    const owner: SqlParam[] = [host, store, user];
    const where = [`oid = ${OWNER}`];
    const p: SqlParam[] = [...owner];
    filterClauses(query, where, p, { get: this.#getRow, owner });
    return {
      count: this.#explain(`SELECT COUNT(*) AS n FROM archive WHERE oid = ${OWNER}`, owner),
      total: this.#explain(`SELECT COUNT(*) AS n FROM ${archiveFor(query)} WHERE ${where.join(' AND ')}`, p),
      summary: this.#explain(SUMMARY_SQL, owner),
      delete: this.#explain(`DELETE FROM ${archiveFor(query)} WHERE ${where.join(' AND ')}`, p),
      purge: this.#explain(PURGE_SQL, [host, store, 0, 10]),
    };
  }

  archive<T = JsonValue>(host: string, store: string): ArchiveStore<T> {
    const scope = this.#scope(host, store);
    const read = <R>(user: string | null, fn: () => R, text = false) => this.#read(scope, user, fn, text);
    const write = (user: string | null, op: WriteOp) => this.#write(scope, user, op);
    const writeShared = (users: string[], op: WriteOp, behind: boolean) =>
      this.#writeShared(scope, users, op, behind);
    const stmt = (sql: string) => this.#stmt(sql);
    const getRow = this.#getRow;
    const pageQuery = (user: string, query: ArchiveQuery) => this.#pageQuery(host, store, user, query);
    const caps: ArchiveCaps = { total: true, fullText: true, ids: true, before: true };

    return {
      caps,
      appendShared(entries: ArchiveEntry[], item: SharedAppend<T>, options?: SharedAppendOptions) {
        if (entries.length === 0) return Promise.resolve();
        const op: SharedAppendOp = [
          'appendShared',
          host,
          store,
          item.when ?? Date.now(),
          encodeItemValue(item.value),
          item.text ?? null,
        ];
        const users: string[] = [];
        for (const e of entries) {
          op.push(e.user, e.id, e.with, bareJid(e.with));
          users.push(e.user);
        }
        return writeShared(users, op, options?.behind === true);
      },

      async append(user, item: ArchiveAppend<T>) {
        const when = item.when ?? Date.now();
        const id = item.id ?? generateArchiveId(when);
        await write(user, {
          k: 'append',
          host,
          store,
          user,
          id,
          replace: item.id !== undefined && item.fresh !== true,
          when,
          with: item.with,
          bare: bareJid(item.with),
          value: encodeItemValue(item.value),
          text: item.text ?? null,
        });
        return id;
      },

      find(user, query: ArchiveQuery = {}): Promise<ArchiveResult<T>> {
        // A text query first has the writer bring the full-text index up to date.
        const text = ftsMatch(query.text) !== null;
        return read(
          user,
          () => {
            checkLimit(query.limit);
            const { sql, params, fromEnd } = pageQuery(user, query);
            const rows = stmt(sql).all(...params) as ArchiveRow[];
            let complete = true;
            if (query.limit !== undefined && rows.length > query.limit) {
              rows.length = query.limit;
              complete = false;
            }
            // Rows arrive in walking order; callers want chronological unless `reverse`.
            if (fromEnd && !query.reverse) rows.reverse();
            const result: ArchiveResult<T> = { items: rows.map((r) => rowToItem<T>(r)), complete };
            if (query.total) {
              const owner: SqlParam[] = [host, store, user];
              const where = [`oid = ${OWNER}`];
              const p: SqlParam[] = [...owner];
              filterClauses(query, where, p, { get: getRow, owner });
              const row = stmt(
                `SELECT COUNT(*) AS n FROM ${archiveFor(query)} WHERE ${where.join(' AND ')}`,
              ).get(...p) as {
                n: number;
              };
              result.total = row.n;
            }
            return result;
          },
          text,
        );
      },

      async delete(user, query: ArchiveDeleteQuery = {}) {
        const filter: ArchiveDeleteQuery = {};
        for (const k of ['start', 'end', 'with', 'ids', 'text', 'olderThan'] as const) {
          if (query[k] !== undefined) (filter as Record<string, unknown>)[k] = query[k];
        }
        return (await write(user, { k: 'delete', host, store, user, filter })) ?? 0;
      },

      count(user) {
        return read(
          user,
          () =>
            (
              stmt(`SELECT COUNT(*) AS n FROM archive WHERE oid = ${OWNER}`).get(host, store, user) as {
                n: number;
              }
            ).n,
        );
      },

      summary(user) {
        return read(user, () => {
          const rows = stmt(SUMMARY_SQL).all(host, store, user) as {
            w: string;
            n: number;
            first: number;
            last: number;
          }[];
          return new Map<string, ArchiveSummaryEntry>(
            rows.map((r) => [r.w, { count: r.n, first: r.first, last: r.last }]),
          );
        });
      },

      async deleteOlderThan(when, batchSize, progress) {
        if (!Number.isInteger(batchSize) || batchSize < 1) {
          throw new RangeError(`batchSize must be a positive integer, got ${batchSize}`);
        }
        let total = 0;
        for (;;) {
          // Each batch is its own write, so other writers get in between batches.
          const n = (await write(null, { k: 'purge', host, store, before: when, limit: batchSize })) ?? 0;
          total += n;
          if (n < batchSize) return total;
          progress?.(total);
        }
      },
    };
  }
}

const USERS_PAGE = 256;

const SUMMARY_SQL =
  'SELECT jid AS w, n, first, last FROM (SELECT with_id, COUNT(*) AS n, MIN("when") AS first, ' +
  `MAX("when") AS last FROM archive WHERE oid = ${OWNER} GROUP BY with_id) JOIN archive_jid ON jid_id = with_id`;

/**
 * What the queued and unacknowledged writes of one (host, store) touch: a
 * read waits for the acknowledgement of the latest batch that wrote what it
 * reads, and only then. Batch numbers, not sets: an entry whose batch is
 * acknowledged is stale and harmless, and is swept out now and then.
 */
interface Scope {
  /** The latest batch with any write to the store. */
  any: number;
  /** The latest batch with a write to the whole store (retention), which every user's reads see. */
  whole: number;
  /** Per user, the latest batch with a write to their data. */
  users: Map<string, number>;
  /** Size of `users` at which acknowledged entries are swept out. */
  sweepAt: number;
}

const SWEEP_AT = 4096;
