/**
 * A Herald subscription: the SDK's `Subscription` plus Herald's extensions. It asks for the change
 * form and filters in the subscribe request, drops duplicate deliveries by offset (Herald
 * redelivers unacknowledged publications with the same offset), acknowledges with `herald.ack`,
 * fills signalled gaps from history, and says when the application must resync (recovery failed,
 * a gap could not be filled).
 */
import type {
  ClientInfo,
  FilterNode,
  JoinContext,
  LeaveContext,
  PublicationContext,
  SubscribedContext,
  SubscribingContext,
  Subscription,
  SubscriptionErrorContext,
  SubscriptionOptions,
  UnsubscribedContext,
} from 'centrifuge';
import { isChangeEnvelope, type ChangeEnvelope } from './changes.js';
import { Emitter } from './emitter.js';
import { describeError, errorCode } from './errors.js';
import { historyRequestForGap, publicationsForGap, type Gap } from './gaps.js';

/** A Herald filter (docs/protocol.md, "Filters"): like the SDK's FilterNode, plus `path`. */
export interface HeraldFilter {
  op?: 'and' | 'or' | 'not';
  key?: string;
  /** A JSON Pointer into the publication's full data, instead of a tag `key`. */
  path?: string;
  cmp?: 'eq' | 'neq' | 'in' | 'nin' | 'ex' | 'nex' | 'sw' | 'ew' | 'ct' | 'lt' | 'lte' | 'gt' | 'gte';
  val?: string;
  vals?: string[];
  nodes?: HeraldFilter[];
}

export type AckMode = 'off' | 'auto' | 'manual';

export interface HeraldSubscriptionOptions {
  /** The change envelope form: `full` (default, with `new`) or `patch` (JSON Patch only). */
  changes?: 'full' | 'patch';
  /** Herald filters; a publication matching any of them is delivered. */
  filters?: HeraldFilter[];
  /** Centrifugo's tag filter (`tf`). */
  tagsFilter?: FilterNode;
  /** Recover from the user's durable cursor (stored by acknowledgements) on a fresh subscribe. */
  resume?: boolean;
  /**
   * `auto`: acknowledge (cumulatively) every publication once the listeners ran; `manual`: call
   * `ack(offset)` yourself; `off` (default): never.
   */
  ack?: AckMode;
  /** How long `auto` waits to fold several publications into one acknowledgement (ms, default 20). */
  ackDelayMs?: number;
  /** Ask for join/leave pushes (default true; the namespace must allow them). */
  joinLeave?: boolean;
  /** Ask for recovery after reconnects (default true; the namespace must keep history). */
  recoverable?: boolean;
  /** More subscribe data; Herald's own settings go under its `herald` key. */
  data?: Record<string, unknown>;
  token?: string;
  getToken?: SubscriptionOptions['getToken'];
  /**
   * Called when Herald signals skipped offsets. Return the missing publications (they are
   * delivered in order, before anything newer), or nothing when you handle it yourself. Default:
   * read them from the channel's history; a failure there emits `resync`.
   */
  onGap?: (gap: Gap, subscription: HeraldSubscription) => Promise<PublicationContext[] | void>;
  /**
   * Fill signalled gaps (default true). False when only the newest state matters (positions, live
   * samples): the `gap` event still fires, nothing is fetched and nothing is held back.
   */
  fillGaps?: boolean;
  /**
   * Most publications asked of history in one call when filling a gap (default 50). A history
   * reply is never shed: it must fit in the connection's queue (`client.queue_max_size`) next to
   * whatever is still queued, or the server disconnects the client as slow (the fill is then
   * retried after the resubscribe).
   */
  gapPageSize?: number;
}

/** SDK error codes after which a gap fill is worth retrying on the next connection. */
const RETRIABLE_CODES = new Set([1 /* timeout */, 11 /* connection closed */]);

export interface HeraldPublication<T = unknown> {
  channel: string;
  data: T;
  offset?: number;
  tags?: Record<string, string>;
  info?: ClientInfo;
  /** The data as a change envelope, when it is one. */
  change?: ChangeEnvelope;
  /**
   * How it arrived: live, in the recovery after a resubscribe, filling a signalled gap, or read
   * with `recentHistory`.
   */
  source: 'live' | 'recovery' | 'gap' | 'history';
}

export interface ResyncEvent {
  channel: string;
  reason: string;
}

export interface AckEvent {
  channel: string;
  offset: number;
  /** Deliveries the server confirmed (0 when none was tracked: the ack still moved the cursor). */
  acknowledged: number;
}

export type HeraldSubscriptionEvents = {
  publication: HeraldPublication;
  subscribing: SubscribingContext;
  subscribed: SubscribedContext;
  unsubscribed: UnsubscribedContext;
  join: JoinContext;
  leave: LeaveContext;
  error: SubscriptionErrorContext | { channel: string; type: 'ack' | 'gap'; error: { code: number; message: string } };
  resync: ResyncEvent;
  gap: Gap;
  ack: AckEvent;
};

/** What the subscription needs from its client (kept narrow so tests can provide it). */
export interface SubscriptionHost {
  newSdkSubscription(channel: string, options: SubscriptionOptions): Subscription;
  removeSdkSubscription(subscription: Subscription): void;
  rpc(method: string, data: unknown): Promise<{ data: unknown }>;
  isConnected(): boolean;
  countMessage(publication: HeraldPublication): void;
}

/** How many delivered offsets are remembered to drop duplicate deliveries of filled gaps. */
const RECENT_OFFSETS = 4096;

/** The subscribe `data` for `options`: the caller's data plus Herald's settings under `herald`. */
export function subscribeData(options: HeraldSubscriptionOptions): Record<string, unknown> | undefined {
  const herald: Record<string, unknown> = {};
  if (options.changes === 'patch') herald.changes = 'patch';
  if (options.filters && options.filters.length > 0) herald.filters = options.filters;
  if (options.resume) herald.resume = true;
  const data = { ...(options.data ?? {}) };
  if (Object.keys(herald).length > 0) {
    const theirs = data.herald;
    data.herald = typeof theirs === 'object' && theirs !== null ? { ...theirs, ...herald } : herald;
  }
  return Object.keys(data).length > 0 ? data : undefined;
}

/** What makes two subscriptions to a channel different (and so not shareable). */
export function optionsIdentity(options: HeraldSubscriptionOptions): string {
  return JSON.stringify({
    data: subscribeData(options) ?? null,
    tagsFilter: options.tagsFilter ?? null,
    ack: options.ack ?? 'off',
    joinLeave: options.joinLeave ?? true,
    recoverable: options.recoverable ?? true,
  });
}

export class HeraldSubscription {
  readonly sdk: Subscription;
  private readonly events = new Emitter<HeraldSubscriptionEvents>();
  private lastOffsetSeen = 0;
  private epochSeen = '';
  private readonly recent = new Set<number>();
  private readonly recentOrder: number[] = [];
  private deliveringRecovery = false;
  private gapFills = 0;
  /** Offsets of a fill that the connection's loss interrupted; retried after resubscribing. */
  private readonly gapToRetry = new Set<number>();
  private heldDuringGap: { publication: PublicationContext; source: HeraldPublication['source'] }[] = [];
  private ackTimer: ReturnType<typeof setTimeout> | null = null;
  private ackedOffset = 0;
  private ackInFlight: Promise<void> | null = null;

  constructor(
    readonly channel: string,
    readonly options: HeraldSubscriptionOptions,
    private readonly host: SubscriptionHost,
  ) {
    const sdkOptions: SubscriptionOptions = {
      recoverable: options.recoverable ?? true,
      joinLeave: options.joinLeave ?? true,
    };
    const data = subscribeData(options);
    if (data !== undefined) sdkOptions.data = data;
    if (options.tagsFilter) sdkOptions.tagsFilter = options.tagsFilter;
    if (options.token !== undefined) sdkOptions.token = options.token;
    if (options.getToken) sdkOptions.getToken = options.getToken;
    this.sdk = host.newSdkSubscription(channel, sdkOptions);
    this.sdk.on('publication', (ctx) => this.onSdkPublication(ctx));
    this.sdk.on('subscribing', (ctx) => this.events.emit('subscribing', ctx));
    this.sdk.on('subscribed', (ctx) => this.onSubscribed(ctx));
    this.sdk.on('unsubscribed', (ctx) => this.events.emit('unsubscribed', ctx));
    this.sdk.on('join', (ctx) => this.events.emit('join', ctx));
    this.sdk.on('leave', (ctx) => this.events.emit('leave', ctx));
    this.sdk.on('error', (ctx) => this.events.emit('error', ctx));
  }

  on<K extends keyof HeraldSubscriptionEvents>(event: K, listener: (payload: HeraldSubscriptionEvents[K]) => void): () => void {
    return this.events.on(event, listener);
  }

  /** The offset of the newest publication delivered (0 before any). */
  get lastOffset(): number {
    return this.lastOffsetSeen;
  }

  get epoch(): string {
    return this.epochSeen;
  }

  get state(): Subscription['state'] {
    return this.sdk.state;
  }

  isSubscribed(): boolean {
    return this.sdk.state === 'subscribed';
  }

  subscribe(): void {
    this.sdk.subscribe();
  }

  unsubscribe(): void {
    this.sdk.unsubscribe();
  }

  /** Unsubscribes, removes the SDK subscription and drops all listeners. */
  close(): void {
    if (this.ackTimer) clearTimeout(this.ackTimer);
    this.ackTimer = null;
    this.sdk.unsubscribe();
    this.sdk.removeAllListeners();
    this.host.removeSdkSubscription(this.sdk);
    this.events.removeAll();
  }

  presence() {
    return this.sdk.presence();
  }

  presenceStats() {
    return this.sdk.presenceStats();
  }

  history(options: Parameters<Subscription['history']>[0]) {
    return this.sdk.history(options);
  }

  /**
   * The newest `limit` publications of the channel's history, oldest first (as the application
   * sees them: with its filters, audience and change form). Not delivered as events: for filling
   * a view at first and after a resync.
   */
  async recentHistory(limit: number): Promise<HeraldPublication[]> {
    if (!Number.isSafeInteger(limit) || limit <= 0) throw new RangeError(`recentHistory: limit must be a positive integer (got ${limit})`);
    let answer: Awaited<ReturnType<Subscription['history']>>;
    try {
      answer = await this.sdk.history({ limit, reverse: true });
    } catch (error) {
      throw Object.assign(new Error(`history of ${this.channel}: ${describeError(error)}`), { code: errorCode(error) });
    }
    return answer.publications
      .map((ctx) => this.toPublication(ctx, 'history'))
      .sort((a, b) => (a.offset ?? 0) - (b.offset ?? 0));
  }

  private toPublication(ctx: PublicationContext, source: HeraldPublication['source']): HeraldPublication {
    const publication: HeraldPublication = {
      channel: this.channel,
      data: ctx.data,
      offset: ctx.offset,
      tags: ctx.tags,
      info: ctx.info,
      source,
    };
    if (isChangeEnvelope(ctx.data)) publication.change = ctx.data;
    return publication;
  }

  /**
   * Acknowledges everything up to `offset` on this channel (`herald.ack`, cumulative; also stores
   * the user's durable cursor). Resolves with the number of deliveries the server confirmed.
   */
  async ack(offset: number = this.lastOffsetSeen): Promise<number> {
    if (!Number.isSafeInteger(offset) || offset <= 0) {
      throw new RangeError(`herald.ack on ${this.channel}: offset must be a positive integer (got ${offset})`);
    }
    const reply = await this.host.rpc('herald.ack', { channel: this.channel, offset });
    const acknowledged = Number((reply.data as { acknowledged?: unknown } | null)?.acknowledged ?? 0);
    this.ackedOffset = Math.max(this.ackedOffset, offset);
    this.events.emit('ack', { channel: this.channel, offset, acknowledged });
    return acknowledged;
  }

  /** Handles a gap signal for this channel (the client routes Herald's signals here). */
  async handleGap(gap: Gap): Promise<void> {
    const offsets = gap.offsets.filter((offset) => !this.recent.has(offset));
    const unnumbered = gap.unnumbered ?? 0;
    if (offsets.length === 0 && unnumbered === 0) return;
    const missing: Gap = unnumbered > 0 ? { channel: this.channel, offsets, unnumbered } : { channel: this.channel, offsets };
    this.events.emit('gap', missing);
    if (unnumbered > 0) {
      // Publications without an offset are in no history: only the application can repair that.
      this.events.emit('resync', {
        channel: this.channel,
        reason: `${unnumbered} publication(s) without offset were skipped (the channel keeps no history)`,
      });
      if (offsets.length === 0) return;
    }
    if (this.options.fillGaps === false) return;
    await this.fill({ channel: this.channel, offsets });
  }

  private async fill(gap: Gap): Promise<void> {
    this.gapFills += 1;
    try {
      const fetch = this.options.onGap ?? ((g: Gap) => this.fetchGapFromHistory(g));
      const publications = await fetch(gap, this);
      for (const publication of publications ?? []) this.deliver(publication, 'gap');
    } catch (error) {
      if (RETRIABLE_CODES.has(errorCode(error)) || !this.isSubscribed()) {
        // The connection went away during the fill (a large history reply can be what made the
        // server drop it as slow): try again once resubscribed, if the stream was recovered.
        for (const offset of gap.offsets) if (!this.recent.has(offset)) this.gapToRetry.add(offset);
      } else {
        this.events.emit('resync', {
          channel: this.channel,
          reason: `gap at offsets ${gap.offsets.join(',')} could not be filled: ${describeError(error)}`,
        });
      }
    } finally {
      this.gapFills -= 1;
      if (this.gapFills === 0) {
        const held = this.heldDuringGap;
        this.heldDuringGap = [];
        for (const { publication, source } of held) this.deliver(publication, source);
        this.scheduleAck();
      }
    }
  }

  /**
   * Reads the gap's offsets from history, page by page (one history call returns at most
   * `client.history_max_publication_limit`). Fails when some are no longer there.
   */
  private async fetchGapFromHistory(gap: Gap): Promise<PublicationContext[]> {
    const wanted = new Set(gap.offsets);
    const found: PublicationContext[] = [];
    const pageSize = Math.max(1, this.options.gapPageSize ?? 50);
    const whole = historyRequestForGap(gap, this.epochSeen);
    const last = whole.since.offset + whole.limit;
    let request = { since: whole.since, limit: Math.min(pageSize, whole.limit) };
    for (;;) {
      let answer: Awaited<ReturnType<Subscription['history']>>;
      try {
        answer = await this.sdk.history(request);
      } catch (error) {
        throw Object.assign(new Error(`history of ${gap.channel}: ${describeError(error)}`), { code: errorCode(error) });
      }
      if (this.epochSeen !== '' && answer.epoch !== this.epochSeen) {
        throw new Error(`history of ${gap.channel} is in epoch ${answer.epoch}, not ${this.epochSeen}`);
      }
      found.push(...publicationsForGap({ channel: gap.channel, offsets: [...wanted] }, answer.publications));
      const top = answer.publications.reduce((max, p) => Math.max(max, p.offset ?? 0), 0);
      if (answer.publications.length === 0 || top >= last || top <= request.since.offset) break;
      request = { since: { offset: top, epoch: request.since.epoch }, limit: Math.min(pageSize, last - top) };
    }
    const seen = new Set(found.map((p) => p.offset));
    const lost = gap.offsets.filter((offset) => !seen.has(offset));
    if (lost.length > 0) {
      throw new Error(`offsets ${lost.slice(0, 10).join(',')}${lost.length > 10 ? ',…' : ''} are no longer in the history of ${gap.channel}`);
    }
    return found.sort((a, b) => (a.offset ?? 0) - (b.offset ?? 0));
  }

  private onSubscribed(ctx: SubscribedContext): void {
    const position = ctx.streamPosition;
    if (!ctx.wasRecovering || !ctx.recovered) {
      // A new position: offsets restart from the stream's top (maybe in a new epoch).
      this.lastOffsetSeen = position?.offset ?? 0;
      this.recent.clear();
      this.recentOrder.length = 0;
    }
    if (position) this.epochSeen = position.epoch;
    this.events.emit('subscribed', ctx);
    if (ctx.wasRecovering && !ctx.recovered) {
      this.events.emit('resync', {
        channel: this.channel,
        reason: 'recovery failed: publications since the last position are no longer available',
      });
    }
    if (ctx.hasRecoveredPublications) {
      // The SDK delivers the recovered publications synchronously right after this event.
      this.deliveringRecovery = true;
      queueMicrotask(() => {
        this.deliveringRecovery = false;
      });
    }
    if (this.gapToRetry.size > 0) {
      const offsets = [...this.gapToRetry].sort((a, b) => a - b);
      this.gapToRetry.clear();
      // After a failed recovery the application resyncs anyway (see above).
      if (ctx.wasRecovering && ctx.recovered) void this.fill({ channel: this.channel, offsets });
    }
    // An acknowledgement lost with the previous connection is sent again.
    if (this.options.ack === 'auto' && this.lastOffsetSeen > this.ackedOffset) this.scheduleAck();
  }

  private onSdkPublication(ctx: PublicationContext): void {
    const source = this.deliveringRecovery ? 'recovery' : 'live';
    if (this.gapFills > 0) {
      this.heldDuringGap.push({ publication: ctx, source });
      return;
    }
    this.deliver(ctx, source);
  }

  private deliver(ctx: PublicationContext, source: HeraldPublication['source']): void {
    const offset = ctx.offset;
    if (offset !== undefined && offset > 0) {
      const duplicate = this.recent.has(offset) || (source !== 'gap' && offset <= this.lastOffsetSeen);
      if (duplicate) {
        // A redelivery: the server did not get our acknowledgement (yet). Confirm again.
        this.scheduleAck();
        return;
      }
      this.remember(offset);
      if (offset > this.lastOffsetSeen) this.lastOffsetSeen = offset;
    }
    const publication = this.toPublication(ctx, source);
    this.host.countMessage(publication);
    this.events.emit('publication', publication);
    this.scheduleAck();
  }

  private remember(offset: number): void {
    this.recent.add(offset);
    this.recentOrder.push(offset);
    if (this.recentOrder.length > RECENT_OFFSETS) {
      const oldest = this.recentOrder.shift();
      if (oldest !== undefined) this.recent.delete(oldest);
    }
  }

  private scheduleAck(): void {
    if (this.options.ack !== 'auto' || this.ackTimer !== null || this.gapFills > 0) return;
    if (this.lastOffsetSeen <= 0) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = null;
      void this.flushAck();
    }, this.options.ackDelayMs ?? 20);
  }

  private async flushAck(): Promise<void> {
    if (this.ackInFlight) {
      // One acknowledgement at a time; the next one covers whatever arrived meanwhile.
      await this.ackInFlight;
      this.scheduleAck();
      return;
    }
    // The position of the last delivery, also when it was a duplicate the server retried.
    const offset = this.lastOffsetSeen;
    if (offset <= 0 || !this.host.isConnected()) return;
    this.ackInFlight = this.ack(offset)
      .then(() => undefined)
      .catch((error: unknown) => {
        // Not fatal: the server redelivers, and the next publication or resubscribe acks again.
        this.events.emit('error', {
          channel: this.channel,
          type: 'ack',
          error: { code: errorCode(error), message: `herald.ack ${offset} failed: ${describeError(error)}` },
        });
      })
      .finally(() => {
        this.ackInFlight = null;
      });
    await this.ackInFlight;
  }
}
