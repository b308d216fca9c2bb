// Entry point of the storage layer: picks a driver from configuration and
// re-exports the API so that the rest of the server imports from one place.

import { MemoryDriver } from './memory.ts';
import { SqliteDriver } from './sqlite.ts';
import type { StorageDriver } from './types.ts';

export * from './types.ts';
export { MemoryDriver } from './memory.ts';
export { SqliteDriver, type SqliteOptions } from './sqlite.ts';
export { Accounts, AccountExistsError, AccountNotFoundError, type AccountRecord } from './accounts.ts';

export interface StorageConfig {
  driver: 'sqlite' | 'memory' | 'mongodb';
  /** Database file for the sqlite driver. */
  path?: string;
  /** sqlite only: how long writes may wait to be grouped into one transaction. */
  groupCommitMs?: number;
}

export function openStorage(config: StorageConfig): StorageDriver {
  switch (config.driver) {
    case 'memory':
      return new MemoryDriver();
    case 'sqlite':
      if (!config.path) throw new Error('storage driver "sqlite" needs a path');
      return SqliteDriver.open(
        config.path,
        config.groupCommitMs !== undefined ? { groupCommitMs: config.groupCommitMs } : {},
      );
    case 'mongodb':
      throw new Error('storage driver "mongodb" is not available yet');
    default: {
      // Configuration comes from YAML, so guard against values the type rules out.
      const driver: string = (config as { driver: string }).driver;
      throw new Error(`unknown storage driver "${driver}"`);
    }
  }
}
