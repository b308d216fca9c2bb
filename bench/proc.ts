// Readings of server processes from /proc: CPU time (utime + stime) and RSS.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

let clkTck: number | null = null;

/** Clock ticks per second, from `getconf CLK_TCK` (read once). */
export function clockTicks(): number {
  if (clkTck === null) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/** CPU time (user + system) of one process in microseconds, or null if unreadable. */
export function cpuMicros(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which is in parentheses and may contain spaces.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    const ticks = Number(fields[11]) + Number(fields[12]);
    return (ticks * 1e6) / clockTicks();
  } catch {
    return null;
  }
}

/** Sum of the CPU time of several processes, in microseconds (unreadable ones count 0). */
export function totalCpuMicros(pids: readonly number[]): number {
  let sum = 0;
  for (const p of pids) sum += cpuMicros(p) ?? 0;
  return sum;
}

/** VmRSS of one process in KiB, or null. */
export function rssKiB(pid: number): number | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

export function totalRssKiB(pids: readonly number[]): number {
  let sum = 0;
  for (const p of pids) sum += rssKiB(p) ?? 0;
  return sum;
}

/** CPU time of this process (the load generator), in microseconds. */
export function selfCpuMicros(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}
