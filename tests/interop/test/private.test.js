// Private `$` channels: subscription tokens through the SDK's token and getToken options.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  apiResult, connect, connectionToken, newClient, nextEvent, startHerald, subscribe, subscriptionToken,
} from '../lib/herald.js';

test('a $ channel with a subscription token (token option) receives publications', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('u1') });
  await connect(client);
  const sub = client.newSubscription('$private', { token: subscriptionToken('u1', '$private') });
  await subscribe(sub);
  const arrived = nextEvent(sub, 'publication');
  await apiResult(server, 'publish', { channel: '$private', data: { secret: 1 } });
  assert.deepEqual((await arrived).data, { secret: 1 });
});

test('a $ channel with getToken: called with the channel, then subscribed', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('u2') });
  await connect(client);
  const asked = [];
  const sub = client.newSubscription('$x', {
    getToken: async (ctx) => {
      asked.push(ctx.channel);
      return subscriptionToken('u2', ctx.channel);
    },
  });
  await subscribe(sub);
  assert.deepEqual(asked, ['$x']);
  const arrived = nextEvent(sub, 'publication');
  await apiResult(server, 'publish', { channel: '$x', data: { via: 'getToken' } });
  assert.deepEqual((await arrived).data, { via: 'getToken' });
});

async function refused(t, user, channel, options) {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken(user) });
  await connect(client);
  const sub = client.newSubscription(channel, options);
  const unsubscribed = nextEvent(sub, 'unsubscribed');
  sub.subscribe();
  const ctx = await unsubscribed;
  assert.equal(client.state, 'connected', 'the connection survives a refused subscription');
  return ctx;
}

test('subscribing to $x without a token fails with 103', async (t) => {
  const ctx = await refused(t, 'u3', '$x', {});
  assert.equal(ctx.code, 103, JSON.stringify(ctx));
});

test("another user's subscription token is refused with 103", async (t) => {
  const ctx = await refused(t, 'u4', '$x', { token: subscriptionToken('someone-else', '$x') });
  assert.equal(ctx.code, 103, JSON.stringify(ctx));
});

test('a subscription token for another channel is refused with 103', async (t) => {
  const ctx = await refused(t, 'u5', '$x', { token: subscriptionToken('u5', '$y') });
  assert.equal(ctx.code, 103, JSON.stringify(ctx));
});

test('an unknown namespace is refused with 102', async (t) => {
  const ctx = await refused(t, 'u6', 'nope:x', {});
  assert.equal(ctx.code, 102, JSON.stringify(ctx));
});
