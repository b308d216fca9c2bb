// --compare: the same scenarios against Prosody, ejabberd (started with
// ../shared/anchors/anchors.sh) and Chorus (started here), one table.
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startChorus, type ChorusProcess } from './chorus.ts';
import { fmt, formatTable, median, writeResult } from './report.ts';
import {
  forgetRegisteredAccounts,
  runScenario,
  type BenchOptions,
  type ScenarioName,
  type ScenarioResult,
} from './scenarios.ts';

const ANCHORS = fileURLToPath(new URL('../../shared/anchors/anchors.sh', import.meta.url));
const ANCHOR_STATE = process.env.ANCHORS_DIR ?? '/tmp/xmpp-anchors';

export interface CompareOptions {
  scenarios: ScenarioName[];
  base: Omit<BenchOptions, 'host' | 'port' | 'pids' | 'server'>;
  /** Users for idle-memory (defaults to 10,000, or base.users with --quick). */
  idleUsers: number;
  chorusPort: number;
  chorusStorage: 'sqlite' | 'memory';
  /** Leave the reference servers running afterwards. */
  keepAnchors: boolean;
  /** Servers to include. */
  servers: string[];
  /** Archive all 1:1 messages on every server (anchors.sh --mam, Chorus `mam`). */
  mam: boolean;
  /** Override of the Chorus module list. */
  chorusModules?: string[];
  /** Worker processes of the `chorus-cluster` server (on chorusPort + 1). */
  clusterWorkers: number;
  /**
   * Pin every server process (all threads) to these CPUs, e.g. "1", so that
   * a load generator run under `taskset -c 0` does not share a core with it.
   */
  pinServers?: string;
}

interface Target {
  name: string;
  port: number;
  pids: number[];
}

function anchors(...args: string[]): string {
  if (args[0] === 'pids') return execFileSync('bash', [ANCHORS, ...args], { encoding: 'utf8' });
  // `start` leaves background processes holding its stdout: a pipe would keep
  // execFileSync waiting for ever, so the output goes to a file instead.
  const dir = mkdtempSync(join(tmpdir(), 'bench-anchors-'));
  const log = join(dir, 'anchors.log');
  const fd = openSync(log, 'w');
  try {
    execFileSync('bash', [ANCHORS, ...args], { stdio: ['ignore', fd, fd] });
  } finally {
    closeSync(fd);
    const text = readFileSync(log, 'utf8');
    if (text) process.stderr.write(text);
    rmSync(dir, { recursive: true, force: true });
  }
  return '';
}

/** Moves every thread of `pid` to `cpus` (taskset syntax). */
function pin(pid: number, cpus: string): void {
  try {
    execFileSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { stdio: 'ignore' });
    process.stderr.write(`pinned pid ${pid} to CPU ${cpus}\n`);
  } catch (err) {
    process.stderr.write(`could not pin pid ${pid} to CPU ${cpus}: ${String(err)}\n`);
  }
}

function anchorPids(): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of anchors('pids').split('\n')) {
    const [name, pid] = line.trim().split(/\s+/);
    if (name && pid && /^\d+$/.test(pid)) out.set(name, Number(pid));
  }
  return out;
}

/** Metrics shown in the comparison, per scenario, with whether higher is better. */
const SHOWN: Record<ScenarioName, [string, 'higher' | 'lower'][]> = {
  'register-login': [
    ['register_per_s', 'higher'],
    ['server_cpu_us_per_register', 'lower'],
    ['logins_per_s', 'higher'],
    ['server_cpu_us_per_login', 'lower'],
    ['client_cpu_us_per_login', 'lower'],
  ],
  throughput: [
    ['msgs_per_s', 'higher'],
    ['server_cpu_us_per_msg', 'lower'],
    ['server_cpu_pct', 'lower'],
    ['client_cpu_us_per_msg', 'lower'],
    ['client_cpu_pct', 'lower'],
    ['undelivered', 'lower'],
  ],
  latency: [
    ['delivered_per_s', 'higher'],
    ['p50_ms', 'lower'],
    ['p90_ms', 'lower'],
    ['p99_ms', 'lower'],
    ['max_ms', 'lower'],
    ['server_cpu_us_per_msg', 'lower'],
    ['undelivered', 'lower'],
  ],
  'idle-memory': [
    ['sessions', 'higher'],
    ['kib_per_session', 'lower'],
    ['kib_per_session_2nd_half', 'lower'],
    ['rss_after_kib', 'lower'],
    ['logins_per_s', 'higher'],
  ],
  'muc-fanout': [
    ['occupants', 'higher'],
    ['deliveries_per_s', 'higher'],
    ['p50_ms', 'lower'],
    ['p99_ms', 'lower'],
    ['max_ms', 'lower'],
    ['server_cpu_us_per_delivery', 'lower'],
    ['server_cpu_pct', 'lower'],
    ['server_rss_kib', 'lower'],
    ['join_s', 'lower'],
    ['client_cpu_pct', 'lower'],
    ['undelivered', 'lower'],
    ['error_messages', 'lower'],
  ],
};

export function comparisonTable(results: ScenarioResult[], servers: string[]): string {
  const others = servers.filter((s) => s !== 'chorus');
  const header = ['scenario / metric', ...servers];
  if (servers.includes('chorus')) for (const o of others) header.push(`chorus/${o}`);
  const clusterToo = servers.includes('chorus') && servers.includes('chorus-cluster');
  if (clusterToo) header.push('cluster/chorus');
  const rows = [header];
  const scenarios = [...new Set(results.map((r) => r.scenario))];
  for (const sc of scenarios) {
    for (const [metric] of SHOWN[sc]) {
      const value = (server: string) =>
        results.find((r) => r.scenario === sc && r.server === server)?.metrics[metric];
      const row = [`${sc} ${metric}`, ...servers.map((s) => fmt(value(s)))];
      if (servers.includes('chorus')) {
        const c = value('chorus');
        for (const o of others) {
          const v = value(o);
          row.push(
            typeof c === 'number' && typeof v === 'number' && v !== 0 ? `${(c / v).toFixed(2)}x` : '-',
          );
        }
        if (clusterToo) {
          const k = value('chorus-cluster');
          row.push(typeof k === 'number' && typeof c === 'number' && c !== 0 ? `${(k / c).toFixed(2)}x` : '-');
        }
      }
      rows.push(row);
    }
  }
  return formatTable(rows);
}

interface ServerRuns {
  results: ScenarioResult[];
  failures: string[];
  chorusModules: string[];
}

/** Starts the servers, runs the scenarios on each and stops them again. */
async function runOnServers(c: CompareOptions): Promise<ServerRuns> {
  // Every server starts here with empty storage.
  forgetRegisteredAccounts();
  const wantAnchors = c.servers.some((s) => s !== 'chorus' && s !== 'chorus-cluster');
  let chorus: ChorusProcess | null = null;
  let chorusCluster: ChorusProcess | null = null;
  const results: ScenarioResult[] = [];
  const failures: string[] = [];
  let chorusModuleList: string[] = [];
  try {
    const targets: Target[] = [];
    if (c.servers.includes('chorus')) {
      process.stderr.write(`starting Chorus on 127.0.0.1:${c.chorusPort}\n`);
      const certDir = `${ANCHOR_STATE}/certs`;
      const cert = existsSync(`${certDir}/localhost.crt`)
        ? { cert: `${certDir}/localhost.crt`, key: `${certDir}/localhost.key` }
        : undefined;
      chorus = await startChorus({
        port: c.chorusPort,
        storage: c.chorusStorage,
        cert,
        mam: c.mam,
        muc: c.scenarios.includes('muc-fanout'),
        modules: c.chorusModules,
      });
      chorusModuleList = chorus.modules;
      process.stderr.write(`Chorus modules: ${chorus.modules.join(', ')}\n`);
      targets.push({ name: 'chorus', port: c.chorusPort, pids: [chorus.pid] });
    }
    if (c.servers.includes('chorus-cluster')) {
      const port = c.chorusPort + 1;
      process.stderr.write(`starting Chorus with ${c.clusterWorkers} workers and Redis on 127.0.0.1:${port}\n`);
      chorusCluster = await startChorus({
        port,
        storage: c.chorusStorage,
        mam: c.mam,
        muc: c.scenarios.includes('muc-fanout'),
        modules: c.chorusModules,
        workers: c.clusterWorkers,
      });
      // Supervisor, workers and redis-server: all of the cluster's CPU and memory.
      targets.push({ name: 'chorus-cluster', port, pids: chorusCluster.pids() });
    }
    if (wantAnchors) {
      process.stderr.write('starting the reference servers (anchors.sh start all)\n');
      if (c.mam) anchors('start', 'all', '--mam');
      else anchors('start', 'all');
      const pids = anchorPids();
      if (c.servers.includes('prosody'))
        targets.push({ name: 'prosody', port: 5322, pids: [pids.get('prosody')!] });
      if (c.servers.includes('ejabberd'))
        targets.push({ name: 'ejabberd', port: 5332, pids: [pids.get('ejabberd')!] });
    }
    if (c.pinServers) {
      for (const t of targets) for (const pid of t.pids) pin(pid, c.pinServers);
    }
    // Run scenario by scenario, each on every server, so that the servers see
    // the same machine conditions as close together in time as possible.
    for (const sc of c.scenarios) {
      for (const t of targets) {
        const o: BenchOptions = {
          ...c.base,
          host: '127.0.0.1',
          port: t.port,
          pids: t.pids.filter((p) => Number.isInteger(p) && p > 0),
          server: t.name,
        };
        if (sc === 'idle-memory') {
          o.users = c.idleUsers;
          o.parallel = Math.max(o.parallel, 32);
          if (o.users > 5000) o.sourceAddrs = Math.max(o.sourceAddrs, 4);
        }
        const size =
          sc === 'muc-fanout' ? `${o.occupants} occupants, ${o.senders} senders` : `${o.users} users`;
        process.stderr.write(`\n== ${t.name}: ${sc} (${size})\n`);
        try {
          const r = await runScenario(sc, o);
          results.push(r);
          process.stderr.write(`   -> ${writeResult(r, t.name, sc)}\n`);
        } catch (err) {
          const msg = `${t.name} ${sc}: ${err instanceof Error ? err.message : String(err)}`;
          failures.push(msg);
          process.stderr.write(`   FAILED ${msg}\n`);
        }
      }
    }
  } finally {
    if (chorus) await chorus.stop();
    if (chorusCluster) await chorusCluster.stop();
    if (wantAnchors && !c.keepAnchors) {
      try {
        anchors('stop');
      } catch (err) {
        process.stderr.write(`anchors.sh stop failed: ${String(err)}\n`);
      }
    }
  }
  return { results, failures, chorusModules: chorusModuleList };
}

function serversInOrder(c: CompareOptions): string[] {
  return ['chorus', 'chorus-cluster', 'prosody', 'ejabberd'].filter((s) => c.servers.includes(s));
}

function printFooter(chorusModules: string[], failures: string[], file: string): void {
  if (chorusModules.length) process.stdout.write(`\nChorus modules: ${chorusModules.join(', ')}\n`);
  if (failures.length) process.stdout.write(`\nfailures:\n  ${failures.join('\n  ')}\n`);
  process.stdout.write(`\nresults: ${file}\n`);
}

export async function compare(c: CompareOptions): Promise<void> {
  const { results, failures, chorusModules } = await runOnServers(c);
  const table = comparisonTable(results, serversInOrder(c));
  const file = writeResult(
    { compare: true, options: c, chorusModules, results, failures, table },
    'all',
    'compare',
  );
  process.stdout.write(`\n${table}\n`);
  printFooter(chorusModules, failures, file);
}

/** Throughput of one server in one round, archiving off and on. */
export interface MamRound {
  off: number | null;
  on: number | null;
}

/**
 * One row per server: each round's rates with archiving off and on and their
 * ratio, then the median of the rounds' ratios. A round whose off or on run
 * failed has no ratio and does not count towards the median.
 */
export function mamRatioTable(rounds: Map<string, MamRound[]>): string {
  const n = Math.max(0, ...[...rounds.values()].map((r) => r.length));
  const header = ['server'];
  for (let i = 1; i <= n; i++) header.push(`round ${i} off -> on msg/s`, `ratio ${i}`);
  header.push('median ratio');
  const rows = [header];
  const pct = (x: number | null) => (x === null ? '-' : `${(100 * x).toFixed(0)}%`);
  for (const [server, list] of rounds) {
    const row = [server];
    const ratios: number[] = [];
    for (let i = 0; i < n; i++) {
      const r = list[i];
      const ratio = r && r.off !== null && r.on !== null && r.off > 0 ? r.on / r.off : null;
      if (ratio !== null) ratios.push(ratio);
      row.push(r ? `${fmt(r.off)} -> ${fmt(r.on)}` : '-', pct(ratio));
    }
    row.push(pct(median(ratios)));
    rows.push(row);
  }
  return formatTable(rows);
}

/**
 * --mam-ratio: throughput with archiving off and on, `rounds` times on each
 * server, reporting each round's ratio and their median. This host's noise
 * moved single runs of the same build by a factor of two within minutes, so
 * one off run and one on run cannot tell a ratio apart from the noise. Each
 * server's off and on runs follow each other directly (the other servers are
 * not running meanwhile), so that the minutes the other servers' runs take do
 * not come between the two sides of a ratio; the order within a pair
 * alternates by round (off first, then on first) so that a trend in the
 * host's load does not favour either side.
 */
export async function mamRatio(c: CompareOptions, rounds: number): Promise<void> {
  if (rounds < 1) throw new Error('--mam-ratio needs at least 1 round');
  const servers = serversInOrder(c);
  const table = new Map<string, MamRound[]>(servers.map((s) => [s, []]));
  const runs: { round: number; mam: boolean; results: ScenarioResult[] }[] = [];
  const failures: string[] = [];
  let chorusModules: string[] = [];
  for (let round = 1; round <= rounds; round++) {
    const order = round % 2 === 1 ? [false, true] : [true, false];
    for (const server of servers) table.get(server)!.push({ off: null, on: null });
    for (const server of servers) {
      for (const mam of order) {
        process.stderr.write(`\n=== round ${round} of ${rounds}: ${server}, archiving ${mam ? 'on' : 'off'}\n`);
        // The reference servers restart for every run: archiving is switched by how they start.
        const out = await runOnServers({ ...c, servers: [server], mam, scenarios: ['throughput'], keepAnchors: false });
        runs.push({ round, mam, results: out.results });
        failures.push(...out.failures.map((f) => `round ${round}, archiving ${mam ? 'on' : 'off'}: ${f}`));
        if (mam && out.chorusModules.length > 0) chorusModules = out.chorusModules;
        for (const r of out.results) {
          const rate = r.metrics.msgs_per_s;
          const slot = table.get(r.server)?.[round - 1];
          if (slot && typeof rate === 'number') slot[mam ? 'on' : 'off'] = rate;
        }
      }
      process.stderr.write(`\n${mamRatioTable(table)}\n`);
    }
  }
  const text = mamRatioTable(table);
  const file = writeResult(
    { mamRatio: true, rounds, options: c, chorusModules, runs, failures, table: text },
    'all',
    'mam-ratio',
  );
  process.stdout.write(`\nthroughput with archiving on / off\n${text}\n`);
  printFooter(chorusModules, failures, file);
}
