// `chorus start --cluster N`: N worker processes on this machine, each a
// cluster node, sharing the listening ports (node:cluster hands accepted
// connections to the workers in turn) and, through Redis, their sessions.
// The supervisor itself serves no clients: it prepares what the workers
// would otherwise race for (the database schema), starts them, restarts one
// that dies, and passes signals on.
import cluster, { type Worker } from 'node:cluster';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { ChorusConfig } from '../config/index.ts';
import { openStorage } from '../storage/index.ts';

/** Restarting a worker that keeps dying at once would spin; wait this long. */
const RESTART_DELAY_MS = 1000;

export function isClusterWorker(): boolean {
  return cluster.isWorker;
}

/** The node id of worker `index` (1-based). */
export function workerNodeId(config: ChorusConfig, index: number): string {
  return `${config.cluster.node_id ?? hostname()}-${index}`;
}

/**
 * Runs the supervisor until SIGTERM or SIGINT; resolves to the exit code.
 * The workers re-run the same command line and find themselves workers.
 */
export async function superviseWorkers(config: ChorusConfig, workers: number, log: Logger): Promise<number> {
  // Schema migrations run once, here, before any worker opens the database.
  const storage = openStorage(config.storage, (message) => log.info(message));
  await storage.close();

  const byIndex = new Map<number, Worker>();
  let stopping = false;

  const fork = (index: number) => {
    const nodeId = workerNodeId(config, index);
    const worker = cluster.fork({ CHORUS_CLUSTER__NODE_ID: nodeId });
    byIndex.set(index, worker);
    log.info({ node: nodeId, pid: worker.process.pid }, `worker ${nodeId} started`);
    worker.once('exit', (code, signal) => {
      if (byIndex.get(index) === worker) byIndex.delete(index);
      if (stopping) return;
      log.error({ node: nodeId, code, signal }, `worker ${nodeId} stopped; restarting it`);
      setTimeout(() => {
        if (!stopping) fork(index);
      }, RESTART_DELAY_MS).unref();
    });
  };
  for (let i = 1; i <= workers; i++) fork(i);
  log.info(
    { workers, redis: config.cluster.redis_url ? 'configured' : 'missing' },
    `started ${workers} workers`,
  );

  return new Promise<number>((resolve) => {
    const shutdown = (signal: NodeJS.Signals) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'stopping the workers');
      const exits = [...byIndex.values()].map(
        (w) =>
          new Promise<void>((done) => {
            if (w.isDead()) return done();
            w.once('exit', () => done());
            w.process.kill('SIGTERM');
          }),
      );
      void Promise.all(exits).then(() => resolve(0));
    };
    process.once('SIGTERM', () => shutdown('SIGTERM'));
    process.once('SIGINT', () => shutdown('SIGINT'));
    process.on('SIGHUP', () => {
      log.info('SIGHUP: passing it to the workers');
      for (const w of byIndex.values()) w.process.kill('SIGHUP');
    });
  });
}
