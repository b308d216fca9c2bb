// A virtual host: its event bus, the modules loaded for it, and what they
// registered for discovery. Modules are per host, as in Prosody.
import type { Element } from 'ltx';
import { HookBus } from './events.ts';
import { Jid } from './jid.ts';
import type { Identity } from './modules/api.ts';
import type { ChorusEvents } from './router/events.ts';

interface PendingIq {
  resolve(result: Element): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
  /** Who the IQ went to: only that entity may answer it. */
  peer: string;
}

export class IqError extends Error {
  constructor(
    message: string,
    public readonly stanza: Element | null,
  ) {
    super(message);
  }
}

export class Host {
  readonly events = new HookBus<ChorusEvents>();
  readonly jid: Jid;
  private readonly featureCounts = new Map<string, number>();
  private readonly accountFeatureCounts = new Map<string, number>();
  private readonly identityList: Identity[] = [];
  private readonly pendingIqs = new Map<string, PendingIq>();
  private iqCounter = 0;

  /**
   * 'vhost': a configured virtual host with accounts and client logins;
   * 'service': a subdomain a module serves (e.g. conference.<host>), which
   * takes no client streams.
   */
  constructor(
    readonly domain: string,
    readonly kind: 'vhost' | 'service' = 'vhost',
  ) {
    this.jid = Jid.parse(domain);
  }

  /** Adds a disco feature of the server; returns a remover (features are reference-counted). */
  addFeature(ns: string): () => void {
    return addCounted(this.featureCounts, ns);
  }

  /** Adds a disco feature of every account on this host (e.g. urn:xmpp:mam:2). */
  addAccountFeature(ns: string): () => void {
    return addCounted(this.accountFeatureCounts, ns);
  }

  accountFeatures(): string[] {
    return [...this.accountFeatureCounts.keys()].sort();
  }

  addIdentity(identity: Identity): () => void {
    this.identityList.push(identity);
    return () => {
      const i = this.identityList.indexOf(identity);
      if (i >= 0) this.identityList.splice(i, 1);
    };
  }

  features(): string[] {
    return [...this.featureCounts.keys()].sort();
  }

  identities(): Identity[] {
    return [...this.identityList];
  }

  /** Registers an outgoing IQ; the router settles it when the answer arrives. */
  expectIqResponse(stanza: Element, timeoutMs: number): Promise<Element> {
    const id = stanza.attrs.id || `chorus-${++this.iqCounter}-${Date.now().toString(36)}`;
    stanza.attrs.id = id;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pendingIqs.delete(id);
        reject(new IqError(`IQ ${id} to ${stanza.attrs.to} timed out after ${timeoutMs} ms`, null));
      }, timeoutMs);
      timer.unref();
      this.pendingIqs.set(id, { resolve, reject, timer, peer: stanza.attrs.to ?? '' });
    });
  }

  /** Settles a pending IQ; returns false when the response matched none. */
  settleIq(response: Element): boolean {
    const pending = this.pendingIqs.get(response.attrs.id);
    // An answer from anyone but the addressee is not an answer (spoofed ids).
    if (!pending || pending.peer !== (response.attrs.from ?? '')) return false;
    this.pendingIqs.delete(response.attrs.id);
    clearTimeout(pending.timer);
    if (response.attrs.type === 'result') pending.resolve(response);
    else pending.reject(new IqError(`IQ ${response.attrs.id} failed`, response));
    return true;
  }

  cancelPendingIqs(): void {
    for (const pending of this.pendingIqs.values()) {
      clearTimeout(pending.timer);
      pending.reject(new IqError('host is shutting down', null));
    }
    this.pendingIqs.clear();
  }
}

function addCounted(counts: Map<string, number>, key: string): () => void {
  counts.set(key, (counts.get(key) ?? 0) + 1);
  let removed = false;
  return () => {
    if (removed) return;
    removed = true;
    const n = (counts.get(key) ?? 1) - 1;
    if (n <= 0) counts.delete(key);
    else counts.set(key, n);
  };
}
