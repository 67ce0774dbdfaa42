import { describe, expect, it } from 'vitest';
import { EntityStore, emptyEntityState, entityReducer, type EntityAction, type EntityState } from '../src/entities.js';
import { envelope, fakeSubscription, until } from './fakes.js';

type Task = { title: string; status?: string };

function run(actions: EntityAction<Task>[], options = {}): EntityState<Task> {
  return actions.reduce((state, action) => entityReducer(state, action, options), emptyEntityState<Task>());
}

const change = (e: ReturnType<typeof envelope>, offset?: number): EntityAction<Task> => ({ type: 'change', envelope: e as never, offset });

describe('entityReducer', () => {
  it('builds a collection from create/update/delete in full form', () => {
    const state = run([
      change(envelope('create', '1', { new: { title: 'a' } }), 1),
      change(envelope('create', '2', { new: { title: 'b' } }), 2),
      change(envelope('update', '1', { new: { title: 'a', status: 'done' } }), 3),
      change(envelope('delete', '2'), 4),
    ]);
    expect([...state.entities]).toEqual([['1', { title: 'a', status: 'done' }]]);
    expect(state.lastOffset).toBe(4);
    expect(state.staleReason).toBeNull();
    expect(state.changesApplied).toBe(4);
  });

  it('builds the same collection from the patch form', () => {
    const state = run([
      change(envelope('create', '1', { patch: [{ op: 'replace', path: '', value: { title: 'a' } }] })),
      change(envelope('update', '1', { patch: [{ op: 'add', path: '/status', value: 'done' }] })),
      change(envelope('create', '2', { patch: [{ op: 'replace', path: '', value: { title: 'b' } }] })),
      change(envelope('delete', '2')),
    ]);
    expect([...state.entities]).toEqual([['1', { title: 'a', status: 'done' }]]);
  });

  it('returns new Maps and never mutates the previous state', () => {
    const first = run([change(envelope('create', '1', { new: { title: 'a' } }))]);
    const second = entityReducer(first, change(envelope('update', '1', { new: { title: 'b' } })));
    expect(first.entities.get('1')).toEqual({ title: 'a' });
    expect(second.entities).not.toBe(first.entities);
  });

  it('goes stale on a patch it cannot apply, keeps applying what it can, and a snapshot clears it', () => {
    const stale = run([
      change(envelope('update', '9', { patch: [{ op: 'replace', path: '/status', value: 'done' }] })),
      change(envelope('create', '1', { new: { title: 'a' } })),
    ]);
    expect(stale.staleReason).toMatch(/previous state is unknown/);
    expect(stale.entities.get('1')).toEqual({ title: 'a' });
    const fresh = entityReducer(stale, { type: 'snapshot', entities: new Map([['9', { title: 'z', status: 'done' }]]) });
    expect(fresh.staleReason).toBeNull();
    expect([...fresh.entities.keys()]).toEqual(['9']);
  });

  it('hands bulk changes to applyBulk, or goes stale without one', () => {
    const removeDone = (entities: ReadonlyMap<string, Task>) => new Map([...entities].filter(([, task]) => task.status !== 'done'));
    const actions = [
      change(envelope('create', '1', { new: { title: 'a', status: 'done' } })),
      change(envelope('create', '2', { new: { title: 'b', status: 'open' } })),
      change(envelope('bulk', undefined, { summary: { archived: 'done' } })),
    ];
    expect([...run(actions, { applyBulk: removeDone }).entities.keys()]).toEqual(['2']);
    const withoutHandler = run(actions);
    expect(withoutHandler.staleReason).toBe('bulk change');
    expect(withoutHandler.entities.size).toBe(2);
  });

  it('ignores other entity types when asked to', () => {
    const state = run(
      [change(envelope('create', '1', { new: { title: 'a' } })), change({ ...envelope('create', '2', { new: { title: 'doc' } }), entity_type: 'doc' })],
      { entityType: 'task' },
    );
    expect([...state.entities.keys()]).toEqual(['1']);
  });

  it('goes stale on a delete without entity_id', () => {
    expect(run([change(envelope('delete', undefined))]).staleReason).toMatch(/without entity_id/);
  });
});

describe('EntityStore', () => {
  it('loads a snapshot on subscribe and applies changes that arrive during the load on top of it', async () => {
    const { sdk, subscription } = fakeSubscription();
    let finishLoad: (tasks: { id: string; title: string }[]) => void = () => {};
    const store = new EntityStore<{ id: string; title: string; status?: string }>(subscription, {
      load: () => new Promise((resolve) => (finishLoad = resolve)),
    });
    sdk.subscribed();
    expect(store.getState().loading).toBe(true);
    sdk.publish(1, envelope('update', '1', { new: { id: '1', title: 'a', status: 'done' } }));
    sdk.publish(2, envelope('create', '3', { new: { id: '3', title: 'c' } }));
    finishLoad([
      { id: '1', title: 'a' },
      { id: '2', title: 'b' },
    ]);
    await until(() => !store.getState().loading, 'the snapshot');
    expect([...store.getState().entities]).toEqual([
      ['1', { id: '1', title: 'a', status: 'done' }],
      ['2', { id: '2', title: 'b' }],
      ['3', { id: '3', title: 'c' }],
    ]);
    expect(store.getState().lastOffset).toBe(2);
  });

  it('reloads after a failed recovery, and after a change it cannot apply', async () => {
    const { sdk, subscription } = fakeSubscription('tasks', { changes: 'patch' });
    let loads = 0;
    const store = new EntityStore<{ id: string; v: number }>(subscription, {
      load: async () => {
        loads += 1;
        return [{ id: 'a', v: loads }];
      },
    });
    sdk.subscribed();
    await until(() => loads === 1 && !store.getState().loading, 'the first load');
    sdk.subscribed({ wasRecovering: true, recovered: true, streamPosition: { offset: 0, epoch: 'e1' } });
    await Promise.resolve();
    expect(loads).toBe(1);
    sdk.subscribed({ wasRecovering: true, recovered: false, streamPosition: { offset: 10, epoch: 'e2' } });
    await until(() => loads === 2 && !store.getState().loading, 'the reload after failed recovery');
    expect(store.getState().entities.get('a')).toEqual({ id: 'a', v: 2 });
    sdk.publish(11, envelope('update', 'unknown', { patch: [{ op: 'replace', path: '/v', value: 0 }] }));
    await until(() => loads === 3 && !store.getState().loading, 'the reload after an unappliable patch');
    expect(store.getState().staleReason).toBeNull();
  });

  it('reports a failed load and stays stale', async () => {
    const { sdk, subscription } = fakeSubscription();
    const store = new EntityStore(subscription, {
      load: async () => {
        throw new Error('HTTP 503');
      },
    });
    sdk.subscribed();
    await until(() => store.getState().loadError !== null, 'the load error');
    expect(store.getState().loadError).toBe('loading tasks failed: HTTP 503');
    expect(store.getState().staleReason).toBe('initial load');
  });
});
