/**
 * Reconnect backoff with "full jitter", the same shape as the centrifuge SDK's own: attempt `n`
 * waits `min + random(0, min(max, min * 2^n))`, capped at `max`. Herald owns the numbers (instead
 * of leaving them inside the SDK) so that the UI can show an exact countdown to the next attempt.
 */
export interface BackoffOptions {
  /** Milliseconds; the SDK's `minReconnectDelay` (default 500). */
  minDelay?: number;
  /** Milliseconds; the SDK's `maxReconnectDelay` (default 20000). */
  maxDelay?: number;
  /** A number in [0, 1); injectable so tests are deterministic. */
  random?: () => number;
}

export class ReconnectBackoff {
  readonly minDelay: number;
  readonly maxDelay: number;
  private readonly random: () => number;
  private attempt = 0;

  constructor(options: BackoffOptions = {}) {
    this.minDelay = options.minDelay ?? 500;
    this.maxDelay = options.maxDelay ?? 20000;
    if (!(this.minDelay >= 0) || !(this.maxDelay >= this.minDelay)) {
      throw new RangeError(
        `reconnect backoff needs 0 <= minDelay <= maxDelay (got minDelay ${this.minDelay}, maxDelay ${this.maxDelay})`,
      );
    }
    this.random = options.random ?? Math.random;
  }

  /** How many delays were handed out since the last reset. */
  get attempts(): number {
    return this.attempt;
  }

  /** The delay before the next attempt, in milliseconds; advances the attempt count. */
  next(): number {
    const step = Math.min(this.attempt, 31);
    this.attempt += 1;
    const ceiling = Math.min(this.maxDelay, this.minDelay * 2 ** step);
    const jitter = Math.floor(this.random() * (ceiling + 1));
    return Math.min(this.maxDelay, this.minDelay + jitter);
  }

  /** After a successful connection the next failure starts from the minimum again. */
  reset(): void {
    this.attempt = 0;
  }
}

/** Whole seconds left until `at` (rounded up, never negative): what a countdown shows. */
export function secondsUntil(at: number, now: number): number {
  return Math.max(0, Math.ceil((at - now) / 1000));
}
