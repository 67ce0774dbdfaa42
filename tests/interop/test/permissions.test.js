// Namespace permissions as the stock SDK sees them, and many subscriptions sent in one batch.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  apiResult, connect, connectionToken, defaultConfig, newClient, recorder, startHerald, subscribe,
} from '../lib/herald.js';

const config = defaultConfig({
  namespaces: [
    // Subscribing allowed; presence and history exist but only the server API may use them.
    { name: 'ro', allow_subscribe_for_client: true, presence: true, history_size: 10, history_ttl: '60s' },
    // Subscribing allowed; no presence and no history at all.
    { name: 'bare', allow_subscribe_for_client: true },
    // Nothing allowed for clients.
    { name: 'closed' },
  ],
});

async function codeOf(promise) {
  try {
    const result = await promise;
    return { resolved: result };
  } catch (error) {
    return error.code;
  }
}

test('namespace options decide what an SDK client may do (103 permission denied, 108 not available)', async (t) => {
  const server = await startHerald(t, config);
  const client = newClient(server, { token: connectionToken('perm') });
  await connect(client);

  const ro = client.newSubscription('ro:feed');
  await subscribe(ro);
  assert.equal(await codeOf(ro.publish({ nope: true })), 103, 'publish without allow_publish_for_client');
  assert.equal(await codeOf(ro.presence()), 103, 'presence without allow_presence_for_subscriber');
  assert.equal(await codeOf(ro.history({ limit: 1 })), 103, 'history without allow_history_for_subscriber');
  assert.equal(await codeOf(client.publish('ro:feed', {})), 103, 'client.publish too');

  const bare = client.newSubscription('bare:feed');
  await subscribe(bare);
  assert.equal(await codeOf(bare.presence()), 108, 'presence off in the namespace');
  assert.equal(await codeOf(bare.history({ limit: 1 })), 108, 'history off in the namespace');

  const closed = client.newSubscription('closed:feed');
  const refused = recorder(closed, 'unsubscribed');
  closed.subscribe();
  const [ctx] = await refused.until(1);
  assert.equal(ctx.code, 103, JSON.stringify(ctx));
  assert.equal(client.state, 'connected');
});

test('50 subscriptions made before connect are sent together and all work', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('many') });
  const channels = Array.from({ length: 50 }, (_, i) => `many-${i}`);
  const subs = channels.map((channel) => client.newSubscription(channel));
  const subscribed = subs.map((sub) => recorder(sub, 'subscribed'));
  for (const sub of subs) sub.subscribe();
  await connect(client);
  for (const r of subscribed) await r.until(1);

  const seen = subs.map((sub) => recorder(sub, 'publication'));
  const broadcast = await apiResult(server, 'broadcast', { channels, data: { to: 'all' } });
  assert.equal(broadcast.responses.length, 50);
  for (const r of seen) assert.deepEqual((await r.until(1)).map((p) => p.data), [{ to: 'all' }]);
  assert.equal(Object.keys((await apiResult(server, 'channels', {})).channels).length, 50);
});
