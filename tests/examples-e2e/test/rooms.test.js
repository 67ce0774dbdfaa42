import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { api, eventually, launchBrowser, openPage, screenshot, startExample, textIs } from '../lib/harness.js';

const API_KEY = 'rooms-demo-api-key';
let server;
let browser;
const errors = [];

before(async () => {
  server = await startExample('rooms');
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

test('rooms: presence counts, votes, playback and critical announcements confirmed by each participant', async () => {
  const url = (user) => `${server.origin}/?user=${user}&room=e2e`;
  const alice = await openPage(browser, url('alice'), { errors });
  await textIs(alice, '#status', 'connected');
  await textIs(alice, '#participant-count', '1');
  const bob = await openPage(browser, url('bob'), { errors });
  // Join: both see two participants (bob from his subscribe, alice from the join push).
  await textIs(bob, '#participant-count', '2');
  await textIs(alice, '#participant-count', '2');
  await alice.waitForFunction(() => document.querySelector('#presence-log').textContent === 'bob joined');

  // Votes: one vote per user, tallies pushed to everyone.
  await bob.click('[data-vote="B"]');
  await textIs(alice, '#tally', 'A: 0, B: 1, C: 0');
  await alice.click('[data-vote="B"]');
  await alice.click('[data-vote="A"]');
  await textIs(bob, '#tally', 'A: 1, B: 1, C: 0');

  // Playback (high priority) reaches the other participant.
  await alice.click('[data-action="play"]');
  await textIs(bob, '#playback-state', 'playing');
  await bob.click('[data-action="seek"]');
  await textIs(alice, '#playback-position', '30');
  await bob.click('[data-action="pause"]');
  await textIs(alice, '#playback-state', 'paused');

  // A critical announcement: both participants must confirm it with herald.ack.
  await alice.fill('#announce-text', 'Break, back in 5 minutes');
  await alice.click('#announce-form button');
  const item = '#announcements li.announcement';
  await bob.waitForSelector(item);
  await alice.waitForSelector(item);
  const offset = Number(await bob.getAttribute(item, 'data-offset'));
  assert.ok(offset > 0, `announcement offset ${offset}`);
  assert.equal(Number(await alice.getAttribute(item, 'data-offset')), offset);
  const status = () => api(server.origin, API_KEY, 'delivery_status', { channel: 'rooms:e2e', offset });
  const users = (entries) => entries.map((e) => e.user).sort();
  let delivery = await status();
  assert.deepEqual(users(delivery.pending), ['alice', 'bob'], JSON.stringify(delivery));
  assert.deepEqual(delivery.acked, []);

  await bob.click(`${item} button`);
  await bob.waitForSelector(`${item}[data-confirmed="true"]`);
  delivery = await eventually(async () => {
    const d = await status();
    return users(d.acked).join() === 'bob' && d;
  }, { what: 'bob acked' });
  assert.deepEqual(users(delivery.pending), ['alice'], JSON.stringify(delivery));

  await alice.click(`${item} button`);
  delivery = await eventually(async () => {
    const d = await status();
    return users(d.acked).join() === 'alice,bob' && d;
  }, { what: 'alice and bob acked' });
  assert.deepEqual(delivery.pending, [], JSON.stringify(delivery));
  assert.deepEqual(delivery.expired, []);
  // The announcement is shown once even if a redelivery arrived before the confirmation.
  assert.equal(await bob.locator(item).count(), 1);

  await screenshot(alice, 'rooms');

  // Leave: the other participant's count drops.
  await bob.click('#leave');
  await textIs(alice, '#participant-count', '1');
  await alice.waitForFunction(() => document.querySelector('#presence-log').textContent === 'bob left');
  assert.deepEqual(errors, []);
});

test('rooms: bad room actions are refused with a clear error', async () => {
  const page = await openPage(browser, `${server.origin}/?user=carol&room=e2e`, { errors });
  await textIs(page, '#status', 'connected');
  const failure = await page.evaluate(async () => {
    try {
      await window.heraldRoom.centrifuge.rpc('rooms.vote', { room: 'e2e', option: 'Z' });
      return null;
    } catch (error) {
      return { code: error.code, message: error.message };
    }
  });
  assert.equal(failure?.code, 107);
  assert.match(failure.message, /option must be one of/);
  const badRoom = await page.evaluate(async () => {
    try {
      await window.heraldRoom.centrifuge.rpc('rooms.announce', { room: 'Not A Room!', text: 'x' });
      return null;
    } catch (error) {
      return { code: error.code, message: error.message };
    }
  });
  assert.ok(badRoom && badRoom.code !== 0, JSON.stringify(badRoom));
});
