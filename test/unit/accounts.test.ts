import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import {
  Accounts,
  AccountExistsError,
  AccountNotFoundError,
  type AccountRecord,
} from '../../src/storage/accounts.ts';
import { MemoryDriver } from '../../src/storage/memory.ts';
import { SqliteDriver } from '../../src/storage/sqlite.ts';
import type { StorageDriver } from '../../src/storage/types.ts';

// Few iterations keep PBKDF2 fast; the count is not what is under test.
const ITERATIONS = 16;

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected the promise to reject');
}

async function collect(it: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const x of it) out.push(x);
  return out.sort();
}

const tmp = mkdtempSync(join(tmpdir(), 'chorus-accounts-'));
let fileNo = 0;
after(function () {
  rmSync(tmp, { recursive: true, force: true });
});

const drivers: [string, () => StorageDriver][] = [
  ['memory', () => new MemoryDriver()],
  ['sqlite', () => SqliteDriver.open(join(tmp, `accounts${++fileNo}.sqlite`))],
];

for (const [name, open] of drivers) {
  describe(`Accounts (${name} storage)`, function () {
    let driver: StorageDriver;
    let accounts: Accounts;

    beforeEach(function () {
      driver = open();
      accounts = new Accounts(driver, ITERATIONS);
    });

    afterEach(async function () {
      await driver.close();
    });

    it('creates an account that verifies with its password only', async function () {
      expect(await accounts.exists('example.com', 'alice')).to.equal(false);
      await accounts.create('example.com', 'alice', 'correct horse');
      expect(await accounts.exists('example.com', 'alice')).to.equal(true);
      expect(await accounts.verify('example.com', 'alice', 'correct horse')).to.equal(true);
      expect(await accounts.verify('example.com', 'alice', 'wrong horse')).to.equal(false);
      expect(await accounts.verify('example.com', 'bob', 'correct horse')).to.equal(false);
      expect(await accounts.verify('other.example', 'alice', 'correct horse')).to.equal(false);
    });

    it('stores SCRAM verifiers in the accounts keyval store, never the password', async function () {
      const before = Date.now();
      await accounts.create('example.com', 'alice', 'S3cret-Pässword');
      const record = await driver.keyval<AccountRecord>('example.com', 'accounts').get('alice');
      expect(record).to.not.equal(null);
      expect(record!.created).to.be.within(before, Date.now());
      expect(record!.credentials.scram).to.have.keys('SHA-1', 'SHA-256');
      expect(record!.credentials.scram['SHA-256']!.iterations).to.equal(ITERATIONS);
      const raw = JSON.stringify(record);
      expect(raw).not.to.include('S3cret');
      expect(raw).not.to.include(Buffer.from('S3cret-Pässword').toString('base64'));
      expect(await accounts.getCredentials('example.com', 'alice')).to.deep.equal(record!.credentials);
      expect(await accounts.getCredentials('example.com', 'nobody')).to.equal(null);
    });

    it('refuses to create an account twice, even concurrently', async function () {
      await accounts.create('example.com', 'alice', 'one');
      const err = await rejection(accounts.create('example.com', 'alice', 'two'));
      expect(err).to.be.instanceOf(AccountExistsError);
      expect(await accounts.verify('example.com', 'alice', 'one')).to.equal(true);

      const results = await Promise.allSettled([
        accounts.create('example.com', 'bob', 'first'),
        accounts.create('example.com', 'bob', 'second'),
        accounts.create('example.com', 'bob', 'third'),
      ]);
      expect(results.filter((r) => r.status === 'fulfilled')).to.have.length(1);
      for (const r of results) {
        if (r.status === 'rejected') expect(r.reason).to.be.instanceOf(AccountExistsError);
      }
      const winner = ['first', 'second', 'third'][results.findIndex((r) => r.status === 'fulfilled')]!;
      expect(await accounts.verify('example.com', 'bob', winner)).to.equal(true);
    });

    it('changes a password and keeps the creation time', async function () {
      await accounts.create('example.com', 'alice', 'old password');
      const created = (await driver.keyval<AccountRecord>('example.com', 'accounts').get('alice'))!.created;
      const oldCreds = await accounts.getCredentials('example.com', 'alice');
      await accounts.setPassword('example.com', 'alice', 'new password');
      expect(await accounts.verify('example.com', 'alice', 'old password')).to.equal(false);
      expect(await accounts.verify('example.com', 'alice', 'new password')).to.equal(true);
      expect((await driver.keyval<AccountRecord>('example.com', 'accounts').get('alice'))!.created).to.equal(
        created,
      );
      // Fresh salts, so the verifiers change even beyond the password.
      expect(await accounts.getCredentials('example.com', 'alice')).not.to.deep.equal(oldCreds);
    });

    it('refuses to set the password of a missing account', async function () {
      const err = await rejection(accounts.setPassword('example.com', 'ghost', 'pw'));
      expect(err).to.be.instanceOf(AccountNotFoundError);
      expect(await accounts.exists('example.com', 'ghost')).to.equal(false);
    });

    it('deletes accounts and says whether there was one', async function () {
      await accounts.create('example.com', 'alice', 'pw');
      expect(await accounts.delete('example.com', 'alice')).to.equal(true);
      expect(await accounts.delete('example.com', 'alice')).to.equal(false);
      expect(await accounts.exists('example.com', 'alice')).to.equal(false);
      expect(await accounts.verify('example.com', 'alice', 'pw')).to.equal(false);
      // The name is free again.
      await accounts.create('example.com', 'alice', 'pw2');
      expect(await accounts.verify('example.com', 'alice', 'pw2')).to.equal(true);
    });

    it('lists the accounts of one host', async function () {
      await accounts.create('a.example', 'alice', 'pw');
      await accounts.create('a.example', 'bob', 'pw');
      await accounts.create('b.example', 'carol', 'pw');
      expect(await collect(accounts.list('a.example'))).to.deep.equal(['alice', 'bob']);
      expect(await collect(accounts.list('b.example'))).to.deep.equal(['carol']);
      expect(await collect(accounts.list('c.example'))).to.deep.equal([]);
      await accounts.delete('a.example', 'alice');
      expect(await collect(accounts.list('a.example'))).to.deep.equal(['bob']);
    });

    it('rejects empty names and unusable passwords', async function () {
      expect(await rejection(accounts.create('example.com', '', 'pw'))).to.be.instanceOf(TypeError);
      expect(await rejection(accounts.create('', 'alice', 'pw'))).to.be.instanceOf(TypeError);
      expect(await rejection(accounts.create('example.com', 'alice', ''))).to.be.instanceOf(Error);
      expect(await accounts.exists('example.com', 'alice')).to.equal(false);
    });
  });
}

describe('Accounts constructor', function () {
  it('rejects a bad iteration count', function () {
    const d = new MemoryDriver();
    expect(() => new Accounts(d, 0)).to.throw(RangeError);
    expect(() => new Accounts(d, 1.5)).to.throw(RangeError);
  });
});
