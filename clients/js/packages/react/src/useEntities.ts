import { useCallback, useMemo, useRef, useSyncExternalStore } from 'react';
import { EntityStore, emptyEntityState, type EntityStoreOptions, type EntityStoreState, type HeraldSubscriptionOptions } from '@herald/client';
import { useRetainedSubscription } from './useRetainedSubscription.js';

export interface UseEntitiesOptions<T> extends HeraldSubscriptionOptions, Omit<EntityStoreOptions<T>, 'load'> {
  /** Loads the current entities: at first and after anything that made the collection stale. */
  load?: EntityStoreOptions<T>['load'];
}

export interface EntitiesView<T> extends EntityStoreState<T> {
  /** The entities in first-seen order. */
  list: T[];
  /** Loads a snapshot now. */
  reload: () => Promise<void>;
  error: string | null;
}

const emptyState: EntityStoreState<never> = { ...emptyEntityState<never>(), subscribed: false, loading: false, loadError: null };
const noSubscribe = () => () => {};

/**
 * A live collection of the entities changed on `channel` (publish_change envelopes: create,
 * update, delete, bulk; full or patch form with `changes`). Give `load` to start from the
 * application's current state and to resync when recovery fails or a change cannot be applied.
 */
export function useEntities<T = unknown>(channel: string | null, options: UseEntitiesOptions<T> = {}): EntitiesView<T> {
  const { load, entityType, applyBulk, getId, ...subscriptionOptions } = options;
  const latest = useRef({ load, applyBulk, getId });
  latest.current = { load, applyBulk, getId };
  const entityTypeKey = entityType === undefined ? '' : JSON.stringify(entityType);

  const { value: store, error } = useRetainedSubscription<EntityStore<T>>(
    channel,
    subscriptionOptions,
    (subscription) => {
      const created = new EntityStore<T>(subscription, {
        entityType,
        // The latest callbacks from the component, so inline functions work.
        load: latest.current.load ? () => (latest.current.load as NonNullable<typeof load>)() : undefined,
        applyBulk: (entities, envelope) => latest.current.applyBulk?.(entities, envelope) ?? null,
        getId: (entity) => (latest.current.getId ? latest.current.getId(entity) : defaultId(entity)),
      });
      return { value: created, cleanup: () => created.close() };
    },
    `|entityType=${entityTypeKey}|load=${load ? 1 : 0}`,
  );

  const state = useSyncExternalStore(
    store?.subscribe ?? noSubscribe,
    store?.getState ?? (() => emptyState as EntityStoreState<T>),
    store?.getState ?? (() => emptyState as EntityStoreState<T>),
  );
  const list = useMemo(() => [...state.entities.values()], [state.entities]);
  const reload = useCallback(() => store?.reload() ?? Promise.resolve(), [store]);
  return { ...state, list, reload, error };
}

function defaultId(entity: unknown): string {
  const id = (entity as { id?: unknown } | null)?.id;
  if (id === undefined || id === null) throw new Error('entity in snapshot has no `id`: pass getId');
  return String(id);
}
