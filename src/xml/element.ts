/**
 * Small helpers around ltx's Element, shared across the server.
 *
 * Stanzas travel through the server as ltx Elements (the parser emits them,
 * the router and modules inspect and build them). These helpers keep the
 * common look-ups short and namespace-aware.
 */
import { Element } from 'ltx';

export { Element };

/**
 * Build an element. Attributes whose value is undefined are skipped so that
 * optional attributes can be written inline: `el('iq', { type, id, to: maybeTo })`.
 */
export function el(
  name: string,
  attrs?: Record<string, string | undefined>,
  ...children: (Element | string)[]
): Element {
  const e = new Element(name);
  if (attrs) {
    for (const key of Object.keys(attrs)) {
      const v = attrs[key];
      if (v !== undefined) e.attrs[key] = v;
    }
  }
  if (children.length > 0) e.append(...children);
  return e;
}

/**
 * The first child element with local name `name` (prefix ignored), optionally
 * restricted to children whose resolved namespace (ltx getNS(), which walks up
 * the parent chain) equals `ns`.
 */
export function getChild(e: Element, name: string, ns?: string): Element | undefined {
  for (const c of e.children) {
    if (typeof c === 'string') continue;
    if (c.getName() === name && (ns === undefined || c.getNS() === ns)) return c;
  }
  return undefined;
}

/**
 * Text content of `e` itself (when no childName is given), or of its first
 * matching child; undefined when that child does not exist.
 */
export function getText(e: Element, childName?: string, ns?: string): string | undefined {
  if (childName === undefined) return e.getText();
  return getChild(e, childName, ns)?.getText();
}

/** The first child that is an element (text nodes skipped). */
export function firstChildElement(e: Element): Element | undefined {
  for (const c of e.children) {
    if (typeof c !== 'string') return c;
  }
  return undefined;
}

const TEXT_SPECIAL = /[&<>]/;
const ATTR_SPECIAL = /[&<>"'\t\n\r]/;

/**
 * Escape character data. `>` is escaped too, because the sequence `]]>` is not
 * allowed in character data (XML 1.0 section 2.4).
 */
export function escapeXml(s: string): string {
  if (!TEXT_SPECIAL.test(s)) return s;
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/**
 * Escape an attribute value for either quote style. Tab, LF and CR become
 * character references because a parser's attribute-value normalization
 * (XML 1.0 section 3.3.3) would otherwise turn them into spaces.
 */
export function escapeXmlAttr(s: string): string {
  if (!ATTR_SPECIAL.test(s)) return s;
  return s.replace(/[&<>"'\t\n\r]/g, (ch) => ATTR_ESCAPES[ch] ?? ch);
}

const ATTR_ESCAPES: Readonly<Record<string, string>> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&apos;',
  '\t': '&#9;',
  '\n': '&#10;',
  '\r': '&#13;',
};

/**
 * The XML of an element, as ltx's toString() writes it (attributes in double
 * quotes) in about half the time: every stanza delivered is serialized, and
 * ltx hands each piece to a callback and runs an escaping regular expression
 * over every attribute and text even when there is nothing to escape. Unlike
 * ltx, tab, LF and CR in attribute values are written as character
 * references, so that they survive a parser's attribute normalization.
 */
export function serialize(element: Element): string {
  let xml = '<' + element.name;
  const attrs = element.attrs as Record<string, unknown>;
  for (const name in attrs) {
    const value = attrs[name];
    if (value === null || value === undefined) continue;
    const text = typeof value === 'string' ? value : String(value);
    xml += ' ' + name + '="' + escapeXmlAttr(text) + '"';
  }
  const children = element.children as unknown[];
  if (children.length === 0) return xml + '/>';
  xml += '>';
  for (const child of children) {
    if (child === null || child === undefined) continue;
    if (child instanceof Element || isForeignElement(child)) {
      xml += serialize(child);
    } else {
      const text = typeof child === 'string' ? child : String(child);
      xml += escapeXml(text);
    }
  }
  return xml + '</' + element.name + '>';
}

/**
 * An element of another copy of ltx. The package ships an ES module and a
 * CommonJS build, each with its own Element class: a process that loads both
 * (the test runner requires src/ while modules are imported) has elements of
 * either kind in one tree. They have the same shape and are serialized the
 * same way; their own toString() would write tab, LF and CR in attribute
 * values raw.
 */
function isForeignElement(child: unknown): child is Element {
  if (typeof child !== 'object' || child === null) return false;
  const el = child as Partial<Element>;
  return typeof el.name === 'string' && Array.isArray(el.children) && typeof el.attrs === 'object';
}
