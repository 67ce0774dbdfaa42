import { useEffect, useState, useSyncExternalStore } from 'react';
import { secondsUntil, type ConnectionState } from '@herald/client';
import { useHeraldClient } from './context.js';

export interface ConnectionView extends ConnectionState {
  /** Whole seconds until the next reconnect attempt; null when none is scheduled. */
  secondsUntilRetry: number | null;
  /** Whether the countdown is exact (see ConnectionMonitor.exactCountdown). */
  exactCountdown: boolean;
  /** The time the view was computed (ms); ticks while something time-based is shown. */
  now: number;
}

/** Re-renders every `intervalMs` while `active`, returning the current time. */
export function useNow(active: boolean, intervalMs = 250): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (!active) return undefined;
    setNow(Date.now());
    const timer = setInterval(() => setNow(Date.now()), intervalMs);
    return () => clearInterval(timer);
  }, [active, intervalMs]);
  return active ? now : Date.now();
}

/**
 * The connection's status (connecting, live, reconnecting, offline, disconnected), the countdown
 * to the next attempt, and the message count and last update. Re-renders on every change and,
 * while a countdown or a "last update" age is shown, a few times a second.
 */
export function useConnectionState(options: { tick?: boolean } = {}): ConnectionView {
  const client = useHeraldClient();
  const monitor = client.connection;
  const state = useSyncExternalStore(monitor.subscribe, monitor.getState, monitor.getState);
  const now = useNow((options.tick ?? true) && (state.nextRetryAt !== null || state.lastMessageAt !== null));
  return {
    ...state,
    secondsUntilRetry: state.nextRetryAt === null ? null : secondsUntil(state.nextRetryAt, now),
    exactCountdown: monitor.exactCountdown,
    now,
  };
}
