// What a client stream needs from the server, as one narrow interface so the
// stream code does not depend on the Server class (and tests can build one).
import type { Logger } from 'pino';
import type { SessionDirectory } from '../cluster/directory.ts';
import type { ChorusConfig } from '../config/index.ts';
import type { Host } from '../host.ts';
import type { Router } from '../router/router.ts';
import type { AuthThrottle } from '../sasl/throttle.ts';
import type { StoredCredentials } from '../sasl/credentials.ts';
import type { C2SStream } from './c2s.ts';
import type { SecureContext } from 'node:tls';

export interface C2SEnvironment {
  readonly config: ChorusConfig;
  readonly hosts: ReadonlyMap<string, Host>;
  /** Used when a client's header has no `to`. */
  readonly defaultHost: string;
  readonly certs: {
    contextFor(servername: string | undefined): SecureContext;
    sniCallback: (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void) => void;
    /** The certificate served to `servername`, with its RFC 5929 tls-server-end-point data. */
    certificateFor(servername?: string): { tlsServerEndPoint: Buffer };
  };
  readonly accounts: { getCredentials(host: string, username: string): Promise<StoredCredentials | null> };
  readonly throttle: AuthThrottle;
  readonly router: Router;
  readonly directory: SessionDirectory;
  readonly log: Logger;
  /** Every open client stream, for shutdown. */
  readonly streams: Set<C2SStream>;
}
