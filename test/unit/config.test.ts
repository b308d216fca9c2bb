import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ConfigError,
  configSchema,
  defaultConfig,
  loadConfig,
  modulesForHost,
  parseConfig,
  type ChorusConfig,
} from '../../src/config/index.ts';

const EXAMPLE = fileURLToPath(new URL('../../conf/chorus.yaml', import.meta.url));
const FILE = 'conf/test.yaml';

/** The module list an empty configuration must give, in load order. */
const DEFAULT_MODULES = [
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
];

/** What an empty configuration must give, with relative paths resolved against `cwd`. */
function expectedDefaults(cwd: string): ChorusConfig {
  return {
    hosts: [{ domain: 'localhost', modules_disabled: [] }],
    modules: [...DEFAULT_MODULES],
    module_options: { register: { allow_registration: false } },
    listeners: [
      { type: 'c2s', port: 5222, address: '::', tls: 'starttls', starttls_required: true },
      { type: 'c2s', port: 5223, address: '::', tls: 'direct', starttls_required: true },
    ],
    storage: { driver: 'sqlite', path: path.join(cwd, 'data/chorus.sqlite'), writer_nice: 10 },
    certs: { dir: path.join(cwd, 'certs') },
    auth: {
      scram_iterations: 4096,
      throttle: {
        delay_after: 3,
        delay_ms: 1000,
        max_delay_ms: 10000,
        ban_after: 10,
        ban_seconds: 300,
        window_seconds: 600,
      },
    },
    limits: {
      stanza_size: 262144,
      stanza_size_preauth: 16384,
      max_depth: 64,
      max_attributes: 64,
      max_resources_per_user: 10,
      handshake_timeout: 30,
      connections_per_minute: 120,
      bytes_per_second: 262144,
    },
    sessions: { conflict: 'replace_old' },
    cluster: { prefix: 'chorus:', workers: 1, heartbeat_ms: 2000, metrics_log_seconds: 60 },
    log: { level: 'info', format: 'auto' },
  };
}

/** The ConfigError `fn` throws. */
function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(ConfigError);
    return err as ConfigError;
  }
  expect.fail('expected a ConfigError');
}

function parseError(yaml: string, env: NodeJS.ProcessEnv = {}): ConfigError {
  return configError(() => parseConfig(yaml, { file: FILE, env, cwd: '/srv/chorus' }));
}

describe('config', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'chorus-config-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  describe('defaults', () => {
    it('an empty file yields a single-host localhost server', () => {
      const file = path.join(dir, 'empty.yaml');
      writeFileSync(file, '');
      expect(loadConfig({ path: file, env: {}, cwd: dir })).to.deep.equal(expectedDefaults(dir));
    });

    it('a file of comments only is the same as an empty one', () => {
      expect(parseConfig('# nothing here\n', { env: {}, cwd: dir })).to.deep.equal(expectedDefaults(dir));
    });

    it('a missing default file is allowed with allowMissing', () => {
      expect(loadConfig({ env: {}, cwd: dir, allowMissing: true })).to.deep.equal(expectedDefaults(dir));
    });

    it('a missing file is an error without allowMissing, naming the file', () => {
      const err = configError(() => loadConfig({ path: 'nope.yaml', env: {}, cwd: dir }));
      expect(err.message).to.equal(
        'nope.yaml: cannot read configuration: no such file (pass --config PATH or set CHORUS_CONFIG)',
      );
    });

    it('a missing file named by CHORUS_CONFIG is an error even with allowMissing', () => {
      const err = configError(() =>
        loadConfig({ env: { CHORUS_CONFIG: 'gone.yaml' }, cwd: dir, allowMissing: true }),
      );
      expect(err.message).to.match(/^gone\.yaml: cannot read configuration: no such file/);
    });

    it('the schema alone gives the same defaults, with relative paths', () => {
      const parsed = configSchema.parse({});
      expect(parsed.storage.path).to.equal('data/chorus.sqlite');
      expect(parsed.certs.dir).to.equal('certs');
      expect(defaultConfig()).to.deep.equal(parsed);
      // Each call returns fresh objects, so one consumer cannot change another's defaults.
      expect(defaultConfig().hosts).to.not.equal(defaultConfig().hosts);
    });

    it('sections left empty take their defaults', () => {
      const config = parseConfig('log:\n  # level: debug\nauth:\n  throttle:\n', { env: {}, cwd: dir });
      expect(config.log).to.deep.equal({ level: 'info', format: 'auto' });
      expect(config.auth.throttle.ban_after).to.equal(10);
    });
  });

  describe('the example conf/chorus.yaml', () => {
    it('loads to exactly the defaults', () => {
      expect(loadConfig({ path: EXAMPLE, env: {}, cwd: dir })).to.deep.equal(expectedDefaults(dir));
    });

    it('mentions every option of the schema', async () => {
      const { readFileSync } = await import('node:fs');
      const text = readFileSync(EXAMPLE, 'utf8');
      const keys = (o: object, prefix = ''): string[] =>
        Object.entries(o).flatMap(([k, v]) =>
          v !== null && typeof v === 'object' && !Array.isArray(v) && !prefix.startsWith('module_options')
            ? [k, ...keys(v as object, `${prefix}${k}.`)]
            : [k],
        );
      const all = new Set([...keys(defaultConfig()), 'modules', 'tls', 'cert', 'key', 'mechanisms']);
      for (const key of all) expect(text, key).to.match(new RegExp(`^\\s*(#\\s*)?(- )?${key}:`, 'm'));
    });
  });

  describe('values', () => {
    it('accepts a full configuration', () => {
      const config = parseConfig(
        [
          'hosts:',
          '  - domain: Example.ORG.',
          '    modules: [disco, ping]',
          '    tls: { cert: tls/example.crt, key: /etc/tls/example.key }',
          '  - domain: 127.0.0.1',
          '  - domain: "[::1]"',
          '    modules_disabled: [register]',
          'listeners:',
          '  - { port: 15222, address: 127.0.0.1, starttls_required: false }',
          '  - { port: 15222, address: "::1" }',
          'storage: { driver: memory }',
          'auth: { mechanisms: [scram-sha-256, PLAIN] }',
          'sessions: { conflict: refuse_new }',
        ].join('\n'),
        { env: {}, cwd: '/srv/chorus' },
      );
      expect(config.hosts.map((h) => h.domain)).to.deep.equal(['example.org', '127.0.0.1', '[::1]']);
      expect(config.hosts[0]!.tls).to.deep.equal({
        cert: '/srv/chorus/tls/example.crt',
        key: '/etc/tls/example.key',
      });
      expect(config.auth.mechanisms).to.deep.equal(['SCRAM-SHA-256', 'PLAIN']);
      expect(config.listeners[0]).to.deep.equal({
        type: 'c2s',
        port: 15222,
        address: '127.0.0.1',
        tls: 'starttls',
        starttls_required: false,
      });
      expect(config.storage.driver).to.equal('memory');
      expect(config.sessions.conflict).to.equal('refuse_new');
    });

    it('resolves relative paths against the working directory', () => {
      const config = parseConfig('storage: { path: db/x.sqlite }\ncerts: { dir: /abs/certs }\n', {
        env: {},
        cwd: '/srv/chorus',
      });
      expect(config.storage.path).to.equal('/srv/chorus/db/x.sqlite');
      expect(config.certs.dir).to.equal('/abs/certs');
      expect(parseConfig('storage: { path: ":memory:" }', { env: {} }).storage.path).to.equal(':memory:');
    });

    it('computes the module list of each host', () => {
      const config = parseConfig(
        'hosts:\n  - domain: a.example\n  - domain: b.example\n    modules: [disco, ping]\n  - domain: c.example\n    modules_disabled: [register, time]\n',
        { env: {} },
      );
      expect(modulesForHost(config, config.hosts[0]!)).to.deep.equal(DEFAULT_MODULES);
      expect(modulesForHost(config, config.hosts[1]!)).to.deep.equal(['disco', 'ping']);
      expect(modulesForHost(config, config.hosts[2]!)).to.deep.equal(
        DEFAULT_MODULES.filter((name) => name !== 'register' && name !== 'time'),
      );
    });
  });

  describe('errors name file:line:col and the path', () => {
    it('wrong type', () => {
      const err = parseError('log:\n  level: [debug]\n');
      expect(err.message).to.equal(
        `${FILE}:2:10: log.level must be one of 'fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent', got a list of 1`,
      );
      expect(err.issues).to.have.length(1);
      expect(err.issues[0]).to.include({ file: FILE, line: 2, column: 10, path: 'log.level' });
    });

    it('a quoted number is a string, not a port', () => {
      const err = parseError('listeners:\n  - port: "5222"\n');
      expect(err.message).to.equal(
        `${FILE}:2:11: listeners[0].port must be an integer from 1 to 65535, got "5222"`,
      );
    });

    it('port out of range', () => {
      const yaml = [
        '# listeners',
        'listeners:',
        '  - type: c2s',
        '    port: 70000',
        '    address: "::"',
      ].join('\n');
      expect(parseError(yaml).message).to.equal(
        `${FILE}:4:11: listeners[0].port must be an integer from 1 to 65535, got 70000`,
      );
    });

    it('writer_nice out of range', () => {
      const yaml = ['storage:', '  writer_nice: 20'].join('\n');
      expect(parseError(yaml).message).to.equal(
        `${FILE}:2:16: storage.writer_nice must be an integer from 0 to 19, got 20`,
      );
    });

    it('a missing required value points at its mapping', () => {
      const err = parseError('listeners:\n  - address: 127.0.0.1\n');
      expect(err.message).to.equal(
        `${FILE}:2:5: listeners[0].port is missing; it must be an integer from 1 to 65535`,
      );
    });

    it('an enum typo gets a suggestion', () => {
      const err = parseError('listeners:\n  - { port: 5222, tls: starttsl }\n');
      expect(err.message).to.equal(
        `${FILE}:2:24: listeners[0].tls must be one of 'starttls', 'direct', got "starttsl" (did you mean 'starttls'?)`,
      );
    });

    it('unknown top-level key with a suggestion', () => {
      const err = parseError('log:\n  level: info\nlistners:\n  - port: 5222\n');
      expect(err.message).to.equal(`${FILE}:3:1: unknown option 'listners' (did you mean 'listeners'?)`);
      expect(err.issues[0]!.path).to.equal('listners');
    });

    it('unknown nested key with a suggestion', () => {
      const err = parseError('auth:\n  throttle:\n    ban_seconds: 10\n    delay_aftr: 2\n');
      expect(err.message).to.equal(
        `${FILE}:4:5: unknown option 'delay_aftr' in auth.throttle (did you mean 'delay_after'?)`,
      );
    });

    it('unknown key without a close match lists the known ones', () => {
      const err = parseError('sessions:\n  frobnicate: yes\n');
      expect(err.message).to.equal(
        `${FILE}:2:3: unknown option 'frobnicate' in sessions; known options: conflict`,
      );
    });

    it('YAML syntax error', () => {
      const err = parseError('log:\n  level: info\n  format: [json\nauth: {}\n');
      expect(err.message).to.match(new RegExp(`^${FILE}:\\d+:\\d+: YAML syntax error: `));
      expect(err.issues[0]!.line).to.be.within(3, 4);
    });

    it('YAML duplicate key', () => {
      const err = parseError('log:\n  level: info\n  level: debug\n');
      expect(err.message).to.equal(`${FILE}:3:3: YAML syntax error: Map keys must be unique`);
    });

    it('a top level that is not a mapping', () => {
      expect(parseError('- a\n- b\n').message).to.equal(
        `${FILE}:1:1: the configuration must be a mapping of options (key: value) at the top level, got a list of 2`,
      );
    });

    it('duplicate domain, after lowercasing', () => {
      const err = parseError(
        'hosts:\n  - domain: example.org\n  - domain: localhost\n  - domain: Example.Org\n',
      );
      expect(err.message).to.equal(
        `${FILE}:4:13: hosts[2].domain duplicates hosts[0].domain 'example.org'; each domain may be listed once`,
      );
    });

    it('invalid domain', () => {
      const err = parseError('hosts:\n  - domain: "bad domain"\n');
      expect(err.message).to.match(
        new RegExp(`^${FILE}:2:13: hosts\\[0\\]\\.domain must be a domain name.*, got "bad domain"$`),
      );
    });

    it('duplicate listener port on the same address', () => {
      const err = parseError(
        'listeners:\n  - port: 5222\n  - port: 5223\n  - { port: 5222, address: 127.0.0.1 }\n',
      );
      expect(err.message).to.equal(
        `${FILE}:4:13: listeners[2].port 5222 on address '127.0.0.1' is already used by listeners[0] (address '::'); give each listener its own port`,
      );
    });

    it('the same port on two specific addresses is fine', () => {
      const config = parseConfig(
        'listeners:\n  - { port: 5222, address: 127.0.0.1 }\n  - { port: 5222, address: "::1" }\n',
        {
          env: {},
        },
      );
      expect(config.listeners).to.have.length(2);
    });

    it('too few scram iterations and cross-field limits', () => {
      const err = parseError('auth:\n  scram_iterations: 1000\nlimits:\n  stanza_size_preauth: 300000\n');
      expect(err.message.split('\n')).to.deep.equal([
        `${FILE}:2:21: auth.scram_iterations must be an integer from 4096 to 10000000, got 1000`,
        `${FILE}:4:24: limits.stanza_size_preauth must not exceed limits.stanza_size (262144), got 300000`,
      ]);
    });

    it('reports every problem, in file order', () => {
      const err = parseError('log:\n  level: loud\nlistners: []\nstorage:\n  driver: mysql\n');
      expect(err.issues.map((i) => i.line)).to.deep.equal([2, 3, 5]);
    });
  });

  describe('environment overrides', () => {
    it('apply with YAML scalar types', () => {
      const config = parseConfig('listeners:\n  - port: 5222\n  - { port: 5223, tls: direct }\n', {
        env: {
          CHORUS_STORAGE__DRIVER: 'memory',
          CHORUS_LOG__LEVEL: 'debug',
          CHORUS_LISTENERS__0__PORT: '15222',
          CHORUS_LISTENERS__1__STARTTLS_REQUIRED: 'false',
          CHORUS_AUTH__SCRAM_ITERATIONS: '10000',
          CHORUS_MODULE_OPTIONS__REGISTER__ALLOW_REGISTRATION: 'true',
          CHORUS_MODULES: '[disco, ping]',
          CHORUS_STORAGE__PATH: 'x: y # not YAML here',
          CHORUS_STORAGE__WRITER_NICE: '5',
          OTHER: 'ignored',
        },
        cwd: '/srv',
      });
      expect(config.storage).to.deep.equal({
        driver: 'memory',
        path: '/srv/x: y # not YAML here',
        writer_nice: 5,
      });
      expect(config.log.level).to.equal('debug');
      expect(config.listeners[0]!.port).to.equal(15222);
      expect(config.listeners[1]!.starttls_required).to.equal(false);
      expect(config.auth.scram_iterations).to.equal(10000);
      expect(config.module_options['register']).to.deep.equal({ allow_registration: true });
      expect(config.modules).to.deep.equal(['disco', 'ping']);
    });

    it('change one default listener without dropping the others', () => {
      const config = parseConfig('', {
        env: { CHORUS_LISTENERS__0__PORT: '15222', CHORUS_LISTENERS__2__PORT: '5269' },
      });
      expect(config.listeners.map((l) => [l.port, l.tls])).to.deep.equal([
        [15222, 'starttls'],
        [5223, 'direct'],
        [5269, 'starttls'],
      ]);
    });

    it('override values from the file', () => {
      const config = parseConfig('log:\n  level: warn\n', {
        env: { CHORUS_LOG__LEVEL: 'trace', CHORUS_LOG__FORMAT: '' },
      });
      expect(config.log).to.deep.equal({ level: 'trace', format: 'auto' });
    });

    it('an invalid value names the variable', () => {
      const err = parseError('', { CHORUS_LISTENERS__0__PORT: '70000' });
      expect(err.message).to.equal(
        'environment variable CHORUS_LISTENERS__0__PORT: listeners[0].port must be an integer from 1 to 65535, got 70000',
      );
      expect(err.issues[0]!.envVar).to.equal('CHORUS_LISTENERS__0__PORT');
    });

    it('an unknown option names the variable', () => {
      const err = parseError('', { CHORUS_STORAGE__DRIVR: 'memory' });
      expect(err.message).to.equal(
        "environment variable CHORUS_STORAGE__DRIVR: unknown option 'drivr' in storage (did you mean 'driver'?)",
      );
    });

    it('a single underscore between levels gets a hint', () => {
      const err = parseError('', { CHORUS_LOG_LEVEL: 'debug' });
      expect(err.message).to.equal(
        "environment variable CHORUS_LOG_LEVEL: unknown option 'log_level' (separate levels with a double underscore: CHORUS_LOG__LEVEL)",
      );
    });

    it('an index past the end of a list names the variable', () => {
      const err = parseError('', { CHORUS_HOSTS__3__DOMAIN: 'example.org' });
      expect(err.message).to.equal(
        'environment variable CHORUS_HOSTS__3__DOMAIN: index 3 is out of range: hosts has 1 entries (use 0 to 0 to change one, or 1 to add one)',
      );
    });

    it('descending into a scalar names the variable', () => {
      const err = parseError('', { CHORUS_LOG__LEVEL__X: '1' });
      expect(err.message).to.match(
        /^environment variable CHORUS_LOG__LEVEL__X: log\.level is "info", not a mapping/,
      );
    });

    it('errors from the file and from the environment are told apart', () => {
      const err = parseError('log:\n  level: loud\n', { CHORUS_AUTH__SCRAM_ITERATIONS: '12' });
      expect(err.message.split('\n')).to.deep.equal([
        `${FILE}:2:10: log.level must be one of 'fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent', got "loud"`,
        'environment variable CHORUS_AUTH__SCRAM_ITERATIONS: auth.scram_iterations must be an integer from 4096 to 10000000, got 12',
      ]);
    });

    it('CHORUS_CONFIG names the default file', () => {
      const file = path.join(dir, 'from-env.yaml');
      writeFileSync(file, 'hosts:\n  - domain: env.example\n');
      const config = loadConfig({ env: { CHORUS_CONFIG: file }, cwd: dir });
      expect(config.hosts[0]!.domain).to.equal('env.example');
      // An explicit path wins over CHORUS_CONFIG.
      const other = path.join(dir, 'explicit.yaml');
      writeFileSync(other, 'hosts:\n  - domain: explicit.example\n');
      expect(loadConfig({ path: other, env: { CHORUS_CONFIG: file }, cwd: dir }).hosts[0]!.domain).to.equal(
        'explicit.example',
      );
    });

    it('file errors from loadConfig carry the path as given', () => {
      const file = path.join(dir, 'bad.yaml');
      writeFileSync(file, 'listeners:\n  - port: 0\n');
      const err = configError(() => loadConfig({ path: file, env: {} }));
      expect(err.message).to.equal(
        `${file}:2:11: listeners[0].port must be an integer from 1 to 65535, got 0`,
      );
    });
  });
});
