import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { launchBrowser, screenshot, startExample, textIs } from '../lib/harness.js';

const dataDir = mkdtempSync(path.join(tmpdir(), 'herald-settings-e2e-'));
const env = { HERALD_STORAGE_DATA_DIR: dataDir };
let server;
let browser;
const errors = [];

before(async () => {
  server = await startExample('settings-sync', { env });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

/** A tab that records every WebSocket frame it receives, each split into its messages. */
async function openTab(context) {
  const page = await context.newPage();
  const frames = [];
  page.on('pageerror', (error) => errors.push(error.message));
  page.on('websocket', (ws) => ws.on('framereceived', ({ payload }) => {
    frames.push(String(payload).split('\n').filter(Boolean).map((line) => JSON.parse(line)));
  }));
  await page.goto(`${server.origin}/`);
  await textIs(page, '#sub-state', 'subscribed');
  return { page, frames };
}
const valueIs = (page, key, value, timeout = 15000) =>
  page.waitForSelector(`#setting-${key}[data-value="${value}"]`, { state: 'attached', timeout });

test('settings-sync: two tabs in sync, a preset in one batch, 5 s heartbeat, recovery through a server restart', async () => {
  const context = await browser.newContext({ viewport: { width: 900, height: 800 } });
  const a = await openTab(context);
  const b = await openTab(context);

  // The connect reply announces the 5 s server ping.
  const connect = b.frames.flat().find((m) => m.connect);
  assert.equal(connect?.connect?.ping, 5, JSON.stringify(connect));

  // A single change in tab A reaches tab B.
  await a.page.selectOption('#setting-theme', 'dark');
  await valueIs(b.page, 'theme', 'dark');

  // A preset: ten changes that tab B receives in one WebSocket frame (batch_max_size 10).
  const framesBefore = b.frames.length;
  await a.page.click('[data-preset="focus"]');
  for (const [key, value] of [['density', 'compact'], ['sidebar', 'collapsed'], ['start_page', 'dashboard'], ['sound', 'off']]) {
    await valueIs(b.page, key, value);
  }
  await b.page.waitForFunction(() => Number(document.body.dataset.applied) === 11);
  const presetFrames = b.frames.slice(framesBefore).filter((frame) => frame.some((m) => m.push?.pub));
  const sizes = presetFrames.map((frame) => frame.filter((m) => m.push?.pub).length);
  assert.deepEqual(sizes, [10], `publications per frame: ${JSON.stringify(sizes)}`);
  await screenshot(b.page, 'settings-sync');

  // Restart: both tabs lose the server, reconnect with backoff and recover; the server's
  // hot-reload notice (published at start, while they were away) reaches them from history.
  const port = server.port;
  const stopped = await server.stop();
  assert.equal(stopped.code, 0, server.output().stderr);
  await textIs(a.page, '#status', 'connecting');
  await textIs(b.page, '#status', 'connecting');
  server = await startExample('settings-sync', { env, port });
  // Before the restart: the first reload notice, the theme change and the ten of the preset.
  assert.match(server.output().stdout, /: 12 publications kept/);
  for (const tab of [a, b]) {
    await textIs(tab.page, '#status', 'connected', 45000);
    await tab.page.waitForSelector('#recovery[data-recovered="true"]', { state: 'attached', timeout: 15000 });
    await tab.page.waitForSelector('body[data-generation="2"]', { state: 'attached' });
    await textIs(tab.page, '#banner', 'The server reloaded its settings (generation 2); this tab is up to date.');
  }
  // The values survived (settings.json) and changes flow again, both ways.
  await valueIs(a.page, 'theme', 'dark');
  await b.page.selectOption('#setting-language', 'de');
  await valueIs(a.page, 'language', 'de');
  const c = await openTab(context);
  await valueIs(c.page, 'language', 'de');
  await valueIs(c.page, 'density', 'compact');

  // A manual reload is announced to every tab.
  await c.page.click('#reload');
  for (const tab of [a, b, c]) await tab.page.waitForSelector('body[data-generation="3"]', { state: 'attached' });
  await screenshot(a.page, 'settings-sync-after-restart');
  assert.deepEqual(errors, []);
});

test('settings-sync: bad settings are refused', async () => {
  let response = await fetch(`${server.origin}/app/settings/theme`, {
    method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ value: 'neon' }),
  });
  assert.equal(response.status, 400);
  assert.match((await response.json()).error, /theme must be one of/);
  response = await fetch(`${server.origin}/app/settings/nope`, {
    method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ value: 'x' }),
  });
  assert.equal(response.status, 404);
  response = await fetch(`${server.origin}/app/presets/nope`, { method: 'POST' });
  assert.equal(response.status, 404);
});
