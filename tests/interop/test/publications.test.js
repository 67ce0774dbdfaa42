// Publications sent through the server HTTP API reach stock SDK subscribers intact and in order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  api, apiResult, connect, connectionToken, newClient, nextEvent, range, recorder, startHerald, subscribe,
} from '../lib/herald.js';

test('100 API publications arrive in order with data, offsets and tags intact', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('reader') });
  await connect(client);
  const sub = client.newSubscription('news');
  const subscribed = await subscribe(sub);
  assert.equal(subscribed.channel, 'news');
  const startOffset = subscribed.streamPosition?.offset ?? 0;

  const seen = recorder(sub, 'publication');
  const offsets = [];
  for (const n of range(1, 100)) {
    const result = await apiResult(server, 'publish', {
      channel: 'news',
      data: { n, text: `message ${n}`, nested: { list: [n, 'ü', null, true], unicode: '✓ 日本' } },
      tags: { n: String(n) },
    });
    offsets.push(result.offset);
  }
  const publications = await seen.until(100);
  seen.stop();

  assert.deepEqual(publications.map((p) => p.data.n), range(1, 100));
  assert.deepEqual(publications[41].data, {
    n: 42, text: 'message 42', nested: { list: [42, 'ü', null, true], unicode: '✓ 日本' },
  });
  assert.deepEqual(publications.map((p) => p.offset), offsets, 'SDK offsets match publish results');
  assert.deepEqual(offsets, range(startOffset + 1, startOffset + 100), 'offsets increase by one');
  assert.deepEqual(publications[6].tags, { n: '7' });
  assert.equal(publications[0].channel, 'news');
});

test('publish from the SDK (allow_publish_for_client) reaches another client with publisher info', async (t) => {
  const server = await startHerald(t);
  const alice = newClient(server, { token: connectionToken('alice', { info: { name: 'Alice' } }) });
  const bob = newClient(server, { token: connectionToken('bob') });
  await connect(alice);
  await connect(bob);
  const aliceSub = alice.newSubscription('chat');
  const bobSub = bob.newSubscription('chat');
  await subscribe(aliceSub);
  await subscribe(bobSub);

  const arrived = nextEvent(bobSub, 'publication');
  await aliceSub.publish({ text: 'hi bob' });
  const publication = await arrived;
  assert.deepEqual(publication.data, { text: 'hi bob' });
  assert.equal(publication.info?.user, 'alice', JSON.stringify(publication));
  assert.deepEqual(publication.info?.connInfo, { name: 'Alice' });
});

test('broadcast and batch from the API reach subscribers of each channel', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('multi') });
  await connect(client);
  const subs = ['b1', 'b2', 'b3'].map((channel) => client.newSubscription(channel));
  for (const sub of subs) await subscribe(sub);
  const seen = subs.map((sub) => recorder(sub, 'publication'));

  const broadcast = await apiResult(server, 'broadcast', { channels: ['b1', 'b2', 'b3'], data: { kind: 'broadcast' } });
  assert.equal(broadcast.responses.length, 3);
  for (const response of broadcast.responses) assert.ok(response.result, JSON.stringify(response));

  // Centrifugo answers batch with `replies` at the top level (no `result` wrapper).
  const batch = await api(server, 'batch', {
    commands: [
      { publish: { channel: 'b1', data: { kind: 'batch', i: 1 } } },
      { publish: { channel: 'b2', data: { kind: 'batch', i: 2 } } },
    ],
  });
  assert.equal(batch.replies?.length, 2, JSON.stringify(batch));
  for (const reply of batch.replies) assert.ok(reply.publish?.epoch, JSON.stringify(reply));

  assert.deepEqual((await seen[0].until(2)).map((p) => p.data), [{ kind: 'broadcast' }, { kind: 'batch', i: 1 }]);
  assert.deepEqual((await seen[1].until(2)).map((p) => p.data), [{ kind: 'broadcast' }, { kind: 'batch', i: 2 }]);
  assert.deepEqual((await seen[2].until(1)).map((p) => p.data), [{ kind: 'broadcast' }]);
});

test('an idempotent publish is delivered once', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('idem') });
  await connect(client);
  const sub = client.newSubscription('idem');
  await subscribe(sub);
  const seen = recorder(sub, 'publication');
  const first = await apiResult(server, 'publish', { channel: 'idem', data: { n: 1 }, idempotency_key: 'k1' });
  const again = await apiResult(server, 'publish', { channel: 'idem', data: { n: 1 }, idempotency_key: 'k1' });
  assert.deepEqual(again, first);
  await apiResult(server, 'publish', { channel: 'idem', data: { n: 2 } });
  // The marker publication arrives after any duplicate would have.
  const items = await seen.until(2);
  assert.deepEqual(items.map((p) => p.data.n), [1, 2]);
});
