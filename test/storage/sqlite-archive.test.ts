// The SQLite driver's archive beyond the conformance suite: the writer
// thread, the full-text index filled after the fact, the plans of every
// archive statement, items shared by several archives, ids that carry their
// time, and the migrations from schemas 1 and 2.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import Database from 'better-sqlite3';
import { SqliteDriver } from '../../src/storage/sqlite.ts';
import { SCHEMA_VERSION } from '../../src/storage/sqlite-schema.ts';
import { archiveIdTime, generateArchiveId } from '../../src/storage/types.ts';
import type { WriteOp } from '../../src/storage/sqlite-ops.ts';

import { runStorageConformance } from './conformance.ts';

const tmp = mkdtempSync(join(tmpdir(), 'chorus-sqlite-archive-'));
let fileNo = 0;
const freshPath = () => join(tmp, `db${++fileNo}`, 'chorus.sqlite');

after(function () {
  rmSync(tmp, { recursive: true, force: true });
});

// The same code applies writes on this thread for in-memory databases.
runStorageConformance('sqlite (inline writer)', async () =>
  SqliteDriver.open(freshPath(), { writer: 'inline' }),
);

/** The keyval and map tables of schemas 1 and 2, as they were. */
const OLD_STORES = `
CREATE TABLE keyval (
  host TEXT NOT NULL, store TEXT NOT NULL, user TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY (host, store, user)
) WITHOUT ROWID;
CREATE TABLE map (
  host TEXT NOT NULL, store TEXT NOT NULL, user TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY (host, store, user, key)
) WITHOUT ROWID;
`;

/** The schema Chorus created before schema 2, as it was. */
const SCHEMA_1 = `${OLD_STORES}
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

/** The schema Chorus created before schema 3, as it was. */
const SCHEMA_2 = `${OLD_STORES}
CREATE TABLE archive_owner (
  oid INTEGER PRIMARY KEY,
  host TEXT NOT NULL, store TEXT NOT NULL, user TEXT NOT NULL,
  UNIQUE (host, store, user)
);
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
CREATE VIRTUAL TABLE archive_fts USING fts5(
  text, content = 'archive', content_rowid = 'seq', tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER archive_fts_delete AFTER DELETE ON archive
WHEN old.text IS NOT NULL AND old.seq <= (SELECT value FROM archive_meta WHERE key = 'fts_indexed') BEGIN
  INSERT INTO archive_fts (archive_fts, rowid, text) VALUES ('delete', old.seq, old.text);
END;
CREATE UNIQUE INDEX archive_id ON archive (oid, id);
CREATE INDEX archive_when ON archive (oid, "when");
CREATE INDEX archive_with ON archive (oid, bare_with, "when");
`;

function ftsMark(path: string): { mark: number; max: number } {
  const raw = new Database(path, { readonly: true });
  try {
    const mark = (
      raw.prepare("SELECT value FROM archive_meta WHERE key = 'fts_indexed'").get() as { value: number }
    ).value;
    const max =
      (raw.prepare('SELECT MAX(item_seq) AS s FROM archive_item').get() as { s: number | null }).s ?? 0;
    return { mark, max };
  } finally {
    raw.close();
  }
}

function ftsIntegrity(path: string): void {
  const raw = new Database(path);
  try {
    raw.exec("INSERT INTO archive_fts (archive_fts) VALUES ('integrity-check')");
  } finally {
    raw.close();
  }
}

describe('sqlite archive', function () {
  it('commits in a writer thread: an acknowledged append is visible to another connection', async function () {
    const path = freshPath();
    const d = SqliteDriver.open(path);
    const a = d.archive<number>('h', 'a');
    const id = await a.append('u', { with: 'x@y', value: 1 });
    const raw = new Database(path, { readonly: true });
    expect(raw.prepare('SELECT id FROM archive').all()).to.deep.equal([{ id }]);
    raw.close();
    await d.close();
  });

  it('runs the writer thread at the configured nice value, and the rest of the server at its own', async function () {
    if (process.platform !== 'linux') this.skip(); // thread nice values are Linux's (SqliteOptions.writerNice)
    /** The nice value (field 19 of /proc/<pid>/task/<tid>/stat) of each thread of this process. */
    const niceOfThreads = () =>
      readdirSync('/proc/self/task').map((tid) => {
        const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
        // Fields after the command name, which is in parentheses and may hold spaces.
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        return { tid: Number(tid), nice: Number(fields[16]) };
      });
    const mainNice = niceOfThreads().find((t) => t.tid === process.pid)!.nice;
    // A value no other test uses, so a thread reused from another driver cannot pass for this one.
    const d = SqliteDriver.open(freshPath(), { writerNice: 17 });
    await d.archive<number>('h', 'a').append('u', { with: 'x@y', value: 1 });
    const threads = niceOfThreads();
    expect(threads.filter((t) => t.nice === 17)).to.have.length(1);
    expect(threads.find((t) => t.tid === process.pid)!.nice).to.equal(mainNice);
    await d.close();
    expect(() => SqliteDriver.open(freshPath(), { writerNice: 20 })).to.throw(
      RangeError,
      'writerNice must be an integer from 0 to 19, got 20',
    );
  });

  it('lets a caller know a fresh id before the append completes, and sees it from an immediate read', async function () {
    const d = SqliteDriver.open(freshPath());
    const a = d.archive<number>('h', 'a');
    const pending = a.append('u', { id: 'chosen-id-0001', fresh: true, with: 'x@y', value: 1 });
    const found = await a.find('u', { ids: ['chosen-id-0001'] });
    expect(found.items.map((i) => i.value)).to.deep.equal([1]);
    expect(await pending).to.equal('chosen-id-0001');
    await d.close();
  });

  it('fills the full-text index before a text query, and keeps it consistent through deletes', async function () {
    const path = freshPath();
    // No background indexing during the test: only text queries index.
    const d = SqliteDriver.open(path, { ftsIdleMs: 60_000 });
    const a = d.archive<number>('h', 'a');
    const ids: string[] = [];
    for (let i = 0; i < 20; i++)
      ids.push(await a.append('u', { when: i, with: 'x@y', value: i, text: `word${i} common` }));
    expect(ftsMark(path).mark).to.equal(0);
    // Deleting rows that were never indexed must not touch the index.
    expect(await a.delete('u', { ids: [ids[0]!] })).to.equal(1);
    // An un-awaited append is found by an immediate text query.
    void a.append('u', { when: 100, with: 'x@y', value: 100, text: 'word100 common' });
    expect((await a.find('u', { text: 'word100' })).items.map((i) => i.value)).to.deep.equal([100]);
    const { mark, max } = ftsMark(path);
    expect(mark).to.equal(max);
    expect((await a.find('u', { text: 'common', total: true })).total).to.equal(20);
    // Deleting indexed rows takes them out of the index, by text filter too.
    expect(await a.delete('u', { text: 'word5' })).to.equal(1);
    expect(await a.delete('u', { ids: [ids[6]!] })).to.equal(1);
    expect((await a.find('u', { text: 'common', total: true })).total).to.equal(18);
    // Rows appended after the last text query are indexed by the next one.
    await a.append('u', { when: 200, with: 'x@y', value: 200, text: 'later common' });
    expect((await a.find('u', { text: 'later' })).items.map((i) => i.value)).to.deep.equal([200]);
    await d.close();
    ftsIntegrity(path);
  });

  it('catches the full-text index up in the background when idle', async function () {
    const path = freshPath();
    const d = SqliteDriver.open(path, { ftsIdleMs: 10 });
    const a = d.archive<number>('h', 'a');
    await Promise.all(
      Array.from({ length: 50 }, (_, i) => a.append('u', { with: 'x@y', value: i, text: `t${i}` })),
    );
    for (let i = 0; i < 100 && ftsMark(path).mark < 50; i++) await new Promise((r) => setTimeout(r, 20));
    expect(ftsMark(path).mark).to.equal(50);
    await d.close();
    ftsIntegrity(path);
  });

  it('stores an item shared by two archives once, until the last entry for it goes', async function () {
    const path = freshPath();
    const d = SqliteDriver.open(path, { ftsIdleMs: 60_000 });
    const a = d.archive<string>('h', 'a');
    const when = 1_700_000_000_000;
    const [idU, idV] = [generateArchiveId(when), generateArchiveId(when)];
    await a.appendShared(
      [
        { user: 'u', id: idU, with: 'v@x' },
        { user: 'v', id: idV, with: 'u@x/r' },
      ],
      { when, value: '<message>hi</message>', text: 'hi there' },
    );
    const items = () => {
      const raw = new Database(path, { readonly: true });
      try {
        return raw.prepare('SELECT refs FROM archive_item').all() as { refs: number }[];
      } finally {
        raw.close();
      }
    };
    expect(items()).to.deep.equal([{ refs: 2 }]);
    // Both find it by their own id through the key, and by text.
    expect((await a.find('u', { ids: [idU] })).items.map((i) => i.value)).to.deep.equal([
      '<message>hi</message>',
    ]);
    expect((await a.find('v', { after: idV })).items).to.deep.equal([]);
    expect((await a.find('v', { text: 'there' })).items.map((i) => i.id)).to.deep.equal([idV]);
    expect(await a.delete('u', { ids: [idU] })).to.equal(1);
    expect(items()).to.deep.equal([{ refs: 1 }]);
    expect((await a.find('v', { text: 'there' })).items.map((i) => i.id)).to.deep.equal([idV]);
    expect(await a.delete('v')).to.equal(1);
    expect(items()).to.deep.equal([]);
    await d.close();
    ftsIntegrity(path);
  });

  it('makes ids that carry their time and 48 random bits, and tells them from other ids', function () {
    const when = Date.UTC(2026, 10, 22, 12, 0, 0, 123);
    const ids = Array.from({ length: 100 }, () => generateArchiveId(when));
    expect(new Set(ids).size).to.equal(100);
    for (const id of ids) {
      expect(id).to.match(/^[A-Za-z0-9_-]{16}$/);
      expect(archiveIdTime(id)).to.equal(when);
    }
    expect(archiveIdTime('chosen-id-0001')).to.equal(null);
    expect(archiveIdTime('not/base64url!!!')).to.equal(null);
  });

  it('runs every archive statement off an index, never a scan of the archive', async function () {
    const d = SqliteDriver.open(freshPath());
    const a = d.archive<number>('h', 'a');
    for (let i = 0; i < 20; i++)
      await a.append('u', { when: i, with: i % 2 ? 'x@y/r' : 'z@y', value: i, text: 'w' });
    const queries = [{}, { with: 'x@y' }, { with: 'x@y/r', start: 3 }, { start: 2, end: 9 }, { text: 'w' }];
    for (const q of queries) {
      for (const [what, plan] of Object.entries(d.archivePlans('h', 'a', 'u', q))) {
        const text = plan.join('\n');
        expect(text, `${what} ${JSON.stringify(q)}`).not.to.match(/SCAN (archive|a|o|archive_owner)\b/);
        expect(text, `${what} ${JSON.stringify(q)}`).to.match(/SEARCH (archive|a)\b/);
        // Reading or deleting one conversation goes through its index, not the owner's timeline.
        if ('with' in q && ['total', 'delete'].includes(what)) {
          expect(text, `${what} ${JSON.stringify(q)}`).to.match(/INDEX archive_with \(oid=\? AND bare_id=\?/);
        }
      }
    }
    await d.close();
  });

  it('purges across owners along each owner’s timeline', async function () {
    const d = SqliteDriver.open(freshPath());
    const a = d.archive<number>('h', 'a');
    for (const u of ['u', 'v', 'w'])
      for (let i = 0; i < 10; i++) await a.append(u, { when: i, with: 'x@y', value: i });
    await d.archive<number>('h', 'b').append('u', { when: 0, with: 'x@y', value: 0 });
    expect(await a.deleteOlderThan!(5, 4)).to.equal(15);
    for (const u of ['u', 'v', 'w']) expect(await a.count(u)).to.equal(5);
    expect(await d.archive('h', 'b').count('u')).to.equal(1);
    await d.close();
  });

  describe('pruning the dictionary of JIDs', function () {
    /** The JIDs and owners the file still names. */
    const names = (path: string) => {
      const raw = new Database(path, { readonly: true });
      try {
        return {
          jids: (raw.prepare('SELECT jid FROM archive_jid ORDER BY jid').all() as { jid: string }[]).map(
            (r) => r.jid,
          ),
          owners: (
            raw.prepare('SELECT user FROM archive_owner ORDER BY user').all() as { user: string }[]
          ).map((r) => r.user),
        };
      } finally {
        raw.close();
      }
    };
    const until = async (what: () => boolean) => {
      for (let i = 0; i < 200 && !what(); i++) await new Promise((r) => setTimeout(r, 20));
    };

    it('forgets, when idle after a purge, the JIDs and owners whose last entry went', async function () {
      const path = freshPath();
      const d = SqliteDriver.open(path, { ftsIdleMs: 10 });
      const a = d.archive<number>('h', 'a');
      await a.append('u', { when: 1, with: 'old@x/r', value: 1 });
      await a.append('v', { when: 2, with: 'old@x/r', value: 2 });
      await a.append('w', { when: 3, with: 'gone@x', value: 3 });
      await a.append('u', { when: 10, with: 'kept@x/r', value: 4 });
      expect(names(path).jids).to.deep.equal(['gone@x', 'kept@x', 'kept@x/r', 'old@x', 'old@x/r']);
      expect(await a.deleteOlderThan!(5, 100)).to.equal(3);
      await until(() => names(path).jids.length === 2);
      expect(names(path)).to.deep.equal({ jids: ['kept@x', 'kept@x/r'], owners: ['u'] });
      // What stays is still found by its conversation; a forgotten JID comes back when used again.
      expect((await a.find('u', { with: 'kept@x' })).items.map((i) => i.value)).to.deep.equal([4]);
      await a.append('v', { when: 20, with: 'old@x/r', value: 5 });
      expect((await a.find('v', { with: 'old@x' })).items.map((i) => i.value)).to.deep.equal([5]);
      expect((await a.find('u', { with: 'old@x' })).items).to.deep.equal([]);
      await d.close();
    });

    it('keeps a JID that an entry written while the pass runs refers to', async function () {
      const path = freshPath();
      // Appends and deletes on the inline writer's BatchApplier, stepped by hand.
      const d = SqliteDriver.open(path, { writer: 'inline' });
      const a = d.archive<number>('h', 'a');
      for (let i = 0; i < 30; i++) await a.append(`u${i}`, { when: 100 + i, with: 'busy@x', value: i });
      await a.append('z', { when: 1, with: 'late@x', value: 0 });
      await d.close();

      const { BatchApplier } = await import('../../src/storage/sqlite-ops.ts');
      const db = new Database(path);
      const applier = new BatchApplier(db);
      const append = (user: string, when: number, w: string): WriteOp => ({
        k: 'append',
        host: 'h',
        store: 'a',
        user,
        id: generateArchiveId(when),
        replace: false,
        when,
        with: w,
        bare: w,
        value: '0',
        text: null,
      });
      applier.apply([{ k: 'purge', host: 'h', store: 'a', before: 50, limit: 10 }]);
      expect(applier.pruneWanted).to.equal(true);
      // The pass reads 10 entries a step, in (owner, time) order: u0's archive (the first
      // owner) is behind it when u0 gets an entry with the JID no entry referred to.
      expect(applier.pruneJidsStep(10)).to.equal(true);
      applier.apply([append('u0', 200, 'late@x')]);
      while (applier.pruneJidsStep(10));
      expect(applier.pruneWanted).to.equal(false);
      db.close();
      expect(names(path).jids).to.deep.equal(['busy@x', 'late@x']);
      const again = SqliteDriver.open(path);
      expect(
        (await again.archive<number>('h', 'a').find('u0', { with: 'late@x' })).items.map((i) => i.id),
      ).to.have.length(1);
      await again.close();
    });

    it('prunes before a process that purged closes, as `chorus archive purge` does', async function () {
      const path = freshPath();
      const d = SqliteDriver.open(path, { ftsIdleMs: 60_000 });
      const a = d.archive<number>('h', 'a');
      await a.append('u', { when: 1, with: 'old@x', value: 1 });
      await a.append('u', { when: 10, with: 'new@x', value: 2 });
      expect(await a.deleteOlderThan!(5, 100)).to.equal(1);
      expect(names(path).jids).to.deep.equal(['new@x', 'old@x']);
      await d.close();
      expect(names(path).jids).to.deep.equal(['new@x']);
    });
  });

  describe('spacing commits under load (busyCommitMs)', function () {
    // Long enough that "held" and "not held" cannot be confused on a slow machine.
    const SPACING = 1500;
    const NOT_HELD = SPACING / 2;
    const BEHIND = { behind: true };
    let d: SqliteDriver;
    let a: ReturnType<SqliteDriver['archive']>;
    let n = 0;
    /** One message for `u`'s archive, as archiving a message writes it. */
    const message = (behind: boolean) => {
      const when = Date.now();
      const entries = [{ user: 'u', id: generateArchiveId(when), with: `peer${++n}@x` }];
      return a.appendShared(entries, { when, value: n }, behind ? BEHIND : {});
    };
    /** A commit large enough to count as load: every later write-behind batch may wait. */
    const loadCommit = () => Promise.all(Array.from({ length: 200 }, () => message(true)));
    const elapsedMs = async (work: () => Promise<unknown>) => {
      const started = performance.now();
      await work();
      return performance.now() - started;
    };

    beforeEach(function () {
      d = SqliteDriver.open(freshPath(), { busyCommitMs: SPACING });
      a = d.archive('h', 'a');
    });
    afterEach(async function () {
      await d.close();
    });

    it('holds write-behind appends after a large commit, and commits them together', async function () {
      await loadCommit();
      const commits = d.stats.commits;
      const waited = await elapsedMs(() => Promise.all([message(true), message(true)]));
      expect(waited).to.be.at.least(SPACING / 3);
      expect(d.stats.commits).to.equal(commits + 1);
      expect((await a.find('u', { total: true })).total).to.equal(202);
    });

    it('never holds a write-behind append that a read waits for', async function () {
      const newest = async () => (await a.find('u', { before: true, limit: 1 })).items.map((i) => i.value);
      // The read comes while the append is still queued in this thread...
      await loadCommit();
      let found: unknown[] = [];
      let waited = await elapsedMs(async () => {
        void message(true);
        found = await newest();
      });
      expect(found).to.deep.equal([n]);
      expect(waited).to.be.below(NOT_HELD);
      // ... or once the writer thread already holds it.
      await loadCommit();
      waited = await elapsedMs(async () => {
        void message(true);
        await new Promise((resolve) => setTimeout(resolve, 50));
        found = await newest();
      });
      expect(found).to.deep.equal([n]);
      expect(waited).to.be.below(NOT_HELD);
    });

    it('never holds a write its caller waits for', async function () {
      await loadCommit();
      expect(await elapsedMs(() => message(false))).to.be.below(NOT_HELD);
      await loadCommit();
      expect(await elapsedMs(() => d.keyval('h', 's').set('u', 1))).to.be.below(NOT_HELD);
    });

    it('holds nothing under light load (small commits)', async function () {
      const waited = await elapsedMs(async () => {
        for (let i = 0; i < 5; i++) await message(true);
      });
      expect(waited).to.be.below(NOT_HELD);
      expect(() => SqliteDriver.open(freshPath(), { busyCommitMs: -1 })).to.throw(
        RangeError,
        'busyCommitMs must be a finite number >= 0, got -1',
      );
    });
  });

  it('stops its writer thread on close, and rejects writes afterwards', async function () {
    const d = SqliteDriver.open(freshPath());
    const kv = d.keyval<number>('h', 's');
    const pending = kv.set('u', 1);
    await d.close();
    await pending;
    let err: unknown;
    try {
      await kv.set('u', 2);
    } catch (e) {
      err = e;
    }
    expect(String(err)).to.match(/closed/);
  });

  describe(`migration from schema 1 to ${SCHEMA_VERSION}`, function () {
    function makeSchema1(path: string, rows: number): void {
      const raw = new Database(path);
      raw.pragma('journal_mode = WAL');
      raw.exec(SCHEMA_1);
      raw.pragma('user_version = 1');
      raw.prepare("INSERT INTO keyval VALUES ('h', 'kv', 'u', '{\"v\":1}')").run();
      raw.prepare("INSERT INTO map VALUES ('h', 'm', 'u', 'k', '[1,2]')").run();
      const insert = raw.prepare(
        'INSERT INTO archive (host, store, user, id, "when", "with", bare_with, value, text) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
      );
      raw.transaction(() => {
        for (let i = 0; i < rows; i++) {
          const user = ['alice', 'bob', 'carol'][i % 3]!;
          const w = i % 2 ? 'x@y/r' : 'z@y';
          insert.run(
            'h',
            i % 5 === 4 ? 'other' : 'archive',
            user,
            `id${i}`,
            1000 + (i >> 1),
            w,
            w.split('/')[0],
            JSON.stringify(i),
            i % 4 ? `text number${i}` : null,
          );
        }
      })();
      // A deleted row leaves a gap in seq, as real archives have.
      raw.prepare("DELETE FROM archive WHERE id = 'id7'").run();
      raw.close();
    }

    it('keeps every archived item, its id, order and text, and the other stores', async function () {
      const path = freshPath();
      const { mkdirSync } = await import('node:fs');
      mkdirSync(join(path, '..'), { recursive: true });
      makeSchema1(path, 300);
      const old = new Database(path, { readonly: true });
      const before = old
        .prepare('SELECT host, store, user, id, "when", "with", value, text FROM archive ORDER BY seq')
        .all();
      old.close();

      const lines: string[] = [];
      const d = SqliteDriver.open(path, { log: (m) => lines.push(m) });
      expect(lines.join('\n')).to.match(/migrating the archive to schema 2: 299 rows/);
      expect(lines.join('\n')).to.match(/migrated the archive to schema 2: 299 rows/);
      expect(lines.join('\n')).to.match(/migrating the archive to schema 3: 299 rows/);
      expect(lines.join('\n')).to.match(/migrated the archive to schema 3: 299 rows/);
      expect(await d.keyval('h', 'kv').get('u')).to.deep.equal({ v: 1 });
      expect(await d.map('h', 'm').get('u', 'k')).to.deep.equal([1, 2]);

      const after: unknown[] = [];
      for (const store of ['archive', 'other']) {
        for (const user of ['alice', 'bob', 'carol']) {
          for (const item of (await d.archive<number>('h', store).find(user)).items) {
            after.push({
              host: 'h',
              store,
              user,
              id: item.id,
              when: item.when,
              with: item.with,
              value: JSON.stringify(item.value),
              text: item.text ?? null,
            });
          }
        }
      }
      const key = (r: unknown) => JSON.stringify(r);
      expect(after.map(key).sort()).to.deep.equal(before.map(key).sort());

      const a = d.archive<number>('h', 'archive');
      // Paging by old ids, `with`, text search (the index is rebuilt lazily).
      const page = await a.find('alice', { after: 'id0', limit: 2 });
      expect(page.items.map((i) => i.id)).to.deep.equal(['id3', 'id6']);
      expect(
        (await a.find('bob', { with: 'x@y', limit: 3 })).items.every((i) => i.with === 'x@y/r'),
      ).to.equal(true);
      expect((await a.find('alice', { text: 'number3' })).items.map((i) => i.id)).to.deep.equal(['id3']);
      expect((await a.find('bob', { ids: ['id7'] })).items).to.deep.equal([]);
      // New items come after the migrated ones, and a replaced old id is replaced.
      const fresh = await a.append('alice', { when: 1000, with: 'z@y', value: -1 });
      expect((await a.find('alice', { start: 1000, end: 1000 })).items.map((i) => i.id)).to.deep.equal([
        'id0',
        fresh,
      ]);
      await a.append('alice', { id: 'id3', when: 5000, with: 'z@y', value: -3, text: 'replaced' });
      expect((await a.find('alice', { ids: ['id3'] })).items.map((i) => i.value)).to.deep.equal([-3]);
      expect((await a.find('alice', { text: 'number3' })).items).to.deep.equal([]);
      await d.close();

      const raw = new Database(path, { readonly: true });
      expect(raw.pragma('user_version', { simple: true })).to.equal(SCHEMA_VERSION);
      const names = (
        raw.prepare("SELECT name FROM sqlite_master WHERE type IN ('index', 'trigger', 'table')").all() as {
          name: string;
        }[]
      ).map((r) => r.name);
      expect(names).to.include.members([
        'archive_owner',
        'archive_item',
        'archive_id',
        'archive_with',
        'archive_unref',
        'archive_fts_delete',
      ]);
      expect(names).not.to.include.members([
        'archive_v1',
        'archive_v2',
        'archive_owner_v2',
        'archive_when',
        'archive_retention',
        'archive_fts_insert',
        'archive_fts_update',
      ]);
      raw.close();
      ftsIntegrity(path);
      // Opening again does not migrate again.
      const again: string[] = [];
      await SqliteDriver.open(path, { log: (m) => again.push(m) }).close();
      expect(again).to.deep.equal([]);
    });

    it('migrates a schema-2 database, full-text index included, keeping ids, order and text', async function () {
      const path = freshPath();
      const { mkdirSync } = await import('node:fs');
      mkdirSync(join(path, '..'), { recursive: true });
      const raw = new Database(path);
      raw.pragma('journal_mode = WAL');
      raw.exec(SCHEMA_2);
      raw.pragma('user_version = 2');
      raw
        .prepare("INSERT INTO archive_owner (oid, host, store, user) VALUES (1, 'h', 'archive', 'alice')")
        .run();
      const insert = raw.prepare(
        'INSERT INTO archive (oid, id, "when", "with", bare_with, value, text) VALUES (1, ?, ?, ?, ?, ?, ?)',
      );
      for (let i = 0; i < 10; i++)
        insert.run(`old${i}`, 1000 + i, 'bob@x/r', 'bob@x', JSON.stringify(i), `note ${i}`);
      raw.prepare("DELETE FROM archive WHERE id = 'old9'").run();
      // Schema 2 had indexed the text of the first rows.
      raw.exec('INSERT INTO archive_fts (rowid, text) SELECT seq, text FROM archive WHERE seq <= 5');
      raw.prepare("UPDATE archive_meta SET value = 5 WHERE key = 'fts_indexed'").run();
      raw.close();

      const lines: string[] = [];
      const d = SqliteDriver.open(path, { log: (m) => lines.push(m) });
      expect(lines.join('\n')).to.match(/migrated the archive to schema 3: 9 rows/);
      const a = d.archive<number>('h', 'archive');
      const all = await a.find('alice');
      expect(all.items.map((i) => [i.id, i.when, i.with, i.value])).to.deep.equal(
        Array.from({ length: 9 }, (_, i) => [`old${i}`, 1000 + i, 'bob@x/r', i]),
      );
      expect((await a.find('alice', { after: 'old3', limit: 2 })).items.map((i) => i.id)).to.deep.equal([
        'old4',
        'old5',
      ]);
      expect((await a.find('alice', { text: 'note 7' })).items.map((i) => i.id)).to.deep.equal(['old7']);
      // New items come after the migrated ones.
      const fresh = await a.append('alice', { when: 1008, with: 'bob@x', value: 99, text: 'note new' });
      expect((await a.find('alice', { start: 1008 })).items.map((i) => i.id)).to.deep.equal(['old8', fresh]);
      expect((await a.find('alice', { text: 'new' })).items.map((i) => i.value)).to.deep.equal([99]);
      await d.close();
      ftsIntegrity(path);
    });

    it('migrates an empty schema-1 database silently', async function () {
      const path = freshPath();
      const { mkdirSync } = await import('node:fs');
      mkdirSync(join(path, '..'), { recursive: true });
      makeSchema1(path, 0);
      const lines: string[] = [];
      const d = SqliteDriver.open(path, { log: (m) => lines.push(m) });
      expect(lines).to.deep.equal([]);
      const a = d.archive<number>('h', 'archive');
      await a.append('u', { with: 'x@y', value: 1, text: 'hello' });
      expect((await a.find('u', { text: 'hello' })).items.map((i) => i.value)).to.deep.equal([1]);
      await d.close();
    });
  });
});
