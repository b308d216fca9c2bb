// The benchmark scenarios. Each one returns a ScenarioResult whose `metrics`
// are plain numbers (or null when not measurable, e.g. without a server pid).
import { performance } from 'node:perf_hooks';
import { BenchConn, XmppError, type ConnOptions } from './client.ts';
import { selfCpuMicros, totalCpuMicros, totalRssKiB } from './proc.ts';

export const SCENARIOS = ['register-login', 'throughput', 'latency', 'idle-memory', 'muc-fanout'] as const;
export type ScenarioName = (typeof SCENARIOS)[number];
/** Other names accepted on the command line. */
export const SCENARIO_ALIASES: Record<string, ScenarioName> = { muc: 'muc-fanout' };

export interface BenchOptions {
  host: string;
  port: number;
  domain: string;
  /** Server process ids for CPU and memory readings (may be empty). */
  pids: number[];
  /** Label used in reports and file names. */
  server: string;
  users: number;
  inflight: number;
  /** Measured window, seconds. */
  duration: number;
  /** Warm-up before the measured window, seconds. */
  warmup: number;
  /** Offered load of the latency scenario, messages per second. */
  rate: number;
  /** STARTTLS for the messaging scenarios (register-login always uses it). */
  tls: boolean;
  /** Parallel connections for registration and login. */
  parallel: number;
  prefix: string;
  password: string;
  /** Number of 127.0.0.x source addresses to spread connections over (1 = kernel default). */
  sourceAddrs: number;
  /** Suppress the per-second progress lines. */
  quiet: boolean;
  /** muc-fanout: sessions in the room [500]. */
  occupants?: number;
  /** muc-fanout: occupants that send (the first ones) [10]. */
  senders?: number;
  /** muc-fanout: the MUC service [conference.<domain>]. */
  mucDomain?: string;
  /** muc-fanout: room name [a new one per run]. */
  room?: string;
  /** muc-fanout: open loop at this many messages per second over all senders; 0 = closed loop [0]. */
  mucRate?: number;
  /** muc-fanout: joins at a time [16]. */
  joinParallel?: number;
}

export type Metrics = Record<string, number | null>;

export interface ScenarioResult {
  server: string;
  scenario: ScenarioName;
  startedAt: string;
  params: Record<string, string | number | boolean | number[]>;
  metrics: Metrics;
  notes: string[];
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function userName(o: BenchOptions, i: number): string {
  return `${o.prefix}${i}`;
}

function connOptions(o: BenchOptions, i: number): ConnOptions {
  const c: ConnOptions = { host: o.host, port: o.port, domain: o.domain };
  if (o.sourceAddrs > 1) c.localAddress = `127.0.0.${1 + (i % o.sourceAddrs)}`;
  return c;
}

function progress(o: BenchOptions, label: string, line: () => string): () => void {
  if (o.quiet) return () => {};
  const t0 = performance.now();
  const timer = setInterval(() => {
    process.stderr.write(
      `[${o.server} ${label} ${((performance.now() - t0) / 1000).toFixed(0)}s] ${line()}\n`,
    );
  }, 1000);
  return () => clearInterval(timer);
}

/** Runs `fn(0..count-1)` with at most `parallel` at a time; errors are counted, the first few kept. */
async function pool(
  count: number,
  parallel: number,
  fn: (i: number) => Promise<void>,
  errors: string[],
): Promise<number> {
  let next = 0;
  let failed = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      try {
        await fn(i);
      } catch (err) {
        failed++;
        if (errors.length < 5) errors.push(err instanceof Error ? err.message : String(err));
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, count) }, worker));
  return failed;
}

/** Measures a window: server CPU, client CPU and wall time. */
class Window {
  private readonly t0 = performance.now();
  private readonly server0: number;
  private readonly client0 = selfCpuMicros();
  constructor(private readonly pids: readonly number[]) {
    this.server0 = totalCpuMicros(pids);
  }
  end(): { seconds: number; serverCpuUs: number | null; clientCpuUs: number } {
    return {
      seconds: (performance.now() - this.t0) / 1000,
      serverCpuUs: this.pids.length ? totalCpuMicros(this.pids) - this.server0 : null,
      clientCpuUs: selfCpuMicros() - this.client0,
    };
  }
}

/** Accounts known to exist, per server and prefix: later scenarios on the same server skip registering them. */
const registered = new Map<string, number>();

/** Forgets which accounts exist: for servers started again with empty storage. */
export function forgetRegisteredAccounts(): void {
  registered.clear();
}

interface AccountsReport {
  created: number;
  existing: number;
  failed: number;
  seconds: number;
  perSecond: number;
  serverCpuUsPerAccount: number | null;
}

/**
 * Makes sure accounts prefix0..prefix(n-1) exist, registering them over STARTTLS
 * (XEP-0077), one connection per account, `parallel` at a time.
 */
export async function ensureAccounts(o: BenchOptions, n: number, errors: string[]): Promise<AccountsReport> {
  const key = `${o.host}:${o.port}:${o.domain}:${o.prefix}`;
  const have = registered.get(key) ?? 0;
  let created = 0;
  let existing = have;
  const win = new Window(o.pids);
  const todo = Math.max(0, n - have);
  const stop = progress(o, 'register', () => `created=${created} existing=${existing} of ${n}`);
  const failed = await pool(
    todo,
    o.parallel,
    async (k) => {
      const i = have + k;
      const conn = await BenchConn.connect(connOptions(o, i));
      try {
        await conn.negotiate(true);
        const r = await conn.register(userName(o, i), o.password);
        if (r === 'created') created++;
        else existing++;
      } finally {
        await conn.close(1000);
      }
    },
    errors,
  );
  stop();
  const w = win.end();
  if (failed === 0) registered.set(key, Math.max(have, n));
  return {
    created,
    existing,
    failed,
    seconds: w.seconds,
    perSecond: todo > 0 ? todo / w.seconds : 0,
    serverCpuUsPerAccount: w.serverCpuUs !== null && created > 0 ? w.serverCpuUs / created : null,
  };
}

/** Logs in users from..to-1 (one session each), `parallel` at a time. */
async function loginAll(o: BenchOptions, n: number, tls: boolean, errors: string[], from = 0) {
  const count = n - from;
  const conns: BenchConn[] = new Array<BenchConn>(count);
  let done = 0;
  const win = new Window(o.pids);
  const stop = progress(o, 'login', () => `${done} of ${count} sessions`);
  const failed = await pool(
    count,
    o.parallel,
    async (k) => {
      const i = from + k;
      conns[k] = await BenchConn.login(connOptions(o, i), {
        username: userName(o, i),
        password: o.password,
        tls,
      });
      done++;
    },
    errors,
  );
  stop();
  const w = win.end();
  if (failed > 0) {
    await closeAll(conns.filter((c) => c !== undefined));
    throw new Error(`${failed} of ${count} logins failed: ${errors.join(' | ')}`);
  }
  return { conns, seconds: w.seconds, perSecond: count / w.seconds };
}

async function closeAll(conns: BenchConn[]): Promise<void> {
  // Close in slices so that thousands of closes do not all wait at once.
  for (let i = 0; i < conns.length; i += 500) {
    await Promise.all(conns.slice(i, i + 500).map((c) => c.close(2000)));
  }
}

function percentile(sorted: Float64Array, p: number): number | null {
  if (sorted.length === 0) return null;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx]!;
}

const round = (x: number | null, digits = 1): number | null =>
  x === null || !Number.isFinite(x) ? null : Number(x.toFixed(digits));

function baseParams(o: BenchOptions): ScenarioResult['params'] {
  return {
    host: o.host,
    port: o.port,
    domain: o.domain,
    pids: o.pids,
    users: o.users,
    tls: o.tls,
  };
}

// ---------------------------------------------------------------------------

async function registerLogin(o: BenchOptions): Promise<ScenarioResult> {
  const errors: string[] = [];
  const startedAt = new Date().toISOString();
  const reg = await ensureAccounts(o, o.users, errors);
  if (reg.failed > 0) throw new Error(`${reg.failed} registrations failed: ${errors.join(' | ')}`);
  // Login loop: STARTTLS + SCRAM + bind + initial presence (echo received), then close.
  let logins = 0;
  let failures = 0;
  let next = 0;
  let measuring = false;
  let measured = 0;
  const stop = progress(o, 'login', () => `logins=${logins} failures=${failures}`);
  const deadline = { warm: performance.now() + o.warmup * 1000, end: 0 };
  deadline.end = deadline.warm + o.duration * 1000;
  let win: Window | null = null;
  const worker = async () => {
    while (performance.now() < deadline.end) {
      const i = next++ % o.users;
      try {
        const conn = await BenchConn.login(connOptions(o, i), {
          username: userName(o, i),
          password: o.password,
          tls: true,
          resource: `r${next}`,
        });
        await conn.close(2000);
        logins++;
        if (measuring) measured++;
      } catch (err) {
        failures++;
        if (errors.length < 5) errors.push(err instanceof Error ? err.message : String(err));
      }
    }
  };
  const starter = setTimeout(() => {
    measuring = true;
    win = new Window(o.pids);
  }, o.warmup * 1000);
  const ender = new Promise<ReturnType<Window['end']>>((resolve) =>
    setTimeout(
      () => {
        measuring = false;
        resolve((win ?? new Window(o.pids)).end());
      },
      (o.warmup + o.duration) * 1000,
    ),
  );
  await Promise.all(Array.from({ length: o.parallel }, worker));
  const w = await ender;
  clearTimeout(starter);
  stop();
  return {
    server: o.server,
    scenario: 'register-login',
    startedAt,
    params: { ...baseParams(o), tls: true, parallel: o.parallel, duration: o.duration, warmup: o.warmup },
    metrics: {
      accounts_created: reg.created,
      accounts_existing: reg.existing,
      register_per_s: round(reg.perSecond),
      server_cpu_us_per_register: round(reg.serverCpuUsPerAccount, 0),
      logins_per_s: round(measured / w.seconds),
      login_failures: failures,
      server_cpu_us_per_login: round(
        w.serverCpuUs === null || !measured ? null : w.serverCpuUs / measured,
        0,
      ),
      client_cpu_us_per_login: round(measured ? w.clientCpuUs / measured : null, 0),
      client_cpu_pct: round((w.clientCpuUs / (w.seconds * 1e6)) * 100),
    },
    notes: errors,
  };
}

// ---------------------------------------------------------------------------

async function throughput(o: BenchOptions): Promise<ScenarioResult> {
  if (o.users < 2) throw new Error('throughput needs at least 2 users');
  const errors: string[] = [];
  const startedAt = new Date().toISOString();
  await ensureAccounts(o, o.users, errors);
  const { conns } = await loginAll(o, o.users, o.tls, errors);
  const n = o.users;
  const sent = new Uint32Array(n);
  const lastSeen = new Uint32Array(n);
  const targets = conns.map((_, i) => `${userName(o, (i + 1) % n)}@${o.domain}`);
  let delivered = 0;
  let outOfOrder = 0;
  let running = true;
  const send = (i: number) => {
    const seq = ++sent[i]!;
    conns[i]!.send(`<message to='${targets[i]}' type='chat' id='m${seq}'><body>${seq}</body></message>`);
  };
  conns.forEach((conn, j) => {
    const sender = (j - 1 + n) % n;
    conn.receiveMessages((body) => {
      delivered++;
      const seq = Number.parseInt(body, 10);
      if (seq !== lastSeen[j]! + 1) outOfOrder++;
      lastSeen[j] = seq;
      if (running) send(sender);
    });
  });
  let lastCount = 0;
  const stop = progress(o, 'throughput', () => {
    const r = delivered - lastCount;
    lastCount = delivered;
    return `delivered=${delivered} (${r}/s)`;
  });
  for (let i = 0; i < n; i++) for (let k = 0; k < o.inflight; k++) send(i);
  await sleep(o.warmup * 1000);
  const d0 = delivered;
  const win = new Window(o.pids);
  await sleep(o.duration * 1000);
  const w = win.end();
  const count = delivered - d0;
  running = false;
  // Let what is in flight arrive (bounded), then close.
  const totalSent = () => sent.reduce((a, b) => a + b, 0);
  for (let t = 0; t < 50 && delivered < totalSent(); t++) await sleep(100);
  stop();
  const lost = totalSent() - delivered;
  const errorMessages = conns.reduce((a, c) => a + c.errorMessages, 0);
  await closeAll(conns);
  return {
    server: o.server,
    scenario: 'throughput',
    startedAt,
    params: { ...baseParams(o), inflight: o.inflight, duration: o.duration, warmup: o.warmup },
    metrics: {
      msgs_per_s: round(count / w.seconds, 0),
      delivered: count,
      server_cpu_us_per_msg: round(w.serverCpuUs === null || !count ? null : w.serverCpuUs / count),
      server_cpu_pct: round(w.serverCpuUs === null ? null : (w.serverCpuUs / (w.seconds * 1e6)) * 100),
      client_cpu_us_per_msg: round(count ? w.clientCpuUs / count : null),
      client_cpu_pct: round((w.clientCpuUs / (w.seconds * 1e6)) * 100),
      undelivered: lost,
      out_of_order: outOfOrder,
      error_messages: errorMessages,
    },
    notes: errors,
  };
}

// ---------------------------------------------------------------------------

async function latency(o: BenchOptions): Promise<ScenarioResult> {
  if (o.users < 2) throw new Error('latency needs at least 2 users');
  const errors: string[] = [];
  const startedAt = new Date().toISOString();
  await ensureAccounts(o, o.users, errors);
  const { conns } = await loginAll(o, o.users, o.tls, errors);
  const n = o.users;
  const targets = conns.map((_, i) => `${userName(o, (i + 1) % n)}@${o.domain}`);
  const samples: number[] = [];
  let windowStart = Infinity;
  let windowEnd = Infinity;
  let delivered = 0;
  let windowSent = 0;
  let windowDelivered = 0;
  let sent = 0;
  let rr = 0;
  conns.forEach((conn) => {
    conn.receiveMessages((body) => {
      const now = performance.now();
      delivered++;
      const ts = Number(body.slice(body.indexOf(' ') + 1));
      if (ts >= windowStart && ts < windowEnd) {
        windowDelivered++;
        samples.push(now - ts);
      }
    });
  });
  let lastCount = 0;
  const stop = progress(o, 'latency', () => {
    const r = delivered - lastCount;
    lastCount = delivered;
    return `sent=${sent} delivered=${delivered} (${r}/s)`;
  });
  const t0 = performance.now();
  const sendEnd = t0 + (o.warmup + o.duration) * 1000;
  windowStart = t0 + o.warmup * 1000;
  windowEnd = sendEnd;
  let win: Window | null = null;
  const w = await new Promise<ReturnType<Window['end']>>((resolve) => {
    const timer = setInterval(() => {
      const now = performance.now();
      if (now >= sendEnd) {
        clearInterval(timer);
        resolve((win ?? new Window(o.pids)).end());
        return;
      }
      if (win === null && now >= windowStart) win = new Window(o.pids);
      const due = Math.floor((o.rate * (now - t0)) / 1000);
      const inWindow = now >= windowStart;
      while (sent < due) {
        sent++;
        const i = rr;
        rr = rr + 1 === n ? 0 : rr + 1;
        const ts = performance.now();
        conns[i]!.send(
          `<message to='${targets[i]}' type='chat' id='l${sent}'><body>${sent} ${ts.toFixed(3)}</body></message>`,
        );
        if (inWindow) windowSent++;
      }
    }, 1);
  });
  // The measured window is [warmup, warmup + duration) of send times; CPU is
  // read over the same span (deliveries still in flight at its end excluded).
  for (let t = 0; t < 50 && windowDelivered < windowSent; t++) await sleep(100);
  stop();
  const errorMessages = conns.reduce((a, c) => a + c.errorMessages, 0);
  await closeAll(conns);
  const sorted = Float64Array.from(samples).sort();
  return {
    server: o.server,
    scenario: 'latency',
    startedAt,
    params: { ...baseParams(o), rate: o.rate, duration: o.duration, warmup: o.warmup },
    metrics: {
      offered_per_s: o.rate,
      delivered_per_s: round(windowDelivered / o.duration, 0),
      p50_ms: round(percentile(sorted, 50), 2),
      p90_ms: round(percentile(sorted, 90), 2),
      p99_ms: round(percentile(sorted, 99), 2),
      max_ms: round(sorted.length ? sorted[sorted.length - 1]! : null, 2),
      undelivered: windowSent - windowDelivered,
      error_messages: errorMessages,
      server_cpu_us_per_msg: round(w.serverCpuUs === null || !windowSent ? null : w.serverCpuUs / windowSent),
      server_cpu_pct: round(w.serverCpuUs === null ? null : (w.serverCpuUs / (w.seconds * 1e6)) * 100),
      client_cpu_us_per_msg: round(windowSent ? w.clientCpuUs / windowSent : null),
      client_cpu_pct: round((w.clientCpuUs / (w.seconds * 1e6)) * 100),
    },
    notes: errors,
  };
}

// ---------------------------------------------------------------------------

async function idleMemory(o: BenchOptions): Promise<ScenarioResult> {
  const errors: string[] = [];
  const startedAt = new Date().toISOString();
  if (o.pids.length === 0) throw new Error('idle-memory needs --pid');
  await ensureAccounts(o, o.users, errors);
  await sleep(2000);
  const before = totalRssKiB(o.pids);
  // Idle: server CPU below 2% of a core over one second, at most 20 s of waiting.
  const waitIdle = async () => {
    let waited = 1;
    for (; waited <= 20; waited++) {
      const c0 = totalCpuMicros(o.pids);
      await sleep(1000);
      if (totalCpuMicros(o.pids) - c0 < 20_000) break;
    }
    return waited;
  };
  // Two halves: a garbage-collected server may first reuse heap it freed
  // after the registrations, so the second half gives the marginal cost.
  const half = Math.floor(o.users / 2);
  const first = await loginAll(o, half, o.tls, errors);
  const waited1 = await waitIdle();
  const mid = totalRssKiB(o.pids);
  let second: Awaited<ReturnType<typeof loginAll>>;
  try {
    second = await loginAll(o, o.users, o.tls, errors, half);
  } catch (err) {
    await closeAll(first.conns);
    throw err;
  }
  const waited2 = await waitIdle();
  const after = totalRssKiB(o.pids);
  await closeAll(first.conns);
  await closeAll(second.conns);
  const login = { perSecond: o.users / (first.seconds + second.seconds) };
  const waited = waited1 + waited2;
  return {
    server: o.server,
    scenario: 'idle-memory',
    startedAt,
    params: { ...baseParams(o), parallel: o.parallel, sourceAddrs: o.sourceAddrs },
    metrics: {
      sessions: o.users,
      rss_before_kib: before,
      rss_after_kib: after,
      kib_per_session: round((after - before) / o.users, 2),
      rss_half_kib: mid,
      kib_per_session_2nd_half: round(o.users - half > 0 ? (after - mid) / (o.users - half) : null, 2),
      logins_per_s: round(login.perSecond, 0),
      idle_wait_s: waited,
    },
    notes: errors,
  };
}

// ---------------------------------------------------------------------------

/** A growable buffer of samples (latencies in ms); millions of them cost little. */
class Samples {
  private a = new Float64Array(1 << 16);
  n = 0;
  push(x: number): void {
    if (this.n === this.a.length) {
      const b = new Float64Array(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.n++] = x;
  }
  sorted(): Float64Array {
    return this.a.slice(0, this.n).sort();
  }
}

/**
 * MUC fan-out: `occupants` sessions in one room, the first `senders` of them
 * sending groupchat messages that every occupant (the sender included)
 * receives. Closed loop: each sender keeps `inflight` messages outstanding and
 * sends the next one when the room echoes one of its own back. Open loop
 * (`mucRate` > 0): that many messages per second, round-robin over the senders.
 * The body is `<sender> <seq> <send time>`; a delivery is one message received
 * by one occupant.
 */
async function mucFanout(o: BenchOptions): Promise<ScenarioResult> {
  const occupants = o.occupants ?? 500;
  const senders = Math.min(o.senders ?? 10, occupants);
  if (occupants < 2 || senders < 1) throw new Error('muc-fanout needs at least 2 occupants and 1 sender');
  const mucDomain = o.mucDomain ?? `conference.${o.domain}`;
  const room = o.room ?? `bench-fanout-${Date.now().toString(36)}`;
  const roomJid = `${room}@${mucDomain}`;
  const rate = o.mucRate ?? 0;
  const joinParallel = Math.max(1, o.joinParallel ?? 16);
  const errors: string[] = [];
  const notes: string[] = [`room ${roomJid}`];
  const startedAt = new Date().toISOString();
  const reg = await ensureAccounts(o, occupants, errors);
  if (reg.failed > 0) throw new Error(`${reg.failed} registrations failed: ${errors.join(' | ')}`);
  const { conns, seconds: loginSeconds } = await loginAll(o, occupants, o.tls, errors);
  const rss = () => (o.pids.length ? totalRssKiB(o.pids) : null);
  const rssBeforeJoin = rss();

  // Deliveries. Latency samples are taken for messages sent in the measured
  // window (by their send time), like the latency scenario.
  let delivered = 0;
  let foreign = 0;
  let winStart = Infinity;
  let winEnd = Infinity;
  const samples = new Samples();
  const sent = new Uint32Array(senders);
  let totalSent = 0;
  let windowSent = 0;
  let closedLoop = false;
  let joinedCount = 0;
  // Deliveries owed (sent × occupants − delivered) at a send, at most, in
  // the window: how far the server's fan-out queues ran behind the senders.
  let maxBacklog = 0;
  const send = (s: number) => {
    const seq = ++sent[s]!;
    totalSent++;
    const ts = performance.now();
    if (ts >= winStart && ts < winEnd) {
      windowSent++;
      const backlog = totalSent * joinedCount - delivered;
      if (backlog > maxBacklog) maxBacklog = backlog;
    }
    conns[s]!.send(
      `<message to='${roomJid}' type='groupchat' id='g${s}-${seq}'><body>${s} ${seq} ${ts.toFixed(3)}</body></message>`,
    );
  };
  const receiver = (j: number) => (body: string) => {
    const now = performance.now();
    const sp1 = body.indexOf(' ');
    const sp2 = sp1 < 0 ? -1 : body.indexOf(' ', sp1 + 1);
    if (sp2 < 0) {
      foreign++;
      return;
    }
    delivered++;
    const ts = +body.slice(sp2 + 1);
    if (ts >= winStart && ts < winEnd) samples.push(now - ts);
    // The room's echo of a sender's own message releases its next one.
    if (closedLoop && j < senders && +body.slice(0, sp1) === j) send(j);
  };

  // The first occupant creates the room; XEP-0045 10.1.2 instant room: the
  // owner accepts the default configuration by submitting an empty form.
  // History on join is turned off by every joiner (maxstanzas='0').
  const history = "<history maxstanzas='0'/>";
  const joined = new Uint8Array(occupants);
  let joinFailures = 0;
  const joinWin = new Window(o.pids);
  try {
    const first = await conns[0]!.joinRoom(`${roomJid}/${userName(o, 0)}`, history);
    if (first.created) {
      try {
        await conns[0]!.iq(
          'cfg1',
          `<iq type='set' id='cfg1' to='${roomJid}'><query xmlns='http://jabber.org/protocol/muc#owner'>` +
            `<x xmlns='jabber:x:data' type='submit'/></query></iq>`,
        );
        notes.push('room created by occupant 0 (instant room: empty muc#owner form)');
      } catch (err) {
        notes.push(`instant-room configuration failed: ${err instanceof Error ? err.message : String(err)}`);
      }
    } else {
      notes.push('room already existed (no status 201 on the first join)');
    }
  } catch (err) {
    await closeAll(conns);
    throw err instanceof XmppError ? new Error(`creating ${roomJid}: ${err.message}`) : err;
  }
  joined[0] = 1;
  joinedCount = 1;
  conns[0]!.receiveMessages(receiver(0));
  const joinErrors: string[] = [];
  const stopJoin = progress(
    o,
    'muc join',
    () => `joined=${joinedCount} of ${occupants} failed=${joinFailures}`,
  );
  joinFailures = await pool(
    occupants - 1,
    joinParallel,
    async (k) => {
      const i = k + 1;
      await conns[i]!.joinRoom(`${roomJid}/${userName(o, i)}`, history);
      joined[i] = 1;
      joinedCount++;
      conns[i]!.receiveMessages(receiver(i));
    },
    joinErrors,
  );
  stopJoin();
  const jw = joinWin.end();
  const rssAfterJoin = rss();
  if (joinFailures > 0) {
    notes.push(
      `only ${joinedCount} of ${occupants} occupants joined; first refusals: ${joinErrors.join(' | ')}`,
    );
    if (!o.quiet) process.stderr.write(`[${o.server} muc join] ${notes[notes.length - 1]}\n`);
  }
  const active = Array.from({ length: senders }, (_, s) => s).filter((s) => joined[s]);
  if (joinedCount < 2 || active.length === 0) {
    await closeAll(conns);
    throw new Error(`${joinedCount} of ${occupants} occupants joined: ${joinErrors.join(' | ')}`);
  }

  // Traffic.
  let lastCount = 0;
  const stop = progress(o, 'muc', () => {
    const r = delivered - lastCount;
    lastCount = delivered;
    return `sent=${totalSent} delivered=${delivered} (${r}/s)`;
  });
  let timer: NodeJS.Timeout | null = null;
  if (rate > 0) {
    const t0 = performance.now();
    let due = 0;
    let rr = 0;
    timer = setInterval(() => {
      const target = Math.floor((rate * (performance.now() - t0)) / 1000);
      for (; due < target; due++) {
        send(active[rr]!);
        rr = rr + 1 === active.length ? 0 : rr + 1;
      }
    }, 1);
  } else {
    closedLoop = true;
    for (const s of active) for (let k = 0; k < o.inflight; k++) send(s);
  }
  await sleep(o.warmup * 1000);
  const d0 = delivered;
  const elu0 = performance.eventLoopUtilization();
  const win = new Window(o.pids);
  winStart = performance.now();
  await sleep(o.duration * 1000);
  const w = win.end();
  winEnd = performance.now();
  const elu = performance.eventLoopUtilization(elu0);
  const count = delivered - d0;
  const rssEnd = rss();
  closedLoop = false;
  if (timer) clearInterval(timer);
  // Let what is in flight arrive (bounded), then leave.
  const expected = () => totalSent * joinedCount;
  for (let t = 0; t < 100 && delivered < expected(); t++) await sleep(100);
  stop();
  const undelivered = expected() - delivered;
  const errorMessages = conns.reduce((a, c) => a + c.errorMessages, 0);
  await closeAll(conns);
  if (foreign > 0) notes.push(`${foreign} messages with a body not sent by the bench`);
  const sorted = samples.sorted();
  const perDelivery = (x: number | null) => (x === null || !count ? null : x / count);
  return {
    server: o.server,
    scenario: 'muc-fanout',
    startedAt,
    params: {
      ...baseParams(o),
      users: occupants,
      occupants,
      senders: active.length,
      inflight: rate > 0 ? 0 : o.inflight,
      rate,
      muc_domain: mucDomain,
      room,
      duration: o.duration,
      warmup: o.warmup,
      join_parallel: joinParallel,
    },
    metrics: {
      occupants: joinedCount,
      join_failures: joinFailures,
      senders: active.length,
      login_s: round(loginSeconds, 1),
      join_s: round(jw.seconds, 1),
      server_cpu_ms_join: round(jw.serverCpuUs === null ? null : jw.serverCpuUs / 1000, 0),
      msgs_per_s: round(count / joinedCount / w.seconds, 0),
      deliveries_per_s: round(count / w.seconds, 0),
      delivered: count,
      p50_ms: round(percentile(sorted, 50), 2),
      p90_ms: round(percentile(sorted, 90), 2),
      p99_ms: round(percentile(sorted, 99), 2),
      max_ms: round(sorted.length ? sorted[sorted.length - 1]! : null, 2),
      latency_samples: sorted.length,
      server_cpu_us_per_delivery: round(perDelivery(w.serverCpuUs), 2),
      server_cpu_pct: round(w.serverCpuUs === null ? null : (w.serverCpuUs / (w.seconds * 1e6)) * 100),
      server_rss_kib: rssEnd,
      rss_before_join_kib: rssBeforeJoin,
      rss_after_join_kib: rssAfterJoin,
      client_cpu_us_per_delivery: round(perDelivery(w.clientCpuUs), 2),
      client_cpu_pct: round((w.clientCpuUs / (w.seconds * 1e6)) * 100),
      client_elu_pct: round(elu.utilization * 100),
      window_sent: windowSent,
      max_backlog_deliveries: maxBacklog,
      undelivered,
      error_messages: errorMessages,
    },
    notes: [...notes, ...errors],
  };
}

export async function runScenario(name: ScenarioName, o: BenchOptions): Promise<ScenarioResult> {
  switch (name) {
    case 'register-login':
      return registerLogin(o);
    case 'throughput':
      return throughput(o);
    case 'latency':
      return latency(o);
    case 'idle-memory':
      return idleMemory(o);
    case 'muc-fanout':
      return mucFanout(o);
  }
}
