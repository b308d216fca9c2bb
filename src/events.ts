// A prioritised event bus, after Prosody's: handlers run by descending
// priority and the first one to return `true` stops the chain. Handlers may
// be async; the chain stays synchronous until a handler returns a promise, so
// the hot path (message routing with no storage) never allocates a promise.

export type HandlerResult = boolean | void | Promise<boolean | void>;
export type Handler<P> = (payload: P) => HandlerResult;

interface Entry<P> {
  handler: Handler<P>;
  priority: number;
  order: number;
}

let insertionCounter = 0;

export class HookBus<M extends object> {
  private readonly handlers = new Map<keyof M, Entry<never>[]>();

  /** Registers a handler; returns a function that removes it again. */
  on<K extends keyof M>(event: K, handler: Handler<M[K]>, priority = 0): () => void {
    const entry: Entry<M[K]> = { handler, priority, order: insertionCounter++ };
    const list = (this.handlers.get(event) ?? []) as Entry<M[K]>[];
    // Copy-on-write: a fire() in progress keeps iterating its own snapshot.
    const next = [...list, entry].sort((a, b) => b.priority - a.priority || a.order - b.order);
    this.handlers.set(event, next as Entry<never>[]);
    return () => {
      const current = (this.handlers.get(event) ?? []) as Entry<M[K]>[];
      const remaining = current.filter((e) => e !== entry);
      if (remaining.length) this.handlers.set(event, remaining as Entry<never>[]);
      else this.handlers.delete(event);
    };
  }

  has<K extends keyof M>(event: K): boolean {
    return this.handlers.has(event);
  }

  /**
   * Runs the handlers of `event`. Returns true when one of them handled it.
   * The result is a plain boolean unless some handler went async.
   */
  fire<K extends keyof M>(event: K, payload: M[K]): boolean | Promise<boolean> {
    const list = this.handlers.get(event) as Entry<M[K]>[] | undefined;
    if (!list) return false;
    for (let i = 0; i < list.length; i++) {
      const result = list[i].handler(payload);
      if (result === true) return true;
      if (result instanceof Promise) return this.continueAsync(list, i, result, payload);
    }
    return false;
  }

  private async continueAsync<P>(
    list: Entry<P>[],
    index: number,
    pending: Promise<boolean | void>,
    payload: P,
  ): Promise<boolean> {
    if ((await pending) === true) return true;
    for (let i = index + 1; i < list.length; i++) {
      // Only a handler that went async is waited for: awaiting a plain
      // result would cost a turn of the microtask queue per handler.
      const result = list[i].handler(payload);
      if ((result instanceof Promise ? await result : result) === true) return true;
    }
    return false;
  }
}

/** Runs `then` after `value`, synchronously when `value` is not a promise. */
export function after<T, R>(value: T | Promise<T>, then: (v: T) => R | Promise<R>): R | Promise<R> {
  return value instanceof Promise ? value.then(then) : then(value);
}
