// Runs async tasks one after another per key (per user, usually), so that a
// read-modify-write on storage never races with another for the same key.
// The storage API has no compare-and-set; within one process this is enough.

export class KeyedQueue {
  private readonly tails = new Map<string, Promise<void>>();

  /** Runs `task` once every earlier task of `key` has settled. */
  run<T>(key: string, task: () => T | Promise<T>): Promise<T> {
    const result = (this.tails.get(key) ?? Promise.resolve()).then(task);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(key, tail);
    // Forget the key once nothing is queued behind this task: the map stays small.
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return result;
  }

  /** True while a task of `key` is queued or running. */
  busy(key: string): boolean {
    return this.tails.has(key);
  }
}
