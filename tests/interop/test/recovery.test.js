// Recovery with the stock SDK: a forced reconnect while the API keeps publishing must leave the
// subscriber with every publication exactly once and in order, and `subscribed` saying
// recovered: true.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  apiResult, connect, connectionToken, deadline, newClient, nextEvent, range, recorder, startHerald, subscribe,
} from '../lib/herald.js';

/** Publishes {seq: 1..total} to `channel`, one every `gapMs`, until done or `stop.now`. */
async function publishPaced(server, channel, total, gapMs, stop = {}) {
  for (let seq = 1; seq <= total && !stop.now; seq++) {
    await apiResult(server, 'publish', { channel, data: { seq } });
    await new Promise((resolve) => setTimeout(resolve, gapMs));
  }
}

/** The publications' seq values, checked to be 1..total with no duplicate and no gap. */
function assertExactlyOnceInOrder(publications, total) {
  const seqs = publications.map((p) => p.data.seq);
  const duplicates = seqs.filter((s, i) => seqs.indexOf(s) !== i);
  const missing = range(1, total).filter((s) => !seqs.includes(s));
  assert.deepEqual({ duplicates, missing }, { duplicates: [], missing: [] });
  assert.deepEqual(seqs, range(1, total), 'in order');
  const offsets = publications.map((p) => p.offset);
  assert.deepEqual(offsets, range(offsets[0], offsets[0] + total - 1), 'offsets without gaps');
}

async function recoverAcross(t, forceReconnect) {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('recoverer') });
  await connect(client);
  const sub = client.newSubscription('stream', { recoverable: true });
  const first = await subscribe(sub);
  assert.equal(first.recoverable, true);
  assert.equal(first.wasRecovering, false);

  const subscribedEvents = recorder(sub, 'subscribed');
  const connecting = recorder(client, 'connecting');
  const seen = recorder(sub, 'publication');
  const total = 150;
  const publishing = publishPaced(server, 'stream', total, 15);
  try {
    await seen.until(20);
    await forceReconnect(server, client);
    const resubscribed = await subscribedEvents.until(1, 10000);
    const ctx = resubscribed[0];
    assert.equal(ctx.wasRecovering, true, JSON.stringify(ctx));
    assert.equal(ctx.recovered, true, JSON.stringify(ctx));
    // The SDK waits at least minReconnectDelay (100 ms) while a publication goes out every
    // 15 ms: some of them must have come back through recovery, not live.
    assert.equal(ctx.hasRecoveredPublications, true, JSON.stringify(ctx));
    await publishing;
    const publications = await seen.until(total, 15000);
    assertExactlyOnceInOrder(publications, total);
    assert.ok(seen.items.length === total, `no extra publications: ${seen.items.length}`);
    return { connecting: connecting.items, subscribed: subscribedEvents.items, server, client };
  } finally {
    await publishing.catch(() => {});
  }
}

test('recovery after the API forces a reconnect (disconnect code 3011) while publishing continues', async (t) => {
  const { connecting } = await recoverAcross(t, async (server) => {
    const result = await apiResult(server, 'disconnect', {
      user: 'recoverer',
      disconnect: { code: 3011, reason: 'force reconnect' },
    });
    assert.deepEqual(result, {});
  });
  assert.equal(connecting[0]?.code, 3011, `reconnecting because of: ${JSON.stringify(connecting)}`);
});

test('recovery after the socket is cut under the client while publishing continues', async (t) => {
  await recoverAcross(t, async (_server, client) => {
    // The SDK keeps its WebSocket in private fields; cutting it is the closest thing to a
    // network failure in one process.
    const socket = client._transport?._transport;
    assert.ok(socket && typeof socket.terminate === 'function', 'found the ws socket inside the SDK');
    socket.terminate();
  });
});

test('a new subscription with `since` recovers from a known position', async (t) => {
  const server = await startHerald(t);
  let position;
  for (const seq of range(1, 10)) position = await apiResult(server, 'publish', { channel: 'since', data: { seq } });
  const client = newClient(server, { token: connectionToken('late-joiner') });
  await connect(client);
  const sub = client.newSubscription('since', { since: { offset: 4, epoch: position.epoch } });
  const seen = recorder(sub, 'publication');
  const ctx = await subscribe(sub);
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, true, JSON.stringify(ctx));
  await apiResult(server, 'publish', { channel: 'since', data: { seq: 11 } });
  const publications = await seen.until(7);
  assert.deepEqual(publications.map((p) => p.data.seq), range(5, 11));
});

test('recovery from a position of another epoch fails whole: recovered false, no publications', async (t) => {
  const server = await startHerald(t);
  for (const seq of range(1, 5)) await apiResult(server, 'publish', { channel: 'epochs', data: { seq } });
  const client = newClient(server, { token: connectionToken('stale') });
  await connect(client);
  const sub = client.newSubscription('epochs', { since: { offset: 2, epoch: 'some-old-epoch' } });
  const seen = recorder(sub, 'publication');
  const ctx = await subscribe(sub);
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, false, JSON.stringify(ctx));
  // Then live publications flow; none of the old ones were pushed.
  await apiResult(server, 'publish', { channel: 'epochs', data: { seq: 6 } });
  const publications = await seen.until(1);
  assert.deepEqual(publications.map((p) => p.data.seq), [6]);
});

test('server shutdown disconnects with 3001 and the client recovers on the restarted server', async (t) => {
  // Same port and same data dir: the restarted server has the stream (redb engine).
  const first = await startHerald(t);
  const client = newClient(first, { token: connectionToken('survivor') });
  await connect(client);
  const sub = client.newSubscription('durable', { recoverable: true });
  await subscribe(sub);
  const seen = recorder(sub, 'publication');
  for (const seq of range(1, 5)) await apiResult(first, 'publish', { channel: 'durable', data: { seq } });
  await seen.until(5);

  const connecting = nextEvent(client, 'connecting');
  first.clients.delete(client); // keep the client across the restart
  first.child.kill('SIGTERM');
  const ctx = await connecting;
  assert.equal(ctx.code, 3001, `reconnect reason: ${JSON.stringify(ctx)}`);
  await deadline(new Promise((resolve) => (first.child.exitCode !== null ? resolve() : first.child.once('exit', resolve))), 5000, 'exit');

  // Listen before the new server is up: the client may resubscribe at once.
  const resubscribing = nextEvent(sub, 'subscribed', { ms: 15000 });
  const second = await startHerald(t, undefined, { port: first.port, dataDir: first.dataDir });
  second.clients.add(client);
  // Published while the client is away or just back: recovered on resubscribe or live.
  for (const seq of range(6, 8)) await apiResult(second, 'publish', { channel: 'durable', data: { seq } });
  const resubscribed = await resubscribing;
  assert.equal(resubscribed.recovered, true, JSON.stringify(resubscribed));
  await apiResult(second, 'publish', { channel: 'durable', data: { seq: 9 } });
  const publications = await seen.until(9);
  assert.deepEqual(publications.map((p) => p.data.seq), range(1, 9));
});

test('recovery is whole or nothing: history trimmed past the position gives recovered false and no old publications', async (t) => {
  const server = await startHerald(t); // history_size 100
  const client = newClient(server, { token: connectionToken('gone-long') });
  await connect(client);
  const sub = client.newSubscription('trimmed', { recoverable: true });
  await subscribe(sub);
  const seen = recorder(sub, 'publication');
  for (const seq of range(1, 3)) await apiResult(server, 'publish', { channel: 'trimmed', data: { seq } });
  await seen.until(3);

  const disconnected = nextEvent(client, 'disconnected');
  client.disconnect();
  await disconnected;
  // 150 more while away: offsets 4..53 are trimmed, so recovery from 3 is impossible.
  for (const seq of range(4, 153)) await apiResult(server, 'publish', { channel: 'trimmed', data: { seq } });
  const resubscribed = nextEvent(sub, 'subscribed');
  client.connect();
  const ctx = await resubscribed;
  assert.equal(ctx.wasRecovering, true, JSON.stringify(ctx));
  assert.equal(ctx.recovered, false, JSON.stringify(ctx));
  assert.equal(ctx.streamPosition?.offset, 153, JSON.stringify(ctx));
  await apiResult(server, 'publish', { channel: 'trimmed', data: { seq: 154 } });
  await seen.until(4);
  assert.deepEqual(seen.items.map((p) => p.data.seq), [1, 2, 3, 154], 'nothing partial in between');
});

test('reconnecting with nothing missed: recovered true and no publications replayed', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('uptodate') });
  await connect(client);
  const sub = client.newSubscription('calm', { recoverable: true });
  await subscribe(sub);
  const seen = recorder(sub, 'publication');
  for (const seq of range(1, 5)) await apiResult(server, 'publish', { channel: 'calm', data: { seq } });
  await seen.until(5);
  const resubscribed = nextEvent(sub, 'subscribed');
  await apiResult(server, 'disconnect', { user: 'uptodate', disconnect: { code: 3011, reason: 'force reconnect' } });
  const ctx = await resubscribed;
  assert.equal(ctx.recovered, true, JSON.stringify(ctx));
  assert.equal(ctx.hasRecoveredPublications, false, JSON.stringify(ctx));
  await apiResult(server, 'publish', { channel: 'calm', data: { seq: 6 } });
  await seen.until(6);
  assert.deepEqual(seen.items.map((p) => p.data.seq), range(1, 6));
});
