// The storage API, after Prosody's: a driver hands out three kinds of store
// (keyval, map, archive), each namespaced by (host, store) and then by user.
// Everything is async from the start so that network-backed drivers (MongoDB,
// later) fit the same interface as the in-process ones.

import { randomBytes } from 'node:crypto';

export type JsonValue = null | boolean | number | string | JsonValue[] | { [k: string]: JsonValue };

/** One value per user. */
export interface KeyValStore<T = JsonValue> {
  get(user: string): Promise<T | null>;
  /** Passing null deletes the user's value. */
  set(user: string, value: T | null): Promise<void>;
  /** Users that currently have a value, in no promised order. */
  users(): AsyncIterable<string>;
}

/** Many keyed values per user. */
export interface MapStore<T = JsonValue> {
  get(user: string, key: string): Promise<T | null>;
  /** Passing null deletes the key. */
  set(user: string, key: string, value: T | null): Promise<void>;
  getAll(user: string): Promise<Map<string, T>>;
  deleteAll(user: string): Promise<void>;
}

export interface ArchiveItem<T = JsonValue> {
  id: string;
  /** Milliseconds since the epoch. */
  when: number;
  /** The other party, a bare or full JID. */
  with: string;
  value: T;
  /** Searchable text (e.g. the message body), indexed for full-text queries. */
  text?: string;
}

export interface ArchiveQuery {
  /** Inclusive lower bound on `when` (ms). */
  start?: number;
  /** Inclusive upper bound on `when` (ms). */
  end?: number;
  /** A bare JID also matches items stored with any full JID of it; a full JID matches exactly. */
  with?: string;
  /** Only these ids (those that exist). */
  ids?: string[];
  /** Items strictly before this id, or `true` for the last page. Pages backwards. */
  before?: string | true;
  /** Items strictly after this id. */
  after?: string;
  limit?: number;
  /** Newest first. */
  reverse?: boolean;
  /** Also count every item matching the filters, ignoring paging. */
  total?: boolean;
  /** Every whitespace/punctuation separated term must occur as a word of `text`. */
  text?: string;
}

export interface ArchiveResult<T> {
  items: ArchiveItem<T>[];
  total?: number;
  /** True when no further items exist beyond this page in the paging direction. */
  complete: boolean;
}

export interface ArchiveCaps {
  total: boolean;
  fullText: boolean;
  ids: boolean;
  before: boolean;
  quota?: number;
}

export type ArchiveDeleteQuery = Omit<ArchiveQuery, 'limit' | 'total' | 'reverse' | 'before' | 'after'> & {
  /** Only items with `when` strictly below this (ms). */
  olderThan?: number;
};

export interface ArchiveAppend<T = JsonValue> {
  /** Caller-chosen id; an existing item with the same id (same user) is replaced. */
  id?: string;
  /**
   * The caller vouches that `id` is new to this archive (e.g. it came from
   * generateArchiveId), so a driver may skip looking for an item to replace.
   * Lets a caller know the id before the append completes.
   */
  fresh?: boolean;
  /** Defaults to now. */
  when?: number;
  with: string;
  value: T;
  text?: string;
}

/** Where one item of appendShared goes: a user's archive, under its own id and `with`. */
export interface ArchiveEntry {
  user: string;
  /** A fresh id (e.g. from generateArchiveId): new to this user's archive. */
  id: string;
  with: string;
}

/** The part of an item that appendShared stores once for every entry. */
export type SharedAppend<T> = Pick<ArchiveAppend<T>, 'when' | 'value' | 'text'>;

export interface SharedAppendOptions {
  /**
   * Nothing waits for this write to commit (the caller goes on and only
   * watches for failure): a driver may then hold it a little longer, to
   * commit more writes together, where that is cheaper under load. Reads
   * still see it: a read that needs it makes the driver commit at once.
   */
  behind?: boolean;
}

export interface ArchiveSummaryEntry {
  count: number;
  first: number;
  last: number;
}

export interface ArchiveStore<T = JsonValue> {
  caps: ArchiveCaps;
  /** Resolves to the item's id (generated when not given). */
  append(user: string, item: ArchiveAppend<T>): Promise<string>;
  /**
   * Appends one item to several archives at once, such as a message in the
   * archives of its sender and its recipient, each entry with its own id and
   * `with`. Ids must be fresh. Cheaper than one append per archive: one write
   * to queue and one value to encode. Resolves once every entry is stored.
   * A driver may return one promise for several appendShared calls that it
   * commits together (SQLite does, per batch); that promise then rejects if
   * any of them failed.
   */
  appendShared(entries: ArchiveEntry[], item: SharedAppend<T>, options?: SharedAppendOptions): Promise<void>;
  /** Throws ItemNotFoundError when `before`/`after` names an id the user's archive lacks. */
  find(user: string, query?: ArchiveQuery): Promise<ArchiveResult<T>>;
  /** Deletes what matches (everything when no query); resolves to how many items went. */
  delete(user: string, query?: ArchiveDeleteQuery): Promise<number>;
  count(user: string): Promise<number>;
  /** Per `with` value as stored: item count and first/last `when`. */
  summary(user: string): Promise<Map<string, ArchiveSummaryEntry>>;
  /**
   * Retention across every user of this (host, store): deletes all items with
   * `when` strictly below the cut-off, at most `batchSize` per transaction so a
   * large purge does not hold the database for long. Resolves to the total removed.
   * `progress`, if given, is told the total removed so far after every full
   * batch (one that may be followed by more), for a caller to report.
   */
  deleteOlderThan?(
    when: number,
    batchSize: number,
    progress?: (deletedSoFar: number) => void,
  ): Promise<number>;
}

export interface StorageDriver {
  readonly name: string;
  keyval<T = JsonValue>(host: string, store: string): KeyValStore<T>;
  map<T = JsonValue>(host: string, store: string): MapStore<T>;
  archive<T = JsonValue>(host: string, store: string): ArchiveStore<T>;
  /** Resolves once every write issued so far is durable in the driver. */
  flush(): Promise<void>;
  /** Flushes, then releases the driver; it must not be used afterwards. */
  close(): Promise<void>;
}

/** Thrown by ArchiveStore.find for an unknown before/after id, so MAM can answer item-not-found. */
export class ItemNotFoundError extends Error {
  readonly id: string;
  constructor(id: string) {
    super(`archive item not found: ${id}`);
    this.name = 'ItemNotFoundError';
    this.id = id;
  }
}

// ---------------------------------------------------------------------------
// Helpers shared by the drivers, kept here so that they agree exactly.

/** Random characters per refill of the pool that archive ids take their random half from. */
const ID_POOL_CHARS = 8 * 512;
let idPool = '';
let idPoolAt = 0;
const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const idCodes: number[] = new Array<number>(8).fill(0);
/** The time half of the latest id, and the time it encodes. */
let idTime = '';
let idTimeOf = -1;

/**
 * A fresh archive id: 16 URL-safe characters, the base64url form of 12
 * bytes: the item's `when` (48 bits, milliseconds) and 48 random bits. The
 * random half keeps ids unguessable; the time half lets a driver find an item
 * by id through its (owner, when) index, with no index on ids (see
 * archiveIdTime). Made without a Buffer per id: the time is encoded by hand
 * and the random half cut from a pool of random base64url text (one call into
 * the crypto module per 512 ids): archiving a message makes two.
 */
export function generateArchiveId(when: number = Date.now()): string {
  if (idPoolAt >= idPool.length) {
    idPool = randomBytes((ID_POOL_CHARS / 4) * 3).toString('base64url');
    idPoolAt = 0;
  }
  const t = Math.max(0, Math.min(Math.trunc(when), 2 ** 48 - 1));
  // Messages come many to a millisecond: the time half is made once for each.
  if (t !== idTimeOf) {
    let rest = t;
    for (let i = 7; i >= 0; i--) {
      idCodes[i] = BASE64URL.charCodeAt(rest % 64);
      rest = Math.floor(rest / 64);
    }
    idTime = String.fromCharCode(...idCodes);
    idTimeOf = t;
  }
  const id = idTime + idPool.slice(idPoolAt, idPoolAt + 8);
  idPoolAt += 8;
  return id;
}

/**
 * The `when` an id from generateArchiveId carries, or null for an id of
 * another form (chosen by a caller, or made before ids carried time). An id
 * of another form can decode to some time by chance: it then names an item
 * only if that item has exactly this `when`, which drivers check.
 */
export function archiveIdTime(id: string): number | null {
  if (id.length !== 16) return null;
  let when = 0;
  for (let i = 0; i < 16; i++) {
    const digit = BASE64URL_DIGITS[id.charCodeAt(i)] ?? -1;
    if (digit < 0) return null;
    // The first 8 characters are the 48 bits of time.
    if (i < 8) when = when * 64 + digit;
  }
  return when;
}

/** The value of each base64url character by char code; -1 for any other. */
const BASE64URL_DIGITS: number[] = Array.from({ length: 128 }, (_, code) =>
  BASE64URL.indexOf(String.fromCharCode(code)),
);

/** The bare part of a JID string (everything before the first '/'). */
export function bareJid(jid: string): string {
  const slash = jid.indexOf('/');
  return slash === -1 ? jid : jid.slice(0, slash);
}

/**
 * Splits text into lower-cased, diacritic-free words the way SQLite's
 * unicode61 tokenizer (remove_diacritics 2) does, so the memory driver's
 * full-text matching agrees with the SQLite driver's FTS5 index.
 */
export function textTerms(text: string): string[] {
  return text
    .normalize('NFKD')
    .replace(/\p{M}/gu, '')
    .toLowerCase()
    .split(/[^\p{L}\p{N}\p{Co}]+/u)
    .filter((w) => w.length > 0);
}

/** Rejects limits that would make paging meaningless rather than guessing. */
export function checkLimit(limit: number | undefined): void {
  if (limit !== undefined && (!Number.isInteger(limit) || limit < 0)) {
    throw new RangeError(`archive limit must be a non-negative integer, got ${limit}`);
  }
}

/** appendShared for drivers that store each entry as an append of its own. */
export async function appendEach<T>(
  archive: Pick<ArchiveStore<T>, 'append'>,
  entries: ArchiveEntry[],
  item: SharedAppend<T>,
): Promise<void> {
  const when = item.when ?? Date.now();
  await Promise.all(
    entries.map((e) => archive.append(e.user, { ...item, id: e.id, fresh: true, with: e.with, when })),
  );
}
