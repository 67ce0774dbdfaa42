// npm `cent.js` (a Centrifugo server API client) against the real binary.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { API_KEY, startHerald } from '../lib/herald.js';

const { CentClient } = createRequire(import.meta.url)('cent.js');

test('cent.js: publish, history, presence, channels, info, remove history, errors', async (t) => {
  const server = await startHerald(t);
  const client = new CentClient({ url: `${server.http}/api`, apiKey: API_KEY });
  const published = await client.publish({ channel: 'news', data: { n: 1 } });
  assert.equal(published.offset, 1);
  await client.publish({ channel: 'news', data: { n: 2 } });
  const history = await client.getHistory({ channel: 'news', limit: 10 });
  assert.deepEqual(history.publications.map((p) => p.data.n), [1, 2]);
  assert.deepEqual((await client.getPresence({ channel: 'news' })).presence, {});
  assert.deepEqual((await client.getChannels()).channels, {});
  assert.equal((await client.getInfo()).nodes.length, 1);
  await client.removeHistory({ channel: 'news' });
  assert.deepEqual((await client.getHistory({ channel: 'news', limit: 10 })).publications, []);
  await assert.rejects(client.publish({ channel: 'nope:x', data: {} }));
});
