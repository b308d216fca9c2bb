// Every write the SQLite driver makes, as plain data (so that it can cross to
// a worker thread), and the code that applies a batch of them to a
// connection in one transaction (group commit). sqlite-writer.ts runs this in
// a worker; sqlite.ts runs it inline for in-memory databases.

import type Database from 'better-sqlite3';
import {
  archiveFor,
  StatementCache,
  filterClauses,
  findEntry,
  ftsMatch,
  OWNER,
  PURGE_SQL,
  type Filter,
  type GetRow,
  type SqlParam,
} from './sqlite-schema.ts';
import { archiveIdTime } from './types.ts';

export type WriteOp =
  | { k: 'kvSet'; host: string; store: string; user: string; value: string | null }
  | { k: 'mapSet'; host: string; store: string; user: string; key: string; value: string | null }
  | { k: 'mapClear'; host: string; store: string; user: string }
  | {
      k: 'append';
      host: string;
      store: string;
      user: string;
      id: string;
      /** The id was chosen by the caller: an existing item with it is replaced. */
      replace: boolean;
      when: number;
      with: string;
      bare: string;
      value: string;
      text: string | null;
    }
  | SharedAppendOp
  | { k: 'delete'; host: string; store: string; user: string; filter: Filter }
  | { k: 'purge'; host: string; store: string; before: number; limit: number };

/**
 * One item in several archives, as a flat tuple: after the fixed part come
 * four strings per archive (user, id, with, bare with). This is the write
 * behind every archived message, and an array of strings crosses to the
 * writer thread in about half the time of an object with named fields and
 * nested arrays, whose keys the structured clone writes out every time.
 */
export type SharedAppendOp = [
  k: 'appendShared',
  host: string,
  store: string,
  when: number,
  value: string,
  text: string | null,
  ...entries: string[],
];

/** Where the entries of a SharedAppendOp start, and how many fields each has. */
export const SHARED_ENTRIES_AT = 6;
export const SHARED_ENTRY_FIELDS = 4;

/** An archive entry's columns: oid, when, seq, id, with_id, bare_id, stamped. */
type EntryRow = [number, number, number, string, number, number, number];

/** The outcome of one write: its result, or the error it failed with. */
export type Outcome = { ok: true; value: number | null } | { ok: false; message: string; code?: string };

/** Rows indexed per transaction when the full-text index catches up. */
const FTS_CHUNK = 2000;

/** Archive entries read per transaction while looking for JIDs no entry refers to. */
const PRUNE_CHUNK = 20_000;

/**
 * A pass over the archive that finds the JIDs of archive_jid no entry refers
 * to any more (their conversations expired or were deleted), so that they
 * can go: the dictionary would otherwise keep every address ever archived.
 * Only JIDs that existed when the pass began are candidates; the writer
 * marks every JID it uses while the pass runs, so an entry written behind
 * the pass's cursor keeps its JID.
 */
interface JidPrune {
  /** The highest jid_id when the pass began. */
  maxId: number;
  /** One flag per jid_id up to maxId: referred to by an entry seen (or written) so far. */
  used: Uint8Array;
  /** The key of the last entry read; before the first chunk, one below every key (owner ids start at 1). */
  after: [number, number, number];
}

export class BatchApplier {
  readonly #db: Database.Database;
  readonly #statements: StatementCache;
  /** (host, store, user) -> oid, for owners known to exist. */
  readonly #owners = new Map<string, number>();
  /** JID -> its number in archive_jid, for JIDs known to be there. */
  readonly #jids = new Map<string, number>();
  readonly #savepoint: (fn: () => number | null) => number | null;
  /**
   * Entries of new items, inserted together at the end of a batch (see
   * #insertDeferred); undefined while writes are retried one by one.
   */
  #deferred: EntryRow[] | undefined;
  commits = 0;
  writes = 0;
  /** Entries were deleted: JIDs may have lost their last entry (see JidPrune). */
  #pruneWanted = false;
  #prune: JidPrune | undefined;

  constructor(db: Database.Database) {
    this.#db = db;
    this.#statements = new StatementCache(db);
    // Calling a transaction function while a transaction is open makes
    // better-sqlite3 use a SAVEPOINT, so one failing write in a batch is rolled
    // back alone instead of taking the whole group down with it.
    this.#savepoint = db.transaction((fn: () => number | null) => fn());
  }

  /** Rows made by a rolled-back transaction are gone again, and so are their cached numbers. */
  #forgetUncommitted(): void {
    this.#owners.clear();
    this.#jids.clear();
  }

  #stmt(sql: string): Database.Statement<SqlParam[]> {
    return this.#statements.get(sql);
  }

  /** The owner id of an archive, created on first use. Only called inside a transaction. */
  #owner(host: string, store: string, user: string): number {
    const key = `${host}\u0000${store}\u0000${user}`;
    let oid = this.#owners.get(key);
    if (oid === undefined) {
      const row = this.#stmt('SELECT oid FROM archive_owner WHERE host = ? AND store = ? AND user = ?').get(
        host,
        store,
        user,
      ) as { oid: number } | undefined;
      oid =
        row?.oid ??
        Number(
          this.#stmt('INSERT INTO archive_owner (host, store, user) VALUES (?, ?, ?)').run(host, store, user)
            .lastInsertRowid,
        );
      // Bounded: a forgotten owner is only looked up again.
      if (this.#owners.size >= 100_000) this.#owners.clear();
      this.#owners.set(key, oid);
    }
    return oid;
  }

  /** The number of a JID in archive_jid, added on first use. Only called inside a transaction. */
  #jid(jid: string): number {
    let id = this.#jids.get(jid);
    if (id === undefined) {
      const row = this.#stmt('SELECT jid_id FROM archive_jid WHERE jid = ?').get(jid) as
        { jid_id: number } | undefined;
      id =
        row?.jid_id ??
        Number(this.#stmt('INSERT INTO archive_jid (jid) VALUES (?)').run(jid).lastInsertRowid);
      // Bounded: a forgotten JID is only looked up again.
      if (this.#jids.size >= 100_000) this.#jids.clear();
      this.#jids.set(jid, id);
    }
    const prune = this.#prune;
    if (prune !== undefined && id <= prune.maxId) prune.used[id] = 1;
    return id;
  }

  readonly #get: GetRow = (sql, params) => this.#stmt(sql).get(...params);

  /** One item and an entry for it in each archive (owner i with ids[i], withs[i], bares[i]). */
  #insert(
    value: string,
    text: string | null,
    oids: number[],
    ids: string[],
    withs: string[],
    bares: string[],
    when: number,
  ): void {
    const seq = this.#stmt('INSERT INTO archive_item (value, text, refs) VALUES (?, ?, ?)').run(
      value,
      text,
      oids.length,
    ).lastInsertRowid as number;
    for (let i = 0; i < oids.length; i++) {
      const id = ids[i]!;
      const stamped = archiveIdTime(id) === when ? 1 : 0;
      const entry: EntryRow = [oids[i]!, when, seq, id, this.#jid(withs[i]!), this.#jid(bares[i]!), stamped];
      if (this.#deferred) this.#deferred.push(entry);
      else this.#insertEntry(entry);
    }
  }

  #appendShared(op: SharedAppendOp): void {
    const [, host, store, when, value, text] = op;
    const oids: number[] = [];
    const ids: string[] = [];
    const withs: string[] = [];
    const bares: string[] = [];
    for (let i = SHARED_ENTRIES_AT; i < op.length; i += SHARED_ENTRY_FIELDS) {
      oids.push(this.#owner(host, store, op[i] as string));
      ids.push(op[i + 1] as string);
      withs.push(op[i + 2] as string);
      bares.push(op[i + 3] as string);
    }
    this.#insert(value, text, oids, ids, withs, bares, when);
  }

  #insertEntry(entry: EntryRow): void {
    this.#stmt(
      'INSERT INTO archive (oid, "when", seq, id, with_id, bare_id, stamped) VALUES (?, ?, ?, ?, ?, ?, ?)',
    ).run(...entry);
  }

  /**
   * Inserts the entries deferred so far in (owner, when) order: one owner's
   * entries then go into the same index pages one after another instead of
   * each jumping to another owner's pages, which is most of the cost of an
   * entry (measured: about a fifth of the batch's time).
   */
  #insertDeferred(): void {
    const entries = this.#deferred;
    if (!entries || entries.length === 0) return;
    this.#deferred = [];
    entries.sort((a, b) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2]);
    for (const entry of entries) this.#insertEntry(entry);
  }

  #run(op: WriteOp): number | null {
    if (Array.isArray(op)) {
      this.#appendShared(op);
      return null;
    }
    const stmt = (sql: string) => this.#stmt(sql);
    // Whatever reads or deletes entries sees the deferred ones first.
    if (op.k === 'delete' || op.k === 'purge' || (op.k === 'append' && op.replace)) this.#insertDeferred();
    switch (op.k) {
      case 'kvSet':
        if (op.value === null) {
          stmt('DELETE FROM keyval WHERE host = ? AND store = ? AND user = ?').run(
            op.host,
            op.store,
            op.user,
          );
        } else {
          stmt(
            'INSERT INTO keyval (host, store, user, value) VALUES (?, ?, ?, ?) ' +
              'ON CONFLICT (host, store, user) DO UPDATE SET value = excluded.value',
          ).run(op.host, op.store, op.user, op.value);
        }
        return null;
      case 'mapSet':
        if (op.value === null) {
          stmt('DELETE FROM map WHERE host = ? AND store = ? AND user = ? AND key = ?').run(
            op.host,
            op.store,
            op.user,
            op.key,
          );
        } else {
          stmt(
            'INSERT INTO map (host, store, user, key, value) VALUES (?, ?, ?, ?, ?) ' +
              'ON CONFLICT (host, store, user, key) DO UPDATE SET value = excluded.value',
          ).run(op.host, op.store, op.user, op.key, op.value);
        }
        return null;
      case 'mapClear':
        stmt('DELETE FROM map WHERE host = ? AND store = ? AND user = ?').run(op.host, op.store, op.user);
        return null;
      case 'append': {
        const oid = this.#owner(op.host, op.store, op.user);
        // Only caller-chosen ids can collide; replacing mirrors Prosody.
        if (op.replace) {
          const old = findEntry(this.#get, [op.host, op.store, op.user], op.id);
          if (old) {
            stmt('DELETE FROM archive WHERE oid = ? AND "when" = ? AND seq = ?').run(oid, old.when, old.seq);
          }
        }
        this.#insert(op.value, op.text, [oid], [op.id], [op.with], [op.bare], op.when);
        return null;
      }
      case 'delete': {
        // A text filter selects through the full-text index: bring it up to date first.
        if (ftsMatch(op.filter.text) !== null) this.syncText();
        const owner: SqlParam[] = [op.host, op.store, op.user];
        const where = [`oid = ${OWNER}`];
        const params: SqlParam[] = [...owner];
        filterClauses(op.filter, where, params, { get: this.#get, owner });
        return this.#deleted(
          stmt(`DELETE FROM ${archiveFor(op.filter)} WHERE ${where.join(' AND ')}`).run(...params).changes,
        );
      }
      case 'purge':
        return this.#deleted(stmt(PURGE_SQL).run(op.host, op.store, op.before, op.limit).changes);
    }
  }

  /**
   * Applies a batch in one transaction and says how each write went. The
   * whole batch runs without per-write savepoints (they cost about as much as
   * the writes). If any write fails, the batch is rolled back and every write
   * is retried in a savepoint of its own, so one bad write still fails alone.
   */
  apply(batch: WriteOp[]): Outcome[] {
    if (batch.length === 0) return [];
    const values: (number | null)[] = [];
    try {
      this.#db.transaction(() => {
        this.#deferred = [];
        try {
          for (const op of batch) values.push(this.#run(op));
          this.#insertDeferred();
        } finally {
          this.#deferred = undefined;
        }
      })();
      this.commits++;
      this.writes += batch.length;
      return values.map((value) => ({ ok: true, value }));
    } catch {
      // An owner created by the rolled-back transaction is gone again.
      this.#forgetUncommitted();
    }
    const outcomes: Outcome[] = [];
    try {
      this.#db.transaction(() => {
        for (const op of batch) {
          try {
            outcomes.push({ ok: true, value: this.#savepoint(() => this.#run(op)) });
          } catch (error) {
            outcomes.push(failure(error));
          }
        }
      })();
    } catch (error) {
      // The commit itself failed: nothing in the batch is durable.
      this.#forgetUncommitted();
      return batch.map(() => failure(error));
    }
    this.commits++;
    this.writes += batch.length;
    return outcomes;
  }

  /**
   * Adds up to `max` not yet indexed rows to the full-text index, in one
   * transaction; resolves to whether rows may remain.
   */
  indexText(max = FTS_CHUNK): boolean {
    return this.#db.transaction(() => {
      const mark = (
        this.#stmt("SELECT value FROM archive_meta WHERE key = 'fts_indexed'").get() as { value: number }
      ).value;
      const rows = this.#stmt(
        'SELECT item_seq AS seq, text FROM archive_item WHERE item_seq > ? AND text IS NOT NULL ORDER BY item_seq LIMIT ?',
      ).all(mark, max) as { seq: number; text: string }[];
      const insert = this.#stmt('INSERT INTO archive_fts (rowid, text) VALUES (?, ?)');
      for (const r of rows) insert.run(r.seq, r.text);
      const more = rows.length === max;
      // With nothing left to index, everything up to the newest row is done.
      const next = more
        ? rows[rows.length - 1]!.seq
        : Math.max(
            mark,
            (this.#stmt('SELECT MAX(item_seq) AS s FROM archive_item').get() as { s: number | null }).s ?? 0,
          );
      if (next !== mark) this.#stmt("UPDATE archive_meta SET value = ? WHERE key = 'fts_indexed'").run(next);
      return more;
    })();
  }

  /** Brings the full-text index up to date with every committed row. */
  syncText(): void {
    while (this.indexText());
  }

  /** Notes that entries went, so that their JIDs are looked at; passes the count on. */
  #deleted(changes: number): number {
    if (changes > 0) this.#pruneWanted = true;
    return changes;
  }

  /** Whether entries were deleted since the last complete pass of pruneJids. */
  get pruneWanted(): boolean {
    return this.#pruneWanted || this.#prune !== undefined;
  }

  /**
   * One step of a pass that removes the JIDs no archive entry refers to (see
   * JidPrune): reads up to `chunk` entries in one transaction, and after the
   * last one deletes the JIDs none of them used, and the owners that have no
   * entries left. Says whether the pass has steps left.
   */
  pruneJidsStep(chunk = PRUNE_CHUNK): boolean {
    return this.#db.transaction(() => {
      let prune = this.#prune;
      if (prune === undefined) {
        this.#pruneWanted = false;
        const max = (this.#stmt('SELECT MAX(jid_id) AS m FROM archive_jid').get() as { m: number | null }).m;
        if (max === null) return false;
        prune = this.#prune = { maxId: max, used: new Uint8Array(max + 1), after: [0, 0, 0] };
      }
      const rows = this.#stmt(
        'SELECT oid, "when", seq, with_id, bare_id FROM archive WHERE (oid, "when", seq) > (?, ?, ?) ' +
          'ORDER BY oid, "when", seq LIMIT ?',
      )
        .raw(true)
        .all(...prune.after, chunk) as [number, number, number, number, number][];
      for (const [, , , withId, bareId] of rows) {
        if (withId <= prune.maxId) prune.used[withId] = 1;
        if (bareId <= prune.maxId) prune.used[bareId] = 1;
      }
      if (rows.length === chunk) {
        const [oid, when, seq] = rows[rows.length - 1]!;
        prune.after = [oid, when, seq];
        return true;
      }
      const known = this.#stmt('SELECT jid_id FROM archive_jid WHERE jid_id <= ?')
        .pluck(true)
        .all(prune.maxId) as number[];
      const unused = known.filter((id) => prune.used[id] === 0);
      const remove = this.#stmt('DELETE FROM archive_jid WHERE jid_id = ?');
      for (const id of unused) remove.run(id);
      // The cache may name a removed JID: it fills again from the table.
      if (unused.length > 0) this.#jids.clear();
      // Owners without entries (deleted accounts) go too: a look-up per owner through the key.
      const owners = this.#stmt(
        'DELETE FROM archive_owner WHERE NOT EXISTS (SELECT 1 FROM archive a WHERE a.oid = archive_owner.oid)',
      ).run().changes;
      if (owners > 0) this.#owners.clear();
      this.#prune = undefined;
      return false;
    })();
  }

  /** A whole pass of pruneJidsStep. */
  pruneJids(): void {
    while (this.pruneJidsStep());
  }

  /**
   * A whole pass if deletes called for one, for a writer with no idle time
   * ahead. A failure (another process holding the database, say) is left
   * for the pass after the next delete.
   */
  pruneJidsIfWanted(): void {
    try {
      if (this.pruneWanted) this.pruneJids();
    } catch {
      // See above.
    }
  }
}

export function failure(error: unknown): Outcome {
  const e = error as { message?: unknown; code?: unknown };
  const out: Outcome = { ok: false, message: typeof e?.message === 'string' ? e.message : String(error) };
  if (typeof e?.code === 'string') out.code = e.code;
  return out;
}

/**
 * How the writes of a batch went. A number n stands for n writes that all
 * succeeded with a null result, the common case, which then costs nothing to
 * send back.
 */
export type PackedOutcomes = Outcome[] | number;

export interface BatchResult {
  n: number;
  outcomes: PackedOutcomes;
  /** With syncText: how catching up the full-text index went. */
  text?: Outcome;
}

export function packOutcomes(outcomes: Outcome[]): PackedOutcomes {
  for (const o of outcomes) if (!o.ok || o.value !== null) return outcomes;
  return outcomes.length;
}

export function outcomeAt(packed: PackedOutcomes, i: number): Outcome | undefined {
  if (typeof packed !== 'number') return packed[i];
  return i < packed ? { ok: true, value: null } : undefined;
}

/** Writes the driver sends together, numbered in sending order. */
export interface WriteBatch {
  n: number;
  ops: WriteOp[];
  syncText?: boolean;
}

/**
 * Applies batches in one transaction (see BatchApplier.apply) and says how
 * each went; catches the full-text index up first for those that ask.
 */
export function applyBatches(applier: BatchApplier, batches: WriteBatch[]): BatchResult[] {
  const ops = batches.length === 1 ? batches[0]!.ops : batches.flatMap((b) => b.ops);
  const outcomes = applier.apply(ops);
  let text: Outcome | undefined;
  if (batches.some((b) => b.syncText)) {
    try {
      applier.syncText();
      text = { ok: true, value: null };
    } catch (err) {
      text = failure(err);
    }
  }
  let at = 0;
  return batches.map((b) => {
    const mine = outcomes.slice(at, (at += b.ops.length));
    const result: BatchResult = { n: b.n, outcomes: packOutcomes(mine) };
    if (b.syncText) result.text = text;
    return result;
  });
}
