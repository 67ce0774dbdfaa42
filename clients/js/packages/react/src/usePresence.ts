import { useSyncExternalStore } from 'react';
import { PresenceStore, presenceState, type HeraldSubscriptionOptions, type PresenceState } from '@herald/client';
import { useRetainedSubscription } from './useRetainedSubscription.js';

export interface PresenceView extends PresenceState {
  /** The members as a list. */
  list: PresenceState['members'] extends ReadonlyMap<string, infer I> ? I[] : never;
  error: string | null;
}

const emptyPresence = presenceState(new Map(), false, null);
const noSubscribe = () => () => {};
const emptyGetter = () => emptyPresence;

/**
 * Who is on `channel`, kept live with join and leave pushes. Shares the channel's subscription
 * with other hooks; pass `options` only when this hook is the one that creates it.
 */
export function usePresence(channel: string | null, options?: HeraldSubscriptionOptions): PresenceView {
  const { value: store, error } = useRetainedSubscription<PresenceStore>(channel, options, (subscription) => {
    const created = new PresenceStore(subscription);
    return { value: created, cleanup: () => created.close() };
  });
  const state = useSyncExternalStore(store?.subscribe ?? noSubscribe, store?.getState ?? emptyGetter, store?.getState ?? emptyGetter);
  return { ...state, list: [...state.members.values()], error: error ?? state.error };
}
