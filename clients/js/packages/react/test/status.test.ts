import { describe, expect, it } from 'vitest';
import { describeConnection, formatAge } from '../src/ConnectionStatus.js';
import type { ConnectionView } from '../src/useConnectionState.js';

const view = (patch: Partial<ConnectionView>): ConnectionView => ({
  status: 'live',
  attempt: 0,
  nextRetryAt: null,
  lastError: null,
  messageCount: 0,
  lastMessageAt: null,
  connectedAt: null,
  clientId: null,
  secondsUntilRetry: null,
  exactCountdown: true,
  now: 0,
  ...patch,
});

describe('ConnectionStatus text', () => {
  it('ages in seconds, minutes, hours', () => {
    expect(formatAge(0)).toBe('0s ago');
    expect(formatAge(59_999)).toBe('59s ago');
    expect(formatAge(60_000)).toBe('1m ago');
    expect(formatAge(3_600_000 * 2 + 5)).toBe('2h ago');
    expect(formatAge(-5)).toBe('0s ago');
  });

  it('counts down while reconnecting, then says the attempt is on', () => {
    expect(describeConnection(view({ status: 'reconnecting', attempt: 2, secondsUntilRetry: 3 }))).toBe('retrying in 3s (attempt 2)');
    expect(describeConnection(view({ status: 'reconnecting', attempt: 2, secondsUntilRetry: 0 }))).toBe('attempt 3…');
    expect(describeConnection(view({ status: 'connecting' }))).toBe('');
    expect(describeConnection(view({ status: 'offline' }))).toBe('waiting for the network');
    expect(describeConnection(view({ status: 'live' }))).toBe('');
  });

  it('gives the reason of a disconnect, not of a deliberate one', () => {
    expect(describeConnection(view({ status: 'disconnected', lastError: { code: 3500, reason: 'invalid token' } }))).toBe('invalid token (3500)');
    expect(describeConnection(view({ status: 'disconnected', lastError: { code: 0, reason: 'disconnect called' } }))).toBe('');
  });
});
