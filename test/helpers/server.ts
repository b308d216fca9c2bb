// Starts a real Chorus server in this process, on free loopback ports, with
// its own certificate directory and in-memory (or SQLite) storage, for
// protocol and interop tests.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { parseConfig } from '../../src/config/index.ts';
import type { ChorusConfig } from '../../src/config/index.ts';
import { Server } from '../../src/server.ts';
import { MemoryDriver } from '../../src/storage/memory.ts';

export interface TestServer {
  server: Server;
  domain: string;
  /** STARTTLS (required) port. */
  port: number;
  /** Direct TLS port (XEP-0368). */
  tlsPort: number;
  dir: string;
  addUser(username: string, password: string): Promise<void>;
  stop(): Promise<void>;
}

export interface TestServerOptions {
  /** Extra YAML merged at the top level (as text, appended to the generated config). */
  yaml?: string;
  /** Use a SQLite file in the temporary directory instead of memory storage. */
  sqlite?: boolean;
  domain?: string;
  /** limits.connections_per_minute and limits.bytes_per_second (0, off, unless given). */
  connectionsPerMinute?: number;
  bytesPerSecond?: number;
  /** Set CHORUS_TEST_LOG=debug to see the server's log. */
  logLevel?: string;
}

// The certificate for `localhost` is generated once per test run and shared,
// since RSA key generation is the slowest part of starting a server.
const sharedCertDir = mkdtempSync(join(tmpdir(), 'chorus-test-certs-'));
process.on('exit', () => rmSync(sharedCertDir, { recursive: true, force: true }));

export async function startTestServer(opts: TestServerOptions = {}): Promise<TestServer> {
  const domain = opts.domain ?? 'localhost';
  const dir = mkdtempSync(join(tmpdir(), 'chorus-test-'));
  const yaml = [
    `hosts: [{ domain: ${domain} }]`,
    'listeners:',
    '  - { port: 1, address: 127.0.0.1, tls: starttls }',
    '  - { port: 2, address: 127.0.0.1, tls: direct }',
    `storage: { driver: ${opts.sqlite ? 'sqlite' : 'memory'}, path: ${join(dir, 'chorus.sqlite')} }`,
    `certs: { dir: ${sharedCertDir} }`,
    opts.yaml ?? '',
  ].join('\n');
  const config: ChorusConfig = parseConfig(yaml, { file: 'test-config.yaml', env: {} });
  // Port 0: let the kernel pick free ports (the schema wants 1-65535 in files).
  for (const l of config.listeners) l.port = 0;
  // Tests open many connections from 127.0.0.1 quickly; the abuse limits are
  // off unless a test asks for them (see the hardening tests).
  config.limits.connections_per_minute = opts.connectionsPerMinute ?? 0;
  config.limits.bytes_per_second = opts.bytesPerSecond ?? 0;
  const log = pino({ level: opts.logLevel ?? process.env.CHORUS_TEST_LOG ?? 'silent' });
  const server = new Server(config, { log, storage: opts.sqlite ? undefined : new MemoryDriver() });
  try {
    await server.start();
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const [starttls, direct] = server.listeners;
  return {
    server,
    domain,
    port: starttls!.port,
    tlsPort: direct!.port,
    dir,
    addUser: (username, password) => server.accounts.create(domain, username, password),
    async stop() {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
