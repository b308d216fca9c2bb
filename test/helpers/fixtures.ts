// Shared set-up for protocol tests: a server per describe block, numbered
// test users, logged-in clients that are cleaned up after each test, and the
// small presence steps many tests start with.
import { startTestServer, type TestServer, type TestServerOptions } from './server.ts';
import { ClientPool, XmppClient } from './xmpp-client.ts';

const NS_ROSTER = 'jabber:iq:roster';

export interface ServerFixtureOptions extends TestServerOptions {
  /** Accounts to create once the server runs: username to password. */
  users?: Record<string, string>;
}

/**
 * Registers before/after hooks (in the calling describe block) that start a
 * server with `opts` and stop it again. The returned object stands for that
 * server: its members may be used only while the hooks have it running.
 */
export function useServer(opts: ServerFixtureOptions = {}): TestServer {
  let current: TestServer | undefined;
  const running = (): TestServer => {
    if (!current) throw new Error('the test server is not running (used outside a test?)');
    return current;
  };
  before(async () => {
    current = await startTestServer(opts);
    for (const [username, password] of Object.entries(opts.users ?? {})) {
      await current.addUser(username, password);
    }
  });
  after(async () => {
    const s = current;
    current = undefined;
    await s?.stop();
  });
  return {
    get server() {
      return running().server;
    },
    get domain() {
      return running().domain;
    },
    get port() {
      return running().port;
    },
    get tlsPort() {
      return running().tlsPort;
    },
    get dir() {
      return running().dir;
    },
    addUser: (username, password) => running().addUser(username, password),
    stop: () => running().stop(),
  };
}

/**
 * useServer, plus a ClientPool for that server whose clients are destroyed
 * after each test (an afterEach hook in the calling describe block).
 */
export function useServerAndPool(opts: ServerFixtureOptions = {}): { server: TestServer; pool: ClientPool } {
  const server = useServer(opts);
  const pool = new ClientPool(() => ({ port: server.port }));
  afterEach(() => pool.destroyAll());
  return { server, pool };
}

export interface Users {
  /** Every client made through `login` or `track` since the last cleanup. */
  readonly clients: XmppClient[];
  /** Creates a user `<prefix><n>` (n counts up across the file) and returns its name. */
  newUser(server: TestServer, prefix: string): Promise<string>;
  /** Connects (STARTTLS port of `server`) and logs in as `user/resource`. */
  login(server: TestServer, user: string, resource?: string): Promise<XmppClient>;
  /** Logged in, roster fetched, available: an interested, available resource. */
  online(server: TestServer, user: string, resource: string): Promise<XmppClient>;
  /** Adds a client made elsewhere to those cleaned up after each test. */
  track(c: XmppClient): XmppClient;
}

/**
 * Test users sharing one password; registers an afterEach hook (where it is
 * called) that ends every client made through it: `destroy` cuts the
 * connections, `shutdown` closes the streams first.
 */
export function testUsers(password: string, cleanup: 'destroy' | 'shutdown' = 'destroy'): Users {
  let seq = 0;
  const clients: XmppClient[] = [];
  afterEach(async () => {
    const all = clients.splice(0);
    if (cleanup === 'destroy') for (const c of all) c.destroy();
    else await Promise.all(all.map((c) => c.shutdown()));
  });
  const track = (c: XmppClient): XmppClient => {
    clients.push(c);
    return c;
  };
  const login = async (server: TestServer, user: string, resource = 'r'): Promise<XmppClient> => {
    const c = track(await XmppClient.connect({ port: server.port, name: `${user}/${resource}` }));
    await c.login(user, password, { resource });
    return c;
  };
  return {
    clients,
    track,
    login,
    async online(server, user, resource) {
      const c = await login(server, user, resource);
      await fetchRoster(c);
      await available(c);
      return c;
    },
    async newUser(server, prefix) {
      const name = `${prefix}${++seq}`;
      await server.addUser(name, password);
      return name;
    },
  };
}

export interface JidUsers {
  /** Every client made through `login` since the last cleanup. */
  readonly clients: XmppClient[];
  /** Creates a user `<prefix><n>` (n counts up across the file) and returns its bare JID. */
  newUser(prefix: string): Promise<string>;
  /** Connects to `server()` and logs in as `bare/resource`. */
  login(bare: string, resource: string): Promise<XmppClient>;
}

/**
 * Like testUsers, for tests that name users by bare JID and use one server
 * (`server()` is read when a user is made or logs in).
 */
export function testJids(
  password: string,
  server: () => TestServer,
  cleanup: 'destroy' | 'shutdown' = 'shutdown',
): JidUsers {
  const users = testUsers(password, cleanup);
  return {
    clients: users.clients,
    async newUser(prefix) {
      const name = await users.newUser(server(), prefix);
      return `${name}@${server().domain}`;
    },
    async login(bare, resource) {
      const c = users.track(await XmppClient.connect({ port: server().port, name: `${bare}/${resource}` }));
      await c.login(bare.split('@')[0]!, password, { resource });
      return c;
    },
  };
}

/** The bare JID of a logged-in client. */
export function bare(c: XmppClient): string {
  return c.jid!.split('/')[0]!;
}

/** Initial (or updated) presence; waits for the server's reflection of it. */
export async function available(c: XmppClient, inner = ''): Promise<void> {
  c.send(`<presence>${inner}</presence>`);
  await c.expect(`<presence from='${c.jid}' to='${c.jid}'/>`);
}

/** Asks for the roster and waits for the result: the resource becomes interested. */
export async function fetchRoster(c: XmppClient): Promise<void> {
  const id = c.nextId('roster');
  c.send(`<iq type='get' id='${id}'><query xmlns='${NS_ROSTER}'/></iq>`);
  await c.expect(`<iq type='result' id='${id}'/>`);
}

/** Reads as many stanzas as there are patterns, matching them in any order. */
export async function expectAll(c: XmppClient, patterns: string[]): Promise<void> {
  const remaining = [...patterns];
  while (remaining.length) {
    const event = await c.next();
    if (event.kind !== 'element') throw new Error(`${c.name}: expected a stanza, got ${event.kind}`);
    const i = remaining.findIndex((p) => c.check(p, event.element) === null);
    if (i < 0) {
      throw new Error(
        `${c.name}: unexpected ${event.element.toString()}\n  still expecting: ${remaining.join('\n    ')}`,
      );
    }
    remaining.splice(i, 1);
  }
}
