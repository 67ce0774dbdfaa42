import { afterEach, describe, expect, it, vi } from 'vitest';
import type { HeraldPublication } from '../src/subscription.js';
import { optionsIdentity, subscribeData } from '../src/subscription.js';
import { parseGapSignal, offsetsFromRanges, historyRequestForGap } from '../src/gaps.js';
import { fakeSubscription, until } from './fakes.js';

afterEach(() => {
  vi.useRealTimers();
});

function collect(subscription: ReturnType<typeof fakeSubscription>['subscription']) {
  const received: HeraldPublication[] = [];
  subscription.on('publication', (publication) => received.push(publication));
  return received;
}

describe('subscribe request', () => {
  it('puts Herald settings under data.herald next to the caller data', () => {
    expect(subscribeData({})).toBeUndefined();
    expect(
      subscribeData({ changes: 'patch', filters: [{ path: '/new/project', cmp: 'eq', val: 'p1' }], resume: true, data: { app: 1 } }),
    ).toEqual({ app: 1, herald: { changes: 'patch', filters: [{ path: '/new/project', cmp: 'eq', val: 'p1' }], resume: true } });
    const { sdk } = fakeSubscription('c', { changes: 'patch', joinLeave: false });
    expect(sdk.options).toMatchObject({ data: { herald: { changes: 'patch' } }, joinLeave: false, recoverable: true });
    expect(optionsIdentity({ changes: 'patch' })).not.toBe(optionsIdentity({}));
    expect(optionsIdentity({ changes: 'full' })).toBe(optionsIdentity({}));
  });
});

describe('delivery', () => {
  it('drops redeliveries of an offset, marks recovered ones, and parses change envelopes', () => {
    const { sdk, subscription, host } = fakeSubscription();
    const received = collect(subscription);
    sdk.subscribed({ streamPosition: { offset: 4, epoch: 'e1' } });
    sdk.publish(5, { text: 'a' });
    sdk.publish(5, { text: 'a' });
    sdk.publish(4, { text: 'old' });
    sdk.subscribed({ wasRecovering: true, recovered: true, streamPosition: { offset: 5, epoch: 'e1' } }, [
      { channel: 'tasks', data: { text: 'a' }, offset: 5 },
      { channel: 'tasks', data: { entity_type: 't', entity_id: '1', change_type: 'delete', changed_fields: [], patch: [] }, offset: 6 },
    ]);
    expect(received.map((p) => [p.offset, p.source])).toEqual([
      [5, 'live'],
      [6, 'recovery'],
    ]);
    expect(received[1]?.change?.change_type).toBe('delete');
    expect(subscription.lastOffset).toBe(6);
    expect(host.messages).toBe(2);
  });

  it('says to resync when recovery failed, and starts counting from the new position', () => {
    const { sdk, subscription } = fakeSubscription();
    const reasons: string[] = [];
    subscription.on('resync', (event) => reasons.push(event.reason));
    const received = collect(subscription);
    sdk.subscribed({ streamPosition: { offset: 10, epoch: 'e1' } });
    sdk.publish(11, 'x');
    sdk.subscribed({ wasRecovering: true, recovered: false, streamPosition: { offset: 3, epoch: 'e2' } });
    sdk.publish(4, 'after restart');
    expect(reasons).toEqual(['recovery failed: publications since the last position are no longer available']);
    expect(received.map((p) => p.data)).toEqual(['x', 'after restart']);
    expect(subscription.epoch).toBe('e2');
  });
});

describe('acknowledgements', () => {
  it('auto mode folds publications into one cumulative herald.ack and acks again on redelivery', async () => {
    vi.useFakeTimers();
    const { sdk, subscription, host } = fakeSubscription('orders', { ack: 'auto', ackDelayMs: 10 });
    const acks: number[] = [];
    subscription.on('ack', (event) => acks.push(event.offset));
    sdk.subscribed();
    sdk.publish(1, 'a');
    sdk.publish(2, 'b');
    sdk.publish(3, 'c');
    await vi.advanceTimersByTimeAsync(10);
    expect(host.rpcs).toEqual([{ method: 'herald.ack', data: { channel: 'orders', offset: 3 } }]);
    // The server retries offset 2 (our ack crossed it): it is not delivered again, but confirmed.
    sdk.publish(2, 'b');
    await vi.advanceTimersByTimeAsync(10);
    expect(host.rpcs.map((r) => (r.data as { offset: number }).offset)).toEqual([3, 3]);
    expect(acks).toEqual([3, 3]);
  });

  it('reports a failed ack without throwing and acks again after resubscribing', async () => {
    vi.useFakeTimers();
    const { sdk, subscription, host } = fakeSubscription('orders', { ack: 'auto', ackDelayMs: 0 });
    const errors: string[] = [];
    subscription.on('error', (event) => errors.push(event.error.message));
    host.rpcAnswer = async () => {
      throw { code: 108, message: 'method not found' };
    };
    sdk.subscribed();
    sdk.publish(1, 'a');
    await vi.advanceTimersByTimeAsync(1);
    expect(errors).toEqual(['herald.ack 1 failed: 108 method not found']);
    host.rpcAnswer = async () => ({ data: { acknowledged: 1 } });
    sdk.subscribed({ wasRecovering: true, recovered: true, streamPosition: { offset: 1, epoch: 'e1' } });
    await vi.advanceTimersByTimeAsync(1);
    expect(host.rpcs.length).toBe(2);
  });

  it('manual ack validates the offset and returns what the server confirmed', async () => {
    const { subscription, host } = fakeSubscription('orders', { ack: 'manual' });
    host.rpcAnswer = async () => ({ data: { acknowledged: 2 } });
    await expect(subscription.ack(7)).resolves.toBe(2);
    await expect(subscription.ack(0)).rejects.toThrow(/positive integer/);
    expect(host.rpcs).toEqual([{ method: 'herald.ack', data: { channel: 'orders', offset: 7 } }]);
  });
});

describe('gaps', () => {
  it('parses the signal and refuses malformed ones', () => {
    expect(parseGapSignal({ herald: { gap: { channel: 'c', offsets: [5, 3, 3] } } })).toEqual({ channel: 'c', offsets: [3, 5] });
    expect(parseGapSignal({ herald: { gap: { channel: 'c', ranges: [[2, 4]] } } })).toEqual({ channel: 'c', offsets: [2, 3, 4] });
    expect(parseGapSignal({ herald: { gap: { channel: 'c', offsets: [-1] } } })).toBeNull();
    expect(parseGapSignal({ herald: { gap: { channel: 'c', offsets: [4], unnumbered: 2 } } })).toEqual({ channel: 'c', offsets: [4], unnumbered: 2 });
    expect(parseGapSignal({ herald: { gap: { channel: 'c', unnumbered: 3 } } })).toEqual({ channel: 'c', offsets: [], unnumbered: 3 });
    expect(parseGapSignal({ herald: { gap: { channel: 'c', offsets: [1], unnumbered: -1 } } })).toBeNull();
    expect(parseGapSignal({ herald: { gap: { offsets: [1] } } })).toBeNull();
    expect(parseGapSignal({ text: 'hello' })).toBeNull();
    expect(() => offsetsFromRanges([[1, 1e9]])).toThrow(/resync instead/);
    expect(historyRequestForGap({ channel: 'c', offsets: [3, 5] }, 'e')).toEqual({ since: { offset: 2, epoch: 'e' }, limit: 3 });
  });

  it('fills a gap from history and holds live publications until it is filled', async () => {
    const { sdk, subscription } = fakeSubscription();
    const received = collect(subscription);
    sdk.subscribed({ streamPosition: { offset: 0, epoch: 'e1' } });
    sdk.publish(1, 'one');
    sdk.publish(4, 'four');
    let answer: () => void = () => {};
    sdk.historyAnswer = (request) =>
      new Promise((resolve) => {
        answer = () =>
          resolve({
            // History may hold more than the gap (here offset 4, already delivered).
            publications: [2, 3, 4].map((offset) => ({ channel: 'tasks', data: `h${offset}`, offset })),
            offset: 5,
            epoch: 'e1',
          });
        expect(request).toEqual({ since: { offset: 1, epoch: 'e1' }, limit: 2 });
      });
    const filling = subscription.handleGap({ channel: 'tasks', offsets: [2, 3] });
    sdk.publish(5, 'five');
    expect(received.map((p) => p.offset)).toEqual([1, 4]);
    answer();
    await filling;
    expect(received.map((p) => [p.offset, p.source])).toEqual([
      [1, 'live'],
      [4, 'live'],
      [2, 'gap'],
      [3, 'gap'],
      [5, 'live'],
    ]);
  });

  it('pages through history when the gap is longer than one history answer', async () => {
    const { sdk, subscription } = fakeSubscription();
    const received = collect(subscription);
    sdk.subscribed({ streamPosition: { offset: 0, epoch: 'e1' } });
    // The server caps each answer at 3 publications.
    sdk.historyAnswer = async (request) => {
      const { since, limit } = request as { since: { offset: number }; limit: number };
      const offsets = Array.from({ length: Math.min(limit, 3) }, (_, i) => since.offset + 1 + i).filter((o) => o <= 9);
      return { publications: offsets.map((offset) => ({ channel: 'tasks', data: offset, offset })), offset: 9, epoch: 'e1' };
    };
    await subscription.handleGap({ channel: 'tasks', offsets: [2, 3, 5, 8] });
    expect(received.map((p) => p.offset)).toEqual([2, 3, 5, 8]);
    expect(sdk.historyCalls).toEqual([
      { since: { offset: 1, epoch: 'e1' }, limit: 7 },
      { since: { offset: 4, epoch: 'e1' }, limit: 4 },
      { since: { offset: 7, epoch: 'e1' }, limit: 1 },
    ]);
  });

  it('asks to resync when the gap is no longer in history, or history is in another epoch', async () => {
    const { sdk, subscription } = fakeSubscription();
    const reasons: string[] = [];
    subscription.on('resync', (event) => reasons.push(event.reason));
    sdk.subscribed({ streamPosition: { offset: 0, epoch: 'e1' } });
    sdk.historyAnswer = async () => ({ publications: [{ channel: 'tasks', data: 3, offset: 3 }], offset: 3, epoch: 'e1' });
    await subscription.handleGap({ channel: 'tasks', offsets: [2, 3] });
    sdk.historyAnswer = async () => ({ publications: [], offset: 3, epoch: 'e2' });
    await subscription.handleGap({ channel: 'tasks', offsets: [4] });
    expect(reasons).toEqual([
      'gap at offsets 2,3 could not be filled: offsets 2 are no longer in the history of tasks',
      'gap at offsets 4 could not be filled: history of tasks is in epoch e2, not e1',
    ]);
  });

  it('retries a fill that the connection loss interrupted once resubscribed with recovery', async () => {
    const { sdk, subscription } = fakeSubscription('tasks', { gapPageSize: 10 });
    const reasons: string[] = [];
    subscription.on('resync', (event) => reasons.push(event.reason));
    const received = collect(subscription);
    sdk.subscribed({ streamPosition: { offset: 0, epoch: 'e1' } });
    sdk.publish(1, 'one');
    sdk.historyAnswer = async () => {
      throw { code: 11, message: 'connection closed' };
    };
    const filling = subscription.handleGap({ channel: 'tasks', offsets: [2, 3] });
    sdk.publish(4, 'four');
    await filling;
    // Nothing held back while the fill waits for the next connection.
    expect(received.map((p) => p.offset)).toEqual([1, 4]);
    sdk.historyAnswer = async (request) => {
      expect(request).toEqual({ since: { offset: 1, epoch: 'e1' }, limit: 2 });
      return { publications: [2, 3].map((offset) => ({ channel: 'tasks', data: offset, offset })), offset: 5, epoch: 'e1' };
    };
    sdk.subscribed({ wasRecovering: true, recovered: true, streamPosition: { offset: 4, epoch: 'e1' } }, [
      { channel: 'tasks', data: 'five', offset: 5 },
    ]);
    await until(() => received.length === 5, 'the retried fill');
    expect(received.map((p) => [p.offset, p.source])).toEqual([
      [1, 'live'],
      [4, 'live'],
      [2, 'gap'],
      [3, 'gap'],
      [5, 'recovery'],
    ]);
    expect(reasons).toEqual([]);
  });

  it('asks to resync when history cannot fill the gap', async () => {
    const { sdk, subscription } = fakeSubscription();
    const reasons: string[] = [];
    subscription.on('resync', (event) => reasons.push(event.reason));
    sdk.subscribed();
    sdk.historyAnswer = async () => {
      throw { code: 112, message: 'unrecoverable position' };
    };
    await subscription.handleGap({ channel: 'tasks', offsets: [7] });
    expect(reasons).toEqual(['gap at offsets 7 could not be filled: history of tasks: 112 unrecoverable position']);
  });

  it('asks to resync for skipped publications without offsets, and still fills the numbered ones', async () => {
    const { sdk, subscription } = fakeSubscription();
    const reasons: string[] = [];
    subscription.on('resync', (event) => reasons.push(event.reason));
    const received = collect(subscription);
    sdk.subscribed();
    sdk.historyAnswer = async () => ({ publications: [{ channel: 'tasks', data: 'two', offset: 2 }], offset: 2, epoch: 'e1' });
    await subscription.handleGap({ channel: 'tasks', offsets: [], unnumbered: 3 });
    await subscription.handleGap({ channel: 'tasks', offsets: [2], unnumbered: 1 });
    expect(reasons).toEqual([
      '3 publication(s) without offset were skipped (the channel keeps no history)',
      '1 publication(s) without offset were skipped (the channel keeps no history)',
    ]);
    expect(received.map((p) => [p.offset, p.source])).toEqual([[2, 'gap']]);
    expect(sdk.historyCalls.length).toBe(1);
  });

  it('only reports gaps with fillGaps: false', async () => {
    const { sdk, subscription } = fakeSubscription('positions', { fillGaps: false });
    const gaps: number[][] = [];
    subscription.on('gap', (gap) => gaps.push(gap.offsets));
    const received = collect(subscription);
    sdk.subscribed();
    await subscription.handleGap({ channel: 'positions', offsets: [1, 2] });
    sdk.publish(3, 'latest');
    expect(gaps).toEqual([[1, 2]]);
    expect(sdk.historyCalls).toEqual([]);
    expect(received.map((p) => p.offset)).toEqual([3]);
  });

  it('uses a custom onGap and skips offsets already delivered', async () => {
    const asked: number[][] = [];
    const { sdk, subscription } = fakeSubscription('tasks', {
      onGap: async (gap) => {
        asked.push(gap.offsets);
        return [{ channel: 'tasks', data: 'from the app', offset: 2 }];
      },
    });
    const received = collect(subscription);
    sdk.subscribed();
    sdk.publish(1, 'one');
    sdk.publish(3, 'three');
    await subscription.handleGap({ channel: 'tasks', offsets: [1, 2] });
    await until(() => received.length === 3, 'the filled publication');
    expect(asked).toEqual([[2]]);
    expect(received.map((p) => p.data)).toEqual(['one', 'three', 'from the app']);
  });
});
