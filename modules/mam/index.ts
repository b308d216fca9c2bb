// XEP-0313 Message Archive Management (urn:xmpp:mam:2 and #extended) for
// users' one-to-one messages, with XEP-0359 stanza ids, XEP-0431 full-text
// search, per-user archiving preferences and server-wide retention.
//
// Parts: archive.ts (what is archived, and the hooks), stanza-id.ts
// (eligibility and stanza-id handling), query.ts (queries, paging,
// metadata), prefs.ts (preferences), forms.ts (data forms), retention.ts
// (purging old messages).
//
// Storage: archive store 'archive' (per user; value = the message as XML,
// `with` = the other party, `text` = the body for search); keyval store
// 'mam_prefs' for preferences.
import { z } from 'zod';
import type { Jid } from '../../src/jid.ts';
import { defineModule } from '../../src/modules/api.ts';
import type { IqEvent } from '../../src/router/events.ts';
import type { JsonValue } from '../../src/storage/types.ts';
import type { RosterApi } from '../roster.ts';
import { installArchiving } from './archive.ts';
import {
  parsePrefs,
  policyFor,
  prefsElement,
  PrefsError,
  prefsFromJson,
  prefsToJson,
  type Prefs,
} from './prefs.ts';
import { formReply, metadata, NS_FULLTEXT, NS_MAM, NS_MAM_EXTENDED, runQuery } from './query.ts';
import { ARCHIVE_STORE, parseRetention, purgeArchive } from './retention.ts';

export { ARCHIVE_STORE, parseRetention, purgeArchive } from './retention.ts';

export const PREFS_STORE = 'mam_prefs';

export interface MamApi {
  /**
   * Runs the retention purge now, as the background job does; `now` (ms)
   * stands in for the clock. Resolves to how many items went (0 when
   * retention is 'never').
   */
  purge(now?: number): Promise<number>;
}

const retention = z.string().refine(
  (s) => {
    try {
      parseRetention(s);
      return true;
    } catch {
      return false;
    }
  },
  { message: "a period such as '30d', '12h', '1y', or 'never'" },
);

export default defineModule({
  name: 'mam',
  description: 'Archives users’ one-to-one messages and lets clients query them (XEP-0313)',
  xeps: [
    {
      number: 313,
      version: '1.1.1',
      status: 'partial',
      note: 'Users’ one-to-one archives with #extended; MUC room archives are not part of this module',
    },
    {
      number: 359,
      version: '0.7.0',
      status: 'partial',
      note: 'stanza-id on archived messages; origin-id is passed on untouched',
    },
    { number: 431, version: '0.2.0' },
    { number: 59, version: '1.0', status: 'partial', note: 'No paging by <index/>' },
  ],
  dependencies: ['roster'],
  options: z
    .object({
      /** Archiving for users who set no preferences: always, roster (contacts only) or never. */
      default_policy: z.enum(['always', 'roster', 'never']).default('always'),
      /** Most results per page; larger <max/> values are capped. */
      max_page: z.number().int().min(1).default(250),
      /** Results per page when the client gives no <max/>. */
      default_page: z.number().int().min(1).default(50),
      /** How long messages are kept: e.g. '30d', '1y', or 'never' (forever). */
      retention: retention.default('never'),
      /** How often the retention job runs. */
      check_interval_seconds: z.number().int().min(1).default(3600),
      /** Messages deleted per transaction by the retention job. */
      purge_batch_size: z.number().int().min(1).default(1000),
      /**
       * Hold each message until its archive write has committed, instead of
       * routing it while the write is queued. Slower (every message waits for
       * a commit); only matters if the server dies in the milliseconds between.
       */
      wait_for_archive: z.boolean().default(false),
    })
    .strict(),
  setup(ctx): MamApi {
    const roster = ctx.dependency<RosterApi>('roster');
    const archive = ctx.storage.archive<string>(ARCHIVE_STORE);
    const prefsStore = ctx.storage.keyval<JsonValue>(PREFS_STORE);
    const opts = ctx.options;
    const defaults: Prefs = { default: opts.default_policy, always: [], never: [] };
    const maxPage = opts.max_page;
    const defaultPage = Math.min(opts.default_page, maxPage);

    // Preferences are read for every archived message; this module is their
    // only writer, so a bounded cache of them stays exact. In a cluster the
    // instance that saves a change tells the others to drop their copy.
    const prefsCache = new Map<string, Prefs>();
    ctx.cluster.onBroadcast((user) => {
      if (typeof user === 'string') prefsCache.delete(user);
    });
    async function loadPrefs(user: string): Promise<Prefs> {
      const prefs = prefsFromJson(await prefsStore.get(user)) ?? defaults;
      // A set that finished while we read has put the newer value in already.
      if (prefsCache.has(user)) return prefsCache.get(user)!;
      if (prefsCache.size >= 10_000) prefsCache.delete(prefsCache.keys().next().value!);
      prefsCache.set(user, prefs);
      return prefs;
    }
    /** The user's preferences: from the cache without going async when they are there. */
    function prefsOf(user: string): Prefs | Promise<Prefs> {
      return prefsCache.get(user) ?? loadPrefs(user);
    }

    function wantedBy(user: string, contact: Jid, prefs: Prefs): boolean | Promise<boolean> {
      const policy = policyFor(prefs, contact);
      if (policy === 'roster') return roster.item(user, contact.bareString()).then((item) => item !== null);
      return policy === 'always';
    }
    function wanted(user: string, contact: Jid): boolean | Promise<boolean> {
      const prefs = prefsOf(user);
      return prefs instanceof Promise
        ? prefs.then((p) => wantedBy(user, contact, p))
        : wantedBy(user, contact, prefs);
    }

    installArchiving(ctx, { archive, wanted, waitForArchive: opts.wait_for_archive });

    /**
     * The archive an IQ may touch: the sender's own. Answers forbidden for
     * anyone else's and returns null.
     */
    function ownArchive(ev: IqEvent): string | null {
      if (!ev.origin || !ev.from.bare.equals(ev.to.bare) || ev.to.domain !== ctx.host) {
        ev.error('forbidden', { text: 'You may only access your own message archive' });
        return null;
      }
      return ev.to.local;
    }

    const targets: ('self' | 'bare')[] = ['self', 'bare'];

    /**
     * Answers an IQ about the asker's own archive; anyone else's gets
     * forbidden, and a storage failure internal-server-error.
     */
    const ownArchiveIq =
      (what: string, answer: (ev: IqEvent, user: string) => void | Promise<void>) => (ev: IqEvent) => {
        const user = ownArchive(ev);
        if (user === null) return true;
        const fail = (err: unknown) => {
          ctx.log.error({ err, user }, `${what} failed`);
          ev.error('internal-server-error');
          return true as const;
        };
        try {
          const done = answer(ev, user);
          return done instanceof Promise ? done.then(() => true as const, fail) : true;
        } catch (err) {
          return fail(err);
        }
      };

    ctx.handleIq(
      'set',
      NS_MAM,
      'query',
      ownArchiveIq('archive query', (ev, user) => runQuery(ev, user, { archive, maxPage, defaultPage })),
      targets,
    );
    ctx.handleIq(
      'get',
      NS_MAM,
      'query',
      ownArchiveIq('archive form', (ev) => ev.reply(formReply(archive))),
      targets,
    );
    ctx.handleIq(
      'get',
      NS_MAM,
      'metadata',
      ownArchiveIq('archive metadata query', async (ev, user) => ev.reply(await metadata(archive, user))),
      targets,
    );
    ctx.handleIq(
      'get',
      NS_MAM,
      'prefs',
      ownArchiveIq('archive preferences query', async (ev, user) =>
        ev.reply(prefsElement(NS_MAM, await prefsOf(user))),
      ),
      targets,
    );
    ctx.handleIq(
      'set',
      NS_MAM,
      'prefs',
      ownArchiveIq('archive preferences update', async (ev, user) => {
        let prefs: Prefs;
        try {
          prefs = parsePrefs(ev.payload);
        } catch (err) {
          if (!(err instanceof PrefsError)) throw err;
          ev.error('bad-request', { text: err.message });
          return;
        }
        await prefsStore.set(user, prefsToJson(prefs));
        prefsCache.set(user, prefs);
        ctx.cluster.broadcast(user);
        ev.reply(prefsElement(NS_MAM, prefs));
      }),
      targets,
    );

    for (const feature of [NS_MAM, NS_MAM_EXTENDED]) ctx.addAccountFeature(feature);
    if (archive.caps.fullText) ctx.addAccountFeature(NS_FULLTEXT);

    // ---- retention ---------------------------------------------------------------

    const keepMs = parseRetention(opts.retention);
    let running: Promise<number> | null = null;
    function purge(now = Date.now()): Promise<number> {
      if (keepMs === null) return Promise.resolve(0);
      // One purge at a time: a slow one is not overlapped by the next tick.
      running ??= purgeArchive(archive, now - keepMs, { batchSize: opts.purge_batch_size }).finally(() => {
        running = null;
      });
      return running;
    }
    if (keepMs !== null) {
      ctx.setInterval(() => {
        purge().then(
          (n) => {
            if (n > 0)
              ctx.log.info({ deleted: n, retention: opts.retention }, 'purged old archived messages');
          },
          (err: unknown) => ctx.log.error({ err }, 'archive retention purge failed'),
        );
      }, opts.check_interval_seconds * 1000);
    }

    return { purge };
  },
});
