// SQLite storage through better-sqlite3. better-sqlite3 is synchronous, so
// the async API is a thin shell; what matters is write throughput, which comes
// from group commit: writes are queued and committed together in one
// transaction per event-loop tick (or per `groupCommitMs`), because the cost of
// a commit (WAL append + fsync at checkpoints) dwarfs the cost of the rows.

import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import {
  ItemNotFoundError,
  bareJid,
  checkLimit,
  generateArchiveId,
  textTerms,
  type ArchiveAppend,
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

export interface SqliteOptions {
  /**
   * How long writes may wait to be grouped into one transaction. 0 (default)
   * commits on the next turn of the event loop, which already batches every
   * write issued by the same burst of I/O callbacks.
   */
  groupCommitMs?: number;
}

const SCHEMA_VERSION = 1;

// `seq` is an explicit INTEGER PRIMARY KEY (an alias of the rowid) so that
// VACUUM cannot renumber it: it is both the tie-breaker for equal `when` and
// the key the FTS index points at. Secondary indexes carry it implicitly as
// their last column, which is what lets (when, seq) keyset paging run off
// (host, store, user, when) without sorting.
const SCHEMA = `
CREATE TABLE keyval (
  host TEXT NOT NULL, store TEXT NOT NULL, user TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY (host, store, user)
) WITHOUT ROWID;

CREATE TABLE map (
  host TEXT NOT NULL, store TEXT NOT NULL, user TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY (host, store, user, key)
) WITHOUT ROWID;

CREATE TABLE archive (
  seq INTEGER PRIMARY KEY,
  host TEXT NOT NULL, store TEXT NOT NULL, user TEXT NOT NULL,
  id TEXT NOT NULL,
  "when" INTEGER NOT NULL,
  "with" TEXT NOT NULL,
  bare_with TEXT NOT NULL,
  value TEXT NOT NULL,
  text TEXT
);
CREATE UNIQUE INDEX archive_id ON archive (host, store, user, id);
CREATE INDEX archive_when ON archive (host, store, user, "when");
CREATE INDEX archive_with ON archive (host, store, user, bare_with, "when");
-- Retention sweeps every user of a store at once.
CREATE INDEX archive_retention ON archive (host, store, "when");

CREATE VIRTUAL TABLE archive_fts USING fts5(
  text, content = 'archive', content_rowid = 'seq', tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER archive_fts_insert AFTER INSERT ON archive WHEN new.text IS NOT NULL BEGIN
  INSERT INTO archive_fts (rowid, text) VALUES (new.seq, new.text);
END;
CREATE TRIGGER archive_fts_delete AFTER DELETE ON archive WHEN old.text IS NOT NULL BEGIN
  INSERT INTO archive_fts (archive_fts, rowid, text) VALUES ('delete', old.seq, old.text);
END;
CREATE TRIGGER archive_fts_update AFTER UPDATE OF text ON archive BEGIN
  INSERT INTO archive_fts (archive_fts, rowid, text) SELECT 'delete', old.seq, old.text WHERE old.text IS NOT NULL;
  INSERT INTO archive_fts (rowid, text) SELECT new.seq, new.text WHERE new.text IS NOT NULL;
END;
`;

const USERS_PAGE = 256;

type SqlParam = string | number | null;

interface PendingWrite {
  run(): unknown;
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

interface ArchiveRow {
  id: string;
  when: number;
  with: string;
  value: string;
  text: string | null;
}

interface Anchor {
  when: number;
  seq: number;
}

type Filter = Pick<ArchiveQuery, 'start' | 'end' | 'with' | 'ids' | 'text'> & { olderThan?: number };

/** WHERE clauses for the filter part of a query (everything except paging). */
function filterClauses(filter: Filter, where: string[], params: SqlParam[]): void {
  if (filter.start !== undefined) {
    where.push('"when" >= ?');
    params.push(filter.start);
  }
  if (filter.end !== undefined) {
    where.push('"when" <= ?');
    params.push(filter.end);
  }
  if (filter.olderThan !== undefined) {
    where.push('"when" < ?');
    params.push(filter.olderThan);
  }
  if (filter.with !== undefined) {
    // Even a full-JID filter constrains bare_with so the (bare_with, when) index applies.
    where.push('bare_with = ?');
    params.push(bareJid(filter.with));
    if (filter.with.includes('/')) {
      where.push('"with" = ?');
      params.push(filter.with);
    }
  }
  if (filter.ids !== undefined) {
    // One JSON parameter instead of N placeholders keeps the statement cache bounded.
    where.push('id IN (SELECT value FROM json_each(?))');
    params.push(JSON.stringify(filter.ids));
  }
  if (filter.text !== undefined) {
    const terms = textTerms(filter.text);
    // No searchable terms means no text constraint (an empty MATCH is a syntax error).
    if (terms.length > 0) {
      where.push('seq IN (SELECT rowid FROM archive_fts WHERE archive_fts MATCH ?)');
      // Quoted terms are plain words to FTS5 (no operators); juxtaposition is AND.
      params.push(terms.map((t) => `"${t.replaceAll('"', '""')}"`).join(' '));
    }
  }
}

function rowToItem<T>(row: ArchiveRow): ArchiveItem<T> {
  const item: ArchiveItem<T> = {
    id: row.id,
    when: row.when,
    with: row.with,
    value: JSON.parse(row.value) as T,
  };
  if (row.text !== null) item.text = row.text;
  return item;
}

export class SqliteDriver implements StorageDriver {
  readonly name = 'sqlite';
  readonly #db: Database.Database;
  readonly #groupCommitMs: number;
  readonly #statements = new Map<string, Database.Statement<SqlParam[]>>();
  #queue: PendingWrite[] = [];
  /** Cancels the scheduled commit; set while one is scheduled. */
  #cancelCommit: (() => void) | undefined;
  #closed = false;
  #commits = 0;
  /** Scopes with queued writes: a read commits first only when its scope is among them. */
  readonly #pendingUsers = new Set<string>();
  readonly #pendingStores = new Set<string>();
  #writes = 0;
  // Calling a transaction function while a transaction is open makes
  // better-sqlite3 use a SAVEPOINT, so one failing write in a batch is rolled
  // back alone instead of taking the whole group down with it.
  readonly #savepoint: (fn: () => unknown) => unknown;

  private constructor(db: Database.Database, opts: SqliteOptions) {
    this.#db = db;
    this.#groupCommitMs = opts.groupCommitMs ?? 0;
    this.#savepoint = db.transaction((fn: () => unknown) => fn());
  }

  static open(path: string, opts: SqliteOptions = {}): SqliteDriver {
    if (opts.groupCommitMs !== undefined && !(opts.groupCommitMs >= 0)) {
      throw new RangeError(`groupCommitMs must be >= 0, got ${opts.groupCommitMs}`);
    }
    if (path !== ':memory:' && path !== '' && !path.startsWith('file:')) {
      mkdirSync(dirname(path), { recursive: true });
    }
    const db = new Database(path);
    try {
      db.pragma('journal_mode = WAL');
      // With WAL, NORMAL only risks the last commits on power loss, never corruption.
      db.pragma('synchronous = NORMAL');
      SqliteDriver.#migrate(db);
    } catch (err) {
      db.close();
      throw err;
    }
    return new SqliteDriver(db, opts);
  }

  static #migrate(db: Database.Database): void {
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version === SCHEMA_VERSION) return;
    if (version > SCHEMA_VERSION) {
      throw new Error(
        `database schema version ${version} is newer than this Chorus supports (${SCHEMA_VERSION})`,
      );
    }
    // Two processes may open a new database at once (`chorus adduser` during
    // a first start): take the write lock first and look again inside it.
    db.transaction(() => {
      if ((db.pragma('user_version', { simple: true }) as number) === SCHEMA_VERSION) return;
      db.exec(SCHEMA);
      db.pragma(`user_version = ${SCHEMA_VERSION}`);
    }).immediate();
  }

  // -- plumbing ------------------------------------------------------------

  #check(): void {
    if (this.#closed) throw new Error('storage driver "sqlite" is closed');
  }

  #stmt(sql: string): Database.Statement<SqlParam[]> {
    let s = this.#statements.get(sql);
    if (!s) {
      s = this.#db.prepare<SqlParam[]>(sql);
      this.#statements.set(sql, s);
    }
    return s;
  }

  /** Queues a write for the next group commit; resolves after that commit. */
  #write<R>(scope: Scope, run: () => R): Promise<R> {
    try {
      this.#check();
    } catch (err) {
      return Promise.reject(err);
    }
    this.#pendingUsers.add(scope.user);
    this.#pendingStores.add(scope.store);
    return new Promise<R>((resolve, reject) => {
      this.#queue.push({ run, resolve: resolve as (value: unknown) => void, reject });
      if (this.#cancelCommit === undefined) {
        if (this.#groupCommitMs > 0) {
          const t = setTimeout(() => this.#commit(), this.#groupCommitMs);
          this.#cancelCommit = () => clearTimeout(t);
        } else {
          const t = setImmediate(() => this.#commit());
          this.#cancelCommit = () => clearImmediate(t);
        }
      }
    });
  }

  /**
   * Runs a read, first committing queued writes if any of them could change
   * what it reads, so reads always see earlier writes. Only those: a read of
   * one user's preferences must not force a commit of another store's
   * queued appends, or every message would cost its own transaction and
   * group commit would be lost on the hot path.
   */
  async #read<R>(scope: Scope, run: () => R): Promise<R> {
    this.#check();
    const wholeStore = scope.user === scope.store;
    const affected = wholeStore
      ? this.#pendingStores.has(scope.store)
      : // this user's writes, or a queued whole-store write (a retention sweep)
        this.#pendingUsers.has(scope.user) || this.#pendingUsers.has(scope.store);
    if (affected) this.#commit();
    return run();
  }

  #commit(): void {
    this.#cancelCommit?.();
    this.#cancelCommit = undefined;
    const batch = this.#queue;
    this.#pendingUsers.clear();
    this.#pendingStores.clear();
    if (batch.length === 0) return;
    this.#queue = [];
    // The whole batch runs in one transaction without per-write savepoints
    // (they cost about as much as the writes). If any write fails, the batch
    // is rolled back and every write is retried in a savepoint of its own, so
    // one bad write still fails alone.
    const values: unknown[] = [];
    let failed = false;
    try {
      this.#db.transaction(() => {
        for (const w of batch) values.push(w.run());
      })();
    } catch {
      failed = true;
    }
    if (!failed) {
      this.#commits++;
      this.#writes += batch.length;
      batch.forEach((w, i) => w.resolve(values[i]));
      return;
    }
    const outcomes: { ok: boolean; value: unknown }[] = [];
    try {
      this.#db.transaction(() => {
        for (const w of batch) {
          try {
            outcomes.push({ ok: true, value: this.#savepoint(w.run) });
          } catch (error) {
            outcomes.push({ ok: false, value: error });
          }
        }
      })();
    } catch (error) {
      // The commit itself failed: nothing in the batch is durable.
      for (const w of batch) w.reject(error);
      return;
    }
    this.#commits++;
    this.#writes += batch.length;
    batch.forEach((w, i) => {
      const o = outcomes[i]!;
      if (o.ok) w.resolve(o.value);
      else w.reject(o.value);
    });
  }

  /** Committed transactions and the writes they carried, to observe how well grouping works. */
  get stats(): { commits: number; writes: number } {
    return { commits: this.#commits, writes: this.#writes };
  }

  async flush(): Promise<void> {
    this.#check();
    this.#commit();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#commit();
    this.#closed = true;
    this.#statements.clear();
    this.#db.close();
  }

  // -- keyval --------------------------------------------------------------

  keyval<T = JsonValue>(host: string, store: string): KeyValStore<T> {
    const read = <R>(user: string | null, fn: () => R) => this.#read(scopeOf(host, store, user), fn);
    const write = <R>(user: string | null, fn: () => R) => this.#write(scopeOf(host, store, user), fn);
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
        if (value === null) {
          await write(user, () =>
            stmt('DELETE FROM keyval WHERE host = ? AND store = ? AND user = ?').run(host, store, user),
          );
          return;
        }
        const json = JSON.stringify(value);
        await write(user, () =>
          stmt(
            'INSERT INTO keyval (host, store, user, value) VALUES (?, ?, ?, ?) ' +
              'ON CONFLICT (host, store, user) DO UPDATE SET value = excluded.value',
          ).run(host, store, user, json),
        );
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
    const read = <R>(user: string | null, fn: () => R) => this.#read(scopeOf(host, store, user), fn);
    const write = <R>(user: string | null, fn: () => R) => this.#write(scopeOf(host, store, user), fn);
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
        if (value === null) {
          await write(user, () =>
            stmt('DELETE FROM map WHERE host = ? AND store = ? AND user = ? AND key = ?').run(
              host,
              store,
              user,
              key,
            ),
          );
          return;
        }
        const json = JSON.stringify(value);
        await write(user, () =>
          stmt(
            'INSERT INTO map (host, store, user, key, value) VALUES (?, ?, ?, ?, ?) ' +
              'ON CONFLICT (host, store, user, key) DO UPDATE SET value = excluded.value',
          ).run(host, store, user, key, json),
        );
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
        await write(user, () =>
          stmt('DELETE FROM map WHERE host = ? AND store = ? AND user = ?').run(host, store, user),
        );
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
    const anchor = (id: string): Anchor => {
      const row = this.#stmt(
        'SELECT "when", seq FROM archive WHERE host = ? AND store = ? AND user = ? AND id = ?',
      ).get(host, store, user, id) as Anchor | undefined;
      if (!row) throw new ItemNotFoundError(id);
      return row;
    };
    const where = ['host = ?', 'store = ?', 'user = ?'];
    const params: SqlParam[] = [host, store, user];
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
    filterClauses(query, where, params);
    // `before` and `reverse` both page backwards: the page is taken from the newest end.
    const fromEnd = query.reverse === true || query.before !== undefined;
    const dir = fromEnd ? 'DESC' : 'ASC';
    // An ids query names a handful of items: look each one up and sort them,
    // rather than letting the planner walk the user's whole timeline to avoid the sort.
    const from = query.ids !== undefined ? 'archive INDEXED BY archive_id' : 'archive';
    let sql =
      `SELECT id, "when", "with", value, text FROM ${from} WHERE ${where.join(' AND ')} ` +
      `ORDER BY "when" ${dir}, seq ${dir}`;
    if (query.limit !== undefined) {
      sql += ' LIMIT ?';
      params.push(query.limit + 1);
    }
    return { sql, params, fromEnd };
  }

  /**
   * EXPLAIN QUERY PLAN of the page query `find` would run, one line per plan
   * step. For tests and diagnostics: a page must be an index SEARCH, never a
   * SCAN of the archive.
   */
  queryPlan(host: string, store: string, user: string, query: ArchiveQuery = {}): string[] {
    this.#check();
    this.#commit();
    const { sql, params } = this.#pageQuery(host, store, user, query);
    const rows = this.#db.prepare<SqlParam[]>(`EXPLAIN QUERY PLAN ${sql}`).all(...params) as {
      detail: string;
    }[];
    return rows.map((r) => r.detail);
  }

  archive<T = JsonValue>(host: string, store: string): ArchiveStore<T> {
    const read = <R>(user: string | null, fn: () => R) => this.#read(scopeOf(host, store, user), fn);
    const write = <R>(user: string | null, fn: () => R) => this.#write(scopeOf(host, store, user), fn);
    const stmt = (sql: string) => this.#stmt(sql);
    const pageQuery = (user: string, query: ArchiveQuery) => this.#pageQuery(host, store, user, query);
    const caps: ArchiveCaps = { total: true, fullText: true, ids: true, before: true };

    return {
      caps,
      async append(user, item: ArchiveAppend<T>) {
        const id = item.id ?? generateArchiveId();
        const when = item.when ?? Date.now();
        const json = JSON.stringify(item.value);
        const bare = bareJid(item.with);
        const text = item.text ?? null;
        const replace = item.id !== undefined;
        await write(user, () => {
          // Only caller-chosen ids can collide; replacing mirrors Prosody.
          if (replace) {
            stmt('DELETE FROM archive WHERE host = ? AND store = ? AND user = ? AND id = ?').run(
              host,
              store,
              user,
              id,
            );
          }
          stmt(
            'INSERT INTO archive (host, store, user, id, "when", "with", bare_with, value, text) ' +
              'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
          ).run(host, store, user, id, when, item.with, bare, json, text);
        });
        return id;
      },

      find(user, query: ArchiveQuery = {}): Promise<ArchiveResult<T>> {
        return read(user, () => {
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
            const where = ['host = ?', 'store = ?', 'user = ?'];
            const p: SqlParam[] = [host, store, user];
            filterClauses(query, where, p);
            const row = stmt(`SELECT COUNT(*) AS n FROM archive WHERE ${where.join(' AND ')}`).get(...p) as {
              n: number;
            };
            result.total = row.n;
          }
          return result;
        });
      },

      delete(user, query: ArchiveDeleteQuery = {}) {
        const where = ['host = ?', 'store = ?', 'user = ?'];
        const params: SqlParam[] = [host, store, user];
        filterClauses(query, where, params);
        const sql = `DELETE FROM archive WHERE ${where.join(' AND ')}`;
        return write(user, () => stmt(sql).run(...params).changes);
      },

      count(user) {
        return read(
          user,
          () =>
            (
              stmt('SELECT COUNT(*) AS n FROM archive WHERE host = ? AND store = ? AND user = ?').get(
                host,
                store,
                user,
              ) as { n: number }
            ).n,
        );
      },

      summary(user) {
        return read(user, () => {
          const rows = stmt(
            'SELECT "with" AS w, COUNT(*) AS n, MIN("when") AS first, MAX("when") AS last FROM archive ' +
              'WHERE host = ? AND store = ? AND user = ? GROUP BY "with"',
          ).all(host, store, user) as { w: string; n: number; first: number; last: number }[];
          return new Map<string, ArchiveSummaryEntry>(
            rows.map((r) => [r.w, { count: r.n, first: r.first, last: r.last }]),
          );
        });
      },

      async deleteOlderThan(when, batchSize) {
        if (!Number.isInteger(batchSize) || batchSize < 1) {
          throw new RangeError(`batchSize must be a positive integer, got ${batchSize}`);
        }
        let total = 0;
        for (;;) {
          // Each batch is its own write, so other writers get in between batches.
          const n = await write(
            null,
            () =>
              stmt(
                'DELETE FROM archive WHERE seq IN (SELECT seq FROM archive ' +
                  'WHERE host = ? AND store = ? AND "when" < ? ORDER BY "when" LIMIT ?)',
              ).run(host, store, when, batchSize).changes,
          );
          total += n;
          if (n < batchSize) return total;
        }
      },
    };
  }
}

/** What a read or write touches: one user's data in a store, or a whole store. */
interface Scope {
  /** host, store and user; equal to `store` for whole-store operations. */
  user: string;
  store: string;
}

function scopeOf(host: string, store: string, user: string | null): Scope {
  const storeKey = `${host}\u0000${store}`;
  // A whole-store operation (listing users, retention sweeps) counts as
  // touching every user of the store.
  return { store: storeKey, user: user === null ? storeKey : `${storeKey}\u0000${user}` };
}
