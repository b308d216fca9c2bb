// The SQLite driver's writer: a worker thread with its own connection to the
// database file, so that committing (inserts, index upkeep, WAL writes) runs
// beside the event loop instead of in it. The driver sends one batch at a
// time; each is applied in one transaction and acknowledged only after it has
// committed. When no batch has come for a while, the full-text index is
// caught up in small transactions; a text query asks for that explicitly.
//
// Protocol: plain objects through postMessage, see WriterRequest and WriterReply.

import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { BatchApplier, failure, type Outcome, type WriteOp } from './sqlite-ops.ts';

export interface WriterData {
  path: string;
  /** Idle time (ms) after which the full-text index is caught up in the background. */
  ftsIdleMs: number;
}

// A thread serves one database at a time, from 'open' to 'close'; the driver
// may then hand it to the next driver opened in this process (tests open
// many), which spares starting a thread each time.
export type WriterRequest =
  | ({ t: 'open' } & WriterData)
  | { t: 'batch'; n: number; ops: WriteOp[]; syncText?: boolean }
  | { t: 'close' };

export type WriterReply =
  | { t: 'opened' }
  | { t: 'closed' }
  | {
      t: 'done';
      n: number;
      outcomes: Outcome[];
      /** With syncText: how catching up the full-text index went. */
      text?: Outcome;
      commits: number;
      writes: number;
    }
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

if (parentPort && (workerData as { sqliteWriter?: boolean } | undefined)?.sqliteWriter === true) {
  const port = parentPort;
  let db: Database.Database | undefined;
  let applier: BatchApplier | undefined;
  let ftsIdleMs = 1000;
  let idle: NodeJS.Timeout | undefined;

  const indexWhenIdle = () => {
    idle = undefined;
    let more = false;
    try {
      more = applier?.indexText() ?? false;
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
        ftsIdleMs = msg.ftsIdleMs;
        port.postMessage({ t: 'opened' } satisfies WriterReply);
      } catch (err) {
        db = applier = undefined;
        port.postMessage({ t: 'failed', message: String(err) } satisfies WriterReply);
      }
      return;
    }
    if (msg.t === 'close') {
      try {
        db?.close();
      } finally {
        db = applier = undefined;
        port.postMessage({ t: 'closed' } satisfies WriterReply);
      }
      return;
    }
    if (!applier) {
      port.postMessage({ t: 'failed', message: 'no database open' } satisfies WriterReply);
      return;
    }
    const reply: WriterReply = {
      t: 'done',
      n: msg.n,
      outcomes: applier.apply(msg.ops),
      commits: applier.commits,
      writes: applier.writes,
    };
    if (msg.syncText) {
      try {
        applier.syncText();
        reply.text = { ok: true, value: null };
      } catch (err) {
        reply.text = failure(err);
      }
    }
    port.postMessage(reply);
    idle = setTimeout(indexWhenIdle, ftsIdleMs);
  });
}
