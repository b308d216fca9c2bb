// Counts events per client address in a sliding window, with bounded memory:
// used to cap new connections and in-band registrations per address.

export class AddressLimiter {
  private readonly recent = new Map<string, number[]>();

  constructor(
    private readonly max: number,
    private readonly windowMs: number,
    private readonly maxAddresses = 100_000,
  ) {}

  /** Records an event for `address`; false when it is over the limit (the event is not counted). */
  allow(address: string, now = Date.now()): boolean {
    const times = (this.recent.get(address) ?? []).filter((t) => now - t < this.windowMs);
    if (times.length >= this.max) {
      this.recent.set(address, times);
      return false;
    }
    times.push(now);
    // Re-insert so the map stays ordered by activity, and the oldest goes first.
    this.recent.delete(address);
    this.recent.set(address, times);
    if (this.recent.size > this.maxAddresses) this.recent.delete(this.recent.keys().next().value!);
    return true;
  }
}
