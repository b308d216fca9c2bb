// Account creation derives SCRAM keys without blocking the event loop, so
// other clients keep being served while a password is hashed.
import { expect } from 'chai';
import { deriveCredentialsAsync, verifyPassword } from '../../src/sasl/credentials.ts';

describe('deriveCredentialsAsync', () => {
  it('derives keys that verify the password and not another, and never keeps the password', async () => {
    const creds = await deriveCredentialsAsync('correct horse', 4096);
    expect(Object.keys(creds.scram).sort()).to.deep.equal(['SHA-1', 'SHA-256']);
    expect(verifyPassword(creds, 'correct horse')).to.equal(true);
    expect(verifyPassword(creds, 'battery staple')).to.equal(false);
    expect(JSON.stringify(creds)).to.not.include('correct horse');
    expect(creds.scram['SHA-1']!.salt).to.not.equal(creds.scram['SHA-256']!.salt);
  });

  it('lets timers run while it hashes', async () => {
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    // Enough iterations to take well over a few milliseconds on any machine.
    await deriveCredentialsAsync('slow password', 300_000, ['SHA-256']);
    clearInterval(timer);
    expect(ticks, 'the event loop was blocked during derivation').to.be.greaterThan(2);
  });

  it('refuses what the synchronous derivation refuses', async () => {
    let error: unknown;
    try {
      await deriveCredentialsAsync('', 4096);
    } catch (err) {
      error = err;
    }
    expect(String(error)).to.match(/empty/);
  });
});
