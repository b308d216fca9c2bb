// Soak test (not a unit test): many clients connect, chat and disconnect in
// cycles for a long time, while the RSS of the server process is sampled
// every minute. At the end it says whether the last RSS is within 10% of the
// first minute's — a leak shows up as steady growth across cycles.
//
// Usage (against a running server; accounts soak0..soak<N-1>, password "soak"):
//
//   node --import tsx bench/soak.ts --port 5222 --pid <server pid> \
//     [--host 127.0.0.1] [--domain localhost] [--clients 1000] [--minutes 10] \
//     [--tls] [--register] [--spread]
//
//   --register  creates the accounts first with in-band registration (XEP-0077);
//               the server must allow it (module `register`, and a
//               max_registrations_per_address that fits, or --spread).
//   --spread    spreads connections over source addresses 127.0.1.1-127.0.1.250
//               (loopback), so per-address limits (limits.connections_per_minute,
//               registration and login throttles) see many addresses.
//   --tls       STARTTLS before authenticating (needed when the server requires it).
//
// Each cycle: every client logs in (bounded concurrency), sends one chat
// message to the next client and waits (bounded) for its own, then all close.
// Exit code 0 when RSS stayed within 10%, 1 when it grew more, 2 on bad usage.
import { readFileSync } from 'node:fs';
import { BenchConn, type ConnOptions } from './client.ts';

interface Options {
  host: string;
  port: number;
  domain: string;
  pid: number;
  clients: number;
  minutes: number;
  tls: boolean;
  register: boolean;
  spread: boolean;
}

function usage(message: string): never {
  console.error(`soak: ${message}\nsee the header of bench/soak.ts for usage`);
  process.exit(2);
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    host: '127.0.0.1',
    port: 0,
    domain: 'localhost',
    pid: 0,
    clients: 1000,
    minutes: 10,
    tls: false,
    register: false,
    spread: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const value = () => {
      const v = argv[++i];
      if (v === undefined) usage(`${arg} needs a value`);
      return v;
    };
    const int = () => {
      const n = Number(value());
      if (!Number.isFinite(n) || n <= 0) usage(`${arg} needs a positive number`);
      return n;
    };
    switch (arg) {
      case '--host':
        o.host = value();
        break;
      case '--port':
        o.port = int();
        break;
      case '--domain':
        o.domain = value();
        break;
      case '--pid':
        o.pid = int();
        break;
      case '--clients':
        o.clients = Math.floor(int());
        break;
      case '--minutes':
        o.minutes = int();
        break;
      case '--tls':
        o.tls = true;
        break;
      case '--register':
        o.register = true;
        break;
      case '--spread':
        o.spread = true;
        break;
      default:
        usage(`unknown option ${arg}`);
    }
  }
  if (!o.port) usage('--port is required');
  if (!o.pid) usage('--pid is required');
  return o;
}

/** Resident set size of a process, in bytes (Linux /proc). */
function rssOf(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MB`;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Runs `task` for 0..n-1 with at most `limit` at a time. */
async function pooled(n: number, limit: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < n) await task(next++);
  };
  await Promise.all(Array.from({ length: Math.min(limit, n) }, worker));
}

function connOptions(o: Options, i: number): ConnOptions {
  return {
    host: o.host,
    port: o.port,
    domain: o.domain,
    localAddress: o.spread ? `127.0.1.${(i % 250) + 1}` : undefined,
    timeoutMs: 20_000,
  };
}

async function registerAll(o: Options): Promise<void> {
  let created = 0;
  await pooled(o.clients, 50, async (i) => {
    const c = await BenchConn.connect(connOptions(o, i));
    try {
      await c.negotiate(o.tls);
      if ((await c.register(`soak${i}`, 'soak')) === 'created') created++;
    } finally {
      await c.close(1000);
    }
  });
  console.log(`registered ${created} new accounts (${o.clients - created} existed)`);
}

interface CycleStats {
  logins: number;
  failures: number;
  delivered: number;
}

async function cycle(o: Options, deadline: number): Promise<CycleStats> {
  const stats: CycleStats = { logins: 0, failures: 0, delivered: 0 };
  const conns: (BenchConn | null)[] = new Array<BenchConn | null>(o.clients).fill(null);
  const got: (() => void)[] = [];
  const received: Promise<void>[] = [];
  await pooled(o.clients, 100, async (i) => {
    if (Date.now() > deadline) return;
    try {
      const c = await BenchConn.login(connOptions(o, i), {
        username: `soak${i}`,
        password: 'soak',
        tls: o.tls,
        resource: 'soak',
        presence: false,
      });
      conns[i] = c;
      stats.logins++;
      received[i] = new Promise<void>((resolve) => (got[i] = resolve));
      c.receiveMessages(() => {
        stats.delivered++;
        got[i]?.();
      });
    } catch {
      stats.failures++;
    }
  });
  for (let i = 0; i < o.clients; i++) {
    const c = conns[i];
    const to = (i + 1) % o.clients;
    if (c && conns[to]) {
      c.send(`<message to='soak${to}@${o.domain}/soak' type='chat'><body>cycle ${i}</body></message>`);
      c.flush();
    }
  }
  // Wait (at most 10 s) for the messages to arrive.
  await Promise.race([Promise.all(received.filter(Boolean)), sleep(10_000)]);
  await pooled(o.clients, 200, async (i) => {
    await conns[i]?.close(2000);
  });
  return stats;
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  if (o.register) await registerAll(o);
  const started = Date.now();
  const end = started + o.minutes * 60_000;
  const samples: number[] = [];
  const sample = () => {
    const rss = rssOf(o.pid);
    samples.push(rss);
    const minute = samples.length;
    console.log(`minute ${minute}: server RSS ${mb(rss)}`);
  };
  const timer = setInterval(sample, 60_000);
  let cycles = 0;
  const totals: CycleStats = { logins: 0, failures: 0, delivered: 0 };
  // Bounded: one cycle takes at least a few hundred ms, and no more start after `end`.
  const maxCycles = Math.ceil(o.minutes * 60 * 10);
  while (Date.now() < end && cycles < maxCycles) {
    const s = await cycle(o, end);
    cycles++;
    totals.logins += s.logins;
    totals.failures += s.failures;
    totals.delivered += s.delivered;
    if (s.failures > 0) console.log(`cycle ${cycles}: ${s.failures} login failures`);
  }
  clearInterval(timer);
  sample();
  console.log(
    `${cycles} cycles, ${totals.logins} logins, ${totals.failures} failures, ${totals.delivered} messages delivered`,
  );
  const first = samples[0]!;
  const last = samples[samples.length - 1]!;
  const growth = (last - first) / first;
  const ok = growth <= 0.1;
  console.log(
    `RSS first minute ${mb(first)}, end ${mb(last)} (${(growth * 100).toFixed(1)}%): ` +
      (ok ? 'within 10% — OK' : 'grew more than 10% — possible leak'),
  );
  process.exit(ok ? 0 : 1);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(2);
});
