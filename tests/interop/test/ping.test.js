// Ping/pong keeps an idle SDK connection alive; server-side subscriptions from the token.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  apiResult, connect, connectionToken, newClient, nextEvent, recorder, startHerald, subscribe,
} from '../lib/herald.js';

test('ping/pong keeps an idle connection alive past several ping intervals', async (t) => {
  const server = await startHerald(t); // ping_interval 1s, pong_timeout 800ms
  // The SDK drops a connection that hears no ping within ping + maxServerPingDelay: 1.5 s here,
  // so a server that stops pinging is caught; the server drops a client that does not pong.
  const client = newClient(server, { token: connectionToken('idle'), maxServerPingDelay: 500 });
  const ctx = await connect(client);
  assert.equal(ctx.client.length > 0, true);
  const sub = client.newSubscription('quiet');
  await subscribe(sub);
  const drops = recorder(client, 'connecting');
  const disconnects = recorder(client, 'disconnected');
  const resubscribes = recorder(sub, 'subscribing');

  // The idle period itself: 4 s of silence from both ends except pings and pongs.
  await new Promise((resolve) => setTimeout(resolve, 4000));

  assert.deepEqual(drops.items, [], 'the client did not reconnect');
  assert.deepEqual(disconnects.items, []);
  assert.deepEqual(resubscribes.items, []);
  assert.equal(client.state, 'connected');
  const arrived = nextEvent(sub, 'publication');
  await apiResult(server, 'publish', { channel: 'quiet', data: { still: 'here' } });
  assert.deepEqual((await arrived).data, { still: 'here' });
});

test('server-side subscriptions from the token channels claim', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('serverside', { channels: ['personal', 'alerts'] }) });
  const subscribed = recorder(client, 'subscribed');
  await connect(client);
  const subs = await subscribed.until(2);
  assert.deepEqual(subs.map((s) => s.channel).sort(), ['alerts', 'personal']);
  assert.equal(client.getSubscription('personal'), null, 'server-side, not a client-side Subscription');

  const publications = recorder(client, 'publication');
  await apiResult(server, 'publish', { channel: 'personal', data: { to: 'me' } });
  await apiResult(server, 'publish', { channel: 'alerts', data: { level: 'high' } });
  const got = await publications.until(2);
  assert.deepEqual(got.map((p) => [p.channel, p.data]), [['personal', { to: 'me' }], ['alerts', { level: 'high' }]]);
});

test('server API subscribe/unsubscribe reach a connected SDK client as server-side subscription events', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('apisub') });
  await connect(client);
  const subscribed = nextEvent(client, 'subscribed', { pred: (ctx) => ctx.channel === 'pushed' });
  await apiResult(server, 'subscribe', { user: 'apisub', channel: 'pushed' });
  await subscribed;
  const arrived = nextEvent(client, 'publication', { pred: (ctx) => ctx.channel === 'pushed' });
  await apiResult(server, 'publish', { channel: 'pushed', data: { n: 1 } });
  assert.deepEqual((await arrived).data, { n: 1 });

  const unsubscribed = nextEvent(client, 'unsubscribed', { pred: (ctx) => ctx.channel === 'pushed' });
  await apiResult(server, 'unsubscribe', { user: 'apisub', channel: 'pushed' });
  await unsubscribed;
});
