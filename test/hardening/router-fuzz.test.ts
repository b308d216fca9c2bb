// Property-based fuzzing of the router and the modules behind it, over a
// real connection: fast-check builds random (well-formed) stanzas — names
// among message/presence/iq and others, odd JIDs and types, random payloads in
// the namespaces the server handles — and a logged-in client sends them in
// batches. After every batch the fuzzing client pings (its stanzas are
// handled in order, so the answer comes after everything before it) and a
// control client on its own connection pings too: the server must never
// crash or hang, and the only stream errors a stanza may cause are the
// documented ones. The run is bounded both in samples and in time (~5 s).
import { expect } from 'chai';
import fc from 'fast-check';
import type { Element } from 'ltx';
import { useServerAndPool } from '../helpers/fixtures.ts';
import { escapeXml, type XmppClient } from '../helpers/xmpp-client.ts';

const USERS = { fuzz: 'pw-fuzz', peer: 'pw-peer', control: 'pw-control' };
const TIME_BUDGET_MS = 5000;
const MAX_RUNS = 400;

/** Stream errors a client can legitimately provoke with a single stanza. */
const ALLOWED_STREAM_ERRORS = new Set([
  'invalid-from',
  'unsupported-stanza-type',
  'policy-violation',
  'not-well-formed',
  'restricted-xml',
  'bad-format',
  'invalid-namespace',
  'improper-addressing',
]);

const JIDS = [
  'localhost',
  'peer@localhost',
  'peer@localhost/r',
  'peer@localhost/missing',
  'fuzz@localhost',
  'fuzz@localhost/fz',
  'nobody@localhost',
  'conference.localhost',
  'room@conference.localhost',
  'room@conference.localhost/nick',
  'PEER@LOCALHOST/r',
  'capulet.example',
  'juliet@capulet.example/balcony',
  '',
  '@localhost',
  'a@b@c',
  'localhost/resource',
  '\u2603@localhost',
  'peer@localhost/ spaced ',
  'user@[::1]',
  'user@127.0.0.1',
  `${'l'.repeat(1100)}@localhost`,
  `peer@localhost/${'r'.repeat(1100)}`,
  'x@localhost/\u0301',
];
const FROMS = ['fuzz@localhost', 'fuzz@localhost/fz', 'peer@localhost/r', 'localhost'];
const TYPES = [
  undefined,
  'get',
  'set',
  'result',
  'error',
  'chat',
  'normal',
  'groupchat',
  'headline',
  'subscribe',
  'subscribed',
  'unsubscribe',
  'unsubscribed',
  'probe',
  'unavailable',
  'bogus',
  '',
];
const NAMES = ['message', 'presence', 'iq'];
/** Not stanzas: each ends the stream with unsupported-stanza-type, so they are rare. */
const OTHER_NAMES = ['frob', 'stream:features', 'r'];
const PAYLOAD_NS = [
  'urn:xmpp:ping',
  'jabber:iq:roster',
  'jabber:iq:private',
  'vcard-temp',
  'jabber:iq:version',
  'jabber:iq:last',
  'urn:xmpp:time',
  'http://jabber.org/protocol/disco#info',
  'http://jabber.org/protocol/disco#items',
  'urn:xmpp:carbons:2',
  'urn:xmpp:blocking',
  'urn:xmpp:mam:2',
  'urn:xmpp:sid:0',
  'urn:xmpp:forward:0',
  'http://jabber.org/protocol/muc',
  'http://jabber.org/protocol/muc#admin',
  'http://jabber.org/protocol/muc#owner',
  'jabber:iq:register',
  'urn:xmpp:sm:3',
  'jabber:x:data',
  'urn:example:unknown',
];
const CHILD_NAMES = [
  'query',
  'ping',
  'item',
  'enable',
  'disable',
  'block',
  'unblock',
  'blocklist',
  'vCard',
  'x',
  'field',
  'value',
  'body',
  'subject',
  'thread',
  'error',
  'stanza-id',
  'forwarded',
  'received',
  'sent',
  'private',
  'set',
  'max',
  'remove',
];
const ATTR_NAMES = [
  'jid',
  'node',
  'var',
  'type',
  'subscription',
  'name',
  'by',
  'id',
  'ask',
  'affiliation',
  'role',
  'nick',
  'queryid',
  'with',
];
const TEXTS = [
  '',
  'hi',
  '0',
  '-1',
  '99999999999',
  'true',
  '\u{1f600}',
  '<&>',
  'x'.repeat(300),
  '2020-01-01T00:00:00Z',
];

interface Node {
  name: string;
  ns?: string;
  attrs: [string, string][];
  text: string;
  children: Node[];
}

const attrArb = fc.tuple(
  fc.constantFrom(...ATTR_NAMES),
  fc.oneof(fc.constantFrom(...JIDS), fc.constantFrom(...TEXTS)),
);

/** A payload element with children down to `depth` more levels (bounded: no recursion blow-up). */
function nodeArbitrary(depth: number): fc.Arbitrary<Node> {
  return fc.record({
    name: fc.constantFrom(...CHILD_NAMES),
    ns: fc.option(fc.constantFrom(...PAYLOAD_NS), { nil: undefined }),
    attrs: fc.uniqueArray(attrArb, { maxLength: 3, selector: ([k]) => k }),
    text: fc.constantFrom(...TEXTS),
    children: depth > 0 ? fc.array(nodeArbitrary(depth - 1), { maxLength: 3 }) : fc.constant([]),
  });
}
const nodeArb = nodeArbitrary(3);

const stanzaArb = fc.record({
  name: fc.oneof(
    { weight: 40, arbitrary: fc.constantFrom(...NAMES) },
    { weight: 1, arbitrary: fc.constantFrom(...OTHER_NAMES) },
  ),
  to: fc.option(fc.constantFrom(...JIDS), { nil: undefined, freq: 5 }),
  // Mostly absent: a forged from ends the stream (invalid-from), so it is rare.
  from: fc.oneof(
    { weight: 40, arbitrary: fc.constant(undefined) },
    { weight: 1, arbitrary: fc.constantFrom(...FROMS) },
  ),
  type: fc.constantFrom(...TYPES),
  id: fc.option(fc.constantFrom('a', 'b', '', 'x'.repeat(200)), { nil: undefined, freq: 4 }),
  lang: fc.option(fc.constantFrom('en', '', 'x-klingon'), { nil: undefined, freq: 5 }),
  children: fc.array(nodeArb, { maxLength: 3 }),
});

type Stanza = typeof stanzaArb extends fc.Arbitrary<infer T> ? T : never;

function serializeNode(n: Node): string {
  const attrs = [
    ...(n.ns ? [` xmlns='${escapeXml(n.ns)}'`] : []),
    ...n.attrs.map(([k, v]) => ` ${k}='${escapeXml(v)}'`),
  ].join('');
  const inner = escapeXml(n.text) + n.children.map(serializeNode).join('');
  return inner ? `<${n.name}${attrs}>${inner}</${n.name}>` : `<${n.name}${attrs}/>`;
}

function serialize(s: Stanza, seq: number): string {
  const attrs: string[] = [];
  if (s.to !== undefined) attrs.push(` to='${escapeXml(s.to)}'`);
  if (s.from !== undefined) attrs.push(` from='${escapeXml(s.from)}'`);
  if (s.type !== undefined) attrs.push(` type='${escapeXml(s.type)}'`);
  if (s.id !== undefined) attrs.push(` id='${escapeXml(s.id)}${s.id ? `-${seq}` : ''}'`);
  if (s.lang !== undefined) attrs.push(` xml:lang='${escapeXml(s.lang)}'`);
  // A prefixed name needs its prefix bound; the stream prefix is declared on the header.
  const name = s.name;
  const body = s.children.map(serializeNode).join('');
  return body ? `<${name}${attrs.join('')}>${body}</${name}>` : `<${name}${attrs.join('')}/>`;
}

function streamErrorCondition(el: Element): string | null {
  if (el.name !== 'stream:error') return null;
  const cond = el.children.find((k) => typeof k !== 'string' && k.name !== 'text');
  return typeof cond === 'object' ? cond.name : '(none)';
}

describe('hardening: router fuzzing (fast-check, ~5 s)', function () {
  this.timeout(40_000);
  const { pool } = useServerAndPool({ users: USERS });

  it('never crashes, hangs or ends a stream with an undocumented error', async () => {
    const peer = await pool.login('peer', 'pw-peer', { resource: 'r' });
    const control = await pool.login('control', 'pw-control', { resource: 'c' });
    let fuzz = await pool.login('fuzz', 'pw-fuzz', { resource: 'fz' });
    const seen = new Map<string, number>();
    let batches = 0;
    let stanzas = 0;
    let seq = 0;

    // The peer receives whatever is routed to it; drain its queue so it never backs up.
    let draining = true;
    const drainPeer = (async () => {
      while (draining) {
        const event = await peer.next(200).catch(() => null);
        if (event?.kind === 'eof') break;
      }
    })();

    const ping = async (c: XmppClient, what: string): Promise<string | null> => {
      const id = `ping-${++seq}`;
      c.send(`<iq type='get' id='${id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
      for (let i = 0; i < 2000; i++) {
        const event = await c.next(5000).catch((err: unknown) => {
          throw new Error(`${what}: no answer to a ping (the server hangs?)\n${String(err)}`);
        });
        if (event.kind === 'eof') return 'eof';
        if (event.kind !== 'element') continue;
        const condition = streamErrorCondition(event.element);
        if (condition !== null) return condition;
        if (event.element.name === 'iq' && event.element.attrs.id === id) return null;
      }
      throw new Error(`${what}: more than 2000 stanzas before the ping answer`);
    };

    const started = Date.now();
    await fc.assert(
      fc.asyncProperty(fc.array(stanzaArb, { minLength: 1, maxLength: 8 }), async (batch) => {
        if (Date.now() - started > TIME_BUDGET_MS) return; // budget spent: the remaining runs are no-ops
        batches++;
        stanzas += batch.length;
        const xml = batch.map((s) => serialize(s, ++seq)).join('');
        fuzz.sendRaw(xml);
        const outcome = await ping(fuzz, 'fuzzing client');
        if (outcome !== null) {
          seen.set(outcome, (seen.get(outcome) ?? 0) + 1);
          expect(
            ALLOWED_STREAM_ERRORS.has(outcome),
            `stream ended with '${outcome}' after:\n${xml}`,
          ).to.equal(true);
          fuzz.destroy();
          fuzz = await pool.login('fuzz', 'pw-fuzz', { resource: `fz${seq}` });
        }
        const controlOutcome = await ping(control, 'control client');
        expect(controlOutcome, `the control client was cut off after:\n${xml}`).to.equal(null);
      }),
      { numRuns: MAX_RUNS, seed: Number(process.env.FUZZ_SEED ?? 0x5eed) || undefined, endOnFailure: true },
    );
    draining = false;
    await drainPeer;
    if (process.env.FUZZ_VERBOSE) {
      console.log(`  ${batches} batches, ${stanzas} stanzas; stream errors: ${JSON.stringify([...seen])}`);
    }
    expect(batches, 'batches sent').to.be.above(10);
    expect(stanzas).to.be.above(batches - 1);
    expect(Date.now() - started).to.be.below(TIME_BUDGET_MS + 15_000);
    // A fresh client still logs in after all of it.
    const after = await pool.login('control', 'pw-control', { resource: 'after' });
    expect(await ping(after, 'fresh client')).to.equal(null);
  });
});
