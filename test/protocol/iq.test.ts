// IQ semantics (RFC 6120 8.2.3, 8.3) and the server's built-in IQ services:
// disco (XEP-0030), ping (XEP-0199), version (XEP-0092), time (XEP-0202).
import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import { runScenario } from '../helpers/scenario.ts';
import { useServerAndPool } from '../helpers/fixtures.ts';
import { NS_STANZAS, type XmppClient } from '../helpers/xmpp-client.ts';

const NS_INFO = 'http://jabber.org/protocol/disco#info';
const NS_ITEMS = 'http://jabber.org/protocol/disco#items';
const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
  version: string;
};

const ACCOUNTS = `
  [Romeo] password: pw-romeo
  [Romeo] resource: balcony
  [Juliet] password: pw-juliet
  [Juliet] resource: chamber
`;

describe('protocol: IQ', function () {
  const { server, pool } = useServerAndPool({ users: { romeo: 'pw-romeo' } });
  let romeo: XmppClient;

  beforeEach(async () => {
    romeo = await pool.login('romeo', 'pw-romeo', { resource: 'iq' });
  });

  /** Sends an IQ and returns the next element, which must answer it by id. */
  async function ask(c: XmppClient, xml: string): Promise<import('ltx').Element> {
    const id = c.nextId('q');
    c.send(xml.replace('<iq ', `<iq id='${id}' `));
    return c.expect(`<iq id='${id}'/>`);
  }

  describe('rules', () => {
    it('answers an unknown namespace addressed to the server with service-unavailable', async () => {
      romeo.send(`<iq type='get' id='u1' to='localhost'><query xmlns='urn:example:unknown'/></iq>`);
      await romeo.expect(
        `<iq type='error' id='u1' from='localhost' to='romeo@localhost/iq'>
           <query xmlns='urn:example:unknown'/>
           <error type='cancel'><service-unavailable xmlns='${NS_STANZAS}'/></error>
         </iq>`,
      );
    });

    it('answers an IQ get with two children with bad-request', async () => {
      romeo.send(
        `<iq type='get' id='two' to='localhost'><ping xmlns='urn:xmpp:ping'/><time xmlns='urn:xmpp:time'/></iq>`,
      );
      await romeo.expect(
        `<iq type='error' id='two'><error type='modify'><bad-request xmlns='${NS_STANZAS}'/></error></iq>`,
      );
    });

    it('answers an IQ set with no child with bad-request', async () => {
      romeo.send(`<iq type='set' id='none' to='localhost'/>`);
      await romeo.expect(
        `<iq type='error' id='none'><error type='modify'><bad-request xmlns='${NS_STANZAS}'/></error></iq>`,
      );
    });

    it('answers an IQ of an invalid type with bad-request', async () => {
      romeo.send(`<iq type='fetch' id='weird' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
      await romeo.expect(
        `<iq type='error' id='weird'><error><bad-request xmlns='${NS_STANZAS}'/></error></iq>`,
      );
    });

    it('never answers an IQ error or an unexpected IQ result with an error', async () => {
      romeo.send(
        `<iq type='error' id='e1' to='localhost'><error type='cancel'><item-not-found xmlns='${NS_STANZAS}'/></error></iq>`,
      );
      romeo.send(`<iq type='result' id='nobody-asked' to='localhost'/>`);
      romeo.send(
        `<iq type='error' id='e2' to='ghost@localhost/x'><error type='cancel'><gone xmlns='${NS_STANZAS}'/></error></iq>`,
      );
      // Replies keep the order of requests: if anything had answered the three
      // stanzas above, it would arrive before this pong.
      romeo.send(`<iq type='get' id='after' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
      await romeo.expect(`<iq type='result' id='after' from='localhost'/>`);
      await romeo.expectNothing(150);
    });

    it('answers an IQ to an offline full JID with service-unavailable', async () => {
      romeo.send(`<iq type='get' id='off' to='romeo@localhost/elsewhere'><ping xmlns='urn:xmpp:ping'/></iq>`);
      await romeo.expect(
        `<iq type='error' id='off' from='romeo@localhost/elsewhere'><error type='cancel'><service-unavailable xmlns='${NS_STANZAS}'/></error></iq>`,
      );
    });

    it("delivers an IQ to another user's full JID and routes the result back", () =>
      runScenario(
        `# Romeo asks Juliet's client for its version; Juliet answers
        ${ACCOUNTS}
        Romeo connects
        Juliet connects
        Romeo sends:
          <iq type='get' id='v1' to='\${Juliet}'><query xmlns='jabber:iq:version'/></iq>
        Juliet receives:
          <iq type='get' id='v1' from='\${Romeo}' to='\${Juliet}'><query xmlns='jabber:iq:version'/></iq>
        Juliet sends:
          <iq type='result' id='v1' to='\${Romeo}'><query xmlns='jabber:iq:version'><name>Nurse</name></query></iq>
        Romeo receives:
          <iq type='result' id='v1' from='\${Juliet}' to='\${Romeo}'><query xmlns='jabber:iq:version'><name>Nurse</name></query></iq>
        `,
        server,
      ));

    it('routes an IQ error from the recipient back to the requester', () =>
      runScenario(
        `# Juliet's client does not support the request
        ${ACCOUNTS}
        Romeo connects
        Juliet connects
        Romeo sends:
          <iq type='get' id='x1' to='\${Juliet}'><query xmlns='urn:example:secret'/></iq>
        Juliet receives:
          <iq type='get' id='{$qid}' from='{$asker}'/>
        Juliet sends:
          <iq type='error' id='{$qid}' to='{$asker}'><error type='cancel'><feature-not-implemented xmlns='${NS_STANZAS}'/></error></iq>
        Romeo receives:
          <iq type='error' id='x1' from='\${Juliet}'><error type='cancel'><feature-not-implemented xmlns='${NS_STANZAS}'/></error></iq>
        Juliet receives nothing
        `,
        server,
      ));

    it("answers an unknown IQ to another user's bare JID with service-unavailable, on their behalf", () =>
      runScenario(
        `# The server answers for the account; Juliet's client never sees it
        ${ACCOUNTS}
        Romeo connects
        Juliet connects
        Romeo sends:
          <iq type='get' id='b1' to='\${Juliet.bare}'><query xmlns='urn:example:unknown'/></iq>
        Romeo receives:
          <iq type='error' id='b1' from='\${Juliet.bare}'><error type='cancel'><service-unavailable xmlns='${NS_STANZAS}'/></error></iq>
        Juliet receives nothing
        `,
        server,
      ));
  });

  describe('disco (XEP-0030)', () => {
    it('describes the server: identity server/im and the features of the loaded modules', async () => {
      const result = await ask(romeo, `<iq type='get' to='localhost'><query xmlns='${NS_INFO}'/></iq>`);
      expect(result.attrs.type).to.equal('result');
      expect(result.attrs.from).to.equal('localhost');
      const query = result.getChild('query', NS_INFO)!;
      const identities = query.getChildren('identity').map((i) => `${i.attrs.category}/${i.attrs.type}`);
      expect(identities).to.deep.equal(['server/im']);
      const features = query.getChildren('feature').map((f) => f.attrs.var as string);
      expect(features).to.include.members([
        NS_INFO,
        NS_ITEMS,
        'urn:xmpp:ping',
        'jabber:iq:version',
        'urn:xmpp:time',
      ]);
      expect(new Set(features).size, 'no duplicate features').to.equal(features.length);
    });

    // With the default modules the only item is the group chat service,
    // which clients find through disco#items of the server.
    it('lists the group chat service and nothing else on the server by default', async () => {
      romeo.send(`<iq type='get' id='items' to='localhost'><query xmlns='${NS_ITEMS}'/></iq>`);
      const reply = await romeo.expect(
        `<iq type='result' id='items' from='localhost'><query xmlns='${NS_ITEMS}'/></iq>`,
      );
      const items = reply
        .getChild('query')!
        .getChildren('item')
        .map((i) => i.attrs.jid as string);
      expect(items).to.deep.equal(['conference.localhost']);
    });

    it('answers a disco#info node it does not know with item-not-found', async () => {
      romeo.send(`<iq type='get' id='node' to='localhost'><query xmlns='${NS_INFO}' node='nope'/></iq>`);
      await romeo.expect(
        `<iq type='error' id='node'><error type='cancel'><item-not-found xmlns='${NS_STANZAS}'/></error></iq>`,
      );
    });

    it("describes the user's own account: identity account/registered", async () => {
      romeo.send(`<iq type='get' id='self' to='romeo@localhost'><query xmlns='${NS_INFO}'/></iq>`);
      await romeo.expect(
        `<iq type='result' id='self' from='romeo@localhost'>
           <query xmlns='${NS_INFO}'><identity category='account' type='registered'/></query>
         </iq>`,
      );
    });
  });

  describe('ping (XEP-0199)', () => {
    it('answers a ping to the server', async () => {
      romeo.send(`<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
      await romeo.expect(
        `<iq type='result' id='p1' from='localhost' to='romeo@localhost/iq' strict='true'/>`,
      );
    });

    it('answers a ping to the own bare JID, and one without a to', async () => {
      romeo.send(`<iq type='get' id='p2' to='romeo@localhost'><ping xmlns='urn:xmpp:ping'/></iq>`);
      await romeo.expect(`<iq type='result' id='p2' from='romeo@localhost'/>`);
      romeo.send(`<iq type='get' id='p3'><ping xmlns='urn:xmpp:ping'/></iq>`);
      await romeo.expect(`<iq type='result' id='p3'/>`);
    });
  });

  describe('version (XEP-0092)', () => {
    it('answers with the name Chorus and the package version, without the OS by default', async () => {
      romeo.send(`<iq type='get' id='ver' to='localhost'><query xmlns='jabber:iq:version'/></iq>`);
      await romeo.expect(
        `<iq type='result' id='ver' from='localhost'>
           <query xmlns='jabber:iq:version' strict='true'><name>Chorus</name><version>${pkg.version}</version></query>
         </iq>`,
      );
    });
  });

  describe('time (XEP-0202)', () => {
    it('answers with the current time in UTC', async () => {
      const before = Date.now();
      romeo.send(`<iq type='get' id='t' to='localhost'><time xmlns='urn:xmpp:time'/></iq>`);
      const result = await romeo.expect(
        `<iq type='result' id='t' from='localhost'><time xmlns='urn:xmpp:time'><tzo>+00:00</tzo><utc>{any}</utc></time></iq>`,
      );
      const utc = result.getChild('time')!.getChildText('utc')!;
      expect(utc).to.match(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
      const t = Date.parse(utc);
      expect(t).to.be.within(before - 1000, Date.now() + 1000);
    });
  });
});
