import { expect } from 'chai';
import { AuthThrottle } from '../../src/sasl/throttle.ts';
import type { AuthThrottleOptions } from '../../src/sasl/throttle.ts';

function setup(overrides: Partial<AuthThrottleOptions> = {}): {
  throttle: AuthThrottle;
  clock: { t: number };
  advance: (seconds: number) => void;
} {
  const clock = { t: 1_000_000 };
  const throttle = new AuthThrottle(
    {
      delayAfter: 3,
      delayMs: 500,
      maxDelayMs: 4000,
      banAfter: 10,
      banSeconds: 300,
      windowSeconds: 600,
      ...overrides,
    },
    () => clock.t,
  );
  return { throttle, clock, advance: (s) => (clock.t += s * 1000) };
}

function fail(throttle: AuthThrottle, address: string, times: number): void {
  for (let i = 0; i < times; i++) throttle.recordFailure(address);
}

describe('AuthThrottle', () => {
  it('allows an unknown address without delay', () => {
    const { throttle } = setup();
    expect(throttle.check('192.0.2.1')).to.deep.equal({ allowed: true, delayMs: 0 });
  });

  it('does not delay up to delayAfter failures', () => {
    const { throttle } = setup();
    fail(throttle, 'a', 3);
    expect(throttle.check('a')).to.deep.equal({ allowed: true, delayMs: 0 });
  });

  it('grows the delay with each extra failure, capped at maxDelayMs', () => {
    const { throttle } = setup();
    fail(throttle, 'a', 3);
    const delays: number[] = [];
    for (let i = 0; i < 6; i++) {
      throttle.recordFailure('a');
      delays.push(throttle.check('a').delayMs);
    }
    expect(delays).to.deep.equal([500, 1000, 2000, 4000, 4000, 4000]);
  });

  it('refuses after banAfter failures and tells when to retry', () => {
    const { throttle, advance } = setup();
    fail(throttle, 'a', 9);
    expect(throttle.check('a').allowed).to.equal(true);
    throttle.recordFailure('a');
    expect(throttle.check('a')).to.deep.equal({ allowed: false, delayMs: 0, retryAfterSeconds: 300 });
    advance(100.5);
    expect(throttle.check('a')).to.deep.equal({ allowed: false, delayMs: 0, retryAfterSeconds: 200 });
    // Another failure during the ban does not extend it.
    throttle.recordFailure('a');
    expect(throttle.check('a').retryAfterSeconds).to.equal(200);
    advance(200);
    expect(throttle.check('a')).to.deep.equal({ allowed: true, delayMs: 0 });
    // The count started over after the ban.
    throttle.recordFailure('a');
    expect(throttle.check('a')).to.deep.equal({ allowed: true, delayMs: 0 });
  });

  it('keeps addresses independent', () => {
    const { throttle } = setup();
    fail(throttle, 'a', 10);
    fail(throttle, 'b', 4);
    expect(throttle.check('a').allowed).to.equal(false);
    expect(throttle.check('b')).to.deep.equal({ allowed: true, delayMs: 500 });
    expect(throttle.check('c')).to.deep.equal({ allowed: true, delayMs: 0 });
  });

  it('forgets failures once the window passes without a new one', () => {
    const { throttle, advance } = setup();
    fail(throttle, 'a', 5);
    advance(599);
    expect(throttle.check('a').delayMs).to.equal(1000);
    throttle.recordFailure('a'); // restarts the window
    advance(599);
    expect(throttle.check('a').delayMs).to.equal(2000);
    advance(1);
    expect(throttle.check('a')).to.deep.equal({ allowed: true, delayMs: 0 });
    expect(throttle.size).to.equal(0);
  });

  it('success clears the failure count but not an active ban', () => {
    const { throttle } = setup();
    fail(throttle, 'a', 5);
    throttle.recordSuccess('a');
    expect(throttle.check('a')).to.deep.equal({ allowed: true, delayMs: 0 });
    expect(throttle.size).to.equal(0);
    fail(throttle, 'b', 10);
    throttle.recordSuccess('b');
    expect(throttle.check('b').allowed).to.equal(false);
    throttle.recordSuccess('never-seen');
    expect(throttle.size).to.equal(1);
  });

  it('bans immediately when banAfter is 1', () => {
    const { throttle } = setup({ banAfter: 1, banSeconds: 60 });
    throttle.recordFailure('a');
    expect(throttle.check('a')).to.deep.equal({ allowed: false, delayMs: 0, retryAfterSeconds: 60 });
  });

  it('evicts expired entries as time passes', () => {
    const { throttle, advance } = setup({ windowSeconds: 10, banSeconds: 5 });
    for (let i = 0; i < 100; i++) throttle.recordFailure(`old-${i}`);
    expect(throttle.size).to.equal(100);
    advance(11);
    throttle.recordFailure('new');
    expect(throttle.size).to.equal(1);
  });

  it('caps memory by evicting the least recently updated address', () => {
    const { throttle, advance } = setup({ maxEntries: 3 });
    throttle.recordFailure('a');
    advance(1);
    throttle.recordFailure('b');
    advance(1);
    throttle.recordFailure('c');
    advance(1);
    throttle.recordFailure('a'); // refreshes a
    throttle.recordFailure('d'); // evicts b
    expect(throttle.size).to.equal(3);
    expect(throttle.check('b')).to.deep.equal({ allowed: true, delayMs: 0 });
    // 'a' survived the eviction with its count: 2 + 2 = 4 failures, one past delayAfter.
    fail(throttle, 'a', 2);
    expect(throttle.check('a').delayMs).to.equal(500);
  });

  it('stays bounded under a flood of distinct addresses', () => {
    const { throttle } = setup({ maxEntries: 1000 });
    for (let i = 0; i < 20_000; i++) throttle.recordFailure(`10.0.${i >> 8}.${i & 255}`);
    expect(throttle.size).to.equal(1000);
  });

  it('validates its options', () => {
    expect(() => setup({ delayMs: -1 })).to.throw(RangeError);
    expect(() => setup({ windowSeconds: Number.NaN })).to.throw(RangeError);
    expect(() => setup({ maxEntries: 0 })).to.throw(RangeError);
  });
});
