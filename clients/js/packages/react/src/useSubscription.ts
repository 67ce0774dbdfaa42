import { useEffect, useRef, useState } from 'react';
import type { HeraldPublication, HeraldSubscription, HeraldSubscriptionOptions, SubscribedContext } from '@herald/client';
import { useRetainedSubscription } from './useRetainedSubscription.js';

export interface UseSubscriptionOptions extends HeraldSubscriptionOptions {
  /** How many recent publications the hook keeps (default 50; 0 keeps none). */
  keep?: number;
  /** Called for every publication (the latest function given is used). */
  onPublication?: (publication: HeraldPublication) => void;
  /**
   * Fill `publications` with the newest N of the channel's history when subscribed afresh, and
   * replace them with it after a resync (recovery failed): a feed that shows what it missed.
   */
  history?: number;
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
  /** The shared subscription (for `ack`, `history`, `presence`), null until mounted. */
  subscription: HeraldSubscription | null;
}

const initial: SubscriptionView = {
  state: 'unsubscribed',
  publications: [],
  last: null,
  count: 0,
  subscribed: null,
  resyncReason: null,
  error: null,
  subscription: null,
};

/** The history read after a subscribe, then what arrived live since (newer offsets). */
function mergeHistory<T>(recent: HeraldPublication[], shown: HeraldPublication<T>[], keep: number) {
  const top = recent.reduce((max, p) => Math.max(max, p.offset ?? 0), 0);
  const newer = shown.filter((p) => (p.offset ?? 0) > top);
  const merged = [...(recent as HeraldPublication<T>[]), ...newer];
  return keep > 0 ? merged.slice(-keep) : merged;
}

/** Subscribes to `channel` (null: not now) and keeps the recent publications. */
export function useSubscription<T = unknown>(channel: string | null, options: UseSubscriptionOptions = {}): SubscriptionView<T> {
  const { keep = 50, onPublication, history = 0, ...subscriptionOptions } = options;
  const historyRef = useRef(history);
  historyRef.current = history;
  const callback = useRef(onPublication);
  callback.current = onPublication;
  const keepRef = useRef(keep);
  keepRef.current = keep;
  const [view, setView] = useState<SubscriptionView<T>>(initial as SubscriptionView<T>);

  const { error } = useRetainedSubscription(channel, subscriptionOptions, (subscription) => {
    setView({ ...(initial as SubscriptionView<T>), state: subscription.state, subscription });
    const detach = [
      subscription.on('subscribing', () => setView((v) => ({ ...v, state: 'subscribing' }))),
      subscription.on('unsubscribed', () => setView((v) => ({ ...v, state: 'unsubscribed' }))),
      subscription.on('subscribed', (ctx) => {
        const limit = historyRef.current;
        const fresh = !ctx.wasRecovering || !ctx.recovered;
        setView((v) => ({
          ...v,
          state: 'subscribed',
          subscribed: ctx,
          resyncReason: ctx.wasRecovering && !ctx.recovered ? v.resyncReason : null,
          // After a failed recovery what was shown may belong to a stream that is gone (a new
          // epoch): the history read below replaces it.
          publications: limit > 0 && fresh ? [] : v.publications,
        }));
        if (limit > 0 && fresh) {
          subscription.recentHistory(limit).then(
            (recent) => setView((v) => ({ ...v, publications: mergeHistory(recent, v.publications, keepRef.current) })),
            (e: unknown) => setView((v) => ({ ...v, error: e instanceof Error ? e.message : String(e) })),
          );
        }
      }),
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
