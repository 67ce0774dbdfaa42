// Presence, presence stats and join/leave between two stock SDK clients.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  apiResult, connect, connectionToken, newClient, nextEvent, startHerald, subscribe,
} from '../lib/herald.js';

test('presence, presence stats and join/leave events between two clients', async (t) => {
  const server = await startHerald(t);
  const alice = newClient(server, { token: connectionToken('alice', { info: { role: 'host' } }) });
  const bob = newClient(server, { token: connectionToken('bob') });
  const aliceId = (await connect(alice)).client;
  const bobId = (await connect(bob)).client;

  const aliceSub = alice.newSubscription('room', { joinLeave: true });
  await subscribe(aliceSub);
  const bobJoined = nextEvent(aliceSub, 'join', { pred: (ctx) => ctx.info.user === 'bob' });
  const bobSub = bob.newSubscription('room', { joinLeave: true });
  await subscribe(bobSub);
  const join = await bobJoined;
  assert.equal(join.channel, 'room');
  assert.equal(join.info.client, bobId);

  const presence = await aliceSub.presence();
  const clients = Object.fromEntries(Object.entries(presence.clients).map(([id, info]) => [id, info.user]));
  assert.deepEqual(clients, { [aliceId]: 'alice', [bobId]: 'bob' });
  assert.deepEqual(presence.clients[aliceId].connInfo, { role: 'host' });
  assert.equal(presence.clients[aliceId].client, aliceId);

  const stats = await bobSub.presenceStats();
  assert.deepEqual(stats, { numClients: 2, numUsers: 2 });

  // The same through the API.
  const apiPresence = await apiResult(server, 'presence', { channel: 'room' });
  assert.deepEqual(Object.keys(apiPresence.presence).sort(), [aliceId, bobId].sort());
  assert.deepEqual(await apiResult(server, 'presence_stats', { channel: 'room' }), { num_clients: 2, num_users: 2 });

  // Leave on unsubscribe.
  const bobLeft = nextEvent(aliceSub, 'leave', { pred: (ctx) => ctx.info.user === 'bob' });
  bobSub.unsubscribe();
  const leave = await bobLeft;
  assert.equal(leave.info.client, bobId);
  assert.deepEqual(await aliceSub.presenceStats(), { numClients: 1, numUsers: 1 });

  // Leave on disconnect too.
  const bobBack = nextEvent(aliceSub, 'join', { pred: (ctx) => ctx.info.user === 'bob' });
  await subscribe(bobSub);
  await bobBack;
  const bobGone = nextEvent(aliceSub, 'leave', { pred: (ctx) => ctx.info.user === 'bob' });
  bob.disconnect();
  await bobGone;
  const after = await aliceSub.presence();
  assert.deepEqual(Object.keys(after.clients), [aliceId]);
});

test('two connections of one user count as one user in presence stats', async (t) => {
  const server = await startHerald(t);
  const first = newClient(server, { token: connectionToken('same') });
  const second = newClient(server, { token: connectionToken('same') });
  await connect(first);
  await connect(second);
  const a = first.newSubscription('stats');
  const b = second.newSubscription('stats');
  await subscribe(a);
  await subscribe(b);
  assert.deepEqual(await a.presenceStats(), { numClients: 2, numUsers: 1 });
});
