// In-process storage for tests and throwaway servers. Values are kept as JSON
// text so that callers can never alias stored data and so that the memory
// driver round-trips values exactly like the SQLite driver does.

import { setImmediate as yieldToLoop } from 'node:timers/promises';
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

interface Entry {
  id: string;
  when: number;
  with: string;
  bare: string;
  value: string;
  text?: string;
  /** Lazily computed word set for full-text matching. */
  words?: Set<string>;
  /** Insertion order, the tie-breaker for equal `when`. */
  seq: number;
}

interface UserArchive {
  /** Sorted by (when, seq). */
  entries: Entry[];
  byId: Map<string, Entry>;
}

type Filter = Pick<ArchiveQuery, 'start' | 'end' | 'with' | 'ids' | 'text'> & { olderThan?: number };

function compareEntries(a: Entry, b: Entry): number {
  return a.when - b.when || a.seq - b.seq;
}

/** Index of the first entry that sorts after `probe` (or at it, when `inclusive`). */
function lowerBound(list: Entry[], probe: Entry, inclusive: boolean): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const c = compareEntries(list[mid]!, probe);
    if (c < 0 || (c === 0 && !inclusive)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function makeMatcher(filter: Filter): (e: Entry) => boolean {
  const { start, end, olderThan } = filter;
  const withJid = filter.with;
  const withIsBare = withJid !== undefined && !withJid.includes('/');
  const ids = filter.ids ? new Set(filter.ids) : undefined;
  // No searchable terms means no text constraint, matching the SQLite driver.
  const terms = filter.text !== undefined ? textTerms(filter.text) : [];
  return (e) => {
    if (start !== undefined && e.when < start) return false;
    if (end !== undefined && e.when > end) return false;
    if (olderThan !== undefined && e.when >= olderThan) return false;
    if (withJid !== undefined && (withIsBare ? e.bare !== withJid : e.with !== withJid)) return false;
    if (ids && !ids.has(e.id)) return false;
    if (terms.length > 0) {
      if (e.text === undefined) return false;
      e.words ??= new Set(textTerms(e.text));
      for (const t of terms) if (!e.words.has(t)) return false;
    }
    return true;
  };
}

function nsKey(host: string, store: string): string {
  // JSON keeps (host, store) pairs unambiguous whatever characters they hold.
  return JSON.stringify([host, store]);
}

function getOrCreate<K, V>(map: Map<K, V>, key: K, make: () => V): V {
  let v = map.get(key);
  if (v === undefined) {
    v = make();
    map.set(key, v);
  }
  return v;
}

function toJson(value: unknown): string {
  return JSON.stringify(value);
}

function fromJson<T>(text: string): T {
  return JSON.parse(text) as T;
}

export class MemoryDriver implements StorageDriver {
  readonly name = 'memory';
  #closed = false;
  #seq = 0;
  readonly #keyval = new Map<string, Map<string, string>>();
  readonly #map = new Map<string, Map<string, Map<string, string>>>();
  readonly #archive = new Map<string, Map<string, UserArchive>>();

  #check(): void {
    if (this.#closed) throw new Error('storage driver "memory" is closed');
  }

  keyval<T = JsonValue>(host: string, store: string): KeyValStore<T> {
    const users = getOrCreate(this.#keyval, nsKey(host, store), () => new Map<string, string>());
    const check = () => this.#check();
    return {
      async get(user) {
        check();
        const v = users.get(user);
        return v === undefined ? null : fromJson<T>(v);
      },
      async set(user, value) {
        check();
        if (value === null) users.delete(user);
        else users.set(user, toJson(value));
      },
      async *users() {
        check();
        // Snapshot so that writes during iteration cannot disturb it.
        for (const u of [...users.keys()]) yield u;
      },
    };
  }

  map<T = JsonValue>(host: string, store: string): MapStore<T> {
    const users = getOrCreate(this.#map, nsKey(host, store), () => new Map<string, Map<string, string>>());
    const check = () => this.#check();
    return {
      async get(user, key) {
        check();
        const v = users.get(user)?.get(key);
        return v === undefined ? null : fromJson<T>(v);
      },
      async set(user, key, value) {
        check();
        if (value === null) {
          const m = users.get(user);
          if (!m) return;
          m.delete(key);
          if (m.size === 0) users.delete(user);
        } else {
          getOrCreate(users, user, () => new Map<string, string>()).set(key, toJson(value));
        }
      },
      async getAll(user) {
        check();
        const out = new Map<string, T>();
        for (const [k, v] of users.get(user) ?? []) out.set(k, fromJson<T>(v));
        return out;
      },
      async deleteAll(user) {
        check();
        users.delete(user);
      },
    };
  }

  archive<T = JsonValue>(host: string, store: string): ArchiveStore<T> {
    const users = getOrCreate(this.#archive, nsKey(host, store), () => new Map<string, UserArchive>());
    const check = () => this.#check();
    const nextSeq = () => ++this.#seq;
    const caps: ArchiveCaps = { total: true, fullText: true, ids: true, before: true };

    const removeWhere = (user: string, ua: UserArchive, pred: (e: Entry) => boolean): number => {
      const keep: Entry[] = [];
      let removed = 0;
      for (const e of ua.entries) {
        if (pred(e)) {
          ua.byId.delete(e.id);
          removed++;
        } else keep.push(e);
      }
      ua.entries = keep;
      if (keep.length === 0) users.delete(user);
      return removed;
    };

    const toItem = (e: Entry): ArchiveItem<T> => {
      const item: ArchiveItem<T> = { id: e.id, when: e.when, with: e.with, value: fromJson<T>(e.value) };
      if (e.text !== undefined) item.text = e.text;
      return item;
    };

    return {
      caps,
      async append(user, item: ArchiveAppend<T>) {
        check();
        const ua = getOrCreate(users, user, () => ({ entries: [], byId: new Map<string, Entry>() }));
        const when = item.when ?? Date.now();
        const id = item.id ?? generateArchiveId(when);
        const old = ua.byId.get(id);
        if (old) ua.entries.splice(lowerBound(ua.entries, old, true), 1);
        const e: Entry = {
          id,
          when,
          with: item.with,
          bare: bareJid(item.with),
          value: toJson(item.value),
          seq: nextSeq(),
        };
        if (item.text !== undefined) e.text = item.text;
        // New entries almost always go last; the binary search covers back-dated ones.
        ua.entries.splice(lowerBound(ua.entries, e, false), 0, e);
        ua.byId.set(id, e);
        return id;
      },

      appendShared(entries: ArchiveEntry[], item: SharedAppend<T>) {
        return appendEach(this, entries, item);
      },

      async find(user, query: ArchiveQuery = {}): Promise<ArchiveResult<T>> {
        check();
        checkLimit(query.limit);
        const ua = users.get(user);
        const all = ua?.entries ?? [];
        const lookup = (id: string): Entry => {
          const e = ua?.byId.get(id);
          if (!e) throw new ItemNotFoundError(id);
          return e;
        };
        const afterEntry = query.after !== undefined ? lookup(query.after) : undefined;
        const beforeEntry = typeof query.before === 'string' ? lookup(query.before) : undefined;

        const filtered = all.filter(makeMatcher(query));
        const lo = afterEntry ? lowerBound(filtered, afterEntry, false) : 0;
        const hi = beforeEntry ? lowerBound(filtered, beforeEntry, true) : filtered.length;
        const range = lo < hi ? filtered.slice(lo, hi) : [];

        // `before` and `reverse` both page backwards: the page is taken from the newest end.
        const fromEnd = query.reverse === true || query.before !== undefined;
        let page = range;
        if (query.limit !== undefined && query.limit < range.length) {
          page = fromEnd ? range.slice(range.length - query.limit) : range.slice(0, query.limit);
        }
        const complete = page.length === range.length;
        const items = page.map(toItem);
        if (query.reverse) items.reverse();
        const result: ArchiveResult<T> = { items, complete };
        if (query.total) result.total = filtered.length;
        return result;
      },

      async delete(user, query: ArchiveDeleteQuery = {}) {
        check();
        const ua = users.get(user);
        if (!ua) return 0;
        return removeWhere(user, ua, makeMatcher(query));
      },

      async count(user) {
        check();
        return users.get(user)?.entries.length ?? 0;
      },

      async summary(user) {
        check();
        const out = new Map<string, ArchiveSummaryEntry>();
        for (const e of users.get(user)?.entries ?? []) {
          const s = out.get(e.with);
          if (!s) out.set(e.with, { count: 1, first: e.when, last: e.when });
          else {
            s.count++;
            // Entries are sorted by `when`, so the latest seen is the last.
            s.last = e.when;
          }
        }
        return out;
      },

      async deleteOlderThan(when, batchSize, progress) {
        check();
        if (!Number.isInteger(batchSize) || batchSize < 1) {
          throw new RangeError(`batchSize must be a positive integer, got ${batchSize}`);
        }
        let total = 0;
        for (const user of [...users.keys()]) {
          for (;;) {
            const ua = users.get(user);
            if (!ua) break;
            // Sorted by `when`: the old items form a prefix.
            let old = ua.entries.findIndex((e) => e.when >= when);
            if (old === -1) old = ua.entries.length;
            const n = Math.min(batchSize, old);
            if (n === 0) break;
            for (const e of ua.entries.splice(0, n)) ua.byId.delete(e.id);
            if (ua.entries.length === 0) users.delete(user);
            total += n;
            if (n === batchSize) progress?.(total);
            // Mirror the SQLite driver's batching so callers see the same interleaving.
            await yieldToLoop();
          }
        }
        return total;
      },
    };
  }

  async flush(): Promise<void> {
    this.#check();
  }

  async close(): Promise<void> {
    this.#closed = true;
  }
}
