// Runs every scenario script in test/protocol/scenarios/ (syntax: see
// test/helpers/scenario.ts) against one shared server.
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { runScenarioFile } from '../helpers/scenario.ts';
import { startTestServer, type TestServer } from '../helpers/server.ts';

const dir = fileURLToPath(new URL('./scenarios/', import.meta.url));
const files = readdirSync(dir)
  .filter((f) => f.endsWith('.scs'))
  .sort();

describe('protocol: scenario scripts', function () {
  let server: TestServer;

  before(async () => {
    server = await startTestServer();
  });
  after(() => server.stop());

  it('finds the scenario scripts', function () {
    if (files.length === 0) throw new Error(`no .scs files in ${dir}`);
  });

  for (const file of files) {
    it(file, () => runScenarioFile(`${dir}${file}`, server));
  }
});
