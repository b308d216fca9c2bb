// XEP-0313 queries (urn:xmpp:mam:2 and its #extended additions), with
// XEP-0059 result set paging and the XEP-0431 full-text field.
//
// A query is answered with one <message/> per archived item, sent straight
// to the session that asked (never routed: a result must not be archived,
// copied or stored offline), then the IQ result with <fin/>. Results go out
// oldest first within the page; <flip-page/> reverses that, and RSM
// <first/>/<last/> name the first and last result as sent.
//
// Paging: RSM <after/> pages forward, <before/> backwards (empty: the last
// page); the form's after-id/before-id bound the query and combine with
// them, RSM taking precedence when both name the same side. <index/> is not
// supported (feature-not-implemented). <max/> is capped at max_page.
import { Element, parse } from 'ltx';
import { Jid } from '../../src/jid.ts';
import type { IqEvent } from '../../src/router/events.ts';
import { cloneElement, NS_CLIENT } from '../../src/stanza.ts';
import {
  ItemNotFoundError,
  type ArchiveItem,
  type ArchiveQuery,
  type ArchiveStore,
} from '../../src/storage/types.ts';
import { buildForm, FormError, NS_DATA, readSubmittedForm, singleValue, type FieldSpec } from './forms.ts';

export const NS_MAM = 'urn:xmpp:mam:2';
export const NS_MAM_EXTENDED = 'urn:xmpp:mam:2#extended';
export const NS_FULLTEXT = 'urn:xmpp:fulltext:0';
export const NS_RSM = 'http://jabber.org/protocol/rsm';
const NS_FORWARD = 'urn:xmpp:forward:0';
const NS_DELAY = 'urn:xmpp:delay';
const FULLTEXT_FIELD = `{${NS_FULLTEXT}}fulltext`;

export interface QueryOptions {
  archive: ArchiveStore<string>;
  maxPage: number;
  defaultPage: number;
}

class QueryError extends Error {
  constructor(
    readonly condition: 'bad-request' | 'feature-not-implemented' | 'item-not-found',
    text: string,
  ) {
    super(text);
  }
}

/** The fields this server understands, given what the storage driver can do. */
export function queryFields(archive: ArchiveStore<string>): FieldSpec[] {
  const fields: FieldSpec[] = [
    { var: 'with', type: 'jid-single' },
    { var: 'start', type: 'text-single' },
    { var: 'end', type: 'text-single' },
    { var: 'before-id', type: 'text-single' },
    { var: 'after-id', type: 'text-single' },
  ];
  if (archive.caps.ids) fields.push({ var: 'ids', type: 'list-multi', open: true });
  if (archive.caps.fullText) fields.push({ var: FULLTEXT_FIELD, type: 'text-single', label: 'Search for' });
  return fields;
}

export function formReply(archive: ArchiveStore<string>): Element {
  const query = new Element('query', { xmlns: NS_MAM });
  query.cnode(buildForm(NS_MAM, queryFields(archive)));
  return query;
}

/** XEP-0082 DateTime: a date, a time, optional fraction, and a zone (Z or ±hh:mm). */
const DATETIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

function parseTime(field: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const ms = DATETIME.test(value) ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(ms))
    throw new QueryError('bad-request', `The ${field} field needs an XEP-0082 date and time`);
  return ms;
}

interface Rsm {
  max?: number;
  before?: string | true;
  after?: string;
}

function readRsm(query: Element): Rsm {
  const set = query.getChild('set', NS_RSM);
  if (!set) return {};
  if (set.getChild('index')) {
    throw new QueryError(
      'feature-not-implemented',
      'Paging by index is not supported; use <before/> or <after/>',
    );
  }
  const rsm: Rsm = {};
  const max = set.getChild('max');
  if (max) {
    const text = max.getText().trim();
    if (!/^\d+$/.test(text)) throw new QueryError('bad-request', '<max/> must be a non-negative integer');
    rsm.max = Number.parseInt(text, 10);
  }
  const before = set.getChild('before');
  if (before) {
    const id = before.getText().trim();
    rsm.before = id === '' ? true : id;
  }
  const after = set.getChild('after');
  if (after) {
    const id = after.getText().trim();
    if (id === '') throw new QueryError('bad-request', '<after/> needs the id to page after');
    rsm.after = id;
  }
  return rsm;
}

interface BuiltQuery {
  query: ArchiveQuery;
  flip: boolean;
  /** A before-id without RSM <before/>: results stop at this id (exclusive). */
  bound?: string;
}

function buildQuery(payload: Element, opts: QueryOptions): BuiltQuery {
  const { archive } = opts;
  const query: ArchiveQuery = { total: archive.caps.total };
  const x = payload.getChild('x', NS_DATA);
  if (x) {
    const form = readSubmittedForm(x);
    const formType = singleValue(form, 'FORM_TYPE');
    if (formType !== undefined && formType !== NS_MAM) {
      throw new QueryError('bad-request', `Unknown FORM_TYPE '${formType}'; this is ${NS_MAM}`);
    }
    const known = new Set(['FORM_TYPE', ...queryFields(archive).map((f) => f.var)]);
    for (const name of form.keys()) {
      if (!known.has(name)) throw new QueryError('bad-request', `The field '${name}' is not supported`);
    }
    const withText = singleValue(form, 'with');
    if (withText !== undefined) {
      const jid = Jid.tryParse(withText);
      if (!jid) throw new QueryError('bad-request', `'${withText}' in the with field is not a valid JID`);
      query.with = jid.toString();
    }
    query.start = parseTime('start', singleValue(form, 'start'));
    query.end = parseTime('end', singleValue(form, 'end'));
    const beforeId = singleValue(form, 'before-id');
    if (beforeId !== undefined) query.before = beforeId;
    const afterId = singleValue(form, 'after-id');
    if (afterId !== undefined) query.after = afterId;
    const ids = form.get('ids');
    if (ids !== undefined) query.ids = ids.map((v) => v.trim()).filter((v) => v !== '');
    const text = singleValue(form, FULLTEXT_FIELD);
    if (text !== undefined) query.text = text;
  }
  const rsm = readRsm(payload);
  if (rsm.after !== undefined) query.after = rsm.after;
  let bound: string | undefined;
  if (rsm.before !== undefined) {
    // RSM <before/> pages backwards from its id, or from before-id, or from the end.
    if (typeof rsm.before === 'string' || query.before === undefined) query.before = rsm.before;
  } else if (typeof query.before === 'string') {
    // before-id alone bounds a forward query: the caller cuts the results there.
    bound = query.before;
    delete query.before;
  }
  query.limit = Math.min(rsm.max ?? opts.defaultPage, opts.maxPage);
  const flip = payload.getChild('flip-page') !== undefined;
  return { query, flip, bound };
}

function resultMessage(item: ArchiveItem<string>, queryId: string | undefined, to: string, from: string) {
  const message = new Element('message', { xmlns: NS_CLIENT, to, from });
  const forwarded = message
    .c('result', { xmlns: NS_MAM, queryid: queryId, id: item.id })
    .c('forwarded', { xmlns: NS_FORWARD });
  forwarded.c('delay', { xmlns: NS_DELAY, stamp: new Date(item.when).toISOString() });
  const original = cloneElement(parse(item.value));
  original.attrs.xmlns = NS_CLIENT;
  forwarded.cnode(original);
  return message;
}

/**
 * By name as well as by class: a driver loaded through another module
 * instance of types.ts (tests mix loaders) throws an equal but distinct class.
 */
function isItemNotFound(err: unknown): err is ItemNotFoundError {
  return err instanceof ItemNotFoundError || (err instanceof Error && err.name === 'ItemNotFoundError');
}

/** Answers a query IQ; `user` is the local username whose archive is read. */
export async function runQuery(ev: IqEvent, user: string, opts: QueryOptions): Promise<void> {
  const { payload, origin } = ev;
  const queryId = payload.attrs.queryid as string | undefined;
  let built: BuiltQuery;
  try {
    built = buildQuery(payload, opts);
  } catch (err) {
    if (err instanceof QueryError) return ev.error(err.condition, { text: err.message });
    if (err instanceof FormError) return ev.error('bad-request', { text: err.message });
    throw err;
  }
  const { query, flip, bound } = built;
  if (query.text !== undefined && !opts.archive.caps.fullText) {
    return ev.error('feature-not-implemented', { text: 'This server’s storage cannot search text' });
  }
  let result;
  try {
    if (bound !== undefined) {
      // The store pages backwards from a `before`; a forward query up to an
      // id ends at that item's time instead, and drops the item and what
      // follows it within the same millisecond.
      const anchor = (await opts.archive.find(user, { ids: [bound], limit: 1 })).items[0];
      if (!anchor) throw new ItemNotFoundError(bound);
      query.end = Math.min(query.end ?? anchor.when, anchor.when);
      // One more than a page: whether anything before the bound remains.
      if (query.limit !== undefined) query.limit++;
    }
    result = await opts.archive.find(user, query);
  } catch (err) {
    if (isItemNotFound(err)) {
      return ev.error('item-not-found', { text: `No archived message has the id '${err.id}'` });
    }
    throw err;
  }
  if (bound !== undefined) {
    const limit = query.limit === undefined ? Infinity : query.limit - 1;
    const cut = result.items.findIndex((item) => item.id === bound);
    const before = cut === -1 ? result.items : result.items.slice(0, cut);
    const complete = before.length <= limit && (cut !== -1 || result.complete);
    result = { ...result, items: before.slice(0, limit), complete };
  }
  const items = flip ? [...result.items].reverse() : result.items;
  const to = ev.from.toString();
  const from = ev.to.bare.toString();
  for (const item of items) {
    let message: Element;
    try {
      message = resultMessage(item, queryId, to, from);
    } catch {
      continue; // an unreadable entry; the ids in <fin/> still page past it
    }
    if (origin) origin.send(message);
  }
  const fin = new Element('fin', { xmlns: NS_MAM, complete: result.complete ? 'true' : 'false' });
  const set = fin.c('set', { xmlns: NS_RSM });
  if (items.length > 0) {
    set.c('first').t(items[0]!.id);
    set.c('last').t(items[items.length - 1]!.id);
  }
  if (result.total !== undefined) set.c('count').t(String(result.total));
  ev.reply(fin);
}

/** #extended: the first and last entry of the archive. */
export async function metadata(archive: ArchiveStore<string>, user: string): Promise<Element> {
  const el = new Element('metadata', { xmlns: NS_MAM });
  const [first, last] = await Promise.all([
    archive.find(user, { limit: 1 }),
    archive.find(user, { limit: 1, reverse: true }),
  ]);
  const a = first.items[0];
  const b = last.items[0];
  if (a && b) {
    el.c('start', { id: a.id, timestamp: new Date(a.when).toISOString() });
    el.c('end', { id: b.id, timestamp: new Date(b.when).toISOString() });
  }
  return el;
}
