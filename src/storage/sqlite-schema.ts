// The SQLite driver's schema, its migrations, and the SQL shared by the
// driver's reading connection (sqlite.ts) and its writer (sqlite-ops.ts, run
// in a worker thread by sqlite-writer.ts).
//
// Schema 2 (issue 5: archiving at 70% of non-archiving throughput) makes an
// archived row cheap to insert:
//  - an archive's owner, (host, store, user), is a small integer (`oid`, from
//    archive_owner) instead of three strings repeated in every row and index
//    entry;
//  - three indexes, each serving a query that runs: (oid, id) for id lookups
//    (paging anchors, `ids`, replacing a caller-chosen id), (oid, when) for the
//    timeline, (oid, bare_with, when) for `with`. Retention across a store
//    walks each owner's (oid, when) instead of keeping a fourth index;
//  - the full-text index is filled after the fact, in batches, by the writer
//    (when idle, and before any text query runs) instead of by a trigger per
//    row: archive_meta.fts_indexed is the highest `seq` whose text is in
//    archive_fts. `seq` is AUTOINCREMENT so that a value is never reused and
//    the mark stays meaningful after deletes.
//
// Schema 3 (same issue) stores what several archives share once and drops
// the id index for new items:
//  - archive_item holds an item's value and text once, however many archives
//    hold it (a message is in its sender's and its recipient's), with a count
//    of the entries that refer to it; the last entry to go takes it along
//    (trigger archive_unref);
//  - archive holds one small entry per (owner, item), clustered by its key
//    (oid, when, seq), so the timeline needs no second structure; `with`
//    queries use (oid, bare_id, when). The other party's JID, full and bare,
//    is a number from the dictionary archive_jid: integer keys are compared
//    faster and make smaller entries than JID strings (measured: about a
//    third less writer time per message);
//  - ids from generateArchiveId carry their item's `when` (`stamped` = 1), so
//    such an id is found through the key: (oid, when = the id's time, id).
//    Only other ids (caller-chosen, or from before schema 3) are in the
//    partial index archive_id. Per archived message that is one item row and
//    four index entries, where schema 2 wrote two rows and six entries.

import type Database from 'better-sqlite3';
import { archiveIdTime, bareJid, textTerms, type ArchiveQuery } from './types.ts';

export const SCHEMA_VERSION = 3;

export type SqlParam = string | number | null;

const TABLES = `
CREATE TABLE keyval (
  host TEXT NOT NULL, store TEXT NOT NULL, user TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY (host, store, user)
) WITHOUT ROWID;

CREATE TABLE map (
  host TEXT NOT NULL, store TEXT NOT NULL, user TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY (host, store, user, key)
) WITHOUT ROWID;
`;

/** An archive's owner, (host, store, user), as a small integer; the same in schemas 2 and 3. */
const ARCHIVE_OWNER = `
CREATE TABLE archive_owner (
  oid INTEGER PRIMARY KEY,
  host TEXT NOT NULL, store TEXT NOT NULL, user TEXT NOT NULL,
  UNIQUE (host, store, user)
);
`;

// `item_seq` is an explicit INTEGER PRIMARY KEY (an alias of the rowid) so
// that VACUUM cannot renumber it, and AUTOINCREMENT so that a value is never
// reused: entries point at it (archive.seq), it breaks ties between equal
// `when`s, and the full-text index and its mark (archive_meta.fts_indexed)
// refer to it.
const ARCHIVE = `
CREATE TABLE archive_item (
  item_seq INTEGER PRIMARY KEY AUTOINCREMENT,
  value TEXT NOT NULL,
  text TEXT,
  refs INTEGER NOT NULL
);
CREATE TABLE archive_jid (
  jid_id INTEGER PRIMARY KEY,
  jid TEXT NOT NULL UNIQUE
);
CREATE TABLE archive (
  oid INTEGER NOT NULL,
  "when" INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  id TEXT NOT NULL,
  with_id INTEGER NOT NULL,
  bare_id INTEGER NOT NULL,
  stamped INTEGER NOT NULL,
  PRIMARY KEY (oid, "when", seq)
) WITHOUT ROWID;
CREATE TABLE archive_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO archive_meta (key, value) VALUES ('fts_indexed', 0);
CREATE VIRTUAL TABLE archive_fts USING fts5(
  text, content = 'archive_item', content_rowid = 'item_seq', tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER archive_unref AFTER DELETE ON archive BEGIN
  UPDATE archive_item SET refs = refs - 1 WHERE item_seq = old.seq;
  DELETE FROM archive_item WHERE item_seq = old.seq AND refs <= 0;
END;
-- Only items already indexed have index entries to take out.
CREATE TRIGGER archive_fts_delete AFTER DELETE ON archive_item
WHEN old.text IS NOT NULL AND old.item_seq <= (SELECT value FROM archive_meta WHERE key = 'fts_indexed') BEGIN
  INSERT INTO archive_fts (archive_fts, rowid, text) VALUES ('delete', old.item_seq, old.text);
END;
`;

const ARCHIVE_INDEXES = `
CREATE INDEX archive_with ON archive (oid, bare_id, "when");
CREATE INDEX archive_id ON archive (oid, id) WHERE stamped = 0;
`;

/** Rows copied per step of the 1 -> 2 migration, with a progress line after each. */
const MIGRATION_CHUNK = 50_000;

export type MigrationLog = (message: string) => void;

/**
 * Copies rows in `seq` order, MIGRATION_CHUNK at a time: `copyAfter(mark)`
 * copies the next chunk after `mark` and says how many rows it copied,
 * `lastCopied()` is the highest `seq` copied so far. Logs progress when there
 * is more than one chunk; returns how many rows were copied.
 */
function copyInChunks(
  total: number,
  copyAfter: (mark: number) => number,
  lastCopied: () => number,
  log: MigrationLog,
): number {
  let done = 0;
  let mark = 0;
  for (;;) {
    const n = copyAfter(mark);
    if (n === 0) return done;
    done += n;
    mark = lastCopied();
    if (total > MIGRATION_CHUNK) log(`migrating the archive: ${done}/${total} rows copied`);
    if (n < MIGRATION_CHUNK) return done;
  }
}

/** Brings a database to SCHEMA_VERSION: creates it, or migrates an older one in place. */
export function migrate(db: Database.Database, log: MigrationLog): void {
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
    const v = db.pragma('user_version', { simple: true }) as number;
    if (v === SCHEMA_VERSION) return;
    if (v === 0) {
      db.exec(TABLES + ARCHIVE_OWNER + ARCHIVE + ARCHIVE_INDEXES);
    } else if (v === 1 || v === 2) {
      if (v === 1) migrate1to2(db, log);
      migrate2to3(db, log);
    } else {
      throw new Error(`unknown database schema version ${v}`);
    }
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
  }).immediate();
}

/**
 * Schema 1 kept (host, store, user) in every archive row, four indexes and a
 * per-row FTS trigger. The rows are copied, in `seq` order and keeping `seq`,
 * into the new table; the full-text index is rebuilt lazily afterwards (the
 * mark starts at 0), so the migration itself costs one pass over the rows.
 * Runs inside the caller's transaction: an interrupted migration leaves the
 * old schema as it was.
 */
function migrate1to2(db: Database.Database, log: MigrationLog): void {
  const total = (db.prepare('SELECT COUNT(*) AS n FROM archive').get() as { n: number }).n;
  const started = Date.now();
  if (total > 0) log(`migrating the archive to schema 2: ${total} rows to copy`);
  db.exec(`
    DROP TRIGGER IF EXISTS archive_fts_insert;
    DROP TRIGGER IF EXISTS archive_fts_delete;
    DROP TRIGGER IF EXISTS archive_fts_update;
    DROP TABLE IF EXISTS archive_fts;
    DROP INDEX IF EXISTS archive_id;
    DROP INDEX IF EXISTS archive_when;
    DROP INDEX IF EXISTS archive_with;
    DROP INDEX IF EXISTS archive_retention;
    ALTER TABLE archive RENAME TO archive_v1;
  `);
  db.exec(ARCHIVE_OWNER + ARCHIVE_V2);
  db.exec(
    'INSERT INTO archive_owner (host, store, user) SELECT DISTINCT host, store, user FROM archive_v1 ORDER BY 1, 2, 3',
  );
  const copy = db.prepare(
    'INSERT INTO archive (seq, oid, id, "when", "with", bare_with, value, text) ' +
      'SELECT a.seq, o.oid, a.id, a."when", a."with", a.bare_with, a.value, a.text ' +
      'FROM archive_v1 a JOIN archive_owner o ON o.host = a.host AND o.store = a.store AND o.user = a.user ' +
      'WHERE a.seq > ? ORDER BY a.seq LIMIT ?',
  );
  const lastCopied = db.prepare('SELECT MAX(seq) AS s FROM archive');
  const done = copyInChunks(
    total,
    (mark) => copy.run(mark, MIGRATION_CHUNK).changes,
    () => (lastCopied.get() as { s: number }).s,
    log,
  );
  db.exec('DROP TABLE archive_v1');
  // Indexes are built once at the end: faster than maintaining them row by row.
  db.exec(ARCHIVE_V2_INDEXES);
  if (total > 0) {
    log(
      `migrated the archive to schema 2: ${done} rows in ${Date.now() - started} ms; ` +
        'the full-text index is rebuilt in the background',
    );
  }
}

// Schema 2's archive, as migrate1to2 makes it and migrate2to3 reads it.
const ARCHIVE_V2 = `
CREATE TABLE archive (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  oid INTEGER NOT NULL,
  id TEXT NOT NULL,
  "when" INTEGER NOT NULL,
  "with" TEXT NOT NULL,
  bare_with TEXT NOT NULL,
  value TEXT NOT NULL,
  text TEXT
);
CREATE TABLE archive_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO archive_meta (key, value) VALUES ('fts_indexed', 0);
`;
const ARCHIVE_V2_INDEXES = `
CREATE UNIQUE INDEX archive_id ON archive (oid, id);
CREATE INDEX archive_when ON archive (oid, "when");
CREATE INDEX archive_with ON archive (oid, bare_with, "when");
`;

/**
 * Schema 2 kept one full row per (owner, item). Each row becomes an item of
 * its own (keeping `seq`, so paging order and the full-text mark's meaning
 * are kept) and an entry; ids made before schema 3 carry no time, so every
 * entry is `stamped` = 0 and found through archive_id. The full-text index
 * is rebuilt lazily afterwards. Runs inside the caller's transaction.
 */
function migrate2to3(db: Database.Database, log: MigrationLog): void {
  const total = (db.prepare('SELECT COUNT(*) AS n FROM archive').get() as { n: number }).n;
  const started = Date.now();
  if (total > 0) log(`migrating the archive to schema ${SCHEMA_VERSION}: ${total} rows to copy`);
  db.exec(`
    DROP TRIGGER IF EXISTS archive_fts_delete;
    DROP TABLE IF EXISTS archive_fts;
    DROP INDEX IF EXISTS archive_id;
    DROP INDEX IF EXISTS archive_when;
    DROP INDEX IF EXISTS archive_with;
    ALTER TABLE archive RENAME TO archive_v2;
    DROP TABLE archive_meta;
  `);
  // archive_owner is the same in both schemas and stays as it is.
  db.exec(ARCHIVE);
  const copyItems = db.prepare(
    'INSERT INTO archive_item (item_seq, value, text, refs) ' +
      'SELECT seq, value, text, 1 FROM archive_v2 WHERE seq > ? ORDER BY seq LIMIT ?',
  );
  db.exec(
    'INSERT INTO archive_jid (jid) SELECT "with" FROM archive_v2 UNION SELECT bare_with FROM archive_v2 ORDER BY 1',
  );
  const copyEntries = db.prepare(
    'INSERT INTO archive (oid, "when", seq, id, with_id, bare_id, stamped) ' +
      'SELECT a.oid, a."when", a.seq, a.id, w.jid_id, b.jid_id, 0 FROM archive_v2 a ' +
      'JOIN archive_jid w ON w.jid = a."with" JOIN archive_jid b ON b.jid = a.bare_with ' +
      'WHERE a.seq > ? ORDER BY a.seq LIMIT ?',
  );
  const lastCopied = db.prepare('SELECT MAX(item_seq) AS s FROM archive_item');
  const done = copyInChunks(
    total,
    (mark) => {
      const n = copyItems.run(mark, MIGRATION_CHUNK).changes;
      copyEntries.run(mark, MIGRATION_CHUNK);
      return n;
    },
    () => (lastCopied.get() as { s: number }).s,
    log,
  );
  // AUTOINCREMENT must go on after the highest seq schema 2 ever gave out, deleted rows included.
  db.exec(
    "UPDATE sqlite_sequence SET seq = MAX(seq, (SELECT seq FROM sqlite_sequence WHERE name = 'archive_v2')) " +
      "WHERE name = 'archive_item'",
  );
  db.exec('DROP TABLE archive_v2');
  db.exec(ARCHIVE_INDEXES);
  if (total > 0) {
    log(
      `migrated the archive to schema ${SCHEMA_VERSION}: ${done} rows in ${Date.now() - started} ms; ` +
        'the full-text index is rebuilt in the background',
    );
  }
}

// ---------------------------------------------------------------------------
// SQL shared by reader and writer.

/** Prepares each SQL text once per connection and hands out the prepared statement after that. */
export class StatementCache {
  readonly #db: Database.Database;
  readonly #statements = new Map<string, Database.Statement<SqlParam[]>>();

  constructor(db: Database.Database) {
    this.#db = db;
  }

  get(sql: string): Database.Statement<SqlParam[]> {
    let s = this.#statements.get(sql);
    if (!s) {
      s = this.#db.prepare<SqlParam[]>(sql);
      this.#statements.set(sql, s);
    }
    return s;
  }

  clear(): void {
    this.#statements.clear();
  }
}

/** The owner id of (host, store, user), as a scalar subquery taking those three parameters. */
export const OWNER = '(SELECT oid FROM archive_owner WHERE host = ? AND store = ? AND user = ?)';

/** Retention across a store, owner by owner along (oid, when): no index on `when` alone is kept for it. */
export const PURGE_SQL =
  'DELETE FROM archive WHERE (oid, "when", seq) IN (SELECT a.oid, a."when", a.seq ' +
  'FROM archive_owner o JOIN archive a ON a.oid = o.oid WHERE o.host = ? AND o.store = ? AND a."when" < ? LIMIT ?)';

/** An entry's place in its owner's timeline: the keyset that paging compares. */
export interface EntryKey {
  when: number;
  seq: number;
}

/** Runs a one-row SELECT on whichever connection the caller has. */
export type GetRow = (sql: string, params: SqlParam[]) => unknown;

const ENTRY_BY_TIMED_ID = `SELECT "when", seq FROM archive WHERE oid = ${OWNER} AND "when" = ? AND id = ?`;
const ENTRY_BY_OTHER_ID = `SELECT "when", seq FROM archive WHERE oid = ${OWNER} AND stamped = 0 AND id = ?`;

/**
 * Finds an owner's entry by id: an id that carries a time through the key
 * (oid, when, ...), any other through the partial index archive_id.
 */
export function findEntry(get: GetRow, owner: SqlParam[], id: string): EntryKey | undefined {
  const when = archiveIdTime(id);
  if (when !== null) {
    const row = get(ENTRY_BY_TIMED_ID, [...owner, when, id]) as EntryKey | undefined;
    if (row) return row;
  }
  return get(ENTRY_BY_OTHER_ID, [...owner, id]) as EntryKey | undefined;
}

export type Filter = Pick<ArchiveQuery, 'start' | 'end' | 'with' | 'ids' | 'text'> & { olderThan?: number };

/** The FTS5 query for a text filter, or null when it has no searchable terms. */
export function ftsMatch(text: string | undefined): string | null {
  if (text === undefined) return null;
  const terms = textTerms(text);
  // No searchable terms means no text constraint (an empty MATCH is a syntax error).
  if (terms.length === 0) return null;
  // Quoted terms are plain words to FTS5 (no operators); juxtaposition is AND.
  return terms.map((t) => `"${t.replaceAll('"', '""')}"`).join(' ');
}

/**
 * The table to read or delete a filter's entries from: a `with` filter is
 * served by its own index (see the page query in sqlite.ts for why it is named).
 */
export function archiveFor(filter: Filter): string {
  return filter.with !== undefined && filter.ids === undefined
    ? 'archive INDEXED BY archive_with'
    : 'archive';
}

/** How filterClauses looks things up first: a connection to read with, and the archive's owner. */
export interface Lookup {
  get: GetRow;
  /** host, store and user, the parameters of OWNER. */
  owner: SqlParam[];
}

/** The number of a JID in archive_jid, if it was ever stored. */
function jidNumber(get: GetRow, jid: string): number | undefined {
  return (get('SELECT jid_id FROM archive_jid WHERE jid = ?', [jid]) as { jid_id: number } | undefined)
    ?.jid_id;
}

/**
 * WHERE clauses for the filter part of a query (everything except paging).
 * What the filter names (ids, JIDs) is looked up first, so that the query
 * compares plain values: the planner then picks the index those values lead
 * to (a subquery in their place made it walk the owner's timeline instead).
 */
export function filterClauses(filter: Filter, where: string[], params: SqlParam[], lookup: Lookup): void {
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
    // Even a full-JID filter constrains bare_id so the (bare_id, when) index
    // applies. A JID never stored has no number, and no entries.
    const bare = jidNumber(lookup.get, bareJid(filter.with));
    const full = filter.with.includes('/') ? jidNumber(lookup.get, filter.with) : bare;
    if (bare === undefined || full === undefined) {
      where.push('0');
    } else {
      where.push('bare_id = ?');
      params.push(bare);
      if (filter.with.includes('/')) {
        where.push('with_id = ?');
        params.push(full);
      }
    }
  }
  if (filter.ids !== undefined) {
    // Each id is looked up first (findEntry); the query then takes those
    // entries by key. One JSON parameter instead of N placeholders keeps the
    // statement cache bounded. `seq` alone picks the entries (an owner holds
    // an item once); `when` lets the key be searched rather than walked.
    const keys: EntryKey[] = [];
    for (const id of new Set(filter.ids)) {
      const key = findEntry(lookup.get, lookup.owner, id);
      if (key) keys.push(key);
    }
    if (keys.length === 0) {
      where.push('0');
    } else {
      where.push('"when" IN (SELECT value FROM json_each(?))', 'seq IN (SELECT value FROM json_each(?))');
      params.push(JSON.stringify(keys.map((k) => k.when)), JSON.stringify(keys.map((k) => k.seq)));
    }
  }
  const match = ftsMatch(filter.text);
  if (match !== null) {
    where.push('seq IN (SELECT rowid FROM archive_fts WHERE archive_fts MATCH ?)');
    params.push(match);
  }
}
