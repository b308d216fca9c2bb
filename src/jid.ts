/**
 * XMPP addresses (JIDs) per RFC 7622, with the PRECIS profiles it relies on
 * (RFC 8264 framework, RFC 8265 UsernameCaseMapped / OpaqueString) and
 * IDNA2008 (RFC 5890-5892) for domainparts.
 *
 * Parsing runs for every routed stanza, so the common case (plain ASCII) never
 * touches String.prototype.normalize() or the Unicode property tables; the
 * non-ASCII slow path memoises its results in small LRU caches.
 *
 * Canonical forms produced here (what `local`, `domain`, `resource` hold):
 *  - localpart: UsernameCaseMapped output (width-mapped, lower-cased, NFC).
 *  - domainpart: lower-case, NFC, every IDN label in its U-label (Unicode)
 *    form, no trailing dot; IPv4 as dotted decimal, IPv6 as "[...]" in the
 *    WHATWG URL serialisation (lower-case hex, "::" compression).
 *  - resourcepart: OpaqueString output (non-ASCII spaces -> U+0020, NFC; case kept).
 * Because every part is stored prepared, comparing JIDs is plain string
 * equality, which is what RFC 7622 sections 3.2.3/3.3.3/3.4.3 prescribe
 * ("compare ... as case-sensitive sequences of Unicode code points").
 */
import { isIPv4, isIPv6 } from 'node:net';
import { domainToASCII, domainToUnicode } from 'node:url';

export type JidPart = 'local' | 'domain' | 'resource' | 'jid';

export class JidError extends Error {
  override name = 'JidError';
  /** Which part of the address was rejected ('jid' = the address as a whole). */
  readonly part: JidPart;

  constructor(message: string, part: JidPart) {
    super(message);
    this.part = part;
  }
}

// RFC 7622 3.2.2 / 3.3.2 / 3.4.2: after preparation each part "MUST NOT be zero
// bytes in length and MUST NOT be more than 1023 bytes in length" (UTF-8).
const MAX_PART_OCTETS = 1023;
// RFC 1035 2.3.4 / RFC 5890 2.3.2.1: a DNS label is at most 63 octets (in its
// A-label form for IDNs).
const MAX_LABEL_OCTETS = 63;
// Guard against spending normalisation time on absurd input. Preparation can
// shrink a string (NFC composition, width mapping: one full-width character is
// 3 UTF-8 octets before and 1 after) but never by more than this factor in
// practice, so anything longer than this cannot prepare to <= 1023 octets.
const MAX_RAW_UNITS = 4 * MAX_PART_OCTETS;
// Slow-path results for inputs longer than this are not cached so that the
// caches stay small (at most 3 * 2 * CACHE_SIZE keys of MAX_CACHED_KEY UTF-16 units).
const MAX_CACHED_KEY = 256;
const CACHE_SIZE = 512; // per generation, see LruCache

/**
 * Approximate LRU with O(1), allocation-free hits: two generations of Maps.
 * Hits in the old generation are promoted; when the young generation fills
 * up it becomes the old one and the previous old one is dropped. Entries that
 * were not used during a whole generation are therefore evicted.
 */
class LruCache {
  #young = new Map<string, string>();
  #old = new Map<string, string>();
  readonly #max: number;

  constructor(max: number) {
    this.#max = max;
  }

  get(key: string): string | undefined {
    const hit = this.#young.get(key);
    if (hit !== undefined) return hit;
    const old = this.#old.get(key);
    if (old !== undefined) this.#insert(key, old);
    return old;
  }

  set(key: string, value: string): void {
    if (key.length <= MAX_CACHED_KEY) this.#insert(key, value);
  }

  #insert(key: string, value: string): void {
    if (this.#young.size >= this.#max) {
      this.#old = this.#young;
      this.#young = new Map();
    }
    this.#young.set(key, value);
  }
}

const localCache = new LruCache(CACHE_SIZE);
const domainCache = new LruCache(CACHE_SIZE);
const resourceCache = new LruCache(CACHE_SIZE);

const PART_NAME: Record<Exclude<JidPart, 'jid'>, string> = {
  local: 'localpart',
  domain: 'domainpart',
  resource: 'resourcepart',
};

function fail(part: Exclude<JidPart, 'jid'>, reason: string): never {
  throw new JidError(`${PART_NAME[part]} ${reason}`, part);
}

function hex(cp: number): string {
  return 'U+' + cp.toString(16).toUpperCase().padStart(4, '0');
}

// Written as a negated class to avoid a control character in the pattern.
const IS_ASCII = /^[^\u0080-\uffff]*$/;

function utf8Length(s: string, ascii: boolean): number {
  return ascii ? s.length : Buffer.byteLength(s, 'utf8');
}

function checkLength(part: Exclude<JidPart, 'jid'>, s: string, ascii: boolean): void {
  if (s.length === 0) fail(part, 'must not be empty');
  if (utf8Length(s, ascii) > MAX_PART_OCTETS) fail(part, `must not exceed ${MAX_PART_OCTETS} octets`);
}

function checkRawLength(part: Exclude<JidPart, 'jid'>, s: string): void {
  if (s.length === 0) fail(part, 'must not be empty');
  if (s.length > MAX_RAW_UNITS) fail(part, `must not exceed ${MAX_PART_OCTETS} octets`);
}

// ---------------------------------------------------------------------------
// PRECIS (RFC 8264) string classes
// ---------------------------------------------------------------------------

/**
 * 'identifier' = PRECIS IdentifierClass (RFC 8264 4.2), used by localparts.
 * 'freeform'   = PRECIS FreeformClass (RFC 8264 4.3), used by resourceparts.
 * 'idna'       = IDNA2008 PVALID approximation for U-labels: the same
 *                derivation as IdentifierClass except that ASCII is limited
 *                to LDH (RFC 5892 2.6-2.9 vs RFC 8264 9.11).
 */
type StringClass = 'identifier' | 'freeform' | 'idna';

type ExceptionValue = 'PVALID' | 'CONTEXTO' | 'DISALLOWED';

/** RFC 5892 section 2.6 "Exceptions (F)", reused verbatim by RFC 8264 9.6. */
const EXCEPTIONS = new Map<number, ExceptionValue>([
  [0x00df, 'PVALID'], // LATIN SMALL LETTER SHARP S
  [0x03c2, 'PVALID'], // GREEK SMALL LETTER FINAL SIGMA
  [0x06fd, 'PVALID'], // ARABIC SIGN SINDHI AMPERSAND
  [0x06fe, 'PVALID'], // ARABIC SIGN SINDHI POSTPOSITION MEN
  [0x0f0b, 'PVALID'], // TIBETAN MARK INTERSYLLABIC TSHEG
  [0x3007, 'PVALID'], // IDEOGRAPHIC NUMBER ZERO
  [0x00b7, 'CONTEXTO'], // MIDDLE DOT
  [0x0375, 'CONTEXTO'], // GREEK LOWER NUMERAL SIGN (KERAIA)
  [0x05f3, 'CONTEXTO'], // HEBREW PUNCTUATION GERESH
  [0x05f4, 'CONTEXTO'], // HEBREW PUNCTUATION GERSHAYIM
  [0x30fb, 'CONTEXTO'], // KATAKANA MIDDLE DOT
  [0x0640, 'DISALLOWED'], // ARABIC TATWEEL
  [0x07fa, 'DISALLOWED'], // NKO LAJANYALAN
  [0x302e, 'DISALLOWED'], // HANGUL SINGLE DOT TONE MARK
  [0x302f, 'DISALLOWED'], // HANGUL DOUBLE DOT TONE MARK
  [0x3031, 'DISALLOWED'], // VERTICAL KANA REPEAT MARK
  [0x3032, 'DISALLOWED'],
  [0x3033, 'DISALLOWED'],
  [0x3034, 'DISALLOWED'],
  [0x3035, 'DISALLOWED'],
  [0x303b, 'DISALLOWED'], // VERTICAL IDEOGRAPHIC ITERATION MARK
]);
// ARABIC-INDIC DIGITS and EXTENDED ARABIC-INDIC DIGITS are CONTEXTO in the
// same exceptions list ("would otherwise have been PVALID").
for (let cp = 0x0660; cp <= 0x0669; cp++) EXCEPTIONS.set(cp, 'CONTEXTO');
for (let cp = 0x06f0; cp <= 0x06f9; cp++) EXCEPTIONS.set(cp, 'CONTEXTO');

// Single-code-point tests; the strings tested are always exactly one code point.
const RE_UNASSIGNED = /\p{Cn}/u;
const RE_CONTROL = /\p{Cc}/u;
// RFC 8264 9.13 PrecisIgnorableProperties: Default_Ignorable_Code_Point or
// Noncharacter_Code_Point.
const RE_IGNORABLE = /[\p{Default_Ignorable_Code_Point}\p{Noncharacter_Code_Point}]/u;
// RFC 8264 9.1 LetterDigits: Ll, Lu, Lo, Nd, Lm, Mn, Mc.
const RE_LETTER_DIGITS = /[\p{Ll}\p{Lu}\p{Lo}\p{Nd}\p{Lm}\p{Mn}\p{Mc}]/u;
// RFC 8264 9.18 OtherLetterDigits: Lt, Nl, No, Me.
const RE_OTHER_LETTER_DIGITS = /[\p{Lt}\p{Nl}\p{No}\p{Me}]/u;
const RE_SPACES = /\p{Zs}/u; // RFC 8264 9.14
const RE_SYMBOLS = /[\p{Sm}\p{Sc}\p{Sk}\p{So}]/u; // RFC 8264 9.15
const RE_PUNCTUATION = /\p{P}/u; // RFC 8264 9.16
const RE_MARK = /\p{M}/u;
const RE_NONSPACING_MARK = /\p{Mn}/u;
const RE_GREEK = /\p{Script=Greek}/u;
const RE_HEBREW = /\p{Script=Hebrew}/u;
const RE_KANA_HAN = /[\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Han}]/u;
// Letters of scripts that have cursive joining; stands in for the
// Joining_Type (L|D) / (R|D) tests of the ZWNJ rule, which JavaScript regular
// expressions cannot express.
const RE_JOINING_LETTER =
  /[\p{Script=Arabic}\p{Script=Syriac}\p{Script=Nko}\p{Script=Mongolian}\p{Script=Mandaic}\p{Script=Manichaean}\p{Script=Psalter_Pahlavi}\p{Script=Phags_Pa}\p{Script=Adlam}\p{Script=Hanifi_Rohingya}\p{Script=Sogdian}]/u;

/** RFC 8264 9.9 OldHangulJamo: Hangul_Syllable_Type L, V or T. */
function isOldHangulJamo(cp: number): boolean {
  return (
    (cp >= 0x1100 && cp <= 0x11ff) ||
    (cp >= 0xa960 && cp <= 0xa97c) ||
    (cp >= 0xd7b0 && cp <= 0xd7c6) ||
    (cp >= 0xd7cb && cp <= 0xd7fb)
  );
}

/**
 * Canonical_Combining_Class(ch) == Virama (9), probed through canonical
 * reordering because JavaScript exposes no ccc property: NFD moves a mark
 * with 0 < ccc < 10 in front of U+05B0 (ccc 10), and moves U+3099 (ccc 8) in
 * front of a mark with ccc > 8. Both happening means ccc == 9.
 */
function isVirama(ch: string): boolean {
  if (!RE_MARK.test(ch)) return false;
  return (
    ('a\u05b0' + ch).normalize('NFD') === 'a' + ch + '\u05b0' &&
    ('a' + ch + '\u3099').normalize('NFD') === 'a\u3099' + ch
  );
}

/** RFC 5892 Appendix A.1 (ZWNJ) and A.2 (ZWJ). */
function contextJOk(cps: readonly string[], i: number): boolean {
  if (i > 0 && isVirama(cps[i - 1]!)) return true;
  if (cps[i] === '\u200d') return false;
  // ZWNJ between joining letters (transparent marks skipped). Approximation
  // of: (Joining_Type:{L,D})(Joining_Type:T)*\u200C(Joining_Type:T)*(Joining_Type:{R,D}).
  let before = i - 1;
  while (before >= 0 && RE_NONSPACING_MARK.test(cps[before]!)) before--;
  let after = i + 1;
  while (after < cps.length && RE_NONSPACING_MARK.test(cps[after]!)) after++;
  return (
    before >= 0 &&
    after < cps.length &&
    RE_JOINING_LETTER.test(cps[before]!) &&
    RE_JOINING_LETTER.test(cps[after]!)
  );
}

/** RFC 5892 Appendix A.3-A.9. */
function contextOOk(cps: readonly string[], i: number, cp: number): boolean {
  switch (cp) {
    case 0x00b7: // MIDDLE DOT: only between two 'l' (Catalan "l·l")
      return cps[i - 1] === 'l' && cps[i + 1] === 'l';
    case 0x0375: // KERAIA: followed by Greek
      return i + 1 < cps.length && RE_GREEK.test(cps[i + 1]!);
    case 0x05f3: // GERESH / GERSHAYIM: preceded by Hebrew
    case 0x05f4:
      return i > 0 && RE_HEBREW.test(cps[i - 1]!);
    case 0x30fb: // KATAKANA MIDDLE DOT: some Hiragana, Katakana or Han in the string
      return cps.some((c) => RE_KANA_HAN.test(c));
    default:
      if (cp >= 0x0660 && cp <= 0x0669) {
        return !cps.some((c) => c >= '\u06f0' && c <= '\u06f9');
      }
      if (cp >= 0x06f0 && cp <= 0x06f9) {
        return !cps.some((c) => c >= '\u0660' && c <= '\u0669');
      }
      return false;
  }
}

/**
 * Rejects any code point that the string class does not allow, following the
 * order of the PRECIS derived-property algorithm (RFC 8264 section 8).
 * Expects the string to be NFC already (HasCompat is tested per code point).
 */
function checkStringClass(s: string, cls: StringClass, part: Exclude<JidPart, 'jid'>): void {
  const cps = Array.from(s);
  const freeform = cls === 'freeform';
  for (let i = 0; i < cps.length; i++) {
    const ch = cps[i]!;
    const cp = ch.codePointAt(0)!;
    if (cp < 0x80) {
      if (cls === 'idna') {
        // IDNA2008: only lower-case LDH is PVALID in ASCII.
        if ((cp >= 0x61 && cp <= 0x7a) || (cp >= 0x30 && cp <= 0x39) || cp === 0x2d) continue;
      } else if (cp >= 0x21 && cp <= 0x7e) {
        continue; // RFC 8264 9.11 ASCII7: PVALID in both classes
      } else if (cp === 0x20 && freeform) {
        continue; // U+0020 is in Spaces: FREE_PVAL, ID_DIS
      }
      fail(part, `contains disallowed character ${hex(cp)}`);
    }
    const exception = EXCEPTIONS.get(cp);
    if (exception !== undefined) {
      if (exception === 'PVALID') continue;
      if (exception === 'CONTEXTO' && contextOOk(cps, i, cp)) continue;
      fail(
        part,
        exception === 'CONTEXTO'
          ? `contains ${hex(cp)} outside the context in which it is allowed`
          : `contains disallowed character ${hex(cp)}`,
      );
    }
    if (RE_UNASSIGNED.test(ch)) fail(part, `contains unassigned code point ${hex(cp)}`);
    if (cp === 0x200c || cp === 0x200d) {
      if (contextJOk(cps, i)) continue;
      fail(part, `contains ${hex(cp)} outside the context in which it is allowed`);
    }
    if (isOldHangulJamo(cp)) fail(part, `contains conjoining Hangul jamo ${hex(cp)}`);
    if (RE_IGNORABLE.test(ch)) fail(part, `contains ignorable or noncharacter code point ${hex(cp)}`);
    if (RE_CONTROL.test(ch)) fail(part, `contains control character ${hex(cp)}`);
    // RFC 8264 9.17 HasCompat: toNFKC(cp) != cp.
    if (ch.normalize('NFKC') !== ch) {
      if (freeform) continue;
      fail(part, `contains compatibility character ${hex(cp)}`);
    }
    if (RE_LETTER_DIGITS.test(ch)) continue;
    if (
      RE_OTHER_LETTER_DIGITS.test(ch) ||
      RE_SPACES.test(ch) ||
      RE_SYMBOLS.test(ch) ||
      RE_PUNCTUATION.test(ch)
    ) {
      if (freeform) continue;
      fail(part, `contains disallowed character ${hex(cp)}`);
    }
    // Everything else (Cf, Co private use, Cs surrogates, Zl, Zp) is DISALLOWED.
    fail(part, `contains disallowed character ${hex(cp)}`);
  }
}

/**
 * PRECIS Width Mapping Rule (RFC 8265 3.3.2 step 1 / RFC 5895 2.1): "Map
 * fullwidth and halfwidth code points to their decomposition mappings". The
 * only code points with <wide>/<narrow> decompositions are U+3000 and the
 * U+FF01..U+FFEE block; for a single such code point NFKC yields exactly its
 * decomposition mapping, so NFKC is applied to those code points only.
 */
const RE_WIDTH = /[\u3000\uff01-\uffee]/g;
function widthMap(s: string): string {
  return s.replace(RE_WIDTH, (c) => c.normalize('NFKC'));
}

/**
 * RFC 8264 section 7: the rules are applied in order, and the result must be
 * stable; if one more application still changes the string after a couple of
 * rounds the input is rejected rather than producing a non-idempotent result.
 */
function applyUntilStable(s: string, rules: (s: string) => string, part: Exclude<JidPart, 'jid'>): string {
  let out = rules(s);
  for (let round = 0; round < 2; round++) {
    const again = rules(out);
    if (again === out) return out;
    out = again;
  }
  return fail(part, 'is not stable under preparation');
}

// ---------------------------------------------------------------------------
// Localpart: RFC 7622 section 3.3, PRECIS UsernameCaseMapped (RFC 8265 3.3)
// ---------------------------------------------------------------------------

// RFC 7622 3.3.1: the localpart "MUST NOT contain" U+0022 ("), U+0026 (&),
// U+0027 ('), U+002F (/), U+003A (:), U+003C (<), U+003E (>), U+0040 (@),
// although IdentifierClass otherwise allows all of ASCII 0x21-0x7E.
const LOCAL_ASCII_OK = /^[\x21\x23-\x25\x28-\x2e\x30-\x39\x3b\x3d\x3f\x41-\x7e]+$/;
const LOCAL_FORBIDDEN = /["&'/:<>@]/;

function localRules(s: string): string {
  // UsernameCaseMapped: 1. width mapping; 2. (no additional mapping);
  // 3. case mapping; 4. NFC. RFC 8265 3.3.2 step 3 specifies the Unicode
  // toLowerCase() operation (JavaScript's locale-independent toLowerCase), not
  // the Default Case Folding of the RFC 8264 framework, so this is exact
  // rather than an approximation (e.g. U+00DF stays, unlike full case folding).
  return widthMap(s).toLowerCase().normalize('NFC');
}

function prepareLocalSlow(raw: string): string {
  checkRawLength('local', raw);
  const out = applyUntilStable(raw, localRules, 'local');
  if (out.length === 0) fail('local', 'must not be empty');
  const bad = LOCAL_FORBIDDEN.exec(out);
  if (bad !== null) fail('local', `must not contain '${bad[0]}'`);
  // Length first: it is cheap and bounds the per-code-point work below.
  checkLength('local', out, false);
  checkStringClass(out, 'identifier', 'local');
  // TODO: the Bidi Rule (RFC 5893), which UsernameCaseMapped applies as its
  // directionality rule, is not enforced: it needs Bidi_Class data that
  // JavaScript regular expressions do not expose.
  return out;
}

/**
 * Prepares and enforces a localpart (RFC 7622 3.3.2: "An entity that performs
 * enforcement in XMPP localpart slots MUST prepare a string as described in
 * Section 3.3.1 and MUST also apply the rules specified in Section 3.3 of
 * [RFC8265]", i.e. UsernameCaseMapped). Throws JidError.
 */
export function prepareLocal(s: string): string {
  if (LOCAL_ASCII_OK.test(s)) {
    // Plain printable ASCII: width mapping and NFC are no-ops, every character
    // is ASCII7 (PVALID), so lower-casing is the whole preparation.
    if (s.length > MAX_PART_OCTETS) fail('local', `must not exceed ${MAX_PART_OCTETS} octets`);
    return s.toLowerCase();
  }
  if (IS_ASCII.test(s)) {
    if (s.length === 0) fail('local', 'must not be empty');
    const bad = LOCAL_FORBIDDEN.exec(s);
    if (bad !== null) fail('local', `must not contain '${bad[0]}'`);
    checkStringClass(s, 'identifier', 'local'); // reports the space/control character
  }
  const cached = localCache.get(s);
  if (cached !== undefined) return cached;
  const out = prepareLocalSlow(s);
  localCache.set(s, out);
  return out;
}

// ---------------------------------------------------------------------------
// Resourcepart: RFC 7622 section 3.4, PRECIS OpaqueString (RFC 8265 4.2)
// ---------------------------------------------------------------------------

const RESOURCE_ASCII_OK = /^[\x20-\x7e]+$/;
const RE_SPACES_GLOBAL = /\p{Zs}/gu;

function resourceRules(s: string): string {
  // OpaqueString: 1. no width mapping ("MUST NOT be mapped"); 2. additional
  // mapping: "Any instances of non-ASCII space MUST be mapped to ASCII space
  // (U+0020)"; 3. no case mapping; 4. NFC. (Mapping U+0020 to itself is harmless.)
  return s.replace(RE_SPACES_GLOBAL, ' ').normalize('NFC');
}

function prepareResourceSlow(raw: string): string {
  checkRawLength('resource', raw);
  const out = applyUntilStable(raw, resourceRules, 'resource');
  checkLength('resource', out, false); // cheap, and bounds the work below
  checkStringClass(out, 'freeform', 'resource');
  return out;
}

/**
 * Prepares and enforces a resourcepart (RFC 7622 3.4.2: enforcement "MUST
 * prepare a string as described in Section 3.4.1 and MUST also apply the
 * rules specified in Section 4.2 of [RFC8265]", i.e. OpaqueString). Case is
 * preserved; '@', '/' and spaces are allowed. Throws JidError.
 */
export function prepareResource(s: string): string {
  if (RESOURCE_ASCII_OK.test(s)) {
    if (s.length > MAX_PART_OCTETS) fail('resource', `must not exceed ${MAX_PART_OCTETS} octets`);
    return s; // printable ASCII and U+0020 are valid; NFC is a no-op
  }
  if (s.length === 0) fail('resource', 'must not be empty');
  if (IS_ASCII.test(s)) checkStringClass(s, 'freeform', 'resource'); // reports the control character
  const cached = resourceCache.get(s);
  if (cached !== undefined) return cached;
  const out = prepareResourceSlow(s);
  resourceCache.set(s, out);
  return out;
}

// ---------------------------------------------------------------------------
// Domainpart: RFC 7622 section 3.2, IDNA2008
// ---------------------------------------------------------------------------

const DOMAIN_FAST =
  /^(?:(?![a-z0-9]{2}--)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*(?![a-z0-9]{2}--)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/i;
const LDH_LABEL = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/;
const DOTTED_NUMERIC = /^(?=[^]*[0-9])[0-9.]+$/;
const IDEOGRAPHIC_FULL_STOP = /\u3002/g;

/**
 * An A-label must decode to a valid U-label that encodes back to the same
 * A-label (RFC 5891 5.3-5.5). RFC 7622 3.2.1: "each A-label MUST be converted
 * to a U-label during preparation of a string for inclusion in a domainpart slot".
 */
function aLabelToULabel(aLabel: string): string {
  const u = domainToUnicode(aLabel);
  if (u === '' || u.includes('.') || domainToASCII(u) !== aLabel) {
    fail('domain', `contains invalid A-label '${aLabel}'`);
  }
  checkULabel(u);
  return u;
}

/**
 * IDNA2008 U-label checks beyond what the WHATWG/UTS #46 processing behind
 * node:url enforces (it runs with CheckHyphens=false and allows symbols):
 * RFC 5891 4.2.3.1 hyphen restrictions, 4.2.3.2 no leading combining mark,
 * and the RFC 5892 code point derivation (approximated by the PRECIS one).
 */
function checkULabel(u: string): void {
  if (u.startsWith('-') || u.endsWith('-')) fail('domain', `label '${u}' must not start or end with '-'`);
  if (u.length >= 4 && u[2] === '-' && u[3] === '-') {
    fail('domain', `label '${u}' must not contain '--' in the third and fourth positions`);
  }
  if (RE_MARK.test(Array.from(u)[0]!)) fail('domain', `label '${u}' must not start with a combining mark`);
  checkStringClass(u, 'idna', 'domain');
  // TODO: the IDNA2008 Bidi Rule (RFC 5893) is only as strict as node:url's
  // UTS #46 CheckBidi; no separate check is made here.
}

/** Checks a lower-cased ASCII label and returns its canonical (U-label for xn--) form. */
function prepareAsciiLabel(label: string): string {
  if (label.length === 0) fail('domain', 'must not contain an empty label');
  if (label.length > MAX_LABEL_OCTETS) fail('domain', `label exceeds ${MAX_LABEL_OCTETS} octets`);
  if (!LDH_LABEL.test(label)) {
    const bad = /[^a-z0-9-]/.exec(label);
    if (bad !== null) fail('domain', `contains disallowed character ${hex(bad[0].codePointAt(0)!)}`);
    fail('domain', `label '${label}' must not start or end with '-'`);
  }
  if (label.length >= 4 && label[2] === '-' && label[3] === '-') {
    if (label.startsWith('xn--')) return aLabelToULabel(label);
    // RFC 5890 2.3.1: R-LDH labels that are not A-labels are reserved; RFC
    // 7622 only admits NR-LDH labels and U-labels.
    fail('domain', `label '${label}' is a reserved LDH label`);
  }
  return label;
}

/** A label containing non-ASCII after mapping: run it through IDNA ToASCII and back. */
function prepareUnicodeLabel(label: string): string {
  // An A-label is "xn--" plus at least one character per code point, so a
  // longer U-label cannot fit in 63 octets; bail out before any IDNA work.
  if (label.length > 2 * MAX_LABEL_OCTETS) fail('domain', `label exceeds ${MAX_LABEL_OCTETS} octets`);
  // Convert one label at a time: whole-domain conversion would apply the
  // WHATWG IPv4 number parser to a numeric last label.
  const a = domainToASCII(label);
  if (a === '' || a.includes('.')) fail('domain', `contains invalid label '${label}'`);
  if (a.length > MAX_LABEL_OCTETS) fail('domain', `label exceeds ${MAX_LABEL_OCTETS} octets`);
  // The label must already be a U-label once our own mappings (width, case,
  // NFC) are applied. UTS #46 performs further mappings that IDNA2008 does not
  // (e.g. U+2177 -> "viii", U+00AD -> nothing); such labels are rejected
  // rather than silently rewritten.
  if (!a.startsWith('xn--')) fail('domain', `label '${label}' is not a valid U-label`);
  const u = aLabelToULabel(a);
  if (u !== label) fail('domain', `label '${label}' is not a valid U-label`);
  return u;
}

function prepareIpLiteral(s: string): string {
  // RFC 3986 IP-literal: "[" IPv6address "]". IPvFuture and RFC 6874 zone
  // identifiers are not accepted.
  const inner = s.endsWith(']') ? s.slice(1, -1) : '';
  if (inner.includes('%') || !isIPv6(inner)) fail('domain', 'is not a valid IPv6 literal');
  try {
    // WHATWG URL serialisation gives one canonical text form per address
    // (RFC 5952 style compression, lower-case hex).
    return new URL(`http://[${inner}]/`).hostname;
  } catch {
    return fail('domain', 'is not a valid IPv6 literal');
  }
}

function mapDomain(s: string): string {
  // RFC 7622 3.2.2: enforcement "MUST also apply the normalization,
  // case-mapping, and width-mapping rules defined in [RFC5892]" (the RFC 5895
  // mappings). U+3002 IDEOGRAPHIC FULL STOP (and, via width mapping, U+FF0E and
  // U+FF61) is treated as a label separator as IDNA processing does.
  return widthMap(s).toLowerCase().normalize('NFC').replace(IDEOGRAPHIC_FULL_STOP, '.');
}

function prepareDomainLabels(s: string): string {
  // RFC 3986 IPv4address (dotted decimal without leading zeros). Anything made
  // only of digits and dots that is not one is rejected rather than being
  // taken as a host name.
  if (DOTTED_NUMERIC.test(s)) {
    if (!isIPv4(s)) fail('domain', 'is not a valid IPv4 address');
    return s;
  }
  const labels = s.split('.');
  let changed = false;
  for (let i = 0; i < labels.length; i++) {
    const label = labels[i]!;
    const out = IS_ASCII.test(label) ? prepareAsciiLabel(label) : prepareUnicodeLabel(label);
    if (out !== label) {
      labels[i] = out;
      changed = true;
    }
  }
  const result = changed ? labels.join('.') : s;
  checkLength('domain', result, IS_ASCII.test(result));
  return result;
}

function prepareDomainSlow(s: string): string {
  const mapped = mapDomain(s);
  if (mapped.length === 0) fail('domain', 'must not be empty');
  return prepareDomainLabels(mapped);
}

/**
 * Prepares and enforces a domainpart (RFC 7622 3.2). The result is the
 * canonical form described in the module comment. Throws JidError.
 */
export function prepareDomain(input: string): string {
  let s = input;
  // RFC 7622 3.2: a final label separator "MUST be stripped from the
  // domainpart before the JID of which it is a part is used for the purpose of
  // routing an XML stanza, comparing against another JID, or constructing an
  // XMPP URI or IRI. In particular, such a character MUST be stripped before
  // any other canonicalization steps are taken."
  if (s.endsWith('.')) s = s.slice(0, -1);
  // Fast path, one regex pass: LDH labels of 1..63 octets, none with "--" in
  // the third and fourth positions (A-labels and reserved labels), and a last
  // character that is not a digit (so no IPv4 address or all-numeric name).
  const last = s.charCodeAt(s.length - 1);
  if (s.length <= MAX_PART_OCTETS && !(last >= 0x30 && last <= 0x39) && DOMAIN_FAST.test(s)) {
    return s.toLowerCase();
  }
  checkRawLength('domain', s);
  if (s.charCodeAt(0) === 0x5b /* [ */) return prepareIpLiteral(s);
  if (IS_ASCII.test(s)) {
    const lower = s.toLowerCase();
    // Plain ASCII without A-labels needs no normalisation or IDNA work.
    if (!lower.includes('xn--')) {
      // Without A-labels the result is exactly this string, so its length is final.
      if (lower.length > MAX_PART_OCTETS) fail('domain', `must not exceed ${MAX_PART_OCTETS} octets`);
      return prepareDomainLabels(lower);
    }
  }
  const cached = domainCache.get(s);
  if (cached !== undefined) return cached;
  const out = prepareDomainSlow(s);
  domainCache.set(s, out);
  return out;
}

// ---------------------------------------------------------------------------
// Jid
// ---------------------------------------------------------------------------

/**
 * An immutable, fully prepared JID. Instances are only created from prepared
 * parts, so equality is field equality.
 */
export class Jid {
  /** Prepared localpart, '' when absent. */
  readonly local: string;
  /** Prepared domainpart (never empty). */
  readonly domain: string;
  /** Prepared resourcepart, '' when absent. */
  readonly resource: string;
  #string: string | undefined;
  #bare: Jid | undefined;

  private constructor(local: string, domain: string, resource: string) {
    this.local = local;
    this.domain = domain;
    this.resource = resource;
  }

  /**
   * Parses and prepares a JID string. RFC 7622 3.1 (Fundamentals): the
   * resourcepart is everything after the first '/', so it may itself contain
   * '/' and '@'; in what precedes it, the localpart is everything before the
   * first '@' and the domainpart the rest. A separator with nothing after
   * (or, for '@', before) it makes the JID invalid. Throws JidError.
   */
  static parse(s: string): Jid {
    if (typeof s !== 'string') throw new JidError('JID must be a string', 'jid');
    const slash = s.indexOf('/');
    const head = slash === -1 ? s : s.slice(0, slash);
    const at = head.indexOf('@');
    const local = at === -1 ? '' : prepareLocal(head.slice(0, at));
    const domain = prepareDomain(at === -1 ? head : head.slice(at + 1));
    const resource = slash === -1 ? '' : prepareResource(s.slice(slash + 1));
    return new Jid(local, domain, resource);
  }

  /** Like parse(), but returns null for an invalid JID. */
  static tryParse(s: string): Jid | null {
    try {
      return Jid.parse(s);
    } catch (err) {
      if (err instanceof JidError) return null;
      throw err;
    }
  }

  /**
   * Builds a JID from separate parts, preparing each. An empty local or
   * resource means "absent"; the domain is required. Throws JidError.
   */
  static of(local: string, domain: string, resource?: string): Jid {
    return new Jid(
      local === '' ? '' : prepareLocal(local),
      prepareDomain(domain),
      resource === undefined || resource === '' ? '' : prepareResource(resource),
    );
  }

  /** The JID without its resource (itself when already bare). */
  get bare(): Jid {
    if (this.resource === '') return this;
    return (this.#bare ??= new Jid(this.local, this.domain, ''));
  }

  get isBare(): boolean {
    return this.resource === '';
  }

  get isFull(): boolean {
    return this.resource !== '';
  }

  /** True when there is no localpart (a server or component address, possibly with a resource). */
  get isDomain(): boolean {
    return this.local === '';
  }

  bareString(): string {
    return this.local === '' ? this.domain : `${this.local}@${this.domain}`;
  }

  toString(): string {
    return (this.#string ??=
      this.resource === '' ? this.bareString() : `${this.bareString()}/${this.resource}`);
  }

  equals(other: Jid): boolean {
    return (
      this === other ||
      (this.domain === other.domain && this.local === other.local && this.resource === other.resource)
    );
  }

  /** Same bare JID with the given resource (prepared; must not be empty). Throws JidError. */
  withResource(r: string): Jid {
    return new Jid(this.local, this.domain, prepareResource(r));
  }
}
