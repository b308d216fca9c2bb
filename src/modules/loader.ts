// Loads modules for a host, validates their options, orders them by their
// declared dependencies, and unloads them with everything they registered.
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Element } from 'ltx';
import type { Logger } from 'pino';
import type { z } from 'zod';
import type { Handler } from '../events.ts';
import type { Host } from '../host.ts';
import { DEFAULT_PRIORITY } from '../router/router.ts';
import type { ChorusEvents, IqEvent } from '../router/events.ts';
import type { JsonValue, StorageDriver } from '../storage/types.ts';
import type {
  AccountService,
  ClusterService,
  IqTarget,
  ModuleContext,
  ModuleDefinition,
  ServiceContext,
  SessionService,
  StorageService,
} from './api.ts';
import { builtinModules } from '../../modules/index.ts';

export class ModuleError extends Error {}

/** What the loader needs from the server. */
export interface ModuleEnvironment {
  log: Logger;
  storage: StorageDriver;
  accountsFor(host: string): AccountService;
  sessions: SessionService;
  route(stanza: Element): void;
  /** The cluster bus, when this node is part of a cluster. */
  cluster?: {
    readonly nodeId: string;
    broadcast(topic: string, data: JsonValue): void;
    onBroadcast(topic: string, handler: (data: JsonValue, fromNode: string) => void): () => void;
    request(node: string, topic: string, data: JsonValue, timeoutMs?: number): Promise<JsonValue | null>;
    onRequest(
      topic: string,
      handler: (data: JsonValue, fromNode: string) => Promise<JsonValue | null> | JsonValue | null,
    ): () => void;
    readonly nodes: readonly string[];
  } | null;
  /** Creates a service host for a subdomain; returns it and a remover. */
  addServiceHost(domain: string): { host: Host; remove(): void };
}

export interface LoadedModule {
  definition: ModuleDefinition;
  api: unknown;
  unload(): Promise<void>;
}

/** Finds a module definition: a built-in name, or a path to a module file. */
export async function resolveModule(name: string): Promise<ModuleDefinition> {
  // Own properties only: 'constructor' or '__proto__' are not module names.
  if (Object.hasOwn(builtinModules, name)) return (await builtinModules[name]!()).default;
  if (name.includes('/') || name.endsWith('.ts') || name.endsWith('.js')) {
    const path = isAbsolute(name) ? name : resolve(process.cwd(), name);
    let mod: { default?: ModuleDefinition };
    try {
      mod = (await import(pathToFileURL(path).href)) as { default?: ModuleDefinition };
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'ERR_MODULE_NOT_FOUND' && (err as Error).message.includes(path)) {
        throw new ModuleError(`module file ${path} does not exist (paths are relative to ${process.cwd()})`);
      }
      throw new ModuleError(`module file ${path} failed to load: ${(err as Error).message}`);
    }
    if (typeof mod.default?.setup !== 'function') {
      throw new ModuleError(`${path} does not export a module (default export from defineModule)`);
    }
    return mod.default;
  }
  const known = Object.keys(builtinModules).sort().join(', ');
  throw new ModuleError(`unknown module '${name}'; built-in modules are: ${known}`);
}

/** Puts modules after their dependencies; reports missing ones and cycles. */
export function orderByDependencies(defs: ModuleDefinition[], host: string): ModuleDefinition[] {
  const byName = new Map(defs.map((d) => [d.name, d]));
  const ordered: ModuleDefinition[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (def: ModuleDefinition, path: string[]) => {
    if (state.get(def.name) === 'done') return;
    if (state.get(def.name) === 'visiting') {
      throw new ModuleError(
        `modules on ${host} depend on each other in a cycle: ${[...path, def.name].join(' -> ')}`,
      );
    }
    state.set(def.name, 'visiting');
    for (const dep of def.dependencies ?? []) {
      const d = byName.get(dep);
      if (!d)
        throw new ModuleError(
          `module '${def.name}' on ${host} needs module '${dep}': add it to the module list`,
        );
      visit(d, [...path, def.name]);
    }
    state.set(def.name, 'done');
    ordered.push(def);
  };
  for (const def of defs) visit(def, []);
  return ordered;
}

export function validateOptions(def: ModuleDefinition, raw: unknown, where: string): unknown {
  if (!def.options) {
    // A module without options takes none: anything given is a typo to report.
    if (raw !== undefined && raw !== null && Object.keys(raw as object).length > 0) {
      throw new ModuleError(
        `module '${def.name}' takes no options, but ${where} sets ${Object.keys(raw as object).join(', ')}`,
      );
    }
    return {};
  }
  const result = (def.options as z.ZodType).safeParse(raw ?? {});
  if (result.success) return result.data;
  const problems = result.error.issues
    .flatMap((i) => {
      // Report unknown keys at their own path, not at the object holding them.
      const keys = i.code === 'unrecognized_keys' ? i.keys : [null];
      return keys.map((key) => {
        const path = [where, ...i.path.map(String), ...(key === null ? [] : [key])].join('.');
        return key === null ? `${path}: ${i.message}` : `${path}: unknown option`;
      });
    })
    .join('; ');
  throw new ModuleError(`invalid options for module '${def.name}': ${problems}`);
}

export async function loadModule(
  host: Host,
  def: ModuleDefinition,
  options: unknown,
  env: ModuleEnvironment,
  loaded: ReadonlyMap<string, LoadedModule>,
): Promise<LoadedModule> {
  const disposers: (() => void)[] = [];
  const unloadHooks: (() => void | Promise<void>)[] = [];
  const log = env.log.child({ module: def.name, host: host.domain });

  const hookOn =
    (target: Host) =>
    <K extends keyof ChorusEvents>(event: K, handler: Handler<ChorusEvents[K]>, priority = 0) => {
      if (!Number.isFinite(priority) || priority <= DEFAULT_PRIORITY) {
        throw new ModuleError(
          `module '${def.name}': hook priority must be a finite number above ${DEFAULT_PRIORITY} (the core default)`,
        );
      }
      disposers.push(target.events.on(event, handler, priority));
    };
  const hook = hookOn(host);
  const handleIqOn =
    (target: Host) =>
    (
      type: 'get' | 'set',
      ns: string,
      name: string,
      handler: Handler<IqEvent>,
      targets: IqTarget[] = ['host'],
    ) => {
      const on = hookOn(target);
      for (const kind of targets) on(`iq-${type}/${kind}/${ns}:${name}`, handler);
    };

  const storage: StorageService = {
    keyval: (store) => env.storage.keyval(host.domain, store),
    map: (store) => env.storage.map(host.domain, store),
    archive: (store) => env.storage.archive(host.domain, store),
  };

  const topic = `${host.domain}/${def.name}`;
  const cluster: ClusterService = {
    nodeId: env.cluster?.nodeId ?? 'local',
    enabled: Boolean(env.cluster),
    broadcast: (data) => env.cluster?.broadcast(topic, data),
    onBroadcast(handler) {
      if (env.cluster) disposers.push(env.cluster.onBroadcast(topic, handler));
    },
    request(node, data, timeoutMs) {
      if (!env.cluster) return Promise.reject(new Error(`not in a cluster: there is no node ${node}`));
      return env.cluster.request(node, topic, data, timeoutMs);
    },
    onRequest(handler) {
      if (env.cluster) disposers.push(env.cluster.onRequest(topic, handler));
    },
    nodes: () => env.cluster?.nodes ?? ['local'],
  };

  const ctx: ModuleContext<unknown> = {
    host: host.domain,
    hostJid: host.jid,
    options: options as Readonly<unknown>,
    log,
    accounts: env.accountsFor(host.domain),
    sessions: env.sessions,
    storage,
    cluster,
    hook,
    handleIq: handleIqOn(host),
    addService(domain: string): ServiceContext {
      const service = env.addServiceHost(domain);
      disposers.push(service.remove);
      const target = service.host;
      return {
        domain: target.domain,
        jid: target.jid,
        hook: hookOn(target),
        handleIq: handleIqOn(target),
        addFeature: (ns) => disposers.push(target.addFeature(ns)),
        addIdentity: (identity) => disposers.push(target.addIdentity(identity)),
        features: () => target.features(),
        identities: () => target.identities(),
      };
    },
    addFeature: (ns) => disposers.push(host.addFeature(ns)),
    addAccountFeature: (ns) => disposers.push(host.addAccountFeature(ns)),
    addIdentity: (identity) => disposers.push(host.addIdentity(identity)),
    features: () => host.features(),
    accountFeatures: () => host.accountFeatures(),
    identities: () => host.identities(),
    fire: (event, payload) => host.events.fire(event, payload),
    send: (stanza) => env.route(stanza),
    sendIq(stanza, timeoutMs = 30_000) {
      if (!stanza.attrs.from) stanza.attrs.from = host.domain;
      const answer = host.expectIqResponse(stanza, timeoutMs);
      env.route(stanza);
      return answer;
    },
    setTimeout(fn, ms) {
      const timer = setTimeout(fn, ms);
      timer.unref(); // module timers never keep the process alive, like setInterval
      const cancel = () => clearTimeout(timer);
      disposers.push(cancel);
      return cancel;
    },
    setInterval(fn, ms) {
      const timer = setInterval(fn, ms);
      timer.unref();
      const cancel = () => clearInterval(timer);
      disposers.push(cancel);
      return cancel;
    },
    onUnload: (fn) => unloadHooks.push(fn),
    dependency<T>(name: string): T {
      if (!(def.dependencies ?? []).includes(name)) {
        throw new ModuleError(`module '${def.name}' uses '${name}' without declaring it in dependencies`);
      }
      const dep = loaded.get(name);
      if (!dep) throw new ModuleError(`module '${def.name}': dependency '${name}' is not loaded`);
      return dep.api as T;
    },
  };

  const runUnloadHooks = async () => {
    for (const fn of unloadHooks.splice(0)) await fn();
  };
  let api: unknown;
  try {
    api = await def.setup(ctx);
  } catch (err) {
    for (const dispose of disposers.splice(0).reverse()) dispose();
    await runUnloadHooks();
    throw err;
  }
  log.debug('module loaded');
  let unloaded = false;
  return {
    definition: def,
    api,
    async unload() {
      if (unloaded) return;
      unloaded = true;
      for (const dispose of disposers.splice(0).reverse()) dispose();
      await runUnloadHooks();
      log.debug('module unloaded');
    },
  };
}
