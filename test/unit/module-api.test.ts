// The module API and loader (src/modules/api.ts, src/modules/loader.ts):
// dependency ordering, option validation, module resolution, and what a
// module's context does and undoes. Stanzas go through a real Router and Host
// with fake sessions, so the tests see what a client would see.
import { expect } from 'chai';
import { Element } from 'ltx';
import pino from 'pino';
import { z } from 'zod';
import { builtinModules } from '../../modules/index.ts';
import { InProcessDirectory } from '../../src/cluster/directory.ts';
import { Host, IqError } from '../../src/host.ts';
import { Jid } from '../../src/jid.ts';
import { defineModule, type ModuleDefinition } from '../../src/modules/api.ts';
import {
  ModuleError,
  loadModule,
  orderByDependencies,
  resolveModule,
  validateOptions,
  type LoadedModule,
  type ModuleEnvironment,
} from '../../src/modules/loader.ts';
import { Router } from '../../src/router/router.ts';
import type { SendFilterHandle, Session } from '../../src/session/session.ts';
import { MemoryDriver } from '../../src/storage/memory.ts';
import type { JsonValue } from '../../src/storage/types.ts';
import { startTestServer } from '../helpers/server.ts';

const DOMAIN = 'example.test';

/** A bare definition for the ordering tests; setup is never called. */
function stub(name: string, dependencies?: string[]): ModuleDefinition {
  return { name, description: `${name} for tests`, dependencies, setup: () => undefined };
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    if (err instanceof Error) return err;
    throw new Error(`rejected with a non-Error: ${String(err)}`, { cause: err });
  }
  throw new Error('expected the promise to reject');
}

function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    if (err instanceof Error) return err;
    throw new Error(`threw a non-Error: ${String(err)}`, { cause: err });
  }
  throw new Error('expected the function to throw');
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A client session as the router sees it; records what is delivered to it. */
class FakeSession implements Session {
  readonly id: string;
  readonly host: string;
  readonly secure = true;
  readonly remoteAddress = '127.0.0.1';
  available = true;
  priority = 0;
  presence: Element | null = null;
  readonly received: Element[] = [];
  readonly connected = true;
  readonly stanzasIn = 0;
  closed = false;

  constructor(readonly jid: Jid) {
    this.id = `fake-${jid.toString()}`;
    this.host = jid.domain;
  }

  private readonly shared = new Map<string, JsonValue>();

  getShared(key: string): JsonValue | undefined {
    return this.shared.get(key);
  }

  setShared(key: string, value: JsonValue | undefined): Promise<void> {
    if (value === undefined) this.shared.delete(key);
    else this.shared.set(key, value);
    return Promise.resolve();
  }

  send(stanza: Element): void {
    this.received.push(stanza);
  }

  sendNonza(): void {}

  addSendListener(): () => void {
    return () => undefined;
  }

  addSendFilter(): SendFilterHandle {
    return { release: () => undefined, remove: () => undefined };
  }

  close(): void {
    this.closed = true;
  }

  /** The last stanza delivered, or a failure naming what was expected. */
  last(): Element {
    const stanza = this.received.at(-1);
    if (!stanza) throw new Error(`${this.jid.toString()} received nothing`);
    return stanza;
  }
}

/** One host with the core defaults, a router, a session directory and memory storage. */
function harness() {
  const host = new Host(DOMAIN);
  const directory = new InProcessDirectory();
  const storage = new MemoryDriver();
  const log = pino({ level: 'silent' });
  const hosts = new Map([[DOMAIN, host]]);
  const router = new Router({
    hosts,
    directory,
    userExists: () => Promise.resolve(true),
    log,
  });
  router.installDefaults(host);
  const env: ModuleEnvironment = {
    log,
    storage,
    accountsFor: () => ({
      exists: () => Promise.resolve(true),
      create: () => Promise.resolve(),
      setPassword: () => Promise.resolve(),
      delete: () => Promise.resolve(true),
    }),
    sessions: {
      resources: (bare) => directory.resources(bare),
      get: (full) => directory.get(full),
    },
    route: (stanza) => void router.route(stanza, null),
    addServiceHost: (domain) => {
      const service = new Host(domain, 'service');
      router.installDefaults(service);
      hosts.set(domain, service);
      return { host: service, remove: () => hosts.delete(domain) };
    },
  };
  const loaded = new Map<string, LoadedModule>();
  return {
    host,
    router,
    storage,
    loaded,
    /** Validates options and loads the module as the server does. */
    async load(def: ModuleDefinition, options?: unknown): Promise<LoadedModule> {
      const validated = validateOptions(def, options, `module_options.${def.name}`);
      const mod = await loadModule(host, def, validated, env, loaded);
      loaded.set(def.name, mod);
      return mod;
    },
    session(full: string): FakeSession {
      const session = new FakeSession(Jid.parse(full));
      const outcome = directory.bind(session, 'replace_old', 10);
      if (!outcome.ok) throw new Error(`could not bind ${full}`);
      return session;
    },
  };
}

function iq(type: 'get' | 'set' | 'result', attrs: Record<string, string>, payload?: Element): Element {
  const stanza = new Element('iq', { xmlns: 'jabber:client', type, ...attrs });
  if (payload) stanza.cnode(payload);
  return stanza;
}

function errorCondition(stanza: Element): string | undefined {
  return stanza.getChild('error')?.children.find((c): c is Element => typeof c !== 'string')?.name;
}

describe('module loader', function () {
  describe('orderByDependencies', function () {
    it('puts every module after the modules it depends on', function () {
      const ordered = orderByDependencies(
        [stub('inbox', ['mam', 'roster']), stub('mam', ['roster']), stub('roster')],
        DOMAIN,
      );
      expect(ordered.map((d) => d.name)).to.deep.equal(['roster', 'mam', 'inbox']);
    });

    it('keeps the listed order of modules that do not depend on each other', function () {
      const ordered = orderByDependencies([stub('time'), stub('ping'), stub('disco')], DOMAIN);
      expect(ordered.map((d) => d.name)).to.deep.equal(['time', 'ping', 'disco']);
    });

    it('lists a module needed by several others once', function () {
      const ordered = orderByDependencies([stub('a', ['base']), stub('b', ['base']), stub('base')], DOMAIN);
      expect(ordered.map((d) => d.name)).to.deep.equal(['base', 'a', 'b']);
    });

    it('names both modules and the host when a dependency is missing', function () {
      const err = thrown(() => orderByDependencies([stub('ping'), stub('muc', ['mam'])], DOMAIN));
      expect(err).to.be.instanceOf(ModuleError);
      expect(err.message).to.include("'muc'").and.include("'mam'").and.include(DOMAIN);
    });

    it('shows the whole path of a dependency cycle', function () {
      const err = thrown(() =>
        orderByDependencies([stub('a', ['b']), stub('b', ['c']), stub('c', ['a']), stub('d')], DOMAIN),
      );
      expect(err).to.be.instanceOf(ModuleError);
      expect(err.message).to.include('a -> b -> c -> a');
    });

    it('reports a module that depends on itself', function () {
      const err = thrown(() => orderByDependencies([stub('selfish', ['selfish'])], DOMAIN));
      expect(err).to.be.instanceOf(ModuleError);
      expect(err.message).to.include('selfish -> selfish');
    });
  });

  describe('validateOptions', function () {
    const withOptions = defineModule({
      name: 'greeter',
      description: 'test module with options',
      options: z
        .object({
          text: z.string().default('hello'),
          limits: z.object({ max: z.number().int().min(1).default(5) }).prefault({}),
        })
        .strict(),
      setup: () => undefined,
    });

    it('fills in the defaults when no options are given', function () {
      expect(validateOptions(withOptions, undefined, 'module_options.greeter')).to.deep.equal({
        text: 'hello',
        limits: { max: 5 },
      });
    });

    it('names module_options.<module>.<option> for a wrong value', function () {
      const err = thrown(() => validateOptions(withOptions, { text: 42 }, 'module_options.greeter'));
      expect(err).to.be.instanceOf(ModuleError);
      expect(err.message).to.include('module_options.greeter.text');
    });

    it('names the full path of a nested option', function () {
      const err = thrown(() =>
        validateOptions(withOptions, { limits: { max: 0 } }, 'module_options.greeter'),
      );
      expect(err.message).to.include('module_options.greeter.limits.max');
    });

    it('names an unknown option of a strict schema', function () {
      const err = thrown(() => validateOptions(withOptions, { colour: 'red' }, 'module_options.greeter'));
      expect(err).to.be.instanceOf(ModuleError);
      expect(err.message).to.include('module_options.greeter').and.include('colour');
    });

    it('refuses to start a server whose module options are wrong, naming the option', async function () {
      const err = await rejection(
        startTestServer({
          yaml: 'modules: [disco, version]\nmodule_options: { version: { show_os: maybe } }',
        }),
      );
      expect(err).to.be.instanceOf(ModuleError);
      expect(err.message).to.include('module_options.version.show_os');
    });
  });

  describe('resolveModule', function () {
    it('finds a built-in module by name', async function () {
      const def = await resolveModule('ping');
      expect(def.name).to.equal('ping');
      expect(def.setup).to.be.a('function');
    });

    it('lists every built-in module when the name is unknown', async function () {
      const err = await rejection(resolveModule('pnig'));
      expect(err).to.be.instanceOf(ModuleError);
      expect(err.message).to.include("'pnig'");
      for (const name of Object.keys(builtinModules)) expect(err.message).to.include(name);
    });

    it('loads a module file by a path relative to the working directory', async function () {
      // The tests run from the repository root.
      expect((await resolveModule('./docs/examples/motd.ts')).name).to.equal('motd');
      expect((await resolveModule('docs/examples/motd.ts')).name).to.equal('motd');
    });

    it('loads a module file by an absolute path', async function () {
      const def = await resolveModule(`${process.cwd()}/docs/examples/motd.ts`);
      expect(def.name).to.equal('motd');
    });

    it('says so when a file has no module as its default export', async function () {
      const err = await rejection(resolveModule('./src/stanza.ts'));
      expect(err).to.be.instanceOf(ModuleError);
      expect(err.message).to.include('stanza.ts').and.include('does not export a module');
    });
  });
});

describe('module context', function () {
  describe('dependencies', function () {
    const provider = defineModule({
      name: 'provider',
      description: 'offers an API',
      setup: () => ({ answer: () => 42 }),
    });

    it('hands a module the API its declared dependency returned from setup', async function () {
      const h = harness();
      await h.load(provider);
      let seen: number | undefined;
      await h.load(
        defineModule({
          name: 'consumer',
          description: 'uses the provider',
          dependencies: ['provider'],
          setup(ctx) {
            seen = ctx.dependency<{ answer(): number }>('provider').answer();
          },
        }),
      );
      expect(seen).to.equal(42);
    });

    it('refuses ctx.dependency() for a module not declared in dependencies', async function () {
      const h = harness();
      await h.load(provider);
      const err = await rejection(
        h.load(
          defineModule({
            name: 'sneaky',
            description: 'reaches for an undeclared module',
            setup(ctx) {
              ctx.dependency('provider');
            },
          }),
        ),
      );
      expect(err).to.be.instanceOf(ModuleError);
      expect(err.message).to.include("'sneaky'").and.include("'provider'");
      expect(h.loaded.has('sneaky')).to.equal(false);
    });

    it('refuses a declared dependency that is not loaded', async function () {
      const h = harness();
      const err = await rejection(
        h.load(
          defineModule({
            name: 'early',
            description: 'loaded before its dependency',
            dependencies: ['provider'],
            setup(ctx) {
              ctx.dependency('provider');
            },
          }),
        ),
      );
      expect(err).to.be.instanceOf(ModuleError);
      expect(err.message).to.include("'provider'").and.include('not loaded');
    });
  });

  describe('hook priorities', function () {
    for (const priority of [-1000, -5000]) {
      it(`refuses priority ${priority} (not above the core defaults)`, async function () {
        const h = harness();
        const err = await rejection(
          h.load(
            defineModule({
              name: 'low',
              description: 'hooks too low',
              setup(ctx) {
                ctx.hook('message/bare', () => true, priority);
              },
            }),
          ),
        );
        expect(err).to.be.instanceOf(ModuleError);
        expect(err.message).to.include("'low'").and.include('-1000');
      });
    }

    it('accepts priority -999, which runs just before the core default', async function () {
      const h = harness();
      const order: string[] = [];
      await h.load(
        defineModule({
          name: 'late',
          description: 'hooks just above the default',
          setup(ctx) {
            ctx.hook('message/bare', () => void order.push('late'), -999);
            ctx.hook('message/bare', () => void order.push('normal'));
          },
        }),
      );
      const alice = h.session('alice@example.test/a');
      const bob = h.session('bob@example.test/b');
      h.router.fromClient(
        alice,
        new Element('message', { to: 'bob@example.test', type: 'chat' }).c('body').t('hi').root(),
      );
      expect(order).to.deep.equal(['normal', 'late']);
      expect(bob.received).to.have.length(1); // the default still delivered it
    });

    it('rolls back what a setup registered before it failed', async function () {
      const h = harness();
      await rejection(
        h.load(
          defineModule({
            name: 'half',
            description: 'fails midway',
            setup(ctx) {
              ctx.addFeature('urn:test:half');
              ctx.addIdentity({ category: 'test', type: 'half' });
              ctx.hook('message/host', () => true);
              throw new Error('setup failed');
            },
          }),
        ),
      );
      expect(h.host.features()).not.to.include('urn:test:half');
      expect(h.host.identities()).to.deep.equal([]);
      // Only the core default for message/host is left: a chat message to the host bounces.
      const alice = h.session('alice@example.test/a');
      h.router.fromClient(alice, new Element('message', { to: DOMAIN, type: 'chat' }));
      expect(errorCondition(alice.last())).to.equal('service-unavailable');
    });
  });

  describe('unload', function () {
    it('removes every hook, IQ handler, feature, identity and timer the module registered', async function () {
      const h = harness();
      const hits: string[] = [];
      let unloadSawHooks: boolean | undefined;
      const mod = await h.load(
        defineModule({
          name: 'everything',
          description: 'registers one of each',
          setup(ctx) {
            ctx.addFeature('urn:test:everything');
            ctx.addIdentity({ category: 'test', type: 'everything', name: 'Everything' });
            ctx.hook('message/bare', ({ stanza }) => {
              hits.push(`message:${stanza.getChildText('body') ?? ''}`);
              return true;
            });
            ctx.handleIq('get', 'urn:test:everything', 'query', ({ reply }) => {
              hits.push('iq');
              reply();
              return true;
            });
            ctx.setTimeout(() => hits.push('timeout'), 30);
            ctx.setInterval(() => hits.push('interval'), 10);
            ctx.onUnload(() => {
              unloadSawHooks = h.host.events.has('iq-get/host/urn:test:everything:query');
            });
          },
        }),
      );
      const alice = h.session('alice@example.test/a');
      const bob = h.session('bob@example.test/b');
      const message = (body: string) =>
        new Element('message', { to: 'bob@example.test', type: 'chat' }).c('body').t(body).root();
      const query = () =>
        iq('get', { id: 'q1', to: DOMAIN }, new Element('query', { xmlns: 'urn:test:everything' }));

      // Loaded: the module takes the message and answers the IQ.
      expect(h.host.features()).to.include('urn:test:everything');
      expect(h.host.identities().map((i) => i.type)).to.include('everything');
      h.router.fromClient(alice, message('before'));
      h.router.fromClient(alice, query());
      expect(hits).to.deep.equal(['message:before', 'iq']);
      expect(bob.received).to.have.length(0);
      expect(alice.last().attrs.type).to.equal('result');

      await mod.unload();
      hits.length = 0;
      alice.received.length = 0;

      expect(h.host.features()).not.to.include('urn:test:everything');
      expect(h.host.identities()).to.deep.equal([]);
      expect(unloadSawHooks).to.equal(false);
      // The events no longer reach the module: the core defaults handle them.
      h.router.fromClient(alice, message('after'));
      h.router.fromClient(alice, query());
      expect(bob.received.map((s) => s.getChildText('body'))).to.deep.equal(['after']);
      expect(errorCondition(alice.last())).to.equal('service-unavailable');
      // Neither the pending timeout nor the interval fires any more.
      await sleep(60);
      expect(hits).to.deep.equal([]);
    });

    it('keeps a feature that another module still registers', async function () {
      const h = harness();
      const feature = (name: string) =>
        defineModule({
          name,
          description: 'adds a shared feature',
          setup: (ctx) => ctx.addFeature('urn:test:shared'),
        });
      const first = await h.load(feature('first'));
      await h.load(feature('second'));
      await first.unload();
      expect(h.host.features()).to.include('urn:test:shared');
    });

    it('cancels a timer that the module cancelled itself, and an interval keeps firing until then', async function () {
      const h = harness();
      let ticks = 0;
      let fired = false;
      await h.load(
        defineModule({
          name: 'timers',
          description: 'uses timers',
          setup(ctx) {
            const cancel = ctx.setTimeout(() => (fired = true), 20);
            cancel();
            const stop = ctx.setInterval(() => {
              ticks++;
              if (ticks === 3) stop();
            }, 5);
          },
        }),
      );
      await sleep(60);
      expect(fired).to.equal(false);
      expect(ticks).to.equal(3);
    });
  });

  describe('handleIq targets', function () {
    const NS = 'urn:test:targets';
    /** Answers with the target it was registered for, so the test sees which handler ran. */
    const targets = defineModule({
      name: 'targets',
      description: 'one handler per target',
      setup(ctx) {
        for (const target of ['host', 'self', 'bare', 'full'] as const) {
          ctx.handleIq(
            'get',
            NS,
            'which',
            ({ reply, to }) => {
              reply(new Element('which', { xmlns: NS, target, to: to.toString() }));
              return true;
            },
            [target],
          );
        }
        // Default targets: the server only.
        ctx.handleIq('get', NS, 'hostonly', ({ reply }) => {
          reply();
          return true;
        });
      },
    });

    async function ask(to: string | undefined, name = 'which'): Promise<Element> {
      const h = harness();
      await h.load(targets);
      const alice = h.session('alice@example.test/desk');
      h.session('bob@example.test/phone');
      const attrs: Record<string, string> = { id: 't1' };
      if (to !== undefined) attrs.to = to;
      h.router.fromClient(alice, iq('get', attrs, new Element(name, { xmlns: NS })));
      return alice.last();
    }

    const cases: [string, string | undefined, string][] = [
      ['the server', DOMAIN, 'host'],
      ['no address (the account itself)', undefined, 'self'],
      ["the sender's own bare JID", 'alice@example.test', 'self'],
      ["another user's bare JID", 'bob@example.test', 'bare'],
      ["another user's full JID", 'bob@example.test/phone', 'full'],
    ];
    for (const [what, to, target] of cases) {
      it(`routes an IQ to ${what} to the '${target}' handler`, async function () {
        const answer = await ask(to);
        expect(answer.attrs.type).to.equal('result');
        expect(answer.getChild('which')?.attrs.target).to.equal(target);
      });
    }

    it('listens to the server only when no targets are given', async function () {
      expect((await ask(DOMAIN, 'hostonly')).attrs.type).to.equal('result');
      const toSelf = await ask(undefined, 'hostonly');
      expect(toSelf.attrs.type).to.equal('error');
      expect(errorCondition(toSelf)).to.equal('service-unavailable');
    });
  });

  describe('sending', function () {
    interface PingApi {
      ping(to: string, timeoutMs?: number): Promise<Element>;
      notify(to: string, text: string): void;
    }
    const pinger = defineModule({
      name: 'pinger',
      description: 'sends stanzas from the server',
      setup(ctx): PingApi {
        return {
          ping: (to, timeoutMs) =>
            ctx.sendIq(iq('get', { to }, new Element('ping', { xmlns: 'urn:xmpp:ping' })), timeoutMs),
          notify: (to, text) =>
            ctx.send(
              new Element('message', { from: ctx.host, to, type: 'headline' }).c('body').t(text).root(),
            ),
        };
      },
    });

    it('delivers a stanza the module sends from the host', async function () {
      const h = harness();
      const api = (await h.load(pinger)).api as PingApi;
      const bob = h.session('bob@example.test/phone');
      api.notify('bob@example.test/phone', 'maintenance at noon');
      expect(bob.last().attrs.from).to.equal(DOMAIN);
      expect(bob.last().getChildText('body')).to.equal('maintenance at noon');
    });

    it('resolves sendIq with the addressee answer', async function () {
      const h = harness();
      const api = (await h.load(pinger)).api as PingApi;
      const bob = h.session('bob@example.test/phone');
      const answer = api.ping('bob@example.test/phone');
      const request = bob.last();
      expect(request.attrs).to.include({ type: 'get', from: DOMAIN, to: 'bob@example.test/phone' });
      expect(request.attrs.id).to.be.a('string').with.length.above(0);
      h.router.fromClient(bob, iq('result', { id: request.attrs.id, to: DOMAIN }));
      const result = await answer;
      expect(result.attrs.from).to.equal('bob@example.test/phone');
    });

    it('does not settle sendIq with an answer from someone else', async function () {
      const h = harness();
      const api = (await h.load(pinger)).api as PingApi;
      const bob = h.session('bob@example.test/phone');
      const mallory = h.session('mallory@example.test/x');
      const answer = api.ping('bob@example.test/phone', 80);
      h.router.fromClient(mallory, iq('result', { id: bob.last().attrs.id, to: DOMAIN }));
      const err = await rejection(answer);
      expect(err).to.be.instanceOf(IqError);
      expect(err.message).to.include('timed out');
    });

    it('rejects sendIq with the error stanza when the addressee answers with an error', async function () {
      const h = harness();
      const api = (await h.load(pinger)).api as PingApi;
      const bob = h.session('bob@example.test/phone');
      const answer = api.ping('bob@example.test/phone');
      const error = new Element('iq', { type: 'error', id: bob.last().attrs.id, to: DOMAIN });
      error
        .c('error', { type: 'cancel' })
        .c('feature-not-implemented', { xmlns: 'urn:ietf:params:xml:ns:xmpp-stanzas' });
      h.router.fromClient(bob, error);
      const err = await rejection(answer);
      expect(err).to.be.instanceOf(IqError);
      expect((err as IqError).stanza?.attrs.type).to.equal('error');
    });
  });

  describe('the rest of the context', function () {
    it('gives the host, its JID, the validated options and the registrations of every module', async function () {
      const h = harness();
      await h.load(
        defineModule({
          name: 'other',
          description: 'registers something',
          setup(ctx) {
            ctx.addFeature('urn:test:other');
            ctx.addIdentity({ category: 'test', type: 'other' });
          },
        }),
      );
      let seen:
        { host: string; jid: string; options: unknown; features: string[]; identities: string[] } | undefined;
      await h.load(
        defineModule({
          name: 'observer',
          description: 'reads the context',
          options: z.object({ level: z.number().default(3) }).strict(),
          setup(ctx) {
            ctx.addFeature('urn:test:observer');
            seen = {
              host: ctx.host,
              jid: ctx.hostJid.toString(),
              options: ctx.options,
              features: ctx.features(),
              identities: ctx.identities().map((i) => i.type),
            };
          },
        }),
        { level: 7 },
      );
      expect(seen).to.deep.equal({
        host: DOMAIN,
        jid: DOMAIN,
        options: { level: 7 },
        features: ['urn:test:observer', 'urn:test:other'],
        identities: ['other'],
      });
    });

    it("keeps a module's storage in the host's namespace", async function () {
      const h = harness();
      const mod = await h.load(
        defineModule({
          name: 'notes',
          description: 'stores notes',
          setup: (ctx) => ({
            save: (user: string, text: string) =>
              ctx.storage.keyval<{ text: string }>('notes').set(user, { text }),
          }),
        }),
      );
      await (mod.api as { save(user: string, text: string): Promise<void> }).save('alice', 'buy milk');
      expect(await h.storage.keyval(DOMAIN, 'notes').get('alice')).to.deep.equal({ text: 'buy milk' });
      expect(await h.storage.keyval('other.test', 'notes').get('alice')).to.equal(null);
    });

    it('waits for an async setup and keeps the API it resolves to', async function () {
      const h = harness();
      const mod = await h.load(
        defineModule({
          name: 'slow',
          description: 'sets up asynchronously',
          async setup() {
            await sleep(5);
            return { ready: true };
          },
        }),
      );
      expect(mod.api).to.deep.equal({ ready: true });
    });

    it('lets a module find the sessions of a user', async function () {
      const h = harness();
      let count: (bare: string) => Promise<number> = () => Promise.resolve(-1);
      await h.load(
        defineModule({
          name: 'counter',
          description: 'counts sessions',
          setup(ctx) {
            count = async (bare) => (await ctx.sessions.resources(bare)).length;
          },
        }),
      );
      h.session('carol@example.test/one');
      h.session('carol@example.test/two');
      expect(await count('carol@example.test')).to.equal(2);
      expect(await count('dave@example.test')).to.equal(0);
    });
  });
});
