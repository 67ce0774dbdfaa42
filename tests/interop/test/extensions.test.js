// Herald's extensions through the stock SDK: change events, filters, audience and patch mode. Two
// clients with different filters and one admin receive exactly what their filters and audience
// allow, in patch and full mode, live and after recovery.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  OPEN_CHANNELS, api, apiResult, connect, connectionToken, defaultConfig, newClient, nextEvent, recorder,
  startHerald, subscribe,
} from '../lib/herald.js';

function change(n, entityType, changeType, audience) {
  const body = {
    channel: 'project:p1',
    entity_type: entityType,
    entity_id: `${entityType}-${n}`,
    change_type: changeType,
    tags: { project_id: 'p1' },
  };
  if (changeType !== 'create') body.old = { n, status: 'open' };
  if (changeType !== 'delete') body.new = { n, status: 'done' };
  if (audience) body.audience = audience;
  return body;
}

async function subscriber(server, user, roles, data) {
  const client = newClient(server, { token: connectionToken(user, { roles }) });
  await connect(client);
  const sub = client.newSubscription('project:p1', { recoverable: true, data });
  await subscribe(sub);
  return { client, sub };
}

test('filters, audience and patch mode with the stock SDK, live and after recovery', async (t) => {
  const project = { name: 'project', ...OPEN_CHANNELS, allow_tags_filter: true };
  const server = await startHerald(t, defaultConfig({ namespaces: [project] }));
  // Tasks only, patch mode; user u1.
  const tasks = await subscriber(server, 'u1', [], {
    herald: { changes: 'patch', filters: [{ key: 'entity_type', cmp: 'eq', val: 'task' }] },
  });
  // Deletes of anything, or docs (a payload field), full mode; user u2.
  const docs = await subscriber(server, 'u2', [], {
    herald: { filters: [{ key: 'change_type', cmp: 'eq', val: 'delete' }, { path: '/entity_type', cmp: 'eq', val: 'doc' }] },
  });
  // Admin: everything, full mode.
  const admin = await subscriber(server, 'root', ['admin'], undefined);

  const taskPubs = recorder(tasks.sub, 'publication');
  const docPubs = recorder(docs.sub, 'publication');
  const adminPubs = recorder(admin.sub, 'publication');
  for (const body of [
    change(1, 'task', 'update'), // 1: tasks, admin
    change(2, 'doc', 'create'), // 2: docs, admin
    change(3, 'task', 'delete'), // 3: tasks, docs, admin
    change(4, 'task', 'update', { users: ['u2'] }), // 4: admin only (u1 not in the audience, u2 filtered out)
    change(5, 'doc', 'update', { users: ['u2'] }), // 5: docs, admin
  ]) {
    await apiResult(server, 'publish_change', body);
  }
  await taskPubs.until(2);
  await docPubs.until(3);
  await adminPubs.until(5);
  assert.deepEqual(taskPubs.items.map((p) => p.offset), [1, 3]);
  assert.equal(taskPubs.items[0].data.new, undefined, 'patch mode has no full document');
  assert.deepEqual(taskPubs.items[0].data.patch, [{ op: 'replace', path: '/status', value: 'done' }]);
  assert.deepEqual(docPubs.items.map((p) => p.offset), [2, 3, 5]);
  assert.deepEqual(docPubs.items[0].data.new, { n: 2, status: 'done' }, 'full mode carries the document');
  assert.deepEqual(adminPubs.items.map((p) => p.offset), [1, 2, 3, 4, 5]);

  // Recovery: u1 is forced to reconnect; meanwhile more changes arrive.
  const resubscribed = nextEvent(tasks.sub, 'subscribed', { pred: (ctx) => ctx.wasRecovering });
  await api(server, 'disconnect', { user: 'u1', disconnect: { code: 3011, reason: 'force reconnect' } });
  await apiResult(server, 'publish_change', change(6, 'task', 'update')); // 6: tasks
  await apiResult(server, 'publish_change', change(7, 'doc', 'update')); // 7: not tasks
  await apiResult(server, 'publish_change', change(8, 'task', 'create', { users: ['u1'] })); // 8: tasks
  const ctx = await resubscribed;
  assert.equal(ctx.recovered, true);
  await taskPubs.until(4);
  assert.deepEqual(taskPubs.items.slice(2).map((p) => p.offset), [6, 8]);
  assert.equal(taskPubs.items[2].data.new, undefined, 'still patch mode after recovery');
});
