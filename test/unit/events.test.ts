// The prioritised event bus (src/events.ts): ordering, the first handler to
// return true stopping the chain, the sync/async hand-over, removal, and the
// snapshot that a fire() in progress keeps while handlers are added or removed.
import { expect } from 'chai';
import { HookBus, after } from '../../src/events.ts';

interface TestEvents {
  ping: string[];
  other: string[];
}

/** Resolves after the current macrotask, so a handler is really asynchronous. */
function tick(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

describe('HookBus', function () {
  describe('ordering', function () {
    it('runs handlers by descending priority, whatever the order they were added in', function () {
      const bus = new HookBus<TestEvents>();
      bus.on('ping', (log) => void log.push('zero'), 0);
      bus.on('ping', (log) => void log.push('low'), -500);
      bus.on('ping', (log) => void log.push('high'), 100);
      bus.on('ping', (log) => void log.push('mid'), 10);
      const log: string[] = [];
      expect(bus.fire('ping', log)).to.equal(false);
      expect(log).to.deep.equal(['high', 'mid', 'zero', 'low']);
    });

    it('runs handlers of equal priority in the order they were added', function () {
      const bus = new HookBus<TestEvents>();
      for (const name of ['first', 'second', 'third']) bus.on('ping', (log) => void log.push(name), 5);
      const log: string[] = [];
      bus.fire('ping', log);
      expect(log).to.deep.equal(['first', 'second', 'third']);
    });

    it('uses priority 0 when none is given', function () {
      const bus = new HookBus<TestEvents>();
      bus.on('ping', (log) => void log.push('minus-one'), -1);
      bus.on('ping', (log) => void log.push('default'));
      bus.on('ping', (log) => void log.push('plus-one'), 1);
      const log: string[] = [];
      bus.fire('ping', log);
      expect(log).to.deep.equal(['plus-one', 'default', 'minus-one']);
    });

    it('keeps events apart', function () {
      const bus = new HookBus<TestEvents>();
      bus.on('ping', (log) => void log.push('ping'));
      bus.on('other', (log) => void log.push('other'));
      const log: string[] = [];
      bus.fire('other', log);
      expect(log).to.deep.equal(['other']);
    });
  });

  describe('stopping', function () {
    it('stops at the first handler that returns true and reports the event handled', function () {
      const bus = new HookBus<TestEvents>();
      bus.on('ping', (log) => void log.push('a'), 3);
      bus.on(
        'ping',
        (log) => {
          log.push('b');
          return true;
        },
        2,
      );
      bus.on('ping', (log) => void log.push('c'), 1);
      const log: string[] = [];
      expect(bus.fire('ping', log)).to.equal(true);
      expect(log).to.deep.equal(['a', 'b']);
    });

    it('does not stop on false or undefined', function () {
      const bus = new HookBus<TestEvents>();
      bus.on(
        'ping',
        (log) => {
          log.push('false');
          return false;
        },
        2,
      );
      bus.on('ping', (log) => void log.push('undefined'), 1);
      const log: string[] = [];
      expect(bus.fire('ping', log)).to.equal(false);
      expect(log).to.deep.equal(['false', 'undefined']);
    });

    it('returns false for an event without handlers', function () {
      const bus = new HookBus<TestEvents>();
      expect(bus.has('ping')).to.equal(false);
      expect(bus.fire('ping', [])).to.equal(false);
    });
  });

  describe('asynchronous handlers', function () {
    it('returns a plain boolean, not a promise, while every handler is synchronous', function () {
      const bus = new HookBus<TestEvents>();
      bus.on('ping', () => undefined);
      bus.on('ping', () => true, -1);
      const result = bus.fire('ping', []);
      expect(result).to.equal(true);
      expect(result).not.to.be.instanceOf(Promise);
    });

    it('waits for an async handler mid-chain before running the next one', async function () {
      const bus = new HookBus<TestEvents>();
      bus.on('ping', (log) => void log.push('sync-before'), 3);
      bus.on(
        'ping',
        async (log) => {
          log.push('async-start');
          await tick();
          log.push('async-end');
        },
        2,
      );
      bus.on('ping', (log) => void log.push('sync-after'), 1);
      const log: string[] = [];
      const result = bus.fire('ping', log);
      expect(result).to.be.instanceOf(Promise);
      // Handlers up to the async one ran synchronously; the rest waits.
      expect(log).to.deep.equal(['sync-before', 'async-start']);
      expect(await result).to.equal(false);
      expect(log).to.deep.equal(['sync-before', 'async-start', 'async-end', 'sync-after']);
    });

    it('stops when an async handler resolves to true', async function () {
      const bus = new HookBus<TestEvents>();
      bus.on(
        'ping',
        async (log) => {
          await tick();
          log.push('async');
          return true;
        },
        2,
      );
      bus.on('ping', (log) => void log.push('never'), 1);
      const log: string[] = [];
      expect(await bus.fire('ping', log)).to.equal(true);
      expect(log).to.deep.equal(['async']);
    });

    it('stops at a later handler that returns true after the chain went async', async function () {
      const bus = new HookBus<TestEvents>();
      bus.on(
        'ping',
        async (log) => {
          await tick();
          log.push('first');
        },
        3,
      );
      bus.on(
        'ping',
        async (log) => {
          await tick();
          log.push('second');
          return true;
        },
        2,
      );
      bus.on('ping', (log) => void log.push('never'), 1);
      const log: string[] = [];
      expect(await bus.fire('ping', log)).to.equal(true);
      expect(log).to.deep.equal(['first', 'second']);
    });

    it('runs async handlers one at a time, never concurrently', async function () {
      const bus = new HookBus<TestEvents>();
      let running = 0;
      let overlap = false;
      for (let i = 0; i < 4; i++) {
        bus.on('ping', async (log) => {
          running++;
          if (running > 1) overlap = true;
          await tick();
          log.push(String(i));
          running--;
        });
      }
      const log: string[] = [];
      await bus.fire('ping', log);
      expect(overlap).to.equal(false);
      expect(log).to.deep.equal(['0', '1', '2', '3']);
    });

    it('propagates a synchronous throw and an async rejection to the caller', async function () {
      const bus = new HookBus<TestEvents>();
      bus.on('ping', () => {
        throw new Error('sync failure');
      });
      expect(() => bus.fire('ping', [])).to.throw('sync failure');

      const asyncBus = new HookBus<TestEvents>();
      asyncBus.on('ping', async () => {
        await tick();
        throw new Error('async failure');
      });
      let caught: unknown;
      try {
        await asyncBus.fire('ping', []);
      } catch (err) {
        caught = err;
      }
      expect(caught).to.be.instanceOf(Error).with.property('message', 'async failure');
    });
  });

  describe('removal', function () {
    it('returns a remover that takes exactly that handler out', function () {
      const bus = new HookBus<TestEvents>();
      const handler = (log: string[]) => void log.push('shared');
      bus.on('ping', handler);
      const remove = bus.on('ping', handler); // the same function twice: two entries
      bus.on('ping', (log) => void log.push('other'));
      remove();
      const log: string[] = [];
      bus.fire('ping', log);
      expect(log).to.deep.equal(['shared', 'other']);
    });

    it('forgets the event when its last handler goes, and tolerates removing twice', function () {
      const bus = new HookBus<TestEvents>();
      const remove = bus.on('ping', () => true);
      expect(bus.has('ping')).to.equal(true);
      remove();
      remove();
      expect(bus.has('ping')).to.equal(false);
      expect(bus.fire('ping', [])).to.equal(false);
    });

    it('does not disturb other handlers when removing twice', function () {
      const bus = new HookBus<TestEvents>();
      const remove = bus.on('ping', (log) => void log.push('gone'));
      bus.on('ping', (log) => void log.push('stays'));
      remove();
      remove();
      const log: string[] = [];
      bus.fire('ping', log);
      expect(log).to.deep.equal(['stays']);
    });
  });

  describe('copy-on-write while firing', function () {
    it('does not run a handler added during a fire until the next fire', function () {
      const bus = new HookBus<TestEvents>();
      let added = false;
      bus.on('ping', (log) => {
        log.push('adder');
        if (!added) {
          added = true;
          bus.on('ping', (l) => void l.push('late'), -10);
        }
      });
      const first: string[] = [];
      bus.fire('ping', first);
      expect(first).to.deep.equal(['adder']);
      const second: string[] = [];
      bus.fire('ping', second);
      expect(second).to.deep.equal(['adder', 'late']);
    });

    it('still runs, in the fire in progress, a handler removed during it', function () {
      const bus = new HookBus<TestEvents>();
      let removeLater: () => void = () => undefined;
      bus.on(
        'ping',
        (log) => {
          log.push('remover');
          removeLater();
        },
        10,
      );
      removeLater = bus.on('ping', (log) => void log.push('removed'), 0);
      const first: string[] = [];
      bus.fire('ping', first);
      expect(first).to.deep.equal(['remover', 'removed']);
      const second: string[] = [];
      bus.fire('ping', second);
      expect(second).to.deep.equal(['remover']);
    });

    it('keeps its snapshot across an await when handlers change meanwhile', async function () {
      const bus = new HookBus<TestEvents>();
      bus.on(
        'ping',
        async (log) => {
          log.push('async');
          await tick();
        },
        10,
      );
      const removeTail = bus.on('ping', (log) => void log.push('tail'), 0);
      const log: string[] = [];
      const pending = bus.fire('ping', log);
      // While the first handler awaits, the chain is changed from outside.
      removeTail();
      bus.on('ping', (l) => void l.push('newcomer'), 5);
      await pending;
      expect(log).to.deep.equal(['async', 'tail']);
      const next: string[] = [];
      await bus.fire('ping', next);
      expect(next).to.deep.equal(['async', 'newcomer']);
    });
  });
});

describe('after()', function () {
  it('runs the continuation synchronously for a plain value', function () {
    const result = after(2, (n) => n * 10);
    expect(result).to.equal(20);
  });

  it('chains onto a promise', async function () {
    const result = after(Promise.resolve(3), (n) => n * 10);
    expect(result).to.be.instanceOf(Promise);
    expect(await result).to.equal(30);
  });
});
