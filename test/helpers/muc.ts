// Shared steps for the multi-user chat tests (XEP-0045) on
// conference.localhost: test users and their clients, reading a room's
// answers, joining and configuring rooms, and restarting a server with
// persistent rooms.
import { rmSync } from 'node:fs';
import { expect } from 'chai';
import type { Element } from 'ltx';
import pino from 'pino';
import { Server } from '../../src/server.ts';
import { useServer } from './fixtures.ts';
import { startTestServer, type TestServer } from './server.ts';
import { NS_STANZAS, XmppClient } from './xmpp-client.ts';

export const MUC = 'conference.localhost';
export const NS_MUC = 'http://jabber.org/protocol/muc';
export const NS_USER = 'http://jabber.org/protocol/muc#user';
export const NS_ADMIN = 'http://jabber.org/protocol/muc#admin';
export const NS_OWNER = 'http://jabber.org/protocol/muc#owner';
export const NS_INFO = 'http://jabber.org/protocol/disco#info';
export const NS_DATA = 'jabber:x:data';

export interface MucUser {
  bare: string;
  name: string;
}

let seq = 0;

/** `<prefix><n>`, with n counting up: unique user and room names. */
export function uniqueName(prefix: string): string {
  return `${prefix}${++seq}`;
}

/** Test users sharing one password, and the clients they log in with. */
export class MucClients {
  private readonly open: XmppClient[] = [];

  constructor(private readonly password: string) {}

  /** Creates the account `<prefix><n>` on `server`. */
  async newUser(server: TestServer, prefix: string): Promise<MucUser> {
    const name = uniqueName(prefix);
    await server.addUser(name, this.password);
    return { name, bare: `${name}@localhost` };
  }

  /** Connects to `port` and logs in as `user/resource`; shutdownAll() ends it. */
  async login(port: number, user: MucUser, resource = 'dev'): Promise<XmppClient> {
    const c = await XmppClient.connect({ port, name: `${user.name}/${resource}` });
    this.open.push(c);
    await c.login(user.name, this.password, { resource });
    return c;
  }

  /** Closes the streams of every client logged in since the last call. */
  async shutdownAll(): Promise<void> {
    await Promise.all(this.open.splice(0).map((c) => c.shutdown()));
  }
}

/**
 * Registers hooks in the calling describe block: before/after ones that run
 * a server configured with `yaml`, and an afterEach one that shuts down
 * `clients`. Returns that server and shorthands for users and clients on it.
 */
export function useMucServer(
  yaml: string,
  clients: MucClients,
): {
  server: TestServer;
  user(prefix: string): Promise<MucUser>;
  connect(u: MucUser, resource?: string): Promise<XmppClient>;
} {
  const server = useServer({ yaml });
  afterEach(() => clients.shutdownAll());
  return {
    server,
    user: (prefix) => clients.newUser(server, prefix),
    connect: (u, resource) => clients.login(server.port, u, resource),
  };
}

/** Reads elements until one satisfies `done` (included in the result). */
export async function collectUntil(
  c: XmppClient,
  done: (e: Element) => boolean,
  timeoutMs = 3000,
): Promise<Element[]> {
  const out: Element[] = [];
  for (;;) {
    const ev = await c.next(timeoutMs);
    if (ev.kind !== 'element') throw new Error(`${c.name}: expected an element, got ${ev.kind}`);
    out.push(ev.element);
    if (done(ev.element)) return out;
  }
}

/** The room's subject message, which ends the join sequence. */
export const isSubject = (e: Element) => e.name === 'message' && e.getChild('subject') !== undefined;

/** The attributes of a room presence's muc#user <item/>. */
export function item(presence: Element): Record<string, string> {
  return (presence.getChild('x', NS_USER)?.getChild('item')?.attrs ?? {}) as Record<string, string>;
}

/** The muc#user status codes of a room presence. */
export function statusCodes(presence: Element): string[] {
  return (presence.getChild('x', NS_USER)?.getChildren('status') ?? []).map((s) => s.attrs.code as string);
}

/** The defined condition of an error stanza, e.g. 'conflict'. */
export function errorCondition(stanza: Element): string | undefined {
  const error = stanza.getChild('error');
  return error?.children.find((k): k is Element => typeof k !== 'string' && k.getNS() === NS_STANZAS)?.name;
}

/** Joins and reads the whole join sequence (presences, history, subject). */
export async function join(c: XmppClient, room: string, nick: string, inner = ''): Promise<Element[]> {
  c.send(`<presence to='${room}@${MUC}/${nick}'><x xmlns='${NS_MUC}'>${inner}</x></presence>`);
  return collectUntil(c, isSubject);
}

/**
 * Sends an IQ (to the account itself when `to` is '') and returns the answer
 * (of any type). Room broadcasts that the request causes reach the requester
 * before the result (as in XEP-0045's examples) and are skipped here; other
 * clients' tests check them.
 */
export async function iq(c: XmppClient, type: 'get' | 'set', to: string, payload: string): Promise<Element> {
  const id = c.nextId('iq');
  c.send(`<iq type='${type}' id='${id}'${to ? ` to='${to}'` : ''}>${payload}</iq>`);
  const seen = await collectUntil(c, (e) => e.name === 'iq' && e.attrs.id === id);
  return seen.at(-1)!;
}

/** muc#roomconfig_* form fields with the given values. */
export function roomConfigFields(values: Record<string, string>): string {
  return Object.entries(values)
    .map(([k, v]) => `<field var='muc#roomconfig_${k}'><value>${v}</value></field>`)
    .join('');
}

/** Sends a muc#admin change (`itemXml`, one or more <item/>) to `room`; returns the answer. */
export async function admin(c: XmppClient, room: string, itemXml: string): Promise<Element> {
  return iq(c, 'set', `${room}@${MUC}`, `<query xmlns='${NS_ADMIN}'>${itemXml}</query>`);
}

/**
 * Submits the owner's configuration form of `room` with muc#roomconfig_*
 * `values` (and the form's FORM_TYPE unless `formType` is false), which
 * unlocks a new room; expects a result.
 */
export async function configureRoom(
  c: XmppClient,
  room: string,
  values: Record<string, string> = {},
  { formType = true } = {},
): Promise<void> {
  const type = formType
    ? `<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>`
    : '';
  const answer = await iq(
    c,
    'set',
    `${room}@${MUC}`,
    `<query xmlns='${NS_OWNER}'><x xmlns='${NS_DATA}' type='submit'>${type}${roomConfigFields(values)}</x></query>`,
  );
  expect(answer.attrs.type, answer.toString()).to.equal('result');
}

/** A groupchat message with `body` to `room`. */
export function groupchat(room: string, body: string, id = 'g1'): string {
  return `<message to='${room}@${MUC}' type='groupchat' id='${id}'><body>${body}</body></message>`;
}

/**
 * Runs `beforeRestart` against a new server (configured with `yaml`) that
 * keeps its data in SQLite, stops it, starts another server on the same
 * configuration and data, and runs `afterRestart` against that one's port.
 * Whatever happens, the clients and servers end and the data goes.
 */
export async function acrossRestart(
  yaml: string,
  clients: MucClients,
  beforeRestart: (first: TestServer) => Promise<void>,
  afterRestart: (port: number) => Promise<void>,
): Promise<void> {
  const first = await startTestServer({ yaml, sqlite: true });
  let second: Server | null = null;
  try {
    await beforeRestart(first);
    await first.server.stop();

    second = new Server(first.server.config, { log: pino({ level: 'silent' }) });
    await second.start();
    await afterRestart(second.listeners[0]!.port);
  } finally {
    await clients.shutdownAll();
    if (second) await second.stop();
    else await first.server.stop();
    rmSync(first.dir, { recursive: true, force: true });
  }
}
