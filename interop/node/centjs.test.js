// npm `cent.js` (a Centrifugo server API client) against the real herald binary.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { API_KEY, baseConfig, startHerald } from './harness.js';

const { CentClient } = createRequire(import.meta.url)('cent.js');

test('cent.js: publish, history, presence, channels, info, remove history, errors', async () => {
  const server = await startHerald(baseConfig());
  try {
    const client = new CentClient({ url: `${server.base}/api`, apiKey: API_KEY });
    const published = await client.publish({ channel: 'news', data: { n: 1 } });
    assert.equal(published.offset, 1);
    await client.publish({ channel: 'news', data: { n: 2 } });
    const history = await client.getHistory({ channel: 'news', limit: 10 });
    assert.deepEqual(history.publications.map((p) => p.data.n), [1, 2]);
    const presence = await client.getPresence({ channel: 'news' });
    assert.deepEqual(presence.presence, {});
    const channels = await client.getChannels();
    assert.deepEqual(channels.channels, {});
    const info = await client.getInfo();
    assert.equal(info.nodes.length, 1);
    await client.removeHistory({ channel: 'news' });
    const empty = await client.getHistory({ channel: 'news', limit: 10 });
    assert.deepEqual(empty.publications, []);
    await assert.rejects(client.publish({ channel: 'nope:x', data: {} }));
  } finally {
    await server.stop();
  }
});
