// Connecting with the stock centrifuge SDK: a token, anonymous in --dev mode, a rejected
// token, and RPC to an unknown method.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  apiResult, connect, connectionToken, deadline, newClient, nextEvent, startHerald, subscribe,
} from '../lib/herald.js';

test('connect with a connection token: connected fires with a client id', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('alice') });
  const ctx = await connect(client);
  assert.equal(typeof ctx.client, 'string');
  assert.ok(ctx.client.length > 0, `client id in ${JSON.stringify(ctx)}`);
  assert.equal(ctx.transport, 'websocket');
  assert.equal(client.state, 'connected');

  // The server knows the connection as alice's.
  const info = await apiResult(server, 'info');
  assert.equal(info.nodes.length, 1);
  assert.equal(info.nodes[0].num_clients, 1);
  assert.equal(info.nodes[0].num_users, 1);

  const disconnected = nextEvent(client, 'disconnected');
  client.disconnect();
  const gone = await disconnected;
  assert.equal(gone.code, 0, `client-side disconnect code: ${JSON.stringify(gone)}`);
});

test('connect anonymously (no token) against a --dev server', async (t) => {
  const server = await startHerald(t, null, { dev: true });
  const client = newClient(server);
  const ctx = await connect(client);
  assert.ok(ctx.client.length > 0);

  // Insecure mode: anonymous clients may subscribe and get publications too.
  const sub = client.newSubscription('lobby');
  await subscribe(sub);
  const arrived = nextEvent(sub, 'publication');
  const response = await fetch(`${server.http}/api/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel: 'lobby', data: { hello: 'anonymous' } }),
  });
  assert.equal(response.status, 200, 'dev mode API needs no key');
  assert.deepEqual((await arrived).data, { hello: 'anonymous' });
});

test('anonymous connect without --dev is refused', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server);
  const disconnected = nextEvent(client, 'disconnected');
  client.connect();
  const ctx = await disconnected;
  // Centrifugo answers the connect command with error 101 (unauthorized); the SDK takes a
  // non-temporary connect error as terminal and reports its code.
  assert.equal(ctx.code, 101, JSON.stringify(ctx));
  assert.equal(client.state, 'disconnected');
  await assert.rejects(nextEvent(client, 'connecting', { ms: 1000 }), /timed out/, 'reconnected');
});

test('a token with an invalid signature: disconnected with 3500 and no reconnect', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('mallory', {}, 'not-the-secret') });
  let connecting = 0;
  let connected = 0;
  client.on('connecting', () => { connecting += 1; });
  client.on('connected', () => { connected += 1; });
  const disconnected = nextEvent(client, 'disconnected');
  client.connect();
  const ctx = await disconnected;
  assert.equal(ctx.code, 3500, JSON.stringify(ctx));
  assert.equal(client.state, 'disconnected');

  // No reconnect: the state stays `disconnected` while a reconnect would have been tried
  // (minReconnectDelay is 100 ms). Waiting on a 'connecting' event that must not come:
  await assert.rejects(
    nextEvent(client, 'connecting', { ms: 1500 }),
    /timed out/,
    'the client tried to reconnect after a terminal disconnect',
  );
  assert.equal(connecting, 1, 'only the initial connecting');
  assert.equal(connected, 0);
});

test('an expired connection token: error 109, refused without getToken, renewed with it', async (t) => {
  const server = await startHerald(t);
  const expired = connectionToken('late', { exp: Math.floor(Date.now() / 1000) - 60 });

  const stuck = newClient(server, { token: expired });
  const disconnected = nextEvent(stuck, 'disconnected');
  stuck.connect();
  // The server answers 109 (token expired); with no getToken the SDK gives up with its own
  // code 1 "unauthorized".
  const ctx = await disconnected;
  assert.deepEqual({ code: ctx.code, state: stuck.state }, { code: 1, state: 'disconnected' }, JSON.stringify(ctx));

  let asked = 0;
  const renewing = newClient(server, {
    token: expired,
    getToken: async () => {
      asked += 1;
      return connectionToken('late');
    },
  });
  const connected = await connect(renewing);
  assert.ok(connected.client.length > 0);
  assert.equal(asked, 1, 'getToken called once after error 109');
});

test('rpc to an unknown method answers error 108', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('rpc-user') });
  await connect(client);
  const error = await deadline(
    client.rpc('no.such.method', { x: 1 }).then(
      (result) => { throw new Error(`rpc unexpectedly answered ${JSON.stringify(result)}`); },
      (err) => err,
    ),
    10000,
    'rpc answer',
  );
  assert.equal(error.code, 108, JSON.stringify(error));
  // The connection survives the error.
  assert.equal(client.state, 'connected');
});
