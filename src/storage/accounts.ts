// User accounts, kept in storage like any other per-user data: one record per
// user in the keyval store 'accounts' of each host. Only SCRAM verifiers are
// stored, never the password, so a leaked database does not leak passwords
// (and cannot be replayed against other servers).

import {
  burnPasswordWork,
  deriveCredentialsAsync,
  verifyPasswordAsync,
  type StoredCredentials,
} from '../sasl/credentials.ts';
import type { KeyValStore, StorageDriver } from './types.ts';
import { KeyedQueue } from '../util/keyed-queue.ts';

export interface AccountRecord {
  /** Creation time, ms since the epoch. */
  created: number;
  credentials: StoredCredentials;
}

export class AccountExistsError extends Error {
  constructor(
    readonly host: string,
    readonly username: string,
  ) {
    super(`account ${username}@${host} already exists`);
    this.name = 'AccountExistsError';
  }
}

export class AccountNotFoundError extends Error {
  constructor(
    readonly host: string,
    readonly username: string,
  ) {
    super(`account ${username}@${host} does not exist`);
    this.name = 'AccountNotFoundError';
  }
}

const STORE = 'accounts';

/**
 * Usernames are taken as given: callers pass the already-normalised
 * (nodeprepped) localpart, the same form the router and SASL use.
 */
export class Accounts {
  readonly #driver: StorageDriver;
  readonly #iterations: number;
  /**
   * Tail of the operation chain per host/username. The storage API has no
   * compare-and-set, so read-modify-write sequences (create's existence check,
   * setPassword keeping `created`) are serialised here instead; that covers
   * one process, which is where these calls come from.
   */
  readonly #queue = new KeyedQueue();

  constructor(driver: StorageDriver, iterations: number) {
    if (!Number.isInteger(iterations) || iterations < 1) {
      throw new RangeError(`iterations must be a positive integer, got ${iterations}`);
    }
    this.#driver = driver;
    this.#iterations = iterations;
  }

  #store(host: string): KeyValStore<AccountRecord> {
    return this.#driver.keyval<AccountRecord>(host, STORE);
  }

  #exclusive<R>(host: string, username: string, fn: () => Promise<R>): Promise<R> {
    return this.#queue.run(JSON.stringify([host, username]), fn);
  }

  async create(host: string, username: string, password: string): Promise<void> {
    checkName(host, username);
    // Derive before taking the lock: it is the slow part and fails on bad passwords.
    const credentials = await deriveCredentialsAsync(password, this.#iterations);
    await this.#exclusive(host, username, async () => {
      const store = this.#store(host);
      if ((await store.get(username)) !== null) throw new AccountExistsError(host, username);
      await store.set(username, { created: Date.now(), credentials });
    });
  }

  async exists(host: string, username: string): Promise<boolean> {
    return (await this.#store(host).get(username)) !== null;
  }

  async setPassword(host: string, username: string, password: string): Promise<void> {
    checkName(host, username);
    const credentials = await deriveCredentialsAsync(password, this.#iterations);
    await this.#exclusive(host, username, async () => {
      const store = this.#store(host);
      const record = await store.get(username);
      if (record === null) throw new AccountNotFoundError(host, username);
      await store.set(username, { created: record.created, credentials });
    });
  }

  /** Resolves to whether there was an account to delete. */
  async delete(host: string, username: string): Promise<boolean> {
    return this.#exclusive(host, username, async () => {
      const store = this.#store(host);
      if ((await store.get(username)) === null) return false;
      await store.set(username, null);
      return true;
    });
  }

  async getCredentials(host: string, username: string): Promise<StoredCredentials | null> {
    return (await this.#store(host).get(username))?.credentials ?? null;
  }

  /**
   * Checks a cleartext password (SASL PLAIN). An unknown account costs the
   * same hashing work as a wrong password, so timing does not reveal which
   * usernames exist.
   */
  async verify(host: string, username: string, password: string): Promise<boolean> {
    const record = await this.#store(host).get(username);
    if (record === null) {
      await burnPasswordWork('SHA-256', password, this.#iterations);
      return false;
    }
    return verifyPasswordAsync(record.credentials, password);
  }

  list(host: string): AsyncIterable<string> {
    return this.#store(host).users();
  }
}

function checkName(host: string, username: string): void {
  if (host.length === 0) throw new TypeError('host must not be empty');
  if (username.length === 0) throw new TypeError('username must not be empty');
}
