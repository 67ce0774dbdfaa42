// The stock npm `centrifuge` SDK against the real herald binary.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  api, baseConfig, collect, connectionToken, jwt, newClient, once, startHerald, withTimeout,
} from './harness.js';

async function connected(server, options) {
  const client = newClient(server, options);
  const ready = once(client, 'connected');
  client.connect();
  const ctx = await ready;
  return { client, ctx };
}

async function subscribed(client, channel, options = {}) {
  const sub = client.newSubscription(channel, options);
  const ready = once(sub, 'subscribed');
  sub.subscribe();
  const ctx = await ready;
  return { sub, ctx };
}

test('connect with a token, subscribe, receive 100 API publications in order', async () => {
  const server = await startHerald(baseConfig());
  try {
    const { client, ctx } = await connected(server, { token: connectionToken('42') });
    assert.ok(ctx.client.length > 0, 'client id');
    const { sub } = await subscribed(client, 'news');
    const received = collect(sub, 'publication', 100);
    for (let n = 1; n <= 100; n++) {
      const answer = await api(server, 'publish', { channel: 'news', data: { n } });
      assert.equal(answer.result.offset, n);
    }
    const publications = await received;
    assert.deepEqual(publications.map((p) => p.data.n), Array.from({ length: 100 }, (_, i) => i + 1));
    assert.deepEqual(publications.map((p) => p.offset), Array.from({ length: 100 }, (_, i) => i + 1));
    client.disconnect();
  } finally {
    await server.stop();
  }
});

test('anonymous connection against a --dev server', async () => {
  const server = await startHerald(baseConfig(), ['--dev']);
  try {
    const { client } = await connected(server, {});
    const { sub } = await subscribed(client, 'open');
    const received = once(sub, 'publication');
    await api(server, 'publish', { channel: 'open', data: { hello: 'anonymous' } });
    assert.deepEqual((await received).data, { hello: 'anonymous' });
    client.disconnect();
  } finally {
    await server.stop();
  }
});

test('presence, presence stats and join/leave between two SDK clients', async () => {
  const server = await startHerald(baseConfig());
  try {
    const { client: alice } = await connected(server, { token: connectionToken('alice') });
    const { sub: aliceSub } = await subscribed(alice, 'room', { joinLeave: true });
    const joined = once(aliceSub, 'join', (ctx) => ctx.info.user === 'bob');
    const { client: bob } = await connected(server, { token: connectionToken('bob') });
    const { sub: bobSub } = await subscribed(bob, 'room', { joinLeave: true });
    const join = await joined;
    assert.equal(join.info.user, 'bob');

    const presence = await aliceSub.presence();
    const users = Object.values(presence.clients).map((c) => c.user).sort();
    assert.deepEqual(users, ['alice', 'bob']);
    const stats = await aliceSub.presenceStats();
    assert.equal(stats.numClients, 2);
    assert.equal(stats.numUsers, 2);

    const left = once(aliceSub, 'leave', (ctx) => ctx.info.user === 'bob');
    bobSub.unsubscribe();
    assert.equal((await left).info.user, 'bob');
    alice.disconnect();
    bob.disconnect();
  } finally {
    await server.stop();
  }
});

test('history: limit, since, reverse, and limit 0 for the stream top', async () => {
  const server = await startHerald(baseConfig());
  try {
    for (let n = 1; n <= 5; n++) await api(server, 'publish', { channel: 'feed', data: { n } });
    const { client } = await connected(server, { token: connectionToken('1') });
    const { sub } = await subscribed(client, 'feed');
    const top = await sub.history({ limit: 0 });
    assert.equal(top.publications.length, 0);
    assert.equal(top.offset, 5);
    const last2 = await sub.history({ limit: 2, reverse: true });
    assert.deepEqual(last2.publications.map((p) => p.data.n), [5, 4]);
    const since = await sub.history({ limit: 10, since: { offset: 3, epoch: top.epoch } });
    assert.deepEqual(since.publications.map((p) => p.data.n), [4, 5]);
    client.disconnect();
  } finally {
    await server.stop();
  }
});

test('recovery after a forced reconnect while publishing continues', async () => {
  const server = await startHerald(baseConfig());
  try {
    const { client } = await connected(server, { token: connectionToken('reader') });
    const { sub } = await subscribed(client, 'stream', { recoverable: true });
    const seen = [];
    sub.on('publication', (ctx) => seen.push(ctx.data.n));
    let n = 0;
    const publishSome = async (count) => {
      for (let i = 0; i < count; i++) {
        n += 1;
        const answer = await api(server, 'publish', { channel: 'stream', data: { n } });
        assert.ok(answer.result, JSON.stringify(answer));
      }
    };
    await publishSome(10);
    await withTimeout((async () => { while (seen.length < 10) await new Promise((r) => sub.once('publication', r)); })(), 10000, 'first 10');

    // Force a reconnect (3011 lets the SDK reconnect) and keep publishing meanwhile.
    const resubscribed = once(sub, 'subscribed', (ctx) => ctx.wasRecovering);
    const disconnected = once(client, 'connecting', (ctx) => ctx.code === 3011);
    const forced = api(server, 'disconnect', { user: 'reader', disconnect: { code: 3011, reason: 'force reconnect' } });
    const publishing = publishSome(30);
    await forced;
    await disconnected;
    const ctx = await resubscribed;
    await publishing;
    assert.equal(ctx.recovered, true, 'recovered');
    await publishSome(5);
    await withTimeout((async () => { while (seen.length < n) await new Promise((r) => sub.once('publication', r)); })(), 10000, 'all publications');
    assert.deepEqual(seen, Array.from({ length: n }, (_, i) => i + 1), 'every publication once, in order');
    client.disconnect();
  } finally {
    await server.stop();
  }
});

test('subscription token for a $ channel; without one the subscription fails with 103', async () => {
  const server = await startHerald(baseConfig());
  try {
    const { client } = await connected(server, { token: connectionToken('5') });
    const exp = Math.floor(Date.now() / 1000) + 3600;
    const { sub } = await subscribed(client, '$vip', {
      getToken: async (ctx) => jwt({ sub: '5', channel: ctx.channel, exp }),
    });
    const received = once(sub, 'publication');
    await api(server, 'publish', { channel: '$vip', data: { secret: true } });
    assert.deepEqual((await received).data, { secret: true });

    // A permission error is final: the SDK reports the subscription unsubscribed with the code.
    const denied = client.newSubscription('$other');
    const failure = once(denied, 'unsubscribed');
    denied.subscribe();
    const error = await failure;
    assert.equal(error.code, 103);
    client.disconnect();
  } finally {
    await server.stop();
  }
});

test('a rejected connection token ends with 3500 and no reconnect', async () => {
  const server = await startHerald(baseConfig());
  try {
    const client = newClient(server, { token: jwt({ sub: '1' }, 'wrong-secret') });
    let connecting = 0;
    client.on('connecting', () => { connecting += 1; });
    const disconnected = once(client, 'disconnected');
    client.connect();
    const ctx = await disconnected;
    assert.equal(ctx.code, 3500);
    assert.equal(client.state, 'disconnected');
    assert.equal(connecting, 1, 'no reconnect attempt');
  } finally {
    await server.stop();
  }
});

test('ping/pong keeps an idle connection alive past several intervals', async () => {
  const server = await startHerald(baseConfig());
  try {
    const { client } = await connected(server, { token: connectionToken('idle') });
    const { sub } = await subscribed(client, 'quiet');
    let disconnects = 0;
    client.on('disconnected', () => { disconnects += 1; });
    client.on('connecting', () => { disconnects += 1; });
    // The idle period itself: four ping intervals of the server (ping_interval 1s, pong_timeout 800ms).
    await new Promise((resolve) => setTimeout(resolve, 4000));
    assert.equal(client.state, 'connected');
    assert.equal(disconnects, 0);
    const received = once(sub, 'publication');
    await api(server, 'publish', { channel: 'quiet', data: { still: 'here' } });
    assert.deepEqual((await received).data, { still: 'here' });
    client.disconnect();
  } finally {
    await server.stop();
  }
});

test('server-side subscriptions from the token channels claim', async () => {
  const server = await startHerald(baseConfig());
  try {
    const client = newClient(server, { token: connectionToken('9', { channels: ['alerts'] }) });
    const serverSub = once(client, 'subscribed', (ctx) => ctx.channel === 'alerts');
    client.connect();
    await serverSub;
    const received = once(client, 'publication', (ctx) => ctx.channel === 'alerts');
    await api(server, 'publish', { channel: 'alerts', data: { level: 'high' } });
    assert.deepEqual((await received).data, { level: 'high' });
    client.disconnect();
  } finally {
    await server.stop();
  }
});

test('rpc to an unknown method answers 108', async () => {
  const server = await startHerald(baseConfig());
  try {
    const { client } = await connected(server, { token: connectionToken('1') });
    await assert.rejects(client.rpc('no.such.method', {}), (error) => error.code === 108);
    client.disconnect();
  } finally {
    await server.stop();
  }
});
