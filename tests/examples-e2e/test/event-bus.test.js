import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, json, launchBrowser, openPage, post, screenshot, startExample, textIs } from '../lib/harness.js';

let server;
let browser;
const errors = [];

before(async () => {
  server = await startExample('event-bus', { env: { SIMULATE_SAMPLES_MS: '0' } });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

const count = (page, item) => page.getAttribute(`#item-${item}`, 'data-count').then(Number);
const countIs = (page, item, n, timeout = 20000) =>
  page.waitForFunction(([i, c]) => document.querySelector(`#item-${i}`)?.dataset.count === String(c), [item, n], { timeout });
const handler = async (name) => (await json(`${server.origin}/app/handlers`)).find((h) => h.name === name);

test('event-bus: per-item channels, broadcast acknowledgements, an isolated panicking handler, drained shutdown', async () => {
  const line1 = await openPage(browser, `${server.origin}/?user=ops1&items=line-1`, { errors });
  const line2 = await openPage(browser, `${server.origin}/?user=ops2&items=line-2,line-3`, { errors });
  await textIs(line1, '#status', 'connected');
  await textIs(line2, '#status', 'connected');
  assert.equal(await line1.locator('#item-line-2').count(), 0);

  // Per item: each page gets only the items it subscribed to.
  await post(`${server.origin}/app/samples`, [{ item: 'line-1', value: 10.2 }, { item: 'line-2', value: 10.4 }]);
  await textIs(line1, '#item-line-1 .value', '10.20');
  await textIs(line2, '#item-line-2 .value', '10.40');
  assert.equal(await line2.locator('#item-line-1').count(), 0, 'the line-2 page has no line-1 panel');
  assert.equal(await count(line1, 'line-1'), 1);

  // Control-limit updates go to the item's subscribers.
  await post(`${server.origin}/app/limits/line-1`, { lower: 9.5, upper: 10.5 });
  await textIs(line1, '#item-line-1 .limits', '9.5 – 10.5');

  // A violation reaches everyone; one acknowledgement is broadcast to all.
  await post(`${server.origin}/app/samples`, { item: 'line-2', value: 12.5 });
  await line1.waitForSelector('#violation-1 button');
  await line2.click('#violation-1 button');
  await line1.waitForSelector('#violation-1[data-acknowledged-by="ops2"]');
  await line2.waitForSelector('#violation-1[data-acknowledged-by="ops2"]');

  // The pager handler panics on line-3 violations (nobody on call); the others carry on.
  const before = await handler('herald');
  await post(`${server.origin}/app/samples`, { item: 'line-3', value: 20 });
  const pager = await eventually(async () => { const h = await handler('pager'); return h.panicked === 1 && h; }, { what: 'pager panic' });
  assert.match(pager.last_failure, /panicked/);
  await line2.waitForSelector('#violation-2');
  await textIs(line2, '#item-line-3 .value', '20.00');
  await post(`${server.origin}/app/samples`, { item: 'line-1', value: 11 });
  await line1.waitForSelector('#violation-3');
  await textIs(line1, '#item-line-1 .value', '11.00');
  const herald = await eventually(async () => { const h = await handler('herald'); return h.handled >= before.handled + 4 && h; }, { what: 'herald handled' });
  assert.equal(herald.failed + herald.panicked + herald.dropped, 0, JSON.stringify(herald));
  const pagerAfter = await eventually(async () => { const h = await handler('pager'); return h.handled > pager.handled && h; }, { what: 'pager handles after its panic' });
  assert.equal(pagerAfter.panicked, 1);
  await line1.waitForFunction(() => document.querySelector('#handler-pager td:nth-child(4)')?.textContent === '1');
  await screenshot(line1, 'event-bus');

  // Bad input is refused without side effects.
  const bad = await fetch(`${server.origin}/app/samples`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify([{ item: 'line-1', value: 10 }, { item: 'nope', value: 1 }]),
  });
  assert.equal(bad.status, 404);
  assert.match(await bad.text(), /unknown item/);

  // Graceful shutdown: a burst queued just before SIGTERM still reaches the browser.
  const already = await count(line1, 'line-1');
  const burst = Array.from({ length: 3000 }, (_, n) => ({ item: 'line-1', value: 10 + (n % 5) / 10 }));
  const accepted = await post(`${server.origin}/app/samples`, burst);
  assert.equal(accepted.accepted, 3000);
  const stopping = server.stop();
  await countIs(line1, 'line-1', already + 3000);
  const exit = await stopping;
  assert.equal(exit.code, 0, server.output().stderr);
  assert.match(server.output().stdout, /drained \d+ queued events/);
  await line1.waitForFunction(() => document.querySelector('#status').textContent !== 'connected');
  assert.deepEqual(errors, []);
});
