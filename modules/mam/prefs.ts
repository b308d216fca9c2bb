// XEP-0313 section 7: archiving preferences. A user's preferences say, per
// contact, whether messages exchanged with them are archived: JIDs listed
// under <never/> are not, JIDs under <always/> are, and everyone else gets
// the default ('always', 'never', or 'roster': only contacts in the roster).
//
// Matching: a bare JID in a list covers every resource of that contact; a
// full JID only that resource. <never/> wins over <always/>.
import { Element } from 'ltx';
import { Jid } from '../../src/jid.ts';
import { childElements } from '../../src/stanza.ts';
import type { JsonValue } from '../../src/storage/types.ts';

export const POLICIES = ['always', 'roster', 'never'] as const;
export type Policy = (typeof POLICIES)[number];

export interface Prefs {
  default: Policy;
  always: string[];
  never: string[];
}

export class PrefsError extends Error {}

function isPolicy(value: unknown): value is Policy {
  return typeof value === 'string' && (POLICIES as readonly string[]).includes(value);
}

/** Reads a <prefs/> element a client sent. Throws PrefsError for anything malformed. */
export function parsePrefs(el: Element): Prefs {
  const policy = el.attrs.default as string | undefined;
  if (!isPolicy(policy)) {
    throw new PrefsError(`The default attribute must be one of ${POLICIES.join(', ')}`);
  }
  const list = (name: 'always' | 'never'): string[] => {
    const jids = new Set<string>();
    for (const holder of el.getChildren(name)) {
      for (const child of childElements(holder)) {
        if (child.name !== 'jid') continue;
        const jid = Jid.tryParse(child.getText().trim());
        if (!jid) throw new PrefsError(`'${child.getText()}' under <${name}/> is not a valid JID`);
        jids.add(jid.toString());
      }
    }
    return [...jids];
  };
  return { default: policy, always: list('always'), never: list('never') };
}

export function prefsElement(ns: string, prefs: Prefs): Element {
  const el = new Element('prefs', { xmlns: ns, default: prefs.default });
  for (const name of ['always', 'never'] as const) {
    const holder = el.c(name);
    for (const jid of prefs[name]) holder.c('jid').t(jid);
  }
  return el;
}

export function prefsToJson(prefs: Prefs): JsonValue {
  return { default: prefs.default, always: [...prefs.always], never: [...prefs.never] };
}

/** Decodes stored preferences; null when absent or unreadable (the server default applies). */
export function prefsFromJson(value: JsonValue | null): Prefs | null {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return null;
  const strings = (v: JsonValue | undefined): string[] =>
    Array.isArray(v) ? v.filter((s): s is string => typeof s === 'string') : [];
  if (!isPolicy(value.default)) return null;
  return { default: value.default, always: strings(value.always), never: strings(value.never) };
}

/**
 * What the preferences say about a contact: 'always'/'never' from the lists,
 * else the default policy (which the caller resolves when it is 'roster').
 */
export function policyFor(prefs: Prefs, contact: Jid): Policy {
  // Most users list nobody: no JID strings are made for them.
  if (prefs.never.length === 0 && prefs.always.length === 0) return prefs.default;
  const full = contact.toString();
  const bare = contact.bareString();
  if (listed(prefs.never, full, bare)) return 'never';
  if (listed(prefs.always, full, bare)) return 'always';
  return prefs.default;
}

function listed(list: string[], full: string, bare: string): boolean {
  return list.includes(full) || list.includes(bare);
}
