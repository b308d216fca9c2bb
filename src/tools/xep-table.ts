// The table of XEPs the built-in modules implement, generated from their
// `xeps` declarations so that the list we publish cannot drift from the code.
// Run it to print the table (for README.md's "Standards" section):
//
//   node --import tsx src/tools/xep-table.ts
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { builtinModules } from '../../modules/index.ts';
import type { XepDeclaration } from '../modules/api.ts';

export interface XepRow extends XepDeclaration {
  /** The built-in module (its name in the config's module lists) declaring the XEP. */
  module: string;
}

/** XEP-0030 style: four digits, zero-padded. */
export function xepName(number: number): string {
  return `XEP-${String(number).padStart(4, '0')}`;
}

function xepUrl(number: number): string {
  return `https://xmpp.org/extensions/xep-${String(number).padStart(4, '0')}.html`;
}

/** Every XEP declared by a built-in module, by XEP number, then module name. */
export async function xepRows(): Promise<XepRow[]> {
  const rows: XepRow[] = [];
  for (const [module, load] of Object.entries(builtinModules)) {
    const def = (await load()).default;
    for (const xep of def.xeps ?? []) rows.push({ ...xep, module });
  }
  return rows.sort((a, b) => a.number - b.number || a.module.localeCompare(b.module));
}

/** A table cell must not contain the column separator or a line break. */
function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\s*\n\s*/g, ' ');
}

/** The markdown table: XEP (linked), module, version, status. */
export async function xepTable(): Promise<string> {
  const lines = ['| XEP | module | version | status |', '|---|---|---|---|'];
  for (const row of await xepRows()) {
    const status = row.status ?? 'complete';
    const note = row.note ? `: ${row.note}` : '';
    lines.push(
      `| [${xepName(row.number)}](${xepUrl(row.number)}) | ${cell(row.module)} | ${cell(row.version)} | ${cell(status + note)} |`,
    );
  }
  return `${lines.join('\n')}\n`;
}

/** True when this file is the script node was asked to run. */
function isMain(): boolean {
  const script = process.argv[1];
  if (!script) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) process.stdout.write(await xepTable());
