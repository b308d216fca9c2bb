// Stream errors (RFC 6120 section 4.9).
import { Element } from 'ltx';
import { NS_STREAM_ERRORS, NS_STREAMS } from '../stanza.ts';

export type StreamErrorCondition =
  | 'bad-format'
  | 'bad-namespace-prefix'
  | 'conflict'
  | 'connection-timeout'
  | 'host-gone'
  | 'host-unknown'
  | 'improper-addressing'
  | 'internal-server-error'
  | 'invalid-from'
  | 'invalid-namespace'
  | 'invalid-xml'
  | 'not-authorized'
  | 'not-well-formed'
  | 'policy-violation'
  | 'remote-connection-failed'
  | 'reset'
  | 'resource-constraint'
  | 'restricted-xml'
  | 'see-other-host'
  | 'system-shutdown'
  | 'undefined-condition'
  | 'unsupported-encoding'
  | 'unsupported-feature'
  | 'unsupported-stanza-type'
  | 'unsupported-version';

export function streamErrorElement(condition: StreamErrorCondition, text?: string, extra?: Element): Element {
  const error = new Element('stream:error', { 'xmlns:stream': NS_STREAMS });
  error.c(condition, { xmlns: NS_STREAM_ERRORS });
  if (text) error.c('text', { xmlns: NS_STREAM_ERRORS, 'xml:lang': 'en' }).t(text);
  if (extra) error.cnode(extra);
  return error;
}

/** Thrown inside stream handling to end the stream with an error. */
export class StreamError extends Error {
  constructor(
    public readonly condition: StreamErrorCondition,
    text?: string,
  ) {
    super(text ?? condition);
  }
}
