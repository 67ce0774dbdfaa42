// The server HTTP API shapes that server API clients (cent.js, cent) rely on, with Node's fetch.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { API_KEY, api, apiResult, connect, connectionToken, newClient, startHerald, subscribe } from '../lib/herald.js';

async function post(server, method, body, headers) {
  const response = await fetch(`${server.http}/api/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, type: response.headers.get('content-type'), text };
}

test('API key in X-API-Key or Authorization: apikey; a wrong or missing key is HTTP 401', async (t) => {
  const server = await startHerald(t);
  const viaHeader = await post(server, 'info', {}, { 'X-API-Key': API_KEY });
  assert.equal(viaHeader.status, 200);
  assert.match(viaHeader.type ?? '', /application\/json/);
  assert.ok(JSON.parse(viaHeader.text).result.nodes);
  const viaAuthorization = await post(server, 'info', {}, { Authorization: `apikey ${API_KEY}` });
  assert.equal(viaAuthorization.status, 200);
  assert.equal((await post(server, 'info', {}, { 'X-API-Key': 'wrong' })).status, 401);
  assert.equal((await post(server, 'info', {}, {})).status, 401);
});

test('errors come as HTTP 200 with {error: {code, message}}', async (t) => {
  const server = await startHerald(t);
  const unknownChannel = await api(server, 'publish', { channel: 'nope:x', data: {} });
  assert.equal(unknownChannel.status, 200);
  assert.equal(unknownChannel.error?.code, 102, JSON.stringify(unknownChannel));
  assert.equal(typeof unknownChannel.error.message, 'string');
  assert.equal(unknownChannel.result, undefined);

  const badRequest = await api(server, 'publish', { data: {} });
  assert.equal(badRequest.error?.code, 107, `missing channel: ${JSON.stringify(badRequest)}`);

  const unknownMethod = await api(server, 'no_such_method', {});
  assert.ok(unknownMethod.status === 404 || unknownMethod.error?.code === 104, JSON.stringify(unknownMethod));
});

test('result shapes: publish, history, presence, presence_stats, channels, info, empty results', async (t) => {
  const server = await startHerald(t);
  const client = newClient(server, { token: connectionToken('shape', { info: { a: 1 } }) });
  const { client: clientId } = await connect(client);
  await subscribe(client.newSubscription('shapes'));

  const published = await apiResult(server, 'publish', { channel: 'shapes', data: { x: 1 }, tags: { k: 'v' } });
  assert.deepEqual(Object.keys(published).sort(), ['epoch', 'offset']);

  const history = await apiResult(server, 'history', { channel: 'shapes', limit: 10 });
  assert.equal(history.offset, 1);
  assert.equal(history.epoch, published.epoch);
  assert.deepEqual(history.publications[0].data, { x: 1 });
  assert.deepEqual(history.publications[0].tags, { k: 'v' });
  assert.equal(history.publications[0].offset, 1);

  const presence = await apiResult(server, 'presence', { channel: 'shapes' });
  assert.equal(presence.presence[clientId].user, 'shape');
  assert.equal(presence.presence[clientId].client, clientId);
  assert.deepEqual(presence.presence[clientId].conn_info, { a: 1 });

  assert.deepEqual(await apiResult(server, 'presence_stats', { channel: 'shapes' }), { num_clients: 1, num_users: 1 });
  assert.deepEqual(await apiResult(server, 'channels', {}), { channels: { shapes: { num_clients: 1 } } });
  const info = await apiResult(server, 'info', {});
  assert.equal(info.nodes.length, 1);
  for (const key of ['uid', 'name', 'num_clients', 'num_users', 'num_channels', 'uptime']) {
    assert.ok(key in info.nodes[0], `info node has ${key}: ${JSON.stringify(info.nodes[0])}`);
  }
  assert.deepEqual(await apiResult(server, 'history_remove', { channel: 'shapes' }), {});
  assert.deepEqual(await apiResult(server, 'unsubscribe', { channel: 'shapes', user: 'nobody' }), {});
});
