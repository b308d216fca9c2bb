// Reading submitted data forms (XEP-0004) for voice requests and registration.
import type { Element } from 'ltx';
import { childElements } from '../../src/stanza.ts';

/** The values of each field of a form, by var. */
export function formValues(x: Element): Map<string, string[]> {
  const values = new Map<string, string[]>();
  for (const field of childElements(x)) {
    if (field.name !== 'field' || typeof field.attrs.var !== 'string') continue;
    values.set(
      field.attrs.var,
      field.getChildren('value').map((v) => v.getText()),
    );
  }
  return values;
}

/** The first value of a field, trimmed; undefined when the field is absent or empty. */
export function formValue(values: Map<string, string[]>, name: string): string | undefined {
  const v = values.get(name)?.[0]?.trim();
  return v === undefined || v === '' ? undefined : v;
}

/** XEP-0004 3.3: a boolean is '1'/'true' or '0'/'false'. */
export function formBoolean(values: Map<string, string[]>, name: string): boolean | undefined {
  const v = formValue(values, name);
  if (v === '1' || v === 'true') return true;
  if (v === '0' || v === 'false') return false;
  return undefined;
}
