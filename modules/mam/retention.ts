// Retention: archived messages older than a configured age are deleted, by a
// background job and by `chorus archive purge`.
import type { ArchiveStore } from '../../src/storage/types.ts';

/** The archive store's name, shared by the module and `chorus archive purge`. */
export const ARCHIVE_STORE = 'archive';

const UNITS: Record<string, number> = {
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 7 * 86_400_000,
  y: 365 * 86_400_000,
};

export const DURATION_PATTERN = /^(\d+)\s*([smhdwy])$/;

/** '30d', '1y', '12h'... in milliseconds; 'never' is null. Throws RangeError otherwise. */
export function parseRetention(text: string): number | null {
  const value = text.trim().toLowerCase();
  if (value === 'never') return null;
  const m = DURATION_PATTERN.exec(value);
  const n = m ? Number.parseInt(m[1]!, 10) : Number.NaN;
  if (!m || !(n > 0)) {
    throw new RangeError(`'${text}' is not a retention period: use e.g. 30d, 12h, 1y, or never`);
  }
  return n * UNITS[m[2]!]!;
}

export interface PurgeOptions {
  /** Only this user's archive (a local username); every user's when absent. */
  user?: string;
  /** Items deleted per transaction. */
  batchSize?: number;
  /** Told the total deleted so far after each full batch of a purge across users. */
  progress?: (deletedSoFar: number) => void;
}

/** Deletes archived items with `when` strictly before `cutoff` (ms); resolves to how many went. */
export async function purgeArchive(
  archive: ArchiveStore<unknown>,
  cutoff: number,
  opts: PurgeOptions = {},
): Promise<number> {
  if (opts.user !== undefined) return archive.delete(opts.user, { olderThan: cutoff });
  if (!archive.deleteOlderThan) {
    throw new Error('this storage driver cannot purge every archive at once; give a user');
  }
  return archive.deleteOlderThan(cutoff, opts.batchSize ?? 1000, opts.progress);
}
