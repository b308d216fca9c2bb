// The storage conformance suite: every driver must pass it unchanged, so the
// rest of the server can treat drivers as interchangeable. A new driver plugs
// in with one call to runStorageConformance from its own test file.

import { expect } from 'chai';
import fc from 'fast-check';
import {
  ItemNotFoundError,
  type ArchiveItem,
  type ArchiveQuery,
  type ArchiveStore,
  type JsonValue,
  type StorageDriver,
} from '../../src/storage/types.ts';

const ID_RE = /^[A-Za-z0-9_-]{12,}$/;

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected the promise to reject');
}

async function collect(it: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const x of it) out.push(x);
  return out;
}

interface Seed {
  when: number;
  with: string;
  text?: string;
}

// A small archive that exercises ties on `when`, bare and full JIDs, and text
// with mixed case and punctuation. Values carry the index for easy assertions.
const FIXTURE: Seed[] = [
  { when: 1000, with: 'alice@x', text: 'hello world' },
  { when: 1000, with: 'bob@x/phone', text: 'Hello there' },
  { when: 2000, with: 'alice@x/laptop', text: 'goodbye world' },
  { when: 2000, with: 'bob@x' },
  { when: 3000, with: 'alice@x', text: 'the quick brown fox' },
  { when: 4000, with: 'carol@x', text: 'quick hello' },
  { when: 4000, with: 'alice@x/laptop', text: 'World, hello again' },
  { when: 5000, with: 'bob@x/phone', text: 'nothing to see' },
  { when: 6000, with: 'alice@x', text: 'fox' },
  { when: 7000, with: 'alice@x/phone', text: 'Hello... WORLD!' },
];

type Val = { n: number };

async function seed(archive: ArchiveStore<Val>, user: string, items: Seed[] = FIXTURE): Promise<string[]> {
  const ids: string[] = [];
  // Sequential on purpose: insertion order is part of what is being tested.
  for (const [n, s] of items.entries()) {
    const item: { when: number; with: string; value: Val; text?: string } = {
      when: s.when,
      with: s.with,
      value: { n },
    };
    if (s.text !== undefined) item.text = s.text;
    ids.push(await archive.append(user, item));
  }
  return ids;
}

const ns = (items: ArchiveItem<Val>[]) => items.map((i) => i.value.n);

export function runStorageConformance(name: string, open: () => Promise<StorageDriver>): void {
  describe(`storage conformance: ${name}`, function () {
    let driver: StorageDriver;

    beforeEach(async function () {
      driver = await open();
    });

    afterEach(async function () {
      await driver.close();
    });

    it('has a name', function () {
      expect(driver.name).to.be.a('string').and.not.equal('');
    });

    describe('keyval', function () {
      it('returns null for a missing user', async function () {
        expect(await driver.keyval('h', 's').get('nobody')).to.equal(null);
      });

      it('sets, overwrites and deletes with null', async function () {
        const kv = driver.keyval('h', 's');
        await kv.set('u', { a: 1 });
        expect(await kv.get('u')).to.deep.equal({ a: 1 });
        await kv.set('u', { b: [1, 'two', true, null] });
        expect(await kv.get('u')).to.deep.equal({ b: [1, 'two', true, null] });
        await kv.set('u', null);
        expect(await kv.get('u')).to.equal(null);
        // Deleting what is not there is harmless.
        await kv.set('u', null);
      });

      it('round-trips every JSON kind', async function () {
        const kv = driver.keyval('h', 's');
        const values: JsonValue[] = [
          0,
          -1.5,
          'text with "quotes" and ünïcødé ☃',
          '',
          true,
          false,
          [],
          {},
          { nested: { deep: [1, { x: null }] } },
        ];
        for (const [i, v] of values.entries()) await kv.set(`u${i}`, v);
        for (const [i, v] of values.entries()) expect(await kv.get(`u${i}`)).to.deep.equal(v);
      });

      it('does not let callers alias stored values', async function () {
        const kv = driver.keyval<{ list: number[] }>('h', 's');
        const v = { list: [1] };
        await kv.set('u', v);
        v.list.push(2);
        const got = await kv.get('u');
        expect(got).to.deep.equal({ list: [1] });
        got!.list.push(3);
        expect(await kv.get('u')).to.deep.equal({ list: [1] });
      });

      it('lists users with a value, including many and the empty (host-wide) user', async function () {
        const kv = driver.keyval('h', 's');
        const expected: string[] = [''];
        await kv.set('', 'host-wide');
        const writes: Promise<void>[] = [];
        for (let i = 0; i < 300; i++) {
          expected.push(`user${i}`);
          writes.push(kv.set(`user${i}`, i));
        }
        writes.push(kv.set('gone', 1));
        await Promise.all(writes);
        await kv.set('gone', null);
        const users = await collect(kv.users());
        expect([...users].sort()).to.deep.equal([...expected].sort());
        expect(await kv.get('')).to.equal('host-wide');
      });

      it('lists nothing for an empty store', async function () {
        expect(await collect(driver.keyval('h', 'empty').users())).to.deep.equal([]);
      });

      it('tolerates writes while users() is being iterated', async function () {
        const kv = driver.keyval('h', 's');
        await Promise.all(['a', 'b', 'c'].map((u) => kv.set(u, u)));
        const seen: string[] = [];
        for await (const u of kv.users()) {
          seen.push(u);
          await kv.set(`${u}-extra`, 1);
        }
        expect(seen).to.include.members(['a', 'b', 'c']);
      });

      it('sees an un-awaited write from an immediate read', async function () {
        const kv = driver.keyval('h', 's');
        const pending = kv.set('u', 'fresh');
        expect(await kv.get('u')).to.equal('fresh');
        await pending;
      });

      it('keeps hosts, stores and users apart', async function () {
        await driver.keyval('h1', 's').set('u', 'h1/s/u');
        await driver.keyval('h2', 's').set('u', 'h2/s/u');
        await driver.keyval('h1', 't').set('u', 'h1/t/u');
        await driver.keyval('h1', 's').set('v', 'h1/s/v');
        expect(await driver.keyval('h1', 's').get('u')).to.equal('h1/s/u');
        expect(await driver.keyval('h2', 's').get('u')).to.equal('h2/s/u');
        expect(await driver.keyval('h1', 't').get('u')).to.equal('h1/t/u');
        expect(await driver.keyval('h1', 's').get('v')).to.equal('h1/s/v');
        expect(await driver.keyval('h2', 't').get('u')).to.equal(null);
        expect((await collect(driver.keyval('h1', 's').users())).sort()).to.deep.equal(['u', 'v']);
        expect(await collect(driver.keyval('h2', 's').users())).to.deep.equal(['u']);
        await driver.keyval('h1', 's').set('u', null);
        expect(await driver.keyval('h2', 's').get('u')).to.equal('h2/s/u');
        expect(await driver.keyval('h1', 't').get('u')).to.equal('h1/t/u');
      });

      it('does not confuse namespaces whose parts concatenate alike', async function () {
        await driver.keyval('a', 'bc').set('u', 1);
        expect(await driver.keyval('ab', 'c').get('u')).to.equal(null);
        expect(await driver.keyval('a\0b', 'c').get('u')).to.equal(null);
      });
    });

    describe('map', function () {
      it('gets, sets and deletes single keys', async function () {
        const m = driver.map('h', 's');
        expect(await m.get('u', 'k')).to.equal(null);
        await m.set('u', 'k', { v: 1 });
        await m.set('u', 'k2', 'two');
        expect(await m.get('u', 'k')).to.deep.equal({ v: 1 });
        await m.set('u', 'k', [1, 2]);
        expect(await m.get('u', 'k')).to.deep.equal([1, 2]);
        await m.set('u', 'k', null);
        expect(await m.get('u', 'k')).to.equal(null);
        expect(await m.get('u', 'k2')).to.equal('two');
        await m.set('u', 'missing', null);
      });

      it('returns all of a user’s keys and deletes them all', async function () {
        const m = driver.map('h', 's');
        await Promise.all([m.set('u', 'a', 1), m.set('u', 'b', { x: 'y' }), m.set('other', 'a', 99)]);
        const all = await m.getAll('u');
        expect(all).to.be.instanceOf(Map);
        expect([...all.entries()].sort()).to.deep.equal([
          ['a', 1],
          ['b', { x: 'y' }],
        ]);
        await m.deleteAll('u');
        expect((await m.getAll('u')).size).to.equal(0);
        expect(await m.get('u', 'a')).to.equal(null);
        expect(await m.get('other', 'a')).to.equal(99);
        expect((await m.getAll('nobody')).size).to.equal(0);
      });

      it('keeps hosts, stores and users apart', async function () {
        await driver.map('h1', 's').set('u', 'k', 1);
        await driver.map('h2', 's').set('u', 'k', 2);
        await driver.map('h1', 't').set('u', 'k', 3);
        await driver.map('h1', 's').set('v', 'k', 4);
        expect(await driver.map('h1', 's').get('u', 'k')).to.equal(1);
        expect(await driver.map('h2', 's').get('u', 'k')).to.equal(2);
        expect(await driver.map('h1', 't').get('u', 'k')).to.equal(3);
        expect(await driver.map('h1', 's').get('v', 'k')).to.equal(4);
        await driver.map('h1', 's').deleteAll('u');
        expect(await driver.map('h2', 's').get('u', 'k')).to.equal(2);
        expect(await driver.map('h1', 't').get('u', 'k')).to.equal(3);
        // Same names in keyval and map are different stores.
        expect(await driver.keyval('h1', 't').get('u')).to.equal(null);
      });

      it('sees an un-awaited write from an immediate read', async function () {
        const m = driver.map('h', 's');
        const pending = m.set('u', 'k', 'fresh');
        expect(await m.get('u', 'k')).to.equal('fresh');
        await pending;
        const pendingDelete = m.deleteAll('u');
        expect((await m.getAll('u')).size).to.equal(0);
        await pendingDelete;
      });
    });

    describe('archive', function () {
      let archive: ArchiveStore<Val>;
      beforeEach(function () {
        archive = driver.archive<Val>('h', 'archive');
      });

      it('advertises its capabilities', function () {
        expect(archive.caps).to.include.keys('total', 'fullText', 'ids', 'before');
      });

      it('handles an empty archive', async function () {
        expect(await archive.find('u')).to.deep.equal({ items: [], complete: true });
        expect(await archive.find('u', { limit: 10, total: true })).to.deep.equal({
          items: [],
          complete: true,
          total: 0,
        });
        expect(await archive.find('u', { before: true, limit: 10 })).to.deep.equal({
          items: [],
          complete: true,
        });
        expect(await archive.find('u', { reverse: true, text: 'hello' })).to.deep.equal({
          items: [],
          complete: true,
        });
        expect(await archive.count('u')).to.equal(0);
        expect((await archive.summary('u')).size).to.equal(0);
        expect(await archive.delete('u')).to.equal(0);
      });

      it('generates unique URL-safe ids', async function () {
        const ids = await Promise.all(
          Array.from({ length: 200 }, (_, i) => archive.append('u', { with: 'a@b', value: { n: i } })),
        );
        for (const id of ids) expect(id).to.match(ID_RE);
        expect(new Set(ids).size).to.equal(200);
      });

      it('stores items exactly, with text only when given', async function () {
        const id = await archive.append('u', {
          id: 'my-id',
          when: 1234,
          with: 'a@b/r',
          value: { n: 7 },
          text: 'hi',
        });
        expect(id).to.equal('my-id');
        await archive.append('u', { id: 'no-text', when: 1235, with: 'a@b', value: { n: 8 } });
        const { items } = await archive.find('u');
        expect(items).to.deep.equal([
          { id: 'my-id', when: 1234, with: 'a@b/r', value: { n: 7 }, text: 'hi' },
          { id: 'no-text', when: 1235, with: 'a@b', value: { n: 8 } },
        ]);
      });

      it('defaults `when` to now', async function () {
        const before = Date.now();
        await archive.append('u', { with: 'a@b', value: { n: 0 } });
        const after = Date.now();
        const [item] = (await archive.find('u')).items;
        expect(item!.when).to.be.within(before, after);
      });

      it('replaces an item appended again with the same id', async function () {
        await archive.append('u', { id: 'x', when: 1, with: 'a@b', value: { n: 1 }, text: 'old words' });
        await archive.append('u', { id: 'y', when: 2, with: 'a@b', value: { n: 2 } });
        await archive.append('u', { id: 'x', when: 3, with: 'c@d', value: { n: 3 }, text: 'new words' });
        expect(await archive.count('u')).to.equal(2);
        expect(ns((await archive.find('u')).items)).to.deep.equal([2, 3]);
        expect((await archive.find('u', { text: 'old' })).items).to.deep.equal([]);
        expect(ns((await archive.find('u', { text: 'new' })).items)).to.deep.equal([3]);
      });

      it('orders by when, then insertion order, whatever the append order', async function () {
        await seed(archive, 'u', [
          { when: 30, with: 'a@b' },
          { when: 10, with: 'a@b' },
          { when: 20, with: 'a@b' },
          { when: 10, with: 'a@b' },
          { when: 30, with: 'a@b' },
          { when: 5, with: 'a@b' },
        ]);
        expect(ns((await archive.find('u')).items)).to.deep.equal([5, 1, 3, 2, 0, 4]);
        expect(ns((await archive.find('u', { reverse: true })).items)).to.deep.equal([4, 0, 2, 3, 1, 5]);
      });

      it('keeps order stable for many items with the same when, across pages', async function () {
        const ids = await seed(
          archive,
          'u',
          Array.from({ length: 25 }, () => ({ when: 42, with: 'a@b' })),
        );
        const seen: number[] = [];
        let after: string | undefined;
        for (;;) {
          const q: ArchiveQuery = { limit: 4 };
          if (after !== undefined) q.after = after;
          const page = await archive.find('u', q);
          seen.push(...ns(page.items));
          if (page.complete) break;
          after = page.items[page.items.length - 1]!.id;
        }
        expect(seen).to.deep.equal(Array.from({ length: 25 }, (_, i) => i));
        const page = await archive.find('u', { before: ids[10], limit: 3 });
        expect(ns(page.items)).to.deep.equal([7, 8, 9]);
      });

      it('returns everything in order without a query', async function () {
        await seed(archive, 'u');
        const r = await archive.find('u');
        expect(ns(r.items)).to.deep.equal([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        expect(r.complete).to.equal(true);
        expect(r).not.to.have.property('total');
      });

      it('filters on start and end, inclusively', async function () {
        await seed(archive, 'u');
        expect(ns((await archive.find('u', { start: 2000 })).items)).to.deep.equal([2, 3, 4, 5, 6, 7, 8, 9]);
        expect(ns((await archive.find('u', { end: 2000 })).items)).to.deep.equal([0, 1, 2, 3]);
        expect(ns((await archive.find('u', { start: 2000, end: 4000 })).items)).to.deep.equal([
          2, 3, 4, 5, 6,
        ]);
        expect(ns((await archive.find('u', { start: 4000, end: 4000 })).items)).to.deep.equal([5, 6]);
        expect((await archive.find('u', { start: 5001, end: 5999 })).items).to.deep.equal([]);
        expect((await archive.find('u', { start: 3000, end: 2000 })).items).to.deep.equal([]);
      });

      it('matches a bare `with` against bare and full JIDs, a full one exactly', async function () {
        await seed(archive, 'u');
        expect(ns((await archive.find('u', { with: 'alice@x' })).items)).to.deep.equal([0, 2, 4, 6, 8, 9]);
        expect(ns((await archive.find('u', { with: 'alice@x/laptop' })).items)).to.deep.equal([2, 6]);
        expect(ns((await archive.find('u', { with: 'bob@x' })).items)).to.deep.equal([1, 3, 7]);
        expect(ns((await archive.find('u', { with: 'bob@x/phone' })).items)).to.deep.equal([1, 7]);
        expect((await archive.find('u', { with: 'alice@x/tablet' })).items).to.deep.equal([]);
        // A domain is not a prefix match for its users.
        expect((await archive.find('u', { with: 'x' })).items).to.deep.equal([]);
      });

      it('returns exactly the requested ids that exist, in order', async function () {
        const ids = await seed(archive, 'u');
        const r = await archive.find('u', { ids: [ids[7]!, 'no-such-id', ids[2]!, ids[5]!] });
        expect(ns(r.items)).to.deep.equal([2, 5, 7]);
        expect(r.complete).to.equal(true);
        expect((await archive.find('u', { ids: [] })).items).to.deep.equal([]);
        const other = await archive.append('other', { with: 'a@b', value: { n: 99 } });
        expect((await archive.find('u', { ids: [other] })).items).to.deep.equal([]);
      });

      it('caps with limit and says whether the page is complete', async function () {
        await seed(archive, 'u');
        const first = await archive.find('u', { limit: 3 });
        expect(ns(first.items)).to.deep.equal([0, 1, 2]);
        expect(first.complete).to.equal(false);
        const exact = await archive.find('u', { limit: 10 });
        expect(ns(exact.items)).to.have.length(10);
        expect(exact.complete).to.equal(true);
        const more = await archive.find('u', { limit: 50 });
        expect(more.complete).to.equal(true);
        const none = await archive.find('u', { limit: 0, total: true });
        expect(none).to.deep.equal({ items: [], complete: false, total: 10 });
      });

      it('rejects a negative or fractional limit', async function () {
        expect(await rejection(archive.find('u', { limit: -1 }))).to.be.instanceOf(RangeError);
        expect(await rejection(archive.find('u', { limit: 1.5 }))).to.be.instanceOf(RangeError);
      });

      it('pages forward with after', async function () {
        const ids = await seed(archive, 'u');
        const p = await archive.find('u', { after: ids[0], limit: 3 });
        expect(ns(p.items)).to.deep.equal([1, 2, 3]);
        expect(p.complete).to.equal(false);
        const last = await archive.find('u', { after: ids[6], limit: 3 });
        expect(ns(last.items)).to.deep.equal([7, 8, 9]);
        expect(last.complete).to.equal(true);
        const beyond = await archive.find('u', { after: ids[9], limit: 3 });
        expect(beyond).to.deep.equal({ items: [], complete: true });
        // Strictly after, also among items sharing the anchor's `when`.
        expect(ns((await archive.find('u', { after: ids[5] })).items)).to.deep.equal([6, 7, 8, 9]);
      });

      it('pages backward with before an id, returning the closest items in order', async function () {
        const ids = await seed(archive, 'u');
        const p = await archive.find('u', { before: ids[7], limit: 3 });
        expect(ns(p.items)).to.deep.equal([4, 5, 6]);
        expect(p.complete).to.equal(false);
        const first = await archive.find('u', { before: ids[3], limit: 3 });
        expect(ns(first.items)).to.deep.equal([0, 1, 2]);
        expect(first.complete).to.equal(true);
        expect(await archive.find('u', { before: ids[0], limit: 3 })).to.deep.equal({
          items: [],
          complete: true,
        });
        expect(ns((await archive.find('u', { before: ids[6] })).items)).to.deep.equal([0, 1, 2, 3, 4, 5]);
      });

      it('returns the last page for before: true', async function () {
        await seed(archive, 'u');
        const p = await archive.find('u', { before: true, limit: 4 });
        expect(ns(p.items)).to.deep.equal([6, 7, 8, 9]);
        expect(p.complete).to.equal(false);
        const all = await archive.find('u', { before: true, limit: 10 });
        expect(ns(all.items)).to.deep.equal([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        expect(all.complete).to.equal(true);
        const filtered = await archive.find('u', { before: true, limit: 2, with: 'bob@x' });
        expect(ns(filtered.items)).to.deep.equal([3, 7]);
        expect(filtered.complete).to.equal(false);
      });

      it('bounds a page on both sides with after and before', async function () {
        const ids = await seed(archive, 'u');
        expect(ns((await archive.find('u', { after: ids[2], before: ids[7] })).items)).to.deep.equal([
          3, 4, 5, 6,
        ]);
        const p = await archive.find('u', { after: ids[2], before: ids[7], limit: 2 });
        expect(ns(p.items)).to.deep.equal([5, 6]);
        expect(p.complete).to.equal(false);
        expect((await archive.find('u', { after: ids[7], before: ids[2] })).items).to.deep.equal([]);
      });

      it('returns newest first with reverse', async function () {
        const ids = await seed(archive, 'u');
        const p = await archive.find('u', { reverse: true, limit: 3 });
        expect(ns(p.items)).to.deep.equal([9, 8, 7]);
        expect(p.complete).to.equal(false);
        const next = await archive.find('u', { reverse: true, before: ids[7], limit: 3 });
        expect(ns(next.items)).to.deep.equal([6, 5, 4]);
        expect(next.complete).to.equal(false);
        const tail = await archive.find('u', { reverse: true, before: ids[2], limit: 3 });
        expect(ns(tail.items)).to.deep.equal([1, 0]);
        expect(tail.complete).to.equal(true);
        const newestAfter = await archive.find('u', { reverse: true, after: ids[4], limit: 2 });
        expect(ns(newestAfter.items)).to.deep.equal([9, 8]);
        expect(newestAfter.complete).to.equal(false);
      });

      it('counts the total ignoring paging but not filters', async function () {
        const ids = await seed(archive, 'u');
        expect((await archive.find('u', { limit: 2, total: true })).total).to.equal(10);
        expect((await archive.find('u', { after: ids[5], limit: 2, total: true })).total).to.equal(10);
        expect((await archive.find('u', { before: true, limit: 2, total: true })).total).to.equal(10);
        expect((await archive.find('u', { with: 'alice@x', limit: 1, total: true })).total).to.equal(6);
        expect(
          (await archive.find('u', { start: 4000, reverse: true, limit: 1, total: true })).total,
        ).to.equal(5);
        expect((await archive.find('u', { text: 'hello', limit: 1, total: true })).total).to.equal(5);
        expect((await archive.find('u', { ids: [ids[1]!, ids[2]!], total: true })).total).to.equal(2);
      });

      it('searches text by whole words, all terms, ignoring case and punctuation', async function () {
        await seed(archive, 'u');
        expect(ns((await archive.find('u', { text: 'hello' })).items)).to.deep.equal([0, 1, 5, 6, 9]);
        expect(ns((await archive.find('u', { text: 'HELLO world' })).items)).to.deep.equal([0, 6, 9]);
        expect(ns((await archive.find('u', { text: 'world   hello!' })).items)).to.deep.equal([0, 6, 9]);
        expect(ns((await archive.find('u', { text: 'quick fox' })).items)).to.deep.equal([4]);
        expect(ns((await archive.find('u', { text: 'fox' })).items)).to.deep.equal([4, 8]);
        // Whole words only: no substring or prefix matches.
        expect((await archive.find('u', { text: 'hell' })).items).to.deep.equal([]);
        expect((await archive.find('u', { text: 'hello zebra' })).items).to.deep.equal([]);
        // Operators of search syntaxes are just words here.
        expect((await archive.find('u', { text: 'hello OR zebra' })).items).to.deep.equal([]);
        expect((await archive.find('u', { text: '"hello' })).items).to.have.length(5);
      });

      it('combines text search with other filters and paging', async function () {
        const ids = await seed(archive, 'u');
        const p = await archive.find('u', { text: 'hello', with: 'alice@x', limit: 2, total: true });
        expect(ns(p.items)).to.deep.equal([0, 6]);
        expect(p.complete).to.equal(false);
        expect(p.total).to.equal(3);
        const next = await archive.find('u', { text: 'hello', with: 'alice@x', after: ids[6], limit: 2 });
        expect(ns(next.items)).to.deep.equal([9]);
        expect(next.complete).to.equal(true);
        const last = await archive.find('u', { text: 'world', before: true, limit: 2 });
        expect(ns(last.items)).to.deep.equal([6, 9]);
        expect(ns((await archive.find('u', { text: 'hello', start: 2000, end: 6000 })).items)).to.deep.equal([
          5, 6,
        ]);
      });

      it('combines with, start/end and paging across a full walk in both directions', async function () {
        await seed(archive, 'u');
        const q: ArchiveQuery = { with: 'alice@x', start: 1000, end: 6000 };
        const expected = [0, 2, 4, 6, 8];
        const forward: number[] = [];
        let after: string | undefined;
        for (let guard = 0; guard < 10; guard++) {
          const page = await archive.find('u', { ...q, limit: 2, ...(after ? { after } : {}) });
          forward.push(...ns(page.items));
          if (page.complete) break;
          after = page.items[page.items.length - 1]!.id;
        }
        expect(forward).to.deep.equal(expected);
        const backward: number[][] = [];
        let before: string | true = true;
        for (let guard = 0; guard < 10; guard++) {
          const page = await archive.find('u', { ...q, limit: 2, before });
          backward.unshift(ns(page.items));
          if (page.complete) break;
          before = page.items[0]!.id;
        }
        expect(backward.flat()).to.deep.equal(expected);
      });

      it('throws ItemNotFoundError for an unknown before/after id', async function () {
        const ids = await seed(archive, 'u');
        const a = await rejection(archive.find('u', { after: 'no-such-id' }));
        expect(a).to.be.instanceOf(ItemNotFoundError);
        expect((a as ItemNotFoundError).id).to.equal('no-such-id');
        expect(await rejection(archive.find('u', { before: 'no-such-id', limit: 5 }))).to.be.instanceOf(
          ItemNotFoundError,
        );
        // Another user's id, or one from another store, is unknown too.
        expect(await rejection(archive.find('someone-else', { after: ids[0] }))).to.be.instanceOf(
          ItemNotFoundError,
        );
        expect(await rejection(driver.archive('h', 'other').find('u', { after: ids[0] }))).to.be.instanceOf(
          ItemNotFoundError,
        );
        expect(await rejection(archive.find('u', { before: '' }))).to.be.instanceOf(ItemNotFoundError);
      });

      it('deletes by query and reports how many went', async function () {
        const ids = await seed(archive, 'u');
        expect(await archive.delete('u', { with: 'bob@x/phone' })).to.equal(2);
        expect(ns((await archive.find('u')).items)).to.deep.equal([0, 2, 3, 4, 5, 6, 8, 9]);
        expect(await archive.delete('u', { start: 2000, end: 3000 })).to.equal(3);
        expect(ns((await archive.find('u')).items)).to.deep.equal([0, 5, 6, 8, 9]);
        expect(await archive.delete('u', { ids: [ids[8]!, ids[1]!] })).to.equal(1);
        expect(await archive.delete('u', { text: 'hello world' })).to.equal(3);
        expect(ns((await archive.find('u')).items)).to.deep.equal([5]);
        expect(await archive.delete('u', { with: 'nobody@x' })).to.equal(0);
        expect((await archive.find('u', { text: 'hello' })).items.map((i) => i.value.n)).to.deep.equal([5]);
      });

      it('deletes items older than a cut-off, and everything without a query', async function () {
        await seed(archive, 'u');
        expect(await archive.delete('u', { olderThan: 4000 })).to.equal(5);
        expect(ns((await archive.find('u')).items)).to.deep.equal([5, 6, 7, 8, 9]);
        expect(await archive.delete('u', { olderThan: 6000, with: 'alice@x' })).to.equal(1);
        expect(ns((await archive.find('u')).items)).to.deep.equal([5, 7, 8, 9]);
        expect(await archive.delete('u')).to.equal(4);
        expect(await archive.count('u')).to.equal(0);
      });

      it('removes deleted items from paging anchors', async function () {
        const ids = await seed(archive, 'u');
        await archive.delete('u', { ids: [ids[3]!] });
        expect(await rejection(archive.find('u', { after: ids[3] }))).to.be.instanceOf(ItemNotFoundError);
      });

      it('counts items per user', async function () {
        await seed(archive, 'u');
        await seed(archive, 'v', FIXTURE.slice(0, 3));
        expect(await archive.count('u')).to.equal(10);
        expect(await archive.count('v')).to.equal(3);
        expect(await archive.count('w')).to.equal(0);
      });

      it('summarises per `with` as stored', async function () {
        await seed(archive, 'u');
        const s = await archive.summary('u');
        expect(Object.fromEntries(s)).to.deep.equal({
          'alice@x': { count: 3, first: 1000, last: 6000 },
          'bob@x/phone': { count: 2, first: 1000, last: 5000 },
          'alice@x/laptop': { count: 2, first: 2000, last: 4000 },
          'bob@x': { count: 1, first: 2000, last: 2000 },
          'carol@x': { count: 1, first: 4000, last: 4000 },
          'alice@x/phone': { count: 1, first: 7000, last: 7000 },
        });
      });

      it('purges old items for every user in batches', async function () {
        if (!archive.deleteOlderThan) this.skip();
        await seed(archive, 'u');
        await seed(archive, 'v');
        const keep = driver.archive<Val>('h', 'other-store');
        await seed(keep, 'u');
        expect(await archive.deleteOlderThan!(4000, 3)).to.equal(10);
        expect(ns((await archive.find('u')).items)).to.deep.equal([5, 6, 7, 8, 9]);
        expect(ns((await archive.find('v')).items)).to.deep.equal([5, 6, 7, 8, 9]);
        expect(await keep.count('u')).to.equal(10);
        expect(await archive.deleteOlderThan!(4000, 3)).to.equal(0);
        expect(await archive.deleteOlderThan!(100_000, 100)).to.equal(10);
        expect(await archive.count('u')).to.equal(0);
        expect(await rejection(archive.deleteOlderThan!(1, 0))).to.be.instanceOf(RangeError);
      });

      it('tells the caller of a purge how far it has got after each full batch', async function () {
        if (!archive.deleteOlderThan) this.skip();
        await seed(archive, 'u');
        const reported: number[] = [];
        expect(await archive.deleteOlderThan!(4000, 2, (n) => reported.push(n))).to.equal(5);
        expect(reported).to.deep.equal([2, 4]);
        expect(ns((await archive.find('u')).items)).to.deep.equal([5, 6, 7, 8, 9]);
      });

      it('keeps hosts, stores and users apart', async function () {
        await archive.append('u', { with: 'a@b', value: { n: 1 }, text: 'shared word' });
        await driver
          .archive<Val>('h2', 'archive')
          .append('u', { with: 'a@b', value: { n: 2 }, text: 'shared word' });
        await driver
          .archive<Val>('h', 'archive2')
          .append('u', { with: 'a@b', value: { n: 3 }, text: 'shared word' });
        await archive.append('v', { with: 'a@b', value: { n: 4 }, text: 'shared word' });
        expect(ns((await archive.find('u')).items)).to.deep.equal([1]);
        expect(ns((await archive.find('u', { text: 'shared' })).items)).to.deep.equal([1]);
        expect(ns((await driver.archive<Val>('h2', 'archive').find('u')).items)).to.deep.equal([2]);
        expect(ns((await driver.archive<Val>('h', 'archive2').find('u')).items)).to.deep.equal([3]);
        expect(ns((await archive.find('v')).items)).to.deep.equal([4]);
        expect(await archive.delete('u')).to.equal(1);
        expect(await driver.archive('h2', 'archive').count('u')).to.equal(1);
        expect(await archive.count('v')).to.equal(1);
      });

      it('allows the same caller-chosen id for different users', async function () {
        await archive.append('u', { id: 'same', with: 'a@b', value: { n: 1 } });
        await archive.append('v', { id: 'same', with: 'a@b', value: { n: 2 } });
        expect(ns((await archive.find('u', { ids: ['same'] })).items)).to.deep.equal([1]);
        expect(ns((await archive.find('v', { ids: ['same'] })).items)).to.deep.equal([2]);
      });

      it('round-trips values of every JSON kind, strings that look like JSON or start with quotes included', async function () {
        const any = driver.archive<JsonValue>('h', 'values');
        const values: JsonValue[] = [
          "'quoted",
          '"double"',
          '',
          '{"a":1}',
          "<message id='x'/>",
          7,
          null,
          [1, 'a'],
          { b: "'" },
        ];
        for (const value of values) await any.append('u', { with: 'a@b', value });
        expect((await any.find('u')).items.map((i) => i.value)).to.deep.equal(values);
      });

      it('appends one item to several archives, each entry under its own id and with', async function () {
        await archive.appendShared(
          [
            { user: 'u', id: 'id-for-u', with: 'v@x' },
            { user: 'v', id: 'id-for-v', with: 'u@x/phone' },
          ],
          { when: 5000, value: { n: 7 }, text: 'shared words' },
        );
        const u = (await archive.find('u')).items;
        const v = (await archive.find('v')).items;
        expect(u.map(({ id, when, with: w }) => [id, when, w])).to.deep.equal([['id-for-u', 5000, 'v@x']]);
        expect(v.map(({ id, when, with: w }) => [id, when, w])).to.deep.equal([
          ['id-for-v', 5000, 'u@x/phone'],
        ]);
        expect(ns(u)).to.deep.equal([7]);
        expect(ns(v)).to.deep.equal([7]);
        // Each archive finds it by its own id, its own `with` and the text, and
        // deleting it from one leaves the other's copy.
        expect(ns((await archive.find('u', { ids: ['id-for-u'] })).items)).to.deep.equal([7]);
        expect((await archive.find('u', { ids: ['id-for-v'] })).items).to.deep.equal([]);
        expect(ns((await archive.find('v', { with: 'u@x' })).items)).to.deep.equal([7]);
        expect((await archive.find('v', { with: 'v@x' })).items).to.deep.equal([]);
        if (archive.caps.fullText) {
          expect(ns((await archive.find('v', { text: 'words' })).items)).to.deep.equal([7]);
        }
        expect(await archive.delete('u')).to.equal(1);
        expect(await archive.count('u')).to.equal(0);
        expect(ns((await archive.find('v')).items)).to.deep.equal([7]);
        if (archive.caps.fullText) {
          expect(ns((await archive.find('v', { text: 'shared' })).items)).to.deep.equal([7]);
        }
        await archive.appendShared([], { value: { n: 8 } });
        expect(await archive.count('v')).to.equal(1);
      });

      it('applies appends and a delete queued together in order', async function () {
        // Queued in one tick, these go to the driver together (one batch for SQLite).
        const writes: Promise<unknown>[] = [
          archive.appendShared([{ user: 'u', id: 'q1', with: 'a@b' }], { when: 1, value: { n: 1 } }),
          archive.append('u', { id: 'q2', fresh: true, when: 2, with: 'c@d', value: { n: 2 } }),
        ];
        const deleted = archive.delete('u', { with: 'a@b' });
        writes.push(archive.append('u', { id: 'q3', fresh: true, when: 0, with: 'a@b', value: { n: 3 } }));
        await Promise.all(writes);
        expect(await deleted).to.equal(1);
        expect(ns((await archive.find('u')).items)).to.deep.equal([3, 2]);
      });

      it('sees an un-awaited append from an immediate read', async function () {
        const pending = archive.append('u', { with: 'a@b', value: { n: 1 } });
        const r = await archive.find('u');
        expect(ns(r.items)).to.deep.equal([1]);
        expect(r.items[0]!.id).to.equal(await pending);
      });

      it('resolves 1,000 concurrent appends, all readable in order', async function () {
        const ids = await Promise.all(
          Array.from({ length: 1000 }, (_, i) =>
            archive.append('u', {
              when: 1_000_000 + Math.floor(i / 10),
              with: `c${i % 7}@x/r`,
              value: { n: i },
            }),
          ),
        );
        expect(new Set(ids).size).to.equal(1000);
        expect(await archive.count('u')).to.equal(1000);
        const all = await archive.find('u');
        expect(ns(all.items)).to.deep.equal(Array.from({ length: 1000 }, (_, i) => i));
        expect(all.items.map((i) => i.id)).to.deep.equal(ids);
      });

      it('agrees with a reference model on random archives and queries', async function () {
        // Model-based check: the items a query returns are the filtered items
        // in (when, insertion) order, and every paging walk reassembles them.
        const seedArb = fc.array(
          fc.record({
            when: fc.integer({ min: 0, max: 6 }),
            with: fc.constantFrom('a@x', 'a@x/1', 'a@x/2', 'b@x', 'b@x/1'),
            text: fc.option(fc.constantFrom('red', 'red blue', 'Blue green', 'green'), { nil: undefined }),
          }),
          { maxLength: 25 },
        );
        const queryArb = fc.record(
          {
            start: fc.integer({ min: 0, max: 6 }),
            end: fc.integer({ min: 0, max: 6 }),
            with: fc.constantFrom('a@x', 'a@x/1', 'b@x', 'b@x/1', 'c@x'),
            text: fc.constantFrom('red', 'blue', 'green red'),
          },
          { requiredKeys: [] },
        );
        let run = 0;
        await fc.assert(
          fc.asyncProperty(
            seedArb,
            queryArb,
            fc.integer({ min: 1, max: 4 }),
            async (seeds, filter, limit) => {
              const user = `model${run++}`;
              const ids = await Promise.all(
                seeds.map((s, n) => {
                  const item: { when: number; with: string; value: Val; text?: string } = {
                    when: s.when,
                    with: s.with,
                    value: { n },
                  };
                  if (s.text !== undefined) item.text = s.text;
                  return archive.append(user, item);
                }),
              );
              const words = (t: string) => t.toLowerCase().split(' ');
              const expected = seeds
                .map((s, n) => ({ ...s, n, id: ids[n]! }))
                .filter((s) => filter.start === undefined || s.when >= filter.start)
                .filter((s) => filter.end === undefined || s.when <= filter.end)
                .filter(
                  (s) =>
                    filter.with === undefined ||
                    (filter.with.includes('/')
                      ? s.with === filter.with
                      : s.with.split('/')[0] === filter.with),
                )
                .filter(
                  (s) =>
                    filter.text === undefined ||
                    (s.text !== undefined && words(filter.text).every((w) => words(s.text!).includes(w))),
                )
                // Array.prototype.sort is stable, so ties keep insertion order.
                .sort((x, y) => x.when - y.when)
                .map((s) => s.n);

              const full = await archive.find(user, { ...filter, total: true });
              expect(ns(full.items)).to.deep.equal(expected);
              expect(full.total).to.equal(expected.length);
              expect(full.complete).to.equal(true);
              expect(ns((await archive.find(user, { ...filter, reverse: true })).items)).to.deep.equal(
                [...expected].reverse(),
              );

              const forward: number[] = [];
              let after: string | undefined;
              for (;;) {
                const page = await archive.find(user, { ...filter, limit, ...(after ? { after } : {}) });
                expect(page.items.length).to.be.at.most(limit);
                forward.push(...ns(page.items));
                if (page.complete) break;
                expect(page.items).to.have.length(limit);
                after = page.items[page.items.length - 1]!.id;
              }
              expect(forward).to.deep.equal(expected);

              const backward: number[][] = [];
              let before: string | true = true;
              for (;;) {
                const page = await archive.find(user, { ...filter, limit, before });
                backward.unshift(ns(page.items));
                if (page.complete) break;
                before = page.items[0]!.id;
              }
              expect(backward.flat()).to.deep.equal(expected);
            },
          ),
          { numRuns: 40 },
        );
      });
    });

    describe('flush and close', function () {
      it('flush resolves with nothing pending and after pending writes', async function () {
        await driver.flush();
        const kv = driver.keyval('h', 's');
        const w = kv.set('u', 1);
        await driver.flush();
        await w;
        expect(await kv.get('u')).to.equal(1);
      });

      it('close waits for pending writes', async function () {
        const kv = driver.keyval('h', 's');
        const w = kv.set('u', 1);
        await driver.close();
        await w;
        // Reopen so afterEach has something to close.
        driver = await open();
      });
    });
  });
}
