import { expect } from 'chai';
import fc from 'fast-check';
import { StreamParser } from '../../src/xml/parser.ts';
import type { ParserLimits } from '../../src/xml/parser.ts';
import { Element } from '../../src/xml/element.ts';

const LIMITS: ParserLimits = { maxStanzaBytes: 4096, maxDepth: 8, maxAttributes: 8 };
const HEADER =
  "<?xml version='1.0'?><stream:stream xmlns='jabber:client' " +
  "xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>";

/**
 * Parse `input` delivered in pieces cut at `cuts`, returning every callback as
 * a string. Throws if the parser throws or calls the handler after an error.
 */
function events(input: Uint8Array, cuts: number[] = []): string[] {
  const out: string[] = [];
  let failed = false;
  const check = (): void => {
    if (failed) throw new Error('handler called after error()');
  };
  const parser = new StreamParser(
    {
      streamStart: (h) => {
        check();
        out.push(`start ${h.name} ${h.namespace} ${JSON.stringify(h.attrs)}`);
      },
      stanza: (e) => {
        check();
        out.push(e.toString());
      },
      streamEnd: () => {
        check();
        out.push('end');
      },
      error: (condition, text) => {
        check();
        failed = true;
        out.push(`error ${condition}: ${text}`);
      },
    },
    LIMITS,
  );
  let start = 0;
  for (const cut of [...new Set(cuts.map((c) => c % (input.length + 1)))].sort((a, b) => a - b)) {
    parser.write(input.subarray(start, cut));
    start = cut;
  }
  parser.write(input.subarray(start));
  return out;
}

const isXmlChar = (c: number): boolean =>
  c === 0x09 ||
  c === 0x0a ||
  c === 0x0d ||
  (c >= 0x20 && c <= 0xd7ff) ||
  (c >= 0xe000 && c <= 0xfffd) ||
  (c >= 0x10000 && c <= 0x10ffff);

/** Characters biased toward the interesting ones: markup, brackets, multi-byte. */
const charArb = (extraExcluded: number[]): fc.Arbitrary<string> =>
  fc
    .oneof(
      fc.constantFrom(
        'a',
        'Z',
        ' ',
        '<',
        '>',
        '&',
        ']',
        "'",
        '"',
        '\n',
        '\t',
        '\u00e9',
        '\u20ac',
        '\u{1F600}',
      ),
      fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
      fc
        .integer({ min: 0, max: 0x10ffff })
        .filter(isXmlChar)
        .map((c) => String.fromCodePoint(c)),
    )
    .filter((ch) => !extraExcluded.includes(ch.codePointAt(0) as number));

// CR is normalized away in text; tab/LF/CR are normalized to spaces in attribute values.
const textArb = fc.array(charArb([0x0d]), { minLength: 1, maxLength: 12 }).map((a) => a.join(''));
const attrValueArb = fc.array(charArb([0x09, 0x0a, 0x0d]), { maxLength: 8 }).map((a) => a.join(''));
const nameArb = fc.constantFrom('a', 'b', 'body', 'x-y', 'n.1', '_z', '\u00e9l\u00e9ment', 'A9');

interface Node {
  name: string;
  attrs: [string, string][];
  children: (Node | string)[];
}

const attrsArb = fc.uniqueArray(
  fc.tuple(fc.constantFrom('id', 'to', 'type', 'xml:lang', 'v-1', '\u00fc'), attrValueArb),
  {
    maxLength: 4,
    selector: (t) => t[0],
  },
);

const treeArb: fc.Arbitrary<Node> = fc.letrec<{ node: Node }>((tie) => ({
  node: fc.record({
    name: nameArb,
    attrs: attrsArb,
    children: fc.array(fc.oneof({ depthSize: 'small', withCrossShrink: true }, textArb, tie('node')), {
      maxLength: 4,
    }),
  }),
})).node;

function toElement(n: Node, rootNs?: string): Element {
  const e = new Element(n.name);
  if (rootNs !== undefined) e.attrs.xmlns = rootNs;
  for (const [k, v] of n.attrs) e.attrs[k] = v;
  for (const c of n.children) {
    // The parser merges adjacent text into one text node.
    const last = e.children[e.children.length - 1];
    if (typeof c === 'string') {
      if (typeof last === 'string') e.children[e.children.length - 1] = last + c;
      else e.children.push(c);
    } else {
      e.cnode(toElement(c));
    }
  }
  return e;
}

function depth(n: Node): number {
  return 1 + Math.max(0, ...n.children.map((c) => (typeof c === 'string' ? 0 : depth(c))));
}

const validStreamArb = fc
  .array(
    treeArb.filter((t) => depth(t) <= LIMITS.maxDepth),
    { maxLength: 5 },
  )
  .chain((trees) =>
    fc.record({
      trees: fc.constant(trees),
      gaps: fc.array(fc.constantFrom('', ' ', '\n', '\r\n\t '), {
        minLength: trees.length,
        maxLength: trees.length,
      }),
    }),
  )
  .map(({ trees, gaps }) => {
    const stanzas = trees.map((t) => toElement(t).toString());
    const text = HEADER + stanzas.map((s, i) => gaps[i] + s).join('') + '</stream:stream>';
    const expected = trees.map((t) => toElement(t, 'jabber:client').toString());
    return { bytes: Buffer.from(text), expected };
  })
  .filter(({ bytes }) => bytes.length < 3 * LIMITS.maxStanzaBytes);

const cutsArb = fc.array(fc.nat(), { maxLength: 12 });

type Mutation = { at: number; kind: 'set' | 'insert' | 'delete' | 'token'; byte: number; token: string };
const TOKENS = [
  '<!--',
  '-->',
  '<?',
  '<!DOCTYPE x>',
  '&foo;',
  '&#0;',
  ']]>',
  '<a>',
  '</a>',
  "='",
  '\u0000',
  'xmlns:p',
  '<![CDATA[',
];
const mutationArb: fc.Arbitrary<Mutation> = fc.record({
  at: fc.nat(),
  kind: fc.constantFrom('set', 'insert', 'delete', 'token'),
  byte: fc.integer({ min: 0, max: 255 }),
  token: fc.constantFrom(...TOKENS),
});

function mutate(input: Buffer, muts: Mutation[]): Buffer {
  let b = input;
  for (const m of muts) {
    const at = m.at % (b.length + 1);
    if (m.kind === 'set' && at < b.length) {
      b = Buffer.from(b);
      b[at] = m.byte;
    } else if (m.kind === 'insert') {
      b = Buffer.concat([b.subarray(0, at), Buffer.from([m.byte]), b.subarray(at)]);
    } else if (m.kind === 'delete') {
      b = Buffer.concat([b.subarray(0, at), b.subarray(at + 1)]);
    } else {
      b = Buffer.concat([b.subarray(0, at), Buffer.from(m.token), b.subarray(at)]);
    }
  }
  return b;
}

describe('xml/parser StreamParser (property tests)', () => {
  it('random valid streams parse to exactly the stanzas serialized, however they are split', () => {
    fc.assert(
      fc.property(validStreamArb, cutsArb, ({ bytes, expected }, cuts) => {
        const got = events(bytes, cuts);
        expect(got[0]).to.match(/^start stream:stream http:\/\/etherx.jabber.org\/streams /);
        expect(got.slice(1)).to.deep.equal([...expected, 'end']);
      }),
      { numRuns: 300 },
    );
  });

  it('random bytes, with or without a valid header, never throw and split the same way', () => {
    fc.assert(
      fc.property(fc.boolean(), fc.uint8Array({ maxLength: 400 }), cutsArb, (withHeader, raw, cuts) => {
        const input = withHeader ? Buffer.concat([Buffer.from(HEADER), raw]) : Buffer.from(raw);
        const whole = events(input);
        expect(events(input, cuts)).to.deep.equal(whole);
        expect(whole.filter((e) => e.startsWith('error')).length).to.be.at.most(1);
      }),
      { numRuns: 500 },
    );
  });

  it('mutated valid streams never throw and give the same result however they are split', () => {
    fc.assert(
      fc.property(
        validStreamArb,
        fc.array(mutationArb, { minLength: 1, maxLength: 4 }),
        cutsArb,
        ({ bytes }, muts, cuts) => {
          const input = mutate(bytes, muts);
          const whole = events(input);
          expect(events(input, cuts)).to.deep.equal(whole);
          // Byte-by-byte delivery is the extreme split.
          expect(
            events(
              input,
              Array.from({ length: input.length }, (_, i) => i),
            ),
          ).to.deep.equal(whole);
        },
      ),
      { numRuns: 300 },
    );
  });
});
