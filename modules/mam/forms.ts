// XEP-0004 data forms, only as much as MAM needs: reading a submitted form
// into field values and building the form a client asks for.
import { Element } from 'ltx';
import { childElements } from '../../src/stanza.ts';

export const NS_DATA = 'jabber:x:data';
export const NS_XDATA_VALIDATE = 'http://jabber.org/protocol/xdata-validate';

export type FieldType = 'hidden' | 'jid-single' | 'text-single' | 'list-multi' | 'text-multi';

export interface FieldSpec {
  var: string;
  type: FieldType;
  label?: string;
  /** For list-multi fields whose values are not from a fixed list (xdata-validate <open/>). */
  open?: boolean;
}

/** Field values of a submitted form, by `var`; fields without values map to []. */
export type SubmittedForm = Map<string, string[]>;

export class FormError extends Error {}

/** Reads a form of type submit (or one without a type, as some clients send). */
export function readSubmittedForm(x: Element): SubmittedForm {
  const type = x.attrs.type as string | undefined;
  if (type !== undefined && type !== 'submit') {
    throw new FormError(`A data form of type '${type}' cannot be submitted; use type='submit'`);
  }
  const fields: SubmittedForm = new Map();
  for (const field of childElements(x)) {
    if (field.name !== 'field') continue;
    const name = field.attrs.var as string | undefined;
    if (!name) throw new FormError('Every submitted field needs a var attribute');
    if (fields.has(name)) throw new FormError(`The field '${name}' is given twice`);
    const values = field.getChildren('value').map((v) => v.getText());
    fields.set(name, values);
  }
  return fields;
}

/** The single value of a field, or undefined when absent or empty. */
export function singleValue(form: SubmittedForm, name: string): string | undefined {
  const values = form.get(name);
  if (values === undefined || values.length === 0) return undefined;
  if (values.length > 1) throw new FormError(`The field '${name}' takes a single value`);
  const value = values[0]!.trim();
  return value === '' ? undefined : value;
}

/** A form of type 'form' with a hidden FORM_TYPE and the given fields. */
export function buildForm(formType: string, fields: readonly FieldSpec[]): Element {
  const x = new Element('x', { xmlns: NS_DATA, type: 'form' });
  x.c('field', { var: 'FORM_TYPE', type: 'hidden' }).c('value').t(formType);
  for (const spec of fields) {
    const field = x.c('field', { var: spec.var, type: spec.type, label: spec.label });
    if (spec.open) field.c('validate', { xmlns: NS_XDATA_VALIDATE, datatype: 'xs:string' }).c('open');
  }
  return x;
}
