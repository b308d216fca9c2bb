// vcard-temp (XEP-0054), with real clients against a real server.
import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import type { Element } from 'ltx';
import { startTestServer } from '../helpers/server.ts';
import { testUsers, useServer } from '../helpers/fixtures.ts';
import { XmppClient } from '../helpers/xmpp-client.ts';

const PASSWORD = 'vcard-test-pw';
const { clients, newUser, login } = testUsers(PASSWORD);
const NS_VCARD = 'vcard-temp';
const NS_STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';
const MODULES = 'modules: [disco, ping, roster, presence, vcard, private, last]';

/** Sends a vCard IQ (raw XML, no variable substitution) and returns its id. */
function sendVcard(c: XmppClient, type: 'get' | 'set', body = '', attrs = ''): string {
  const id = c.nextId(type);
  c.sendRaw(`<iq type='${type}' id='${id}'${attrs}><vCard xmlns='${NS_VCARD}'>${body}</vCard></iq>`);
  return id;
}

async function getVcard(c: XmppClient, to?: string): Promise<Element> {
  const id = sendVcard(c, 'get', '', to === undefined ? '' : ` to='${to}'`);
  const result = await c.expect(`<iq type='result' id='${id}'><vCard xmlns='${NS_VCARD}'/></iq>`);
  return result.getChild('vCard', NS_VCARD)!;
}

async function setVcard(c: XmppClient, body: string, attrs = ''): Promise<void> {
  const id = sendVcard(c, 'set', body, attrs);
  await c.expect(`<iq type='result' id='${id}'/>`);
}

async function expectError(c: XmppClient, id: string, condition: string, type: string): Promise<Element> {
  return c.expect(
    `<iq type='error' id='${id}'><error type='${type}'><${condition} xmlns='${NS_STANZAS}'/></error></iq>`,
  );
}

describe('vcard-temp (XEP-0054)', function () {
  this.timeout(20_000);
  const server = useServer({ yaml: MODULES });

  it('announces vcard-temp in the server disco#info', async () => {
    const c = await login(server, await newUser(server, 'disco'));
    const id = c.nextId('disco');
    c.send(
      `<iq type='get' id='${id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>`,
    );
    await c.expect(
      `<iq type='result' id='${id}'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='vcard-temp'/></query></iq>`,
    );
  });

  it('answers an empty vCard when the user has none', async () => {
    const c = await login(server, await newUser(server, 'empty'));
    const id = sendVcard(c, 'get');
    await c.expect(`<iq type='result' id='${id}'><vCard xmlns='${NS_VCARD}' strict='true'/></iq>`);
  });

  it('stores the own vCard and returns it in a later session', async () => {
    const user = await newUser(server, 'owner');
    const first = await login(server, user, 'phone');
    await setVcard(first, `<FN>Juliet Capulet</FN><NICKNAME>Jule</NICKNAME>`);
    await first.close();

    const again = await login(server, user, 'laptop');
    const vcard = await getVcard(again);
    expect(vcard.getChildText('FN')).to.equal('Juliet Capulet');
    expect(vcard.getChildText('NICKNAME')).to.equal('Jule');
    // Addressed to the own bare JID, it is the same vCard.
    const byJid = await getVcard(again, `${user}@localhost`);
    expect(byJid.getChildText('FN')).to.equal('Juliet Capulet');
  });

  it('replaces the whole vCard on a set, and an empty set clears it', async () => {
    const c = await login(server, await newUser(server, 'replace'));
    await setVcard(c, `<FN>Old Name</FN><TITLE>Old title</TITLE>`);
    await setVcard(c, `<FN>New Name</FN>`);
    const vcard = await getVcard(c);
    expect(vcard.getChildText('FN')).to.equal('New Name');
    expect(vcard.getChild('TITLE'), 'fields of the old vCard are gone').to.equal(undefined);

    await setVcard(c, '');
    const id = sendVcard(c, 'get');
    await c.expect(`<iq type='result' id='${id}'><vCard xmlns='${NS_VCARD}' strict='true'/></iq>`);
  });

  it('lets anyone read a user vCard, without a subscription', async () => {
    const owner = await newUser(server, 'public');
    const o = await login(server, owner);
    await setVcard(o, `<FN>Romeo Montague</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>AAAA</BINVAL></PHOTO>`);

    const stranger = await login(server, await newUser(server, 'stranger'));
    const vcard = await getVcard(stranger, `${owner}@localhost`);
    expect(vcard.getChildText('FN')).to.equal('Romeo Montague');
    expect(vcard.getChild('PHOTO')?.getChildText('BINVAL')).to.equal('AAAA');

    // A user without a vCard reads as empty to others too.
    const blank = await newUser(server, 'blank');
    const id = sendVcard(stranger, 'get', '', ` to='${blank}@localhost'`);
    await stranger.expect(
      `<iq type='result' id='${id}' from='${blank}@localhost'><vCard xmlns='${NS_VCARD}' strict='true'/></iq>`,
    );
  });

  it('answers service-unavailable for the vCard of a user that does not exist', async () => {
    const c = await login(server, await newUser(server, 'asker'));
    const id = sendVcard(c, 'get', '', ` to='nobody-here@localhost'`);
    await expectError(c, id, 'service-unavailable', 'cancel');
  });

  it("refuses to change someone else's vCard (forbidden), and theirs stays as it was", async () => {
    const victim = await newUser(server, 'victim');
    const v = await login(server, victim);
    await setVcard(v, `<FN>The Real One</FN>`);

    const mallory = await login(server, await newUser(server, 'mallory'));
    const id = sendVcard(mallory, 'set', `<FN>Forged</FN>`, ` to='${victim}@localhost'`);
    await expectError(mallory, id, 'forbidden', 'auth');
    const toServer = sendVcard(mallory, 'set', `<FN>Forged</FN>`, ` to='localhost'`);
    await expectError(mallory, toServer, 'forbidden', 'auth');

    expect((await getVcard(v)).getChildText('FN')).to.equal('The Real One');
  });

  it('keeps extension elements with their namespaces, even when the prefix is declared outside the vCard', async () => {
    const user = await newUser(server, 'ext');
    const c = await login(server, user);
    const id = c.nextId('set');
    c.sendRaw(
      `<iq type='set' id='${id}' xmlns:x='urn:example:ext'><vCard xmlns='${NS_VCARD}'><FN>Ext</FN><x:mood x:level='3'>fine</x:mood></vCard></iq>`,
    );
    await c.expect(`<iq type='result' id='${id}'/>`);
    const reader = await login(server, await newUser(server, 'extreader'));
    const vcard = await getVcard(reader, `${user}@localhost`);
    const mood = vcard.getChild('mood', 'urn:example:ext');
    expect(mood, 'the extension element keeps its namespace').to.not.equal(undefined);
    expect(mood!.getText()).to.equal('fine');
  });

  it('accepts an avatar of 150 KiB but refuses a vCard over 200 KiB with not-acceptable', async () => {
    const user = await newUser(server, 'avatar');
    const c = await login(server, user);
    const photo = randomBytes(112 * 1024).toString('base64'); // about 150 KiB of base64
    await setVcard(c, `<FN>Big</FN><PHOTO><TYPE>image/jpeg</TYPE><BINVAL>${photo}</BINVAL></PHOTO>`);
    const reader = await login(server, await newUser(server, 'avatarfan'));
    const stored = await getVcard(reader, `${user}@localhost`);
    expect(stored.getChild('PHOTO')?.getChildText('BINVAL')).to.equal(photo);

    const huge = randomBytes(154 * 1024).toString('base64'); // about 205 KiB: under the stanza limit
    const id = sendVcard(c, 'set', `<FN>Huge</FN><PHOTO><BINVAL>${huge}</BINVAL></PHOTO>`);
    await expectError(c, id, 'not-acceptable', 'modify');
    const unchanged = await getVcard(reader, `${user}@localhost`);
    expect(unchanged.getChildText('FN'), 'the refused vCard changed nothing').to.equal('Big');
  });

  it('applies the max_bytes option', async () => {
    const small = await startTestServer({
      yaml: `${MODULES}\nmodule_options: { vcard: { max_bytes: 600 } }`,
    });
    try {
      await small.addUser('tiny', PASSWORD);
      const c = await login(small, 'tiny');
      await setVcard(c, `<FN>${'a'.repeat(400)}</FN>`);
      const id = sendVcard(c, 'set', `<FN>${'b'.repeat(700)}</FN>`);
      await expectError(c, id, 'not-acceptable', 'modify');
      expect((await getVcard(c)).getChildText('FN')).to.equal('a'.repeat(400));
    } finally {
      for (const c of clients.splice(0)) c.destroy();
      await small.stop();
    }
  });
});
