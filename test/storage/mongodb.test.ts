// Tests of the MongoDB driver that need no server: configuration, query
// building, operation ordering, and the conformance suite run against an
// in-process fake of the collection API (see mongodb-fake.ts). The real
// server run is in conformance.test.ts, behind CHORUS_TEST_MONGODB_URL.

import { expect } from 'chai';
import { ObjectId, type MongoClient } from 'mongodb';
import { ConfigError, parseConfig } from '../../src/config/index.ts';
import {
  INDEXES,
  MongoDriver,
  OpOrder,
  SeqGenerator,
  archiveFilterParts,
  databaseFromUrl,
  keysetParts,
  nextSeq,
} from '../../src/storage/mongodb.ts';
import { runStorageConformance } from './conformance.ts';
import { FakeClient, matches } from './mongodb-fake.ts';

const FILE = 'conf/test.yaml';

function configError(yaml: string): ConfigError {
  try {
    parseConfig(yaml, { file: FILE, env: {}, cwd: '/srv' });
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('mongodb storage config', function () {
  it('requires storage.url with driver mongodb, naming the file and line', function () {
    const err = configError('hosts: [{ domain: example.org }]\nstorage:\n  driver: mongodb\n');
    expect(err.message).to.equal(
      `${FILE}:3:3: storage.url is required when storage.driver is 'mongodb': ` +
        'give a connection string such as mongodb://localhost:27017/chorus',
    );
    expect(err.issues[0]!.line).to.equal(3);
  });

  it('accepts a url and a database', function () {
    const c = parseConfig(
      'storage:\n  driver: mongodb\n  url: mongodb+srv://u:p@db.example.org/x\n  database: chorus\n',
      {
        env: {},
        cwd: '/srv',
      },
    );
    expect(c.storage.driver).to.equal('mongodb');
    expect(c.storage.url).to.equal('mongodb+srv://u:p@db.example.org/x');
    expect(c.storage.database).to.equal('chorus');
  });

  it('takes the url from the environment', function () {
    const c = parseConfig('storage:\n  driver: mongodb\n', {
      env: { CHORUS_STORAGE__URL: 'mongodb://db:27017/chorus' },
      cwd: '/srv',
    });
    expect(c.storage.url).to.equal('mongodb://db:27017/chorus');
  });

  it('rejects a url that is not a MongoDB connection string, and a bad database name', function () {
    const err = configError('storage:\n  driver: mongodb\n  url: postgres://x\n  database: a.b\n');
    expect(err.message.split('\n')).to.deep.equal([
      `${FILE}:3:8: storage.url must be a MongoDB connection string (mongodb://... or mongodb+srv://...), got "postgres://x"`,
      `${FILE}:4:13: storage.database must be a MongoDB database name (1 to 63 characters, none of /\\. "$*<>:|?), got "a.b"`,
    ]);
  });

  it('leaves the sqlite defaults alone', function () {
    const c = parseConfig('', { env: {}, cwd: '/srv' });
    expect(c.storage).to.deep.equal({ driver: 'sqlite', path: '/srv/data/chorus.sqlite', writer_nice: 10 });
  });
});

describe('mongodb query building', function () {
  it('finds the database in a connection string', function () {
    expect(databaseFromUrl('mongodb://h:1/chorus')).to.equal('chorus');
    expect(databaseFromUrl('mongodb://u:p%2F@a:1,b:2/my%20db?replicaSet=rs0')).to.equal('my db');
    expect(databaseFromUrl('mongodb+srv://cluster.example.org/x?retryWrites=true')).to.equal('x');
    expect(databaseFromUrl('mongodb://h:1/')).to.equal(undefined);
    expect(databaseFromUrl('mongodb://h:1')).to.equal(undefined);
    expect(databaseFromUrl('mongodb://h:1/?w=1')).to.equal(undefined);
  });

  it('hands out strictly increasing sequence numbers, even if the clock steps back', function () {
    const seq = new SeqGenerator();
    const a = seq.next(2_000_000_000_000);
    const b = seq.next(2_000_000_000_000);
    const c = seq.next(1_999_999_999_000);
    const d = seq.next(2_000_000_000_005);
    expect(b).to.be.greaterThan(a);
    expect(c).to.be.greaterThan(b);
    expect(d).to.be.greaterThan(c);
    expect(Number.isSafeInteger(seq.next(Date.UTC(2200, 0, 1)))).to.equal(true);
    expect(nextSeq()).to.be.lessThan(nextSeq());
  });

  it('turns text queries into textTerms() with $all, and no terms into no constraint', function () {
    expect(archiveFilterParts({ text: 'Héllo, WORLD hello' })).to.deep.equal([
      { terms: { $all: ['hello', 'world'] } },
    ]);
    expect(archiveFilterParts({ text: '  !!! ' })).to.deep.equal([]);
  });

  it('matches a bare with on the bare column and a full one exactly', function () {
    expect(archiveFilterParts({ with: 'a@b' })).to.deep.equal([{ bare: 'a@b' }]);
    expect(archiveFilterParts({ with: 'a@b/r' })).to.deep.equal([{ bare: 'a@b' }, { with: 'a@b/r' }]);
  });

  it('pages strictly after and before an anchor in (when, seq, _id) order', function () {
    const ids = Array.from({ length: 3 }, () => new ObjectId());
    const docs = [
      { when: 1, seq: 5, _id: ids[0] },
      { when: 2, seq: 1, _id: ids[0] },
      { when: 2, seq: 3, _id: ids[0] },
      { when: 2, seq: 3, _id: ids[1] },
      { when: 2, seq: 3, _id: ids[2] },
      { when: 2, seq: 4, _id: ids[0] },
      { when: 3, seq: 0, _id: ids[0] },
    ];
    const anchor = docs[3]!;
    const after = { $and: keysetParts(anchor, 'after') };
    const before = { $and: keysetParts(anchor, 'before') };
    expect(docs.filter((d) => matches(d, after))).to.deep.equal(docs.slice(4));
    expect(docs.filter((d) => matches(d, before))).to.deep.equal(docs.slice(0, 3));
  });

  it('starts every index with the owner, the suggested shard key', function () {
    for (const list of Object.values(INDEXES)) {
      for (const index of list) {
        const keys = Object.keys(index.key);
        if (index.name === 'retention') expect(keys.slice(0, 2)).to.deep.equal(['host', 'store']);
        else expect(keys.slice(0, 3)).to.deep.equal(['host', 'store', 'user']);
      }
    }
  });
});

describe('mongodb operation ordering', function () {
  const tick = () => new Promise<void>((r) => setImmediate(r));

  /** An operation that logs its start and end and takes `turns` event-loop turns. */
  function logged(log: string[], name: string, turns: number) {
    return async () => {
      log.push(`${name}>`);
      for (let i = 0; i < turns; i++) await tick();
      log.push(`<${name}`);
      return name;
    };
  }

  it('lets a read wait for earlier writes of the owner, but not for other owners', async function () {
    const order = new OpOrder();
    const log: string[] = [];
    const w = order.run('s', 'u', 'exclusive', logged(log, 'w', 3));
    const other = order.run('s', 'v', 'read', logged(log, 'other', 0));
    const r = order.run('s', 'u', 'read', logged(log, 'r', 0));
    await Promise.all([w, other, r]);
    expect(log.indexOf('<w')).to.be.lessThan(log.indexOf('r>'));
    expect(log.indexOf('<other')).to.be.lessThan(log.indexOf('<w'));
    expect(order.tracked).to.equal(0);
  });

  it('runs appends concurrently, but orders them against exclusive writes and by id', async function () {
    const order = new OpOrder();
    const log: string[] = [];
    const ops = [
      order.run('s', 'u', 'shared', logged(log, 'a1', 3)),
      order.run('s', 'u', 'shared', logged(log, 'a2', 1)),
      order.run('s', 'u', 'shared', logged(log, 'k1', 3), 'k'),
      order.run('s', 'u', 'shared', logged(log, 'k2', 0), 'k'),
      order.run('s', 'u', 'exclusive', logged(log, 'del', 1)),
      order.run('s', 'u', 'shared', logged(log, 'a3', 0)),
    ];
    await Promise.all(ops);
    // a2 overtakes a1: appends do not wait for each other.
    expect(log.indexOf('<a2')).to.be.lessThan(log.indexOf('<a1'));
    // The same id: k2 starts after k1 ends.
    expect(log.indexOf('<k1')).to.be.lessThan(log.indexOf('k2>'));
    // The delete waits for every earlier append; the later append waits for it.
    for (const n of ['a1', 'a2', 'k1', 'k2'])
      expect(log.indexOf(`<${n}`)).to.be.lessThan(log.indexOf('del>'));
    expect(log.indexOf('<del')).to.be.lessThan(log.indexOf('a3>'));
    expect(order.tracked).to.equal(0);
  });

  it('orders whole-store operations against every owner', async function () {
    const order = new OpOrder();
    const log: string[] = [];
    const ops = [
      order.run('s', 'u', 'shared', logged(log, 'u1', 2)),
      order.run('s', 'v', 'exclusive', logged(log, 'v1', 3)),
      order.run('t', 'u', 'exclusive', logged(log, 'elsewhere', 5)),
      order.run('s', null, 'exclusive', logged(log, 'purge', 1)),
      order.run('s', 'u', 'read', logged(log, 'u2', 0)),
      order.run('s', null, 'read', logged(log, 'list', 0)),
    ];
    await Promise.all(ops);
    expect(log.indexOf('<u1')).to.be.lessThan(log.indexOf('purge>'));
    expect(log.indexOf('<v1')).to.be.lessThan(log.indexOf('purge>'));
    expect(log.indexOf('purge>')).to.be.lessThan(log.indexOf('<elsewhere'));
    expect(log.indexOf('<purge')).to.be.lessThan(log.indexOf('u2>'));
    expect(log.indexOf('<purge')).to.be.lessThan(log.indexOf('list>'));
    expect(order.tracked).to.equal(0);
  });

  it('goes on after a failed operation and passes its error to the caller', async function () {
    const order = new OpOrder();
    const failed = order.run('s', 'u', 'exclusive', async () => {
      throw new Error('boom');
    });
    const next = order.run('s', 'u', 'read', async () => 'ok');
    let err: unknown;
    try {
      await failed;
    } catch (e) {
      err = e;
    }
    expect((err as Error).message).to.equal('boom');
    expect(await next).to.equal('ok');
    await order.idle();
    expect(order.tracked).to.equal(0);
  });
});

describe('mongodb driver on a fake collection API', function () {
  // Checks the driver's logic (filters, keyset paging, ordering of
  // concurrent operations answered out of order), not MongoDB itself.
  const client = new FakeClient();
  let n = 0;
  runStorageConformance('mongodb (fake collections)', async () =>
    MongoDriver.withClient(client as unknown as MongoClient, `fake${++n}`),
  );

  it('creates its indexes once, before the first operation', async function () {
    const fake = new FakeClient();
    const d = MongoDriver.withClient(fake as unknown as MongoClient, 'idx');
    const archive = fake.db('idx').collection('archive');
    expect(archive.indexes).to.deep.equal([]);
    await d.keyval('h', 's').get('u');
    await d.archive('h', 's').count('u');
    expect(archive.indexes).to.deep.equal(INDEXES.archive.map((i) => i.name));
    await d.close();
  });

  it('replaces an item with a caller-chosen id, dropping its old text', async function () {
    const fake = new FakeClient();
    const d = MongoDriver.withClient(fake as unknown as MongoClient, 'replace');
    const a = d.archive<number>('h', 's');
    await a.append('u', { id: 'x', when: 5, with: 'a@b', value: 1, text: 'old words' });
    await a.append('u', { id: 'y', when: 5, with: 'a@b', value: 2 });
    await a.append('u', { id: 'x', when: 5, with: 'a@b/r', value: 3 });
    const all = await a.find('u');
    expect(all.items).to.deep.equal([
      { id: 'y', when: 5, with: 'a@b', value: 2 },
      { id: 'x', when: 5, with: 'a@b/r', value: 3 },
    ]);
    expect((await a.find('u', { text: 'old' })).items).to.deep.equal([]);
    await d.close();
  });
});
