// An in-process stand-in for the small part of the MongoDB driver API that
// src/storage/mongodb.ts uses, so that the driver's own logic (query
// building, paging, ordering of concurrent operations) runs through the
// conformance suite on machines without a MongoDB server. It follows the
// documented query semantics for the operators the driver sends ($and, $or,
// $gt/$gte/$lt/$lte, $in, $all, equality that also matches array elements)
// and answers every operation after a random number of event-loop turns, the
// way concurrent operations on a connection pool may be applied out of call
// order. It is not MongoDB: the real server is covered only when
// CHORUS_TEST_MONGODB_URL is set.

import { ObjectId } from 'mongodb';

type Doc = Record<string, unknown>;
type SortSpec = Record<string, 1 | -1>;

const delay = (): Promise<void> => {
  const turns = Math.floor(Math.random() * 4);
  let p = Promise.resolve();
  for (let i = 0; i < turns; i++) p = p.then(() => new Promise<void>((r) => setImmediate(r)));
  return p;
};

function compare(a: unknown, b: unknown): number {
  if (a instanceof ObjectId && b instanceof ObjectId) {
    const x = a.toHexString();
    const y = b.toHexString();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  if (typeof a === 'string' && typeof b === 'string') {
    // MongoDB compares strings by their UTF-8 bytes.
    return Buffer.compare(Buffer.from(a), Buffer.from(b));
  }
  throw new Error(`fake mongodb: cannot compare ${typeof a} with ${typeof b}`);
}

function equal(a: unknown, b: unknown): boolean {
  if (a instanceof ObjectId || b instanceof ObjectId) {
    return a instanceof ObjectId && b instanceof ObjectId && a.equals(b);
  }
  return a === b;
}

/** Equality the MongoDB way: an array field matches when any element does. */
function fieldEquals(value: unknown, wanted: unknown): boolean {
  if (Array.isArray(value)) return value.some((v) => equal(v, wanted));
  return equal(value, wanted);
}

function matchOperator(value: unknown, op: string, arg: unknown): boolean {
  switch (op) {
    case '$gt':
      return value !== undefined && compare(value, arg) > 0;
    case '$gte':
      return value !== undefined && compare(value, arg) >= 0;
    case '$lt':
      return value !== undefined && compare(value, arg) < 0;
    case '$lte':
      return value !== undefined && compare(value, arg) <= 0;
    case '$in':
      return (arg as unknown[]).some((x) => fieldEquals(value, x));
    case '$all': {
      const list = arg as unknown[];
      // $all of an empty list matches nothing.
      return list.length > 0 && list.every((x) => fieldEquals(value, x));
    }
    default:
      throw new Error(`fake mongodb: unsupported operator ${op}`);
  }
}

export function matches(doc: Doc, filter: Doc): boolean {
  for (const [key, cond] of Object.entries(filter)) {
    if (key === '$and') {
      if (!(cond as Doc[]).every((f) => matches(doc, f))) return false;
    } else if (key === '$or') {
      if (!(cond as Doc[]).some((f) => matches(doc, f))) return false;
    } else if (key.startsWith('$')) {
      throw new Error(`fake mongodb: unsupported top-level operator ${key}`);
    } else if (
      cond !== null &&
      typeof cond === 'object' &&
      !(cond instanceof ObjectId) &&
      !Array.isArray(cond) &&
      Object.keys(cond).every((k) => k.startsWith('$'))
    ) {
      for (const [op, arg] of Object.entries(cond)) if (!matchOperator(doc[key], op, arg)) return false;
    } else if (!fieldEquals(doc[key], cond)) {
      return false;
    }
  }
  return true;
}

function sorter(spec: SortSpec): (a: Doc, b: Doc) => number {
  return (a, b) => {
    for (const [k, dir] of Object.entries(spec)) {
      const c = compare(a[k], b[k]);
      if (c !== 0) return c * dir;
    }
    return 0;
  };
}

/** A deep copy that keeps ObjectIds (structuredClone would make them plain objects). */
function clone(v: unknown): unknown {
  if (v instanceof ObjectId) return new ObjectId(v.toHexString());
  if (Array.isArray(v)) return v.map(clone);
  if (v !== null && typeof v === 'object') {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, clone(x)]));
  }
  return v;
}

const copy = (d: Doc): Doc => clone(d) as Doc;

class FakeCursor {
  #sort: SortSpec | undefined;
  #limit = 0;
  constructor(
    private readonly coll: FakeCollection,
    private readonly filter: Doc,
  ) {}
  sort(spec: SortSpec): this {
    this.#sort = spec;
    return this;
  }
  limit(n: number): this {
    this.#limit = n;
    return this;
  }
  async toArray(): Promise<Doc[]> {
    await delay();
    let out = this.coll.docs.filter((d) => matches(d, this.filter));
    if (this.#sort) out.sort(sorter(this.#sort));
    // As in MongoDB, limit(0) is no limit.
    if (this.#limit > 0) out = out.slice(0, this.#limit);
    return out.map(copy);
  }
}

export class FakeCollection {
  docs: Doc[] = [];
  unique: string[][] = [];
  indexes: string[] = [];

  #checkUnique(doc: Doc, except?: Doc): void {
    for (const keys of this.unique) {
      const clash = this.docs.find((d) => d !== except && keys.every((k) => equal(d[k], doc[k])));
      if (clash) throw Object.assign(new Error('E11000 duplicate key error (fake)'), { code: 11000 });
    }
  }

  async createIndexes(specs: { name?: string; key: Record<string, unknown>; unique?: boolean }[]) {
    await delay();
    for (const s of specs) {
      if (this.indexes.includes(s.name!)) continue;
      this.indexes.push(s.name!);
      if (s.unique) this.unique.push(Object.keys(s.key));
    }
    return specs.map((s) => s.name!);
  }

  find(filter: Doc): FakeCursor {
    return new FakeCursor(this, filter);
  }

  async findOne(filter: Doc): Promise<Doc | null> {
    await delay();
    const d = this.docs.find((x) => matches(x, filter));
    return d ? copy(d) : null;
  }

  async countDocuments(filter: Doc): Promise<number> {
    await delay();
    return this.docs.filter((d) => matches(d, filter)).length;
  }

  async insertOne(doc: Doc): Promise<unknown> {
    await delay();
    const d = copy(doc);
    d._id ??= new ObjectId();
    this.#checkUnique(d);
    this.docs.push(d);
    return { acknowledged: true };
  }

  async replaceOne(filter: Doc, replacement: Doc, opts: { upsert?: boolean } = {}): Promise<unknown> {
    await delay();
    if ('_id' in replacement) throw new Error('fake mongodb: replacement must not carry _id');
    const i = this.docs.findIndex((d) => matches(d, filter));
    if (i !== -1) {
      const d = { _id: this.docs[i]!._id, ...copy(replacement) };
      this.#checkUnique(d, this.docs[i]);
      this.docs[i] = d;
    } else if (opts.upsert) {
      const d = { _id: new ObjectId(), ...copy(replacement) };
      this.#checkUnique(d);
      this.docs.push(d);
    }
    return { acknowledged: true };
  }

  async updateOne(filter: Doc, update: { $set: Doc }, opts: { upsert?: boolean } = {}): Promise<unknown> {
    await delay();
    const d = this.docs.find((x) => matches(x, filter));
    if (d) Object.assign(d, copy(update.$set));
    else if (opts.upsert) {
      const equalities = Object.fromEntries(
        Object.entries(filter).filter(([, v]) => typeof v !== 'object' || v === null),
      );
      const n = { _id: new ObjectId(), ...equalities, ...copy(update.$set) };
      this.#checkUnique(n);
      this.docs.push(n);
    }
    return { acknowledged: true };
  }

  async deleteOne(filter: Doc): Promise<{ deletedCount: number }> {
    await delay();
    const i = this.docs.findIndex((d) => matches(d, filter));
    if (i === -1) return { deletedCount: 0 };
    this.docs.splice(i, 1);
    return { deletedCount: 1 };
  }

  async deleteMany(filter: Doc): Promise<{ deletedCount: number }> {
    await delay();
    const before = this.docs.length;
    this.docs = this.docs.filter((d) => !matches(d, filter));
    return { deletedCount: before - this.docs.length };
  }

  aggregate(pipeline: Doc[]): { toArray(): Promise<Doc[]> } {
    return {
      toArray: async () => {
        await delay();
        let rows = this.docs.map(copy);
        for (const stage of pipeline) {
          if (stage.$match) rows = rows.filter((d) => matches(d, stage.$match as Doc));
          else if (stage.$group) rows = group(rows, stage.$group as Doc);
          else throw new Error(`fake mongodb: unsupported stage ${Object.keys(stage)[0]}`);
        }
        return rows;
      },
    };
  }
}

function group(rows: Doc[], spec: Doc): Doc[] {
  const field = (expr: unknown) => {
    if (typeof expr !== 'string' || !expr.startsWith('$'))
      throw new Error('fake mongodb: unsupported expression');
    return expr.slice(1);
  };
  const out = new Map<unknown, Doc>();
  for (const r of rows) {
    const id = r[field(spec._id)];
    let g = out.get(id);
    if (!g) {
      g = { _id: id };
      out.set(id, g);
    }
    for (const [name, acc] of Object.entries(spec)) {
      if (name === '_id') continue;
      const [op, arg] = Object.entries(acc as Doc)[0]!;
      if (op === '$sum') g[name] = ((g[name] as number | undefined) ?? 0) + (arg as number);
      else if (op === '$min' || op === '$max') {
        const v = r[field(arg)];
        const cur = g[name];
        if (cur === undefined || (op === '$min' ? compare(v, cur) < 0 : compare(v, cur) > 0)) g[name] = v;
      } else throw new Error(`fake mongodb: unsupported accumulator ${op}`);
    }
  }
  return [...out.values()];
}

/** A stand-in MongoClient: db(name) hands out collections kept in memory. */
export class FakeClient {
  readonly dbs = new Map<string, Map<string, FakeCollection>>();
  db(name: string) {
    let colls = this.dbs.get(name);
    if (!colls) {
      colls = new Map();
      this.dbs.set(name, colls);
    }
    const c = colls;
    return {
      databaseName: name,
      collection(coll: string) {
        let x = c.get(coll);
        if (!x) {
          x = new FakeCollection();
          c.set(coll, x);
        }
        return x;
      },
    };
  }
  async close(): Promise<void> {}
}
