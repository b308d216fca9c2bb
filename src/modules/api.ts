// The module API (DESIGN.md section 4). A module is a plain object that
// declares what it is (name, XEPs, options, dependencies) and a setup
// function that receives a context with everything it may touch. Everything
// registered through the context is removed when the module is unloaded.
import type { Element } from 'ltx';
import type { Logger } from 'pino';
import type { z } from 'zod';
import type { Handler, HandlerResult } from '../events.ts';
import type { Jid } from '../jid.ts';
import type { ChorusEvents, IqEvent } from '../router/events.ts';
import type { Session } from '../session/session.ts';
import type { ArchiveStore, JsonValue, KeyValStore, MapStore } from '../storage/types.ts';

export interface XepDeclaration {
  number: number;
  version: string;
  /** 'complete' unless said otherwise; 'partial' needs a note. */
  status?: 'complete' | 'partial';
  note?: string;
}

export interface Identity {
  category: string;
  type: string;
  name?: string;
}

/** Where an IQ handler listens: to the server itself, or to the user's own account. */
export type IqTarget = 'host' | 'self' | 'bare' | 'full';

export interface AccountService {
  exists(username: string): Promise<boolean>;
  create(username: string, password: string): Promise<void>;
  setPassword(username: string, password: string): Promise<void>;
  delete(username: string): Promise<boolean>;
}

export interface SessionService {
  /** Sessions of a local user (bare JID), on this node. */
  resources(bareJid: string): Session[] | Promise<Session[]>;
  get(fullJid: string): Session | undefined | Promise<Session | undefined>;
}

/**
 * The module's view of the cluster. On a single node, broadcasts go nowhere.
 * Modules that cache shared data (stored lists, preferences) broadcast a
 * change so that their instances on the other nodes drop the stale copy.
 */
export interface ClusterService {
  /** This node's id ('local' when not clustered). */
  readonly nodeId: string;
  /** True when this node is part of a cluster. */
  readonly enabled: boolean;
  /** Sends `data` to this module's instances (same host) on every other node. */
  broadcast(data: JsonValue): void;
  /** Receives what the module's instances on other nodes broadcast. Removed on unload. */
  onBroadcast(handler: (data: JsonValue, fromNode: string) => void): void;
  /**
   * Asks this module's instance (same host) on `node` and resolves with its
   * answer; rejects on timeout, when the node is gone, when it has no
   * handler, or when the handler throws (with its message). Rejects at once
   * on a single node.
   */
  request(node: string, data: JsonValue, timeoutMs?: number): Promise<JsonValue | null>;
  /** Answers requests from the module's instances on other nodes. Removed on unload. */
  onRequest(
    handler: (data: JsonValue, fromNode: string) => Promise<JsonValue | null> | JsonValue | null,
  ): void;
  /** Nodes with a live heartbeat, sorted (just this node when not clustered). */
  nodes(): readonly string[];
}

export interface StorageService {
  keyval<T = JsonValue>(store: string): KeyValStore<T>;
  map<T = JsonValue>(store: string): MapStore<T>;
  archive<T = JsonValue>(store: string): ArchiveStore<T>;
}

/** Handlers and disco entries on one domain: a virtual host, or a module's service. */
export interface DomainHandlers {
  hook<K extends keyof ChorusEvents>(event: K, handler: Handler<ChorusEvents[K]>, priority?: number): void;
  /**
   * Answers IQs of `type` whose payload is `<name xmlns=ns>`. `targets`
   * defaults to ['host']: IQs addressed to the domain itself.
   */
  handleIq(
    type: 'get' | 'set',
    ns: string,
    name: string,
    handler: (event: IqEvent) => HandlerResult,
    targets?: IqTarget[],
  ): void;
  /** A disco feature of the domain (disco#info to it). */
  addFeature(ns: string): void;
  addIdentity(identity: Identity): void;
  /** Features and identities registered by every module on the domain (for disco). */
  features(): string[];
  identities(): Identity[];
}

/** A subdomain served by a module: its stanzas fire events on its own bus. */
export interface ServiceContext extends DomainHandlers {
  readonly domain: string;
  readonly jid: Jid;
}

export interface ModuleContext<Options> extends DomainHandlers {
  /** The virtual host this instance of the module serves. */
  readonly host: string;
  readonly options: Readonly<Options>;
  readonly log: Logger;
  readonly accounts: AccountService;
  readonly sessions: SessionService;
  readonly storage: StorageService;
  readonly cluster: ClusterService;

  /** A disco feature of each account (disco#info to a user's bare JID), e.g. urn:xmpp:mam:2. */
  addAccountFeature(ns: string): void;
  accountFeatures(): string[];

  /**
   * Serves a subdomain (e.g. conference.example.org) from this module:
   * stanzas to it and to JIDs at it fire events on the returned context.
   * Removed when the module unloads. Throws if the domain is already served.
   */
  addService(domain: string): ServiceContext;
  /** Fires an event on this host, for modules that cooperate through events rather than APIs. */
  fire<K extends keyof ChorusEvents>(event: K, payload: ChorusEvents[K]): boolean | Promise<boolean>;
  /** Routes a stanza that the server originates (from must be set). */
  send(stanza: Element): void;
  /** Sends an IQ get/set and resolves with the result (rejects on error or timeout). */
  sendIq(stanza: Element, timeoutMs?: number): Promise<Element>;
  setTimeout(fn: () => void, ms: number): () => void;
  setInterval(fn: () => void, ms: number): () => void;
  /** Runs when the module is unloaded, after its hooks are removed. */
  onUnload(fn: () => void | Promise<void>): void;
  /** The API object returned by the setup of a declared dependency. */
  dependency<T>(name: string): T;
  /** The server's own address on this host. */
  readonly hostJid: Jid;
}

export interface ModuleDefinition<S extends z.ZodType = z.ZodType, Api = unknown> {
  name: string;
  description: string;
  xeps?: XepDeclaration[];
  /** Option schema; defaults in the schema are the documented defaults. */
  options?: S;
  dependencies?: string[];
  setup(ctx: ModuleContext<z.output<S>>): Api | Promise<Api>;
}

/** Identity function that gives module authors type inference for options. */
export function defineModule<S extends z.ZodType, Api = void>(
  def: ModuleDefinition<S, Api>,
): ModuleDefinition<S, Api> {
  return def;
}
