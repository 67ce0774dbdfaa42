// The rooms page: one subscription to `rooms:<room>` with join/leave pushes; room actions are
// RPCs answered by the example server, which publishes them with a priority.
const params = new URLSearchParams(location.search);
const user = params.get('user') || 'alice';
const room = params.get('room') || 'lobby';
const channel = `rooms:${room}`;
const $ = (id) => document.getElementById(id);
$('room-name').textContent = room;
$('user-name').textContent = user;

async function fetchToken() {
  const response = await fetch(`/app/token?user=${encodeURIComponent(user)}`);
  if (!response.ok) throw new Error(`token: ${response.status} ${await response.text()}`);
  return (await response.json()).token;
}

const centrifuge = new Centrifuge(`ws://${location.host}/connection/websocket`, { getToken: fetchToken });
centrifuge.on('state', (ctx) => { $('status').textContent = ctx.newState; $('status').dataset.state = ctx.newState; });

const sub = centrifuge.newSubscription(channel, { joinLeave: true, recoverable: true });
const seenOffsets = new Set(); // redeliveries of unconfirmed announcements repeat the offset

async function refreshPresence() {
  const [stats, presence] = await Promise.all([sub.presenceStats(), sub.presence()]);
  $('participant-count').textContent = stats.numUsers;
  const users = [...new Set(Object.values(presence.clients).map((c) => c.user))].sort();
  $('participants').replaceChildren(...users.map((u) => Object.assign(document.createElement('li'), { textContent: u })));
}

sub.on('subscribed', () => { $('join').disabled = true; $('leave').disabled = false; refreshPresence(); });
sub.on('unsubscribed', () => {
  $('join').disabled = false; $('leave').disabled = true;
  $('participant-count').textContent = '0'; $('participants').replaceChildren();
});
sub.on('join', (ctx) => { $('presence-log').textContent = `${ctx.info.user} joined`; refreshPresence(); });
sub.on('leave', (ctx) => { $('presence-log').textContent = `${ctx.info.user} left`; refreshPresence(); });
sub.on('publication', (ctx) => {
  if (ctx.offset !== undefined && seenOffsets.has(ctx.offset)) return;
  if (ctx.offset !== undefined) seenOffsets.add(ctx.offset);
  const event = ctx.data;
  if (event.kind === 'vote') showTally(event.tally);
  if (event.kind === 'playback') showPlayback(event);
  if (event.kind === 'announce') showAnnouncement(event, ctx.offset);
});

function showTally(tally) {
  $('tally').textContent = Object.entries(tally).map(([option, n]) => `${option}: ${n}`).join(', ');
  for (const [option, n] of Object.entries(tally)) $('tally').dataset[`option${option}`] = n;
}

let playbackPosition = 0;
function showPlayback(event) {
  playbackPosition = event.position;
  if (event.action !== 'seek') $('playback-state').textContent = event.action === 'play' ? 'playing' : 'paused';
  $('playback-position').textContent = event.position;
  $('playback-by').textContent = `(by ${event.by})`;
}

function showAnnouncement(event, offset) {
  const item = document.createElement('li');
  item.dataset.offset = offset;
  item.className = 'announcement';
  const confirm = Object.assign(document.createElement('button'), { textContent: 'Confirm' });
  item.append(`${event.by}: ${event.text} `, confirm);
  confirm.addEventListener('click', async () => {
    confirm.disabled = true;
    try {
      // Cumulative: confirms everything up to this offset on the channel, for this user.
      await centrifuge.rpc('herald.ack', { channel, offset });
      confirm.replaceWith(Object.assign(document.createElement('span'), { className: 'confirmed', textContent: 'confirmed' }));
      item.dataset.confirmed = 'true';
    } catch (error) {
      confirm.disabled = false;
      confirm.title = `not confirmed: ${error.message}`;
    }
  });
  $('announcements').prepend(item);
  if ($('auto-confirm').checked) confirm.click();
}

async function call(method, data) {
  try {
    await centrifuge.rpc(method, data);
  } catch (error) {
    alert(`${method} failed: ${error.message} (code ${error.code})`);
  }
}

for (const option of ['A', 'B', 'C']) {
  const button = Object.assign(document.createElement('button'), { textContent: `Vote ${option}` });
  button.dataset.vote = option;
  button.addEventListener('click', () => call('rooms.vote', { room, option }));
  $('vote-buttons').append(button);
}
for (const button of document.querySelectorAll('[data-action]')) {
  button.addEventListener('click', () => {
    const action = button.dataset.action;
    const position = action === 'seek' ? playbackPosition + 30 : playbackPosition;
    call('rooms.playback', { room, action, position });
  });
}
$('announce-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('announce-text').value.trim();
  if (text) call('rooms.announce', { room, text }).then(() => { $('announce-text').value = ''; });
});
$('join').addEventListener('click', () => sub.subscribe());
$('leave').addEventListener('click', () => sub.unsubscribe());

sub.subscribe();
centrifuge.connect();
window.heraldRoom = { centrifuge, sub };
