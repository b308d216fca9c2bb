// The scenario runner and pattern matcher must fail loudly: a protocol test
// that cannot fail proves nothing. These tests check that mismatches are
// caught and reported with the expected pattern and the received XML.
import { expect } from 'chai';
import { parseScenario, runScenario, ScenarioSyntaxError } from '../helpers/scenario.ts';
import { useServer } from '../helpers/fixtures.ts';
import { matchElement, parsePattern } from '../helpers/xmpp-client.ts';

/** null on match, else the reason; `received` is plain XML. */
function match(pattern: string, received: string, vars = new Map<string, string>()): string | null {
  const captures = new Map<string, string>();
  const reason = matchElement(parsePattern(pattern), parsePattern(received), vars, captures, '');
  if (reason === null) for (const [k, v] of captures) vars.set(k, v);
  return reason;
}

async function failure(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected the scenario to fail, but it passed');
}

describe('scenario runner and patterns', function () {
  describe('pattern matching', () => {
    it('requires every pattern attribute, allowing extra ones', () => {
      expect(match(`<iq type='result' id='a'/>`, `<iq type='result' id='a' from='x'/>`)).to.equal(null);
      expect(match(`<iq type='result' id='a'/>`, `<iq type='error' id='a'/>`)).to.match(
        /attribute type='error', expected 'result'/,
      );
      expect(match(`<iq type='result' id='a'/>`, `<iq type='result'/>`)).to.match(/attribute id is missing/);
    });

    it('strict forbids extra attributes and children', () => {
      expect(match(`<iq type='result' strict='true'/>`, `<iq type='result' id='1'/>`)).to.match(
        /unexpected attribute id/,
      );
      expect(match(`<q xmlns='urn:x' strict='true'><a/></q>`, `<q xmlns='urn:x'><a/><b/></q>`)).to.match(
        /exactly 1 child/,
      );
      expect(match(`<q xmlns='urn:x' strict='true'><a/></q>`, `<q xmlns='urn:x'><a/></q>`)).to.equal(null);
    });

    it('matches children as an ordered subsequence', () => {
      const received = `<q xmlns='urn:x'><a/><b/><c/></q>`;
      expect(match(`<q xmlns='urn:x'><a/><c/></q>`, received)).to.equal(null);
      expect(match(`<q xmlns='urn:x'><c/><a/></q>`, received)).to.match(/no child matching <a>/);
      expect(match(`<q xmlns='urn:x'><d/></q>`, received)).to.match(/no child matching <d>/);
    });

    it('compares namespaces that the pattern states, including inherited ones in the received XML', () => {
      expect(match(`<q xmlns='urn:x'/>`, `<q xmlns='urn:y'/>`)).to.match(
        /expected namespace 'urn:x', got 'urn:y'/,
      );
      expect(
        match(
          `<m><x xmlns='urn:a'/></m>`,
          `<m xmlns='jabber:client'><w xmlns='urn:a'><x/></w><x xmlns='urn:b'/></m>`,
        ),
      ).to.match(/expected namespace 'urn:a', got 'urn:b'/);
      expect(match(`<w xmlns='urn:a'><x xmlns='urn:a'/></w>`, `<w xmlns='urn:a'><x/></w>`)).to.equal(null);
    });

    it('compares text, with {any} for any text', () => {
      expect(match(`<m><body>Hi</body></m>`, `<m><body>Hi</body></m>`)).to.equal(null);
      expect(match(`<m><body>Hi</body></m>`, `<m><body>Ho</body></m>`)).to.match(
        /text is 'Ho', expected 'Hi'/,
      );
      expect(match(`<m><body>{any}</body></m>`, `<m><body>whatever</body></m>`)).to.equal(null);
      expect(match(`<m><body>{any}</body></m>`, `<m/>`)).to.match(/no child matching <body>/);
    });

    it('captures {$name} once, then requires the same value', () => {
      const vars = new Map<string, string>();
      expect(match(`<iq id='{$id}'/>`, `<iq id='abc'/>`, vars)).to.equal(null);
      expect(vars.get('id')).to.equal('abc');
      expect(match(`<iq id='{$id}'/>`, `<iq id='abc'/>`, vars)).to.equal(null);
      expect(match(`<iq id='{$id}'/>`, `<iq id='xyz'/>`, vars)).to.match(
        /attribute id='xyz', expected '\{\$id\}'/,
      );
      expect(match(`<iq to='{$id}@host'/>`, `<iq to='abc@host'/>`, vars)).to.equal(null);
    });

    it('does not keep captures from a failed match', () => {
      const vars = new Map<string, string>();
      expect(match(`<iq id='{$id}' type='get'/>`, `<iq id='abc' type='set'/>`, vars)).to.not.equal(null);
      expect(vars.has('id')).to.equal(false);
    });
  });

  describe('script syntax', () => {
    it('parses declarations, steps and blocks', () => {
      const scenario = parseScenario(`
        # Title here
        [Romeo] password: pw
        [Romeo] resource: balcony
        Romeo connects
        Romeo sends:
          <presence/>

          <message to='x@y'/>
        Romeo receives nothing
        Romeo disconnects
      `);
      expect(scenario.title).to.equal('Title here');
      expect(scenario.clients.get('Romeo')).to.include({
        user: 'romeo',
        password: 'pw',
        resource: 'balcony',
      });
      expect(scenario.steps.map((s) => s.kind)).to.deep.equal(['connect', 'send', 'nothing', 'disconnect']);
      const send = scenario.steps[1]!;
      expect(send.kind === 'send' && send.xml).to.equal(`<presence/>\n\n          <message to='x@y'/>`);
    });

    it('rejects an unknown statement with its line number', () => {
      expect(() => parseScenario(`[Romeo] password: pw\nRomeo dances`)).to.throw(
        ScenarioSyntaxError,
        /line 2/,
      );
    });

    it('rejects an undeclared client and a client without password', () => {
      expect(() => parseScenario(`Mercutio connects`)).to.throw(
        ScenarioSyntaxError,
        /Mercutio is not declared/,
      );
      expect(() => parseScenario(`[Romeo] resource: r\nRomeo connects`)).to.throw(
        ScenarioSyntaxError,
        /no password/,
      );
    });

    it('rejects a malformed pattern before running anything', () => {
      expect(() => parseScenario(`[Romeo] password: pw\nRomeo receives:\n  <iq><unclosed></iq>`)).to.throw(
        ScenarioSyntaxError,
        /line 2/,
      );
    });
  });

  describe('running against a server', () => {
    const server = useServer();

    it('reports a mismatch with the line, the expected pattern and the received XML', async () => {
      const err = await failure(
        runScenario(
          `# Wrong expectation
          [Romeo] password: pw
          Romeo connects
          Romeo sends:
            <iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>
          Romeo receives:
            <iq type='error' id='p1'/>`,
          server,
        ),
      );
      expect(err.message).to.include('"Wrong expectation" failed at line 6 (Romeo receives:)');
      expect(err.message).to.include(`expected:\n    <iq type='error' id='p1'/>`);
      expect(err.message).to.match(/received:\n\s+<iq xmlns="jabber:client" type="result" id="p1"/);
    });

    it('fails "receives nothing" when something arrives', async () => {
      const err = await failure(
        runScenario(
          `[Romeo] password: pw
          Romeo connects
          Romeo sends:
            <iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>
          Romeo receives nothing`,
          server,
        ),
      );
      expect(err.message).to.include('expected no traffic');
    });

    it('fails on a timeout when the expected stanza never comes', async () => {
      const err = await failure(
        runScenario(
          `[Romeo] password: pw
          Romeo connects
          Romeo receives:
            <message/>`,
          server,
          { timeoutMs: 300 },
        ),
      );
      expect(err.message).to.include('nothing received within 300 ms');
    });

    it('fails when a client is used before it connects', async () => {
      const err = await failure(runScenario(`[Romeo] password: pw\nRomeo sends:\n  <presence/>`, server));
      expect(err.message).to.include('Romeo is not connected');
    });

    it('fails when a stream error is expected but the stream stays open', async () => {
      const err = await failure(
        runScenario(
          `[Romeo] password: pw
          Romeo connects
          Romeo sends:
            <iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>
          Romeo receives stream error: conflict`,
          server,
        ),
      );
      expect(err.message).to.match(/expected <stream:error>, got <iq>/);
    });
  });
});
