// MongoDB storage through the official driver, for deployments that outgrow
// one SQLite file. One collection per store kind (`keyval`, `map`, `archive`),
// every document carrying its owner (host, store, user), which is also the
// suggested shard key: everything one user (or room) reads or writes lives on
// one shard, and every query below has the full owner as an equality prefix.
// docs/scaling.md ("MongoDB storage") describes the layout for operators.
//
// Opening is synchronous: MongoClient connects on the first operation, so
// openStorage() keeps its signature and a bad server shows up as a rejected
// storage call (after serverSelectionTimeoutMS) rather than at start-up.
// Indexes are created (idempotently) before the first operation of a driver.

import {
  MongoClient,
  MongoServerError,
  ObjectId,
  type Collection,
  type Db,
  type Filter,
  type IndexDescription,
  type MongoClientOptions,
} from 'mongodb';
import {
  ItemNotFoundError,
  bareJid,
  checkLimit,
  generateArchiveId,
  textTerms,
  appendEach,
  type ArchiveAppend,
  type ArchiveEntry,
  type SharedAppend,
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

export interface MongoOptions {
  /**
   * Database to use. Default: the database named in the connection string,
   * else 'chorus'.
   */
  database?: string;
  /** Passed to MongoClient as is (timeouts, pool size, TLS files...). */
  clientOptions?: MongoClientOptions;
}

// ---------------------------------------------------------------------------
// Documents. Values are stored as JSON text, as the other drivers do: any JSON
// object key round-trips (BSON field names cannot hold NUL and treat '$' and
// '.' specially), the value types come back exactly as given (no int32/double
// or key-order surprises), and nothing ever queries inside a value.

export interface KeyvalDoc {
  host: string;
  store: string;
  user: string;
  value: string;
}

export interface MapDoc {
  host: string;
  store: string;
  user: string;
  key: string;
  value: string;
}

export interface ArchiveDoc {
  /** ObjectId (made by the client on insert, by the server on an upsert by id): last tie-breaker of the order. */
  _id: ObjectId;
  host: string;
  store: string;
  user: string;
  /** The item id clients see; unique per owner. */
  id: string;
  when: number;
  /** Insertion sequence, see nextSeq(). */
  seq: number;
  with: string;
  /** bareJid(with), so a bare `with` filter is an index equality. */
  bare: string;
  value: string;
  text?: string;
  /** Distinct textTerms(text), for full-text search; present exactly when `text` is. */
  terms?: string[];
}

export const COLLECTIONS = { keyval: 'keyval', map: 'map', archive: 'archive' } as const;

// Every index starts with the owner (host, store, user): that is the shard key
// (a unique index on a sharded collection must have the shard key as a
// prefix) and every per-user query is an equality on it. The archive indexes
// end in the order key (when, seq, _id) so that pages are read off the index
// in order, from either end, without an in-memory sort.
export const INDEXES: Record<keyof typeof COLLECTIONS, IndexDescription[]> = {
  keyval: [{ name: 'owner', key: { host: 1, store: 1, user: 1 }, unique: true }],
  map: [{ name: 'owner_key', key: { host: 1, store: 1, user: 1, key: 1 }, unique: true }],
  archive: [
    // Plain paging, start/end, count, summary's $match, delete by owner.
    { name: 'timeline', key: { host: 1, store: 1, user: 1, when: 1, seq: 1, _id: 1 } },
    // `with` filters (bare, or bare + exact full JID) with paging.
    { name: 'with_timeline', key: { host: 1, store: 1, user: 1, bare: 1, when: 1, seq: 1, _id: 1 } },
    // before/after anchors, `ids` queries, and replacing an item by caller-chosen id.
    { name: 'item_id', key: { host: 1, store: 1, user: 1, id: 1 }, unique: true },
    // Full-text: a multikey index on the stored terms ($all probes one term, filters the rest).
    { name: 'text_terms', key: { host: 1, store: 1, user: 1, terms: 1 } },
    // Retention (deleteOlderThan) sweeps every user of a (host, store) by age.
    { name: 'retention', key: { host: 1, store: 1, when: 1 } },
  ],
};

const USERS_PAGE = 256;
const DUPLICATE_KEY = 11000;

// ---------------------------------------------------------------------------
// Insertion order without a central counter.
//
// Items are ordered by (when, seq, _id). `seq` comes from one SeqGenerator
// per process: milliseconds since the epoch times 1024, bumped by one
// whenever that would not exceed the previous value. So it is strictly increasing within a process
// (even if the clock steps back, or more than 1024 items arrive in one ms),
// roughly wall-clock ordered across processes, and costs no round trip and no
// shared counter document that every append would contend on. It stays an
// exact double (< 2^53) until the year 2248.
//
// ObjectId alone is not used for the order: its 3-byte counter starts at a
// random value and wraps, so two ObjectIds from one process within the same
// second can compare the wrong way round. It only breaks exact (when, seq)
// ties between processes, where no insertion order exists anyway, and keeps
// the order total so that keyset paging never skips or repeats an item.

export class SeqGenerator {
  #last = 0;

  next(now: number = Date.now()): number {
    const candidate = now * 1024;
    this.#last = candidate > this.#last ? candidate : this.#last + 1;
    return this.#last;
  }
}

/** One per process, shared by every driver in it. */
const processSeq = new SeqGenerator();

export function nextSeq(): number {
  return processSeq.next();
}

// ---------------------------------------------------------------------------
// Operation ordering.
//
// The memory and SQLite drivers apply an operation when it is called, so a
// read sees every write issued before it, awaited or not, and writes apply in
// call order. Over a connection pool two operations may run on different
// connections and reach the server in either order, so this driver keeps the
// order itself, per owner:
//   - a read waits for the owner's writes issued before it;
//   - a 'shared' write (an append) waits for earlier exclusive writes only, so
//     a burst of appends runs concurrently; appends naming the same id also
//     wait for each other (the later one must win);
//   - an 'exclusive' write (set, delete) waits for every earlier write;
//   - whole-store operations (listing users, retention) wait for every earlier
//     write of the store, and later operations of the store wait for
//     whole-store writes.
// Reads do not hold back later writes: a read resolves with a state at least
// as new as the call, which is what callers rely on (read-your-writes).
// This orders one process; across processes MongoDB's own guarantees apply.

export type OpKind = 'read' | 'shared' | 'exclusive';

interface OwnerGate {
  exclusive: Promise<void> | undefined;
  shared: Set<Promise<void>>;
  /** Pending shared writes by item id. */
  keyed: Map<string, Promise<void>>;
}

interface StoreGate {
  exclusive: Promise<void> | undefined;
  /** Every pending write of the store. */
  pending: Set<Promise<void>>;
  owners: Map<string, OwnerGate>;
}

export class OpOrder {
  readonly #stores = new Map<string, StoreGate>();
  readonly #all = new Set<Promise<void>>();

  /**
   * Runs `fn` once the operations it must follow have settled (failed ones
   * included). `user` null means the whole store; `key` names the item a
   * shared write touches.
   */
  run<R>(store: string, user: string | null, kind: OpKind, fn: () => Promise<R>, key?: string): Promise<R> {
    const write = kind !== 'read';
    let s = this.#stores.get(store);
    if (!s && write) {
      s = { exclusive: undefined, pending: new Set(), owners: new Map() };
      this.#stores.set(store, s);
    }
    let o = user === null ? undefined : s?.owners.get(user);
    if (!o && s && write && user !== null) {
      o = { exclusive: undefined, shared: new Set(), keyed: new Map() };
      s.owners.set(user, o);
    }

    const deps: Promise<void>[] = [];
    if (s?.exclusive) deps.push(s.exclusive);
    if (user === null) {
      if (s) deps.push(...s.pending);
    } else if (o) {
      if (o.exclusive) deps.push(o.exclusive);
      if (kind === 'shared') {
        const same = key === undefined ? undefined : o.keyed.get(key);
        if (same) deps.push(same);
      } else {
        deps.push(...o.shared);
      }
    }

    const op = deps.length === 0 ? Promise.resolve().then(fn) : Promise.allSettled(deps).then(fn);
    const done = op.then(
      () => undefined,
      () => undefined,
    );
    this.#all.add(done);
    if (write && s) {
      s.pending.add(done);
      if (user === null) s.exclusive = done;
      else if (o && kind === 'exclusive') {
        // It waits for every earlier write of the owner, so later operations need wait only for it.
        o.exclusive = done;
        o.shared.clear();
        o.keyed.clear();
      } else if (o) {
        o.shared.add(done);
        if (key !== undefined) o.keyed.set(key, done);
      }
    }
    void done.then(() => {
      this.#all.delete(done);
      if (!write || !s) return;
      s.pending.delete(done);
      if (s.exclusive === done) s.exclusive = undefined;
      if (o && user !== null) {
        o.shared.delete(done);
        if (key !== undefined && o.keyed.get(key) === done) o.keyed.delete(key);
        if (o.exclusive === done) o.exclusive = undefined;
        if (!o.exclusive && o.shared.size === 0 && s.owners.get(user) === o) s.owners.delete(user);
      }
      if (!s.exclusive && s.pending.size === 0 && s.owners.size === 0 && this.#stores.get(store) === s) {
        this.#stores.delete(store);
      }
    });
    return op;
  }

  /** Resolves once every operation started so far has settled. */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.#all]);
  }

  /** Owners and stores with pending writes (for tests: the bookkeeping must not leak). */
  get tracked(): number {
    return this.#stores.size;
  }
}

// ---------------------------------------------------------------------------
// Query building, kept free of I/O so it can be unit-tested without a server.

type Owner = Pick<ArchiveDoc, 'host' | 'store' | 'user'>;
type FilterPart = Pick<ArchiveQuery, 'start' | 'end' | 'with' | 'ids' | 'text'> & { olderThan?: number };
export type Anchor = Pick<ArchiveDoc, 'when' | 'seq' | '_id'>;

/**
 * Full-text search: the terms of each item's text (textTerms(), deduplicated)
 * are stored in `terms` and a query requires all of its terms with $all.
 * Chosen over a MongoDB text index because that one cannot give the same
 * answers as the other drivers: it stems and drops stop words per language
 * ("the" is never found with English), ORs bare terms (AND needs each term as
 * a quoted phrase, and phrases then match as substrings of the raw text), and
 * tokenises by its own delimiter list rather than textTerms(); and only one
 * text index is allowed per collection. With stored terms the matching is
 * textTerms() by construction, whatever the language, at the cost of one
 * index entry per distinct word per item.
 */
export function archiveFilterParts(filter: FilterPart): Filter<ArchiveDoc>[] {
  const parts: Filter<ArchiveDoc>[] = [];
  if (filter.start !== undefined) parts.push({ when: { $gte: filter.start } });
  if (filter.end !== undefined) parts.push({ when: { $lte: filter.end } });
  if (filter.olderThan !== undefined) parts.push({ when: { $lt: filter.olderThan } });
  if (filter.with !== undefined) {
    // Even a full-JID filter constrains `bare` so the with_timeline index applies.
    parts.push({ bare: bareJid(filter.with) });
    if (filter.with.includes('/')) parts.push({ with: filter.with });
  }
  if (filter.ids !== undefined) parts.push({ id: { $in: [...filter.ids] } });
  if (filter.text !== undefined) {
    const terms = [...new Set(textTerms(filter.text))];
    // No searchable terms means no text constraint, as in the other drivers
    // (and $all of an empty list would match nothing).
    if (terms.length > 0) parts.push({ terms: { $all: terms } });
  }
  return parts;
}

/** Items strictly after (`after`) or strictly before the anchor in (when, seq, _id) order. */
export function keysetParts(anchor: Anchor, side: 'after' | 'before'): Filter<ArchiveDoc>[] {
  const cmp = side === 'after' ? '$gt' : '$lt';
  const { when, seq, _id } = anchor;
  return [
    // Redundant with the $or, but gives the planner a range on `when` to scan.
    { when: { [side === 'after' ? '$gte' : '$lte']: when } },
    {
      $or: [{ when: { [cmp]: when } }, { when, seq: { [cmp]: seq } }, { when, seq, _id: { [cmp]: _id } }],
    },
  ];
}

export function allOf(parts: Filter<ArchiveDoc>[]): Filter<ArchiveDoc> {
  return parts.length === 1 ? parts[0]! : { $and: parts };
}

export function ownerFilter(host: string, store: string, user: string): Owner {
  return { host, store, user };
}

/** The database named in a connection string's path, if any. */
export function databaseFromUrl(url: string): string | undefined {
  const m = /^mongodb(?:\+srv)?:\/\/[^/?#]*\/([^?#]*)/.exec(url);
  if (!m || m[1] === '') return undefined;
  try {
    return decodeURIComponent(m[1]!);
  } catch {
    return m[1];
  }
}

function isDuplicateKey(err: unknown): boolean {
  return err instanceof MongoServerError && err.code === DUPLICATE_KEY;
}

/**
 * Upserts keyed by a unique index can fail with a duplicate key error when two
 * processes insert the same key at once (the server retries most such cases
 * itself since 4.2); one retry finds the document the other one inserted.
 */
async function upsertRetrying<R>(fn: () => Promise<R>): Promise<R> {
  try {
    return await fn();
  } catch (err) {
    if (!isDuplicateKey(err)) throw err;
    return fn();
  }
}

// ---------------------------------------------------------------------------

export class MongoDriver implements StorageDriver {
  readonly name = 'mongodb';
  readonly #client: MongoClient;
  readonly #ownsClient: boolean;
  readonly #db: Db;
  readonly #order = new OpOrder();
  #ready: Promise<void> | undefined;
  #closed = false;

  private constructor(client: MongoClient, ownsClient: boolean, database: string) {
    this.#client = client;
    this.#ownsClient = ownsClient;
    this.#db = client.db(database);
  }

  /** A driver with its own client; throws at once for a malformed connection string. */
  static open(url: string, opts: MongoOptions = {}): MongoDriver {
    const client = new MongoClient(url, opts.clientOptions);
    return new MongoDriver(client, true, opts.database ?? databaseFromUrl(url) ?? 'chorus');
  }

  /** A driver on a client the caller owns (and closes); close() leaves it open. */
  static withClient(client: MongoClient, database: string): MongoDriver {
    return new MongoDriver(client, false, database);
  }

  get database(): string {
    return this.#db.databaseName;
  }

  #check(): void {
    if (this.#closed) throw new Error('storage driver "mongodb" is closed');
  }

  /** Creates the indexes once per driver; a failure is retried by the next operation. */
  #ensureIndexes(): Promise<void> {
    this.#ready ??= (async () => {
      await Promise.all(
        (Object.keys(COLLECTIONS) as (keyof typeof COLLECTIONS)[]).map((kind) =>
          this.#db.collection(COLLECTIONS[kind]).createIndexes(INDEXES[kind]),
        ),
      );
    })().catch((err: unknown) => {
      this.#ready = undefined;
      throw err;
    });
    return this.#ready;
  }

  /** Orders the operation (see OpOrder), then runs it once the indexes exist. */
  #op<R>(
    kind: keyof typeof COLLECTIONS,
    host: string,
    store: string,
    user: string | null,
    op: OpKind,
    fn: () => Promise<R>,
    key?: string,
  ): Promise<R> {
    try {
      this.#check();
    } catch (err) {
      return Promise.reject(err);
    }
    // JSON keeps (kind, host, store) unambiguous whatever characters they hold.
    const scope = JSON.stringify([kind, host, store]);
    return this.#order.run(
      scope,
      user,
      op,
      async () => {
        await this.#ensureIndexes();
        return fn();
      },
      key,
    );
  }

  async flush(): Promise<void> {
    this.#check();
    // Writes are acknowledged with the client's write concern (majority by
    // default on replica sets) before their promises resolve.
    await this.#order.idle();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#order.idle();
    if (this.#ownsClient) await this.#client.close();
  }

  // -- keyval --------------------------------------------------------------

  keyval<T = JsonValue>(host: string, store: string): KeyValStore<T> {
    const coll: Collection<KeyvalDoc> = this.#db.collection<KeyvalDoc>(COLLECTIONS.keyval);
    const op = <R>(user: string | null, kind: OpKind, fn: () => Promise<R>) =>
      this.#op('keyval', host, store, user, kind, fn);
    const check = () => this.#check();
    return {
      get(user) {
        return op(user, 'read', async () => {
          const doc = await coll.findOne({ host, store, user }, { projection: { _id: 0, value: 1 } });
          return doc ? (JSON.parse(doc.value) as T) : null;
        });
      },
      set(user, value) {
        if (value === null) {
          return op(user, 'exclusive', async () => {
            await coll.deleteOne({ host, store, user });
          });
        }
        const json = JSON.stringify(value);
        return op(user, 'exclusive', async () => {
          await upsertRetrying(() =>
            coll.updateOne({ host, store, user }, { $set: { value: json } }, { upsert: true }),
          );
        });
      },
      async *users() {
        check();
        // Keyset pages rather than one long cursor: the consumer may take its
        // time between steps, and an idle cursor times out on the server.
        let last: string | undefined;
        for (;;) {
          const from = last;
          const page = await op(null, 'read', () =>
            coll
              .find(from === undefined ? { host, store } : { host, store, user: { $gt: from } }, {
                projection: { _id: 0, user: 1 },
              })
              .sort({ user: 1 })
              .limit(USERS_PAGE)
              .toArray(),
          );
          for (const d of page) yield d.user;
          if (page.length < USERS_PAGE) return;
          last = page[page.length - 1]!.user;
        }
      },
    };
  }

  // -- map -----------------------------------------------------------------

  map<T = JsonValue>(host: string, store: string): MapStore<T> {
    const coll = this.#db.collection<MapDoc>(COLLECTIONS.map);
    const op = <R>(user: string, kind: OpKind, fn: () => Promise<R>) =>
      this.#op('map', host, store, user, kind, fn);
    return {
      get(user, key) {
        return op(user, 'read', async () => {
          const doc = await coll.findOne({ host, store, user, key }, { projection: { _id: 0, value: 1 } });
          return doc ? (JSON.parse(doc.value) as T) : null;
        });
      },
      set(user, key, value) {
        if (value === null) {
          return op(user, 'exclusive', async () => {
            await coll.deleteOne({ host, store, user, key });
          });
        }
        const json = JSON.stringify(value);
        return op(user, 'exclusive', async () => {
          await upsertRetrying(() =>
            coll.updateOne({ host, store, user, key }, { $set: { value: json } }, { upsert: true }),
          );
        });
      },
      getAll(user) {
        return op(user, 'read', async () => {
          const docs = await coll
            .find({ host, store, user }, { projection: { _id: 0, key: 1, value: 1 } })
            .toArray();
          return new Map(docs.map((d) => [d.key, JSON.parse(d.value) as T]));
        });
      },
      deleteAll(user) {
        return op(user, 'exclusive', async () => {
          await coll.deleteMany({ host, store, user });
        });
      },
    };
  }

  // -- archive -------------------------------------------------------------

  archive<T = JsonValue>(host: string, store: string): ArchiveStore<T> {
    const coll = this.#db.collection<ArchiveDoc>(COLLECTIONS.archive);
    const op = <R>(user: string | null, kind: OpKind, fn: () => Promise<R>, key?: string) =>
      this.#op('archive', host, store, user, kind, fn, key);
    const caps: ArchiveCaps = { total: true, fullText: true, ids: true, before: true };

    const anchor = async (user: string, id: string): Promise<Anchor> => {
      const doc = await coll.findOne({ host, store, user, id }, { projection: { _id: 1, when: 1, seq: 1 } });
      if (!doc) throw new ItemNotFoundError(id);
      return { _id: doc._id, when: doc.when, seq: doc.seq };
    };

    const toItem = (d: Pick<ArchiveDoc, 'id' | 'when' | 'with' | 'value' | 'text'>): ArchiveItem<T> => {
      const item: ArchiveItem<T> = { id: d.id, when: d.when, with: d.with, value: JSON.parse(d.value) as T };
      if (d.text !== undefined && d.text !== null) item.text = d.text;
      return item;
    };

    return {
      caps,

      append(user, item: ArchiveAppend<T>) {
        // Everything that fixes the order is taken now, at call time.
        const when = item.when ?? Date.now();
        const id = item.id ?? generateArchiveId(when);
        const doc: ArchiveDoc = {
          _id: new ObjectId(),
          host,
          store,
          user,
          id,
          when,
          seq: nextSeq(),
          with: item.with,
          bare: bareJid(item.with),
          value: JSON.stringify(item.value),
        };
        if (item.text !== undefined) {
          doc.text = item.text;
          doc.terms = [...new Set(textTerms(item.text))];
        }
        if (item.id === undefined) {
          return op(user, 'shared', async () => {
            await coll.insertOne(doc);
            return id;
          });
        }
        // Only caller-chosen ids can collide: the new item replaces the old
        // one, taking the new `when` and `seq` as in the other drivers. A
        // replacement keeps the stored _id (it is immutable); a new item gets
        // one from the server, which is as unique.
        const { _id: _unused, ...replacement } = doc;
        return op(
          user,
          'shared',
          async () => {
            await upsertRetrying(() =>
              coll.replaceOne({ host, store, user, id }, replacement, { upsert: true }),
            );
            return id;
          },
          id,
        );
      },

      appendShared(entries: ArchiveEntry[], item: SharedAppend<T>) {
        return appendEach(this, entries, item);
      },

      async find(user, query: ArchiveQuery = {}): Promise<ArchiveResult<T>> {
        checkLimit(query.limit);
        return op(user, 'read', async () => {
          const [after, before] = await Promise.all([
            query.after !== undefined ? anchor(user, query.after) : undefined,
            typeof query.before === 'string' ? anchor(user, query.before) : undefined,
          ]);
          const filters = [ownerFilter(host, store, user), ...archiveFilterParts(query)];
          const page = [...filters];
          if (after) page.push(...keysetParts(after, 'after'));
          if (before) page.push(...keysetParts(before, 'before'));
          // `before` and `reverse` both page backwards: the page is taken from the newest end.
          const fromEnd = query.reverse === true || query.before !== undefined;
          const dir = fromEnd ? -1 : 1;
          let cursor = coll
            .find(allOf(page), { projection: { _id: 0, id: 1, when: 1, with: 1, value: 1, text: 1 } })
            .sort({ when: dir, seq: dir, _id: dir });
          // One more than the limit tells whether the page is complete.
          // (limit(0) would mean "no limit" to MongoDB; limit + 1 is never 0.)
          if (query.limit !== undefined) cursor = cursor.limit(query.limit + 1);
          const [docs, total] = await Promise.all([
            cursor.toArray(),
            query.total ? coll.countDocuments(allOf(filters)) : undefined,
          ]);
          let complete = true;
          if (query.limit !== undefined && docs.length > query.limit) {
            docs.length = query.limit;
            complete = false;
          }
          // Documents arrive in walking order; callers want chronological unless `reverse`.
          if (fromEnd && !query.reverse) docs.reverse();
          const result: ArchiveResult<T> = { items: docs.map(toItem), complete };
          if (total !== undefined) result.total = total;
          return result;
        });
      },

      delete(user, query: ArchiveDeleteQuery = {}) {
        const filter = allOf([ownerFilter(host, store, user), ...archiveFilterParts(query)]);
        return op(user, 'exclusive', async () => (await coll.deleteMany(filter)).deletedCount);
      },

      count(user) {
        return op(user, 'read', () => coll.countDocuments(ownerFilter(host, store, user)));
      },

      summary(user) {
        return op(user, 'read', async () => {
          const rows = await coll
            .aggregate<{ _id: string; count: number; first: number; last: number }>([
              { $match: ownerFilter(host, store, user) },
              {
                $group: {
                  _id: '$with',
                  count: { $sum: 1 },
                  first: { $min: '$when' },
                  last: { $max: '$when' },
                },
              },
            ])
            .toArray();
          return new Map<string, ArchiveSummaryEntry>(
            rows.map((r) => [r._id, { count: r.count, first: r.first, last: r.last }]),
          );
        });
      },

      async deleteOlderThan(when, batchSize, progress) {
        if (!Number.isInteger(batchSize) || batchSize < 1) {
          throw new RangeError(`batchSize must be a positive integer, got ${batchSize}`);
        }
        // Retention is explicit deletes, not a TTL index: the cut-off comes
        // from configuration (and `chorus archive purge`), may differ per
        // store, and `when` is a number, while TTL indexes need a Date field
        // and one fixed expireAfterSeconds per index. Each batch is a
        // separate operation so that other writers get in between.
        const old = { host, store, when: { $lt: when } };
        let total = 0;
        for (;;) {
          const { found, deleted } = await op(null, 'exclusive', async () => {
            const batch = await coll
              .find(old, { projection: { _id: 1 } })
              .sort({ when: 1 })
              .limit(batchSize)
              .toArray();
            if (batch.length === 0) return { found: 0, deleted: 0 };
            // host and store keep the delete targeted on a sharded cluster.
            const r = await coll.deleteMany({ ...old, _id: { $in: batch.map((d) => d._id) } });
            return { found: batch.length, deleted: r.deletedCount };
          });
          total += deleted;
          // A short batch is the last; so is one whose items all went to a
          // concurrent delete, which also rules out spinning on a batch that
          // cannot be deleted.
          if (found < batchSize || deleted === 0) return total;
          progress?.(total);
        }
      },
    };
  }
}
