// History through the stock SDK: limit, since, reverse, and limit 0 for the stream top.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  apiResult, connect, connectionToken, newClient, range, startHerald, subscribe,
} from '../lib/herald.js';

test('history with limit, since and reverse; limit 0 gives the stream top', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('historian') });
  await connect(client);
  const sub = client.newSubscription('log');
  await subscribe(sub);

  let epoch = '';
  for (const n of range(1, 20)) {
    const result = await apiResult(server, 'publish', { channel: 'log', data: { n } });
    assert.equal(result.offset, n);
    epoch = result.epoch;
  }
  assert.ok(epoch, 'publish result carries the epoch');

  const top = await sub.history({ limit: 0 });
  assert.deepEqual(top.publications, []);
  assert.equal(top.offset, 20);
  assert.equal(top.epoch, epoch);

  const all = await sub.history({ limit: -1 });
  assert.deepEqual(all.publications.map((p) => p.data.n), range(1, 20));
  assert.deepEqual(all.publications.map((p) => p.offset), range(1, 20));

  const firstFive = await sub.history({ limit: 5 });
  assert.deepEqual(firstFive.publications.map((p) => p.data.n), range(1, 5));
  assert.equal(firstFive.offset, 20, 'top offset, whatever the page');

  const lastFive = await sub.history({ limit: 5, reverse: true });
  assert.deepEqual(lastFive.publications.map((p) => p.data.n), [20, 19, 18, 17, 16]);

  const afterTen = await sub.history({ limit: 3, since: { offset: 10, epoch } });
  assert.deepEqual(afterTen.publications.map((p) => p.data.n), [11, 12, 13]);

  const restAfterTen = await sub.history({ limit: -1, since: { offset: 10, epoch } });
  assert.deepEqual(restAfterTen.publications.map((p) => p.data.n), range(11, 20));

  const beforeTen = await sub.history({ limit: 3, since: { offset: 10, epoch }, reverse: true });
  assert.deepEqual(beforeTen.publications.map((p) => p.data.n), [9, 8, 7]);

  const sinceTop = await sub.history({ limit: 10, since: { offset: 20, epoch } });
  assert.deepEqual(sinceTop.publications, []);

  // A position from another epoch is rejected with 112 (unrecoverable position).
  await assert.rejects(sub.history({ limit: 10, since: { offset: 3, epoch: 'not-the-epoch' } }), (err) => {
    assert.equal(err.code, 112, JSON.stringify(err));
    return true;
  });
});

test('history size trims the oldest publications; history_remove clears them', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('historian') });
  await connect(client);
  const sub = client.newSubscription('big');
  await subscribe(sub);
  for (const n of range(1, 120)) await apiResult(server, 'publish', { channel: 'big', data: { n } });

  const kept = await sub.history({ limit: -1 });
  assert.deepEqual(kept.publications.map((p) => p.data.n), range(21, 120), 'history_size 100 keeps the newest 100');
  assert.equal(kept.offset, 120);

  await apiResult(server, 'history_remove', { channel: 'big' });
  const cleared = await sub.history({ limit: -1 });
  assert.deepEqual(cleared.publications, []);
  assert.equal(cleared.offset, 120, 'the stream position survives history_remove');
  assert.equal(cleared.epoch, kept.epoch);
});
