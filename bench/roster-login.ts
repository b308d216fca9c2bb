// Measurement (not a test): how long a user with a large roster waits for
// a fresh login plus the roster fetch.
//
//   npx tsx bench/roster-login.ts [--items 1000] [--runs 15] [--storage sqlite|memory] [--presence]
//
// Starts Chorus in this process (test/helpers/server.ts: loopback, free port,
// modules roster + presence), stores the roster items directly in the roster
// module's storage format (map store 'roster', key = contact bare JID, value
// = {subscription, groups, name}, plus the '@version' key), then times, for
// each run, on a new connection:
//   login   TCP connect, STARTTLS, SCRAM-SHA-256, resource binding
//   roster  <iq type='get'><query xmlns='jabber:iq:roster'/></iq> until the
//           whole result has arrived (the item count is checked)
//   presence (with --presence) initial presence until its echo, which makes
//           the server probe every contact
// and prints the median and the individual runs. The client is bench/client.ts
// (string matching, no XML tree), so it adds little to the figures; note
// that client and server share this process's event loop.
import { parseArgs } from 'node:util';
import { BenchConn } from './client.ts';
import { median } from './report.ts';
import { startTestServer } from '../test/helpers/server.ts';
import type { JsonValue } from '../src/storage/types.ts';

const { values } = parseArgs({
  options: {
    items: { type: 'string', default: '1000' },
    runs: { type: 'string', default: '15' },
    storage: { type: 'string', default: 'sqlite' },
    presence: { type: 'boolean', default: false },
  },
});
const items = Number(values.items);
const runs = Number(values.runs);
if (!Number.isInteger(items) || items < 1 || !Number.isInteger(runs) || runs < 1) {
  throw new Error('--items and --runs must be positive integers');
}
if (values.storage !== 'sqlite' && values.storage !== 'memory')
  throw new Error('--storage is sqlite or memory');

const USER = 'rosteruser';
const PASSWORD = 'roster-Bench-pw';

/** Resolves with the text received on the connection from now on once `done(text)` holds. */
function collect(conn: BenchConn, done: (text: string) => boolean, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const socket = conn.socket;
    const timer = setTimeout(() => {
      socket.off('data', onData);
      reject(new Error(`timeout waiting for ${what}; got ${text.length} characters: ${text.slice(0, 300)}`));
    }, 30_000);
    const onData = (chunk: string | Buffer) => {
      text += chunk.toString();
      if (done(text)) {
        clearTimeout(timer);
        socket.off('data', onData);
        resolve(text);
      }
    };
    socket.on('data', onData);
  });
}

const ms = (from: bigint) => Number(process.hrtime.bigint() - from) / 1e6;

async function main(): Promise<void> {
  const server = await startTestServer({
    sqlite: values.storage === 'sqlite',
    yaml: `modules: [disco, ping, roster, presence]\nmodule_options:\n  roster: { max_items: ${Math.max(items, 1000)} }`,
  });
  try {
    await server.addUser(USER, PASSWORD);
    const store = server.server.storage.map<JsonValue>(server.domain, 'roster');
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < items; i++) {
      await store.set(USER, `contact${i}@${server.domain}`, {
        subscription: i % 3 === 0 ? 'to' : 'both',
        groups: [`Group ${i % 10}`],
        name: `Contact number ${i}`,
      });
    }
    await store.set(USER, '@version', { n: items, epoch: 'bench' });
    console.log(`stored ${items} roster items (${values.storage}) in ${ms(t0).toFixed(0)} ms`);

    const rows: { login: number; roster: number; presence: number; total: number }[] = [];
    for (let run = 0; run <= runs; run++) {
      const start = process.hrtime.bigint();
      const conn = await BenchConn.login(
        { host: '127.0.0.1', port: server.port, domain: server.domain },
        {
          username: USER,
          password: PASSWORD,
          tls: true,
          mechanism: 'SCRAM-SHA-256',
          presence: false,
          resource: `r${run}`,
        },
      );
      const login = ms(start);
      const rosterStart = process.hrtime.bigint();
      const reply = collect(conn, (t) => /<\/iq>\s*$/.test(t) && t.includes('roster1'), 'the roster result');
      conn.send(`<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>`);
      const text = await reply;
      const roster = ms(rosterStart);
      const count = text.split('<item ').length - 1;
      if (count !== items) throw new Error(`the roster result has ${count} items, expected ${items}`);
      let presence = 0;
      if (values.presence) {
        const presenceStart = process.hrtime.bigint();
        const echo = collect(
          conn,
          (t) => t.includes(`from='${conn.jid}'`) || t.includes(`from="${conn.jid}"`),
          'presence echo',
        );
        conn.send('<presence/>');
        await echo;
        presence = ms(presenceStart);
      }
      conn.send('</stream:stream>');
      conn.flush();
      conn.destroy();
      // Run 0 warms up (JIT, caches, TLS session setup) and is not counted.
      if (run > 0) rows.push({ login, roster, presence, total: login + roster + presence });
      const p = values.presence ? `, presence ${presence.toFixed(1)}` : '';
      console.log(
        `${run === 0 ? 'warm-up' : `run ${run}`}: login ${login.toFixed(1)} ms, roster ${roster.toFixed(1)} ms${p} (${text.length} bytes)`,
      );
    }
    const col = (k: keyof (typeof rows)[number]) => (median(rows.map((r) => r[k])) ?? NaN).toFixed(1);
    console.log(
      `median of ${runs} (${items} items, ${values.storage}): login ${col('login')} ms + roster ${col('roster')} ms` +
        (values.presence ? ` + presence ${col('presence')} ms` : '') +
        ` = ${col('total')} ms`,
    );
  } finally {
    await server.stop();
  }
}

await main();
