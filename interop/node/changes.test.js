// Change events, filters and audience through the stock centrifuge SDK: two clients with
// different filters and one admin receive exactly what their filters and audience allow, in patch
// and full mode, live and after recovery.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { api, baseConfig, collect, connectionToken, newClient, once, startHerald } from './harness.js';

const project = { name: 'project', ...baseConfigNamespace() };

function baseConfigNamespace() {
  const { channel } = baseConfig();
  return { ...channel.without_namespace, allow_tags_filter: true };
}

function change(n, entityType, changeType, audience) {
  const body = {
    channel: 'project:p1',
    entity_type: entityType,
    entity_id: `${entityType}-${n}`,
    change_type: changeType,
    old: changeType === 'create' ? null : { n, status: 'open' },
    new: changeType === 'delete' ? null : { n, status: 'done' },
    tags: { project_id: 'p1' },
  };
  if (changeType === 'create') delete body.old;
  if (changeType === 'delete') delete body.new;
  if (audience) body.audience = audience;
  return body;
}

async function subscriber(server, user, roles, data) {
  const client = newClient(server, { token: connectionToken(user, { roles }) });
  const connected = once(client, 'connected');
  client.connect();
  await connected;
  const sub = client.newSubscription('project:p1', { recoverable: true, data });
  const ready = once(sub, 'subscribed');
  sub.subscribe();
  await ready;
  return { client, sub };
}

test('filters, audience and patch mode with the stock SDK, live and after recovery', async () => {
  const server = await startHerald(baseConfig({ namespaces: [project] }));
  try {
    // Tasks only, patch mode; user u1.
    const tasks = await subscriber(server, 'u1', [], {
      herald: { changes: 'patch', filters: [{ key: 'entity_type', cmp: 'eq', val: 'task' }] },
    });
    // Deletes of anything or docs, full mode; user u2.
    const docs = await subscriber(server, 'u2', [], {
      herald: { filters: [{ key: 'change_type', cmp: 'eq', val: 'delete' }, { path: '/entity_type', cmp: 'eq', val: 'doc' }] },
    });
    // Admin: everything, full mode.
    const admin = await subscriber(server, 'root', ['admin'], undefined);

    const stream = [
      change(1, 'task', 'update'), // 1: tasks, admin
      change(2, 'doc', 'create'), // 2: docs, admin
      change(3, 'task', 'delete'), // 3: tasks, docs, admin
      change(4, 'task', 'update', { users: ['u2'] }), // 4: admin only (u1 not in audience; u2 filtered out)
      change(5, 'doc', 'update', { users: ['u2'] }), // 5: docs, admin
    ];
    const expectTasks = collect(tasks.sub, 'publication', 2);
    const expectDocs = collect(docs.sub, 'publication', 3);
    const expectAdmin = collect(admin.sub, 'publication', 5);
    for (const body of stream) {
      const answer = await api(server, 'publish_change', body);
      assert.ok(answer.result, JSON.stringify(answer));
    }
    const taskPubs = await expectTasks;
    assert.deepEqual(taskPubs.map((p) => p.offset), [1, 3]);
    assert.equal(taskPubs[0].data.new, undefined, 'patch mode has no full document');
    assert.deepEqual(taskPubs[0].data.patch, [{ op: 'replace', path: '/status', value: 'done' }]);
    const docPubs = await expectDocs;
    assert.deepEqual(docPubs.map((p) => p.offset), [2, 3, 5]);
    assert.deepEqual(docPubs[0].data.new, { n: 2, status: 'done' }, 'full mode carries the document');
    const adminPubs = await expectAdmin;
    assert.deepEqual(adminPubs.map((p) => p.offset), [1, 2, 3, 4, 5]);

    // Recovery: u1 reconnects (forced, so the SDK recovers); meanwhile more changes arrive.
    const resubscribed = once(tasks.sub, 'subscribed', (ctx) => ctx.wasRecovering);
    const later = collect(tasks.sub, 'publication', 2);
    await api(server, 'disconnect', { user: 'u1', disconnect: { code: 3011, reason: 'force reconnect' } });
    await api(server, 'publish_change', change(6, 'task', 'update')); // 6: tasks
    await api(server, 'publish_change', change(7, 'doc', 'update')); // 7: not tasks
    await api(server, 'publish_change', change(8, 'task', 'create', { users: ['u1'] })); // 8: tasks (u1 in audience)
    const ctx = await resubscribed;
    assert.equal(ctx.recovered, true);
    const recovered = await later;
    assert.deepEqual(recovered.map((p) => p.offset), [6, 8]);
    assert.equal(recovered[0].data.new, undefined, 'still patch mode after recovery');
  } finally {
    await server.stop();
  }
});
