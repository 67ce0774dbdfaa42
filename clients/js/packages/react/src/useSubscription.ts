import { useEffect, useRef, useState } from 'react';
import type { HeraldPublication, HeraldSubscriptionOptions, SubscribedContext } from '@herald/client';
import { useRetainedSubscription } from './useRetainedSubscription.js';

export interface UseSubscriptionOptions extends HeraldSubscriptionOptions {
  /** How many recent publications the hook keeps (default 50; 0 keeps none). */
  keep?: number;
  /** Called for every publication (the latest function given is used). */
  onPublication?: (publication: HeraldPublication) => void;
}

export interface SubscriptionView<T = unknown> {
  /** `unsubscribed`, `subscribing` or `subscribed`. */
  state: 'unsubscribed' | 'subscribing' | 'subscribed';
  /** The most recent publications, oldest first. */
  publications: HeraldPublication<T>[];
  last: HeraldPublication<T> | null;
  /** Publications received while mounted. */
  count: number;
  /** The last subscribe result (recovered, wasRecovering, streamPosition...). */
  subscribed: SubscribedContext | null;
  /** Set when Herald says the stream has a hole you must repair (failed recovery, unfillable gap). */
  resyncReason: string | null;
  error: string | null;
}

const initial: SubscriptionView = {
  state: 'unsubscribed',
  publications: [],
  last: null,
  count: 0,
  subscribed: null,
  resyncReason: null,
  error: null,
};

/** Subscribes to `channel` (null: not now) and keeps the recent publications. */
export function useSubscription<T = unknown>(channel: string | null, options: UseSubscriptionOptions = {}): SubscriptionView<T> {
  const { keep = 50, onPublication, ...subscriptionOptions } = options;
  const callback = useRef(onPublication);
  callback.current = onPublication;
  const keepRef = useRef(keep);
  keepRef.current = keep;
  const [view, setView] = useState<SubscriptionView<T>>(initial as SubscriptionView<T>);

  const { error } = useRetainedSubscription(channel, subscriptionOptions, (subscription) => {
    setView({ ...(initial as SubscriptionView<T>), state: subscription.state });
    const detach = [
      subscription.on('subscribing', () => setView((v) => ({ ...v, state: 'subscribing' }))),
      subscription.on('unsubscribed', () => setView((v) => ({ ...v, state: 'unsubscribed' }))),
      subscription.on('subscribed', (ctx) =>
        setView((v) => ({ ...v, state: 'subscribed', subscribed: ctx, resyncReason: ctx.wasRecovering && !ctx.recovered ? v.resyncReason : null })),
      ),
      subscription.on('resync', ({ reason }) => setView((v) => ({ ...v, resyncReason: reason }))),
      subscription.on('error', ({ error: e }) => setView((v) => ({ ...v, error: `${e.code} ${e.message}` }))),
      subscription.on('publication', (publication) => {
        callback.current?.(publication);
        setView((v) => {
          const limit = keepRef.current;
          const publications = limit > 0 ? [...v.publications, publication as HeraldPublication<T>].slice(-limit) : v.publications;
          return { ...v, publications, last: publication as HeraldPublication<T>, count: v.count + 1 };
        });
      }),
    ];
    return { value: subscription, cleanup: () => detach.forEach((d) => d()) };
  });

  useEffect(() => {
    if (channel === null) setView(initial as SubscriptionView<T>);
  }, [channel]);

  return error ? { ...view, error } : view;
}
