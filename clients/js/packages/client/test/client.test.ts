import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';
import { HeraldClient } from '../src/client.js';

// Nothing connects here: these check the bookkeeping around subscriptions.
const url = 'ws://127.0.0.1:9/connection/websocket';
let client: HeraldClient | null = null;
afterEach(() => client?.close());

describe('HeraldClient', () => {
  it('shares one subscription per channel, refuses different options, and unsubscribes after the last release', async () => {
    client = new HeraldClient({ url, centrifuge: { websocket: WebSocket } });
    const first = client.retain('tasks', { changes: 'patch' });
    const second = client.retain('tasks');
    expect(second).toBe(first);
    expect(() => client?.retain('tasks', { changes: 'full' })).toThrow(/already subscribed with other options/);
    expect(client.centrifuge.getSubscription('tasks')).not.toBeNull();
    client.release(first);
    client.release(second);
    // Still there until the grace period ran out, so an immediate remount keeps it.
    expect(client.subscription('tasks')).toBe(first);
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect(client.subscription('tasks')).toBeUndefined();
    expect(client.centrifuge.getSubscription('tasks')).toBeNull();
  });

  it('keeps a subscription released and retained again at once', async () => {
    client = new HeraldClient({ url, centrifuge: { websocket: WebSocket } });
    const first = client.retain('room');
    client.release(first);
    const again = client.retain('room');
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect(again).toBe(first);
    expect(client.subscription('room')).toBe(first);
  });

  it('wraps an SDK client it was given and refuses a channel the SDK already subscribed by itself', () => {
    const sdk = new Centrifuge(url, { websocket: WebSocket });
    client = new HeraldClient({ centrifuge: sdk });
    expect(client.centrifuge).toBe(sdk);
    sdk.newSubscription('raw');
    expect(() => client?.retain('raw')).toThrow(/SDK subscription that HeraldClient did not make/);
  });

  it('routes gap signals from async messages to listeners', () => {
    client = new HeraldClient({ url, centrifuge: { websocket: WebSocket } });
    const seen: unknown[] = [];
    client.onGap((gap) => seen.push(gap));
    client.centrifuge.emit('message', { data: { herald: { gap: { channel: 'c', offsets: [3, 2] } } } });
    client.centrifuge.emit('message', { data: { hello: 'world' } });
    expect(seen).toEqual([{ channel: 'c', offsets: [2, 3] }]);
  });
});
