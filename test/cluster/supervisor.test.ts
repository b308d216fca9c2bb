// `chorus start --cluster 2`: one command, one port, two worker nodes that
// share their sessions through a real redis-server; a worker that dies is
// restarted under the same node id and cleans up what it left behind.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { Accounts } from '../../src/storage/accounts.ts';
import { SqliteDriver } from '../../src/storage/sqlite.ts';
import { available } from '../helpers/fixtures.ts';
import { requireRedis, sleep } from '../helpers/cluster.ts';
import { freePort, startRedis, type TestRedis } from '../helpers/redis.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const PASSWORD = 'supervisor-test-pw';
const USERS = ['u0', 'u1', 'u2', 'u3', 'u4', 'u5'];

describe('cluster: chorus start --cluster 2', function () {
  this.timeout(60_000);
  let redisServer: TestRedis;
  let redis: Redis;
  let dir: string;
  let port: number;
  let child: ChildProcess;
  let output = '';
  /** Where each user's session landed in the first test. */
  let placement: string[] = [];
  const clients: XmppClient[] = [];

  async function waitFor(predicate: () => boolean, what: string, ms = 20_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!predicate()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}:\n${output.slice(-3000)}`);
      await sleep(50);
    }
  }

  const count = (text: string) => output.split(text).length - 1;

  before(async function () {
    requireRedis(this);
    redisServer = await startRedis();
    redis = new Redis(redisServer.url);
    dir = mkdtempSync(join(tmpdir(), 'chorus-test-supervisor-'));
    port = await freePort();
    const storage = SqliteDriver.open(join(dir, 'chorus.sqlite'));
    const accounts = new Accounts(storage, 4096);
    for (const u of USERS) await accounts.create('localhost', u, PASSWORD);
    await storage.close();
    writeFileSync(
      join(dir, 'chorus.yaml'),
      [
        'listeners:',
        `  - { port: ${port}, address: 127.0.0.1, tls: starttls }`,
        `storage: { driver: sqlite, path: ${join(dir, 'chorus.sqlite')} }`,
        `certs: { dir: ${join(dir, 'certs')} }`,
        'limits: { connections_per_minute: 0, bytes_per_second: 0 }',
        `cluster: { redis_url: '${redisServer.url}', node_id: w, heartbeat_ms: 200, node_ttl_ms: 800, metrics_log_seconds: 0 }`,
        'log: { format: json }',
      ].join('\n'),
    );
    child = spawn(
      process.execPath,
      [join(ROOT, 'bin/chorus.js'), 'start', '-c', join(dir, 'chorus.yaml'), '--cluster', '2'],
      { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CHORUS_CONFIG: '' } },
    );
    child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    await waitFor(() => count('Chorus is ready') === 2, 'two workers to be ready');
  });

  after(async () => {
    for (const c of clients) c.destroy();
    redis?.disconnect();
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    await redisServer?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** Which worker each user's session landed on, from the directory. */
  async function nodeOf(user: string): Promise<string> {
    const entries = await redis.hgetall(`chorus:u:${user}@localhost`);
    return (JSON.parse(entries.r!) as { n: string }).n;
  }

  it('spreads connections to one port over both workers, which route to each other', async () => {
    for (const u of USERS) {
      const c = await XmppClient.connect({ port, name: u });
      clients.push(c);
      await c.login(u, PASSWORD, { resource: 'r' });
      await available(c);
    }
    const nodes = await Promise.all(USERS.map(nodeOf));
    placement = nodes;
    expect(new Set(nodes)).to.deep.equal(new Set(['w-1', 'w-2']));
    const i = nodes.indexOf('w-1');
    const j = nodes.indexOf('w-2');
    clients[i]!.send(
      `<message to='${USERS[j]}@localhost' type='chat' id='x'><body>across workers</body></message>`,
    );
    await clients[j]!.expect(
      `<message from='${clients[i]!.jid}' id='x'><body>across workers</body></message>`,
    );
  });

  it('restarts a worker killed with SIGKILL under the same node id, without its stale sessions', async () => {
    const match = /"node":"w-2","pid":(\d+)/.exec(output);
    expect(match, 'the supervisor logs each worker with its pid').to.not.equal(null);
    const readyBefore = count('Chorus is ready');
    process.kill(Number(match![1]), 'SIGKILL');
    await waitFor(() => count('Chorus is ready') === readyBefore + 1, 'the worker to be restarted');
    expect(output).to.include('worker w-2 stopped; restarting it');
    // The new w-2 cleared the old one's entries when it started.
    expect(await redis.scard('chorus:n:w-2')).to.equal(0);
    const entries = await Promise.all(USERS.map((u) => redis.hlen(`chorus:u:${u}@localhost`)));
    expect(entries).to.deep.equal(placement.map((node) => (node === 'w-1' ? 1 : 0)));
    // Clients of the killed worker can log in again and are served.
    const c = await XmppClient.connect({ port, name: 'again' });
    clients.push(c);
    await c.login('u0', PASSWORD, { resource: 'again' });
    await available(c);
  });
});
