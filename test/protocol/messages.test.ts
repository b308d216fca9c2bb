// Message routing between two accounts (RFC 6120 8, RFC 6121 8), written as
// scenarios. There is no offline storage yet, so anything that cannot be
// delivered must come back to the sender as an error.
import { startTestServer, type TestServer } from '../helpers/server.ts';
import { runScenario } from '../helpers/scenario.ts';

const ACCOUNTS = `
  [Romeo] password: pw-romeo
  [Romeo] resource: balcony
  [Juliet] password: pw-juliet
  [Juliet] resource: chamber
`;

const STANZA_ERR = 'urn:ietf:params:xml:ns:xmpp-stanzas';

describe('protocol: messages between accounts', function () {
  let server: TestServer;

  before(async () => {
    // The core's delivery rules, without offline storage (which would keep
    // what these tests expect to bounce): see offline.test.ts for that.
    server = await startTestServer({
      yaml: 'modules: [disco, ping, version, time, register, roster, presence]',
    });
  });
  after(() => server.stop());

  it('delivers to a full JID, with from stamped as the sender full JID', () =>
    runScenario(
      `# Romeo writes to Juliet's full JID
      ${ACCOUNTS}
      Romeo connects
      Juliet connects
      Romeo sends:
        <message to='\${Juliet}' type='chat' id='m1'><body>Hi</body></message>
      Juliet receives:
        <message from='\${Romeo}' to='\${Juliet}' type='chat' id='m1'><body>Hi</body></message>
      Romeo receives nothing
      Romeo disconnects
      Juliet disconnects
      `,
      server,
    ));

  it('stamps the full JID over a bare from the sender claimed', () =>
    runScenario(
      `# A client may send its bare JID as from; the recipient sees the full one
      ${ACCOUNTS}
      Romeo connects
      Juliet connects
      Romeo sends:
        <message from='\${Romeo.bare}' to='\${Juliet}' type='chat' id='m2'><body>It is I</body></message>
      Juliet receives:
        <message from='\${Romeo}' to='\${Juliet}' id='m2'><body>It is I</body></message>
      `,
      server,
    ));

  it('delivers to the bare JID once the recipient has sent initial presence', () =>
    runScenario(
      `# Juliet becomes available; Romeo writes to her bare JID
      ${ACCOUNTS}
      Romeo connects
      Juliet connects
      Juliet sends:
        <presence/>
      Juliet receives:
        <presence from='\${Juliet}'/>
      Romeo sends:
        <message to='\${Juliet.bare}' type='chat' id='m3'><body>Hello</body></message>
      Juliet receives:
        <message from='\${Romeo}' to='\${Juliet.bare}' type='chat' id='m3'><body>Hello</body></message>
      `,
      server,
    ));

  it('delivers a chat message for a gone resource to an available one (RFC 6121 8.5.3.2.1)', () =>
    runScenario(
      `# Romeo writes to a resource Juliet does not have
      ${ACCOUNTS}
      Romeo connects
      Juliet connects
      Juliet sends:
        <presence/>
      Juliet receives:
        <presence from='\${Juliet}'/>
      Romeo sends:
        <message to='\${Juliet.bare}/nursery' type='chat' id='m4'><body>Are you there?</body></message>
      Juliet receives:
        <message from='\${Romeo}' to='\${Juliet.bare}/nursery' id='m4'><body>Are you there?</body></message>
      `,
      server,
    ));

  it('bounces service-unavailable for a bare JID with no available resource', () =>
    runScenario(
      `# Juliet is connected but never sent presence: no offline storage, so an error
      ${ACCOUNTS}
      Romeo connects
      Juliet connects
      Romeo sends:
        <message to='\${Juliet.bare}' type='chat' id='m5'><body>Anyone?</body></message>
      Romeo receives:
        <message type='error' id='m5' from='\${Juliet.bare}' to='\${Romeo}'>
          <error type='cancel'><service-unavailable xmlns='${STANZA_ERR}'/></error>
        </message>
      Juliet receives nothing
      `,
      server,
    ));

  it('bounces service-unavailable for an existing user who is offline', async () => {
    await server.addUser('tybalt', 'pw-tybalt');
    await runScenario(
      `# Tybalt has an account but no session
      ${ACCOUNTS}
      Romeo connects
      Romeo sends:
        <message to='tybalt@localhost' type='normal' id='m6'><body>Truce?</body></message>
      Romeo receives:
        <message type='error' id='m6' from='tybalt@localhost'>
          <error type='cancel'><service-unavailable xmlns='${STANZA_ERR}'/></error>
        </message>
      `,
      server,
    );
  });

  it('bounces service-unavailable for a user that does not exist', () =>
    runScenario(
      `# Nobody by that name
      ${ACCOUNTS}
      Romeo connects
      Romeo sends:
        <message to='rosaline@localhost' type='chat' id='m7'><body>Hello?</body></message>
      Romeo receives:
        <message type='error' id='m7' from='rosaline@localhost' to='\${Romeo}'>
          <error type='cancel'><service-unavailable xmlns='${STANZA_ERR}'/></error>
        </message>
      `,
      server,
    ));

  it('ends the stream with invalid-from when the sender forges another user', () =>
    runScenario(
      `# Romeo pretends to be Juliet
      ${ACCOUNTS}
      Romeo connects
      Juliet connects
      Romeo sends:
        <message from='\${Juliet}' to='\${Juliet}' type='chat'><body>I am you</body></message>
      Romeo receives stream error: invalid-from
      Juliet receives nothing
      `,
      server,
    ));

  it('ends the stream with invalid-from for another resource of the same account', () =>
    runScenario(
      `# A session may only speak for itself
      ${ACCOUNTS}
      Romeo connects
      Romeo sends:
        <message from='\${Romeo.bare}/other' to='juliet@localhost' type='chat'><body>x</body></message>
      Romeo receives stream error: invalid-from
      `,
      server,
    ));

  for (const to of ['@localhost', 'juliet@localhost/', 'a@b@c', 'juliet@exa mple']) {
    it(`answers a malformed to ('${to}') with jid-malformed`, () =>
      runScenario(
        `# Malformed destination
        ${ACCOUNTS}
        Romeo connects
        Romeo sends:
          <message to='${to}' type='chat' id='bad'><body>?</body></message>
        Romeo receives:
          <message type='error' id='bad' to='\${Romeo}'>
            <error type='modify'><jid-malformed xmlns='${STANZA_ERR}'/></error>
          </message>
        `,
        server,
      ));
  }

  it('answers a message to a remote domain with remote-server-not-found (no s2s)', () =>
    runScenario(
      `# Nothing federates yet
      ${ACCOUNTS}
      Romeo connects
      Romeo sends:
        <message to='mercutio@verona.example' type='chat' id='r1'><body>Far away</body></message>
      Romeo receives:
        <message type='error' id='r1' from='mercutio@verona.example' to='\${Romeo}'>
          <error type='cancel'><remote-server-not-found xmlns='${STANZA_ERR}'/></error>
        </message>
      `,
      server,
    ));

  it('never answers an error message with another error', () =>
    runScenario(
      `# An error to a nonexistent user is dropped; the ping after it proves nothing came first
      ${ACCOUNTS}
      Romeo connects
      Romeo sends:
        <message to='rosaline@localhost' type='error' id='e1'>
          <error type='cancel'><service-unavailable xmlns='${STANZA_ERR}'/></error>
        </message>
        <iq type='get' id='after' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>
      Romeo receives:
        <iq type='result' id='after' from='localhost'/>
      `,
      server,
    ));
});
