import { EventEmitter } from 'node:events';
import { createServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';
import { ReconnectBackoff, secondsUntil } from '../src/backoff.js';
import { ConnectionMonitor, type ConnectionState } from '../src/connection.js';
import { until } from './fakes.js';

describe('ReconnectBackoff', () => {
  it('grows exponentially within [min, max] with full jitter', () => {
    const highest = new ReconnectBackoff({ minDelay: 100, maxDelay: 1000, random: () => 0.999999 });
    expect([1, 2, 3, 4, 5, 6].map(() => highest.next())).toEqual([200, 300, 500, 900, 1000, 1000]);
    const lowest = new ReconnectBackoff({ minDelay: 100, maxDelay: 1000, random: () => 0 });
    expect([1, 2, 3].map(() => lowest.next())).toEqual([100, 100, 100]);
    expect(lowest.attempts).toBe(3);
    lowest.reset();
    expect(lowest.attempts).toBe(0);
  });

  it('never leaves its bounds, for any random value and attempt count', () => {
    let seed = 1;
    const random = () => {
      seed = (seed * 16807) % 2147483647;
      return (seed - 1) / 2147483646;
    };
    const backoff = new ReconnectBackoff({ minDelay: 250, maxDelay: 8000, random });
    for (let i = 0; i < 500; i++) {
      const delay = backoff.next();
      expect(delay).toBeGreaterThanOrEqual(250);
      expect(delay).toBeLessThanOrEqual(8000);
      expect(Number.isInteger(delay)).toBe(true);
    }
  });

  it('refuses impossible bounds', () => {
    expect(() => new ReconnectBackoff({ minDelay: 5, maxDelay: 1 })).toThrow(/minDelay <= maxDelay/);
    expect(() => new ReconnectBackoff({ minDelay: -1 })).toThrow(RangeError);
  });

  it('counts down in whole seconds, rounding up, never below zero', () => {
    expect(secondsUntil(10_000, 7_001)).toBe(3);
    expect(secondsUntil(10_000, 9_999)).toBe(1);
    expect(secondsUntil(10_000, 10_000)).toBe(0);
    expect(secondsUntil(10_000, 12_000)).toBe(0);
  });
});

class FakeCentrifuge extends EventEmitter {
  state = 'disconnected';
  delaysAsked = 0;
  _getReconnectDelay(): number {
    this.delaysAsked += 1;
    return 12345;
  }
}

describe('ConnectionMonitor', () => {
  it('goes connecting, live, reconnecting with a countdown, live, disconnected; counts messages', () => {
    let now = 1_000_000;
    const sdk = new FakeCentrifuge();
    const network = new EventTarget();
    const monitor = new ConnectionMonitor(sdk as unknown as Centrifuge, {
      minReconnectDelay: 1000,
      maxReconnectDelay: 4000,
      random: () => 0.999999,
      now: () => now,
      networkEventTarget: network,
    });
    const statuses: string[] = [];
    monitor.subscribe(() => statuses.push(monitor.getState().status));
    expect(monitor.exactCountdown).toBe(true);
    sdk.emit('connecting', { code: 0, reason: 'connect called' });
    expect(monitor.getState().status).toBe('connecting');
    sdk.emit('connected', { client: 'c1', transport: 'websocket' });
    expect(monitor.getState()).toMatchObject({ status: 'live', clientId: 'c1', connectedAt: now, attempt: 0 });
    monitor.countMessage();
    now += 500;
    monitor.countMessage();
    expect(monitor.getState()).toMatchObject({ messageCount: 2, lastMessageAt: now });

    sdk.emit('connecting', { code: 1, reason: 'transport closed' });
    // The SDK asks for its delay: it gets ours, and the monitor knows when the attempt is due.
    const delay = (sdk as unknown as { _getReconnectDelay(): number })._getReconnectDelay();
    expect(delay).toBe(2000);
    expect(sdk.delaysAsked).toBe(0);
    let state: ConnectionState = monitor.getState();
    expect(state).toMatchObject({ status: 'reconnecting', attempt: 1, nextRetryAt: now + 2000, lastError: { code: 1, reason: 'transport closed' } });
    expect(secondsUntil(state.nextRetryAt ?? 0, now + 600)).toBe(2);

    network.dispatchEvent(new Event('offline'));
    expect(monitor.getState().status).toBe('offline');
    network.dispatchEvent(new Event('online'));
    expect(monitor.getState().status).toBe('reconnecting');
    (sdk as unknown as { _getReconnectDelay(): number })._getReconnectDelay();
    expect(monitor.getState().attempt).toBe(2);

    sdk.emit('connected', { client: 'c2', transport: 'websocket' });
    state = monitor.getState();
    expect(state).toMatchObject({ status: 'live', attempt: 0, nextRetryAt: null, lastError: null, clientId: 'c2', messageCount: 2 });
    // The backoff starts again from the minimum after a live connection.
    expect((sdk as unknown as { _getReconnectDelay(): number })._getReconnectDelay()).toBe(2000);

    sdk.emit('disconnected', { code: 0, reason: 'disconnect called' });
    expect(monitor.getState()).toMatchObject({ status: 'disconnected', clientId: null });
    expect(statuses).toContain('offline');
    monitor.close();
    sdk.emit('connected', { client: 'c3', transport: 'websocket' });
    expect(monitor.getState().status).toBe('disconnected');
  });

  describe('with the real SDK', () => {
    let client: Centrifuge | null = null;
    afterEach(() => client?.disconnect());

    it('takes the reconnect delays of centrifuge 5 (nothing listens on the port)', async () => {
      // A port that was free a moment ago: connecting to it is refused at once.
      const port = await new Promise<number>((resolve) => {
        const server = createServer().listen(0, '127.0.0.1', () => {
          const address = server.address();
          server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
        });
      });
      client = new Centrifuge(`ws://127.0.0.1:${port}/connection/websocket`, {
        websocket: WebSocket,
        minReconnectDelay: 300,
        maxReconnectDelay: 600,
      });
      const monitor = new ConnectionMonitor(client, { minReconnectDelay: 300, maxReconnectDelay: 600, networkEventTarget: null });
      expect(monitor.exactCountdown).toBe(true);
      const started = Date.now();
      client.connect();
      await until(() => monitor.getState().attempt >= 2, 'two scheduled reconnect attempts', 5000);
      const state = monitor.getState();
      expect(state.status).toBe('connecting');
      expect(state.nextRetryAt).toBeGreaterThanOrEqual(started + 300);
      expect(state.nextRetryAt).toBeLessThanOrEqual(Date.now() + 600);
      monitor.close();
    });
  });
});
