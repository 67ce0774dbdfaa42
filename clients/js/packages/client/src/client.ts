/**
 * HeraldClient: one connection (a centrifuge SDK client) with Herald's extensions. The SDK does
 * the protocol; this adds shared, reference-counted subscriptions with Herald options, gap
 * signals, acknowledgements and the connection state a UI shows.
 */
import { Centrifuge, type Options, type Subscription, type SubscriptionOptions } from 'centrifuge';
import { ConnectionMonitor } from './connection.js';
import { describeError, errorCode } from './errors.js';
import { parseGapSignal, type Gap } from './gaps.js';
import { HeraldSubscription, optionsIdentity, type HeraldSubscriptionOptions } from './subscription.js';

export interface HeraldClientOptions {
  /** WebSocket endpoint, for example `ws://127.0.0.1:8000/connection/websocket`. */
  url: string;
  /** A connection JWT; or `getToken` to fetch (and refresh) one. */
  token?: string;
  getToken?: () => Promise<string>;
  /** Reconnect backoff bounds in ms (defaults 500 and 20000, as the SDK). */
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  /** Any other centrifuge SDK option (`websocket` for Node, `debug`, `timeout`, ...). */
  centrifuge?: Partial<Options>;
}

interface Entry {
  subscription: HeraldSubscription;
  identity: string;
  refs: number;
  removal: ReturnType<typeof setTimeout> | null;
}

/** The SDK rejects with `{code, message}`; make it an Error that says what failed, keeping the code. */
function describeFailure(what: string, error: unknown): Error & { code: number } {
  return Object.assign(new Error(`${what}: ${describeError(error)}`), { code: errorCode(error) });
}

/** An SDK client (also one from another copy of the package, where `instanceof` fails). */
function isCentrifuge(value: unknown): value is Centrifuge {
  return (
    value instanceof Centrifuge ||
    (typeof value === 'object' &&
      value !== null &&
      typeof (value as Centrifuge).newSubscription === 'function' &&
      typeof (value as Centrifuge).connect === 'function')
  );
}

export class HeraldClient {
  readonly centrifuge: Centrifuge;
  readonly connection: ConnectionMonitor;
  private readonly entries = new Map<string, Entry>();
  private readonly gapListeners = new Set<(gap: Gap) => void>();

  constructor(options: HeraldClientOptions | { centrifuge: Centrifuge; minReconnectDelay?: number; maxReconnectDelay?: number }) {
    const minReconnectDelay = options.minReconnectDelay ?? 500;
    const maxReconnectDelay = options.maxReconnectDelay ?? 20000;
    if (isCentrifuge(options.centrifuge)) {
      this.centrifuge = options.centrifuge;
    } else {
      const own = options as HeraldClientOptions;
      const sdkOptions: Partial<Options> = { ...(own.centrifuge ?? {}), minReconnectDelay, maxReconnectDelay };
      if (own.token !== undefined) sdkOptions.token = own.token;
      if (own.getToken) sdkOptions.getToken = () => own.getToken!();
      this.centrifuge = new Centrifuge(own.url, sdkOptions);
    }
    this.connection = new ConnectionMonitor(this.centrifuge, { minReconnectDelay, maxReconnectDelay });
    this.centrifuge.on('message', (ctx) => {
      const gap = parseGapSignal(ctx.data);
      if (gap) this.onGapSignal(gap);
    });
    // Server-side subscriptions (from the token or the server API) count as messages too.
    this.centrifuge.on('publication', () => this.connection.countMessage());
  }

  connect(): void {
    this.centrifuge.connect();
  }

  disconnect(): void {
    this.centrifuge.disconnect();
  }

  /**
   * The subscription to `channel`, created (and subscribed) on first use and shared after that.
   * `options` undefined accepts whatever the existing subscription has; different options for a
   * channel already subscribed are an error (one connection has one subscription per channel).
   * Pair with `release`.
   */
  retain(channel: string, options?: HeraldSubscriptionOptions): HeraldSubscription {
    const existing = this.entries.get(channel);
    if (existing) {
      if (options !== undefined && optionsIdentity(options) !== existing.identity) {
        throw new Error(
          `channel ${channel} is already subscribed with other options (${existing.identity}); ` +
            `asked for ${optionsIdentity(options)}`,
        );
      }
      existing.refs += 1;
      if (existing.removal) clearTimeout(existing.removal);
      existing.removal = null;
      return existing.subscription;
    }
    const resolved = options ?? {};
    const subscription = new HeraldSubscription(channel, resolved, {
      newSdkSubscription: (name: string, sdkOptions: SubscriptionOptions): Subscription => {
        if (this.centrifuge.getSubscription(name)) {
          // Its options (change form, filters...) would silently not be ours.
          throw new Error(`channel ${name} already has an SDK subscription that HeraldClient did not make; remove it or use retain() for both`);
        }
        return this.centrifuge.newSubscription(name, sdkOptions);
      },
      removeSdkSubscription: (sdk: Subscription) => this.centrifuge.removeSubscription(sdk),
      rpc: (method: string, data: unknown) => this.rpc(method, data),
      isConnected: () => this.centrifuge.state === 'connected',
      countMessage: () => this.connection.countMessage(),
    });
    this.entries.set(channel, { subscription, identity: optionsIdentity(resolved), refs: 1, removal: null });
    subscription.subscribe();
    return subscription;
  }

  /**
   * Gives back a subscription from `retain`. The last release unsubscribes, a moment later, so
   * that a component that remounts at once (React StrictMode, route changes) keeps it.
   */
  release(subscription: HeraldSubscription, graceMs = 0): void {
    const entry = this.entries.get(subscription.channel);
    if (!entry || entry.subscription !== subscription) return;
    entry.refs -= 1;
    if (entry.refs > 0) return;
    entry.removal = setTimeout(() => {
      if (entry.refs > 0) return;
      this.entries.delete(subscription.channel);
      subscription.close();
    }, graceMs);
  }

  /** The shared subscription to `channel`, when there is one. */
  subscription(channel: string): HeraldSubscription | undefined {
    return this.entries.get(channel)?.subscription;
  }

  /** `herald.ack` for `channel` up to `offset`; resolves with the deliveries confirmed. */
  async ack(channel: string, offset: number): Promise<number> {
    const entry = this.entries.get(channel);
    if (entry) return entry.subscription.ack(offset);
    const reply = await this.rpc('herald.ack', { channel, offset });
    return Number((reply.data as { acknowledged?: unknown } | null)?.acknowledged ?? 0);
  }

  /** An RPC whose failure is an Error naming the method. */
  async rpc(method: string, data: unknown): Promise<{ data: unknown }> {
    try {
      return await this.centrifuge.rpc(method, data);
    } catch (error) {
      throw describeFailure(`rpc ${method}`, error);
    }
  }

  /** Listens to every gap signal (the channel's subscription also fills it). */
  onGap(listener: (gap: Gap) => void): () => void {
    this.gapListeners.add(listener);
    return () => this.gapListeners.delete(listener);
  }

  /** Delivers a gap signal as if Herald had sent it (used by the push listener, and by tests). */
  onGapSignal(gap: Gap): void {
    for (const listener of [...this.gapListeners]) {
      try {
        listener(gap);
      } catch (error) {
        console.error(error);
      }
    }
    void this.entries.get(gap.channel)?.subscription.handleGap(gap);
  }

  /** Closes every subscription and the connection. */
  close(): void {
    for (const entry of this.entries.values()) {
      if (entry.removal) clearTimeout(entry.removal);
      entry.subscription.close();
    }
    this.entries.clear();
    this.centrifuge.disconnect();
    this.connection.close();
  }
}
