import { expect } from 'chai';
import fc from 'fast-check';
import { Jid, JidError, prepareDomain, prepareLocal, prepareResource } from '../../src/jid.ts';

function parts(s: string): [string, string, string] {
  const j = Jid.parse(s);
  return [j.local, j.domain, j.resource];
}

function rejects(s: string, part?: JidError['part']): void {
  let caught: unknown;
  try {
    Jid.parse(s);
  } catch (err) {
    caught = err;
  }
  expect(caught, `expected ${JSON.stringify(s)} to be rejected`).to.be.instanceOf(JidError);
  if (part !== undefined) expect((caught as JidError).part, JSON.stringify(s)).to.equal(part);
  expect(Jid.tryParse(s)).to.equal(null);
}

describe('jid', () => {
  describe('valid forms (RFC 7622 3.1)', () => {
    it('parses a bare domain', () => {
      const j = Jid.parse('example.com');
      expect(parts('example.com')).to.deep.equal(['', 'example.com', '']);
      expect(j.isDomain).to.equal(true);
      expect(j.isBare).to.equal(true);
      expect(j.isFull).to.equal(false);
    });

    it('parses local@domain', () => {
      expect(parts('juliet@example.com')).to.deep.equal(['juliet', 'example.com', '']);
      const j = Jid.parse('juliet@example.com');
      expect(j.isDomain).to.equal(false);
      expect(j.isBare).to.equal(true);
    });

    it('parses domain/resource', () => {
      const j = Jid.parse('example.com/foo');
      expect([j.local, j.domain, j.resource]).to.deep.equal(['', 'example.com', 'foo']);
      expect(j.isDomain).to.equal(true);
      expect(j.isFull).to.equal(true);
    });

    it('parses a full JID', () => {
      expect(parts('juliet@example.com/balcony')).to.deep.equal(['juliet', 'example.com', 'balcony']);
      expect(Jid.parse('juliet@example.com/balcony').isFull).to.equal(true);
    });

    it('splits at the first slash, so the resource may contain "/" and "@"', () => {
      expect(parts('a@b/c/d@e')).to.deep.equal(['a', 'b', 'c/d@e']);
      expect(parts('example.com/@/')).to.deep.equal(['', 'example.com', '@/']);
      expect(parts('foo@bar/baz@qux/quux')).to.deep.equal(['foo', 'bar', 'baz@qux/quux']);
    });

    it('allows spaces inside the resource', () => {
      expect(parts('room@muc.example/Nick Name ')).to.deep.equal(['room', 'muc.example', 'Nick Name ']);
    });

    it('accepts the examples of RFC 7622 3.5', () => {
      expect(parts('juliet@example.com/foo bar')).to.deep.equal(['juliet', 'example.com', 'foo bar']);
      expect(parts('juliet@example.com/foo@bar')).to.deep.equal(['juliet', 'example.com', 'foo@bar']);
      expect(parts('foo\\20bar@example.com')[0]).to.equal('foo\\20bar');
      expect(parts('fussball@example.com')[0]).to.equal('fussball');
      expect(parts('fußball@example.com')[0]).to.equal('fußball');
      expect(parts('π@example.com')[0]).to.equal('π');
      expect(parts('Σ@example.com')[0]).to.equal('σ');
      expect(parts('σ@example.com')[0]).to.equal('σ');
      expect(parts('ς@example.com')[0]).to.equal('ς');
      expect(parts('king@example.com/♚')[2]).to.equal('♚');
      expect(parts('example.com')[1]).to.equal('example.com');
      expect(parts('example.com/foobar')[2]).to.equal('foobar');
      expect(parts('a.example.com/b@example.net')).to.deep.equal(['', 'a.example.com', 'b@example.net']);
    });
  });

  describe('preparation', () => {
    it('lower-cases the localpart and the domainpart', () => {
      expect(parts('JuLiEt@ExAmPlE.CoM')).to.deep.equal(['juliet', 'example.com', '']);
      expect(parts('ÄÖÜ@EXÄMPLE.de')).to.deep.equal(['äöü', 'exämple.de', '']);
    });

    it('preserves case in the resourcepart', () => {
      expect(parts('a@b/BaLcOnY')[2]).to.equal('BaLcOnY');
      expect(parts('a@b/ÉCLAIR')[2]).to.equal('ÉCLAIR');
    });

    it('width-maps full-width characters in the localpart to ASCII', () => {
      expect(parts('ＪＵＬＩＥＴ@example.com')[0]).to.equal('juliet');
      // Half-width katakana plus half-width voiced mark compose under NFC.
      expect(prepareLocal('\uff76\uff9e')).to.equal('\u30ac');
    });

    it('does not width-map the resourcepart (OpaqueString)', () => {
      expect(parts('a@b/ＡＢＣ')[2]).to.equal('ＡＢＣ');
    });

    it('maps non-ASCII spaces in the resourcepart to U+0020', () => {
      expect(parts('a@b/x\u00a0y\u3000z')[2]).to.equal('x y z');
    });

    it('applies NFC to every part, so decomposed é equals precomposed é', () => {
      const decomposed = Jid.parse('caf\u0065\u0301@caf\u0065\u0301.example/caf\u0065\u0301');
      const composed = Jid.parse('caf\u00e9@caf\u00e9.example/caf\u00e9');
      expect(decomposed.equals(composed)).to.equal(true);
      expect(decomposed.toString()).to.equal('caf\u00e9@caf\u00e9.example/caf\u00e9');
    });

    it('uses toLowerCase(), keeping ß and final sigma (RFC 8265 3.3.2)', () => {
      expect(prepareLocal('Straße')).to.equal('straße');
      expect(prepareLocal('ΟΔΟΣ')).to.equal('οδος'.slice(0, 3) + 'ς');
    });

    it('stores domainparts with U-labels: A-labels are converted (RFC 7622 3.2.1)', () => {
      expect(prepareDomain('xn--exmple-cua.com')).to.equal('exämple.com');
      expect(prepareDomain('XN--EXMPLE-CUA.COM')).to.equal('exämple.com');
      expect(Jid.parse('a@xn--exmple-cua.com').equals(Jid.parse('a@Exämple.com'))).to.equal(true);
    });

    it('treats ideographic full stops as label separators', () => {
      expect(prepareDomain('例子。测试')).to.equal('例子.测试');
      expect(prepareDomain('example\uff0ecom')).to.equal('example.com');
    });

    it('leaves plain ASCII strings untouched apart from case', () => {
      expect(prepareResource('Some Resource!')).to.equal('Some Resource!');
      expect(prepareLocal('A.b-C_d+e')).to.equal('a.b-c_d+e');
    });
  });

  describe('length limits (1..1023 octets of UTF-8 per part)', () => {
    const e = '\u00e9'; // two octets in UTF-8

    it('accepts a 1023-octet localpart and rejects 1024', () => {
      expect(Jid.parse('a'.repeat(1023) + '@d').local).to.have.length(1023);
      rejects('a'.repeat(1024) + '@d', 'local');
      expect(Jid.parse(e.repeat(511) + 'a@d').local).to.have.length(512);
      rejects(e.repeat(512) + '@d', 'local');
    });

    it('counts octets after preparation', () => {
      // 1023 decomposed é (3 octets each) compose to 2046 octets: too long;
      // 511 of them compose to 1022 octets: fine.
      expect(Jid.parse('d/' + 'e\u0301'.repeat(511)).resource).to.equal(e.repeat(511));
      rejects('d/' + 'e\u0301'.repeat(512), 'resource');
      // 1023 full-width letters are 3069 octets raw but 1023 after width mapping.
      expect(Jid.parse('\uff41'.repeat(1023) + '@d').local).to.equal('a'.repeat(1023));
    });

    it('accepts a 1023-octet resourcepart and rejects 1024', () => {
      expect(Jid.parse('d/' + 'r'.repeat(1023)).resource).to.have.length(1023);
      rejects('d/' + 'r'.repeat(1024), 'resource');
      expect(Jid.parse('d/' + e.repeat(511) + 'r').resource).to.have.length(512);
      rejects('d/' + e.repeat(512), 'resource');
    });

    it('accepts a 1023-octet domainpart and rejects 1024', () => {
      const labels = Array.from({ length: 16 }, () => 'a'.repeat(63));
      const d1023 = labels.join('.');
      expect(d1023).to.have.length(1023);
      expect(Jid.parse(d1023).domain).to.equal(d1023);
      rejects(d1023 + 'a', 'domain');
      rejects('a.' + d1023, 'domain');
      // The limit is on UTF-8 octets of the U-label form, not UTF-16 units:
      // 16 labels of 'é' + 55 * 'a' (57 octets each, A-label <= 63 octets),
      // then ASCII labels up to exactly 1023 octets.
      const u = [
        ...Array.from({ length: 16 }, () => e + 'a'.repeat(55)),
        'b'.repeat(63),
        'c'.repeat(31),
      ].join('.');
      expect(Buffer.byteLength(u)).to.equal(1023);
      expect(u.length).to.equal(1023 - 16);
      expect(Jid.parse(u).domain).to.equal(u);
      rejects(u + 'c', 'domain');
    });

    it('limits labels to 63 octets (in A-label form for IDNs)', () => {
      expect(Jid.parse('a'.repeat(63) + '.com').domain).to.have.length(67);
      rejects('a'.repeat(64) + '.com', 'domain');
      rejects('x.' + 'b'.repeat(64), 'domain');
      // 60 é's need far more than 63 octets once punycoded.
      rejects(e.repeat(60) + '.com', 'domain');
    });

    it('rejects absurdly long input quickly', () => {
      rejects('a'.repeat(100000) + '@d', 'local');
      rejects('d/' + '\u00e9'.repeat(100000), 'resource');
      rejects('\u00e9'.repeat(100000), 'domain');
    });
  });

  describe('invalid JIDs', () => {
    it('rejects empty parts', () => {
      rejects('', 'domain');
      rejects('@d', 'local');
      rejects('l@', 'domain');
      rejects('d/', 'resource');
      rejects('l@d/', 'resource');
      rejects('@', 'local');
      rejects('/r', 'domain');
      rejects('l@/r', 'domain');
      rejects('.', 'domain');
    });

    it('rejects characters RFC 7622 3.3.1 forbids in localparts', () => {
      for (const c of ['"', '&', "'", '/', ':', '<', '>', '@']) {
        expect(() => prepareLocal(`a${c}b`), c).to.throw(JidError);
      }
      rejects('a"b@d', 'local');
      rejects("a'b@d", 'local');
      rejects('a:b@d', 'local');
      rejects('a<b@d', 'local');
    });

    it('rejects spaces and controls in localparts', () => {
      rejects('a b@d', 'local');
      rejects('a\tb@d', 'local');
      rejects('a\u00a0b@d', 'local');
      rejects('a\u3000b@d', 'local'); // width-maps to U+0020
      rejects('a\u0085b@d', 'local');
    });

    it('rejects code points that IdentifierClass disallows in localparts', () => {
      rejects('\u{1f600}@d', 'local'); // symbol
      rejects('a\u00bfb@d', 'local'); // non-ASCII punctuation
      rejects('\ufb01@d', 'local'); // compatibility ligature
      rejects('\u2163@d', 'local'); // roman numeral (Nl / compat)
      rejects('a\u00adb@d', 'local'); // default ignorable
      rejects('\ue000@d', 'local'); // private use
      rejects('\u0378@d', 'local'); // unassigned
      rejects('a\u0640b@d', 'local'); // exception: DISALLOWED
      rejects('\u1100@d', 'local'); // conjoining jamo (does not compose alone)
    });

    it('applies the contextual rules of RFC 5892 appendix A', () => {
      expect(prepareLocal('l\u00b7l')).to.equal('l\u00b7l');
      rejects('a\u00b7b@d', 'local');
      expect(prepareLocal('\u0915\u094d\u200d\u0937')).to.equal('\u0915\u094d\u200d\u0937');
      rejects('a\u200db@d', 'local');
      rejects('a\u200cb@d', 'local');
      expect(prepareLocal('\u0645\u06cc\u200c\u062e')).to.have.length(4);
      expect(prepareLocal('\u0375\u03b1')).to.have.length(2);
      rejects('\u0375a@d', 'local');
      rejects('a\u05f3@d', 'local');
      expect(prepareLocal('\u05d0\u05f3')).to.have.length(2);
      expect(prepareLocal('\u30ab\u30fb\u30ab')).to.have.length(3);
      rejects('a\u30fbb@d', 'local');
      expect(prepareLocal('\u0661\u0662')).to.have.length(2);
      rejects('\u0661\u06f2@d', 'local');
    });

    it('rejects controls, private use, unassigned and ignorable code points in resources', () => {
      rejects('a@d/x\u0000', 'resource');
      rejects('a@d/x\u0007y', 'resource');
      rejects('a@d/x\ny', 'resource');
      rejects('a@d/x\u007fy', 'resource');
      rejects('a@d/x\u0085y', 'resource');
      rejects('a@d/\ue000', 'resource');
      rejects('a@d/\u0378', 'resource');
      rejects('a@d/a\u200bb', 'resource');
      rejects('a@d/a\u2028b', 'resource');
      rejects('a@d/\ud800', 'resource');
    });

    it('allows symbols, punctuation and compatibility characters in resources (FreeformClass)', () => {
      expect(prepareResource('\u{1f600} \u00bf \ufb01 \u2163')).to.equal('\u{1f600} \u00bf \ufb01 \u2163');
    });

    it('rejects bad domainparts', () => {
      rejects('a@@b', 'domain');
      rejects('a@b@c', 'domain');
      rejects('exa mple.com', 'domain');
      rejects('example.com\u0000', 'domain');
      rejects('exa<mple.com', 'domain');
      rejects('exa>mple.com', 'domain');
      rejects('foo_bar.example', 'domain');
      rejects('-foo.example', 'domain');
      rejects('foo-.example', 'domain');
      rejects('a..b', 'domain');
      rejects('.example.com', 'domain');
      rejects('example.com..', 'domain');
      rejects('ab--c.example', 'domain'); // reserved LDH label
      rejects('xn--abc.example', 'domain'); // invalid A-label
      rejects('xn--.example', 'domain');
      rejects('\u2603.example', 'domain'); // IDNA2008 disallows symbols
      rejects('-\u00e9.example', 'domain');
      rejects('\u0301a.example', 'domain');
      rejects('\u00e9 .example', 'domain');
      rejects('\u00e9\u0000.example', 'domain');
      // UTS #46 would map these; IDNA2008 disallows them, so they are rejected.
      rejects('\u2177.example', 'domain');
      rejects('a\u00adb.example', 'domain');
      rejects('\ufb01.example', 'domain');
    });

    it('reports non-string input as a JID-level error', () => {
      expect(() => Jid.parse(42 as unknown as string))
        .to.throw(JidError)
        .with.property('part', 'jid');
    });
  });

  describe('domain literals', () => {
    it('accepts dotted IPv4 addresses', () => {
      expect(parts('user@192.0.2.1/r')).to.deep.equal(['user', '192.0.2.1', 'r']);
      expect(Jid.parse('127.0.0.1').domain).to.equal('127.0.0.1');
      rejects('256.0.0.1', 'domain');
      rejects('01.2.3.4', 'domain');
      rejects('1.2.3', 'domain');
    });

    it('accepts bracketed IPv6 addresses in a canonical form', () => {
      expect(parts('user@[2001:DB8::1]/r')).to.deep.equal(['user', '[2001:db8::1]', 'r']);
      expect(Jid.parse('[2001:db8:0:0:0:0:0:1]').equals(Jid.parse('[2001:db8::1]'))).to.equal(true);
      expect(Jid.parse('[::1]').domain).to.equal('[::1]');
      rejects('[::1', 'domain');
      rejects('[1.2.3.4]', 'domain');
      rejects('[fe80::1%eth0]', 'domain');
      rejects('[::g]', 'domain');
      rejects('::1', 'domain');
    });

    it('keeps numeric labels that are not the whole domain', () => {
      expect(Jid.parse('123.example.com').domain).to.equal('123.example.com');
      expect(Jid.parse('a.123').domain).to.equal('a.123');
    });

    it('strips one trailing dot before anything else (RFC 7622 3.2)', () => {
      expect(Jid.parse('example.com.').domain).to.equal('example.com');
      expect(Jid.parse('a@example.com./r').toString()).to.equal('a@example.com/r');
      expect(Jid.parse('a@example.com.').equals(Jid.parse('a@example.com'))).to.equal(true);
      expect(Jid.parse('192.0.2.1.').domain).to.equal('192.0.2.1');
      expect(Jid.parse('[::1].').domain).to.equal('[::1]');
      expect(Jid.parse('Exämple.com.').domain).to.equal('exämple.com');
    });
  });

  describe('Jid API', () => {
    it('compares prepared forms', () => {
      const a = Jid.parse('Juliet@Example.com/Balcony');
      expect(a.equals(Jid.parse('juliet@example.COM/Balcony'))).to.equal(true);
      expect(a.equals(Jid.parse('juliet@example.com/balcony'))).to.equal(false);
      expect(a.equals(Jid.parse('juliet@example.com'))).to.equal(false);
      expect(a.equals(Jid.parse('example.com/Balcony'))).to.equal(false);
    });

    it('derives bare JIDs', () => {
      const full = Jid.parse('juliet@example.com/balcony');
      expect(full.bare.toString()).to.equal('juliet@example.com');
      expect(full.bare.isBare).to.equal(true);
      expect(full.bareString()).to.equal('juliet@example.com');
      expect(full.bare).to.equal(full.bare);
      const bare = Jid.parse('juliet@example.com');
      expect(bare.bare).to.equal(bare);
      expect(Jid.parse('example.com/x').bareString()).to.equal('example.com');
    });

    it('replaces the resource with withResource()', () => {
      const j = Jid.parse('juliet@example.com/balcony').withResource('Garden\u00a0Path');
      expect(j.toString()).to.equal('juliet@example.com/Garden Path');
      expect(Jid.parse('example.com').withResource('x').toString()).to.equal('example.com/x');
      expect(() => Jid.parse('a@b').withResource('')).to.throw(JidError);
      expect(() => Jid.parse('a@b').withResource('\u0000')).to.throw(JidError);
    });

    it('builds JIDs from parts with of()', () => {
      expect(Jid.of('Juliet', 'Example.com', 'Balcony').toString()).to.equal('juliet@example.com/Balcony');
      expect(Jid.of('', 'example.com').toString()).to.equal('example.com');
      expect(Jid.of('a', 'example.com', '').isBare).to.equal(true);
      expect(Jid.of('a', 'example.com', 'x/y@z').resource).to.equal('x/y@z');
      expect(() => Jid.of('a@b', 'example.com'))
        .to.throw(JidError)
        .with.property('part', 'local');
      expect(() => Jid.of('a', 'example.com/x'))
        .to.throw(JidError)
        .with.property('part', 'domain');
      expect(() => Jid.of('a', ''))
        .to.throw(JidError)
        .with.property('part', 'domain');
    });

    it('serialises with toString()', () => {
      for (const s of ['example.com', 'a@example.com', 'example.com/r', 'a@example.com/r/s@t']) {
        expect(Jid.parse(s).toString()).to.equal(s);
        expect(`${Jid.parse(s)}`).to.equal(s);
      }
    });

    it('gives JidError a name and message', () => {
      try {
        Jid.parse('a b@c');
        expect.fail('should throw');
      } catch (err) {
        expect(err).to.be.instanceOf(JidError);
        expect(err).to.be.instanceOf(Error);
        expect((err as JidError).name).to.equal('JidError');
        expect((err as JidError).message).to.match(/localpart/);
      }
    });

    it('returns the same results from the cache', () => {
      for (let i = 0; i < 3; i++) {
        expect(prepareLocal('Jürgen')).to.equal('jürgen');
        expect(prepareDomain('Bücher.example')).to.equal('bücher.example');
        expect(prepareResource('Gerät\u00a01')).to.equal('Gerät 1');
      }
      // Cache eviction keeps results correct.
      for (let i = 0; i < 3000; i++) expect(prepareLocal(`Ü${i}`)).to.equal(`ü${i}`);
      expect(prepareLocal('Jürgen')).to.equal('jürgen');
    });
  });

  describe('properties', () => {
    const interesting = fc.constantFrom(
      'a',
      'Z',
      '0',
      '-',
      '.',
      '@',
      '/',
      ' ',
      '\u00a0',
      '\u3000',
      '\u00e9',
      'E\u0301',
      '\u0301',
      '\uff21',
      '\uff0e',
      '\u3002',
      '\u00df',
      '\u03a3',
      '\u03c2',
      '\u0130',
      '\u200c',
      '\u200d',
      '\u094d',
      '\u0915',
      '\u0634',
      '\u00b7',
      'l',
      '\uff76',
      '\uff9e',
      '\u65e5',
      '\u2177',
      'xn--',
      '[',
      ']',
      ':',
      '\u1100',
      '\u1161',
      '\u11a8',
    );
    const unit = fc.oneof(
      { arbitrary: interesting, weight: 4 },
      { arbitrary: fc.string({ unit: 'grapheme', minLength: 1, maxLength: 1 }), weight: 1 },
      { arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }), weight: 1 },
    );
    const anyString = fc.string({ unit, maxLength: 24 });
    const label = fc.string({
      unit: fc.constantFrom(
        'a',
        'B',
        '7',
        '-',
        '\u00e9',
        '\u00dc',
        '\u00df',
        '\u65e5',
        '\u03c2',
        'xn--',
        '\uff21',
      ),
      minLength: 1,
      maxLength: 8,
    });
    const domain = fc.array(label, { minLength: 1, maxLength: 4 }).map((ls) => ls.join('.'));

    function roundTrips(j: Jid): void {
      const again = Jid.parse(j.toString());
      expect(again.equals(j), j.toString()).to.equal(true);
      expect(again.toString()).to.equal(j.toString());
    }

    it('re-parsing toString() of any parsed JID yields an equal JID', () => {
      let valid = 0;
      fc.assert(
        fc.property(anyString, (s) => {
          const j = Jid.tryParse(s);
          if (j === null) return;
          valid++;
          roundTrips(j);
        }),
        { numRuns: 3000 },
      );
      expect(valid).to.be.greaterThan(0);
    });

    it('re-parsing toString() of a JID built from plausible parts yields an equal JID', () => {
      let valid = 0;
      fc.assert(
        fc.property(
          fc.option(anyString, { nil: undefined }),
          domain,
          fc.option(anyString, { nil: undefined }),
          (l, d, r) => {
            const s = (l === undefined ? '' : l + '@') + d + (r === undefined ? '' : '/' + r);
            const j = Jid.tryParse(s);
            if (j === null) return;
            valid++;
            roundTrips(j);
            expect(Jid.of(j.local, j.domain, j.resource).equals(j)).to.equal(true);
          },
        ),
        { numRuns: 3000 },
      );
      expect(valid).to.be.greaterThan(50);
    });

    it('each prepare function is idempotent', () => {
      const check = (prep: (s: string) => string, s: string): void => {
        let once: string;
        try {
          once = prep(s);
        } catch (err) {
          expect(err).to.be.instanceOf(JidError);
          return;
        }
        expect(prep(once), JSON.stringify(s)).to.equal(once);
      };
      fc.assert(
        fc.property(anyString, domain, (s, d) => {
          check(prepareLocal, s);
          check(prepareResource, s);
          check(prepareDomain, s);
          check(prepareDomain, d);
        }),
        { numRuns: 3000 },
      );
    });
  });
});
