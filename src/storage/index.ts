// Entry point of the storage layer: picks a driver from configuration and
// re-exports the API so that the rest of the server imports from one place.

import { MemoryDriver } from './memory.ts';
import { MongoDriver } from './mongodb.ts';
import { SqliteDriver } from './sqlite.ts';
import type { StorageDriver } from './types.ts';

export * from './types.ts';
export { MemoryDriver } from './memory.ts';
export { SqliteDriver, type SqliteOptions } from './sqlite.ts';
export { MongoDriver, type MongoOptions } from './mongodb.ts';
export { Accounts, AccountExistsError, AccountNotFoundError, type AccountRecord } from './accounts.ts';

export interface StorageConfig {
  driver: 'sqlite' | 'memory' | 'mongodb';
  /** Database file for the sqlite driver. */
  path?: string;
  /** sqlite only: how long writes may wait to be grouped into one transaction. */
  groupCommitMs?: number;
  /** sqlite only: the writer thread's nice value, 0-19 (SqliteOptions.writerNice). */
  writer_nice?: number;
  /** mongodb only: the connection string (mongodb:// or mongodb+srv://). */
  url?: string | undefined;
  /** mongodb only: the database; default is the one named in `url`, else 'chorus'. */
  database?: string | undefined;
}

/**
 * Opens the configured driver. Synchronous for every driver: the mongodb one
 * connects on its first operation (MongoClient connects lazily), so a server
 * that cannot be reached shows up as failing storage calls, not here.
 */
export function openStorage(config: StorageConfig, log?: (message: string) => void): StorageDriver {
  switch (config.driver) {
    case 'memory':
      return new MemoryDriver();
    case 'sqlite':
      if (!config.path) throw new Error('storage driver "sqlite" needs a path');
      return SqliteDriver.open(config.path, {
        ...(config.groupCommitMs !== undefined ? { groupCommitMs: config.groupCommitMs } : {}),
        ...(config.writer_nice !== undefined ? { writerNice: config.writer_nice } : {}),
        // Schema migrations report their progress here.
        ...(log ? { log } : {}),
      });
    case 'mongodb':
      if (!config.url) throw new Error('storage driver "mongodb" needs a url');
      return MongoDriver.open(config.url, config.database !== undefined ? { database: config.database } : {});
    default: {
      // Configuration comes from YAML, so guard against values the type rules out.
      const driver: string = (config as { driver: string }).driver;
      throw new Error(`unknown storage driver "${driver}"`);
    }
  }
}
