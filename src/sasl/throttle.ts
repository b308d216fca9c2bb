/**
 * Per-address throttling of failed attempts (SASL authentication, and in-band registration which
 * reuses this class with "attempt" in place of "failure").
 *
 * Policy, for failures counted within a window that restarts whenever windowSeconds pass without
 * a new failure:
 * - up to `delayAfter` failures: no delay;
 * - failure number delayAfter + k (k >= 1): the next attempt should be delayed by
 *   delayMs * 2^(k-1), capped at maxDelayMs;
 * - at `banAfter` failures: attempts are refused for banSeconds, after which the count starts over.
 *
 * Memory is bounded: entries are kept in a Map ordered by last update, expired ones are dropped
 * from the front as they age out, and past `maxEntries` the least recently updated entry is evicted.
 */

export interface AuthThrottleOptions {
  /** Failures tolerated before attempts are slowed down. */
  delayAfter: number;
  /** Delay after the first failure beyond delayAfter; doubles with each further failure. */
  delayMs: number;
  maxDelayMs: number;
  /** Failures after which the address is refused outright. */
  banAfter: number;
  banSeconds: number;
  /** Failures older than this (counted from the most recent one) are forgotten. */
  windowSeconds: number;
  /** Cap on tracked addresses; default 100 000. */
  maxEntries?: number;
}

export interface ThrottleDecision {
  allowed: boolean;
  delayMs: number;
  /** Set when refused: seconds until the ban lifts (for a <retry-after/> or log message). */
  retryAfterSeconds?: number;
}

interface Entry {
  failures: number;
  lastFailureAt: number;
  bannedUntil: number;
  /** When the entry can be forgotten: end of the window or of the ban, whichever is later. */
  expiresAt: number;
}

const DEFAULT_MAX_ENTRIES = 100_000;

export class AuthThrottle {
  private readonly entries = new Map<string, Entry>();
  private readonly opts: Required<AuthThrottleOptions>;

  constructor(
    opts: AuthThrottleOptions,
    private readonly now: () => number = Date.now,
  ) {
    for (const key of [
      'delayAfter',
      'delayMs',
      'maxDelayMs',
      'banAfter',
      'banSeconds',
      'windowSeconds',
    ] as const) {
      const value = opts[key];
      if (!Number.isFinite(value) || value < 0)
        throw new RangeError(`AuthThrottle: ${key} must be a non-negative number`);
    }
    const maxEntries = opts.maxEntries ?? DEFAULT_MAX_ENTRIES;
    if (!Number.isInteger(maxEntries) || maxEntries < 1)
      throw new RangeError('AuthThrottle: maxEntries must be >= 1');
    this.opts = { ...opts, maxEntries };
  }

  /** Number of addresses currently tracked (for metrics and tests). */
  get size(): number {
    return this.entries.size;
  }

  recordFailure(address: string): void {
    const now = this.now();
    this.sweep(now);
    const entry = this.live(address, now) ?? {
      failures: 0,
      lastFailureAt: now,
      bannedUntil: 0,
      expiresAt: now,
    };
    entry.failures += 1;
    entry.lastFailureAt = now;
    if (entry.failures >= this.opts.banAfter && entry.bannedUntil <= now) {
      entry.bannedUntil = now + this.opts.banSeconds * 1000;
    }
    entry.expiresAt = Math.max(now + this.opts.windowSeconds * 1000, entry.bannedUntil);
    // Re-insert so Map order follows recency, which keeps sweep() and eviction cheap.
    this.entries.delete(address);
    this.entries.set(address, entry);
    while (this.entries.size > this.opts.maxEntries) {
      const oldest = this.entries.keys().next();
      if (oldest.done) break;
      this.entries.delete(oldest.value);
    }
  }

  /**
   * Clears the failure count. An active ban stays: a success from a shared address (NAT, Tor exit)
   * must not let a guesser behind the same address start over.
   */
  recordSuccess(address: string): void {
    const now = this.now();
    const entry = this.live(address, now);
    if (!entry) return;
    if (entry.bannedUntil > now) entry.failures = 0;
    else this.entries.delete(address);
  }

  check(address: string): ThrottleDecision {
    const now = this.now();
    const entry = this.live(address, now);
    if (!entry) return { allowed: true, delayMs: 0 };
    if (entry.bannedUntil > now) {
      return { allowed: false, delayMs: 0, retryAfterSeconds: Math.ceil((entry.bannedUntil - now) / 1000) };
    }
    const extra = entry.failures - this.opts.delayAfter;
    if (extra <= 0) return { allowed: true, delayMs: 0 };
    // 2^(extra-1) overflows to Infinity for absurd counts; min() still yields maxDelayMs.
    const delayMs = Math.min(this.opts.maxDelayMs, this.opts.delayMs * 2 ** (extra - 1));
    return { allowed: true, delayMs };
  }

  /** The entry for `address`, dropping it if expired or if its ban has run out. */
  private live(address: string, now: number): Entry | undefined {
    const entry = this.entries.get(address);
    if (!entry) return undefined;
    const banOver = entry.bannedUntil !== 0 && entry.bannedUntil <= now;
    if (entry.expiresAt <= now || banOver) {
      this.entries.delete(address);
      return undefined;
    }
    return entry;
  }

  /** Drops expired entries from the least recently updated end. */
  private sweep(now: number): void {
    for (const [address, entry] of this.entries) {
      if (entry.expiresAt > now) break;
      this.entries.delete(address);
    }
  }
}
