// The packages in a real browser (Debian's Chromium, headless) against a real `herald serve`:
// the test page uses the built standalone bundle of @herald/react.
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { expect, test, type Page } from '@playwright/test';
import {
  ARTIFACTS,
  api,
  connectionToken,
  startHerald,
  startStaticServer,
  waitFor,
  waitForSubscribers,
  type Herald,
  type StaticServer,
} from '../harness.js';

let herald: Herald;
let site: StaticServer;

test.beforeAll(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  site = await startStaticServer();
  herald = await startHerald();
});

test.afterAll(async () => {
  await herald?.dispose();
  await site?.close();
});

function pageUrl(target: Herald, query: Record<string, string>): string {
  const user = query.user ?? 'alice';
  const params = new URLSearchParams({ ws: target.ws, token: connectionToken(user), user, ...query });
  return `${site.url}/app.html?${params}`;
}

/** Fails the test on any error the page logs or throws. */
function watchErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on('pageerror', (error) => errors.push(`pageerror: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(`console.error: ${message.text()}`);
  });
  return errors;
}

const status = (page: Page) => page.locator('.herald-status');

async function screenshot(page: Page, name: string) {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

test('the status shows live, and a publication made with the HTTP API appears', async ({ page }) => {
  const errors = watchErrors(page);
  await page.goto(pageUrl(herald, { feed: 'news' }));
  await expect(status(page)).toHaveAttribute('data-status', 'live');
  await expect(status(page).locator('.herald-status__label')).toHaveText('Live');
  await expect(status(page).locator('.herald-status__count')).toHaveText('0 messages');
  await expect(page.getByTestId('feed')).toHaveAttribute('data-state', 'subscribed');
  await waitForSubscribers(herald, 'news', 1);

  const published = await api<{ offset: number }>(herald, 'publish', { channel: 'news', data: { text: 'hello from the API' } });
  const item = page.locator(`[data-testid=feed] li[data-offset="${published.offset}"]`);
  await expect(item).toContainText('hello from the API');
  await expect(item).toHaveAttribute('data-source', 'live');
  await expect(status(page).locator('.herald-status__count')).toHaveText('1 message');
  await expect(status(page).locator('.herald-status__last')).toContainText('last update');
  await screenshot(page, 'live-feed');
  expect(errors).toEqual([]);
});

type Task = { title: string; status: string };

test('useEntities builds the same collection from publish_change in full and in patch form', async ({ page }) => {
  const errors = watchErrors(page);
  const channels = { full: 'tasks-full', patch: 'tasks-patch' } as const;
  // What the application's own API says exists before the page subscribes.
  const existing = { id: 't0', title: 'Existing task', status: 'open' };
  site.snapshots.set(channels.full, [existing]);
  site.snapshots.set(channels.patch, [existing]);
  await page.goto(pageUrl(herald, { tasks: `${channels.full}:full,${channels.patch}:patch` }));
  for (const form of ['full', 'patch'] as const) {
    const section = page.getByTestId(`tasks-${form}`);
    await expect(section).toHaveAttribute('data-subscribed', 'true');
    await expect(section).toHaveAttribute('data-loading', 'false');
    await expect(section).toHaveAttribute('data-count', '1');
    await waitForSubscribers(herald, channels[form], 1);
  }

  const change = (channel: string, body: Record<string, unknown>) =>
    api(herald, 'publish_change', { channel, entity_type: 'task', ...body });
  const t1: Task = { title: 'Write docs', status: 'open' };
  const t2: Task = { title: 'Review', status: 'open' };
  for (const channel of Object.values(channels)) {
    await change(channel, { entity_id: 't1', change_type: 'create', new: t1 });
    await change(channel, { entity_id: 't2', change_type: 'create', new: t2 });
    await change(channel, { entity_id: 't1', change_type: 'update', old: t1, new: { ...t1, status: 'done' } });
    // The patch form can only apply this on top of the loaded snapshot.
    await change(channel, { entity_id: 't0', change_type: 'update', old: existing, new: { title: existing.title, status: 'blocked' } });
    await change(channel, { entity_id: 't2', change_type: 'delete', old: t2 });
    await change(channel, { entity_id: 't3', change_type: 'create', new: { title: 'Ship it', status: 'open' } });
    // Another entity type on the channel: the collection ignores it.
    await api(herald, 'publish_change', { channel, entity_type: 'doc', entity_id: 'd1', change_type: 'create', new: { title: 'x' } });
    await change(channel, { change_type: 'bulk', summary: { archive_status: 'done' } });
  }

  const expected = [
    ['t0', 'Existing task', 'blocked'],
    ['t3', 'Ship it', 'open'],
  ];
  for (const form of ['full', 'patch'] as const) {
    const section = page.getByTestId(`tasks-${form}`);
    await expect(section).toHaveAttribute('data-changes', '7');
    const rows = section.locator('tbody tr');
    await expect(rows).toHaveCount(expected.length);
    for (const [index, [id, title, state]] of expected.entries()) {
      await expect(rows.nth(index).locator('td')).toHaveText([id as string, title as string, state as string]);
    }
    await expect(section).toHaveAttribute('data-stale', '');
  }
  await screenshot(page, 'entities');
  expect(errors).toEqual([]);
});

test('usePresence counts two pages and follows a leave', async ({ browser }) => {
  const alice = await browser.newPage();
  const bob = await browser.newPage();
  const errors = [...watchErrors(alice), ...watchErrors(bob)];
  try {
    await alice.goto(pageUrl(herald, { presence: 'room', user: 'alice' }));
    await expect(alice.getByTestId('presence')).toHaveAttribute('data-clients', '1');
    await bob.goto(pageUrl(herald, { presence: 'room', user: 'bob' }));
    for (const page of [alice, bob]) {
      await expect(page.getByTestId('presence')).toHaveAttribute('data-clients', '2');
      await expect(page.getByTestId('presence')).toHaveAttribute('data-users', '2');
      await expect(page.getByTestId('presence').locator('li')).toHaveText(['alice', 'bob']);
    }
    await screenshot(alice, 'presence-two-pages');
    await bob.close();
    await expect(alice.getByTestId('presence')).toHaveAttribute('data-clients', '1');
    await expect(alice.getByTestId('presence').locator('li')).toHaveText(['alice']);
  } finally {
    await alice.close();
    if (!bob.isClosed()) await bob.close();
  }
  expect(errors).toEqual([]);
});

test('after the server restarts the page shows reconnecting with a countdown, then live, and recovers what it missed', async ({ page }) => {
  const errors = watchErrors(page);
  let server = await startHerald();
  try {
    // Connections pass through unchanged, except while `refuse` is set: then the page's
    // attempts are closed at once, so that it stays away while the test publishes after the
    // restart (it must catch up by recovery, not by luck of timing).
    let refuse = false;
    await page.routeWebSocket(/\/connection\/websocket/, (ws) => {
      if (refuse) {
        ws.close({ code: 1011, reason: 'held back by the test' });
        return;
      }
      ws.connectToServer();
    });
    await page.goto(pageUrl(server, { feed: 'news', minDelay: '1000', maxDelay: '3000' }));
    await expect(status(page)).toHaveAttribute('data-status', 'live');
    await waitForSubscribers(server, 'news', 1);
    for (const text of ['one', 'two']) await api(server, 'publish', { channel: 'news', data: { text } });
    await expect(page.locator('[data-testid=feed] li')).toHaveCount(2);

    refuse = true;
    const { port, dataDir } = server;
    await server.stop();
    await expect(status(page)).toHaveAttribute('data-status', 'reconnecting');
    await expect(status(page).locator('.herald-status__detail')).toHaveText(/^retrying in \d+s \(attempt \d+\)$/);
    const nextRetryAt = Number(await status(page).getAttribute('data-next-retry-at'));
    expect(nextRetryAt).toBeGreaterThan(Date.now() - 1000);
    await screenshot(page, 'reconnecting');

    // The same port and store: history and the stream position survive the restart.
    server = await startHerald({ port, dataDir });
    const missed: number[] = [];
    for (const text of ['three', 'four', 'five']) {
      missed.push((await api<{ offset: number }>(server, 'publish', { channel: 'news', data: { text } })).offset);
    }
    refuse = false;
    await expect(status(page)).toHaveAttribute('data-status', 'live', { timeout: 15_000 });
    await expect(page.getByTestId('recovered')).toHaveText('true');
    const items = page.locator('[data-testid=feed] li');
    await expect(items).toHaveCount(5);
    await expect(items).toHaveText([/^one/, /^two/, /^three/, /^four/, /^five/]);
    for (const offset of missed) {
      await expect(page.locator(`[data-testid=feed] li[data-offset="${offset}"]`)).toHaveAttribute('data-source', 'recovery');
    }
    await expect(status(page).locator('.herald-status__count')).toHaveText('5 messages');
    // And live again after the recovery.
    await api(server, 'publish', { channel: 'news', data: { text: 'six' } });
    await expect(items).toHaveCount(6);
    await expect(items.last()).toHaveAttribute('data-source', 'live');
    await screenshot(page, 'recovered');
  } finally {
    await server.dispose();
  }
  expect(errors.filter((e) => !/WebSocket/.test(e))).toEqual([]);
});

test('acknowledgements: the auto-acking page is confirmed; the silent one is retried with the same offset and shows it once', async ({ browser }) => {
  const channel = 'orders:eu';
  const acking = await browser.newPage();
  const silent = await browser.newPage();
  const errors = [...watchErrors(acking), ...watchErrors(silent)];
  try {
    await acking.goto(pageUrl(herald, { feed: channel, ack: 'auto', user: 'alice' }));
    await silent.goto(pageUrl(herald, { feed: channel, ack: 'manual', user: 'bob' }));
    await waitForSubscribers(herald, channel, 2);
    const { offset } = await api<{ offset: number }>(herald, 'publish', { channel, data: { text: 'order 1' } });

    type Recipient = { user: string; state: string; retries: number };
    type Status = { acked: Recipient[]; pending: Recipient[]; expired: Recipient[] };
    let delivery: Status = { acked: [], pending: [], expired: [] };
    await waitFor(
      async () => {
        delivery = await api<Status>(herald, 'delivery_status', { channel, offset });
        const bob = [...delivery.pending, ...delivery.expired].find((r) => r.user === 'bob');
        return delivery.acked.some((r) => r.user === 'alice') && (bob?.retries ?? 0) >= 2;
      },
      'alice acknowledged and bob retried twice',
      15000,
    );
    expect(delivery.acked.map((r) => r.user)).toEqual(['alice']);
    for (const page of [acking, silent]) {
      await expect(page.getByTestId('feed')).toHaveAttribute('data-count', '1');
      await expect(page.locator(`[data-testid=feed] li[data-offset="${offset}"]`)).toHaveCount(1);
    }
  } finally {
    await acking.close();
    await silent.close();
  }
  expect(errors).toEqual([]);
});

test('the plain @herald/client bundle works without React, acks, and shows offline while the network is down', async ({ browser }) => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = watchErrors(page);
  try {
    const params = new URLSearchParams({ ws: herald.ws, token: connectionToken('carol'), feed: 'plain' });
    await page.goto(`${site.url}/plain.html?${params}`);
    const state = page.locator('#status');
    await expect(state).toHaveAttribute('data-status', 'live');
    await waitForSubscribers(herald, 'plain', 1);
    const { offset } = await api<{ offset: number }>(herald, 'publish', { channel: 'plain', data: { text: 'no framework' } });
    await expect(page.locator(`#feed li[data-offset="${offset}"]`)).toHaveText('no framework');
    await expect(page.locator('body')).toHaveAttribute('data-last-ack', String(offset));

    await context.setOffline(true);
    await expect(state).toHaveAttribute('data-status', 'offline');
    await screenshot(page, 'plain-offline');
    await context.setOffline(false);
    await expect(state).toHaveAttribute('data-status', 'live', { timeout: 15_000 });
    await waitForSubscribers(herald, 'plain', 1);
    const next = await api<{ offset: number }>(herald, 'publish', { channel: 'plain', data: { text: 'back online' } });
    await expect(page.locator(`#feed li[data-offset="${next.offset}"]`)).toHaveText('back online');
    await expect(page.locator('#feed li')).toHaveCount(2);
  } finally {
    await context.close();
  }
  expect(errors.filter((e) => !/WebSocket|ERR_INTERNET_DISCONNECTED/.test(e))).toEqual([]);
});

test('when recovery fails (the restarted server lost its history) useEntities reloads the snapshot and a feed rereads history', async ({ page }) => {
  const errors = watchErrors(page);
  const channel = 'tasks-resync';
  const news = 'news-resync';
  let server = await startHerald({ memory: true });
  try {
    site.snapshots.set(channel, [{ id: 'a', title: 'Alpha', status: 'open' }]);
    for (const text of ['old 1', 'old 2']) await api(server, 'publish', { channel: news, data: { text } });
    await page.goto(pageUrl(server, { tasks: `${channel}:patch`, feed: news, history: '10', minDelay: '200', maxDelay: '1000' }));
    const section = page.getByTestId('tasks-patch');
    await expect(section).toHaveAttribute('data-subscribed', 'true');
    await expect(section).toHaveAttribute('data-loading', 'false');
    await waitForSubscribers(server, channel, 1);
    await api(server, 'publish_change', { channel, entity_type: 'task', entity_id: 'b', change_type: 'create', new: { title: 'Beta', status: 'open' } });
    await expect(section.locator('tbody tr')).toHaveCount(2);
    // The feed starts with what the channel's history holds, then goes on live.
    const feed = page.locator('[data-testid=feed] li');
    await expect(feed).toHaveText([/^old 1/, /^old 2/]);
    await expect(feed.nth(0)).toHaveAttribute('data-source', 'history');
    await waitForSubscribers(server, news, 1);
    await api(server, 'publish', { channel: news, data: { text: 'live 1' } });
    await expect(feed).toHaveText([/^old 1/, /^old 2/, /^live 1/]);
    await expect(feed.nth(2)).toHaveAttribute('data-source', 'live');

    // A server without a store: after the restart the stream has a new epoch, so recovery fails
    // and the application's state (here: the snapshot endpoint) is the truth again.
    const { port } = server;
    await server.stop();
    await expect(status(page)).toHaveAttribute('data-status', 'reconnecting');
    site.snapshots.set(channel, [
      { id: 'a', title: 'Alpha', status: 'done' },
      { id: 'c', title: 'Gamma', status: 'open' },
    ]);
    server = await startHerald({ port, memory: true });
    await expect(status(page)).toHaveAttribute('data-status', 'live', { timeout: 15_000 });
    const rows = section.locator('tbody tr');
    await expect(rows).toHaveCount(2);
    await expect(rows.nth(0).locator('td')).toHaveText(['a', 'Alpha', 'done']);
    await expect(rows.nth(1).locator('td')).toHaveText(['c', 'Gamma', 'open']);
    await expect(section).toHaveAttribute('data-stale', '');

    // And the patch form applies on top of the reloaded snapshot.
    await waitForSubscribers(server, channel, 1);
    await api(server, 'publish_change', {
      channel,
      entity_type: 'task',
      entity_id: 'c',
      change_type: 'update',
      old: { title: 'Gamma', status: 'open' },
      new: { title: 'Gamma', status: 'review' },
    });
    await expect(rows.nth(1).locator('td')).toHaveText(['c', 'Gamma', 'review']);
    // The feed says why it was reset and shows the new stream only.
    await expect(page.getByTestId('resync')).toContainText('recovery failed');
    await waitForSubscribers(server, news, 1);
    await api(server, 'publish', { channel: news, data: { text: 'new 1' } });
    await expect(feed).toHaveText([/^new 1/]);
    await screenshot(page, 'resynced');
  } finally {
    await server.dispose();
  }
  expect(errors.filter((e) => !/WebSocket/.test(e))).toEqual([]);
});
