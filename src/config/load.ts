// Reads the YAML configuration, applies CHORUS_* environment overrides,
// validates the result and turns every problem into a message that points at
// the offending spot: "conf/chorus.yaml:12:11: listeners[0].port must be ...".
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, type Document } from 'yaml';
import { z } from 'zod';
import { configSchema, type ChorusConfig } from './schema.ts';

export const DEFAULT_CONFIG_PATH = 'conf/chorus.yaml';
const ENV_PREFIX = 'CHORUS_';
const ENV_CONFIG_PATH = 'CHORUS_CONFIG';
/** Variables under the prefix that are not option overrides: the config path and the test suite's switches. */
const NOT_OVERRIDES = /^CHORUS_(CONFIG|TEST_.*|SKIP_.*)$/;

/** One problem found in the configuration. */
export interface ConfigIssue {
  /** The configuration file, as given (relative paths stay relative). */
  file?: string;
  /** 1-based position in `file` of the offending value or key. */
  line?: number;
  column?: number;
  /** The environment variable the offending value came from. */
  envVar?: string;
  /** Dotted path such as `listeners[0].port`; empty for the document as a whole. */
  path: string;
  /** Human-readable description, without the location prefix. */
  message: string;
}

export class ConfigError extends Error {
  readonly issues: readonly ConfigIssue[];

  constructor(issues: ConfigIssue[]) {
    super(issues.map(formatIssue).join('\n'));
    this.name = 'ConfigError';
    this.issues = issues;
  }
}

function formatIssue(issue: ConfigIssue): string {
  let where: string;
  if (issue.envVar !== undefined) where = `environment variable ${issue.envVar}`;
  else if (issue.file !== undefined && issue.line !== undefined)
    where = `${issue.file}:${issue.line}:${issue.column ?? 1}`;
  else where = issue.file ?? 'configuration';
  return `${where}: ${issue.message}`;
}

export interface LoadConfigOptions {
  /** Configuration file; defaults to $CHORUS_CONFIG, then conf/chorus.yaml. */
  path?: string;
  /** Source of CHORUS_* overrides; defaults to process.env. */
  env?: NodeJS.ProcessEnv;
  /**
   * Treat a missing file as an empty one. Ignored when the path came from
   * $CHORUS_CONFIG, since naming a file there is an explicit request for it.
   */
  allowMissing?: boolean;
  /** Directory that relative paths in the configuration resolve against; defaults to process.cwd(). */
  cwd?: string;
}

/**
 * Loads, overrides from the environment and validates the configuration.
 * Relative paths in the result (storage.path, certs.dir, hosts[].tls) are
 * resolved against the working directory. Throws ConfigError.
 */
export function loadConfig(opts: LoadConfigOptions = {}): ChorusConfig {
  const env = opts.env ?? process.env;
  const fromEnv = opts.path === undefined && nonEmpty(env[ENV_CONFIG_PATH]);
  const file = opts.path ?? (fromEnv ? env[ENV_CONFIG_PATH]! : DEFAULT_CONFIG_PATH);
  const cwd = opts.cwd ?? process.cwd();

  let text: string;
  try {
    text = readFileSync(path.resolve(cwd, file), 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && opts.allowMissing === true && !fromEnv) {
      text = '';
    } else {
      const reason =
        code === 'ENOENT'
          ? fromEnv
            ? `no such file (named by ${ENV_CONFIG_PATH})`
            : 'no such file (pass --config PATH or set CHORUS_CONFIG)'
          : code === 'EACCES'
            ? 'permission denied'
            : code === 'EISDIR'
              ? 'is a directory, expected a YAML file'
              : (err as Error).message;
      throw new ConfigError([{ file, path: '', message: `cannot read configuration: ${reason}` }]);
    }
  }
  return parseConfig(text, { file, env, cwd });
}

export interface ParseConfigOptions {
  /** Name used in messages. */
  file?: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/** Like loadConfig, for configuration text already in memory. */
export function parseConfig(text: string, opts: ParseConfigOptions = {}): ChorusConfig {
  const file = opts.file ?? '<config>';
  const env = opts.env ?? process.env;
  const cwd = opts.cwd ?? process.cwd();

  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const at = (offset: number) => {
    const { line, col } = lineCounter.linePos(offset);
    return { file, line, column: col };
  };

  if (doc.errors.length > 0) {
    throw new ConfigError(
      doc.errors.map((e) => ({ ...at(e.pos[0]), path: '', message: `YAML syntax error: ${e.message}` })),
    );
  }

  let loaded: unknown;
  try {
    // The alias limit stops "billion laughs" documents from expanding without bound.
    loaded = doc.toJS({ maxAliasCount: 100 }) ?? {};
  } catch (err) {
    throw new ConfigError([{ file, path: '', message: `YAML error: ${(err as Error).message}` }]);
  }
  if (!isPlainObject(loaded)) {
    throw new ConfigError([
      {
        ...at(doc.contents?.range?.[0] ?? 0),
        path: '',
        message: `the configuration must be a mapping of options (key: value) at the top level, got ${describe(loaded)}`,
      },
    ]);
  }
  const raw = dropNulls(loaded);
  const overrides = applyEnvOverrides(raw, env);

  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const issues = explainIssues(result.error.issues, raw, (p, key) => {
      const envVar = envFor(overrides, p);
      if (envVar !== undefined) return { envVar };
      const pos = locate(doc, p, key);
      return pos === undefined ? { file } : at(pos);
    });
    // zod reports in schema order; file order is easier to work through.
    const rank = (i: ConfigIssue) =>
      i.envVar !== undefined ? Number.MAX_SAFE_INTEGER : (i.line ?? 0) * 1e6 + (i.column ?? 0);
    throw new ConfigError(issues.sort((a, b) => rank(a) - rank(b)));
  }
  return resolvePaths(result.data, cwd);
}

function nonEmpty(s: string | undefined): s is string {
  return s !== undefined && s !== '';
}

// ---------------------------------------------------------------------------
// Nulls. `log:` with every child commented out is null in YAML; treating it
// as absent lets such a section fall back to its defaults instead of failing.

function dropNulls(value: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    if (v === null) continue;
    out[k] = isPlainObject(v)
      ? dropNulls(v)
      : Array.isArray(v)
        ? v.map((x) => (isPlainObject(x) ? dropNulls(x) : x))
        : v;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Environment overrides: CHORUS_LISTENERS__0__PORT=15222 sets listeners[0].port.

interface EnvOverride {
  name: string;
  path: string[];
}

function applyEnvOverrides(raw: Record<string, unknown>, env: NodeJS.ProcessEnv): EnvOverride[] {
  // Containers the file does not mention start from their defaults, so that
  // CHORUS_LISTENERS__0__PORT changes one port instead of replacing the
  // whole default listener list with a single listener.
  const defaults: unknown = configSchema.parse({});
  const applied: EnvOverride[] = [];
  const names = Object.keys(env)
    .filter((n) => n.startsWith(ENV_PREFIX) && !NOT_OVERRIDES.test(n) && nonEmpty(env[n]))
    .sort();

  for (const name of names) {
    const fail = (message: string): never => {
      throw new ConfigError([{ envVar: name, path: '', message }]);
    };
    const segments = name.slice(ENV_PREFIX.length).toLowerCase().split('__');
    if (segments.some((s) => s === '')) {
      fail('empty level in the name; separate levels with a double underscore, e.g. CHORUS_LOG__LEVEL');
    }
    const value = parseEnvValue(env[name]!);

    let container: unknown = raw;
    let template: unknown = defaults;
    const walked: (string | number)[] = [];
    for (let i = 0; i < segments.length; i++) {
      const seg = segments[i]!;
      const last = i === segments.length - 1;
      const nextIsIndex = !last && /^\d+$/.test(segments[i + 1]!);

      let key: string | number;
      if (Array.isArray(container)) {
        if (!/^\d+$/.test(seg))
          fail(`${formatPath(walked)} is a list; expected an index after it, got '${seg}'`);
        const index = Number(seg);
        if (index > container.length) {
          fail(
            `index ${index} is out of range: ${formatPath(walked)} has ${container.length} entries ` +
              `(use 0 to ${container.length - 1} to change one, or ${container.length} to add one)`,
          );
        }
        key = index;
      } else if (isPlainObject(container)) {
        key = seg;
      } else {
        return fail(
          `${formatPath(walked)} is ${describe(container)}, not a mapping or list, so it has no '${seg}'`,
        );
      }

      const slot = container as Record<string | number, unknown>;
      template = isContainer(template) ? (template as Record<string | number, unknown>)[key] : undefined;
      walked.push(key);
      if (last) {
        slot[key] = value;
      } else {
        if (slot[key] === undefined) {
          slot[key] = isContainer(template) ? structuredClone(template) : nextIsIndex ? [] : {};
        }
        container = slot[key];
      }
    }
    applied.push({ name, path: walked.map(String) });
  }
  return applied;
}

// Values are read as YAML scalars (and flow collections, so that
// CHORUS_MODULES='[disco, ping]' works); anything YAML would read as a
// string keeps its exact original text, so no quoting rules apply to it.
function parseEnvValue(text: string): unknown {
  const doc = parseDocument(text, { prettyErrors: false });
  if (doc.errors.length > 0) return text;
  const value: unknown = doc.toJS();
  if (typeof value === 'number' || typeof value === 'boolean') return value;
  // Only explicit flow collections; `a: b` or `- x` in a value is far more
  // likely a literal string than an intended block mapping or list.
  if (typeof value === 'object' && value !== null && /^\s*[[{]/.test(text)) return value;
  return text;
}

function envFor(overrides: EnvOverride[], subject: (string | number)[]): string | undefined {
  let best: EnvOverride | undefined;
  for (const o of overrides) {
    if (o.path.length > subject.length) continue;
    if (o.path.every((seg, i) => seg === String(subject[i])) && (!best || o.path.length > best.path.length)) {
      best = o;
    }
  }
  return best?.name;
}

// ---------------------------------------------------------------------------
// Turning zod issues into sentences.

type Locate = (path: (string | number)[], key: boolean) => Partial<ConfigIssue>;

function explainIssues(issues: readonly z.core.$ZodIssue[], raw: unknown, locate: Locate): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  for (const issue of issues) {
    const p = issue.path.filter((s): s is string | number => typeof s !== 'symbol');
    if (issue.code === 'unrecognized_keys') {
      const known = knownKeysAt(p);
      for (const key of issue.keys) {
        const subject = [...p, key];
        let message = `unknown option '${key}'${p.length > 0 ? ` in ${formatPath(p)}` : ''}`;
        const where = locate(subject, true);
        const suggestion = closest(key, known);
        // CHORUS_LOG_LEVEL instead of CHORUS_LOG__LEVEL arrives here as an
        // unknown 'log_level'; name the spelling that was meant.
        const level = where.envVar === undefined ? undefined : known.find((k) => key.startsWith(`${k}_`));
        if (suggestion !== undefined) message += ` (did you mean '${suggestion}'?)`;
        else if (level !== undefined) {
          const meant = [...p, level, key.slice(level.length + 1)].map(String).join('__').toUpperCase();
          message += ` (separate levels with a double underscore: ${ENV_PREFIX}${meant})`;
        } else if (known.length > 0) message += `; known options: ${known.join(', ')}`;
        out.push({ ...where, path: formatPath(subject), message });
      }
      continue;
    }

    const found = valueAt(raw, p);
    let message: string;
    if (found === undefined && issue.code === 'invalid_type') {
      message = `${formatPath(p)} is missing; it ${issue.message}`;
    } else if (issue.message.startsWith('must ') && !issue.message.includes(', got ')) {
      message = `${formatPath(p)} ${issue.message}, got ${describe(found)}`;
      if (issue.code === 'invalid_value' && typeof found === 'string') {
        const suggestion = closest(
          found,
          issue.values.filter((v): v is string => typeof v === 'string'),
        );
        if (suggestion !== undefined) message += ` (did you mean '${suggestion}'?)`;
      }
    } else if (issue.code === 'custom') {
      message = `${formatPath(p)} ${issue.message}`;
    } else {
      // A check without a tailored message; zod's own wording is still useful.
      message = `${formatPath(p) || 'configuration'}: ${issue.message}`;
    }
    out.push({ ...locate(p, false), path: formatPath(p), message });
  }
  return out;
}

/** Option names the schema accepts at a path, for "did you mean" hints. */
function knownKeysAt(p: (string | number)[]): string[] {
  let schema: unknown = configSchema;
  const unwrap = () => {
    for (;;) {
      if (
        schema instanceof z.ZodDefault ||
        schema instanceof z.ZodPrefault ||
        schema instanceof z.ZodOptional ||
        schema instanceof z.ZodNullable
      ) {
        schema = schema.unwrap();
      } else if (schema instanceof z.ZodPipe) {
        schema = schema.in;
      } else {
        return;
      }
    }
  };
  for (const seg of p) {
    unwrap();
    if (schema instanceof z.ZodObject) schema = (schema.shape as Record<string, unknown>)[String(seg)];
    else if (schema instanceof z.ZodArray) schema = schema.element;
    else if (schema instanceof z.ZodRecord) schema = schema.valueType;
    else return [];
  }
  unwrap();
  return schema instanceof z.ZodObject ? Object.keys(schema.shape) : [];
}

function valueAt(root: unknown, p: (string | number)[]): unknown {
  let cur = root;
  for (const seg of p) {
    if (!isContainer(cur)) return undefined;
    cur = (cur as Record<string | number, unknown>)[seg];
  }
  return cur;
}

/** Offset in the source of the node at `p` (its key when `key`), or of the nearest existing ancestor. */
function locate(doc: Document, p: (string | number)[], key: boolean): number | undefined {
  let node: unknown = doc.contents;
  let best: number | undefined = doc.contents?.range?.[0];
  for (let i = 0; i < p.length; i++) {
    if (isAlias(node)) node = node.resolve(doc);
    const seg = String(p[i]);
    if (isMap(node)) {
      const pair = node.items.find((item) => isScalar(item.key) && String(item.key.value) === seg);
      if (pair === undefined) return best;
      const keyStart = isScalar(pair.key) ? pair.key.range?.[0] : undefined;
      const value = pair.value;
      const valueStart = isScalar(value) || isMap(value) || isSeq(value) ? value.range?.[0] : undefined;
      const lastSeg = i === p.length - 1;
      // An empty value (`port:`) has no useful position of its own; point at its key.
      const emptyValue = value === null || (isScalar(value) && value.value === null);
      best = (lastSeg && key) || emptyValue ? (keyStart ?? best) : (valueStart ?? keyStart ?? best);
      node = value;
    } else if (isSeq(node)) {
      const item: unknown = node.items[Number(seg)];
      if (item === undefined) return best;
      if (isScalar(item) || isMap(item) || isSeq(item)) best = item.range?.[0] ?? best;
      node = item;
    } else {
      return best;
    }
  }
  return best;
}

// ---------------------------------------------------------------------------
// Relative paths resolve against the working directory, the same as paths
// given on the command line, so `chorus start` from the project root finds
// data/ and certs/ next to conf/.

function resolvePaths(config: ChorusConfig, cwd: string): ChorusConfig {
  const abs = (p: string) => path.resolve(cwd, p);
  return {
    ...config,
    // ':memory:' is SQLite's name for an in-memory database, not a file.
    storage: {
      ...config.storage,
      path: config.storage.path === ':memory:' ? ':memory:' : abs(config.storage.path),
    },
    certs: { ...config.certs, dir: abs(config.certs.dir) },
    hosts: config.hosts.map((h) =>
      h.tls === undefined ? h : { ...h, tls: { cert: abs(h.tls.cert), key: abs(h.tls.key) } },
    ),
  };
}

// ---------------------------------------------------------------------------
// Small helpers.

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return (
    typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date) && !(v instanceof Map)
  );
}

function isContainer(v: unknown): boolean {
  return Array.isArray(v) || isPlainObject(v);
}

/** `listeners[0].port`, `module_options.register`, `a["odd key"]`. */
export function formatPath(p: readonly (string | number)[]): string {
  let out = '';
  for (const seg of p) {
    if (typeof seg === 'number' || /^\d+$/.test(seg)) out += `[${seg}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(seg)) out += out === '' ? seg : `.${seg}`;
    else out += `[${JSON.stringify(seg)}]`;
  }
  return out;
}

function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'an empty value';
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? `${v.slice(0, 57)}...` : v);
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (Array.isArray(v)) return v.length === 0 ? 'an empty list' : `a list of ${v.length}`;
  if (v instanceof Date) return `the date ${v.toISOString()} (quote it to make it a string)`;
  if (isPlainObject(v)) return 'a mapping';
  return typeof v;
}

/** The candidate within a small edit distance of `word`, if any. */
function closest(word: string, candidates: readonly string[]): string | undefined {
  const limit = Math.max(1, Math.min(3, Math.floor(word.length / 3)));
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d <= limit && d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  return best;
}

// Levenshtein distance with adjacent transpositions counted as one edit,
// since swapped letters are the most common typo.
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}
