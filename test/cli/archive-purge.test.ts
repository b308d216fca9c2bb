// `chorus archive purge`: the mam module's retention purge, run by hand
// against the configured SQLite database.
import { expect } from 'chai';
import { mkdirSync } from 'node:fs';
import Database from 'better-sqlite3';
import { openStorage } from '../../src/storage/index.ts';
import { configYaml, freePorts, runChorus, TempDir, type RunResult } from './helpers.ts';

const DAY = 86_400_000;

function show(r: RunResult): string {
  return `exit ${String(r.code)}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
}

describe('chorus archive purge', function () {
  this.timeout(120_000);
  let dir: TempDir;
  let configPath: string;
  const dbPath = () => dir.file('data/chorus.sqlite');
  const chorus = (args: string[]) => runChorus([...args, '-c', configPath]);

  async function bodies(user: string): Promise<string[]> {
    const storage = openStorage({ driver: 'sqlite', path: dbPath() });
    try {
      const { items } = await storage.archive<string>('localhost', 'archive').find(user);
      return items.map((i) => /<body>(.*)<\/body>/.exec(i.value)![1]!);
    } finally {
      await storage.close();
    }
  }

  before(async () => {
    dir = new TempDir();
    const ports = await freePorts(2);
    configPath = dir.write('chorus.yaml', configYaml({ dir, ports: [ports[0]!, ports[1]!] }));
    mkdirSync(dir.file('data'), { recursive: true });
    const storage = openStorage({ driver: 'sqlite', path: dbPath() });
    const archive = storage.archive<string>('localhost', 'archive');
    for (const user of ['alice', 'bob']) {
      for (const [age, body] of [
        [400 * DAY, 'last year'],
        [40 * DAY, 'last month'],
        [DAY, 'yesterday'],
      ] as const) {
        await archive.append(user, {
          when: Date.now() - age,
          with: 'carol@localhost',
          value: `<message xmlns='jabber:client' from='carol@localhost/x' to='${user}@localhost'><body>${body}</body></message>`,
        });
      }
    }
    await storage.close();
  });
  after(() => dir.remove());

  it('purges one user’s archive, then everyone’s, keeping what is newer than the age', async () => {
    const one = await chorus(['archive', 'purge', '--older-than', '30d', '--user', 'alice@localhost']);
    expect(one.code, show(one)).to.equal(0);
    expect(one.stdout).to.include('deleted 2 archived messages');
    expect(await bodies('alice')).to.deep.equal(['yesterday']);
    expect(await bodies('bob')).to.deep.equal(['last year', 'last month', 'yesterday']);

    const all = await chorus(['archive', 'purge', '--older-than', '1y']);
    expect(all.code, show(all)).to.equal(0);
    expect(all.stdout).to.include('deleted 1 archived message ');
    expect(await bodies('bob')).to.deep.equal(['last month', 'yesterday']);
  });

  it('forgets the address of a conversation partner whose every message was purged', async () => {
    const storage = openStorage({ driver: 'sqlite', path: dbPath() });
    await storage.archive<string>('localhost', 'archive').append('erin', {
      when: Date.now() - 400 * DAY,
      with: 'dave@localhost/phone',
      value: `<message xmlns='jabber:client' from='dave@localhost/phone' to='erin@localhost'><body>old</body></message>`,
    });
    await storage.close();
    const addresses = () => {
      const db = new Database(dbPath(), { readonly: true });
      try {
        return db.prepare('SELECT jid FROM archive_jid ORDER BY jid').pluck().all();
      } finally {
        db.close();
      }
    };
    expect(addresses()).to.include('dave@localhost/phone');
    const r = await chorus(['archive', 'purge', '--older-than', '1y']);
    expect(r.code, show(r)).to.equal(0);
    expect(r.stdout).to.include('deleted 1 archived message ');
    expect(addresses()).to.deep.equal(['carol@localhost']);
    expect(await bodies('bob')).to.deep.equal(['last month', 'yesterday']);
  });

  it('exits 2 for a missing or unreadable age, or a user of an unknown host', async () => {
    for (const args of [
      ['archive', 'purge'],
      ['archive', 'purge', '--older-than', 'ages'],
      ['archive', 'purge', '--older-than', '1y', '--user', 'alice@elsewhere.example'],
    ]) {
      const r = await chorus(args);
      expect(r.code, show(r)).to.equal(2);
    }
    expect(await bodies('bob')).to.have.length(2);
  });
  it('reports how far a purge of many messages has got', async () => {
    const storage = openStorage({ driver: 'sqlite', path: dbPath() });
    const archive = storage.archive<string>('localhost', 'archive');
    await Promise.all(
      Array.from({ length: 2500 }, (_, i) =>
        archive.append('frank', {
          when: Date.now() - 400 * DAY - i,
          with: 'carol@localhost',
          value: `<message xmlns='jabber:client' to='frank@localhost'><body>${i}</body></message>`,
        }),
      ),
    );
    await storage.close();
    const r = await chorus(['archive', 'purge', '--older-than', '1y']);
    expect(r.code, show(r)).to.equal(0);
    // Batches of 1000: the first is reported at once, the rest within the throttle.
    expect(r.stderr).to.match(/^localhost: 1000 archived messages deleted so far$/m);
    expect(r.stdout).to.include('deleted 2500 archived messages older than 1y');
    expect(await bodies('frank')).to.deep.equal([]);
  });
});
