// Message Archive Management (XEP-0313 mam:2 and #extended) with XEP-0359
// stanza ids, XEP-0431 full-text search, preferences and retention, with
// real clients against a real server.
import { expect } from 'chai';
import { parse, type Element } from 'ltx';
import { purgeArchive } from '../../modules/mam/index.ts';
import { testJids } from '../helpers/fixtures.ts';
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'mam-test-pw';
const NS_MAM = 'urn:xmpp:mam:2';
const NS_RSM = 'http://jabber.org/protocol/rsm';
const NS_SID = 'urn:xmpp:sid:0';
const NS_FORWARD = 'urn:xmpp:forward:0';
const NS_DELAY = 'urn:xmpp:delay';
const NS_CARBONS = 'urn:xmpp:carbons:2';
const NS_STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';
const MAX_PAGE = 5;
const MODULES = 'modules: [disco, ping, roster, presence, carbons, offline, mam]';
const DAY = 86_400_000;

let server: TestServer;
const { clients, ...users } = testJids(PASSWORD, () => server);

interface QueryOutcome {
  /** The result messages, in the order received. */
  results: Element[];
  /** The final IQ (result or error). */
  iq: Element;
  fin: Element | undefined;
}

/** What a result message carries, the way a client reads it. */
interface Archived {
  id: string;
  body: string | null;
  from: string;
  to: string;
  stamp: string;
}

function archived(result: Element): Archived {
  const r = result.getChild('result', NS_MAM)!;
  const forwarded = r.getChild('forwarded', NS_FORWARD)!;
  const message = forwarded.getChild('message')!;
  return {
    id: r.attrs.id as string,
    body: message.getChildText('body'),
    from: message.attrs.from as string,
    to: message.attrs.to as string,
    stamp: forwarded.getChild('delay', NS_DELAY)!.attrs.stamp as string,
  };
}

function bodies(outcome: QueryOutcome): (string | null)[] {
  return outcome.results.map((r) => archived(r).body);
}

function rsm(outcome: QueryOutcome): { first?: string; last?: string; count?: number } {
  const set = outcome.fin?.getChild('set', NS_RSM);
  if (!set) throw new Error(`no <fin/> with an RSM <set/> in ${outcome.iq.toString()}`);
  const count = set.getChildText('count');
  return {
    first: set.getChildText('first') ?? undefined,
    last: set.getChildText('last') ?? undefined,
    count: count === null ? undefined : Number(count),
  };
}

function complete(outcome: QueryOutcome): boolean {
  return outcome.fin?.attrs.complete === 'true';
}

function errorCondition(iq: Element): string | undefined {
  const error = iq.getChild('error');
  return error?.children.find((c): c is Element => typeof c !== 'string' && c.getNS() === NS_STANZAS)?.name;
}

/** A submitted mam:2 form; array values become several <value/>s. */
function form(fields: Record<string, string | string[]>): string {
  const parts = [`<field var='FORM_TYPE' type='hidden'><value>${NS_MAM}</value></field>`];
  for (const [name, value] of Object.entries(fields)) {
    const values = Array.isArray(value) ? value : [value];
    parts.push(`<field var='${name}'>${values.map((v) => `<value>${v}</value>`).join('')}</field>`);
  }
  return `<x xmlns='jabber:x:data' type='submit'>${parts.join('')}</x>`;
}

function set(inner: string): string {
  return `<set xmlns='${NS_RSM}'>${inner}</set>`;
}

async function query(c: XmppClient, inner = '', to = ''): Promise<QueryOutcome> {
  const id = c.nextId('mam');
  const queryId = `q-${id}`;
  c.send(
    `<iq type='set' id='${id}'${to ? ` to='${to}'` : ''}><query xmlns='${NS_MAM}' queryid='${queryId}'>${inner}</query></iq>`,
  );
  const results: Element[] = [];
  for (;;) {
    const event = await c.next();
    if (event.kind !== 'element') throw new Error(`query ${id}: got ${event.kind}`);
    const el = event.element;
    if (el.name === 'iq' && el.attrs.id === id) {
      return { results, iq: el, fin: el.getChild('fin', NS_MAM) };
    }
    const result = el.name === 'message' ? el.getChild('result', NS_MAM) : undefined;
    if (!result) throw new Error(`query ${id}: unexpected ${el.toString()}`);
    expect(result.attrs.queryid, 'each result names the query').to.equal(queryId);
    results.push(el);
  }
}

async function iq(c: XmppClient, type: 'get' | 'set', inner: string, to = ''): Promise<Element> {
  const id = c.nextId('iq');
  c.send(`<iq type='${type}' id='${id}'${to ? ` to='${to}'` : ''}>${inner}</iq>`);
  for (;;) {
    const event = await c.next();
    if (event.kind !== 'element') throw new Error(`iq ${id}: got ${event.kind}`);
    if (event.element.name === 'iq' && event.element.attrs.id === id) return event.element;
  }
}

for (const driver of ['memory', 'sqlite'] as const)
  describe(`message archive management (XEP-0313), ${driver} storage`, function () {
    this.timeout(20_000);
    before(async () => {
      server = await startTestServer({
        yaml: `${MODULES}\nmodule_options: { mam: { max_page: ${MAX_PAGE}, default_page: 3 } }`,
        sqlite: driver === 'sqlite',
      });
    });
    after(async () => {
      await server.stop();
    });

    const { newUser } = users;

    async function login(bare: string, resource: string, online = true): Promise<XmppClient> {
      const c = await users.login(bare, resource);
      if (online) {
        c.send('<presence/>');
        await c.expect(`<presence from='${c.jid}'/>`);
      }
      return c;
    }

    interface Pair {
      romeo: string;
      juliet: string;
      r: XmppClient;
      j: XmppClient;
    }

    async function pair(): Promise<Pair> {
      const romeo = await newUser('romeo');
      const juliet = await newUser('juliet');
      return { romeo, juliet, r: await login(romeo, 'balcony'), j: await login(juliet, 'chamber') };
    }

    /** Romeo sends each body to Juliet; resolves once she has them all. Returns her stanza-ids. */
    async function converse(p: Pair, texts: string[]): Promise<string[]> {
      const ids: string[] = [];
      for (const text of texts) {
        p.r.send(`<message to='${p.juliet}' type='chat'><body>${text}</body></message>`);
        const got = await p.j.expect(`<message from='${p.r.jid}' type='chat'><body>${text}</body></message>`);
        ids.push(got.getChild('stanza-id', NS_SID)!.attrs.id as string);
      }
      return ids;
    }

    function numbered(n: number, prefix = 'm'): string[] {
      return Array.from({ length: n }, (_, i) => `${prefix}${i + 1}`);
    }

    // ---- discovery and the form ------------------------------------------------------

    it('advertises mam:2, #extended and full-text search on the account', async () => {
      const romeo = await newUser('romeo');
      const r = await login(romeo, 'a', false);
      const reply = await iq(r, 'get', `<query xmlns='http://jabber.org/protocol/disco#info'/>`, romeo);
      const features = reply
        .getChild('query')!
        .getChildren('feature')
        .map((f) => f.attrs.var as string);
      expect(features).to.include.members([NS_MAM, `${NS_MAM}#extended`, 'urn:xmpp:fulltext:0']);
    });

    it('describes the supported query fields in a form', async () => {
      const romeo = await newUser('romeo');
      const r = await login(romeo, 'a', false);
      const reply = await iq(r, 'get', `<query xmlns='${NS_MAM}'/>`);
      expect(reply.attrs.type).to.equal('result');
      const x = reply.getChild('query', NS_MAM)!.getChild('x', 'jabber:x:data')!;
      expect(x.attrs.type).to.equal('form');
      const fields = new Map(x.getChildren('field').map((f) => [f.attrs.var as string, f]));
      expect(fields.get('FORM_TYPE')!.getChildText('value')).to.equal(NS_MAM);
      expect([...fields.keys()]).to.include.members([
        'with',
        'start',
        'end',
        'before-id',
        'after-id',
        'ids',
        '{urn:xmpp:fulltext:0}fulltext',
      ]);
      expect(fields.get('with')!.attrs.type).to.equal('jid-single');
    });

    // ---- archiving and stanza ids ------------------------------------------------------

    it('archives a chat message in both parties’ archives, and tells the recipient its archive id', async () => {
      const p = await pair();
      p.r.send(
        `<message to='${p.juliet}' type='chat' id='m1'><body>But soft!</body><origin-id xmlns='${NS_SID}' id='o-1'/></message>`,
      );
      const got = await p.j.expect(
        `<message from='${p.r.jid}' to='${p.juliet}' type='chat' id='m1'><body>But soft!</body>
        <origin-id xmlns='${NS_SID}' id='o-1'/><stanza-id xmlns='${NS_SID}' by='${p.juliet}' id='{$jid1}'/></message>`,
      );
      expect(got.getChildren('stanza-id', NS_SID)).to.have.length(1);

      const theirs = await query(p.j);
      expect(theirs.iq.attrs.type).to.equal('result');
      expect(theirs.results).to.have.length(1);
      const entry = archived(theirs.results[0]!);
      expect(entry.id, 'the delivered stanza-id is the archive id').to.equal(p.j.vars.get('jid1'));
      expect(entry).to.include({ body: 'But soft!', from: p.r.jid, to: p.juliet });
      expect(theirs.results[0]!.attrs.to).to.equal(p.j.jid);

      const mine = await query(p.r);
      expect(bodies(mine)).to.deep.equal(['But soft!']);
      const mineEntry = archived(mine.results[0]!);
      expect(mineEntry).to.include({ from: p.r.jid, to: p.juliet });
      expect(Math.abs(Date.parse(mineEntry.stamp) - Date.now())).to.be.below(10_000);
    });

    it('removes forged stanza-ids claiming to be the user’s and keeps those of others', async () => {
      const p = await pair();
      p.r.send(
        `<message to='${p.juliet}' type='chat' id='f1'><body>trust me</body>
        <stanza-id xmlns='${NS_SID}' by='${p.juliet}' id='forged-for-juliet'/>
        <stanza-id xmlns='${NS_SID}' by='${p.romeo}' id='forged-for-romeo'/>
        <stanza-id xmlns='${NS_SID}' by='chat.example' id='from-elsewhere'/></message>`,
      );
      const got = await p.j.expect(`<message from='${p.r.jid}' id='f1'><body>trust me</body></message>`);
      const ids = got
        .getChildren('stanza-id', NS_SID)
        .map((s) => `${s.attrs.by as string}=${s.attrs.id as string}`);
      expect(ids).to.have.length(2);
      expect(ids).to.include('chat.example=from-elsewhere');
      const own = got.getChildren('stanza-id', NS_SID).find((s) => s.attrs.by === p.juliet)!;
      expect(own.attrs.id).to.not.equal('forged-for-juliet');
      const theirs = await query(p.j);
      expect(archived(theirs.results[0]!).id).to.equal(own.attrs.id);
      // Romeo's archived copy carries no forged id of his either.
      const mine = await query(p.r);
      const stored = mine.results[0]!.getChild('result')!.getChild('forwarded')!.getChild('message')!;
      expect(stored.getChildren('stanza-id', NS_SID).map((s) => s.attrs.id)).to.deep.equal([
        'from-elsewhere',
      ]);
    });

    it('removes a forged stanza-id from a message that did not come from a local client', async () => {
      const juliet = await newUser('juliet');
      const j = await login(juliet, 'chamber');
      // As a message from another server would arrive (no local client, no pre-message hooks).
      await server.server.router.route(
        parse(
          `<message xmlns='jabber:client' from='mallory@remote.example/x' to='${juliet}' type='chat' id='r1'>` +
            `<body>from afar</body><stanza-id xmlns='${NS_SID}' by='${juliet}' id='forged'/></message>`,
        ),
      );
      const got = await j.expect(
        `<message from='mallory@remote.example/x' id='r1'><body>from afar</body></message>`,
      );
      const ids = got.getChildren('stanza-id', NS_SID);
      expect(ids).to.have.length(1);
      expect(ids[0]!.attrs.id).to.not.equal('forged');
      const theirs = await query(j);
      expect(theirs.results.map((x) => archived(x).id)).to.deep.equal([ids[0]!.attrs.id]);
      expect(archived(theirs.results[0]!).from).to.equal('mallory@remote.example/x');
    });

    it('puts the sender’s archive id on the <sent/> carbon, not on the message that leaves', async () => {
      const p = await pair();
      const other = await login(p.romeo, 'phone');
      await p.r.expect(`<presence from='${other.jid}'/>`);
      await other.expect(`<presence from='${p.r.jid}'/>`);
      const enable = await iq(other, 'set', `<enable xmlns='${NS_CARBONS}'/>`);
      expect(enable.attrs.type).to.equal('result');
      p.r.send(`<message to='${p.juliet}' type='chat' id='c1'><body>copy me</body></message>`);
      const delivered = await p.j.expect(`<message from='${p.r.jid}' id='c1'><body>copy me</body></message>`);
      expect(delivered.getChildren('stanza-id', NS_SID).map((s) => s.attrs.by)).to.deep.equal([p.juliet]);
      const carbon = await other.expect(
        `<message from='${p.romeo}'><sent xmlns='${NS_CARBONS}'><forwarded xmlns='${NS_FORWARD}'>
        <message id='c1'><stanza-id xmlns='${NS_SID}' by='${p.romeo}' id='{$romeoId}'/></message></forwarded></sent></message>`,
      );
      expect(carbon).to.not.equal(undefined);
      const mine = await query(p.r);
      expect(archived(mine.results[0]!).id).to.equal(other.vars.get('romeoId'));
    });

    it('adds the stanza-id before a message is stored offline', async () => {
      const romeo = await newUser('romeo');
      const juliet = await newUser('juliet');
      const r = await login(romeo, 'balcony');
      r.send(`<message to='${juliet}' type='chat' id='off1'><body>while you slept</body></message>`);
      await r.expectNothing();
      const j = await login(juliet, 'chamber', false);
      j.send('<presence/>');
      await j.expect(`<presence from='${j.jid}'/>`);
      const got = await j.expect(
        `<message from='${r.jid}' id='off1'><body>while you slept</body><stanza-id xmlns='${NS_SID}' by='${juliet}' id='{$offId}'/></message>`,
      );
      expect(got).to.not.equal(undefined);
      const theirs = await query(j);
      expect(theirs.results.map((x) => archived(x).id)).to.deep.equal([j.vars.get('offId')]);
    });

    it('archives receipts, markers and corrections, but not chat states, headlines or errors', async () => {
      const p = await pair();
      const send = (xml: string) => p.r.send(xml);
      send(
        `<message to='${p.juliet}' type='chat' id='a1'><body>one</body><request xmlns='urn:xmpp:receipts'/></message>`,
      );
      send(
        `<message to='${p.juliet}' type='chat' id='a2'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>`,
      );
      send(
        `<message to='${p.juliet}' type='chat' id='a3'><received xmlns='urn:xmpp:receipts' id='x'/></message>`,
      );
      send(
        `<message to='${p.juliet}' type='chat' id='a4'><displayed xmlns='urn:xmpp:chat-markers:0' id='x'/></message>`,
      );
      send(`<message to='${p.juliet}' type='headline' id='a5'><body>news</body></message>`);
      send(
        `<message to='${p.juliet}' type='chat' id='a6'><body>one!</body><replace xmlns='urn:xmpp:message-correct:0' id='a1'/></message>`,
      );
      send(
        `<message to='${p.juliet}' type='chat' id='a7'><body>quiet</body><no-store xmlns='urn:xmpp:hints'/></message>`,
      );
      for (const id of ['a1', 'a2', 'a3', 'a4', 'a5', 'a6', 'a7']) await p.j.expect(`<message id='${id}'/>`);
      for (const c of [p.j, p.r]) {
        const outcome = await query(c, set('<max>5</max>'));
        const ids = outcome.results.map(
          (x) => x.getChild('result')!.getChild('forwarded')!.getChild('message')!.attrs.id as string,
        );
        expect(ids, c.name).to.deep.equal(['a1', 'a3', 'a4', 'a6']);
      }
    });

    // ---- paging --------------------------------------------------------------------

    it('answers a query of an empty archive with no results, complete, count 0', async () => {
      const romeo = await newUser('romeo');
      const r = await login(romeo, 'a', false);
      const outcome = await query(r);
      expect(outcome.iq.attrs.type).to.equal('result');
      expect(outcome.results).to.have.length(0);
      expect(complete(outcome)).to.equal(true);
      expect(rsm(outcome)).to.deep.equal({ first: undefined, last: undefined, count: 0 });
    });

    it('returns a whole archive that fits one page, oldest first, complete, with first/last/count', async () => {
      const p = await pair();
      const ids = await converse(p, ['a', 'b', 'c']);
      const outcome = await query(p.j, set('<max>3</max>'));
      expect(bodies(outcome)).to.deep.equal(['a', 'b', 'c']);
      expect(complete(outcome)).to.equal(true);
      expect(rsm(outcome)).to.deep.equal({ first: ids[0], last: ids[2], count: 3 });
    });

    it('gives the last page for an empty <before/>, and pages back to the start', async () => {
      const p = await pair();
      const ids = await converse(p, numbered(5));
      const last = await query(p.j, set('<max>2</max><before/>'));
      expect(bodies(last)).to.deep.equal(['m4', 'm5']);
      expect(complete(last)).to.equal(false);
      expect(rsm(last)).to.deep.equal({ first: ids[3], last: ids[4], count: 5 });
      const middle = await query(p.j, set(`<max>2</max><before>${rsm(last).first}</before>`));
      expect(bodies(middle)).to.deep.equal(['m2', 'm3']);
      expect(complete(middle)).to.equal(false);
      const first = await query(p.j, set(`<max>2</max><before>${rsm(middle).first}</before>`));
      expect(bodies(first)).to.deep.equal(['m1']);
      expect(complete(first)).to.equal(true);
    });

    it('pages forward through three pages with <after/> the previous last', async () => {
      const p = await pair();
      await converse(p, numbered(6));
      const seen: (string | null)[][] = [];
      const completes: boolean[] = [];
      let after = '';
      for (let page = 0; page < 3; page++) {
        const outcome = await query(p.r, set(`<max>2</max>${after}`));
        seen.push(bodies(outcome));
        completes.push(complete(outcome));
        expect(rsm(outcome).count).to.equal(6);
        after = `<after>${rsm(outcome).last}</after>`;
      }
      expect(seen).to.deep.equal([
        ['m1', 'm2'],
        ['m3', 'm4'],
        ['m5', 'm6'],
      ]);
      expect(completes).to.deep.equal([false, false, true]);
      const beyond = await query(p.r, set(`<max>2</max>${after}`));
      expect(beyond.results).to.have.length(0);
      expect(complete(beyond)).to.equal(true);
    });

    it('returns a page newest first with <flip-page/>', async () => {
      const p = await pair();
      const ids = await converse(p, numbered(5));
      const outcome = await query(p.j, `${set('<max>3</max><before/>')}<flip-page/>`);
      expect(bodies(outcome)).to.deep.equal(['m5', 'm4', 'm3']);
      expect(rsm(outcome)).to.include({ first: ids[4], last: ids[2] });
    });

    it('caps <max/> at max_page and uses default_page without one', async () => {
      const p = await pair();
      await converse(p, numbered(MAX_PAGE + 2));
      const capped = await query(p.j, set('<max>1000</max>'));
      expect(capped.results).to.have.length(MAX_PAGE);
      expect(complete(capped)).to.equal(false);
      expect(rsm(capped).count).to.equal(MAX_PAGE + 2);
      const unsized = await query(p.j);
      expect(bodies(unsized)).to.deep.equal(['m1', 'm2', 'm3']);
    });

    it('answers <max>0</max> with only the count', async () => {
      const p = await pair();
      await converse(p, numbered(2));
      const outcome = await query(p.j, set('<max>0</max>'));
      expect(outcome.results).to.have.length(0);
      expect(rsm(outcome)).to.deep.equal({ first: undefined, last: undefined, count: 2 });
    });

    it('answers item-not-found for an unknown <after/> or <before/> id', async () => {
      const p = await pair();
      await converse(p, ['x']);
      for (const paging of ['<after>no-such-id</after>', '<before>no-such-id</before>']) {
        const outcome = await query(p.j, set(`<max>2</max>${paging}`));
        expect(outcome.iq.attrs.type).to.equal('error');
        expect(errorCondition(outcome.iq)).to.equal('item-not-found');
        expect(outcome.results).to.have.length(0);
      }
      const byForm = await query(p.j, form({ 'after-id': 'no-such-id' }));
      expect(errorCondition(byForm.iq)).to.equal('item-not-found');
    });

    it('refuses paging by <index/> as not implemented', async () => {
      const p = await pair();
      await converse(p, ['x']);
      const outcome = await query(p.j, set('<max>2</max><index>1</index>'));
      expect(errorCondition(outcome.iq)).to.equal('feature-not-implemented');
    });

    // ---- filters -------------------------------------------------------------------

    it('filters by contact: a bare JID matches the conversation with that contact only', async () => {
      const p = await pair();
      const nurse = await newUser('nurse');
      const n = await login(nurse, 'kitchen');
      await converse(p, ['to juliet']);
      p.r.send(`<message to='${nurse}' type='chat'><body>to the nurse</body></message>`);
      await n.expect(`<message><body>to the nurse</body></message>`);
      n.send(`<message to='${p.romeo}' type='chat'><body>from the nurse</body></message>`);
      await p.r.expect(`<message><body>from the nurse</body></message>`);

      const all = await query(p.r);
      expect(bodies(all)).to.deep.equal(['to juliet', 'to the nurse', 'from the nurse']);
      const withNurse = await query(p.r, form({ with: nurse }));
      expect(bodies(withNurse)).to.deep.equal(['to the nurse', 'from the nurse']);
      expect(rsm(withNurse).count).to.equal(2);
      const withJuliet = await query(p.r, form({ with: p.juliet }));
      expect(bodies(withJuliet)).to.deep.equal(['to juliet']);
    });

    it('filters by start and end (inclusive)', async () => {
      const romeo = await newUser('romeo');
      const user = romeo.split('@')[0]!;
      const store = server.server.storage.archive<string>(server.domain, 'archive');
      const t0 = Date.parse('2020-01-01T00:00:00Z');
      for (let i = 0; i < 5; i++) {
        await store.append(user, {
          when: t0 + i * DAY,
          with: 'juliet@localhost',
          value: `<message xmlns='jabber:client' from='juliet@localhost/x' to='${romeo}' type='chat'><body>day ${i}</body></message>`,
          text: `day ${i}`,
        });
      }
      const r = await login(romeo, 'a', false);
      const ranged = await query(r, form({ start: '2020-01-02T00:00:00Z', end: '2020-01-04T00:00:00Z' }));
      expect(bodies(ranged)).to.deep.equal(['day 1', 'day 2', 'day 3']);
      expect(archived(ranged.results[0]!).stamp).to.match(/^2020-01-02T00:00:00(\.000)?Z$/);
      const from = await query(r, form({ start: '2020-01-04T12:00:00+01:00' }));
      expect(bodies(from)).to.deep.equal(['day 4']);
      const bad = await query(r, form({ start: 'yesterday' }));
      expect(errorCondition(bad.iq)).to.equal('bad-request');
    });

    it('fetches messages by id (#extended ids)', async () => {
      const p = await pair();
      const ids = await converse(p, numbered(4));
      const outcome = await query(p.j, form({ ids: [ids[3]!, ids[1]!, 'unknown-id'] }));
      expect(bodies(outcome)).to.deep.equal(['m2', 'm4']);
    });

    it('bounds a query with after-id and before-id (#extended)', async () => {
      const p = await pair();
      const ids = await converse(p, numbered(6));
      const between = await query(p.j, form({ 'after-id': ids[0]!, 'before-id': ids[4]! }));
      expect(bodies(between)).to.deep.equal(['m2', 'm3', 'm4']);
      expect(complete(between)).to.equal(true);
      // before-id alone: a forward query from the start that stops there.
      const upTo = await query(p.j, `${form({ 'before-id': ids[4]! })}${set('<max>2</max>')}`);
      expect(bodies(upTo)).to.deep.equal(['m1', 'm2']);
      expect(complete(upTo)).to.equal(false);
      const lastBelow = await query(p.j, `${form({ 'before-id': ids[4]! })}${set('<max>2</max><before/>')}`);
      expect(bodies(lastBelow)).to.deep.equal(['m3', 'm4']);
    });

    it('searches the text of messages (XEP-0431)', async () => {
      const p = await pair();
      await converse(p, ['The quick brown fox', 'a lazy dog', 'quick thinking, Romeo', 'quickly now']);
      const outcome = await query(p.j, form({ '{urn:xmpp:fulltext:0}fulltext': 'QUICK' }));
      expect(bodies(outcome)).to.deep.equal(['The quick brown fox', 'quick thinking, Romeo']);
      const both = await query(p.j, form({ '{urn:xmpp:fulltext:0}fulltext': 'quick fox' }));
      expect(bodies(both)).to.deep.equal(['The quick brown fox']);
      expect(rsm(both).count).to.equal(1);
    });

    it('refuses unknown fields and malformed JIDs with bad-request', async () => {
      const romeo = await newUser('romeo');
      const r = await login(romeo, 'a', false);
      expect(errorCondition((await query(r, form({ colour: 'red' }))).iq)).to.equal('bad-request');
      expect(errorCondition((await query(r, form({ with: '@@bad' }))).iq)).to.equal('bad-request');
    });

    // ---- access ----------------------------------------------------------------------

    it('forbids reading or configuring another user’s archive', async () => {
      const p = await pair();
      await converse(p, ['secret']);
      const outcome = await query(p.r, '', p.juliet);
      expect(outcome.iq.attrs.type).to.equal('error');
      expect(errorCondition(outcome.iq)).to.equal('forbidden');
      expect(outcome.results).to.have.length(0);
      const meta = await iq(p.r, 'get', `<metadata xmlns='${NS_MAM}'/>`, p.juliet);
      expect(errorCondition(meta)).to.equal('forbidden');
      const prefs = await iq(p.r, 'set', `<prefs xmlns='${NS_MAM}' default='never'/>`, p.juliet);
      expect(errorCondition(prefs)).to.equal('forbidden');
      // Juliet's archive is as it was and still archives.
      await converse(p, ['still here']);
      expect(bodies(await query(p.j))).to.deep.equal(['secret', 'still here']);
    });

    it('answers own-archive queries addressed to the own bare JID', async () => {
      const p = await pair();
      await converse(p, ['hello']);
      expect(bodies(await query(p.j, '', p.juliet))).to.deep.equal(['hello']);
    });

    // ---- metadata ------------------------------------------------------------------

    it('reports the first and last archived message (#extended metadata)', async () => {
      const p = await pair();
      const empty = await iq(p.j, 'get', `<metadata xmlns='${NS_MAM}'/>`);
      expect(empty.attrs.type).to.equal('result');
      expect(
        empty.getChild('metadata', NS_MAM)!.children.filter((c) => typeof c !== 'string'),
      ).to.have.length(0);
      const ids = await converse(p, numbered(3));
      const meta = (await iq(p.j, 'get', `<metadata xmlns='${NS_MAM}'/>`)).getChild('metadata', NS_MAM)!;
      expect(meta.getChild('start')!.attrs.id).to.equal(ids[0]);
      expect(meta.getChild('end')!.attrs.id).to.equal(ids[2]);
      const start = Date.parse(meta.getChild('start')!.attrs.timestamp as string);
      const end = Date.parse(meta.getChild('end')!.attrs.timestamp as string);
      expect(end).to.be.at.least(start);
      expect(Math.abs(end - Date.now())).to.be.below(10_000);
    });

    // ---- preferences -----------------------------------------------------------------

    it('has default preferences of always, and stores what the user sets', async () => {
      const romeo = await newUser('romeo');
      const r = await login(romeo, 'a', false);
      const initial = await iq(r, 'get', `<prefs xmlns='${NS_MAM}'/>`);
      expect(initial.getChild('prefs', NS_MAM)!.attrs.default).to.equal('always');
      const setReply = await iq(
        r,
        'set',
        `<prefs xmlns='${NS_MAM}' default='roster'><always><jid>nurse@localhost</jid></always><never><jid>tybalt@localhost</jid></never></prefs>`,
      );
      expect(setReply.attrs.type).to.equal('result');
      const read = (await iq(r, 'get', `<prefs xmlns='${NS_MAM}'/>`)).getChild('prefs', NS_MAM)!;
      expect(read.attrs.default).to.equal('roster');
      expect(
        read
          .getChild('always')!
          .getChildren('jid')
          .map((j) => j.getText()),
      ).to.deep.equal(['nurse@localhost']);
      expect(
        read
          .getChild('never')!
          .getChildren('jid')
          .map((j) => j.getText()),
      ).to.deep.equal(['tybalt@localhost']);
      const bad = await iq(r, 'set', `<prefs xmlns='${NS_MAM}' default='sometimes'/>`);
      expect(errorCondition(bad)).to.equal('bad-request');
    });

    it('archives nothing in the archive of a user who chose never, in either direction', async () => {
      const p = await pair();
      await iq(p.r, 'set', `<prefs xmlns='${NS_MAM}' default='never'/>`);
      await converse(p, ['outgoing']);
      p.j.send(`<message to='${p.romeo}' type='chat' id='in1'><body>incoming</body></message>`);
      const got = await p.r.expect(`<message from='${p.j.jid}' id='in1'><body>incoming</body></message>`);
      expect(got.getChildren('stanza-id', NS_SID), 'no archive id when not archived').to.have.length(0);
      expect((await query(p.r)).results).to.have.length(0);
      // Juliet's preferences are her own.
      expect(bodies(await query(p.j))).to.deep.equal(['outgoing', 'incoming']);
    });

    it('with default roster, archives only conversations with roster contacts (and listed JIDs)', async () => {
      const p = await pair();
      const nurse = await newUser('nurse');
      const tybalt = await newUser('tybalt');
      const n = await login(nurse, 'kitchen');
      const t = await login(tybalt, 'street');
      const added = await iq(p.r, 'set', `<query xmlns='jabber:iq:roster'><item jid='${p.juliet}'/></query>`);
      expect(added.attrs.type).to.equal('result');
      await iq(
        p.r,
        'set',
        `<prefs xmlns='${NS_MAM}' default='roster'><always><jid>${tybalt}</jid></always></prefs>`,
      );
      await converse(p, ['to a contact']);
      p.r.send(`<message to='${nurse}' type='chat'><body>to a stranger</body></message>`);
      await n.expect(`<message><body>to a stranger</body></message>`);
      t.send(`<message to='${p.romeo}' type='chat'><body>from a listed stranger</body></message>`);
      await p.r.expect(`<message><body>from a listed stranger</body></message>`);
      expect(bodies(await query(p.r))).to.deep.equal(['to a contact', 'from a listed stranger']);
    });

    it('never-listed contacts are not archived under default always', async () => {
      const p = await pair();
      await iq(
        p.r,
        'set',
        `<prefs xmlns='${NS_MAM}' default='always'><never><jid>${p.juliet}</jid></never></prefs>`,
      );
      await converse(p, ['hidden']);
      expect((await query(p.r)).results).to.have.length(0);
      expect(bodies(await query(p.j))).to.deep.equal(['hidden']);
    });

    // ---- retention -------------------------------------------------------------------

    it('purges messages older than the retention period and keeps newer ones', async () => {
      const p = await pair();
      const user = p.juliet.split('@')[0]!;
      const store = server.server.storage.archive<string>(server.domain, 'archive');
      await store.append(user, {
        when: Date.now() - 40 * DAY,
        with: p.romeo,
        value: `<message xmlns='jabber:client' from='${p.romeo}/old' to='${p.juliet}'><body>ancient</body></message>`,
        text: 'ancient',
      });
      await converse(p, ['recent']);
      expect(bodies(await query(p.j))).to.deep.equal(['ancient', 'recent']);
      const removed = await purgeArchive(store, Date.now() - 30 * DAY);
      expect(removed).to.be.at.least(1);
      expect(bodies(await query(p.j))).to.deep.equal(['recent']);
      // Per user: an injected clock far ahead removes everything of that user only.
      await purgeArchive(store, Date.now() + DAY, { user });
      expect((await query(p.j)).results).to.have.length(0);
      expect(bodies(await query(p.r))).to.deep.equal(['recent']);
    });
  });

describe('message archive retention job', function () {
  this.timeout(20_000);

  it('deletes expired messages in the background', async () => {
    const server = await startTestServer({
      yaml: `${MODULES}\nmodule_options: { mam: { retention: 1d, check_interval_seconds: 1 } }`,
    });
    try {
      await server.addUser('romeo', PASSWORD);
      const store = server.server.storage.archive<string>(server.domain, 'archive');
      for (const [age, body] of [
        [3 * DAY, 'too old'],
        [60_000, 'fresh'],
      ] as const) {
        await store.append('romeo', {
          when: Date.now() - age,
          with: 'juliet@localhost',
          value: `<message xmlns='jabber:client' from='juliet@localhost/x' to='romeo@localhost'><body>${body}</body></message>`,
        });
      }
      const r = await XmppClient.connect({ port: server.port, name: 'romeo' });
      clients.push(r);
      await r.login('romeo', PASSWORD, { resource: 'a' });
      await new Promise((resolve) => setTimeout(resolve, 1500));
      expect(bodies(await query(r))).to.deep.equal(['fresh']);
    } finally {
      await Promise.all(clients.splice(0).map((c) => c.shutdown()));
      await server.stop();
    }
  });

  it('refuses a retention period it cannot read', async () => {
    let error: unknown;
    try {
      const server = await startTestServer({
        yaml: `${MODULES}\nmodule_options: { mam: { retention: forever } }`,
      });
      await server.stop();
    } catch (err) {
      error = err;
    }
    expect(String(error)).to.match(/retention/);
  });
});

for (const waitForArchive of [false, true])
  describe(`message archiving with wait_for_archive: ${waitForArchive} (sqlite storage)`, function () {
    this.timeout(20_000);

    it('gives both archives the message, and each stanza-id finds it at once', async () => {
      const server = await startTestServer({
        yaml: `${MODULES}\nmodule_options: { mam: { wait_for_archive: ${waitForArchive} } }`,
        sqlite: true,
      });
      const clients: XmppClient[] = [];
      try {
        await server.addUser('romeo', PASSWORD);
        await server.addUser('juliet', PASSWORD);
        const r = await XmppClient.connect({ port: server.port, name: 'romeo' });
        const j = await XmppClient.connect({ port: server.port, name: 'juliet' });
        clients.push(r, j);
        await r.login('romeo', PASSWORD, { resource: 'a' });
        await j.login('juliet', PASSWORD, { resource: 'b' });
        j.send('<presence/>');
        await j.expect(`<presence from='${j.jid}'/>`);
        const juliet = `juliet@${server.domain}`;
        const ids: string[] = [];
        for (let i = 0; i < 5; i++) {
          r.send(`<message to='${juliet}' type='chat'><body>m${i}</body></message>`);
          const got = await j.expect(`<message type='chat'><body>m${i}</body></message>`);
          ids.push(got.getChild('stanza-id', NS_SID)!.attrs.id as string);
          // Asked straight away, the recipient's archive already has it.
          expect(bodies(await query(j, form({ ids: ids[i]! })))).to.deep.equal([`m${i}`]);
        }
        // A burst, then one query for all of it.
        for (let i = 5; i < 20; i++)
          r.send(`<message to='${juliet}' type='chat'><body>m${i}</body></message>`);
        for (let i = 5; i < 20; i++) {
          const got = await j.expect(`<message type='chat'><body>m${i}</body></message>`);
          ids.push(got.getChild('stanza-id', NS_SID)!.attrs.id as string);
        }
        expect(bodies(await query(j, form({ ids: ids.slice(5) }) + set('<max>50</max>')))).to.deep.equal(
          Array.from({ length: 15 }, (_, i) => `m${i + 5}`),
        );
        expect(bodies(await query(r, set('<max>50</max>')))).to.deep.equal(
          Array.from({ length: 20 }, (_, i) => `m${i}`),
        );
      } finally {
        await Promise.all(clients.map((c) => c.shutdown()));
        await server.stop();
      }
    });
  });
