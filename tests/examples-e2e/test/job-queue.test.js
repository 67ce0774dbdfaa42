import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, openPage, screenshot, startExample, textIs } from '../lib/harness.js';

let server;
let browser;
const errors = [];

before(async () => {
  // WORK_MS: the worker's simulated job duration (the worker is a child process of the API).
  server = await startExample('job-queue', { env: { WORK_MS: '60' } });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

const rows = (page) => page.$$eval('#jobs tr', (trs) => trs.map((tr) => ({ id: Number(tr.dataset.id), status: tr.dataset.status, history: tr.dataset.history })));
const statusIs = (page, id, status, timeout = 20000) =>
  page.waitForSelector(`#jobs tr[data-id="${id}"][data-status="${status}"]`, { timeout });
const loaded = async (page) => {
  await textIs(page, '#status', 'connected');
  await page.waitForSelector('#jobs[data-loaded="true"]', { state: 'attached' });
};
const newestId = async (page) => Number(await page.getAttribute('#jobs tr:first-child', 'data-id'));

test('job-queue: per-user audience, admin sees all, retries and failures, conflated low-priority positions', async () => {
  const alice = await openPage(browser, `${server.origin}/?user=alice`, { errors });
  const bob = await openPage(browser, `${server.origin}/?user=bob`, { errors });
  const admin = await openPage(browser, `${server.origin}/admin.html`, { errors });
  await Promise.all([loaded(alice), loaded(bob), loaded(admin)]);

  // An ok job: its owner follows it to completion; the admin sees it with its owner; bob nothing.
  await alice.click('[data-kind="ok"]');
  await alice.waitForSelector('#jobs tr');
  const okJob = await newestId(alice);
  await statusIs(alice, okJob, 'completed');
  assert.equal((await rows(alice))[0].history, 'queued,started,completed');
  await statusIs(admin, okJob, 'completed');
  assert.equal(await admin.textContent(`#jobs tr[data-id="${okJob}"] td:nth-child(2)`), 'alice');

  // A flaky job is retried and completes on attempt 2; a broken one fails after 3 attempts.
  await bob.click('[data-kind="flaky"]');
  await bob.waitForSelector('#jobs tr');
  const flaky = await newestId(bob);
  await statusIs(bob, flaky, 'completed');
  assert.equal((await rows(bob))[0].history, 'queued,started,retried,started,completed');
  assert.equal(await bob.textContent(`#jobs tr[data-id="${flaky}"] td:nth-child(4)`), '2');
  await alice.click('[data-kind="broken"]');
  await alice.waitForSelector(`#jobs tr[data-id="${flaky + 1}"]`);
  await statusIs(alice, flaky + 1, 'failed');
  assert.match(await alice.textContent(`#jobs tr[data-id="${flaky + 1}"]`), /attempt 3 failed/);
  await statusIs(admin, flaky, 'completed');
  await statusIs(admin, flaky + 1, 'failed');

  // The audience is enforced by Herald: neither user received the other's events.
  assert.deepEqual((await rows(alice)).map((r) => r.id).sort(), [okJob, flaky + 1].sort());
  assert.deepEqual((await rows(bob)).map((r) => r.id), [flaky]);

  // 20 jobs at once: every claim republishes the positions of the jobs behind it (low priority,
  // conflated per job_id over 500 ms). Everyone ends with the latest position (an empty queue),
  // having been sent fewer updates than were published.
  const before = (await rows(alice)).length;
  await alice.click('#submit-many');
  await alice.waitForFunction((n) => document.querySelectorAll('#jobs tr').length === n, before + 20);
  await bob.waitForFunction(() => Number(document.querySelector('#queue').dataset.maxWaiting) >= 10);
  await screenshot(bob, 'job-queue-queue');
  await alice.waitForFunction(() => document.querySelectorAll('#jobs tr[data-status="completed"]').length === 21, null, { timeout: 30000 });
  await screenshot(alice, 'job-queue-user');
  for (const page of [alice, bob, admin]) {
    await page.waitForSelector('#queue[data-waiting="0"]', { state: 'attached' });
  }
  await admin.waitForFunction(() => document.querySelectorAll('#jobs tr[data-status="completed"]').length === 22);
  await screenshot(admin, 'job-queue-admin');
  // Published: 20 at submission, then for each claim the claimed job and the ones behind it.
  const published = 20 + (21 * 22) / 2;
  const received = Number(await bob.getAttribute('#queue', 'data-updates'));
  assert.ok(received < published, `bob received ${received} of ${published} position updates`);
  const metrics = await (await fetch(`${server.origin}/metrics`)).text();
  const conflated = metrics.split('\n').find((l) => l.startsWith('herald_publications_shed_total') && l.includes('reason="conflated"') && l.includes('priority="low"'));
  assert.ok(conflated && Number(conflated.split(' ').pop()) > 0, `no conflated low publications in /metrics:\n${metrics.split('\n').filter((l) => l.includes('shed')).join('\n')}`);
  assert.deepEqual((await rows(bob)).map((r) => r.id), [flaky]);
  assert.deepEqual(errors, []);
});

test('job-queue: the app API checks tokens and input', async () => {
  let response = await fetch(`${server.origin}/app/jobs`);
  assert.equal(response.status, 401);
  const { token } = await (await fetch(`${server.origin}/app/token?user=carol`)).json();
  response = await fetch(`${server.origin}/app/jobs`, {
    method: 'POST', headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ kind: 'rm -rf' }),
  });
  assert.equal(response.status, 400);
  assert.match((await response.json()).error, /kind must be one of/);
  response = await fetch(`${server.origin}/app/worker/claim`, { method: 'POST' });
  assert.equal(response.status, 401);
  response = await fetch(`${server.origin}/app/token?user=carol&role=root`);
  assert.equal(response.status, 400);
});
