// Token refresh and server-driven unsubscribe through the stock SDK.
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  apiResult, connect, connectionToken, newClient, nextEvent, recorder, startHerald, subscribe, subscriptionToken,
} from '../lib/herald.js';

const soon = (seconds) => Math.floor(Date.now() / 1000) + seconds;

test('a connection token about to expire is refreshed with getToken and the connection stays', async (t) => {
  const server = await startHerald(t);
  const tokens = new EventEmitter();
  const issued = recorder(tokens, 'issued');
  const client = newClient(server, {
    token: connectionToken('short', { exp: soon(2) }),
    getToken: async () => {
      tokens.emit('issued', Date.now());
      return connectionToken('short', { exp: soon(2) });
    },
  });
  await connect(client);
  const reconnects = recorder(client, 'connecting');
  const sub = client.newSubscription('refreshing');
  await subscribe(sub);
  // The SDK refreshes when the ttl the server announced runs out: two refreshes in a row
  // prove the `refresh` command answers with a new ttl.
  await issued.until(2, 10000);
  assert.deepEqual(reconnects.items, [], 'no reconnect: the connection was refreshed in place');
  assert.equal(client.state, 'connected');
  const arrived = nextEvent(sub, 'publication');
  await apiResult(server, 'publish', { channel: 'refreshing', data: { alive: true } });
  assert.deepEqual((await arrived).data, { alive: true });
});

test('a subscription token about to expire is refreshed with getToken (sub_refresh)', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('subber') });
  await connect(client);
  const tokens = new EventEmitter();
  const issued = recorder(tokens, 'issued');
  const sub = client.newSubscription('$short', {
    getToken: async (ctx) => {
      tokens.emit('issued', ctx.channel);
      return subscriptionToken('subber', ctx.channel, { exp: soon(2) });
    },
  });
  await subscribe(sub);
  const resubscribes = recorder(sub, 'subscribing');
  // The first token subscribed; the next two refreshed the subscription in place.
  assert.deepEqual(await issued.until(3, 10000), ['$short', '$short', '$short']);
  assert.deepEqual(resubscribes.items, [], 'refreshed in place, no resubscribe');
  assert.equal(sub.state, 'subscribed');
  const arrived = nextEvent(sub, 'publication');
  await apiResult(server, 'publish', { channel: '$short', data: { still: 'subscribed' } });
  assert.deepEqual((await arrived).data, { still: 'subscribed' });
});

test('server API unsubscribe of a client-side subscription: unsubscribed with code 2000', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('dropme') });
  await connect(client);
  const sub = client.newSubscription('kicked');
  await subscribe(sub);
  const unsubscribed = nextEvent(sub, 'unsubscribed');
  await apiResult(server, 'unsubscribe', { user: 'dropme', channel: 'kicked' });
  const ctx = await unsubscribed;
  assert.equal(ctx.code, 2000, JSON.stringify(ctx));
  assert.equal(sub.state, 'unsubscribed');
  assert.deepEqual(await apiResult(server, 'presence_stats', { channel: 'kicked' }), { num_clients: 0, num_users: 0 });
});

test('a server-side subscription is recovered after a forced reconnect', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('ss', { channels: ['feed'] }) });
  const subscribed = recorder(client, 'subscribed');
  await connect(client);
  await subscribed.until(1);
  const seen = recorder(client, 'publication');
  await apiResult(server, 'publish', { channel: 'feed', data: { seq: 1 } });
  await seen.until(1);

  const reconnecting = nextEvent(client, 'connecting');
  await apiResult(server, 'disconnect', { user: 'ss', disconnect: { code: 3011, reason: 'force reconnect' } });
  await reconnecting;
  // While the client is away (it waits at least 100 ms before reconnecting).
  await apiResult(server, 'publish', { channel: 'feed', data: { seq: 2 } });
  await apiResult(server, 'publish', { channel: 'feed', data: { seq: 3 } });
  const again = await subscribed.until(2);
  assert.equal(again[1].channel, 'feed');
  assert.equal(again[1].wasRecovering, true, JSON.stringify(again[1]));
  assert.equal(again[1].recovered, true, JSON.stringify(again[1]));
  await apiResult(server, 'publish', { channel: 'feed', data: { seq: 4 } });
  const all = await seen.until(4);
  assert.deepEqual(all.map((p) => p.data.seq), [1, 2, 3, 4]);
});

test('presence forgets a client whose socket died', async (t) => {
  const server = await startHerald(t);
  const keeper = newClient(server, { token: connectionToken('keeper') });
  const dying = newClient(server, { token: connectionToken('dying'), minReconnectDelay: 60000, maxReconnectDelay: 60000 });
  await connect(keeper);
  await connect(dying);
  const watch = keeper.newSubscription('vigil', { joinLeave: true });
  await subscribe(watch);
  await subscribe(dying.newSubscription('vigil'));
  assert.equal((await watch.presenceStats()).numClients, 2);
  const left = nextEvent(watch, 'leave', { pred: (ctx) => ctx.info.user === 'dying' });
  dying._transport._transport.terminate();
  await left;
  assert.deepEqual(await watch.presenceStats(), { numClients: 1, numUsers: 1 });
});
