import { createRequire } from 'node:module';
import { expect } from 'chai';
import { StreamParser } from '../../src/xml/parser.ts';
import type { ParserErrorCondition, ParserLimits, StreamHeader } from '../../src/xml/parser.ts';
import {
  Element,
  el,
  escapeXml,
  escapeXmlAttr,
  firstChildElement,
  getChild,
  getText,
  serialize,
} from '../../src/xml/element.ts';

const LIMITS: ParserLimits = { maxStanzaBytes: 16 * 1024, maxDepth: 32, maxAttributes: 64 };

const HEADER =
  "<?xml version='1.0'?><stream:stream xmlns='jabber:client' " +
  "xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>";

interface Run {
  parser: StreamParser;
  /** Every callback, in order, as a comparable string. */
  events: string[];
  headers: StreamHeader[];
  stanzas: Element[];
  errors: { condition: ParserErrorCondition; text: string }[];
}

function makeParser(limits: Partial<ParserLimits> = {}): Run {
  const run: Run = {
    parser: undefined as unknown as StreamParser,
    events: [],
    headers: [],
    stanzas: [],
    errors: [],
  };
  const afterError = (): void => {
    if (run.errors.length > 0) run.events.push('EVENT AFTER ERROR');
  };
  run.parser = new StreamParser(
    {
      streamStart(h) {
        afterError();
        run.headers.push(h);
        run.events.push(`start ${h.name} ${h.namespace}`);
      },
      stanza(e) {
        afterError();
        run.stanzas.push(e);
        run.events.push(e.toString());
      },
      streamEnd() {
        afterError();
        run.events.push('end');
      },
      error(condition, text) {
        afterError();
        run.errors.push({ condition, text });
        run.events.push(`error ${condition}`);
      },
    },
    { ...LIMITS, ...limits },
  );
  return run;
}

type Split = 'whole' | 'bytes' | number[];

function feed(run: Run, input: string | Buffer, split: Split = 'whole'): Run {
  const buf = typeof input === 'string' ? Buffer.from(input, 'utf8') : input;
  if (split === 'whole') {
    run.parser.write(buf);
  } else if (split === 'bytes') {
    for (let i = 0; i < buf.length; i++) run.parser.write(buf.subarray(i, i + 1));
  } else {
    let start = 0;
    for (const cut of [...split, buf.length]) {
      run.parser.write(buf.subarray(start, cut));
      start = cut;
    }
  }
  return run;
}

function parse(input: string | Buffer, limits: Partial<ParserLimits> = {}, split: Split = 'whole'): Run {
  return feed(makeParser(limits), input, split);
}

/** The single error condition reported, asserting there was exactly one. */
function errorOf(r: Run): ParserErrorCondition | undefined {
  expect(r.errors.length).to.be.at.most(1);
  return r.errors[0]?.condition;
}

function randomCuts(len: number, seed: number): number[] {
  // Small deterministic LCG so failures are reproducible.
  let s = seed;
  const rnd = (): number => {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    return s / 0x7fffffff;
  };
  const cuts = new Set<number>();
  const n = 1 + Math.floor(rnd() * 20);
  for (let i = 0; i < n; i++) cuts.add(1 + Math.floor(rnd() * (len - 1)));
  return [...cuts].sort((a, b) => a - b);
}

const SAMPLE =
  HEADER +
  "\n  <message to='juliet@example.com' type='chat' id='m1'><body>Wherefore art thou, Romeo? &lt;3 &amp; " +
  'caf\u00e9 \u20ac \u{1F600}</body></message>\n' +
  "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq> " +
  "<presence><show>away</show><status xml:lang='fr'>\u00e0 bient\u00f4t</status></presence>" +
  "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>" +
  '\r\n</stream:stream>';

describe('xml/parser StreamParser', () => {
  describe('well-formed streams', () => {
    it('emits the header, each stanza and the stream end', () => {
      const r = parse(SAMPLE);
      expect(r.errors).to.deep.equal([]);
      expect(r.headers).to.have.length(1);
      const h = r.headers[0];
      expect(h.name).to.equal('stream:stream');
      expect(h.localName).to.equal('stream');
      expect(h.namespace).to.equal('http://etherx.jabber.org/streams');
      expect(h.attrs).to.deep.equal({
        xmlns: 'jabber:client',
        'xmlns:stream': 'http://etherx.jabber.org/streams',
        to: 'example.com',
        version: '1.0',
      });
      expect(h.namespaces).to.deep.equal({ '': 'jabber:client', stream: 'http://etherx.jabber.org/streams' });
      expect(r.events).to.deep.equal([
        'start stream:stream http://etherx.jabber.org/streams',
        '<message xmlns="jabber:client" to="juliet@example.com" type="chat" id="m1"><body>Wherefore art thou, ' +
          'Romeo? &lt;3 &amp; caf\u00e9 \u20ac \u{1F600}</body></message>',
        '<iq xmlns="jabber:client" type="get" id="r1"><query xmlns="jabber:iq:roster"/></iq>',
        '<presence xmlns="jabber:client"><show>away</show><status xml:lang="fr">\u00e0 bient\u00f4t</status></presence>',
        '<stream:features xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams">' +
          '<starttls xmlns="urn:ietf:params:xml:ns:xmpp-tls"><required/></starttls></stream:features>',
        'end',
      ]);
      const msg = r.stanzas[0];
      expect(msg.is('message', 'jabber:client')).to.equal(true);
      expect(msg.parent).to.equal(null);
      expect(msg.getChildText('body')).to.equal('Wherefore art thou, Romeo? <3 & caf\u00e9 \u20ac \u{1F600}');
      expect(r.stanzas[1].getChild('query')?.getNS()).to.equal('jabber:iq:roster');
      expect(r.stanzas[3].is('features', 'http://etherx.jabber.org/streams')).to.equal(true);
    });

    it('gives identical output byte by byte and for random splits', () => {
      const whole = parse(SAMPLE).events;
      expect(parse(SAMPLE, {}, 'bytes').events).to.deep.equal(whole);
      const len = Buffer.byteLength(SAMPLE);
      for (let seed = 1; seed <= 50; seed++) {
        expect(parse(SAMPLE, {}, randomCuts(len, seed)).events).to.deep.equal(whole);
      }
    });

    it('decodes 2-, 3- and 4-byte characters split at every position across writes', () => {
      for (const ch of ['\u00e9', '\u20ac', '\u{1F600}', '\u{10FFFD}']) {
        const prefix = HEADER + `<message a='${ch}'><body>x`;
        const input = Buffer.from(prefix + ch + `</body></message>`);
        const attrAt = Buffer.byteLength(HEADER + "<message a='");
        const textAt = Buffer.byteLength(prefix);
        const width = Buffer.byteLength(ch);
        for (const at of [attrAt, textAt]) {
          for (let k = 1; k < width; k++) {
            const r = parse(input, {}, [at + k]);
            expect(r.errors).to.deep.equal([]);
            expect(r.stanzas[0].attrs.a).to.equal(ch);
            expect(r.stanzas[0].getChildText('body')).to.equal('x' + ch);
          }
        }
      }
    });

    it('ignores whitespace keepalives between stanzas, without counting them against the limit', () => {
      const r = makeParser({ maxStanzaBytes: 1024 });
      feed(r, HEADER + '<presence/>');
      for (let i = 0; i < 100; i++) feed(r, ' \n\t\r\n ');
      feed(r, ' '.repeat(50_000));
      feed(r, '<presence/>\n</stream:stream>\n');
      expect(r.events).to.deep.equal([
        'start stream:stream http://etherx.jabber.org/streams',
        '<presence xmlns="jabber:client"/>',
        '<presence xmlns="jabber:client"/>',
        'end',
      ]);
    });

    it('accepts CDATA sections as text and merges them with adjacent text', () => {
      const r = parse(HEADER + '<message><body>a<![CDATA[<b>&amp;]]]>c</body></message>');
      expect(r.errors).to.deep.equal([]);
      expect(r.stanzas[0].getChildText('body')).to.equal('a<b>&amp;]c');
      expect(r.stanzas[0].getChild('body')?.children).to.have.length(1);
    });

    it('normalizes line ends in text and whitespace in attribute values, but not character references', () => {
      const r = parse(HEADER + "<message a='x\ty\r\nz&#10;'><body>1\r\n2\r3&#13;</body></message>");
      expect(r.errors).to.deep.equal([]);
      expect(r.stanzas[0].attrs.a).to.equal('x y z\n');
      expect(r.stanzas[0].getChildText('body')).to.equal('1\n2\n3\r');
    });

    it('resolves the five predefined entities and character references', () => {
      const r = parse(
        HEADER +
          `<message a="&quot;&apos;&lt;"><body>&lt;&gt;&amp;&quot;&apos;&#65;&#x42;&#x1f600;</body></message>`,
      );
      expect(r.stanzas[0].attrs.a).to.equal(`"'<`);
      expect(r.stanzas[0].getChildText('body')).to.equal(`<>&"'AB\u{1F600}`);
    });

    it('accepts the XML declaration with encoding UTF-8 in any case, and a byte order mark', () => {
      const hdr = HEADER.slice(HEADER.indexOf('?>') + 2);
      for (const decl of [
        "<?xml version='1.0' encoding='UTF-8'?>",
        '<?xml version="1.0" encoding="utf-8" standalone="yes" ?>',
        '\ufeff<?xml version="1.0"?>',
        '',
      ]) {
        const r = parse(decl + '\n' + hdr + '<presence/>');
        expect(r.errors, decl).to.deep.equal([]);
        expect(r.stanzas).to.have.length(1);
      }
    });

    it('rejects other encodings and malformed declarations', () => {
      const hdr = HEADER.slice(HEADER.indexOf('?>') + 2);
      expect(errorOf(parse("<?xml version='1.0' encoding='ISO-8859-1'?>" + hdr))).to.equal(
        'unsupported-encoding',
      );
      expect(errorOf(parse("<?xml encoding='UTF-8'?>" + hdr))).to.equal('not-well-formed');
      expect(errorOf(parse("<?xml version='1.0' foo='bar'?>" + hdr))).to.equal('not-well-formed');
      expect(errorOf(parse('<?xml?>' + hdr))).to.equal('not-well-formed');
    });

    it('reports an empty-element stream header as start then end', () => {
      const r = parse("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>");
      expect(r.events).to.deep.equal(['start stream:stream http://etherx.jabber.org/streams', 'end']);
    });

    it('handles the stream end and rejects anything but whitespace after it', () => {
      expect(parse(HEADER + '</stream:stream> \n').events.at(-1)).to.equal('end');
      const r = parse(HEADER + '</stream:stream><presence/>');
      expect(r.events.slice(-2)).to.deep.equal(['end', 'error not-well-formed']);
      expect(errorOf(parse(HEADER + '</stream:stream>x'))).to.equal('not-well-formed');
      expect(errorOf(parse(HEADER + '</stream>'))).to.equal('not-well-formed');
    });

    it('keeps attacker-chosen attribute names such as __proto__ as plain attributes', () => {
      const r = parse(HEADER + "<message __proto__='x' constructor='y'/>");
      expect(r.errors).to.deep.equal([]);
      const attrs = r.stanzas[0].attrs as Record<string, string>;
      expect(Object.getPrototypeOf(attrs)).to.equal(Object.prototype);
      expect(Object.getOwnPropertyDescriptor(attrs, '__proto__')?.value).to.equal('x');
      expect(attrs.constructor).to.equal('y');
    });

    it('exposes the byte count of the stanza in progress', () => {
      const r = parse(HEADER + '<message><body>abc');
      expect(r.parser.bytesInCurrentStanza).to.equal(Buffer.byteLength('<message><body>abc'));
      feed(r, '</body></message>');
      expect(r.parser.bytesInCurrentStanza).to.equal(0);
    });
  });

  describe('invalid characters', () => {
    const cases: [string, number[]][] = [
      ['overlong 2-byte', [0xc0, 0xaf]],
      ['overlong 2-byte C1', [0xc1, 0xbf]],
      ['overlong 3-byte', [0xe0, 0x80, 0xaf]],
      ['overlong 4-byte', [0xf0, 0x80, 0x80, 0xaf]],
      ['UTF-16 surrogate', [0xed, 0xa0, 0x80]],
      ['above U+10FFFF', [0xf4, 0x90, 0x80, 0x80]],
      ['byte F5', [0xf5, 0x80, 0x80, 0x80]],
      ['byte FF', [0xff]],
      ['lone continuation byte', [0x80]],
      ['truncated 2-byte sequence', [0xc3, 0x41]],
      ['truncated 3-byte sequence', [0xe2, 0x82, 0x41]],
      ['truncated 4-byte sequence', [0xf0, 0x9f, 0x98, 0x3c]],
      ['U+FFFE', [0xef, 0xbf, 0xbe]],
      ['U+FFFF', [0xef, 0xbf, 0xbf]],
      ['U+0000', [0x00]],
      ['U+0001', [0x01]],
      ['U+001B', [0x1b]],
    ];
    for (const [label, bytes] of cases) {
      it(`rejects ${label} in text, attribute values and names, whole or byte by byte`, () => {
        const bad = Buffer.from(bytes);
        for (const [before, after] of [
          [HEADER + '<message><body>a', 'b</body></message>'],
          [HEADER + "<message to='a", "'/>"],
          [HEADER + '<message', '/>'],
          [HEADER, ''],
          ['', HEADER],
        ]) {
          const input = Buffer.concat([Buffer.from(before), bad, Buffer.from(after)]);
          expect(errorOf(parse(input)), label).to.equal('not-well-formed');
          expect(errorOf(parse(input, {}, 'bytes')), label).to.equal('not-well-formed');
          expect(parse(input).stanzas).to.deep.equal([]);
        }
      });
    }

    for (const ref of [
      '&#0;',
      '&#x0;',
      '&#x1;',
      '&#8;',
      '&#xFFFE;',
      '&#xffff;',
      '&#xD800;',
      '&#x110000;',
      '&#;',
      '&#x;',
      '&#X41;',
      '&#12a;',
    ]) {
      it(`rejects the character reference ${ref} in text and attributes`, () => {
        expect(errorOf(parse(HEADER + `<message><body>${ref}</body></message>`))).to.equal('not-well-formed');
        expect(errorOf(parse(HEADER + `<message a='${ref}'/>`))).to.equal('not-well-formed');
      });
    }

    it("rejects ']]>' in character data but not ']]&gt;'", () => {
      expect(errorOf(parse(HEADER + '<message><body>a]]>b</body></message>'))).to.equal('not-well-formed');
      expect(errorOf(parse(HEADER + '<message><body>a]]>b</body></message>', {}, 'bytes'))).to.equal(
        'not-well-formed',
      );
      const ok = parse(HEADER + '<message><body>a]]&gt;b]&#93;>c</body></message>');
      expect(ok.errors).to.deep.equal([]);
      expect(ok.stanzas[0].getChildText('body')).to.equal('a]]>b]]>c');
    });
  });

  describe('restricted XML (RFC 6120 section 11.1)', () => {
    const cases: [string, string][] = [
      ['DOCTYPE', "<?xml version='1.0'?><!DOCTYPE stream:stream>" + HEADER.slice(21)],
      [
        'internal entity declarations (billion laughs)',
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>' +
          HEADER.slice(21) +
          '<message><body>&lol2;</body></message>',
      ],
      ['comment before the header', '<!-- hi -->' + HEADER.slice(21)],
      ['comment between stanzas', HEADER + '<!-- hi --><presence/>'],
      ['comment inside a stanza', HEADER + '<message><!-- hi --><body/></message>'],
      ['processing instruction mid-stream', HEADER + "<?xml-stylesheet href='x'?>"],
      ['processing instruction inside a stanza', HEADER + '<message><?foo bar?></message>'],
      ['XML declaration not at the start', ' ' + HEADER],
      ['second XML declaration', HEADER + "<?xml version='1.0'?>"],
      ['undefined entity in text', HEADER + '<message><body>&foo;</body></message>'],
      ['undefined entity in an attribute', HEADER + "<message to='&foo;'/>"],
      ['entity that extends a predefined one', HEADER + '<message><body>&ltx;</body></message>'],
      ['entity that is a prefix of a predefined one', HEADER + '<message><body>&l;</body></message>'],
      ['external entity', HEADER + '<message><body>&xxe;</body></message>'],
      ['markup declaration inside a stanza', HEADER + '<message><!ENTITY x "y"></message>'],
    ];
    for (const [label, input] of cases) {
      it(`rejects ${label}`, () => {
        const r = parse(input);
        expect(errorOf(r)).to.equal('restricted-xml');
        expect(r.stanzas).to.deep.equal([]);
        expect(errorOf(parse(input, {}, 'bytes'))).to.equal('restricted-xml');
      });
    }

    it('rejects a DTD, comment or PI at its first distinguishing byte', () => {
      const r = makeParser();
      feed(r, '<!');
      expect(errorOf(r)).to.equal('restricted-xml');

      const c = feed(makeParser(), HEADER + '<message><!-');
      expect(errorOf(c)).to.equal('restricted-xml');

      const p = feed(makeParser(), HEADER + '<?');
      expect(errorOf(p)).to.equal('restricted-xml');

      const e = feed(makeParser(), HEADER + '<message><body>&f');
      expect(errorOf(e)).to.equal('restricted-xml');
    });
  });

  describe('limits', () => {
    const SMALL = 16 * 1024;
    const CEILING = SMALL + 64 * 1024;

    it('rejects an oversized stanza in one write and byte by byte', () => {
      const stanza = `<message><body>${'x'.repeat(SMALL)}</body></message>`;
      for (const split of ['whole', 'bytes'] as const) {
        const r = parse(HEADER + stanza, { maxStanzaBytes: SMALL }, split);
        expect(errorOf(r)).to.equal('policy-violation');
        expect(r.stanzas).to.deep.equal([]);
        expect(r.parser.bufferedBytes).to.be.at.most(CEILING);
      }
    });

    it('accepts a stanza of exactly the limit and rejects one byte more', () => {
      const body = (n: number): string => `<message><body>${'x'.repeat(n)}</body></message>`;
      const overhead = body(0).length;
      expect(parse(HEADER + body(SMALL - overhead), { maxStanzaBytes: SMALL }).errors).to.deep.equal([]);
      expect(errorOf(parse(HEADER + body(SMALL - overhead + 1), { maxStanzaBytes: SMALL }))).to.equal(
        'policy-violation',
      );
      // Multi-byte characters count as their UTF-8 length.
      const euro = `<message><body>${'\u20ac'.repeat(Math.ceil(SMALL / 3))}</body></message>`;
      expect(errorOf(parse(HEADER + euro, { maxStanzaBytes: SMALL }))).to.equal('policy-violation');
    });

    it('refuses a huge text node as soon as it crosses the limit, without buffering it', () => {
      const r = feed(makeParser({ maxStanzaBytes: SMALL }), HEADER + '<message><body>');
      const chunk = Buffer.alloc(4096, 0x61);
      let peak = 0;
      let writes = 0;
      while (r.errors.length === 0 && writes < 10_000) {
        r.parser.write(chunk);
        writes++;
        peak = Math.max(peak, r.parser.bufferedBytes);
      }
      expect(errorOf(r)).to.equal('policy-violation');
      expect(writes).to.equal(Math.ceil(SMALL / 4096));
      expect(peak).to.be.at.most(CEILING);

      // 10 MiB in a single write: refused, and the parser never grows past the limit.
      const big = parse(
        Buffer.concat([Buffer.from(HEADER + '<message><body>'), Buffer.alloc(10 * 1024 * 1024, 0x62)]),
        { maxStanzaBytes: SMALL },
      );
      expect(errorOf(big)).to.equal('policy-violation');
      expect(big.parser.bufferedBytes).to.be.at.most(CEILING);
    });

    it('refuses a huge attribute value (ASCII and non-ASCII) without buffering it', () => {
      for (const fill of ['a', '\u00e9', ' ']) {
        const input = Buffer.concat([
          Buffer.from(HEADER + "<message to='"),
          Buffer.from(fill.repeat(2 * 1024 * 1024)),
          Buffer.from("'/>"),
        ]);
        const r = parse(input, { maxStanzaBytes: SMALL });
        expect(errorOf(r)).to.equal('policy-violation');
        expect(r.parser.bufferedBytes).to.be.at.most(CEILING);
      }
    });

    it('bounds the stream header and whatever precedes it', () => {
      const longHeader = `<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='${'a'.repeat(SMALL)}'>`;
      expect(errorOf(parse(longHeader, { maxStanzaBytes: SMALL }))).to.equal('policy-violation');
      expect(errorOf(parse(' '.repeat(SMALL + 1), { maxStanzaBytes: SMALL }))).to.equal('policy-violation');
    });

    it('rejects 10,000 levels of nesting', () => {
      const r = parse(HEADER + '<a>'.repeat(10_000), { maxDepth: 32, maxStanzaBytes: 1 << 20 });
      expect(errorOf(r)).to.equal('policy-violation');
      // Exactly maxDepth levels are fine.
      const ok = parse(HEADER + '<a>'.repeat(32) + '</a>'.repeat(32), { maxDepth: 32 });
      expect(ok.errors).to.deep.equal([]);
      expect(ok.stanzas).to.have.length(1);
      expect(errorOf(parse(HEADER + '<a>'.repeat(33), { maxDepth: 32 }))).to.equal('policy-violation');
    });

    it('rejects 10,000 attributes', () => {
      const attrs = Array.from({ length: 10_000 }, (_, i) => ` a${i}='v'`).join('');
      const r = parse(HEADER + `<message${attrs}/>`, { maxAttributes: 64, maxStanzaBytes: 1 << 20 });
      expect(errorOf(r)).to.equal('policy-violation');
      const exactly = Array.from({ length: 64 }, (_, i) => ` a${i}='v'`).join('');
      expect(parse(HEADER + `<message${exactly}/>`, { maxAttributes: 64 }).errors).to.deep.equal([]);
    });

    it('rejects an over-long name', () => {
      const r = parse(HEADER + `<${'n'.repeat(2000)}/>`, { maxNameBytes: 1024 });
      expect(errorOf(r)).to.equal('policy-violation');
    });

    it('handles 100,000 empty children within the byte limit, and rejects them when over it', () => {
      const input = HEADER + '<message>' + '<a/>'.repeat(100_000) + '</message>';
      const ok = parse(input, { maxStanzaBytes: 1024 * 1024 });
      expect(ok.errors).to.deep.equal([]);
      expect(ok.stanzas[0].children).to.have.length(100_000);
      expect(errorOf(parse(input, { maxStanzaBytes: 256 * 1024 }))).to.equal('policy-violation');
    });

    it('setLimits raises the stanza limit for the following stanzas (after authentication)', () => {
      const big = `<message><body>${'x'.repeat(100 * 1024)}</body></message>`;
      expect(errorOf(parse(HEADER + big, { maxStanzaBytes: SMALL }))).to.equal('policy-violation');

      const r = feed(makeParser({ maxStanzaBytes: SMALL }), HEADER + '<presence/>');
      r.parser.setLimits({ ...LIMITS, maxStanzaBytes: 256 * 1024 });
      feed(r, big, randomCuts(big.length, 7));
      expect(r.errors).to.deep.equal([]);
      expect(r.stanzas).to.have.length(2);
      expect(r.stanzas[1].getChildText('body')).to.have.length(100 * 1024);

      r.parser.setLimits({ ...LIMITS, maxStanzaBytes: SMALL });
      feed(r, big);
      expect(errorOf(r)).to.equal('policy-violation');
    });

    it('validates the limits it is given', () => {
      const h = { streamStart() {}, stanza() {}, streamEnd() {}, error() {} };
      expect(() => new StreamParser(h, { ...LIMITS, maxDepth: 0 })).to.throw(RangeError);
      expect(() => new StreamParser(h, { ...LIMITS, maxStanzaBytes: Number.NaN })).to.throw(RangeError);
    });
  });

  describe('namespaces', () => {
    it('resolves a prefixed stanza to its namespace', () => {
      const r = parse(HEADER + "<c:message xmlns:c='jabber:client' to='x'><c:body>hi</c:body></c:message>");
      expect(r.errors).to.deep.equal([]);
      const m = r.stanzas[0];
      expect(m.name).to.equal('c:message');
      expect(m.is('message', 'jabber:client')).to.equal(true);
      expect(getChild(m, 'body', 'jabber:client')?.getText()).to.equal('hi');
    });

    it('copies prefixes declared only on the stream header onto the stanza', () => {
      const hdr =
        "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' " +
        "xmlns:db='jabber:server:dialback'>";
      const r = parse(
        hdr +
          "<db:result from='a' to='b'>key</db:result>" +
          "<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>" +
          "<message><x db:type='valid'/></message>",
      );
      expect(r.errors).to.deep.equal([]);
      expect(r.events.slice(1)).to.deep.equal([
        '<db:result xmlns="jabber:server" from="a" to="b" xmlns:db="jabber:server:dialback">key</db:result>',
        '<stream:error xmlns="jabber:server" xmlns:stream="http://etherx.jabber.org/streams">' +
          '<not-well-formed xmlns="urn:ietf:params:xml:ns:xmpp-streams"/></stream:error>',
        '<message xmlns="jabber:server" xmlns:db="jabber:server:dialback"><x db:type="valid"/></message>',
      ]);
      expect(r.stanzas[0].is('result', 'jabber:server:dialback')).to.equal(true);
      expect(r.stanzas[1].is('error', 'http://etherx.jabber.org/streams')).to.equal(true);
      // Detached from the parser, the elements still resolve their namespaces.
      expect(el('wrapper', {}, r.stanzas[0]).getChild('result')?.getNS()).to.equal('jabber:server:dialback');
    });

    it('scopes redeclared prefixes and default namespaces', () => {
      const r = parse(
        HEADER +
          "<stream:x xmlns:stream='urn:other'><stream:y/></stream:x>" +
          "<p:a xmlns:p='urn:1'><p:b xmlns:p='urn:2'><p:c/></p:b><p:d/></p:a>" +
          "<message><q xmlns='urn:q'><r/></q><s/></message>",
      );
      expect(r.errors).to.deep.equal([]);
      const [x, a, m] = r.stanzas;
      expect(x.getNS()).to.equal('urn:other');
      expect(x.attrs).to.not.have.property('xmlns:stream', 'http://etherx.jabber.org/streams');
      expect(x.getChild('y')?.getNS()).to.equal('urn:other');
      const b = a.getChild('b') as Element;
      expect(b.getNS()).to.equal('urn:2');
      expect(b.getChild('c')?.getNS()).to.equal('urn:2');
      expect(a.getChild('d')?.getNS()).to.equal('urn:1');
      expect(m.getChild('q')?.getChild('r')?.getNS()).to.equal('urn:q');
      expect(m.getChild('s')?.getNS()).to.equal('jabber:client');
    });

    it('rejects an unbound prefix on an element or attribute', () => {
      expect(errorOf(parse(HEADER + '<foo:message/>'))).to.equal('not-well-formed');
      expect(errorOf(parse(HEADER + '<message><foo:x/></message>'))).to.equal('not-well-formed');
      expect(errorOf(parse(HEADER + "<message foo:x='1'/>"))).to.equal('not-well-formed');
      // A prefix declared on a sibling is out of scope.
      expect(errorOf(parse(HEADER + "<message><a xmlns:p='urn:p'/><p:b/></message>"))).to.equal(
        'not-well-formed',
      );
    });

    it('reports an unbound prefix on the stream header as invalid-namespace', () => {
      expect(errorOf(parse("<stream:stream xmlns='jabber:client'>"))).to.equal('invalid-namespace');
      const r = parse("<stream xmlns='jabber:client'>");
      expect(r.errors).to.deep.equal([]);
      expect(r.headers[0].namespace).to.equal('jabber:client');
      expect(parse('<stream>').headers[0].namespace).to.equal(null);
    });

    it('rejects misuse of the reserved xml and xmlns prefixes', () => {
      expect(parse(HEADER + "<message xml:lang='en'/>").errors).to.deep.equal([]);
      expect(
        parse(HEADER + "<message xmlns:xml='http://www.w3.org/XML/1998/namespace'/>").errors,
      ).to.deep.equal([]);
      for (const bad of [
        "<message xmlns:xml='urn:x'/>",
        "<message xmlns:p='http://www.w3.org/XML/1998/namespace'/>",
        "<message xmlns:xmlns='urn:x'/>",
        "<message xmlns:p='http://www.w3.org/2000/xmlns/'/>",
        "<message xmlns:p=''/>",
        '<xmlns:message/>',
      ]) {
        expect(errorOf(parse(HEADER + bad)), bad).to.equal('not-well-formed');
      }
    });

    it('rejects two attributes with the same expanded name', () => {
      expect(errorOf(parse(HEADER + "<message xmlns:a='urn:x' xmlns:b='urn:x' a:t='1' b:t='2'/>"))).to.equal(
        'not-well-formed',
      );
      expect(parse(HEADER + "<message xmlns:a='urn:x' a:t='1' t='2'/>").errors).to.deep.equal([]);
    });

    it('rejects malformed qualified names', () => {
      for (const bad of ['<a:b:c/>', '<a:/>', '<:a/>', '<a:1/>', "<message a:='x'/>"]) {
        expect(errorOf(parse(HEADER + bad)), bad).to.equal('not-well-formed');
      }
    });
  });

  describe('malformed syntax', () => {
    const cases: [string, string][] = [
      ['mismatched end tag', '<message><body></message></body>'],
      ['mismatched prefix in end tag', "<c:message xmlns:c='jabber:client'></message>"],
      ['duplicate attribute', "<message to='a' to='b'/>"],
      [
        'duplicate attribute after many',
        `<message${Array.from({ length: 20 }, (_, i) => ` a${i}='v'`).join('')} a3='x'/>`,
      ],
      ["'<' in attribute value", "<message to='a<b'/>"],
      ['unquoted attribute', '<message to=a/>'],
      ['attribute without value', '<message to/>'],
      ['attributes not separated by whitespace', "<message to='a'from='b'/>"],
      ['bad element name', '<1message/>'],
      ['bad character after <', '< message/>'],
      ['bare ampersand', '<message><body>a & b</body></message>'],
      ['unterminated entity', '<message><body>&amp </body></message>'],
      ['text between stanzas', 'hello'],
      ['entity between stanzas', '&amp;'],
      ['CDATA between stanzas', '<![CDATA[ ]]>'],
      ['bad CDATA opener', '<message><![CDATX[x]]></message>'],
      ['slash without >', '<message/ >'],
    ];
    for (const [label, stanza] of cases) {
      it(`rejects ${label}`, () => {
        expect(errorOf(parse(HEADER + stanza))).to.equal('not-well-formed');
        expect(errorOf(parse(HEADER + stanza, {}, 'bytes'))).to.equal('not-well-formed');
      });
    }

    it('rejects text and end tags before the stream header', () => {
      expect(errorOf(parse('hello' + HEADER))).to.equal('not-well-formed');
      expect(errorOf(parse('</stream:stream>'))).to.equal('not-well-formed');
    });

    it('ignores all input after an error', () => {
      const r = parse(HEADER + '<message to=x/>');
      feed(r, '<presence/></stream:stream>');
      expect(r.events).to.deep.equal([
        'start stream:stream http://etherx.jabber.org/streams',
        'error not-well-formed',
      ]);
    });
  });

  describe('stream restart', () => {
    it('reset() discards buffered state and expects a new declaration and header', () => {
      const r = feed(makeParser(), HEADER + '<presence/><message><body>partial \u00e9'.slice(0, -1));
      feed(r, Buffer.from([0xc3])); // half of a two-byte character
      r.parser.reset();
      feed(r, HEADER + '<presence/>');
      expect(r.errors).to.deep.equal([]);
      expect(r.events).to.deep.equal([
        'start stream:stream http://etherx.jabber.org/streams',
        '<presence xmlns="jabber:client"/>',
        'start stream:stream http://etherx.jabber.org/streams',
        '<presence xmlns="jabber:client"/>',
      ]);
    });

    it('reset() clears a previous error', () => {
      const r = parse(HEADER + '<!-- x -->');
      expect(errorOf(r)).to.equal('restricted-xml');
      r.parser.reset();
      feed(r, HEADER + '<presence/>');
      expect(r.stanzas).to.have.length(1);
    });

    it('reset() from a handler drops the rest of the chunk (no pre-TLS command injection)', () => {
      const events: string[] = [];
      const parser: StreamParser = new StreamParser(
        {
          streamStart: (h) => events.push('start ' + h.attrs.to),
          stanza: (e) => {
            events.push(e.name);
            if (e.name === 'starttls') parser.reset();
          },
          streamEnd: () => events.push('end'),
          error: (c) => events.push('error ' + c),
        },
        LIMITS,
      );
      parser.write(
        Buffer.from(
          HEADER +
            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message><body>injected</body></message>",
        ),
      );
      parser.write(Buffer.from(HEADER.replace('example.com', 'after-tls') + '<presence/>'));
      expect(events).to.deep.equal(['start example.com', 'starttls', 'start after-tls', 'presence']);
    });
  });
});

describe('xml/element helpers', () => {
  it('el() builds elements, skipping undefined attributes', () => {
    const e = el(
      'iq',
      { type: 'get', id: 'x', to: undefined },
      el('query', { xmlns: 'jabber:iq:roster' }),
      'txt',
    );
    expect(e.toString()).to.equal('<iq type="get" id="x"><query xmlns="jabber:iq:roster"/>txt</iq>');
    expect((e.children[0] as Element).parent).to.equal(e);
  });

  it('getChild/getText/firstChildElement look children up by local name and resolved namespace', () => {
    const e = el(
      'message',
      { xmlns: 'jabber:client' },
      'lead',
      el('body', {}, 'hello'),
      el('p:body', { 'xmlns:p': 'urn:p' }, 'other'),
    );
    expect(firstChildElement(e)?.name).to.equal('body');
    expect(getChild(e, 'body')?.getText()).to.equal('hello');
    expect(getChild(e, 'body', 'urn:p')?.getText()).to.equal('other');
    expect(getChild(e, 'body', 'urn:none')).to.equal(undefined);
    expect(getText(e, 'body', 'jabber:client')).to.equal('hello');
    expect(getText(e, 'missing')).to.equal(undefined);
    expect(getText(e)).to.equal('lead');
    expect(firstChildElement(el('x', {}, 'only text'))).to.equal(undefined);
  });

  it('escapes text and attribute values', () => {
    expect(escapeXml(`a<b>&"'`)).to.equal(`a&lt;b&gt;&amp;"'`);
    expect(escapeXmlAttr(`a<b>&"'\t\n\r`)).to.equal('a&lt;b&gt;&amp;&quot;&apos;&#9;&#10;&#13;');
    expect(escapeXml('plain')).to.equal('plain');
  });

  it('round-trips through the parser', () => {
    const value = `<&>"' \t\n\r\u00e9`;
    const text = `]]> <&> \u{1F600}`;
    const r = parse(
      HEADER + `<message a='${escapeXmlAttr(value)}'><body>${escapeXml(text)}</body></message>`,
    );
    expect(r.errors).to.deep.equal([]);
    expect(r.stanzas[0].attrs.a).to.equal(value);
    expect(r.stanzas[0].getChildText('body')).to.equal(text);
  });

  it('serializes as ltx does, nested elements, escapes and all', () => {
    const stanzas = [
      el('presence'),
      el('message', { to: 'a@b/c', type: 'chat', id: `x"&'<>y` }, el('body', {}, 'a < b & c > d "q" \'s\'')),
      el(
        'iq',
        { type: 'result' },
        el('query', { xmlns: 'jabber:iq:roster' }, el('item', { jid: 'x@y' }), 'text'),
      ),
      parse(HEADER + "<message xmlns:f='urn:f'><f:x a='1'>\u00e9\u{1F600} &amp; more</f:x><body/></message>")
        .stanzas[0]!,
    ];
    const numbered = new Element('item', { n: 7 as unknown as string });
    numbered.children.push(42 as unknown as string);
    for (const stanza of [...stanzas, numbered]) expect(serialize(stanza)).to.equal(stanza.toString());
  });

  it('serializes tab, LF and CR in attribute values so that they survive parsing', () => {
    const value = 'line one\n\tline two\r';
    const xml = serialize(el('message', { a: value }, el('body', {}, 'x\ny')));
    expect(xml).to.equal('<message a="line one&#10;&#9;line two&#13;"><body>x\ny</body></message>');
    const r = parse(HEADER + xml);
    expect(r.errors).to.deep.equal([]);
    expect(r.stanzas[0].attrs.a).to.equal(value);
  });

  it("serializes elements of either of ltx's builds the same way, escapes and all", async () => {
    // ltx ships an ES module and a CommonJS build with an Element class each; the
    // test runner loads one for src/ while modules, imported, get the other.
    const commonJs = (createRequire(import.meta.url)('ltx/lib/ltx.js') as { Element: typeof Element })
      .Element;
    const esModule = ((await import('ltx/src/ltx.js')) as { Element: typeof Element }).Element;
    expect(commonJs).to.not.equal(esModule);
    for (const Kind of [commonJs, esModule]) {
      const note = new Kind('note', { text: 'one\ntwo' });
      note.children.push('a < b');
      const tree = el('iq', {}, el('query', {}));
      tree.getChild('query')!.children.push(note);
      expect(serialize(tree)).to.equal('<iq><query><note text="one&#10;two">a &lt; b</note></query></iq>');
    }
  });
});
