import { useEffect, useState } from 'react';
import { optionsIdentity, type HeraldClient, type HeraldSubscription, type HeraldSubscriptionOptions } from '@herald/client';
import { useHeraldClient } from './context.js';

/**
 * Retains the client's shared subscription to `channel` while mounted (null channel: none) and
 * runs `attach` on it; `attach` returns its cleanup. Options are compared by what they ask the
 * server for, so a new options object per render does not resubscribe.
 */
export function useRetainedSubscription<T>(
  channel: string | null,
  options: HeraldSubscriptionOptions | undefined,
  attach: (subscription: HeraldSubscription, client: HeraldClient) => { value: T; cleanup: () => void },
  /** Anything else that, when it changes, must run `attach` again. */
  attachKey = '',
): { value: T | null; error: string | null } {
  const client = useHeraldClient();
  const identity = (options === undefined ? 'any' : optionsIdentity(options)) + attachKey;
  const [current, setCurrent] = useState<{ value: T | null; error: string | null }>({ value: null, error: null });
  useEffect(() => {
    if (channel === null) {
      setCurrent({ value: null, error: null });
      return undefined;
    }
    let subscription: HeraldSubscription;
    try {
      subscription = client.retain(channel, options);
    } catch (error) {
      setCurrent({ value: null, error: error instanceof Error ? error.message : String(error) });
      return undefined;
    }
    const { value, cleanup } = attach(subscription, client);
    setCurrent({ value, error: null });
    return () => {
      cleanup();
      client.release(subscription);
    };
    // `options` and `attach` are read when the identity changes; see the comment above.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client, channel, identity]);
  return current;
}
