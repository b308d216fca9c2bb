// Chorus load generator. See bench/README.md.
//
//   npm run bench -- --port 5342 --pid 1234 --scenario throughput [--users 200] ...
//   npm run bench -- --compare [--scenarios throughput,latency] [--quick]
import { parseArgs } from 'node:util';
import { compare, mamRatio, type CompareOptions } from './compare.ts';
import { resultTable, writeResult } from './report.ts';
import {
  SCENARIO_ALIASES,
  SCENARIOS,
  runScenario,
  type BenchOptions,
  type ScenarioName,
} from './scenarios.ts';

const USAGE = `usage:
  npm run bench -- --scenario NAME [--host 127.0.0.1] [--port 5222] [--domain localhost]
                   [--pid PID[,PID]] [--server LABEL] [--users 200] [--inflight 4]
                   [--duration 10] [--warmup 2] [--rate 3000] [--parallel 8] [--tls]
                   [--prefix bench] [--password bench-pass] [--source-addrs 1] [--quiet]
                   muc-fanout: [--occupants 500] [--senders 10] [--muc-domain conference.DOMAIN]
                   [--room NAME] [--muc-rate 0] [--join-parallel 16]
  npm run bench -- --compare [--scenarios ${SCENARIOS.join(',')}] [--quick]
                   [--users 200] [--idle-users 10000] [--chorus-port 5342]
                   [--chorus-storage sqlite|memory] [--servers chorus,chorus-cluster,prosody,ejabberd] [--cluster-workers N] [--pin-servers CPUS] [--keep-anchors]
                   [--mam] [--chorus-modules a,b,c]
  npm run bench -- --mam-ratio ROUNDS [the --compare options but --scenarios and --mam]
                   throughput with archiving off and on, ROUNDS times per server, and the
                   median of the rounds' ratios
scenarios: ${SCENARIOS.join(', ')} (muc = muc-fanout)`;

function int(v: string | undefined, def: number, name: string): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${name} must be a non-negative number`);
  return n;
}

function scenarioName(s: string): ScenarioName {
  const found = SCENARIOS.find((x) => x === s) ?? SCENARIO_ALIASES[s];
  if (!found) throw new Error(`unknown scenario '${s}' (${SCENARIOS.join(', ')})`);
  return found;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      domain: { type: 'string' },
      pid: { type: 'string' },
      server: { type: 'string' },
      scenario: { type: 'string' },
      scenarios: { type: 'string' },
      users: { type: 'string' },
      'idle-users': { type: 'string' },
      inflight: { type: 'string' },
      duration: { type: 'string' },
      warmup: { type: 'string' },
      rate: { type: 'string' },
      parallel: { type: 'string' },
      prefix: { type: 'string' },
      password: { type: 'string' },
      'source-addrs': { type: 'string' },
      tls: { type: 'boolean' },
      quiet: { type: 'boolean' },
      compare: { type: 'boolean' },
      quick: { type: 'boolean' },
      'chorus-port': { type: 'string' },
      'chorus-storage': { type: 'string' },
      servers: { type: 'string' },
      'keep-anchors': { type: 'boolean' },
      mam: { type: 'boolean' },
      'mam-ratio': { type: 'string' },
      'chorus-modules': { type: 'string' },
      occupants: { type: 'string' },
      senders: { type: 'string' },
      'muc-domain': { type: 'string' },
      room: { type: 'string' },
      'muc-rate': { type: 'string' },
      'join-parallel': { type: 'string' },
      'cluster-workers': { type: 'string' },
      'pin-servers': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return;
  }
  const quick = values.quick ?? false;
  const port = int(values.port, 5222, 'port');
  const base = {
    domain: values.domain ?? 'localhost',
    users: int(values.users, quick ? 50 : 200, 'users'),
    inflight: int(values.inflight, 4, 'inflight'),
    duration: int(values.duration, quick ? 3 : 10, 'duration'),
    warmup: int(values.warmup, quick ? 1 : 2, 'warmup'),
    rate: int(values.rate, quick ? 1000 : 3000, 'rate'),
    tls: values.tls ?? false,
    parallel: int(values.parallel, 8, 'parallel'),
    prefix: values.prefix ?? 'bench',
    password: values.password ?? 'bench-pass',
    sourceAddrs: int(values['source-addrs'], 1, 'source-addrs'),
    quiet: values.quiet ?? false,
    occupants: int(values.occupants, quick ? 100 : 500, 'occupants'),
    senders: int(values.senders, quick ? 5 : 10, 'senders'),
    mucDomain: values['muc-domain'],
    room: values.room,
    mucRate: int(values['muc-rate'], 0, 'muc-rate'),
    joinParallel: int(values['join-parallel'], 16, 'join-parallel'),
  };

  if (values.compare || values['mam-ratio'] !== undefined) {
    const scenarios = (values.scenarios ?? SCENARIOS.join(',')).split(',').filter(Boolean).map(scenarioName);
    const options: CompareOptions = {
      scenarios,
      base,
      idleUsers: int(values['idle-users'], quick ? 500 : 10000, 'idle-users'),
      chorusPort: int(values['chorus-port'], 5342, 'chorus-port'),
      chorusStorage: values['chorus-storage'] === 'memory' ? 'memory' : 'sqlite',
      keepAnchors: values['keep-anchors'] ?? false,
      servers: (values.servers ?? 'chorus,prosody,ejabberd').split(',').filter(Boolean),
      mam: values.mam ?? false,
      chorusModules: values['chorus-modules']?.split(',').filter(Boolean),
      clusterWorkers: int(values['cluster-workers'], 2, 'cluster-workers'),
      pinServers: values['pin-servers'],
    };
    if (values['mam-ratio'] !== undefined) await mamRatio(options, int(values['mam-ratio'], 3, 'mam-ratio'));
    else await compare(options);
    return;
  }

  if (!values.scenario) throw new Error(`--scenario or --compare is required\n${USAGE}`);
  const scenario = scenarioName(values.scenario);
  const pids = (values.pid ?? '')
    .split(',')
    .filter(Boolean)
    .map((p) => int(p, 0, 'pid'));
  const defaultLabel = port === 5322 ? 'prosody' : port === 5332 ? 'ejabberd' : 'chorus';
  const o: BenchOptions = {
    ...base,
    host: values.host ?? '127.0.0.1',
    port,
    pids,
    server: values.server ?? defaultLabel,
  };
  const result = await runScenario(scenario, o);
  const file = writeResult(result, o.server, scenario);
  process.stdout.write(`${resultTable(result)}\n`);
  if (result.notes.length) process.stdout.write(`notes:\n  ${result.notes.join('\n  ')}\n`);
  process.stdout.write(`results: ${file}\n`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
