// Schema of the Chorus configuration file.
//
// Every option has a default, so that an empty document (or no file at all)
// parses to a working single-host server for `localhost`. The error messages
// attached to each schema are phrased as "must be ..." so that the loader can
// print them as "<path> must be ..., got <value>" next to a file:line:col.
import { isIP } from 'node:net';
import { z } from 'zod';

// ---------------------------------------------------------------------------
// Building blocks. Each passes the same message to the type check and to
// every refinement, because zod reports a schema's `error` only for the
// issues that schema raises itself, not for those of its checks.

function intBetween(min: number, max?: number) {
  const error =
    max === undefined ? `must be an integer of at least ${min}` : `must be an integer from ${min} to ${max}`;
  let schema = z.number({ error }).int({ error }).min(min, { error });
  if (max !== undefined) schema = schema.max(max, { error });
  return schema;
}

function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  return z.enum(values, { error: `must be one of ${values.map((v) => `'${v}'`).join(', ')}` });
}

const bool = z.boolean({ error: 'must be true or false' });

function nonEmptyString(what = 'a non-empty string') {
  const error = `must be ${what}`;
  return z.string({ error }).min(1, { error });
}

function list<T extends z.ZodType>(element: T, what: string) {
  return z.array(element, { error: `must be a list of ${what}` });
}

// Mappings reject unknown keys so that typos ("listners") are reported
// rather than silently ignored. The loader turns `unrecognized_keys` issues
// into "unknown option" messages with a suggestion, so only the type
// mismatch needs a message here.
function section<S extends z.ZodRawShape>(shape: S) {
  return z.strictObject(shape, {
    error: (iss) => (iss.code === 'invalid_type' ? 'must be a mapping of options (key: value)' : undefined),
  });
}

// Labels of letters, digits and inner hyphens, at most 63 octets each and 253
// in total: the hostname rules of RFC 1123 that XMPP domainparts follow in
// practice. Internationalised names must be given in their ASCII (xn--) form.
const DNS_LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

/** True for names accepted as a virtual host: DNS names, IPv4, or a bracketed IPv6 literal. */
export function isValidDomain(domain: string): boolean {
  if (domain.startsWith('[') && domain.endsWith(']')) return isIP(domain.slice(1, -1)) === 6;
  if (isIP(domain) === 4) return true;
  if (domain.length === 0 || domain.length > 253) return false;
  return domain.split('.').every((label) => DNS_LABEL.test(label));
}

const domainError =
  'must be a domain name such as example.org (international names in their xn-- form), ' +
  'an IPv4 address or a bracketed IPv6 address';

const domain = z
  .string({ error: domainError })
  .trim()
  .toLowerCase()
  // A trailing dot names the same host; stripping it keeps duplicates detectable.
  .overwrite((d) => (d.endsWith('.') ? d.slice(0, -1) : d))
  .refine(isValidDomain, { error: domainError });

const moduleNameError =
  'must be a module name (lowercase letters, digits, - and _) or the path of a module file ending in .ts or .js';
// A third-party module is named by its file path (./mods/foo.ts, /opt/x.js).
const moduleName = z
  .string({ error: moduleNameError })
  .regex(/^(?:[a-z][a-z0-9_-]*|\.{0,2}\/\S+\.(?:ts|js|mjs))$/, { error: moduleNameError });

function moduleList() {
  return list(moduleName, 'module names').superRefine((names, ctx) => {
    const seen = new Set<string>();
    names.forEach((name, i) => {
      if (seen.has(name))
        ctx.addIssue({
          code: 'custom',
          path: [i],
          message: `repeats module '${name}'; list each module once`,
        });
      seen.add(name);
    });
  });
}

// SASL mechanism names per RFC 4422: upper-case letters, digits, - and _.
const mechanismError = 'must be a SASL mechanism name such as SCRAM-SHA-256 or PLAIN';
const mechanism = z
  .string({ error: mechanismError })
  .trim()
  .toUpperCase()
  .regex(/^[A-Z0-9_-]{1,20}$/, { error: mechanismError });

const addressError = 'must be an IP address to listen on (:: or 0.0.0.0 for all interfaces) or a host name';
const listenAddress = z
  .string({ error: addressError })
  .refine((a) => isIP(a) !== 0 || /^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$/i.test(a), { error: addressError });

// ---------------------------------------------------------------------------
// Sections.

const tlsFilesSchema = section({
  cert: nonEmptyString('the path of a PEM certificate file (chain allowed)'),
  key: nonEmptyString('the path of a PEM private key file'),
});

export const hostSchema = section({
  domain,
  /** When absent the global `modules` list applies. */
  modules: moduleList().optional(),
  modules_disabled: moduleList().prefault([]),
  /** When absent, `<certs.dir>/<domain>.crt|.key` is used, generated if missing. */
  tls: tlsFilesSchema.optional(),
});

export const listenerSchema = section({
  type: oneOf(['c2s']).prefault('c2s'),
  port: intBetween(1, 65535),
  address: listenAddress.prefault('::'),
  /** `starttls` upgrades a plain connection (RFC 6120); `direct` is TLS from the first byte (XEP-0368). */
  tls: oneOf(['starttls', 'direct']).prefault('starttls'),
  /** Only meaningful for `starttls`: refuse anything but STARTTLS before TLS is up. */
  starttls_required: bool.prefault(true),
});

const mongoUrlError = 'must be a MongoDB connection string (mongodb://... or mongodb+srv://...)';
// MongoDB database names may not contain /\. "$*<>:|? and are under 64 bytes.
const mongoDatabaseError = 'must be a MongoDB database name (1 to 63 characters, none of /\\. "$*<>:|?)';

const storageSchema = section({
  driver: oneOf(['sqlite', 'memory', 'mongodb']).prefault('sqlite'),
  path: nonEmptyString('a file path').prefault('data/chorus.sqlite'),
  /** sqlite only: the writer thread's nice value (SqliteOptions.writerNice). */
  writer_nice: intBetween(0, 19).prefault(10),
  /** mongodb only: the connection string; required with that driver. */
  url: z
    .string({ error: mongoUrlError })
    .trim()
    .regex(/^mongodb(\+srv)?:\/\/\S+$/, { error: mongoUrlError })
    .optional(),
  /** mongodb only: the database; default is the one in `url`, else 'chorus'. */
  database: z
    .string({ error: mongoDatabaseError })
    .regex(/^[^/\\. "$*<>:|?]{1,63}$/, { error: mongoDatabaseError })
    .refine((name) => !name.includes('\u0000'), { error: mongoDatabaseError })
    .optional(),
}).superRefine((storage, ctx) => {
  if (storage.driver === 'mongodb' && storage.url === undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['url'],
      message:
        "is required when storage.driver is 'mongodb': give a connection string such as mongodb://localhost:27017/chorus",
    });
  }
});

const throttleSchema = section({
  delay_after: intBetween(0).prefault(3),
  delay_ms: intBetween(0).prefault(1000),
  max_delay_ms: intBetween(0).prefault(10000),
  ban_after: intBetween(0).prefault(10),
  ban_seconds: intBetween(0).prefault(300),
  window_seconds: intBetween(1).prefault(600),
});

const authSchema = section({
  // 4096 is the minimum RFC 7677 recommends for SCRAM-SHA-256.
  scram_iterations: intBetween(4096, 10_000_000).prefault(4096),
  /** Allow-list of SASL mechanisms; absent means every mechanism the server implements. */
  mechanisms: list(mechanism, 'SASL mechanism names')
    .min(1, { error: 'must list at least one mechanism' })
    .optional(),
  throttle: throttleSchema.prefault({}),
});

const limitsSchema = section({
  stanza_size: intBetween(1024).prefault(262144),
  stanza_size_preauth: intBetween(512).prefault(16384),
  max_depth: intBetween(2, 1024).prefault(64),
  max_attributes: intBetween(1, 10_000).prefault(64),
  max_resources_per_user: intBetween(1).prefault(10),
  handshake_timeout: intBetween(1, 3600).prefault(30),
  /** New connections accepted from one address per minute; more are dropped at once. 0: no limit. */
  connections_per_minute: intBetween(0).prefault(120),
  /** Bytes per second one client connection may send before reading from it slows down. 0: no limit. */
  bytes_per_second: intBetween(0).prefault(262144),
}).superRefine((limits, ctx) => {
  if (limits.stanza_size_preauth > limits.stanza_size) {
    ctx.addIssue({
      code: 'custom',
      path: ['stanza_size_preauth'],
      message: `must not exceed limits.stanza_size (${limits.stanza_size}), got ${limits.stanza_size_preauth}`,
    });
  }
});

const sessionsSchema = section({
  /** What happens when a client binds a resource that is already online. */
  conflict: oneOf(['replace_old', 'refuse_new']).prefault('replace_old'),
});

const clusterSchema = section({
  /**
   * Redis URL of the session routing table and node bus (redis://host:port/db).
   * Unset: a single node with its in-process session table.
   */
  redis_url: z
    .string({ error: 'must be a Redis URL such as redis://127.0.0.1:6379' })
    .regex(/^rediss?:\/\/./, { error: 'must be a Redis URL such as redis://127.0.0.1:6379' })
    .optional(),
  /** This node's name, unique in the cluster. Default: the host name and process id. */
  node_id: z
    .string({ error: 'must be a node name of letters, digits, dot, dash or underscore' })
    .regex(/^[A-Za-z0-9._-]{1,64}$/, {
      error: 'must be a node name of letters, digits, dot, dash or underscore',
    })
    .optional(),
  /** Prefix of every Redis key and channel, so that clusters can share a Redis. */
  prefix: nonEmptyString().prefault('chorus:'),
  /** Worker processes `chorus start` runs on this machine, sharing the listening ports (needs redis_url when above 1). */
  workers: intBetween(1, 256).prefault(1),
  /** How often a node renews its heartbeat in Redis, in milliseconds. */
  heartbeat_ms: intBetween(50, 60_000).prefault(2000),
  /** A node whose heartbeat is this old is dead: its sessions are removed. Default: 3 heartbeats. */
  node_ttl_ms: intBetween(150, 600_000).optional(),
  /** Log the node's routing metrics this often, in seconds (0: never). */
  metrics_log_seconds: intBetween(0).prefault(60),
}).superRefine((cluster, ctx) => {
  if (cluster.workers > 1 && !cluster.redis_url) {
    ctx.addIssue({
      code: 'custom',
      path: ['workers'],
      message: `needs cluster.redis_url: workers share sessions through Redis (got ${cluster.workers} workers)`,
    });
  }
  if (cluster.node_ttl_ms !== undefined && cluster.node_ttl_ms <= cluster.heartbeat_ms) {
    ctx.addIssue({
      code: 'custom',
      path: ['node_ttl_ms'],
      message: `must be longer than cluster.heartbeat_ms (${cluster.heartbeat_ms}), got ${cluster.node_ttl_ms}`,
    });
  }
});

const logSchema = section({
  level: oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).prefault('info'),
  /** `auto` is pretty on a terminal and JSON otherwise. */
  format: oneOf(['auto', 'json', 'pretty']).prefault('auto'),
});

const certsSchema = section({
  dir: nonEmptyString('a directory path').prefault('certs'),
});

const moduleOptionsSchema = z.record(
  z.string(),
  z.record(z.string(), z.unknown(), { error: 'must be a mapping of options for that module' }),
  { error: 'must be a mapping from module name to its options' },
);

// Two listeners collide when they share a port and either the same address
// or one of them listens on all interfaces (on Linux `::` is dual-stack and
// covers 0.0.0.0 as well).
const WILDCARD_ADDRESSES = new Set(['::', '0.0.0.0', '::0', '0:0:0:0:0:0:0:0']);

export const configSchema = section({
  hosts: list(hostSchema, 'hosts')
    .min(1, { error: 'must list at least one host' })
    .prefault([{ domain: 'localhost' }]),
  modules: moduleList().prefault([
    'disco',
    'ping',
    'version',
    'time',
    'register',
    'roster',
    'presence',
    'carbons',
    'offline',
    'blocking',
    'vcard',
    'private',
    'last',
    'smacks',
    'csi',
    'keepalive',
    'mam',
    'inbox',
    'muc',
  ]),
  module_options: moduleOptionsSchema.prefault({ register: { allow_registration: false } }),
  listeners: list(listenerSchema, 'listeners').prefault([
    { type: 'c2s', port: 5222, address: '::', tls: 'starttls', starttls_required: true },
    { type: 'c2s', port: 5223, address: '::', tls: 'direct' },
  ]),
  storage: storageSchema.prefault({}),
  certs: certsSchema.prefault({}),
  auth: authSchema.prefault({}),
  limits: limitsSchema.prefault({}),
  sessions: sessionsSchema.prefault({}),
  cluster: clusterSchema.prefault({}),
  log: logSchema.prefault({}),
}).superRefine((config, ctx) => {
  const domains = new Map<string, number>();
  config.hosts.forEach((host, i) => {
    const first = domains.get(host.domain);
    if (first !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['hosts', i, 'domain'],
        message: `duplicates hosts[${first}].domain '${host.domain}'; each domain may be listed once`,
      });
    } else {
      domains.set(host.domain, i);
    }
  });

  config.listeners.forEach((listener, i) => {
    for (let j = 0; j < i; j++) {
      const other = config.listeners[j]!;
      if (other.port !== listener.port) continue;
      const sameAddress =
        other.address === listener.address ||
        WILDCARD_ADDRESSES.has(other.address) ||
        WILDCARD_ADDRESSES.has(listener.address);
      if (sameAddress) {
        ctx.addIssue({
          code: 'custom',
          path: ['listeners', i, 'port'],
          message: `${listener.port} on address '${listener.address}' is already used by listeners[${j}] (address '${other.address}'); give each listener its own port`,
        });
        break;
      }
    }
  });
});

export type ChorusConfig = z.output<typeof configSchema>;
export type HostConfig = ChorusConfig['hosts'][number];
export type ListenerConfig = ChorusConfig['listeners'][number];
export type StorageConfig = ChorusConfig['storage'];
export type AuthConfig = ChorusConfig['auth'];
export type ThrottleConfig = AuthConfig['throttle'];
export type LimitsConfig = ChorusConfig['limits'];
export type SessionsConfig = ChorusConfig['sessions'];
export type LogConfig = ChorusConfig['log'];
export type ClusterConfig = ChorusConfig['cluster'];

/** The configuration an empty file yields; a fresh object each call. */
export function defaultConfig(): ChorusConfig {
  return configSchema.parse({});
}

/**
 * Modules to load for one host: its own `modules` list if given, else the
 * global list, minus `modules_disabled`. Whether a module then activates
 * (e.g. register needs `allow_registration`) is the module's decision.
 */
export function modulesForHost(config: Pick<ChorusConfig, 'modules'>, host: HostConfig): string[] {
  const base = host.modules ?? config.modules;
  const disabled = new Set(host.modules_disabled);
  return base.filter((name) => !disabled.has(name));
}
