// Summarises a V8 .cpuprofile (as written by `node --cpu-prof`, e.g. with
// CHORUS_BENCH_PROFILE=/dir npm run bench -- --compare ...).
//
//   node --import tsx bench/profile-summary.ts FILE.cpuprofile [--top 25] [--from S] [--to S]
//        [--timeline] [--long-tasks MS] [--match TEXT [--depth N]]
//
// Prints:
//   - where the wall time of the profile went: idle, GC, (program) (native code
//     outside JS, e.g. TLS, parsing, libuv), JavaScript;
//   - the top functions by self time;
//   - self and total (inclusive, "top-down") time by module/file: a file's
//     total is the time of all samples that have it anywhere on the stack, so
//     it includes everything it called;
//   - the top functions by total time.
// Caveat: native work that libuv callbacks do before any JavaScript runs is sampled as (idle), not
// as busy time. The main case is the TLS handshake (and TLS record decryption) of a TLSSocket:
// measured on this code base, most of a full TLS 1.3 handshake with an RSA-2048 certificate
// (~2-3 ms of CPU) does not appear in the profile. Compare the busy time with the process's CPU
// time (/proc/<pid>/stat, or the bench's server_cpu_* figures) before concluding from shares.
// Also, a sample covers wall time: when the OS deschedules the process, the function that was
// running gets the whole gap (see "descheduled" in the header and --long-tasks).
// Options:
//   --from S / --to S  only samples between S and S seconds after the profile
//                      started (use --timeline to pick a window, e.g. the
//                      measured window of a scenario, without start-up and
//                      registration);
//   --timeline         busy % of one core for each second of the profile;
//   --long-tasks MS    stretches of consecutive non-idle samples lasting at
//                      least MS ms (event-loop blocking: a synchronous call, a
//                      long GC, a big burst of work), with their top self-time
//                      functions. The sampling interval bounds the precision:
//                      run the server with NODE_OPTIONS=--cpu-prof-interval=100
//                      for 0.1 ms samples;
//   --match TEXT       also print the callers (bottom-up, --depth levels, 5 by
//                      default) of functions whose name or file contains TEXT.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    top: { type: 'string' },
    from: { type: 'string' },
    to: { type: 'string' },
    timeline: { type: 'boolean' },
    'long-tasks': { type: 'string' },
    match: { type: 'string' },
    depth: { type: 'string' },
  },
});
if (positionals.length !== 1) {
  process.stderr.write(
    'usage: node --import tsx bench/profile-summary.ts FILE.cpuprofile [--top N] [--from S] [--to S] [--timeline] [--long-tasks MS] [--match TEXT [--depth N]]\n',
  );
  process.exit(2);
}
// `| head` closing the pipe early is not an error.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});
const TOP = Number(values.top ?? 25);
const DEPTH = Number(values.depth ?? 5);
const profile = JSON.parse(readFileSync(positionals[0]!, 'utf8')) as Profile;

const ROOT = new URL('..', import.meta.url).href;
const SPECIAL = new Set(['(root)', '(program)', '(idle)', '(garbage collector)']);

/** Short file name: project-relative path, node_modules/<package>, or node:internal/... */
function fileOf(url: string): string {
  if (!url) return '(native)';
  let u = url;
  if (u.startsWith(ROOT)) u = u.slice(ROOT.length);
  else if (u.startsWith('file://')) u = u.slice('file://'.length);
  const nm = u.lastIndexOf('node_modules/');
  if (nm >= 0) {
    const rest = u.slice(nm + 'node_modules/'.length).split('/');
    const pkg = rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
    return `node_modules/${pkg}`;
  }
  return u.split('?')[0]!;
}

function label(f: CallFrame): string {
  const name = f.functionName || '(anonymous)';
  if (SPECIAL.has(name) || !f.url) return name;
  return `${name}  ${fileOf(f.url)}:${f.lineNumber + 1}`;
}

const byId = new Map<number, ProfileNode>();
const parent = new Map<number, number>();
for (const n of profile.nodes) byId.set(n.id, n);
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

// Sample i lasts until sample i+1: its duration is timeDeltas[i+1]. Start times are cumulative.
const n = profile.samples.length;
const start: number[] = new Array<number>(n);
const dur: number[] = new Array<number>(n);
let t = profile.startTime;
for (let i = 0; i < n; i++) {
  t += profile.timeDeltas[i] ?? 0;
  start[i] = t;
}
for (let i = 0; i < n; i++) dur[i] = i + 1 < n ? Math.max(0, start[i + 1]! - start[i]!) : 0;

const from = values.from !== undefined ? profile.startTime + Number(values.from) * 1e6 : -Infinity;
const to = values.to !== undefined ? profile.startTime + Number(values.to) * 1e6 : Infinity;
const inWindow = (i: number): boolean => start[i]! >= from && start[i]! < to;

function stackOf(id: number): ProfileNode[] {
  const out: ProfileNode[] = [];
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) out.push(byId.get(cur)!);
  return out; // leaf first
}
const stackCache = new Map<number, ProfileNode[]>();
function stack(id: number): ProfileNode[] {
  let s = stackCache.get(id);
  if (!s) stackCache.set(id, (s = stackOf(id)));
  return s;
}

const ms = (us: number): string => (us / 1000).toFixed(1).padStart(9);
const pct = (us: number, total: number): string => ((100 * us) / total).toFixed(1).padStart(5) + '%';

function add(m: Map<string, number>, k: string, v: number): void {
  m.set(k, (m.get(k) ?? 0) + v);
}
function topOf(m: Map<string, number>, k: number): [string, number][] {
  return [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, k);
}

let wall = 0;
let idle = 0;
let gc = 0;
let program = 0;
const selfFn = new Map<string, number>();
const selfFile = new Map<string, number>();
const totalFile = new Map<string, number>();
const totalFn = new Map<string, number>();
for (let i = 0; i < n; i++) {
  if (!inWindow(i)) continue;
  const d = dur[i]!;
  wall += d;
  const node = byId.get(profile.samples[i]!)!;
  const name = node.callFrame.functionName;
  if (name === '(idle)') {
    idle += d;
    continue;
  }
  if (name === '(garbage collector)') gc += d;
  if (name === '(program)') program += d;
  add(selfFn, label(node.callFrame), d);
  add(selfFile, SPECIAL.has(name) ? name : fileOf(node.callFrame.url), d);
  const seenFile = new Set<string>();
  const seenFn = new Set<string>();
  for (const f of stack(node.id)) {
    const fn = f.callFrame.functionName;
    if (fn === '(root)') continue;
    const file = SPECIAL.has(fn) ? fn : fileOf(f.callFrame.url);
    if (!seenFile.has(file)) {
      seenFile.add(file);
      add(totalFile, file, d);
    }
    const l = label(f.callFrame);
    if (!seenFn.has(l)) {
      seenFn.add(l);
      add(totalFn, l, d);
    }
  }
}
const busy = wall - idle;

// Sampling gaps: a sample that lasted far longer than the sampling interval means the process (or
// V8's sampler thread) was not running, i.e. it was descheduled by the OS; on a busy sample the
// event loop was held up for that long. Gaps on (idle) samples are harmless.
const sorted = dur.filter((d, i) => d > 0 && inWindow(i)).sort((a, b) => a - b);
const interval = sorted.length ? sorted[Math.floor(sorted.length / 2)]! : 0;
let gapsBusy = 0;
let gapsBusyUs = 0;
let gapsBusyMax = 0;
let gcMax = 0;
let gcRun = 0;
for (let i = 0; i < n; i++) {
  if (!inWindow(i)) continue;
  const fn = byId.get(profile.samples[i]!)!.callFrame.functionName;
  gcRun = fn === '(garbage collector)' ? gcRun + dur[i]! : 0;
  gcMax = Math.max(gcMax, gcRun);
  if (fn !== '(idle)' && dur[i]! >= Math.max(1000, 10 * interval)) {
    gapsBusy++;
    gapsBusyUs += dur[i]!;
    gapsBusyMax = Math.max(gapsBusyMax, dur[i]!);
  }
}

const w = (s: string, k: number): string => (s.length > k ? s.slice(0, k - 1) + '…' : s.padEnd(k));
process.stdout.write(
  `profile ${positionals[0]}\n` +
    `window ${((Math.max(from, profile.startTime) - profile.startTime) / 1e6).toFixed(1)}s..` +
    `${((Math.min(to, profile.endTime) - profile.startTime) / 1e6).toFixed(1)}s of ` +
    `${((profile.endTime - profile.startTime) / 1e6).toFixed(1)}s, ${n} samples\n` +
    `wall ${ms(wall)} ms   busy ${ms(busy)} ms (${pct(busy, wall)} of one core)\n` +
    `  GC ${ms(gc)} ms (${pct(gc, busy)} of busy), longest GC run ${(gcMax / 1000).toFixed(1)} ms   ` +
    `(program) ${ms(program)} ms (${pct(program, busy)} of busy)\n` +
    `  sampling interval ~${interval} µs; busy samples that lasted >= max(1 ms, 10 intervals) ` +
    `(process descheduled while working): ${gapsBusy}, ${(gapsBusyUs / 1000).toFixed(1)} ms in all, ` +
    `longest ${(gapsBusyMax / 1000).toFixed(1)} ms\n\n`,
);

function table(title: string, rows: [string, number][], total: number, width = 90): void {
  process.stdout.write(`${title}\n${'ms'.padStart(9)} ${'%busy'.padStart(6)}  name\n`);
  for (const [k, v] of rows) process.stdout.write(`${ms(v)} ${pct(v, total)}  ${w(k, width)}\n`);
  process.stdout.write('\n');
}
table(`Top ${TOP} functions by self time`, topOf(selfFn, TOP), busy);
table(`Self time by file/module`, topOf(selfFile, TOP), busy);
table(`Total (inclusive, top-down) time by file/module`, topOf(totalFile, TOP), busy);
table(`Top ${TOP} functions by total time`, topOf(totalFn, TOP), busy);

if (values.match) {
  const needle = values.match.toLowerCase();
  const callers = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    if (!inWindow(i)) continue;
    const s = stack(profile.samples[i]!);
    const idx = s.findIndex((f) => label(f.callFrame).toLowerCase().includes(needle));
    if (idx < 0) continue;
    const chain = s
      .slice(idx, idx + 1 + DEPTH)
      .map((f) => label(f.callFrame))
      .join('  <-  ');
    add(callers, chain, dur[i]!);
  }
  table(`Callers of '${values.match}' (bottom-up, ${DEPTH} levels)`, topOf(callers, TOP), busy, 4000);
}

if (values.timeline) {
  process.stdout.write('Timeline (busy % of one core, GC % per second)\n');
  const secs = Math.ceil((profile.endTime - profile.startTime) / 1e6);
  const b = new Array<number>(secs).fill(0);
  const g = new Array<number>(secs).fill(0);
  for (let i = 0; i < n; i++) {
    const s = Math.floor((start[i]! - profile.startTime) / 1e6);
    if (s < 0 || s >= secs) continue;
    const fn = byId.get(profile.samples[i]!)!.callFrame.functionName;
    if (fn === '(idle)') continue;
    b[s]! += dur[i]!;
    if (fn === '(garbage collector)') g[s]! += dur[i]!;
  }
  for (let s = 0; s < secs; s++)
    process.stdout.write(
      `${String(s).padStart(5)}s ${(b[s]! / 1e4).toFixed(0).padStart(4)}%  gc ${(g[s]! / 1e4).toFixed(1)}%\n`,
    );
  process.stdout.write('\n');
}

if (values['long-tasks']) {
  const limit = Number(values['long-tasks']) * 1000;
  const tasks: { at: number; len: number; fns: Map<string, number> }[] = [];
  let cur: { at: number; len: number; fns: Map<string, number> } | null = null;
  for (let i = 0; i < n; i++) {
    if (!inWindow(i)) continue;
    const node = byId.get(profile.samples[i]!)!;
    if (node.callFrame.functionName === '(idle)') {
      if (cur && cur.len >= limit) tasks.push(cur);
      cur = null;
      continue;
    }
    cur ??= { at: start[i]!, len: 0, fns: new Map() };
    cur.len += dur[i]!;
    add(cur.fns, label(node.callFrame), dur[i]!);
  }
  if (cur && cur.len >= limit) tasks.push(cur);
  const hist = new Map<string, number>();
  for (const task of tasks) for (const [k, v] of task.fns) add(hist, k, v);
  process.stdout.write(
    `Busy stretches >= ${values['long-tasks']} ms without an idle sample: ${tasks.length}` +
      (tasks.length ? `, longest ${(Math.max(...tasks.map((x) => x.len)) / 1000).toFixed(1)} ms` : '') +
      '\n',
  );
  for (const task of tasks.sort((a, b) => b.len - a.len).slice(0, 10)) {
    const top = topOf(task.fns, 3)
      .map(([k, v]) => `${w(k, 60).trim()} ${(v / 1000).toFixed(1)}`)
      .join(' | ');
    process.stdout.write(
      `  at ${((task.at - profile.startTime) / 1e6).toFixed(2)}s ${(task.len / 1000).toFixed(1)} ms: ${top}\n`,
    );
  }
  process.stdout.write('\n');
  table('Self time inside those stretches', topOf(hist, TOP), busy);
}
