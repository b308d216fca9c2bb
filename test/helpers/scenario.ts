/**
 * A small protocol-scenario runner in the style of Prosody's scansion:
 * scripts that say who sends what and what everyone must receive.
 *
 * Syntax (one statement per line; `#` at the start of a line is a comment,
 * and the first comment is the scenario's title):
 *
 *   [Romeo] password: pw1      declares client Romeo; its account (user
 *                              `romeo`, the lower-cased name) is created, or
 *                              its password reset if it already exists
 *   [Romeo] user: montague     optional: the account's username
 *   [Romeo] resource: balcony  optional: the resource to bind (default: the
 *                              server picks one)
 *
 *   Romeo connects             STARTTLS + SCRAM-SHA-256 + bind
 *   Romeo sends:               followed by an indented block of XML, written
 *     <message .../>           as is (several stanzas allowed)
 *   Romeo receives:            followed by an indented block of one or more
 *     <message .../>           patterns, which must arrive in this order, each
 *                              as the very next thing Romeo receives
 *   Romeo receives nothing     nothing arrives within 250 ms
 *   Romeo receives stream error: conflict
 *                              a stream error with that condition, the
 *                              closing tag, and the connection closing
 *   Romeo disconnects          </stream:stream>, then waits for the server's
 *
 * Placeholders, expanded in blocks before they are sent or matched:
 *   ${Romeo}        Romeo's full JID (after `Romeo connects`)
 *   ${Romeo.bare}   Romeo's bare JID
 *   ${domain}       the server's domain
 * Pattern rules and the `{any}` / `{$name}` wildcards are those of
 * xmpp-client.ts; `{$name}` captures are shared by all clients of a scenario,
 * so an id Juliet receives can be used in what Romeo sends.
 *
 * Statements may be indented (scripts are often template literals inside a
 * test). A block is every following line indented deeper than its statement,
 * blank lines included; it ends at the next line that is not.
 */
import { readFileSync } from 'node:fs';
import type { TestServer } from './server.ts';
import { escapeXml, parsePatterns, XmppClient } from './xmpp-client.ts';

interface ClientDecl {
  name: string;
  user: string;
  password: string | null;
  resource?: string;
  line: number;
}

type Step =
  | { kind: 'connect'; client: string; line: number; source: string }
  | { kind: 'send'; client: string; xml: string; line: number; source: string }
  | { kind: 'receive'; client: string; xml: string; line: number; source: string }
  | { kind: 'nothing'; client: string; line: number; source: string }
  | { kind: 'stream-error'; client: string; condition: string; line: number; source: string }
  | { kind: 'disconnect'; client: string; line: number; source: string };

export interface Scenario {
  title: string;
  clients: Map<string, ClientDecl>;
  steps: Step[];
}

const NAME = '([A-Z][A-Za-z0-9_]*)';
const DECL_RE = new RegExp(`^\\[${NAME}\\]\\s+(password|user|resource):\\s*(.*?)\\s*$`);
const STEP_RE = new RegExp(
  `^${NAME}\\s+(connects|disconnects|sends:|receives:|receives nothing|receives stream error:\\s*([a-z-]+))\\s*$`,
);
const PLACEHOLDER_RE = /\$\{([A-Za-z][A-Za-z0-9_]*)(\.bare)?\}/g;

export class ScenarioSyntaxError extends Error {}

/** Parses a script; throws ScenarioSyntaxError with the line number on any unknown statement. */
export function parseScenario(text: string): Scenario {
  const src = text.replace(/\r\n?/g, '\n').split('\n');
  const indentOf = (l: string) => /^[ \t]*/.exec(l)![0].length;
  const scenario: Scenario = { title: '', clients: new Map(), steps: [] };
  const fail = (line: number, message: string): never => {
    throw new ScenarioSyntaxError(`scenario line ${line}: ${message}\n    ${(src[line - 1] ?? '').trim()}`);
  };
  const client = (name: string, line: number): string => {
    if (!scenario.clients.has(name))
      fail(line, `client ${name} is not declared (add "[${name}] password: ...")`);
    return name;
  };

  for (let i = 0; i < src.length; i++) {
    const raw = src[i]!;
    const line = raw.trim();
    const number = i + 1;
    if (line === '') continue;
    if (line.startsWith('#')) {
      if (!scenario.title) scenario.title = line.replace(/^#+\s*/, '');
      continue;
    }

    const decl = DECL_RE.exec(line);
    if (decl) {
      const [, name, key, value] = decl as unknown as [string, string, string, string];
      let c = scenario.clients.get(name);
      if (!c) {
        c = { name, user: name.toLowerCase(), password: null, line: number };
        scenario.clients.set(name, c);
      }
      if (key === 'password') c.password = value;
      else if (key === 'user') c.user = value;
      else c.resource = value;
      continue;
    }

    const step = STEP_RE.exec(line);
    if (!step) fail(number, 'not a statement this runner understands (see test/helpers/scenario.ts)');
    const [, name, verb, condition] = step as unknown as [string, string, string, string | undefined];
    const who = client(name, number);
    const base = { client: who, line: number, source: line };
    if (verb === 'connects') scenario.steps.push({ kind: 'connect', ...base });
    else if (verb === 'disconnects') scenario.steps.push({ kind: 'disconnect', ...base });
    else if (verb === 'receives nothing') scenario.steps.push({ kind: 'nothing', ...base });
    else if (condition !== undefined) scenario.steps.push({ kind: 'stream-error', condition, ...base });
    else {
      const block: string[] = [];
      const depth = indentOf(raw);
      while (i + 1 < src.length && (src[i + 1]!.trim() === '' || indentOf(src[i + 1]!) > depth))
        block.push(src[++i]!);
      const xml = block.join('\n').trim();
      if (!xml) fail(number, `"${verb}" needs an indented XML block below it`);
      if (verb === 'receives:') {
        // Catch malformed patterns before anything runs (placeholders are filled with a dummy).
        try {
          if (parsePatterns(xml.replace(PLACEHOLDER_RE, 'x@y/z')).length === 0)
            fail(number, 'empty pattern block');
        } catch (err) {
          if (err instanceof ScenarioSyntaxError) throw err;
          fail(number, (err as Error).message);
        }
      }
      scenario.steps.push({ kind: verb === 'sends:' ? 'send' : 'receive', xml, ...base });
    }
  }
  for (const c of scenario.clients.values()) {
    if (c.password === null) fail(c.line, `client ${c.name} has no password`);
  }
  return scenario;
}

export interface RunOptions {
  /** Per-expectation timeout in ms (default 3000). */
  timeoutMs?: number;
}

/**
 * Runs a scenario against a test server: creates (or resets) the accounts,
 * runs the steps in order, and throws on the first mismatch with the line,
 * the expected pattern and the XML that arrived instead.
 */
export async function runScenario(text: string, server: TestServer, opts: RunOptions = {}): Promise<void> {
  const scenario = parseScenario(text);
  const timeout = opts.timeoutMs ?? 3000;
  const accounts = server.server.accounts;
  for (const c of scenario.clients.values()) {
    if (await accounts.exists(server.domain, c.user))
      await accounts.setPassword(server.domain, c.user, c.password!);
    else await server.addUser(c.user, c.password!);
  }

  const vars = new Map<string, string>();
  const connected = new Map<string, XmppClient>();
  const expand = (xml: string, line: number): string =>
    xml.replace(PLACEHOLDER_RE, (_, name: string, bare: string | undefined) => {
      if (name === 'domain' && !bare) return escapeXml(server.domain);
      const c = connected.get(name);
      if (!c?.jid) throw new Error(`scenario line ${line}: \${${name}} is used before ${name} connects`);
      return escapeXml(bare ? c.jid.replace(/\/.*$/, '') : c.jid);
    });
  const get = (step: Step): XmppClient => {
    const c = connected.get(step.client);
    if (!c) throw new Error(`scenario line ${step.line}: ${step.client} is not connected`);
    return c;
  };

  try {
    for (const step of scenario.steps) {
      try {
        switch (step.kind) {
          case 'connect': {
            const decl = scenario.clients.get(step.client)!;
            const c = await XmppClient.connect({
              port: server.port,
              domain: server.domain,
              vars,
              name: step.client,
            });
            connected.set(step.client, c);
            await c.login(decl.user, decl.password!, { resource: decl.resource });
            break;
          }
          case 'send':
            get(step).send(expand(step.xml, step.line));
            break;
          case 'receive': {
            const c = get(step);
            const xml = expand(step.xml, step.line);
            const patterns = parsePatterns(xml);
            // Show the pattern as written when the block holds just one.
            for (const p of patterns)
              await c.expectElement(p, timeout, patterns.length === 1 ? xml : p.toString());
            break;
          }
          case 'nothing':
            await get(step).expectNothing();
            break;
          case 'stream-error':
            await get(step).expectStreamError(step.condition, timeout);
            break;
          case 'disconnect':
            await get(step).close(timeout);
            connected.delete(step.client);
            break;
        }
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        const title = scenario.title ? `"${scenario.title}" ` : '';
        const failure = new Error(
          `scenario ${title}failed at line ${step.line} (${step.source}):\n${message}`,
        );
        failure.stack = failure.message; // the runner's stack says nothing useful
        throw failure;
      }
    }
  } finally {
    // Wait for the server to drop the sessions, so the next scenario can reuse the resources.
    await Promise.all([...connected.values()].map((c) => c.shutdown()));
  }
}

export function runScenarioFile(path: string, server: TestServer, opts?: RunOptions): Promise<void> {
  return runScenario(readFileSync(path, 'utf8'), server, opts);
}
