// Test doubles for the SDK side of a HeraldSubscription: a subscription that tests drive by
// emitting the SDK's events, and a host that records RPCs.
import { EventEmitter } from 'node:events';
import type { PublicationContext, SubscribedContext, Subscription, SubscriptionOptions } from 'centrifuge';
import { HeraldSubscription, type HeraldSubscriptionOptions, type SubscriptionHost } from '../src/subscription.js';

export class FakeSdkSubscription extends EventEmitter {
  state: 'unsubscribed' | 'subscribing' | 'subscribed' = 'unsubscribed';
  historyCalls: unknown[] = [];
  historyAnswer: (request: unknown) => Promise<{ publications: PublicationContext[]; offset: number; epoch: string }> = async () => ({
    publications: [],
    offset: 0,
    epoch: 'e1',
  });
  presenceAnswer: () => Promise<{ clients: Record<string, { client: string; user: string }> }> = async () => ({ clients: {} });

  constructor(
    readonly channel: string,
    readonly options: SubscriptionOptions,
  ) {
    super();
  }

  subscribe(): void {
    this.state = 'subscribing';
  }

  unsubscribe(): void {
    this.state = 'unsubscribed';
  }

  history(request: unknown) {
    this.historyCalls.push(request);
    return this.historyAnswer(request);
  }

  presence() {
    return this.presenceAnswer();
  }

  /** What the SDK does on a subscribe reply: the event, then the recovered publications. */
  subscribed(ctx: Partial<SubscribedContext> = {}, recovered: PublicationContext[] = []): void {
    this.state = 'subscribed';
    this.emit('subscribed', {
      channel: this.channel,
      recoverable: true,
      positioned: false,
      wasRecovering: false,
      recovered: false,
      hasRecoveredPublications: recovered.length > 0,
      streamPosition: { offset: 0, epoch: 'e1' },
      ...ctx,
    });
    for (const publication of recovered) this.emit('publication', publication);
  }

  publish(offset: number | undefined, data: unknown): void {
    this.emit('publication', { channel: this.channel, data, offset });
  }
}

export class FakeHost implements SubscriptionHost {
  sdk: FakeSdkSubscription | null = null;
  rpcs: { method: string; data: unknown }[] = [];
  rpcAnswer: (method: string, data: unknown) => Promise<{ data: unknown }> = async () => ({ data: { acknowledged: 1 } });
  connected = true;
  messages = 0;

  newSdkSubscription(channel: string, options: SubscriptionOptions): Subscription {
    this.sdk = new FakeSdkSubscription(channel, options);
    return this.sdk as unknown as Subscription;
  }

  removeSdkSubscription(): void {}

  rpc(method: string, data: unknown) {
    this.rpcs.push({ method, data });
    return this.rpcAnswer(method, data);
  }

  isConnected(): boolean {
    return this.connected;
  }

  countMessage(): void {
    this.messages += 1;
  }
}

export function fakeSubscription(channel = 'tasks', options: HeraldSubscriptionOptions = {}) {
  const host = new FakeHost();
  const subscription = new HeraldSubscription(channel, options, host);
  subscription.subscribe();
  const sdk = host.sdk;
  if (!sdk) throw new Error('no SDK subscription was created');
  return { host, sdk, subscription };
}

/** Resolves once `check` returns true, polling on timers (fake timers: advance them first). */
export async function until(check: () => boolean, what: string, ms = 2000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

export const envelope = (
  change_type: 'create' | 'update' | 'delete' | 'bulk',
  entity_id: string | undefined,
  extra: Record<string, unknown> = {},
) => ({ entity_type: 'task', entity_id, change_type, changed_fields: [], patch: [], ...extra });
