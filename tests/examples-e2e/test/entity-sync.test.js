import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, openPage, post, screenshot, startExample, textIs } from '../lib/harness.js';

let server;
let browser;
const errors = [];

before(async () => {
  server = await startExample('entity-sync');
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

const request = async (method, path, body) => {
  const response = await fetch(`${server.origin}${path}`, {
    method, headers: { 'Content-Type': 'application/json' }, body: body && JSON.stringify(body),
  });
  return { status: response.status, body: await response.json() };
};
const create = async (fields) => (await post(`${server.origin}/app/entities`, fields)).entity;
const inboxCount = (page) => page.locator('#view-device .inbox li').count();
const inboxHas = (page, n) => page.waitForFunction((c) => document.querySelectorAll('#view-device .inbox li').length === c, n);
const ready = async (page) => {
  await textIs(page, '#views-state', 'connected');
  await textIs(page, '#device-sub', 'subscribed');
};

test('entity-sync: filtered views, patch and full forms, offline recovery, resume from the durable cursor', async () => {
  const page = await openPage(browser, `${server.origin}/`, { errors });
  await ready(page);

  // Create: the alpha task shows in the project view, not in the comments view.
  const task = await create({ entity_type: 'task', project_id: 'alpha', title: 'Write docs', status: 'open' });
  const row = `#view-project tr[data-id="${task.id}"]`;
  await textIs(page, `${row} .status`, 'open');
  // A beta comment shows only in the comments view (patch form: applied from the JSON Patch).
  const comment = await create({ entity_type: 'comment', project_id: 'beta', text: 'Looks good' });
  await textIs(page, `#view-comments li[data-id="${comment.id}"]`, `${comment.id} (beta): Looks good`);
  assert.equal(await page.locator(`#view-project tr[data-id="${comment.id}"]`).count(), 0);

  // Update through the page's own button; the patch-form view applies a patch to its copy.
  await page.click(`${row} button:has-text("done")`);
  await textIs(page, `${row} .status`, 'done');
  await request('PATCH', `/app/entities/${comment.id}`, { text: 'Looks great' });
  await textIs(page, `#view-comments li[data-id="${comment.id}"]`, `${comment.id} (beta): Looks great`);

  // Moving the task to beta removes it from the alpha view (the previous_project_id filter).
  await request('PATCH', `/app/entities/${task.id}`, { project_id: 'beta' });
  await page.waitForSelector(row, { state: 'detached' });

  // Delete: the deletion reaches the comments view through its change_type filter.
  await request('DELETE', `/app/entities/${task.id}`);
  await page.waitForSelector(`#view-comments .deleted li[data-id="${task.id}"]`);
  await request('DELETE', `/app/entities/${comment.id}`);
  await page.waitForSelector(`#view-comments .comments li[data-id="${comment.id}"]`, { state: 'detached' });

  // Bulk: one change for the whole project.
  const a = await create({ entity_type: 'task', project_id: 'alpha', title: 'A', status: 'open' });
  const b = await create({ entity_type: 'task', project_id: 'alpha', title: 'B', status: 'open' });
  const bulk = await post(`${server.origin}/app/bulk`, { project_id: 'alpha', status: 'archived' });
  assert.deepEqual(bulk.summary.ids.sort(), [a.id, b.id].sort());
  await textIs(page, `#view-project tr[data-id="${a.id}"] .status`, 'archived');
  await textIs(page, `#view-project tr[data-id="${b.id}"] .status`, 'archived');

  // The device saw every change (2 creates, 2 updates, a move, 2 deletes, 2 creates, a bulk).
  await inboxHas(page, 10);

  // Offline: changes made meanwhile are recovered on reconnect.
  await page.click('#toggle-online');
  await textIs(page, '#device-state', 'disconnected');
  await create({ entity_type: 'comment', project_id: 'alpha', text: 'while offline 1' });
  await create({ entity_type: 'comment', project_id: 'alpha', text: 'while offline 2' });
  await page.waitForSelector('#view-comments li:has-text("while offline 2")'); // the views stayed live
  assert.equal(await inboxCount(page), 10);
  await page.click('#toggle-online');
  await inboxHas(page, 12);
  await page.waitForSelector('#device-recovery[data-recovered="true"]');

  // Resume: once the device acknowledged everything, close it, change more, open a fresh page
  // (no local state): it gets exactly what alice had not acknowledged, from her durable cursor.
  const last = Number(await page.getAttribute('#view-device .inbox li:first-child', 'data-offset'));
  await page.waitForSelector(`#device-acked[data-offset="${last}"]`);
  await screenshot(page, 'entity-sync');
  await page.context().close();
  await create({ entity_type: 'task', project_id: 'beta', title: 'while away 1', status: 'open' });
  await create({ entity_type: 'task', project_id: 'alpha', title: 'while away 2', status: 'open' });
  const fresh = await openPage(browser, `${server.origin}/`, { errors });
  await ready(fresh);
  await inboxHas(fresh, 2);
  await fresh.waitForSelector('#device-recovery[data-recovered="true"]');
  const offsets = await fresh.$$eval('#view-device .inbox li', (items) => items.map((li) => Number(li.dataset.offset)));
  assert.deepEqual(offsets, [last + 2, last + 1]);
  // The fresh page's views start from the snapshot: the alpha view has A, B and "while away 2".
  await fresh.waitForFunction(() => document.querySelectorAll('#view-project tbody tr').length === 5);
  assert.deepEqual(errors, []);
});

test('entity-sync: bad changes are refused with a clear error and publish nothing', async () => {
  let answer = await request('POST', '/app/entities', { entity_type: 'invoice', project_id: 'alpha' });
  assert.equal(answer.status, 400);
  assert.match(answer.body.error, /entity_type must be one of/);
  answer = await request('POST', '/app/entities', { entity_type: 'task', project_id: 'no spaces', title: 'x' });
  assert.equal(answer.status, 400);
  answer = await request('PATCH', '/app/entities/t-999', { status: 'done' });
  assert.equal(answer.status, 404);
  answer = await request('PATCH', '/app/entities/t-1', { id: 'forged' });
  assert.equal(answer.status, 400);
  assert.match(answer.body.error, /unknown field "id"/);
});
