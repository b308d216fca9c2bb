// Result files and text tables.
import { mkdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { ScenarioResult } from './scenarios.ts';

export const RESULTS_DIR = fileURLToPath(new URL('./results/', import.meta.url));

function stamp(d = new Date()): string {
  return d.toISOString().replace(/[:.]/g, '-');
}

/** Writes one JSON document to bench/results/<timestamp>-<server>-<scenario>.json. */
export function writeResult(
  result: ScenarioResult | Record<string, unknown>,
  server: string,
  scenario: string,
): string {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const file = `${RESULTS_DIR}${stamp()}-${server.replace(/[^\w.-]/g, '_')}-${scenario}.json`;
  writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
  return file;
}

/** Left-aligns the first column, right-aligns the others. */
export function formatTable(rows: string[][]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  const line = (row: string[]) =>
    row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  ');
  const sep = widths.map((w) => '-'.repeat(w)).join('  ');
  return [line(rows[0]!), sep, ...rows.slice(1).map(line)].join('\n');
}

/** The middle value (the mean of the two middle ones for an even count); null for none. */
export function median(values: number[]): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export function fmt(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '-';
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2);
}

export function resultTable(result: ScenarioResult): string {
  const rows = [['metric', result.server]];
  for (const [k, v] of Object.entries(result.metrics)) rows.push([k, fmt(v)]);
  return formatTable(rows);
}
