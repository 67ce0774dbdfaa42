/**
 * A live collection of entities built from change envelopes: a pure reducer (easy to test and to
 * use with any state library) and `EntityStore`, which drives it from a Herald subscription, loads
 * snapshots and resyncs when the stream cannot be trusted (failed recovery, a patch that does not
 * apply, an unfillable gap, a bulk change nobody interprets).
 */
import { applyChange, isChangeEnvelope, type ChangeEnvelope } from './changes.js';
import { Emitter } from './emitter.js';
import { describeError } from './errors.js';
import type { HeraldPublication, HeraldSubscription } from './subscription.js';

export interface EntityState<T> {
  /** Entities by `entity_id`, in the order they were first seen. A new Map after every change. */
  entities: ReadonlyMap<string, T>;
  /** Why the collection can no longer be trusted until the next snapshot; null when it can. */
  staleReason: string | null;
  /** The offset of the last change applied (0 before any). */
  lastOffset: number;
  /** Changes applied since the collection was created (snapshots excluded). */
  changesApplied: number;
}

/**
 * Interprets a bulk change (its `summary` is application-defined). Returns the new entities, or
 * null when the collection must be reloaded instead.
 */
export type BulkHandler<T> = (
  entities: ReadonlyMap<string, T>,
  envelope: ChangeEnvelope<T>,
) => ReadonlyMap<string, T> | null;

export type EntityAction<T> =
  | { type: 'snapshot'; entities: ReadonlyMap<string, T> }
  | { type: 'change'; envelope: ChangeEnvelope<T>; offset?: number }
  | { type: 'stale'; reason: string };

export interface EntityReducerOptions<T> {
  /** Only envelopes of this entity type (or these types) are applied; others are ignored. */
  entityType?: string | readonly string[];
  /** See `BulkHandler`; without one, a bulk change makes the collection stale (it reloads). */
  applyBulk?: BulkHandler<T>;
}

export function emptyEntityState<T>(): EntityState<T> {
  return { entities: new Map(), staleReason: null, lastOffset: 0, changesApplied: 0 };
}

function acceptsType(filter: EntityReducerOptions<unknown>['entityType'], entityType: string): boolean {
  if (filter === undefined) return true;
  return typeof filter === 'string' ? filter === entityType : filter.includes(entityType);
}

/**
 * The reducer. A change it cannot apply faithfully sets `staleReason` and leaves the entities as
 * they were; later changes keep being applied where they can (so the UI stays as fresh as
 * possible) until a snapshot replaces everything and clears `staleReason`.
 */
export function entityReducer<T>(
  state: EntityState<T>,
  action: EntityAction<T>,
  options: EntityReducerOptions<T> = {},
): EntityState<T> {
  switch (action.type) {
    case 'snapshot':
      return { ...state, entities: new Map(action.entities), staleReason: null };
    case 'stale':
      return { ...state, staleReason: state.staleReason ?? action.reason };
    case 'change': {
      const { envelope } = action;
      if (!acceptsType(options.entityType, envelope.entity_type)) return state;
      const lastOffset = action.offset ?? state.lastOffset;
      const changesApplied = state.changesApplied + 1;
      if (envelope.change_type === 'bulk') {
        const next = options.applyBulk?.(state.entities, envelope) ?? null;
        if (next === null) {
          return { ...state, lastOffset, changesApplied, staleReason: state.staleReason ?? 'bulk change' };
        }
        return { ...state, entities: new Map(next), lastOffset, changesApplied };
      }
      const id = envelope.entity_id;
      if (id === undefined || id === '') {
        return {
          ...state,
          lastOffset,
          changesApplied,
          staleReason: state.staleReason ?? `${envelope.change_type} of a ${envelope.entity_type} without entity_id`,
        };
      }
      const result = applyChange(state.entities.get(id), envelope);
      if (!result.ok) {
        return { ...state, lastOffset, changesApplied, staleReason: state.staleReason ?? result.reason };
      }
      const entities = new Map(state.entities);
      if (result.document === undefined) entities.delete(id);
      else entities.set(id, result.document);
      return { ...state, entities, lastOffset, changesApplied };
    }
    default:
      return state;
  }
}

/** What `load` may return: entities keyed by id, or a list (ids taken with `getId`). */
export type EntitySnapshot<T> = ReadonlyMap<string, T> | Record<string, T> | readonly T[];

export interface EntityStoreOptions<T> extends EntityReducerOptions<T> {
  /**
   * Fetches the current entities (for example from the application's REST API). Called after the
   * first subscribe and whenever the collection went stale. Without it, the collection starts
   * empty and is built from the changes alone; staleness is then only reported.
   */
  load?: () => Promise<EntitySnapshot<T>>;
  /** The id of an entity in a list snapshot; default: its `id` field as a string. */
  getId?: (entity: T) => string;
}

export interface EntityStoreState<T> extends EntityState<T> {
  /** Whether the subscription is up (changes flow). */
  subscribed: boolean;
  /** True while a snapshot is being loaded. */
  loading: boolean;
  /** The last load failure (cleared by a successful load). */
  loadError: string | null;
}

function defaultGetId(entity: unknown): string {
  const id = (entity as { id?: unknown } | null)?.id;
  if (id === undefined || id === null) throw new Error('entity in snapshot has no `id`: pass getId');
  return String(id);
}

export function snapshotToMap<T>(snapshot: EntitySnapshot<T>, getId: (entity: T) => string = defaultGetId): Map<string, T> {
  if (snapshot instanceof Map) return new Map(snapshot);
  if (Array.isArray(snapshot)) return new Map((snapshot as readonly T[]).map((entity) => [getId(entity), entity]));
  return new Map(Object.entries(snapshot as Record<string, T>));
}

/**
 * Keeps an `EntityState` in step with a subscription. Changes that arrive while a snapshot loads
 * are held and applied on top of it, so nothing published during the load is lost (create and
 * full-form update are upserts, delete of a missing entity is a no-op, so re-applying a change
 * the snapshot already reflects is harmless). Subscribe with `subscribe`/`getState` (the shape
 * React's `useSyncExternalStore` wants).
 */
export class EntityStore<T = unknown> {
  private state: EntityStoreState<T> = { ...emptyEntityState<T>(), subscribed: false, loading: false, loadError: null };
  private readonly events = new Emitter<{ change: EntityStoreState<T> }>();
  private held: { envelope: ChangeEnvelope<T>; offset?: number }[] = [];
  private loadGeneration = 0;
  private readonly detach: (() => void)[] = [];
  private closed = false;

  constructor(
    readonly subscription: HeraldSubscription,
    private readonly options: EntityStoreOptions<T> = {},
  ) {
    this.detach.push(
      subscription.on('publication', (publication) => this.onPublication(publication)),
      subscription.on('subscribing', () => this.set({ ...this.state, subscribed: false })),
      subscription.on('unsubscribed', () => this.set({ ...this.state, subscribed: false })),
      subscription.on('subscribed', (ctx) => {
        this.set({ ...this.state, subscribed: true });
        if (!ctx.wasRecovering || !ctx.recovered) {
          // First subscribe, or the stream could not be recovered: what we hold may be missing
          // changes, so start again from a snapshot.
          void this.reload(ctx.wasRecovering ? 'recovery failed' : 'initial load');
        }
      }),
      subscription.on('resync', ({ reason }) => this.markStale(reason)),
    );
    if (subscription.isSubscribed()) {
      this.state = { ...this.state, subscribed: true };
      void this.reload('initial load');
    }
  }

  getState = (): EntityStoreState<T> => this.state;

  subscribe = (listener: () => void): (() => void) => this.events.on('change', listener);

  /** Loads a snapshot now (when `load` was given); resolves when it is applied or failed. */
  async reload(reason = 'reload requested'): Promise<void> {
    const { load } = this.options;
    if (!load || this.closed) {
      if (reason !== 'initial load' && !load) this.markStale(reason);
      return;
    }
    const generation = ++this.loadGeneration;
    this.held = [];
    this.set({ ...this.state, loading: true });
    try {
      const snapshot = snapshotToMap(await load(), this.options.getId);
      if (generation !== this.loadGeneration || this.closed) return;
      let next: EntityState<T> = entityReducer(this.state, { type: 'snapshot', entities: snapshot }, this.options);
      for (const change of this.held) next = entityReducer(next, { type: 'change', ...change }, this.options);
      this.held = [];
      this.set({ ...this.state, ...next, loading: false, loadError: null });
      // A change held during the load may itself have made the collection stale.
      if (next.staleReason) void this.reload(next.staleReason);
    } catch (error) {
      if (generation !== this.loadGeneration || this.closed) return;
      const message = describeError(error);
      this.held = [];
      this.set({
        ...this.state,
        loading: false,
        loadError: `loading ${this.subscription.channel} failed: ${message}`,
        staleReason: this.state.staleReason ?? reason,
      });
    }
  }

  close(): void {
    this.closed = true;
    for (const detach of this.detach) detach();
    this.events.removeAll();
  }

  private markStale(reason: string): void {
    this.set({ ...this.state, ...entityReducer(this.state, { type: 'stale', reason }, this.options) });
    if (this.options.load && !this.state.loading) void this.reload(reason);
  }

  private onPublication(publication: HeraldPublication): void {
    const envelope = publication.change ?? (isChangeEnvelope(publication.data) ? publication.data : undefined);
    if (!envelope) return;
    const change = { envelope: envelope as ChangeEnvelope<T>, offset: publication.offset };
    if (this.state.loading) {
      this.held.push(change);
      return;
    }
    const next = entityReducer(this.state, { type: 'change', ...change }, this.options);
    const becameStale = next.staleReason !== null && this.state.staleReason === null;
    this.set({ ...this.state, ...next });
    if (becameStale && this.options.load) void this.reload(next.staleReason ?? 'stale');
  }

  private set(state: EntityStoreState<T>): void {
    this.state = state;
    this.events.emit('change', state);
  }
}
