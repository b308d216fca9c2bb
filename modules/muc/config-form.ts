// The room configuration form (XEP-0045 10.2, FORM_TYPE muc#roomconfig):
// one table row per room option says how it is shown and read back.
import { Element } from 'ltx';
import { childElements } from '../../src/stanza.ts';
import { NS_DATA, NS_ROOMCONFIG } from './ns.ts';
import type { RoomConfig } from './room.ts';

type BoolKey = { [K in keyof RoomConfig]: RoomConfig[K] extends boolean ? K : never }[keyof RoomConfig];
type TextKey = Exclude<
  { [K in keyof RoomConfig]: RoomConfig[K] extends string ? K : never }[keyof RoomConfig],
  'whois'
>;
type NumberKey = { [K in keyof RoomConfig]: RoomConfig[K] extends number ? K : never }[keyof RoomConfig];

type Field =
  | { var: string; label: string; kind: 'boolean'; key: BoolKey }
  | { var: string; label: string; kind: 'text'; key: TextKey; secret?: boolean; multi?: boolean }
  | { var: string; label: string; kind: 'number'; key: NumberKey; options?: number[] }
  | { var: string; label: string; kind: 'whois'; key: 'whois' };

const FIELDS: Field[] = [
  { var: 'muc#roomconfig_roomname', label: 'Title', kind: 'text', key: 'name' },
  { var: 'muc#roomconfig_roomdesc', label: 'Description', kind: 'text', key: 'description', multi: true },
  {
    var: 'muc#roomconfig_persistentroom',
    label: 'Persistent (kept when the last occupant leaves)',
    kind: 'boolean',
    key: 'persistent',
  },
  {
    var: 'muc#roomconfig_publicroom',
    label: 'Listed in the directory of rooms',
    kind: 'boolean',
    key: 'public',
  },
  { var: 'muc#roomconfig_membersonly', label: 'Members only', kind: 'boolean', key: 'membersOnly' },
  {
    var: 'muc#roomconfig_passwordprotectedroom',
    label: 'Password protected',
    kind: 'boolean',
    key: 'passwordProtected',
  },
  { var: 'muc#roomconfig_roomsecret', label: 'Password', kind: 'text', key: 'password', secret: true },
  {
    var: 'muc#roomconfig_moderatedroom',
    label: 'Moderated (only those with voice may speak)',
    kind: 'boolean',
    key: 'moderated',
  },
  { var: 'muc#roomconfig_whois', label: 'Who may see real addresses', kind: 'whois', key: 'whois' },
  {
    var: 'muc#roomconfig_allowinvites',
    label: 'Occupants may invite others',
    kind: 'boolean',
    key: 'allowInvites',
  },
  {
    var: 'muc#roomconfig_changesubject',
    label: 'Occupants may change the subject',
    kind: 'boolean',
    key: 'changeSubject',
  },
  {
    var: 'muc#roomconfig_maxusers',
    label: 'Most occupants (0: no limit)',
    kind: 'number',
    key: 'maxUsers',
    options: [0, 10, 20, 50, 100, 500, 1000],
  },
  {
    var: 'muc#roomconfig_historylength',
    label: 'Messages of history sent on join',
    kind: 'number',
    key: 'historyLength',
  },
];

export class ConfigError extends Error {}

export function configForm(config: RoomConfig): Element {
  const x = new Element('x', { xmlns: NS_DATA, type: 'form' });
  x.c('title').t('Room configuration');
  x.c('field', { var: 'FORM_TYPE', type: 'hidden' }).c('value').t(NS_ROOMCONFIG);
  for (const f of FIELDS) {
    switch (f.kind) {
      case 'boolean':
        x.c('field', { var: f.var, type: 'boolean', label: f.label })
          .c('value')
          .t(config[f.key] ? '1' : '0');
        break;
      case 'text':
        x.c('field', {
          var: f.var,
          type: f.secret ? 'text-private' : f.multi ? 'text-multi' : 'text-single',
          label: f.label,
        })
          .c('value')
          .t(config[f.key]);
        break;
      case 'number': {
        const field = x.c('field', {
          var: f.var,
          type: f.options ? 'list-single' : 'text-single',
          label: f.label,
        });
        field.c('value').t(String(config[f.key]));
        for (const o of f.options ?? [])
          field
            .c('option', { label: o === 0 ? 'No limit' : String(o) })
            .c('value')
            .t(String(o));
        break;
      }
      case 'whois': {
        const field = x.c('field', { var: f.var, type: 'list-single', label: f.label });
        field.c('value').t(config.whois);
        field.c('option', { label: 'Moderators only' }).c('value').t('moderators');
        field.c('option', { label: 'Anyone' }).c('value').t('anyone');
        break;
      }
    }
  }
  return x;
}

/** Applies a submitted form to a copy of `config`; fields not in the form keep their value. */
export function applyForm(config: RoomConfig, x: Element): RoomConfig {
  const next: RoomConfig = { ...config };
  const values = new Map<string, string[]>();
  for (const field of childElements(x)) {
    if (field.name !== 'field' || typeof field.attrs.var !== 'string') continue;
    values.set(
      field.attrs.var,
      field.getChildren('value').map((v) => v.getText()),
    );
  }
  const formType = values.get('FORM_TYPE')?.[0];
  if (formType !== undefined && formType !== NS_ROOMCONFIG)
    throw new ConfigError(`This is not a room configuration form: ${formType}`);
  for (const f of FIELDS) {
    const given = values.get(f.var);
    if (given === undefined) continue;
    const value = given.join(f.kind === 'text' && f.multi ? '\n' : '').trim();
    switch (f.kind) {
      case 'boolean':
        if (!['1', 'true', '0', 'false'].includes(value))
          throw new ConfigError(`${f.var} must be a boolean, got '${value}'`);
        next[f.key] = value === '1' || value === 'true';
        break;
      case 'text':
        next[f.key] = value;
        break;
      case 'number': {
        if (!/^\d+$/.test(value))
          throw new ConfigError(`${f.var} must be a non-negative number, got '${value}'`);
        next[f.key] = Number(value);
        break;
      }
      case 'whois':
        if (value !== 'moderators' && value !== 'anyone')
          throw new ConfigError(`${f.var} must be moderators or anyone, got '${value}'`);
        next.whois = value;
        break;
    }
  }
  if (next.passwordProtected && next.password === '')
    throw new ConfigError('A password-protected room needs muc#roomconfig_roomsecret');
  return next;
}
