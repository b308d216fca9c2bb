// The `chorus` command.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Writable } from 'node:stream';
import { parseArgs } from 'node:util';
import { ARCHIVE_STORE, parseRetention, purgeArchive } from '../modules/mam/retention.ts';
import { ConfigError, loadConfig, modulesForHost, type ChorusConfig } from './config/index.ts';
import { Jid, JidError } from './jid.ts';
import { createLogger } from './log.ts';
import { ModuleError, orderByDependencies, resolveModule, validateOptions } from './modules/loader.ts';
import { generateSelfSigned } from './net/certs.ts';
import { Server } from './server.ts';
import { isClusterWorker, superviseWorkers } from './cluster/supervisor.ts';
import { AccountExistsError, AccountNotFoundError, Accounts } from './storage/accounts.ts';
import { openStorage } from './storage/index.ts';

/** Exit codes: 0 success, 1 the operation failed, 2 bad usage or configuration. */
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;

const USAGE = `Usage: chorus <command> [options]

Commands:
  start [--cluster N]        run the server; with --cluster N, as N worker processes
                             sharing the ports and, through cluster.redis_url, the sessions
  check config               validate the configuration and list hosts and modules
  adduser JID                create an account (password from a prompt, --password-file or --password-stdin)
  passwd JID                 change an account's password
  deluser JID                delete an account
  cert generate DOMAIN       write a self-signed certificate for DOMAIN into the certificate directory
  archive purge --older-than AGE [--user JID]
                             delete archived messages (XEP-0313) older than AGE (e.g. 30d, 1y)

Options:
  -c, --config FILE          configuration file (default: $CHORUS_CONFIG or conf/chorus.yaml)
  --password-file FILE       read the password from the first line of FILE
  --password-stdin           read the password from the first line of standard input
  -h, --help                 show this help
`;

class UsageError extends Error {}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c' },
      'password-file': { type: 'string' },
      'password-stdin': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
      'older-than': { type: 'string' },
      user: { type: 'string' },
      cluster: { type: 'string' },
    },
  });
  const [command, ...rest] = positionals;
  if (values.help || !command) {
    process.stdout.write(USAGE);
    return values.help ? 0 : EXIT_USAGE;
  }
  const config = () => loadConfig({ path: values.config, allowMissing: values.config === undefined });
  switch (command) {
    case 'start':
      return start(withWorkers(config(), values.cluster), values.config);
    case 'check':
      if (rest[0] !== 'config') throw new UsageError('usage: chorus check config');
      return checkConfig(config());
    case 'adduser':
    case 'passwd':
    case 'deluser':
      return manageAccount(command, rest[0], config(), values);
    case 'cert':
      if (rest[0] !== 'generate' || !rest[1]) throw new UsageError('usage: chorus cert generate DOMAIN');
      return generateCert(rest[1], config());
    case 'archive':
      if (rest[0] !== 'purge' || !values['older-than']) {
        throw new UsageError('usage: chorus archive purge --older-than AGE [--user JID]');
      }
      return purgeArchives(config(), values['older-than'], values.user);
    default:
      throw new UsageError(`unknown command '${command}'; run chorus --help`);
  }
}

/** Applies `--cluster N` over cluster.workers, with the same checks as the file. */
function withWorkers(config: ChorusConfig, option: string | undefined): ChorusConfig {
  if (option === undefined) return config;
  const workers = Number(option);
  if (!Number.isInteger(workers) || workers < 1 || workers > 256) {
    throw new UsageError(`--cluster takes a number of worker processes from 1 to 256, got '${option}'`);
  }
  if (workers > 1 && !config.cluster.redis_url) {
    throw new UsageError(
      `--cluster ${workers} needs cluster.redis_url in the configuration (or CHORUS_CLUSTER__REDIS_URL): the workers share their sessions through Redis`,
    );
  }
  return { ...config, cluster: { ...config.cluster, workers } };
}

async function start(config: ChorusConfig, configPath: string | undefined): Promise<number> {
  const log = createLogger(config.log);
  if (config.cluster.workers > 1 && !isClusterWorker())
    return superviseWorkers(config, config.cluster.workers, log);
  const server = new Server(config, { configPath, log });
  try {
    await server.start();
  } catch (err) {
    log.fatal({ err }, `could not start: ${(err as Error).message}`);
    await server.stop().catch(() => undefined);
    return EXIT_FAILED;
  }
  return new Promise<number>((resolve) => {
    const shutdown = (signal: string) => {
      log.info({ signal }, 'shutting down');
      server.stop().then(
        () => {
          // A cluster worker's channel to its supervisor would keep it alive.
          if (isClusterWorker()) process.disconnect?.();
          resolve(0);
        },
        (err: unknown) => {
          log.error({ err }, 'error during shutdown');
          resolve(EXIT_FAILED);
        },
      );
    };
    process.once('SIGTERM', () => shutdown('SIGTERM'));
    process.once('SIGINT', () => shutdown('SIGINT'));
    process.on('SIGHUP', () => {
      log.info('SIGHUP: reloading configuration and certificates');
      let next: ChorusConfig;
      try {
        next = loadConfig({ path: configPath, allowMissing: configPath === undefined });
      } catch (err) {
        log.error(`reload refused, keeping the running configuration: ${(err as Error).message}`);
        return;
      }
      server.reload(next).then(
        // The logger belongs to this command, not to the server: apply a
        // changed log.level here (connections opened from now on use it).
        () => {
          log.level = next.log.level;
        },
        (err: unknown) => log.error(`reload failed: ${(err as Error).message}`),
      );
    });
  });
}

async function checkConfig(config: ChorusConfig): Promise<number> {
  for (const host of config.hosts) {
    const defs = [];
    for (const name of modulesForHost(config, host)) {
      const def = await resolveModule(name);
      validateOptions(def, config.module_options[name], `module_options.${name}`);
      defs.push(def);
    }
    const ordered = orderByDependencies(defs, host.domain);
    process.stdout.write(`${host.domain}: modules ${ordered.map((d) => d.name).join(', ')}\n`);
    const xeps = ordered.flatMap((d) =>
      (d.xeps ?? []).map((x) => `XEP-${String(x.number).padStart(4, '0')}`),
    );
    if (xeps.length) process.stdout.write(`  XEPs: ${xeps.join(', ')}\n`);
  }
  for (const l of config.listeners) {
    process.stdout.write(`listener: c2s ${l.tls} on ${l.address} port ${l.port}\n`);
  }
  process.stdout.write(
    `storage: ${config.storage.driver}${config.storage.driver === 'sqlite' ? ` at ${config.storage.path}` : ''}\n`,
  );
  process.stdout.write('configuration OK\n');
  return 0;
}

async function manageAccount(
  command: 'adduser' | 'passwd' | 'deluser',
  jidText: string | undefined,
  config: ChorusConfig,
  opts: { 'password-file'?: string; 'password-stdin'?: boolean },
): Promise<number> {
  if (!jidText) throw new UsageError(`usage: chorus ${command} user@domain`);
  let jid: Jid;
  try {
    jid = Jid.parse(jidText);
  } catch (err) {
    throw new UsageError(`'${jidText}' is not a valid JID: ${(err as JidError).message}`);
  }
  if (!jid.local || jid.resource) throw new UsageError(`give an account as user@domain, not '${jidText}'`);
  if (!config.hosts.some((h) => h.domain === jid.domain)) {
    throw new UsageError(
      `${jid.domain} is not a host in the configuration (hosts: ${config.hosts.map((h) => h.domain).join(', ')})`,
    );
  }
  const storage = openStorage(config.storage);
  const accounts = new Accounts(storage, config.auth.scram_iterations);
  try {
    if (command === 'deluser') {
      if (!(await accounts.delete(jid.domain, jid.local))) {
        process.stderr.write(`chorus: no account ${jid.bareString()}\n`);
        return EXIT_FAILED;
      }
      process.stdout.write(`deleted ${jid.bareString()}\n`);
      return 0;
    }
    if (command === 'adduser' && (await accounts.exists(jid.domain, jid.local))) {
      process.stderr.write(
        `chorus: account ${jid.bareString()} exists already; use chorus passwd to change its password\n`,
      );
      return EXIT_FAILED;
    }
    if (command === 'passwd' && !(await accounts.exists(jid.domain, jid.local))) {
      process.stderr.write(`chorus: no account ${jid.bareString()}\n`);
      return EXIT_FAILED;
    }
    const password = await readPassword(opts);
    if (command === 'adduser') await accounts.create(jid.domain, jid.local, password);
    else await accounts.setPassword(jid.domain, jid.local, password);
    process.stdout.write(
      `${command === 'adduser' ? 'created' : 'changed the password of'} ${jid.bareString()}\n`,
    );
    return 0;
  } catch (err) {
    if (err instanceof AccountExistsError || err instanceof AccountNotFoundError) {
      process.stderr.write(`chorus: ${err.message}\n`);
      return EXIT_FAILED;
    }
    throw err;
  } finally {
    await storage.close();
  }
}

/** How often a long `chorus archive purge` reports how far it has got. */
const PROGRESS_EVERY_MS = 2000;

/** `chorus archive purge`: the retention purge of the mam module, run once by hand. */
async function purgeArchives(config: ChorusConfig, olderThan: string, userText?: string): Promise<number> {
  let age: number | null;
  try {
    age = parseRetention(olderThan);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (age === null) throw new UsageError('--older-than needs a period such as 30d or 1y');
  let domains = config.hosts.map((h) => h.domain);
  let user: Jid | undefined;
  if (userText !== undefined) {
    user = Jid.tryParse(userText) ?? undefined;
    if (!user || !user.local || user.resource)
      throw new UsageError(`give a user as user@domain, not '${userText}'`);
    if (!domains.includes(user.domain))
      throw new UsageError(`${user.domain} is not a host in the configuration`);
    domains = [user.domain];
  }
  const storage = openStorage(config.storage);
  try {
    const cutoff = Date.now() - age;
    let total = 0;
    for (const domain of domains) {
      // A purge across users goes in batches: report the first and then one every few seconds.
      let reportedAt = 0;
      const progress = (deletedSoFar: number) => {
        if (reportedAt !== 0 && Date.now() - reportedAt < PROGRESS_EVERY_MS) return;
        reportedAt = Date.now();
        process.stderr.write(`${domain}: ${deletedSoFar} archived messages deleted so far\n`);
      };
      total += await purgeArchive(storage.archive(domain, ARCHIVE_STORE), cutoff, {
        user: user?.local,
        progress,
      });
    }
    process.stdout.write(
      `deleted ${total} archived message${total === 1 ? '' : 's'} older than ${olderThan}` +
        `${user ? ` of ${user.bareString()}` : ''}\n`,
    );
    return 0;
  } finally {
    await storage.close();
  }
}

async function readPassword(opts: { 'password-file'?: string; 'password-stdin'?: boolean }): Promise<string> {
  let password: string;
  if (opts['password-file']) {
    password = readFileSync(opts['password-file'], 'utf8').split(/\r?\n/)[0] ?? '';
  } else if (opts['password-stdin'] || !process.stdin.isTTY) {
    password = await readLine(false);
  } else {
    password = await readLine(true, 'Password: ');
    const again = await readLine(true, 'Repeat password: ');
    if (again !== password) throw new UsageError('the passwords do not match');
  }
  if (!password) throw new UsageError('the password is empty');
  return password;
}

/** Reads one line from stdin; with `hidden`, typed characters are not echoed. */
function readLine(hidden: boolean, prompt = ''): Promise<string> {
  let muted = false;
  const output = new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (!muted) process.stderr.write(chunk);
      cb();
    },
  });
  const rl = createInterface({ input: process.stdin, output, terminal: hidden });
  return new Promise((resolve) => {
    let answered = false;
    rl.question(prompt, (line) => {
      answered = true;
      rl.close();
      if (hidden) process.stderr.write('\n');
      resolve(line);
    });
    rl.on('close', () => {
      if (!answered) resolve('');
    });
    muted = hidden;
  });
}

function generateCert(domainText: string, config: ChorusConfig): number {
  let domain: string;
  try {
    const jid = Jid.parse(domainText);
    if (jid.local || jid.resource) throw new JidError('a domain has no @ or /', 'domain');
    domain = jid.domain;
  } catch (err) {
    throw new UsageError(`'${domainText}' is not a valid domain: ${(err as Error).message}`);
  }
  const dir = config.certs.dir;
  mkdirSync(dir, { recursive: true });
  const { certPem, keyPem } = generateSelfSigned(domain);
  const certPath = join(dir, `${domain}.crt`);
  const keyPath = join(dir, `${domain}.key`);
  writeFileSync(keyPath, keyPem, { mode: 0o600 });
  writeFileSync(certPath, certPem);
  process.stdout.write(`wrote ${certPath} and ${keyPath} (self-signed, valid one year)\n`);
  return 0;
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  if (err instanceof ConfigError || err instanceof UsageError || err instanceof ModuleError) {
    process.stderr.write(`chorus: ${err.message}\n`);
    process.exitCode = EXIT_USAGE;
  } else if ((err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
    process.stderr.write(`chorus: ${(err as Error).message}\n${USAGE}`);
    process.exitCode = EXIT_USAGE;
  } else {
    process.stderr.write(`chorus: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = EXIT_FAILED;
  }
}
