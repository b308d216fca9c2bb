/**
 * Hardened streaming XML parser for XMPP streams (RFC 6120 section 11).
 *
 * Why hand-written instead of saxes or ltx's own parsers: an XMPP server reads
 * one endless XML document from an untrusted peer, so it needs
 *  - byte-accurate limits enforced mid-token (a single multi-megabyte text node
 *    or attribute value must be refused as soon as it crosses the stanza limit,
 *    not after it has been buffered);
 *  - "restricted XML" rejection at the first byte of a DTD, comment or
 *    processing instruction (no entity-expansion tricks ever get parsed);
 *  - incremental UTF-8 validation, including characters split across TCP reads.
 * General-purpose parsers work on already-decoded strings and buffer text and
 * attributes without bound, so none of the above can be enforced from outside.
 *
 * Design: one pass over the bytes. Each byte is counted against the current
 * "unit" (the stream header, or one depth-1 element from its '<' to the end of
 * its end tag), then fed through an incremental UTF-8 validator; every complete
 * code point drives a character-level state machine. Token contents (names,
 * attribute values, text) are accumulated as UTF-8 bytes in a single growable
 * buffer that can never exceed the unit limit, and are decoded once per token.
 * Runs of ordinary bytes (name characters; text and attribute-value bytes,
 * including complete valid UTF-8 sequences) take a bulk-copy fast path.
 *
 * What RFC 6120 section 11.1 prohibits ("comments, processing instructions,
 * internal or external DTD subsets, internal or external entity references
 * (with the exception of the predefined entities)") is reported as
 * 'restricted-xml'. CDATA sections are not on that list, so they are accepted
 * inside stanzas and delivered as ordinary text.
 */
import { Element } from 'ltx';

export interface ParserLimits {
  /** Bytes of one depth-1 element (and of the stream header), from '<' to the end of its end tag. */
  maxStanzaBytes: number;
  /** Element nesting depth, counting the stanza itself as depth 1. */
  maxDepth: number;
  /** Attributes (namespace declarations included) on one element. */
  maxAttributes: number;
  /** Bytes of one element or attribute name; defaults to 1024. */
  maxNameBytes?: number;
}

export type ParserErrorCondition =
  | 'restricted-xml'
  | 'not-well-formed'
  | 'policy-violation'
  | 'invalid-namespace'
  | 'bad-format'
  | 'unsupported-encoding';

export interface StreamHeader {
  /** Qualified name as written, e.g. 'stream:stream'. */
  name: string;
  /** Name without prefix, e.g. 'stream'. */
  localName: string;
  /** Resolved namespace of the header element; null when it has none. */
  namespace: string | null;
  /** Attributes as written (namespace declarations included). */
  attrs: Record<string, string>;
  /** Namespaces declared on the header: prefix ('' for the default namespace) -> URI. */
  namespaces: Record<string, string>;
}

export interface StreamParserHandler {
  /** The <stream:stream ...> open tag. */
  streamStart(header: StreamHeader): void;
  /** Each complete depth-1 child of the stream, self-contained (see class doc). */
  stanza(element: Element): void;
  /** </stream:stream> */
  streamEnd(): void;
  /** Fatal error; the parser ignores all further input until reset(). */
  error(condition: ParserErrorCondition, text: string): void;
}

export const XML_NS = 'http://www.w3.org/XML/1998/namespace';
const XMLNS_NS = 'http://www.w3.org/2000/xmlns/';
const DEFAULT_MAX_NAME_BYTES = 1024;
const INITIAL_TOKEN_BUFFER = 2048;
/** Above this capacity the token buffer is released after each stanza. */
const SHRINK_THRESHOLD = 64 * 1024;

// ---------------------------------------------------------------------------
// Character classes

const CC_NAME_START = 1; // NCName start character (no colon)
const CC_NAME = 2; // NCName character (no colon)
const CC_WS = 4; // S ::= (#x20 | #x9 | #xD | #xA)+
const CC_TEXT_FAST = 8; // bytes copied verbatim in character data
const CC_ATTR_FAST = 16; // bytes copied verbatim in attribute values

/** Indexed by byte value; bytes >= 0x80 are all zero (handled by the slow path). */
const CC = new Uint8Array(256);
for (let c = 0; c < 128; c++) {
  let f = 0;
  const isAlpha = (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
  if (isAlpha || c === 0x5f) f |= CC_NAME_START | CC_NAME;
  if ((c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x2e) f |= CC_NAME;
  if (c === 0x20 || c === 0x09 || c === 0x0d || c === 0x0a) f |= CC_WS;
  // '<' and '&' start markup; '>' needs the "]]>" check; CR needs line-end normalization.
  if ((c >= 0x20 && c !== 0x3c && c !== 0x26 && c !== 0x3e) || c === 0x09 || c === 0x0a) f |= CC_TEXT_FAST;
  // Quotes may end the value; tab/LF/CR are normalized to spaces (XML 1.0 section 3.3.3).
  if (c >= 0x20 && c !== 0x3c && c !== 0x26 && c !== 0x22 && c !== 0x27) f |= CC_ATTR_FAST;
  CC[c] = f;
}

function isNameStart(c: number): boolean {
  if (c < 0x80) return (CC[c] & CC_NAME_START) !== 0;
  return (
    (c >= 0xc0 && c <= 0xd6) ||
    (c >= 0xd8 && c <= 0xf6) ||
    (c >= 0xf8 && c <= 0x2ff) ||
    (c >= 0x370 && c <= 0x37d) ||
    (c >= 0x37f && c <= 0x1fff) ||
    c === 0x200c ||
    c === 0x200d ||
    (c >= 0x2070 && c <= 0x218f) ||
    (c >= 0x2c00 && c <= 0x2fef) ||
    (c >= 0x3001 && c <= 0xd7ff) ||
    (c >= 0xf900 && c <= 0xfdcf) ||
    (c >= 0xfdf0 && c <= 0xfffd) ||
    (c >= 0x10000 && c <= 0xeffff)
  );
}

function isNameChar(c: number): boolean {
  if (c < 0x80) return (CC[c] & CC_NAME) !== 0;
  return isNameStart(c) || c === 0xb7 || (c >= 0x300 && c <= 0x36f) || c === 0x203f || c === 0x2040;
}

function isWs(c: number): boolean {
  return c < 0x80 && (CC[c] & CC_WS) !== 0;
}

/** Char ::= #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF] */
function isXmlChar(c: number): boolean {
  if (c < 0x20) return c === 0x09 || c === 0x0a || c === 0x0d;
  return c <= 0xd7ff || (c >= 0xe000 && c <= 0xfffd) || (c >= 0x10000 && c <= 0x10ffff);
}

/**
 * Length of the complete, valid UTF-8 sequence of an allowed XML character
 * starting at chunk[j] (lead byte >= 0x80), or 0 if it is invalid, not allowed
 * (U+FFFE, U+FFFF), or not entirely before `end`.
 */
function utf8SequenceLength(chunk: Uint8Array, j: number, end: number): number {
  const b = chunk[j];
  if (b >= 0xc2 && b <= 0xdf) {
    return j + 1 < end && (chunk[j + 1] & 0xc0) === 0x80 ? 2 : 0;
  }
  if (b >= 0xe0 && b <= 0xef) {
    if (j + 2 >= end) return 0;
    const b1 = chunk[j + 1];
    const b2 = chunk[j + 2];
    if (b1 < (b === 0xe0 ? 0xa0 : 0x80) || b1 > (b === 0xed ? 0x9f : 0xbf) || (b2 & 0xc0) !== 0x80) return 0;
    if (b === 0xef && b1 === 0xbf && b2 >= 0xbe) return 0; // U+FFFE, U+FFFF
    return 3;
  }
  if (b >= 0xf0 && b <= 0xf4) {
    if (j + 3 >= end) return 0;
    const b1 = chunk[j + 1];
    if (b1 < (b === 0xf0 ? 0x90 : 0x80) || b1 > (b === 0xf4 ? 0x8f : 0xbf)) return 0;
    if ((chunk[j + 2] & 0xc0) !== 0x80 || (chunk[j + 3] & 0xc0) !== 0x80) return 0;
    return 4;
  }
  return 0;
}

const PREDEFINED_ENTITIES = new Map<string, number>([
  ['lt', 0x3c],
  ['gt', 0x3e],
  ['amp', 0x26],
  ['quot', 0x22],
  ['apos', 0x27],
]);
const PREDEFINED_NAMES = [...PREDEFINED_ENTITIES.keys()];

function isPredefinedPrefix(s: string): boolean {
  for (const n of PREDEFINED_NAMES) if (n.startsWith(s)) return true;
  return false;
}

/** Own-property assignment that is safe for attacker-chosen keys such as '__proto__'. */
function setOwn(obj: Record<string, string>, key: string, value: string): void {
  if (key === '__proto__') {
    Object.defineProperty(obj, key, { value, writable: true, enumerable: true, configurable: true });
  } else {
    obj[key] = value;
  }
}

function clip(s: string): string {
  return s.length > 64 ? s.slice(0, 64) + '...' : s;
}

function normalizeLimits(l: ParserLimits): Required<ParserLimits> {
  const out = {
    maxStanzaBytes: l.maxStanzaBytes,
    maxDepth: l.maxDepth,
    maxAttributes: l.maxAttributes,
    maxNameBytes: l.maxNameBytes ?? DEFAULT_MAX_NAME_BYTES,
  };
  for (const [k, v] of Object.entries(out)) {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`parser limit ${k} must be a positive integer`);
  }
  return out;
}

// ---------------------------------------------------------------------------
// States of the character-level machine

const S_PROLOG = 0; // before the stream header
const S_LT = 1; // after '<'
const S_BANG = 2; // after '<!'
const S_CDATA_OPEN = 3; // matching 'CDATA['
const S_CDATA = 4;
const S_PI_TARGET = 5; // after '<?' at the very start: must be the XML declaration
const S_DECL_SPACE = 6; // XML declaration: between pseudo-attributes
const S_DECL_NAME = 7;
const S_DECL_EQ = 8;
const S_DECL_VALUE_START = 9;
const S_DECL_VALUE = 10;
const S_DECL_AFTER_VALUE = 11;
const S_DECL_END = 12; // after '?', expecting '>'
const S_START_NAME = 13;
const S_TAG_SPACE = 14; // inside a start tag, after whitespace
const S_ATTR_NAME = 15;
const S_ATTR_EQ = 16;
const S_ATTR_VALUE_START = 17;
const S_ATTR_VALUE = 18;
const S_AFTER_ATTR = 19; // right after an attribute's closing quote
const S_EMPTY_SLASH = 20; // '/' in a start tag, expecting '>'
const S_END_NAME_START = 21; // after '</'
const S_END_NAME = 22;
const S_END_SPACE = 23;
const S_TEXT = 24; // content of the stream or of an element
const S_ENT_START = 25; // after '&'
const S_ENT_NAME = 26;
const S_CHARREF_START = 27; // after '&#'
const S_CHARREF = 28;
const S_AFTER_END = 29; // after </stream:stream>

const CTX_TEXT = 0;
const CTX_ATTR = 1;

const DECL_VERSION = 1;
const DECL_ENCODING = 2;
const DECL_STANDALONE = 4;

/**
 * Incremental parser for one XMPP stream (and, via reset(), its restarts).
 *
 * Emitted depth-1 elements are self-contained: the stanza root carries an
 * explicit `xmlns` with the default namespace in scope (typically inherited
 * from the stream header) and an `xmlns:p` for every prefix that it or a
 * descendant uses but that was declared only on the stream header. Names keep
 * their prefix as written (ltx convention, e.g. 'stream:features').
 * Caveat inherited from ltx: Element.getNS() treats an undeclaration
 * (`xmlns=''`) on a descendant as absent and keeps walking up.
 *
 * Handler callbacks run synchronously inside write(). If a callback calls
 * reset(), the rest of the chunk being processed is discarded: those bytes
 * were sent before the stream restart and must not be interpreted as part of
 * the new stream (the STARTTLS command-injection class of bugs).
 */
export class StreamParser {
  private readonly handler: StreamParserHandler;
  private limits: Required<ParserLimits>;

  private state = S_PROLOG;
  private dead = false;
  private writing = false;
  private generation = 0;

  // Incremental UTF-8 decoder: bytes still needed, code point so far, and the
  // allowed range of the next continuation byte (tight ranges after E0/ED/F0/F4
  // reject overlong forms, surrogates and values above U+10FFFF at the first
  // offending byte, per RFC 3629 section 4).
  private u8need = 0;
  private u8cp = 0;
  private u8lo = 0x80;
  private u8hi = 0xbf;

  // Byte budget of the current unit (stream header, or one depth-1 element).
  private counting = true;
  private unitBytes = 0;

  // Token accumulator (UTF-8 bytes, already validated).
  private tokBuf: Buffer = Buffer.allocUnsafe(INITIAL_TOKEN_BUFFER);
  private tokLen = 0;

  // Prolog.
  private declAllowed = true;
  private bomSeen = false;
  private piLen = 0;
  private declSeen = 0;
  private declName = '';

  // Names and start tags.
  private nameColon = false;
  private afterColon = false;
  private tagName = '';
  private attrName = '';
  private attrNames: string[] = [];
  private attrValues: string[] = [];
  private attrSet: Set<string> | null = null;
  private quote = 0;

  // Character data.
  private crPending = false; // previous char was CR: a following LF is dropped (XML 1.0 section 2.11)
  private bracketRun = 0; // consecutive literal ']' in character data, for the "]]>" check
  private cdataIdx = 0;
  private cdataBrackets = 0;

  // References.
  private entCtx = CTX_TEXT;
  private entName = '';
  private refVal = 0;
  private refHex = false;
  private refDigits = 0;

  // Tree. `open` counts open elements including the stream header;
  // scopes[k] holds the namespace declarations of the k-th open element.
  private headerName = '';
  private open = 0;
  private scopes: (Map<string, string> | null)[] = [];
  private elems: Element[] = [];
  private lookupLevel = -1;

  constructor(handler: StreamParserHandler, limits: ParserLimits) {
    this.handler = handler;
    this.limits = normalizeLimits(limits);
  }

  /** Replace the limits; applies from the next byte on (e.g. a larger stanza limit after authentication). */
  setLimits(limits: ParserLimits): void {
    this.limits = normalizeLimits(limits);
  }

  /**
   * Stream restart (after STARTTLS or SASL success): forget everything and
   * expect an optional XML declaration and a new stream header.
   */
  reset(): void {
    this.generation++;
    this.state = S_PROLOG;
    this.dead = false;
    this.u8need = 0;
    this.u8cp = 0;
    this.counting = true;
    this.unitBytes = 0;
    if (this.tokBuf.length > SHRINK_THRESHOLD) this.tokBuf = Buffer.allocUnsafe(INITIAL_TOKEN_BUFFER);
    this.tokLen = 0;
    this.declAllowed = true;
    this.bomSeen = false;
    this.declSeen = 0;
    this.attrNames = [];
    this.attrValues = [];
    this.attrSet = null;
    this.crPending = false;
    this.bracketRun = 0;
    this.headerName = '';
    this.open = 0;
    this.scopes = [];
    this.elems = [];
  }

  /** Bytes of the depth-1 element (or stream header) currently being parsed. */
  get bytesInCurrentStanza(): number {
    return this.counting ? this.unitBytes : 0;
  }

  /** Capacity of the internal token buffer; exposed so tests can check memory stays bounded. */
  get bufferedBytes(): number {
    return this.tokBuf.length;
  }

  write(chunk: Uint8Array): void {
    if (this.dead) return;
    if (this.writing) throw new Error('StreamParser.write() is not re-entrant');
    this.writing = true;
    try {
      this.run(chunk);
    } finally {
      this.writing = false;
    }
  }

  // -------------------------------------------------------------------------

  private run(chunk: Uint8Array): void {
    const gen = this.generation;
    const n = chunk.length;
    let i = 0;
    while (i < n) {
      if (this.u8need === 0 && !this.crPending) {
        const st = this.state;
        let cls = 0;
        if (st === S_TEXT) {
          if (this.open >= 2) cls = CC_TEXT_FAST;
        } else if (st === S_ATTR_VALUE) {
          cls = CC_ATTR_FAST;
        } else if ((st === S_START_NAME || st === S_ATTR_NAME || st === S_END_NAME) && !this.afterColon) {
          cls = CC_NAME;
        }
        if (cls !== 0) {
          i = this.fastCopy(chunk, i, n, cls);
          if (this.dead || this.generation !== gen) return;
          if (i >= n) break;
        }
      }
      const b = chunk[i++];
      if (this.counting && ++this.unitBytes > this.limits.maxStanzaBytes) {
        this.failSize();
        return;
      }
      if (this.u8need === 0) {
        if (b < 0x80) {
          if (b < 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0d) {
            this.fail(
              'not-well-formed',
              `character U+${b.toString(16).padStart(4, '0')} is not allowed in XML`,
            );
            return;
          }
          this.step(b);
        } else if (b >= 0xc2 && b <= 0xdf) {
          this.u8need = 1;
          this.u8cp = b & 0x1f;
          this.u8lo = 0x80;
          this.u8hi = 0xbf;
        } else if (b >= 0xe0 && b <= 0xef) {
          this.u8need = 2;
          this.u8cp = b & 0x0f;
          this.u8lo = b === 0xe0 ? 0xa0 : 0x80; // E0 80..9F would be overlong
          this.u8hi = b === 0xed ? 0x9f : 0xbf; // ED A0..BF would encode surrogates
        } else if (b >= 0xf0 && b <= 0xf4) {
          this.u8need = 3;
          this.u8cp = b & 0x07;
          this.u8lo = b === 0xf0 ? 0x90 : 0x80; // F0 80..8F would be overlong
          this.u8hi = b === 0xf4 ? 0x8f : 0xbf; // F4 90.. would exceed U+10FFFF
        } else {
          this.fail('not-well-formed', `invalid UTF-8 byte 0x${b.toString(16)}`);
          return;
        }
      } else {
        if (b < this.u8lo || b > this.u8hi) {
          this.fail('not-well-formed', 'invalid UTF-8 sequence');
          return;
        }
        this.u8cp = (this.u8cp << 6) | (b & 0x3f);
        this.u8lo = 0x80;
        this.u8hi = 0xbf;
        if (--this.u8need === 0) {
          const c = this.u8cp;
          if (c === 0xfffe || c === 0xffff) {
            this.fail('not-well-formed', `character U+${c.toString(16)} is not allowed in XML`);
            return;
          }
          this.step(c);
        }
      }
      if (this.dead || this.generation !== gen) return;
    }
  }

  /**
   * Bulk-copy a run of bytes that need no per-character processing: ASCII
   * bytes of class `cls`, plus (in character data and attribute values)
   * complete, valid multi-byte UTF-8 sequences. Anything else, including a
   * sequence split across chunks, is left to the byte-by-byte path, which
   * reports errors. The scan never looks further than one byte past the
   * remaining unit (and name) budget, so an oversized token is refused
   * without being copied.
   */
  private fastCopy(chunk: Uint8Array, i: number, n: number, cls: number): number {
    let end = n;
    if (this.counting) {
      const room = this.limits.maxStanzaBytes - this.unitBytes;
      if (end - i > room + 1) end = i + room + 1;
    }
    const isName = cls === CC_NAME;
    if (isName) {
      const room = this.limits.maxNameBytes - this.tokLen;
      if (end - i > room + 1) end = i + room + 1;
    }
    let j = i;
    while (j < end) {
      const b = chunk[j];
      if ((CC[b] & cls) !== 0) {
        j++;
      } else if (b >= 0x80 && !isName) {
        const w = utf8SequenceLength(chunk, j, end);
        if (w === 0) break;
        j += w;
      } else {
        break;
      }
    }
    const len = j - i;
    if (len === 0) return i;
    if (this.counting) {
      this.unitBytes += len;
      if (this.unitBytes > this.limits.maxStanzaBytes) {
        this.failSize();
        return j;
      }
    }
    this.ensure(len);
    const buf = this.tokBuf;
    let t = this.tokLen;
    if (len > 64) {
      buf.set(chunk.subarray(i, j), t);
      t += len;
    } else {
      for (let k = i; k < j; k++) buf[t++] = chunk[k];
    }
    this.tokLen = t;
    if (isName) {
      if (t > this.limits.maxNameBytes)
        this.fail('policy-violation', `name exceeds ${this.limits.maxNameBytes} bytes`);
    } else if (cls === CC_TEXT_FAST) {
      let k = j;
      while (k > i && chunk[k - 1] === 0x5d) k--;
      this.bracketRun = k > i ? j - k : this.bracketRun + len;
    }
    return j;
  }

  private fail(condition: ParserErrorCondition, text: string): void {
    if (this.dead) return;
    this.dead = true;
    this.handler.error(condition, text);
  }

  private failSize(): void {
    this.fail(
      'policy-violation',
      this.open === 0
        ? `stream header exceeds ${this.limits.maxStanzaBytes} bytes`
        : `stanza exceeds ${this.limits.maxStanzaBytes} bytes`,
    );
  }

  private ensure(extra: number): void {
    const need = this.tokLen + extra;
    if (need <= this.tokBuf.length) return;
    // Grow geometrically, but never past the unit limit: everything in the
    // buffer has been counted against it, so more could never be needed.
    const cap = Math.max(need, Math.min(this.tokBuf.length * 2, this.limits.maxStanzaBytes + 8));
    const next = Buffer.allocUnsafe(cap);
    this.tokBuf.copy(next, 0, 0, this.tokLen);
    this.tokBuf = next;
  }

  private appendCp(c: number): void {
    if (c < 0x80) {
      if (this.tokLen >= this.tokBuf.length) this.ensure(1);
      this.tokBuf[this.tokLen++] = c;
      return;
    }
    this.ensure(4);
    const b = this.tokBuf;
    if (c < 0x800) {
      b[this.tokLen++] = 0xc0 | (c >> 6);
    } else if (c < 0x10000) {
      b[this.tokLen++] = 0xe0 | (c >> 12);
      b[this.tokLen++] = 0x80 | ((c >> 6) & 0x3f);
    } else {
      b[this.tokLen++] = 0xf0 | (c >> 18);
      b[this.tokLen++] = 0x80 | ((c >> 12) & 0x3f);
      b[this.tokLen++] = 0x80 | ((c >> 6) & 0x3f);
    }
    b[this.tokLen++] = 0x80 | (c & 0x3f);
  }

  private takeToken(): string {
    const s = this.tokBuf.toString('utf8', 0, this.tokLen);
    this.tokLen = 0;
    return s;
  }

  // --- names ---------------------------------------------------------------

  private startName(c: number): void {
    this.tokLen = 0;
    this.nameColon = false;
    this.afterColon = false;
    this.appendCp(c);
  }

  /**
   * Consume c as part of a QName; false when c cannot continue the name.
   * Namespaces in XML 1.0 requires QName ::= NCName (':' NCName)?, so a second
   * colon, or a local part not starting with a name-start character, is an error.
   */
  private nameChar(c: number): boolean {
    if (c === 0x3a) {
      if (this.nameColon || this.afterColon) {
        this.fail('not-well-formed', 'a qualified name may contain only one colon');
        return true;
      }
      this.nameColon = true;
      this.afterColon = true;
    } else if (this.afterColon) {
      if (!isNameStart(c)) {
        if (isNameChar(c)) this.fail('not-well-formed', 'invalid local name after prefix');
        return isNameChar(c);
      }
      this.afterColon = false;
    } else if (!isNameChar(c)) {
      return false;
    }
    this.appendCp(c);
    if (this.tokLen > this.limits.maxNameBytes) {
      this.fail('policy-violation', `name exceeds ${this.limits.maxNameBytes} bytes`);
    }
    return true;
  }

  private finishName(): string | null {
    if (this.afterColon) {
      this.fail('not-well-formed', 'name ends with a colon');
      return null;
    }
    return this.takeToken();
  }

  // --- character data ------------------------------------------------------

  private textChar(c: number): void {
    if (c === 0x0d) {
      // Line-end normalization: CR LF and lone CR both become LF.
      this.appendCp(0x0a);
      this.crPending = true;
      this.bracketRun = 0;
      return;
    }
    if (c === 0x0a && this.crPending) {
      this.crPending = false;
      return;
    }
    this.crPending = false;
    if (c === 0x5d) {
      this.bracketRun++;
    } else {
      // XML 1.0 section 2.4: CharData MUST NOT contain the literal "]]>".
      if (c === 0x3e && this.bracketRun >= 2) {
        this.fail('not-well-formed', "']]>' is not allowed in character data");
        return;
      }
      this.bracketRun = 0;
    }
    this.appendCp(c);
  }

  private attrChar(c: number): void {
    // Attribute-value normalization (XML 1.0 section 3.3.3) after line-end
    // normalization: literal tab, LF, CR and CR LF each become one space.
    if (c === 0x0a && this.crPending) {
      this.crPending = false;
      return;
    }
    this.crPending = c === 0x0d;
    this.appendCp(c === 0x09 || c === 0x0a || c === 0x0d ? 0x20 : c);
  }

  private flushText(): void {
    if (this.tokLen > 0) {
      const s = this.takeToken();
      if (this.open >= 2) this.elems[this.elems.length - 1].children.push(s);
    }
    this.crPending = false;
    this.bracketRun = 0;
  }

  private emitRef(c: number): void {
    // Characters from references are never normalized.
    this.crPending = false;
    this.bracketRun = 0;
    this.appendCp(c);
    this.state = this.entCtx === CTX_TEXT ? S_TEXT : S_ATTR_VALUE;
  }

  // --- the state machine ---------------------------------------------------

  private step(c: number): void {
    switch (this.state) {
      case S_TEXT:
        if (c === 0x3c) {
          this.state = S_LT;
          if (this.open === 1) {
            // A new depth-1 unit begins at its '<'.
            this.counting = true;
            this.unitBytes = 1;
          }
        } else if (this.open === 1) {
          // Only whitespace (keepalives) may appear between stanzas.
          if (!isWs(c)) this.fail('not-well-formed', 'character data at stream level');
        } else if (c === 0x26) {
          this.entCtx = CTX_TEXT;
          this.state = S_ENT_START;
        } else {
          this.textChar(c);
        }
        return;

      case S_LT: {
        const declOk = this.declAllowed;
        this.declAllowed = false;
        if (c === 0x3f) {
          // RFC 6120 11.1: the stream MUST NOT contain processing instructions;
          // the XML declaration at the very start is not one.
          if (this.open === 0 && declOk) {
            this.piLen = 0;
            this.state = S_PI_TARGET;
          } else {
            this.fail('restricted-xml', 'processing instructions are not allowed');
          }
        } else if (c === 0x21) {
          // In the prolog '<!' can only begin a DOCTYPE or a comment.
          if (this.open === 0) this.fail('restricted-xml', 'DTDs and comments are not allowed');
          else this.state = S_BANG;
        } else if (c === 0x2f) {
          if (this.open === 0) {
            this.fail('not-well-formed', 'end tag before the stream header');
          } else {
            this.flushText();
            this.state = S_END_NAME_START;
          }
        } else if (isNameStart(c)) {
          if (this.open > this.limits.maxDepth) {
            this.fail('policy-violation', `elements nested deeper than ${this.limits.maxDepth}`);
            return;
          }
          this.flushText();
          this.startName(c);
          this.state = S_START_NAME;
        } else {
          this.fail('not-well-formed', "invalid character after '<'");
        }
        return;
      }

      case S_BANG:
        if (c === 0x5b) {
          if (this.open >= 2) {
            this.cdataIdx = 0;
            this.state = S_CDATA_OPEN;
          } else {
            this.fail('not-well-formed', 'CDATA section outside a stanza');
          }
        } else if (c === 0x2d) {
          // RFC 6120 11.1: the stream MUST NOT contain comments.
          this.fail('restricted-xml', 'comments are not allowed');
        } else {
          // RFC 6120 11.1: the stream MUST NOT contain internal or external DTD subsets.
          this.fail('restricted-xml', 'DTDs and markup declarations are not allowed');
        }
        return;

      case S_CDATA_OPEN:
        if (c !== 'CDATA['.charCodeAt(this.cdataIdx)) {
          this.fail('not-well-formed', "malformed '<![CDATA['");
        } else if (++this.cdataIdx === 6) {
          this.cdataBrackets = 0;
          this.state = S_CDATA;
        }
        return;

      case S_CDATA:
        if (c === 0x5d) {
          this.cdataBrackets++;
          this.crPending = false;
          this.appendCp(c);
        } else if (c === 0x3e && this.cdataBrackets >= 2) {
          this.tokLen -= 2; // the "]]" of the terminator was appended as content
          this.crPending = false;
          this.bracketRun = 0;
          this.state = S_TEXT;
        } else {
          this.cdataBrackets = 0;
          if (c === 0x0d) {
            this.appendCp(0x0a);
            this.crPending = true;
          } else if (!(c === 0x0a && this.crPending)) {
            this.crPending = false;
            this.appendCp(c);
          } else {
            this.crPending = false;
          }
        }
        return;

      case S_PROLOG:
        if (c === 0x3c) {
          this.state = S_LT;
        } else if (c === 0xfeff && this.declAllowed && !this.bomSeen) {
          this.bomSeen = true; // a byte order mark may precede the XML declaration
        } else {
          this.declAllowed = false;
          if (!isWs(c)) this.fail('not-well-formed', 'text before the stream header');
        }
        return;

      case S_PI_TARGET:
        if (this.piLen < 3) {
          if (c === 'xml'.charCodeAt(this.piLen)) this.piLen++;
          else this.fail('restricted-xml', 'processing instructions are not allowed');
        } else if (isWs(c)) {
          this.declSeen = 0;
          this.state = S_DECL_SPACE;
        } else if (isNameChar(c) || c === 0x3a) {
          this.fail('restricted-xml', 'processing instructions are not allowed');
        } else {
          this.fail('not-well-formed', 'malformed XML declaration');
        }
        return;

      case S_DECL_SPACE:
        if (isWs(c)) return;
        if (c === 0x3f) {
          this.state = S_DECL_END;
        } else if (isNameStart(c)) {
          this.startName(c);
          this.state = S_DECL_NAME;
        } else {
          this.fail('not-well-formed', 'malformed XML declaration');
        }
        return;

      case S_DECL_NAME:
        if (this.nameChar(c)) return;
        this.declName = this.takeToken();
        if (isWs(c)) this.state = S_DECL_EQ;
        else if (c === 0x3d) this.state = S_DECL_VALUE_START;
        else this.fail('not-well-formed', 'malformed XML declaration');
        return;

      case S_DECL_EQ:
        if (isWs(c)) return;
        if (c === 0x3d) this.state = S_DECL_VALUE_START;
        else this.fail('not-well-formed', 'malformed XML declaration');
        return;

      case S_DECL_VALUE_START:
        if (isWs(c)) return;
        if (c === 0x22 || c === 0x27) {
          this.quote = c;
          this.tokLen = 0;
          this.state = S_DECL_VALUE;
        } else {
          this.fail('not-well-formed', 'malformed XML declaration');
        }
        return;

      case S_DECL_VALUE:
        if (c === this.quote) {
          this.state = S_DECL_AFTER_VALUE;
          this.declPseudoAttr(this.declName, this.takeToken());
        } else {
          this.appendCp(c);
        }
        return;

      case S_DECL_AFTER_VALUE:
        if (isWs(c)) this.state = S_DECL_SPACE;
        else if (c === 0x3f) this.state = S_DECL_END;
        else this.fail('not-well-formed', 'malformed XML declaration');
        return;

      case S_DECL_END:
        if (c !== 0x3e) {
          this.fail('not-well-formed', 'malformed XML declaration');
        } else if ((this.declSeen & DECL_VERSION) === 0) {
          this.fail('not-well-formed', 'XML declaration without version');
        } else {
          this.state = S_PROLOG;
        }
        return;

      case S_START_NAME: {
        if (this.nameChar(c)) return;
        const name = this.finishName();
        if (name === null) return;
        this.tagName = name;
        if (isWs(c)) this.state = S_TAG_SPACE;
        else if (c === 0x3e) this.finishStartTag(false);
        else if (c === 0x2f) this.state = S_EMPTY_SLASH;
        else this.fail('not-well-formed', 'malformed start tag');
        return;
      }

      case S_TAG_SPACE:
        if (isWs(c)) return;
        if (c === 0x3e) {
          this.finishStartTag(false);
        } else if (c === 0x2f) {
          this.state = S_EMPTY_SLASH;
        } else if (isNameStart(c)) {
          if (this.attrNames.length >= this.limits.maxAttributes) {
            this.fail('policy-violation', `more than ${this.limits.maxAttributes} attributes`);
            return;
          }
          this.startName(c);
          this.state = S_ATTR_NAME;
        } else {
          this.fail('not-well-formed', 'malformed start tag');
        }
        return;

      case S_ATTR_NAME: {
        if (this.nameChar(c)) return;
        const name = this.finishName();
        if (name === null) return;
        if (this.isDuplicateAttr(name)) {
          this.fail('not-well-formed', `duplicate attribute '${clip(name)}'`);
          return;
        }
        this.attrName = name;
        if (isWs(c)) this.state = S_ATTR_EQ;
        else if (c === 0x3d) this.state = S_ATTR_VALUE_START;
        else this.fail('not-well-formed', 'attribute without value');
        return;
      }

      case S_ATTR_EQ:
        if (isWs(c)) return;
        if (c === 0x3d) this.state = S_ATTR_VALUE_START;
        else this.fail('not-well-formed', 'attribute without value');
        return;

      case S_ATTR_VALUE_START:
        if (isWs(c)) return;
        if (c === 0x22 || c === 0x27) {
          this.quote = c;
          this.tokLen = 0;
          this.crPending = false;
          this.state = S_ATTR_VALUE;
        } else {
          this.fail('not-well-formed', 'attribute values must be quoted');
        }
        return;

      case S_ATTR_VALUE:
        if (c === this.quote) {
          this.attrNames.push(this.attrName);
          this.attrValues.push(this.takeToken());
          this.crPending = false;
          this.state = S_AFTER_ATTR;
        } else if (c === 0x3c) {
          this.fail('not-well-formed', "'<' in attribute value");
        } else if (c === 0x26) {
          this.entCtx = CTX_ATTR;
          this.state = S_ENT_START;
        } else {
          this.attrChar(c);
        }
        return;

      case S_AFTER_ATTR:
        if (isWs(c)) this.state = S_TAG_SPACE;
        else if (c === 0x3e) this.finishStartTag(false);
        else if (c === 0x2f) this.state = S_EMPTY_SLASH;
        else this.fail('not-well-formed', 'attributes must be separated by whitespace');
        return;

      case S_EMPTY_SLASH:
        if (c === 0x3e) this.finishStartTag(true);
        else this.fail('not-well-formed', "expected '>' after '/'");
        return;

      case S_END_NAME_START:
        if (isNameStart(c)) {
          this.startName(c);
          this.state = S_END_NAME;
        } else {
          this.fail('not-well-formed', 'malformed end tag');
        }
        return;

      case S_END_NAME: {
        if (this.nameChar(c)) return;
        const name = this.finishName();
        if (name === null) return;
        this.tagName = name;
        if (isWs(c)) this.state = S_END_SPACE;
        else if (c === 0x3e) this.finishEndTag();
        else this.fail('not-well-formed', 'malformed end tag');
        return;
      }

      case S_END_SPACE:
        if (isWs(c)) return;
        if (c === 0x3e) this.finishEndTag();
        else this.fail('not-well-formed', 'malformed end tag');
        return;

      case S_ENT_START:
        if (c === 0x23) {
          this.refVal = 0;
          this.refDigits = 0;
          this.refHex = false;
          this.state = S_CHARREF_START;
        } else if (isNameStart(c)) {
          this.entName = String.fromCodePoint(c);
          this.state = S_ENT_NAME;
          this.checkEntityPrefix();
        } else {
          this.fail('not-well-formed', "'&' must start an entity or character reference");
        }
        return;

      case S_ENT_NAME:
        if (c === 0x3b) {
          const v = PREDEFINED_ENTITIES.get(this.entName);
          if (v === undefined) this.failEntity();
          else this.emitRef(v);
        } else if (isNameChar(c) || c === 0x3a) {
          this.entName += String.fromCodePoint(c);
          this.checkEntityPrefix();
        } else {
          this.fail('not-well-formed', "entity reference not terminated by ';'");
        }
        return;

      case S_CHARREF_START:
        if (c === 0x78) {
          this.refHex = true;
          this.state = S_CHARREF;
        } else if (c >= 0x30 && c <= 0x39) {
          this.refVal = c - 0x30;
          this.refDigits = 1;
          this.state = S_CHARREF;
        } else {
          this.fail('not-well-formed', 'malformed character reference');
        }
        return;

      case S_CHARREF: {
        if (c === 0x3b) {
          if (this.refDigits === 0) this.fail('not-well-formed', 'malformed character reference');
          else if (!isXmlChar(this.refVal))
            this.fail('not-well-formed', 'character reference to a character not allowed in XML');
          else this.emitRef(this.refVal);
          return;
        }
        let d = -1;
        if (c >= 0x30 && c <= 0x39) d = c - 0x30;
        else if (this.refHex && c >= 0x61 && c <= 0x66) d = c - 0x61 + 10;
        else if (this.refHex && c >= 0x41 && c <= 0x46) d = c - 0x41 + 10;
        if (d < 0) {
          this.fail('not-well-formed', 'malformed character reference');
          return;
        }
        this.refVal = this.refVal * (this.refHex ? 16 : 10) + d;
        this.refDigits++;
        if (this.refVal > 0x10ffff) this.fail('not-well-formed', 'character reference out of range');
        return;
      }

      case S_AFTER_END:
        if (!isWs(c)) this.fail('not-well-formed', 'data after the end of the stream');
        return;
    }
  }

  private checkEntityPrefix(): void {
    // Refuse an undefined entity as soon as its name cannot become a predefined one.
    if (!isPredefinedPrefix(this.entName)) this.failEntity();
  }

  private failEntity(): void {
    // RFC 6120 11.1: no entity references "with the exception of the predefined entities".
    this.fail('restricted-xml', `undefined entity '&${clip(this.entName)};'`);
  }

  private isDuplicateAttr(name: string): boolean {
    const names = this.attrNames;
    if (this.attrSet === null) {
      if (names.length < 16) return names.includes(name);
      this.attrSet = new Set(names);
    }
    if (this.attrSet.has(name)) return true;
    this.attrSet.add(name);
    return false;
  }

  private declPseudoAttr(name: string, value: string): void {
    const seen = this.declSeen;
    if (name === 'version' && seen === 0) {
      this.declSeen |= DECL_VERSION;
      if (!/^1\.[0-9]+$/.test(value)) this.fail('not-well-formed', 'unsupported XML version');
    } else if (name === 'encoding' && seen === DECL_VERSION) {
      this.declSeen |= DECL_ENCODING;
      if (!/^[A-Za-z][A-Za-z0-9._-]*$/.test(value)) this.fail('not-well-formed', 'malformed encoding name');
      else if (value.toLowerCase() !== 'utf-8')
        this.fail('unsupported-encoding', `encoding '${clip(value)}' is not supported; use UTF-8`);
    } else if (name === 'standalone' && (seen & DECL_VERSION) !== 0 && (seen & DECL_STANDALONE) === 0) {
      this.declSeen |= DECL_STANDALONE;
      if (value !== 'yes' && value !== 'no') this.fail('not-well-formed', 'malformed standalone declaration');
    } else {
      this.fail('not-well-formed', 'malformed XML declaration');
    }
  }

  // --- namespaces and tree building ----------------------------------------

  /** Namespace declarations among the attributes, validated per Namespaces in XML 1.0 section 3. */
  private collectDecls(names: string[], values: string[]): Map<string, string> | null | undefined {
    let decls: Map<string, string> | null = null;
    for (let i = 0; i < names.length; i++) {
      const n = names[i];
      let prefix: string;
      if (n === 'xmlns') prefix = '';
      else if (n.startsWith('xmlns:')) prefix = n.slice(6);
      else continue;
      const uri = values[i];
      if (prefix === 'xmlns') {
        this.fail('not-well-formed', "the 'xmlns' prefix MUST NOT be declared");
        return undefined;
      }
      if ((prefix === 'xml') !== (uri === XML_NS)) {
        this.fail('not-well-formed', "the 'xml' prefix and the XML namespace are bound only to each other");
        return undefined;
      }
      if (uri === XMLNS_NS) {
        this.fail('not-well-formed', 'the xmlns namespace MUST NOT be declared');
        return undefined;
      }
      if (prefix !== '' && uri === '') {
        // Namespaces in XML 1.0 does not allow undeclaring a prefix.
        this.fail('not-well-formed', `empty namespace for prefix '${clip(prefix)}'`);
        return undefined;
      }
      if (decls === null) decls = new Map();
      decls.set(prefix, uri);
    }
    return decls;
  }

  private lookup(prefix: string): string | undefined {
    if (prefix === 'xml') {
      this.lookupLevel = -1;
      return XML_NS;
    }
    for (let k = this.scopes.length - 1; k >= 0; k--) {
      const m = this.scopes[k];
      if (m === null) continue;
      const uri = m.get(prefix);
      if (uri !== undefined) {
        this.lookupLevel = k;
        return uri;
      }
    }
    return undefined;
  }

  /**
   * Resolve the prefix of a QName (element or attribute) in the current scope.
   * Inside a stanza, a prefix found only on the stream header is copied onto
   * the stanza root so the emitted element stands on its own.
   */
  private resolvePrefix(
    qname: string,
    root: Element | null,
    unbound: ParserErrorCondition,
  ): string | null | undefined {
    const colon = qname.indexOf(':');
    if (colon < 0) return null;
    const prefix = qname.slice(0, colon);
    if (prefix === 'xmlns') {
      this.fail('not-well-formed', "the 'xmlns' prefix is reserved for namespace declarations");
      return undefined;
    }
    const uri = this.lookup(prefix);
    if (uri === undefined) {
      this.fail(unbound, `unbound namespace prefix '${clip(prefix)}'`);
      return undefined;
    }
    if (root !== null && this.lookupLevel === 0) {
      const key = 'xmlns:' + prefix;
      if (!Object.hasOwn(root.attrs, key)) setOwn(root.attrs as Record<string, string>, key, uri);
    }
    return uri;
  }

  /**
   * Resolve the prefixes of the attributes (declarations excluded) and reject
   * two attributes with the same expanded name (Namespaces in XML 1.0 section 6.3).
   */
  private resolveAttrs(names: string[], root: Element | null, unbound: ParserErrorCondition): boolean {
    let expanded: Set<string> | null = null;
    for (const n of names) {
      const colon = n.indexOf(':');
      if (colon < 0 || n.startsWith('xmlns:')) continue;
      const uri = this.resolvePrefix(n, root, unbound);
      if (uri === undefined) return false;
      const key = uri + ' ' + n.slice(colon + 1);
      if (expanded === null) expanded = new Set();
      if (expanded.has(key)) {
        this.fail('not-well-formed', `duplicate attribute '${clip(n)}'`);
        return false;
      }
      expanded.add(key);
    }
    return true;
  }

  private finishStartTag(selfClosing: boolean): void {
    const names = this.attrNames;
    const values = this.attrValues;
    this.attrNames = [];
    this.attrValues = [];
    this.attrSet = null;
    this.tokLen = 0;
    this.state = S_TEXT;
    if (this.open === 0) {
      this.startStream(names, values, selfClosing);
      return;
    }

    const decls = this.collectDecls(names, values);
    if (decls === undefined) return;
    this.scopes.push(decls);
    const name = this.tagName;
    const isRoot = this.open === 1;
    const attrs: Record<string, string> = {};
    if (isRoot && (decls === null || !decls.has(''))) {
      const d = this.lookup('');
      if (d) attrs.xmlns = d;
    }
    for (let i = 0; i < names.length; i++) setOwn(attrs, names[i], values[i]);
    const element = new Element(name);
    // Assigned directly rather than through the constructor, whose
    // Object.assign would trip over an attribute named '__proto__'.
    element.attrs = attrs;
    const root = isRoot ? element : this.elems[0];
    if (this.resolvePrefix(name, root, 'not-well-formed') === undefined) return;
    if (!this.resolveAttrs(names, root, 'not-well-formed')) return;

    if (!isRoot) this.elems[this.elems.length - 1].cnode(element);
    this.elems.push(element);
    this.open++;
    if (selfClosing) this.closeElement();
  }

  private startStream(names: string[], values: string[], selfClosing: boolean): void {
    const gen = this.generation;
    const decls = this.collectDecls(names, values);
    if (decls === undefined) return;
    this.scopes.push(decls);
    const name = this.tagName;
    const uri = this.resolvePrefix(name, null, 'invalid-namespace');
    if (uri === undefined) return;
    if (!this.resolveAttrs(names, null, 'invalid-namespace')) return;
    let namespace: string | null = uri;
    if (namespace === null) namespace = decls?.get('') || null;

    const attrs: Record<string, string> = {};
    for (let i = 0; i < names.length; i++) setOwn(attrs, names[i], values[i]);
    const namespaces: Record<string, string> = {};
    if (decls !== null) for (const [p, u] of decls) setOwn(namespaces, p, u);
    const header: StreamHeader = {
      name,
      localName: name.slice(name.indexOf(':') + 1),
      namespace,
      attrs,
      namespaces,
    };

    this.headerName = name;
    this.counting = false;
    this.unitBytes = 0;
    if (selfClosing) {
      // <stream:stream/>: a stream that ends as soon as it starts.
      this.scopes = [];
      this.state = S_AFTER_END;
      this.handler.streamStart(header);
      if (!this.dead && this.generation === gen) this.handler.streamEnd();
      return;
    }
    this.open = 1;
    this.handler.streamStart(header);
  }

  private closeElement(): void {
    const element = this.elems.pop() as Element;
    this.scopes.pop();
    this.open--;
    this.state = S_TEXT;
    if (this.open === 1) {
      this.counting = false;
      this.unitBytes = 0;
      if (this.tokBuf.length > SHRINK_THRESHOLD) this.tokBuf = Buffer.allocUnsafe(INITIAL_TOKEN_BUFFER);
      this.handler.stanza(element);
    }
  }

  private finishEndTag(): void {
    const name = this.tagName;
    this.state = S_TEXT;
    if (this.open === 1) {
      if (name !== this.headerName) {
        this.fail('not-well-formed', `mismatched end tag '</${clip(name)}>' at stream level`);
        return;
      }
      this.open = 0;
      this.scopes = [];
      this.counting = false;
      this.unitBytes = 0;
      this.state = S_AFTER_END;
      this.handler.streamEnd();
      return;
    }
    const expected = this.elems[this.elems.length - 1].name;
    if (name !== expected) {
      this.fail('not-well-formed', `mismatched end tag: expected '</${clip(expected)}>'`);
      return;
    }
    this.closeElement();
  }
}
