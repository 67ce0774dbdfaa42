import type { CSSProperties } from 'react';
import type { HeraldConnectionStatus as Status } from '@herald/client';
import { useConnectionState, type ConnectionView } from './useConnectionState.js';

export interface ConnectionStatusLabels {
  connecting: string;
  live: string;
  reconnecting: string;
  offline: string;
  disconnected: string;
}

const DEFAULT_LABELS: ConnectionStatusLabels = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting',
  offline: 'Offline',
  disconnected: 'Disconnected',
};

const COLORS: Record<Status, string> = {
  connecting: '#d49b00',
  live: '#1a9e44',
  reconnecting: '#d46a00',
  offline: '#777777',
  disconnected: '#c62828',
};

export interface ConnectionStatusProps {
  className?: string;
  style?: CSSProperties;
  labels?: Partial<ConnectionStatusLabels>;
  /** Show the message count and the time since the last update (default true). */
  showActivity?: boolean;
}

/** "in 3s", "5s ago", "2m ago": short enough for a status bar. */
export function formatAge(ms: number): string {
  const seconds = Math.max(0, Math.floor(ms / 1000));
  if (seconds < 60) return `${seconds}s ago`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m ago`;
  return `${Math.floor(minutes / 60)}h ago`;
}

/** The detail line for a state: the countdown while reconnecting, the error when there is one. */
export function describeConnection(view: ConnectionView): string {
  switch (view.status) {
    case 'reconnecting':
    case 'connecting': {
      if (view.secondsUntilRetry !== null && view.secondsUntilRetry > 0) {
        return `retrying in ${view.secondsUntilRetry}s (attempt ${view.attempt})`;
      }
      return view.attempt > 0 ? `attempt ${view.attempt + 1}…` : '';
    }
    case 'offline':
      return 'waiting for the network';
    case 'disconnected':
      return view.lastError && view.lastError.code !== 0 ? `${view.lastError.reason} (${view.lastError.code})` : '';
    default:
      return '';
  }
}

/**
 * A small live status: a colored dot and label (Live, Reconnecting with a countdown, Offline,
 * ...), the number of messages received and how long ago the last one came. Unstyled apart from
 * the dot; style it through `className` (BEM-ish inner classes `herald-status__*`).
 */
export function ConnectionStatus({ className, style, labels, showActivity = true }: ConnectionStatusProps) {
  const view = useConnectionState();
  const text = { ...DEFAULT_LABELS, ...labels };
  const detail = describeConnection(view);
  return (
    <div
      className={['herald-status', `herald-status--${view.status}`, className].filter(Boolean).join(' ')}
      style={{ display: 'inline-flex', alignItems: 'center', gap: '0.5em', ...style }}
      role="status"
      aria-live="polite"
      data-status={view.status}
      data-attempt={view.attempt}
      data-message-count={view.messageCount}
      data-next-retry-at={view.nextRetryAt ?? ''}
    >
      <span
        className="herald-status__dot"
        aria-hidden="true"
        style={{ width: '0.7em', height: '0.7em', borderRadius: '50%', background: COLORS[view.status], display: 'inline-block' }}
      />
      <span className="herald-status__label">{text[view.status]}</span>
      {detail && <span className="herald-status__detail">{detail}</span>}
      {showActivity && (
        <>
          <span className="herald-status__count">
            {view.messageCount} {view.messageCount === 1 ? 'message' : 'messages'}
          </span>
          <span className="herald-status__last">
            {view.lastMessageAt === null ? 'no updates yet' : `last update ${formatAge(view.now - view.lastMessageAt)}`}
          </span>
        </>
      )}
    </div>
  );
}
