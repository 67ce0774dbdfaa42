// The SDK's Protobuf build (what the Swift, Kotlin and Dart SDKs speak) against the real binary:
// the same channels, recovery, history, presence and heartbeats as the JSON clients, with JSON
// payloads carried as bytes, and JSON and Protobuf subscribers of one channel seeing the same
// publications.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import {
  api, apiResult, connect, connectionToken, deadline, fromJsonBytes, jsonBytes, newClient, newProtobufClient, nextEvent,
  range, recorder, startHerald, subscribe,
} from '../lib/herald.js';

test('JSON and Protobuf subscribers of one channel get the same publications, in order', async (t) => {
  const server = await startHerald(t);
  const pb = newProtobufClient(server, { token: connectionToken('pb-user') });
  const json = newClient(server, { token: connectionToken('json-user') });
  const connected = await connect(pb);
  assert.ok(connected.client.length > 0);
  await connect(json);
  const pbSub = pb.newSubscription('mixed', { recoverable: true });
  const jsonSub = json.newSubscription('mixed');
  const subscribed = await subscribe(pbSub);
  assert.equal(subscribed.recoverable, true);
  await subscribe(jsonSub);
  const pbSeen = recorder(pbSub, 'publication');
  const jsonSeen = recorder(jsonSub, 'publication');
  for (const n of range(1, 60)) {
    await apiResult(server, 'publish', {
      channel: 'mixed',
      data: { n, text: `message ${n}`, unicode: 'ü ✓ 日本', nested: { list: [n, null, true] } },
      tags: { parity: n % 2 ? 'odd' : 'even' },
    });
  }
  const viaProtobuf = await pbSeen.until(60);
  const viaJson = await jsonSeen.until(60);
  assert.ok(viaProtobuf.every((p) => p.data instanceof Uint8Array), 'Protobuf data arrive as bytes');
  assert.deepEqual(viaProtobuf.map((p) => fromJsonBytes(p.data)), viaJson.map((p) => p.data));
  assert.deepEqual(viaProtobuf.map((p) => fromJsonBytes(p.data).n), range(1, 60));
  assert.deepEqual(viaProtobuf.map((p) => p.offset), viaJson.map((p) => p.offset));
  assert.deepEqual(viaProtobuf.map((p) => p.tags), viaJson.map((p) => p.tags));

  // A Protobuf client publishes JSON bytes; the JSON subscriber sees the object and who sent it.
  const arrived = nextEvent(jsonSub, 'publication', { pred: (p) => p.data.from === 'protobuf' });
  await pbSub.publish(jsonBytes({ from: 'protobuf', list: [1, 2, 3] }));
  const published = await arrived;
  assert.deepEqual(published.data, { from: 'protobuf', list: [1, 2, 3] });
  assert.equal(published.info.user, 'pb-user');

  // Bytes that are not JSON are refused with "bad request"; the connection stays.
  await assert.rejects(pbSub.publish(new Uint8Array([0xff, 0x00, 0x01])), (error) => error.code === 107);
  assert.equal(pb.state, 'connected');
});

test('history, presence and RPC errors over Protobuf', async (t) => {
  const server = await startHerald(t);
  const pb = newProtobufClient(server, { token: connectionToken('historian') });
  await connect(pb);
  const sub = pb.newSubscription('archive');
  await subscribe(sub);
  for (const n of range(1, 12)) {
    await apiResult(server, 'publish', { channel: 'archive', data: { n } });
  }
  const latest = await sub.history({ limit: 5, reverse: true });
  assert.deepEqual(latest.publications.map((p) => fromJsonBytes(p.data).n), [12, 11, 10, 9, 8]);
  assert.ok(latest.epoch.length > 0);
  assert.equal(latest.offset, latest.publications[0].offset);
  const since = await sub.history({ limit: 100, since: { offset: latest.offset - 3, epoch: latest.epoch } });
  assert.deepEqual(since.publications.map((p) => fromJsonBytes(p.data).n), [10, 11, 12]);
  const top = await sub.history({ limit: 0 });
  assert.deepEqual([top.publications.length, top.offset, top.epoch], [0, latest.offset, latest.epoch]);

  const presence = await sub.presence();
  assert.deepEqual(Object.values(presence.clients).map((c) => c.user), ['historian']);
  const stats = await sub.presenceStats();
  assert.deepEqual([stats.numClients, stats.numUsers], [1, 1]);

  await assert.rejects(pb.rpc('no.such.method', jsonBytes({})), (error) => error.code === 108);
});

test('recovery over Protobuf: a forced reconnect loses and repeats nothing', async (t) => {
  const server = await startHerald(t);
  const pb = newProtobufClient(server, { token: connectionToken('recoverer') });
  await connect(pb);
  const sub = pb.newSubscription('stream', { recoverable: true });
  await subscribe(sub);
  const seen = recorder(sub, 'publication');
  const resubscribed = recorder(sub, 'subscribed');
  const total = 120;
  let stop = false;
  const publishing = (async () => {
    for (let seq = 1; seq <= total && !stop; seq++) {
      await apiResult(server, 'publish', { channel: 'stream', data: { seq } });
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  })();
  try {
    await seen.until(20);
    const users = await apiResult(server, 'disconnect', { user: 'recoverer', disconnect: { code: 3011, reason: 'test' } });
    assert.ok(users !== undefined);
    const [ctx] = await resubscribed.until(1, 10000);
    assert.equal(ctx.wasRecovering, true, JSON.stringify(ctx));
    assert.equal(ctx.recovered, true, JSON.stringify(ctx));
    await publishing;
    const publications = await seen.until(total, 15000);
    const seqs = publications.map((p) => fromJsonBytes(p.data).seq);
    assert.deepEqual(seqs, range(1, total), 'every publication once, in order');
  } finally {
    stop = true;
    await publishing.catch(() => {});
  }
});

test('heartbeats keep an idle Protobuf connection; server-side subscriptions arrive', async (t) => {
  const server = await startHerald(t); // ping_interval 1s, pong_timeout 800ms
  const pb = newProtobufClient(server, {
    token: connectionToken('idler', { channels: ['personal'] }),
    maxServerPingDelay: 500,
  });
  const serverSide = recorder(pb, 'subscribed');
  await connect(pb);
  assert.deepEqual((await serverSide.until(1)).map((s) => s.channel), ['personal']);
  const drops = recorder(pb, 'connecting');
  // Past several ping intervals: the SDK drops a connection that hears no ping for 1.5 s, the
  // server one that does not pong within 800 ms.
  await new Promise((resolve) => setTimeout(resolve, 3500));
  assert.deepEqual(drops.items, [], 'the client did not reconnect');
  const arrived = nextEvent(pb, 'publication');
  await apiResult(server, 'publish', { channel: 'personal', data: { still: 'here' } });
  const publication = await arrived;
  assert.equal(publication.channel, 'personal');
  assert.deepEqual(fromJsonBytes(publication.data), { still: 'here' });
});

test('an unknown ?format is refused at the handshake', async (t) => {
  const server = await startHerald(t);
  const socket = new WebSocket(`${server.ws}?format=xml`);
  const status = await deadline(
    new Promise((resolve, reject) => {
      socket.once('unexpected-response', (_, response) => resolve(response.statusCode));
      socket.once('open', () => reject(new Error('the handshake was accepted')));
      socket.once('error', () => {});
    }),
    5000,
    'the handshake answer',
  );
  socket.terminate();
  assert.equal(status, 400);
  assert.equal((await api(server, 'info')).status, 200, 'the server carries on');
});
