// Gap signals end to end: a Node client (the SDK over `ws`) stops reading its socket, Herald sheds
// publications from its outbound queue and signals the gap; once the client reads again,
// @herald/client fills the gap from history, so the application sees every offset exactly once.
// (A history reply is never shed: if it does not fit next to the backlog still queued, the server
// disconnects the client as slow, and the fill is retried after the resubscribe; either way the
// result must be the same.)
import { afterEach, expect, test } from 'vitest';
import WebSocket from 'ws';
import { HeraldClient, type Gap, type HeraldPublication } from '@herald/client';
import { api, connectionToken, deadline, metric, startHerald, waitFor, waitForSubscribers, type Herald } from '../harness.js';

let herald: Herald | null = null;
let client: HeraldClient | null = null;

afterEach(async () => {
  client?.close();
  await herald?.dispose();
  herald = null;
  client = null;
});

/** The SDK's WebSocket, remembered so that the test can pause reading it. */
const sockets: WebSocket[] = [];
class RecordedWebSocket extends WebSocket {
  constructor(...args: ConstructorParameters<typeof WebSocket>) {
    super(...args);
    sockets.push(this);
  }
}

test('a client that fell behind gets a gap signal and fills it from history', async () => {
  const channel = { name: 'firehose', history_size: 20000, history_ttl: '300s', allow_recovery: true, force_recovery: true, allow_subscribe_for_client: true, allow_history_for_subscriber: true };
  herald = await startHerald({
    memory: true,
    config: {
      client: { token: { hmac_secret_key: 'browser-test-hmac-secret' }, queue_max_size: 262144 },
      websocket: { write_timeout: '60s' },
      http_api: { key: 'browser-test-api-key' },
      channel: { namespaces: [channel] },
    },
  });
  client = new HeraldClient({
    url: herald.ws,
    token: connectionToken('slow'),
    centrifuge: { websocket: RecordedWebSocket, timeout: 20000 },
  });
  // Pages of 20 publications of 4 kB fit the 256 kB queue.
  const subscription = client.retain('firehose:1', { gapPageSize: 20 });
  const received: HeraldPublication[] = [];
  const gaps: Gap[] = [];
  const resyncs: string[] = [];
  subscription.on('publication', (p) => received.push(p));
  subscription.on('gap', (gap) => gaps.push(gap));
  subscription.on('resync', ({ reason }) => resyncs.push(reason));
  client.connect();
  await waitFor(async () => subscription.isSubscribed(), 'the subscription');
  await waitForSubscribers(herald, 'firehose:1', 1);

  const socket = sockets.at(-1);
  if (!socket) throw new Error('the SDK made no WebSocket');
  socket.pause();
  // Publish until Herald sheds: the kernel's socket buffers take the first megabytes.
  const payload = 'x'.repeat(4000);
  let lastOffset = 0;
  for (let round = 0; round < 100 && (await metric(herald, 'herald_publications_shed_total')) === 0; round++) {
    const commands = Array.from({ length: 200 }, (_, i) => ({ publish: { channel: 'firehose:1', data: { round, i, payload } } }));
    const answer = await deadline(
      fetch(`${herald.http}/api/batch`, {
        method: 'POST',
        headers: { 'X-API-Key': 'browser-test-api-key' },
        body: JSON.stringify({ commands, parallel: true }),
      }).then((r) => r.json() as Promise<{ replies: { publish?: { offset: number } }[] }>),
      20000,
      'a batch of publications',
    );
    for (const reply of answer.replies) lastOffset = Math.max(lastOffset, reply.publish?.offset ?? 0);
  }
  expect(await metric(herald, 'herald_publications_shed_total')).toBeGreaterThan(0);
  socket.resume();

  await waitFor(async () => received.length >= lastOffset, `all ${lastOffset} publications`, 60000).catch((error: Error) => {
    throw new Error(`${error.message}: have ${received.length}, gaps ${gaps.length}, resyncs ${JSON.stringify(resyncs)}`);
  });
  const offsets = received.map((p) => p.offset ?? 0);
  expect([...offsets].sort((a, b) => a - b)).toEqual(Array.from({ length: lastOffset }, (_, i) => i + 1));
  expect(gaps.length).toBeGreaterThan(0);
  const signalled = new Set(gaps.flatMap((g) => g.offsets));
  const filled = received.filter((p) => p.source === 'gap').map((p) => p.offset ?? 0);
  expect(new Set(filled)).toEqual(signalled);
  expect(filled.length).toBe(signalled.size);
  expect(resyncs).toEqual([]);
  // Still live afterwards.
  const { offset } = await api<{ offset: number }>(herald, 'publish', { channel: 'firehose:1', data: { after: true } });
  await waitFor(async () => received.at(-1)?.offset === offset, 'the publication after the gap');
  expect(received.at(-1)?.source).toBe('live');
}, 120000);
