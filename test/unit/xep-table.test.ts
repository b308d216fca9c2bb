// The XEP table is generated from the modules' declarations; README.md's
// "Standards" table is written by hand and must not forget any of them.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { builtinModules } from '../../modules/index.ts';
import { xepName, xepRows, xepTable } from '../../src/tools/xep-table.ts';

const README = new URL('../../README.md', import.meta.url);

/** Every XEP declared by a built-in module, as 'XEP-0030', with the modules declaring it. */
async function declaredXeps(): Promise<Map<string, string[]>> {
  const declared = new Map<string, string[]>();
  for (const [module, load] of Object.entries(builtinModules)) {
    for (const xep of (await load()).default.xeps ?? []) {
      const name = xepName(xep.number);
      declared.set(name, [...(declared.get(name) ?? []), module]);
    }
  }
  return declared;
}

/** The rows of the table under the heading `## <heading>` of a markdown text. */
function tableUnder(markdown: string, heading: string): string[] {
  const lines = markdown.split('\n');
  const start = lines.findIndex((l) => l.trim() === `## ${heading}`);
  if (start < 0) throw new Error(`README.md has no "## ${heading}" section`);
  const rows: string[] = [];
  for (const line of lines.slice(start + 1)) {
    if (line.startsWith('## ')) break;
    if (line.trim().startsWith('|')) rows.push(line.trim());
  }
  return rows;
}

/** The XEP numbers named in the first column of a markdown table's rows. */
function xepsInFirstColumn(rows: string[]): Set<string> {
  const found = new Set<string>();
  for (const row of rows) {
    const first = row.split('|')[1] ?? '';
    for (const match of first.matchAll(/XEP-(\d{4})/g)) found.add(`XEP-${match[1]}`);
  }
  return found;
}

describe('XEP table (src/tools/xep-table.ts)', function () {
  it('has a row for every XEP every built-in module declares, with its module and version', async function () {
    const table = await xepTable();
    for (const [module, load] of Object.entries(builtinModules)) {
      for (const xep of (await load()).default.xeps ?? []) {
        const name = xepName(xep.number);
        const row = table.split('\n').find((l) => l.includes(`[${name}]`) && l.includes(`| ${module} |`));
        expect(row, `${name} of module ${module}`).to.be.a('string');
        expect(row).to.include(`| ${xep.version} |`);
        expect(row).to.include(`https://xmpp.org/extensions/xep-${String(xep.number).padStart(4, '0')}.html`);
        expect(row).to.include(xep.status ?? 'complete');
      }
    }
  });

  it('is a well-formed markdown table sorted by XEP number', async function () {
    const lines = (await xepTable()).trimEnd().split('\n');
    expect(lines[0]).to.equal('| XEP | module | version | status |');
    expect(lines[1]).to.equal('|---|---|---|---|');
    const rows = lines.slice(2);
    expect(rows.length).to.equal((await xepRows()).length);
    for (const row of rows) expect(row.split(' | '), row).to.have.length(4);
    const numbers = rows.map((r) => Number(/XEP-(\d{4})/.exec(r)?.[1]));
    expect(numbers).to.deep.equal([...numbers].sort((a, b) => a - b));
  });

  it('covers at least the XEPs of the modules shipped today', async function () {
    const names = new Set((await xepRows()).map((r) => xepName(r.number)));
    for (const expected of ['XEP-0030', 'XEP-0077', 'XEP-0092', 'XEP-0199', 'XEP-0202']) {
      expect(names, expected).to.include(expected);
    }
  });

  it('prints the table when run as a script', async function () {
    const script = new URL('../../src/tools/xep-table.ts', import.meta.url).pathname;
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', script], {
      cwd: new URL('../..', import.meta.url).pathname,
    });
    expect(stdout).to.equal(await xepTable());
  });
});

describe('README.md "Standards" table', function () {
  it('lists every XEP that a built-in module declares', async function () {
    const listed = xepsInFirstColumn(tableUnder(readFileSync(README, 'utf8'), 'Standards'));
    const missing = [...(await declaredXeps())]
      .filter(([name]) => !listed.has(name))
      .map(([name, modules]) => `${name} (module ${modules.join(', ')})`);
    expect(missing, `README.md's Standards table lacks: ${missing.join('; ')}`).to.deep.equal([]);
  });
});
