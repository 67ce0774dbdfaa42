/**
 * The connection as a UI shows it: live, (re)connecting with a countdown to the next attempt,
 * offline, or disconnected; with the number of messages received and when the last one came.
 */
import type { Centrifuge } from 'centrifuge';
import { ReconnectBackoff } from './backoff.js';
import { Emitter } from './emitter.js';

export type HeraldConnectionStatus = 'connecting' | 'live' | 'reconnecting' | 'offline' | 'disconnected';

export interface ConnectionState {
  status: HeraldConnectionStatus;
  /** Failed attempts since the connection was last live. */
  attempt: number;
  /** When the next connection attempt starts (ms since the epoch); null when none is scheduled. */
  nextRetryAt: number | null;
  /** Why the connection was lost or the last attempt failed. */
  lastError: { code: number; reason: string } | null;
  /** Publications received through this client since it was created. */
  messageCount: number;
  lastMessageAt: number | null;
  /** When the connection last became live. */
  connectedAt: number | null;
  clientId: string | null;
}

export interface ConnectionMonitorOptions {
  /** Milliseconds; must match the SDK's options (the client passes them to both). */
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  now?: () => number;
  random?: () => number;
  /** Where `online`/`offline` events come from (default: the global object in a browser). */
  networkEventTarget?: EventTarget | null;
}

/** The SDK method that picks each reconnect delay (a private member, see `ownReconnectDelays`). */
interface WithReconnectDelay {
  _getReconnectDelay?: () => number;
}

function browserIsOffline(): boolean {
  return typeof navigator !== 'undefined' && navigator.onLine === false;
}

export class ConnectionMonitor {
  private state: ConnectionState = {
    status: 'disconnected',
    attempt: 0,
    nextRetryAt: null,
    lastError: null,
    messageCount: 0,
    lastMessageAt: null,
    connectedAt: null,
    clientId: null,
  };
  private readonly events = new Emitter<{ change: ConnectionState }>();
  private readonly backoff: ReconnectBackoff;
  private readonly now: () => number;
  private everLive = false;
  private offline = browserIsOffline();
  /** Whether the countdown is exact (the SDK takes its delays from us). */
  readonly exactCountdown: boolean;
  private readonly detach: (() => void)[] = [];

  constructor(
    private readonly centrifuge: Centrifuge,
    options: ConnectionMonitorOptions = {},
  ) {
    this.now = options.now ?? Date.now;
    this.backoff = new ReconnectBackoff({
      minDelay: options.minReconnectDelay,
      maxDelay: options.maxReconnectDelay,
      random: options.random,
    });
    this.exactCountdown = this.ownReconnectDelays();
    const on = <E extends Parameters<Centrifuge['on']>[0]>(event: E, listener: Parameters<Centrifuge['on']>[1]) => {
      centrifuge.on(event, listener as never);
      this.detach.push(() => centrifuge.off(event, listener as never));
    };
    on('connecting', ((ctx: { code: number; reason: string }) => this.onConnecting(ctx)) as never);
    on('connected', ((ctx: { client: string }) => this.onConnected(ctx)) as never);
    on('disconnected', ((ctx: { code: number; reason: string }) => this.onDisconnected(ctx)) as never);
    on('error', ((ctx: { error?: { code: number; message: string } }) => {
      if (ctx.error && this.state.status !== 'live') {
        this.update({ lastError: { code: ctx.error.code, reason: ctx.error.message } });
      }
    }) as never);
    const target =
      options.networkEventTarget !== undefined
        ? options.networkEventTarget
        : typeof globalThis.addEventListener === 'function'
          ? (globalThis as unknown as EventTarget)
          : null;
    if (target) {
      const onOffline = () => this.setOffline(true);
      const onOnline = () => this.setOffline(false);
      target.addEventListener('offline', onOffline);
      target.addEventListener('online', onOnline);
      this.detach.push(() => {
        target.removeEventListener('offline', onOffline);
        target.removeEventListener('online', onOnline);
      });
    }
    if (centrifuge.state === 'connected') this.onConnected({ client: '' });
    else if (centrifuge.state === 'connecting') this.onConnecting({ code: 0, reason: 'connecting' });
  }

  getState = (): ConnectionState => this.state;

  subscribe = (listener: () => void): (() => void) => this.events.on('change', listener);

  /** Counts one received message (the client calls this for every delivered publication). */
  countMessage(at: number = this.now()): void {
    this.update({ messageCount: this.state.messageCount + 1, lastMessageAt: at });
  }

  close(): void {
    for (const detach of this.detach) detach();
    this.events.removeAll();
  }

  /**
   * The SDK does not say how long it waits before reconnecting, so the client hands it the
   * delays: the instance's `_getReconnectDelay` (centrifuge 5.x) is replaced by our backoff,
   * which records when the next attempt is due. Returns false when the SDK has no such method
   * (another major version): the status is still right, only the countdown is unknown.
   */
  private ownReconnectDelays(): boolean {
    const sdk = this.centrifuge as unknown as WithReconnectDelay;
    if (typeof sdk._getReconnectDelay !== 'function') return false;
    sdk._getReconnectDelay = () => {
      const delay = this.backoff.next();
      this.update({ nextRetryAt: this.now() + delay, attempt: this.backoff.attempts });
      return delay;
    };
    return true;
  }

  private statusWhileConnecting(): HeraldConnectionStatus {
    if (this.offline) return 'offline';
    return this.everLive ? 'reconnecting' : 'connecting';
  }

  private onConnecting(ctx: { code: number; reason: string }): void {
    // Code 0 is the application calling connect(), not a failure.
    const lastError = ctx.code === 0 ? this.state.lastError : { code: ctx.code, reason: ctx.reason };
    this.update({ status: this.statusWhileConnecting(), lastError, nextRetryAt: null });
  }

  private onConnected(ctx: { client: string }): void {
    this.everLive = true;
    this.backoff.reset();
    this.update({
      status: 'live',
      attempt: 0,
      nextRetryAt: null,
      lastError: null,
      connectedAt: this.now(),
      clientId: ctx.client || null,
    });
  }

  private onDisconnected(ctx: { code: number; reason: string }): void {
    this.update({ status: 'disconnected', nextRetryAt: null, lastError: { code: ctx.code, reason: ctx.reason }, clientId: null });
  }

  private setOffline(offline: boolean): void {
    this.offline = offline;
    if (this.state.status === 'live' || this.state.status === 'disconnected') return;
    this.update({ status: this.statusWhileConnecting() });
  }

  private update(patch: Partial<ConnectionState>): void {
    this.state = { ...this.state, ...patch };
    this.events.emit('change', this.state);
  }
}
