// The SQLite driver's writer: a worker thread with its own connection to the
// database file, so that committing (inserts, index upkeep, WAL writes) runs
// beside the event loop instead of in it. The driver sends its writes as soon
// as it has them, a batch per turn of its event loop, without waiting for
// earlier ones; the batches that arrived while the thread was busy are applied
// together in one transaction and acknowledged, in order, only after it has
// committed. (Holding writes on the main thread until the previous commit
// ended kept them alive long enough to be promoted to V8's old generation,
// which made the garbage collector a tenth of the event loop's time.)
//
// Under sustained load the thread also spaces its commits: after a commit of
// BUSY_COMMIT_WRITES writes or more, batches that nobody waits for ("behind":
// archived messages, whose senders have gone on) are held until
// `busyCommitMs` after that commit began. A commit rewrites one page of each
// index for every archive it touches, whatever the number of rows it adds
// there, so fewer, larger commits cost less per message: in the throughput
// benchmark (200 users) the thread's CPU per archived message fell from about
// 40 to about 31 µs at 100 ms. Anything else (a write its caller awaits, a
// read waiting for a batch: the driver sends 'flush') ends the wait at once,
// so the spacing never holds a client, and light load (small commits) is
// never spaced at all.
//
// When no batch has come for a while, the full-text index is caught up in
// small transactions; a text query asks for that explicitly.
//
// Protocol: plain objects through postMessage, see WriterRequest and WriterReply.

import { setPriority } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { applyBatches, BatchApplier, type BatchResult, type WriteBatch } from './sqlite-ops.ts';

export interface WriterData {
  path: string;
  /** Idle time (ms) after which the full-text index is caught up in the background. */
  ftsIdleMs: number;
  /** Under load, the least time (ms) from one commit to the next of write-behind batches; 0: none. */
  busyCommitMs: number;
  /** The thread's nice value (0-19): see lowerThreadPriority. */
  nice: number;
}

/**
 * Gives the calling thread a lower CPU priority (a higher nice value), so
 * that where cores are short the thread that routes messages goes first and
 * the writer catches up in larger transactions. Only on Linux, where a nice
 * value belongs to a thread: elsewhere setpriority() would lower the whole
 * process. Raising it again needs privileges, so a thread reused at a lower
 * priority stays there: the error is the caller's to report.
 */
function lowerThreadPriority(nice: number): void {
  if (process.platform === 'linux') setPriority(nice);
}

// A thread serves one database at a time, from 'open' to 'close'; the driver
// may then hand it to the next driver opened in this process (tests open
// many), which spares starting a thread each time.
export type WriterRequest =
  | ({ t: 'open' } & WriterData)
  | ({ t: 'batch'; behind?: true } & WriteBatch)
  | { t: 'flush' }
  | { t: 'close' };

export type WriterReply =
  | { t: 'opened'; warning?: string }
  | { t: 'closed' }
  | { t: 'done'; batches: BatchResult[]; commits: number; writes: number }
  | { t: 'failed'; message: string };

/** Opens a writing connection with the settings the driver relies on. */
export function openWriterConnection(path: string): Database.Database {
  const db = new Database(path);
  // WAL is a property of the file (set by the driver on open); these are per connection.
  db.pragma('synchronous = NORMAL');
  // Index pages of many archives are touched per batch: keep more of them (64 MiB).
  db.pragma('cache_size = -65536');
  // Checkpoints (copying the WAL back into the file, with an fsync) run at
  // commit time in the writer: at SQLite's default of every 1,000 pages a
  // large batch set one off nearly every commit. 10,000 pages (40 MB of WAL)
  // spreads them out and lets repeated writes of a page be copied once.
  db.pragma('wal_autocheckpoint = 10000');
  return db;
}

/** A commit this large (in writes) means load: the next write-behind batches may wait (busyCommitMs). */
export const BUSY_COMMIT_WRITES = 64;

if (parentPort && (workerData as { sqliteWriter?: boolean } | undefined)?.sqliteWriter === true) {
  const port = parentPort;
  let db: Database.Database | undefined;
  let applier: BatchApplier | undefined;
  let ftsIdleMs = 1000;
  let busyCommitMs = 0;
  let idle: NodeJS.Timeout | undefined;
  /** Batches received since the last transaction, applied together in the next one. */
  let arrived: WriteBatch[] = [];
  /** Some batch in `arrived` is not write-behind: it goes at the end of this turn. */
  let urgent = false;
  /** The next transaction: at the end of this turn, or later while commits are spaced. */
  let applying: { now: NodeJS.Immediate } | { later: NodeJS.Timeout } | undefined;
  /** When the last transaction began (performance.now()) and how many writes it held. */
  let lastCommitAt = 0;
  let lastCommitWrites = 0;

  const cancelApplying = () => {
    if (applying === undefined) return;
    if ('now' in applying) clearImmediate(applying.now);
    else clearTimeout(applying.later);
    applying = undefined;
  };

  /** Schedules the transaction for what has arrived, if not already due sooner. */
  const scheduleApplying = () => {
    if (applying !== undefined && 'now' in applying) return;
    const wait =
      urgent || lastCommitWrites < BUSY_COMMIT_WRITES ? 0 : lastCommitAt + busyCommitMs - performance.now();
    if (wait <= 0) {
      cancelApplying();
      // Every message already queued on the port is delivered before the
      // immediate runs, so a busy spell's batches share one commit.
      applying = { now: setImmediate(applyArrived) };
    } else {
      applying ??= { later: setTimeout(applyArrived, wait) };
    }
  };

  const applyArrived = () => {
    applying = undefined;
    const batches = arrived;
    arrived = [];
    urgent = false;
    if (batches.length === 0) return;
    if (!applier) {
      port.postMessage({ t: 'failed', message: 'no database open' } satisfies WriterReply);
      return;
    }
    const writesBefore = applier.writes;
    lastCommitAt = performance.now();
    const results = applyBatches(applier, batches);
    lastCommitWrites = applier.writes - writesBefore;
    port.postMessage({
      t: 'done',
      batches: results,
      commits: applier.commits,
      writes: applier.writes,
    } satisfies WriterReply);
    idle = setTimeout(indexWhenIdle, ftsIdleMs);
  };

  // Idle work, a small transaction at a time: first the full-text index,
  // then, after deletes, the archive's dictionary of JIDs.
  const indexWhenIdle = () => {
    idle = undefined;
    let more = false;
    try {
      more = applier?.indexText() ?? false;
      if (!more && applier?.pruneWanted) more = applier.pruneJidsStep();
    } catch {
      // Busy (another process writing) or the like: try again at the next idle spell.
    }
    if (more) idle = setTimeout(indexWhenIdle, 0);
  };

  port.on('message', (msg: WriterRequest) => {
    if (idle !== undefined) clearTimeout(idle);
    idle = undefined;
    if (msg.t === 'open') {
      try {
        db = openWriterConnection(msg.path);
        applier = new BatchApplier(db);
        let warning: string | undefined;
        try {
          lowerThreadPriority(msg.nice);
        } catch (err) {
          warning = `could not set the writer thread's nice value to ${msg.nice}: ${err instanceof Error ? err.message : String(err)}`;
        }
        ftsIdleMs = msg.ftsIdleMs;
        busyCommitMs = msg.busyCommitMs;
        lastCommitWrites = 0;
        port.postMessage((warning ? { t: 'opened', warning } : { t: 'opened' }) satisfies WriterReply);
      } catch (err) {
        db = applier = undefined;
        port.postMessage({ t: 'failed', message: String(err) } satisfies WriterReply);
      }
      return;
    }
    if (msg.t === 'close') {
      // What arrived before the close is still written.
      cancelApplying();
      applyArrived();
      if (idle !== undefined) clearTimeout(idle);
      idle = undefined;
      // A process that deleted and closes at once (`chorus archive purge`) prunes before it goes.
      applier?.pruneJidsIfWanted();
      try {
        db?.close();
      } finally {
        db = applier = undefined;
        port.postMessage({ t: 'closed' } satisfies WriterReply);
      }
      return;
    }
    if (msg.t === 'flush') {
      // A read waits for what has arrived: no more spacing for it.
      if (arrived.length > 0) {
        urgent = true;
        scheduleApplying();
      }
      return;
    }
    arrived.push(msg);
    if (msg.behind !== true) urgent = true;
    scheduleApplying();
  });
}
