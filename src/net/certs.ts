// TLS certificates: self-signed generation for hosts without configured
// certificates, and a store of per-domain secure contexts for SNI, STARTTLS
// and channel binding.
import {
  createHash,
  createPrivateKey,
  generateKeyPair,
  generateKeyPairSync,
  randomBytes,
  sign,
  X509Certificate,
} from 'node:crypto';
import { promises as fs } from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import forge from 'node-forge';
import { isValidDomain } from '../config/schema.ts';

const MIN_TLS_VERSION = 'TLSv1.2';
// RFC 6120 section 13.7.1.4: the XmppAddr identifier in subjectAltName.
const OID_XMPP_ADDR = '1.3.6.1.5.5.7.8.5';
const VALIDITY_DAYS = 365;
// Another process (cluster worker) may be writing the same pair; how long to
// wait for it before declaring a half-written pair an error.
const PAIR_WAIT_MS = 5000;

function normalizeDomain(domain: string): string {
  const d = domain.trim().toLowerCase().replace(/\.$/, '');
  // The domain becomes a file name, so it must be a plain host name and not
  // something like "../x".
  if (!isValidDomain(d)) throw new Error(`not a valid domain for a certificate: '${domain}'`);
  return d;
}

/** The IP address a domain denotes, if it is an IP literal ("127.0.0.1", "[::1]"). */
function ipOf(domain: string): string | undefined {
  const bare = domain.startsWith('[') && domain.endsWith(']') ? domain.slice(1, -1) : domain;
  return isIP(bare) !== 0 ? bare : undefined;
}

/**
 * A self-signed certificate for `domain`, valid one year: RSA 2048 with
 * SHA-256, subjectAltName DNS:domain and DNS:*.domain (so conference.domain
 * and other components are covered) plus XmppAddr; `localhost` also gets
 * IP 127.0.0.1 and ::1. The key is PKCS#8 PEM.
 */
export function generateSelfSigned(domain: string): { certPem: string; keyPem: string } {
  const name = normalizeDomain(domain);
  // Node's native key generation is far faster than forge's JavaScript one;
  // forge is only needed to build the X.509 structure.
  const { publicKey, privateKey } = generateKeyPairSync('rsa', RSA_OPTIONS);
  return { certPem: buildCertificate(name, publicKey, privateKey), keyPem: privateKey };
}

const RSA_OPTIONS = {
  modulusLength: 2048,
  publicKeyEncoding: { type: 'spki', format: 'pem' },
  privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
} as const;

// Off the event loop, so that generating at startup does not stall
// connections that other listeners already accept.
async function generateSelfSignedAsync(name: string): Promise<{ certPem: string; keyPem: string }> {
  const { publicKey, privateKey } = await new Promise<{ publicKey: string; privateKey: string }>(
    (resolve, reject) =>
      generateKeyPair('rsa', RSA_OPTIONS, (err, publicKey, privateKey) =>
        err ? reject(err) : resolve({ publicKey, privateKey }),
      ),
  );
  return { certPem: buildCertificate(name, publicKey, privateKey), keyPem: privateKey };
}

function buildCertificate(name: string, publicKey: string, privateKey: string): string {
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey);
  // A positive 128-bit serial: the top bit cleared so DER keeps it unsigned.
  const serial = randomBytes(16);
  serial[0] = serial[0]! & 0x7f;
  cert.serialNumber = serial.toString('hex');
  const now = Date.now();
  // Backdated a little so that a client whose clock is slightly behind
  // does not see a certificate from the future.
  cert.validity.notBefore = new Date(now - 5 * 60 * 1000);
  cert.validity.notAfter = new Date(now + VALIDITY_DAYS * 24 * 60 * 60 * 1000);

  const ip = ipOf(name);
  const subject = [{ shortName: 'CN', value: ip ?? name }];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', critical: true, digitalSignature: true, keyEncipherment: true },
    { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
    { name: 'subjectAltName', value: subjectAltName(name, ip) },
    { name: 'subjectKeyIdentifier' },
  ]);
  signWithNode(cert, privateKey);
  return forge.pki.certificateToPem(cert);
}

// Equivalent to forge's cert.sign(key, sha256) but with Node's native RSA,
// which takes a millisecond where forge's JavaScript takes hundreds.
function signWithNode(cert: forge.pki.Certificate, privateKeyPem: string): void {
  const oid = forge.pki.oids['sha256WithRSAEncryption']!;
  cert.siginfo.algorithmOid = oid;
  cert.signatureOid = oid;
  // getTBSCertificate exists in forge but is missing from @types/node-forge.
  const { getTBSCertificate } = forge.pki as unknown as {
    getTBSCertificate(c: forge.pki.Certificate): forge.asn1.Asn1;
  };
  const tbs = getTBSCertificate(cert);
  cert.tbsCertificate = tbs;
  const tbsDer = Buffer.from(forge.asn1.toDer(tbs).getBytes(), 'binary');
  cert.signature = sign('sha256', tbsDer, privateKeyPem).toString('binary');
}

// Built by hand because forge's own subjectAltName encoder has no
// otherName support, which XmppAddr needs.
function subjectAltName(domain: string, ip: string | undefined): forge.asn1.Asn1 {
  const { asn1 } = forge;
  const ctx = (tag: number, constructed: boolean, value: string | forge.asn1.Asn1[]) =>
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, tag, constructed, value);
  const dns = (n: string) => ctx(2, false, n);
  // bytesFromIP exists in forge but is missing from @types/node-forge.
  const { bytesFromIP } = forge.util as unknown as { bytesFromIP(ip: string): string | null };
  const ipAddress = (a: string) => ctx(7, false, bytesFromIP(a) ?? '');
  const xmppAddr = (n: string) =>
    ctx(0, true, [
      asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(OID_XMPP_ADDR).getBytes()),
      ctx(0, true, [asn1.create(asn1.Class.UNIVERSAL, asn1.Type.UTF8, false, forge.util.encodeUtf8(n))]),
    ]);

  const names: forge.asn1.Asn1[] = [];
  if (ip !== undefined) {
    names.push(ipAddress(ip));
  } else {
    names.push(dns(domain), dns(`*.${domain}`));
    if (domain === 'localhost') names.push(ipAddress('127.0.0.1'), ipAddress('::1'));
  }
  names.push(xmppAddr(domain));
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, names);
}

/**
 * Makes sure `<dir>/<domain>.crt` and `.key` exist, generating a self-signed
 * pair when both are missing. The key is written with mode 0600. Safe to
 * call from several processes at once: exactly one of them generates.
 */
export async function ensureHostCertificate(
  domain: string,
  dir: string,
  log?: (msg: string) => void,
): Promise<{ certPath: string; keyPath: string; generated: boolean }> {
  const name = normalizeDomain(domain);
  const certPath = path.join(dir, `${name}.crt`);
  const keyPath = path.join(dir, `${name}.key`);

  const state = await pairState(certPath, keyPath);
  if (state === 'complete') {
    await warnIfKeyExposed(keyPath, log);
    return { certPath, keyPath, generated: false };
  }
  if (state === 'partial') {
    await waitForPair(certPath, keyPath);
    return { certPath, keyPath, generated: false };
  }

  try {
    await fs.mkdir(dir, { recursive: true });
  } catch (err) {
    throw new Error(`certificate directory ${dir}: ${reason(err)}`, { cause: err });
  }
  const { certPem, keyPem } = await generateSelfSignedAsync(name);
  const suffix = `.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const keyTmp = keyPath + suffix;
  const certTmp = certPath + suffix;
  let linked = false;
  try {
    await fs.writeFile(keyTmp, keyPem, { mode: 0o600, flag: 'wx' });
    await fs.chmod(keyTmp, 0o600);
    await fs.writeFile(certTmp, certPem, { mode: 0o644, flag: 'wx' });
    // link() fails if the key already exists, which makes claiming the pair
    // atomic across processes; rename() would silently replace a key that a
    // concurrent process already paired with its own certificate. The key
    // goes first so that a visible certificate always has its key.
    try {
      await fs.link(keyTmp, keyPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      await waitForPair(certPath, keyPath);
      return { certPath, keyPath, generated: false };
    }
    linked = true;
    await fs.rename(certTmp, certPath);
  } catch (err) {
    // A key without its certificate would block every later start.
    if (linked) await fs.rm(keyPath, { force: true });
    throw new Error(`cannot write certificate for ${name} in ${dir}: ${reason(err)}`, { cause: err });
  } finally {
    await fs.rm(keyTmp, { force: true });
    await fs.rm(certTmp, { force: true });
  }
  log?.(
    `generated a self-signed certificate for ${name} in ${certPath} (valid ${VALIDITY_DAYS} days); ` +
      `clients will not trust it, set hosts[].tls to use a CA-issued certificate`,
  );
  return { certPath, keyPath, generated: true };
}

async function pairState(certPath: string, keyPath: string): Promise<'complete' | 'none' | 'partial'> {
  const [cert, key] = await Promise.all([exists(certPath), exists(keyPath)]);
  return cert && key ? 'complete' : !cert && !key ? 'none' : 'partial';
}

async function waitForPair(certPath: string, keyPath: string): Promise<void> {
  const deadline = Date.now() + PAIR_WAIT_MS;
  for (;;) {
    const state = await pairState(certPath, keyPath);
    if (state === 'complete') return;
    if (Date.now() >= deadline) {
      const [present, missing] = (await exists(certPath)) ? [certPath, keyPath] : [keyPath, certPath];
      throw new Error(
        `${present} exists but ${missing} does not; provide the missing file, ` +
          `or delete ${present} to have a new self-signed pair generated`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.stat(file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new Error(`${file}: ${reason(err)}`, { cause: err });
  }
}

async function warnIfKeyExposed(keyPath: string, log?: (msg: string) => void): Promise<void> {
  if (!log) return;
  try {
    const { mode } = await fs.stat(keyPath);
    if ((mode & 0o004) !== 0) log(`private key ${keyPath} is readable by every user; chmod 600 it`);
  } catch {
    // Reading the key later reports the problem properly.
  }
}

function reason(err: unknown): string {
  switch ((err as NodeJS.ErrnoException).code) {
    case 'ENOENT':
      return 'no such file';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EISDIR':
      return 'is a directory, expected a file';
    default:
      return err instanceof Error ? err.message : String(err);
  }
}

// ---------------------------------------------------------------------------

export interface HostCertificateSource {
  domain: string;
  /** Configured PEM files; when both are absent, `<dir>/<domain>.crt|.key` (generated if missing). */
  cert?: string;
  key?: string;
}

export interface CertificateInfo {
  /** The host's own certificate (first of the chain), PEM. */
  certPem: string;
  /** The same certificate, DER. */
  der: Buffer;
  /** RFC 5929 tls-server-end-point channel binding data for this certificate. */
  tlsServerEndPoint: Buffer;
}

interface Entry extends CertificateInfo {
  domain: string;
  chainPem: string;
  keyPem: string;
  certPath: string;
  keyPath: string;
  context: tls.SecureContext;
}

/**
 * Per-domain TLS contexts. Lookups serve the exact domain, then the nearest
 * parent domain (conference.example.org -> example.org), then the first host.
 */
export class CertificateStore {
  #entries = new Map<string, Entry>();
  #first: Entry | undefined;
  readonly #log: ((msg: string) => void) | undefined;

  constructor(opts: { log?: (msg: string) => void } = {}) {
    this.#log = opts.log;
  }

  /** Generates missing default certificates, reads every PEM and builds the contexts. */
  async load(hosts: readonly HostCertificateSource[], dir: string): Promise<void> {
    this.#install(await this.#build(hosts, dir));
  }

  /**
   * Re-reads every certificate (e.g. on SIGHUP). All-or-nothing: on any
   * error the previous contexts stay in use and the error names the file.
   * Servers created with defaultContextOptions() keep their old default
   * context for clients that send no SNI; call server.setSecureContext()
   * with fresh options after a reload to update it.
   */
  async reload(hosts: readonly HostCertificateSource[], dir: string): Promise<void> {
    let entries: Entry[];
    try {
      entries = await this.#build(hosts, dir);
    } catch (err) {
      throw new Error(
        `certificate reload failed, still using the previous certificates: ${(err as Error).message}`,
        { cause: err },
      );
    }
    this.#install(entries);
  }

  /** Domains with a certificate, in configuration order. */
  domains(): string[] {
    return [...this.#entries.keys()];
  }

  contextFor(servername: string | undefined): tls.SecureContext {
    return this.#lookup(servername).context;
  }

  /** For tls.createServer({ SNICallback }); bound, so it can be passed as is. */
  readonly sniCallback = (
    servername: string,
    cb: (err: Error | null, ctx?: tls.SecureContext) => void,
  ): void => {
    let ctx: tls.SecureContext;
    try {
      ctx = this.contextFor(servername);
    } catch (err) {
      cb(err as Error);
      return;
    }
    cb(null, ctx);
  };

  /** Options for tls.createServer / new tls.TLSSocket: the first host's pair, TLS 1.2 or later. */
  defaultContextOptions(): tls.SecureContextOptions {
    const first = this.#lookup(undefined);
    return { cert: first.chainPem, key: first.keyPem, minVersion: MIN_TLS_VERSION };
  }

  /** The certificate served for `servername`, for channel binding. */
  certificateFor(servername?: string): CertificateInfo {
    const { certPem, der, tlsServerEndPoint } = this.#lookup(servername);
    return { certPem, der, tlsServerEndPoint };
  }

  #lookup(servername: string | undefined): Entry {
    if (this.#first === undefined)
      throw new Error('CertificateStore: no certificates loaded; call load() first');
    if (servername) {
      let name = servername.toLowerCase().replace(/\.$/, '');
      for (;;) {
        const entry = this.#entries.get(name);
        if (entry) return entry;
        const dot = name.indexOf('.');
        if (dot < 0) break;
        name = name.slice(dot + 1);
      }
    }
    return this.#first;
  }

  #install(entries: Entry[]): void {
    this.#entries = new Map(entries.map((e) => [e.domain, e]));
    this.#first = entries[0];
  }

  async #build(hosts: readonly HostCertificateSource[], dir: string): Promise<Entry[]> {
    if (hosts.length === 0) throw new Error('no hosts to load certificates for');
    // In parallel, since first-start generation of several keys adds up;
    // failures are reported in host order so the message is deterministic.
    const results = await Promise.allSettled(hosts.map((host) => this.#hostEntry(host, dir)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    return results.map((r) => (r as PromiseFulfilledResult<Entry>).value);
  }

  async #hostEntry(host: HostCertificateSource, dir: string): Promise<Entry> {
    const domain = normalizeDomain(host.domain);
    if (host.cert !== undefined || host.key !== undefined) {
      if (host.cert === undefined || host.key === undefined) {
        throw new Error(`tls for host ${domain}: both cert and key are needed`);
      }
      return this.#entry(
        domain,
        host.cert,
        host.key,
        `tls.cert for host ${domain}`,
        `tls.key for host ${domain}`,
      );
    }
    const { certPath, keyPath } = await ensureHostCertificate(domain, dir, this.#log);
    return this.#entry(
      domain,
      certPath,
      keyPath,
      `certificate for host ${domain}`,
      `private key for host ${domain}`,
    );
  }

  async #entry(
    domain: string,
    certPath: string,
    keyPath: string,
    certLabel: string,
    keyLabel: string,
  ): Promise<Entry> {
    const read = async (file: string, label: string) => {
      try {
        return await fs.readFile(file, 'utf8');
      } catch (err) {
        throw new Error(`${label}: ${file}: ${reason(err)}`, { cause: err });
      }
    };
    const chainPem = await read(certPath, certLabel);
    const keyPem = await read(keyPath, keyLabel);

    const leafPem = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/.exec(chainPem)?.[0];
    if (leafPem === undefined) {
      throw new Error(
        `${certLabel}: ${certPath}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file`,
      );
    }
    let x509: X509Certificate;
    try {
      x509 = new X509Certificate(leafPem);
    } catch (err) {
      throw new Error(`${certLabel}: ${certPath}: cannot parse the certificate: ${(err as Error).message}`, {
        cause: err,
      });
    }
    let privateKey: ReturnType<typeof createPrivateKey>;
    try {
      privateKey = createPrivateKey(keyPem);
    } catch (err) {
      const encrypted = (err as NodeJS.ErrnoException).code === 'ERR_MISSING_PASSPHRASE';
      throw new Error(
        `${keyLabel}: ${keyPath}: ${encrypted ? 'the key is encrypted; an unencrypted PEM key is needed' : `not a usable PEM private key (${(err as Error).message})`}`,
        { cause: err },
      );
    }
    if (!x509.checkPrivateKey(privateKey)) {
      throw new Error(`${keyLabel}: ${keyPath}: the key does not match the certificate in ${certPath}`);
    }

    let context: tls.SecureContext;
    try {
      context = tls.createSecureContext({ cert: chainPem, key: keyPem, minVersion: MIN_TLS_VERSION });
    } catch (err) {
      throw new Error(`${certLabel}: ${certPath}: rejected by TLS: ${(err as Error).message}`, {
        cause: err,
      });
    }

    this.#warnAboutValidity(domain, certPath, x509);
    const der = x509.raw;
    return {
      domain,
      certPem: x509.toString(),
      der,
      tlsServerEndPoint: createHash(endPointHash(der)).update(der).digest(),
      chainPem,
      keyPem,
      certPath,
      keyPath,
      context,
    };
  }

  // Problems clients will notice, but that should not stop the server: a
  // certificate for the wrong name or out of its validity period.
  #warnAboutValidity(domain: string, certPath: string, x509: X509Certificate): void {
    if (!this.#log) return;
    const ip = ipOf(domain);
    const covered = ip !== undefined ? x509.checkIP(ip) !== undefined : x509.checkHost(domain) !== undefined;
    if (!covered) this.#log(`certificate ${certPath} does not cover host ${domain}; clients will reject it`);
    const now = Date.now();
    if (Date.parse(x509.validTo) < now)
      this.#log(`certificate ${certPath} for ${domain} expired on ${x509.validTo}`);
    else if (Date.parse(x509.validFrom) > now) {
      this.#log(`certificate ${certPath} for ${domain} is not valid before ${x509.validFrom}`);
    }
  }
}

// RFC 5929 section 4.1: hash with the certificate's signature hash, with
// MD5 and SHA-1 upgraded to SHA-256; SHA-256 also for algorithms without a
// separate hash (EdDSA) and anything unrecognised, as common implementations do.
const SIGNATURE_HASHES: Record<string, string> = {
  '1.2.840.113549.1.1.12': 'sha384', // sha384WithRSAEncryption
  '1.2.840.113549.1.1.13': 'sha512', // sha512WithRSAEncryption
  '1.2.840.10045.4.3.3': 'sha384', // ecdsa-with-SHA384
  '1.2.840.10045.4.3.4': 'sha512', // ecdsa-with-SHA512
};
const DIGEST_HASHES: Record<string, string> = {
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
};
const OID_RSASSA_PSS = '1.2.840.113549.1.1.10';

function endPointHash(der: Buffer): string {
  try {
    const { asn1 } = forge;
    const cert = asn1.fromDer(forge.util.createBuffer(der.toString('binary')));
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    const algorithm = (cert.value as forge.asn1.Asn1[])[1]!.value as forge.asn1.Asn1[];
    const oid = asn1.derToOid(forge.util.createBuffer(algorithm[0]!.value as string));
    if (oid === OID_RSASSA_PSS) {
      // RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] AlgorithmIdentifier DEFAULT sha1, ... }
      const params = (algorithm[1]?.value ?? []) as forge.asn1.Asn1[];
      const hashField = params.find((p) => p.tagClass === asn1.Class.CONTEXT_SPECIFIC && p.type === 0);
      const hashAlg = (hashField?.value as forge.asn1.Asn1[] | undefined)?.[0]?.value as
        forge.asn1.Asn1[] | undefined;
      const hashOid = hashAlg ? asn1.derToOid(forge.util.createBuffer(hashAlg[0]!.value as string)) : '';
      return DIGEST_HASHES[hashOid] ?? 'sha256';
    }
    return SIGNATURE_HASHES[oid] ?? 'sha256';
  } catch {
    return 'sha256';
  }
}
