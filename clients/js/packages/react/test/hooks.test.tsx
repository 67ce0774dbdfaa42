// @vitest-environment jsdom
import { EventEmitter } from 'node:events';
import { act, cleanup, render, screen } from '@testing-library/react';
import { afterEach, describe, expect, it } from 'vitest';
import { HeraldClient } from '@herald/client';
import { ConnectionStatus, HeraldProvider, useEntities, useHeraldClient, usePresence, useSubscription } from '../src/index.js';

/** Enough of the SDK for the hooks: tests emit its events. */
class FakeSdkSubscription extends EventEmitter {
  state = 'unsubscribed';
  constructor(readonly channel: string) {
    super();
  }
  subscribe() {
    this.state = 'subscribing';
  }
  unsubscribe() {
    this.state = 'unsubscribed';
  }
  presence() {
    return Promise.resolve({ clients: { c1: { client: 'c1', user: 'ann' }, c2: { client: 'c2', user: 'ben' } } });
  }
  history() {
    return Promise.resolve({ publications: [], offset: 0, epoch: 'e' });
  }
  subscribed(extra: Record<string, unknown> = {}) {
    this.state = 'subscribed';
    this.emit('subscribed', { channel: this.channel, wasRecovering: false, recovered: false, hasRecoveredPublications: false, streamPosition: { offset: 0, epoch: 'e' }, ...extra });
  }
}

class FakeCentrifuge extends EventEmitter {
  state = 'disconnected';
  subs = new Map<string, FakeSdkSubscription>();
  connects = 0;
  newSubscription(channel: string) {
    const sub = new FakeSdkSubscription(channel);
    this.subs.set(channel, sub);
    return sub;
  }
  getSubscription(channel: string) {
    return this.subs.get(channel) ?? null;
  }
  removeSubscription(sub: FakeSdkSubscription) {
    this.subs.delete(sub.channel);
  }
  connect() {
    this.connects += 1;
    this.state = 'connecting';
    this.emit('connecting', { code: 0, reason: 'connect called' });
  }
  disconnect() {
    this.state = 'disconnected';
  }
  _getReconnectDelay() {
    return 0;
  }
}

function setup() {
  const sdk = new FakeCentrifuge();
  const client = new HeraldClient({ centrifuge: sdk as never });
  return { sdk, client };
}

afterEach(() => cleanup());

describe('hooks', () => {
  it('HeraldProvider connects; ConnectionStatus follows the connection and counts messages', () => {
    const { sdk, client } = setup();
    render(
      <HeraldProvider client={client}>
        <ConnectionStatus />
      </HeraldProvider>,
    );
    expect(sdk.connects).toBe(1);
    const status = screen.getByRole('status');
    expect(status.dataset.status).toBe('connecting');
    act(() => {
      sdk.state = 'connected';
      sdk.emit('connected', { client: 'c1', transport: 'websocket' });
    });
    expect(status.dataset.status).toBe('live');
    expect(status.textContent).toContain('Live');
    expect(status.textContent).toContain('0 messages');
    act(() => client.connection.countMessage());
    expect(status.textContent).toContain('1 message');
    expect(status.textContent).toContain('last update 0s ago');
  });

  it('useHeraldClient outside a provider says what is wrong', () => {
    function Orphan() {
      useHeraldClient();
      return null;
    }
    const original = console.error;
    console.error = () => {};
    try {
      expect(() => render(<Orphan />)).toThrow(/inside <HeraldProvider>/);
    } finally {
      console.error = original;
    }
  });

  it('useSubscription, useEntities and usePresence share one subscription and render its events', async () => {
    const { sdk, client } = setup();
    function View() {
      const feed = useSubscription('project', { changes: 'patch' });
      const tasks = useEntities<{ title: string }>('project', { changes: 'patch' });
      const presence = usePresence('project');
      return (
        <div>
          <span data-testid="count">{feed.count}</span>
          <span data-testid="tasks">{tasks.list.map((t) => t.title).join(',')}</span>
          <span data-testid="online">{presence.numUsers}</span>
          <span data-testid="error">{feed.error ?? ''}</span>
        </div>
      );
    }
    render(
      <HeraldProvider client={client} autoConnect={false}>
        <View />
      </HeraldProvider>,
    );
    expect(sdk.subs.size).toBe(1);
    const sub = sdk.subs.get('project');
    if (!sub) throw new Error('no subscription');
    expect((sub as unknown as { channel: string }).channel).toBe('project');
    await act(async () => {
      sub.subscribed();
      await Promise.resolve();
    });
    act(() => {
      sub.emit('publication', {
        channel: 'project',
        offset: 1,
        data: { entity_type: 'task', entity_id: '1', change_type: 'create', changed_fields: [], patch: [{ op: 'replace', path: '', value: { title: 'Write' } }] },
      });
      sub.emit('join', { channel: 'project', info: { client: 'c3', user: 'cat' } });
    });
    expect(screen.getByTestId('count').textContent).toBe('1');
    expect(screen.getByTestId('tasks').textContent).toBe('Write');
    expect(screen.getByTestId('online').textContent).toBe('3');
    expect(screen.getByTestId('error').textContent).toBe('');
    cleanup();
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect(sdk.subs.size).toBe(0);
  });

  it('reports conflicting options for one channel as the hook error', () => {
    const { client } = setup();
    function View() {
      const a = useSubscription('c', { changes: 'patch' });
      const b = useSubscription('c', { changes: 'full' });
      return <span data-testid="errors">{[a.error, b.error].filter(Boolean).join('|')}</span>;
    }
    render(
      <HeraldProvider client={client} autoConnect={false}>
        <View />
      </HeraldProvider>,
    );
    expect(screen.getByTestId('errors').textContent).toMatch(/already subscribed with other options/);
  });
});
