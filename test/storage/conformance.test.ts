import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import Database from 'better-sqlite3';
import { MongoClient } from 'mongodb';
import { MemoryDriver } from '../../src/storage/memory.ts';
import { SqliteDriver } from '../../src/storage/sqlite.ts';
import { MongoDriver } from '../../src/storage/mongodb.ts';
import { openStorage } from '../../src/storage/index.ts';
import type { ArchiveQuery, StorageDriver } from '../../src/storage/types.ts';
import { runStorageConformance } from './conformance.ts';

const tmp = mkdtempSync(join(tmpdir(), 'chorus-storage-'));
let fileNo = 0;
const freshPath = () => join(tmp, `db${++fileNo}`, 'chorus.sqlite');

after(function () {
  rmSync(tmp, { recursive: true, force: true });
});

runStorageConformance('memory', async () => new MemoryDriver());
runStorageConformance('sqlite', async () => SqliteDriver.open(freshPath()));
runStorageConformance('sqlite (groupCommitMs: 2)', async () =>
  SqliteDriver.open(freshPath(), { groupCommitMs: 2 }),
);

// The MongoDB run needs a server: CHORUS_TEST_MONGODB_URL names it (e.g.
// mongodb://127.0.0.1:27017). Each driver the suite opens gets a database of
// its own, dropped when the suite closes that driver.
const mongoUrl = process.env.CHORUS_TEST_MONGODB_URL;
if (mongoUrl) {
  describe('mongodb', function () {
    const client = new MongoClient(mongoUrl, { serverSelectionTimeoutMS: 5000 });
    const runId = `${process.pid}_${Date.now().toString(36)}`;
    let dbNo = 0;

    after(async function () {
      await client.close();
    });

    runStorageConformance('mongodb', async () => {
      const name = `chorus_test_${runId}_${++dbNo}`;
      const driver = MongoDriver.withClient(client, name);
      // Wrapped so that closing the driver (the suite does it after every
      // test) also drops its database.
      return {
        name: driver.name,
        keyval: driver.keyval.bind(driver),
        map: driver.map.bind(driver),
        archive: driver.archive.bind(driver),
        flush: driver.flush.bind(driver),
        async close() {
          await driver.close();
          await client.db(name).dropDatabase();
        },
      } satisfies StorageDriver;
    });
  });
} else {
  describe('storage conformance: mongodb', function () {
    it('set CHORUS_TEST_MONGODB_URL to run the storage conformance suite against MongoDB', function () {
      this.skip();
    });
  });
}

describe('sqlite driver specifics', function () {
  it('keeps data across close and reopen of the same file', async function () {
    const path = freshPath();
    let d = SqliteDriver.open(path);
    await d.keyval('h', 'kv').set('u', { v: 1 });
    await d.map('h', 'm').set('u', 'k', [1, 2]);
    const a = d.archive<number>('h', 'a');
    const id1 = await a.append('u', { when: 10, with: 'x@y', value: 1, text: 'persistent words' });
    const id2 = await a.append('u', { when: 10, with: 'x@y/r', value: 2 });
    await d.close();

    d = SqliteDriver.open(path);
    expect(await d.keyval('h', 'kv').get('u')).to.deep.equal({ v: 1 });
    expect(await d.map('h', 'm').get('u', 'k')).to.deep.equal([1, 2]);
    const b = d.archive<number>('h', 'a');
    expect((await b.find('u', { text: 'persistent' })).items.map((i) => i.id)).to.deep.equal([id1]);
    // Insertion order survives, and new items with the same `when` still come after.
    const id3 = await b.append('u', { when: 10, with: 'x@y', value: 3 });
    expect((await b.find('u')).items.map((i) => i.id)).to.deep.equal([id1, id2, id3]);
    expect((await b.find('u', { after: id1 })).items.map((i) => i.value)).to.deep.equal([2, 3]);
    await d.close();
  });

  it('creates the database directory when missing', async function () {
    const path = join(tmp, 'deep', 'er', 'still', 'chorus.sqlite');
    const d = SqliteDriver.open(path);
    await d.keyval('h', 's').set('u', 1);
    await d.close();
    expect(existsSync(path)).to.equal(true);
  });

  it('uses WAL and refuses a newer schema', async function () {
    const path = freshPath();
    await SqliteDriver.open(path).close();
    const raw = new Database(path);
    expect(raw.pragma('journal_mode', { simple: true })).to.equal('wal');
    raw.pragma('user_version = 99');
    raw.close();
    expect(() => SqliteDriver.open(path)).to.throw(/schema version 99/);
  });

  it('resolves writes only once committed', async function () {
    const path = freshPath();
    const d = SqliteDriver.open(path, { groupCommitMs: 5 });
    const pending = d.keyval('h', 's').set('u', 'committed');
    // A second connection only sees committed data.
    const raw = new Database(path, { readonly: true });
    const look = () =>
      raw.prepare('SELECT value FROM keyval WHERE user = ?').get('u') as { value: string } | undefined;
    expect(look()).to.equal(undefined);
    await pending;
    expect(look()).to.deep.equal({ value: '"committed"' });
    raw.close();
    await d.close();
  });

  // The driver sends a busy turn's writes 64 at a time; the writer thread
  // commits together whatever has reached it, so 1,000 appends take a handful
  // of transactions, never one each.
  it('commits 1,000 concurrent appends in at most one transaction per 64', async function () {
    const d = SqliteDriver.open(freshPath());
    const a = d.archive<number>('h', 'a');
    const before = d.stats;
    const ids = await Promise.all(
      Array.from({ length: 1000 }, (_, i) => a.append('u', { with: 'x@y', value: i })),
    );
    const after = d.stats;
    expect(after.writes - before.writes).to.equal(1000);
    expect(after.commits - before.commits).to.be.within(1, Math.ceil(1000 / 64));
    expect(new Set(ids).size).to.equal(1000);
    expect((await a.find('u')).items.map((i) => i.value)).to.deep.equal(
      Array.from({ length: 1000 }, (_, i) => i),
    );
    await d.close();
  });

  // Archiving a message reads preferences and inbox state between appends; if
  // every such read committed the queue, each message would cost its own
  // transaction (measured: archive-on throughput fell to 4% of archive-off).
  it('keeps writes grouped when reads of other users or stores come in between', async function () {
    const d = SqliteDriver.open(freshPath());
    const archive = d.archive<number>('h', 'log');
    const prefs = d.keyval<string>('h', 'prefs');
    await prefs.set('reader', 'always');
    const before = d.stats.commits;
    const appends: Promise<string>[] = [];
    for (let i = 0; i < 50; i++) {
      appends.push(archive.append(`user${i % 5}`, { with: 'x@y', value: i }));
      expect(await prefs.get('reader')).to.equal('always');
      expect(await archive.count('someone-else')).to.equal(0);
    }
    await Promise.all(appends);
    expect(d.stats.commits - before).to.equal(1);
    await d.close();
  });

  it('commits queued writes before a read that could see them', async function () {
    const d = SqliteDriver.open(freshPath());
    const archive = d.archive<number>('h', 'log');
    const kv = d.keyval<number>('h', 'k');
    void archive.append('u', { with: 'x@y', value: 1 });
    expect(await archive.count('u')).to.equal(1);
    void kv.set('v', 7);
    expect(await kv.get('v')).to.equal(7);
    void kv.set('w', 8);
    const users: string[] = [];
    for await (const u of kv.users()) users.push(u);
    expect(users).to.deep.equal(['v', 'w']);
    // A queued whole-store sweep is seen by a later read of any user.
    await archive.append('old', { with: 'x@y', value: 2, when: 1000 });
    void archive.deleteOlderThan!(2000, 10);
    expect(await archive.count('old')).to.equal(0);
    await d.close();
  });

  it('rejects a failing write alone, without undoing the rest of its batch', async function () {
    const path = freshPath();
    await SqliteDriver.open(path).close();
    // Make one user's writes fail at the SQL level, the way a constraint would.
    const raw = new Database(path);
    raw.exec(`CREATE TRIGGER refuse BEFORE INSERT ON keyval WHEN new.user = 'bad'
              BEGIN SELECT RAISE(ABORT, 'refused'); END`);
    raw.close();
    const d = SqliteDriver.open(path);
    const kv = d.keyval('h', 's');
    const results = await Promise.allSettled([kv.set('a', 1), kv.set('bad', 2), kv.set('c', 3)]);
    expect(results.map((r) => r.status)).to.deep.equal(['fulfilled', 'rejected', 'fulfilled']);
    expect(String((results[1] as PromiseRejectedResult).reason)).to.match(/refused/);
    expect(d.stats.commits).to.equal(1);
    expect(await kv.get('a')).to.equal(1);
    expect(await kv.get('bad')).to.equal(null);
    expect(await kv.get('c')).to.equal(3);
    await d.close();
  });

  it('serves every page query from an index', async function () {
    const d = SqliteDriver.open(freshPath());
    const a = d.archive<number>('h', 'a');
    const ids: string[] = [];
    for (let i = 0; i < 50; i++) {
      ids.push(
        await a.append('u', { when: 1000 + i, with: i % 2 ? 'x@y/r' : 'z@y', value: i, text: `word${i}` }),
      );
    }
    const queries: ArchiveQuery[] = [
      {},
      { limit: 10 },
      { after: ids[5]!, limit: 10 },
      { before: ids[40]!, limit: 10 },
      { before: true, limit: 10 },
      { reverse: true, limit: 10 },
      { reverse: true, before: ids[40]!, limit: 10 },
      { with: 'x@y', limit: 10 },
      { with: 'x@y/r', after: ids[5]!, limit: 10 },
      { with: 'z@y', before: true, limit: 10 },
      { start: 1010, end: 1020, limit: 5 },
      { start: 1010, with: 'x@y', after: ids[12]!, limit: 5 },
    ];
    for (const q of queries) {
      const plan = d.queryPlan('h', 'a', 'u', q);
      const text = plan.join('\n');
      expect(text, JSON.stringify(q)).to.match(/SEARCH archive USING (COVERING INDEX|INDEX|PRIMARY KEY)/);
      expect(text, JSON.stringify(q)).not.to.match(/SCAN archive\b/);
      // Keyset paging walks the index in order: no sort of the whole range either.
      expect(text, JSON.stringify(q)).not.to.match(/TEMP B-TREE/);
      // A conversation is read off its own index, not found by walking the
      // owner's whole timeline and filtering.
      if (q.with !== undefined)
        expect(text, JSON.stringify(q)).to.match(/USING INDEX archive_with \(oid=\? AND bare_id=\?/);
    }
    // An ids lookup probes the key (ids carry their item's time) rather than
    // walking the timeline; an id of another form probes the id index.
    const idsPlan = d.queryPlan('h', 'a', 'u', { ids: [ids[1]!, ids[2]!] }).join('\n');
    expect(idsPlan).to.match(/SEARCH archive USING PRIMARY KEY \(oid=\? AND when=\? AND seq=\?\)/);
    expect(idsPlan).not.to.match(/SCAN archive\b/);
    await a.append('u', { id: 'chosen', when: 5, with: 'z@y', value: 99 });
    expect((await a.find('u', { ids: ['chosen', ids[3]!] })).items.map((i) => i.value)).to.deep.equal([
      99, 3,
    ]);
    await d.close();
  });

  it('rejects use after close', async function () {
    const d = SqliteDriver.open(freshPath());
    await d.close();
    await d.close();
    let err: unknown;
    try {
      await d.keyval('h', 's').get('u');
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(Error);
  });
});

describe('openStorage', function () {
  it('opens the memory driver', async function () {
    const d = openStorage({ driver: 'memory' });
    expect(d.name).to.equal('memory');
    await d.close();
  });

  it('opens the sqlite driver at the given path', async function () {
    const d = openStorage({ driver: 'sqlite', path: freshPath() });
    expect(d.name).to.equal('sqlite');
    await d.keyval('h', 's').set('u', 1);
    await d.close();
  });

  it('requires a path for sqlite', function () {
    expect(() => openStorage({ driver: 'sqlite' })).to.throw(/path/);
  });

  it('requires a url for mongodb', function () {
    expect(() => openStorage({ driver: 'mongodb' })).to.throw('storage driver "mongodb" needs a url');
  });

  it('opens the mongodb driver without contacting the server', async function () {
    // Nothing listens on port 1: opening must not connect (the client does on first use).
    const d = openStorage({ driver: 'mongodb', url: 'mongodb://127.0.0.1:1/chorus_x' });
    expect(d.name).to.equal('mongodb');
    expect((d as MongoDriver).database).to.equal('chorus_x');
    await d.close();
    const named = openStorage({
      driver: 'mongodb',
      url: 'mongodb://127.0.0.1:1/chorus_x',
      database: 'other',
    });
    expect((named as MongoDriver).database).to.equal('other');
    await named.close();
  });

  it('rejects a malformed mongodb url at once', function () {
    expect(() => openStorage({ driver: 'mongodb', url: 'http://example.org' })).to.throw();
  });
});
